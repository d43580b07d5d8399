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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt.sweep import processes
from deepopt.sweep.engine import RUN_AXIS, _global_array, state_compile_count, state_shape  # noqa: F401 (re-exported)


def empty_states(abstract: Any, leading: tuple[int, ...]) -> Any:
    """Host zeros of ``abstract``'s tree with ``leading`` axes in front (a ``fresh`` chunk's input)."""
    return jax.tree.map(lambda leaf: np.zeros((*leading, *leaf.shape), leaf.dtype), abstract)


class DeviceChunk:
    """A chunk's new states as the program returned them, left on the devices; copied to the host once, if ever."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._host: Any = None

    def host(self) -> Any:
        """The states as host arrays (over several processes, every process enters this gather at the same point)."""
        if self._host is None:
            self._host = processes.gather(self.state)
        return self._host


class _Slot(NamedTuple):
    """A position's state: row ``index`` of a ``DeviceChunk``."""

    chunk: DeviceChunk
    index: int


class _Pending(NamedTuple):
    """A position's state still in a saved chunk: ``loader()[source]``, read only if the state is ever needed."""

    loader: Callable[[], dict[int, Any]]
    source: int


@jax.jit
def _take_rows(state: Any, rows: jax.Array) -> Any:
    return jax.tree.map(lambda leaf: leaf[rows], state)


def _take(state: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` of every leaf of a chunk's states, on the devices (a re-packed or exploited chunk).

    Over several processes the states are global arrays and ``rows`` one replicated over their devices.
    """
    if processes.multiple():
        sharding = jax.tree.leaves(state)[0].sharding
        return _take_rows(state, _global_array(rows, NamedSharding(sharding.mesh, P())))
    return _take_rows(state, rows)


def _placed(state: Any, sharding: NamedSharding) -> Any:
    """``state`` (host or device arrays) as global arrays of ``sharding``; a leaf already one stays as it is.

    Host leaves are placed from the same value on every process; device leaves of another sharding
    (a gather of rows) are moved in one program (over several processes, between their devices).
    """
    def place(leaf: Any) -> Any:
        if not processes.multiple():
            return jax.device_put(leaf, sharding)
        return leaf if isinstance(leaf, jax.Array) else _global_array(np.asarray(leaf), sharding)

    placed = jax.tree.map(place, state)
    leaves, treedef = jax.tree.flatten(placed)
    moving = [i for i, leaf in enumerate(leaves) if not leaf.sharding.is_equivalent_to(sharding, leaf.ndim)]
    if moving:
        moved = processes.resharded([leaves[i] for i in moving], sharding)
        for i, leaf in zip(moving, moved):
            leaves[i] = leaf
    return jax.tree.unflatten(treedef, leaves)


class StatePool:
    """Every config's state between calls: ``{config position: pytree with a leading (S,) axis}``.

    A trained chunk's states stay where the program left them (``scatter`` of a ``DeviceChunk``:
    each position a row of it); ``gather`` hands the next call the same chunk when it holds the
    same members in the same rows, a gather of its rows on the devices when they come from one
    chunk in another order (PBT's exploit), and otherwise host arrays stacked from each position's
    row (repeating the last to pad to ``C``). ``loaders`` fetch states not in memory (from a
    checkpoint) on demand.
    """

    def __init__(self) -> None:
        self.states: dict[int, Any] = {}
        self.loaders: dict[int, Callable[[], dict[int, Any]]] = {}

    def has(self, position: int) -> bool:
        return position in self.states or position in self.loaders

    def _entry(self, position: int) -> Any:
        """The held entry of ``position`` (a ``_Slot`` or host arrays), loaded on demand.

        A loader reads a whole saved chunk; a position of that chunk whose state is newer (trained
        since, or registered to a later chunk) keeps its own.
        """
        if position not in self.states:
            if position not in self.loaders:
                raise KeyError(f"no state for config {position}: it was never trained")
            loader = self.loaders.pop(position)
            for loaded, state in loader().items():
                if loaded == position or self.loaders.get(loaded) is loader:
                    self.states[loaded] = state
                    self.loaders.pop(loaded, None)
        entry = self.states[position]
        if isinstance(entry, _Pending):  # a copy of a state that was still on disk
            entry = self.states[position] = entry.loader()[entry.source]
        return entry

    def get(self, position: int) -> Any:
        """``position``'s state as host arrays."""
        entry = self._entry(position)
        if isinstance(entry, _Slot):
            return jax.tree.map(lambda leaf: leaf[entry.index], entry.chunk.host())
        return entry

    def gather(self, positions: Sequence[int], configs: int) -> Any:
        """The chunk's states ``(C, S, ...)``: ``positions`` then the last one again up to ``configs``."""
        padded = list(positions) + [positions[-1]] * (configs - len(positions))
        entries = [self._entry(p) for p in padded]
        if all(isinstance(e, _Slot) and e.chunk is entries[0].chunk for e in entries):
            rows = [e.index for e in entries]
            leading = jax.tree.leaves(entries[0].chunk.state)[0].shape[0]
            if leading == configs and rows[: len(positions)] == list(range(len(positions))):
                return entries[0].chunk.state  # the members where the last call left them
            return _take(entries[0].chunk.state, np.asarray(rows, np.int32))
        trees = [self.get(p) for p in padded]
        return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)

    def scatter(self, positions: Sequence[int], chunk_state: Any) -> None:
        """Store rows ``0 .. len(positions) - 1`` of a chunk's ``(C, S, ...)`` states (a ``DeviceChunk`` or host arrays)."""
        for i, position in enumerate(positions):
            if isinstance(chunk_state, DeviceChunk):
                self.states[position] = _Slot(chunk_state, i)
            else:
                self.states[position] = jax.tree.map(lambda leaf, i=i: np.asarray(leaf[i]), chunk_state)
            self.loaders.pop(position, None)

    def copy(self, sources: Mapping[int, int]) -> None:
        """Position ``p`` takes the state of position ``sources[p]`` as it is now: PBT's exploit.

        Nothing is read: a state still on disk is copied as its loader (read if the target's state
        is ever needed; a stage read back from the file needs none).
        """
        taken = {}
        for target, source in sources.items():
            if source in self.states:
                taken[target] = self.states[source]
            elif source in self.loaders:
                taken[target] = _Pending(self.loaders[source], source)
            else:
                raise KeyError(f"no state for config {source}: it was never trained")
        for target, entry in taken.items():
            self.states[target] = entry
            self.loaders.pop(target, None)

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
    state = _placed(state_host, by_run)  # host or device arrays
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
