"""The MLP forward pass, prediction and accuracy.

``forward`` applies ``z_l = a_{l-1} W_l + b_l`` then the hidden activation on every layer but
the last, and returns the last layer's ``z`` (the logits). One output unit means a binary
classifier (sigmoid head), two or more a multi-class one (softmax head). A hidden layer whose
dict also holds ``gamma`` and ``beta`` is batch-normalized before its activation
(``deepopt.batchnorm``); its running statistics travel as ``bn_state``, one entry per such layer.

One loop over the layers (``_layers``) serves ``forward_with_state`` (training and evaluation,
through ``forward``) and ``forward_with_activations`` (every layer's ``z`` and ``a``, read by
``diagnostics.layer_stats``); only ``deepopt.backprop`` writes its own, for its cache. ``fit``'s
training step on a small net without batch norm runs the same layers features-major instead
(``_layers_features_major``, ``transposed_matmul``; a first layer of 2 or 3 inputs as multiply-adds,
``elementwise_transposed_matmul``): faster on the CPU for small nets, the same values up to
rounding (measurements: docs/engine-measurements.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from deepopt import batchnorm, xla_options
from deepopt.hparams import concrete_array
from deepopt.parameters import Params, is_batch_normalized, normalized_layers


LEAKY_RELU_SLOPE = 0.01

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": lambda z: jax.nn.leaky_relu(z, LEAKY_RELU_SLOPE),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def check_activation(activation: str) -> None:
    """Raise a ``ValueError`` naming the known activations when ``activation`` is unknown."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")


def check_params(params: Any, name: str = "params") -> None:
    """Check the parameter format: a non-empty tuple/list of dicts with 2-D ``W`` and 1-D ``b``."""
    if not isinstance(params, (tuple, list)) or not params:
        raise TypeError(f"{name} must be a non-empty tuple of layer dicts, got {type(params).__name__}")
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or "W" not in layer or "b" not in layer:
            raise TypeError(f"{name}[{i}] must be a dict with 'W' and 'b', got {layer!r:.80}")
        w_shape, b_shape = jnp.shape(layer["W"]), jnp.shape(layer["b"])
        if len(w_shape) != 2 or b_shape != (w_shape[1],):
            raise ValueError(
                f"{name}[{i}] must have W of shape (fan_in, fan_out) and b of shape (fan_out,), "
                f"got W {w_shape} and b {b_shape}"
            )
        if is_batch_normalized(layer) != ("beta" in layer):
            raise ValueError(f"{name}[{i}] must have both 'gamma' and 'beta' (batch norm) or neither")
        if is_batch_normalized(layer):
            if i == len(params) - 1:
                raise ValueError(f"{name}[{i}] is the output layer: batch norm ('gamma', 'beta') goes on hidden layers only")
            for key in ("gamma", "beta"):
                if jnp.shape(layer[key]) != (w_shape[1],):
                    raise ValueError(f"{name}[{i}]['{key}'] must have shape ({w_shape[1]},), got {jnp.shape(layer[key])}")
        if i > 0 and w_shape[0] != jnp.shape(params[i - 1]["W"])[1]:
            raise ValueError(
                f"{name}[{i}]['W'] has fan_in {w_shape[0]} but the previous layer has "
                f"{jnp.shape(params[i - 1]['W'])[1]} units"
            )


def dropout_mask(key: jax.Array, shape: tuple[int, ...], keep_prob: Any, dtype: Any) -> jax.Array:
    """The keep mask of inverted dropout: ``u < keep_prob`` with ``u ~ U[0, 1)``, as 0/1 of ``dtype``."""
    return (jax.random.uniform(key, shape, dtype=dtype) < keep_prob).astype(dtype)


def check_keep_prob(keep_prob: Any) -> None:
    """A concrete ``keep_prob`` must be a scalar in ``(0, 1]``; a traced one is not checked (no host sync, no ops)."""
    value = concrete_array("keep_prob", keep_prob)
    if value is None:
        return
    if value.ndim != 0 or not (0 < value <= 1):
        got = float(value) if value.ndim == 0 else f"an array of shape {value.shape}"
        raise ValueError(f"keep_prob must be a scalar in (0, 1], got {got}")


def dropout(key: jax.Array, a: jax.Array, keep_prob: Any) -> jax.Array:
    r"""Inverted dropout: ``a \cdot mask / keep_prob`` with ``mask = dropout_mask(key, ...)``.

    The expected value of every unit is preserved; ``keep_prob = 1`` is the identity. A concrete
    ``keep_prob`` must be a scalar in ``(0, 1]`` (``check_keep_prob``); a traced one is not checked.
    """
    check_keep_prob(keep_prob)
    return a * dropout_mask(key, a.shape, keep_prob, a.dtype) / keep_prob


def _check_input(params: Params, X: jax.Array) -> None:
    check_params(params)
    chex.assert_rank(X, 2, custom_message="X must be (m, n_features)")
    n_in = jnp.shape(params[0]["W"])[0]
    if X.shape[1] != n_in:
        raise ValueError(f"X has {X.shape[1]} features but params[0]['W'] expects {n_in}")


def has_batchnorm(params: Params) -> bool:
    """True when some layer of ``params`` is batch-normalized (holds ``gamma``)."""
    return any(normalized_layers(params))


class LayerValues(NamedTuple):
    """What each layer of one forward pass computed, one ``(m, n_l)`` array per layer, first to last.

    Attributes:
      z: the input of the layer's activation: ``a_{l-1} W_l + b_l``, batch-normalized on a layer
        that holds ``gamma``; the output layer's is the logits.
      a: the layer's activation ``g(z_l)`` (after dropout when there is dropout); the output
        layer's is the logits.
    """

    z: tuple[jax.Array, ...]
    a: tuple[jax.Array, ...]


def _check_forward(
    params: Params,
    X: jax.Array,
    activation: str,
    keep_prob: Any,
    key: jax.Array | None,
    bn_state: tuple[batchnorm.BatchNormState, ...] | None,
    train: bool,
) -> tuple[batchnorm.BatchNormState, ...]:
    """Check a forward pass's arguments; returns the batch-norm state to start from (``init_states`` when None)."""
    check_activation(activation)
    _check_input(params, X)
    if key is None and not (isinstance(keep_prob, (int, float)) and keep_prob == 1):
        raise ValueError(f"dropout with keep_prob={keep_prob!r} needs a PRNG key: pass key=...")
    if key is not None:
        check_keep_prob(keep_prob)
    if bn_state is None:
        if has_batchnorm(params) and not train:
            raise ValueError("a batch-normalized network needs bn_state (the running statistics) when train=False")
        bn_state = batchnorm.init_states(params)
    num_bn_layers = sum(normalized_layers(params))
    if len(bn_state) != num_bn_layers:
        raise ValueError(f"bn_state has {len(bn_state)} entries but params has {num_bn_layers} batch-norm layers")
    return bn_state


DENSE_VJP_MIN_WEIGHTS = 1024
"""``forward_with_state(dense_vjp=True)`` uses ``dense_matmul`` on layers after the first whose ``W`` has
at least this many entries (below it ``jax.grad``'s own rule is as fast or faster on the CPU)."""


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


def _affine(a: jax.Array, layer: dict, first: bool, dense_vjp: bool) -> jax.Array:
    """``a W + b``; through ``dense_matmul`` when ``dense_vjp`` and the layer is large and not the first."""
    W = layer["W"]
    if dense_vjp and not first and W.shape[0] * W.shape[1] >= DENSE_VJP_MIN_WEIGHTS:
        return dense_matmul(a, W) + layer["b"]
    return a @ W + layer["b"]


FEATURES_MAJOR_MAX_WEIGHTS = 1024
"""``forward_with_state(dense_vjp=True)`` runs a net without batch norm features-major
(``transposed_matmul``) when no layer's ``W`` has more entries than this; see ``_layers``."""


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
one-input product a multiply), 4 and 8 (measurements: docs/engine-measurements.md). Set it to
``()`` before the first trace for the matrix product (and its float32 bits) everywhere."""


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


def _elementwise_first_layer(W: jax.Array) -> bool:
    """Whether ``fit``'s features-major step computes a first layer with weights ``W`` as multiply-adds:
    ``W.shape[0]`` in ``ELEMENTWISE_FAN_INS``, on the CPU, where LLVM fuses multiply-adds (level 1 up:
    deepopt's default; the matrix product's bits, tested)."""
    return W.shape[0] in ELEMENTWISE_FAN_INS and jax.default_backend() == "cpu" and xla_options.cpu_llvm_level() >= 1


def runs_features_major(params: Params) -> bool:
    """Whether ``forward_with_state(dense_vjp=True)`` runs ``params`` features-major (see ``_layers``)."""
    return not has_batchnorm(params) and all(
        jnp.shape(layer["W"])[0] * jnp.shape(layer["W"])[1] <= FEATURES_MAJOR_MAX_WEIGHTS for layer in params
    )


def _layer_keys(key: jax.Array | None, num_hidden: int) -> list[jax.Array | None]:
    """One dropout key per hidden layer (``None`` each without a key): the split both layer loops draw from."""
    if key is None or num_hidden == 0:
        return [None] * num_hidden
    return list(jax.random.split(key, num_hidden))


def _layers_features_major(
    params: Params, X: jax.Array, activation: str, keep_prob: Any, key: jax.Array | None
) -> tuple[jax.Array, tuple[batchnorm.BatchNormState, ...], LayerValues]:
    """``_layers`` of a net without batch norm on ``Xᵀ``: every layer through ``transposed_matmul``.

    Dropout draws the same ``(m, n_l)`` mask as the batch-major pass and applies its transpose, so
    the same units drop; the logits and the ``LayerValues`` come back batch-major.
    """
    g = ACTIVATIONS[activation]
    hidden = params[:-1]
    aT = X.T
    pre_activations, activations = [], []
    for number, (layer, layer_key) in enumerate(zip(hidden, _layer_keys(key, len(hidden)))):
        product = elementwise_transposed_matmul if number == 0 and _elementwise_first_layer(layer["W"]) else transposed_matmul
        zT = product(layer["W"], aT) + layer["b"][:, None]
        aT = g(zT)
        if layer_key is not None:  # dropout's own formula on aᵀ: through ``dropout(…, aT.T, …).T`` XLA rounds
            check_keep_prob(keep_prob)  # the run with keep_prob 1 differently from the run without masks
            aT = aT * dropout_mask(layer_key, aT.shape[::-1], keep_prob, aT.dtype).T / keep_prob
        pre_activations.append(zT.T)
        activations.append(aT.T)
    logits = (transposed_matmul(params[-1]["W"], aT) + params[-1]["b"][:, None]).T
    return logits, (), LayerValues((*pre_activations, logits), (*activations, logits))


def _layers(
    params: Params,
    X: jax.Array,
    activation: str,
    keep_prob: Any,
    key: jax.Array | None,
    bn_state: tuple[batchnorm.BatchNormState, ...],
    train: bool,
    mask: jax.Array | None,
    dense_vjp: bool = False,
) -> tuple[jax.Array, tuple[batchnorm.BatchNormState, ...], LayerValues]:
    """The one loop over the layers (arguments checked): ``(logits, new_bn_state, LayerValues)``.

    With ``dense_vjp`` (``fit``'s training step) a net that ``runs_features_major`` takes
    ``_layers_features_major`` instead: faster on the CPU for small nets, while nets with a larger
    layer run slower features-major and stay batch-major (measurements: docs/engine-measurements.md).
    """
    if dense_vjp and runs_features_major(params):
        return _layers_features_major(params, X, activation, keep_prob, key)
    g = ACTIVATIONS[activation]
    a = X
    hidden = params[:-1]
    states = iter(bn_state)
    new_state, pre_activations, activations = [], [], []
    for layer, layer_key in zip(hidden, _layer_keys(key, len(hidden))):
        z = _affine(a, layer, a is X, dense_vjp)
        if is_batch_normalized(layer):
            z, layer_state = batchnorm.batch_norm(z, layer["gamma"], layer["beta"], next(states), train=train, mask=mask)
            new_state.append(layer_state)
        a = g(z)
        if layer_key is not None:
            a = dropout(layer_key, a, keep_prob)
        pre_activations.append(z)
        activations.append(a)
    logits = _affine(a, params[-1], a is X, dense_vjp)
    return logits, tuple(new_state), LayerValues((*pre_activations, logits), (*activations, logits))


def forward_with_state(
    params: Params,
    X: jax.Array,
    *,
    activation: str = "relu",
    keep_prob: Any = 1.0,
    key: jax.Array | None = None,
    bn_state: tuple[batchnorm.BatchNormState, ...] | None = None,
    train: bool = False,
    mask: jax.Array | None = None,
    dense_vjp: bool = False,
) -> tuple[jax.Array, tuple[batchnorm.BatchNormState, ...]]:
    r"""``forward`` that also returns the batch-norm running statistics: ``(logits, new_bn_state)``.

    With ``train=True`` batch-normalized layers use the batch's statistics (rows where ``mask``
    is True) and update the running ones (starting from ``batchnorm.init_states`` when
    ``bn_state`` is None); with ``train=False`` they use ``bn_state``, which is then required.
    Networks without batch norm return ``()`` as the state. ``dense_vjp=True`` (``fit``'s
    training step) picks the fastest form under ``jax.grad`` and is not differentiable in
    forward mode (``jax.jvp``): a small net without batch norm (``runs_features_major``) runs on
    features-major activations through ``transposed_matmul`` (the same values up to float
    rounding), a larger one computes its large layers through ``dense_matmul`` (the same bits).
    """
    bn_state = _check_forward(params, X, activation, keep_prob, key, bn_state, train)
    logits, new_state, _ = _layers(params, X, activation, keep_prob, key, bn_state, train, mask, dense_vjp)
    return logits, new_state


def forward_with_activations(
    params: Params,
    X: jax.Array,
    *,
    activation: str = "relu",
    bn_state: tuple[batchnorm.BatchNormState, ...] | None = None,
) -> tuple[jax.Array, LayerValues]:
    """``forward`` (no dropout) that also returns every layer's ``z`` and ``a``: ``(logits, LayerValues)``.

    As in ``forward``, batch-normalized layers use ``bn_state`` (the running statistics) when it
    is given, else the batch's own statistics. This is the pass ``diagnostics.layer_stats`` reads.
    """
    train = bn_state is None
    bn_state = _check_forward(params, X, activation, 1.0, None, bn_state, train)
    logits, _, layers = _layers(params, X, activation, 1.0, None, bn_state, train, None)
    return logits, layers


def forward(
    params: Params,
    X: jax.Array,
    *,
    activation: str = "relu",
    keep_prob: Any = 1.0,
    key: jax.Array | None = None,
    bn_state: tuple[batchnorm.BatchNormState, ...] | None = None,
) -> jax.Array:
    r"""Logits of the MLP: ``a_0 = X``, ``a_l = g(a_{l-1} W_l + b_l)`` for hidden layers, logits ``= a_{L-1} W_L + b_L``.

    Args:
      params: tuple of ``{"W", "b"}`` dicts (plus ``"gamma"``, ``"beta"`` on batch-normalized layers).
      X: ``(m, n_features)``.
      activation: hidden activation, one of ``ACTIVATIONS``.
      keep_prob: inverted-dropout keep probability on hidden layers (may be traced). Dropout
        is applied when ``key`` is given; without a key ``keep_prob`` must be 1 (evaluation).
      key: PRNG key for the dropout masks, or None for no dropout.
      bn_state: running statistics of the batch-norm layers (evaluation); None uses the batch's
        own statistics (training mode).
    Returns:
      ``(m, n_out)`` logits.
    """
    logits, _ = forward_with_state(
        params, X, activation=activation, keep_prob=keep_prob, key=key, bn_state=bn_state, train=bn_state is None
    )
    return logits


def predict_from_logits(logits: jax.Array) -> jax.Array:
    """Class ids from logits: ``z > 0`` (i.e. ``sigmoid(z) > 0.5``) for one unit, ``argmax`` otherwise."""
    chex.assert_rank(logits, 2, custom_message="logits must be (m, n_out)")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=1).astype(jnp.int32)


def predict(
    params: Params,
    X: jax.Array,
    *,
    activation: str = "relu",
    bn_state: tuple[batchnorm.BatchNormState, ...] | None = None,
) -> jax.Array:
    """Predicted class ids ``(m,)`` (no dropout; batch norm with ``bn_state``, e.g. ``TrainResult.bn_state``).

    A batch-normalized network needs ``bn_state``: predicting with the batch's own statistics
    would make one example's class depend on the others in ``X`` (a single example would always
    normalize to ``beta``). ``forward`` without ``bn_state`` is the explicit way to get those.
    """
    if bn_state is None and has_batchnorm(params):
        raise ValueError(
            "predict: a batch-normalized network needs bn_state (the running statistics, e.g. "
            "TrainResult.bn_state); got None, which would normalize X with its own batch statistics"
        )
    return predict_from_logits(forward(params, X, activation=activation, bn_state=bn_state))


def accuracy(
    params: Params,
    X: jax.Array,
    y: jax.Array,
    *,
    activation: str = "relu",
    bn_state: tuple[batchnorm.BatchNormState, ...] | None = None,
) -> jax.Array:
    """Fraction of examples whose predicted class equals ``y``."""
    chex.assert_rank(y, 1, custom_message="y must be (m,) class ids")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    return jnp.mean(predict(params, X, activation=activation, bn_state=bn_state) == y)
