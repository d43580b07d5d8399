"""What the adaptive searches share: the plan, the results file and its manifest, checkpoints, chunks of states.

``Search`` is one call of ``successive_halving``, ``hyperband`` or ``pbt``: it validates the data
and the space, plans every config × seed (``planning.plan``: the same ids as ``sweep.run``),
holds the results file's lock, checks the search's manifest (``<results>.search.json``: the
method and every argument that defines its runs; ``resume=True`` refuses a different one, naming
what differs), and trains chunks of configs for some epochs from their states (``train_chunks``).

A chunk's rows (one per run: the metrics at that point, ``epochs_trained`` and the method's own
fields) are appended to the results file after its states are saved (``state_files``: one
``.npz`` per chunk under ``<results>.states/``; the ``deepopt.checkpoint`` directories of earlier
versions are still read), so on resume a chunk whose rows are all in the file is skipped and
its states are read back only if a later stage continues them: nothing but the chunk in flight is
computed again, and no row is written twice.

Over several ``jax.distributed`` processes every process runs the same search on one mesh of all
their devices; process 0 alone writes the rows and the states (gathered to it from every
process's devices after each chunk) and reads them back on resume for all (``processes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from deepopt import data as data_lib
from deepopt import modules, perf
from deepopt import train as train_lib
from deepopt.sweep import pareto, processes, state_files
from deepopt.sweep.chunks import ChunkEngine, Progress
from deepopt.sweep import states as states_lib
from deepopt.sweep.analysis import Results, direction, seed_mean
from deepopt.sweep.engine import (
    _check_data, _group_hparams,
)
from deepopt.sweep import options as options_lib
from deepopt.sweep import reopen, tensorboard_log
from deepopt.sweep.model_based import is_model_based
from deepopt.sweep.planning import Run, _typed_key, groups, plan, plan_assignments
from deepopt.sweep.samplers import Sampler
from deepopt.sweep.search import (
    _as_dataset, _key_words, _metric_fields, _sampler_text, check_metric, model_based_source, tell_values,
)
from deepopt.sweep.search import _row as run_row
from deepopt.sweep.space import _check_count, static_fields
from deepopt.sweep.store import beside, data_fingerprint, json_round_trip

MANIFEST_SUFFIX = ".search.json"
STATES_SUFFIX = ".states"


def manifest_path(results_path: str | os.PathLike) -> str:
    """The search manifest beside ``results_path``: ``results.jsonl`` -> ``results.search.json``."""
    return beside(results_path, MANIFEST_SUFFIX)


def states_path(results_path: str | os.PathLike) -> str:
    """The checkpoint directory beside ``results_path``: ``results.jsonl`` -> ``results.states/``."""
    return beside(results_path, STATES_SUFFIX)


StageProgress = Progress  # the stage searches' progress: run-stages, the stage as its label


class Trial(NamedTuple):
    """One config of the search and its runs (one per seed): ``position`` in the plan's config order."""

    position: int
    config_id: str
    config_index: int
    config: train_lib.Config
    hparams: dict[str, Any]
    runs: tuple[Run, ...]


def rank_trials(
    trials: Sequence[Trial], rows: Mapping[int, Sequence[Mapping[str, Any]]], metric: str,
    directions: Mapping[str, str] | None = None,
) -> list[Trial]:
    """``trials`` best first by the seed-mean ``metric`` of ``rows[position]``; ties: the earlier config.

    A config with a diverged seed or no finite metric ranks below every other; ``metric`` ranks in
    its ``analysis.direction`` (a task's ``directions``, e.g. ``Search.directions``).
    """
    sign = 1.0 if direction(metric, directions) == "minimize" else -1.0

    def key(trial: Trial) -> tuple:
        values = [row.get(metric) for row in rows[trial.position]]
        diverged = any(bool(row.get("diverged")) for row in rows[trial.position])
        missing = any(v is None for v in values)
        mean = 0.0 if missing else float(np.mean(np.asarray(values, np.float64)))
        return (diverged or missing, sign * mean, trial.position)

    return sorted(trials, key=key)


def rank_trials_by_pareto(
    trials: Sequence[Trial], rows: Mapping[int, Sequence[Mapping[str, Any]]], objectives: Mapping[str, str],
    metric: str, directions: Mapping[str, str] | None = None,
) -> list[Trial]:
    """``trials`` best first by non-dominated sorting of the seed means of ``objectives`` in ``rows[position]``.

    The key, in order: a diverged seed (last), the Pareto rank (``pareto.pareto_ranks``; a missing
    value is the worst), the crowding distance within the rank (larger first: the front's extremes,
    then its sparse regions, as NSGA-II selects), then ``metric`` as ``rank_trials`` ranks it, then
    the earlier config. What Optuna's and Ray Tune's single-objective pruners cannot do: a rung
    keeps the configs that trade the objectives best, not the best of one.
    """
    if not trials:
        return []

    def seed_mean_of(trial: Trial, name: str) -> float:
        mean = seed_mean([row.get(name) for row in rows[trial.position]])
        return np.nan if mean is None else mean

    points = np.asarray([[seed_mean_of(trial, name) for name in objectives] for trial in trials], np.float64)
    senses = list(objectives.values())
    ranks = pareto.pareto_ranks(points, senses)
    crowding = pareto.crowding_distances(points, senses, ranks)
    by_metric = {trial.position: place for place, trial in enumerate(rank_trials(trials, rows, metric, directions))}

    def key(index: int) -> tuple:
        trial = trials[index]
        diverged = any(bool(row.get("diverged")) for row in rows[trial.position])
        return (diverged, int(ranks[index]), -float(crowding[index]), by_metric[trial.position])

    return [trials[i] for i in sorted(range(len(trials)), key=key)]


def _row(run_: Run, outputs: Mapping[str, np.ndarray], index: int, seconds: float, extra: Mapping[str, Any]) -> dict:
    """The JSON row of one run at one stage: ``sweep.run``'s row with the stage in its id and ``extra`` added."""
    row = run_row(run_, outputs, index, seconds)
    row = {"id": f"{run_.id}.{extra['stage']}", "run_id": run_.id, **{k: v for k, v in row.items() if k != "id"}}
    return row | json_round_trip(dict(extra))  # exactly what a resumed search reads back


def _describe_value(value: Any) -> Any:
    """A JSON-able description of a space entry or argument (dataclasses as ``{kind: fields}``)."""
    if modules.is_module(value):
        return modules.describe(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {type(value).__name__: {f.name: _describe_value(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (list, tuple)):
        return [_describe_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe_value(v) for k, v in value.items()}
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.generic, np.ndarray)):
        return np.asarray(value).tolist()
    return repr(value)


@dataclasses.dataclass
class Search:
    """One adaptive search call: validated inputs, the plan, the file, the compiled chunk programs, counters."""

    method: str
    config: train_lib.Config
    space: dict[str, Any]
    splits: tuple[data_lib.Dataset | None, ...]
    key: jax.Array
    seeds: int
    metric: str
    results_path: str | None
    resume: bool
    chunk_size: int | None
    devices: tuple
    trials: list[Trial]
    arguments: dict[str, Any]
    engine: ChunkEngine
    hold: reopen.Hold | None = None  # set while the results file is held (``opened``)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pool: states_lib.StatePool = dataclasses.field(default_factory=states_lib.StatePool)
    chunks_per_group: dict[train_lib.Config, int] = dataclasses.field(default_factory=dict)
    source: Sampler | None = None  # a model-based sampler: trials are asked bracket by bracket (``ask_trials``)
    hparams: train_lib.HParams | None = None
    digest: str = ""
    trial_of: dict[str, Trial] = dataclasses.field(default_factory=dict)
    padded_runs: int = 0
    padded_config_steps: int = 0
    concurrent_chunks: int | None = None  # chunks of a stage in flight at once; None: engine.concurrent_chunks
    memory_budget_bytes: int | None = None  # per device: chunks are shrunk until the stage program fits
    objectives: dict[str, str] = dataclasses.field(default_factory=dict)  # Options.objectives, checked
    on_file: bool = False  # process 0 has a results file: every process gathers the states it saves, loads, deletes

    # ---------------------------------------------------------------- setup

    @classmethod
    def create(
        cls,
        method: str,
        base_config: train_lib.Config,
        space: Mapping[str, Any],
        train: data_lib.Dataset,
        dev: data_lib.Dataset | None,
        *,
        key: jax.Array,
        num_configs: int,
        max_epochs: int,
        hparams: train_lib.HParams | None,
        options: options_lib.Options,
        arguments: Mapping[str, Any],
    ) -> Search:
        """Check every argument (before anything compiles), plan the configs, check the data against each group.

        ``options``: the search's resolved ``Options`` (what the stage engine cannot honour yet is
        refused, naming it; ``chunk_size="auto"`` is the search's own choice); ``arguments``: the
        method's own, recorded in the manifest.
        """
        shared = options_lib.adaptive_arguments(method, options)
        seeds, results_path, resume = shared["seeds"], shared["results_path"], shared["resume"]
        progress, test, sampler, chunk_size = shared["progress"], shared["test"], shared["sampler"], shared["chunk_size"]
        devices, streams, budget = shared["devices"], shared["concurrent_chunks"], shared["memory_budget_bytes"]
        if not isinstance(base_config, train_lib.Config):
            raise TypeError(f"config must be a deepopt.train.Config, got {type(base_config).__name__}")
        task = base_config.task
        splits = tuple(_as_dataset(name, split, task) for name, split in (("train", train), ("dev", dev), ("test", test)))
        if splits[0] is None:
            raise TypeError("train must be a deepopt.data.Dataset(X, y), got None")
        objectives = options_lib.check_objectives(options.objectives, _metric_fields(task, dev, test))
        metric = options_lib.metric_of(options, task)
        check_metric(metric, task, dev, test)
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {resume!r}")
        if chunk_size is not None:
            chunk_size = _check_count("chunk_size", chunk_size)
        devices = tuple(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("devices must name at least one device, got an empty sequence")
        key = _typed_key(key)
        config = dataclasses.replace(base_config, epochs=max_epochs)
        digest = data_fingerprint(*splits)
        source = None
        trials: list[Trial] = []
        if is_model_based(sampler):
            if method != "hyperband":
                raise ValueError(
                    f"sampler={sampler!r} learns from finished configs between its asks, but {method} asks all its "
                    "configs at once: use it with hyperband (brackets asked one after another) or sweep.run"
                )
            source, _ = model_based_source(config, space, splits, key, seeds, hparams, digest, sampler, metric,
                                           devices, objectives)
        else:
            runs = plan(config, space, key=key, num_configs=num_configs, seeds=seeds, sampler=sampler,
                        hparams=hparams, data_digest=digest)
            _check_data(groups(runs), splits, key, devices)
            trials = _trials(runs, seeds, 0)
        description = {
            "method": method,
            **{name: _describe_value(value) for name, value in arguments.items()},
            "seeds": seeds,
            "metric": metric,
            "sampler": _sampler_text(sampler),
            "config": _describe_value(train_lib.describe_config(config)),
            "space": _describe_value(dict(space)),
            "hparams": None if hparams is None else _describe_value(hparams._asdict()),
            "key": _key_words(key),
            "data": digest,
        }
        processes.check_same("arguments and data", {  # over several processes: each must plan the same chunks
            **description, "chunk_size": chunk_size, "memory_budget_bytes": budget, "devices": len(devices)})
        results_path = None if results_path is None else os.fspath(results_path)
        on_file = processes.share(lambda: results_path is not None)  # process 0's file: what every process saves for
        engine = ChunkEngine(devices=devices, splits=splits, key=key, seeds=seeds, progress=progress,
                             results_path=results_path if processes.is_writer() else None, unit="run-stages")
        return cls(
            method=method, config=config, space=dict(space), splits=splits, key=key, seeds=seeds, metric=metric,
            results_path=results_path, resume=resume, chunk_size=chunk_size, devices=devices, trials=trials,
            arguments=description, engine=engine,
            source=source, hparams=hparams, digest=digest, trial_of={t.config_id: t for t in trials},
            concurrent_chunks=streams, memory_budget_bytes=budget, objectives=objectives, on_file=on_file,
        )

    def rank(self, trials: Sequence[Trial], last: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[Trial]:
        """Best first: ``rank_trials`` by the search's metric in its task's direction, or with two or more
        ``objectives`` ``rank_trials_by_pareto`` (Pareto rank, then crowding distance)."""
        if len(self.objectives) >= 2:
            return rank_trials_by_pareto(trials, last, self.objectives, self.metric, self.directions)
        return rank_trials(trials, last, self.metric, self.directions)

    @property
    def directions(self) -> dict[str, str]:
        """The task's row fields and their directions (``Task.row_directions``): how ``metric`` ranks."""
        return self.config.task.row_directions()

    def ask_trials(self, n: int) -> tuple[list[dict[str, Any]], list[str], list[Trial]]:
        """A model-based search's next ``n`` configs: the assignments, their config ids, the new trials.

        A config asked again (same id) is not a new trial; ``tell_trials`` tells it its earlier value.
        """
        assert self.source is not None
        assignments = self.source.ask(n)
        runs, config_ids = plan_assignments(
            self.config, self.space, assignments, key=self.key, seeds=self.seeds, hparams=self.hparams,
            data_digest=self.digest, first_config_index=self.source.asked - len(assignments),
            first_run_index=len(self.trials) * self.seeds, seen=set(self.trial_of),
        )
        new = _trials(runs, self.seeds, len(self.trials))
        self.trials += new
        self.trial_of.update({t.config_id: t for t in new})
        return assignments, config_ids, new

    def tell_trials(
        self, assignments: Sequence[Mapping[str, Any]], config_ids: Sequence[str],
        last: Mapping[int, Sequence[Mapping[str, Any]]],
    ) -> None:
        """Tell the sampler each asked config's seed-mean ``metric`` (or ``objectives``) at the last stage it reached."""
        assert self.source is not None
        self.source.tell(assignments, tell_values(
            [last.get(self.trial_of[config_id].position, ()) for config_id in config_ids], self.metric, self.objectives))

    @contextlib.contextmanager
    def opened(self) -> Iterator[Search]:
        """Hold the results file (``reopen.writing``: the lock, the manifest, the rows already there, the record)."""
        on_file = self.results_path is not None
        with reopen.writing(
            self.results_path, self._call(), resume=self.resume,
            manifest=(manifest_path(self.results_path), self.arguments) if on_file else None,
            fresh_files=[states_path(self.results_path)] if on_file else [],
        ) as hold:
            for row_id, row in hold.done.items():
                self.engine.done.setdefault(row_id, row)
            self.hold = hold
            yield self

    # ---------------------------------------------------------------- chunks

    @property
    def batches_per_epoch(self) -> int:
        return perf.steps_per_run(dataclasses.replace(self.config, epochs=1), len(self.splits[0].y))

    def configs_per_chunk(self, config: train_lib.Config, stages: Sequence[tuple[int, int]]) -> int:
        """``C`` of a group: from ``chunk_size`` (runs per chunk), else the largest that keeps padding cheap.

        ``stages`` lists ``(configs, epochs)`` of every call the search plans. Without ``chunk_size``,
        ``C`` is the largest ``D · 2^k`` (``D`` devices, at most the first stage's configs) whose padded
        work :math:`\\sum \\lceil n/C \\rceil C e` stays within 1.25 × the real work :math:`\\sum n e`.
        Fixed for the whole search: one compiled program per group.
        """
        if config in self.chunks_per_group:
            return self.chunks_per_group[config]
        num_devices = len(self.devices)
        round_up = lambda n, k: -(-n // k) * k  # noqa: E731
        if self.chunk_size is not None:
            chosen = round_up(max(self.chunk_size // self.seeds, 1), num_devices)
        else:
            real = sum(n * e for n, e in stages)
            largest = max(n for n, _ in stages)
            chosen = num_devices
            candidate = 2 * num_devices
            while candidate <= round_up(largest, num_devices):
                padded = sum(round_up(n, candidate) * e for n, e in stages)
                if padded > 1.25 * real:
                    break
                chosen, candidate = candidate, 2 * candidate
        if self.memory_budget_bytes is not None:  # shrunk until the stage program fits (compiled once, cached)
            chosen = self.engine.program(config, chosen, self.group_dropout(config), budget=self.memory_budget_bytes,
                                         stage=True)[0]
        self.chunks_per_group[config] = chosen
        return chosen

    def _program(self, config: train_lib.Config, configs: int, dropout: bool) -> Any:
        """The group's stage program for chunks of ``configs`` (``ChunkEngine.program``: compiled once, cached)."""
        return self.engine.program(config, configs, dropout, stage=True)[1]

    def group_dropout(self, config: train_lib.Config) -> bool:
        """Whether the group's program compiles dropout in: some config of it, or the space, can have keep_prob < 1."""
        keep = [t.hparams["keep_prob"] for t in self.trials if t.config == config]
        varying = "keep_prob" in self.space and not isinstance(self.space["keep_prob"], (int, float))
        return varying or train_lib.resolve_dropout(np.asarray(keep, np.float64))

    def train_chunks(
        self,
        chunks: Sequence[Sequence[Trial]],
        *,
        epochs: int,
        fresh: bool,
        stage: str,
        extra: Callable[[Trial], dict[str, Any]],
        hparams: Mapping[int, Mapping[str, Any]] | None = None,
        stages: Sequence[tuple[int, int]],
        label: str,
    ) -> list[list[list[dict[str, Any]]]]:
        """Train each of ``chunks`` (one group each, disjoint members) for ``epochs`` from their states.

        ``fresh``: from ``init_state``. Returns each chunk's rows: one list per member, one row per
        seed. A chunk whose rows are all in the file (resume) is returned as it is and nothing is
        computed; otherwise it runs, its states are saved (with a results file) and its rows
        appended. ``hparams`` overrides a member's hyperparameters (PBT's explored values) by
        position. The chunks run on the call's ``ChunkEngine`` (``run_chunks``), several at once where
        the CPU has cores to spare: each is prepared here (checked, its states gathered, its program
        compiled) as it is dispatched, runs in a thread, and is recorded here in order (states
        scattered and saved, rows appended): the same rows and states bit for bit as one after another.
        """

        def prepare(members: Sequence[Trial]) -> tuple:
            config = members[0].config
            if any(m.config != config for m in members):
                raise ValueError("a chunk holds the configs of one group (one static Config)")
            if all(f"{run_.id}.{stage}" in self.engine.done for m in members for run_ in m.runs):
                return members, None, None, None
            configs = self.configs_per_chunk(config, stages)
            if len(members) > configs:
                raise ValueError(f"a chunk holds at most {configs} configs, got {len(members)}")
            values = self.member_hparams(members, configs, hparams)
            state_in = None if fresh else self.pool.gather([m.position for m in members], configs)
            return members, configs, values, self.chunk_call(members, configs, state_in, epochs, values)

        def compute(prepared: tuple) -> tuple:
            call = prepared[3]
            if call is None:
                return prepared, None
            new_state, outputs, seconds = call()
            return prepared, (states_lib.DeviceChunk(new_state), outputs, seconds)

        rows: list[list[list[dict[str, Any]]]] = []

        def record(computed: tuple) -> None:
            (members, configs, values, _), result = computed
            if result is None:  # read back: any state held for these members predates the stage
                self.pool.drop([m.position for m in members])
                rows.append(self.recorded(members, stage, label))
                return
            new_state, outputs, seconds = result
            positions = [m.position for m in members]
            self.pool.scatter(positions, new_state)  # left on the devices for the next stage
            if self.on_file:
                self.save_states(stage, positions, new_state.host())
            rows.append(self.record(members, configs, outputs, values, stage, extra, seconds, epochs, label))

        streams = self.engine.streams(self.concurrent_chunks, len(chunks))
        self.engine.run_chunks((prepare(m) for m in chunks), compute, record, streams)
        return rows

    def train_stage(
        self,
        trials: Sequence[Trial],
        *,
        epochs: int,
        fresh: bool,
        stage: str,
        extra: Callable[[Trial], dict[str, Any]],
        stages: Sequence[tuple[int, int]],
        label: str,
        hparams: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> dict[int, list[dict[str, Any]]]:
        """Advance ``trials`` by ``epochs``: group by group, in chunks of the group's shape (``train_chunks``).

        ``hparams`` overrides trials' hyperparameters by position (PBT's explored values). Each
        chunk is registered as saved at ``stage`` (its states load from there on demand).
        Returns each trial's rows, one per seed, by position.
        """
        by_group: dict[train_lib.Config, list[Trial]] = {}
        for trial in trials:
            by_group.setdefault(trial.config, []).append(trial)
        trained: dict[int, list[dict[str, Any]]] = {}
        for config, members in by_group.items():
            configs = self.configs_per_chunk(config, stages)
            chunks = [members[start : start + configs] for start in range(0, len(members), configs)]
            rows_of_chunks = self.train_chunks(  # several at once where the CPU has cores to spare
                chunks, epochs=epochs, fresh=fresh, stage=stage, stages=stages, label=label, extra=extra,
                hparams=hparams,
            )
            for chunk, rows in zip(chunks, rows_of_chunks):
                self.register_saved(stage, chunk, configs)
                trained.update({trial.position: trial_rows for trial, trial_rows in zip(chunk, rows)})
        return trained

    def recorded(self, members: Sequence[Trial], stage: str, label: str) -> list[list[dict[str, Any]]]:
        """The rows of ``members`` at ``stage`` read back from the file (resume): counted, reported, nothing computed."""
        rows = [[self.engine.done[f"{run_.id}.{stage}"] for run_ in m.runs] for m in members]
        self.engine.read_back(sum(len(r) for r in rows))
        self.history += [row for member_rows in rows for row in member_rows]
        self.engine.report(label)
        return rows

    def member_hparams(
        self, members: Sequence[Trial], configs: int, overrides: Mapping[int, Mapping[str, Any]] | None
    ) -> list[dict[str, Any]]:
        """Every HParams field of each chunk slot (``members`` then the last one repeated), with ``overrides`` by position."""
        padded = list(members) + [members[-1]] * (configs - len(members))
        return [dict(m.hparams) | dict((overrides or {}).get(m.position, {})) for m in padded]

    def chunk_call(
        self, members: Sequence[Trial], configs: int, state_in: Any, epochs: int, values: Sequence[Mapping[str, Any]]
    ) -> Callable[[], tuple[Any, dict[str, np.ndarray], float]]:
        """One chunk's run prepared here (program compiled, inputs made) as a call that any thread can make.

        The call runs the group's stage program on the chunk, ``state_in`` (None: fresh) for
        ``epochs``, and returns the device states, the host scalars and the seconds per run.
        """
        config = members[0].config
        compiled = self._program(config, configs, self.group_dropout(config))
        mesh = self.engine.mesh
        hp_host = _group_hparams(values, config, train_lib.param_dtype(config, self.splits[0].X.dtype))
        key_host = np.asarray([run_.key_data for run_ in members[0].runs], np.uint32)
        fresh = state_in is None
        if fresh:
            abstract = states_lib.state_shape(config, self.splits[0], key_host[0], str(jax.random.key_impl(self.key)))
            state_in = states_lib.empty_states(abstract, (configs, self.seeds))
        device_data = self.engine.data_on_devices()

        def call() -> tuple[Any, dict[str, np.ndarray], float]:
            started = time.perf_counter()
            new_state, outputs = states_lib.run_chunk(
                compiled, mesh, hp_host, state_in, key_host, fresh, epochs, device_data
            )
            return new_state, outputs, (time.perf_counter() - started) / (len(members) * self.seeds)

        return call

    def record(
        self,
        members: Sequence[Trial],
        configs: int,
        outputs: Mapping[str, np.ndarray],
        values: Sequence[Mapping[str, Any]],
        stage: str,
        extra: Callable[[Trial], dict[str, Any]],
        seconds: float,
        epochs: int,
        label: str,
    ) -> list[list[dict[str, Any]]]:
        """Make the chunk's rows (one per member and seed), append them to the file, count and report them."""
        rows: list[list[dict[str, Any]]] = []
        num_params = train_lib.num_params(members[0].config, tuple(self.splits[0].X.shape[1:]))
        for i, member in enumerate(members):
            fields = {"stage": stage, **extra(member)}
            fields |= {"num_params": num_params,
                       "config_steps": int(fields.get("epochs_trained", epochs)) * self.batches_per_epoch}
            rows.append([
                _row(run_._replace(hparams=dict(values[i])), outputs, i * self.seeds + s, seconds, fields)
                for s, run_ in enumerate(member.runs)
            ])
        flat = [row for member_rows in rows for row in member_rows]
        self.engine.append(flat)
        self.history += flat
        self.padded_runs += (configs - len(members)) * self.seeds
        self.padded_config_steps += (configs - len(members)) * self.seeds * epochs * self.batches_per_epoch
        self.engine.report(label)
        return rows

    # ---------------------------------------------------------------- states on disk

    def _checkpoint_dir(self, stage: str, positions: Sequence[int]) -> str:
        """Where earlier versions saved a chunk's states (a ``deepopt.checkpoint`` directory); read on resume."""
        return os.path.join(states_path(self.results_path), f"{stage}-{positions[0]:05d}")

    def _states_file(self, stage: str, positions: Sequence[int]) -> str:
        """The chunk's states file: ``<results>.states/<stage>-<first position>.npz`` (``state_files``)."""
        return self._checkpoint_dir(stage, positions) + state_files.SUFFIX

    def save_states(self, stage: str, positions: Sequence[int], chunk_state: Any) -> None:
        """Process 0 writes the chunk's states (host arrays, on every process) to its file (``state_files``)."""
        if processes.is_writer():
            state_files.save(self._states_file(stage, positions), positions, chunk_state)

    def load_states(self, stage: str, members: Sequence[Trial], configs: int) -> Any:
        """The chunk states ``(C, S, ...)`` (host arrays) saved for ``members`` at ``stage``; a clear error if missing.

        Read from the chunk's ``.npz`` file, or from the ``deepopt.checkpoint`` directory a search
        written by an earlier version left.
        """
        positions = [m.position for m in members]
        config = members[0].config
        key_data = np.asarray(members[0].runs[0].key_data, np.uint32)
        abstract = states_lib.state_shape(config, self.splits[0], key_data, str(jax.random.key_impl(self.key)))
        zeros = lambda leaf: np.zeros((configs, self.seeds, *leaf.shape), leaf.dtype)  # noqa: E731
        like_state = jax.tree.map(zeros, abstract)
        # process 0 reads the file; over several processes the others receive the states (or its error)
        return processes.share_arrays(lambda: self._read_states(stage, positions, like_state), like_state)

    def _read_states(self, stage: str, positions: Sequence[int], like_state: Any) -> Any:
        """The chunk states of ``positions`` at ``stage`` from this process's files (``load_states``, process 0)."""
        path, legacy = self._states_file(stage, positions), self._checkpoint_dir(stage, positions)
        if os.path.exists(path) and list(state_files.saved_positions(path)) != list(positions):
            raise self._other_chunks(stage, positions)
        try:
            if os.path.exists(path) or not os.path.isdir(legacy):
                saved_positions, state = state_files.load(path, like_state)
            else:
                from deepopt import checkpoint

                path = legacy
                restored = checkpoint.restore(legacy, like={"positions": np.zeros(len(positions), np.int32),
                                                            "state": like_state})
                saved_positions, state = restored["positions"], restored["state"]
        except FileNotFoundError:
            directory = states_path(self.results_path)
            if any(name.startswith(f"{stage}-") for name in (os.listdir(directory) if os.path.isdir(directory) else ())):
                raise self._other_chunks(stage, positions) from None
            raise FileNotFoundError(
                f"resume: the states of stage {stage} (configs {positions}) are not in {path}; "
                "the results file and its states directory do not belong together: resume=False starts afresh"
            ) from None
        if list(np.asarray(saved_positions)) != positions:
            raise ValueError(f"resume: checkpoint {path} holds configs {list(np.asarray(saved_positions))}, "
                             f"expected {positions}")
        return jax.tree.map(np.asarray, state)

    def _other_chunks(self, stage: str, positions: Sequence[int]) -> FileNotFoundError:
        """The error of a resume whose chunks differ from the saved ones (another device count or ``chunk_size``)."""
        return FileNotFoundError(
            f"resume: the states of stage {stage} were saved in other chunks than this call's (configs "
            f"{list(positions)}): resume over as many devices as the search started with (this call has "
            f"{len(self.devices)}) and the same chunk_size, or resume=False starts afresh"
        )

    def register_saved(self, stage: str, members: Sequence[Trial], configs: int) -> None:
        """Members whose rows of ``stage`` were read back: their states load from that chunk's checkpoint on demand."""
        if not self.on_file:
            return
        positions = [m.position for m in members]
        if all(p in self.pool.states for p in positions):
            return

        def load() -> dict[int, Any]:
            state = self.load_states(stage, members, configs)
            return {p: jax.tree.map(lambda leaf, i=i: leaf[i], state) for i, p in enumerate(positions)}

        for position in positions:
            if position not in self.pool.states:
                self.pool.loaders[position] = load

    def delete_states(self, stage: str) -> None:
        """Remove the checkpoints of ``stage`` (no later stage continues them): process 0's files."""
        if self.results_path is None or not processes.is_writer():
            return
        directory = states_path(self.results_path)
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.startswith(f"{stage}-"):
                    entry = os.path.join(directory, name)
                    if os.path.isdir(entry):  # a deepopt.checkpoint directory of an earlier version
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(entry)

    # ---------------------------------------------------------------- reporting

    def results(self, final_rows: list[dict[str, Any]], extra_stats: Mapping[str, Any]) -> Results:
        """``Results`` of the search: ``final_rows`` (each run's last row), the history, the stats; recorded as returned.

        Called while the results file is held (``drive``): the record of the call is finished under the lock.
        """
        config_steps = sum(int(row["epochs_trained"]) for row in final_rows) * self.batches_per_epoch
        stats = {
            "method": self.method,
            "runs": len(final_rows),
            "configs": len(self.trials),
            "seeds": self.seeds,
            "groups": len({t.config for t in self.trials}),
            "rows": len(self.history),
            **self.engine.stats(),
            "configs_per_chunk": {str(i): c for i, c in enumerate(self.chunks_per_group.values())},
            "padded_runs": self.padded_runs,
            "padded_config_steps": self.padded_config_steps,
            "batches_per_epoch": self.batches_per_epoch,
            "config_steps": config_steps,
            **extra_stats,
        }
        results = Results(rows=final_rows, space=dict(self.space), metric=self.metric, stats=stats,
                          directions=self.directions, history=list(self.history), objectives=dict(self.objectives))
        assert self.hold is not None, "Search.results is called while the file is held (drive)"
        return self.hold.finish(results)

    def _call(self) -> dict[str, Any]:
        """What identifies this search in the results record (``reopen.record_call``)."""
        call = {"method": self.method, "space": self.space, "metric": self.metric, "directions": self.directions,
                "arguments": self.arguments}
        return call | ({"objectives": dict(self.objectives)} if self.objectives else {})


def write_board(tensorboard_dir: str | os.PathLike | None, results: Results) -> Results:
    """With ``tensorboard_dir``: one TensorBoard run per config of a finished search (process 0); returns ``results``."""
    if tensorboard_dir is not None and processes.is_writer():
        tensorboard_log.write_runs(tensorboard_dir, results)
    return results


def _trials(runs: Sequence[Run], seeds: int, first_position: int) -> list[Trial]:
    """Planned runs (config-major, ``seeds`` each) as trials numbered from ``first_position``."""
    trials = []
    for start in range(0, len(runs), seeds):
        first = runs[start]
        trials.append(Trial(first_position + len(trials), first.config_id, first.config_index, first.config,
                            dict(first.hparams), tuple(runs[start : start + seeds])))
    return trials


def static_in_space(space: Mapping[str, Any]) -> list[str]:
    """The static Config fields that ``space`` varies (a choice or grid over them)."""
    from deepopt.sweep.space import _is_distribution

    return [name for name, value in space.items() if name in static_fields() and _is_distribution(value)]
