r"""The median stopping rule (Golovin et al. 2017, Google Vizier) on runs that continue from their state.

Every config trains in stages of ``interval`` epochs, up to ``max_epochs``; after each stage
(checkpoint epoch :math:`s`) from ``grace_epochs`` on, a config is stopped when its best metric so
far is worse than the median, over the other configs still training, of their running averages:

.. math::
    \text{stop } t \iff \max_{s' \le s} y_t(s') < \operatorname{median}_{u \ne t} \frac{1}{|S_u|}\sum_{s' \in S_u} y_u(s')

(for a metric to maximize; reversed for a cost), where :math:`y_t(s)` is the seed-mean metric of
config :math:`t` at checkpoint :math:`s` and :math:`S_u` the checkpoints up to :math:`s`. The rule
needs at least ``MIN_TRIALS`` (3) others to compare with. A diverged config stops at once. Stopped
configs keep the rows they have; the rest train on from their state (one compiled program per
group and chunk shape), so a config that is never stopped ends exactly where training it straight
through ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt.sweep import options as options_lib
from deepopt.sweep.adaptive import Search, Trial, write_board
from deepopt.sweep.analysis import Results, direction, seed_mean
from deepopt.sweep.driver import Rows, Stage, drive
from deepopt.sweep.space import _check_count

MIN_TRIALS = 3  # others to compare with before the rule stops anyone (Ray Tune's min_samples_required)


def checkpoint_epochs(max_epochs: int, interval: int) -> list[int]:
    """The epochs the rule looks at: ``interval, 2·interval, ...`` and ``max_epochs`` last."""
    return [*range(interval, max_epochs, interval), max_epochs]


def stopped_by_rule(
    best: Mapping[int, float | None], running_average: Mapping[int, float | None], maximize: bool, min_trials: int
) -> list[int]:
    """The positions the median rule stops at one checkpoint, from each config's best-so-far and running average.

    A config whose values are missing (diverged, not finite) is stopped; the others are compared
    with the median of the finite running averages of every other config, when there are at least
    ``min_trials`` of those.
    """
    stopped = []
    for position, own_best in best.items():
        if own_best is None:
            stopped.append(position)
            continue
        others = [v for p, v in running_average.items() if p != position and v is not None]
        if len(others) < min_trials:
            continue
        median = float(np.median(np.asarray(others, np.float64)))
        if (own_best < median) if maximize else (own_best > median):
            stopped.append(position)
    return stopped


class MedianStopping:
    """The median stopping rule over ``trials`` (an ``Algorithm`` of ``driver``): it only decides.

    Stage ``i`` advances the trials still training to ``checkpoints[i]`` epochs; after it, from
    ``grace_epochs`` on and before the last checkpoint, ``stopped_by_rule`` stops configs (their
    states forgotten). ``stopped`` records ``{config_id: epoch}``.
    """

    def __init__(
        self, trials: Sequence[Trial], checkpoints: Sequence[int], grace_epochs: int, metric: str, maximize: bool
    ) -> None:
        self.trials, self.alive, self.checkpoints = list(trials), list(trials), list(checkpoints)
        self.grace_epochs, self.metric, self.maximize = grace_epochs, metric, maximize
        self.reports: dict[int, list[float | None]] = {trial.position: [] for trial in trials}
        self.stopped: dict[str, int] = {}
        self.index = 0

    def planned(self) -> list[tuple[int, int]]:
        return [(len(self.trials), epochs - (self.checkpoints[i - 1] if i else 0))
                for i, epochs in enumerate(self.checkpoints)]

    def next_stage(self, last: Rows) -> Stage | None:
        index, out = self.index, set()
        if index:  # the stage before has trained: report, then maybe stop
            trained = self.checkpoints[index - 1]
            for trial in self.alive:
                self.reports[trial.position].append(seed_mean([row.get(self.metric) for row in last[trial.position]]))
            if self.grace_epochs <= trained < self.checkpoints[-1]:
                out = set(stopped_by_rule(
                    {t.position: _best(self.reports[t.position], self.maximize) for t in self.alive},
                    {t.position: seed_mean(self.reports[t.position]) for t in self.alive}, self.maximize, MIN_TRIALS,
                ))
                self.stopped.update({t.config_id: trained for t in self.alive if t.position in out})
                self.alive = [t for t in self.alive if t.position not in out]
        if index == len(self.checkpoints) or not self.alive:
            return None
        self.index += 1
        target = self.checkpoints[index]
        return Stage(
            name=f"m{index}", trials=tuple(self.alive), epochs=self.planned()[index][1], fresh=index == 0,
            label=f"checkpoint {index} ({target} epochs)", fields={"checkpoint": index, "epochs_trained": target},
            forget=sorted(out), done_with=f"m{index - 1}" if index else None,
        )


def median_stopping(
    config: train_lib.Config,
    space: Mapping[str, Any],
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
    *,
    key: jax.Array,
    num_configs: int,
    max_epochs: int,
    interval: int,
    grace_epochs: int | None = None,
    hparams: train_lib.HParams | None = None,
    options: options_lib.Options | None = None,
    **option_fields: Any,
) -> Results:
    r"""The median stopping rule over ``num_configs`` configs of ``space``, checked every ``interval`` epochs.

    See the module docstring for the rule. ``grace_epochs``: the first checkpoint the rule applies
    at is the first at or after it (default: the second checkpoint, so that running averages hold
    two reports). ``options`` (or its fields as keywords: ``seeds``, ``metric``, ``sampler``,
    ``results_path``, ``resume``, ``test``, ``progress``, ``devices``, ``chunk_size``,
    ``tensorboard_dir``): as every search's, see ``sweep.Options``.

    Rows (one per config, seed and checkpoint it reached) carry ``checkpoint``, ``epochs_trained``
    and ``method``; ``Results.rows`` holds each run's last row (a stopped config's at the epoch it
    stopped), ``Results.history`` every row, ``stats["stopped"]`` ``{config_id: epoch}`` and
    ``stats["checkpoints"]`` the epochs looked at.
    """
    settings = options_lib.resolve("median_stopping", options, option_fields)
    options_lib.adaptive_arguments("median_stopping", settings)  # what the engine cannot honour, refused first
    num_configs = _check_count("num_configs", num_configs)
    max_epochs = _check_count("max_epochs", max_epochs)
    interval = _check_count("interval", interval)
    if interval > max_epochs:
        raise ValueError(f"interval must be <= max_epochs, got interval={interval}, max_epochs={max_epochs}")
    checkpoints = checkpoint_epochs(max_epochs, interval)
    if grace_epochs is None:
        grace_epochs = checkpoints[min(1, len(checkpoints) - 1)]
    grace_epochs = _check_count("grace_epochs", grace_epochs)
    search = Search.create(
        "median_stopping", config, space, train, dev, key=key, num_configs=num_configs, max_epochs=max_epochs,
        hparams=hparams, options=settings,
        arguments={"num_configs": num_configs, "max_epochs": max_epochs, "interval": interval,
                   "grace_epochs": grace_epochs, "min_trials": MIN_TRIALS},
    )
    rule = MedianStopping(search.trials, checkpoints, grace_epochs, search.metric,
                          direction(search.metric, search.directions) == "maximize")
    results = drive(search, rule, lambda: {"checkpoints": checkpoints, "grace_epochs": grace_epochs,
                                           "min_trials": MIN_TRIALS, "stopped": rule.stopped,
                                           "max_epochs": max_epochs})
    return write_board(settings.tensorboard_dir, results)


def _best(reports: Sequence[float | None], maximize: bool) -> float | None:
    if any(v is None or not math.isfinite(v) for v in reports):
        return None
    return max(reports) if maximize else min(reports)
