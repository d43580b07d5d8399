"""Several objectives: rows carry num_params and config_steps, Results.pareto and a Pareto-ranked best."""

import flax.linen as nn
import jax
import pytest

from deepopt import data, sweep, train

WIDTHS = [(2, 2, 1), (2, 8, 1), (2, 32, 1)]
SPACE = {"layer_sizes": sweep.choice(WIDTHS), "learning_rate": sweep.log_uniform(1e-3, 0.3)}
CONFIG = train.Config((2, 8, 1), optimizer="adam", batch_size=50, epochs=8)
OBJECTIVES = {"dev_accuracy": "max", "num_params": "min"}


@pytest.fixture(scope="module")
def splits():
    return data.make_moons(jax.random.key(0), 300, noise=0.2), data.make_moons(jax.random.key(1), 200, noise=0.2)


@pytest.fixture(scope="module")
def rows_path(tmp_path_factory):
    return tmp_path_factory.mktemp("objectives") / "rows.jsonl"


@pytest.fixture(scope="module")
def results(splits, rows_path):
    return sweep.run(CONFIG, SPACE, *splits, key=jax.random.key(2), num_configs=12, seeds=2, objectives=OBJECTIVES,
                     results_path=str(rows_path))


def _dominates(a, b) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def test_rows_carry_each_config_s_parameter_count_and_updates(results):
    for row in results.rows:
        hidden = row["config"]["layer_sizes"][1]
        assert row["num_params"] == 2 * hidden + hidden + hidden + 1  # W1, b1, W2, b2
        assert row["config_steps"] == 8 * 6  # epochs × mini-batches of 50 in 300


def test_the_front_is_exactly_the_non_dominated_seed_means(results):
    entries = results.by_config()
    points = {e["config_id"]: (e["dev_accuracy"]["mean"], e["num_params"]["mean"]) for e in entries}
    expected = {cid for cid, p in points.items() if not any(_dominates(q, p) for q in points.values())}
    front = results.pareto()
    assert {e["config_id"] for e in front} == expected
    accuracies = [e["objectives"]["dev_accuracy"] for e in front]
    assert accuracies == sorted(accuracies, reverse=True)  # best first by the first objective
    best = results.best(len(entries))
    assert {e["config_id"] for e in best[:len(front)]} == expected  # the front leads the leaderboard
    ranks = [e["pareto_rank"] for e in best]
    assert ranks == sorted(ranks)
    for entry in best:  # within a rank, the less crowded first
        same = [e["crowding_distance"] for e in best if e["pareto_rank"] == entry["pareto_rank"]]
        assert same == sorted(same, reverse=True)


def test_reopened_results_keep_their_objectives(results, rows_path):
    again = sweep.load(rows_path)
    assert again.objectives == OBJECTIVES
    assert [e["config_id"] for e in again.pareto()] == [e["config_id"] for e in results.pareto()]


def test_any_objectives_can_be_asked_of_any_results(results):
    by_time = results.pareto({"dev_accuracy": "max", "seconds": "min"})
    assert by_time and all(e["objectives"]["seconds"] > 0 for e in by_time)
    single = results.pareto({"dev_accuracy": "max"})
    assert len(single) >= 1 and len({e["objectives"]["dev_accuracy"] for e in single}) == 1
    with pytest.raises(ValueError, match="objective 'dev_r2' is not a field of these rows"):
        results.pareto({"dev_r2": "max"})


def test_bad_objectives_are_refused_before_training(splits):
    with pytest.raises(ValueError, match=r"objectives: 'test_accuracy' is not a field a search can rank by"):
        sweep.run(CONFIG, SPACE, *splits, key=jax.random.key(2), num_configs=2, objectives={"test_accuracy": "max"})
    with pytest.raises(ValueError, match=r"objectives\['num_params'\] must be 'max' or 'min', got 'fewest'"):
        sweep.run(CONFIG, SPACE, *splits, key=jax.random.key(2), num_configs=2,
                  objectives={"dev_accuracy": "max", "num_params": "fewest"})
    with pytest.raises(TypeError, match="objectives must be a non-empty mapping"):
        sweep.run(CONFIG, SPACE, *splits, key=jax.random.key(2), num_configs=2, objectives={})


class _Conv(nn.Module):
    channels: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Conv(self.channels, (3,))(x[..., None]))
        return nn.Dense(1)(h.reshape(h.shape[0], -1))


def test_num_params_counts_a_flax_module_s_parameters():
    # Conv: 3·1·c kernel + c bias; Dense over 2 positions × c channels: 2c + 1.
    for channels in (4, 7):
        config = train.Config(model=_Conv(channels), optimizer="adam")
        assert train.num_params(config, (2,)) == 3 * channels + channels + 2 * channels + 1
    assert train.num_params(train.Config((2, 8, 1), batchnorm=True), (2,)) == 2 * 8 + 8 + 8 + 8 + 8 + 1


def test_an_adaptive_search_ranks_by_its_objectives(splits):
    halving = sweep.successive_halving(CONFIG, SPACE, *splits, key=jax.random.key(3), num_configs=6, min_epochs=2,
                                       max_epochs=8, eta=2, objectives={"dev_accuracy": "max", "config_steps": "min"})
    assert halving.objectives == {"dev_accuracy": "max", "config_steps": "min"}
    for row in halving.history:
        assert row["config_steps"] == row["epochs_trained"] * 6
    front = halving.pareto()
    assert front and all(e["pareto_rank"] == 0 for e in front)
    assert halving.best(3)[0]["epochs_trained"]["min"] == 8  # the full budget still ranks first


def test_halving_promotes_by_pareto_rank_then_crowding(splits):
    # Each rung keeps the configs whose (dev accuracy, parameters) trade best: recomputed here from
    # the rung's rows, the survivors are the first by (Pareto rank, larger crowding distance).
    from deepopt.sweep import pareto

    objectives = {"dev_accuracy": "max", "num_params": "min"}
    halving = sweep.successive_halving(CONFIG, SPACE, *splits, key=jax.random.key(4), num_configs=8, min_epochs=2,
                                       max_epochs=8, eta=2, objectives=objectives)
    first = [row for row in halving.history if row["epochs_trained"] == 2]
    promoted = {row["config_id"] for row in halving.history if row["epochs_trained"] == 4}
    ids = sorted({row["config_id"] for row in first}, key=lambda cid: next(r["config_index"] for r in first
                                                                            if r["config_id"] == cid))
    points = [[next(r[name] for r in first if r["config_id"] == cid) for name in objectives] for cid in ids]
    ranks = pareto.pareto_ranks(points, list(objectives.values()))
    crowding = pareto.crowding_distances(points, list(objectives.values()), ranks)
    order = sorted(range(len(ids)), key=lambda i: (ranks[i], -crowding[i]))
    assert promoted == {ids[i] for i in order[:len(promoted)]} and len(promoted) == 4
    single = sweep.successive_halving(CONFIG, SPACE, *splits, key=jax.random.key(4), num_configs=8, min_epochs=2,
                                      max_epochs=8, eta=2)
    kept_single = {row["config_id"] for row in single.history if row["epochs_trained"] == 4}
    assert min(r["num_params"] for r in halving.history if r["config_id"] in promoted) <= min(
        r["num_params"] for r in single.history if r["config_id"] in kept_single)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url: str, timeout: float = 60.0):
    import json
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_to_optuna_writes_every_config_and_optuna_dashboard_serves_them(splits, tmp_path):
    pytest.importorskip("optuna")
    pytest.importorskip("optuna_dashboard")
    import subprocess
    import sys

    halving = sweep.successive_halving(CONFIG, SPACE, *splits, key=jax.random.key(5), num_configs=6, min_epochs=2,
                                       max_epochs=8, eta=2, objectives=OBJECTIVES)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = halving.to_optuna(storage, "pareto-halving")
    entries = {e["config_id"]: e for e in halving.pareto_ranked()}
    assert len(study.trials) == len(entries) and study.metric_names == list(OBJECTIVES)
    for trial in study.trials:
        entry = entries[trial.user_attrs["config_id"]]
        assert trial.values == [entry["objectives"]["dev_accuracy"], entry["objectives"]["num_params"]]
        assert trial.params["layer_sizes"] == str(list(entry["choices"]["layer_sizes"])).replace(" ", "")
        assert sorted(trial.intermediate_values) == sorted({r["epochs_trained"] for r in halving.history
                                                            if r["config_id"] == entry["config_id"]})
    with pytest.raises(Exception, match="already exists|Duplicated"):
        halving.to_optuna(storage, "pareto-halving")

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", f"from optuna_dashboard import run_server; run_server({storage!r}, host='127.0.0.1', "
                               f"port={port})"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listed = _get_json(f"http://127.0.0.1:{port}/api/studies")
        (summary,) = [s for s in listed["study_summaries"] if s["study_name"] == "pareto-halving"]
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == len(entries)
        values = sorted(tuple(t["values"]) for t in detail["trials"])
        assert values == sorted(tuple(trial.values) for trial in study.trials)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_main_job_reports_the_pareto_front_and_writes_the_optuna_study(tmp_path):
    import json
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("optuna")
    root = pathlib.Path(__file__).resolve().parents[1]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    flags = ["--num_configs=9", "--zoom_configs=0", "--epochs=6", "--num_seeds=1", "--hidden_choice=2",
             "--hidden_choice=16", "--objectives=dev_accuracy:max,num_params:min", f"--optuna_storage={storage}"]
    for search in ("random", "hyperband"):
        out = tmp_path / search
        completed = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--output_dir={out}",
                                    f"--search={search}", *flags], cwd=root, capture_output=True, text=True,
                                   timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
        report = (out / "report.md").read_text()
        assert "## Pareto front over dev_accuracy, num_params" in report and f"optuna-dashboard {storage}" in report
        front = json.loads((out / "results.json").read_text())["pareto_front"]
        assert front and {e["objectives"]["num_params"] for e in front} <= {2 * 2 + 2 + 2 + 1, 2 * 16 + 16 + 16 + 1}
    import optuna

    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"deepopt-sweep-random", "deepopt-sweep-hyperband"}
    bad = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--output_dir={tmp_path / 'bad'}",
                          "--objectives=dev_accuracy:up"], cwd=root, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--objectives" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_multi_objective_samplers_are_told_every_objective(splits, sampler):
    pytest.importorskip("optuna")
    from deepopt.sweep import model_based

    source = model_based.OptunaSampler(SPACE, jax.random.key(0), sampler, directions=["maximize", "minimize"])
    assert [d.name for d in source.study.directions] == ["MAXIMIZE", "MINIMIZE"] and source.sampler_name == sampler
    asked = source.ask(2)
    source.tell(asked, [[0.9, 17.0], [0.8, None]])  # a missing objective: the trial failed
    first, second = source.study.trials
    assert first.values == [0.9, 17.0] and second.state.name == "FAIL"
    results = sweep.run(CONFIG, SPACE, *splits, key=jax.random.key(6), num_configs=8, sampler=sampler,
                        chunk_size=4, objectives=OBJECTIVES)
    assert len(results.rows) == 8 and results.stats["sampler"] == sampler and results.stats["rounds"] == 2
    assert results.pareto()
    halving = sweep.hyperband(CONFIG, SPACE, *splits, key=jax.random.key(7), min_epochs=2, max_epochs=8, eta=2,
                              sampler=sampler, objectives=OBJECTIVES)
    assert halving.pareto() and halving.objectives == OBJECTIVES


def test_the_pareto_study_compares_three_fronts_by_hypervolume(tmp_path):
    import json
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    completed = subprocess.run([sys.executable, "-m", "experiments.pareto_search", "--quick",
                                f"--output_dir={tmp_path / 'out'}"], cwd=root, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    methods = record["repeats"][0]
    assert set(methods) == {"pareto_hyperband", "hyperband", "random"}
    for summary in methods.values():
        assert 0 < summary["hypervolume_share"] <= 1 and 0 < summary["log_hypervolume_share"] <= 1
        assert summary["front"]
    assert methods["random"]["config_steps"] <= methods["pareto_hyperband"]["config_steps"]
    assert "Pareto fronts by hypervolume" in (tmp_path / "out" / "report.md").read_text()


def test_pbt_and_median_stopping_rank_by_their_objectives(splits):
    lr_only = {"learning_rate": sweep.log_uniform(1e-3, 0.3)}
    population = sweep.pbt(CONFIG, lr_only, *splits, key=jax.random.key(8), population=6, epochs=8, interval=2,
                           objectives={"dev_accuracy": "max", "seconds": "min"})
    assert population.pareto() and population.best(1)[0]["pareto_rank"] == 0
    stopped = sweep.median_stopping(CONFIG, SPACE, *splits, key=jax.random.key(9), num_configs=6, max_epochs=8,
                                    interval=2, objectives=OBJECTIVES)
    assert stopped.objectives == OBJECTIVES and stopped.best(1)[0]["pareto_rank"] == 0
    assert all(row["num_params"] in (9, 33, 129) for row in stopped.rows)
