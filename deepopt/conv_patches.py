r"""Convolutions as patches × kernel: a Flax module's ``nn.Conv`` at batched-matmul speed under a per-config ``vmap``.

A sweep trains many configs at once under ``vmap``; each config has its own kernels. ``vmap`` of
``lax.conv_general_dilated`` with a batched kernel becomes one grouped convolution
(``feature_group_count`` = configs), which XLA:CPU runs slowly. The same convolution written as

.. math::  y[n, o, f] = \sum_{p} \text{patches}(x)[n, o, p] \; K[p, f] + b[f],
   \qquad \text{patches}(x)[n, o, (j, c)] = x_{\text{padded}}[n, o \cdot s + j \cdot d, c]

(``o`` an output position, ``j`` a kernel offset, ``s`` the stride, ``d`` the kernel dilation,
``c`` an input channel; the same per spatial axis in 2-D) is a matmul, and under ``vmap`` a batched
matmul over the configs. The patches are cut with one strided slice per kernel offset (no gather,
no convolution), so their transpose in the backward pass is a sum of pads.

``patches_conv(x, kernel, strides, padding, kernel_dilation)`` computes it (channels last, like
Flax); ``intercept_convs()`` is the ``flax.linen.intercept_methods`` context under which every
``nn.Conv`` that it can compute runs through it, with no change to the user's module: what it
cannot (``feature_group_count`` > 1, ``input_dilation`` > 1, a ``mask``, CIRCULAR / REFLECT /
CAUSAL padding, ``ConvLocal``, a module's own ``conv_general_dilated``) falls back to Flax's own
call. The values are the same sums in another order: equal up to float rounding.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]


def explicit_padding(padding: Padding, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                     dilation: Sequence[int]) -> list[tuple[int, int]]:
    """``padding`` (``"SAME"``, ``"VALID"``, an int, ints or ``(low, high)`` pairs per axis) as ``(low, high)`` per axis."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
            raise ValueError(f"padding must be SAME, SAME_LOWER, VALID, ints or (low, high) pairs, got {padding!r}")
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        return list(lax.padtype_to_pads(tuple(spatial), tuple(dilated), tuple(strides), padding.upper()))
    if isinstance(padding, int):
        return [(padding, padding)] * len(spatial)
    pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pairs) == 1 and len(spatial) > 1:
        pairs = pairs * len(spatial)
    if len(pairs) != len(spatial) or any(len(p) != 2 for p in pairs):
        raise ValueError(f"padding must give one int or (low, high) pair per spatial axis ({len(spatial)}), got {padding!r}")
    return [(int(low), int(high)) for low, high in pairs]


def patches(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int], pads: Sequence[tuple[int, int]],
            dilation: Sequence[int]) -> jax.Array:
    """``(N, *out, K · C)``: every window of ``x`` ``(N, *spatial, C)``, kernel offsets major, channels minor.

    One strided ``lax.slice`` of the padded input per kernel offset (``K = prod(kernel_size)``).
    """
    spatial = x.shape[1:-1]
    padded = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(s + low + high - ((k - 1) * d + 1)) // st + 1
           for s, (low, high), k, d, st in zip(spatial, pads, kernel_size, dilation, strides)]
    if any(o <= 0 for o in out):
        raise ValueError(f"the convolution's window {tuple(kernel_size)} (dilation {tuple(dilation)}) is larger than "
                         f"the padded input {tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads))}")
    windows = []
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        start = [0, *(j * d for j, d in zip(offset, dilation)), 0]
        limit = [x.shape[0], *(j * d + (o - 1) * st + 1 for j, d, o, st in zip(offset, dilation, out, strides)),
                 x.shape[-1]]
        windows.append(lax.slice(padded, start, limit, [1, *strides, 1]))
    stacked = jnp.stack(windows, axis=-2)  # (N, *out, K, C)
    return stacked.reshape(*stacked.shape[:-2], -1)


def patches_conv(
    x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
    kernel_dilation: Sequence[int] | None = None, precision: Any = None,
) -> jax.Array:
    r"""The convolution of ``x`` ``(N, *spatial, C)`` by ``kernel`` ``(*kernel_size, C, F)`` as patches × kernel.

    :math:`y = \text{patches}(x) \cdot K_{(K C) \times F}`: the value of
    ``lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=kernel_dilation,
    dimension_numbers=("NWC", "WIO", "NWC"))`` (and its 2-D analogue) up to float rounding.
    """
    kernel_size = kernel.shape[:-2]
    n_spatial = len(kernel_size)
    if x.ndim != n_spatial + 2:
        raise ValueError(f"x must be (N, *spatial, C) for a {n_spatial}-D kernel {kernel.shape}, got shape {x.shape}")
    if x.shape[-1] != kernel.shape[-2]:
        raise ValueError(f"x has {x.shape[-1]} channels but the kernel {kernel.shape} takes {kernel.shape[-2]}")
    dilation = tuple(kernel_dilation or (1,) * n_spatial)
    pads = explicit_padding(padding, x.shape[1:-1], kernel_size, strides, dilation)
    windows = patches(x, kernel_size, tuple(strides), pads, dilation)
    flat_kernel = kernel.reshape(-1, kernel.shape[-1])
    return jnp.einsum("...p,pf->...f", windows, flat_kernel, precision=precision)


def _tuple(value: int | Sequence[int] | None, n: int) -> tuple[int, ...]:
    """Flax's broadcasting of a stride or dilation: None is 1, an int is the same on every axis."""
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(value)


def computes(module: nn.Module) -> bool:
    """Whether ``intercept_convs`` computes this ``nn.Conv`` as patches × kernel (otherwise Flax's own call runs)."""
    if type(module) is not nn.Conv:  # ConvLocal, ConvTranspose, a user's subclass: Flax's own
        return False
    kernel_size = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
    padding = module.padding
    plain_padding = not isinstance(padding, str) or padding.upper() in ("SAME", "VALID", "SAME_LOWER")
    return (
        module.feature_group_count == 1
        and set(_tuple(module.input_dilation, len(kernel_size))) == {1}
        and module.mask is None
        and module.conv_general_dilated is None
        and module.conv_general_dilated_cls is None
        and plain_padding
    )


def _conv_call(module: nn.Conv, inputs: jax.Array) -> jax.Array | None:
    """``module(inputs)`` as patches × kernel, from its bound parameters; None when it has none yet (``init``)."""
    if not module.has_variable("params", "kernel"):
        return None
    kernel = module.get_variable("params", "kernel")
    bias = module.get_variable("params", "bias") if module.use_bias else None
    kernel_size = kernel.shape[:-2]
    n_spatial = len(kernel_size)
    batch_shape = inputs.shape[: inputs.ndim - (n_spatial + 1)]
    flat = inputs.reshape((-1, *inputs.shape[len(batch_shape):]))
    flat, kernel, bias = module.promote_dtype(flat, kernel, bias, dtype=module.dtype)
    y = patches_conv(flat, kernel, _tuple(module.strides, n_spatial), module.padding,
                     _tuple(module.kernel_dilation, n_spatial), module.precision)
    if bias is not None:
        y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
    return y.reshape((*batch_shape, *y.shape[1:]))


def _interceptor(next_fun: Callable[..., Any], args: tuple, kwargs: dict, context: Any) -> Any:
    """Run an ``nn.Conv``'s ``__call__`` as patches × kernel where ``computes`` says so; anything else as it is."""
    module = context.module
    if context.method_name == "__call__" and len(args) == 1 and not kwargs and computes(module):
        y = _conv_call(module, args[0])
        if y is not None:
            return y
    return next_fun(*args, **kwargs)


@contextlib.contextmanager
def intercept_convs() -> Iterator[None]:
    """Within it, every ``nn.Conv`` that ``computes`` names is computed by ``patches_conv`` (a Flax method interceptor)."""
    with nn.intercept_methods(_interceptor):
        yield


def conv_reference(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
                   kernel_dilation: Sequence[int] | None = None) -> jax.Array:
    """``lax.conv_general_dilated`` with channels last: what ``patches_conv`` must equal (tests, benchmarks)."""
    n_spatial = kernel.ndim - 2
    spec = "NWC" if n_spatial == 1 else "NHWC" if n_spatial == 2 else "NDHWC"
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, (spec, spec.replace("N", "").replace("C", "") + "IO", spec))
    dilation = tuple(kernel_dilation or (1,) * n_spatial)
    pads = explicit_padding(padding, x.shape[1:-1], kernel.shape[:-2], strides, dilation)
    return lax.conv_general_dilated(x, kernel, tuple(strides), pads, rhs_dilation=dilation, dimension_numbers=dims)


