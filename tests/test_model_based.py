"""Model-based search through Optuna: the space as Optuna distributions, ask/tell in rounds, resume, Hyperband."""

from __future__ import annotations

import json
import math
from typing import Any

import jax
import numpy as np
import optuna
import pytest
from sweep_worker import ADAM, tiny_data, without_time

from deepopt import sweep, train

SPACE = {
    "learning_rate": sweep.log_uniform(1e-3, 1.0),
    "beta1": sweep.one_minus_log_uniform(1e-2, 0.5),
    "l2": sweep.uniform(0.0, 0.05),
    "layer_sizes": sweep.choice([(2, 4, 1), (2, 6, 1)]),
    "optimizer": "adam",
}


def _tpe_sweep(path: Any = None, **kwargs: Any) -> sweep.Results:
    train_set, dev_set = tiny_data()
    arguments = dict(key=jax.random.key(5), num_configs=12, seeds=2, sampler="tpe", results_path=path)
    return sweep.run(ADAM, SPACE, train_set, dev_set, **{**arguments, **kwargs})


@pytest.fixture(scope="module")
def tpe_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[sweep.Results, Any]:
    path = tmp_path_factory.mktemp("tpe") / "results.jsonl"
    before = sweep.compile_count()
    results = _tpe_sweep(path)
    results.stats["compiled_here"] = sweep.compile_count() - before
    return results, path


# ------------------------------------------------------------------------------ the space in Optuna's terms


def test_space_maps_to_optuna_distributions_and_back() -> None:
    dists = sweep.optuna_distributions(SPACE)
    assert set(dists) == {"learning_rate", "1-beta1", "l2", "layer_sizes"}  # fixed values are not parameters
    assert dists["learning_rate"].log and (dists["learning_rate"].low, dists["learning_rate"].high) == (1e-3, 1.0)
    assert dists["1-beta1"].log and (dists["1-beta1"].low, dists["1-beta1"].high) == (1e-2, 0.5)  # 1 - β
    assert not dists["l2"].log
    assert dists["layer_sizes"].choices == ("[2,4,1]", "[2,6,1]")  # tuples as their JSON text
    plain = sweep.optuna_distributions({"optimizer": sweep.choice(["adam", "gd"])})
    assert plain["optimizer"].choices == ("adam", "gd")  # plain values as themselves


def test_asked_values_stay_in_their_ranges_on_their_scales() -> None:
    sampler = sweep.make_sampler("tpe", SPACE, jax.random.key(0))
    assert isinstance(sampler, sweep.OptunaSampler) and sampler.sampler_name == "tpe"
    asked = sampler.ask(20)
    beta = np.asarray([a["beta1"] for a in asked])
    assert np.all((beta >= 0.5) & (beta <= 0.99))
    assert all(1e-3 <= a["learning_rate"] <= 1.0 and 0.0 <= a["l2"] <= 0.05 for a in asked)
    assert {tuple(a["layer_sizes"]) for a in asked} <= {(2, 4, 1), (2, 6, 1)}
    assert all(a["optimizer"] == "adam" for a in asked)
    trial_params = [t.params for t in sampler.study.trials]
    np.testing.assert_allclose([1.0 - p["1-beta1"] for p in trial_params], beta)


def test_tpe_learns_from_what_it_is_told() -> None:
    """Batches of 8 asks on a 1-D objective with its optimum at 1e-2: told trials pull later asks to it."""
    space = {"learning_rate": sweep.log_uniform(1e-5, 1.0)}
    distances = []
    tpe = sweep.make_sampler("tpe", space, jax.random.key(1))
    for _ in range(6):
        asked = tpe.ask(8)
        distance = [abs(math.log10(a["learning_rate"]) + 2.0) for a in asked]
        tpe.tell(asked, [-d for d in distance])
        distances.append(float(np.median(distance)))
    assert distances[-1] < 0.5 * distances[0], distances
    assert len(tpe.study.trials) == 48 and all(t.value is not None for t in tpe.study.trials)


def test_tell_failed_and_unknown_assignments() -> None:
    tpe = sweep.make_sampler("tpe", {"learning_rate": sweep.log_uniform(1e-3, 1.0)}, jax.random.key(2))
    asked = tpe.ask(2)
    tpe.tell(asked, [None, float("nan")])
    assert [t.state for t in tpe.study.trials] == [optuna.trial.TrialState.FAIL] * 2
    with pytest.raises(ValueError, match="not asked"):
        tpe.tell(asked[:1], [0.5])  # told already
    with pytest.raises(ValueError, match="one value per assignment"):
        tpe.tell(asked, [0.5])


def test_same_key_same_asks() -> None:
    first = sweep.make_sampler("tpe", SPACE, jax.random.key(3)).ask(5)
    assert json.dumps(first) == json.dumps(sweep.make_sampler("tpe", SPACE, jax.random.key(3)).ask(5))
    assert json.dumps(first) != json.dumps(sweep.make_sampler("tpe", SPACE, jax.random.key(4)).ask(5))


# ------------------------------------------------------------------------------ sweep.run in rounds


def test_tpe_sweep_trains_every_asked_config_once_per_group(tpe_results: tuple[sweep.Results, Any]) -> None:
    results, _ = tpe_results
    stats = results.stats
    assert stats["sampler"] == "tpe" and stats["asked"] == 12
    assert stats["configs_per_round"] == math.ceil(12 / sweep.MODEL_BASED_ROUNDS)
    assert stats["rounds"] == math.ceil(12 / stats["configs_per_round"])
    assert len(results.rows) == 12 * 2 and stats["runs_computed"] == 24
    groups = {tuple(row["config"]["layer_sizes"]) for row in results.rows}
    assert stats["compilations"] == len(groups) and stats["compiled_here"] == len(groups)  # one per group, every round
    assert [row["config_index"] for row in results.rows[::2]] == list(range(12))
    assert all(row["config"]["optimizer"] == "adam" for row in results.rows)


def test_tpe_sweep_asks_after_telling_each_round(tpe_results: tuple[sweep.Results, Any]) -> None:
    """Replaying ask/tell by hand with the rows' seed means asks exactly the configs the sweep trained."""
    results, _ = tpe_results
    entries = sorted(results.by_config(), key=lambda e: e["config_index"])
    per_round = results.stats["configs_per_round"]
    tpe = sweep.make_sampler("tpe", SPACE, jax.random.split(jax.random.key(5))[0])
    for start in range(0, 12, per_round):
        asked = tpe.ask(per_round)
        for assignment, entry in zip(asked, entries[start : start + per_round]):
            assert assignment["learning_rate"] == entry["choices"]["learning_rate"]
            assert list(assignment["layer_sizes"]) == list(entry["choices"]["layer_sizes"])
        tpe.tell(asked, [e["dev_accuracy"]["mean"] for e in entries[start : start + per_round]])
    untold = sweep.make_sampler("tpe", SPACE, jax.random.split(jax.random.key(5))[0])
    untold_asks = [untold.ask(per_round) for _ in range(0, 12, per_round)]  # the same seed, told nothing
    assert [a["learning_rate"] for batch in untold_asks for a in batch] != [e["choices"]["learning_rate"] for e in entries]


def test_a_tpe_row_is_sweep_run_of_the_same_config(tpe_results: tuple[sweep.Results, Any]) -> None:
    """Rounds change which configs are trained, not how: a row equals a plain run of its config."""
    results, _ = tpe_results
    row = results.rows[-1]
    train_set, dev_set = tiny_data()
    space = {name: row["hparams"][name] for name in ("learning_rate", "beta1", "l2")}
    space["layer_sizes"] = tuple(row["config"]["layer_sizes"])
    again = sweep.run(ADAM, space, train_set, dev_set, key=jax.random.key(5), num_configs=1, seeds=2)
    assert [r["id"] for r in again.rows] == [r["id"] for r in results.rows[-2:]]
    assert without_time(again.rows)[1]["dev_accuracy"] == row["dev_accuracy"]


def test_tpe_sweep_resumes_by_replaying_its_rounds(tpe_results: tuple[sweep.Results, Any], tmp_path: Any) -> None:
    results, path = tpe_results
    lines = path.read_text().splitlines()
    cut = tmp_path / "results.jsonl"
    cut.write_text("\n".join(lines[:9]) + "\n" + lines[9][:20])  # killed in the middle of a write
    resumed = _tpe_sweep(cut)
    assert without_time(resumed.rows) == without_time(results.rows)
    assert resumed.stats["runs_resumed"] == 9 and resumed.stats["runs_computed"] == 24 - 9
    assert len(cut.read_text().splitlines()) == 24  # nothing written twice


def test_an_optuna_sampler_instance_and_a_cost_metric() -> None:
    train_set, dev_set = tiny_data()
    space = {"learning_rate": sweep.log_uniform(1e-2, 1.0)}
    results = sweep.run(ADAM, space, train_set, dev_set, key=jax.random.key(0), num_configs=4, seeds=1,
                        sampler=optuna.samplers.RandomSampler(seed=0), metric="final_cost", chunk_size=2)
    assert results.stats["sampler"] == "RandomSampler" and results.stats["configs_per_round"] == 2
    assert results.stats["rounds"] == 2 and len(results.rows) == 4
    best = results.best(1)[0]
    assert best["final_cost"]["mean"] == min(r["final_cost"] for r in results.rows)


def test_model_based_errors_before_compiling() -> None:
    train_set, dev_set = tiny_data()
    before = sweep.compile_count()
    with pytest.raises(ValueError, match="num_configs must be a positive int for a model-based sampler"):
        sweep.run(ADAM, SPACE, train_set, dev_set, key=jax.random.key(0), num_configs=None, sampler="tpe")
    with pytest.raises(ValueError, match="'tpe'"):
        sweep.run(ADAM, SPACE, train_set, dev_set, key=jax.random.key(0), num_configs=2, sampler="bayes")
    wrong = {**SPACE, "layer_sizes": sweep.choice([(2, 4, 1), (3, 4, 1)])}  # the second does not fit the data
    with pytest.raises(ValueError, match="features"):
        sweep.run(ADAM, wrong, train_set, dev_set, key=jax.random.key(0), num_configs=2, sampler="tpe")
    bad = {**SPACE, "learning_rate": sweep.uniform(-1.0, 1.0)}
    with pytest.raises(ValueError, match="learning_rate"):
        sweep.run(ADAM, bad, train_set, dev_set, key=jax.random.key(0), num_configs=2, sampler="tpe")
    with pytest.raises(ValueError, match="successive_halving asks all its configs at once"):
        sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(0), num_configs=3,
                                 min_epochs=1, max_epochs=3, sampler="tpe")
    assert sweep.compile_count() == before


# ------------------------------------------------------------------------------ Hyperband


def test_hyperband_asks_each_bracket_after_the_one_before(tmp_path: Any) -> None:
    train_set, dev_set = tiny_data()
    config = train.Config((2, 4, 1), optimizer="adam", batch_size=32, epochs=9)
    space = {"learning_rate": sweep.log_uniform(1e-3, 1.0)}
    arguments = dict(key=jax.random.key(0), min_epochs=1, max_epochs=9, eta=3, sampler="tpe",
                     results_path=tmp_path / "hb.jsonl")
    results = sweep.hyperband(config, space, train_set, dev_set, **arguments)
    brackets = results.stats["brackets"]
    assert [b["configs"] for b in brackets] == [b["configs"] for b in sweep.hyperband_brackets(1, 9, 3)]
    assert results.stats["compilations"] == 1
    assert len({row["config_id"] for row in results.rows}) == sum(b["configs"] for b in brackets)
    manifest = json.loads(open(sweep.manifest_path(tmp_path / "hb.jsonl")).read())
    assert manifest["sampler"] == "tpe"
    again = sweep.hyperband(config, space, train_set, dev_set, **arguments, resume=True)  # replays every bracket
    assert again.stats["runs_computed"] == 0
    assert without_time(again.history) == without_time(results.history)


def test_the_issue_s_example_gp_sampler_where_torch_is_installed() -> None:
    """``sampler=optuna.samplers.GPSampler(seed=0)``: Optuna's GP needs torch and scipy (not deepopt's extras)."""
    pytest.importorskip("torch")
    pytest.importorskip("scipy")
    train_set, dev_set = tiny_data()
    space = {"learning_rate": sweep.log_uniform(1e-2, 1.0), "optimizer": sweep.choice(["adam", "momentum"])}
    results = sweep.run(ADAM, space, train_set, dev_set, key=jax.random.key(0), num_configs=4, seeds=1,
                        sampler=optuna.samplers.GPSampler(seed=0), chunk_size=2)
    assert results.stats["sampler"] == "GPSampler" and results.stats["rounds"] == 2 and len(results.rows) == 4
