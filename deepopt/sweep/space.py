r"""The search space: ``{field: distribution or fixed value}`` over HParams (traced) and Config (static) fields.

Distributions map a unit coordinate :math:`u \in [0, 1)` to a value:

- ``uniform(lo, hi)``: :math:`lo + u(hi - lo)`.
- ``log_uniform(lo, hi)``: :math:`10^{\log_{10} lo + u(\log_{10} hi - \log_{10} lo)}`.
- ``one_minus_log_uniform(lo, hi)``: :math:`1 - 10^{\log_{10} lo + u(\log_{10} hi - \log_{10} lo)}`,
  so :math:`\beta \in [1 - hi, 1 - lo]` (``(1e-3, 1e-1)`` gives :math:`\beta \in [0.9, 0.999]`).
- ``choice(values)`` / ``grid(values)``: ``values[floor(u · n)]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from deepopt import hparams_use
from deepopt import train as train_lib

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


# ------------------------------------------------------------------------------ the space


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
        if name == "task":
            raise ValueError(
                "space['task']: a search ranks every run by one task's metrics; set the task on the base "
                "Config (Config(task=tasks.regression())) and search one task per call"
            )
        if name in static and _is_distribution(value) and not isinstance(value, Choice):
            raise ValueError(
                f"space[{name!r}] is a static Config field (one compilation per value): give choice([...]), "
                f"grid([...]) or a fixed value, got {value!r}"
            )


def unread_fields(space: Mapping[str, Any], static_values: Mapping[str, Any]) -> list[str]:
    """The searched HParams fields of ``space`` that no config it can make reads (``hparams_use``).

    ``static_values``: the Config fields the space does not search (a ``Config``'s fields, or a
    row's ``config`` dict); each static field takes ``space``'s choices where it searches them.
    """
    searched = [name for name, value in space.items() if name in traced_fields() and _is_distribution(value)]
    if not searched:
        return []

    def possible(field: str) -> list[Any]:
        value = space.get(field, static_values.get(field))
        return list(value.values) if isinstance(value, Choice) else [value]

    if None in possible("optimizer") or None in possible("schedule"):
        return []  # rows that do not record them (written by hand): nothing can be said
    read = set().union(*(hparams_use.optimizer_fields(name) for name in possible("optimizer")),
                       *(hparams_use.schedule_fields(name) for name in possible("schedule")),
                       *(hparams_use.loop_fields(model, init) for model in possible("model") for init in possible("init")))
    return [name for name in searched if name not in read]


def check_fields_read(base_config: train_lib.Config, space: Mapping[str, Any]) -> None:
    """Every searched HParams field must be read by some config the space can make (``unread_fields``).

    A field no config reads (``beta`` with ``optimizer="gd"``) would train identical runs and rank
    them by tie-breaking noise: a ``ValueError`` naming it and the optimizers and schedules searched.
    """
    static_values = {field.name: getattr(base_config, field.name) for field in dataclasses.fields(base_config)}
    unread = unread_fields(space, static_values)
    if unread:
        optimizers = space.get("optimizer", base_config.optimizer)
        schedules_ = space.get("schedule", base_config.schedule)
        raise ValueError(
            f"space[{unread[0]!r}] searches HParams.{unread[0]}, which no config of this space reads (optimizer "
            f"{optimizers!r}, schedule {schedules_!r}{', Config.model' if base_config.model is not None else ''}): every "
            "run would train the same and rank by noise; drop it, or search an optimizer or schedule that uses it"
        )
