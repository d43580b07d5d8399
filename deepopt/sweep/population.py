r"""Population-based training (Jaderberg et al., 2017) on the driver, each sub-population one chunk kept on the devices.

A population of ``P`` configs (× ``seeds``) trains ``interval`` epochs per generation. After each
generation but the last, members are ranked on the seed-mean metric (ties: the earlier config);
each of the bottom :math:`k = \lfloor \text{fraction} \cdot P \rfloor` copies the whole training
state of a top-:math:`k` member drawn uniformly (**exploit**: parameters, optimizer state, batch
norm statistics, epoch and step counters, early-stopping record; a gather on the devices), then
**explores**: each hyperparameter the space varies is, with probability ``resample_probability``,
drawn afresh from its distribution, else multiplied by a factor drawn from ``perturb`` and clipped
to the distribution's range (for ``one_minus_log_uniform`` the factor multiplies :math:`1 - \beta`;
a ``choice`` moves to a neighbouring value). The draws use a numpy generator seeded from
``fold_in(key, EXPLORE_SALT)`` and the generation, so a search is a deterministic function of its
arguments.

Every run of one seed trains with the same key (as in ``sweep.run``), so the states a member
inherits continue exactly as its own would have: replaying a member's recorded ``schedule``
(``replay``) retrains it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt.sweep import host_keys
from deepopt.sweep import options as options_lib
from deepopt.sweep.adaptive import Search, Trial, static_in_space, write_board
from deepopt.sweep.analysis import Results, retrain
from deepopt.sweep.driver import Stage, drive
from deepopt.sweep.space import Choice, OneMinusLogUniform, Uniform, _check_count, static_fields

EXPLORE_SALT = 0x9B7  # fold_in(key, EXPLORE_SALT): the exploit/explore draws, apart from plan's keys


def _check_arguments(population: Any, epochs: Any, interval: Any, fraction: Any, perturb: Any,
                     resample_probability: Any) -> tuple[int, int, int, float, tuple[float, ...], float]:
    population = _check_count("population", population)
    if population < 2:
        raise ValueError(f"population must be at least 2 (members copy each other), got {population}")
    epochs = _check_count("epochs", epochs)
    interval = _check_count("interval", interval)
    if interval > epochs:
        raise ValueError(f"interval must be <= epochs, got interval={interval}, epochs={epochs}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5] (the bottom and top fractions), got {fraction!r}")
    if math.floor(fraction * population) < 1:
        raise ValueError(
            f"fraction * population must be at least 1 member, got {fraction} * {population}: raise one of them"
        )
    if isinstance(perturb, (str, bytes)) or not isinstance(perturb, Sequence) or not perturb:
        raise ValueError(f"perturb must be a non-empty sequence of factors > 0, got {perturb!r}")
    factors = []
    for factor in perturb:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"perturb must be a non-empty sequence of finite factors > 0, got {perturb!r}")
        factors.append(float(factor))
    if isinstance(resample_probability, bool) or not isinstance(resample_probability, (int, float)) or not (
        0 <= resample_probability <= 1
    ):
        raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability!r}")
    return population, epochs, interval, float(fraction), tuple(factors), float(resample_probability)


def explore_value(
    distribution: Any, value: Any, rng: np.random.Generator, perturb: Sequence[float], resample_probability: float
) -> Any:
    """One hyperparameter's new value: resampled from ``distribution`` or perturbed by a factor, inside its range."""
    if rng.random() < resample_probability:
        return distribution.sample(np.asarray([rng.random()]))[0]
    factor = perturb[int(rng.integers(len(perturb)))]
    if isinstance(distribution, Choice):
        index = distribution.values.index(value)
        step = 1 if factor > 1 else -1 if factor < 1 else 0
        return distribution.values[min(max(index + step, 0), len(distribution.values) - 1)]
    lo, hi = distribution.value_bounds
    if isinstance(distribution, OneMinusLogUniform):
        moved = 1.0 - (1.0 - float(value)) * factor
    else:
        moved = float(value) * factor
    return float(min(max(moved, lo), hi))




def _segments_with(schedule: list[dict[str, Any]], segment: dict[str, Any]) -> list[dict[str, Any]]:
    """``schedule`` plus ``segment``, merged into the last one when the same member trains with the same values."""
    if schedule and schedule[-1]["member"] == segment["member"] and schedule[-1]["hparams"] == segment["hparams"] \
            and schedule[-1]["to_epoch"] == segment["from_epoch"]:
        return schedule[:-1] + [schedule[-1] | {"to_epoch": segment["to_epoch"]}]
    return schedule + [segment]


@dataclasses.dataclass(frozen=True)
class Exploit:
    """PBT's exploit and explore: the bottom ``fraction`` copy a top-``fraction`` member, then
    perturb its hyperparameters by a factor from ``perturb`` or, with ``resample_probability``,
    draw them afresh."""

    fraction: float = 0.25
    perturb: tuple[float, ...] = (0.8, 1.25)
    resample_probability: float = 0.25


EXPLOIT_FIELDS = tuple(field.name for field in dataclasses.fields(Exploit))


def pbt(
    config: train_lib.Config,
    space: Mapping[str, Any],
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
    *,
    key: jax.Array,
    population: int,
    epochs: int,
    interval: int,
    exploit: Exploit | None = None,
    hparams: train_lib.HParams | None = None,
    options: options_lib.Options | None = None,
    **fields: Any,
) -> Results:
    r"""Population-based training of ``population`` configs of ``space`` for ``epochs``, exploiting every ``interval``.

    ``exploit``: who copies whom and how they explore (``Exploit``; its fields ``fraction``,
    ``perturb`` and ``resample_probability`` are also taken as keywords). ``options`` (or its
    fields as keywords: ``seeds``, ``metric``, ``results_path``, ``resume``, ``progress``, ``test``,
    ``sampler``, ``devices``, ``tensorboard_dir``): as every search's, ``sweep.Options``.

    Generation ``g`` trains every member from epoch :math:`g \cdot` ``interval`` (the last one may be
    shorter), then the bottom ``fraction`` copy a top-``fraction`` member's state and explore its
    hyperparameters (see the module docstring). A space that varies static Config fields (say the
    optimizer) splits the population into sub-populations, one per static combination, each
    exploiting within itself (their states cannot be copied across). Each sub-population is one
    chunk of its group's compiled program; its states stay on the devices between generations.

    Rows (one per member, seed and generation): the metrics at the end of the generation,
    ``generation``, ``epochs_trained``, ``parent`` (the ``config_id`` whose state the member took at
    the start of the generation, or None), ``hparams`` (the values it trained with), and
    ``schedule``: the lineage of its weights, ``[{"member", "from_epoch", "to_epoch", "hparams"}]``
    (``replay`` retrains it). ``results_path``/``resume``: as ``successive_halving`` (each
    generation's states are saved before its rows; a restart continues from the last generation
    recorded). Returns ``Results`` whose ``rows`` are the last generation's.
    """
    exploit = Exploit() if exploit is None else exploit
    if not isinstance(exploit, Exploit):
        raise TypeError(f"pbt: exploit must be a deepopt.sweep.Exploit, got {type(exploit).__name__}")
    exploit = dataclasses.replace(exploit, **{name: fields.pop(name) for name in EXPLOIT_FIELDS if name in fields})
    settings = options_lib.resolve("pbt", options, fields)
    if options_lib.adaptive_arguments("pbt", settings)["chunk_size"] is not None:
        raise ValueError(f"pbt trains each sub-population as one chunk: leave chunk_size at 'auto', "
                         f"got {settings.chunk_size!r}")
    if settings.memory_budget_bytes is not None:
        raise ValueError(f"pbt trains each sub-population as one chunk, which a memory budget cannot shrink: leave "
                         f"memory_budget_bytes at None, got {settings.memory_budget_bytes!r}")
    fraction, perturb, resample_probability = exploit.fraction, exploit.perturb, exploit.resample_probability
    population, epochs, interval, fraction, perturb, resample_probability = _check_arguments(
        population, epochs, interval, fraction, perturb, resample_probability
    )
    exploit = Exploit(fraction, perturb, resample_probability)
    search = Search.create(
        "pbt", config, space, train, dev, key=key, num_configs=population, max_epochs=epochs, hparams=hparams,
        options=settings,
        arguments={"population": population, "epochs": epochs, "interval": interval, "fraction": fraction,
                   "perturb": list(perturb), "resample_probability": resample_probability},
    )
    subpopulations: dict[train_lib.Config, list[Trial]] = {}
    for trial in search.trials:
        subpopulations.setdefault(trial.config, []).append(trial)
    for group, members in subpopulations.items():
        if math.floor(fraction * len(members)) < 1:
            choices = {name: getattr(group, name) for name in static_in_space(space)}
            raise ValueError(
                f"pbt: the sub-population {choices or 'of the space'} has {len(members)} member(s); "
                f"fraction={fraction} of it is less than one member: raise population or fraction"
            )
    num_devices = len(search.devices)  # each sub-population is one chunk of its group's program
    search.chunks_per_group.update(
        {group: -(-len(members) // num_devices) * num_devices for group, members in subpopulations.items()})
    varying = {  # the traced hyperparameters PBT explores (static choices stay with their sub-population)
        name: value for name, value in space.items()
        if isinstance(value, (Uniform, Choice)) and name not in static_fields()
    }
    explore_key = host_keys.fold_in(search.key, EXPLORE_SALT)  # jax.random.fold_in, on the host
    algorithm = PopulationBasedTraining(search.trials, subpopulations, varying, epochs, interval, exploit,
                                        explore_key, search.rank)
    results = drive(search, algorithm, lambda: {
        "generations": algorithm.generations, "interval": interval, "exploits": algorithm.lineage,
        "subpopulations": len(subpopulations), "max_epochs": epochs,
    })
    return write_board(settings.tensorboard_dir, results)


class PopulationBasedTraining:
    """PBT's generations (an ``Algorithm`` of ``driver``): it only decides.

    Generation ``g`` advances every member from epoch ``g · interval`` with its current
    hyperparameters; before it (``g > 0``), each sub-population's bottom ``fraction`` copy a
    top-``fraction`` member's state (``Stage.copy``) and explore its hyperparameters
    (``explore_value``, a generator seeded from ``explore_key`` and ``g - 1``). Rows carry the
    generation, the parent and the schedule (the lineage of the weights); ``lineage`` records every
    exploit.
    """

    def __init__(
        self, trials: Sequence[Trial], subpopulations: Mapping[Any, Sequence[Trial]], varying: Mapping[str, Any],
        epochs: int, interval: int, exploit: Exploit, explore_key: jax.Array,
        rank: Callable[[Sequence[Trial], Any], list[Trial]],
    ) -> None:
        self.trials, self.subpopulations, self.varying = list(trials), subpopulations, varying
        self.epochs, self.interval, self.exploit, self.explore_key, self.rank = epochs, interval, exploit, explore_key, rank
        self.generations = -(-epochs // interval)
        self.generation = 0
        self.current = {m.position: {name: m.hparams[name] for name in varying} for m in trials}
        self.schedules: dict[int, list[dict[str, Any]]] = {m.position: [] for m in trials}
        self.segments = self.schedules
        self.parents: dict[int, str | None] = {m.position: None for m in trials}
        self.lineage: list[dict[str, Any]] = []

    def planned(self) -> list[tuple[int, int]]:
        return [(len(self.trials), min((g + 1) * self.interval, self.epochs) - g * self.interval)
                for g in range(self.generations)]

    def next_stage(self, last: Any) -> Stage | None:
        generation = self.generation
        copies: dict[int, int] = {}
        if generation:  # the generation before has trained
            self.schedules = self.segments
            if generation == self.generations:
                return None
            copies = self._exploit_and_explore(generation - 1, last)
        self.generation += 1
        start, end = generation * self.interval, min((generation + 1) * self.interval, self.epochs)
        self.segments = {
            m.position: _segments_with(self.schedules[m.position], {
                "member": m.config_id, "from_epoch": start, "to_epoch": end,
                "hparams": dict(self.current[m.position]),
            })
            for m in self.trials
        }
        parents, segments = dict(self.parents), self.segments

        def fields(member: Trial) -> dict[str, Any]:
            return {"generation": generation, "epochs_trained": end, "parent": parents[member.position],
                    "schedule": segments[member.position]}

        return Stage(
            name=f"g{generation}", trials=tuple(self.trials), epochs=end - start, fresh=generation == 0,
            label=f"generation {generation} (epochs {start}-{end})", fields=fields,
            done_with=f"g{generation - 1}" if generation else None,
            hparams={position: dict(values) for position, values in self.current.items()}, copy=copies,
        )

    def _exploit_and_explore(self, generation: int, last: Any) -> dict[int, int]:
        """After ``generation``: who copies whom (``{loser: winner}`` positions); the losers' new values and lineage."""
        rng = np.random.default_rng(
            np.asarray(jax.random.key_data(host_keys.fold_in(self.explore_key, generation)), np.uint32)
        )
        end = min((generation + 1) * self.interval, self.epochs)
        self.parents = {m.position: None for m in self.trials}
        copies = {}
        for members in self.subpopulations.values():
            cut = math.floor(self.exploit.fraction * len(members))
            ranked = self.rank(members, last)
            top, bottom = ranked[:cut], ranked[-cut:]
            for loser in bottom:
                winner = top[int(rng.integers(len(top)))]
                copies[loser.position] = winner.position
                self.parents[loser.position] = winner.config_id
                self.schedules[loser.position] = list(self.schedules[winner.position])
                self.current[loser.position] = {
                    name: explore_value(self.varying[name], self.current[winner.position][name], rng,
                                        self.exploit.perturb, self.exploit.resample_probability)
                    for name in self.varying
                }
                self.lineage.append({"generation": generation, "epoch": end, "member": loser.config_id,
                                     "parent": winner.config_id, "hparams": dict(self.current[loser.position])})
        return copies


def replay(
    row: Mapping[str, Any], train: data_lib.Dataset, dev: data_lib.Dataset | None = None, *, model: Any = None
) -> train_lib.TrainState:
    """Retrain the run of a PBT ``row`` from scratch by its ``schedule``: ``init_state``, then ``advance`` per segment.

    ``analysis.retrain`` for a row that has a schedule; each segment trains ``to_epoch - from_epoch``
    epochs with its hyperparameters. Pass another ``train`` (train plus dev) to retrain the winner's
    schedule on more data.
    """
    if "schedule" not in row:
        raise ValueError("replay needs a pbt row (it has a 'schedule'); this row has none: use sweep.retrain")
    return retrain(row, train, dev, model=model)
