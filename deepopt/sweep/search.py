"""``run``: plan, validate, resume, then train every group's chunks and record their rows; ``Progress`` lines."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from deepopt import data as data_lib
from deepopt import tasks
from deepopt import perf
from deepopt import train as train_lib
from deepopt.sweep.analysis import Results
from deepopt.sweep.engine import (
    AUTO_CHUNK,
    CURVE_PREFIX,
    _check_data,
    _execute,
    _group_dropout,
    _group_hparams,
    split_bytes,
    _seeds_per_config,
    auto_chunk_size,
    chunk_layout,
    spread_over_streams,
)
from deepopt.sweep.analysis import direction, seed_mean
from deepopt.sweep.model_based import is_model_based, make_sampler, study_directions
from deepopt.sweep.planning import Run, _typed_key, check_plan_arguments, groups, legacy_ids, plan, plan_assignments
from deepopt.sweep.space import Choice, _check_count, _is_distribution, static_fields
from deepopt.sweep import host_keys, jax_config, processes, reopen, store, tensorboard_log
from deepopt.sweep import options as options_lib
from deepopt.sweep.chunks import ChunkEngine
from deepopt.sweep.store import data_fingerprint, read_curves


MODEL_BASED_ROUNDS = 8  # a model-based sweep's default rounds of ask, train, tell


def _metric_fields(task: tasks.Task, dev: Any, test: Any) -> tuple[str, ...]:
    """The row fields a search may rank by: ``train_<m>``, ``final_cost``, ``dev_<m>`` with dev, ``test_<m>`` with test."""
    names = tuple(task.metrics)
    return (
        tuple(f"train_{name}" for name in names) + ("final_cost",)
        + (tuple(f"dev_{name}" for name in names) if dev is not None else ())
        + (tuple(f"test_{name}" for name in names) if test is not None else ())
    )


def check_metric(metric: str, task: tasks.Task, dev: Any, test: Any) -> None:
    """``metric`` must be one of ``_metric_fields`` (before anything compiles)."""
    allowed = _metric_fields(task, dev, test)
    if metric not in allowed:
        raise ValueError(
            f"metric must be one of {list(allowed)} for task {task.name!r} (dev_ metrics need dev, test_ metrics "
            f"need test), got {metric!r}"
        )


def _as_dataset(name: str, split: Any, task: tasks.Task) -> data_lib.Dataset | None:
    """Host copy of a split after ``data.check_dataset`` (shapes, dtypes, finite X, the task's kind of targets)."""
    if split is None:
        return None
    return data_lib.check_dataset(split, name, on_host=True, targets=task.targets)


def _row(run_: Run, outputs: Mapping[str, np.ndarray], position: int, seconds: float,
         costs: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The JSON row of one run from the chunk's outputs at ``position``; ``costs``: its ``num_params`` and ``config_steps``."""
    row: dict[str, Any] = {
        "id": run_.id,
        "config_id": run_.config_id,
        "config_index": run_.config_index,
        "seed": run_.seed,
        "key": list(run_.key_data),
        "config": train_lib.describe_config(run_.config),
        "hparams": run_.hparams,
    }
    for name, values in outputs.items():
        value = values[position].item()
        row[name] = None if isinstance(value, float) and not math.isfinite(value) else value  # JSON has no NaN
    if not row.get("diverged", False) and "diverged_epoch" in row:
        row["diverged_epoch"] = None
    row.update(costs or {})
    row["seconds"] = seconds
    return store.json_round_trip(row)  # exactly what a resumed sweep reads back


def run(
    base_config: train_lib.Config,
    space: Mapping[str, Any],
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None = None,
    *,
    key: jax.Array,
    num_configs: int | None,
    hparams: train_lib.HParams | None = None,
    options: options_lib.Options | None = None,
    **option_fields: Any,
) -> Results:
    """Train every config of ``space`` × ``seeds`` keys; one compilation per group of static choices.

    The options (``options=Options(...)``, or any of its fields as keywords: ``seeds``, ``sampler``,
    ``results_path``, ``resume``, ``devices``, ``memory_budget_bytes``, ``metric``, ``test``,
    ``chunk_size``, ``progress``, ``curves``, ``tensorboard_dir``, ``concurrent_chunks``) are
    described below; a keyword overrides the same field of ``options``.

    Args:
      base_config: the static choices not in ``space``.
      space: ``{field: distribution or fixed value}`` over HParams (traced) and Config (static) fields.
      train, dev, test: datasets (``dev``/``test`` optional; ``test_<metric>`` is recorded with ``test``).
      key: PRNG key; split into the sampling key and the ``seeds`` model keys (``seed_keys``),
        the same ``seeds`` keys for every config.
      num_configs: configs to sample (None with ``sampler="grid"``: the whole product).
      seeds: keys per config.
      sampler: ``"random"``, ``"quasi"`` (scrambled Halton), ``"grid"``, or model-based: ``"tpe"``
        (Optuna's multivariate TPE, seeded from ``key``) or any Optuna sampler instance
        (``optuna.samplers.GPSampler(seed=0)``, say; see ``model_based``). A model-based sweep runs in
        rounds: ask ``C`` configs (``chunk_size // seeds``; default ``num_configs / MODEL_BASED_ROUNDS``,
        at least one per device), train them as one chunk per group of static choices (one compiled
        program per group for every round), tell each its seed-mean ``metric`` (a config with a
        non-finite one fails), ask again. Progress lines then count rounds.
      results_path: JSON-lines file; each finished chunk is appended, flushed and fsynced
        (process 0 writes). ``run`` holds an exclusive lock on it while it runs
        (``lock_results``): a second writer of the same file fails at once with
        ``ResultsInUseError``, naming the directory and the holder's pid.
      resume: skip runs whose id is already in ``results_path`` (False: start the file afresh).
        Rows of older files (v1 ids, see ``store``) count too; new rows carry v2 ids.
      devices: the devices to shard over (default ``jax.devices()``: every process's).
      memory_budget_bytes: per-device bytes a chunk may take (from ``memory_analysis``).
      metric: the row field that ranks configs in ``Results``.
      hparams: base ``train.HParams`` for fields not in ``space``.
      chunk_size: runs per chunk (the unit of progress lines and of resume); ``"auto"`` (the
        default): per group, as many runs per device as fit ``CACHE_BYTES_PER_DEVICE``
        (``auto_chunk_size``: the fastest on the CPU, and a group of the benchmark's 2-20-10-1 net
        splits into chunks of 128 runs that run at once on a CPU's cores), lowered so that a smaller
        group still gives each of the chunks run at once one (``spread_over_streams``); None: the whole group
        in one chunk. A smaller group is padded to the next power of two (``chunk_layout``) so
        that groups of similar size share one compiled program.
      progress: called with a ``Progress`` after each chunk (``progress=print`` prints a line).
      curves: also record every run's learning curves (per-epoch training cost, the primary dev
        metric and dev cost; needs ``dev``), in ``Results.curves`` and, beside ``results_path``, in
        ``store.curves_path(results_path)`` (one line per run: float32 curves in base64), written
        before the chunk's rows. The training is the same bit for bit. A resumed run whose curves
        were never recorded (an earlier call without ``curves``) has none. None (the default):
        True when ``tensorboard_dir`` is given and there is a dev set, else False.
      tensorboard_dir: write one TensorBoard run per config there (``tensorboard_log.write_runs``:
        its hyperparameters for the HParams dashboard, its seed-mean final metrics and per-epoch
        curves), each config as soon as all its seeds are done; resumed configs already written are
        not written twice. Open it with ``tensorboard --logdir DIR``. Needs the ``tensorboard`` extra.
      concurrent_chunks: how many chunks of a group run at once, dispatched from threads (the same
        compiled program on other inputs: the same results bit for bit; rows are recorded in chunk
        order). None: ``engine.concurrent_chunks`` (the CPU's cores per device, within
        ``memory_budget_bytes``; one on accelerators); 1: one after another. Always one when the
        mesh spans several processes.
    Returns:
      ``Results`` with one row per run in plan order (config-major, then seed); ``config_steps``
      counts every run's updates (epochs × mini-batches; resumed runs included), ``seconds`` the call.
    """
    settings = options_lib.resolve("run", options, option_fields)
    return _run(base_config, space, train, dev, key, num_configs, hparams, settings)


def _run(
    base_config: train_lib.Config, space: Mapping[str, Any], train: data_lib.Dataset, dev: data_lib.Dataset | None,
    key: jax.Array, num_configs: int | None, hparams: train_lib.HParams | None, settings: options_lib.Options,
) -> Results:
    """``run``'s body, its options resolved (``settings``)."""
    seeds, sampler, results_path, resume = settings.seeds, settings.sampler, settings.results_path, settings.resume
    devices, memory_budget_bytes, test = settings.devices, settings.memory_budget_bytes, settings.test
    train_lib._check_config(base_config)
    task = base_config.task
    metric = options_lib.metric_of(settings, task)
    chunk_size, curves = settings.chunk_size, settings.curves
    tensorboard_dir, concurrent_chunks = settings.tensorboard_dir, settings.concurrent_chunks
    start = time.perf_counter()
    splits = tuple(_as_dataset(name, split, task) for name, split in (("train", train), ("dev", dev), ("test", test)))
    if splits[0] is None:
        raise TypeError("train must be a deepopt.data.Dataset(X, y), got None")
    if tensorboard_dir is not None:
        tensorboard_dir = _check_tensorboard_dir(tensorboard_dir)
    if curves is None:
        curves = tensorboard_dir is not None and dev is not None
    if not isinstance(curves, bool):
        raise TypeError(f"curves must be a bool or None, got {curves!r}")
    if curves and dev is None:
        raise ValueError(f"curves=True records dev {task.primary} and dev cost per epoch: it needs a dev set")
    objectives = options_lib.check_objectives(settings.objectives, _metric_fields(task, dev, test))
    check_metric(metric, task, dev, test)
    options_lib.check_memory_budget(memory_budget_bytes)
    if chunk_size != AUTO_CHUNK:
        try:
            chunk_size = None if chunk_size is None else _check_count("chunk_size", chunk_size)
        except ValueError:
            raise ValueError(
                f"chunk_size must be a positive int, None (whole groups) or {AUTO_CHUNK!r}, got {chunk_size!r}"
            ) from None
    devices = tuple(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device, got an empty sequence")
    data_bytes = split_bytes(splits)
    if memory_budget_bytes is not None and memory_budget_bytes <= data_bytes:
        raise ValueError(
            f"memory_budget_bytes={memory_budget_bytes} is below the data alone ({data_bytes} bytes on every device)"
        )
    options_lib.check_concurrent_chunks(concurrent_chunks)
    key = _typed_key(key)
    data_digest = data_fingerprint(*splits)
    settings = dataclasses.replace(settings, metric=metric, chunk_size=chunk_size, devices=devices, curves=curves,
                                   tensorboard_dir=tensorboard_dir, objectives=objectives)
    processes.check_same("arguments and data", {  # over several processes: each must plan the same chunks
        **_call_record(base_config, space, key, num_configs, seeds, sampler, metric, hparams, data_digest, objectives),
        "chunk_size": chunk_size, "curves": curves, "memory_budget_bytes": memory_budget_bytes, "devices": len(devices),
    })
    if is_model_based(sampler):
        return _run_model_based(base_config, space, splits, key, num_configs, hparams, settings, start, data_digest)
    runs = plan(
        base_config,
        space,
        key=key,
        num_configs=num_configs,
        seeds=seeds,
        sampler=sampler,
        hparams=hparams,
        data_digest=data_digest,
    )
    grouped = groups(runs)
    _check_data(grouped, splits, key, devices)

    reads_file = resume and results_path is not None and processes.is_writer()
    legacy = legacy_ids(runs, data_digest) if reads_file else None  # rows a v1 file holds for these runs
    call = _call_record(base_config, space, key, num_configs, seeds, sampler, metric, hparams, data_digest,
                        settings.objectives)
    with reopen.writing(results_path, call, resume=resume, ids=[run_.id for run_ in runs], legacy=legacy) as hold:
        sweep = _new_sweep(settings, splits, key, hold.done, [r.id for r in runs], len(runs), len(grouped), start)
        sweep.engine.read_back(sum(run_.id in hold.done for run_ in runs))
        _run_groups_compiling_ahead(
            sweep, grouped, space, lambda: _write_board(tensorboard_dir, sweep, runs, space, metric)
        )
        return hold.finish(_results(sweep, runs, space, metric, task, objectives=objectives))


def _call_record(
    config: train_lib.Config, space: Mapping[str, Any], key: jax.Array, num_configs: int | None, seeds: int,
    sampler: Any, metric: str, hparams: train_lib.HParams | None, data_digest: str,
    objectives: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What identifies one ``run`` call in the results record (``reopen.record_call``); ``objectives`` when set."""
    return ({"objectives": dict(objectives)} if objectives else {}) | {
        "method": "run", "space": dict(space), "metric": metric, "directions": config.task.row_directions(),
        "num_configs": num_configs, "seeds": seeds,
        "sampler": _sampler_text(sampler), "key": _key_words(key), "data": data_digest,
        "config": train_lib.describe_config(config), "hparams": None if hparams is None else hparams._asdict(),
    }


def _sampler_text(sampler: Any) -> str:
    """A sampler as a search's records name it: its name, or an Optuna sampler's class path."""
    return sampler if isinstance(sampler, str) else f"{type(sampler).__module__}.{type(sampler).__name__}"


def _key_words(key: jax.Array) -> list[int]:
    """A search key's data words, as its records hold them."""
    return [int(v) for v in np.asarray(jax.random.key_data(key)).reshape(-1)]


def _results(
    sweep: _Sweep, runs: Sequence[Run], space: Mapping[str, Any], metric: str, task: tasks.Task,
    extra_stats: Mapping[str, Any] | None = None, objectives: Mapping[str, str] | None = None,
) -> Results:
    """The ``Results`` of a finished call: its runs' rows in plan order, their curves, the stats, the objectives."""
    engine = sweep.engine
    grouped = groups(runs)
    stats = {
        "runs": len(runs),
        "configs": len({r.config_id for r in runs}),
        "seeds": engine.seeds,
        "groups": len(grouped),
        **engine.stats(),
        "layout": sweep.layout,
        "config_steps": sum(
            perf.steps_per_run(config, len(engine.splits[0].y)) * len(r) for config, r in grouped.items()
        ),
        **(extra_stats or {}),
    }
    return Results(
        rows=[engine.done[run_.id] for run_ in runs], space=dict(space), metric=metric, stats=stats,
        curves={run_.id: engine.curve_data[run_.id] for run_ in runs if run_.id in engine.curve_data},
        directions=task.row_directions(), objectives=dict(objectives or {}),
    )


def _check_tensorboard_dir(tensorboard_dir: Any) -> str:
    """``tensorboard_dir`` as a path that is not a file, with TensorBoard importable: checked before compiling."""
    try:
        path = os.fspath(tensorboard_dir)
    except TypeError:
        raise TypeError(f"tensorboard_dir must be a path or None, got {tensorboard_dir!r}") from None
    if os.path.isfile(path):
        raise ValueError(f"tensorboard_dir must be a directory, got the file {path!r}")
    tensorboard_log._tensorboard()  # the ImportError that names the extra, before any training
    return path


def _write_board(
    tensorboard_dir: str | None, sweep: _Sweep, runs: Sequence[Run], space: Mapping[str, Any], metric: str
) -> None:
    """Write the TensorBoard run of every config whose seeds are all done and that is not written yet (process 0)."""
    if tensorboard_dir is None or not processes.is_writer():
        return
    by_config: dict[str, list[Run]] = {}
    for run_ in runs:
        by_config.setdefault(run_.config_id, []).append(run_)
    done, curve_data = sweep.engine.done, sweep.engine.curve_data
    complete = [run_ for seeds in by_config.values() if all(r.id in done for r in seeds) for run_ in seeds]
    if not complete:
        return
    results = Results(
        rows=[done[run_.id] for run_ in complete], space=dict(space), metric=metric,
        directions=runs[0].config.task.row_directions(),
        curves={run_.id: curve_data[run_.id] for run_ in complete if run_.id in curve_data},
    )
    tensorboard_log.write_runs(tensorboard_dir, results)


def _open_curves(
    curves_of: str | os.PathLike | None, curves: bool, resume: bool, ids: Sequence[str]
) -> tuple[str | None, dict[str, dict[str, np.ndarray]]]:
    """The curves file beside results file ``curves_of`` (None: no writer here) and the curves of ``ids`` it holds."""
    if curves_of is None or not curves:
        return None, {}
    curve_file = store.curves_path(curves_of)
    curve_data = read_curves(curve_file, ids, repair=True) if resume else {}
    with open(curve_file, "a" if resume else "w", encoding="utf-8"):
        pass
    return curve_file, curve_data


def _new_sweep(
    settings: options_lib.Options, splits: tuple[data_lib.Dataset | None, ...], key: jax.Array,
    done: dict[str, dict[str, Any]], ids: Sequence[str], total: int, num_groups: int, start: float,
) -> _Sweep:
    """The state one ``run`` call's groups share (``settings`` resolved): its ``ChunkEngine`` and chunking."""
    writer = settings.results_path is not None and processes.is_writer()
    curve_file, curve_data = _open_curves(settings.results_path if writer else None, settings.curves,
                                          settings.resume, ids)
    engine = ChunkEngine(
        devices=tuple(settings.devices), splits=splits, key=key, seeds=settings.seeds, progress=settings.progress,
        results_path=os.fspath(settings.results_path) if writer else None, done=done, total=total,
        groups=num_groups, curves_path=curve_file, curve_data=curve_data, start=start,
    )
    return _Sweep(engine=engine, budget=settings.memory_budget_bytes, chunk_size=settings.chunk_size,
                  curves=settings.curves, concurrent_chunks=settings.concurrent_chunks)


def ask_size(num_configs: int, seeds: int, chunk_size: int | str | None, num_devices: int) -> int:
    """Configs per round of a model-based sweep: ``chunk_size // seeds``, else ``⌈num_configs / MODEL_BASED_ROUNDS⌉``.

    At least one config per device and at most ``num_configs``; ``chunk_size="auto"`` counts as None.
    """
    if isinstance(chunk_size, int):
        size = max(chunk_size // seeds, 1)
    else:
        size = -(-num_configs // MODEL_BASED_ROUNDS)
    return min(max(size, num_devices), num_configs)


def _corner_assignments(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Assignments at both ends of every searched range for every static combination: what ``plan`` checks up front.

    A model-based sweep has not sampled its configs before it starts; these stand in for them in
    the checks before compiling (Config of every static combination, hyperparameter ranges, data
    against every group) and decide each group's dropout (``keep_prob`` below 1 anywhere in its range).
    """
    static = [n for n, v in space.items() if n in static_fields() and isinstance(v, Choice)]
    traced = [n for n, v in space.items() if n not in static_fields() and _is_distribution(v)]
    fixed = {n: v for n, v in space.items() if n not in static and n not in traced}
    corners = []
    for combo in itertools.product(*(space[n].values for n in static)):
        for end in (0.0, 1.0 - 1e-9):
            corners.append(
                {**fixed, **dict(zip(static, combo)), **{n: space[n].sample(np.asarray([end]))[0] for n in traced}}
            )
    return corners


def model_based_source(
    base_config: train_lib.Config,
    space: Mapping[str, Any],
    splits: tuple[data_lib.Dataset | None, ...],
    key: jax.Array,
    seeds: int,
    hparams: train_lib.HParams | None,
    data_digest: str,
    sampler: Any,
    metric: str,
    devices: Sequence[Any] | None = None,
    objectives: Mapping[str, str] | None = None,
) -> tuple[Any, dict[train_lib.Config, bool]]:
    """A model-based search's sampler (``make_sampler``, told which way ``metric`` is better) and each group's dropout.

    Its configs are asked later, so every check ``plan`` would make runs first on
    ``_corner_assignments`` (the arguments, every static combination's Config, both ends of every
    range, the data against every group, traced over ``devices`` as the chunk programs will be):
    before anything compiles. The sampler draws from the sampling key ``plan`` uses. With two or more
    ``objectives`` the study is multi-objective (``tell_values`` tells each config's every objective).
    """
    check_plan_arguments(base_config, hparams, seeds)
    corner_runs, _ = plan_assignments(base_config, space, _corner_assignments(space), key=key, seeds=seeds,
                                      hparams=hparams, data_digest=data_digest)
    corner_groups = groups(corner_runs)
    _check_data(corner_groups, splits, key, devices)
    dropout_of = {config: _group_dropout(group_runs) for config, group_runs in corner_groups.items()}
    sample_key = host_keys.split_key(key, 2, 0)  # jax.random.split(key)[0], as plan samples with
    maximize_or_minimize = direction(metric, base_config.task.row_directions())
    directions = study_directions(objectives) if objectives and len(objectives) > 1 else None
    return make_sampler(sampler, space, sample_key, direction=maximize_or_minimize, directions=directions), dropout_of


def tell_values(rows_of: Sequence[Sequence[Mapping[str, Any]]], metric: str,
                objectives: Mapping[str, str] | None = None) -> list[Any]:
    """What a model-based sampler is told of each config, from its seeds' rows: the seed-mean ``metric``, or with
    two or more ``objectives`` the list of their seed means (None when a seed's value is missing or not finite)."""
    if objectives and len(objectives) > 1:
        return [[seed_mean([row.get(name) for row in rows]) for name in objectives] for rows in rows_of]
    return [seed_mean([row.get(metric) for row in rows]) for rows in rows_of]


def _tell_values(
    assignments_ids: Sequence[str], done: Mapping[str, Mapping[str, Any]], runs_by_config: Mapping[str, Sequence[Run]],
    metric: str, objectives: Mapping[str, str] | None = None,
) -> list[Any]:
    """Each asked config's ``tell_values`` from the done rows of its seeds."""
    return tell_values([[done[run_.id] for run_ in runs_by_config[config_id]] for config_id in assignments_ids],
                       metric, objectives)


def _run_model_based(
    base_config: train_lib.Config, space: Mapping[str, Any], splits: tuple[data_lib.Dataset | None, ...],
    key: jax.Array, num_configs: int | None, hparams: train_lib.HParams | None, settings: options_lib.Options,
    start: float, data_digest: str,
) -> Results:
    """``run`` with a model-based sampler (``settings`` resolved): rounds of ask ``C``, train, tell ``C``."""
    seeds, sampler, metric, devices = settings.seeds, settings.sampler, settings.metric, settings.devices
    if num_configs is None:
        raise ValueError(f"num_configs must be a positive int for a model-based sampler ({sampler!r}), got None")
    num_configs = _check_count("num_configs", num_configs)
    source, dropout_of = model_based_source(base_config, space, splits, key, seeds, hparams, data_digest, sampler,
                                            metric, devices, settings.objectives)
    per_round = ask_size(num_configs, seeds, settings.chunk_size, len(devices))
    rounds = -(-num_configs // per_round)

    call = _call_record(base_config, space, key, num_configs, seeds, sampler, metric, hparams, data_digest,
                        settings.objectives)
    resume = settings.resume
    with reopen.writing(settings.results_path, call, resume=resume, ids=None if resume else []) as hold:
        done = hold.done
        sweep = _new_sweep(dataclasses.replace(settings, chunk_size=per_round * seeds), splits, key, done, list(done),
                           num_configs * seeds, rounds, start)
        runs: list[Run] = []
        runs_by_config: dict[str, list[Run]] = {}
        seen: set[str] = set()
        for round_number in range(1, rounds + 1):
            assignments = source.ask(min(per_round, num_configs - source.asked))
            new_runs, config_ids = plan_assignments(
                base_config, space, assignments, key=key, seeds=seeds, hparams=hparams, data_digest=data_digest,
                first_config_index=source.asked - len(assignments), first_run_index=len(runs), seen=seen,
            )
            runs += new_runs
            for run_ in new_runs:
                runs_by_config.setdefault(run_.config_id, []).append(run_)
            sweep.engine.read_back(sum(run_.id in done for run_ in new_runs))
            for config, group_runs in groups(new_runs).items():  # every static combination is a corner's
                if all(run_.id in done for run_ in group_runs):
                    continue
                label = _group_label(config, space)
                program = _group_program(sweep, config, group_runs, per_round, dropout_of[config])
                _run_group(sweep, round_number, f"round {round_number}/{rounds}" + (f", {label}" if label else ""),
                           config, group_runs, program)
            source.tell(assignments, _tell_values(config_ids, done, runs_by_config, metric, settings.objectives))
            _write_board(settings.tensorboard_dir, sweep, runs, space, metric)
        extra = {"sampler": getattr(source, "sampler_name", str(sampler)), "rounds": rounds,
                 "configs_per_round": per_round, "asked": source.asked}
        return hold.finish(_results(sweep, runs, space, metric, base_config.task, extra, settings.objectives))


@dataclasses.dataclass
class _Sweep:
    """What every group of one ``run`` call shares: the chunk engine, and how groups are cut into chunks."""

    engine: ChunkEngine
    budget: int | None
    chunk_size: int | str | None
    curves: bool
    concurrent_chunks: int | None = None  # chunks in flight at once; None: engine.concurrent_chunks
    layout: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _group_program(
    sweep: _Sweep,
    config: train_lib.Config,
    group_runs: Sequence[Run],
    shape_configs: int | None = None,
    dropout: bool | None = None,
) -> tuple[int, Any, int, bool, float]:
    """The group's compiled chunk program: ``(configs per chunk, program, bytes per device, dropout, seconds)``.

    ``C = chunk_layout(configs, chunk_size // seeds, D)``, shrunk to fit the memory budget
    (``ChunkEngine.program``). ``shape_configs``: the configs the chunk shape is laid out for
    (default: the group's), so that a model-based sweep's rounds share one program per group;
    ``dropout``: the program's dropout (default: whether a run of the group needs it).
    """
    engine = sweep.engine
    dropout = _group_dropout(group_runs) if dropout is None else dropout
    compile_start = time.perf_counter()
    chunk_size = sweep.chunk_size
    if chunk_size == AUTO_CHUNK:
        train_set = engine.splits[0]
        chunk_size = auto_chunk_size(
            config, len(train_set.y), len(engine.devices), train_set.X.dtype, train_set.X.shape[1:]
        )
        if shape_configs is None:  # a model-based round keeps one shape per group, whatever the cores
            streams = engine.streams(sweep.concurrent_chunks, len(group_runs))
            chunk_size = spread_over_streams(chunk_size, len(group_runs), len(engine.devices), streams)
    seeds = _seeds_per_config(group_runs)
    num_configs = len(group_runs) // seeds if shape_configs is None else shape_configs
    configs = chunk_layout(num_configs, None if chunk_size is None else max(chunk_size // seeds, 1),
                           len(engine.devices))
    configs_per_chunk, compiled, size = engine.program(config, configs, dropout, budget=sweep.budget,
                                                       curves=sweep.curves)
    return configs_per_chunk, compiled, size, dropout, time.perf_counter() - compile_start


def _run_groups_compiling_ahead(
    sweep: _Sweep, grouped: Mapping[train_lib.Config, Sequence[Run]], space: Mapping[str, Any],
    after_group: Callable[[], None],
) -> None:
    """Every group in order; the next group's program compiles in a thread while this group's chunks run.

    XLA compiles outside Python's lock, so on a machine with a core to spare (or an accelerator
    running the chunks) the compilation of group ``k + 1`` is hidden behind the chunks of group ``k``.
    """
    todo = [(number, config, runs) for number, (config, runs) in enumerate(grouped.items(), start=1)
            if not all(run_.id in sweep.engine.done for run_ in runs)]
    with jax_config.ThreadPool(max_workers=1, thread_name_prefix="deepopt-compile") as pool:
        ahead = pool.submit(_group_program, sweep, todo[0][1], todo[0][2]) if todo else None
        for position, (number, config, group_runs) in enumerate(todo):
            program = ahead.result()
            if position + 1 < len(todo):
                ahead = pool.submit(_group_program, sweep, todo[position + 1][1], todo[position + 1][2])
            _run_group(sweep, number, _group_label(config, space) or "all", config, group_runs, program)
            after_group()


def _group_label(config: train_lib.Config, space: Mapping[str, Any]) -> str:
    """A group's static choices as progress text, e.g. ``optimizer=adam`` (empty without any)."""
    return ", ".join(f"{name}={getattr(config, name)}" for name in space if name in static_fields())


def _run_group(
    sweep: _Sweep, number: int, label: str, config: train_lib.Config, group_runs: Sequence[Run], program: tuple
) -> None:
    """Run, record and report the group's chunks that are not done yet with its compiled ``program``.

    ``program``: ``_group_program``'s result (compiled ahead, while the group before ran, by
    ``_run_groups_compiling_ahead``; at one shape for every round of a model-based sweep).
    """
    configs_per_chunk, compiled, size, dropout, compile_seconds = program
    seeds = _seeds_per_config(group_runs)
    num_configs = len(group_runs) // seeds
    chunk = configs_per_chunk * seeds
    num_chunks = -(-num_configs // configs_per_chunk)
    sweep.layout.append(
        {
            "group": label,
            "runs": len(group_runs),
            "chunk": chunk,
            "configs_per_chunk": configs_per_chunk,
            "chunks": num_chunks,
            "bytes_per_device": size,
            "dropout": dropout,
            "compile_seconds": compile_seconds,  # ~0 when the program was cached
        }
    )
    engine = sweep.engine
    hp_host = _group_hparams([run_.hparams for run_ in group_runs[::seeds]], config,
                             train_lib.param_dtype(config, engine.splits[0].X.dtype))
    key_host = np.asarray([run_.key_data for run_ in group_runs[:seeds]], np.uint32)
    todo = [n for n in range(num_chunks) if not all(r.id in engine.done for r in group_runs[n * chunk : (n + 1) * chunk])]
    device_data = engine.data_on_devices() if todo else []  # made here, before any thread needs it
    mesh = engine.mesh

    def compute(chunk_number: int) -> tuple[int, dict[str, np.ndarray], float]:
        first = chunk_number * configs_per_chunk  # pad with the last config
        local = np.minimum(np.arange(configs_per_chunk) + first, num_configs - 1)
        chunk_start = time.perf_counter()
        outputs = _execute(compiled, mesh, hp_host, key_host, local, device_data)
        return chunk_number, outputs, time.perf_counter() - chunk_start

    def record(computed: tuple[int, dict[str, np.ndarray], float]) -> None:
        chunk_number, outputs, chunk_seconds = computed
        _record_chunk(sweep, number, label, group_runs[chunk_number * chunk : (chunk_number + 1) * chunk],
                      outputs, chunk_seconds, chunk_number, num_chunks)

    streams = engine.streams(sweep.concurrent_chunks, len(todo), size, sweep.budget)
    sweep.layout[-1]["concurrent_chunks"] = streams
    engine.run_chunks(todo, compute, record, streams)


def _record_chunk(
    sweep: _Sweep, number: int, label: str, members: Sequence[Run], outputs: dict[str, np.ndarray],
    chunk_seconds: float, chunk_number: int, num_chunks: int,
) -> None:
    """Append one computed chunk's rows (and curves) to the file and the done rows, and report it."""
    engine = sweep.engine
    seconds = chunk_seconds / len(members)
    curve_outputs = {
        name[len(CURVE_PREFIX):]: outputs.pop(name) for name in list(outputs) if name.startswith(CURVE_PREFIX)
    }
    fresh = [(i, run_) for i, run_ in enumerate(members) if run_.id not in engine.done]
    curves = {run_.id: {name: values[i] for name, values in curve_outputs.items()} for i, run_ in fresh}
    config, train_set = members[0].config, engine.splits[0]  # a chunk is one group: one Config
    costs = {"num_params": train_lib.num_params(config, tuple(train_set.X.shape[1:])),
             "config_steps": perf.steps_per_run(config, len(train_set.y))}
    engine.append([_row(run_, outputs, i, seconds, costs) for i, run_ in fresh], curves if curve_outputs else None)
    engine.report(label, (number, engine.groups, chunk_number + 1, num_chunks))
