"""The MLP forward pass, prediction and accuracy.

``forward`` applies ``z_l = a_{l-1} W_l + b_l`` then the hidden activation on every layer but
the last, and returns the last layer's ``z`` (the logits). One output unit means a binary
classifier (sigmoid head), two or more a multi-class one (softmax head). A hidden layer whose
dict also holds ``gamma`` and ``beta`` is batch-normalized before its activation
(``deepopt.batchnorm``); its running statistics travel as ``bn_state``, one entry per such layer.

One loop over the layers (``_layers``) serves ``forward_with_state`` (training and evaluation,
through ``forward``) and ``forward_with_activations`` (every layer's ``z`` and ``a``, read by
``diagnostics.layer_stats``); only ``deepopt.backprop`` writes its own, for its cache. ``fit``'s
training step (``dense_vjp=True``, ``Config.cpu_kernels``) hands the layers to
``deepopt.cpu_kernels``, the CPU-tuned forms of the same layers; the kernels' names
(``dense_matmul``, ``transposed_matmul``, ...) are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from deepopt import batchnorm, cpu_kernels
from deepopt.hparams import concrete_array
from deepopt.parameters import Params, is_batch_normalized, normalized_layers


# The CPU kernels' public names, where they were before they had a module of their own:
from deepopt.cpu_kernels import (  # noqa: E402,F401
    DENSE_VJP_MIN_WEIGHTS,
    ELEMENTWISE_FAN_INS,
    FEATURES_MAJOR_MAX_WEIGHTS,
    dense_matmul,
    elementwise_transposed_matmul,
    runs_features_major,
    transposed_matmul,
)

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


def _affine(a: jax.Array, layer: dict, first: bool, dense_vjp: bool) -> jax.Array:
    """``a W + b``; with ``dense_vjp`` a large layer after the first goes through ``cpu_kernels.dense_matmul``."""
    W = layer["W"]
    if dense_vjp and cpu_kernels.takes_dense_matmul(W, first):
        return cpu_kernels.dense_matmul(a, W) + layer["b"]
    return a @ W + layer["b"]


def _layer_keys(key: jax.Array | None, num_hidden: int) -> list[jax.Array | None]:
    """One dropout key per hidden layer (``None`` each without a key): the split both layer loops draw from."""
    if key is None or num_hidden == 0:
        return [None] * num_hidden
    return list(jax.random.split(key, num_hidden))


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

    ``dense_vjp`` (``fit``'s training step with ``Config.cpu_kernels``) hands the layers to
    ``cpu_kernels``: features-major for a small net, ``dense_matmul`` for a larger one's large layers.
    """
    if dense_vjp and cpu_kernels.runs_features_major(params):
        def drop_transposed(layer_key: jax.Array, aT: jax.Array) -> jax.Array:
            # dropout's own formula on aᵀ: through ``dropout(…, aT.T, …).T`` XLA rounds the run with
            # keep_prob 1 differently from the run without masks
            check_keep_prob(keep_prob)
            return aT * dropout_mask(layer_key, aT.shape[::-1], keep_prob, aT.dtype).T / keep_prob

        logits, zs, activations_ = cpu_kernels.features_major_layers(
            params, X, ACTIVATIONS[activation], _layer_keys(key, len(params) - 1), drop_transposed)
        return logits, (), LayerValues(zs, activations_)
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
