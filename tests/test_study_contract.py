"""The study contract of ``experiments/common.py``, as a user meets it: help, output directory, file modes.

The scripts run as a user runs them (``python -m experiments.<study>`` in a subprocess) on paths that
exit before training, or on tiny settings; ``write_json`` / ``write_text`` / ``output_description``
are called directly (they read no flags).
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys

import numpy as np
import pytest

from experiments import common

ROOT = pathlib.Path(__file__).resolve().parents[1]

SHARED_FLAGS = ["--output_dir", "--seed", "--data", "--test_data", "--test_fraction", "--overwrite", "--data_dtype"]
"""The flags ``common.define_study_flags`` gives every study (boolean ones are listed as ``--[no]name``)."""


def run(study: str, *flags: str) -> subprocess.CompletedProcess:
    """``python -m experiments.<study> <flags>`` from the repository root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{study}", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def flag_listed(name: str, text: str) -> bool:
    """True when help ``text`` lists the flag ``--name`` (``--[no]name`` for a boolean)."""
    bare = name.removeprefix("--")
    return f"  --{bare}:" in text or f"  --[no]{bare}:" in text


def write_csv(path: pathlib.Path, X: np.ndarray, y: np.ndarray) -> pathlib.Path:
    """A CSV with a header row, the label in the last column."""
    rows = ["x1,x2,label"] + [f"{a:.5f},{b:.5f},{int(label)}" for (a, b), label in zip(X, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


# 1. --help / --helpshort / -? list the study's own and the shared flags on stdout and exit 0.

@pytest.mark.parametrize(
    "study, help_flag, own_flags",
    [
        ("initialization", "--helpshort", ["--epochs", "--schemes"]),
        ("initialization", "--help", ["--epochs", "--schemes"]),
        ("initialization", "-?", ["--epochs", "--schemes"]),
        ("sweep", "--helpshort", ["--resume", "--host_devices", "--num_configs"]),
        ("sweep", "--help", ["--resume", "--host_devices", "--num_configs"]),
    ],
)
def test_help_lists_own_and_shared_flags_and_exits_0(study: str, help_flag: str, own_flags: list[str]) -> None:
    completed = run(study, help_flag)
    assert completed.returncode == 0, completed.stderr
    missing = [name for name in SHARED_FLAGS + own_flags if not flag_listed(name, completed.stdout)]
    assert not missing, f"{help_flag} of {study} does not list {missing}:\n{completed.stdout}"
    assert "--helpfull" in completed.stdout  # the pointer to the full list stays
    assert not flag_listed("--jax_platforms", completed.stdout)  # the short help stays short


def test_helpfull_exits_0_with_every_flag() -> None:
    completed = run("initialization", "--helpfull")
    assert completed.returncode == 0, completed.stderr
    assert all(flag_listed(name, completed.stdout) for name in SHARED_FLAGS + ["--epochs"])
    assert flag_listed("--helpshort", completed.stdout)


# 2. An unusable --output_dir is a one-line error naming the flag and the path, exit 2, before training.

def test_output_dir_under_a_regular_file_is_a_one_line_error(tmp_path: pathlib.Path) -> None:
    regular_file = tmp_path / "somefile"
    regular_file.write_text("not a directory\n")
    output_dir = regular_file / "sub"
    completed = run("initialization", f"--output_dir={output_dir}", "--epochs=1", "--num_seeds=1")
    assert completed.returncode == 2, completed.stderr
    message = completed.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert "--output_dir" in message and str(output_dir) in message and "is a file" in message
    assert completed.stdout == ""  # nothing started: no "net ..." progress line


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod")
def test_output_dir_without_write_permission_is_a_one_line_error(tmp_path: pathlib.Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        completed = run("initialization", f"--output_dir={locked}", "--epochs=1", "--num_seeds=1")
    finally:
        locked.chmod(0o755)
    assert completed.returncode == 2, completed.stderr
    message = completed.stderr.strip()
    assert "\n" not in message and "--output_dir" in message and str(locked) in message


# 3. report.md / results.json get the mode a plain open() gives: 0o666 less the umask.

@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path: pathlib.Path, umask: int, expected: int) -> None:
    previous = os.umask(umask)
    try:
        common.write_json(tmp_path / "results.json", {"value": 1.0, "missing": float("nan")})
        common.write_text(tmp_path / "report.md", "# report\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("written by open()\n")
    finally:
        os.umask(previous)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("results.json", "report.md", "plain.txt")}
    assert modes == {"results.json": expected, "report.md": expected, "plain.txt": expected}, {k: oct(v) for k, v in modes.items()}
    assert json.loads((tmp_path / "results.json").read_text()) == {"value": 1.0, "missing": None}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["plain.txt", "report.md", "results.json"]  # no temporaries


# 4. A study that fails on its input removes the output directories it created and left empty.

def test_bad_data_leaves_no_empty_output_dir_behind(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("x1,x2,label\n0.1,0.2,0\n0.3,oops,1\n0.5,0.6,0\n")
    existing = tmp_path / "existing"  # existed before the run: must stay
    existing.mkdir()
    output_dir = existing / "new" / "deeper"  # both levels created by the run: must go
    completed = run("initialization", f"--output_dir={output_dir}", f"--data={bad}", "--epochs=1", "--num_seeds=1")
    assert completed.returncode == 2, completed.stderr
    message = completed.stderr.strip()
    assert "\n" not in message and str(bad) in message and "oops" in message
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_bad_data_keeps_an_existing_output_dir(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("x1,x2,label\n0.1,0.2,0\n0.3,oops,1\n")
    output_dir = tmp_path / "mine"  # the user's own, empty, directory
    output_dir.mkdir()
    completed = run("initialization", f"--output_dir={output_dir}", f"--data={bad}", "--epochs=1", "--num_seeds=1")
    assert completed.returncode == 2, completed.stderr
    assert output_dir.is_dir()


# 5. The report names the output layer: sigmoid for one unit, softmax for K >= 2.

def test_output_description() -> None:
    assert common.output_description(1) == "sigmoid output"
    assert common.output_description(2) == "softmax output (2 classes)"
    assert common.output_description(3) == "softmax output (3 classes)"
    with pytest.raises(ValueError, match="n_out"):
        common.output_description(0)


def test_initialization_report_says_softmax_on_three_classes(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    X = rng.normal(size=(60, 2)) + np.stack([3.0 * y, np.zeros(60)], axis=1)
    data = write_csv(tmp_path / "three.csv", X, y)
    output_dir = tmp_path / "out"
    completed = run("initialization", f"--output_dir={output_dir}", f"--data={data}", "--epochs=3",
                    "--num_seeds=1", "--schemes=he")
    assert completed.returncode == 0, completed.stderr
    report = (output_dir / "report.md").read_text()
    assert "softmax output (3 classes)" in report and "sigmoid" not in report
    assert json.loads((output_dir / "results.json").read_text())["settings"]["layer_sizes"][-1] == 3


def test_a_study_trains_user_data_in_bfloat16(tmp_path: pathlib.Path) -> None:
    # --data_dtype: the .npz's float64 X is loaded as bfloat16 and trains on float32 master weights.
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    X = rng.normal(size=(80, 2)) + np.stack([3.0 * y, np.zeros(80)], axis=1)
    np.savez(tmp_path / "two.npz", X=X, y=y)
    output_dir = tmp_path / "out"
    completed = run("initialization", f"--output_dir={output_dir}", f"--data={tmp_path / 'two.npz'}", "--epochs=3",
                    "--num_seeds=1", "--schemes=he", "--data_dtype=bfloat16")
    assert completed.returncode == 0, completed.stderr
    assert (output_dir / "results.json").is_file()
    bad = run("initialization", f"--output_dir={tmp_path / 'bad'}", f"--data={tmp_path / 'two.npz'}",
              "--data_dtype=float8")
    assert bad.returncode == 2 and "--data_dtype" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# The plotting helper is public; the old private name still works.

def test_pyplot_is_public_and_the_old_name_stays() -> None:
    assert common._pyplot is common.pyplot
    assert common.pyplot().get_backend().lower() == "agg"
