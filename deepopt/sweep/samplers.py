r"""Samplers: where a sweep's configs come from, behind one ask/tell interface.

A sampler is made for a space and a key (``make_sampler(name, space, key)``) and hands out
assignments ``{field: value}`` of every field in the space:

- ``ask(n)``: the next ``n`` assignments. Deterministic given the key, and successive asks
  continue one sequence: ``ask(4) + ask(4)`` is the same eight assignments as a fresh
  sampler's ``ask(8)`` for ``"quasi"`` and ``"grid"``; ``"random"`` draws ask ``t`` (from 0) with
  ``key`` for ``t = 0`` and ``fold_in(key, t)`` after, so no two asks repeat.
- ``tell(assignments, values)``: what the asked assignments scored. The samplers here ignore it;
  model-based ones (Optuna's TPE, say) will condition their next asks on it.

``sample(space, key, num_configs, sampler)`` is a fresh sampler's first ask.

``"random"``: i.i.d. unit coordinates :math:`u \sim U[0, 1)^d` (float32 draws); ``"quasi"``:
scrambled Halton (``halton``); ``"grid"``: the Cartesian product of the ``grid``/``choice``
values, in space order. Each distribution maps its coordinate to a value (``space``).
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from deepopt.sweep import host_keys
from deepopt.sweep.space import Choice, _check_count, _is_distribution, check_space

SAMPLERS = ("random", "quasi", "grid")


# ------------------------------------------------------------------------------ Halton points


def _primes(count: int) -> list[int]:
    """The first ``count`` primes (the Halton bases)."""
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return primes


def halton(key: jax.Array, num_points: int, dims: int) -> np.ndarray:
    r"""Scrambled Halton points in :math:`[0, 1)^{dims}`, shape ``(num_points, dims)``.

    Dimension ``j`` uses the ``j``-th prime ``b``: point ``i`` has base-``b`` digits
    :math:`d_k(i)` and coordinate :math:`\sum_k \pi_{j,k}(d_k(i))\, b^{-(k+1)}`, with an independent
    random permutation :math:`\pi_{j,k}` of the digits per dimension and digit position
    (deterministic given ``key``). Permuting digits keeps Halton's stratification: the first
    :math:`b^K` points put one point in each of the :math:`b^K` intervals of width :math:`b^{-K}`,
    while the scrambling breaks the correlations between dimensions of plain Halton.
    """
    _check_count("num_points", num_points)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 0:
        raise ValueError(f"dims must be an int >= 0, got {dims!r}")
    return _halton_points(key, 0, num_points, dims)


def _halton_points(key: jax.Array, start: int, count: int, dims: int) -> np.ndarray:
    r"""Points ``start, ..., start + count - 1`` of ``halton(key, start + count, dims)``, shape ``(count, dims)``.

    The permutations depend on the key and the digit count :math:`K_b = \max(\lceil 40 \log 2 / \log b\rceil,
    \text{digits of } (start + count - 1))`, whose second term only wins past :math:`2^{28}` points, so
    points continue exactly from one call to the next.
    """
    points = np.zeros((count, dims), np.float64)
    index = np.arange(start, start + count, dtype=np.int64)
    last = max(start + count - 1, 0)
    impl = jax.random.key_impl(key)
    dim_keys = [  # jax.random.split(key, max(dims, 1)), split once on the host
        jax.random.wrap_key_data(words, impl=impl) for words in host_keys.split_key_data(key, max(dims, 1))[:dims]
    ]
    for j, (base, dim_key) in enumerate(zip(_primes(dims), dim_keys)):
        # Enough digits to index every point and to resolve ~2^-40.
        num_digits = max(math.ceil(40 * math.log(2) / math.log(base)), len(np.base_repr(last, base)))
        permutations = np.argsort(host_keys.uniform(dim_key, (num_digits, base)), axis=1)
        remaining = index.copy()
        for k in range(num_digits):
            digit = remaining % base
            remaining //= base
            points[:, j] += permutations[k][digit] * float(base) ** -(k + 1)
    return points


# ------------------------------------------------------------------------------ the interface


class Sampler(abc.ABC):
    """Assignments ``{field: value}`` of every field in ``space``, asked for ``n`` at a time.

    Fixed values of ``space`` are copied into every assignment; the distributions (the
    *varying* fields, in space order) get one coordinate each.

    Attributes:
      space: the search space (checked with ``check_space``).
      key: the PRNG key the sequence is drawn from.
      asked: assignments handed out so far (the next one's index in the sequence).
      asks: calls of ``ask`` so far.
    """

    NAME: ClassVar[str]

    def __init__(self, space: Mapping[str, Any], key: jax.Array) -> None:
        check_space(space)
        self.space = dict(space)
        self.key = key
        self.varying = [name for name, value in space.items() if _is_distribution(value)]
        self.fixed = {name: value for name, value in space.items() if not _is_distribution(value)}
        self.asked = 0
        self.asks = 0

    def ask(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` assignments of the sequence (a grid hands out fewer, then none, once exhausted)."""
        n = _check_count("n", n)
        assignments = self._next(n)
        self.asked += len(assignments)
        self.asks += 1
        return assignments

    def tell(self, assignments: Sequence[Mapping[str, Any]], values: Sequence[float | None]) -> None:
        """What ``assignments`` (from ``ask``) scored, one value each (None: diverged); ignored here."""
        if len(assignments) != len(values):
            raise ValueError(f"tell needs one value per assignment, got {len(assignments)} and {len(values)}")

    @abc.abstractmethod
    def _next(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` assignments; ``asked`` and ``asks`` are those before this call."""

    def _assignments(self, unit: np.ndarray) -> list[dict[str, Any]]:
        """Assignments from unit coordinates ``(n, len(varying))``: column ``j`` mapped by ``varying[j]``."""
        columns = {name: self.space[name].sample(unit[:, j]) for j, name in enumerate(self.varying)}
        return [{**self.fixed, **{name: columns[name][i] for name in self.varying}} for i in range(unit.shape[0])]


class RandomSampler(Sampler):
    """I.i.d. float32 unit coordinates: ask ``t`` draws with ``key`` for ``t = 0``, ``fold_in(key, t)`` after."""

    NAME: ClassVar[str] = "random"

    def _next(self, n: int) -> list[dict[str, Any]]:
        key = self.key if self.asks == 0 else host_keys.fold_in(self.key, self.asks)
        unit = host_keys.uniform(key, (n, len(self.varying))).astype(np.float64)  # jax.random.uniform, on the host
        return self._assignments(unit)


class QuasiSampler(Sampler):
    """Scrambled Halton points (``halton``); each ask continues at the next index."""

    NAME: ClassVar[str] = "quasi"

    def _next(self, n: int) -> list[dict[str, Any]]:
        return self._assignments(_halton_points(self.key, self.asked, n, len(self.varying)))


class GridSampler(Sampler):
    """The Cartesian product of the ``grid``/``choice`` values in space order (the key is not used).

    ``size`` assignments in all; asks past the end get fewer, then none.
    """

    NAME: ClassVar[str] = "grid"

    def __init__(self, space: Mapping[str, Any], key: jax.Array) -> None:
        super().__init__(space, key)
        continuous = [name for name in self.varying if not isinstance(self.space[name], Choice)]
        if continuous:
            raise ValueError(
                f"sampler='grid' enumerates grid/choice values, but space[{continuous[0]!r}] is "
                f"{self.space[continuous[0]]!r}: use grid([...]) or sampler='random' / 'quasi'"
            )
        self.size = math.prod(len(self.space[name].values) for name in self.varying)
        self._combos = itertools.product(*(self.space[name].values for name in self.varying))

    def _next(self, n: int) -> list[dict[str, Any]]:
        return [{**self.fixed, **dict(zip(self.varying, combo))} for combo in itertools.islice(self._combos, n)]


_SAMPLER_CLASSES: dict[str, type[Sampler]] = {cls.NAME: cls for cls in (RandomSampler, QuasiSampler, GridSampler)}


def make_sampler(name: str, space: Mapping[str, Any], key: jax.Array) -> Sampler:
    """A fresh sampler ``name`` (one of ``SAMPLERS``) of ``space``, deterministic given ``key``."""
    check_space(space)
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {name!r}")
    return _SAMPLER_CLASSES[name](space, key)


def sample(
    space: Mapping[str, Any], key: jax.Array, num_configs: int | None, sampler: str = "random"
) -> list[dict[str, Any]]:
    """``num_configs`` assignments ``{field: value}`` of every field in ``space``, deterministic given ``key``.

    ``"random"``: i.i.d. unit coordinates; ``"quasi"``: scrambled Halton (``halton``); ``"grid"``:
    the Cartesian product of the ``grid``/``choice`` values in ``space`` order (``num_configs``
    None or its size). Fixed values are copied into every assignment. The first ``ask`` of a
    fresh ``make_sampler(sampler, space, key)``.
    """
    source = make_sampler(sampler, space, key)
    if isinstance(source, GridSampler):
        if num_configs is not None and num_configs != source.size:
            raise ValueError(
                f"sampler='grid' makes all {source.size} combinations; "
                f"num_configs must be None or {source.size}, got {num_configs!r}"
            )
        return source.ask(source.size)
    if num_configs is None:
        raise ValueError(f"num_configs must be a positive int for sampler={sampler!r}, got None")
    return source.ask(_check_count("num_configs", num_configs))
