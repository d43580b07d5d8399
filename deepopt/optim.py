r"""Optimizers as pairs of pure functions over any pytree of parameters.

Each optimizer is an ``Optimizer(init, update)``:
``init(params) -> state`` (a NamedTuple) and
``update(grads, state, params, hp) -> (new_params, new_state)``, reading its hyperparameters
from the traced ``train.HParams`` ``hp`` (``hp.learning_rate`` is the already-scheduled rate).
The built-in ones also give ``update`` in its two halves, ``next_state(grads, state, params, hp)
-> new_state`` and ``next_params(grads, new_state, params, hp) -> new_params`` (the parameters'
step read from the already-updated state); ``update`` is the one after the other, bit for bit.
State leaves have the dtype of their parameters (float64 parameters, float64 state); step
counters are int32 scalars. New parameters keep their dtype whatever the dtype of ``hp``.

Notation: :math:`\alpha` ``learning_rate``, :math:`\beta` ``beta``, :math:`\beta_1` ``beta1``,
:math:`\beta_2` ``beta2``, :math:`\varepsilon` ``epsilon``, :math:`\lambda` ``weight_decay``,
:math:`g` the gradient, all operations elementwise. Every form and its optax counterpart
(optax is the test reference, never imported here):

- ``gd``: :math:`\theta \mathrel{-}= \alpha g`; optax ``sgd(α)``.
- ``momentum``: :math:`v = \beta v + (1-\beta) g,\ \theta \mathrel{-}= \alpha v`;
  optax ``sgd(α(1-β), momentum=β)``.
- ``nesterov``: :math:`v = \beta v + (1-\beta) g,\ \theta \mathrel{-}= \alpha(\beta v + (1-\beta) g)`;
  optax ``sgd(α(1-β), momentum=β, nesterov=True)``.
- ``rmsprop``: :math:`s = \beta_2 s + (1-\beta_2) g^2,\ \theta \mathrel{-}= \alpha g / (\sqrt{s} + \varepsilon)`;
  optax ``rmsprop(α, decay=β2, eps=ε, eps_in_sqrt=False)`` (its ``initial_scale=0`` default).
- ``adam``: bias-corrected moments, :math:`\varepsilon` outside the root, ``t`` from 1;
  optax ``adam(α, b1=β1, b2=β2, eps=ε)``.
- ``adamw``: ``adam`` plus :math:`\alpha\lambda\theta` (the decay is scaled by the rate);
  optax ``adamw(α, b1=β1, b2=β2, eps=ε, weight_decay=λ)``.
- ``adagrad``: :math:`s = s + g^2,\ \theta \mathrel{-}= \alpha g / \sqrt{s + \varepsilon}`, :math:`s_0 = 0`;
  optax ``adagrad(α, initial_accumulator_value=0, eps=ε)``.

Why momentum maps to ``sgd(α(1-β), momentum=β)``: optax's trace is :math:`u = \beta u + g`
(no :math:`1-\beta`), and from :math:`v_0 = u_0 = 0` induction gives :math:`v_t = (1-\beta) u_t`,
so :math:`\alpha v_t = \alpha(1-\beta) u_t`; the same holds for the Nesterov step
:math:`\alpha(\beta v + (1-\beta) g) = \alpha(1-\beta)(\beta u + g)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from deepopt.hparams import HParams, validate_hparams


PyTree = Any


class Optimizer(NamedTuple):
    """An optimizer: ``init(params) -> state``, ``update(grads, state, params, hp) -> (params, state)``.

    ``next_state`` and ``next_params`` are ``update``'s two halves:
    ``update(g, s, p, hp) == (next_params(g, s2, p, hp), s2)`` with ``s2 = next_state(g, s, p, hp)``.
    ``train.fit`` uses them to choose, per run, between the old and the new state before the
    parameters' step reads it (so XLA reads each moment once per step): every registered optimizer
    has them. They default to None so that ``Optimizer(init, update)`` still builds a pair for a
    loop of one's own.
    """

    init: Callable[[PyTree], NamedTuple]
    update: Callable[[PyTree, NamedTuple, PyTree, HParams], tuple[PyTree, NamedTuple]]
    next_state: Callable[[PyTree, NamedTuple, PyTree, HParams], NamedTuple] | None = None
    next_params: Callable[[PyTree, NamedTuple, PyTree, HParams], PyTree] | None = None


def _from_halves(
    init: Callable[[PyTree], NamedTuple],
    next_state: Callable[[PyTree, NamedTuple, PyTree, HParams], NamedTuple],
    next_params: Callable[[PyTree, NamedTuple, PyTree, HParams], PyTree],
) -> Optimizer:
    """The ``Optimizer`` whose ``update`` is ``next_state`` then ``next_params``; each entry checks its inputs once.

    The halves given here do not check: ``_check_update`` runs once per call of ``update``,
    ``next_state`` or ``next_params`` (at trace time under ``jit``).
    """

    def checked_next_state(grads: PyTree, state: NamedTuple, params: PyTree, hp: HParams) -> NamedTuple:
        _check_update(grads, params, hp)
        return next_state(grads, state, params, hp)

    def checked_next_params(grads: PyTree, state: NamedTuple, params: PyTree, hp: HParams) -> PyTree:
        _check_update(grads, params, hp)
        return next_params(grads, state, params, hp)

    def update(grads: PyTree, state: NamedTuple, params: PyTree, hp: HParams) -> tuple[PyTree, NamedTuple]:
        _check_update(grads, params, hp)
        new_state = next_state(grads, state, params, hp)
        return next_params(grads, new_state, params, hp), new_state

    return Optimizer(init, update, checked_next_state, checked_next_params)


# ----------------------------------------------------------------------------- helpers


def _like(value: Any, leaf: jax.Array) -> jax.Array:
    """A hyperparameter (Python or traced scalar) as an array of ``leaf``'s dtype."""
    return jnp.asarray(value).astype(leaf.dtype)


def _check_grads(grads: PyTree, params: PyTree) -> None:
    """``grads`` must have the tree structure and leaf shapes of ``params`` (static, so free under ``jit``)."""
    grads_structure, params_structure = jax.tree.structure(grads), jax.tree.structure(params)
    if grads_structure != params_structure:
        raise ValueError(f"grads must have the tree structure of params {params_structure}, got {grads_structure}")
    for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(params)):
        if jnp.shape(g) != jnp.shape(p):
            raise ValueError(
                f"grads{jax.tree_util.keystr(path)} has shape {jnp.shape(g)} but the parameter has {jnp.shape(p)}"
            )


def _check_update(grads: PyTree, params: PyTree, hp: HParams) -> None:
    """``_check_grads``, float parameters, and ``hp``'s concrete values in range (``validate_hparams``; traced: skipped).

    Under ``fit`` every value is traced, so this costs nothing there; called eagerly it stops a
    negative rate (gradient ascent), ``beta1 = 1`` (NaN) or integer parameters (truncated steps).
    """
    _check_grads(grads, params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"params{jax.tree_util.keystr(path)} must be a float array (the update would be truncated), "
                f"got dtype {jnp.result_type(leaf)}"
            )
    if isinstance(hp, HParams):
        validate_hparams(hp)


def _zeros_like(params: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, params)


def _moving_average(average: jax.Array, value: jax.Array, decay: Any) -> jax.Array:
    r""":math:`d \cdot \text{average} + (1 - d) \cdot \text{value}`, in ``average``'s dtype."""
    decay = _like(decay, average)
    return (decay * average + (1 - decay) * value).astype(average.dtype)


def _step(params: PyTree, directions: PyTree, learning_rate: Any) -> PyTree:
    r""":math:`\theta - \alpha d` for every leaf, keeping each parameter's dtype."""
    return jax.tree.map(lambda p, d: (p - _like(learning_rate, p) * d).astype(p.dtype), params, directions)


def _increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping around."""
    return jnp.minimum(count, jnp.iinfo(jnp.int32).max - 1) + 1


# ----------------------------------------------------------------------------- gradient descent


class GDState(NamedTuple):
    """Gradient descent keeps no state."""


def _gd_init(params: PyTree) -> GDState:
    return GDState()


def _gd_next_state(grads: PyTree, state: GDState, params: PyTree, hp: HParams) -> GDState:
    return state


def _gd_next_params(grads: PyTree, state: GDState, params: PyTree, hp: HParams) -> PyTree:
    return _step(params, grads, hp.learning_rate)


gd = _from_halves(_gd_init, _gd_next_state, _gd_next_params)
r"""Gradient descent: :math:`\theta \leftarrow \theta - \alpha g`."""


# ----------------------------------------------------------------------------- momentum, Nesterov


class MomentumState(NamedTuple):
    """``velocity``: the exponentially weighted average of past gradients, :math:`v`."""

    velocity: PyTree


def _momentum_init(params: PyTree) -> MomentumState:
    return MomentumState(velocity=_zeros_like(params))


def _momentum_next_state(grads: PyTree, state: MomentumState, params: PyTree, hp: HParams) -> MomentumState:
    return MomentumState(jax.tree.map(lambda v, g: _moving_average(v, g, hp.beta), state.velocity, grads))


def _momentum_next_params(grads: PyTree, state: MomentumState, params: PyTree, hp: HParams) -> PyTree:
    return _step(params, state.velocity, hp.learning_rate)


momentum = _from_halves(_momentum_init, _momentum_next_state, _momentum_next_params)
r"""Momentum, the course's form (an exponentially weighted average of gradients):

.. math::
    v \leftarrow \beta v + (1-\beta) g, \qquad \theta \leftarrow \theta - \alpha v

Equals ``optax.sgd(α(1-β), momentum=β)`` (optax's trace :math:`u = \beta u + g` is :math:`v/(1-\beta)`).
"""


def _nesterov_next_params(grads: PyTree, state: MomentumState, params: PyTree, hp: HParams) -> PyTree:
    look_ahead = jax.tree.map(lambda v, g: _moving_average(v, g, hp.beta), state.velocity, grads)
    return _step(params, look_ahead, hp.learning_rate)


nesterov = _from_halves(_momentum_init, _momentum_next_state, _nesterov_next_params)
r"""Nesterov momentum in the look-ahead form (Sutskever et al., 2013), on the course's averaged velocity:

.. math::
    v \leftarrow \beta v + (1-\beta) g, \qquad
    \theta \leftarrow \theta - \alpha \left(\beta v + (1-\beta) g\right)

i.e. the step uses the velocity one more gradient ahead. Equals
``optax.sgd(α(1-β), momentum=β, nesterov=True)``, whose step is :math:`\alpha(1-\beta)(\beta u + g)`
with :math:`u = v/(1-\beta)`.
"""


# ----------------------------------------------------------------------------- RMSprop


class RMSpropState(NamedTuple):
    """``square_average``: the exponentially weighted average of squared gradients, :math:`s`."""

    square_average: PyTree


def _rmsprop_init(params: PyTree) -> RMSpropState:
    return RMSpropState(square_average=_zeros_like(params))


def _rmsprop_next_state(grads: PyTree, state: RMSpropState, params: PyTree, hp: HParams) -> RMSpropState:
    return RMSpropState(
        jax.tree.map(lambda s, g: _moving_average(s, g * g, hp.beta2), state.square_average, grads)
    )


def _rmsprop_next_params(grads: PyTree, state: RMSpropState, params: PyTree, hp: HParams) -> PyTree:
    directions = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + _like(hp.epsilon, s)), grads, state.square_average)
    return _step(params, directions, hp.learning_rate)


rmsprop = _from_halves(_rmsprop_init, _rmsprop_next_state, _rmsprop_next_params)
r"""RMSprop, the course's form (``epsilon`` outside the square root, :math:`s_0 = 0`):

.. math::
    s \leftarrow \beta_2 s + (1-\beta_2) g^2, \qquad
    \theta \leftarrow \theta - \alpha \frac{g}{\sqrt{s} + \varepsilon}

Equals ``optax.rmsprop(α, decay=β2, eps=ε, eps_in_sqrt=False)`` (``initial_scale=0``).
"""


# ----------------------------------------------------------------------------- Adam, AdamW


class AdamState(NamedTuple):
    """Adam's state.

    Attributes:
      count: update steps taken so far (int32 scalar); the step being taken is ``t = count + 1``.
      first_moment: :math:`m`, the exponentially weighted average of gradients.
      second_moment: :math:`s`, the exponentially weighted average of squared gradients.
    """

    count: jax.Array
    first_moment: PyTree
    second_moment: PyTree


def _adam_init(params: PyTree) -> AdamState:
    return AdamState(jnp.zeros((), jnp.int32), _zeros_like(params), _zeros_like(params))


def _bias_corrected(moment: jax.Array, decay: Any, t: jax.Array) -> jax.Array:
    r""":math:`m / (1 - d^t)`."""
    return moment / (1 - _like(decay, moment) ** t)


def _adam_next_state(grads: PyTree, state: AdamState, params: PyTree, hp: HParams) -> AdamState:
    r"""Adam's new state: ``t = count + 1`` and the moments :math:`m, s` after ``grads``."""
    first_moment = jax.tree.map(lambda m, g: _moving_average(m, g, hp.beta1), state.first_moment, grads)
    second_moment = jax.tree.map(lambda s, g: _moving_average(s, g * g, hp.beta2), state.second_moment, grads)
    return AdamState(_increment(state.count), first_moment, second_moment)


def _adam_directions(state: AdamState, hp: HParams) -> PyTree:
    r"""Adam's step directions :math:`\hat m / (\sqrt{\hat s} + \varepsilon)` from its new state (``t = count``)."""
    t = state.count

    def direction(m: jax.Array, s: jax.Array) -> jax.Array:
        m_hat = _bias_corrected(m, hp.beta1, t)
        s_hat = _bias_corrected(s, hp.beta2, t)
        return m_hat / (jnp.sqrt(s_hat) + _like(hp.epsilon, s))

    return jax.tree.map(direction, state.first_moment, state.second_moment)


def _adam_next_params(grads: PyTree, state: AdamState, params: PyTree, hp: HParams) -> PyTree:
    return _step(params, _adam_directions(state, hp), hp.learning_rate)


adam = _from_halves(_adam_init, _adam_next_state, _adam_next_params)
r"""Adam (Kingma & Ba, 2015), the course's form; ``t`` counts update steps from 1:

.. math::
    m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
    s \leftarrow \beta_2 s + (1-\beta_2) g^2, \quad
    \hat m = \frac{m}{1-\beta_1^t}, \quad \hat s = \frac{s}{1-\beta_2^t}, \quad
    \theta \leftarrow \theta - \alpha \frac{\hat m}{\sqrt{\hat s} + \varepsilon}

Equals ``optax.adam(α, b1=β1, b2=β2, eps=ε)``.
"""


def _adamw_next_params(grads: PyTree, state: AdamState, params: PyTree, hp: HParams) -> PyTree:
    directions = jax.tree.map(lambda d, p: d + _like(hp.weight_decay, p) * p, _adam_directions(state, hp), params)
    return _step(params, directions, hp.learning_rate)


adamw = _from_halves(_adam_init, _adam_next_state, _adamw_next_params)
r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019), the decay scaled by the rate:

.. math::
    \theta \leftarrow \theta - \alpha \left(\frac{\hat m}{\sqrt{\hat s} + \varepsilon} + \lambda \theta\right)

with :math:`\hat m, \hat s` as in ``adam`` and :math:`\lambda` = ``weight_decay`` (applied to every
leaf). Equals ``optax.adamw(α, b1=β1, b2=β2, eps=ε, weight_decay=λ)`` and PyTorch's ``AdamW``; the
paper multiplies :math:`\lambda` by the schedule's multiplier only, i.e. its :math:`\lambda` is
our :math:`\alpha_0 \lambda`. ``weight_decay = 0`` is ``adam``.
"""


# ----------------------------------------------------------------------------- Adagrad


class AdagradState(NamedTuple):
    """``sum_of_squares``: the sum of all squared gradients so far, :math:`s`."""

    sum_of_squares: PyTree


def _adagrad_init(params: PyTree) -> AdagradState:
    return AdagradState(sum_of_squares=_zeros_like(params))


def _adagrad_next_state(grads: PyTree, state: AdagradState, params: PyTree, hp: HParams) -> AdagradState:
    return AdagradState(jax.tree.map(lambda s, g: (s + g * g).astype(s.dtype), state.sum_of_squares, grads))


def _adagrad_next_params(grads: PyTree, state: AdagradState, params: PyTree, hp: HParams) -> PyTree:
    directions = jax.tree.map(lambda g, s: g / jnp.sqrt(s + _like(hp.epsilon, s)), grads, state.sum_of_squares)
    return _step(params, directions, hp.learning_rate)


adagrad = _from_halves(_adagrad_init, _adagrad_next_state, _adagrad_next_params)
r"""Adagrad (Duchi et al., 2011), accumulator from 0 and ``epsilon`` inside the square root:

.. math::
    s \leftarrow s + g^2, \qquad \theta \leftarrow \theta - \alpha \frac{g}{\sqrt{s + \varepsilon}}

Equals ``optax.adagrad(α, initial_accumulator_value=0, eps=ε)`` (optax's defaults are 0.1 and 1e-7;
PyTorch's form puts ``epsilon`` outside the root). A coordinate whose gradients were all zero
stays put, since :math:`0 / \sqrt{\varepsilon} = 0`.
"""


_REGISTRY: dict[str, Optimizer] = {
    "gd": gd,
    "momentum": momentum,
    "nesterov": nesterov,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "adagrad": adagrad,
}


def names() -> tuple[str, ...]:
    """The registered optimizer names."""
    return tuple(_REGISTRY)


def get(name: str) -> Optimizer:
    """The optimizer registered under ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"optimizer must be one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]
