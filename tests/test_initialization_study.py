"""The initialization study end to end, on small settings, as a user runs it."""

import json
import pathlib

import jax
import numpy as np
import pytest
from background import study

from deepopt import data


def write_user_csvs(directory: pathlib.Path) -> None:
    """A user's moons (80 rows) and a file whose labels are not class ids."""
    dataset = data.make_moons(jax.random.key(0), 80, 0.1)
    table = np.column_stack([np.asarray(dataset.X), np.asarray(dataset.y)])
    np.savetxt(directory / "moons.csv", table, delimiter=",", header="x1,x2,label", comments="")
    (directory / "bad.csv").write_text("x1,x2,label\n1,2,0\n3,4,7.5\n")


# Started in the background (see background.py): every test below reads a finished subprocess.
SMALL = study("initialization", "--output_dir={dir}/out", "--epochs=300", "--num_seeds=2", "--schemes=zeros,random,he")
REFUSED = study("initialization", "--output_dir={dir}/out", "--epochs=2", after=SMALL)
BAD_FLAGS = [("--epochs=0", "--epochs"), ("--schemes=he,bogus", "--schemes"), ("--learning_rate=-1", "--learning_rate"),
             ("--data=/no/such.csv", "--data"), ("--no_such_flag=1", "no_such_flag")]
BAD_RUNS = {flag: study("initialization", flag) for flag, _ in BAD_FLAGS}
USER_CSV = study("initialization", "--output_dir={dir}/out", "--data={dir}/moons.csv", "--epochs=50", "--num_seeds=1",
                 "--schemes=he", prepare=write_user_csvs)
BAD_CSV = study("initialization", "--output_dir={dir}/out2", "--data={dir}/bad.csv", after=USER_CSV)
BACKGROUND = {"small_run": [SMALL], "refused": [REFUSED], "bad_flag_runs": list(BAD_RUNS.values()),
              "user_csv_runs": [USER_CSV, BAD_CSV]}


@pytest.fixture(scope="module")
def small_run(background_runs):
    finished = background_runs.result(SMALL)
    assert finished.completed.returncode == 0, finished.completed.stderr
    return finished.dir / "out", finished.completed


@pytest.fixture(scope="module")
def refused(background_runs, small_run):
    return background_runs.result(REFUSED).completed


@pytest.fixture(scope="module")
def bad_flag_runs(background_runs):
    return {flag: background_runs.result(run).completed for flag, run in BAD_RUNS.items()}


@pytest.fixture(scope="module")
def user_csv_runs(background_runs):
    good = background_runs.result(USER_CSV)
    return good.dir, good.completed, background_runs.result(BAD_CSV).completed


def test_writes_results_report_and_plots(small_run):
    output_dir, completed = small_run
    results = json.loads((output_dir / "results.json").read_text())
    assert set(results["schemes"]) == {"zeros", "random", "he"}
    for row in results["schemes"].values():
        assert set(row["test_accuracy"]) == {"mean", "std", "min", "max"}
        assert len(row["cost_curve"]["mean"]) == len(row["cost_curve"]["epochs"]) == 300
    assert results["settings"]["layer_sizes"] == [2, 10, 5, 1] and results["settings"]["num_seeds"] == 2
    report = (output_dir / "report.md").read_text()
    assert "| zeros |" in report and "## Reading" in report
    assert (output_dir / "decision_boundaries.png").stat().st_size > 0
    assert "zeros" in completed.stdout


def test_shows_the_course_findings(small_run):
    schemes = json.loads((small_run[0] / "results.json").read_text())["schemes"]
    assert schemes["zeros"]["hidden_units_identical"] and schemes["zeros"]["test_accuracy"]["max"] == 0.5
    assert not schemes["he"]["hidden_units_identical"]
    assert schemes["random"]["first_cost"] > 20 * schemes["he"]["first_cost"]


def test_refuses_to_overwrite_results(refused):
    completed = refused
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "already holds results.json" in completed.stderr


@pytest.mark.parametrize("flag, message", BAD_FLAGS)
def test_bad_flags_one_line_and_exit_2(bad_flag_runs, flag, message):
    completed = bad_flag_runs[flag]
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and message in completed.stderr


def test_runs_on_user_csv(user_csv_runs):
    directory, completed, bad = user_csv_runs
    assert completed.returncode == 0, completed.stderr
    results = json.loads((directory / "out" / "results.json").read_text())
    assert results["settings"]["n_train"] + results["settings"]["n_test"] == 80
    assert bad.returncode == 2 and "class ids" in bad.stderr
