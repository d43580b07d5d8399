r"""Hand-written forward and backward passes of the MLP (no ``jax.grad``).

``forward_with_cache`` runs the same network as ``model.forward`` and keeps what the backward
pass needs; ``backward`` applies the chain rule layer by layer. The gradients are those of

.. math:: J = \frac{1}{m}\sum_i \ell(z^{[L]}_i, y_i) + \frac{\lambda}{2m}\sum_l \|W_l\|_F^2,

i.e. ``losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, m)`` with the dropout
forward given by the explicit masks. Batch-major shapes (rows are examples), with
``dZ_l := \partial J / \partial Z_l`` (the ``1/m`` of the mean already inside ``dZ``):

.. math::
   dZ_L &= (\hat Y - Y) / m \quad (\hat Y = \sigma(Z_L) \text{ or } \mathrm{softmax}(Z_L),\ Y \text{ the 0/1 or one-hot labels}) \\
   dW_l &= A_{l-1}^\top dZ_l + \tfrac{\lambda}{m} W_l, \qquad db_l = \textstyle\sum_{\text{rows}} dZ_l \\
   dA_{l-1} &= dZ_l W_l^\top, \quad\text{then } dA_{l-1} \leftarrow dA_{l-1} \odot D_{l-1} / \text{keep\_prob} \text{ (dropout)} \\
   dZ_{l-1} &= dA_{l-1} \odot g'(Z_{l-1})

A batch-normalized hidden layer (``gamma``, ``beta`` beside ``W``, ``b``) is differentiated in
training mode, with the batch's statistics (what ``fit`` differentiates): forward
``Z = A W + b``, ``\hat Z = (Z - \mu) / \sqrt{\sigma^2 + \epsilon}``, ``\tilde Z = \gamma \hat Z + \beta``,
``A = g(\tilde Z)``; backward from ``d\tilde Z = dA \odot g'(\tilde Z)``:

.. math::
   d\gamma &= \textstyle\sum_{\text{rows}} d\tilde Z \odot \hat Z, \qquad d\beta = \textstyle\sum_{\text{rows}} d\tilde Z,
   \qquad d\hat Z = d\tilde Z \odot \gamma \\
   dZ &= \frac{1}{m\sqrt{\sigma^2 + \epsilon}}\Big(m\, d\hat Z - \textstyle\sum_{\text{rows}} d\hat Z
        - \hat Z \odot \textstyle\sum_{\text{rows}} (d\hat Z \odot \hat Z)\Big)

(the gradient through the batch mean and variance included), so ``db = \sum_{rows} dZ = 0``: the
bias is redundant under batch norm and its gradient vanishes up to rounding.

Activation derivatives follow ``jax.grad`` of ``model.ACTIVATIONS`` exactly, also at 0:
``relu'(0) = 0``, ``leaky_relu'(0) = 1`` (``jax.nn.leaky_relu`` takes the identity branch at
``z >= 0``), ``tanh' = 1 - tanh^2``, ``sigmoid' = s (1 - s)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from deepopt import batchnorm, data, losses, model
from deepopt.parameters import Params, is_batch_normalized, normalized_layers



class BatchNormCache(NamedTuple):
    r"""What the backward pass of one batch-normalized layer needs (training mode, batch statistics).

    Attributes:
      normalized: ``\hat Z = (Z - \mu) / \sqrt{\sigma^2 + \epsilon}``, ``(m, n)``.
      mean: the batch mean ``\mu``, ``(n,)``.
      var: the biased batch variance ``\sigma^2``, ``(n,)``.
      eps: the ``\epsilon`` added to the variance.
    """

    normalized: jax.Array
    mean: jax.Array
    var: jax.Array
    eps: Any


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["layer_inputs", "hidden_pre_activations", "logits", "dropout_masks", "keep_prob", "batchnorm"],
    meta_fields=["activation"],
)
@dataclasses.dataclass(frozen=True)
class Cache:
    r"""What ``backward`` needs from the forward pass (a pytree; ``activation`` is static).

    Attributes:
      layer_inputs: ``(A_0 = X, A_1, ..., A_{L-1})``: the input of every layer, hidden ones
        after dropout, so ``Z_l = A_{l-1} W_l + b_l``.
      hidden_pre_activations: the input of each hidden activation, ``Z_l`` (or ``\tilde Z_l =
        \gamma_l \hat Z_l + \beta_l`` on a batch-normalized layer), one per hidden layer.
      logits: ``Z_L``, ``(m, n_out)``.
      dropout_masks: the 0/1 masks ``(D_1, ..., D_{L-1})``, or None without dropout.
      keep_prob: the inverted-dropout keep probability (1 without dropout).
      batchnorm: one entry per hidden layer: its ``BatchNormCache``, or None when the layer has
        no batch norm.
      activation: name of the hidden activation (``model.ACTIVATIONS``).
    """

    layer_inputs: tuple[jax.Array, ...]
    hidden_pre_activations: tuple[jax.Array, ...]
    logits: jax.Array
    dropout_masks: tuple[jax.Array, ...] | None
    keep_prob: Any
    batchnorm: tuple[BatchNormCache | None, ...]
    activation: str


_LAYER_KEYS = ({"W", "b"}, {"W", "b", "gamma", "beta"})


def _check_layer_params(params: Params) -> None:
    """``model.check_params`` plus: every layer is linear (``W``, ``b``), optionally batch-normalized (``gamma``, ``beta``)."""
    model.check_params(params)
    for i, layer in enumerate(params):
        if set(layer) not in _LAYER_KEYS:
            raise ValueError(
                f"params[{i}] has keys {sorted(layer)}: the hand-written backward handles linear layers "
                "({'W', 'b'}), batch-normalized ones with {'gamma', 'beta'} too"
            )


def _is_concrete_one(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    try:
        return bool(np.all(np.asarray(value) == 1))
    except (TypeError, ValueError):
        return False


def make_dropout_masks(
    key: jax.Array, params: Params, num_examples: int, keep_prob: Any, dtype: Any = None
) -> tuple[jax.Array, ...]:
    """The hidden-layer keep masks ``model.forward(..., key=key)`` draws: one ``(m, n_l)`` 0/1 mask per hidden layer.

    ``forward_with_cache(params, X, keep_prob=p, dropout_masks=make_dropout_masks(key, params, m, p))``
    computes the same logits as ``model.forward(params, X, keep_prob=p, key=key)``.
    """
    _check_layer_params(params)
    hidden = params[:-1]
    if not hidden:
        return ()
    dtype = params[0]["W"].dtype if dtype is None else dtype
    keys = jax.random.split(key, len(hidden))
    return tuple(
        model.dropout_mask(layer_key, (num_examples, layer["W"].shape[1]), keep_prob, dtype)
        for layer_key, layer in zip(keys, hidden)
    )


def forward_with_cache(
    params: Params,
    X: jax.Array,
    *,
    activation: str = "relu",
    keep_prob: Any = 1.0,
    dropout_masks: Sequence[jax.Array] | None = None,
) -> tuple[jax.Array, Cache]:
    r"""The MLP forward pass, keeping what ``backward`` needs.

    ``A_0 = X``; for hidden layers ``Z_l = A_{l-1} W_l + b_l``, ``A_l = g(Z_l) \odot D_l / keep\_prob``;
    logits ``Z_L = A_{L-1} W_L + b_L``. A batch-normalized layer applies ``g`` to
    ``\gamma_l \hat Z_l + \beta_l`` with the batch's statistics (training mode; running statistics
    play no part in this cost and are not updated here: ``model.forward_with_state`` does that).
    Without masks this is ``model.forward_with_state(..., train=True)`` without dropout.

    Args:
      params: tuple of ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` dicts, hidden ones optionally
        with ``"gamma"``, ``"beta"`` ``(fan_out,)`` (batch norm).
      X: ``(m, n_features)``.
      activation: hidden activation, one of ``model.ACTIVATIONS``.
      keep_prob: inverted-dropout keep probability (may be traced when masks are given).
      dropout_masks: one 0/1 mask ``(m, n_l)`` per hidden layer (see ``make_dropout_masks``);
        required when ``keep_prob < 1``.
    Returns:
      ``(logits, cache)``: the ``(m, n_out)`` logits and a ``Cache`` (which holds them too).
    """
    model.check_activation(activation)
    _check_layer_params(params)
    chex.assert_rank(X, 2, custom_message="X must be (m, n_features)")
    n_in = params[0]["W"].shape[0]
    if X.shape[1] != n_in:
        raise ValueError(f"X has {X.shape[1]} features but params[0]['W'] expects {n_in}")
    model.check_keep_prob(keep_prob)
    hidden = params[:-1]
    if dropout_masks is None:
        if not _is_concrete_one(keep_prob):
            raise ValueError(
                f"dropout with keep_prob={keep_prob!r} needs explicit dropout_masks (one 0/1 mask per "
                "hidden layer, e.g. backprop.make_dropout_masks(key, params, m, keep_prob))"
            )
    else:
        dropout_masks = tuple(dropout_masks)
        if len(dropout_masks) != len(hidden):
            raise ValueError(
                f"dropout_masks must hold one mask per hidden layer ({len(hidden)}), got {len(dropout_masks)}"
            )
        for i, (mask, layer) in enumerate(zip(dropout_masks, hidden)):
            expected = (X.shape[0], layer["W"].shape[1])
            if jnp.shape(mask) != expected:
                raise ValueError(f"dropout_masks[{i}] must have shape {expected}, got {jnp.shape(mask)}")
    g = model.ACTIVATIONS[activation]
    a = X
    layer_inputs, pre_activations, batchnorm_caches = [X], [], []
    for i, layer in enumerate(hidden):
        z = a @ layer["W"] + layer["b"]
        bn_cache = None
        if is_batch_normalized(layer):
            bn_cache = batchnorm_forward(z)
            z = layer["gamma"] * bn_cache.normalized + layer["beta"]
        a = g(z)
        if dropout_masks is not None:
            a = a * dropout_masks[i] / keep_prob
        pre_activations.append(z)
        batchnorm_caches.append(bn_cache)
        layer_inputs.append(a)
    logits = a @ params[-1]["W"] + params[-1]["b"]
    cache = Cache(
        layer_inputs=tuple(layer_inputs),
        hidden_pre_activations=tuple(pre_activations),
        logits=logits,
        dropout_masks=dropout_masks,
        keep_prob=keep_prob,
        batchnorm=tuple(batchnorm_caches),
        activation=activation,
    )
    return logits, cache


def batchnorm_forward(z: jax.Array, eps: Any = batchnorm.DEFAULT_EPS) -> BatchNormCache:
    r"""Training-mode normalization of ``z`` ``(m, n)``: ``\hat Z = (Z - \mu)/\sqrt{\sigma^2 + \epsilon}`` with the batch's ``\mu, \sigma^2``.

    Computed by ``batchnorm.batch_norm`` itself (``gamma = 1``, ``beta = 0`` give ``\hat Z``;
    ``momentum = 0`` makes its new "running" state exactly the batch's mean and variance), so the
    hand-written backward differentiates the very forward pass ``model.forward`` runs.
    """
    num_features = z.shape[1]
    ones = jnp.ones((num_features,), z.dtype)
    normalized, statistics = batchnorm.batch_norm(
        z, ones, jnp.zeros_like(ones), batchnorm.init_state(num_features, z.dtype), train=True, momentum=0.0, eps=eps
    )
    return BatchNormCache(normalized=normalized, mean=statistics.mean, var=statistics.var, eps=eps)


def batchnorm_backward(
    d_out: jax.Array, gamma: jax.Array, cache: BatchNormCache
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Backward of ``\tilde Z = \gamma \hat Z + \beta`` in training mode: ``(dZ, d\gamma, d\beta)`` from ``d\tilde Z``.

    .. math::
       d\gamma = \textstyle\sum_i d\tilde Z_i \odot \hat Z_i, \quad d\beta = \textstyle\sum_i d\tilde Z_i, \quad
       dZ = \frac{1}{m\sqrt{\sigma^2+\epsilon}}\big(m\, d\hat Z - \textstyle\sum_i d\hat Z_i
            - \hat Z \odot \textstyle\sum_i d\hat Z_i \odot \hat Z_i\big), \quad d\hat Z = \gamma\, d\tilde Z

    The two sums are the gradient flowing through the batch mean and variance; they make
    ``\sum_i dZ_i = 0``.
    """
    m = d_out.shape[0]
    normalized = cache.normalized
    d_gamma = jnp.sum(d_out * normalized, axis=0)
    d_beta = jnp.sum(d_out, axis=0)
    d_normalized = d_out * gamma
    inv_std = jax.lax.rsqrt(cache.var + cache.eps)
    d_z = (inv_std / m) * (
        m * d_normalized
        - jnp.sum(d_normalized, axis=0)
        - normalized * jnp.sum(d_normalized * normalized, axis=0)
    )
    return d_z, d_gamma, d_beta


def activation_derivative(activation: str, z: jax.Array) -> jax.Array:
    r"""``g'(z)`` elementwise, equal to ``jax.grad`` of ``model.ACTIVATIONS[activation]`` (also at ``z = 0``).

    relu: ``1[z > 0]``; leaky_relu: ``1`` for ``z >= 0`` else the slope; tanh: ``1 - \tanh^2 z``;
    sigmoid: ``\sigma(z)(1 - \sigma(z))``.
    """
    model.check_activation(activation)
    if activation == "relu":
        return (z > 0).astype(z.dtype)
    if activation == "leaky_relu":
        return jnp.where(z >= 0, jnp.ones_like(z), jnp.full_like(z, model.LEAKY_RELU_SLOPE))
    if activation == "tanh":
        return 1 - jnp.square(jnp.tanh(z))
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def output_gradient(logits: jax.Array, y: jax.Array) -> jax.Array:
    r"""``dZ_L = \partial\, \mathrm{cross\_entropy} / \partial Z_L = (\hat Y - Y) / m``.

    Sigmoid head (one unit): ``\hat Y = \sigma(Z_L)``, ``Y = y`` as a column; softmax head:
    ``\hat Y = \mathrm{softmax}(Z_L)``, ``Y = \mathrm{one\_hot}(y)``. Concrete ``y`` must be class ids
    ``0..n_out-1`` (0/1 for one unit); traced ``y`` is not checked.
    """
    chex.assert_rank(logits, 2, custom_message="logits must be (m, n_out)")
    chex.assert_rank(y, 1, custom_message="y must be (m,) class ids")
    if logits.shape[0] != y.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but y has {y.shape[0]}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must hold integer class ids, got dtype {y.dtype}")
    n_out = logits.shape[1]
    data.check_labels(y, 2 if n_out == 1 else n_out, "y", losses.head_description(n_out))  # concrete y only
    m = logits.shape[0]
    if logits.shape[1] == 1:
        return (jax.nn.sigmoid(logits) - y[:, None].astype(logits.dtype)) / m
    return (jax.nn.softmax(logits, axis=1) - jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype)) / m


def backward(params: Params, cache: Cache, y: jax.Array, *, l2: Any = 0.0) -> Params:
    r"""Gradients of ``cross_entropy(logits, y) + l2_penalty(params, l2, m)`` by hand.

    ``dZ_L = (\hat Y - Y)/m``; for ``l = L..1``: ``dW_l = A_{l-1}^\top dZ_l + (\lambda/m) W_l``,
    ``db_l = \sum_{rows} dZ_l``; ``dA_{l-1} = dZ_l W_l^\top \odot D_{l-1}/keep\_prob``,
    ``dZ_{l-1} = dA_{l-1} \odot g'(Z_{l-1})``; on a batch-normalized layer that product is
    ``d\tilde Z_{l-1}`` and ``batchnorm_backward`` turns it into ``dZ_{l-1}``, ``d\gamma_{l-1}``, ``d\beta_{l-1}``.

    Args:
      params: the parameters ``forward_with_cache`` ran with.
      cache: its ``Cache``.
      y: ``(m,)`` integer class ids (0/1 for the sigmoid head).
      l2: the L2 strength ``lambda`` (may be traced).
    Returns:
      A tuple of dicts shaped like ``params`` (``"W"``, ``"b"``, and ``"gamma"``, ``"beta"`` where present).
    """
    _check_layer_params(params)
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be the Cache returned by forward_with_cache, got {type(cache).__name__}")
    if len(cache.layer_inputs) != len(params):
        raise ValueError(f"cache is of a {len(cache.layer_inputs)}-layer net but params has {len(params)} layers")
    normalized_in_params = normalized_layers(params[:-1])
    normalized_in_cache = tuple(bn_cache is not None for bn_cache in cache.batchnorm)
    if normalized_in_params != normalized_in_cache:
        raise ValueError(
            f"params has batch norm on hidden layers {normalized_in_params} but the cache on {normalized_in_cache}"
        )
    dZ = output_gradient(cache.logits, y)  # validates y against the logits
    m = y.shape[0]
    grads: list[dict[str, jax.Array]] = [{} for _ in params]
    for l in reversed(range(len(params))):
        W = params[l]["W"]
        grads[l].update(W=cache.layer_inputs[l].T @ dZ + (l2 / m) * W, b=jnp.sum(dZ, axis=0))
        if l > 0:
            dA = dZ @ W.T
            if cache.dropout_masks is not None:
                dA = dA * cache.dropout_masks[l - 1] / cache.keep_prob
            dZ = dA * activation_derivative(cache.activation, cache.hidden_pre_activations[l - 1])
            bn_cache = cache.batchnorm[l - 1]
            if bn_cache is not None:
                dZ, grads[l - 1]["gamma"], grads[l - 1]["beta"] = batchnorm_backward(dZ, params[l - 1]["gamma"], bn_cache)
    return tuple(grads)


def cost(
    params: Params,
    X: jax.Array,
    y: jax.Array,
    *,
    activation: str = "relu",
    keep_prob: Any = 1.0,
    dropout_masks: Sequence[jax.Array] | None = None,
    l2: Any = 0.0,
) -> jax.Array:
    r"""The cost ``backward`` differentiates: ``cross_entropy(Z_L, y) + \frac{\lambda}{2m}\sum_l\|W_l\|^2``."""
    logits, _ = forward_with_cache(params, X, activation=activation, keep_prob=keep_prob, dropout_masks=dropout_masks)
    return losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, X.shape[0])


def cost_and_gradients(
    params: Params,
    X: jax.Array,
    y: jax.Array,
    *,
    activation: str = "relu",
    keep_prob: Any = 1.0,
    dropout_masks: Sequence[jax.Array] | None = None,
    l2: Any = 0.0,
) -> tuple[jax.Array, Params]:
    """``(cost, grads)`` from one hand-written forward and backward pass (what ``jax.value_and_grad(cost)`` gives)."""
    logits, cache = forward_with_cache(
        params, X, activation=activation, keep_prob=keep_prob, dropout_masks=dropout_masks
    )
    value = losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, X.shape[0])
    return value, backward(params, cache, y, l2=l2)
