"""A sweep's results as TensorBoard runs: one run per config, for the HParams and Scalars dashboards.

``write_runs(directory, results)`` writes, for every config of ``results.by_config()``, one
subdirectory ``config-<index>-<first 8 characters of the config id>`` (``run_name``) holding one
event file with

- the HParams session of the config: its value of every field of ``results.space`` (numbers as
  floats, booleans as booleans, anything else as text: a list as ``2-8-1``, ``None`` as ``"None"``)
  and ``seeds``, the number of seeds it trained; the session ends with status success;
- ``final/<metric>``: the seed mean of every metric of ``results.metric_names()`` that has one
  (nulls, i.e. non-finite values, are left out, as in ``by_config``), at step = the epochs trained
  (the rows' ``epochs_trained`` when they have it, else the Config's ``epochs``), plus
  ``final/diverged_seeds`` (how many of its seeds diverged);
- ``curves/cost``, ``curves/dev_<primary>`` (``dev_accuracy``), ``curves/dev_cost``: the seed mean of each epoch's
  value at steps ``1..epochs``, when the sweep recorded curves (``sweep.run(..., curves=True)``);
  an epoch where some seed's value is not finite (a diverged or stopped seed) is left out.

``directory`` itself holds the experiment: one event file (its name ends ``.deepopt-hparams``) with
the HParams experiment summary, i.e. the columns: every field of the space with its type and domain
(an interval ``[lo, hi]`` in the field's own values for ``uniform``/``log_uniform``/
``one_minus_log_uniform``, the values for ``choice``/``grid``), ``seeds``, and the ``final/...``
metrics, the ranking metric (``results.metric``) first.

Writing is resumable: a config whose subdirectory already holds an event file is skipped, and the
experiment file is replaced by one that also keeps the columns and domains of the earlier one, so
a sweep resumed (or a second, zoomed round written into the same directory) adds every config
once. Each run is written into a hidden sibling directory and moved into place when complete, so
a killed call leaves no half-written run behind. One writer per directory at a time.

To look at it::

    tensorboard --logdir DIR        # then open the HParams tab (table, parallel coordinates)

(``--load_fast=false`` reads with TensorBoard's Python loader when its Rust data server is absent.)

Needs the ``tensorboard`` package (no TensorFlow): ``pip install -e '.[tensorboard]'``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import types
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from deepopt.sweep.analysis import Results, stack_curves
from deepopt.sweep.space import Choice, Uniform

EXPERIMENT_SUFFIX = ".deepopt-hparams"  # the file name ending of the experiment-level event file
PARTIAL_SUFFIX = ".deepopt-partial"  # hidden directories a run is written into before it is moved into place
FINAL_PREFIX = "final/"
CURVES_PREFIX = "curves/"
SEEDS = "seeds"  # the hyperparameter holding a config's seed count
DIVERGED = "diverged_seeds"  # final/diverged_seeds: how many of a config's seeds diverged


def _tensorboard() -> types.SimpleNamespace:
    """TensorBoard's TF-free pieces, imported on first use (an optional extra)."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ImportError(
            "deepopt.sweep.tensorboard_log needs tensorboard: pip install -e '.[tensorboard]' (or pip install tensorboard)"
        ) from None
    return types.SimpleNamespace(
        RawEventFileLoader=RawEventFileLoader,
        EventFileWriter=EventFileWriter,
        event_pb2=event_pb2,
        summary_pb2=summary_pb2,
        api_pb2=api_pb2,
        metadata=metadata,
        plugin_data_pb2=plugin_data_pb2,
    )


# ------------------------------------------------------------------------------ names and values


def run_name(entry: Mapping[str, Any]) -> str:
    """The run (subdirectory) of a ``Results.by_config()`` entry: ``config-<index, 4 digits>-<config id[:8]>``."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"entry must be a Results.by_config() entry (a dict), got {type(entry).__name__}")
    index, config_id = entry.get("config_index"), entry.get("config_id")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"entry needs a non-negative int 'config_index', got {index!r}")
    if not isinstance(config_id, str) or not config_id:
        raise ValueError(f"entry needs a non-empty str 'config_id', got {config_id!r}")
    return f"config-{int(index):04d}-{config_id[:8]}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _text(value: Any) -> str:
    """A value as the HParams dashboard's text: lists and tuples as ``a-b-c``, ``None`` as ``"None"``."""
    if isinstance(value, (list, tuple)):
        return "-".join(_text(v) for v in value)
    return str(value)


def _kind(spec: Any) -> str:
    """How a space field is shown: ``"interval"`` (continuous), ``"number"``, ``"bool"`` or ``"text"``."""
    if isinstance(spec, Uniform):
        return "interval"
    values = spec.values if isinstance(spec, Choice) else (spec,)
    if all(_is_bool(v) for v in values):
        return "bool"
    if all(_is_number(v) and math.isfinite(float(v)) for v in values):
        return "number"
    return "text"


def _encode(value: Any, kind: str) -> bool | float | str:
    """A field's value as a ``google.protobuf.Value`` payload of its kind (text when it does not fit)."""
    if kind == "bool" and _is_bool(value):
        return bool(value)
    if kind in ("interval", "number") and _is_number(value) and math.isfinite(float(value)):
        return float(value)
    return _text(value)


def _set_value(target: Any, value: bool | float | str) -> None:
    """Fill a ``google.protobuf.Value`` with a bool, number or string."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, float):
        target.number_value = value
    else:
        target.string_value = value


def _dataset_type(tb: types.SimpleNamespace, metric: str) -> int:
    if metric.startswith("train_") or metric == "final_cost":
        return tb.api_pb2.DATASET_TRAINING
    if metric.startswith("dev_"):
        return tb.api_pb2.DATASET_VALIDATION
    return tb.api_pb2.DATASET_UNKNOWN


# ------------------------------------------------------------------------------ summaries


def _hparams_value(tb: types.SimpleNamespace, tag: str, **data: Any) -> Any:
    """A summary value carrying ``HParamsPluginData(**data)`` under ``tag``, as the HParams plugin reads it."""
    content = tb.plugin_data_pb2.HParamsPluginData(version=tb.metadata.PLUGIN_DATA_VERSION, **data)
    plugin_data = tb.summary_pb2.SummaryMetadata.PluginData(
        plugin_name=tb.metadata.PLUGIN_NAME, content=content.SerializeToString()
    )
    return tb.summary_pb2.Summary.Value(
        tag=tag, metadata=tb.summary_pb2.SummaryMetadata(plugin_data=plugin_data), tensor=tb.metadata.NULL_TENSOR
    )


def _event(tb: types.SimpleNamespace, step: int, values: Iterable[Any]) -> Any:
    return tb.event_pb2.Event(wall_time=time.time(), step=step, summary=tb.summary_pb2.Summary(value=list(values)))


def _scalar(tb: types.SimpleNamespace, tag: str, value: float) -> Any:
    return tb.summary_pb2.Summary.Value(tag=tag, simple_value=value)


def _epochs(entry: Mapping[str, Any]) -> int:
    """The step of the final metrics: the epochs the config's runs trained."""
    trained = entry.get("epochs_trained")
    if isinstance(trained, Mapping) and trained.get("max") is not None:
        return int(trained["max"])
    epochs = entry.get("config", {}).get("epochs")
    return int(epochs) if _is_number(epochs) else 0


def _mean_curves(results: Results, run_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The seed mean of each recorded learning curve of a config's runs ``run_ids`` (``{}`` when none were recorded)."""
    if not run_ids:
        return {}
    stacked = stack_curves(results.curves, run_ids)
    return {name: np.mean(np.asarray(values, np.float64), axis=0) for name, values in stacked.items()}


def _run_events(
    tb: types.SimpleNamespace, results: Results, entry: Mapping[str, Any], metrics: list[str], curve_ids: Sequence[str]
) -> list[Any]:
    """The events of one config's run: session start, curves per epoch, final metrics, session end."""
    start = tb.plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, spec in results.space.items():
        _set_value(start.hparams[name], _encode(entry["choices"][name], _kind(spec)))
    start.hparams[SEEDS].number_value = float(entry["seeds"])
    events = [_event(tb, 0, [_hparams_value(tb, tb.metadata.SESSION_START_INFO_TAG, session_start_info=start)])]

    steps: dict[int, list[Any]] = {}
    for name, curve in _mean_curves(results, curve_ids).items():
        for epoch, value in enumerate(curve, start=1):
            if math.isfinite(value):
                steps.setdefault(epoch, []).append(_scalar(tb, CURVES_PREFIX + name, float(value)))
    final_step = _epochs(entry)
    finals = [
        _scalar(tb, FINAL_PREFIX + name, entry[name]["mean"])
        for name in metrics
        if isinstance(entry.get(name), Mapping)
        and entry[name]["mean"] is not None
        and math.isfinite(entry[name]["mean"])
    ]
    steps.setdefault(final_step, []).extend(finals + [_scalar(tb, FINAL_PREFIX + DIVERGED, float(entry["diverged"]))])
    events += [_event(tb, step, steps[step]) for step in sorted(steps)]

    end = tb.plugin_data_pb2.SessionEndInfo(status=tb.api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    events.append(_event(tb, max(steps), [_hparams_value(tb, tb.metadata.SESSION_END_INFO_TAG, session_end_info=end)]))
    return events


def _experiment(
    tb: types.SimpleNamespace, results: Results, entries: list[dict[str, Any]], metrics: list[str]
) -> Any:
    """The HParams experiment (the dashboard's columns) of ``results``: the space's fields, ``seeds``, the metrics."""
    api = tb.api_pb2
    infos = []
    for name, spec in results.space.items():
        kind = _kind(spec)
        info = api.HParamInfo(name=name)
        if kind == "interval":
            info.type = api.DATA_TYPE_FLOAT64
            info.domain_interval.min_value, info.domain_interval.max_value = spec.value_bounds
            info.differs = True
        else:
            values = list(dict.fromkeys(_encode(v, kind) for v in (spec.values if isinstance(spec, Choice) else (spec,))))
            info.type = {"bool": api.DATA_TYPE_BOOL, "number": api.DATA_TYPE_FLOAT64}.get(kind, api.DATA_TYPE_STRING)
            info.domain_discrete.extend(values)
            info.differs = len(values) > 1
        infos.append(info)
    seeds = [float(entry["seeds"]) for entry in entries] or [0.0]
    infos.append(
        api.HParamInfo(
            name=SEEDS,
            type=api.DATA_TYPE_FLOAT64,
            description="the number of seeds the config trained (the metrics are their mean)",
            domain_interval=api.Interval(min_value=min(seeds), max_value=max(seeds)),
            differs=len(set(seeds)) > 1,
        )
    )
    metric_infos = [
        api.MetricInfo(
            name=api.MetricName(group="", tag=FINAL_PREFIX + name),
            description=f"the seed mean of {name}",
            dataset_type=_dataset_type(tb, name),
        )
        for name in metrics
    ]
    metric_infos.append(
        api.MetricInfo(name=api.MetricName(group="", tag=FINAL_PREFIX + DIVERGED),
                       description="how many of the config's seeds diverged")
    )
    return api.Experiment(hparam_infos=infos, metric_infos=metric_infos)


def _merge(tb: types.SimpleNamespace, new: Any, old: Any) -> Any:
    """``new`` widened by ``old``: intervals spanning both, discrete values of both, old columns kept after new ones."""
    merged = tb.api_pb2.Experiment()
    merged.CopyFrom(new)
    by_name = {info.name: info for info in merged.hparam_infos}
    for info in old.hparam_infos:
        mine = by_name.get(info.name)
        if mine is None:
            merged.hparam_infos.add().CopyFrom(info)
        elif mine.type == info.type and mine.HasField("domain_interval") and info.HasField("domain_interval"):
            low = min(mine.domain_interval.min_value, info.domain_interval.min_value)
            high = max(mine.domain_interval.max_value, info.domain_interval.max_value)
            mine.domain_interval.min_value, mine.domain_interval.max_value = low, high
            mine.differs = mine.differs or info.differs or low < high
        elif mine.type == info.type and mine.HasField("domain_discrete") and info.HasField("domain_discrete"):
            known = {v.SerializeToString(deterministic=True) for v in mine.domain_discrete.values}
            for value in info.domain_discrete.values:
                if value.SerializeToString(deterministic=True) not in known:
                    mine.domain_discrete.values.add().CopyFrom(value)
            mine.differs = len(mine.domain_discrete.values) > 1
    tags = {metric.name.tag for metric in merged.metric_infos}
    for metric in old.metric_infos:
        if metric.name.tag not in tags:
            merged.metric_infos.add().CopyFrom(metric)
    return merged


# ------------------------------------------------------------------------------ files


def _has_event_file(path: str) -> bool:
    return os.path.isdir(path) and any("tfevents" in name for name in os.listdir(path))


def _experiment_files(directory: str) -> list[str]:
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if "tfevents" in name and name.endswith(EXPERIMENT_SUFFIX)
    )


def _read_experiments(tb: types.SimpleNamespace, paths: list[str]) -> list[Any]:
    """The HParams experiments held by earlier experiment files (a torn file gives what it holds)."""
    found = []
    for path in paths:
        for record in tb.RawEventFileLoader(path).Load():
            event = tb.event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.tag == tb.metadata.EXPERIMENT_TAG and value.metadata.plugin_data.plugin_name == tb.metadata.PLUGIN_NAME:
                    found.append(tb.metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content))
    return found


def _write_events(tb: types.SimpleNamespace, directory: str, target: str, prefix: str, events: list[Any],
                  suffix: str = "") -> str:
    """Write ``events`` to one event file in a hidden directory of ``directory``, then move it into ``target``.

    Returns the file's path in ``target``. The file is flushed, closed and fsynced before the move.
    """
    for name in os.listdir(directory):  # a call killed while writing this run left its partial directory
        if name.startswith(f".{prefix}.") and name.endswith(PARTIAL_SUFFIX):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    partial = tempfile.mkdtemp(prefix=f".{prefix}.", suffix=PARTIAL_SUFFIX, dir=directory)
    try:
        writer = tb.EventFileWriter(partial, filename_suffix=suffix)
        try:
            for event in events:
                writer.add_event(event)
            writer.flush()
        finally:
            writer.close()
        (name,) = os.listdir(partial)
        with open(os.path.join(partial, name), "rb") as stream:
            os.fsync(stream.fileno())
        os.makedirs(target, exist_ok=True)
        destination = os.path.join(target, name)
        os.replace(os.path.join(partial, name), destination)
        return destination
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _check_config_ids(config_ids: Any, known: list[str]) -> set[str] | None:
    if config_ids is None:
        return None
    if isinstance(config_ids, (str, bytes)) or not isinstance(config_ids, Collection):
        raise TypeError(f"config_ids must be a collection of config id strings (or None), got {config_ids!r}")
    wanted = list(config_ids)
    bad = [c for c in wanted if not isinstance(c, str)]
    if bad:
        raise TypeError(f"config_ids must hold config id strings, got {bad!r}")
    unknown = [c for c in dict.fromkeys(wanted) if c not in set(known)]
    if unknown:
        raise ValueError(f"config_ids has ids that are not configs of results: {unknown} (known: {known})")
    return set(wanted)


def write_runs(
    directory: str | os.PathLike, results: Results, config_ids: Collection[str] | None = None
) -> list[str]:
    """Write each config of ``results`` as a TensorBoard run under ``directory`` (see the module docstring).

    Args:
      directory: the log directory (``tensorboard --logdir directory``); created if missing.
      results: a sweep's ``Results``; learning curves are written when it has them (``curves=True``).
      config_ids: write only these configs (default: every config of ``results.by_config()``).

    Returns:
      The run subdirectories written by this call, in ``by_config`` order, as
      ``os.path.join(directory, run_name(entry))`` with ``directory`` as given (absolute only if it
      was). A config whose subdirectory already holds an event file is skipped and not returned, so
      calling again writes nothing twice. The experiment file in ``directory`` is replaced when its
      columns change (or it is missing): it then covers the earlier file's columns and these.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path (str or os.PathLike), got {type(directory).__name__}")
    if not isinstance(results, Results):
        raise TypeError(f"results must be a deepopt.sweep.Results, got {type(results).__name__}")
    root = os.fspath(directory)
    if isinstance(root, bytes) or not root:
        raise TypeError(f"directory must be a non-empty str path, got {directory!r}")
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"directory {root!r} exists and is not a directory")
    entries = results.by_config()
    wanted = _check_config_ids(config_ids, [entry["config_id"] for entry in entries])
    tb = _tensorboard()
    os.makedirs(root, exist_ok=True)

    names = results.metric_names()
    metrics = [n for n in names if any(isinstance(e.get(n), Mapping) and e[n]["mean"] is not None for e in entries)]
    if results.metric in metrics:
        metrics.remove(results.metric)
        metrics.insert(0, results.metric)

    curve_ids = results.curve_run_ids()  # one pass: curves_of per config would read every row each time
    written = []
    for entry in entries:
        if wanted is not None and entry["config_id"] not in wanted:
            continue
        name = run_name(entry)
        target = os.path.join(root, name)
        if os.path.exists(target) and not os.path.isdir(target):
            raise ValueError(f"directory {root!r} holds a file {name!r} where the run of config {entry['config_id']} goes")
        if _has_event_file(target):
            continue
        _write_events(tb, root, target, name, _run_events(tb, results, entry, metrics, curve_ids.get(entry["config_id"], [])))
        written.append(target)

    old_files = _experiment_files(root)
    olds = _read_experiments(tb, old_files)
    experiment = _experiment(tb, results, entries, metrics)
    for old in olds:
        experiment = _merge(tb, experiment, old)
    if len(old_files) == 1 and len(olds) == 1:
        olds[0].ClearField("time_created_secs")
        if olds[0] == experiment:
            return written  # the experiment file already says exactly this
    experiment.time_created_secs = time.time()
    summary = _hparams_value(tb, tb.metadata.EXPERIMENT_TAG, experiment=experiment)
    new_file = _write_events(tb, root, root, "experiment", [_event(tb, 0, [summary])], suffix=EXPERIMENT_SUFFIX)
    for path in old_files:
        if path != new_file:
            os.remove(path)
    return written
