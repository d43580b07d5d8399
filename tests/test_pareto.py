"""Non-dominated sorting, crowding distance and hypervolume against brute force and hand-worked cases."""

import itertools

import numpy as np
import pytest

from deepopt.sweep import pareto


def _brute_force_ranks(costs: np.ndarray) -> np.ndarray:
    """Peel fronts by the definition: a point is on the front of the remaining ones when none dominates it."""
    ranks = np.full(len(costs), -1)
    rank = 0
    while (ranks < 0).any():
        left = np.flatnonzero(ranks < 0)
        front = [i for i in left if not any(np.all(costs[j] <= costs[i]) and np.any(costs[j] < costs[i])
                                                for j in left if j != i)]
        ranks[front] = rank
        rank += 1
    return ranks


def test_ranks_match_the_definition_on_random_points_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.integers(0, 5, size=(25, 3)).astype(float)  # many ties and duplicates
        senses = ["max", "min", "max"]
        costs = points * np.array([-1.0, 1.0, -1.0])
        np.testing.assert_array_equal(pareto.pareto_ranks(points, senses), _brute_force_ranks(costs))


def test_a_missing_value_is_the_worst_and_directions_are_honoured():
    points = np.array([[0.9, 100.0], [0.8, 10.0], [0.7, 50.0], [np.nan, 1.0]])
    ranks = pareto.pareto_ranks(points, ["max", "min"])
    assert ranks.tolist() == [0, 0, 1, 0]  # NaN accuracy: worst there, but the fewest parameters
    assert pareto.pareto_ranks(points[:3], ["min", "max"]).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="'max' or 'min', got 'maximize'"):
        pareto.pareto_ranks(points, ["maximize", "min"])


def test_crowding_distance_by_hand():
    # One front of four points on a line: ends infinite; the inner ones get the gaps of their neighbours.
    points = np.array([[0.0, 3.0], [1.0, 2.0], [2.5, 0.5], [3.0, 0.0]])
    distance = pareto.crowding_distances(points, ["min", "min"])
    assert np.isinf(distance[[0, 3]]).all()
    np.testing.assert_allclose(distance[1], (2.5 - 0.0) / 3 + (3.0 - 0.5) / 3)
    np.testing.assert_allclose(distance[2], (3.0 - 1.0) / 3 + (2.0 - 0.0) / 3)


def _grid_volume(costs: np.ndarray, reference: np.ndarray, cells: int = 60) -> float:
    """Monte-Carlo-free check: the dominated fraction of a regular grid of cell centres in the box."""
    low = costs.min(axis=0)
    axes = [np.linspace(lo, hi, cells, endpoint=False) + (hi - lo) / (2 * cells) for lo, hi in zip(low, reference)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(reference))
    covered = np.any(np.all(costs[None, :, :] <= grid[:, None, :], axis=2), axis=1)
    return covered.mean() * np.prod(reference - low)


def test_hypervolume_is_exact_in_2d_and_agrees_with_a_grid_in_3d():
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert pareto.hypervolume(points, ["min", "min"], [4.0, 4.0]) == pytest.approx(3 + 2 + 1)
    assert pareto.hypervolume(-points, ["max", "max"], [-4.0, -4.0]) == pytest.approx(6.0)
    rng = np.random.default_rng(1)
    costs = rng.uniform(0, 1, size=(6, 3))
    reference = np.ones(3) * 1.2
    assert pareto.hypervolume(costs, ["min"] * 3, reference) == pytest.approx(_grid_volume(costs, reference), rel=0.05)
    contributions = pareto.hypervolume_contributions(points, ["min", "min"], [4.0, 4.0])
    np.testing.assert_allclose(contributions, [1.0, 1.0, 1.0])
    dominated = np.vstack([points, [[3.0, 3.0]]])
    assert pareto.hypervolume_contributions(dominated, ["min", "min"], [4.0, 4.0])[-1] == 0.0
    for order in itertools.permutations(range(3)):
        assert pareto.hypervolume(points[list(order)], ["min", "min"], [4.0, 4.0]) == pytest.approx(6.0)
