"""Initializers for multilayer perceptrons.

Parameters are a tuple with one dict per layer, ``{"W": (fan_in, fan_out), "b": (fan_out,)}``.
Biases start at zero; weights are ``normal * std`` with the scheme's standard deviation:

| scheme   | std                                  |
|----------|--------------------------------------|
| zeros    | 0                                    |
| random   | ``scale`` (the course uses 10)       |
| xavier   | ``sqrt(1 / fan_in)`` (the course's)  |
| glorot   | ``sqrt(2 / (fan_in + fan_out))``     |
| he       | ``sqrt(2 / fan_in)``                 |
| lecun    | ``sqrt(1 / fan_in)``                 |

``scale`` is the std itself for ``random`` (default 10) and a multiplier of the scheme's std
for every other scheme (default 1). It may be a traced scalar, so it can be swept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from deepopt.hparams import concrete_array
from deepopt.parameters import Params


RANDOM_DEFAULT_SCALE = 10.0

_BASE_STD: dict[str, Callable[[int, int], float]] = {
    "zeros": lambda fan_in, fan_out: 0.0,
    "random": lambda fan_in, fan_out: 1.0,
    "xavier": lambda fan_in, fan_out: math.sqrt(1.0 / fan_in),
    "glorot": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
    "he": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),
    "lecun": lambda fan_in, fan_out: math.sqrt(1.0 / fan_in),
}

SCHEMES: tuple[str, ...] = tuple(_BASE_STD)


def check_scheme(scheme: str) -> None:
    """Raise a ``ValueError`` naming the known schemes when ``scheme`` is not one of them."""
    if scheme not in _BASE_STD:
        raise ValueError(f"init scheme must be one of {list(SCHEMES)}, got {scheme!r}")


def default_scale(scheme: str) -> float:
    """The ``scale`` used when none is given: 10 for ``random``, 1 (a plain multiplier) otherwise."""
    check_scheme(scheme)
    return RANDOM_DEFAULT_SCALE if scheme == "random" else 1.0


def check_layer_sizes(layer_sizes: Sequence[int], name: str = "layer_sizes") -> tuple[int, ...]:
    """Validate ``(n_in, hidden..., n_out)``: at least two positive ints. Returns it as a tuple."""
    try:
        sizes = tuple(layer_sizes)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {layer_sizes!r}") from None
    if len(sizes) < 2:
        raise ValueError(f"{name} needs at least (n_in, n_out), got {sizes!r}")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must hold positive ints, got {sizes!r}")
    return sizes


def mlp(
    key: jax.Array,
    layer_sizes: Sequence[int],
    scheme: str = "he",
    scale: Any = None,
    *,
    dtype: Any = None,
    batchnorm: bool = False,
) -> Params:
    r"""Initialize an MLP: ``W_l = N(0, 1) \cdot std_l \cdot`` (scale or 1), ``b_l = 0``.

    Args:
      key: a PRNG key.
      layer_sizes: ``(n_in, n_hidden_1, ..., n_out)``.
      scheme: one of ``SCHEMES``.
      scale: std for ``random`` (default 10); a multiplier of the std otherwise (default 1).
        May be a traced scalar.
      dtype: float dtype of the parameters (default: JAX's default float).
      batchnorm: add ``gamma = 1`` and ``beta = 0`` (``(fan_out,)``) to every hidden layer.
    Returns:
      A tuple of ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` dicts, one per layer.
    """
    check_scheme(scheme)
    sizes = check_layer_sizes(layer_sizes)
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a float dtype, got {dtype}")
    expected = "a number (or None for the scheme's default)"
    values = concrete_array("scale", scale, expected)
    if values is not None:
        try:
            value = float(values)
        except TypeError:
            raise TypeError(f"scale must be {expected}, got {scale!r}") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"scale must be finite and >= 0 (or None for the scheme's default), got {value!r}")
    multiplier = default_scale(scheme) if scale is None else scale
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for layer_key, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
        std = _BASE_STD[scheme](fan_in, fan_out)
        if scheme == "zeros":
            weights = jnp.zeros((fan_in, fan_out), dtype)
        else:
            normal = jax.random.normal(layer_key, (fan_in, fan_out), dtype)
            weights = normal * jnp.asarray(std * multiplier, dtype)
        params.append({"W": weights, "b": jnp.zeros((fan_out,), dtype)})
    if batchnorm:
        for layer in params[:-1]:
            fan_out = layer["b"].shape[0]
            layer["gamma"], layer["beta"] = jnp.ones((fan_out,), dtype), jnp.zeros((fan_out,), dtype)
    return tuple(params)
