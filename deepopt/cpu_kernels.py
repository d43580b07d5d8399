"""The training step's CPU-tuned kernels, behind one switch: ``train.Config(cpu_kernels=...)``.

With ``cpu_kernels=True`` (the default) ``fit``'s training step (``model.forward_with_state(...,
dense_vjp=True)``) runs:

- a small net without batch norm (``runs_features_major``: every layer at most
  ``FEATURES_MAJOR_MAX_WEIGHTS`` weights) on features-major activations, ``zᵀ = Wᵀ aᵀ``
  (``transposed_matmul``, ``features_major_layers``), the layout XLA:CPU's small-matrix kernels run
  fastest; its first layer of 2 or 3 inputs as multiply-adds fused into the bias and activation
  (``elementwise_transposed_matmul``, at LLVM level 1 or above, where it keeps the product's bits);
- a larger net batch-major, its large layers after the first through ``dense_matmul`` (``∂W`` written
  in ``W``'s layout; the same bits as ``jax.grad``'s rule).

The values are the course's forward pass up to float rounding (features-major sums run in another
order). ``cpu_kernels=False`` trains through ``model``'s plain layer loop and ``jax.grad``
everywhere. The thresholds are constants tuned on the CPU (measurements:
docs/engine-measurements.md), not settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from deepopt import xla_options
from deepopt.parameters import Params, normalized_layers


DENSE_VJP_MIN_WEIGHTS = 1024
"""The training step computes a layer after the first through ``dense_matmul`` when its ``W`` has at
least this many entries (below it ``jax.grad``'s own rule is as fast or faster on the CPU)."""


def takes_dense_matmul(W: jax.Array, first: bool) -> bool:
    """Whether a batch-major training step computes this layer through ``dense_matmul``."""
    return not first and W.shape[0] * W.shape[1] >= DENSE_VJP_MIN_WEIGHTS


@jax.custom_vjp
def dense_matmul(a: jax.Array, W: jax.Array) -> jax.Array:
    r"""``a @ W`` whose reverse-mode rule writes :math:`\partial W = a^\top g` in ``W``'s own layout.

    ``jax.grad`` of ``a @ W`` computes :math:`(g^\top a)^\top`: a ``(fan_out, fan_in)`` product,
    transposed afterwards, which XLA:CPU fuses into the optimizer's update as a strided read. Here
    ``∂W = dot_general(a, g)`` contracts the batch axis straight into ``(fan_in, fan_out)``;
    :math:`\partial a = g W^\top` is ``jax.grad``'s. The same sums, and on this project's CPU the
    same bits (tested); a wide net's training step is faster for it (measurements:
    docs/engine-measurements.md). Reverse mode only: ``jax.jvp`` cannot go through it
    (``forward`` does not use it).
    """
    return a @ W


def _dense_matmul_forward(a: jax.Array, W: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return a @ W, (a, W)


def _dense_matmul_backward(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, W = residuals
    da = jax.lax.dot_general(g, W, (((1,), (1,)), ((), ())), preferred_element_type=g.dtype)
    dW = jax.lax.dot_general(a, g, (((0,), (0,)), ((), ())), preferred_element_type=g.dtype)
    return da, dW


dense_matmul.defvjp(_dense_matmul_forward, _dense_matmul_backward)


FEATURES_MAJOR_MAX_WEIGHTS = 1024
"""The training step runs a net without batch norm features-major (``transposed_matmul``) when no
layer's ``W`` has more entries than this (``runs_features_major``)."""


@jax.custom_vjp
def transposed_matmul(W: jax.Array, aT: jax.Array) -> jax.Array:
    r"""A dense layer on features-major activations: :math:`z^\top = W^\top a^\top`, ``(fan_out, m)``.

    ``aT`` is ``(fan_in, m)``, the course's own layout. The reverse-mode rule gives
    :math:`\partial a^\top = W g^\top` and :math:`\partial W = a^\top g` (the batch contracted),
    written in ``W``'s layout directly for a layer of at least ``DENSE_VJP_MIN_WEIGHTS`` weights and as
    :math:`(g^\top a)^\top` below it (faster for small layers on XLA:CPU). Every product here keeps
    the features in the major and the batch in the minor dimension, the form XLA:CPU's small-matrix
    kernels (YNN) take, and the elementwise work between layers runs over batch-wide rows. The same
    values as ``a @ W`` up to float rounding (the sums run in another order), not the same bits.
    Reverse mode only (a ``custom_vjp``).
    """
    return jax.lax.dot_general(jax.lax.optimization_barrier(W.T), aT, (((1,), (0,)), ((), ())))


def _transposed_matmul_forward(W: jax.Array, aT: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return transposed_matmul(W, aT), (W, aT)


def _transposed_matmul_backward(residuals: tuple[jax.Array, jax.Array], gT: jax.Array) -> tuple[jax.Array, jax.Array]:
    W, aT = residuals
    daT = jax.lax.dot_general(W, gT, (((1,), (0,)), ((), ())), preferred_element_type=gT.dtype)
    if W.shape[-2] * W.shape[-1] >= DENSE_VJP_MIN_WEIGHTS:
        dW = jax.lax.dot_general(aT, gT, (((1,), (1,)), ((), ())), preferred_element_type=gT.dtype)
    else:
        dW = jax.lax.dot_general(gT, aT, (((1,), (1,)), ((), ())), preferred_element_type=gT.dtype).T
    return dW, daT


transposed_matmul.defvjp(_transposed_matmul_forward, _transposed_matmul_backward)


ELEMENTWISE_FAN_INS = (2, 3)
"""``fit``'s features-major step computes a first layer with this many inputs as multiply-adds
(``elementwise_transposed_matmul``) instead of a matrix product, on the CPU at LLVM level 1 or above
(``_elementwise_first_layer``): faster for 2 and 3 inputs, slower for 1 (XLA already makes a
one-input product a multiply), 4 and 8 (measurements: docs/engine-measurements.md).
``Config(cpu_kernels=False)`` gives the plain matrix product (and its float32 bits) everywhere."""


@jax.custom_vjp
def elementwise_transposed_matmul(W: jax.Array, aT: jax.Array) -> jax.Array:
    r"""``transposed_matmul`` for a small fan-in, as multiply-adds: :math:`z^\top = \sum_i W_{i,:}^\top a_i^\top`.

    The terms are added in order :math:`i = 0, 1, \dots`, each to the sum so far, which is how
    XLA:CPU's matrix kernel sums them: with the library's compile options (LLVM level 1, which fuses
    each multiply-add) the product has ``transposed_matmul``'s bits (tested). XLA then fuses the
    product into the layer's bias and activation, so every config's ``(fan_out, m)`` pre-activation
    is not written out and read back. Its reverse-mode rule is ``transposed_matmul``'s. In ``fit``
    the rest of the step can change with it: for a chunk whose first layer has fewer than 32k
    activations, or several seeds, XLA sums the first layer's ``∂b`` in another order (other last
    bits in float32; tested equal for one run and for the benchmark's 128-config chunk).
    """
    zT = W[0][:, None] * aT[0]
    for i in range(1, W.shape[0]):
        zT = W[i][:, None] * aT[i] + zT
    return zT


def _elementwise_transposed_matmul_forward(
    W: jax.Array, aT: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return elementwise_transposed_matmul(W, aT), (W, aT)


elementwise_transposed_matmul.defvjp(_elementwise_transposed_matmul_forward, _transposed_matmul_backward)


def elementwise_first_layer(W: jax.Array) -> bool:
    """Whether ``fit``'s features-major step computes a first layer with weights ``W`` as multiply-adds:
    ``W.shape[0]`` in ``ELEMENTWISE_FAN_INS``, on the CPU, where LLVM fuses multiply-adds (level 1 up:
    deepopt's default; the matrix product's bits, tested)."""
    return W.shape[0] in ELEMENTWISE_FAN_INS and jax.default_backend() == "cpu" and xla_options.cpu_llvm_level() >= 1


def runs_features_major(params: Params) -> bool:
    """Whether the training step runs ``params`` features-major: no batch norm, every layer small."""
    return not any(normalized_layers(params)) and all(
        jnp.shape(layer["W"])[0] * jnp.shape(layer["W"])[1] <= FEATURES_MAJOR_MAX_WEIGHTS for layer in params
    )


def features_major_layers(
    params: Params, X: jax.Array, g: Callable[[jax.Array], jax.Array], layer_keys: Sequence[jax.Array | None],
    drop_transposed: Callable[[jax.Array, jax.Array], jax.Array],
) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """The layers of a net without batch norm on ``Xᵀ``: every layer through ``transposed_matmul``.

    ``g``: the hidden activation; ``layer_keys``: one dropout key (or None) per hidden layer;
    ``drop_transposed(key, aᵀ)``: dropout on ``aᵀ`` with the batch-major pass's ``(m, n_l)`` mask
    transposed, so the same units drop. Returns the logits and every layer's ``z`` and ``a``,
    batch-major.
    """
    hidden = params[:-1]
    aT = X.T
    pre_activations, activations = [], []
    for number, (layer, layer_key) in enumerate(zip(hidden, layer_keys)):
        product = elementwise_transposed_matmul if number == 0 and elementwise_first_layer(layer["W"]) else transposed_matmul
        zT = product(layer["W"], aT) + layer["b"][:, None]
        aT = g(zT)
        if layer_key is not None:
            aT = drop_transposed(layer_key, aT)
        pre_activations.append(zT.T)
        activations.append(aT.T)
    logits = (transposed_matmul(params[-1]["W"], aT) + params[-1]["b"][:, None]).T
    return logits, (*pre_activations, logits), (*activations, logits)
