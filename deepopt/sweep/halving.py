r"""Successive halving and Hyperband (Li et al., 2018) on runs that continue from their state.

Successive halving with ``n`` configs, rungs of :math:`r_i = \min(r_0 \eta^i, R)` epochs: rung 0
trains all ``n`` for :math:`r_0`; rung :math:`i+1` keeps the top :math:`\lfloor n_i/\eta \rfloor`
(at least one), ranked on the seed-mean metric at rung ``i`` (ties: the earlier config), and
advances them from their state to :math:`r_{i+1}` epochs. Nothing restarts: a survivor's last row
is what the same config trained straight through for its epochs gives, bit for bit.

Hyperband runs :math:`s_{max} + 1` brackets, :math:`s_{max} = \lfloor \log_\eta (R / r_{min}) \rfloor`:
bracket :math:`s = s_{max}, \dots, 0` is a successive halving of
:math:`n_s = \lceil \frac{s_{max}+1}{s+1} \eta^s \rceil` configs from :math:`r = R\eta^{-s}` epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from deepopt import data as data_lib
from deepopt import train as train_lib
from deepopt.sweep import options as options_lib
from deepopt.sweep.adaptive import Search, Trial, write_board
from deepopt.sweep.analysis import Results
from deepopt.sweep.driver import Rows, Stage, drive
from deepopt.sweep.space import _check_count


def _check_eta(eta: Any) -> int:
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ValueError(f"eta must be an int >= 2 (keep the top 1/eta at each rung), got {eta!r}")
    return eta


def _check_epochs(min_epochs: Any, max_epochs: Any) -> tuple[int, int]:
    min_epochs = _check_count("min_epochs", min_epochs)
    max_epochs = _check_count("max_epochs", max_epochs)
    if min_epochs > max_epochs:
        raise ValueError(f"min_epochs must be <= max_epochs, got min_epochs={min_epochs}, max_epochs={max_epochs}")
    return min_epochs, max_epochs


def rung_epochs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    r"""The epochs each rung trains to: :math:`r_0 \eta^i` while below ``max_epochs``, then ``max_epochs``."""
    epochs, current = [], min_epochs
    while current < max_epochs:
        epochs.append(current)
        current *= eta
    return epochs + [max_epochs]


def rung_sizes(num_configs: int, rungs: int, eta: int) -> list[int]:
    r"""Configs per rung: :math:`n_0 = n`, :math:`n_{i+1} = \max(\lfloor n_i / \eta \rfloor, 1)`."""
    sizes = [num_configs]
    for _ in range(rungs - 1):
        sizes.append(max(sizes[-1] // eta, 1))
    return sizes


def hyperband_brackets(min_epochs: int, max_epochs: int, eta: int) -> list[dict[str, Any]]:
    r"""Li et al.'s brackets: ``{"bracket", "s", "configs", "rungs" (epochs), "sizes", "budget" (config-epochs)}``.

    :math:`R = ` ``max_epochs / min_epochs``, :math:`s_{max} = \lfloor\log_\eta R\rfloor`; bracket
    ``b`` has :math:`s = s_{max} - b`, :math:`n = \lceil \frac{s_{max}+1}{s+1}\eta^s\rceil` configs
    starting at :math:`\max(r_{min}, \mathrm{round}(R_{epochs}\,\eta^{-s}))` epochs.
    """
    ratio = max_epochs / min_epochs
    s_max = int(math.floor(math.log(ratio) / math.log(eta) + 1e-9))
    brackets = []
    for b, s in enumerate(range(s_max, -1, -1)):
        configs = int(math.ceil((s_max + 1) / (s + 1) * eta**s - 1e-9))
        start = max(min_epochs, int(round(max_epochs / eta**s)))
        rungs = rung_epochs(start, max_epochs, eta)
        sizes = rung_sizes(configs, len(rungs), eta)
        brackets.append({"bracket": b, "s": s, "configs": configs, "rungs": rungs, "sizes": sizes,
                         "budget": _budget(sizes, rungs)})
    return brackets


def _budget(sizes: Sequence[int], rungs: Sequence[int]) -> int:
    """Config-epochs of a halving: every rung's configs × the epochs it adds."""
    return sum(n * (e - (rungs[i - 1] if i else 0)) for i, (n, e) in enumerate(zip(sizes, rungs)))


def _stages(sizes: Sequence[int], rungs: Sequence[int]) -> list[tuple[int, int]]:
    return [(n, e - (rungs[i - 1] if i else 0)) for i, (n, e) in enumerate(zip(sizes, rungs))]


class Halving:
    r"""Successive halving of ``trials`` over ``rungs`` (an ``Algorithm`` of ``driver``): it only decides.

    Rung 0 trains every trial from scratch to ``rungs[0]`` epochs; rung ``i`` keeps the top
    :math:`\lfloor n_{i-1}/\eta \rfloor` (at least one) of the rung before by ``rank`` (best first)
    and advances them to ``rungs[i]``; the rest are forgotten, and a rung's saved states are done
    with once the next rung is trained.
    """

    def __init__(
        self, trials: Sequence[Trial], rungs: Sequence[int], eta: int, bracket: int,
        rank: Callable[[Sequence[Trial], Rows], list[Trial]],
    ) -> None:
        self.alive, self.rungs, self.eta, self.bracket, self.rank = list(trials), list(rungs), eta, bracket, rank
        self.rung = 0

    def planned(self) -> list[tuple[int, int]]:
        return _stages(rung_sizes(len(self.alive), len(self.rungs), self.eta), self.rungs)

    def next_stage(self, last: Rows) -> Stage | None:
        rung = self.rung
        if rung == len(self.rungs):
            return None
        forget: list[int] = []
        if rung:
            keep = max(len(self.alive) // self.eta, 1)
            ranked = self.rank(self.alive, last)
            self.alive = sorted(ranked[:keep], key=lambda t: t.position)
            forget = [t.position for t in ranked[keep:]]
        self.rung += 1
        target = self.rungs[rung]
        return Stage(
            name=f"b{self.bracket}r{rung}", trials=tuple(self.alive), epochs=target - (self.rungs[rung - 1] if rung else 0),
            fresh=rung == 0, label=f"bracket {self.bracket} rung {rung} ({target} epochs)",
            fields={"bracket": self.bracket, "rung": rung, "epochs_trained": target}, forget=forget,
            done_with=f"b{self.bracket}r{rung - 1}" if rung else None,
        )


class Hyperband:
    """Hyperband's brackets, one ``Halving`` after another (an ``Algorithm`` of ``driver``).

    ``assigned`` holds each bracket's trials, or None where they are to be asked when the bracket
    starts (a model-based sampler: ``ask(n) -> (assignments, config_ids, trials)``, then
    ``tell(assignments, config_ids, last)`` once the bracket is done). Each bracket's record in
    ``brackets`` gets its configs, sizes and ``config_steps`` as it runs.
    """

    def __init__(
        self, brackets: list[dict[str, Any]], assigned: list[Sequence[Trial] | None], eta: int,
        rank: Callable[[Sequence[Trial], Rows], list[Trial]], batches_per_epoch: int,
        ask: Callable[[int], tuple] | None = None, tell: Callable[..., None] | None = None,
    ) -> None:
        self.brackets, self.assigned, self.eta, self.rank = brackets, assigned, eta, rank
        self.batches_per_epoch, self.ask, self.tell = batches_per_epoch, ask, tell
        self.index, self.current, self.asked = 0, None, None

    def planned(self) -> list[tuple[int, int]]:
        return [stage for b in self.brackets if b["sizes"] for stage in _stages(b["sizes"], b["rungs"])]

    def next_stage(self, last: Rows) -> Stage | None:
        while self.index < len(self.brackets):
            bracket = self.brackets[self.index]
            if self.current is None:
                members = self.assigned[self.index]
                if members is None:
                    assignments, config_ids, members = self.ask(bracket["configs"])
                    self.asked = (assignments, config_ids)
                    bracket["configs"] = len(members)
                    bracket["sizes"] = rung_sizes(len(members), len(bracket["rungs"]), self.eta) if members else []
                if not members:
                    self.index += 1
                    continue
                self.current = Halving(members, bracket["rungs"], self.eta, bracket["bracket"], self.rank)
                self.members = list(members)
            stage = self.current.next_stage(last)
            if stage is not None:
                return stage
            if self.asked is not None:
                self.tell(*self.asked, last)
            bracket["config_steps"] = self.batches_per_epoch * sum(
                int(row["epochs_trained"]) for trial in self.members for row in last[trial.position]
            )
            self.index, self.current, self.asked = self.index + 1, None, None
        return None


def successive_halving(
    config: train_lib.Config,
    space: Mapping[str, Any],
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
    *,
    key: jax.Array,
    num_configs: int,
    min_epochs: int,
    max_epochs: int,
    eta: int = 3,
    hparams: train_lib.HParams | None = None,
    options: options_lib.Options | None = None,
    **option_fields: Any,
) -> Results:
    r"""Successive halving of ``num_configs`` configs of ``space`` from ``min_epochs`` to ``max_epochs``.

    ``options`` (or its fields as keywords: ``seeds``, ``metric``, ``results_path``, ``resume``,
    ``progress``, ``test``, ``sampler``, ``chunk_size``, ``devices``, ``tensorboard_dir``): as every
    search's, ``sweep.Options``.

    Rungs train to :math:`r_0\eta^i` epochs (``rung_epochs``); each keeps the top
    :math:`\lfloor n/\eta\rfloor` of the one before (seed-mean ``metric``, ties: the earlier config)
    and advances them from their state. Every run trains under ``config`` with
    ``epochs=max_epochs`` (schedules see the whole budget). One compiled program per group and
    chunk shape serves every rung: survivors are re-packed into chunks of the same ``C`` configs
    (``chunk_size`` runs; default: the largest power of two whose padding adds at most 25% work).

    ``results_path``: every rung's rows (JSON lines: the metrics at that point, ``epochs_trained``,
    ``rung``, ``bracket``) are appended as each chunk finishes, after its states are saved under
    ``<results>.states/`` (one ``.npz`` per chunk, ``state_files``); ``<results>.search.json`` records the arguments.
    ``resume=True`` continues a killed search with the same arguments: finished chunks are read
    back, their states restored when a later rung needs them; a different search there is refused.

    Returns ``Results``: ``rows`` hold each run's last row (``best()`` ranks runs trained to
    ``max_epochs`` first), ``history`` every row, ``config_steps`` the updates the search trained,
    ``stats["brackets"]`` the rungs and their sizes.
    """
    settings = options_lib.resolve("successive_halving", options, option_fields)
    eta = _check_eta(eta)
    min_epochs, max_epochs = _check_epochs(min_epochs, max_epochs)
    num_configs = _check_count("num_configs", num_configs)
    search = Search.create(
        "successive_halving", config, space, train, dev, key=key, num_configs=num_configs, max_epochs=max_epochs,
        hparams=hparams, options=settings,
        arguments={"num_configs": num_configs, "min_epochs": min_epochs, "max_epochs": max_epochs, "eta": eta},
    )
    rungs = rung_epochs(min_epochs, max_epochs, eta)
    sizes = rung_sizes(len(search.trials), len(rungs), eta)
    bracket = {"bracket": 0, "s": len(rungs) - 1, "configs": len(search.trials), "rungs": rungs, "sizes": sizes,
               "budget": _budget(sizes, rungs)}
    results = drive(search, Halving(search.trials, rungs, eta, 0, search.rank),
                    lambda: {"brackets": [bracket], "eta": eta, "max_epochs": max_epochs})
    return write_board(settings.tensorboard_dir, results)


def hyperband(
    config: train_lib.Config,
    space: Mapping[str, Any],
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
    *,
    key: jax.Array,
    min_epochs: int,
    max_epochs: int,
    eta: int = 3,
    hparams: train_lib.HParams | None = None,
    options: options_lib.Options | None = None,
    **option_fields: Any,
) -> Results:
    r"""Hyperband: the brackets of Li et al. (2018) (``hyperband_brackets``), each a successive halving.

    Every bracket's configs are sampled up front, as one plan (``sum`` of the brackets' sizes;
    bracket ``b`` takes the next ``n_b``), so ids are unique across brackets. A model-based
    ``sampler`` (``"tpe"`` or an Optuna sampler instance) instead asks bracket ``b``'s configs once
    bracket ``b - 1`` is done and tells each config its seed-mean ``metric`` at the last rung it
    reached (a config cut early is told its early value, the verdict halving gave it): the
    brackets run in order, each guided by every config before it. The other arguments,
    the files and resume are ``successive_halving``'s; one compiled program per group serves every
    bracket and rung. ``stats["brackets"]`` records each bracket: its ``s``, configs, rung epochs
    and sizes, planned ``budget`` in config-epochs and the ``config_steps`` it trained.
    """
    settings = options_lib.resolve("hyperband", options, option_fields)
    eta = _check_eta(eta)
    min_epochs, max_epochs = _check_epochs(min_epochs, max_epochs)
    brackets = hyperband_brackets(min_epochs, max_epochs, eta)
    search = Search.create(
        "hyperband", config, space, train, dev, key=key, num_configs=sum(b["configs"] for b in brackets),
        max_epochs=max_epochs, hparams=hparams, options=settings,
        arguments={"min_epochs": min_epochs, "max_epochs": max_epochs, "eta": eta},
    )
    start, assigned = 0, []
    for bracket in brackets:  # a model-based sampler asks each bracket's configs when the one before is done
        members = search.trials[start : start + bracket["configs"]] if search.source is None else None
        start += bracket["configs"]
        count = bracket["configs"] if members is None else len(members)
        bracket["configs"] = count
        bracket["sizes"] = rung_sizes(count, len(bracket["rungs"]), eta) if count else []
        assigned.append(members)
    results = drive(search, Hyperband(brackets, assigned, eta, search.rank, search.batches_per_epoch,
                                      ask=search.ask_trials, tell=search.tell_trials),
                    lambda: {"brackets": brackets, "eta": eta, "max_epochs": max_epochs})
    return write_board(settings.tensorboard_dir, results)
