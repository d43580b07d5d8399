"""The adaptive searches scaled out: over 2 host devices, over 2 processes on 127.0.0.1, a process killed mid-rung.

Every run here is a subprocess started in the background (``background.py``): ``adaptive_worker.py``
alone (``--devices=2``: one process, the CPU split into 2 devices) or as 2 processes of one
``jax.distributed`` run (``launcher.py``: gloo collectives, one device each). The 2-process search
must give exactly the rows, history and file of the one process over 2 devices.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import pytest
from adaptive_worker import tiny_data, tiny_hyperband, tiny_pbt
from background import Run
from launcher import finish, kill_when_written, start
from sweep_worker import file_rows, without_time

from deepopt import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "adaptive_worker.py"
LAUNCHER = ROOT / "tests" / "launcher.py"
PROCESS_FLAGS = ("--coordinator={address}", "--num_processes=2", "--process_id={process_id}")
METHODS = ("hyperband", "pbt", "median", "pareto")  # pareto: Hyperband asked by TPE, two objectives
pytestmark = pytest.mark.slow

TWO_DEVICES = {method: Run((str(WORKER), method, "{dir}", "--devices=2"), name=f"{method}-two-devices")
               for method in METHODS}
TWO_PROCESSES = {method: Run((str(LAUNCHER), "2", str(WORKER), method, "{dir}", *PROCESS_FLAGS),
                             name=f"{method}-two-processes") for method in METHODS}


def kill_one_process_then_resume(directory: pathlib.Path, victim: int, after_lines: int) -> dict[str, Any]:
    """PBT as 2 processes; SIGKILL process ``victim`` once ``after_lines`` rows are written, then restart both.

    A background task (no JAX here). Returns the rows written before, how the other process ended
    and its seconds from the kill, and the restarted processes' exit codes.
    """
    path = directory / "results.jsonl"
    command = (str(WORKER), "pbt", str(directory), *PROCESS_FLAGS)
    processes = start(2, (*command, "--sleep=0.25"))
    kill_when_written(processes, path, after_lines, victim)
    killed = time.monotonic()
    survivor = processes[1 - victim]
    finish([survivor], timeout=120)  # the runtime's heartbeat (10 s in the worker) ends it
    survivor_seconds = time.monotonic() - killed
    finish(processes)
    written = path.read_text().count("\n")  # process 0 may append its chunk in flight before it stops
    restarted = start(2, command)
    outputs = finish(restarted)
    return {"written": written, "survivor_code": survivor.returncode, "survivor_seconds": survivor_seconds,
            "codes": [p.returncode for p in restarted], "outputs": outputs}


MISMATCHED = Run((str(LAUNCHER), "2", str(WORKER), "hyperband", "{dir}", *PROCESS_FLAGS,
                  "--process_1_metric=train_accuracy"), name="processes-with-other-arguments")
KILLED = Run(task=lambda d: kill_one_process_then_resume(d, victim=1, after_lines=24), name="pbt-process-killed")
BACKGROUND = {"two_devices": list(TWO_DEVICES.values()), "two_processes": list(TWO_PROCESSES.values()),
              "killed": [KILLED], "mismatched": [MISMATCHED]}


@pytest.fixture
def two_devices(background_runs) -> dict[str, Any]:
    return {method: background_runs.result(run) for method, run in TWO_DEVICES.items()}


@pytest.fixture
def two_processes(background_runs) -> dict[str, Any]:
    return {method: background_runs.result(run) for method, run in TWO_PROCESSES.items()}


@pytest.fixture
def killed(background_runs):
    return background_runs.result(KILLED)


@pytest.fixture
def mismatched(background_runs):
    return background_runs.result(MISMATCHED)


@pytest.fixture(scope="module")
def one_device() -> dict[str, sweep.Results]:
    return {"hyperband": tiny_hyperband(), "pbt": tiny_pbt()}


def test_sharded_over_two_devices_the_searches_find_the_same(two_devices, one_device) -> None:
    m_dev = len(tiny_data()[1].y)
    for method, reference in one_device.items():  # hyperband and pbt
        finished = two_devices[method]
        assert finished.completed.returncode == 0, finished.completed.stdout + finished.completed.stderr
        final = json.loads((finished.dir / "final.json").read_text())
        assert final["stats"]["devices"] == 2
        assert all(c % 2 == 0 for c in final["stats"]["configs_per_chunk"].values())  # padded to the devices
        first = [r for r in sweep.read_rows(finished.dir / "results.jsonl") if r["stage"] in ("b0r0", "g0")]
        expected = [r for r in reference.history if r["stage"] in ("b0r0", "g0")]
        assert sorted(r["id"] for r in first) == sorted(r["id"] for r in expected)
        by_id = {r["id"]: r for r in expected}
        for row in first:  # the first stage, before any choice: the same runs up to float32 rounding
            assert row["final_cost"] == pytest.approx(by_id[row["id"]]["final_cost"], rel=1e-4)
            assert abs(row["dev_accuracy"] - by_id[row["id"]]["dev_accuracy"]) <= 1 / m_dev + 1e-6


def test_over_two_processes_every_adaptive_search_equals_one_process_over_two_devices(
    two_processes, two_devices
) -> None:
    for method in METHODS:
        finished, reference = two_processes[method], two_devices[method]
        assert finished.completed.returncode == 0, finished.completed.stderr
        first, second = (json.loads((finished.dir / name).read_text()) for name in ("final.json", "final-1.json"))
        expected = json.loads((reference.dir / "final.json").read_text())
        assert first["stats"]["processes"] == 2 and first["stats"]["devices"] == 2
        # the same survivors, copies and explored values, bit for bit: every row, stage by stage
        assert without_time(first["history"]) == without_time(expected["history"])
        assert without_time(first["rows"]) == without_time(expected["rows"])
        assert without_time(second["rows"]) == without_time(first["rows"])  # every process gets every row
        # written once, by process 0, with the states the resume would read
        assert without_time(file_rows(finished.dir / "results.jsonl")) == without_time(
            file_rows(reference.dir / "results.jsonl"))
        assert sorted(p.name for p in (finished.dir / "results.states").iterdir()) == sorted(
            p.name for p in (reference.dir / "results.states").iterdir())
        if method == "pbt":
            assert first["stats"]["exploits"] == expected["stats"]["exploits"] and first["stats"]["exploits"]
        if method == "median":
            assert first["stats"]["stopped"] == expected["stats"]["stopped"] and first["stats"]["stopped"]


def test_a_process_killed_mid_search_stops_the_other_and_both_resume_to_the_same_rows(killed, two_devices) -> None:
    value, directory = killed.value, killed.dir
    assert value["survivor_code"] != 0 and value["survivor_seconds"] < 60  # the other process does not hang
    assert value["codes"] == [0, 0], value["outputs"]
    reference = two_devices["pbt"].dir
    rows = file_rows(directory / "results.jsonl")
    assert len({row["id"] for row in rows}) == len(rows)  # none written twice
    assert sorted(without_time(rows), key=lambda r: r["id"]) == sorted(
        without_time(file_rows(reference / "results.jsonl")), key=lambda r: r["id"])
    final = json.loads((directory / "final.json").read_text())
    expected = json.loads((reference / "final.json").read_text())
    assert without_time(final["rows"]) == without_time(expected["rows"])
    assert final["stats"]["runs_resumed"] == value["written"] > 0  # only the chunk in flight was computed again
    assert final["stats"]["runs_computed"] == len(rows) - value["written"] > 0


def test_processes_started_with_other_arguments_are_refused_by_every_process(mismatched) -> None:
    completed, directory = mismatched.completed, mismatched.dir
    assert completed.returncode != 0
    # both processes raise the same error before anything is trained (no hang until a heartbeat gives up)
    assert completed.stderr.count("every process of a search must be started with the same arguments") == 2
    assert "process(es) [1] differ from process 0's" in completed.stderr
    assert not (directory / "results.jsonl").exists()
