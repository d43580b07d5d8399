"""Reading a sweep's rows: ``Results`` (leaderboard, seed statistics, ``zoom``, CSV); a row's Config, HParams, key."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt import tasks as tasks_lib
from deepopt.sweep import pareto
from deepopt.sweep.model_based import (
    import_optuna, optuna_distributions, parameter_name, quiet_optuna, study_directions, to_parameters,
)
from deepopt.sweep.space import Choice, OneMinusLogUniform, Uniform, _check_count, unread_fields
from deepopt.sweep.store import _canonical

if TYPE_CHECKING:
    from deepopt.diagnostics import Diagnosis


LOWER_IS_BETTER = ("final_cost",)  # and any metric named *cost; accuracies: higher is better


def direction(metric: str, directions: Mapping[str, str] | None = None) -> str:
    """``"minimize"`` or ``"maximize"``: ``directions[metric]`` (a task's, ``Task.row_directions``) when it names it;
    else ``"minimize"`` for a cost (``LOWER_IS_BETTER`` or a name ending in ``cost``), ``"maximize"`` for the rest."""
    if directions and metric in directions:
        return directions[metric]
    return "minimize" if metric in LOWER_IS_BETTER or metric.endswith("cost") else "maximize"


def seed_mean(values: Sequence[Any]) -> float | None:
    """The mean of a config's per-seed values, or None when one is missing or not finite (a failed trial)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite and len(finite) == len(values) else None


def _stats(values: Sequence[Any]) -> dict[str, float | None]:
    """Mean, sample standard deviation (0 for one value), min and max over seeds, ignoring nulls; None when all are null."""
    array = np.asarray([v for v in values if v is not None], np.float64)
    if array.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def stack_curves(curves: Mapping[str, Mapping[str, np.ndarray]], run_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The curves of runs ``run_ids`` (at least one) stacked along a first axis: ``{metric: (runs, epochs)}``."""
    return {name: np.stack([curves[i][name] for i in run_ids]) for name in curves[run_ids[0]]}


@dataclasses.dataclass
class Results:
    """A sweep's rows (one per run, in plan order) and what to read from them.

    Attributes:
      rows: JSON-able dicts: ``id``, ``config_id`` (v2 ids, see ``store``; a resumed v1 row is given
        them), ``config_index``, ``seed``, ``key``, ``config`` (every Config field), ``hparams``
        (every HParams field), the metrics, ``seconds``.
      space: the search space the rows were sampled from (for ``zoom``).
      metric: the row field that ranks configs, in its ``direction``.
      stats: bookkeeping of the call (groups, chunks, compilations, devices, seconds, runs computed).
      curves: ``{run id: {"cost", "dev_<primary>", "dev_cost": (epochs,) float32}}`` with
        ``curves=True`` (``dev_accuracy`` for classification; ``curves_of`` stacks one config's seeds).
      history: the adaptive searches' every row (each rung or generation of each run, in the order
        trained); ``rows`` then holds each run's last one. Empty for ``sweep.run``.
      directions: ``{row field: "maximize" | "minimize"}`` of the task's metrics
        (``Task.row_directions``); a field not named here: costs are minimized, the rest maximized.
      objectives: ``{row field: "max" | "min"}`` ranked together (``Options.objectives``; empty:
        ``metric`` alone). With two or more, ``best`` ranks by Pareto rank, then crowding distance.
    """

    rows: list[dict[str, Any]]
    space: dict[str, Any]
    metric: str = "dev_accuracy"
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    curves: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    directions: dict[str, str] = dataclasses.field(default_factory=dict)
    objectives: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def config_steps(self) -> int | None:
        """The updates the search computed: runs × epochs trained × mini-batches per epoch (padding not counted)."""
        value = self.stats.get("config_steps")
        return None if value is None else int(value)

    @property
    def seconds(self) -> float | None:
        """Wall time of the call that made these results, in seconds."""
        value = self.stats.get("seconds")
        return None if value is None else float(value)

    def curves_of(self, config_id: str) -> dict[str, np.ndarray]:
        """One config's learning curves over its seeds: ``{metric: (seeds, epochs)}`` (``sweep.run(curves=True)``).

        Metrics: ``cost`` (training cost per epoch), ``dev_<primary>`` (``dev_accuracy``), ``dev_cost``. Seeds without
        recorded curves are left out; a config with none raises a ``KeyError``.
        """
        ids = self.curve_run_ids().get(config_id)
        if not ids:
            raise KeyError(f"no learning curves recorded for config {config_id!r}: run the sweep with curves=True")
        return stack_curves(self.curves, ids)

    def curve_run_ids(self) -> dict[str, list[str]]:
        """``{config id: [run id, ...]}`` of the runs with recorded curves, in row order, in one pass over the rows."""
        ids: dict[str, list[str]] = {}
        for row in self.rows:
            if row["id"] in self.curves:
                ids.setdefault(row["config_id"], []).append(row["id"])
        return ids

    def metric_names(self) -> list[str]:
        """The numeric per-run fields (accuracies, costs, epochs), in row order."""
        skip = {"id", "config_id", "config_index", "seed", "key", "config", "hparams", "diverged", "seconds",
                "run_id", "stage", "method", "parent", "schedule"}
        names: dict[str, None] = {}  # ordered, with O(1) membership
        for row in self.rows:
            for n, v in row.items():
                if n not in skip and n not in names and (v is None or isinstance(v, (int, float))):
                    names[n] = None
        return list(names)

    def _check_metric(self) -> None:
        """Refuse a ``metric`` the rows do not have, or have no value of, instead of ranking by nothing."""
        if not isinstance(self.metric, str):
            raise TypeError(f"Results.metric must be a row field name (str), got {self.metric!r}")
        if not self.rows:
            return
        names = self.metric_names()
        if self.metric not in names:
            raise ValueError(f"Results.metric is {self.metric!r}, which the rows do not have; their metrics: {names}")
        if all(row.get(self.metric) is None for row in self.rows) and not all(row.get("diverged") for row in self.rows):
            raise ValueError(
                f"Results.metric is {self.metric!r}, but no row has a value of it (test_accuracy needs a test set); "
                f"metrics with values: {[n for n in names if any(r.get(n) is not None for r in self.rows)]}"
            )

    def _check_space_fits_rows(self) -> None:
        """``space`` must be one the rows could be sampled from: every searched field in every row, inside its range.

        ``zoom`` and ``boundary_warnings`` read positions in the space's ranges; rows from another
        space would give a narrowed space or warnings about ranges that were never searched.
        """
        for name, value in self.space.items():
            if not isinstance(value, (Uniform, Choice)):
                continue
            allowed = {_canonical(v) for v in value.values} if isinstance(value, Choice) else None
            for row in self.rows:
                fields = row["config"] | row["hparams"]
                if name not in fields:
                    raise ValueError(f"Results.space searches {name!r}, which row {row['id']!r} does not record")
                got = fields[name]
                if allowed is not None:
                    inside = _canonical(got) in allowed
                else:
                    lo, hi = value.value_bounds
                    slack = 1e-9 * max(abs(lo), abs(hi))
                    inside = isinstance(got, (int, float)) and lo - slack <= got <= hi + slack
                if not inside:
                    raise ValueError(
                        f"Results.space[{name!r}] is {value!r}, but row {row['id']!r} has {name}={got!r}: "
                        "the rows were not sampled from this space (give the space the sweep ran with)"
                    )

    def by_config(self) -> list[dict[str, Any]]:
        r"""Mean and spread over seeds, one entry per config: ``{metric: {mean, std, min, max}}`` plus its choices.

        ``std`` is the sample standard deviation :math:`\sqrt{\frac{1}{S-1}\sum_s (x_s - \bar x)^2}` over the
        ``seeds`` (``S``) values of each config (0 with one seed).
        """
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            grouped.setdefault(row["config_id"], []).append(row)
        metrics = self.metric_names()  # once: it reads every row
        entries = []
        for config_id, rows in grouped.items():
            first = rows[0]
            choices = {name: (first["config"] | first["hparams"])[name] for name in self.space}
            entry = {
                "config_id": config_id,
                "config_index": first["config_index"],
                "choices": choices,
                "config": first["config"],
                "hparams": first["hparams"],
                "seeds": len(rows),
                "diverged": sum(bool(r["diverged"]) for r in rows),
            }
            entry.update({name: _stats([r.get(name) for r in rows]) for name in metrics})
            entries.append(entry)
        return entries

    def pareto_ranked(self, objectives: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """``by_config`` with each entry's ``objectives`` (seed means), ``pareto_rank`` and ``crowding_distance``.

        ``objectives``: ``{field: "max" | "min"}`` (default: the search's ``objectives``). Rank 0 is the
        Pareto front (``pareto.pareto_ranks``); a missing mean (a diverged seed's metric) is the worst
        value; ``seconds`` is the mean over seeds of each run's training seconds.
        """
        objectives = dict(self.objectives if objectives is None else objectives)
        if not objectives:
            raise ValueError("no objectives: run the search with objectives={field: 'max' | 'min', ...} "
                             "or pass objectives=... here")
        pareto.check_senses(list(objectives.values()), "objectives")
        known = set(self.metric_names()) | {"seconds"}
        for name in objectives:
            if name not in known:
                raise ValueError(f"objective {name!r} is not a field of these rows; their fields: {sorted(known)}")
        entries = self.by_config()
        seconds: dict[str, list[float]] = {}
        for row in self.rows:
            if row.get("seconds") is not None:
                seconds.setdefault(row["config_id"], []).append(float(row["seconds"]))

        def mean(entry: dict[str, Any], name: str) -> float:
            if name == "seconds":
                values = seconds.get(entry["config_id"])
                return float(np.mean(values)) if values else np.nan
            value = (entry.get(name) or {}).get("mean")
            return np.nan if value is None else float(value)

        points = np.asarray([[mean(entry, name) for name in objectives] for entry in entries], np.float64)
        points = points.reshape(len(entries), len(objectives))
        senses = list(objectives.values())
        ranks = pareto.pareto_ranks(points, senses)
        crowding = pareto.crowding_distances(points, senses, ranks)
        for entry, point, rank, distance in zip(entries, points, ranks, crowding):
            entry["objectives"] = {name: (None if np.isnan(v) else float(v)) for name, v in zip(objectives, point)}
            entry["pareto_rank"], entry["crowding_distance"] = int(rank), float(distance)
        return entries

    def pareto(self, objectives: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The non-dominated configs on seed means of the ``objectives`` (``pareto_ranked``'s rank 0), best first
        by the first objective.

        Configs with a diverged seed are left out when any config has none. Each entry carries its
        ``objectives`` values and ``crowding_distance``.
        """
        objectives = dict(self.objectives if objectives is None else objectives)
        diverged = {row["config_id"] for row in self.rows if row.get("diverged")}
        kept = [row for row in self.rows if row["config_id"] not in diverged]
        ranked = dataclasses.replace(self, rows=kept if kept else self.rows).pareto_ranked(objectives)
        first, sense = next(iter(objectives.items()))  # pareto_ranked refused empty objectives
        sign = -1.0 if sense == "max" else 1.0
        front = [entry for entry in ranked if entry["pareto_rank"] == 0]
        return sorted(front, key=lambda e: (e["objectives"][first] is None, sign * (e["objectives"][first] or 0.0)))

    def best(self, k: int = 10) -> list[dict[str, Any]]:
        """The leaderboard: the top ``k`` configs by the seed-mean ``metric`` (ties: smaller spread over seeds first).

        A config with a diverged seed ranks below every config without one. In an adaptive search
        (rows with ``epochs_trained``), configs trained to the full budget rank ahead of those cut early.
        With two or more ``objectives``: by Pareto rank, then the larger crowding distance, then ``metric``.
        """
        _check_count("k", k)
        self._check_metric()
        by_pareto = len(self.objectives) >= 2
        sign = 1.0 if direction(self.metric, self.directions) == "minimize" else -1.0
        trained = [row["epochs_trained"] for row in self.rows if row.get("epochs_trained") is not None]
        full_budget = max(trained) if trained else None

        def rank(entry: dict[str, Any]) -> tuple:
            stats = entry.get(self.metric, {"mean": None, "std": None})
            missing = stats["mean"] is None
            epochs = entry.get("epochs_trained", {}).get("min") if full_budget is not None else None
            cut_early = full_budget is not None and (epochs is None or epochs < full_budget)
            # Several objectives: Pareto rank and crowding come before the metric, which then breaks ties alone.
            trade = (entry["pareto_rank"], -entry["crowding_distance"]) if by_pareto else ()
            spread = () if by_pareto else (stats["std"] or 0.0,)
            return (entry["diverged"] > 0, cut_early, *trade, missing, 0.0 if missing else sign * stats["mean"],
                    *spread)

        return sorted(self.pareto_ranked() if by_pareto else self.by_config(), key=rank)[:k]

    def zoom(self, k: int = 8, margin: float = 0.25) -> dict[str, Any]:
        """A narrower space around the top ``k`` configs (coarse to fine).

        Each continuous range shrinks to the span of the top ``k`` values in its own scale
        (log for ``log_uniform``, ``log(1 - β)`` for ``one_minus_log_uniform``), widened by
        ``margin`` × that span on each side (10% of the old range when the span is 0) and kept
        inside the old range; a ``choice``/``grid`` keeps the values the top ``k`` use. A searched
        field that no config of the narrowed space reads (``space.unread_fields``: momentum's β
        once only Adam is left) is left out, as ``sweep.run`` would refuse it.
        """
        if not self.rows:
            raise ValueError("zoom needs rows; the sweep has none")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0 (a fraction of the top configs' span), got {margin!r}")
        self._check_space_fits_rows()
        top = [e for e in self.best(k) if e["diverged"] == 0] or self.best(k)
        narrowed: dict[str, Any] = {}
        for name, value in self.space.items():
            used = [entry["choices"][name] for entry in top]
            if isinstance(value, Choice):
                kept = [v for v in value.values if _canonical(v) in {_canonical(u) for u in used}]
                narrowed[name] = type(value)(kept)
            elif isinstance(value, Uniform):
                scaled = value.to_scale(np.asarray(used, np.float64))
                old_lo, old_hi = value.scaled_bounds
                span = float(scaled.max() - scaled.min())
                pad = margin * span if span > 0 else 0.1 * (old_hi - old_lo)
                lo, hi = max(old_lo, float(scaled.min()) - pad), min(old_hi, float(scaled.max()) + pad)
                narrowed[name] = value.between(lo, hi)
            else:
                narrowed[name] = value
        for name in unread_fields(narrowed, top[0]["config"]):  # momentum's β once only Adam is left
            del narrowed[name]
        return narrowed

    def boundary_warnings(self, k: int = 5, margin: float = 0.1) -> list[BoundaryWarning]:
        r"""Ranges to widen: searched fields whose best configs sit near an edge (the tuning playbook's check).

        For each continuous field, the position of a config in its range is measured in the
        distribution's own scale (log for ``log_uniform``, :math:`\log(1-\beta)` for
        ``one_minus_log_uniform``): :math:`p = (t - t_{lo}) / (t_{hi} - t_{lo})`. A field gets a
        warning when the best config, or at least half of the top ``k``, lie within ``margin`` of
        an edge; the warning says which end to move, in the field's own values.
        """
        _check_count("k", k)
        if not 0 < margin < 0.5:
            raise ValueError(f"margin must be in (0, 0.5), got {margin!r}")
        self._check_space_fits_rows()
        top = [e for e in self.best(k) if e["diverged"] == 0]
        warnings = []
        for name, value in self.space.items():
            if not isinstance(value, Uniform) or not top:
                continue
            lo, hi = value.scaled_bounds
            positions = (value.to_scale(np.asarray([e["choices"][name] for e in top], np.float64)) - lo) / (hi - lo)
            # "high" in the field's values: the upper end of the scale, except for 1 - β, whose scale runs downwards
            decreasing = isinstance(value, OneMinusLogUniform)
            for side, near in (("low", positions <= margin), ("high", positions >= 1 - margin)):
                if near[0] or 2 * int(near.sum()) >= len(top):
                    value_side = {"low": "high", "high": "low"}[side] if decreasing else side
                    low_value, high_value = value.value_bounds
                    bound = high_value if value_side == "high" else low_value
                    warnings.append(BoundaryWarning(name, value_side, int(near.sum()), len(top),
                                                    float(top[0]["choices"][name]), float(bound)))
        return warnings

    def importance(self, *, evaluator: Any = None, seed: int = 0) -> dict[str, float]:
        r"""Which searched fields explain the metric: ``{field: importance}``, largest first, summing to 1.

        Each config is one observation, its seed-mean ``metric`` (configs without a finite one are
        left out), its values in the coordinates of ``model_based.optuna_distributions`` (log for
        ``log_uniform``, :math:`\log(1-\beta)` for ``one_minus_log_uniform``, categories for a
        choice). The default evaluator is Optuna's fANOVA (``FanovaImportanceEvaluator(seed=seed)``:
        the share of the variance of a random forest's prediction that each field explains on its
        own); any ``optuna.importance`` evaluator can be given. A field with one value gets 0.
        Needs the ``optuna`` extra (optuna, and scikit-learn for fANOVA) and at least two configs
        with a finite metric.
        """
        self._check_metric()
        optuna = import_optuna()
        if evaluator is None:
            try:
                import sklearn  # noqa: F401  (what Optuna's fANOVA evaluator imports on its first use)
            except ImportError:
                raise ImportError("Results.importance's default evaluator (Optuna's fANOVA) needs scikit-learn: "
                                  "pip install -e '.[optuna]' (or pip install scikit-learn)") from None
        searched = [name for name, value in self.space.items() if isinstance(value, (Uniform, Choice))]
        if not searched:
            raise ValueError("importance needs a space with searched fields (distributions); this one has none")
        distributions = optuna_distributions(self.space)
        observed = [e for e in self.by_config()
                    if (e.get(self.metric) or {}).get("mean") is not None and math.isfinite(e[self.metric]["mean"])]
        if len(observed) < 2:
            raise ValueError(f"importance needs at least two configs with a finite {self.metric}, got {len(observed)}")
        with quiet_optuna(optuna):
            study = optuna.create_study(direction=direction(self.metric, self.directions))
            for entry in observed:
                study.add_trial(optuna.trial.create_trial(
                    params=to_parameters(self.space, entry["choices"]), distributions=distributions,
                    value=float(entry[self.metric]["mean"]),
                ))
            if evaluator is None:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
        by_field = {name: float(scores.get(parameter_name(name, self.space[name]), 0.0)) for name in searched}
        return dict(sorted(by_field.items(), key=lambda item: -item[1]))

    def to_optuna(self, storage: str = "sqlite:///optuna.db", study_name: str | None = None) -> Any:
        """Write every config as a completed Optuna trial into ``storage`` (an RDB URL); returns the ``optuna.Study``.

        The study's directions are the ``objectives`` (else ``metric``'s); each trial holds the
        config's searched parameters with their distributions (``optuna_distributions``), its
        objective values (seed means; a config with a missing one is a FAIL trial), its learning
        curve as intermediate values (the seed-mean ``metric`` per epoch from recorded curves, or per
        rung from an adaptive search's history) and, as user attributes, its ``config_id``, seeds,
        diverged seeds and every metric's seed mean. Open it with ``optuna-dashboard <storage>``.
        A study of that name already in the storage is refused (Optuna's ``DuplicatedStudyError``).
        """
        optuna = import_optuna()
        objectives = dict(self.objectives) or {
            self.metric: "min" if direction(self.metric, self.directions) == "minimize" else "max"}
        entries = self.pareto_ranked(objectives)
        distributions = optuna_distributions(self.space)
        curves = self._intermediate_values()
        trials = []
        for entry in entries:
            values = [entry["objectives"][name] for name in objectives]
            complete = all(value is not None for value in values)
            attributes = {"config_id": entry["config_id"], "seeds": entry["seeds"], "diverged": entry["diverged"]}
            attributes |= {name: stats["mean"] for name, stats in entry.items()
                           if isinstance(stats, dict) and "mean" in stats}
            trials.append(optuna.trial.create_trial(
                params=to_parameters(self.space, entry["choices"]), distributions=distributions,
                values=values if complete else None, user_attrs=attributes,
                intermediate_values=curves.get(entry["config_id"], {}),
                state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.FAIL,
            ))
        with quiet_optuna(optuna):
            study = optuna.create_study(storage=storage, study_name=study_name, directions=study_directions(objectives))
            study.set_metric_names(list(objectives))
            study.add_trials(trials)
        return study

    def _intermediate_values(self) -> dict[str, dict[int, float]]:
        """``{config id: {step: seed-mean metric}}``: per epoch from curves, else per rung (``epochs_trained``) from history."""
        result: dict[str, dict[int, float]] = {}
        curve_name = self.metric if self.metric.startswith("dev_") else None
        for config_id, run_ids in self.curve_run_ids().items():
            stacked = stack_curves(self.curves, run_ids)
            if curve_name in stacked:
                means = np.nanmean(np.asarray(stacked[curve_name], np.float64), axis=0)
                result[config_id] = {epoch + 1: float(v) for epoch, v in enumerate(means) if np.isfinite(v)}
        by_rung: dict[str, dict[int, list[float]]] = {}
        for row in self.history:
            value, epochs = row.get(self.metric), row.get("epochs_trained")
            if row["config_id"] in result or value is None or epochs is None:
                continue
            by_rung.setdefault(row["config_id"], {}).setdefault(int(epochs), []).append(float(value))
        for config_id, steps in by_rung.items():
            result[config_id] = {step: float(np.mean(values)) for step, values in sorted(steps.items())}
        return result

    def to_pandas(self) -> Any:
        """A pandas ``DataFrame``: one row per run, its ids, seed, every Config and HParams field, the metrics.

        Lists (``layer_sizes``) become ``a-b-c`` text, as in ``to_csv``; PBT's ``schedule`` is left out.
        Needs pandas (``pip install -e '.[pandas]'``).
        """
        try:
            import pandas
        except ImportError:
            raise ImportError("Results.to_pandas needs pandas: pip install -e '.[pandas]' (or pip install pandas)") from None
        flat = self._flat_rows()
        return pandas.DataFrame(flat, columns=list(dict.fromkeys(name for row in flat for name in row)))

    def _flat_rows(self) -> list[dict[str, Any]]:
        """Every row as one flat record (Config and HParams fields as columns; lists as ``a-b-c``)."""

        def cell(value: Any) -> Any:
            return "-".join(map(str, value)) if isinstance(value, list) else value

        return [
            {
                name: cell(value)
                for name, value in {
                    "id": r["id"],
                    "config_id": r["config_id"],
                    "config_index": r["config_index"],
                    "seed": r["seed"],
                    **r["config"],
                    **r["hparams"],
                    **{n: v for n, v in r.items() if n not in ("config", "hparams", "key", "schedule")},
                }.items()
            }
            for r in self.rows
        ]

    def bias_variance(self, bayes_error: float = 0.0, *, tolerance: float = 0.02) -> Diagnosis:
        """``diagnostics.bias_variance`` of the best config.

        Train error ``1 - train_accuracy`` and dev error ``1 - dev_accuracy``, means over its seeds.
        A classification diagnosis: error rates against a Bayes error. Other tasks are refused
        (compare ``train_<metric>`` and ``dev_<metric>`` of ``best()`` against what you know of
        the noise instead).
        """
        from deepopt import diagnostics  # reads results; the sweep itself does not need it

        tasks_seen = sorted({str(row["config"].get("task", "classification")) for row in self.rows})
        if tasks_seen and tasks_seen != ["classification"]:
            raise ValueError(
                f"bias_variance compares classification error rates (1 - accuracy) with a Bayes error; these rows are "
                f"task {', '.join(tasks_seen)}: compare train and dev metrics of best() instead"
            )
        winner = self.best(1)[0]
        train_accuracy, dev_accuracy = winner["train_accuracy"]["mean"], winner.get("dev_accuracy", {}).get("mean")
        if dev_accuracy is None:
            raise ValueError("bias_variance needs dev accuracies: run the sweep with dev data")
        return diagnostics.bias_variance(1.0 - train_accuracy, 1.0 - dev_accuracy, bayes_error, tolerance=tolerance)

    def to_csv(self, path: str | os.PathLike) -> None:
        """One line per run: id, seed, every Config and HParams field (lists as ``a-b-c``), the metrics."""
        flat = self._flat_rows()
        header = list(dict.fromkeys(name for row in flat for name in row))
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, header)
            writer.writeheader()
            writer.writerows({name: "" if row.get(name) is None else row.get(name) for name in header} for row in flat)


class BoundaryWarning(NamedTuple):
    """A searched range to widen: the best configs of ``field`` sit near its ``side`` ("low" or "high") end."""

    field: str
    side: str
    near: int  # how many of the top configs lie within the margin of that end
    top: int
    best: float  # the best config's value
    bound: float  # the end of the range it is near

    def __str__(self) -> str:
        move = "raise its upper end" if self.side == "high" else "lower its lower end"
        return (f"{self.field}: {self.near} of the top {self.top} configs (the best at {self.best:.4g}) lie near the "
                f"{self.side} end ({self.bound:.4g}) of the searched range; widen it: {move}")


def config_of(row: Mapping[str, Any], model: Any = None, task: Any = None) -> train_lib.Config:
    """The ``train.Config`` of a row; a row trained with ``Config.model`` records only its description: pass ``model``.

    A row records its task by name: a built-in one (``tasks.by_name``) is restored; your own ``Task``
    is passed as ``task`` (its name must match the row's).
    """
    fields = {name: tuple(v) if isinstance(v, list) else v for name, v in row["config"].items()}
    recorded_task = fields.pop("task", "classification")
    if task is not None:
        if task.describe() != recorded_task:
            raise ValueError(f"the row was trained with task {recorded_task!r}; got task {task.describe()!r}")
        fields["task"] = task
    elif recorded_task in tasks_lib.BUILT_IN:
        fields["task"] = tasks_lib.by_name(recorded_task)
    else:
        raise ValueError(f"the row was trained with your own task {recorded_task!r}; pass that Task as task=")
    recorded = fields.pop("model", None)
    if recorded is not None or model is not None:
        from deepopt import modules  # the description of a module, as rows record it

        if model is None or modules.describe(model) != recorded:
            got = "none" if model is None else modules.describe(model)
            raise ValueError(f"the row was trained with Config.model {recorded}; pass that module as model=, got {got}")
        fields["model"] = model
    return train_lib.Config(**fields)


def hparams_of(row: Mapping[str, Any]) -> train_lib.HParams:
    """The ``train.HParams`` of a row (the sampled float64 values)."""
    return train_lib.HParams(**row["hparams"])


def key_of(row: Mapping[str, Any], impl: str | None = None) -> jax.Array:
    """The PRNG key a row trained with: ``train.fit(config_of(row), hparams_of(row), key_of(row), ...)`` repeats it."""
    return jax.random.wrap_key_data(jnp.asarray(row["key"], jnp.uint32), impl=impl)


def retrain(
    row: Mapping[str, Any], train: data_lib.Dataset, dev: data_lib.Dataset | None = None, *, model: Any = None,
    task: Any = None,
) -> train_lib.TrainState:
    """Train the run of ``row`` again from scratch on ``train`` (train plus dev, for the honest protocol).

    Its key, Config and HParams come from the row (``key_of``, ``config_of``, ``hparams_of``); it
    trains ``epochs_trained`` epochs (an adaptive search's row) or the Config's. A PBT row is
    retrained by its ``schedule``: one ``advance`` per segment, with that segment's
    hyperparameters. With early stopping and no ``dev`` (train plus dev leaves none to stop on), it
    trains without early stopping for the epochs the row's run kept (``best_epoch + 1``).
    """
    config = config_of(row, model, task)
    base = hparams_of(row)
    epochs = int(row.get("epochs_trained") or config.epochs)
    if config.early_stopping is not None and dev is None:
        best = row.get("best_epoch")
        epochs = min(epochs, int(best) + 1) if best is not None and best >= 0 else epochs
        config = dataclasses.replace(config, early_stopping=None)
    state = train_lib.init_state(config, base, key_of(row), train)
    segments = row.get("schedule") or [{"from_epoch": 0, "to_epoch": epochs, "hparams": {}}]
    for segment in segments:
        length = min(segment["to_epoch"], epochs) - segment["from_epoch"]
        if length > 0:
            hp = base._replace(**segment["hparams"])
            state, _ = train_lib.advance(config, hp, state, train, dev, epochs=length)
    return state