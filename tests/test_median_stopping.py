"""The median stopping rule (Golovin et al. 2017): the rule itself, a whole search, its options, resume."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from adaptive_worker import ADAM, SPACE, tiny_data
from sweep_worker import assert_same_runs

from deepopt import sweep, train
from deepopt.sweep import median

MAX_EPOCHS, INTERVAL = 8, 2


def _search(**kwargs) -> sweep.Results:
    train_set, dev_set = tiny_data()
    return sweep.median_stopping(ADAM, SPACE, train_set, dev_set, key=jax.random.key(7), num_configs=8,
                                 max_epochs=MAX_EPOCHS, interval=INTERVAL, seeds=2, **kwargs)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[sweep.Results, object]:
    path = tmp_path_factory.mktemp("median") / "results.jsonl"
    return _search(results_path=path), path


def test_the_rule_stops_a_best_below_the_median_of_the_others_running_averages() -> None:
    best = {0: 0.9, 1: 0.6, 2: 0.7, 3: 0.8, 4: None}
    average = {0: 0.8, 1: 0.5, 2: 0.7, 3: 0.75, 4: None}
    # 1: others' averages 0.8, 0.7, 0.75 -> median 0.75 > 0.6; 2: 0.8, 0.5, 0.75 -> 0.75 > 0.7; 3: median 0.7 < 0.8
    assert median.stopped_by_rule(best, average, maximize=True, min_trials=3) == [1, 2, 4]
    assert median.stopped_by_rule(best, average, maximize=True, min_trials=4) == [4]  # too few others to judge
    cost_best = {0: 0.2, 1: 0.5, 2: 0.3}
    cost_average = {0: 0.3, 1: 0.6, 2: 0.35}
    assert median.stopped_by_rule(cost_best, cost_average, maximize=False, min_trials=2) == [1]  # 0.5 > median 0.325


def test_checkpoints_end_at_max_epochs() -> None:
    assert median.checkpoint_epochs(8, 2) == [2, 4, 6, 8]
    assert median.checkpoint_epochs(7, 3) == [3, 6, 7]
    assert median.checkpoint_epochs(5, 5) == [5]


def _seed_mean(rows, config_id, checkpoint):
    return float(np.mean([r["dev_accuracy"] for r in rows if r["config_id"] == config_id and r["checkpoint"] == checkpoint]))


def test_a_search_stops_exactly_the_configs_the_rule_names(searched) -> None:
    results, _ = searched
    history = results.history
    configs = sorted({r["config_id"] for r in history}, key=lambda c: next(r["config_index"] for r in history
                                                                            if r["config_id"] == c))
    assert len(configs) == 8 and results.stats["checkpoints"] == [2, 4, 6, 8]
    alive, expected = list(configs), {}
    for checkpoint, epoch in enumerate(results.stats["checkpoints"]):
        reports = {c: [_seed_mean(history, c, k) for k in range(checkpoint + 1)] for c in alive}
        if epoch >= results.stats["grace_epochs"] and epoch < MAX_EPOCHS:  # recomputed here from the rows alone
            for c in alive:
                others = [np.mean(reports[o]) for o in alive if o != c]
                if len(others) >= 3 and max(reports[c]) < np.median(others):
                    expected[c] = epoch
            alive = [c for c in alive if c not in expected]
    assert results.stats["stopped"] == expected and 0 < len(expected) < 8
    last_epoch = {r["config_id"]: r["epochs_trained"] for r in results.rows}
    assert all(last_epoch[c] == expected.get(c, MAX_EPOCHS) for c in configs)
    assert results.config_steps == sum(r["epochs_trained"] for r in results.rows) * 3  # 48 examples, batches of 16
    assert results.best(1)[0]["config_id"] not in expected  # ranked among the full-budget configs


def test_a_survivor_ends_where_training_it_straight_through_ends(searched) -> None:
    results, _ = searched
    train_set, dev_set = tiny_data()
    survivors = [r for r in results.rows if r["epochs_trained"] == MAX_EPOCHS][:2]
    straight = []
    for row in survivors:
        fitted = train.fit(sweep.config_of(row), sweep.hparams_of(row), sweep.key_of(row), train_set, dev_set)
        straight.append(dict(row, final_cost=float(fitted.final_cost), train_accuracy=float(fitted.train_accuracy),
                             dev_accuracy=float(fitted.dev_accuracy)))
    assert_same_runs(survivors, straight)


def test_resume_recomputes_nothing_and_load_reopens_it(searched) -> None:
    results, path = searched
    again = _search(results_path=path)  # Options.resume is True
    assert again.stats["runs_computed"] == 0 and again.stats["runs_resumed"] == len(results.history)
    assert sweep.load(path).rows == results.rows and sweep.load(path).history == results.history
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again.rows] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in results.rows]


def test_options_as_a_dataclass_or_as_keywords() -> None:
    train_set, dev_set = tiny_data()
    arguments = dict(key=jax.random.key(7), num_configs=4, max_epochs=4, interval=2)
    by_keywords = sweep.median_stopping(ADAM, SPACE, train_set, dev_set, seeds=2, **arguments)
    by_options = sweep.median_stopping(ADAM, SPACE, train_set, dev_set, options=sweep.Options(seeds=2), **arguments)
    overridden = sweep.median_stopping(ADAM, SPACE, train_set, dev_set, options=sweep.Options(seeds=3), seeds=2,
                                       **arguments)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(by_keywords.history) == strip(by_options.history) == strip(overridden.history)
    assert by_keywords.stats["seeds"] == 2


@pytest.mark.parametrize("arguments, error, message", [
    ({"seed": 2}, TypeError, r"unexpected keyword argument\(s\) \['seed'\]; its options are \['seeds'"),
    ({"curves": True}, ValueError, r"median_stopping does not support Options.curves yet \(got True\)"),
    ({"interval": 9}, ValueError, "interval must be <= max_epochs, got interval=9, max_epochs=8"),
    ({"grace_epochs": 0}, ValueError, "grace_epochs must be a positive int"),
    ({"options": {"seeds": 2}}, TypeError, "options must be a deepopt.sweep.Options, got dict"),
])
def test_bad_arguments_are_refused_before_anything_compiles(arguments, error, message) -> None:
    train_set, dev_set = tiny_data()
    given = dict(key=jax.random.key(7), num_configs=4, max_epochs=MAX_EPOCHS, interval=INTERVAL) | arguments
    before = sweep.compile_count() + sweep.state_compile_count()
    with pytest.raises(error, match=message):
        sweep.median_stopping(ADAM, SPACE, train_set, dev_set, **given)
    assert sweep.compile_count() + sweep.state_compile_count() == before
