"""Numerically stable classification losses and the L2 penalty.

Written with smooth pieces only (``softplus``, ``log_softmax``), so the gradient is exact
everywhere, also at a logit of exactly 0 (``max(z, 0)`` / ``abs(z)`` tricks are not).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from deepopt.data import check_labels
from deepopt.parameters import Params


def head_description(n_out: int) -> str:
    """How label errors name the classifier head of ``n_out`` logits (one: sigmoid, 0/1 labels)."""
    return "a one-logit (sigmoid) head" if n_out == 1 else f"{n_out} logits (softmax)"


def _check_logits_labels(logits: jax.Array, y: jax.Array) -> None:
    """Shapes and dtype always; concrete ``y`` (not a tracer) must be class ids ``0..n_out-1`` (0/1 for one logit)."""
    chex.assert_rank(logits, 2, custom_message="logits must be (m, n_out)")
    chex.assert_rank(y, 1, custom_message="y must be (m,) class ids")
    if logits.shape[0] != y.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but y has {y.shape[0]}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must hold integer class ids, got dtype {y.dtype}")
    n_out = logits.shape[1]
    check_labels(y, 2 if n_out == 1 else n_out, "y", head_description(n_out))


def per_example_cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    r"""Cross-entropy of each example, ``(m,)``.

    Binary (one logit ``z``): :math:`-[y\log\sigma(z) + (1-y)\log(1-\sigma(z))] = \mathrm{softplus}(z) - yz`.
    Multi-class: :math:`\mathrm{logsumexp}(z) - z_y`. Concrete labels outside ``0..n_out-1``
    (0/1 for one logit) raise a ``ValueError``; traced ones are not checked.
    """
    _check_logits_labels(logits, y)
    if logits.shape[1] == 1:
        z = logits[:, 0]
        return jax.nn.softplus(z) - y.astype(z.dtype) * z
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.take_along_axis(log_probs, y[:, None].astype(jnp.int32), axis=1)[:, 0]


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    r"""Mean cross-entropy over the batch, :math:`\frac{1}{m}\sum_i \ell(z_i, y_i)`.

    Sigmoid (binary) when ``logits`` has one column, softmax otherwise.
    """
    return jnp.mean(per_example_cross_entropy(logits, y))


def sum_of_squared_weights(params: Params) -> jax.Array:
    r""":math:`\sum_l \|W_l\|_F^2` over the ``"W"`` entries only (not biases, gamma or beta)."""
    return sum(jnp.sum(jnp.square(layer["W"])) for layer in params)


def l2_penalty(params: Params, lambd: Any, m: Any) -> jax.Array:
    r"""The L2 term :math:`\frac{\lambda}{2m}\sum_l \|W_l\|_F^2`; its gradient adds :math:`\frac{\lambda}{m}W_l`."""
    return lambd / (2 * m) * sum_of_squared_weights(params)
