"""The scripts' persistent compilation cache: on by default under the user's cache directory, moved or turned off by a flag."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from background import Run

from experiments import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ("-m", "experiments.sweep", "--num_configs=2", "--epochs=2", "--zoom_configs=0", "--optimizers=adam",
        "--num_seeds=1", "--n_train=50", "--n_dev=20", "--n_test=20", "--host_devices=1")


def cache_files(path: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def three_runs(directory: pathlib.Path) -> dict[str, Any]:
    """The tiny main job with the default cache, with --compilation_cache=DIR, with it off (a thread: no JAX here)."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": "", "XDG_CACHE_HOME": str(directory / "xdg"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    outcomes = {}
    for name, flags in (("default", ()), ("moved", (f"--compilation_cache={directory / 'moved'}",)),
                        ("off", ("--compilation_cache=off",))):
        before = len(cache_files(directory / "xdg")) + len(cache_files(directory / "moved"))
        completed = subprocess.run([sys.executable, *TINY, f"--output_dir={directory / name}", *flags], cwd=ROOT,
                                   env=env, capture_output=True, text=True, timeout=300)
        after = len(cache_files(directory / "xdg")) + len(cache_files(directory / "moved"))
        outcomes[name] = (completed, before, after)
    return outcomes


def twice_with_the_scripts_threshold(directory: pathlib.Path) -> list[tuple[Any, list[str]]]:
    """The tiny main job twice in new processes at the scripts' own threshold; the cache's file names after each."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": "", "XDG_CACHE_HOME": str(directory / "xdg")}
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # the test session's own setting
    outcomes = []
    for run in ("first", "second"):
        completed = subprocess.run([sys.executable, *TINY, f"--output_dir={directory / run}"], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=300)
        outcomes.append((completed, sorted(p.name for p in cache_files(directory / "xdg" / "deepopt" / "jax"))))
    return outcomes


THREE_RUNS = Run(task=three_runs, name="compilation-cache")
TWICE = Run(task=twice_with_the_scripts_threshold, name="compilation-cache-threshold")
BACKGROUND = {"runs": [THREE_RUNS], "twice": [TWICE]}


@pytest.fixture(scope="module")
def runs(background_runs):
    finished = background_runs.result(THREE_RUNS)
    return finished.dir, finished.value


def test_the_default_cache_lives_under_xdg_cache_home_and_the_flag_moves_or_disables_it(runs) -> None:
    directory, outcomes = runs
    for name, (completed, _, _) in outcomes.items():
        assert completed.returncode == 0, (name, completed.stderr)
    assert cache_files(directory / "xdg" / "deepopt" / "jax")  # written by the default run
    assert cache_files(directory / "moved")  # --compilation_cache=DIR
    _, before, after = outcomes["off"]
    assert after == before  # off: nothing written anywhere


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert common.default_cache_dir() == str(tmp_path / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert common.default_cache_dir() == str(tmp_path / "xdg" / "deepopt" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert common.default_cache_dir() == str(tmp_path / "home" / ".cache" / "deepopt" / "jax")


@pytest.fixture(scope="module")
def twice(background_runs):
    return background_runs.result(TWICE).value


def test_the_scripts_cache_the_data_generators_small_programs_and_a_second_run_compiles_nothing(twice) -> None:
    (first, after_first), (second, after_second) = twice
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    # make_moons's eager programs compile in milliseconds: a threshold above 0 (0.25 s until issue 17's
    # seventh session) left them out, and every run compiled them again (about 1 s per new split size)
    for program in ("jit_cos-", "jit_sin-", "jit_concatenate-"):
        assert any(name.startswith(program) for name in after_first), (program, after_first)
    assert after_second == after_first  # the second run loaded every program: nothing new to write
