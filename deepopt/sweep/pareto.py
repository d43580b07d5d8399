"""Several objectives at once: non-dominated sorting, crowding distance and hypervolume (numpy, own code).

Points are rows of an ``(n, k)`` array, one column per objective, each with its sense
(``"max"`` or ``"min"``). Internally every column is turned into one to minimize (a ``"max"``
column is negated); a missing value (NaN: a diverged run, a metric not measured) is the worst
possible, so such a point is dominated by any point with a value there.

- ``pareto_ranks``: Deb et al.'s non-dominated sorting (NSGA-II, 2002): rank 0 is the Pareto front
  (no other point is at least as good in every objective and better in one), rank 1 the front of
  the rest, and so on.
- ``crowding_distances``: within each rank, the sum over objectives of the gap between a point's
  two neighbours along that objective, normalized by the rank's range (the rank's extremes get
  infinity): larger means a less crowded region, preferred to keep the front spread out.
- ``hypervolume``: the volume dominated by the points and bounded by a reference point (exact:
  a sweep over the first objective of the k-1-dimensional volumes of the slices); its per-point
  ``hypervolume_contributions`` (the volume lost without that point).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SENSES = ("max", "min")


def check_senses(senses: Sequence[str], name: str = "objectives") -> None:
    """Every sense must be ``"max"`` or ``"min"``."""
    for sense in senses:
        if sense not in SENSES:
            raise ValueError(f"{name}: each objective's direction must be 'max' or 'min', got {sense!r}")


def to_minimize(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """``points`` as float columns to minimize: ``"max"`` columns negated, NaN (missing) to +inf."""
    values = np.asarray(points, np.float64)
    if values.ndim != 2 or values.shape[1] != len(senses):
        raise ValueError(f"points must be (n, {len(senses)}) for {len(senses)} objectives, got shape {values.shape}")
    check_senses(senses)
    signs = np.asarray([-1.0 if sense == "max" else 1.0 for sense in senses])
    values = values * signs
    return np.where(np.isnan(values), np.inf, values)


def _dominance(costs: np.ndarray) -> np.ndarray:
    """``d[i, j]``: point ``i`` dominates point ``j`` (no worse anywhere, better somewhere), costs to minimize."""
    no_worse = np.all(costs[:, None, :] <= costs[None, :, :], axis=2)
    better = np.any(costs[:, None, :] < costs[None, :, :], axis=2)
    return no_worse & better


def pareto_ranks(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """The non-dominated rank of each point (0: the Pareto front), by peeling fronts (Deb et al. 2002)."""
    costs = to_minimize(points, senses)
    n = costs.shape[0]
    ranks = np.full(n, -1, np.int64)
    if n == 0:
        return ranks
    dominates = _dominance(costs)
    dominated_by = dominates.sum(axis=0)  # how many points dominate each one
    front = np.flatnonzero(dominated_by == 0)
    rank = 0
    while front.size:
        ranks[front] = rank
        dominated_by = dominated_by - dominates[front].sum(axis=0)
        dominated_by[ranks >= 0] = -1  # placed: never again
        front = np.flatnonzero(dominated_by == 0)
        rank += 1
    return ranks


def crowding_distances(points: np.ndarray, senses: Sequence[str], ranks: np.ndarray | None = None) -> np.ndarray:
    r"""Each point's crowding distance within its rank: :math:`\sum_j (f_j^{next} - f_j^{prev}) / (f_j^{max} - f_j^{min})`.

    The extremes of each objective within a rank (and a rank of one or two points) get ``inf``;
    an objective constant over the rank adds nothing. ``ranks`` default: ``pareto_ranks``.
    """
    costs = to_minimize(points, senses)
    ranks = pareto_ranks(points, senses) if ranks is None else np.asarray(ranks)
    distance = np.zeros(costs.shape[0])
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        if members.size <= 2:
            distance[members] = np.inf
            continue
        for column in costs[members].T:
            order = np.argsort(column, kind="stable")
            ends = column[order[[0, -1]]]
            distance[members[order[[0, -1]]]] = np.inf
            span = ends[1] - ends[0]
            if not np.isfinite(span) or span == 0:
                continue
            gaps = (column[order[2:]] - column[order[:-2]]) / span
            distance[members[order[1:-1]]] += gaps
    return distance


def _hypervolume_of_costs(costs: np.ndarray, reference: np.ndarray) -> float:
    """The volume dominated by ``costs`` (to minimize) within the box below ``reference``."""
    costs = costs[np.all(costs < reference, axis=1)]
    if costs.shape[0] == 0:
        return 0.0
    if costs.shape[1] == 1:
        return float(reference[0] - costs[:, 0].min())
    order = np.argsort(costs[:, 0], kind="stable")
    costs = costs[order]
    volume = 0.0
    for i in range(costs.shape[0]):  # the slab from this point's first objective to the next point's
        upper = costs[i + 1, 0] if i + 1 < costs.shape[0] else reference[0]
        width = upper - costs[i, 0]
        if width > 0:
            volume += width * _hypervolume_of_costs(costs[: i + 1, 1:], reference[1:])
    return volume


def hypervolume(points: np.ndarray, senses: Sequence[str], reference: Sequence[float]) -> float:
    """The volume the points dominate, bounded by ``reference`` (a point every useful point beats in every objective).

    Exact; its cost grows as ``n^(k-1)``, meant for fronts of tens to hundreds of configs.
    """
    reference = to_minimize(np.asarray(reference, np.float64)[None, :], senses)[0]
    if not np.all(np.isfinite(reference)):
        raise ValueError(f"hypervolume: the reference point must be finite numbers, got {reference!r}")
    return _hypervolume_of_costs(to_minimize(points, senses), reference)


def hypervolume_contributions(points: np.ndarray, senses: Sequence[str], reference: Sequence[float]) -> np.ndarray:
    """Each point's exclusive hypervolume: the whole set's minus the set's without it (0 for a dominated point)."""
    points = np.asarray(points, np.float64)
    total = hypervolume(points, senses, reference)
    return np.asarray([total - hypervolume(np.delete(points, i, axis=0), senses, reference)
                       for i in range(points.shape[0])])
