"""The sweep across processes: killed and resumed, sharded over 2 forced host devices, 2 processes on 127.0.0.1.

Each test runs ``tests/sweep_worker.py`` in fresh processes (XLA_FLAGS and the distributed runtime
must be set before JAX starts) and compares its rows with the same tiny sweep run here. The workers
start in the background (background.py) when the session starts, beside the other tests; the tests
compare what they wrote with the reference run in this process.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from background import Run
from launcher import kill_when_written
from sweep_worker import assert_same_runs, file_rows, tiny_sweep, without_time

from deepopt import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sweep_worker.py"
pytestmark = pytest.mark.slow

# 5 configs × 2 seeds in chunks of 3 -> 4 runs: padded to a multiple of the 2 devices.
SHARDED = Run((str(WORKER), "{dir}", "--chunk_size=3"), name="sharded", env=(
    ("XLA_FLAGS", f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()),
))
# Two worker processes on a free port of 127.0.0.1, started together by tests/launcher.py (no JAX in it).
TWO_PROCESSES = Run((str(ROOT / "tests" / "launcher.py"), "2", str(WORKER), "{dir}", "--chunk_size=2",
                     "--coordinator={address}", "--num_processes=2", "--process_id={process_id}"), name="two-processes")


def worker(out_dir: pathlib.Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out_dir), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted, single-process, single-device sweep (chunks of 2)."""
    return tiny_sweep(chunk_size=2).rows


def kill_then_resume(tmp_path: pathlib.Path) -> int:
    """A worker killed once it has written a chunk, then the same worker again; returns the rows written before.

    A background task (no JAX here): its assertion errors fail the test that reads it.
    """
    env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # cache every program: the restarted worker loads them
    path = tmp_path / "results.jsonl"
    process = worker(tmp_path, "--chunk_size=2", "--sleep=0.3", env=env)
    kill_when_written([process], path, 2)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    written = path.read_text().count("\n")
    assert 2 <= written < 10, written

    finish(worker(tmp_path, "--chunk_size=2", env=env))
    return written


KILLED = Run(task=kill_then_resume, name="killed")
# Two processes started with other chunk sizes (20 and 21 runs): other chunk programs, so both refuse to start.
MISMATCHED = Run((str(ROOT / "tests" / "launcher.py"), "2", str(WORKER), "{dir}", "--chunk_size=2{process_id}",
                  "--coordinator={address}", "--num_processes=2", "--process_id={process_id}"), name="mismatched")
BACKGROUND = {"killed": [KILLED], "sharded": [SHARDED], "two_processes": [TWO_PROCESSES], "mismatched": [MISMATCHED]}


@pytest.fixture
def killed(background_runs):
    return background_runs.result(KILLED)


def test_a_sweep_killed_mid_way_resumes_to_the_same_rows(killed, reference):
    tmp_path, written = killed.dir, killed.value
    path = tmp_path / "results.jsonl"
    record = json.loads((tmp_path / "rows-0.json").read_text())
    assert record["stats"]["runs_resumed"] == written and record["stats"]["runs_computed"] == 10 - written
    rows = file_rows(path)
    assert sorted(row["id"] for row in rows) == sorted(row["id"] for row in reference)
    assert without_time(record["rows"]) == without_time(reference)  # same program, same device: the same bits


@pytest.fixture
def sharded(background_runs):
    return background_runs.result(SHARDED)


@pytest.fixture
def two_processes(background_runs):
    return background_runs.result(TWO_PROCESSES)


def test_sharded_over_two_forced_host_devices_equals_one_device(sharded, reference):
    tmp_path, completed = sharded.dir, sharded.completed
    assert completed.returncode == 0, completed.stdout + completed.stderr
    record = json.loads((tmp_path / "rows-0.json").read_text())
    assert record["stats"]["devices"] == 2 and record["stats"]["layout"][0]["chunk"] == 4
    assert record["trace_count"] == 1 and record["stats"]["compilations"] == 1
    # each device trains its own runs: no all-reduce holds the devices in step every epoch, only the
    # gathers of the per-run outputs at the end
    assert "all-reduce" not in record["collectives"] and record["collectives"].get("all-gather", 0) >= 1
    assert_same_runs(record["rows"], reference)
    assert_same_runs(sweep.read_rows(tmp_path / "results.jsonl"), reference)


def test_two_local_processes_equal_one(two_processes, reference):
    tmp_path, completed = two_processes.dir, two_processes.completed
    assert completed.returncode == 0, completed.stderr
    first, second = (json.loads((tmp_path / f"rows-{i}.json").read_text()) for i in range(2))
    assert first["stats"]["processes"] == 2 and first["stats"]["devices"] == 2
    assert without_time(first["rows"]) == without_time(second["rows"])  # every process gets every row
    assert_same_runs(file_rows(tmp_path / "results.jsonl"), reference)  # written once, by process 0
    assert_same_runs(first["rows"], reference)


@pytest.fixture
def mismatched(background_runs):
    return background_runs.result(MISMATCHED)


def test_processes_started_with_other_arguments_are_refused_by_every_process(mismatched) -> None:
    completed = mismatched.completed
    assert completed.returncode != 0
    assert completed.stderr.count("every process of a search must be started with the same arguments") == 2
    assert not (mismatched.dir / "results.jsonl").exists()  # refused before the file is opened
