"""Mixed precision: which dtype a run keeps its parameters in and which it computes in, and float16's loss scale.

A run's ``Policy`` follows ``jmp``'s split (written here, not imported):

- ``param_dtype``: the master copy. Parameters, optimizer state, batch-norm statistics,
  ``HParams``, the loss's accumulation, the metrics and the update are all in it: float32 for
  16-bit data, else the data's dtype (float32 or float64, end to end as before).
- ``compute_dtype``: the forward and backward passes. The parameters are cast to it for the
  model's ``apply``, the mini-batch too, and the model's outputs come back in ``param_dtype``
  before the loss, so the gradients arrive in ``param_dtype``.

``Config.compute_dtype`` chooses the compute dtype (``None``: the data's). With float16 compute
the loss is scaled (``LossScale``): the gradients of :math:`s \\cdot J` are divided by :math:`s`;
a step whose unscaled gradients are not finite (while the cost is) is skipped and :math:`s` halves;
after ``GROWTH_INTERVAL`` finite steps in a row it doubles. Each run has its own scale, so under
``vmap`` one run's overflow touches no other run, and a skipped step is not a divergence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

HALF_DTYPES = ("bfloat16", "float16")
TRAINABLE_DTYPES = (*HALF_DTYPES, "float32", "float64")
INITIAL_SCALE = 2.0**15  # float16's largest power of two below its overflow is 2^15
GROWTH_INTERVAL = 2000  # finite steps in a row before the scale doubles (jmp's and PyTorch's default)
MIN_SCALE = 1.0


def dtype_name(dtype: Any) -> str:
    """The canonical name of a dtype (``"bfloat16"``, ``"float32"``...), whichever library made it."""
    return np.dtype(dtype).name


def check_trainable_dtype(dtype: Any, name: str) -> None:
    """A float dtype deepopt trains: bfloat16, float16, float32 or float64 (others: a ``TypeError`` saying what to do)."""
    text = dtype_name(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and text not in TRAINABLE_DTYPES:
        raise TypeError(
            f"{name} has dtype {text}, which deepopt cannot train in (it trains float32, float64, and bfloat16 or "
            f"float16 with float32 master weights): cast it, e.g. X.astype(np.float32) or ml_dtypes.bfloat16"
        )


def check_compute_dtype(value: Any) -> None:
    """``Config.compute_dtype``: None (the data's) or one of ``TRAINABLE_DTYPES`` by name."""
    if value is not None and (not isinstance(value, str) or value not in TRAINABLE_DTYPES):
        raise ValueError(
            f"Config.compute_dtype must be None (compute in the data's dtype) or one of {list(TRAINABLE_DTYPES)}, "
            f"got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class Policy:
    """``param_dtype`` (the master copy, the update, the metrics) and ``compute_dtype`` (forward and backward)."""

    param_dtype: str
    compute_dtype: str

    @property
    def mixed(self) -> bool:
        """Whether the passes compute in another dtype than the parameters are kept in."""
        return self.param_dtype != self.compute_dtype

    @property
    def loss_scaling(self) -> bool:
        """float16 compute: the loss is scaled (``LossScale``)."""
        return self.compute_dtype == "float16"


def policy_of(compute_dtype: str | None, data_dtype: Any) -> Policy:
    """The run's policy for data of ``data_dtype``: master float32 under 16-bit data or compute, else the data's.

    ``compute_dtype=None`` computes in the data's dtype. float64 data keeps float64 parameters
    whatever the compute dtype; any other keeps float32 ones, unless float64 compute is asked for.
    """
    data = dtype_name(data_dtype)
    compute = data if compute_dtype is None else compute_dtype
    if data == "float64" or compute == "float64":
        param = "float64"
    else:
        param = "float32"
    return Policy(param, compute)


class LossScale(NamedTuple):
    """A run's mixed-precision state (a ``TrainState`` field; ``None`` when nothing is mixed).

    Attributes:
      scale: the loss scale :math:`s` (float32; 1 and fixed unless the compute dtype is float16).
      good_steps: finite steps since the scale last changed (int32).
      compute: a scalar 1 of the compute dtype: the record of the policy that a checkpoint keeps
        and a restore into another policy refuses (orbax stores no empty arrays).
    """

    scale: jax.Array
    good_steps: jax.Array
    compute: jax.Array


def initial_state(policy: Policy) -> LossScale | None:
    """A new run's ``LossScale`` (``INITIAL_SCALE`` for float16 compute, 1 otherwise); None for an unmixed policy."""
    if not policy.mixed:
        return None
    scale = INITIAL_SCALE if policy.loss_scaling else 1.0
    return LossScale(jnp.asarray(scale, jnp.float32), jnp.zeros((), jnp.int32), jnp.ones((), policy.compute_dtype))


def adjust(state: LossScale, grads_finite: jax.Array) -> LossScale:
    r"""The scale after a step: :math:`\max(s/2, 1)` on non-finite gradients, :math:`2s` after ``GROWTH_INTERVAL`` finite ones."""
    grown = state.good_steps + 1 >= GROWTH_INTERVAL
    scale = jnp.where(grads_finite, jnp.where(grown, state.scale * 2, state.scale), jnp.maximum(state.scale / 2, MIN_SCALE))
    good_steps = jnp.where(grads_finite & ~grown, state.good_steps + 1, 0).astype(jnp.int32)
    return state._replace(scale=scale.astype(jnp.float32), good_steps=good_steps)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` in ``dtype`` (integer leaves, keys and None left as they are)."""
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else leaf, tree
    )
