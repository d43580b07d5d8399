"""Reopening a finished (or interrupted) search: ``load(path) -> Results`` from its files.

Every ``sweep.run`` and adaptive search that writes ``results.jsonl`` also keeps a record beside it,
``results.record.json``: one entry per call that wrote into the file, with its method, search
space, metric and, once the call returns, its ``Results.stats``. ``load`` reads the rows, the
record and the learning curves (``results.curves.jsonl``) back into the ``Results`` the calls
returned, so ranking, zooming, importances, boundary warnings, pandas and bias/variance work on
yesterday's search as on today's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from deepopt import modules
from deepopt.sweep import processes
from deepopt.sweep.analysis import Results
from deepopt.sweep.space import Choice, Grid, LogUniform, OneMinusLogUniform, Uniform
from deepopt.sweep.store import _resume, beside, curves_path, lock_results, read_curves, read_rows

RECORD_FORMAT = "deepopt.sweep results record"
RECORD_VERSION = 1
_DISTRIBUTIONS = {kind.KIND: kind for kind in (Uniform, LogUniform, OneMinusLogUniform)}
_CHOICES = {"choice": Choice, "grid": Grid}


def record_path(results_path: str | os.PathLike) -> str:
    """The record beside ``results_path``: ``results.jsonl`` -> ``results.record.json``."""
    return beside(results_path, ".record.json")


# ------------------------------------------------------------------------------ spaces as JSON


def _value_to_json(value: Any) -> Any:
    """A space value as JSON: tuples as lists, numpy scalars as numbers, a Flax module as its description."""
    if modules.is_module(value):
        return {"module": modules.describe(value)}  # what rows record as config["model"]
    if isinstance(value, (list, tuple)):
        return [_value_to_json(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return np.asarray(value).tolist()
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    raise TypeError(f"a search space value must be JSON-able, a tuple of such, or a Flax module; got {value!r}")


def _value_from_json(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_value_from_json(v) for v in value)
    if isinstance(value, dict):
        return value["module"]
    return value


def space_to_json(space: Mapping[str, Any]) -> dict[str, Any]:
    """``{field: {"distribution": kind, "lo", "hi"} | {"distribution": "choice"|"grid", "values"} | {"value"}}``."""
    encoded: dict[str, Any] = {}
    for name, value in space.items():
        if isinstance(value, Uniform):
            encoded[name] = {"distribution": value.KIND, "lo": value.lo, "hi": value.hi}
        elif isinstance(value, Choice):
            kind = "grid" if isinstance(value, Grid) else "choice"
            encoded[name] = {"distribution": kind, "values": [_value_to_json(v) for v in value.values]}
        else:
            encoded[name] = {"value": _value_to_json(value)}
    return encoded


def space_from_json(encoded: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``space_to_json`` (a Flax module comes back as its description, as rows record it)."""
    space: dict[str, Any] = {}
    for name, entry in encoded.items():
        kind = entry.get("distribution")
        if kind in _DISTRIBUTIONS:
            space[name] = _DISTRIBUTIONS[kind](entry["lo"], entry["hi"])
        elif kind in _CHOICES:
            space[name] = _CHOICES[kind]([_value_from_json(v) for v in entry["values"]])
        else:
            space[name] = _value_from_json(entry["value"])
    return space


def _widened(space: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """``space`` widened to hold ``other`` too: wider bounds, more choices (a zoomed round adds nothing)."""
    widened = dict(space)
    for name, value in other.items():
        mine = widened.get(name)
        if name not in widened:
            widened[name] = value
        elif isinstance(mine, Uniform) and type(value) is type(mine):
            widened[name] = type(mine)(min(mine.lo, value.lo), max(mine.hi, value.hi))
        elif isinstance(mine, Choice) and isinstance(value, Choice):
            widened[name] = type(mine)(list(mine.values) + [v for v in value.values if v not in mine.values])
        elif not isinstance(mine, (Uniform, Choice)) and not isinstance(value, (Uniform, Choice)) and mine != value:
            widened[name] = Choice([mine, value])
    return widened


# ------------------------------------------------------------------------------ the record


def _plain(value: Any) -> Any:
    """``value`` as JSON (numpy values as numbers, anything else unknown as its repr)."""
    return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist() if isinstance(v, (np.generic, np.ndarray))
                                 else repr(v)))


def _read_record(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            record = json.load(stream)
    except ValueError as error:
        raise ValueError(f"{path} is not a results record of deepopt ({error}); the file is damaged") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path} is not a results record of deepopt (no 'format': {RECORD_FORMAT!r})")
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"{path} is a results record of version {record.get('version')!r}; "
                         f"this deepopt reads version {RECORD_VERSION}")
    return record


def _write_record(path: str, calls: list[dict[str, Any]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as stream:
        json.dump({"format": RECORD_FORMAT, "version": RECORD_VERSION, "calls": calls}, stream, indent=1)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


class Hold:
    """One search call's hold on its results file (``writing``): the rows already there, and ``finish``."""

    def __init__(self, results_path: str | os.PathLike | None, call: Mapping[str, Any], writer: bool,
                 done: dict[str, dict[str, Any]]) -> None:
        self.results_path, self.call, self.writer, self.done = results_path, call, writer, done

    def finish(self, results: Results) -> Results:
        """Record that the call returned ``results`` (its stats and row ids), the lock still held; returns them."""
        if self.writer:
            record_call(self.results_path, self.call, fresh=False, results=results)
        return results


@contextlib.contextmanager
def writing(
    results_path: str | os.PathLike | None,
    call: Mapping[str, Any],
    *,
    resume: bool,
    ids: Iterable[str] | None = None,
    legacy: Mapping[str, Any] | None = None,
    manifest: tuple[str, Mapping[str, Any]] | None = None,
    fresh_files: Sequence[str] = (),
) -> Iterator[Hold]:
    """One search call's hold on its results file: the one place every search opens and closes it (process 0 writes).

    Holds the writer's lock (``lock_results``) for the call. With ``manifest`` (``(path, arguments)``,
    an adaptive search's), a resumed file must hold the same search (refused, naming what
    differs) and the manifest is written. Reads the rows already there (``store._resume``: the
    planned ``ids``, every row when None; ``legacy`` v1 rows; every process gets them) or, with
    ``resume=False``, empties the file and removes ``fresh_files`` (a states directory). Records the
    call's start (``record_call``). Yields a ``Hold``: ``done``, the rows read by id, and
    ``finish(results)``, which records the call's end before the lock is released.
    """
    writer = results_path is not None and processes.is_writer()
    with contextlib.ExitStack() as held:

        def open_file() -> dict[str, dict[str, Any]]:  # process 0: its rows, or its refusal, go to every process
            if writer:
                held.enter_context(lock_results(results_path))
                if manifest is not None:
                    _check_manifest(os.fspath(results_path), *manifest, resume)
            return _resume(results_path, ids, resume, legacy)

        done = processes.share(open_file)
        if writer:
            if not resume:
                for path in fresh_files:
                    shutil.rmtree(path, ignore_errors=True)
            if manifest is not None:
                _write_json_atomically(*manifest)
            record_call(results_path, call, fresh=not resume)
        yield Hold(results_path, call, writer, done)


def _check_manifest(results_path: str, manifest: str, arguments: Mapping[str, Any], resume: bool) -> None:
    """With ``resume``: the manifest beside ``results_path`` must record ``arguments`` (a file with rows needs one)."""
    if not resume:
        return
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as stream:
            before = json.load(stream)
        differ = sorted(name for name in set(before) | set(arguments)
                        if _comparable(before.get(name)) != _comparable(arguments.get(name)))
        if differ:
            raise ValueError(
                f"resume: {results_path} holds another search (its {', '.join(differ)} "
                f"{'differs' if len(differ) == 1 else 'differ'}: was "
                + "; ".join(f"{name}={before.get(name)!r}" for name in differ[:3])
                + "); use another results_path or resume=False"
            )
    elif os.path.exists(results_path) and os.path.getsize(results_path) > 0:
        raise ValueError(
            f"resume: {results_path} holds rows but no {os.path.basename(manifest)}: "
            "it was not written by an adaptive search; use another results_path or resume=False"
        )


def _write_json_atomically(path: str, value: Mapping[str, Any]) -> None:
    """``value`` as JSON at ``path``: written to a sibling, fsynced, renamed into place."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as stream:
        json.dump(value, stream, indent=1, sort_keys=True)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def _comparable(node: Any) -> Any:
    """``node`` (a call or a manifest's value) less what one written before tasks lacks: ``directions``, and a
    ``task`` that is ``"classification"`` (the default), so that such a search compares equal to itself now."""
    if isinstance(node, dict):
        return {key: _comparable(value) for key, value in node.items()
                if key != "directions" and not (key == "task" and value == "classification")}
    if isinstance(node, list):
        return [_comparable(item) for item in node]
    return node


def _call_identity(call: Mapping[str, Any]) -> str:
    """What identifies a recorded call, as canonical JSON: the call less its results (``stats``, ``finished``,
    ``row_ids``), made ``_comparable``: a resumed call replaces its own entry of an older record."""
    return json.dumps(_comparable({k: v for k, v in call.items() if k not in ("stats", "finished", "row_ids")}),
                      sort_keys=True)


def record_call(
    results_path: str | os.PathLike, call: Mapping[str, Any], *, fresh: bool, results: Results | None = None,
) -> None:
    """Record one call that writes into ``results_path``: at its start (``results`` None), then when it returns.

    ``call`` describes it (``method``, ``space`` as given, ``metric``, and what else identifies it);
    a call equal to a recorded one (a resumed call) replaces it, another is appended. ``fresh``: the
    call emptied the results file, so the record starts again from this call. ``results``: what the
    call returns; its ``stats`` and the ids of its ``rows``, in order, are recorded.
    """
    path = record_path(results_path)
    entry = _plain({**call, "space": space_to_json(call["space"])})
    calls = [] if fresh else list((_read_record(path) or {"calls": []})["calls"])
    identity = _call_identity(entry)
    calls = [c for c in calls if _call_identity(c) != identity]
    finished = {} if results is None else {"stats": _plain(dict(results.stats)), "row_ids": [r["id"] for r in results.rows]}
    calls.append({**entry, "finished": results is not None, "stats": None, "row_ids": None, **finished})
    _write_record(path, calls)


# ------------------------------------------------------------------------------ load


def _last_row_per_run(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's last row (the highest ``epochs_trained``), runs in config order, then seed order."""
    last: dict[str, dict[str, Any]] = {}
    for row in history:
        run = row.get("run_id", row["id"])
        if run not in last or row.get("epochs_trained", 0) >= last[run].get("epochs_trained", 0):
            last[run] = row
    first_seen = {run: position for position, run in enumerate(dict.fromkeys(r.get("run_id", r["id"]) for r in history))}
    return sorted(last.values(), key=lambda row: (row["config_index"], row["seed"],
                                                  first_seen[row.get("run_id", row["id"])]))


def load(path: str | os.PathLike) -> Results:
    """Reopen the results file ``path`` written by ``sweep.run`` or an adaptive search as ``Results``.

    ``rows``: each run's last row (every row of a ``sweep.run`` file, one call's or several's);
    ``history``: every row of an adaptive search (empty for ``sweep.run``, as it returns);
    ``space``: the first call's, widened to hold every later call's (a zoomed round adds nothing);
    ``metric``: the first call's; ``stats``: one call's own, or with several ``calls`` and their
    summed ``config_steps`` and ``seconds``; ``curves``: from ``results.curves.jsonl`` when recorded.
    Read only: a torn last row (a search killed while writing) is an error that says how to repair it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep.load: no results file at {path}")
    with open(path, "rb") as stream:
        content = stream.read()
    if content and not content.endswith(b"\n"):
        cut = content.rfind(b"\n") + 1
        raise ValueError(
            f"sweep.load: {path} ends in a torn row (bytes {cut}..{len(content)}: a search killed while writing); "
            "resume the search with resume=True (it cuts the torn row and recomputes it), "
            f"or cut the file at byte {cut}"
        )
    try:
        rows = read_rows(path)
    except ValueError as error:
        raise ValueError(f"sweep.load: {path} is not a results file of deepopt: {error}") from None
    record = _read_record(record_path(path))
    if record is None or not record.get("calls"):
        raise ValueError(
            f"sweep.load: {path} has no {os.path.basename(record_path(path))} beside it (it records the search space "
            "and metric): it was not written by sweep.run or an adaptive search of this deepopt version"
        )
    calls = record["calls"]
    adaptive = any("epochs_trained" in row and "stage" in row for row in rows)
    history = list(rows) if adaptive else []
    if all(call.get("row_ids") is not None for call in calls):  # every call returned: its rows in its order
        by_id = {row["id"]: row for row in rows}
        missing = [i for call in calls for i in call["row_ids"] if i not in by_id]
        if missing:
            raise ValueError(f"sweep.load: {record_path(path)} lists {len(missing)} row(s) that {path} lacks "
                             f"(the first: {missing[0]}): the two files are not of the same search")
        final = [by_id[i] for call in calls for i in call["row_ids"]]
    else:  # interrupted: the rows written so far
        final = _last_row_per_run(rows) if adaptive else list({row["id"]: row for row in rows}.values())
    space = space_from_json(calls[0]["space"])
    for call in calls[1:]:
        space = _widened(space, space_from_json(call["space"]))
    if len(calls) == 1:
        stats = dict(calls[0]["stats"] or {})
    else:
        recorded = [call["stats"] or {} for call in calls]
        stats = {"calls": recorded}
        for name in ("config_steps", "seconds"):
            values = [s.get(name) for s in recorded]
            stats[name] = None if any(v is None for v in values) else sum(values)
    stats["finished"] = all(call.get("finished") for call in calls)
    curves_file = curves_path(path)
    curves = read_curves(curves_file, [row["id"] for row in final]) if os.path.exists(curves_file) else {}
    return Results(rows=final, space=space, metric=calls[0]["metric"], stats=stats, curves=curves, history=history,
                   directions=calls[0].get("directions") or {}, objectives=calls[0].get("objectives") or {})
