"""Reading a search as the tuning playbook teaches: boundary warnings; the results as a pandas DataFrame."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from adaptive_worker import ADAM, SPACE, tiny_data

from deepopt import sweep


def results_with_best_at(values: dict[str, list[float]], accuracies: list[float], space: dict) -> sweep.Results:
    """Synthetic rows: config i has ``values[field][i]`` and dev accuracy ``accuracies[i]`` (one seed)."""
    rows = []
    for i, accuracy in enumerate(accuracies):
        hparams = {name: column[i] for name, column in values.items()}
        rows.append({"id": f"r{i}", "config_id": f"c{i}", "config_index": i, "seed": 0, "key": [0, i],
                     "config": {"optimizer": "adam", "layer_sizes": [2, 3, 1]}, "hparams": hparams,
                     "dev_accuracy": accuracy, "train_accuracy": accuracy, "diverged": False})
    return sweep.Results(rows=rows, space=space)


SPACE_3 = {"learning_rate": sweep.log_uniform(1e-4, 1.0), "l2": sweep.log_uniform(1e-4, 1.0),
           "beta1": sweep.one_minus_log_uniform(1e-3, 1e-1)}


def test_best_configs_at_an_edge_are_reported_with_the_end_to_move() -> None:
    values = {
        "learning_rate": [0.9, 0.8, 0.7, 1e-3, 1e-2, 3e-4],  # the best three at the top of the log range
        "l2": [1e-2, 3e-3, 2e-2, 1e-2, 1e-3, 5e-2],  # the middle: nothing to say
        "beta1": [0.9988, 0.9985, 0.99, 0.95, 0.93, 0.92],  # 1 - beta near 1e-3: beta at its high end
    }
    results = results_with_best_at(values, [0.95, 0.94, 0.93, 0.8, 0.7, 0.6], SPACE_3)
    warnings = results.boundary_warnings(k=3)
    assert [(w.field, w.side) for w in warnings] == [("learning_rate", "high"), ("beta1", "high")]
    lr = warnings[0]
    assert lr.near == 3 and lr.top == 3 and lr.best == 0.9 and lr.bound == 1.0
    assert "raise its upper end" in str(lr) and "learning_rate" in str(lr)
    assert warnings[1].bound == pytest.approx(0.999)


def test_the_low_end_and_no_warning_in_the_middle() -> None:
    values = {"learning_rate": [1.2e-4, 0.01, 0.02], "l2": [1e-2, 1e-2, 1e-2], "beta1": [0.95, 0.95, 0.95]}
    warnings = results_with_best_at(values, [0.9, 0.8, 0.7], SPACE_3).boundary_warnings(k=3)
    assert [(w.field, w.side, w.near) for w in warnings] == [("learning_rate", "low", 1)]  # the best alone is enough
    assert "lower its lower end" in str(warnings[0])
    quiet = results_with_best_at({"learning_rate": [0.01] * 3, "l2": [0.01] * 3, "beta1": [0.95] * 3},
                                 [0.9, 0.8, 0.7], SPACE_3)
    assert quiet.boundary_warnings() == []
    with pytest.raises(ValueError, match="margin must be in"):
        quiet.boundary_warnings(margin=0.6)


def test_to_pandas_has_one_row_per_run_and_every_field() -> None:
    pandas = pytest.importorskip("pandas")
    train_set, dev_set = tiny_data()
    results = sweep.run(ADAM, SPACE, train_set, dev_set, key=jax.random.key(0), num_configs=3, seeds=2)
    frame = results.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 6
    for column in ("id", "config_id", "seed", "learning_rate", "l2", "optimizer", "layer_sizes", "dev_accuracy"):
        assert column in frame.columns
    assert list(frame["id"]) == [row["id"] for row in results.rows]
    assert frame["layer_sizes"].iloc[0] == "2-5-1"
    np.testing.assert_allclose(frame.groupby("config_id", sort=False)["dev_accuracy"].mean().to_numpy(),
                               [e["dev_accuracy"]["mean"] for e in results.by_config()])


def test_retrain_trains_a_row_again_from_scratch() -> None:
    from deepopt import train

    train_set, dev_set = tiny_data()
    results = sweep.run(ADAM, SPACE, train_set, dev_set, key=jax.random.key(0), num_configs=1, seeds=1)
    row = results.rows[0]
    state = sweep.retrain(row, train_set)
    fitted = train.fit(sweep.config_of(row), sweep.hparams_of(row), sweep.key_of(row), train_set, dev_set)
    assert train.evaluate(sweep.config_of(row), state, dev_set)["accuracy"] == fitted.dev_accuracy  # bit for bit
    cut = dict(row, epochs_trained=3)  # an adaptive search's row, cut at 3 of the Config's epochs
    assert int(sweep.retrain(cut, train_set).epoch) == 3
    with pytest.raises(ValueError, match="use sweep.retrain"):
        sweep.replay(row, train_set)


def _importance_results(metric_of) -> sweep.Results:
    """40 synthetic configs spread over SPACE_3 (quasi-random), dev accuracy = ``metric_of(values)``."""
    asked = sweep.sample(SPACE_3, jax.random.key(0), 40, "quasi")
    values = {name: [a[name] for a in asked] for name in SPACE_3}
    return results_with_best_at(values, [metric_of(a) for a in asked], SPACE_3)


def test_importance_finds_the_field_that_explains_the_metric() -> None:
    pytest.importorskip("optuna")
    by_lr = _importance_results(lambda a: 0.9 - 0.05 * (np.log10(a["learning_rate"]) + 2.0) ** 2)
    scores = by_lr.importance()
    assert list(scores)[0] == "learning_rate" and scores["learning_rate"] > 0.8
    assert set(scores) == set(SPACE_3) and sum(scores.values()) == pytest.approx(1.0)
    by_beta = _importance_results(lambda a: 0.5 + 0.1 * np.log10(1.0 - a["beta1"]))  # 1 - β on its log scale
    assert list(by_beta.importance())[0] == "beta1"
    assert by_lr.importance(seed=0) == scores  # deterministic given the seed


def test_importance_needs_two_observations() -> None:
    pytest.importorskip("optuna")
    one = results_with_best_at({"learning_rate": [0.1], "l2": [0.1], "beta1": [0.9]}, [0.5], SPACE_3)
    with pytest.raises(ValueError, match="at least two configs with a finite dev_accuracy, got 1"):
        one.importance()


@pytest.mark.parametrize("missing, package", [("optuna", "optuna"), ("sklearn", "scikit-learn")])
def test_importance_without_a_dependency_names_the_package_and_the_extra(monkeypatch, missing, package) -> None:
    pytest.importorskip("optuna")
    results = _importance_results(lambda a: a["learning_rate"])
    monkeypatch.setitem(sys.modules, missing, None)  # ``import <missing>`` now raises ImportError
    with pytest.raises(ImportError, match=rf"needs? {package}: pip install -e '\.\[optuna\]'"):
        results.importance()


def test_the_main_jobs_report_says_which_package_is_missing(monkeypatch) -> None:
    from experiments import sweep as main_job

    results = _importance_results(lambda a: a["learning_rate"])
    monkeypatch.setitem(sys.modules, "sklearn", None)
    (line,) = main_job.importance_lines(results)
    assert line.startswith("Not computed:") and "scikit-learn" in line and "[optuna]" in line


def test_a_metric_the_rows_do_not_have_is_refused_not_ranked_by_nothing() -> None:
    values = {"learning_rate": [0.9, 0.01, 0.001], "l2": [1e-2] * 3, "beta1": [0.95] * 3}
    results = results_with_best_at(values, [0.7, 0.9, 0.8], SPACE_3)
    assert [e["config_index"] for e in results.best(3)] == [1, 2, 0]
    typo = sweep.Results(rows=results.rows, space=SPACE_3, metric="dev_acc")
    for read in (lambda r: r.best(3), lambda r: r.zoom(2), lambda r: r.boundary_warnings(), lambda r: r.bias_variance()):
        with pytest.raises(ValueError, match=r"Results.metric is 'dev_acc', which the rows do not have; .*'dev_accuracy'"):
            read(typo)
    no_test_set = [row | {"test_accuracy": None} for row in results.rows]
    with pytest.raises(ValueError, match="no row has a value of it"):
        sweep.Results(rows=no_test_set, space=SPACE_3, metric="test_accuracy").best()
    # every run diverged: still a leaderboard (of failures), not an error
    diverged = [row | {"dev_accuracy": None, "diverged": True} for row in results.rows]
    assert len(sweep.Results(rows=diverged, space=SPACE_3).best()) == 3
    for margin in (-0.3, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
            results.zoom(2, margin=margin)


def test_a_space_the_rows_were_not_sampled_from_is_refused() -> None:
    values = {"learning_rate": [0.9, 0.01, 0.001], "l2": [1e-2] * 3, "beta1": [0.95] * 3}
    results = results_with_best_at(values, [0.7, 0.9, 0.8], SPACE_3)
    assert isinstance(results.zoom(2)["learning_rate"], type(SPACE_3["learning_rate"]))  # its own space: fine
    elsewhere = sweep.Results(rows=results.rows, space=SPACE_3 | {"learning_rate": sweep.log_uniform(1e-6, 1e-5)})
    for read in (lambda r: r.boundary_warnings(), lambda r: r.zoom(2)):
        with pytest.raises(ValueError, match=r"Results.space\['learning_rate'\] is .*but row 'r0' has learning_rate=0.9"):
            read(elsewhere)
    other_choice = sweep.Results(rows=results.rows, space=SPACE_3 | {"optimizer": sweep.choice(["gd", "momentum"])})
    with pytest.raises(ValueError, match=r"row 'r0' has optimizer='adam': the rows were not sampled from this space"):
        other_choice.zoom(2)
    unknown = sweep.Results(rows=results.rows, space=SPACE_3 | {"decay_rate": sweep.uniform(0.1, 1.0)})
    with pytest.raises(ValueError, match=r"Results.space searches 'decay_rate', which row 'r0' does not record"):
        unknown.boundary_warnings()


def test_by_config_reads_the_rows_metric_names_once_not_once_per_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # by_config used to call metric_names (a pass over every row) for each config: quadratic in the
    # sweep's size (0.3 s per call on the main job's 640 rows, minutes on tens of thousands).
    values = {"learning_rate": [0.9, 0.01, 0.001, 0.1], "l2": [1e-2] * 4, "beta1": [0.95] * 4}
    results = results_with_best_at(values, [0.7, 0.9, 0.8, 0.6], SPACE_3)
    results.rows[2]["final_cost"] = 0.25  # a metric only some rows have: None for the others, after dev/train
    expected_names = ["dev_accuracy", "train_accuracy", "final_cost"]
    assert results.metric_names() == expected_names
    calls = []
    original = sweep.Results.metric_names
    monkeypatch.setattr(sweep.Results, "metric_names", lambda self: calls.append(1) or original(self))
    entries = results.by_config()
    assert len(calls) == 1
    assert [list(e)[-3:] for e in entries] == [expected_names] * 4
    assert entries[2]["final_cost"]["mean"] == 0.25 and entries[0]["final_cost"]["mean"] is None
