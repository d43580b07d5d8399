"""Every search on tiny float64 data, for the test that a caller's ``jax.enable_x64(True)`` reaches every thread.

    python tests/x64_worker.py OUT.json        (run with JAX_ENABLE_X64=1: the reference)

Writes the rows of each search (``SEARCHES``) as JSON. ``test_caller_config`` runs the same searches
in-process inside ``with jax.enable_x64(True):`` and compares the rows.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import jax
import numpy as np

from deepopt import data, sweep, train

CONFIG = train.Config((2, 3, 1), batch_size=16, epochs=3)
SPACE = {"learning_rate": sweep.log_uniform(1e-2, 0.5), "optimizer": sweep.choice(["momentum", "adam"])}
ONE_GROUP = {"learning_rate": sweep.log_uniform(1e-2, 0.5), "l2": sweep.log_uniform(1e-4, 1e-1)}


def float64_data() -> tuple[data.Dataset, data.Dataset]:
    """Small moons train and dev sets as float64 numpy arrays."""
    train_set, dev_set = data.make_moons(jax.random.key(30), 40, 0.2), data.make_moons(jax.random.key(31), 20, 0.2)
    return tuple(data.Dataset(np.asarray(split.X, np.float64), np.asarray(split.y)) for split in (train_set, dev_set))


def _random(train_set: data.Dataset, dev_set: data.Dataset) -> sweep.Results:
    # two groups (momentum, adam): the second group's program compiles in a thread; chunks of 2 run two at once
    return sweep.run(CONFIG, SPACE, train_set, dev_set, key=jax.random.key(1), num_configs=8, chunk_size=2)


def _tpe(train_set: data.Dataset, dev_set: data.Dataset) -> sweep.Results:
    return sweep.run(CONFIG, ONE_GROUP, train_set, dev_set, key=jax.random.key(2), num_configs=6, sampler="tpe",
                     chunk_size=2)


def _halving(train_set: data.Dataset, dev_set: data.Dataset) -> sweep.Results:
    return sweep.successive_halving(CONFIG, ONE_GROUP, train_set, dev_set, key=jax.random.key(3), num_configs=8,
                                    min_epochs=1, max_epochs=4, eta=2, chunk_size=2)


def _hyperband(train_set: data.Dataset, dev_set: data.Dataset) -> sweep.Results:
    return sweep.hyperband(CONFIG, ONE_GROUP, train_set, dev_set, key=jax.random.key(4), min_epochs=1, max_epochs=3,
                           eta=3, chunk_size=2)


def _pbt(train_set: data.Dataset, dev_set: data.Dataset) -> sweep.Results:
    # two sub-populations (momentum, adam): two chunks
    return sweep.pbt(CONFIG, SPACE, train_set, dev_set, key=jax.random.key(5), population=8, epochs=4,
                     interval=2, fraction=0.25)


SEARCHES: dict[str, Callable[[data.Dataset, data.Dataset], sweep.Results]] = {
    "random": _random, "tpe": _tpe, "successive_halving": _halving, "hyperband": _hyperband, "pbt": _pbt,
}


def all_rows() -> dict[str, list[dict[str, Any]]]:
    """Every search's rows (its whole history), without their wall time, as JSON values."""
    train_set, dev_set = float64_data()
    rows = {}
    for name, search in SEARCHES.items():
        results = search(train_set, dev_set)
        history = results.history or results.rows  # sweep.run keeps a history only with a results file
        rows[name] = [{field: value for field, value in row.items() if field != "seconds"} for row in history]
    return json.loads(json.dumps(rows))


if __name__ == "__main__":
    with open(sys.argv[1], "w") as out:
        json.dump(all_rows(), out)
