"""Tasks: regression and a user's own task through fit, the open run, every search, Results and the studies."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from background import Run, study

from deepopt import data, sweep, tasks, train

MAIN = study("sweep", "--output_dir={dir}/out", "--task=regression", "--num_configs=8", "--num_seeds=1",
             "--epochs=20", "--zoom_configs=4", "--n_train=200", "--n_dev=100", "--n_test=100")
ADAPTIVE = study("adaptive_search", "--output_dir={dir}/out", "--quick", "--task=regression",
                 "--methods=random,halving,median")
WRONG_DATASET = study("sweep", "--output_dir={dir}/out", "--task=regression", "--dataset=moons")
BASELINE = study("regression_baseline", "--num_configs=2", "--epochs=3", "--n_train=60", "--n_dev=30", "--n_test=30",
                 "--hidden=8", "--output={dir}/baseline.json")
WRITE_CSV_THEN_RUN = (  # a user's float-target CSV (header, last column the target), then the study on it
    "import numpy as np, runpy, sys; out = sys.argv.pop(1); rng = np.random.default_rng(0); "
    "X = rng.uniform(size=(160, 3)); y = X @ [1.0, 2.0, 3.0] + 0.1 * rng.normal(size=160); "
    "np.savetxt(out, np.c_[X, y], delimiter=',', header='a,b,c,target', comments=''); "
    "sys.argv.append('--data=' + out); runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)
MAIN_CSV = Run(("-c", WRITE_CSV_THEN_RUN, "{dir}/reg.csv", "experiments.sweep", "--output_dir={dir}/out",
                "--task=regression", "--num_configs=4", "--num_seeds=1", "--epochs=10", "--zoom_configs=0"),
               name="main-regression-csv")
BACKGROUND = {"main_regression": [MAIN], "adaptive_regression": [ADAPTIVE], "wrong_dataset": [WRONG_DATASET],
              "baseline": [BASELINE], "main_csv": [MAIN_CSV]}

REGRESSION = tasks.regression()
SPACE = {"learning_rate": sweep.log_uniform(1e-3, 0.1), "l2": sweep.log_uniform(1e-4, 1e-1)}


def friedman(key: int, n: int, dtype=np.float32) -> data.Dataset:
    split = data.make_friedman1(jax.random.key(key), n, noise=1.0)
    return data.Dataset(np.asarray(split.X, dtype), np.asarray(split.y, dtype))


@pytest.fixture(scope="module")
def splits():
    return friedman(1, 256), friedman(2, 128), friedman(3, 128)


@pytest.fixture(scope="module")
def config():
    return train.Config((10, 16, 1), optimizer="adam", batch_size=64, epochs=30, task=REGRESSION)


@pytest.fixture(scope="module")
def fitted(config, splits):
    train_set, dev_set, _ = splits
    stopping = dataclasses.replace(config, early_stopping=train.KEEP_BEST)
    hp = train.HParams(learning_rate=0.02)
    return stopping, hp, train.fit(stopping, hp, jax.random.key(0), train_set, dev_set)


# ------------------------------------------------------------------------------------------ the Task value


def test_built_in_tasks_are_equal_hashable_values():
    assert tasks.regression() == tasks.regression() and hash(tasks.regression()) == hash(tasks.regression())
    assert train.Config((2, 1)) == train.Config((2, 1), task=tasks.classification())
    assert train.Config((2, 1)) != train.Config((2, 1), task=REGRESSION)
    assert REGRESSION.direction("mse") == "minimize" and REGRESSION.direction("r2") == "maximize"
    assert tasks.classification().row_directions()["dev_accuracy"] == "maximize"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"primary": "nll"}, "Task.primary must be one of the metrics"),
        ({"metrics": {"cost": np.abs}}, "not a usable metric name"),
        ({"metrics": {"Bad Name": np.abs}}, "not a usable metric name"),
        ({"targets": "labels"}, "Task.targets must be one of"),
        ({"directions": {"mae": "up"}}, "must be one of"),
        ({"aggregate": {"other": np.mean}}, "not one of the metrics"),
    ],
)
def test_a_malformed_task_names_its_field(changes, message):
    fields = dict(name="mine", loss=tasks.squared_error, metrics={"mae": tasks.absolute_error}, primary="mae",
                  higher_is_better=False)
    with pytest.raises((ValueError, TypeError), match=message):
        tasks.Task(**{**fields, **changes})


def test_config_refuses_a_task_that_is_not_a_task():
    with pytest.raises(TypeError, match="Config.task must be a deepopt.tasks.Task"):
        train.Config((2, 1), task="regression")


# ------------------------------------------------------------------------------------------ training


def test_regression_fit_learns_and_reports_every_metric(fitted, splits):
    config, hp, result = fitted
    train_set, dev_set, _ = splits
    assert sorted(result.dev_metrics) == ["mae", "mse", "r2"]
    assert float(result.dev_metrics["r2"]) > 0.5  # Friedman #1 is learnable: a constant predictor scores 0
    # The metrics are what numpy computes from the predictions of the returned parameters.
    params, state = result.params, result.bn_state
    outputs = np.asarray(train._logits(config, params, state, jnp.asarray(dev_set.X)), np.float64)[:, 0]
    y = np.asarray(dev_set.y, np.float64)
    mse = np.mean((outputs - y) ** 2)
    np.testing.assert_allclose(float(result.dev_metrics["mse"]), mse, rtol=1e-4)
    np.testing.assert_allclose(float(result.dev_metrics["mae"]), np.mean(np.abs(outputs - y)), rtol=1e-4)
    np.testing.assert_allclose(float(result.dev_metrics["r2"]), 1 - mse / np.var(y), rtol=1e-4)
    with pytest.raises(AttributeError, match="has no 'accuracy' metric"):
        _ = result.dev_accuracy


def test_early_stopping_keeps_the_lowest_dev_mse(fitted):
    _, _, result = fitted
    curve = np.asarray(result.dev_curve)
    assert int(result.best_epoch) == int(np.nanargmin(curve))
    np.testing.assert_allclose(float(result.dev_metrics["mse"]), curve[int(result.best_epoch)], rtol=1e-6)


def test_the_open_run_and_evaluate_speak_the_task(config, splits):
    train_set, dev_set, _ = splits
    hp = train.HParams(learning_rate=0.02)
    state = train.init_state(config, hp, jax.random.key(0), train_set)
    state, log = train.advance(config, hp, state, train_set, dev_set, epochs=3, log_metrics=True)
    measured = train.evaluate(config, state, dev_set)
    assert sorted(measured) == ["cost", "mae", "mse", "r2"]
    assert float(log.dev_metric[-1]) == float(measured["mse"])  # the log's metric is the primary one
    result, curves = train.fit_with_curves(dataclasses.replace(config, epochs=3), hp, jax.random.key(0), train_set,
                                           dev_set)
    np.testing.assert_array_equal(np.asarray(curves.dev_metric), np.asarray(log.dev_metric))


def test_targets_are_checked_for_the_task(config, splits):
    train_set = splits[0]
    labels = data.Dataset(train_set.X, (train_set.y > 14).astype(np.float32))
    with pytest.raises(TypeError, match="integer class ids.*tasks.regression"):
        train.fit(train.Config((10, 4, 1), epochs=1), train.HParams(), jax.random.key(0), labels)
    bad = np.array(train_set.y)
    bad[7] = np.nan
    with pytest.raises(ValueError, match=r"train.y has a non-finite target \(nan\) at index 7"):
        train.fit(config, train.HParams(), jax.random.key(0), data.Dataset(train_set.X, bad))
    two_columns = data.Dataset(train_set.X, np.stack([train_set.y, train_set.y], axis=1))
    with pytest.raises(ValueError, match="2 target columns need 2 output unit"):
        train.fit(config, train.HParams(), jax.random.key(0), two_columns)
    wide = dataclasses.replace(config, layer_sizes=(10, 8, 2), epochs=2)
    result = train.fit(wide, train.HParams(learning_rate=0.01), jax.random.key(0), two_columns)
    assert np.isfinite(float(result.train_metrics["r2"]))
    counts = data.Dataset(train_set.X, np.round(train_set.y).astype(np.int32))  # integer targets are numbers too
    assert np.isfinite(float(train.fit(dataclasses.replace(config, epochs=1), train.HParams(), jax.random.key(0),
                                       counts).final_cost))


def test_regression_in_float64_and_with_a_flax_module(splits):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            return nn.Dense(1)(nn.relu(nn.Dense(16)(x)))

    train_set, dev_set, _ = splits
    module_config = train.Config(model=Net(), optimizer="adam", batch_size=64, epochs=20, task=REGRESSION)
    result = train.fit(module_config, train.HParams(learning_rate=0.02), jax.random.key(1), train_set, dev_set)
    assert float(result.dev_metrics["r2"]) > 0.3
    with jax.enable_x64(True):
        wide = friedman(1, 256, np.float64)
        result64 = train.fit(train.Config((10, 8, 1), epochs=3, task=REGRESSION), train.HParams(learning_rate=0.01),
                             jax.random.key(0), wide)
        assert result64.train_metrics["mse"].dtype == jnp.float64


def huber(outputs, y):
    error = outputs[:, 0] - y.astype(outputs.dtype)
    return jnp.where(jnp.abs(error) < 1, 0.5 * error**2, jnp.abs(error) - 0.5)


HUBER = tasks.Task(name="huber", loss=huber, metrics={"huber": huber, "mae": tasks.absolute_error}, primary="huber",
                   higher_is_better=False)


def test_a_users_own_task_trains_and_is_searched(splits):
    train_set, dev_set, _ = splits
    config = train.Config((10, 8, 1), optimizer="adam", batch_size=64, epochs=5, task=HUBER)
    results = sweep.run(config, SPACE, train_set, dev_set, key=jax.random.key(0), num_configs=4)
    assert results.metric == "dev_huber"
    values = [row["dev_huber"] for row in results.rows]
    assert results.best(1)[0]["dev_huber"]["mean"] == min(values)  # lower is better, as the task says
    assert results.rows[0]["config"]["task"] == "huber"
    with pytest.raises(ValueError, match="pass that Task as task="):
        sweep.config_of(results.rows[0])
    assert sweep.config_of(results.rows[0], task=HUBER).task == HUBER


# ------------------------------------------------------------------------------------------ searches


@pytest.fixture(scope="module")
def regression_sweep(config, splits, tmp_path_factory):
    train_set, dev_set, test_set = splits
    path = tmp_path_factory.mktemp("regression") / "results.jsonl"
    results = sweep.run(dataclasses.replace(config, epochs=8), {**SPACE, "optimizer": sweep.choice(["adam", "rmsprop"])},
                        train_set, dev_set, key=jax.random.key(3), num_configs=8, seeds=2, test=test_set,
                        curves=True, results_path=path)
    return results, path


def test_sweep_run_ranks_regression_by_dev_mse(regression_sweep):
    results, _ = regression_sweep
    assert results.metric == "dev_mse" and results.directions["dev_r2"] == "maximize"
    row = results.rows[0]
    for name in ("train_mse", "train_mae", "train_r2", "dev_mse", "dev_r2", "test_mae", "final_cost"):
        assert isinstance(row[name], float), name
    entries = results.by_config()
    means = sorted(e["dev_mse"]["mean"] for e in entries if e["dev_mse"]["mean"] is not None)
    assert results.best(1)[0]["dev_mse"]["mean"] == means[0]
    by_r2 = dataclasses.replace(results, metric="dev_r2").best(1)[0]
    assert by_r2["dev_r2"]["mean"] == max(e["dev_r2"]["mean"] for e in entries if e["dev_r2"]["mean"] is not None)
    assert set(results.curves_of(row["config_id"])) == {"cost", "dev_mse", "dev_cost"}
    zoomed = results.zoom(3)
    assert set(zoomed) >= {"learning_rate", "l2"}
    frame = results.to_pandas()
    assert "dev_r2" in frame.columns
    with pytest.raises(ValueError, match="bias_variance compares classification error rates"):
        results.bias_variance()


def test_a_sweep_row_is_what_fit_computes_on_the_float_targets(regression_sweep, splits):
    results, _ = regression_sweep
    train_set, dev_set, test_set = splits
    for row in results.rows[:2]:  # the chunk program trains on the targets as given, not rounded
        config = sweep.config_of(row)
        fitted = train.fit(config, sweep.hparams_of(row), sweep.key_of(row), train_set, dev_set)
        np.testing.assert_allclose(row["dev_mse"], float(fitted.dev_metrics["mse"]), rtol=1e-4)
        np.testing.assert_allclose(row["train_r2"], float(fitted.train_metrics["r2"]), rtol=1e-4)


def test_an_adaptive_row_is_what_the_open_run_computes(config, splits):
    train_set, dev_set, _ = splits
    results = sweep.successive_halving(config, SPACE, train_set, dev_set, key=jax.random.key(9), num_configs=2,
                                       min_epochs=2, max_epochs=4, eta=2)
    row = results.rows[0]
    state = sweep.retrain(row, train_set, dev_set)
    np.testing.assert_allclose(row["dev_mse"], float(train.evaluate(sweep.config_of(row), state, dev_set)["mse"]),
                               rtol=1e-4)


def test_importance_and_tensorboard_read_a_regression(regression_sweep, tmp_path):
    results, _ = regression_sweep
    shares = results.importance()
    assert set(shares) == {"learning_rate", "l2", "optimizer"} and abs(sum(shares.values()) - 1) < 1e-6
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from deepopt.sweep import tensorboard_log

    tensorboard_log.write_runs(tmp_path, results)
    entry = results.best(1)[0]
    events = EventAccumulator(str(tmp_path / tensorboard_log.run_name(entry)))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"final/dev_mse", "final/dev_r2", "final/test_mae", "curves/dev_mse", "curves/dev_cost"} <= tags
    assert events.Scalars("final/dev_mse")[0].value == pytest.approx(entry["dev_mse"]["mean"], rel=1e-6)


def test_a_diverging_regression_is_frozen_and_ranked_last(config, splits):
    train_set, dev_set, _ = splits
    space = {"learning_rate": sweep.grid([0.01, 1e4])}
    results = sweep.run(dataclasses.replace(config, optimizer="gd", epochs=5), space, train_set, dev_set,
                        key=jax.random.key(0), num_configs=None, sampler="grid")
    by_rate = {row["hparams"]["learning_rate"]: row for row in results.rows}
    assert by_rate[1e4]["diverged"] and not by_rate[0.01]["diverged"]
    assert by_rate[1e4]["dev_mse"] is not None and np.isfinite(by_rate[1e4]["dev_mse"])  # the last finite params
    assert results.best(1)[0]["hparams"]["learning_rate"] == 0.01


def smoothed_cross_entropy(logits, y):  # label smoothing 0.1 over the softmax's classes
    log_probs = jax.nn.log_softmax(logits, axis=1)
    targets = 0.9 * jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype) + 0.1 / logits.shape[1]
    return -jnp.sum(targets * log_probs, axis=1)


def test_a_users_classification_task_checks_class_ids(splits):
    task = tasks.Task(name="smoothed", loss=smoothed_cross_entropy,
                      metrics={"accuracy": lambda logits, y: jnp.argmax(logits, axis=1) == y}, primary="accuracy",
                      higher_is_better=True, targets=tasks.CLASS_IDS)
    train_set, dev_set, _ = splits
    labels = lambda split: data.Dataset(split.X, (split.y > np.median(split.y)).astype(np.int32))  # noqa: E731
    config = train.Config((10, 8, 2), optimizer="adam", batch_size=64, epochs=10, task=task)
    result = train.fit(config, train.HParams(learning_rate=0.01), jax.random.key(0), labels(train_set),
                       labels(dev_set))
    assert float(result.dev_accuracy) > 0.6  # a classification's name reads its accuracy
    three = data.Dataset(train_set.X, np.full(len(train_set.y), 2, np.int32))
    with pytest.raises(ValueError, match=r"class ids in 0..1 for n_out=2"):
        train.fit(config, train.HParams(), jax.random.key(0), three)


def test_several_targets_sweep_as_one_regression(splits):
    train_set, dev_set, _ = splits
    two = lambda split: data.Dataset(split.X, np.stack([split.y, -split.y], axis=1))  # noqa: E731
    config = train.Config((10, 8, 2), optimizer="adam", batch_size=64, epochs=4, task=REGRESSION)
    results = sweep.run(config, SPACE, two(train_set), two(dev_set), key=jax.random.key(0), num_configs=2)
    row = results.rows[0]
    fitted = train.fit(config, sweep.hparams_of(row), sweep.key_of(row), two(train_set), two(dev_set))
    np.testing.assert_allclose(row["dev_r2"], float(fitted.dev_metrics["r2"]), rtol=1e-4)


def test_a_regression_search_reopens_with_its_directions(regression_sweep):
    results, path = regression_sweep
    reopened = sweep.load(path)
    assert reopened.directions == results.directions
    assert reopened.best(2) == results.best(2)


def test_model_based_search_minimizes_dev_mse(config, splits):
    train_set, dev_set, _ = splits
    results = sweep.run(dataclasses.replace(config, epochs=4), SPACE, train_set, dev_set, key=jax.random.key(4),
                        num_configs=6, sampler="tpe", chunk_size=3)
    assert results.stats["sampler"] and results.best(1)[0]["dev_mse"]["mean"] == min(
        r["dev_mse"] for r in results.rows)


def test_adaptive_searches_promote_the_lowest_dev_mse(config, splits):
    train_set, dev_set, _ = splits
    halving = sweep.successive_halving(config, SPACE, train_set, dev_set, key=jax.random.key(5), num_configs=4,
                                       min_epochs=2, max_epochs=8, eta=2)
    first = [row for row in halving.history if row["epochs_trained"] == 2]
    promoted = {row["config_id"] for row in halving.history if row["epochs_trained"] == 4}
    best_two = {row["config_id"] for row in sorted(first, key=lambda row: row["dev_mse"])[:2]}
    assert promoted == best_two
    for results in (
        sweep.hyperband(config, SPACE, train_set, dev_set, key=jax.random.key(6), min_epochs=2, max_epochs=8, eta=2),
        sweep.pbt(config, SPACE, train_set, dev_set, key=jax.random.key(7), population=4, epochs=8, interval=4),
        sweep.median_stopping(config, SPACE, train_set, dev_set, key=jax.random.key(8), num_configs=4, max_epochs=8,
                              interval=2),
    ):
        assert results.metric == "dev_mse"
        best = results.best(1)[0]["dev_mse"]["mean"]
        assert best == min(e["dev_mse"]["mean"] for e in results.by_config() if e["dev_mse"]["mean"] is not None)


def test_a_search_refuses_a_metric_the_task_does_not_have(config, splits):
    train_set, dev_set, _ = splits
    with pytest.raises(ValueError, match="metric must be one of .*'dev_mse'.* for task 'regression'"):
        sweep.run(config, SPACE, train_set, dev_set, key=jax.random.key(0), num_configs=2, metric="dev_accuracy")
    with pytest.raises(ValueError, match=r"space\['task'\]"):
        sweep.run(config, {**SPACE, "task": sweep.choice([REGRESSION])}, train_set, dev_set, key=jax.random.key(0),
                  num_configs=2)


# ------------------------------------------------------------------------------------------ the studies


@pytest.fixture(scope="module")
def main_regression(background_runs):
    finished = background_runs.result(MAIN)
    assert finished.completed.returncode == 0, finished.completed.stderr
    return finished.dir / "out"


def test_the_main_job_sweeps_a_regression(main_regression):
    report = (main_regression / "report.md").read_text()
    assert "ranked by dev mse" in report and "| dev mse | train mse | test mse |" in report
    assert "## What explains dev mse" in report and "## Train and dev of the winner" in report
    summary = json.loads((main_regression / "results.json").read_text())
    assert summary["task"] == "regression" and summary["settings"]["data"] == "friedman1"
    assert summary["retrained_winner"]["test_mse"][0] > 0
    reopened = sweep.load(main_regression / "results.jsonl")
    assert reopened.metric == "dev_mse" and reopened.directions["dev_mse"] == "minimize"


def test_adaptive_search_compares_methods_on_a_regression(background_runs):
    finished = background_runs.result(ADAPTIVE)
    assert finished.completed.returncode == 0, finished.completed.stderr
    summary = json.loads((finished.dir / "out" / "results.json").read_text())
    assert summary["settings"]["task"] == "regression" and summary["settings"]["dataset"] == "friedman1"
    for method in ("random", "halving", "median"):
        assert summary["methods"][method]["best_dev_mse"] > 0
        assert summary["methods"][method]["test_mse_after_retraining"] > 0


def test_a_classification_dataset_under_task_regression_is_a_flag_error(background_runs):
    completed = background_runs.result(WRONG_DATASET).completed
    assert completed.returncode == 2
    assert "--task regression needs friedman1" in completed.stderr.strip().splitlines()[-1]


def test_the_regression_baseline_measures_sklearn_and_the_sweep(background_runs):
    finished = background_runs.result(BASELINE)
    assert finished.completed.returncode == 0, finished.completed.stderr
    measured = json.loads((finished.dir / "baseline.json").read_text())["models"]
    assert set(measured) == {"LinearRegression", "MLPRegressor", "deepopt sweep"}
    assert all(np.isfinite(entry["dev_r2"]) for entry in measured.values())
    assert "| deepopt sweep |" in finished.completed.stdout


def test_a_float_label_file_names_the_regression_way(tmp_path):
    path = tmp_path / "reg.csv"
    path.write_text("a,target\n0.1,1.5\n0.2,2.25\n0.3,0.75\n")
    with pytest.raises(ValueError, match="float targets are a regression: targets='floats', --task regression"):
        data.load(path)
    loaded = data.load(path, targets="floats")
    np.testing.assert_array_equal(loaded.y, np.asarray([1.5, 2.25, 0.75], np.float32))
    with pytest.raises(ValueError, match=r"non-finite target \(nan\) at index 1"):
        data.validate(np.ones((2, 1)), np.asarray([1.0, np.nan]), targets="floats")


def test_the_main_job_reads_a_float_target_csv(background_runs):
    finished = background_runs.result(MAIN_CSV)
    assert finished.completed.returncode == 0, finished.completed.stderr
    summary = json.loads((finished.dir / "out" / "results.json").read_text())
    assert summary["task"] == "regression" and summary["settings"]["data"].endswith("reg.csv (test: 25% held out)")
    assert summary["leaderboard"][0]["dev_r2"]["mean"] > 0.5  # a linear target: learnt
