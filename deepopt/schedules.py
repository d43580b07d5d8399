r"""Learning-rate schedules: pure functions ``schedule(hp, epoch, step) -> learning_rate``.

``epoch`` counts epochs from 0, ``step`` counts update steps (mini-batches) from 0; both may
be traced. Every parameter of a schedule is a traced ``train.HParams`` field, so one compiled
program serves every value. The schedules here are the course's epoch-level decays: the rate
is constant within an epoch and ``step`` is unused (it is in the signature so that step-level
schedules fit the same slot).

Notation: :math:`\alpha_0` ``learning_rate``, :math:`e` ``epoch``, :math:`r` ``decay_rate``,
:math:`T` ``time_interval``, :math:`k` ``decay_factor``, :math:`W` ``warmup_epochs``,
:math:`D` ``decay_epochs`` (``fit`` fills it with ``Config.epochs``), :math:`\alpha_{min}`
``min_learning_rate``. The rate is computed in the dtype of ``learning_rate``.

- ``constant``: :math:`\alpha_0`.
- ``inverse_time``: :math:`\alpha_0 / (1 + r e)`.
- ``scheduled``: :math:`\alpha_0 / (1 + r \lfloor e / T \rfloor)`.
- ``exponential``: :math:`\alpha_0 k^e` (optax ``exponential_decay(α0, 1, k)``).
- ``inverse_sqrt``: :math:`\alpha_0 k / \sqrt{\max(e, 1)}` (the course's :math:`\alpha_0 k/\sqrt{e}`,
  held at :math:`\alpha_0 k` at epoch 0 where the course's form divides by zero).
- ``staircase``: :math:`\alpha_0 k^{\lfloor e / T \rfloor}` (optax ``exponential_decay(α0, T, k, staircase=True)``).
- ``cosine``: :math:`\alpha_0` down to :math:`\alpha_{min}` over :math:`D` epochs, then
  :math:`\alpha_{min}` (optax ``cosine_decay_schedule(α0, D, alpha=α_min/α0)``).
- ``warmup_cosine``: :math:`\alpha_0 (e+1)/(W+1)` while :math:`e < W`, then ``cosine`` over the
  remaining :math:`D - W` epochs (optax ``warmup_cosine_decay_schedule(α0/(W+1), α0, W, D, α_min)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from deepopt.hparams import HParams, validate_hparams


Schedule = Callable[["HParams", Any, Any], jax.Array]


def _initial_rate(hp: HParams) -> jax.Array:
    """``hp.learning_rate`` as a floating array; the other fields and the epoch take its dtype.

    Every schedule starts here, so a concrete ``hp`` is checked here (``validate_hparams``;
    traced fields are skipped): ``decay_rate < 0`` or ``decay_factor > 1`` would grow the rate.
    """
    if isinstance(hp, HParams):
        validate_hparams(hp)
    rate = jnp.asarray(hp.learning_rate)
    return rate if jnp.issubdtype(rate.dtype, jnp.floating) else rate.astype(float)


def _field(hp: HParams, name: str, like: jax.Array) -> jax.Array:
    """The HParams field ``name`` as an array of ``like``'s dtype."""
    value = getattr(hp, name)
    if value is None:
        raise ValueError(f"HParams.{name} is None; set it (fit fills decay_epochs with Config.epochs)")
    return jnp.asarray(value).astype(like.dtype)


def _epoch(epoch: ArrayLike, like: jax.Array) -> jax.Array:
    return jnp.asarray(epoch).astype(like.dtype)


def _cosine_decay(start: jax.Array, end: jax.Array, elapsed: jax.Array, span: jax.Array) -> jax.Array:
    r""":math:`end + (start - end)\,\tfrac{1}{2}(1 + \cos(\pi p))`, :math:`p = \mathrm{clip}(elapsed/span, 0, 1)`.

    A span of zero or less is over at once (``end``), never a division by zero.
    """
    has_span = span > 0
    progress = jnp.clip(elapsed / jnp.where(has_span, span, 1), 0, 1)
    progress = jnp.where(has_span, progress, 1)
    return end + (start - end) * (0.5 * (1 + jnp.cos(jnp.pi * progress)))


def constant(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""Constant rate: :math:`\alpha = \alpha_0`."""
    return _initial_rate(hp)


def inverse_time(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""The course's learning-rate decay: :math:`\alpha = \dfrac{\alpha_0}{1 + r\,e}`, :math:`r` = ``decay_rate``."""
    rate = _initial_rate(hp)
    return rate / (1 + _field(hp, "decay_rate", rate) * _epoch(epoch, rate))


def scheduled(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""Decay at fixed intervals: :math:`\alpha = \dfrac{\alpha_0}{1 + r \lfloor e / T \rfloor}`.

    :math:`r` = ``decay_rate``, :math:`T` = ``time_interval`` (epochs per decay step).
    """
    rate = _initial_rate(hp)
    intervals = jnp.floor(_epoch(epoch, rate) / _field(hp, "time_interval", rate))
    return rate / (1 + _field(hp, "decay_rate", rate) * intervals)


def exponential(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""Exponential decay: :math:`\alpha = \alpha_0\,k^{e}`, :math:`k` = ``decay_factor``."""
    rate = _initial_rate(hp)
    return rate * _field(hp, "decay_factor", rate) ** _epoch(epoch, rate)


def inverse_sqrt(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""The course's :math:`\alpha = \frac{k}{\sqrt{e}}\,\alpha_0`, made safe at epoch 0:

    .. math::
        \alpha = \frac{k\,\alpha_0}{\sqrt{\max(e, 1)}}

    :math:`k` = ``decay_factor``. Epochs 0 and 1 both get :math:`k\alpha_0`; every later epoch
    gets exactly the course's value. Only the product :math:`k\alpha_0` matters.
    """
    rate = _initial_rate(hp)
    return rate * _field(hp, "decay_factor", rate) / jnp.sqrt(jnp.maximum(_epoch(epoch, rate), 1))


def staircase(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""Discrete exponential decay: :math:`\alpha = \alpha_0\,k^{\lfloor e / T \rfloor}`.

    :math:`k` = ``decay_factor``, :math:`T` = ``time_interval`` (epochs per step down).
    """
    rate = _initial_rate(hp)
    intervals = jnp.floor(_epoch(epoch, rate) / _field(hp, "time_interval", rate))
    return rate * _field(hp, "decay_factor", rate) ** intervals


def cosine(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""Cosine decay from :math:`\alpha_0` to :math:`\alpha_{min}` over :math:`D` epochs, then :math:`\alpha_{min}`:

    .. math::
        \alpha = \alpha_{min} + (\alpha_0 - \alpha_{min})\,\tfrac{1}{2}\left(1 + \cos\frac{\pi \min(e, D)}{D}\right)

    :math:`D` = ``decay_epochs``, :math:`\alpha_{min}` = ``min_learning_rate``.
    """
    rate = _initial_rate(hp)
    floor_rate = _field(hp, "min_learning_rate", rate)
    return _cosine_decay(rate, floor_rate, _epoch(epoch, rate), _field(hp, "decay_epochs", rate))


def warmup_cosine(hp: HParams, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    r"""Linear warm-up over :math:`W` epochs, then cosine decay to :math:`\alpha_{min}` by epoch :math:`D`:

    .. math::
        \alpha = \begin{cases}
          \alpha_0 \dfrac{e + 1}{W + 1} & e < W \\
          \alpha_{min} + (\alpha_0 - \alpha_{min})\,\tfrac{1}{2}
            \left(1 + \cos\dfrac{\pi \min(e - W, D - W)}{D - W}\right) & e \ge W
        \end{cases}

    :math:`W` = ``warmup_epochs``, :math:`D` = ``decay_epochs`` (the total, warm-up included),
    :math:`\alpha_{min}` = ``min_learning_rate``. The warm-up starts at :math:`\alpha_0/(W+1)`,
    not 0, so no epoch is spent at a zero rate; it reaches :math:`\alpha_0` at epoch :math:`W`.
    ``W = 0`` is ``cosine``; with :math:`D \le W` the rate drops to :math:`\alpha_{min}` after
    the warm-up.
    """
    rate = _initial_rate(hp)
    e = _epoch(epoch, rate)
    warmup = _field(hp, "warmup_epochs", rate)
    warming = rate * (e + 1) / (warmup + 1)
    decaying = _cosine_decay(
        rate, _field(hp, "min_learning_rate", rate), e - warmup, _field(hp, "decay_epochs", rate) - warmup
    )
    return jnp.where(e < warmup, warming, decaying)


_REGISTRY: dict[str, Schedule] = {
    "constant": constant,
    "inverse_time": inverse_time,
    "scheduled": scheduled,
    "exponential": exponential,
    "inverse_sqrt": inverse_sqrt,
    "staircase": staircase,
    "cosine": cosine,
    "warmup_cosine": warmup_cosine,
}


def names() -> tuple[str, ...]:
    """The registered schedule names."""
    return tuple(_REGISTRY)


def get(name: str) -> Schedule:
    """The schedule registered under ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"schedule must be one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]
