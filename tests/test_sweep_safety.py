"""A sweep's directory is never mixed, duplicated or lost (issue 12, cases 5 and 6).

The main job records what its directory holds (manifest.json: the study, the flags that define
its runs, the data fingerprint) and ``--resume`` refuses anything else; one writer at a time holds
the results file's lock (``sweep.lock_results``).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import pytest

from deepopt import bayes, sweep
from sweep_worker import compilation_cache, tiny_sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = (
    "--num_configs=2",
    "--num_seeds=1",
    "--zoom_configs=0",
    "--epochs=2",
    "--hidden=2",
    "--optimizers=adam",
    "--n_train=30",
    "--n_dev=20",
    "--n_test=20",
)


def run_study(*flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """One tiny main-job sweep, run as a user runs it; its directory and the compilation-cache env."""
    directory = tmp_path_factory.mktemp("finished")
    env = compilation_cache(tmp_path_factory.getbasetemp())
    completed = run_study(f"--output_dir={directory}", *TINY, env=env)
    assert completed.returncode == 0, completed.stderr
    return directory, env


def test_the_directory_records_the_study_its_flags_and_data(finished_sweep):
    directory, _ = finished_sweep
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["study"] == "sweep" and len(manifest["data_fingerprint"]) == 16
    assert manifest["flags"]["epochs"] == 2 and manifest["flags"]["dataset"] == "moons"
    assert "output_dir" not in manifest["flags"] and "resume" not in manifest["flags"]
    # The main job records every run's learning curves and plots the top configs' (issue 13).
    rows = sweep.read_rows(directory / "results.jsonl")
    curves = sweep.read_curves(directory / "results.curves.jsonl", [row["id"] for row in rows])
    assert set(curves) == {row["id"] for row in rows} and (directory / "top_curves.png").exists()


def test_the_verdict_uses_the_generators_own_bayes_error(finished_sweep):
    """Issue 12, case 10: on generated data the Bayes estimate is the generator's, stated in the report."""
    directory, _ = finished_sweep
    results = json.loads((directory / "results.json").read_text())
    expected = bayes.bayes_error("moons", noise=0.2)
    assert results["bayes_error"]["known"] and results["bayes_error"]["value"] == pytest.approx(expected)
    assert results["diagnosis"]["bayes_error"] == pytest.approx(expected)
    assert f"Bayes error {expected:.1%}: the moons generator's own at noise 0.2" in (directory / "report.md").read_text()


@pytest.mark.parametrize(
    "changed, named",
    [
        (("--epochs=3",), ["--epochs was 2, now 3"]),
        (("--dataset=circles",), ["--dataset was moons, now circles", "the data differ"]),
        (("--noise=0.3",), ["--noise was 0.2, now 0.3", "the data differ"]),
    ],
)
def test_resume_with_other_flags_is_refused_naming_them(finished_sweep, changed, named):
    directory, env = finished_sweep
    before = snapshot(directory)
    flags = [flag for flag in TINY if flag.split("=")[0] not in {c.split("=")[0] for c in changed}]
    completed = run_study(f"--output_dir={directory}", "--resume", *flags, *changed, env=env)
    assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
    for text in named:
        assert text in completed.stderr
    assert snapshot(directory) == before  # nothing appended, nothing rewritten


def test_a_manifest_without_a_newer_flag_resumes_at_its_default(finished_sweep, tmp_path):
    """A sweep written before --task existed (its manifest lacks it) resumes; another task is refused."""
    directory, env = finished_sweep
    older = tmp_path / "older"
    older.mkdir()
    for name, content in snapshot(directory).items():
        (older / name).write_bytes(content)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["flags"]["task"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    other = run_study(f"--output_dir={older}", "--resume", "--task=regression", *TINY, env=env)
    assert other.returncode == 2 and "--task was unset, now regression" in other.stderr, other.stderr
    same = run_study(f"--output_dir={older}", "--resume", *TINY, env=env)
    assert same.returncode == 0 and "0 trained now, 2 resumed" in same.stdout, same.stderr


def test_resume_with_another_data_file_is_refused(finished_sweep, tmp_path):
    directory, env = finished_sweep
    for name, shift in (("a.csv", 0.0), ("b.csv", 1.0)):
        rows = [f"{i * 0.1 + shift},{(i % 7) * 0.2},{i % 2}" for i in range(40)]
        (tmp_path / name).write_text("x,y,label\n" + "\n".join(rows) + "\n")
    target = tmp_path / "user"
    first = run_study(f"--output_dir={target}", f"--data={tmp_path / 'a.csv'}", *TINY, env=env)
    assert first.returncode == 0, first.stderr
    before = snapshot(target)
    other = run_study(f"--output_dir={target}", "--resume", f"--data={tmp_path / 'b.csv'}", *TINY, env=env)
    assert other.returncode == 2 and "the data differ" in other.stderr, other.stderr
    assert snapshot(target) == before
    same = run_study(f"--output_dir={target}", "--resume", f"--data={tmp_path / 'a.csv'}", *TINY, env=env)
    assert same.returncode == 0 and "0 trained now, 2 resumed" in same.stdout, same.stderr
    # On a user's data the Bayes error is unknown: assumed 0, and the report says so.
    results = json.loads((target / "results.json").read_text())
    assert results["bayes_error"] == {"value": 0.0, "source": results["bayes_error"]["source"], "known": False}
    assert "unknown for your data: assumed 0, so the avoidable bias is an upper bound" in (target / "report.md").read_text()


def test_resume_on_another_studys_directory_touches_nothing(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"study": "initialization", "schemes": []}))
    (tmp_path / "report.md").write_text("# Initialization\n")
    before = snapshot(tmp_path)
    completed = run_study(f"--output_dir={tmp_path}", "--resume", *TINY)
    assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
    assert "the 'initialization' study" in completed.stderr
    assert snapshot(tmp_path) == before


def test_resume_on_a_missing_directory_says_it_starts_fresh(finished_sweep, tmp_path):
    _, env = finished_sweep
    completed = run_study(f"--output_dir={tmp_path / 'new'}", "--resume", *TINY, env=env)
    assert completed.returncode == 0, completed.stderr
    assert "holds no sweep yet; starting a fresh one" in completed.stdout
    assert len(sweep.read_rows(tmp_path / "new" / "results.jsonl")) == 2


HOLDER = textwrap.dedent(
    """
    import sys, time
    from deepopt import sweep
    with sweep.lock_results(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture()
def lock_holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'results.jsonl'``."""
    path = tmp_path / "results.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield path, holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_of_the_main_job_fails_at_once_naming_the_holder(lock_holder):
    path, pid = lock_holder
    completed = run_study(f"--output_dir={path.parent}", "--resume", *TINY)
    assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
    assert str(path.parent) in completed.stderr and f"pid {pid}" in completed.stderr
    assert path.read_text() == ""  # nothing written


def test_a_second_writer_of_sweep_run_fails_before_compiling(lock_holder):
    path, pid = lock_holder
    compiled = sweep.compile_count()
    with pytest.raises(sweep.ResultsInUseError, match=f"pid {pid}"):
        tiny_sweep(results_path=path, resume=False)  # resume=False would have emptied the file
    assert sweep.compile_count() == compiled and path.read_text() == ""


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    path = tmp_path / "results.jsonl"
    with sweep.lock_results(path):
        first = tiny_sweep(results_path=path, resume=False)  # run takes the lock again: no error
        again = tiny_sweep(results_path=path, resume=True)
    assert again.stats["runs_resumed"] == len(first.rows)
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from deepopt import sweep\nwith sweep.lock_results(sys.argv[1]): print('ok')",
         str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert probe.stdout.strip() == "ok", probe.stderr
    assert jax.device_count() >= 1
