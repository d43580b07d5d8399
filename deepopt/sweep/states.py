"""Runs that keep their state: the host side of the stage programs that start or continue a chunk.

The adaptive searches (``halving``, ``pbt``, ``median``) train a chunk of ``C`` configs × ``S``
seeds for some epochs, look at the metrics, and continue some of the runs later, possibly in other
chunks. The program is the engine's one chunk program in its stage form
(``engine._compile(..., stage=True)``): it takes the chunk's batched ``TrainState`` (its ``key``
left out), a flag ``fresh`` and the number of epochs, both traced, and returns the new states and
``fit``'s per-run scalars. Here: ``run_chunk`` (one call), ``empty_states``, ``StatePool``.

Training ``k`` epochs is ``k`` calls of ``train.advance``'s one-epoch body in a loop, and the keys
of every epoch and batch derive from ``(run key, epoch, batch)``: a run continued in any number of
pieces computes exactly what ``fit`` computes straight through (the tests pin it bit for bit).
States live on the host between calls (``StatePool``), as numpy pytrees with a leading ``(S,)``
axis per config, and are gathered into chunks (padding repeats the last config) when needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt.sweep.engine import RUN_AXIS, _global_array, stage_compile_count, state_shape  # noqa: F401 (re-exported)


def state_compile_count() -> int:
    """How many stage programs (``engine._compile(..., stage=True)``) this process has compiled: one per group and chunk shape."""
    return stage_compile_count()


def empty_states(abstract: Any, leading: tuple[int, ...]) -> Any:
    """Host zeros of ``abstract``'s tree with ``leading`` axes in front (a ``fresh`` chunk's input)."""
    return jax.tree.map(lambda leaf: np.zeros((*leading, *leaf.shape), leaf.dtype), abstract)


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
