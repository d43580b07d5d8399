"""The traced hyperparameters of a run: ``HParams``, their valid ranges, and batching them for ``vmap``.

``HParams`` is a pytree of scalars (arrays of them under ``vmap``): every field is traced, so one
compiled program serves every value. It lives below ``optim``, ``schedules`` and ``train`` so that
optimizers and schedules never import the training loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class HParams(NamedTuple):
    """Traced hyperparameters: a pytree of scalars (arrays of them under ``vmap``).

    ``None`` means "derived from the Config": ``init_scale`` -> the scheme's default (10 for
    ``random``, else 1), ``decay_epochs`` -> ``Config.epochs``.
    """

    learning_rate: Any = 0.01
    beta: Any = 0.9  # momentum / Nesterov
    beta1: Any = 0.9  # Adam first moment
    beta2: Any = 0.999  # Adam second moment, RMSprop's square average
    epsilon: Any = 1e-8
    weight_decay: Any = 0.0  # AdamW's decoupled decay
    l2: Any = 0.0  # lambda of the L2 penalty
    keep_prob: Any = 1.0  # inverted dropout on hidden layers
    init_scale: Any = None
    decay_rate: Any = 1.0  # inverse_time, scheduled
    time_interval: Any = 1000.0  # scheduled: epochs per decay step
    decay_factor: Any = 0.95  # exponential (k**epoch), inverse_sqrt, staircase
    warmup_epochs: Any = 0.0  # warmup_cosine
    decay_epochs: Any = None  # cosine, warmup_cosine: length of the decay
    min_learning_rate: Any = 0.0  # cosine floor


# name -> (what it must be, test on a float64 array)
_HPARAM_RULES: dict[str, tuple[str, Any]] = {
    "learning_rate": ("> 0", lambda v: v > 0),
    "beta": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "beta1": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "beta2": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "epsilon": ("> 0", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "l2": (">= 0", lambda v: v >= 0),
    "keep_prob": ("in (0, 1]", lambda v: (v > 0) & (v <= 1)),
    "init_scale": (">= 0", lambda v: v >= 0),
    "decay_rate": (">= 0", lambda v: v >= 0),
    "time_interval": ("> 0", lambda v: v > 0),
    "decay_factor": ("in (0, 1]", lambda v: (v > 0) & (v <= 1)),
    "warmup_epochs": (">= 0", lambda v: v >= 0),
    "decay_epochs": ("> 0", lambda v: v > 0),
    "min_learning_rate": (">= 0", lambda v: v >= 0),
}


def concrete_array(name: str, value: Any, expected: str = "a number") -> np.ndarray | None:
    """``value`` as a float64 array for a host-side check; None when it is None or traced (nothing to check).

    A value that is not numbers raises a ``TypeError``: ``"{name} must be {expected}, got {value!r}"``.
    """
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {expected}, got {value!r}") from None


class HParamsValueError(ValueError):
    """A concrete ``HParams`` value out of range: ``reason`` says which and why, ``index`` where.

    ``str(error)`` is ``reason`` followed by ``" at index [i, ...]"`` when the field is an array;
    ``index`` is that position as a tuple (None for a scalar), so a caller that maps positions to
    its own names (a sweep's config indices) need not parse the message.
    """

    def __init__(self, reason: str, index: tuple[int, ...] | None = None) -> None:
        self.reason, self.index = reason, index
        super().__init__(reason if index is None else f"{reason} at index {list(index)}")


def first_index(bad: np.ndarray) -> tuple[int, ...] | None:
    """The position of ``bad``'s first True element as a tuple; None for a 0-d ``bad``."""
    return None if bad.ndim == 0 else tuple(int(i) for i in np.argwhere(bad)[0])


def validate_hparams(hp: HParams) -> None:
    """Check every concrete field of ``hp`` (scalars or arrays) against its range; traced fields are skipped.

    Raises an ``HParamsValueError`` (a ``ValueError``) naming the field, the offending value and the
    allowed range, and for an array the index of the first offending element.
    """
    if not isinstance(hp, HParams):
        raise TypeError(f"hp must be a deepopt.train.HParams, got {type(hp).__name__}")
    for name, value in hp._asdict().items():
        values = concrete_array(f"HParams.{name}", value, "a number or an array of numbers")
        if values is None:
            continue
        rule, is_valid = _HPARAM_RULES[name]
        bad = ~(np.isfinite(values) & is_valid(values))
        if np.any(bad):
            raise HParamsValueError(
                f"HParams.{name} must be finite and {rule}, got {float(values[bad].flat[0])!r}", first_index(bad)
            )



def broadcast_hparams(hp: HParams, num_runs: int) -> HParams:
    """Give every field of ``hp`` a leading axis of ``num_runs`` (scalars are repeated), ready for ``vmap``.

    ``None`` fields stay ``None`` (``fit`` derives them from the Config). Concrete values are
    checked first (``validate_hparams``): under ``vmap`` ``fit`` sees them traced and cannot.
    """
    validate_hparams(hp)
    if isinstance(num_runs, bool) or not isinstance(num_runs, int) or num_runs < 1:
        raise ValueError(f"num_runs must be a positive int, got {num_runs!r}")
    fields = {}
    for name, value in hp._asdict().items():
        if value is None:
            fields[name] = None
            continue
        array = jnp.asarray(value)
        if array.ndim == 0:
            array = jnp.broadcast_to(array, (num_runs,))
        elif array.shape != (num_runs,):
            raise ValueError(f"HParams.{name} must be a scalar or have shape ({num_runs},), got {array.shape}")
        fields[name] = array
    return HParams(**fields)
