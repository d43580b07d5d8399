r"""Model-based sampling through Optuna: ``OptunaSampler``, the ``Sampler`` interface over an Optuna study.

``sweep.run(..., sampler="tpe")`` (or any Optuna sampler instance, e.g.
``optuna.samplers.GPSampler(seed=0)``) trains a sweep in *rounds*: ask ``C`` configs, train them as
one vmapped chunk per group of static choices, tell all ``C`` their seed-mean metric, ask again. The
sampler conditions each round on every result told before it.

The space becomes Optuna distributions, one parameter per searched field:

- ``uniform(lo, hi)``: ``FloatDistribution(lo, hi)``;
- ``log_uniform(lo, hi)``: ``FloatDistribution(lo, hi, log=True)``;
- ``one_minus_log_uniform(lo, hi)`` of a field ``beta``: the parameter ``"1-beta"``, i.e.
  :math:`1 - \beta`, as ``FloatDistribution(lo, hi, log=True)``; the field gets :math:`\beta = 1 - x`;
- ``choice(values)`` / ``grid(values)``: ``CategoricalDistribution`` over the values themselves when
  all are ``None``, bool, int, float or str, else over their JSON text (layer sizes, a Flax module's
  description), mapped back to the value by position.

Fixed values of the space are copied into every assignment and are not Optuna parameters.
``"tpe"`` is ``TPESampler(seed, multivariate=True, constant_liar=True)`` (the constant liar lets
the asks of one batch spread out instead of piling onto one optimum), seeded from the sweep's
key, so the same key, space and results give the same asks: a resumed sweep replays its rounds
from the rows already written and asks exactly what the interrupted one asked. A user's sampler
instance is used as given (seed it for a resumable sweep). Optuna is an optional extra
(``pip install -e '.[optuna]'``), imported only when a model-based sampler is made.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from deepopt.sweep import samplers
from deepopt.sweep.samplers import Sampler
from deepopt.sweep.space import Choice, LogUniform, OneMinusLogUniform, Uniform, _check_count, _is_distribution, check_space
from deepopt.sweep.store import static_text

MODEL_BASED_SAMPLERS = ("tpe", "nsga2")
DIRECTIONS = ("maximize", "minimize")
_PLAIN_TYPES = (type(None), bool, int, float, str)


def import_optuna() -> Any:
    """The ``optuna`` module, or an ``ImportError`` saying how to install the extra."""
    try:
        import optuna
    except ImportError:
        raise ImportError(
            "model-based sampling (sampler='tpe' or an Optuna sampler) and Results.importance need optuna: "
            "pip install -e '.[optuna]' (or pip install optuna)"
        ) from None
    return optuna


def study_directions(objectives: Mapping[str, str]) -> list[str]:
    """Optuna's study directions of ``objectives`` ``{field: "max" | "min"}``, in order: ``"maximize"`` / ``"minimize"``."""
    return ["maximize" if sense == "max" else "minimize" for sense in objectives.values()]


def is_optuna_sampler(value: Any) -> bool:
    """Whether ``value`` is an Optuna sampler instance (``optuna.samplers.BaseSampler``), without importing optuna."""
    return any(
        cls.__name__ == "BaseSampler" and cls.__module__.startswith("optuna") for cls in type(value).__mro__
    )


def is_model_based(sampler: Any) -> bool:
    """Whether ``sampler`` (a name or an instance) asks in rounds, conditioned on what it was told."""
    return (isinstance(sampler, str) and sampler in MODEL_BASED_SAMPLERS) or is_optuna_sampler(sampler) or (
        isinstance(sampler, OptunaSampler)
    )


@contextlib.contextmanager
def quiet_optuna(optuna: Any) -> Iterator[None]:
    """Optuna's per-trial INFO lines off while deepopt asks and tells; the caller's verbosity restored after."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


def parameter_name(name: str, distribution: Any) -> str:
    """The Optuna parameter of a space field: the field's name, or ``"1-<name>"`` for ``one_minus_log_uniform``."""
    return f"1-{name}" if isinstance(distribution, OneMinusLogUniform) else name


def _category_labels(name: str, values: Sequence[Any]) -> list[Any]:
    """A choice's Optuna categories: the values when all are plain, else their text (``store.static_text``)."""
    plain = all(isinstance(v, _PLAIN_TYPES) for v in values)
    if plain and not any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return list(values)
    return [static_text(name, v) for v in values]


def optuna_distributions(space: Mapping[str, Any]) -> dict[str, Any]:
    """``{parameter name: Optuna distribution}`` of the space's searched fields (see the module docstring)."""
    optuna = import_optuna()
    dists = optuna.distributions
    result: dict[str, Any] = {}
    for name, value in space.items():
        if not _is_distribution(value):
            continue
        if isinstance(value, Choice):
            result[name] = dists.CategoricalDistribution(_category_labels(name, value.values))
        elif isinstance(value, (LogUniform, OneMinusLogUniform)):
            result[parameter_name(name, value)] = dists.FloatDistribution(value.lo, value.hi, log=True)
        elif isinstance(value, Uniform):
            result[name] = dists.FloatDistribution(value.lo, value.hi)
    return result


def to_parameters(space: Mapping[str, Any], assignment: Mapping[str, Any]) -> dict[str, Any]:
    """An assignment ``{field: value}`` as Optuna parameters ``{parameter name: value}`` (inverse of ``from_parameters``)."""
    params: dict[str, Any] = {}
    for name, value in space.items():
        if not _is_distribution(value):
            continue
        chosen = assignment[name]
        if isinstance(value, Choice):
            texts = [static_text(name, v) for v in value.values]
            params[name] = _category_labels(name, value.values)[texts.index(static_text(name, chosen))]
        elif isinstance(value, OneMinusLogUniform):
            params[parameter_name(name, value)] = float(min(max(1.0 - float(chosen), value.lo), value.hi))
        else:
            params[name] = float(min(max(float(chosen), value.lo), value.hi))
    return params


def from_parameters(space: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna parameters as an assignment of every field of ``space`` (fixed values copied)."""
    assignment: dict[str, Any] = {}
    for name, value in space.items():
        if not _is_distribution(value):
            assignment[name] = value
        elif isinstance(value, Choice):
            assignment[name] = value.values[_category_labels(name, value.values).index(params[name])]
        elif isinstance(value, OneMinusLogUniform):
            assignment[name] = 1.0 - float(params[parameter_name(name, value)])
        else:
            assignment[name] = float(params[name])
    return assignment


def _seed_of(key: jax.Array) -> int:
    """A 32-bit seed for Optuna's numpy generator from a JAX key."""
    data = np.asarray(jax.random.key_data(key)).reshape(-1)
    return int(np.uint32(data[-1]) ^ np.uint32(data[0]))


def default_tpe(key: jax.Array) -> Any:
    """``sampler="tpe"``: multivariate TPE with the constant liar, seeded from ``key``."""
    optuna = import_optuna()
    with quiet_optuna(optuna):
        return optuna.samplers.TPESampler(seed=_seed_of(key), multivariate=True, constant_liar=True)


def default_nsga2(key: jax.Array) -> Any:
    """``sampler="nsga2"``: Optuna's NSGA-II (non-dominated sorting and crowding distance over generations), seeded."""
    optuna = import_optuna()
    with quiet_optuna(optuna):
        return optuna.samplers.NSGAIISampler(seed=_seed_of(key))


class OptunaSampler(Sampler):
    """Asks and tells an in-memory Optuna study: each ``ask(n)`` is ``n`` of ``study.ask``, each ``tell`` one ``study.tell`` per trial.

    ``directions`` (two or more ``"maximize"`` / ``"minimize"``) makes the study multi-objective:
    each told value is then a sequence, one per objective.

    Attributes (besides ``Sampler``'s):
      study: the ``optuna.Study`` (direction ``direction``, or ``directions``); its trials are the sweep's configs.
      distributions: ``optuna_distributions(space)``.
      sampler_name: ``"tpe"`` or the instance's class name, for rows and reports.
    """

    NAME: ClassVar[str] = "optuna"

    def __init__(
        self, space: Mapping[str, Any], key: jax.Array, sampler: Any = None, *, direction: str = "maximize",
        directions: Sequence[str] | None = None,
    ) -> None:
        super().__init__(space, key)
        for value in (direction, *(directions or ())):
            if value not in DIRECTIONS:
                raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {value!r}")
        optuna = import_optuna()
        if sampler is None or sampler == "tpe":
            self.sampler_name = "tpe"
            sampler = default_tpe(key)
        elif sampler == "nsga2":
            self.sampler_name = "nsga2"
            sampler = default_nsga2(key)
        elif is_optuna_sampler(sampler):
            self.sampler_name = type(sampler).__name__
        else:
            raise TypeError(f"sampler must be 'tpe', 'nsga2' or an optuna.samplers.BaseSampler instance, got {sampler!r}")
        self.direction = direction
        self.directions = list(directions) if directions and len(directions) > 1 else None
        self.distributions = optuna_distributions(space)
        with quiet_optuna(optuna):
            if self.directions:
                self.study = optuna.create_study(sampler=sampler, directions=self.directions)
            else:
                self.study = optuna.create_study(sampler=sampler, direction=direction)
        self._optuna = optuna
        self._pending: dict[str, list[Any]] = {}  # assignment's JSON -> trials asked for it, oldest first

    def _text(self, assignment: Mapping[str, Any]) -> str:
        """An asked assignment as text, to find its trial when it is told."""
        return json.dumps([static_text(name, assignment[name]) for name in self.varying])

    def _next(self, n: int) -> list[dict[str, Any]]:
        assignments = []
        with quiet_optuna(self._optuna):
            for _ in range(n):
                trial = self.study.ask(self.distributions)
                assignment = from_parameters(self.space, trial.params)
                self._pending.setdefault(self._text(assignment), []).append(trial)
                assignments.append(assignment)
        return assignments

    def tell(self, assignments: Sequence[Mapping[str, Any]], values: Sequence[Any]) -> None:
        """Tell each asked assignment its value, a sequence of them for a multi-objective study (None or a
        non-finite value anywhere: the trial failed; Optuna's samplers skip it)."""
        super().tell(assignments, values)
        state = self._optuna.trial.TrialState
        with quiet_optuna(self._optuna):
            for assignment, value in zip(assignments, values):
                waiting = self._pending.get(self._text(assignment))
                if not waiting:
                    raise ValueError(f"tell got an assignment that was not asked (or was told already): {assignment}")
                trial = waiting.pop(0)
                told = [value] if self.directions is None else (None if value is None else list(value))
                if told is None or any(v is None or not math.isfinite(float(v)) for v in told):
                    self.study.tell(trial, state=state.FAIL)
                else:
                    self.study.tell(trial, float(told[0]) if self.directions is None else [float(v) for v in told])


def make_sampler(
    sampler: Any, space: Mapping[str, Any], key: jax.Array, *, direction: str = "maximize",
    directions: Sequence[str] | None = None,
) -> Sampler:
    """A fresh sampler of ``space``, deterministic given ``key`` (and, for a model-based one, what it is told).

    ``sampler``: one of ``samplers.SAMPLERS`` (``"random"``, ``"quasi"``, ``"grid"``), ``"tpe"``,
    ``"nsga2"`` or an Optuna sampler instance (an ``OptunaSampler`` that ``direction``, or
    ``directions`` for several objectives, tells which way is better).
    """
    check_space(space)
    if is_model_based(sampler):
        if isinstance(sampler, OptunaSampler):
            raise TypeError("sampler: pass 'tpe' or an optuna sampler instance, not an OptunaSampler")
        return OptunaSampler(space, key, sampler, direction=direction, directions=directions)
    if not isinstance(sampler, str) or sampler not in samplers.SAMPLERS:
        raise ValueError(
            f"sampler must be one of {list(samplers.SAMPLERS) + list(MODEL_BASED_SAMPLERS)} "
            f"or an optuna.samplers.BaseSampler instance, got {sampler!r}"
        )
    return samplers.make_sampler(sampler, space, key)


def sample(space: Mapping[str, Any], key: jax.Array, num_configs: int | None, sampler: Any = "random") -> list[dict[str, Any]]:
    """``samplers.sample``, and for a model-based sampler the first ask of a fresh one (nothing told yet)."""
    if is_model_based(sampler):
        if num_configs is None:
            raise ValueError(f"num_configs must be a positive int for sampler={sampler!r}, got None")
        return make_sampler(sampler, space, key).ask(_check_count("num_configs", num_configs))
    make_sampler(sampler, space, key)  # the error for an unknown name lists every sampler
    return samplers.sample(space, key, num_configs, sampler)
