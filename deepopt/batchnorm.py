"""Batch normalization as a pure function, with its running statistics as explicit state.

Training: :math:`\\mu, \\sigma^2` are the batch's (biased) mean and variance per feature,
:math:`\\hat z = (z - \\mu) / \\sqrt{\\sigma^2 + \\epsilon}`, out :math:`= \\gamma \\hat z + \\beta`, and the
running statistics move as ``new = momentum * old + (1 - momentum) * batch``. Evaluation uses the
running statistics instead (Flax's ``BatchNorm`` conventions, so the two agree).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepopt.hparams import concrete_array
from deepopt.parameters import is_batch_normalized

DEFAULT_MOMENTUM = 0.9
DEFAULT_EPS = 1e-5


class BatchNormState(NamedTuple):
    """Exponentially weighted running mean and variance of one layer's pre-activations, ``(num_features,)`` each."""

    mean: jax.Array
    var: jax.Array


def init_state(num_features: int, dtype: Any = None) -> BatchNormState:
    """Running mean 0, running variance 1."""
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive int, got {num_features!r}")
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
    return BatchNormState(jnp.zeros((num_features,), dtype), jnp.ones((num_features,), dtype))


def init_states(params: Any) -> tuple[BatchNormState, ...]:
    """One ``init_state`` per layer of ``params`` that has ``gamma`` (in order), in that layer's dtype."""
    return tuple(
        init_state(jnp.shape(layer["gamma"])[0], jnp.asarray(layer["gamma"]).dtype)
        for layer in params
        if is_batch_normalized(layer)
    )


def _check_concrete_setting(name: str, value: Any, valid: Any, expected: str) -> None:
    """A concrete ``value`` (not a tracer) must be numbers with ``valid(values)`` everywhere; the error names ``name``."""
    values = concrete_array(name, value)
    if values is None:
        return
    if not np.all(valid(values)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_mask(mask: Any, m: int, train: bool) -> None:
    """``mask`` must be ``(m,)`` bool (always: shape and dtype are static); a concrete one in training must select a row."""
    if jnp.shape(mask) != (m,):
        raise ValueError(f"mask must have shape (m,) = ({m},) to match z, got shape {jnp.shape(mask)}")
    dtype = mask.dtype if hasattr(mask, "dtype") else np.asarray(mask).dtype
    if dtype != bool:
        raise TypeError(f"mask must be a bool array (True: the row counts in the batch statistics), got dtype {dtype}")
    if train and not isinstance(mask, jax.core.Tracer) and not np.any(np.asarray(mask)):
        raise ValueError(
            f"mask must select at least one row of z for the batch statistics, got all {m} entries False"
        )


def batch_norm(
    z: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    state: BatchNormState,
    *,
    train: bool,
    momentum: Any = DEFAULT_MOMENTUM,
    eps: Any = DEFAULT_EPS,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchNormState]:
    r"""Normalize ``z`` ``(m, n)`` per feature, then scale and shift: :math:`\gamma (z - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta`.

    Args:
      z: pre-activations ``(m, n)``.
      gamma, beta: ``(n,)`` scale and shift.
      state: running statistics.
      train: batch statistics (and an updated state) if True; the running statistics if False.
      momentum: weight of the old running statistics, in ``[0, 1]``.
      eps: added to the variance, finite and ``> 0``.
      mask: optional ``(m,)`` bool; only rows where it is True count in the batch statistics
        (``fit``'s padded last mini-batch); at least one must be True.
    Returns:
      ``(out, new_state)``; in evaluation ``new_state`` is ``state``.
    Raises:
      ValueError / TypeError: a mask not ``(m,)`` bool; for concrete values (tracers are not
        checked): ``eps`` not finite and positive, ``momentum`` outside ``[0, 1]``, an all-False mask.
    """
    if jnp.ndim(z) != 2:
        raise ValueError(f"z must be (m, num_features), got shape {jnp.shape(z)}")
    n = z.shape[1]
    for name, value in (("gamma", gamma), ("beta", beta), ("state.mean", state.mean), ("state.var", state.var)):
        if jnp.shape(value) != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match z, got {jnp.shape(value)}")
    _check_concrete_setting("eps", eps, lambda v: np.isfinite(v) & (v > 0), "finite and > 0")
    _check_concrete_setting("momentum", momentum, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
    if mask is not None:
        _check_mask(mask, z.shape[0], train)
    if not train:
        mean, var = state.mean, state.var
        new_state = state
    else:
        if mask is None:
            mean = jnp.mean(z, axis=0)
            var = jnp.mean(jnp.square(z - mean), axis=0)
        else:
            weights = mask.astype(z.dtype)[:, None]
            count = jnp.sum(weights)
            mean = jnp.sum(weights * z, axis=0) / count
            var = jnp.sum(weights * jnp.square(z - mean), axis=0) / count
        new_state = BatchNormState(
            momentum * state.mean + (1 - momentum) * jax.lax.stop_gradient(mean),
            momentum * state.var + (1 - momentum) * jax.lax.stop_gradient(var),
        )
    normalized = (z - mean) * jax.lax.rsqrt(var + eps)
    return gamma * normalized + beta, new_state
