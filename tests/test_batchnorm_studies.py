"""The batch-norm and frameworks studies end to end, on small settings, as a user runs them."""

from __future__ import annotations

import json
import subprocess

import pytest
from background import Finished, Run

WITHOUT_SKLEARN = (
    "import runpy, sys; sys.modules['sklearn.datasets'] = None; "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def run_study(study: str, *flags: str, without_sklearn: bool = False) -> Run:
    """The study as a user runs it, started in the background (background.py) beside the in-process tests."""
    command = ("-c", WITHOUT_SKLEARN, f"experiments.{study}") if without_sklearn else ("-m", f"experiments.{study}")
    return Run((*command, *flags), name=study)


# Both settings (one compilation each) over three learning rates, 8 epochs: every row, the summary and the report.
BATCH_NORM = run_study(
    "batch_norm", "--output_dir={dir}", "--hidden_layers=3", "--width=8", "--epochs=8", "--num_lrs=3",
    "--min_lr=0.03", "--max_lr=30", "--num_seeds=2", "--n_train=90", "--n_test=60", "--batch_size=32",
    "--target_cost=1.0",
)
# Three epochs of Adam at 0.01 on half the digits: what the accuracy bound asserted below needs.
FRAMEWORKS = run_study("frameworks", "--output_dir={dir}", "--epochs=3", "--hidden=12,8", "--test_fraction=0.5",
                       "--learning_rate=0.01")
WITHOUT_SKLEARN_CASES = [("frameworks", ()), ("batch_norm", ("--dataset=digits",))]
WITHOUT_SKLEARN_RUNS = {
    study: run_study(study, "--output_dir={dir}/out", *flags, without_sklearn=True)
    for study, flags in WITHOUT_SKLEARN_CASES
}
BAD_FLAGS = [
    ("batch_norm", "--min_lr=1", "--min_lr must be <= --max_lr"),
    ("batch_norm", "--target_cost=0", "--target_cost must be > 0"),
    ("frameworks", "--learning_rate=0", "--learning_rate must be > 0"),
]
BAD_RUNS = {
    flag: run_study(study, flag, "--max_lr=0.1" if "min_lr" in flag else "--seed=0") for study, flag, _ in BAD_FLAGS
}
BACKGROUND = {
    "batch_norm_run": [BATCH_NORM], "frameworks_run": [FRAMEWORKS],
    "without_sklearn_runs": list(WITHOUT_SKLEARN_RUNS.values()), "bad_flag_runs": list(BAD_RUNS.values()),
}


@pytest.fixture
def batch_norm_run(background_runs) -> Finished:
    return background_runs.result(BATCH_NORM)


@pytest.fixture
def frameworks_run(background_runs) -> Finished:
    return background_runs.result(FRAMEWORKS)


@pytest.fixture(scope="module")
def without_sklearn_runs(background_runs) -> dict[str, Finished]:
    return {study: background_runs.result(run) for study, run in WITHOUT_SKLEARN_RUNS.items()}


@pytest.fixture(scope="module")
def bad_flag_runs(background_runs) -> dict[str, subprocess.CompletedProcess]:
    return {flag: background_runs.result(run).completed for flag, run in BAD_RUNS.items()}


def test_batch_norm_study_writes_the_grid_for_both_settings(batch_norm_run: Finished) -> None:
    tmp_path, completed = batch_norm_run.dir, batch_norm_run.completed
    assert completed.returncode == 0, completed.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["layer_sizes"] == [2, 8, 8, 8, 3]
    assert list(results["results"]) == ["without batch norm", "with batch norm"]
    for setting in results["results"].values():
        rows = setting["rows"]
        rates = [row["learning_rate"] for row in rows]
        assert rates == pytest.approx([0.03, 0.9486833, 30.0])
        for row in rows:
            assert len(row["epochs_to_target"]) == 2 and len(row["cost_curve"]["mean"]) == 8
            assert 0 <= row["test_accuracy"]["mean"] <= 1
            epochs = row["epochs_to_target"]
            if None in epochs:
                assert row["mean_epochs_to_target"] is None
            else:
                assert row["mean_epochs_to_target"] == pytest.approx(sum(epochs) / 2)
                assert all(1 <= e <= 8 for e in epochs)
        # the summary is what the rows say
        accuracies = [row["test_accuracy"]["mean"] for row in rows]
        assert setting["best_dev_accuracy"] == max(accuracies)
        assert setting["best_learning_rate"] == rates[accuracies.index(max(accuracies))]
        reaching = [row for row in rows if row["mean_epochs_to_target"] is not None]
        assert setting["largest_rate_reaching_target"] == (reaching[-1]["learning_rate"] if reaching else None)
        assert setting["fewest_epochs_to_target"] == (
            min(row["mean_epochs_to_target"] for row in reaching) if reaching else None)
        assert setting["diverged_rates"] == [row["learning_rate"] for row in rows if row["diverged_runs"]]
    assert len(results["findings"]) >= 2
    report = (tmp_path / "report.md").read_text()
    assert "| learning rate | dev accuracy (no BN) | epochs to cost 1 (no BN) |" in report and "## Findings" in report
    for plot in ("accuracy_vs_learning_rate.png", "cost_curves_without_batch_norm.png", "cost_curves_with_batch_norm.png"):
        assert (tmp_path / plot).exists()


def test_frameworks_study_flax_and_pure_function_agree(frameworks_run: Finished) -> None:
    tmp_path, completed = frameworks_run.dir, frameworks_run.completed
    assert completed.returncode == 0, completed.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["layer_sizes"] == [64, 12, 8, 10]
    rows = results["rows"]
    assert list(rows) == ["pure function (train.fit)", "Flax (linen) + Python loop"]
    for row in rows.values():
        assert all(len(row["curves"][key]) == 3 for key in ("train", "test", "cost"))
        assert row["test_accuracy"] > 0.5  # three epochs of Adam on the digits: far above the 10% of chance
        matrix = row["test_confusion_matrix"]
        assert len(matrix) == 10 and sum(map(sum, matrix)) == results["settings"]["n_test"]
    consistency = results["consistency"]
    assert consistency["pure_curve_end_equals_final_run"]
    assert consistency["max_train_accuracy_gap"] <= 0.01 and consistency["max_test_accuracy_gap"] <= 0.01
    assert consistency["max_relative_cost_gap"] < 1e-4
    report = (tmp_path / "report.md").read_text()
    assert "| Flax (linen) + Python loop |" in report
    for plot in ("accuracy_curves.png", "cost_curves.png", "confusion_matrix.png"):
        assert (tmp_path / plot).exists()


@pytest.mark.parametrize("study, flags", WITHOUT_SKLEARN_CASES)
def test_digits_without_scikit_learn_exit_2_with_the_install_hint(
    study: str, flags: tuple[str, ...], without_sklearn_runs: dict[str, Finished]
) -> None:
    output_dir, completed = without_sklearn_runs[study].dir / "out", without_sklearn_runs[study].completed
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.strip().count("\n") == 0
    assert "pip install -e '.[datasets]'" in completed.stderr
    assert not (output_dir / "results.json").exists()


@pytest.mark.parametrize("study, flag, message", BAD_FLAGS)
def test_bad_flag_is_one_line_and_exit_2(
    study: str, flag: str, message: str, bad_flag_runs: dict[str, subprocess.CompletedProcess]
) -> None:
    completed = bad_flag_runs[flag]
    assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
    assert message in completed.stderr
