"""Tiny adaptive searches shared by the tests: run in-process, or as a subprocess that a test kills and restarts.

    python tests/adaptive_worker.py METHOD OUT_DIR [--sleep S] [--devices N]      (METHOD: hyperband or pbt)

Runs the search with OUT_DIR/results.jsonl and resume=True, then writes OUT_DIR/final.json (its rows and stats).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

import jax

from deepopt import data, sweep, train

ADAM = train.Config((2, 5, 1), optimizer="adam", batch_size=16)
SPACE = {"learning_rate": sweep.log_uniform(1e-3, 0.3), "l2": sweep.log_uniform(1e-4, 1e-1)}
PBT_SPACE = {**SPACE, "keep_prob": sweep.uniform(0.6, 1.0)}


def tiny_data() -> tuple[data.Dataset, data.Dataset]:
    """Small moons train and dev sets (dev accuracies in steps of 1/20: ties happen)."""
    return data.make_moons(jax.random.key(20), 48, 0.2), data.make_moons(jax.random.key(21), 20, 0.2)


def tiny_hyperband(**kwargs: Any) -> sweep.Results:
    """Hyperband from 1 to 9 epochs, eta 3: brackets of 9, 5 and 3 configs × 2 seeds."""
    train_set, dev_set = tiny_data()
    return sweep.hyperband(ADAM, SPACE, train_set, dev_set, key=jax.random.key(5), min_epochs=1, max_epochs=9,
                           seeds=2, **kwargs)


def tiny_pbt(**kwargs: Any) -> sweep.Results:
    """PBT of 6 members × 2 seeds, 4 generations of 2 epochs, the bottom third copying the top third."""
    train_set, dev_set = tiny_data()
    return sweep.pbt(ADAM, PBT_SPACE, train_set, dev_set, key=jax.random.key(6), population=6, epochs=8,
                     interval=2, fraction=1 / 3, seeds=2, **kwargs)


SEARCHES = {"hyperband": tiny_hyperband, "pbt": tiny_pbt}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(SEARCHES))
    parser.add_argument("out_dir")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each chunk (to be killed)")
    parser.add_argument("--devices", type=int, default=0, help="split the CPU into N devices")
    args = parser.parse_args()
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
    out_dir = pathlib.Path(args.out_dir)
    results = SEARCHES[args.method](results_path=out_dir / "results.jsonl", resume=True,
                                    progress=lambda _: time.sleep(args.sleep))
    (out_dir / "final.json").write_text(json.dumps({"rows": results.rows, "stats": results.stats}))


if __name__ == "__main__":
    main()
