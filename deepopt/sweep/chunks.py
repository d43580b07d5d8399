"""The one chunk engine every search trains on: programs, data on the devices, the chunk loop, rows, progress.

Every search trains chunks: ``C`` configs × ``S`` seeds of one static group, sharded over the
devices. ``sweep.run`` trains each group as one stage of ``epochs`` from scratch whose states
nothing continues (the whole-run form of ``engine._chunk_program``); the adaptive searches train
stages from states (its stage form). Both go through one ``ChunkEngine``:

- ``program``: the group's compiled chunk program (one per group, chunk shape and form; counted
  in ``compilations``), shrunk to ``memory_budget_bytes`` by ``engine.fit_budget``;
- ``data_on_devices``: the splits replicated on every device, made once per call;
- ``run_chunks``: up to ``streams`` chunks in flight at once (``engine.in_order``), each recorded
  in order in the calling thread;
- ``append``: a computed chunk's curves, then its rows, to the files (process 0) and to ``done``;
- ``read_back`` and ``report``: the counts and the one ``Progress`` line of every search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt.sweep.engine import (
    RUN_AXIS, _compile, compile_count, concurrent_chunks, fit_budget, in_order, replicate_splits, split_bytes,
    split_shapes,
)
from deepopt.sweep.store import _append_rows, curve_row

Prepared = TypeVar("Prepared")
Computed = TypeVar("Computed")


class Progress(NamedTuple):
    """One finished chunk of any search (``sweep.run`` and the stage searches); ``str(progress)`` is the line.

    ``done`` of ``total`` runs (``unit``: a stage search counts run-stages), ``resumed`` of them read
    back; ``group`` of ``groups`` and ``chunk`` of ``chunks``: where ``sweep.run`` is in its plan (a
    stage search has ``groups = 0`` and counts in ``chunk`` the chunks it computed); ``label``: the
    group's static choices or the stage (``stage`` reads it).
    """

    done: int
    total: int
    resumed: int
    group: int
    groups: int
    chunk: int
    chunks: int
    runs_per_second: float
    eta_seconds: float
    elapsed_seconds: float
    label: str
    unit: str = "runs"

    @property
    def stage(self) -> str:
        """A stage search's stage (``label``), e.g. ``bracket 0 rung 2 (9 epochs)``."""
        return self.label

    def __str__(self) -> str:
        eta = f"{self.eta_seconds:.0f} s" if math.isfinite(self.eta_seconds) else "?"
        resumed = f" ({self.resumed} resumed)" if self.resumed else ""
        where = (f"group {self.group}/{self.groups} ({self.label}) chunk {self.chunk}/{self.chunks}" if self.groups
                 else self.label)
        return f"[{self.done}/{self.total} {self.unit}{resumed}] {where}: {self.runs_per_second:.1f} runs/s, ETA {eta}"


def progress_of(
    start: float, computed: int, resumed: int, total: int, where: tuple[int, int, int, int], label: str,
    unit: str = "runs",
) -> Progress:
    """The ``Progress`` of a search that started at ``start`` (``perf_counter``) and has ``computed`` + ``resumed`` done.

    Runs per second count this call's computed runs over its elapsed time; the ETA is the rest at that rate.
    """
    elapsed = time.perf_counter() - start
    rate = computed / elapsed if elapsed > 0 else float("inf")
    eta = (total - computed - resumed) / rate if rate > 0 else float("inf")
    return Progress(computed + resumed, total, resumed, *where, rate, eta, elapsed, label, unit)


@dataclasses.dataclass
class ChunkEngine:
    """What every chunk of one search call shares: devices, data, key shape, the files, the counters.

    ``results_path`` and ``curves_path``: where rows and curves are appended (None: no file, or a
    process other than 0). ``done``: every row of the call so far by id (read back or computed).
    ``total``: the runs (or run-stages, ``unit``) the call will report; ``groups``: ``sweep.run``'s
    groups (0: a stage search, whose progress names its stage instead).
    """

    devices: tuple
    splits: tuple[data_lib.Dataset | None, ...]
    key: jax.Array
    seeds: int
    progress: Callable[[Progress], None] | None
    results_path: str | None = None
    done: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    total: int = 0
    unit: str = "runs"
    groups: int = 0
    curves_path: str | None = None
    curve_data: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    computed: int = 0
    resumed: int = 0
    chunks: int = 0
    compiled_before: int = dataclasses.field(default_factory=compile_count)
    device_data: list[data_lib.Dataset | None] | None = None

    @functools.cached_property
    def mesh(self) -> Mesh:
        """``Mesh(devices, (RUN_AXIS,))``: the configs are sharded along it."""
        return Mesh(np.asarray(self.devices), (RUN_AXIS,))

    @functools.cached_property
    def _shape_args(self) -> tuple:
        """What the compiled programs key on besides the group: key impl and shape, dtype, split shapes, devices, test."""
        return (str(jax.random.key_impl(self.key)), tuple(np.asarray(jax.random.key_data(self.key)).shape),
                str(self.splits[0].X.dtype), split_shapes(self.splits), self.devices, self.splits[2] is not None)

    @property
    def data_bytes(self) -> int:
        """The bytes every device holds for the splits (``engine.split_bytes``)."""
        return split_bytes(self.splits)

    @property
    def compilations(self) -> int:
        """Chunk programs this process compiled since the call began (``engine.compile_count``)."""
        return compile_count() - self.compiled_before

    def data_on_devices(self) -> list[data_lib.Dataset | None]:
        """The splits as global arrays replicated on every device (made once, on first use)."""
        if self.device_data is None:
            self.device_data = replicate_splits(self.mesh, self.splits)
        return self.device_data

    def program(
        self, config: train_lib.Config, configs: int, dropout: bool, *, budget: int | None = None,
        curves: bool = False, stage: bool = False,
    ) -> tuple[int, Any, int]:
        """``(C, compiled program, bytes per device)`` of ``config``'s group for chunks of ``configs`` configs.

        ``engine._compile`` (cached: one program per group, chunk shape and form); with ``budget``
        (bytes per device), ``C`` shrinks until the program fits (``engine.fit_budget``).
        ``stage``: the stage form (states in and out); ``curves``: the whole-run form with curves.
        """
        args = (*self._shape_args, dropout, curves, stage)
        return fit_budget(lambda c: _compile(config, c, self.seeds, *args), configs, len(self.devices), budget,
                          self.data_bytes, self.seeds, config)

    def streams(self, wanted: int | None, chunks: int, bytes_per_device: int = 0, budget: int | None = None) -> int:
        """Chunks in flight at once for ``chunks`` chunks: ``wanted``, else ``engine.concurrent_chunks``; at least 1."""
        if jax.process_count() > 1:  # every process must dispatch the chunks' collectives in the same order
            return 1
        chosen = wanted or concurrent_chunks(self.devices, bytes_per_device, budget)
        return max(min(chosen, chunks), 1)

    def run_chunks(
        self, prepared: Iterable[Prepared], compute: Callable[[Prepared], Computed],
        record: Callable[[Computed], None], streams: int,
    ) -> None:
        """``record(compute(item))`` for each of ``prepared``, in order, with up to ``streams`` computing at once.

        ``prepared`` is read lazily, in this thread, as each chunk is dispatched; ``compute`` runs
        in a thread (the compiled program on the chunk's inputs: the same bits as one after
        another); ``record`` runs here, in chunk order, so a kill loses at most the chunks in flight.
        """
        with contextlib.closing(in_order(compute, prepared, streams)) as computed:
            for result in computed:
                record(result)

    def append(self, rows: Sequence[dict[str, Any]], curves: Mapping[str, Mapping[str, np.ndarray]] | None = None,
               ) -> None:
        """Record one computed chunk: its ``curves`` by run id (before the rows: a row always has its curves), its rows."""
        if curves:
            if self.curves_path is not None:
                _append_rows(self.curves_path, [curve_row(run_id, values) for run_id, values in curves.items()])
            self.curve_data.update({run_id: dict(values) for run_id, values in curves.items()})
        if self.results_path is not None:
            _append_rows(self.results_path, list(rows))
        self.done.update({row["id"]: row for row in rows})
        self.computed += len(rows)
        self.chunks += 1

    def read_back(self, count: int) -> None:
        """Count ``count`` runs (or run-stages) whose rows were read back from the file: nothing computed."""
        self.resumed += count

    def report(self, label: str, where: tuple[int, int, int, int] | None = None) -> None:
        """Send one ``Progress``: ``where`` is ``(group, groups, chunk, chunks)`` (default: the chunks computed)."""
        if self.progress is None:
            return
        where = (0, 0, self.chunks, 0) if where is None else where
        self.progress(progress_of(self.start, self.computed, self.resumed, self.total, where, label, self.unit))

    def stats(self) -> dict[str, Any]:
        """The counts every search's ``Results.stats`` carries."""
        return {
            "runs_computed": self.computed,
            "runs_resumed": self.resumed,
            "chunks": self.chunks,
            "compilations": self.compilations,
            "devices": len(self.devices),
            "processes": jax.process_count(),
            "seconds": time.perf_counter() - self.start,
        }
