"""Optimizers as pairs of pure functions over any pytree of parameters.

Each optimizer is an ``Optimizer(init, update)``:
``init(params) -> state`` (a NamedTuple) and
``update(grads, state, params, hp) -> (new_params, new_state)``, reading its hyperparameters
from the traced ``train.HParams`` ``hp`` (``hp.learning_rate`` is the already-scheduled rate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax

if TYPE_CHECKING:
    from deepopt.train import HParams

PyTree = Any


class Optimizer(NamedTuple):
    """An optimizer: ``init(params) -> state``, ``update(grads, state, params, hp) -> (params, state)``."""

    init: Callable[[PyTree], NamedTuple]
    update: Callable[[PyTree, NamedTuple, PyTree, "HParams"], tuple[PyTree, NamedTuple]]


class GDState(NamedTuple):
    """Gradient descent keeps no state."""


def _gd_init(params: PyTree) -> GDState:
    return GDState()


def _gd_update(grads: PyTree, state: GDState, params: PyTree, hp: "HParams") -> tuple[PyTree, GDState]:
    lr = hp.learning_rate
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), state


gd = Optimizer(_gd_init, _gd_update)
"""Gradient descent: :math:`\theta \leftarrow \theta - \alpha g`."""

_REGISTRY: dict[str, Optimizer] = {"gd": gd}


def names() -> tuple[str, ...]:
    """The registered optimizer names."""
    return tuple(_REGISTRY)


def get(name: str) -> Optimizer:
    """The optimizer registered under ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"optimizer must be one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]
