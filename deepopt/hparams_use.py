"""Which ``HParams`` fields a ``Config``'s training reads: ``fields_read(config)``.

A sweep that searches a field no config reads (``beta`` with ``optimizer="gd"``, ``decay_rate``
with ``schedule="constant"``) trains identical runs whose leaderboard is tie-breaking noise;
``sweep.plan`` refuses such a space with this. What the optimizer's update and the schedule
read is found from their traced programs (``jax.make_jaxpr`` on abstract inputs: the inputs on
which some output depends), so it cannot drift from the code; the rest is the training loop's:

- ``learning_rate``: always (the schedule's base rate);
- ``l2``, ``keep_prob``, ``init_scale``: the built-in MLP's penalty, dropout and initialization
  (``init="zeros"`` ignores ``init_scale``); a ``Config.model`` reads ``l2`` only (on its
  kernels), never ``keep_prob`` or ``init_scale``;
- the optimizer's fields (``beta``; ``beta1``, ``beta2``, ``epsilon``; ``weight_decay``);
- the schedule's fields (``decay_rate``, ``time_interval``, ``decay_factor``, ``warmup_epochs``,
  ``decay_epochs``, ``min_learning_rate``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from deepopt import optim, schedules
from deepopt.hparams import HParams


def _inputs_used(fun: Callable[..., Any], *other_inputs: jax.ShapeDtypeStruct) -> frozenset[str]:
    """The ``HParams`` fields some output of ``fun(hp, *other_inputs)`` depends on (a backward walk over its jaxpr).

    An equation inside a nested call counts as a whole: a field reaching it counts as read, so the
    answer can only err towards "read".
    """
    hp = HParams(*[jax.ShapeDtypeStruct((), jnp.float32)] * len(HParams._fields))
    closed = jax.make_jaxpr(fun)(hp, *other_inputs)  # abstract: nothing is compiled or computed
    needed = {v for v in closed.jaxpr.outvars if isinstance(v, jax_core.Var)}
    for eqn in reversed(closed.jaxpr.eqns):  # an equation with a needed output needs all its inputs
        if any(v in needed for v in eqn.outvars):
            needed.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
    return frozenset(name for name, var in zip(HParams._fields, closed.jaxpr.invars) if var in needed)


@functools.lru_cache(maxsize=None)
def optimizer_fields(name: str) -> frozenset[str]:
    """The ``HParams`` fields optimizer ``name``'s update reads (e.g. ``{"learning_rate", "beta"}`` for momentum)."""
    optimizer = optim.get(name)

    def update(hp: HParams) -> Any:
        params = ({"W": jnp.zeros((2, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)},)
        return optimizer.update(params, optimizer.init(params), params, hp)

    return _inputs_used(update)


@functools.lru_cache(maxsize=None)
def schedule_fields(name: str) -> frozenset[str]:
    """The ``HParams`` fields schedule ``name`` reads at a traced epoch and step (``learning_rate`` included)."""
    schedule = schedules.get(name)
    step = jax.ShapeDtypeStruct((), jnp.int32)
    return _inputs_used(schedule, step, step)  # schedule(hp, epoch, step), both traced


def loop_fields(model: Any, init: str) -> frozenset[str]:
    """The fields the training loop itself reads, for ``Config.model`` ``model`` (or None) and ``Config.init`` ``init``."""
    if model is not None:
        return frozenset({"learning_rate", "l2"})
    return frozenset({"learning_rate", "l2", "keep_prob"} | ({"init_scale"} if init != "zeros" else set()))


def fields_read(config: Any) -> frozenset[str]:
    """The ``HParams`` fields training ``config`` (a ``train.Config``) reads; every other field changes nothing."""
    return loop_fields(config.model, config.init) | optimizer_fields(config.optimizer) | schedule_fields(config.schedule)
