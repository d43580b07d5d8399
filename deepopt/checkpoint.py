"""Save and restore a ``train.TrainState`` (or any pytree of arrays) on disk, with orbax-checkpoint.

``save(path, state)`` writes a directory::

    path/
      deepopt_checkpoint.json   format tag, version, tree structure, every leaf's path, shape,
                                dtype (and a PRNG key's impl), and the size and sha256 of every
                                file under arrays/
      arrays/                   an orbax checkpoint (StandardCheckpointHandler, OCDBT) of the
                                leaves as a nested dict named after their tree paths

It is written whole into a temporary directory next to ``path`` (orbax finalizes ``arrays/``
atomically inside it, the files are fsynced) and renamed into place, so a reader sees the whole
checkpoint or none. Typed PRNG keys (``jax.random.key``) are stored as ``jax.random.key_data``
plus the impl name and rebuilt with ``jax.random.wrap_key_data``; ``None`` leaves (early stopping
off) are part of the tree structure and hold nothing.

``restore(path, like=state)`` reads the metadata first and refuses, with a one-line
``ValueError`` naming ``path`` and what differs, a torn checkpoint (metadata or arrays missing, a
file truncated or changed), a foreign directory (empty, or an orbax checkpoint deepopt did not
write) and a mismatched one (another tree structure, shapes or dtypes than ``like``'s); only then
are the arrays read. A missing ``path`` is a ``FileNotFoundError``. Restored arrays equal the
saved ones bit for bit (on the default device), so a restored run continues exactly as the
uninterrupted one.

orbax is imported inside the functions (``pip install -e '.[checkpoint]'``): ``import deepopt``
does not load it. Its INFO logging is filtered out while these functions run; its warnings pass.
Single-process only.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, TypeVar

import jax
import numpy as np

FORMAT = "deepopt-checkpoint"
VERSION = 1
METADATA_FILE = "deepopt_checkpoint.json"
ARRAYS_DIR = "arrays"
EXTRA_HINT = "pip install -e '.[checkpoint]' (or pip install orbax-checkpoint)"

# Files at the top of a directory that orbax itself wrote (a checkpoint saved with orbax directly).
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "commit_success.txt")
_TMP_TAG = ".deepopt-tmp-"
_OLD_TAG = ".deepopt-old-"
_REQUIRED_FIELDS = ("format", "version", "treedef", "leaves", "files")
_LEAF_FIELDS = {"path", "name", "shape", "dtype"}
_FILE_FIELDS = {"size", "sha256"}

T = TypeVar("T")


# --- orbax, imported lazily and kept quiet --------------------------------------------------


def _orbax() -> Any:
    """``orbax.checkpoint``, or an ImportError naming the extra that installs it."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(f"deepopt.checkpoint needs orbax-checkpoint: {EXTRA_HINT}") from error
    return ocp


class _DropOrbaxInfo(logging.Filter):
    """Drops orbax's records below WARNING (it logs every save and load at INFO through absl)."""

    def __init__(self, orbax_dir: str) -> None:
        super().__init__()
        self._orbax_dir = orbax_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self._orbax_dir)


@contextlib.contextmanager
def _quiet(ocp: Any) -> Iterator[None]:
    orbax_dir = os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__))) + os.sep  # .../orbax/
    logger = logging.getLogger("absl")
    quiet = _DropOrbaxInfo(orbax_dir)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _checkpointer(ocp: Any) -> Any:
    """A synchronous orbax Checkpointer for a pytree of arrays (atomic: it finalizes a tmp dir by rename)."""
    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


# --- pure helpers -----------------------------------------------------------------------------


def _is_key(dtype: Any) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _describe(shape: Any, dtype: Any) -> str:
    return f"{dtype}[{','.join(str(int(n)) for n in shape)}]"


def _entry_name(entry: Any) -> str:
    """One path entry as a plain string: a field name, dict key or index."""
    for attribute in ("name", "key", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _storage_names(paths: list[tuple[Any, ...]]) -> list[str]:
    """``/``-joined storage names for leaf paths: readable (``params/0/W``), safe for orbax, unique."""
    assigned: dict[tuple[Any, ...], str] = {}  # original path prefix -> its storage segment
    used: dict[tuple[Any, ...], set[str]] = {}  # original parent prefix -> segments taken under it
    names = []
    for path in paths:
        segments = []
        for depth in range(len(path)):
            prefix = tuple(path[: depth + 1])
            if prefix not in assigned:
                siblings = used.setdefault(prefix[:-1], set())
                base = re.sub(r"[^A-Za-z0-9_-]", "_", _entry_name(path[depth])) or "_"
                segment, n = base, 1
                while segment in siblings:
                    segment, n = f"{base}_{n}", n + 1
                siblings.add(segment)
                assigned[prefix] = segment
            segments.append(assigned[prefix])
        names.append("/".join(segments) or "_")
    return names


def _nest(names: list[str], values: list[Any]) -> dict[str, Any]:
    """A nested dict of ``values`` at their ``/``-joined ``names`` (what orbax stores)."""
    tree: dict[str, Any] = {}
    for name, value in zip(names, values):
        *parents, last = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def _lookup(tree: dict[str, Any], name: str) -> Any:
    for part in name.split("/"):
        tree = tree[part]
    return tree


def _leaf_records(state: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """The metadata record of every leaf of ``state`` and the array orbax stores for it."""
    leaves_with_path = jax.tree_util.tree_flatten_with_path(state)[0]
    if not leaves_with_path:
        raise ValueError(f"save: state has no arrays to save, got the empty tree {jax.tree.structure(state)}")
    names = _storage_names([path for path, _ in leaves_with_path])
    records, arrays = [], []
    for (path, leaf), name in zip(leaves_with_path, names):
        where = f"state{jax.tree_util.keystr(path)}"
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(f"save: {where} is a traced value; call save outside jit/vmap, on concrete arrays")
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            raise TypeError(f"save: {where} must be an array (jax or numpy), got {type(leaf).__name__}")
        record = {
            "path": jax.tree_util.keystr(path),
            "name": name,
            "shape": [int(n) for n in leaf.shape],
            "dtype": str(leaf.dtype),
        }
        if _is_key(leaf.dtype):
            data = jax.random.key_data(leaf)
            record["key_impl"] = str(jax.random.key_impl(leaf))
            record["key_data_shape"] = [int(n) for n in data.shape]
            leaf = data
        records.append(record)
        arrays.append(leaf)
    return records, arrays


def _like_leaves(like: Any) -> list[tuple[str, tuple[int, ...], Any]]:
    """``(path, shape, dtype)`` of every leaf of ``like`` (arrays or ``jax.ShapeDtypeStruct``)."""
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]:
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(
                f"restore: like{jax.tree_util.keystr(path)} must be an array or jax.ShapeDtypeStruct, "
                f"got {type(leaf).__name__}"
            )
        leaves.append((jax.tree_util.keystr(path), tuple(int(n) for n in leaf.shape), leaf.dtype))
    return leaves


def _first_difference(a: str, b: str, width: int = 60) -> str:
    """The two strings from a little before where they first differ (for long tree structures)."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, i - 20)
    cut = lambda s: ("..." if start else "") + s[start : start + width] + ("..." if len(s) > start + width else "")
    return f"checkpoint has `{cut(a)}`, like has `{cut(b)}`"


def _sample(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _older_treedefs(like: Any) -> set[str]:
    """Structures a checkpoint of ``like``'s type had before its trailing fields were added.

    A namedtuple's last fields that are None in ``like`` hold no leaves, so a checkpoint written
    before they existed (a ``TrainState`` from before ``precision``) has the same leaves: it is
    accepted and restored with those fields None.
    """
    fields = getattr(type(like), "_fields", None)
    found: set[str] = set()
    if not fields:
        return found
    count = len(fields)
    while count > 0 and like[count - 1] is None:
        count -= 1
        older = collections.namedtuple(type(like).__name__, fields[:count])
        found.add(str(jax.tree.structure(older(*like[:count]))))
    return found


def _check_matches(path: Path, metadata: dict[str, Any], like: Any) -> None:
    """``like`` must have the checkpoint's tree structure, leaf paths, shapes and dtypes (ValueError).

    Also refuses 64-bit leaves while JAX's 64-bit mode is off (they would come back as 32-bit).
    """
    where = f"restore: like does not match checkpoint {path}"
    records = metadata["leaves"]
    like_leaves = _like_leaves(like)
    saved_paths = [record["path"] for record in records]
    like_paths = [leaf_path for leaf_path, _, _ in like_leaves]
    if saved_paths != like_paths:
        saved_set, like_set = set(saved_paths), set(like_paths)
        only_saved = [p for p in saved_paths if p not in like_set]
        only_like = [p for p in like_paths if p not in saved_set]
        parts = [f"{len(saved_paths)} leaves in the checkpoint, {len(like_paths)} in like"]
        if only_saved:
            parts.append(f"only in the checkpoint: {_sample(only_saved)}")
        if only_like:
            parts.append(f"only in like: {_sample(only_like)}")
        if not (only_saved or only_like):
            parts.append("same leaves in another order")
        raise ValueError(f"{where}: tree structures differ ({'; '.join(parts)})")
    like_treedef = str(jax.tree.structure(like))
    if metadata["treedef"] != like_treedef and metadata["treedef"] not in _older_treedefs(like):
        raise ValueError(
            f"{where}: tree structures differ with the same leaf paths: "
            f"{_first_difference(metadata['treedef'], like_treedef)}"
        )
    differ = [
        (record["path"], _describe(record["shape"], record["dtype"]), _describe(shape, dtype))
        for record, (_, shape, dtype) in zip(records, like_leaves)
        if tuple(record["shape"]) != shape or record["dtype"] != str(dtype)
    ]
    if differ:
        leaf_path, saved, wanted = differ[0]
        more = f" ({len(differ)} leaves differ)" if len(differ) > 1 else ""
        raise ValueError(f"{where}: leaf {leaf_path} is {saved} in the checkpoint, like has {wanted}{more}")
    for record in records:
        dtype = None if "key_impl" in record else _numpy_dtype(record["dtype"])
        if dtype is not None and jax.dtypes.canonicalize_dtype(dtype) != dtype:
            raise ValueError(
                f"restore: checkpoint {path} holds {dtype} leaves (first {record['path']}) but JAX's 64-bit "
                "mode is off; restore inside `with jax.enable_x64(True):`"
            )


def _numpy_dtype(name: str) -> np.dtype:
    """The dtype named ``name`` (numpy's, or one JAX adds such as ``bfloat16``)."""
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(getattr(jax.numpy, name))


def _sha256(file_path: Path, fsync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(file_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _file_table(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``directory``; fsyncs each."""
    table = {}
    for root, _, files in sorted(os.walk(directory)):
        for file_name in sorted(files):
            file_path = Path(root) / file_name
            table[file_path.relative_to(directory).as_posix()] = {
                "size": file_path.stat().st_size,
                "sha256": _sha256(file_path, fsync=True),
            }
    return table


def _fsync_dir(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory descriptors
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _metadata_text(metadata: dict[str, Any]) -> str:
    """The metadata as JSON with one leaf and one file per line (readable, diffable)."""
    lines = []
    for field, value in metadata.items():
        if isinstance(value, list) and value:
            inner = ",\n".join(f"  {json.dumps(item)}" for item in value)
            lines.append(f" {json.dumps(field)}: [\n{inner}\n ]")
        elif isinstance(value, dict) and value:
            inner = ",\n".join(f"  {json.dumps(key)}: {json.dumps(item)}" for key, item in value.items())
            lines.append(f" {json.dumps(field)}: {{\n{inner}\n }}")
        else:
            lines.append(f" {json.dumps(field)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _versions() -> dict[str, str]:
    """The packages that wrote a checkpoint, read once per process (each lookup parses package metadata)."""
    return dict(_installed_versions())


@functools.lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    from importlib import metadata as importlib_metadata

    versions = {}
    for package in ("deepopt", "orbax-checkpoint", "jax"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return tuple(versions.items())


# --- reading and judging a checkpoint directory -----------------------------------------------


def _not_a_checkpoint(path: Path) -> ValueError:
    """The error for a directory without ``deepopt_checkpoint.json``: empty, foreign or torn."""
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        return ValueError(
            f"restore: path {path} is an empty directory, not a deepopt checkpoint "
            f"(expected {METADATA_FILE} and {ARRAYS_DIR}/ written by deepopt.checkpoint.save)"
        )
    if ARRAYS_DIR in entries:
        return ValueError(f"restore: checkpoint {path} is torn: {ARRAYS_DIR}/ is there but {METADATA_FILE} is missing")
    if any(marker in entries for marker in _ORBAX_MARKERS):
        if path.name == ARRAYS_DIR and (path.parent / METADATA_FILE).exists():
            return ValueError(
                f"restore: path {path} is the arrays directory inside the deepopt checkpoint {path.parent}; "
                f"pass path={str(path.parent)!r}"
            )
        return ValueError(
            f"restore: path {path} is an orbax checkpoint that deepopt.checkpoint.save did not write "
            f"(no {METADATA_FILE}); restore it with orbax directly"
        )
    return ValueError(
        f"restore: path {path} is not a deepopt checkpoint (no {METADATA_FILE}; it holds {_sample(entries)})"
    )


def _read_metadata(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata, checked for format, version and fields (ValueError otherwise)."""
    metadata_path = path / METADATA_FILE
    if not metadata_path.is_file():
        raise _not_a_checkpoint(path)
    try:
        metadata = json.loads(metadata_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"restore: checkpoint {path} is torn or corrupt: {METADATA_FILE} is not valid JSON ({error})"
        ) from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        got = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ValueError(
            f"restore: path {path} is not a deepopt checkpoint: {METADATA_FILE} has format {got!r}, expected {FORMAT!r}"
        )
    if metadata.get("version") != VERSION:
        raise ValueError(
            f"restore: checkpoint {path} has format version {metadata.get('version')!r}; "
            f"this deepopt reads version {VERSION}"
        )
    missing = [field for field in _REQUIRED_FIELDS if field not in metadata]
    leaves, files = metadata.get("leaves"), metadata.get("files")
    if not missing and not (
        isinstance(leaves, list)
        and all(isinstance(leaf, dict) and _LEAF_FIELDS <= leaf.keys() for leaf in leaves)
        and isinstance(files, dict)
        and all(isinstance(entry, dict) and _FILE_FIELDS <= entry.keys() for entry in files.values())
    ):
        missing = ["well-formed leaves and files entries"]
    if missing:
        raise ValueError(f"restore: checkpoint {path} is corrupt: {METADATA_FILE} lacks {', '.join(missing)}")
    return metadata


def _check_files(path: Path, metadata: dict[str, Any]) -> None:
    """Every file recorded under ``arrays/`` is there, of its size and sha256 (ValueError: torn or corrupt)."""
    arrays = path / ARRAYS_DIR
    if not arrays.is_dir():
        raise ValueError(f"restore: checkpoint {path} is torn: {ARRAYS_DIR}/ is missing")
    missing = [name for name in metadata["files"] if not (arrays / name).is_file()]
    if missing:
        named = _sample([f"{ARRAYS_DIR}/{name}" for name in missing])
        raise ValueError(f"restore: checkpoint {path} is torn: {named} missing")
    for name, recorded in metadata["files"].items():
        size = (arrays / name).stat().st_size
        if size != recorded["size"]:
            raise ValueError(
                f"restore: checkpoint {path} is torn: {ARRAYS_DIR}/{name} is {size} bytes, "
                f"expected {recorded['size']} (truncated or overwritten)"
            )
    for name, recorded in metadata["files"].items():
        found = _sha256(arrays / name)
        if found != recorded["sha256"]:
            raise ValueError(
                f"restore: checkpoint {path} is corrupt: {ARRAYS_DIR}/{name} differs from what was written "
                f"(sha256 {found[:12]}..., expected {recorded['sha256'][:12]}...)"
            )


def _is_replaceable(path: Path) -> bool:
    """An empty directory or one that holds a deepopt checkpoint's metadata file (possibly torn)."""
    return path.is_dir() and (not any(path.iterdir()) or (path / METADATA_FILE).is_file())


def _as_path(path: Any, where: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(os.fspath(path)).expanduser().absolute()  # orbax refuses a relative path


# --- the API ------------------------------------------------------------------------------------


def save(path: str | os.PathLike, state: Any, *, overwrite: bool = False) -> None:
    """Write ``state`` (a ``TrainState`` or any pytree of arrays) to the directory ``path``, atomically.

    Refuses (``ValueError``) when ``path`` already holds a checkpoint unless ``overwrite=True``;
    never replaces a file or a non-empty directory that is not a deepopt checkpoint. Parent
    directories are created.
    """
    path = _as_path(path, "save")
    if not isinstance(overwrite, bool):
        raise TypeError(f"save: overwrite must be a bool, got {overwrite!r}")
    if path.exists() or path.is_symlink():
        if not _is_replaceable(path):
            kind = "a file" if not path.is_dir() else f"a non-empty directory without {METADATA_FILE}"
            raise ValueError(
                f"save: path {path} exists and is not a deepopt checkpoint ({kind}); refusing to replace it"
                + (" even with overwrite=True" if overwrite else "")
            )
        if any(path.iterdir()) and not overwrite:
            raise ValueError(f"save: path {path} already holds a checkpoint; pass overwrite=True to replace it")
    records, arrays = _leaf_records(state)
    ocp = _orbax()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{_TMP_TAG}{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()
        with _quiet(ocp), _checkpointer(ocp) as checkpointer:
            checkpointer.save(tmp / ARRAYS_DIR, args=ocp.args.StandardSave(_nest([r["name"] for r in records], arrays)))
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "treedef": str(jax.tree.structure(state)),
            "leaves": records,
            "files": _file_table(tmp / ARRAYS_DIR),
            "written_by": _versions(),
        }
        with open(tmp / METADATA_FILE, "w") as handle:
            handle.write(_metadata_text(metadata))
            handle.flush()
            os.fsync(handle.fileno())
        for root, dirs, _ in os.walk(tmp):
            for name in dirs:
                _fsync_dir(Path(root) / name)
        _fsync_dir(tmp)
        _move_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` to ``path`` (over an empty directory, or aside an old checkpoint)."""
    if not path.exists() or not any(path.iterdir()):
        os.replace(tmp, path)  # atomic; replaces an empty directory
        return
    old = path.parent / f".{path.name}{_OLD_TAG}{uuid.uuid4().hex[:12]}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def restore(path: str | os.PathLike, *, like: T) -> T:
    """Read the checkpoint at ``path`` into ``like``'s tree (a ``TrainState``, any pytree of arrays or ShapeDtypeStructs).

    The metadata is checked before any array is read: ``FileNotFoundError`` for a missing
    ``path``; ``ValueError`` for a torn or foreign checkpoint and for one whose tree structure,
    shapes or dtypes differ from ``like``'s. Arrays come back on the default device.
    """
    path = _as_path(path, "restore")
    if not path.exists():
        raise FileNotFoundError(f"restore: path {path} does not exist (no checkpoint there)")
    if not path.is_dir():
        raise ValueError(
            f"restore: path {path} is a file, expected a checkpoint directory written by deepopt.checkpoint.save"
        )
    metadata = _read_metadata(path)
    _check_matches(path, metadata, like)
    _check_files(path, metadata)
    records = metadata["leaves"]
    # numpy targets (zero-strided: no memory): orbax reads host arrays, which go to the default device
    # uncommitted like any fresh computation's, so a restored state hits the same compiled programs.
    target = _nest(
        [record["name"] for record in records],
        [
            np.broadcast_to(np.zeros((), np.uint32), tuple(record["key_data_shape"]))
            if "key_impl" in record
            else np.broadcast_to(np.zeros((), _numpy_dtype(record["dtype"])), tuple(record["shape"]))
            for record in records
        ],
    )
    ocp = _orbax()
    try:
        with _quiet(ocp), _checkpointer(ocp) as checkpointer:
            stored = checkpointer.restore(path / ARRAYS_DIR, args=ocp.args.StandardRestore(target))
    except Exception as error:  # orbax and tensorstore raise many types; the checkpoint is the cause
        first_line = (str(error).strip().splitlines() or [""])[0]
        first_line = first_line if len(first_line) <= 200 else first_line[:200] + "..."
        raise ValueError(
            f"restore: checkpoint {path} could not be read by orbax ({type(error).__name__}: {first_line})"
        ) from error
    leaves = []
    for record in records:
        array = jax.numpy.asarray(_lookup(stored, record["name"]))
        if "key_impl" in record:
            array = jax.random.wrap_key_data(array, impl=record["key_impl"])
        if list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
            raise ValueError(
                f"restore: checkpoint {path}: leaf {record['path']} came back as "
                f"{_describe(array.shape, array.dtype)}, expected {_describe(record['shape'], record['dtype'])}"
            )
        leaves.append(array)
    return jax.tree.unflatten(jax.tree.structure(like), leaves)
