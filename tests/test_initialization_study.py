"""The initialization study end to end, on small settings, as a user runs it."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from deepopt import data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_study(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.initialization", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("init") / "out"
    completed = run_study(f"--output_dir={output_dir}", "--epochs=300", "--num_seeds=2", "--schemes=zeros,random,he")
    assert completed.returncode == 0, completed.stderr
    return output_dir, completed


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


def test_refuses_to_overwrite_results(small_run):
    completed = run_study(f"--output_dir={small_run[0]}", "--epochs=2")
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "already holds results.json" in completed.stderr


@pytest.mark.parametrize(
    "flag, message",
    [("--epochs=0", "--epochs"), ("--schemes=he,bogus", "--schemes"), ("--learning_rate=-1", "--learning_rate"),
     ("--data=/no/such.csv", "--data"), ("--no_such_flag=1", "no_such_flag")],
)
def test_bad_flags_one_line_and_exit_2(flag, message):
    completed = run_study(flag)
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and message in completed.stderr


def test_runs_on_user_csv(tmp_path):
    dataset = data.make_moons(jax.random.key(0), 80, 0.1)
    table = np.column_stack([np.asarray(dataset.X), np.asarray(dataset.y)])
    csv = tmp_path / "moons.csv"
    np.savetxt(csv, table, delimiter=",", header="x1,x2,label", comments="")
    completed = run_study(f"--output_dir={tmp_path / 'out'}", f"--data={csv}", "--epochs=50", "--num_seeds=1", "--schemes=he")
    assert completed.returncode == 0, completed.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["n_train"] + results["settings"]["n_test"] == 80
    bad = tmp_path / "bad.csv"
    bad.write_text("x1,x2,label\n1,2,0\n3,4,7.5\n")
    completed = run_study(f"--output_dir={tmp_path / 'out2'}", f"--data={bad}")
    assert completed.returncode == 2 and "class ids" in completed.stderr
