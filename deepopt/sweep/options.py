"""``Options``: what every search shares (where its rows go, how it runs, what it ranks), one frozen dataclass.

A search takes ``options=Options(...)`` and, for convenience, the same fields as keyword arguments
(``seeds=2`` is ``options=Options(seeds=2)``; a keyword given beside ``options`` overrides its field).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deepopt import data as data_lib

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Options:
    """The options every search shares.

    Attributes:
      seeds: PRNG keys per config (mean and spread over seeds).
      metric: the row field that ranks configs, in the task's direction for it (None, the default:
        ``dev_<primary>``, the task's primary dev metric: ``dev_accuracy`` for classification,
        ``dev_mse`` for regression; a name ending in ``cost`` is minimized).
      sampler: ``"random"``, ``"quasi"``, ``"grid"``, ``"tpe"`` or an Optuna sampler instance.
      results_path: the JSON-lines file the rows go to (None: kept in memory only). Over several
        ``jax.distributed`` processes only process 0 writes it (and an adaptive search's states);
        every process is called with the same arguments and gets every row.
      resume: continue the search already in ``results_path`` (recompute only unfinished chunks)
        rather than start it again; never loses rows already written.
      test: a test split, measured for every row (``test_<metric>``: ``test_accuracy``); never used to rank.
      progress: called after each chunk with a progress record (``print`` prints a line).
      devices: the devices to shard over (None: every device, of every process).
      chunk_size: runs per chunk; ``"auto"``: the search's own choice; None: one chunk per group.
      concurrent_chunks: chunks of one group in flight at once (None: the CPU's cores per device).
      memory_budget_bytes: bytes per device a chunk may use (None: no limit).
      curves: record every run's per-epoch learning curves (None: when ``tensorboard_dir`` is given).
      tensorboard_dir: also write one TensorBoard run per config there.
      objectives: several objectives ranked together, ``{row field: "max" | "min"}``: any metric
        the search may rank by (``dev_accuracy``, ``test_mse``, ``final_cost``...) or a config's
        ``num_params`` (trainable parameters), ``config_steps`` (updates trained) or ``seconds``
        (training time per run). ``Results.pareto()`` returns their non-dominated configs and
        ``Results.best`` ranks by Pareto rank, then crowding distance. ``metric`` (None) becomes
        the first objective that is a metric.
    """

    seeds: int = 1
    metric: str | None = None
    sampler: Any = "random"
    results_path: str | os.PathLike | None = None
    resume: bool = True
    test: data_lib.Dataset | None = None
    progress: Callable[[Any], None] | None = None
    devices: Sequence[Any] | None = None
    chunk_size: int | str | None = AUTO
    concurrent_chunks: int | None = None
    memory_budget_bytes: int | None = None
    curves: bool | None = None
    tensorboard_dir: str | os.PathLike | None = None
    objectives: Mapping[str, str] | None = None


COST_OBJECTIVES = ("num_params", "config_steps", "seconds")  # per-config costs rows carry besides the metrics

FIELDS = tuple(field.name for field in dataclasses.fields(Options))


def metric_of(options: Options, task: Any) -> str:
    """The metric a search ranks by: ``options.metric``; when None, the first of ``options.objectives`` that is a
    metric (not one of ``COST_OBJECTIVES``), else ``dev_<primary>`` of the ``task``."""
    if options.metric is not None:
        return options.metric
    metrics = [name for name in (options.objectives or {}) if name not in COST_OBJECTIVES]
    return metrics[0] if metrics else f"dev_{task.primary}"


def check_objectives(objectives: Any, metrics: Sequence[str]) -> dict[str, str]:
    """``objectives`` as ``{field: "max" | "min"}``: fields among ``metrics`` (what the search may rank by) or ``COST_OBJECTIVES``.

    None gives ``{}`` (one metric, no Pareto ranking). Refused, naming the entry: not a mapping,
    empty, an unknown field, a direction other than ``"max"`` / ``"min"``.
    """
    if objectives is None:
        return {}
    if not isinstance(objectives, Mapping) or not objectives:
        raise TypeError(f"objectives must be a non-empty mapping {{field: 'max' | 'min'}}, got {objectives!r}")
    allowed = (*metrics, *COST_OBJECTIVES)
    checked = {}
    for name, sense in objectives.items():
        if name not in allowed:
            raise ValueError(f"objectives: {name!r} is not a field a search can rank by; choose among {list(allowed)}")
        if sense not in ("max", "min"):
            raise ValueError(f"objectives[{name!r}] must be 'max' or 'min', got {sense!r}")
        checked[name] = sense
    return checked


def resolve(where: str, options: Options | None, overrides: Mapping[str, Any]) -> Options:
    """``options`` (default ``Options()``) with the keyword ``overrides`` set; an unknown keyword is refused."""
    if options is None:
        options = Options()
    if not isinstance(options, Options):
        raise TypeError(f"{where}: options must be a deepopt.sweep.Options, got {type(options).__name__}")
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {unknown}; its options are {list(FIELDS)}")
    return dataclasses.replace(options, **overrides)


def refuse_unsupported(where: str, options: Options, unsupported: Sequence[str]) -> None:
    """Refuse any of ``unsupported`` set away from its default, naming it (before anything compiles)."""
    defaults = Options()
    for name in unsupported:
        if getattr(options, name) != getattr(defaults, name):
            raise ValueError(f"{where} does not support Options.{name} yet (got {getattr(options, name)!r}); "
                             f"leave it at {getattr(defaults, name)!r}")


ADAPTIVE_UNSUPPORTED = ("curves",)


def check_concurrent_chunks(value: Any) -> int | None:
    """``Options.concurrent_chunks``: a positive int or None (as many as the CPU's cores per device)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"concurrent_chunks must be a positive int or None (as many as the CPU's cores per device), "
                         f"got {value!r}")
    return value


def adaptive_arguments(where: str, options: Options) -> dict[str, Any]:
    """What the adaptive searches' engine takes of ``options`` (``tensorboard_dir`` is the caller's, after it).

    ``chunk_size="auto"`` is the engine's own choice (None there); the options it cannot honour yet
    (``ADAPTIVE_UNSUPPORTED``) are refused when set.
    """
    refuse_unsupported(where, options, ADAPTIVE_UNSUPPORTED)
    return {
        "seeds": options.seeds, "metric": options.metric, "results_path": options.results_path,
        "resume": options.resume, "progress": options.progress, "test": options.test, "sampler": options.sampler,
        "chunk_size": None if options.chunk_size == AUTO else options.chunk_size, "devices": options.devices,
        "concurrent_chunks": check_concurrent_chunks(options.concurrent_chunks),
        "memory_budget_bytes": check_memory_budget(options.memory_budget_bytes),
    }


def check_memory_budget(value: Any) -> int | None:
    """``Options.memory_budget_bytes``: a positive int (bytes per device) or None (no limit)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"memory_budget_bytes must be a positive int (bytes per device) or None, got {value!r}")
    return value
