"""The caller's JAX configuration reaches every thread deepopt starts (compiling ahead, concurrent chunks).

A search inside ``with jax.enable_x64(True):`` gives exactly the rows of the same search in a process
started with ``JAX_ENABLE_X64=1`` (the reference, ``x64_worker.py`` run in the background).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from background import ROOT, Run

from deepopt.sweep import jax_config

sys.path.insert(0, str(ROOT / "tests"))
import x64_worker  # noqa: E402

REFERENCE = Run((str(ROOT / "tests" / "x64_worker.py"), "{dir}/rows.json"), env=(("JAX_ENABLE_X64", "1"),),
                name="x64-reference")
BACKGROUND = {"x64_reference": [REFERENCE]}


@pytest.fixture(scope="module")
def x64_reference(background_runs) -> dict:
    finished = background_runs.result(REFERENCE)
    assert finished.completed.returncode == 0, finished.completed.stdout + finished.completed.stderr
    return json.loads((finished.dir / "rows.json").read_text())


@pytest.fixture(scope="module")
def in_context() -> dict:
    with jax.enable_x64(True):
        return x64_worker.all_rows()


@pytest.mark.parametrize("search", sorted(x64_worker.SEARCHES))
def test_a_search_inside_enable_x64_equals_a_JAX_ENABLE_X64_process(search, in_context, x64_reference) -> None:
    rows, reference = in_context[search], x64_reference[search]
    assert len(rows) >= 6
    assert rows == reference  # every value, bit for bit
    # float64 end to end: a float32 run's costs would all be float32 numbers
    assert any(np.float64(np.float32(row["final_cost"])) != row["final_cost"] for row in rows)


def test_the_float64_searches_ran_threads_and_several_groups(in_context) -> None:
    groups = {row["config"]["optimizer"] for row in in_context["random"]}
    assert groups == {"momentum", "adam"}  # the second group's program was compiled ahead, in a thread


def test_a_thread_pool_runs_tasks_under_the_submitting_threads_configuration() -> None:
    def observe() -> tuple:
        return (jnp.zeros(()).dtype, jax.config.jax_default_matmul_precision, jax.config.jax_default_device)

    device = jax.devices()[-1]
    with jax_config.ThreadPool(max_workers=1) as pool:
        outside = pool.submit(observe).result()
        with jax.enable_x64(True), jax.default_matmul_precision("highest"), jax.default_device(device):
            inside = pool.submit(observe).result()
            here = observe()
        after = pool.submit(observe).result()
    assert inside == here == (jnp.float64, "highest", device)
    assert outside == after == observe() and outside[0] == jnp.float32  # nothing leaks into the worker thread


def test_cached_programs_are_keyed_on_the_callers_configuration() -> None:
    calls = []

    @jax_config.cache_per_config(maxsize=4)
    def program(size: int) -> str:
        calls.append(size)
        return str(jnp.zeros(size).dtype)

    assert program(2) == "float32" and program(2) == "float32"
    with jax.enable_x64(True):
        assert program(2) == "float64"  # not the float32 one from the cache
    assert calls == [2, 2]
