"""Learning-rate schedules: pure functions ``schedule(hp, epoch, step) -> learning_rate``.

``epoch`` counts epochs from 0, ``step`` counts update steps (mini-batches) from 0; both may
be traced. Every parameter of a schedule is a traced ``train.HParams`` field, so one compiled
program serves every value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
    from deepopt.train import HParams

Schedule = Callable[["HParams", Any, Any], jax.Array]


def constant(hp: "HParams", epoch: Any, step: Any) -> jax.Array:
    r"""Constant rate: :math:`\alpha = \alpha_0`."""
    return hp.learning_rate


_REGISTRY: dict[str, Schedule] = {"constant": constant}


def names() -> tuple[str, ...]:
    """The registered schedule names."""
    return tuple(_REGISTRY)


def get(name: str) -> Schedule:
    """The schedule registered under ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"schedule must be one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]
