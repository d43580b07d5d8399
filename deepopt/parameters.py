"""The parameter format of deepopt's MLP, and the one place that knows which layers are batch-normalized.

Parameters are a tuple with one dict per layer, ``{"W": (fan_in, fan_out), "b": (fan_out,)}``;
a hidden layer that is batch-normalized also holds ``"gamma"`` and ``"beta"``, ``(fan_out,)`` each.
Any optimizer works on any pytree, so this format is only a convention of the MLP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

Params = tuple[dict[str, jax.Array], ...]

BATCHNORM_KEYS = ("gamma", "beta")


def is_batch_normalized(layer: Mapping[str, Any]) -> bool:
    """True when ``layer`` is batch-normalized: it holds the batch-norm scale ``gamma``."""
    return "gamma" in layer


def normalized_layers(params: Sequence[Mapping[str, Any]]) -> tuple[bool, ...]:
    """``is_batch_normalized`` of every layer, in order."""
    return tuple(is_batch_normalized(layer) for layer in params)
