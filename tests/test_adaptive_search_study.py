"""The adaptive-search study and the main job's --search=hyperband / pbt, end to end, as a user runs them."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import launcher
import pytest
from background import Run, study
from sweep_worker import without_time

from deepopt import sweep

WITHOUT_MNIST1D = (
    "import runpy, sys; sys.modules['mnist1d'] = None; sys.modules['mnist1d.data'] = None; "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)
QUICK = study("adaptive_search", "--output_dir={dir}/out", "--quick")
BAD_FLAGS = [
    (("--methods=random,bogus",), "--methods must be a comma-separated list"),
    (("--min_epochs=10", "--max_epochs=5"), "--min_epochs must be <= --max_epochs"),
    (("--fraction=0.9",), "--fraction must be in (0, 0.5]"),
]
BAD_RUNS = [study("adaptive_search", *flags) for flags, _ in BAD_FLAGS]
NO_MNIST1D = Run(("-c", WITHOUT_MNIST1D, "experiments.adaptive_search", "--output_dir={dir}/out"), name="no-mnist1d")
MAIN_SMALL = ("--epochs=9", "--num_seeds=1", "--n_train=100", "--n_dev=60", "--n_test=60")
HYPERBAND = study("sweep", "--output_dir={dir}", "--search=hyperband", "--min_epochs=1", "--host_devices=2",
                  *MAIN_SMALL)
# The same Hyperband as 2 processes of one device each, each chunk's report slowed so that a kill lands mid-rung.
SLOWED_MAIN_JOB = (
    "import runpy, sys, time; from deepopt.sweep import chunks; report = chunks.ChunkEngine.report; "
    "chunks.ChunkEngine.report = lambda self, *a, **k: (report(self, *a, **k), time.sleep(0.3))[0]; "
    "runpy.run_module('experiments.sweep', run_name='__main__', alter_sys=True)"
)
TWO_PROCESS_FLAGS = ("--search=hyperband", "--min_epochs=1", "--host_devices=1", *MAIN_SMALL,
                     "--coordinator_address={address}", "--num_processes=2", "--process_id={process_id}")


def kill_process_0_then_resume(directory: pathlib.Path, after_lines: int = 8) -> dict[str, Any]:
    """The main job's Hyperband as 2 processes; SIGKILL process 0 (the writer) mid-rung, then both again with --resume.

    A background task (no JAX here): the rows written before the kill, how process 1 ended, the
    restarted processes' exit codes and outputs.
    """
    path = directory / "results.jsonl"
    flags = (f"--output_dir={directory}", *TWO_PROCESS_FLAGS)
    processes = launcher.start(2, ("-c", SLOWED_MAIN_JOB, *flags, "--heartbeat_timeout=5"))
    launcher.kill_when_written(processes, path, after_lines, victim=0)
    launcher.finish(processes, timeout=120)
    written = path.read_text().count("\n")
    restarted = launcher.start(2, ("-m", "experiments.sweep", *flags, "--resume"))
    outputs = launcher.finish(restarted)
    return {"written": written, "survivor_code": processes[1].returncode,
            "codes": [p.returncode for p in restarted], "outputs": outputs}


KILLED_TWO_PROCESSES = Run(task=kill_process_0_then_resume, name="main-hyperband-process-killed")
# --resume on a directory of another study: process 0 refuses it, and process 1 says the same, not waits.
REFUSED_TWO_PROCESSES = Run(
    (str(pathlib.Path(launcher.__file__)), "2", "-m", "experiments.sweep", "--output_dir={dir}/out", "--resume",
     *TWO_PROCESS_FLAGS),
    prepare=lambda d: ((d / "out").mkdir(), (d / "out" / "results.json").write_text('{"study": "batch_norm"}')),
    name="main-two-processes-refused",
)
PBT = study("sweep", "--output_dir={dir}", "--search=pbt", "--interval=3", "--num_configs=24", *MAIN_SMALL)
PBT_RESUMED = study("sweep", "--output_dir={dir}", "--search=pbt", "--interval=3", "--num_configs=24", "--resume",
                    *MAIN_SMALL, after=PBT, snapshot=("results.jsonl",))
SWITCHED = study("sweep", "--output_dir={dir}", "--search=hyperband", "--num_configs=24", "--resume", *MAIN_SMALL,
                 after=PBT_RESUMED)
BACKGROUND = {"quick": [QUICK], "bad_flags": BAD_RUNS, "no_mnist1d": [NO_MNIST1D],
              "main_hyperband": [HYPERBAND], "main_pbt": [PBT, PBT_RESUMED, SWITCHED],
              "main_killed": [KILLED_TWO_PROCESSES], "main_refused": [REFUSED_TWO_PROCESSES]}


@pytest.fixture(scope="module")
def quick(background_runs):
    finished = background_runs.result(QUICK)
    assert finished.completed.returncode == 0, finished.completed.stderr
    return finished.dir / "out", json.loads((finished.dir / "out" / "results.json").read_text())


@pytest.fixture(scope="module")
def bad_flags(background_runs):
    return [background_runs.result(run).completed for run in BAD_RUNS]


@pytest.fixture(scope="module")
def no_mnist1d(background_runs):
    return background_runs.result(NO_MNIST1D)


@pytest.fixture(scope="module")
def main_hyperband(background_runs):
    return background_runs.result(HYPERBAND)


@pytest.fixture(scope="module")
def main_killed(background_runs):
    return background_runs.result(KILLED_TWO_PROCESSES)


@pytest.fixture(scope="module")
def main_refused(background_runs):
    return background_runs.result(REFUSED_TWO_PROCESSES)


@pytest.fixture(scope="module")
def main_pbt(background_runs):
    return [background_runs.result(run) for run in (PBT, PBT_RESUMED, SWITCHED)]


@pytest.mark.slow
def test_the_study_compares_every_method_on_one_budget(quick) -> None:
    output_dir, results = quick
    methods = results["methods"]
    assert list(methods) == ["random", "tpe", "halving", "hyperband", "hyperband_tpe", "pbt", "median"]
    random_steps = methods["random"]["config_steps"]
    assert methods["median"]["config_steps"] < random_steps and methods["median"]["configs"] == 9  # stopped some
    batches = -(-200 // 50)
    assert random_steps == 9 * 9 * batches  # 9 configs × 9 epochs × 4 mini-batches
    assert methods["pbt"]["config_steps"] == random_steps  # PBT at random search's compute
    assert methods["halving"]["config_steps"] < methods["hyperband"]["config_steps"] < random_steps
    assert [b["configs"] for b in methods["hyperband"]["brackets"]] == [9, 5, 3]
    assert methods["tpe"]["config_steps"] == random_steps  # TPE at random search's budget
    assert methods["hyperband_tpe"]["config_steps"] == methods["hyperband"]["config_steps"]
    assert methods["tpe"]["winner"] != methods["random"]["winner"]  # another sampler, other configs
    for method, summary in methods.items():
        assert 0.5 < summary["best_dev_accuracy"] <= 1 and 0.5 < summary["test_accuracy_after_retraining"] <= 1
        curve = results["curves"][method]
        assert curve["config_steps"][-1] == summary["config_steps"]  # the plot's x axis ends at the method's spend
        assert max(curve["best_dev_accuracy"]) >= summary["best_dev_accuracy"] - 1e-9  # the winner was seen
    report = (output_dir / "report.md").read_text()
    assert "| hyperband | 17 |" in report and "test accuracy (retrained on train + dev)" in report
    assert (output_dir / "best_dev_accuracy_vs_config_steps.png").exists()


def test_bad_flags_are_one_line_and_exit_2(bad_flags) -> None:
    for (_, message), completed in zip(BAD_FLAGS, bad_flags, strict=True):
        assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
        assert message in completed.stderr


def test_mnist1d_without_its_package_names_the_extra(no_mnist1d) -> None:
    completed = no_mnist1d.completed
    assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
    assert "pip install -e '.[datasets]'" in completed.stderr
    assert not (no_mnist1d.dir / "out" / "results.json").exists()


@pytest.mark.slow
def test_the_main_job_runs_hyperband(main_hyperband) -> None:
    completed, directory = main_hyperband.completed, main_hyperband.dir
    assert completed.returncode == 0, completed.stderr
    results = json.loads((directory / "results.json").read_text())
    assert results["settings"]["search"] == "hyperband" and results["zoomed_space"] is None
    stats = results["rounds"][0]
    assert [b["configs"] for b in stats["brackets"]] == [9, 5, 3]
    assert stats["config_steps"] < 17 * 9 * stats["batches_per_epoch"]  # less than every config at full budget
    rows = sweep.read_rows(directory / "results.jsonl")
    assert {r["bracket"] for r in rows} == {0, 1, 2} and len({r["id"] for r in rows}) == len(rows)
    assert results["leaderboard"][0]["epochs_trained"]["min"] == 9
    assert "runs trained to the full budget first" in (directory / "report.md").read_text()


@pytest.mark.slow
def test_the_main_job_runs_pbt_resumes_it_and_refuses_to_switch_method(main_pbt) -> None:
    first, resumed, switched = main_pbt
    assert first.completed.returncode == 0, first.completed.stderr
    results = json.loads((first.dir / "results.json").read_text())
    stats = results["rounds"][0]
    assert stats["method"] == "pbt" and stats["subpopulations"] == 3 and stats["generations"] == 3
    assert resumed.completed.returncode == 0, resumed.completed.stderr
    assert "(0 trained now" in resumed.completed.stdout
    assert (first.dir / "results.jsonl").read_text() == (resumed.before / "results.jsonl").read_text()
    assert switched.completed.returncode == 2 and "--search was pbt, now hyperband" in switched.completed.stderr


@pytest.mark.slow
def test_the_main_job_s_hyperband_over_two_processes_resumes_after_a_kill_to_the_same_rows(
    main_killed, main_hyperband
) -> None:
    value, directory = main_killed.value, main_killed.dir
    assert value["survivor_code"] != 0  # process 1 stops once process 0 is gone, rather than hang
    assert value["codes"] == [0, 0], value["outputs"]
    assert "on 2 device(s)" in value["outputs"][0]
    rows = sweep.read_rows(directory / "results.jsonl")
    assert len({r["id"] for r in rows}) == len(rows)  # none written twice
    by_id = lambda rows: sorted(without_time(rows), key=lambda r: r["id"])  # noqa: E731
    # one process over 2 devices and 2 processes of 1, killed and resumed: the same rows, bit for bit
    assert by_id(rows) == by_id(sweep.read_rows(main_hyperband.dir / "results.jsonl"))
    calls = json.loads((directory / "results.record.json").read_text())["calls"]
    stats = calls[-1]["stats"]
    assert stats["processes"] == 2 and stats["runs_resumed"] == value["written"] > 0
    assert stats["runs_computed"] == len(rows) - value["written"] > 0  # only the chunks in flight again
    assert (directory / "report.md").exists() and (directory / "results.json").exists()


@pytest.mark.slow
def test_over_two_processes_a_refusal_on_process_0_ends_both_with_its_one_line(main_refused) -> None:
    completed = main_refused.completed
    assert completed.returncode == 2, completed.stderr  # both exit 2 at once: no wait for a heartbeat
    message = "holds the results of the 'batch_norm' study, not a sweep"
    assert completed.stderr.count(message) == 2  # process 0's error, and process 1's copy of it
    assert completed.stderr.count("Traceback") == 0
