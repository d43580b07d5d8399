"""Reading a model's results: bias/variance diagnosis and per-layer gradient statistics.

``bias_variance`` compares the training error with a Bayes (human-level) estimate and the dev
error with the training error, and says what to try next. ``layer_stats`` is the instrument for
vanishing and exploding gradients: per layer, the size of the weights, of the activations and of
the cost's gradient, and how many ReLUs are dead. It is a pure function of arrays, so it can be
``jit``-ed and ``vmap``-ed over a batch of parameter sets.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from deepopt import losses, model
from deepopt.parameters import Params


HIGH_BIAS = "high bias"
HIGH_VARIANCE = "high variance"
HIGH_BIAS_AND_VARIANCE = "high bias and high variance"
GOOD_FIT = "good fit"
VERDICTS: tuple[str, ...] = (HIGH_BIAS, HIGH_VARIANCE, HIGH_BIAS_AND_VARIANCE, GOOD_FIT)

BIAS_ADVICE: tuple[str, ...] = (
    "bigger network (more hidden units or layers)",
    "train longer",
    "better optimization algorithm (momentum, RMSprop, Adam)",
    "different architecture / hyperparameter search",
)
VARIANCE_ADVICE: tuple[str, ...] = (
    "more training data",
    "regularization (L2, dropout)",
    "early stopping",
    "different architecture / hyperparameter search",
)
GOOD_FIT_ADVICE: tuple[str, ...] = (
    "nothing to fix at this tolerance: measure on the test set, or lower the tolerance",
)


class Diagnosis(NamedTuple):
    """The bias/variance reading of one model (errors are fractions in [0, 1]).

    Attributes:
      train_error, dev_error, bayes_error: the inputs.
      avoidable_bias: ``train_error - bayes_error`` (negative when training beats the Bayes estimate).
      variance: ``dev_error - train_error``.
      high_bias, high_variance: the gaps above ``tolerance``.
      verdict: one of ``VERDICTS``.
      advice: what to try next, bias first (fix bias before variance).
    """

    train_error: float
    dev_error: float
    bayes_error: float
    avoidable_bias: float
    variance: float
    high_bias: bool
    high_variance: bool
    verdict: str
    advice: tuple[str, ...]


# 0.10 - 0.08 is 0.020000000000000004 in floating point: a gap within this of the tolerance equals it.
_ROUNDING_SLACK = 1e-9


def _check_fraction(name: str, value: Any) -> float:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number (a fraction in [0, 1]), got {value!r}") from None
    if array.ndim != 0:
        raise ValueError(f"{name} must be a scalar fraction in [0, 1], got an array of shape {array.shape}")
    number = float(array)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be a finite fraction in [0, 1] (an error rate, not a percentage), got {number!r}")
    return number


def bias_variance(
    train_error: float, dev_error: float, bayes_error: float = 0.0, *, tolerance: float = 0.02
) -> Diagnosis:
    r"""Diagnose bias and variance from error rates (fractions).

    :math:`\text{avoidable bias} = e_{train} - e_{Bayes}`, :math:`\text{variance} = e_{dev} - e_{train}`;
    each counts as high when it exceeds ``tolerance`` (by more than floating-point rounding). High
    bias: bigger network, train longer, better optimizer or architecture. High variance: more
    data, regularization (L2, dropout), early stopping, architecture.

    Args:
      train_error: training-set error, in [0, 1].
      dev_error: dev-set error, in [0, 1].
      bayes_error: estimate of the Bayes (human-level) error, in [0, 1].
      tolerance: largest gap (a fraction, in [0, 1]) that still counts as small.
    Returns:
      A ``Diagnosis``.
    """
    train_error = _check_fraction("train_error", train_error)
    dev_error = _check_fraction("dev_error", dev_error)
    bayes_error = _check_fraction("bayes_error", bayes_error)
    tolerance = _check_fraction("tolerance", tolerance)
    avoidable_bias = train_error - bayes_error
    variance = dev_error - train_error
    high_bias = avoidable_bias > tolerance + _ROUNDING_SLACK
    high_variance = variance > tolerance + _ROUNDING_SLACK
    if high_bias and high_variance:
        verdict, advice = HIGH_BIAS_AND_VARIANCE, BIAS_ADVICE + tuple(a for a in VARIANCE_ADVICE if a not in BIAS_ADVICE)
    elif high_bias:
        verdict, advice = HIGH_BIAS, BIAS_ADVICE
    elif high_variance:
        verdict, advice = HIGH_VARIANCE, VARIANCE_ADVICE
    else:
        verdict, advice = GOOD_FIT, GOOD_FIT_ADVICE
    return Diagnosis(
        train_error, dev_error, bayes_error, avoidable_bias, variance, high_bias, high_variance, verdict, advice
    )


class LayerStats(NamedTuple):
    r"""Per-layer statistics, each a ``(num_layers,)`` array (with a leading batch axis under ``vmap``).

    Layer ``l`` is ``z_l = a_{l-1} W_l + b_l`` (batch-normalized with the batch's statistics when the
    layer holds ``gamma``), ``a_l = g(z_l)``; the last layer's "activation" is its logits.

    Attributes:
      weight_norm: :math:`\|W_l\|_F`.
      activation_rms: :math:`\sqrt{\frac{1}{m}\sum_i \|a_l^{(i)}\|_2^2} = \|A_l\|_F/\sqrt{m}`, the root-mean-square
        over examples of the activation vector's norm (independent of the batch size).
      grad_norm: :math:`\|\partial J / \partial W_l\|_F` of the mean cross-entropy (plus the L2 term).
      dead_fraction: fraction of layer ``l``'s units whose activation is exactly 0 on *every*
        example (a dead ReLU: it passes no gradient for this data). NaN for the output layer.
      zero_fraction: fraction of (example, unit) pairs with an activation of exactly 0, i.e. the
        mean over examples of the fraction of zero units. NaN for the output layer.
    """

    weight_norm: jax.Array
    activation_rms: jax.Array
    grad_norm: jax.Array
    dead_fraction: jax.Array
    zero_fraction: jax.Array


def layer_stats(
    params: Params, X: jax.Array, y: jax.Array, *, activation: str = "relu", l2: Any = 0.0
) -> LayerStats:
    r"""Weight, activation and gradient sizes and dead units of every layer: the vanishing/exploding-gradient instrument.

    The gradient is :math:`\nabla_{W_l} J` of :math:`J = \frac{1}{m}\sum_i \ell(z_L^{(i)}, y_i) + \frac{\lambda}{2m}\sum_l\|W_l\|_F^2`,
    computed with ``jax.grad`` through ``model.forward_with_activations`` (no dropout;
    batch-normalized layers use the batch's statistics, as in training). Vanishing gradients show
    as ``grad_norm`` shrinking geometrically from the last layer to the first, exploding ones as it
    growing; ``gradient_flow`` names the case.

    Args:
      params: tuple of ``{"W", "b"}`` dicts (one model; ``vmap`` for many).
      X: ``(m, n_features)``.
      y: ``(m,)`` integer class ids.
      activation: hidden activation, one of ``model.ACTIVATIONS``.
      l2: the L2 λ added to the cost (default 0).
    Returns:
      A ``LayerStats`` of ``(len(params),)`` arrays.
    """
    chex.assert_rank(X, 2, custom_message="X must be (m, n_features)")
    chex.assert_rank(y, 1, custom_message="y must be (m,) class ids")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    m = X.shape[0]

    def cost_and_activations(params: Params) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        logits, layers = model.forward_with_activations(params, X, activation=activation)
        return losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, m), layers.a

    grads, activations = jax.grad(cost_and_activations, has_aux=True)(params)
    dtype = activations[-1].dtype
    nan = jnp.array(jnp.nan, dtype)
    hidden = activations[:-1]
    return LayerStats(
        weight_norm=jnp.stack([jnp.linalg.norm(layer["W"]) for layer in params]),
        activation_rms=jnp.stack([jnp.sqrt(jnp.sum(jnp.square(a)) / m) for a in activations]),
        grad_norm=jnp.stack([jnp.linalg.norm(grad["W"]) for grad in grads]),
        dead_fraction=jnp.stack([jnp.mean(jnp.all(a == 0, axis=0)).astype(dtype) for a in hidden] + [nan]),
        zero_fraction=jnp.stack([jnp.mean(a == 0).astype(dtype) for a in hidden] + [nan]),
    )


LAYER_STATS_HEADERS: tuple[str, ...] = ("layer", "‖W‖", "rms ‖a‖", "‖dJ/dW‖", "dead units", "zero activations")


def layer_stats_rows(stats: LayerStats) -> list[list[str]]:
    """One row of strings per layer (for a table with ``LAYER_STATS_HEADERS``); layer numbers start at 1."""
    columns = [np.asarray(column, dtype=np.float64) for column in stats]
    if any(column.ndim != 1 for column in columns):
        raise ValueError("layer_stats_rows takes the stats of one model: (num_layers,) arrays, not a vmapped batch")

    def fraction(value: float) -> str:
        return "-" if math.isnan(value) else f"{100 * value:.0f}%"

    return [
        [str(layer + 1), f"{w:.3g}", f"{a:.3g}", f"{g:.3g}", fraction(dead), fraction(zero)]
        for layer, (w, a, g, dead, zero) in enumerate(zip(*columns))
    ]


def relative_gradient(stats: LayerStats) -> jax.Array:
    r"""Per layer :math:`\|\partial J/\partial W_l\|_F / \|W_l\|_F`: the fraction by which one gradient step at learning rate 1 moves ``W_l``.

    ``inf`` / NaN where the weights are all zero.
    """
    return stats.grad_norm / stats.weight_norm


def gradient_flow(stats: LayerStats, *, vanishing_below: float = 1e-3, exploding_above: float = 10.0) -> str:
    r"""Name the gradient flow of one model from its ``layer_stats``, with :math:`r_l` = ``relative_gradient``.

    In this order: ``"overflow"``: a gradient or activation is not finite; ``"zero"``: a hidden
    layer has all-zero weights and gets exactly no gradient, so it never moves (the zeros
    initialization); ``"exploding"``: :math:`\max_l r_l >` ``exploding_above``; ``"vanishing"``:
    :math:`\min_l r_l <` ``vanishing_below`` (a gradient that underflowed to 0 included); ``"level"``
    otherwise. Layers whose weights are all zero are left out of :math:`r`.
    """
    if not 0 < vanishing_below < exploding_above:
        raise ValueError(
            f"need 0 < vanishing_below < exploding_above, got vanishing_below={vanishing_below!r}, "
            f"exploding_above={exploding_above!r}"
        )
    grad_norm = np.asarray(stats.grad_norm, dtype=np.float64)
    activation_rms = np.asarray(stats.activation_rms, dtype=np.float64)
    if grad_norm.ndim != 1:
        raise ValueError("gradient_flow takes the stats of one model: (num_layers,) arrays, not a vmapped batch")
    if not (np.all(np.isfinite(grad_norm)) and np.all(np.isfinite(activation_rms))):
        return "overflow"
    weight_norm = np.asarray(stats.weight_norm, dtype=np.float64)
    if np.any((weight_norm[:-1] == 0) & (grad_norm[:-1] == 0)):
        return "zero"
    ratio = grad_norm[weight_norm > 0] / weight_norm[weight_norm > 0]  # all-zero layers have no scale to compare with
    if ratio.size == 0:
        return "zero"
    if np.max(ratio) > exploding_above:
        return "exploding"
    if np.min(ratio) < vanishing_below:
        return "vanishing"
    return "level"
