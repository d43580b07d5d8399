"""The regularization, vanishing-gradients and input-normalization studies end to end, on small settings."""

import json
import pathlib
import subprocess

import jax
import numpy as np
import pytest
from background import study

from deepopt import bayes, data, diagnostics


def completed_results(completed: subprocess.CompletedProcess, output_dir: pathlib.Path) -> dict:
    assert completed.returncode == 0, completed.stderr
    return json.loads((output_dir / "results.json").read_text())


def moons_csv(path: pathlib.Path) -> pathlib.Path:
    """Moons with the first feature x1000 and the second shifted by 50, as a user's CSV."""
    dataset = data.make_moons(jax.random.key(0), 120, 0.2)
    raw_X = np.asarray(dataset.X) * np.array([1000.0, 1.0]) + np.array([0.0, 50.0])
    np.savetxt(path, np.column_stack([raw_X, np.asarray(dataset.y)]), delimiter=",", header="x1,x2,label", comments="")
    return path


# The three studies on small settings, started in the background (their start-up and compilation overlap the
# other tests). The settings are the smallest for which the learning outcomes asserted below hold: 200 epochs
# for the λ = 100 row to shrink the net to a constant, 2 seeds for the per-seed early-stopping list, 150
# epochs for the standardized inputs to reach the target cost.
RUNS = {
    "regularization": study("regularization", "--output_dir={dir}", "--epochs=200", "--num_seeds=2",
                            "--sweep_points=3", "--n_test=100"),
    "vanishing_gradients": study("vanishing_gradients", "--output_dir={dir}", "--depth=6", "--width=16",
                                 "--epochs=5", "--activations=relu"),
    "input_normalization": study("input_normalization", "--output_dir={dir}/out", "--data={dir}/scaled.csv",
                                 "--epochs=150", "--lr_points=4", "--lr_max=1",
                                 prepare=lambda directory: moons_csv(directory / "scaled.csv")),
}
BAD_FLAGS = [
    ("regularization", "--early_stopping=soon", "--early_stopping must be 'keep_best' or a positive int"),
    ("vanishing_gradients", "--inits=he,bogus:1", "--inits must be distinct"),
    ("input_normalization", "--lr_min=1", "--lr_min must be <= --lr_max"),
]
BAD_RUNS = {
    flag: study(name, flag, "--lr_max=0.5" if name == "input_normalization" else "--seed=0")
    for name, flag, _ in BAD_FLAGS
}
REFUSED = study("regularization", "--output_dir={dir}", "--epochs=2", after=RUNS["regularization"])
BACKGROUND = {"runs": list(RUNS.values()), "bad_flag_runs": list(BAD_RUNS.values()), "refused": [REFUSED]}


@pytest.fixture(scope="module")
def runs(background_runs) -> dict[str, tuple[pathlib.Path, subprocess.CompletedProcess]]:
    finished = {name: background_runs.result(run) for name, run in RUNS.items()}
    output_dirs = {name: f.dir for name, f in finished.items()}
    output_dirs["input_normalization"] = finished["input_normalization"].dir / "out"
    return {name: (output_dirs[name], finished[name].completed) for name in RUNS}


@pytest.fixture(scope="module")
def bad_flag_runs(background_runs) -> dict[str, subprocess.CompletedProcess]:
    return {flag: background_runs.result(run).completed for flag, run in BAD_RUNS.items()}


@pytest.fixture(scope="module")
def refused(background_runs, regularization) -> subprocess.CompletedProcess:
    return background_runs.result(REFUSED).completed


@pytest.fixture(scope="module")
def regularization(runs):
    output_dir, completed = runs["regularization"]
    return output_dir, completed_results(completed, output_dir), completed


def test_regularization_rows_verdicts_and_sweep(regularization):
    output_dir, results, completed = regularization
    rows = results["rows"]
    assert list(rows) == ["none", "L2", "dropout", "early stopping"]
    assert rows["L2"]["l2"] == 0.7 and rows["dropout"]["keep_prob"] == 0.86
    for row in rows.values():
        assert row["diagnosis"]["verdict"] in diagnostics.VERDICTS
        assert row["diagnosis"]["variance"] == pytest.approx(
            row["train_accuracy"]["mean"] - row["test_accuracy"]["mean"], abs=1e-9)
    settings = results["settings"]
    assert settings["n_fit"] + settings["n_dev"] == settings["n_train"] == 211 and settings["n_dev"] == 42
    # The generator's own Bayes error (deepopt.bayes): 12% of labels flipped, plus the jitter after labelling.
    assert settings["bayes_error"] == pytest.approx(bayes.bayes_error("overfit_2d", noise=0.05, flip=0.12))
    assert settings["bayes_error"] > 0.12 and "deepopt.bayes" in settings["bayes_error_source"]
    stopping = rows["early stopping"]
    assert 0 <= stopping["best_epoch"]["min"] <= stopping["best_epoch"]["max"] < 200
    assert stopping["stopped_epoch"] == [-1, -1]  # keep_best trains every epoch
    sweep = results["lambda_sweep"]
    assert sweep["lambdas"][0] == pytest.approx(1e-3) and sweep["lambdas"][-1] == pytest.approx(100.0)
    assert sweep["train_error"][-1] > sweep["train_error"][0]  # λ = 100 shrinks the net to a constant
    assert sweep["lambdas"][sweep["best_index"]] == sweep["best_lambda"]
    report = (output_dir / "report.md").read_text()
    assert "| early stopping |" in report and "## λ sweep" in report and "carved out of the training set" in report
    for plot in ("decision_boundaries.png", "lambda_sweep.png", "cost_curves.png"):
        assert (output_dir / plot).stat().st_size > 0
    assert "high variance" in completed.stdout or "good fit" in completed.stdout or "high bias" in completed.stdout


def test_vanishing_gradients_study(runs):
    output_dir, completed = runs["vanishing_gradients"]
    results = completed_results(completed, output_dir)
    assert list(results["results"]) == ["relu"]
    relu = results["results"]["relu"]
    assert list(relu) == ["zeros", "random ×0.01", "random ×1", "xavier", "he"]
    assert relu["zeros"]["gradient_flow"] == "zero" and relu["random ×0.01"]["gradient_flow"] == "vanishing"
    assert relu["he"]["gradient_flow"] == "level" and relu["he"]["train_accuracy"] > 0
    assert len(relu["he"]["layer_stats"]["grad_norm"]) == 7
    assert results["settings"]["layer_sizes"] == [2] + [16] * 6 + [1]
    assert (output_dir / "gradient_norms_relu.png").exists() and (output_dir / "training_cost_relu.png").exists()
    assert "| relu | he | level |" in (output_dir / "report.md").read_text()


def test_input_normalization_study_on_user_csv(runs):
    output_dir, completed = runs["input_normalization"]
    results = completed_results(completed, output_dir)
    assert results["settings"]["feature_scales"] == [1.0, 1.0]  # the user's features are the raw ones
    raw, standardized = results["inputs"]["raw"], results["inputs"]["standardized"]
    assert raw["features"]["std"][0] > 100 and standardized["features"]["std"] == pytest.approx([1.0, 1.0], abs=1e-4)
    assert len(raw["epochs_to_target"]) == 4 and standardized["best_epochs_to_target"] >= 0
    assert raw["best_epochs_to_target"] == -1 or raw["best_epochs_to_target"] > standardized["best_epochs_to_target"]
    assert (output_dir / "cost_curves.png").exists() and "## Every learning rate" in (output_dir / "report.md").read_text()


@pytest.mark.parametrize("study, flag, message", BAD_FLAGS)
def test_bad_flags_one_line_and_exit_2(bad_flag_runs, study, flag, message):
    completed = bad_flag_runs[flag]
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and message in completed.stderr


def test_regularization_refuses_to_overwrite(refused):
    completed = refused
    assert completed.returncode == 2 and "already holds results.json" in completed.stderr
