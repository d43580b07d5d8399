"""Learning curves of a sweep (issue 13): ``sweep.run(curves=True)`` records every run's per-epoch curves."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from deepopt import sweep, train
from sweep_worker import ADAM, tiny_data, tiny_sweep, without_time


@pytest.fixture(scope="module")
def with_curves(tmp_path_factory):
    path = tmp_path_factory.mktemp("curves") / "results.jsonl"
    return tiny_sweep(curves=True, results_path=path, resume=False), path


def test_curves_change_no_row(with_curves):
    results, _ = with_curves
    assert without_time(results.rows) == without_time(tiny_sweep().rows)


def test_every_run_has_its_curves_and_they_end_at_its_row(with_curves):
    results, _ = with_curves
    assert set(results.curves) == {row["id"] for row in results.rows}
    for row in results.rows:
        curve = results.curves[row["id"]]
        assert {name: values.shape for name, values in curve.items()} == {
            "cost": (ADAM.epochs,), "dev_accuracy": (ADAM.epochs,), "dev_cost": (ADAM.epochs,)
        }
        assert float(curve["dev_accuracy"][-1]) == pytest.approx(row["dev_accuracy"], abs=1e-7)
    stacked = results.curves_of(results.rows[0]["config_id"])
    assert stacked["dev_cost"].shape == (2, ADAM.epochs)  # two seeds


def test_a_run_s_curves_are_its_epoch_log(with_curves):
    results, _ = with_curves
    row = results.rows[1]
    train_set, dev_set = tiny_data()
    _, log = train.fit_with_curves(sweep.config_of(row), sweep.hparams_of(row), sweep.key_of(row), train_set, dev_set)
    np.testing.assert_allclose(results.curves[row["id"]]["cost"], np.asarray(log.cost), rtol=1e-5)
    np.testing.assert_allclose(results.curves[row["id"]]["dev_cost"], np.asarray(log.dev_cost), rtol=1e-5)


def test_curves_are_stored_beside_the_rows_and_resume(with_curves):
    results, path = with_curves
    stored = sweep.read_curves(sweep.curves_path(path), [row["id"] for row in results.rows])
    assert sweep.curves_path(path).endswith("results.curves.jsonl") and set(stored) == set(results.curves)
    resumed = tiny_sweep(curves=True, results_path=path, resume=True)
    assert resumed.stats["runs_computed"] == 0
    for run_id, curve in results.curves.items():
        for name, values in curve.items():
            np.testing.assert_array_equal(resumed.curves[run_id][name], values)


def test_curves_need_a_dev_set():
    train_set, _ = tiny_data()
    with pytest.raises(ValueError, match="curves=True records dev accuracy and dev cost per epoch: it needs a dev set"):
        sweep.run(ADAM, {}, train_set, key=jax.random.key(0), num_configs=1, curves=True)
    with pytest.raises(KeyError, match="run the sweep with curves=True"):
        tiny_sweep().curves_of("nope")
