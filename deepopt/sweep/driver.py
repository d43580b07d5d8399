"""One driver for the adaptive searches: an algorithm decides the stages, the driver trains them.

An algorithm (``Algorithm``) is a small object without I/O. Given each trial's last rows so far
(one per seed, by position), ``next_stage`` says what to train next as a ``Stage`` — which trials
advance, by how many epochs, from scratch or from their state, under which name (the stage's row
id suffix), with which extra row fields, and which trials' states are no longer needed — or None
when the search is over. ``planned`` lists the ``(configs, epochs)`` of every stage it may ask, so
that the engine fixes one chunk shape per group for the whole search.

``drive(search, algorithm, stats)`` holds the results file (``Search.opened``: lock, manifest, resume),
trains each stage on the engine's stage program (``Search.train_stage``: chunks of one group, their
states saved before their rows are appended), forgets the states the algorithm drops, deletes a
stage's saved states once the algorithm says they are done with, and returns the search's
``Results`` (each trial's last rows), recorded in the file's record before the lock is let go. Successive halving, Hyperband (``halving``), population-based training (``population``) and
the median stopping rule (``median``) are algorithms on it; a new search is one more class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from deepopt.sweep.adaptive import Search, Trial
from deepopt.sweep.analysis import Results

Rows = Mapping[int, Sequence[Mapping[str, Any]]]


class Stage(NamedTuple):
    """One step a search asks for: advance ``trials`` by ``epochs``.

    Attributes:
      name: unique within the search: each row's id is ``<run id>.<name>``, the chunk states' files
        ``<name>-<first position>.npz``.
      trials: the trials to train (one static group or several; the driver chunks them by group).
      epochs: epochs to add to each.
      fresh: start from ``init_state`` (the trials' first stage) instead of their states.
      label: the progress text of the stage.
      fields: row fields recorded with every row of the stage (``epochs_trained``, the rung, ...),
        or a function of the trial giving its own (PBT's parent and schedule).
      forget: positions whose states the search will not continue (dropped before the stage runs).
      done_with: a stage whose saved states no later stage reads (deleted after this one is trained).
      hparams: hyperparameters by position that replace the trials' own (PBT's explored values).
      copy: ``{position: source position}``: before the stage, a trial takes another's state (PBT's exploit).
    """

    name: str
    trials: Sequence[Trial]
    epochs: int
    fresh: bool
    label: str
    fields: Mapping[str, Any] | Callable[[Trial], Mapping[str, Any]]
    forget: Sequence[int] = ()
    done_with: str | None = None
    hparams: Mapping[int, Mapping[str, Any]] | None = None
    copy: Mapping[int, int] | None = None


class Algorithm(Protocol):
    """What a search algorithm answers; it reads rows and returns stages, nothing else."""

    def planned(self) -> list[tuple[int, int]]:
        """``(configs, epochs)`` of every stage it may ask for (the chunk shape and the progress total)."""

    def next_stage(self, last: Rows) -> Stage | None:
        """The next stage, from each trial's last rows so far (by position), or None when the search is done."""


def drive(search: Search, algorithm: Algorithm, stats: Callable[[], Mapping[str, Any]]) -> Results:
    """Train every stage ``algorithm`` asks for on ``search``; return its ``Results`` (recorded before the file is let go).

    The results hold each trained trial's last rows (plan order, one per seed), every stage's rows
    as the history, and ``stats()`` (the algorithm's own, asked once it is done) in their stats.
    """
    planned = algorithm.planned()
    search.engine.total = sum(configs for configs, _ in planned) * search.seeds
    last: dict[int, list[dict[str, Any]]] = {}
    with search.opened():
        while (stage := algorithm.next_stage(last)) is not None:
            search.pool.drop(list(stage.forget))
            if stage.copy:
                search.pool.copy(stage.copy)
            fields = stage.fields if callable(stage.fields) else (lambda trial, fields=stage.fields: fields)
            last.update(search.train_stage(
                stage.trials, epochs=stage.epochs, fresh=stage.fresh, stage=stage.name, stages=planned,
                label=stage.label, extra=lambda trial, fields=fields: {"method": search.method, **fields(trial)},
                hparams=stage.hparams,
            ))
            if stage.done_with is not None:
                search.delete_states(stage.done_with)
        final = [row for trial in search.trials if trial.position in last for row in last[trial.position]]
        return search.results(final, stats())
