"""Successive halving, Hyperband and PBT: the rungs, the survivors, the copies, the bounds, the files, resume."""

from __future__ import annotations

import dataclasses
import json
import re
import os
import pathlib
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adaptive_worker import ADAM, PBT_SPACE, SPACE, tiny_data, tiny_hyperband, tiny_pbt
from background import Run
from launcher import kill_when_written
from sweep_worker import without_time

from deepopt import data, sweep, train
from deepopt.sweep import population as pbt_lib
from deepopt.sweep import states as states_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "adaptive_worker.py"


def seed_mean(rows: list[dict[str, Any]], config_id: str, stage: str, metric: str = "dev_accuracy") -> float:
    return float(np.mean([r[metric] for r in rows if r["config_id"] == config_id and r["stage"] == stage]))


# ------------------------------------------------------------------------------ the schedule's arithmetic


def test_rungs_and_brackets_are_li_et_al_s() -> None:
    assert sweep.rung_epochs(1, 81, 3) == [1, 3, 9, 27, 81]
    assert sweep.rung_epochs(2, 50, 3) == [2, 6, 18, 50]  # capped at max_epochs
    assert sweep.rung_epochs(5, 5, 3) == [5]
    assert sweep.rung_sizes(81, 5, 3) == [81, 27, 9, 3, 1]
    assert sweep.rung_sizes(10, 4, 3) == [10, 3, 1, 1]  # at least one survivor
    brackets = sweep.hyperband_brackets(1, 81, 3)
    # Li et al. (2018), Table 1: R = 81, eta = 3.
    assert [b["configs"] for b in brackets] == [81, 34, 15, 8, 5]
    assert [b["rungs"][0] for b in brackets] == [1, 3, 9, 27, 81]
    assert [b["sizes"] for b in brackets][1] == [34, 11, 3, 1]
    assert brackets[0]["budget"] == 81 * 1 + 27 * 2 + 9 * 6 + 3 * 18 + 1 * 54


# ------------------------------------------------------------------------------ successive halving

NINE = dict(num_configs=9, min_epochs=1, max_epochs=9, eta=3)


@pytest.fixture(scope="module")
def halving() -> sweep.Results:
    train_set, dev_set = tiny_data()
    return sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), seeds=2, **NINE)


def test_each_rung_keeps_exactly_the_top_third_ties_to_the_earlier_config(halving: sweep.Results) -> None:
    history = halving.history
    assert [sum(r["rung"] == i for r in history) for i in range(3)] == [18, 6, 2]  # configs × 2 seeds
    means = {}
    for rung in range(2):
        stage = f"b0r{rung}"
        ids = sorted({r["config_id"] for r in history if r["stage"] == stage})
        means = {i: seed_mean(history, i, stage) for i in ids}
        index = {r["config_id"]: r["config_index"] for r in history}
        expected = sorted(ids, key=lambda i: (-means[i], index[i]))[: len(ids) // 3]
        survivors = {r["config_id"] for r in history if r["stage"] == f"b0r{rung + 1}"}
        assert survivors == set(expected)
    assert all(r["epochs_trained"] == [1, 3, 9][r["rung"]] and r["bracket"] == 0 for r in history)


def test_ties_are_broken_by_plan_order() -> None:
    # Every config identical in what it scores (l2 varies by nothing measurable: lambda 1e-12) ties at every rung.
    train_set, dev_set = tiny_data()
    space = {"l2": sweep.log_uniform(1e-12, 2e-12)}
    results = sweep.successive_halving(ADAM, space, train_set, dev_set, key=jax.random.key(2), **NINE)
    rung1 = sorted((r["config_index"] for r in results.history if r["rung"] == 1))
    assert len({r["dev_accuracy"] for r in results.history if r["rung"] == 0}) == 1  # a real tie
    assert rung1 == [0, 1, 2]


def test_a_survivor_equals_the_same_config_trained_straight_through(halving: sweep.Results) -> None:
    train_set, dev_set = tiny_data()
    winner = next(r for r in halving.history if r["rung"] == 2 and r["seed"] == 0)
    cut = next(r for r in halving.history if r["rung"] == 0 and r["seed"] == 0)
    for row in (winner, cut):
        fixed = {name: row["hparams"][name] for name in SPACE}  # the same config, trained by sweep.run (fit)
        config = dataclasses.replace(sweep.config_of(row), epochs=row["epochs_trained"])
        straight = sweep.run(config, fixed, train_set, dev_set, key=jax.random.key(1), num_configs=1, seeds=2)
        reference = straight.rows[0]
        for name in ("train_accuracy", "dev_accuracy", "final_cost"):
            assert row[name] == reference[name], name  # bit for bit


def test_one_compilation_per_group_across_every_rung() -> None:
    train_set, dev_set = tiny_data()
    space = {**SPACE, "activation": sweep.choice(["relu", "tanh"])}
    config = train.Config((2, 7, 1), optimizer="adam", batch_size=16)  # a shape no other test compiles
    before = sweep.state_compile_count()
    results = sweep.successive_halving(config, space, train_set, dev_set, key=jax.random.key(4), **NINE)
    assert {r["config"]["activation"] for r in results.history} == {"relu", "tanh"}
    assert len({r["rung"] for r in results.history}) == 3
    assert results.stats["compilations"] == 2 == sweep.state_compile_count() - before


def test_results_rank_full_budget_runs_first_and_count_the_work(halving: sweep.Results) -> None:
    best = halving.best(3)
    assert best[0]["epochs_trained"]["min"] == 9
    assert all(entry["epochs_trained"]["min"] < 9 for entry in best[1:])
    batches = -(-48 // 16)
    assert halving.config_steps == 2 * (9 * 1 + 3 * 2 + 1 * 6) * batches  # seeds × the halving's config-epochs
    assert sum(r["epochs_trained"] for r in halving.rows) * batches == halving.config_steps
    assert halving.seconds > 0 and len(halving.rows) == 18


def test_bad_arguments_are_refused_before_compiling() -> None:
    train_set, dev_set = tiny_data()
    cases = [
        (dict(NINE, eta=1), "eta must be an int >= 2"),
        (dict(NINE, min_epochs=10), "min_epochs must be <= max_epochs"),
        (dict(NINE, num_configs=0), "num_configs must be a positive int"),
        (dict(NINE, metric="test_accuracy"), "metric must be one of"),
    ]
    before = sweep.state_compile_count()
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(0), **kwargs)
    bad = data.Dataset(train_set.X, train_set.y.at[0].set(3))
    with pytest.raises(ValueError, match="train.y must be class ids"):
        sweep.successive_halving(ADAM, SPACE, bad, dev_set, key=jax.random.key(0), **NINE)
    assert sweep.state_compile_count() == before


# ------------------------------------------------------------------------------ hyperband


@pytest.fixture(scope="module")
def hyperband() -> sweep.Results:
    return tiny_hyperband()


def test_hyperband_runs_and_records_every_bracket(hyperband: sweep.Results) -> None:
    brackets = hyperband.stats["brackets"]
    assert [(b["s"], b["configs"], b["rungs"]) for b in brackets] == [(2, 9, [1, 3, 9]), (1, 5, [3, 9]), (0, 3, [9])]
    batches = -(-48 // 16)
    for b in brackets:
        rows = [r for r in hyperband.rows if r["bracket"] == b["bracket"]]
        assert len({r["config_id"] for r in rows}) == b["configs"]
        assert b["config_steps"] == sum(r["epochs_trained"] for r in rows) * batches
        assert b["config_steps"] == 2 * b["budget"] * batches  # 2 seeds
    assert hyperband.config_steps == sum(b["config_steps"] for b in brackets)
    assert len({r["id"] for r in hyperband.history}) == len(hyperband.history)
    assert hyperband.best(1)[0]["epochs_trained"]["min"] == 9


def test_a_rung_s_chunks_run_at_once_and_give_the_same_search(hyperband: sweep.Results, monkeypatch) -> None:
    rungs = sum(len(b["rungs"]) for b in hyperband.stats["brackets"])
    assert hyperband.stats["chunks"] > rungs  # rungs of several chunks: what runs at once
    for cores in (1, 3):  # one chunk at a time, then three at once
        monkeypatch.setattr(sweep.engine, "cpu_cores", lambda cores=cores: cores)
        again = tiny_hyperband()
        assert without_time(again.rows) == without_time(hyperband.rows)  # bit for bit, in the same order
        assert [r["id"] for r in again.history] == [r["id"] for r in hyperband.history]


# ------------------------------------------------------------------------------ population-based training


@pytest.fixture(scope="module")
def population() -> sweep.Results:
    return tiny_pbt()


def test_exploit_copies_the_whole_state_of_the_chosen_member() -> None:
    train_set, _ = tiny_data()
    hp = train.broadcast_hparams(train.HParams(learning_rate=jnp.linspace(0.01, 0.1, 4)), 4)
    keys = jax.random.split(jax.random.key(0), 4)
    states = jax.vmap(lambda h, k: train.init_state(ADAM, h, k, train_set))(hp, keys)
    states, _ = jax.vmap(lambda h, s: train.advance(ADAM, h, s, train_set, epochs=2))(hp, states)
    states = jax.device_get(states._replace(key=None))
    pool = states_lib.StatePool()
    pool.scatter([0, 1, 2, 3], states)
    pool.copy({1: 3})  # member 1 takes member 3's state (PBT's exploit)
    copied = pool.gather([0, 1, 2, 3], 4)
    for name in ("params", "opt_state", "step", "epoch", "model_state"):
        got, want = getattr(copied, name), getattr(states, name)
        for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            got_leaf, want_leaf = np.asarray(got_leaf), np.asarray(want_leaf)
            np.testing.assert_array_equal(got_leaf[1], want_leaf[3])
            np.testing.assert_array_equal(got_leaf[[0, 2, 3]], want_leaf[[0, 2, 3]])
    assert not np.array_equal(jax.tree.leaves(states.params)[0][1], jax.tree.leaves(states.params)[0][3])


def test_pbt_records_lineage_and_the_copied_member_continues_its_parent(population: sweep.Results) -> None:
    history, exploits = population.history, population.stats["exploits"]
    assert population.stats["generations"] == 4 and len(history) == 4 * 6 * 2
    assert len(exploits) == 3 * 2  # bottom 2 of 6 each generation but the last
    for exploit in exploits:
        g = exploit["generation"]
        child = [r for r in history if r["config_id"] == exploit["member"] and r["generation"] == g + 1]
        parent_before = [r for r in history if r["config_id"] == exploit["parent"] and r["generation"] == g]
        assert all(r["parent"] == exploit["parent"] for r in child)
        # the child's weights have the parent's lineage up to the copy, then its own segment
        assert child[0]["schedule"][:-1] == parent_before[0]["schedule"]
        assert child[0]["schedule"][-1]["member"] == exploit["member"]
        assert child[0]["schedule"][-1]["from_epoch"] == exploit["epoch"]
        assert {k: child[0]["hparams"][k] for k in PBT_SPACE} == exploit["hparams"]
    train_set, dev_set = tiny_data()
    for row in population.rows:  # replaying each member's schedule through train.advance retrains it
        state = sweep.replay(row, train_set, dev_set)
        measured = train.evaluate(ADAM, state, dev_set)
        assert abs(float(measured["accuracy"]) - row["dev_accuracy"]) <= 1 / 20 + 1e-6
        assert int(state.epoch) == 8


def test_pbt_ranks_parents_in_the_top_and_children_in_the_bottom(population: sweep.Results) -> None:
    history = population.history
    for g in range(3):
        members = sorted({r["config_id"] for r in history if r["generation"] == g})
        index = {r["config_id"]: r["config_index"] for r in history}
        ranked = sorted(members, key=lambda i: (-seed_mean(history, i, f"g{g}"), index[i]))
        chosen = [e for e in population.stats["exploits"] if e["generation"] == g]
        assert {e["member"] for e in chosen} == set(ranked[-2:])
        assert {e["parent"] for e in chosen} <= set(ranked[:2])


def test_static_choices_make_sub_populations_that_exploit_within_themselves() -> None:
    train_set, dev_set = tiny_data()
    space = {**SPACE, "activation": sweep.choice(["relu", "tanh"])}
    results = sweep.pbt(ADAM, space, train_set, dev_set, key=jax.random.key(8), population=12, epochs=4, interval=2,
                        fraction=0.25)
    activation = {r["config_id"]: r["config"]["activation"] for r in results.history}
    assert set(activation.values()) == {"relu", "tanh"} and results.stats["subpopulations"] == 2
    assert results.stats["exploits"]
    for exploit in results.stats["exploits"]:
        assert activation[exploit["member"]] == activation[exploit["parent"]]


def test_perturbed_values_stay_inside_the_space() -> None:
    rng = np.random.default_rng(0)
    spaces = [sweep.uniform(0.6, 1.0), sweep.log_uniform(1e-4, 1e-1), sweep.one_minus_log_uniform(1e-3, 1e-1)]
    for distribution in spaces:
        lo, hi = distribution.value_bounds
        value = distribution.sample(np.asarray([0.5]))[0]
        for _ in range(300):
            value = pbt_lib.explore_value(distribution, value, rng, (0.01, 100.0), 0.1)
            assert lo <= value <= hi
    choice = sweep.choice([0.5, 0.8, 1.0])
    assert pbt_lib.explore_value(choice, 1.0, rng, (2.0,), 0.0) == 1.0
    assert pbt_lib.explore_value(choice, 0.8, rng, (0.5,), 0.0) == 0.5


def test_pbt_rows_stay_inside_the_space(population: sweep.Results) -> None:
    for row in population.history:
        for name, distribution in PBT_SPACE.items():
            lo, hi = distribution.value_bounds
            assert lo <= row["hparams"][name] <= hi


def test_pbt_refuses_what_it_cannot_do() -> None:
    train_set, dev_set = tiny_data()
    common = dict(key=jax.random.key(0), epochs=4, interval=2)
    with pytest.raises(ValueError, match="sub-population"):  # 4 members in 2 groups: a quarter of 2 is no one
        sweep.pbt(ADAM, {**SPACE, "activation": sweep.grid(["relu", "tanh"])}, train_set, dev_set,
                  population=4, sampler="random", **common)
    with pytest.raises(ValueError, match="fraction \\* population must be at least 1"):
        sweep.pbt(ADAM, SPACE, train_set, dev_set, population=3, **common)
    with pytest.raises(ValueError, match="interval must be <= epochs"):
        sweep.pbt(ADAM, SPACE, train_set, dev_set, population=4, key=jax.random.key(0), epochs=2, interval=3)
    with pytest.raises(ValueError, match="perturb must be"):
        sweep.pbt(ADAM, SPACE, train_set, dev_set, population=4, perturb=(0.8, -1), **common)


# ------------------------------------------------------------------------------ the files and resume


def test_resume_with_other_arguments_is_refused_and_the_file_kept(tmp_path: pathlib.Path) -> None:
    train_set, dev_set = tiny_data()
    path = tmp_path / "results.jsonl"
    sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), results_path=path, **NINE)
    before = path.read_bytes()
    assert json.loads(pathlib.Path(sweep.manifest_path(path)).read_text())["method"] == "successive_halving"
    with pytest.raises(ValueError, match="eta differs"):
        sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), results_path=path,
                                 resume=True, **dict(NINE, eta=2))
    with pytest.raises(ValueError, match="method"):
        sweep.hyperband(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), results_path=path, resume=True,
                        min_epochs=1, max_epochs=9)
    assert path.read_bytes() == before
    again = sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), results_path=path,
                                     resume=True, **NINE)
    assert again.stats["runs_computed"] == 0 and path.read_bytes() == before
    # the winner's state is kept (the last rung's checkpoints), the cut ones' are not
    kept = os.listdir(sweep.states_path(path))
    assert len(kept) == 1 and kept[0].startswith("b0r2-")


def kill_then_resume(method: str, directory: pathlib.Path, after_lines: int) -> dict[str, Any]:
    """Start the worker, SIGKILL it once ``after_lines`` rows are written, restart it; what each wrote (no JAX here)."""
    path = directory / "results.jsonl"
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    command = [sys.executable, str(WORKER), method, str(directory)]
    process = subprocess.Popen([*command, "--sleep=0.25"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    kill_when_written([process], path, after_lines)
    process.communicate()
    written = path.read_text().count("\n")
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return {"written": written, "final": json.loads((directory / "final.json").read_text()),
            "lines": path.read_text().splitlines()}


KILLED_HYPERBAND = Run(task=lambda d: kill_then_resume("hyperband", d, 8), name="killed-hyperband")
KILLED_PBT = Run(task=lambda d: kill_then_resume("pbt", d, 24), name="killed-pbt")
BACKGROUND = {"killed_hyperband": [KILLED_HYPERBAND], "killed_pbt": [KILLED_PBT]}


@pytest.fixture
def killed_hyperband(background_runs):
    return background_runs.result(KILLED_HYPERBAND)


@pytest.fixture
def killed_pbt(background_runs):
    return background_runs.result(KILLED_PBT)


def check_resumed(value: dict[str, Any], reference: sweep.Results) -> None:
    written, final, lines = value["written"], value["final"], value["lines"]
    rows = [json.loads(line) for line in lines]
    assert len({row["id"] for row in rows}) == len(rows) == len(reference.history)  # no duplicate, none lost
    assert 0 < written < len(reference.history)
    stats = final["stats"]
    assert stats["runs_resumed"] == written  # only the chunk in flight was lost, and computed again
    assert stats["runs_computed"] == len(reference.history) - written
    assert without_time(final["rows"]) == without_time(reference.rows)  # the same results as uninterrupted
    assert sorted(without_time(rows), key=lambda r: r["id"]) == sorted(without_time(reference.history),
                                                                      key=lambda r: r["id"])


@pytest.mark.slow
def test_hyperband_killed_and_resumed_ends_with_the_same_results(killed_hyperband, hyperband) -> None:
    check_resumed(killed_hyperband.value, hyperband)


@pytest.mark.slow
def test_pbt_killed_and_resumed_ends_with_the_same_results(killed_pbt, population) -> None:
    check_resumed(killed_pbt.value, population)


def test_random_search_reports_its_config_steps_the_same_way() -> None:
    train_set, dev_set = tiny_data()
    results = sweep.run(dataclasses.replace(ADAM, epochs=3), SPACE,
                        train_set, dev_set, key=jax.random.key(0), num_configs=4, seeds=2)
    assert results.config_steps == 4 * 2 * 3 * -(-48 // 16) and results.seconds > 0


def test_the_state_pool_reads_a_checkpoint_only_when_a_state_is_needed() -> None:
    loads = []

    def loader() -> dict[int, Any]:  # a saved chunk holding positions 0 and 1
        loads.append(1)
        return {0: {"w": np.zeros(2)}, 1: {"w": np.ones(2)}}

    pool = states_lib.StatePool()
    pool.loaders.update({0: loader, 1: loader})
    pool.copy({2: 1})  # PBT's exploit of a state still on disk: nothing read
    assert loads == [] and pool.has(2)
    pool.scatter([0], {"w": np.full((1, 2), 7.0)})  # position 0 trained since the chunk was saved
    np.testing.assert_array_equal(pool.get(2)["w"], np.ones(2))  # read now, for the copy
    np.testing.assert_array_equal(pool.get(1)["w"], np.ones(2))
    np.testing.assert_array_equal(pool.get(0)["w"], np.full(2, 7.0))  # the newer state is kept
    pool.drop([2])
    assert not pool.has(2)


def test_every_search_reports_progress_with_one_record() -> None:
    train_set, dev_set = tiny_data()
    lines: list[sweep.Progress] = []
    sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(3), num_configs=4, min_epochs=1,
                             max_epochs=2, eta=2, progress=lines.append)
    sweep.run(ADAM, SPACE, train_set, dev_set, key=jax.random.key(3), num_configs=2, progress=lines.append)
    assert all(isinstance(line, sweep.Progress) for line in lines)
    stages = [line for line in lines if line.unit == "run-stages"]
    assert stages[-1].done == stages[-1].total == (4 + 2) and stages[0].stage.startswith("bracket 0 rung 0")
    assert str(stages[-1]).startswith("[6/6 run-stages] bracket 0 rung 1 (2 epochs): ")
    assert re.match(r"\[2/2 runs\] group 1/1 \(all\) chunk (\d+)/\1: ", str(lines[-1]))  # a chunk per core


def test_a_resume_over_other_chunks_than_the_saved_states_says_what_to_do(tmp_path) -> None:
    train_set, dev_set = tiny_data()
    path = tmp_path / "results.jsonl"

    class Stopped(Exception):
        pass

    def stop_in_rung_1(progress: sweep.Progress) -> None:  # a kill once rung 1 has begun: rung 0's states needed
        if "rung 1" in progress.stage:
            raise Stopped

    search = dict(key=jax.random.key(1), results_path=path, seeds=2, **NINE)
    with pytest.raises(Stopped):
        sweep.successive_halving(ADAM, SPACE, train_set, dev_set, chunk_size=4, progress=stop_in_rung_1, **search)
    with pytest.raises(FileNotFoundError, match="saved in other chunks .* resume over as many devices as the search "
                                                "started with .* and the same chunk_size"):
        sweep.successive_halving(ADAM, SPACE, train_set, dev_set, chunk_size=8, resume=True, **search)
    resumed = sweep.successive_halving(ADAM, SPACE, train_set, dev_set, chunk_size=4, resume=True, **search)
    assert resumed.stats["runs_resumed"] > 0 and max(row["epochs_trained"] for row in resumed.rows) == 9
