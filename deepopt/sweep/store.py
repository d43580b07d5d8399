r"""The results store: JSON-lines rows, run ids, resume, and one writer per file.

Ids (version 2). A config's id digests only the fields whose value differs from the field's
default, plus a version tag:

    config_id = digest({"version": 2, "config": Δ(Config), "hparams": Δ(HParams values)})
    run_id    = digest({"config_id": config_id, "seed": s, "key": key data, "data": data_fingerprint})

``Δ`` keeps a field when its canonical JSON differs from its default's (Config: the dataclass
field default; HParams: the NamedTuple default; a field without a default, ``layer_sizes``, is
always kept); ``digest`` is the first 16 hex digits of the SHA-256 of the canonical JSON (sorted
keys, no spaces). Adding a field with a default to Config or HParams therefore leaves every id
unchanged, while two configs share an id exactly when every field is equal. Changing an existing
default changes what the ids mean (a row trained at the old default would pass for one at the
new default): bump ``ID_VERSION`` then.

Version 1 ids (deepopt before the package split) digested every field of the 9 Config and 15
HParams fields of that time (``V1_CONFIG_FIELDS``, ``V1_HPARAMS_FIELDS``, frozen here with the
digest code of that time). Resuming accepts a row whose id is the v1 id of a planned run and
gives it, in memory, the run's v2 ``id`` and ``config_id`` (and any field added since, at its
default); the file is never rewritten, and rows appended from now on carry v2 ids.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from deepopt import data as data_lib
from deepopt import train as train_lib

ID_VERSION = 2

# Frozen: the fields v1 ids digested, in the order of that time. Never edit these.
V1_CONFIG_FIELDS = (
    "layer_sizes",
    "activation",
    "init",
    "optimizer",
    "schedule",
    "batch_size",
    "epochs",
    "early_stopping",
    "batchnorm",
)
V1_HPARAMS_FIELDS = (
    "learning_rate",
    "beta",
    "beta1",
    "beta2",
    "epsilon",
    "weight_decay",
    "l2",
    "keep_prob",
    "init_scale",
    "decay_rate",
    "time_interval",
    "decay_factor",
    "warmup_epochs",
    "decay_epochs",
    "min_learning_rate",
)


# ------------------------------------------------------------------------------ ids


def _canonical(value: Any) -> str:
    """Canonical JSON text of a value (tuples and lists alike): how ids and choices are compared.

    A finite float, an int, a bool or None is written directly, as ``json.dumps`` writes it
    (``float.__repr__``, ``int.__repr__``): a sweep compares hundreds of hyperparameter values per
    config against their defaults, and ``json.dumps`` costs some microseconds a call.
    """
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return float.__repr__(value)
    if isinstance(value, int):  # bools were written above
        return int.__repr__(value)
    return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))


def static_text(name: str, value: Any) -> str:
    """A static choice as comparable text: a Flax module (``Config.model``) by ``modules.describe``, else its JSON."""
    if name == "model" and value is not None:
        from deepopt import modules

        return modules.describe(value)
    if name == "task" and hasattr(value, "describe"):
        return _canonical(value.describe())
    return _canonical(value)


def json_round_trip(value: Any) -> Any:
    """``json.loads(json.dumps(value, allow_nan=False))``: a value as a results file gives it back.

    Built directly for plain ``dict`` (string keys), ``list``, ``tuple``, finite ``float``, ``int``,
    ``str``, ``bool`` and None, the types of a row (tuples become lists; each float is the same
    number, as JSON's shortest repr reads back exactly); anything else, a non-finite float (an
    error) included, goes through ``json`` itself.
    """
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float and math.isfinite(value):
        return value
    if kind is list or kind is tuple:
        return [json_round_trip(item) for item in value]
    if kind is dict and all(type(name) is str for name in value):
        return {name: json_round_trip(item) for name, item in value.items()}
    return json.loads(json.dumps(value, allow_nan=False))


def _digest(obj: Any) -> str:
    text = _canonical(obj)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digest_v1(obj: Any) -> str:
    """The digest of v1 ids, frozen (``_digest`` of that time, written out so that it can never drift)."""
    text = json.dumps(obj, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A hyperparameter value as a Python float (the sampled float64 value, exactly)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"hyperparameter values must be numbers, got {value!r}") from None


def data_fingerprint(*datasets: data_lib.Dataset | None) -> str:
    """Fingerprint of the data (dtypes, shapes and bytes of every array; 16 hex digits).

    Part of every run id, so that a results file never mixes rows trained on other data; the
    main job also records it to refuse resuming a sweep with other data.
    """
    hasher = hashlib.sha256()
    for dataset in datasets:
        for array in () if dataset is None else dataset:
            array = np.ascontiguousarray(np.asarray(array))
            hasher.update(f"{array.dtype}{array.shape}".encode())
            hasher.update(array.tobytes())
    return hasher.hexdigest()[:16]


def config_defaults(config_type: type = train_lib.Config) -> dict[str, Any]:
    """``{field: default}`` of a Config dataclass (``default_factory`` called); fields without one are absent."""
    defaults = {}
    for field in dataclasses.fields(config_type):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    if "task" in defaults and hasattr(defaults["task"], "describe"):  # recorded as its name (describe_config)
        defaults["task"] = defaults["task"].describe()
    return defaults


def hparams_defaults() -> dict[str, Any]:
    """``{field: default}`` of ``train.HParams``, as ``plan`` records values (floats, or None)."""
    return {name: _plain(value) for name, value in train_lib.HParams._field_defaults.items()}


def _non_default(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` whose canonical JSON differs from their default's (no default: kept)."""
    return {
        name: value
        for name, value in values.items()
        if name not in defaults or _canonical(value) != _canonical(defaults[name])
    }


@functools.lru_cache(maxsize=256)
def _config_delta(config: train_lib.Config) -> dict[str, Any]:
    """``Δ(Config)``, once per distinct Config (a sweep's hundreds of configs share a few); read-only."""
    return _non_default(train_lib.describe_config(config), config_defaults(type(config)))


@functools.lru_cache(maxsize=8)
def _hparams_default_texts(hparams_type: type) -> dict[str, str]:
    """``{field: canonical JSON of its default}`` of an HParams type; read-only."""
    return {name: _canonical(_plain(value)) for name, value in hparams_type._field_defaults.items()}


def _config_digest(
    config: Mapping[str, Any],
    config_default: Mapping[str, Any],
    hparams: Mapping[str, Any],
    hparams_default: Mapping[str, Any],
) -> str:
    """``digest({"version": ID_VERSION, "config": Δconfig, "hparams": Δhparams})`` from field values and defaults.

    The formula written out; ``config_id`` computes the same with its parts cached.
    """
    return _digest(
        {
            "version": ID_VERSION,
            "config": _non_default(config, config_default),
            "hparams": _non_default(hparams, hparams_default),
        }
    )


def config_id(config: train_lib.Config, hparams: Mapping[str, Any]) -> str:
    """The v2 id of a config: its Config and HParams values (every field, as ``plan`` records them) less defaults.

    ``digest({"version": ID_VERSION, "config": Δconfig, "hparams": Δhparams})``.
    """
    default_texts = _hparams_default_texts(train_lib.HParams)
    hparams_delta = {
        name: value
        for name, value in hparams.items()
        if name not in default_texts or _canonical(value) != default_texts[name]
    }
    return _digest({"version": ID_VERSION, "config": _config_delta(config), "hparams": hparams_delta})


def run_id(config_id: str, seed: int, key_data: Sequence[int], data_digest: str) -> str:
    """``digest({"config_id", "seed", "key", "data"})``: a run's id from its config's id, seed index, key and data."""
    return _digest({"config_id": config_id, "seed": seed, "key": list(key_data), "data": data_digest})


def legacy_config_id(config: train_lib.Config, hparams: Mapping[str, Any]) -> str | None:
    """The v1 id of a config: every frozen v1 field (``V1_CONFIG_FIELDS``, ``V1_HPARAMS_FIELDS``) digested.

    None when no v1 file can hold the config: a field added since v1 is not at its default, or a
    v1 field no longer exists.
    """
    values = train_lib.describe_config(config)
    if any(name not in values for name in V1_CONFIG_FIELDS) or any(name not in hparams for name in V1_HPARAMS_FIELDS):
        return None
    newer_config = {name: value for name, value in values.items() if name not in V1_CONFIG_FIELDS}
    newer_hparams = {name: value for name, value in hparams.items() if name not in V1_HPARAMS_FIELDS}
    if _non_default(newer_config, config_defaults(type(config))) or _non_default(newer_hparams, hparams_defaults()):
        return None
    return _digest_v1(
        {
            "config": {name: values[name] for name in V1_CONFIG_FIELDS},
            "hparams": {name: hparams[name] for name in V1_HPARAMS_FIELDS},
        }
    )


def legacy_run_id(v1_config_id: str, seed: int, key_data: Sequence[int], data_digest: str) -> str:
    """The v1 run id: ``run_id``'s fields (unchanged since v1) over the v1 config id, with the frozen digest."""
    return _digest_v1({"config_id": v1_config_id, "seed": seed, "key": list(key_data), "data": data_digest})


# ------------------------------------------------------------------------------ the results file


def read_rows(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines results file (empty if it does not exist).

    Rows are written a chunk at a time in one ``write``, so a killed sweep can leave only a torn
    tail: bytes after the last newline. They are ignored, and cut off the file with
    ``repair=True``. A newline-terminated line that is not a row is damage: an error naming it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as stream:
        content = stream.read()
    *lines, tail = content.split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}:{number} is not a JSON row of a sweep; the file is damaged")
        rows.append(row)
    if repair and tail:
        with open(path, "r+b") as stream:
            stream.truncate(len(content) - len(tail))
            stream.flush()
            os.fsync(stream.fileno())
    return rows


def _append_rows(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` as JSON lines in one write, then flush and fsync."""
    text = "".join(json.dumps(row, allow_nan=False, separators=(", ", ": ")) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


class LegacyRun(NamedTuple):
    """What a v1 row of a planned run is given on resume: the run's v2 ids and its full Config and HParams."""

    id: str
    config_id: str
    config: dict[str, Any]  # every Config field, as a row holds it (JSON)
    hparams: dict[str, Any]  # every HParams field


def _resume(
    results_path: str | os.PathLike | None,
    ids: Iterable[str] | None,
    resume: bool,
    legacy: Mapping[str, LegacyRun] | None = None,
) -> dict[str, dict[str, Any]]:
    """The rows of the planned runs ``ids`` (None: every row) already in ``results_path``, by id (process 0's read).

    ``legacy`` maps a planned run's v1 id to its ``LegacyRun``: such a row is taken too, with the
    v2 ``id`` and ``config_id`` and any Config or HParams field added since v1 (at its default:
    see ``legacy_config_id``) filled in, in memory only. Process 0 reads the file and cuts a torn
    last line (``resume=True``) or empties it (``resume=False``); opening it here makes an
    unwritable path fail before any compilation. Other processes read nothing (``{}``):
    ``reopen.writing`` shares process 0's rows with them (``processes.share``).
    """
    done: dict[str, dict[str, Any]] = {}
    if not (jax.process_index() == 0 and results_path is not None):
        return done
    wanted = None if ids is None else set(ids)
    legacy = {} if legacy is None else legacy
    if resume:
        for row in read_rows(results_path, repair=True):
            if wanted is None or row["id"] in wanted:
                done.setdefault(row["id"], row)
            elif row["id"] in legacy:  # a v1 row of a planned run
                now = legacy[row["id"]]
                upgraded = row | {
                    "id": now.id,
                    "config_id": now.config_id,
                    "config": now.config | row.get("config", {}),  # fields added since v1, at their defaults
                    "hparams": now.hparams | row.get("hparams", {}),
                }
                done.setdefault(now.id, upgraded)
    with open(results_path, "a" if resume else "w", encoding="utf-8") as stream:
        os.fsync(stream.fileno())
    return done


# ------------------------------------------------------------------------------ learning curves

def curve_names(task: Any) -> tuple[str, ...]:
    """The learning curves of a run of ``task``: ``cost``, ``dev_<primary>``, ``dev_cost``."""
    return ("cost", f"dev_{task.primary}", "dev_cost")


def curve_values(task: Any, log: Any) -> dict[str, Any]:
    """A ``train.EpochLog``'s curves by ``curve_names``: the training cost, the primary dev metric, the dev cost."""
    return dict(zip(curve_names(task), (log.cost, log.dev_metric, log.dev_cost)))


def beside(results_path: str | os.PathLike, suffix: str) -> str:
    """A file beside ``results_path``, named by ``suffix``: ``results.jsonl`` -> ``results<suffix>``."""
    path = os.fspath(results_path)
    return (path[: -len(".jsonl")] if path.endswith(".jsonl") else path) + suffix


def curves_path(results_path: str | os.PathLike) -> str:
    """Where the learning curves of ``results_path`` live: ``results.jsonl`` -> ``results.curves.jsonl``."""
    return beside(results_path, ".curves.jsonl")


def encode_curve(values: np.ndarray) -> str:
    """A per-epoch curve as compact text: base64 of its little-endian float32 bytes (NaN kept)."""
    return base64.b64encode(np.asarray(values, "<f4").tobytes()).decode("ascii")


def decode_curve(text: str) -> np.ndarray:
    """Inverse of ``encode_curve``: a float32 array."""
    return np.frombuffer(base64.b64decode(text), "<f4").copy()


def curve_row(run_id: str, curves: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The curves file's line of one run: its id, the epoch count and every curve (``curve_names``) encoded."""
    epochs = len(next(iter(curves.values())))
    return {"id": run_id, "epochs": epochs, **{name: encode_curve(values) for name, values in curves.items()}}


def read_curves(path: str | os.PathLike, ids: Iterable[str], *, repair: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """``{run id: {metric: (epochs,) float32}}`` of the runs ``ids`` found in a curves file (first line of an id wins)."""
    wanted, curves = set(ids), {}
    for row in read_rows(path, repair=repair):
        if row["id"] in wanted and row["id"] not in curves:
            curves[row["id"]] = {name: decode_curve(text) for name, text in row.items() if name not in ("id", "epochs")}
    return curves


# ------------------------------------------------------------------------------ the writer's lock


class ResultsInUseError(RuntimeError):
    """Another process holds the results file's writer lock (its pid is in the message)."""


_HELD_LOCKS: dict[str, list[int]] = {}  # real path -> [fd, depth] of the locks this process holds


def _lock_holder(path: str) -> int | None:
    """The pid holding a ``flock`` on ``path``, read from ``/proc/locks`` (None where that is not available)."""
    try:
        info = os.stat(path)
        with open("/proc/locks", encoding="ascii") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].count(":") == 2:
            major, minor, inode = fields[5].split(":")
            try:
                same = (int(major, 16), int(minor, 16), int(inode)) == (
                    os.major(info.st_dev), os.minor(info.st_dev), info.st_ino
                )
            except ValueError:
                continue
            if same and fields[4].isdigit():
                return int(fields[4])
    return None


@contextlib.contextmanager
def lock_results(results_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on the results file for the life of the block.

    One writer per results file: a second process fails at once with ``ResultsInUseError`` naming
    the file's directory and the holder's pid (instead of redoing and appending every run). The
    lock is re-entrant within a process (the main job holds it across its rounds, and ``run``
    takes it again) and the kernel drops it when its holder dies, SIGKILL included, so a killed
    sweep can be resumed at once. Creates the file if it does not exist; never truncates it.
    """
    real = os.path.realpath(os.fspath(results_path))
    held = _HELD_LOCKS.get(real)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    try:
        fd = os.open(real, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise OSError(f"results_path {os.fspath(results_path)!r} cannot be opened for writing: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(real)
        os.close(fd)
        who = f"pid {holder}" if holder is not None else "a process whose pid this system does not show"
        raise ResultsInUseError(
            f"{os.path.dirname(real) or '.'}: another sweep is writing {os.path.basename(real)} ({who}); "
            "wait for it to finish or stop it before resuming"
        ) from None
    _HELD_LOCKS[real] = [fd, 1]
    try:
        yield
    finally:
        del _HELD_LOCKS[real]
        os.close(fd)  # releases the lock
