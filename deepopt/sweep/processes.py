"""A search over several processes (``jax.distributed``): what process 0 alone reads, every process gets.

Every process of a multi-process search runs the same Python, makes the same decisions from the
same rows and dispatches the same programs in the same order; the devices of all of them form
one mesh. Process 0 alone reads and writes the files (rows, manifest, chunk states). What it
reads, the others receive here, by a collective every process enters at the same point:

- ``share(read)``: process 0 calls ``read()`` (a JSON-able value) and every process returns it;
  an exception raised there is raised on every process (same type where it is a built-in one,
  else ``ProcessZeroError``), so a refused resume stops every process instead of leaving the others
  waiting in the next collective;
- ``share_arrays(read, like)``: the same for a tree of arrays shaped like ``like`` (a chunk's
  saved states on resume);
- ``gather(tree)``: a tree of global arrays (sharded over every process's devices) as host
  arrays on every process (a chunk's new states, to save or to re-pack);
- ``check_same(what, value)``: refuses, on every process, a search whose processes were started
  with different arguments or data (``value`` differs from process 0's), naming the processes.

In one process each is the plain call. Imports no other deepopt module.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def multiple() -> bool:
    """Whether this search runs over several processes (``jax.process_count() > 1``)."""
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process reads and writes the search's files: process 0."""
    return jax.process_index() == 0


def _broadcast_bytes(payload: bytes | None) -> bytes:
    """``payload`` of process 0 on every process (the others pass None)."""
    from jax.experimental import multihost_utils

    size = int(multihost_utils.broadcast_one_to_all(np.asarray(0 if payload is None else len(payload), np.int64)))
    buffer = np.frombuffer(payload, np.uint8) if payload is not None else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()


class ProcessZeroError(RuntimeError):
    """An error of a type that is not built in, met by process 0 and raised on the others: ``kind``, ``message``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"process 0: {kind}: {message}")
        self.kind, self.message = kind, message


def _raise_shared(outcome: dict[str, Any]) -> None:
    """Raise on this process the error process 0 met (``outcome``: its type's name and message)."""
    kind = getattr(builtins, outcome["type"], None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        raise kind(outcome["message"])
    raise ProcessZeroError(outcome["type"], outcome["message"])


def share(read: Callable[[], T]) -> T:
    """``read()`` computed by process 0 (a JSON-able value), returned on every process; its error raised on every one."""
    if not multiple():
        return read()
    if is_writer():
        try:
            value = read()
        except Exception as error:
            _broadcast_bytes(json.dumps({"type": type(error).__name__, "message": str(error)}).encode())
            raise
        _broadcast_bytes(json.dumps({"value": value}).encode())
        return value
    outcome = json.loads(_broadcast_bytes(None).decode())
    if "value" not in outcome:
        _raise_shared(outcome)
    return outcome["value"]


def share_arrays(read: Callable[[], Any], like: Any) -> Any:
    """A tree of host arrays shaped like ``like`` read by process 0, on every process; its error raised on every one."""
    if not multiple():
        return read()
    from jax.experimental import multihost_utils

    held: list[Any] = []

    def read_here() -> None:
        held.append(read())

    share(read_here)  # process 0 reads (or every process raises its error)
    tree = held[0] if held else jax.tree.map(lambda leaf: np.zeros(np.shape(leaf), np.dtype(leaf.dtype)), like)
    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def _same_values(tree: Any) -> Any:
    return tree


def resharded(tree: Any, sharding: Any) -> Any:
    """``tree``'s global arrays laid out as ``sharding``, moved between the devices (of every process) by one program."""
    return jax.jit(_same_values, out_shardings=sharding)(tree)


def gather(tree: Any) -> Any:
    """Host arrays of ``tree``'s arrays on every process (global arrays gathered over the processes).

    One program replicates every leaf on every device (one dispatch of all-gathers, not one per
    leaf); each process then reads its own copy.
    """
    if not multiple():
        return jax.device_get(tree)
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    replicated = resharded(tree, NamedSharding(jax.tree.leaves(tree)[0].sharding.mesh, P()))
    return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)), replicated)


def check_same(what: str, value: Any) -> None:
    """Refuse, on every process, ``value`` (JSON-able) that differs between processes: ``what`` names it."""
    if not multiple():
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest[None], tiled=True))
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ValueError(
            f"every process of a search must be started with the same {what}, but process(es) {differ} differ from "
            "process 0's: start every process with the same arguments and the same data"
        )
