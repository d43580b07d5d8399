"""The optimization study end to end, on small settings, as a user runs it."""

import json

import pytest
from background import study


# Ten rows, each its own compiled program (optimizer and schedule are static): compiling is the cost,
# the 30 epochs are not. 30 epochs at 0.01 is what Adam needs to be clearly ahead of GD (asserted below).
SMALL = study("optimizers", "--output_dir={dir}", "--epochs=30", "--num_seeds=2", "--learning_rate=0.01")
BAD_BETA = study("optimizers", "--beta=1.5")
BACKGROUND = {"small_run": [SMALL], "bad_beta": [BAD_BETA]}


@pytest.fixture(scope="module")
def small_run(background_runs):
    return background_runs.result(SMALL)


@pytest.fixture
def bad_beta(background_runs):
    return background_runs.result(BAD_BETA).completed


@pytest.mark.slow
def test_runs_every_row_and_writes_results(small_run):
    tmp_path, completed = small_run.dir, small_run.completed
    assert completed.returncode == 0, completed.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert list(rows) == ["gd", "momentum", "rmsprop", "adam", "gd + scheduled", "momentum + scheduled",
                          "adam + scheduled", "gd + inverse_time", "momentum + inverse_time", "adam + inverse_time"]
    assert rows["adam + scheduled"]["learning_rate"] == 0.01 and rows["gd + scheduled"]["learning_rate"] == 0.1
    for row in rows.values():
        assert row["diverged_runs"] == 0 and 0 <= row["train_accuracy"]["mean"] <= 1
        assert len(row["cost_curve"]["mean"]) == 30
    # Adam adapts its step: after 30 epochs at 0.01 it is clearly ahead of plain GD.
    assert rows["adam"]["final_cost"] < rows["gd"]["final_cost"]
    assert len(results["findings"]) == 3
    report = (tmp_path / "report.md").read_text()
    assert "| adam | scheduled | 0.01 |" in report and "## Findings" in report
    assert (tmp_path / "cost_curves_decay.png").exists()


def test_bad_flag_is_one_line_and_exit_2(bad_beta):
    completed = bad_beta
    assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0
    assert "--beta must be in [0, 1)" in completed.stderr
