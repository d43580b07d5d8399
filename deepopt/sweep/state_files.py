"""The adaptive searches' chunk states on disk: one ``.npz`` file per chunk, written atomically.

A chunk's states are ``C`` configs × ``S`` seeds of a ``TrainState`` (its key left out) as host
arrays, plus the plan positions of the chunk's members. ``save(path, positions, chunk_state)``
writes ``format`` (``FORMAT``), ``positions`` and every leaf (``leaf_<i>``, in ``jax.tree.leaves``
order) with ``numpy.savez`` into a temporary sibling, fsyncs it and renames it into place, so a
reader sees the whole file or none. ``load(path, like)`` refuses, with a ``ValueError`` naming
the file, a torn or foreign file and one whose leaves do not match ``like``'s count, shapes and
dtypes; a missing file is a ``FileNotFoundError``. Loaded arrays equal the saved ones bit for bit.

Why not ``deepopt.checkpoint`` (orbax): a search saves one small tree per chunk, and an orbax
save takes many times as long as this file's (most of it waiting on its threads), enough to
dominate a small adaptive search's warm time (measurements: docs/engine-measurements.md).
Searches written by earlier versions kept their states as ``deepopt.checkpoint`` directories of
the same name without the suffix; ``adaptive.Search`` still reads those.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from deepopt.checkpoint import _fsync_dir

FORMAT = "deepopt-chunk-states/1"
SUFFIX = ".npz"


def save(path: str | os.PathLike, positions: Sequence[int], chunk_state: Any) -> None:
    """Write ``positions`` and the leaves of ``chunk_state`` (host or device arrays) to ``path``, atomically."""
    path = os.fspath(path)
    arrays = {"format": np.array(FORMAT), "positions": np.asarray(positions, np.int32)}
    arrays.update({f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(chunk_state))})
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(directory)


def saved_positions(path: str | os.PathLike) -> np.ndarray:
    """The plan positions of the configs whose states ``path`` holds (read without the states)."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            return np.asarray(data["positions"])
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a readable chunk-states file (torn or foreign: {error})") from None


def load(path: str | os.PathLike, like: Any) -> tuple[np.ndarray, Any]:
    """``(positions, chunk state)`` read from ``path``, the state in ``like``'s tree structure.

    ``like``: a tree of arrays (or ``ShapeDtypeStruct``s) with the chunk's shapes and dtypes.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no chunk states at {path}")
    leaves, treedef = jax.tree.flatten(like)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != FORMAT:
                raise ValueError(f"{path} is not a deepopt chunk-states file (no format {FORMAT!r})")
            stored = sorted((name for name in data.files if name.startswith("leaf_")), key=lambda n: int(n[5:]))
            if len(stored) != len(leaves):
                raise ValueError(f"{path} holds {len(stored)} arrays of state, expected {len(leaves)}")
            arrays = [data[name] for name in stored]
            positions = data["positions"]
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as error:
        raise ValueError(f"{path} is not a readable chunk-states file (torn or foreign: {error})") from None
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
    for name, array, leaf in zip(paths, arrays, leaves):
        if tuple(array.shape) != tuple(leaf.shape) or np.dtype(array.dtype) != np.dtype(leaf.dtype):
            raise ValueError(f"{path}: state{name} is {array.dtype}{list(array.shape)}, "
                             f"expected {np.dtype(leaf.dtype)}{list(leaf.shape)}")
    return positions, jax.tree.unflatten(treedef, arrays)

