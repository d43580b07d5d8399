r"""The parallel hyperparameter sweep: many ``fit`` runs, compiled once per group of static choices.

A search ``space`` maps field names to distributions or fixed values. A field of ``train.HParams``
is traced (any distribution); a field of ``train.Config`` is static (a ``choice``/``grid`` of
values, or a fixed value), and every distinct combination of static values is one *group*: one
compiled program, whatever the number of configs in it.

``run`` samples ``num_configs`` configs (``"random"``, ``"quasi"`` = scrambled Halton, or
``"grid"`` = the Cartesian product), replicates each with ``seeds`` PRNG keys and validates every
value before compiling. Per group it compiles ``fit``, ``vmap``-ed over configs and seeds, once
for one chunk shape: ``C`` configs × every seed (``chunk_layout``; ``chunk_size="auto"`` sizes it
to a per-device cache budget, and fewer configs are taken when ``memory_budget_bytes`` per device,
read from ``memory_analysis()``, demands it). It cuts the group into chunks of that shape (the
last padded with copies of its last config, so ``C`` is a multiple of the device count) and
shards each chunk's config axis over a ``Mesh`` of every device, several processes included. The
seed keys are not batched along a chunk's config axis, so work that depends on the key alone
(permutations, mini-batch gathers, dropout's draws) is done once per seed, not once per run.
Each finished chunk is appended to ``results_path`` as JSON lines in one write, flushed and fsynced; with
``resume=True`` rows already there are skipped by id, so a killed sweep restarted with the same
arguments recomputes only unfinished chunks, with the same program, and ends with the same rows.

A run's id is a hash of its Config (every field), its HParams values, its seed index and key,
and a fingerprint of the data: the same arguments give the same ids.

Distributions map a unit coordinate :math:`u \in [0, 1)` to a value:

- ``uniform(lo, hi)``: :math:`lo + u(hi - lo)`.
- ``log_uniform(lo, hi)``: :math:`10^{\log_{10} lo + u(\log_{10} hi - \log_{10} lo)}`.
- ``one_minus_log_uniform(lo, hi)``: :math:`1 - 10^{\log_{10} lo + u(\log_{10} hi - \log_{10} lo)}`,
  so :math:`\beta \in [1 - hi, 1 - lo]` (``(1e-3, 1e-1)`` gives :math:`\beta \in [0.9, 0.999]`).
- ``choice(values)`` / ``grid(values)``: ``values[floor(u · n)]``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import functools
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepopt import data as data_lib
from deepopt import init as init_lib
from deepopt import model, optim
from deepopt import train as train_lib

if TYPE_CHECKING:
    from deepopt.diagnostics import Diagnosis

SAMPLERS = ("random", "quasi", "grid")
RUN_AXIS = "runs"


# ------------------------------------------------------------------------------ distributions


def _check_bounds(
    kind: str, lo: float, hi: float, low_limit: float | None, high_limit: float | None
) -> tuple[float, float]:
    """``lo < hi``, both finite, inside ``(low_limit, high_limit]``; returns them as floats."""
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise TypeError(f"{kind}(lo, hi) needs two numbers, got lo={lo!r}, hi={hi!r}") from None
    ok = math.isfinite(lo) and math.isfinite(hi) and lo < hi
    ok = ok and (low_limit is None or lo > low_limit) and (high_limit is None or hi <= high_limit)
    if not ok:
        window = f"{low_limit if low_limit is not None else '-inf'} < lo < hi" + (
            f" <= {high_limit}" if high_limit is not None else ""
        )
        raise ValueError(f"{kind}(lo, hi) needs finite {window}, got lo={lo!r}, hi={hi!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class Uniform:
    """``lo + u (hi - lo)``; the subclasses are uniform in another coordinate (``to_scale``)."""

    lo: float
    hi: float
    KIND: ClassVar[str] = "uniform"
    LOW_LIMIT: ClassVar[float | None] = None  # lo must be above it
    HIGH_LIMIT: ClassVar[float | None] = None  # hi must be at most it
    LOG_BOUNDS: ClassVar[bool] = False  # lo and hi are spread on a log10 scale

    def __post_init__(self) -> None:
        lo, hi = _check_bounds(self.KIND, self.lo, self.hi, self.LOW_LIMIT, self.HIGH_LIMIT)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    def to_scale(self, values: np.ndarray) -> np.ndarray:
        """The coordinate in which the distribution is uniform (here the value itself)."""
        return np.asarray(values, np.float64)

    def from_scale(self, t: np.ndarray) -> np.ndarray:
        """Inverse of ``to_scale``."""
        return np.asarray(t, np.float64)

    @property
    def scaled_bounds(self) -> tuple[float, float]:
        """``(lo, hi)`` in the ``to_scale`` coordinate."""
        return (math.log10(self.lo), math.log10(self.hi)) if self.LOG_BOUNDS else (self.lo, self.hi)

    def between(self, lo: float, hi: float) -> Uniform:
        """The same kind of distribution with ``scaled_bounds`` ``(lo, hi)``."""
        return type(self)(10.0**lo, 10.0**hi) if self.LOG_BOUNDS else type(self)(lo, hi)

    @property
    def value_bounds(self) -> tuple[float, float]:
        """The smallest and largest value it samples."""
        return self.lo, self.hi

    def sample(self, u: np.ndarray) -> list[float]:
        """Values for unit coordinates ``u`` in ``[0, 1)``."""
        lo, hi = self.scaled_bounds
        return [float(v) for v in self.from_scale(lo + np.asarray(u, np.float64) * (hi - lo))]


@dataclasses.dataclass(frozen=True)
class LogUniform(Uniform):
    """``10**(log10 lo + u (log10 hi - log10 lo))``: uniform in the exponent."""

    KIND: ClassVar[str] = "log_uniform"
    LOW_LIMIT: ClassVar[float | None] = 0.0
    LOG_BOUNDS: ClassVar[bool] = True

    def to_scale(self, values: np.ndarray) -> np.ndarray:
        return np.log10(np.asarray(values, np.float64))

    def from_scale(self, t: np.ndarray) -> np.ndarray:
        return 10.0 ** np.asarray(t, np.float64)


@dataclasses.dataclass(frozen=True)
class OneMinusLogUniform(Uniform):
    """``1 - 10**(log10 lo + u (log10 hi - log10 lo))``: ``1 - beta`` log-uniform in ``[lo, hi]``."""

    KIND: ClassVar[str] = "one_minus_log_uniform"
    LOW_LIMIT: ClassVar[float | None] = 0.0
    HIGH_LIMIT: ClassVar[float | None] = 1.0
    LOG_BOUNDS: ClassVar[bool] = True

    def to_scale(self, values: np.ndarray) -> np.ndarray:
        return np.log10(1.0 - np.asarray(values, np.float64))

    def from_scale(self, t: np.ndarray) -> np.ndarray:
        return 1.0 - 10.0 ** np.asarray(t, np.float64)

    @property
    def value_bounds(self) -> tuple[float, float]:
        return 1.0 - self.hi, 1.0 - self.lo


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of ``values``, equally likely: ``values[floor(u · n)]``. Valid for static fields."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        kind = type(self).__name__.lower()
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence):
            raise TypeError(f"{kind}(values) needs a list or tuple of values, got {self.values!r}")
        if len(self.values) == 0:
            raise ValueError(f"{kind}(values) needs at least one value, got an empty sequence")
        object.__setattr__(self, "values", tuple(self.values))

    def sample(self, u: np.ndarray) -> list[Any]:
        """Values for unit coordinates ``u`` in ``[0, 1)``."""
        n = len(self.values)
        index = np.minimum((np.asarray(u, np.float64) * n).astype(np.int64), n - 1)
        return [self.values[i] for i in index]


@dataclasses.dataclass(frozen=True)
class Grid(Choice):
    """Values to enumerate (``sampler="grid"`` takes the Cartesian product); sampled like ``choice`` otherwise."""


Distribution = Uniform | Choice


def grid(values: Sequence[Any]) -> Grid:
    """Grid values of one field: every value with ``sampler="grid"``, one at random otherwise."""
    return Grid(values)


def choice(values: Sequence[Any]) -> Choice:
    """A static (or traced) choice among ``values``, e.g. optimizers, activations, layer sizes."""
    return Choice(values)


def uniform(lo: float, hi: float) -> Uniform:
    r"""Uniform on ``[lo, hi)``: :math:`lo + u(hi - lo)`."""
    return Uniform(lo, hi)


def log_uniform(lo: float, hi: float) -> LogUniform:
    r"""Log-uniform on ``[lo, hi)``, ``0 < lo`` (learning rate, λ).

    :math:`10^{\log_{10}lo + u\,(\log_{10}hi - \log_{10}lo)}`, ``u`` uniform on ``[0, 1)``.
    """
    return LogUniform(lo, hi)


def one_minus_log_uniform(lo: float, hi: float) -> OneMinusLogUniform:
    r"""For averaging betas: :math:`\beta = 1 - 10^{U}`, ``U`` uniform on ``[log10 lo, log10 hi)``.

    So β ∈ [1−hi, 1−lo]: ``one_minus_log_uniform(1e-3, 1e-1)`` spreads β over [0.9, 0.999].
    """
    return OneMinusLogUniform(lo, hi)


# ------------------------------------------------------------------------------ samplers


def _primes(count: int) -> list[int]:
    """The first ``count`` primes (the Halton bases)."""
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return primes


def halton(key: jax.Array, num_points: int, dims: int) -> np.ndarray:
    r"""Scrambled Halton points in :math:`[0, 1)^{dims}`, shape ``(num_points, dims)``.

    Dimension ``j`` uses the ``j``-th prime ``b``: point ``i`` has base-``b`` digits
    :math:`d_k(i)` and coordinate :math:`\sum_k \pi_{j,k}(d_k(i))\, b^{-(k+1)}`, with an independent
    random permutation :math:`\pi_{j,k}` of the digits per dimension and digit position
    (deterministic given ``key``). Permuting digits keeps Halton's stratification: the first
    :math:`b^K` points put one point in each of the :math:`b^K` intervals of width :math:`b^{-K}`,
    while the scrambling breaks the correlations between dimensions of plain Halton.
    """
    _check_count("num_points", num_points)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 0:
        raise ValueError(f"dims must be an int >= 0, got {dims!r}")
    points = np.zeros((num_points, dims), np.float64)
    index = np.arange(num_points, dtype=np.int64)
    for j, (base, dim_key) in enumerate(zip(_primes(dims), jax.random.split(key, max(dims, 1)))):
        # Enough digits to index every point and to resolve ~2^-40.
        num_digits = max(math.ceil(40 * math.log(2) / math.log(base)), len(np.base_repr(max(num_points - 1, 0), base)))
        permutations = np.argsort(np.asarray(jax.random.uniform(dim_key, (num_digits, base))), axis=1)
        remaining = index.copy()
        for k in range(num_digits):
            digit = remaining % base
            remaining //= base
            points[:, j] += permutations[k][digit] * float(base) ** -(k + 1)
    return points


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _is_distribution(value: Any) -> bool:
    return isinstance(value, (Uniform, Choice))


def static_fields() -> tuple[str, ...]:
    """Names of the static ``train.Config`` fields (each distinct combination is one compilation)."""
    return tuple(field.name for field in dataclasses.fields(train_lib.Config))


def traced_fields() -> tuple[str, ...]:
    """Names of the traced ``train.HParams`` fields (any value, no recompilation)."""
    return train_lib.HParams._fields


def check_space(space: Mapping[str, Any]) -> None:
    """Field names must be HParams or Config fields; static fields take ``choice``/``grid`` or a fixed value."""
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a dict from field name to distribution or value, got {type(space).__name__}")
    static, traced = static_fields(), traced_fields()
    for name, value in space.items():
        if name not in static and name not in traced:
            raise ValueError(
                f"space has unknown field {name!r}; valid names are the HParams fields {list(traced)} "
                f"and the Config fields {list(static)}"
            )
        if name in static and _is_distribution(value) and not isinstance(value, Choice):
            raise ValueError(
                f"space[{name!r}] is a static Config field (one compilation per value): give choice([...]), "
                f"grid([...]) or a fixed value, got {value!r}"
            )


def sample(
    space: Mapping[str, Any], key: jax.Array, num_configs: int | None, sampler: str = "random"
) -> list[dict[str, Any]]:
    """``num_configs`` assignments ``{field: value}`` of every field in ``space``, deterministic given ``key``.

    ``"random"``: i.i.d. unit coordinates; ``"quasi"``: scrambled Halton (``halton``); ``"grid"``:
    the Cartesian product of the ``grid``/``choice`` values in ``space`` order (``num_configs``
    None or its size). Fixed values are copied into every assignment.
    """
    check_space(space)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    varying = [name for name, value in space.items() if _is_distribution(value)]
    fixed = {name: value for name, value in space.items() if not _is_distribution(value)}
    if sampler == "grid":
        continuous = [name for name in varying if not isinstance(space[name], Choice)]
        if continuous:
            raise ValueError(
                f"sampler='grid' enumerates grid/choice values, but space[{continuous[0]!r}] is "
                f"{space[continuous[0]]!r}: use grid([...]) or sampler='random' / 'quasi'"
            )
        combos = list(itertools.product(*(space[name].values for name in varying)))
        if num_configs is not None and num_configs != len(combos):
            raise ValueError(
                f"sampler='grid' makes all {len(combos)} combinations; "
                f"num_configs must be None or {len(combos)}, got {num_configs!r}"
            )
        return [{**fixed, **dict(zip(varying, combo))} for combo in combos]
    if num_configs is None:
        raise ValueError(f"num_configs must be a positive int for sampler={sampler!r}, got None")
    num_configs = _check_count("num_configs", num_configs)
    if sampler == "random":
        unit = np.asarray(jax.random.uniform(key, (num_configs, len(varying)), jnp.float32), np.float64)
    else:
        unit = halton(key, num_configs, len(varying))
    columns = {name: space[name].sample(unit[:, j]) for j, name in enumerate(varying)}
    return [{**fixed, **{name: columns[name][i] for name in varying}} for i in range(num_configs)]


# ------------------------------------------------------------------------------ the plan


def _canonical(value: Any) -> str:
    """Canonical JSON text of a value (tuples and lists alike): how ids and choices are compared."""
    return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))


def _digest(obj: Any) -> str:
    text = _canonical(obj)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


class Run(NamedTuple):
    """One planned training run: the ``index``-th of the sweep, config ``config_index``, seed ``seed``."""

    index: int
    id: str
    config_id: str
    config_index: int
    seed: int
    config: train_lib.Config
    hparams: dict[str, Any]
    key_data: tuple[int, ...]


def seed_keys(key: jax.Array, seeds: int) -> jax.Array:
    """The ``seeds`` model keys of a sweep run with ``key``: seed ``s`` of every config trains with key ``s``."""
    _, model_key = jax.random.split(_typed_key(key))
    return jax.random.split(model_key, seeds)


def _typed_key(key: Any) -> jax.Array:
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(f"key must be a PRNG key (jax.random.key(seed)), got shape {key.shape} dtype {key.dtype}")
    return jax.random.wrap_key_data(key)


def plan(
    base_config: train_lib.Config,
    space: Mapping[str, Any],
    *,
    key: jax.Array,
    num_configs: int | None,
    seeds: int = 1,
    sampler: str = "random",
    hparams: train_lib.HParams | None = None,
    data_digest: str = "",
) -> list[Run]:
    """Sample and validate the sweep's runs (config-major, then seed); nothing is compiled.

    A sampled config identical to an earlier one (same Config and HParams, as an all-discrete
    space sampled more often than it has combinations gives, or an empty space: every config is
    the base one) is planned once, under the index it was first sampled at: run ids are unique,
    and a sweep may therefore hold fewer than ``num_configs`` configs.

    Every static combination is built with ``dataclasses.replace(base_config, ...)`` (so new
    Config fields join the sweep by themselves) and every hyperparameter column is checked with
    ``train.validate_hparams``, whose error names the config index.
    """
    if not isinstance(base_config, train_lib.Config):
        raise TypeError(f"base_config must be a deepopt.train.Config, got {type(base_config).__name__}")
    hparams = train_lib.HParams() if hparams is None else hparams
    if not isinstance(hparams, train_lib.HParams):
        raise TypeError(f"hparams must be a deepopt.train.HParams, got {type(hparams).__name__}")
    seeds = _check_count("seeds", seeds)
    key = _typed_key(key)
    sample_key, _ = jax.random.split(key)
    assignments = sample(space, sample_key, num_configs, sampler)
    static = [name for name in space if name in static_fields()]
    traced = [name for name in space if name not in static_fields()]

    configs: dict[tuple, train_lib.Config] = {}
    for assignment in assignments:
        combo = tuple(_canonical(assignment[name]) for name in static)
        if combo not in configs:
            choices = {name: assignment[name] for name in static}
            try:
                configs[combo] = dataclasses.replace(base_config, **choices)
            except (TypeError, ValueError) as error:
                raise ValueError(f"space: the static choices {choices} make an invalid Config: {error}") from None

    columns = {  # a fixed None (init_scale, decay_epochs) means "derived from the Config": nothing to check
        name: np.asarray([a[name] for a in assignments]) for name in traced if space[name] is not None
    }
    try:
        train_lib.validate_hparams(hparams._replace(**columns))
    except (TypeError, ValueError) as error:
        raise type(error)(f"space: {error} (config index into the sampled configs)") from None

    keys = seed_keys(key, seeds)
    key_data = [tuple(int(v) for v in np.asarray(jax.random.key_data(k)).reshape(-1)) for k in keys]
    runs = []
    seen: set[str] = set()
    for config_index, assignment in enumerate(assignments):
        config = configs[tuple(_canonical(assignment[name]) for name in static)]
        values = {name: (None if v is None else _plain(v)) for name, v in hparams._asdict().items()}
        values.update({name: _plain(assignment[name]) for name in traced})
        config_id = _digest({"config": dataclasses.asdict(config), "hparams": values})
        if config_id in seen:  # the same Config and HParams again (an empty or all-discrete space): trained once
            continue
        seen.add(config_id)
        for seed in range(seeds):
            run_id = _digest({"config_id": config_id, "seed": seed, "key": key_data[seed], "data": data_digest})
            runs.append(Run(len(runs), run_id, config_id, config_index, seed, config, values, key_data[seed]))
    return runs


def _plain(value: Any) -> Any:
    """A hyperparameter value as a Python float (the sampled float64 value, exactly)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"hyperparameter values must be numbers, got {value!r}") from None


def groups(runs: Sequence[Run]) -> dict[train_lib.Config, list[Run]]:
    """Runs grouped by their static Config (one compiled program each), in order of first appearance."""
    grouped: dict[train_lib.Config, list[Run]] = {}
    for run_ in runs:
        grouped.setdefault(run_.config, []).append(run_)
    return grouped


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


# ------------------------------------------------------------------------------ compiled programs

_compilations = 0


def compile_count() -> int:
    """How many chunk programs this process has compiled.

    One per group, plus one per shrinking step of a group whose chunk exceeds the memory budget.
    """
    return _compilations


def _chunk_program(config: train_lib.Config, key_impl: str, with_test: bool, dropout: bool) -> Callable:
    """``fit`` over ``C`` configs × ``S`` seeds; returns every per-run scalar of ``TrainResult`` (no params).

    Takes ``hp`` with a leading axis of ``C`` configs and ``key_data`` with one of ``S`` seed keys
    and returns ``(C · S,)`` arrays in plan order (config-major, then seed). Two nested ``vmap``s:
    the outer one maps the configs with the key *unbatched*, the inner one the seeds, so whatever
    depends on the key alone
    (initial draws, each epoch's permutation and mini-batch gathers, dropout's uniform draws) is
    computed once per seed instead of once per run: every config's seed ``s`` trains with the same
    key, so nothing changes but the work. ``dropout=False`` (every run of the group has
    ``keep_prob == 1``) compiles the masks out.
    """

    def one_run(
        hp: train_lib.HParams,
        key_data: jax.Array,
        train_set: data_lib.Dataset,
        dev_set: data_lib.Dataset | None,
        test_set: data_lib.Dataset | None,
    ) -> dict[str, jax.Array]:
        result = train_lib.fit(
            config, hp, jax.random.wrap_key_data(key_data, impl=key_impl), train_set, dev_set, dropout=dropout
        )
        scalars = {name: value for name, value in result._asdict().items() if getattr(value, "ndim", None) == 0}
        if with_test:
            scalars["test_accuracy"] = model.accuracy(
                result.params, test_set.X, test_set.y, activation=config.activation, bn_state=result.bn_state
            ).astype(result.train_accuracy.dtype)
        return scalars

    over_seeds = jax.vmap(one_run, in_axes=(None, 0, None, None, None))
    over_configs = jax.vmap(over_seeds, in_axes=(0, None, None, None, None))

    def chunk_program(
        hp: train_lib.HParams, key_data: jax.Array, *splits: data_lib.Dataset | None
    ) -> dict[str, jax.Array]:
        by_config = over_configs(hp, key_data, *splits)  # (C, S): train, dev, test
        return {name: value.reshape(-1) for name, value in by_config.items()}

    return chunk_program


@functools.lru_cache(maxsize=32)
def _compile(
    config: train_lib.Config,
    configs: int,
    seeds: int,
    key_impl: str,
    key_shape: tuple[int, ...],
    dtype: str,
    data_shapes: tuple,
    devices: tuple,
    with_test: bool,
    dropout: bool,
) -> tuple[Any, int]:
    """Compile the chunk program for ``configs`` × ``seeds`` runs, configs sharded over ``devices``.

    Returns it and its bytes per device.
    """
    global _compilations
    _compilations += 1
    mesh = Mesh(np.asarray(devices), (RUN_AXIS,))
    by_run, replicated = NamedSharding(mesh, P(RUN_AXIS)), NamedSharding(mesh, P())
    hp = train_lib.HParams(**{name: jax.ShapeDtypeStruct((configs,), dtype) for name in train_lib.HParams._fields})
    keys = jax.ShapeDtypeStruct((seeds, *key_shape), jnp.uint32)
    datasets = [
        None
        if shapes is None
        else data_lib.Dataset(jax.ShapeDtypeStruct(shapes[0], dtype), jax.ShapeDtypeStruct(shapes[1], jnp.int32))
        for shapes in data_shapes
    ]
    in_shardings = (by_run, replicated, *(None if d is None else replicated for d in datasets))
    program = jax.jit(
        _chunk_program(config, key_impl, with_test, dropout), in_shardings=in_shardings, out_shardings=replicated
    )
    compiled = program.lower(hp, keys, *datasets).compile()
    stats = compiled.memory_analysis()
    size = (
        0
        if stats is None
        else (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        )
    )
    return compiled, int(size)


def _global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host value on every process (each fills its own devices)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


AUTO_CHUNK = "auto"
CACHE_BYTES_PER_DEVICE = 8 * 2**20  # the per-device working set that ran fastest here (see WORKSPACE.md)


def working_set_bytes(config: train_lib.Config, num_examples: int, dtype: Any = jnp.float32) -> int:
    """Bytes one run touches every step: parameters, gradients, optimizer state and one mini-batch's activations.

    ``itemsize · (P · (2 + state slots) + 4 · batch · Σ hidden widths)`` with ``P`` parameters, from
    the shapes of ``init.mlp`` and the optimizer's ``init`` (nothing is computed or compiled).
    """
    params = jax.eval_shape(
        lambda: init_lib.mlp(
            jax.random.key(0), config.layer_sizes, config.init, 1.0, dtype=dtype, batchnorm=config.batchnorm
        )
    )
    state = jax.eval_shape(optim.get(config.optimizer).init, params)
    param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    batch = num_examples if config.batch_size is None else min(config.batch_size, num_examples)
    activation_bytes = 4 * batch * sum(config.layer_sizes[1:-1]) * np.dtype(dtype).itemsize
    return int(2 * param_bytes + state_bytes + activation_bytes)


def auto_chunk_size(config: train_lib.Config, num_examples: int, num_devices: int, dtype: Any = jnp.float32) -> int:
    r"""Runs per chunk so that each device's runs fit ``CACHE_BYTES_PER_DEVICE``: :math:`D \cdot 2^k`.

    ``k`` is the largest with :math:`2^k \cdot` ``working_set_bytes`` within the budget (at least one run
    per device). Measured on the 2-core CPU here: a 2-256-256-1 Adam net (about 1.6 MB per run) ran
    at 110-114 GFLOP/s in chunks of 8 (2 configs × 2 seeds) on 2 devices, 93 in chunks of 4 and 90 in
    chunks of 16; a 2-20-10-1 net runs equally fast from 64 to 256 runs per device.
    """
    per_run = max(working_set_bytes(config, num_examples, dtype), 1)
    runs_per_device = max(CACHE_BYTES_PER_DEVICE // per_run, 1)
    return num_devices * (1 << (int(runs_per_device).bit_length() - 1))


def chunk_layout(group_size: int, chunk_size: int | None, num_devices: int) -> int:
    """Runs per chunk: a multiple of ``num_devices``; the last chunk of a group is padded.

    ``chunk_size=None``: the whole group in one chunk. Otherwise ``min(chunk_size, 2^⌈log2 n⌉)``:
    a group smaller than ``chunk_size`` is padded up to a power of two, so groups of similar size
    (a coarse-to-fine round after a coarse one) share the compiled program of that shape.
    """
    if chunk_size is None:
        return _round_up(group_size, num_devices)
    return _round_up(min(chunk_size, 1 << (group_size - 1).bit_length()), num_devices)


# ------------------------------------------------------------------------------ progress and results


class Progress(NamedTuple):
    """One finished chunk; ``str(progress)`` is the progress line."""

    done: int
    total: int
    resumed: int
    group: int
    groups: int
    chunk: int
    chunks: int
    runs_per_second: float
    eta_seconds: float
    elapsed_seconds: float
    label: str

    def __str__(self) -> str:
        eta = f"{self.eta_seconds:.0f} s" if math.isfinite(self.eta_seconds) else "?"
        resumed = f" ({self.resumed} resumed)" if self.resumed else ""
        return (
            f"[{self.done}/{self.total} runs{resumed}] group {self.group}/{self.groups} ({self.label}) "
            f"chunk {self.chunk}/{self.chunks}: {self.runs_per_second:.1f} runs/s, ETA {eta}"
        )


LOWER_IS_BETTER = ("final_cost",)  # and any metric named *cost; accuracies: higher is better


def _stats(values: Sequence[Any]) -> dict[str, float | None]:
    """Mean, standard deviation, min and max over seeds, ignoring nulls; None when all are null."""
    array = np.asarray([v for v in values if v is not None], np.float64)
    if array.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
    }


@dataclasses.dataclass
class Results:
    """A sweep's rows (one per run, in plan order) and what to read from them.

    Attributes:
      rows: JSON-able dicts: ``id``, ``config_id``, ``config_index``, ``seed``, ``key``,
        ``config`` (every Config field), ``hparams`` (every HParams field), the metrics, ``seconds``.
      space: the search space the rows were sampled from (for ``zoom``).
      metric: the row field that ranks configs (accuracies: higher is better; costs: lower).
      stats: bookkeeping of the call (groups, chunks, compilations, devices, seconds, runs computed).
    """

    rows: list[dict[str, Any]]
    space: dict[str, Any]
    metric: str = "dev_accuracy"
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def metric_names(self) -> list[str]:
        """The numeric per-run fields (accuracies, costs, epochs), in row order."""
        skip = {"id", "config_id", "config_index", "seed", "key", "config", "hparams", "diverged", "seconds"}
        names: list[str] = []
        for row in self.rows:
            names += [
                n
                for n, v in row.items()
                if n not in skip and n not in names and (v is None or isinstance(v, (int, float)))
            ]
        return names

    def by_config(self) -> list[dict[str, Any]]:
        r"""Mean and spread over seeds, one entry per config: ``{metric: {mean, std, min, max}}`` plus its choices.

        ``std`` is the population standard deviation :math:`\sqrt{\frac1S\sum_s (x_s - \bar x)^2}`.
        """
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            grouped.setdefault(row["config_id"], []).append(row)
        entries = []
        for config_id, rows in grouped.items():
            first = rows[0]
            choices = {name: (first["config"] | first["hparams"])[name] for name in self.space}
            entry = {
                "config_id": config_id,
                "config_index": first["config_index"],
                "choices": choices,
                "config": first["config"],
                "hparams": first["hparams"],
                "seeds": len(rows),
                "diverged": sum(bool(r["diverged"]) for r in rows),
            }
            entry.update({name: _stats([r.get(name) for r in rows]) for name in self.metric_names()})
            entries.append(entry)
        return entries

    def best(self, k: int = 10) -> list[dict[str, Any]]:
        """The leaderboard: the top ``k`` configs by the seed-mean ``metric`` (ties: smaller spread over seeds first).

        A config with a diverged seed ranks below every config without one.
        """
        _check_count("k", k)
        sign = 1.0 if self.metric in LOWER_IS_BETTER or self.metric.endswith("cost") else -1.0

        def rank(entry: dict[str, Any]) -> tuple:
            stats = entry.get(self.metric, {"mean": None, "std": None})
            missing = stats["mean"] is None
            return (entry["diverged"] > 0, missing, 0.0 if missing else sign * stats["mean"], stats["std"] or 0.0)

        return sorted(self.by_config(), key=rank)[:k]

    def zoom(self, k: int = 8, margin: float = 0.25) -> dict[str, Any]:
        """A narrower space around the top ``k`` configs (coarse to fine).

        Each continuous range shrinks to the span of the top ``k`` values in its own scale
        (log for ``log_uniform``, ``log(1 - β)`` for ``one_minus_log_uniform``), widened by
        ``margin`` × that span on each side (10% of the old range when the span is 0) and kept
        inside the old range; a ``choice``/``grid`` keeps the values the top ``k`` use.
        """
        if not self.rows:
            raise ValueError("zoom needs rows; the sweep has none")
        top = [e for e in self.best(k) if e["diverged"] == 0] or self.best(k)
        narrowed: dict[str, Any] = {}
        for name, value in self.space.items():
            used = [entry["choices"][name] for entry in top]
            if isinstance(value, Choice):
                kept = [v for v in value.values if _canonical(v) in {_canonical(u) for u in used}]
                narrowed[name] = type(value)(kept)
            elif isinstance(value, Uniform):
                scaled = value.to_scale(np.asarray(used, np.float64))
                old_lo, old_hi = value.scaled_bounds
                span = float(scaled.max() - scaled.min())
                pad = margin * span if span > 0 else 0.1 * (old_hi - old_lo)
                lo, hi = max(old_lo, float(scaled.min()) - pad), min(old_hi, float(scaled.max()) + pad)
                narrowed[name] = value.between(lo, hi)
            else:
                narrowed[name] = value
        return narrowed

    def bias_variance(self, bayes_error: float = 0.0, *, tolerance: float = 0.02) -> Diagnosis:
        """``diagnostics.bias_variance`` of the best config.

        Train error ``1 - train_accuracy`` and dev error ``1 - dev_accuracy``, means over its seeds.
        """
        from deepopt import diagnostics  # reads results; the sweep itself does not need it

        winner = self.best(1)[0]
        train_accuracy, dev_accuracy = winner["train_accuracy"]["mean"], winner.get("dev_accuracy", {}).get("mean")
        if dev_accuracy is None:
            raise ValueError("bias_variance needs dev accuracies: run the sweep with dev data")
        return diagnostics.bias_variance(1.0 - train_accuracy, 1.0 - dev_accuracy, bayes_error, tolerance=tolerance)

    def to_csv(self, path: str | os.PathLike) -> None:
        """One line per run: id, seed, every Config and HParams field (lists as ``a-b-c``), the metrics."""

        def cell(value: Any) -> Any:
            if value is None:
                return ""
            if isinstance(value, list):
                return "-".join(map(str, value))
            return value

        flat = [
            {
                "id": r["id"],
                "config_id": r["config_id"],
                "config_index": r["config_index"],
                "seed": r["seed"],
                **r["config"],
                **r["hparams"],
                **{n: v for n, v in r.items() if n not in ("config", "hparams", "key")},
            }
            for r in self.rows
        ]
        header = list(dict.fromkeys(name for row in flat for name in row))
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, header)
            writer.writeheader()
            writer.writerows({name: cell(row.get(name)) for name in header} for row in flat)


def config_of(row: Mapping[str, Any]) -> train_lib.Config:
    """The ``train.Config`` of a row."""
    return train_lib.Config(**{name: tuple(v) if isinstance(v, list) else v for name, v in row["config"].items()})


def hparams_of(row: Mapping[str, Any]) -> train_lib.HParams:
    """The ``train.HParams`` of a row (the sampled float64 values)."""
    return train_lib.HParams(**row["hparams"])


def key_of(row: Mapping[str, Any], impl: str | None = None) -> jax.Array:
    """The PRNG key a row trained with: ``train.fit(config_of(row), hparams_of(row), key_of(row), ...)`` repeats it."""
    return jax.random.wrap_key_data(jnp.asarray(row["key"], jnp.uint32), impl=impl)


# ------------------------------------------------------------------------------ run


def _metric_fields(dev: Any, test: Any) -> tuple[str, ...]:
    return (
        ("train_accuracy", "final_cost")
        + (("dev_accuracy",) if dev is not None else ())
        + (("test_accuracy",) if test is not None else ())
    )


def _as_dataset(name: str, split: Any) -> data_lib.Dataset | None:
    """Host copy of a split after ``data.check_dataset`` (shapes, dtypes, finite X, labels >= 0): X float, y int32."""
    if split is None:
        return None
    checked = data_lib.check_dataset(split, name)
    return data_lib.Dataset(np.asarray(checked.X), np.asarray(checked.y))


def _row(run_: Run, outputs: Mapping[str, np.ndarray], position: int, seconds: float) -> dict[str, Any]:
    """The JSON row of one run from the chunk's outputs at ``position``."""
    row: dict[str, Any] = {
        "id": run_.id,
        "config_id": run_.config_id,
        "config_index": run_.config_index,
        "seed": run_.seed,
        "key": list(run_.key_data),
        "config": dataclasses.asdict(run_.config),
        "hparams": run_.hparams,
    }
    for name, values in outputs.items():
        value = values[position].item()
        row[name] = None if isinstance(value, float) and not math.isfinite(value) else value  # JSON has no NaN
    if not row.get("diverged", False) and "diverged_epoch" in row:
        row["diverged_epoch"] = None
    row["seconds"] = seconds
    return json.loads(json.dumps(row, allow_nan=False))  # exactly what a resumed sweep reads back


def run(
    base_config: train_lib.Config,
    space: Mapping[str, Any],
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None = None,
    *,
    key: jax.Array,
    num_configs: int | None,
    seeds: int = 1,
    sampler: str = "random",
    results_path: str | os.PathLike | None = None,
    resume: bool = True,
    devices: Sequence[Any] | None = None,
    memory_budget_bytes: int | None = None,
    metric: str = "dev_accuracy",
    hparams: train_lib.HParams | None = None,
    test: data_lib.Dataset | None = None,
    chunk_size: int | str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Results:
    """Train every config of ``space`` × ``seeds`` keys; one compilation per group of static choices.

    Args:
      base_config: the static choices not in ``space``.
      space: ``{field: distribution or fixed value}`` over HParams (traced) and Config (static) fields.
      train, dev, test: datasets (``dev``/``test`` optional; ``test_accuracy`` is recorded with ``test``).
      key: PRNG key; split into the sampling key and the ``seeds`` model keys (``seed_keys``),
        the same ``seeds`` keys for every config.
      num_configs: configs to sample (None with ``sampler="grid"``: the whole product).
      seeds: keys per config.
      sampler: ``"random"``, ``"quasi"`` (scrambled Halton) or ``"grid"``.
      results_path: JSON-lines file; each finished chunk is appended, flushed and fsynced
        (process 0 writes). ``run`` holds an exclusive lock on it while it runs
        (``lock_results``): a second writer of the same file fails at once with
        ``ResultsInUseError``, naming the directory and the holder's pid.
      resume: skip runs whose id is already in ``results_path`` (False: start the file afresh).
      devices: the devices to shard over (default ``jax.devices()``: every process's).
      memory_budget_bytes: per-device bytes a chunk may take (from ``memory_analysis``).
      metric: the row field that ranks configs in ``Results``.
      hparams: base ``train.HParams`` for fields not in ``space``.
      chunk_size: runs per chunk (the unit of progress lines and of resume); None: the whole
        group; ``"auto"``: per group, as many runs per device as fit ``CACHE_BYTES_PER_DEVICE``
        (``auto_chunk_size``: fastest for wide nets). A smaller group is padded to the next power
        of two (``chunk_layout``) so that groups of similar size share one compiled program.
      progress: called with a ``Progress`` after each chunk (``progress=print`` prints a line).
    Returns:
      ``Results`` with one row per run in plan order (config-major, then seed).
    """
    start = time.perf_counter()
    splits = tuple(_as_dataset(name, split) for name, split in (("train", train), ("dev", dev), ("test", test)))
    if splits[0] is None:
        raise TypeError("train must be a deepopt.data.Dataset(X, y), got None")
    allowed = _metric_fields(dev, test)
    if metric not in allowed:
        raise ValueError(
            f"metric must be one of {list(allowed)} (dev_accuracy needs dev, test_accuracy needs test), got {metric!r}"
        )
    if memory_budget_bytes is not None and (
        isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, int) or memory_budget_bytes < 1
    ):
        raise ValueError(
            f"memory_budget_bytes must be a positive int (bytes per device) or None, got {memory_budget_bytes!r}"
        )
    if chunk_size != AUTO_CHUNK:
        try:
            chunk_size = None if chunk_size is None else _check_count("chunk_size", chunk_size)
        except ValueError:
            raise ValueError(
                f"chunk_size must be a positive int, None (whole groups) or {AUTO_CHUNK!r}, got {chunk_size!r}"
            ) from None
    devices = tuple(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device, got an empty sequence")
    data_bytes = sum(s.X.nbytes + 4 * s.y.size for s in splits if s is not None)
    if memory_budget_bytes is not None and memory_budget_bytes <= data_bytes:
        raise ValueError(
            f"memory_budget_bytes={memory_budget_bytes} is below the data alone ({data_bytes} bytes on every device)"
        )
    key = _typed_key(key)
    runs = plan(
        base_config,
        space,
        key=key,
        num_configs=num_configs,
        seeds=seeds,
        sampler=sampler,
        hparams=hparams,
        data_digest=data_fingerprint(*splits),
    )
    grouped = groups(runs)
    _check_data(grouped, splits, key)

    writer = results_path is not None and jax.process_index() == 0
    with lock_results(results_path) if writer else contextlib.nullcontext():  # one writer per file, from here on
        done = _resume(results_path, runs, resume)
        sweep = _Sweep(
            mesh=Mesh(np.asarray(devices), (RUN_AXIS,)),
            splits=splits,
            data_bytes=data_bytes,
            budget=memory_budget_bytes,
            chunk_size=chunk_size,
            results_path=results_path if jax.process_index() == 0 else None,
            done=done,
            progress=progress,
            start=start,
            total=len(runs),
            resumed=sum(run_.id in done for run_ in runs),
            groups=len(grouped),
            compile_args=(
                str(jax.random.key_impl(key)),
                tuple(np.asarray(jax.random.key_data(key)).shape),
                str(splits[0].X.dtype),
                tuple(None if s is None else (s.X.shape, s.y.shape) for s in splits),
                devices,
                splits[2] is not None,
            ),
        )
        compiled_before = _compilations
        for number, (config, group_runs) in enumerate(grouped.items(), start=1):
            label = ", ".join(f"{name}={getattr(config, name)}" for name in space if name in static_fields())
            _run_group(sweep, number, label or "all", config, group_runs)
        stats = {
            "runs": len(runs),
            "configs": len({r.config_id for r in runs}),
            "seeds": seeds,
            "groups": len(grouped),
            "runs_computed": sweep.computed,
            "runs_resumed": sweep.resumed,
            "chunks": sweep.chunks,
            "compilations": _compilations - compiled_before,
            "devices": len(devices),
            "processes": jax.process_count(),
            "seconds": time.perf_counter() - start,
            "layout": sweep.layout,
        }
        return Results(rows=[done[run_.id] for run_ in runs], space=dict(space), metric=metric, stats=stats)


def _check_data(grouped: Mapping[train_lib.Config, Sequence[Run]], splits: Sequence[Any], key: jax.Array) -> None:
    """``fit``'s own checks (``train.check_split``) of train, dev and test against every group.

    Then ``eval_shape`` traces ``fit`` once per group (what is left: the config against the data's
    shapes); the trace is cached and reused by the group's compilation, so it costs no second trace.
    """
    train_set, dev_set, test_set = splits
    dtype = train_set.X.dtype
    for config, group_runs in grouped.items():
        for name, split in (("train", train_set), ("dev", dev_set), ("test", test_set)):
            if split is not None:  # exactly fit's checks, in Python, before anything is traced
                train_lib.check_split(name, split, config)
        dropout = _group_dropout(group_runs)  # as the group's program will call fit: one trace serves both
        jax.eval_shape(
            lambda h, k, config=config, dropout=dropout: train_lib.fit(
                config, h, k, train_set, dev_set, dropout=dropout
            ),
            train_lib.prepare_hparams(train_lib.HParams(), config, dtype),
            key,
        )


@dataclasses.dataclass
class _Sweep:
    """What every group of one ``run`` call shares: the mesh, the data, the file, the counters."""

    mesh: Mesh
    splits: tuple[data_lib.Dataset | None, ...]
    data_bytes: int
    budget: int | None
    chunk_size: int | str | None
    results_path: str | os.PathLike | None  # None on processes other than 0
    done: dict[str, dict[str, Any]]
    progress: Callable[[Progress], None] | None
    start: float
    total: int
    resumed: int
    groups: int
    compile_args: tuple
    computed: int = 0
    chunks: int = 0
    layout: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    device_data: list[data_lib.Dataset | None] | None = None

    def data_on_devices(self) -> list[data_lib.Dataset | None]:
        """The splits as global arrays replicated on every device (made once, on first use)."""
        if self.device_data is None:
            replicated = NamedSharding(self.mesh, P())
            self.device_data = [
                None
                if s is None
                else data_lib.Dataset(_global_array(s.X, replicated), _global_array(s.y.astype(np.int32), replicated))
                for s in self.splits
            ]
        return self.device_data

    def report(self, group: int, chunk: int, chunks: int, label: str) -> None:
        """Send one ``Progress`` line: runs done, runs per second of this call, ETA."""
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.start
        finished = self.resumed + self.computed
        rate = self.computed / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - finished) / rate if rate > 0 else float("inf")
        self.progress(
            Progress(finished, self.total, self.resumed, group, self.groups, chunk, chunks, rate, eta, elapsed, label)
        )


def _run_group(sweep: _Sweep, number: int, label: str, config: train_lib.Config, group_runs: Sequence[Run]) -> None:
    """Compile the group's chunk program once, then run, record and report its chunks that are not done yet."""
    if all(run_.id in sweep.done for run_ in group_runs):
        return
    dropout = _group_dropout(group_runs)
    compile_start = time.perf_counter()
    chunk_size = sweep.chunk_size
    if chunk_size == AUTO_CHUNK:
        train_set = sweep.splits[0]
        chunk_size = auto_chunk_size(config, len(train_set.y), len(sweep.compile_args[4]), train_set.X.dtype)
    seeds = _seeds_per_config(group_runs)
    num_configs = len(group_runs) // seeds
    configs_per_chunk, compiled, size = _choose_chunk(
        config, num_configs, seeds, chunk_size, sweep.budget, sweep.data_bytes, (*sweep.compile_args, dropout)
    )
    chunk = configs_per_chunk * seeds
    num_chunks = -(-num_configs // configs_per_chunk)
    sweep.layout.append(
        {
            "group": label,
            "runs": len(group_runs),
            "chunk": chunk,
            "configs_per_chunk": configs_per_chunk,
            "chunks": num_chunks,
            "bytes_per_device": size,
            "dropout": dropout,
            "compile_seconds": time.perf_counter() - compile_start,  # ~0 when the program was cached
        }
    )
    hp_host = _group_hparams(group_runs[::seeds], config, np.dtype(sweep.compile_args[2]))
    key_host = np.asarray([run_.key_data for run_ in group_runs[:seeds]], np.uint32)
    for chunk_number in range(num_chunks):
        members = group_runs[chunk_number * chunk : (chunk_number + 1) * chunk]
        if all(run_.id in sweep.done for run_ in members):
            continue
        first = chunk_number * configs_per_chunk  # pad with the last config
        local = np.minimum(np.arange(configs_per_chunk) + first, num_configs - 1)
        chunk_start = time.perf_counter()
        outputs = _execute(compiled, sweep.mesh, hp_host, key_host, local, sweep.data_on_devices())
        seconds = (time.perf_counter() - chunk_start) / len(members)
        new_rows = [_row(run_, outputs, i, seconds) for i, run_ in enumerate(members) if run_.id not in sweep.done]
        if sweep.results_path is not None:
            _append_rows(sweep.results_path, new_rows)
        sweep.done.update({row["id"]: row for row in new_rows})
        sweep.computed += len(new_rows)
        sweep.chunks += 1
        sweep.report(number, chunk_number + 1, num_chunks, label)


def _resume(results_path: str | os.PathLike | None, runs: Sequence[Run], resume: bool) -> dict[str, dict[str, Any]]:
    """The rows of ``runs`` already in ``results_path``, by id; every process gets process 0's view.

    Process 0 reads the file and cuts a torn last line (``resume=True``) or empties it
    (``resume=False``); opening it here makes an unwritable path fail before any compilation.
    Other processes may pass ``results_path=None``: they receive the rows by broadcast.
    """
    wanted = {run_.id for run_ in runs}
    done: dict[str, dict[str, Any]] = {}
    if jax.process_index() == 0 and results_path is not None:
        if resume:
            for row in read_rows(results_path, repair=True):
                if row["id"] in wanted:
                    done.setdefault(row["id"], row)
        with open(results_path, "a" if resume else "w", encoding="utf-8") as stream:
            os.fsync(stream.fileno())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        payload = np.frombuffer(json.dumps(done).encode(), np.uint8) if jax.process_index() == 0 else None
        size = int(multihost_utils.broadcast_one_to_all(np.asarray(0 if payload is None else payload.size, np.int64)))
        buffer = multihost_utils.broadcast_one_to_all(payload if payload is not None else np.zeros(size, np.uint8))
        done = json.loads(np.asarray(buffer, np.uint8).tobytes().decode())
    return done


def _group_dropout(group_runs: Sequence[Run]) -> bool:
    """Whether the group's program needs dropout: some run has ``keep_prob < 1``."""
    return train_lib.resolve_dropout(np.asarray([run_.hparams["keep_prob"] for run_ in group_runs], np.float64))


def _seeds_per_config(group_runs: Sequence[Run]) -> int:
    """``S``: a group's runs are every one of its configs × the same ``S`` seeds, config-major (as ``plan`` makes them)."""
    seeds = 1
    while seeds < len(group_runs) and group_runs[seeds].config_index == group_runs[0].config_index:
        seeds += 1
    layout_ok = len(group_runs) % seeds == 0 and all(
        run_.seed == i % seeds and run_.key_data == group_runs[i % seeds].key_data for i, run_ in enumerate(group_runs)
    )
    if not layout_ok:
        raise ValueError("a sweep group must hold every config × the same seeds, config-major (sweep.plan's order)")
    return seeds


def _choose_chunk(
    config: train_lib.Config,
    num_configs: int,
    seeds: int,
    chunk_size: int | None,
    budget: int | None,
    data_bytes: int,
    compile_args: tuple,
) -> tuple[int, Any, int]:
    """Configs per chunk, the compiled program and its bytes per device, shrunk to fit ``budget``.

    A chunk is ``C`` configs × every seed; ``C = chunk_layout(configs, chunk_size // seeds, D)``.
    Bytes per device are modelled as ``data + per_config · C / D``; ``per_config`` is read off
    the compiled program, then the largest fitting ``C`` is compiled and checked again.
    """
    num_devices = len(compile_args[4])
    configs = chunk_layout(num_configs, None if chunk_size is None else max(chunk_size // seeds, 1), num_devices)
    compiled, size = _compile(config, configs, seeds, *compile_args)
    while budget is not None and size > budget:
        if configs == num_devices:
            raise ValueError(
                f"memory_budget_bytes={budget} is below what one config ({seeds} seeds) per device takes "
                f"({size} bytes for {config})"
            )
        per_config = max(size - data_bytes, 1) / (configs // num_devices)
        fitting = max(int((budget - data_bytes) // per_config), 1) * num_devices
        configs = min(fitting, configs - num_devices)
        compiled, size = _compile(config, configs, seeds, *compile_args)
    return configs, compiled, size


def _group_hparams(group_runs: Sequence[Run], config: train_lib.Config, dtype: Any) -> dict[str, np.ndarray]:
    """Every HParams field of the group as a host array ``(n,)`` of the run dtype.

    ``None`` fields are derived from ``config`` (``train.prepare_hparams``).
    """
    columns = {}
    for name in train_lib.HParams._fields:
        values = [run_.hparams[name] for run_ in group_runs]
        columns[name] = None if all(v is None for v in values) else np.asarray(values, np.float64)
    prepared = train_lib.broadcast_hparams(
        train_lib.prepare_hparams(train_lib.HParams(**columns), config, dtype), len(group_runs)
    )
    return {name: np.asarray(value) for name, value in prepared._asdict().items()}


def _execute(
    compiled: Any,
    mesh: Mesh,
    hp_host: Mapping[str, np.ndarray],
    key_host: np.ndarray,
    local: np.ndarray,
    device_data: Sequence[data_lib.Dataset | None],
) -> dict[str, np.ndarray]:
    """Run one chunk: configs ``local`` (padding included) sharded over ``mesh`` × every seed key; host outputs."""
    by_run, replicated = NamedSharding(mesh, P(RUN_AXIS)), NamedSharding(mesh, P())
    hp = train_lib.HParams(**{name: _global_array(values[local], by_run) for name, values in hp_host.items()})
    outputs = compiled(hp, _global_array(key_host, replicated), *device_data)
    return {name: np.asarray(value) for name, value in outputs.items()}
