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
