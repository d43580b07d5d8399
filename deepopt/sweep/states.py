"""Runs that keep their state: one compiled program per group and chunk shape starts or continues a chunk.

The adaptive searches (``halving``, ``pbt``) train a chunk of ``C`` configs × ``S`` seeds for some
epochs, look at the metrics, and continue some of the runs later, possibly in other chunks. The
chunk program (``_state_program``) takes the chunk's batched ``TrainState`` (its ``key`` field
left out: the seed keys travel separately, unbatched along the configs as in ``engine``), a flag
``fresh`` (start every run with ``train.init_state`` instead) and the number of epochs to train,
both traced scalars: one compilation serves every rung, generation and epoch count. It returns the
new states and ``fit``'s per-run scalars (``train.final_metrics``, plus ``test_<metric>``).

Training ``k`` epochs is ``k`` calls of ``train.advance``'s one-epoch body in a loop, and the keys
of every epoch and batch derive from ``(run key, epoch, batch)``: a run continued in any number of
pieces computes exactly what ``fit`` computes straight through (the tests pin it bit for bit).
States live on the host between calls (``StatePool``), as numpy pytrees with a leading ``(S,)``
axis per config, and are gathered into chunks (padding repeats the last config) when needed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt import xla_options
from deepopt.sweep import jax_config
from deepopt.sweep.engine import RUN_AXIS, _global_array, abstract_inputs, gather_runs, sharded_program

_compilations = 0


def state_compile_count() -> int:
    """How many state chunk programs (``_state_program``) this process has compiled: one per group and chunk shape."""
    return _compilations


def _state_program(config: train_lib.Config, key_impl: str, with_test: bool, dropout: bool) -> Callable:
    """``(hp (C,), state (C, S, ...), key_data (S, ...), fresh, epochs, train, dev, test) -> (state, scalars (C·S,))``."""

    def one_run(
        hp: train_lib.HParams,
        state: train_lib.TrainState,
        key_data: jax.Array,
        fresh: jax.Array,
        epochs: jax.Array,
        train_set: data_lib.Dataset,
        dev_set: data_lib.Dataset | None,
        test_set: data_lib.Dataset | None,
    ) -> tuple[train_lib.TrainState, dict[str, jax.Array]]:
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        state = jax.lax.cond(
            fresh,
            lambda: train_lib._init_state(config, hp, key, train_set.X, None)._replace(key=None),
            lambda: state,
        )

        def one_epoch(_: Any, current: train_lib.TrainState) -> train_lib.TrainState:
            return train_lib._advance(config, dropout, 1, False, False, hp, current, train_set, dev_set)[0]

        state = jax.lax.fori_loop(0, epochs, one_epoch, state._replace(key=key))
        scalars = train_lib.final_metrics(config, hp, state, train_set, dev_set)
        if with_test:
            params, model_state = train_lib.result_params(config, state)
            on_test = train_lib.evaluate_params(config, params, model_state, test_set)
            scalars.update({f"test_{name}": on_test[name] for name in config.task.metrics})
        return state._replace(key=None), scalars

    over_seeds = jax.vmap(one_run, in_axes=(None, 0, 0, None, None, None, None, None))
    over_configs = jax.vmap(over_seeds, in_axes=(0, 0, None, None, None, None, None, None))

    def chunk_program(hp, state, key_data, fresh, epochs, *splits):
        state, by_config = over_configs(hp, state, key_data, fresh, epochs, *splits)
        return state, {name: value.reshape(-1) for name, value in by_config.items()}

    return chunk_program


def state_shape(
    config: train_lib.Config, example: data_lib.Dataset, key_data: np.ndarray, key_impl: str
) -> Any:
    """The abstract per-run ``TrainState`` (``key=None``) of ``config`` for data like ``example``."""
    key = jax.eval_shape(  # the key's shape and dtype only: wrapping real data would compile a program
        functools.partial(jax.random.wrap_key_data, impl=key_impl), jax.ShapeDtypeStruct(key_data.shape, np.uint32)
    )
    abstract = train_lib._state_shape(
        config, tuple(example.X.shape), jnp.dtype(example.X.dtype), tuple(key.shape), key.dtype
    )
    return abstract._replace(key=None)


def empty_states(abstract: Any, leading: tuple[int, ...]) -> Any:
    """Host zeros of ``abstract``'s tree with ``leading`` axes in front (a ``fresh`` chunk's input)."""
    return jax.tree.map(lambda leaf: np.zeros((*leading, *leaf.shape), leaf.dtype), abstract)


@jax_config.cache_per_config(maxsize=32)
def _compile(
    config: train_lib.Config,
    configs: int,
    seeds: int,
    key_impl: str,
    key_shape: tuple[int, ...],
    dtype: str,
    data_shapes: tuple,
    devices: tuple,
    with_test: bool,
    dropout: bool,
) -> Any:
    """Compile the state chunk program for ``configs`` × ``seeds`` runs, the configs sharded over ``devices``."""
    global _compilations
    _compilations += 1
    mesh = Mesh(np.asarray(devices), (RUN_AXIS,))
    by_run, replicated = NamedSharding(mesh, P(RUN_AXIS)), NamedSharding(mesh, P())
    hp, datasets = abstract_inputs(configs, dtype, data_shapes)
    example = datasets[0]
    key_data = np.zeros(key_shape, np.uint32)
    per_run = state_shape(config, example, key_data, key_impl)
    state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((configs, seeds, *leaf.shape), leaf.dtype), per_run)
    keys = jax.ShapeDtypeStruct((seeds, *key_shape), jnp.uint32)
    scalar_bool, scalar_int = jax.ShapeDtypeStruct((), jnp.bool_), jax.ShapeDtypeStruct((), jnp.int32)
    program = jax.jit(
        sharded_program(  # each device its own runs, no collective inside; the scalars gathered at the end
            config, _state_program(config, key_impl, with_test, dropout), mesh,
            (P(RUN_AXIS), P(RUN_AXIS), P(), P(), P(), *(P() for _ in datasets)), (P(RUN_AXIS), P()),
            lambda outputs: (outputs[0], gather_runs(outputs[1])),
        ),
        in_shardings=(by_run, by_run, replicated, replicated, replicated,
                      *(None if d is None else replicated for d in datasets)),
        out_shardings=(by_run, replicated),
    )
    return program.lower(hp, state, keys, scalar_bool, scalar_int, *datasets).compile(
        compiler_options=xla_options.compiler_options(devices[0].platform)
    )


class StatePool:
    """Every config's state between calls, on the host: ``{config position: pytree with a leading (S,) axis}``.

    ``gather`` stacks a chunk's states (repeating the last to pad it to ``C``), ``scatter`` stores a
    chunk's outputs back; ``loaders`` fetch states not in memory (from a checkpoint) on demand.
    """

    def __init__(self) -> None:
        self.states: dict[int, Any] = {}
        self.loaders: dict[int, Callable[[], dict[int, Any]]] = {}

    def has(self, position: int) -> bool:
        return position in self.states or position in self.loaders

    def get(self, position: int) -> Any:
        if position not in self.states:
            if position not in self.loaders:
                raise KeyError(f"no state for config {position}: it was never trained")
            self.states.update(self.loaders.pop(position)())
        return self.states[position]

    def gather(self, positions: Sequence[int], configs: int) -> Any:
        """The chunk's states ``(C, S, ...)``: ``positions`` then the last one again up to ``configs``."""
        padded = list(positions) + [positions[-1]] * (configs - len(positions))
        trees = [self.get(p) for p in padded]
        return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)

    def scatter(self, positions: Sequence[int], chunk_state: Any) -> None:
        """Store rows ``0 .. len(positions) - 1`` of a chunk's ``(C, S, ...)`` states under ``positions``."""
        for i, position in enumerate(positions):
            self.states[position] = jax.tree.map(lambda leaf, i=i: np.asarray(leaf[i]), chunk_state)
            self.loaders.pop(position, None)

    def drop(self, positions: Sequence[int]) -> None:
        """Forget the states of ``positions`` (runs cut from the search)."""
        for position in positions:
            self.states.pop(position, None)
            self.loaders.pop(position, None)


def run_chunk(
    compiled: Any,
    mesh: Mesh,
    hp_host: dict[str, np.ndarray],
    state_host: Any,
    key_host: np.ndarray,
    fresh: bool,
    epochs: int,
    device_data: Sequence[data_lib.Dataset | None],
) -> tuple[Any, dict[str, np.ndarray]]:
    """One call of a compiled state chunk program: the new states ``(C, S, ...)`` on the devices, host scalars ``(C·S,)``.

    ``state_host`` may be host arrays or the device states an earlier call returned.
    """
    by_run, replicated = NamedSharding(mesh, P(RUN_AXIS)), NamedSharding(mesh, P())
    hp = train_lib.HParams(**{name: _global_array(values, by_run) for name, values in hp_host.items()})
    state = jax.tree.map(lambda leaf: jax.device_put(leaf, by_run), state_host)  # host or device arrays (one process)
    outputs = compiled(
        hp,
        state,
        _global_array(key_host, replicated),
        _global_array(np.asarray(fresh), replicated),
        _global_array(np.asarray(epochs, np.int32), replicated),
        *device_data,
    )
    new_state, scalars = outputs
    return new_state, {name: np.asarray(value) for name, value in jax.device_get(scalars).items()}
