"""Tiny adaptive searches shared by the tests: run in-process, or as a subprocess that a test kills and restarts.

    python tests/adaptive_worker.py METHOD OUT_DIR [--sleep S] [--devices N]      (METHOD: hyperband, pbt, median, pareto)
                                    [--coordinator HOST:PORT --num_processes P --process_id I]

Runs the search with OUT_DIR/results.jsonl and resume=True, then writes OUT_DIR/final.json (its rows and
stats; process I > 0 of several writes OUT_DIR/final-I.json, and only process 0 writes the results file).
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


def tiny_median(**kwargs: Any) -> sweep.Results:
    """The median stopping rule over 8 configs × 2 seeds, 8 epochs, checked every 2."""
    train_set, dev_set = tiny_data()
    return sweep.median_stopping(ADAM, SPACE, train_set, dev_set, key=jax.random.key(7), num_configs=8, max_epochs=8,
                                 interval=2, seeds=2, **kwargs)


def tiny_pareto(**kwargs: Any) -> sweep.Results:
    """Hyperband as ``tiny_hyperband``, asked by TPE bracket by bracket, ranking by two objectives (Pareto rank)."""
    train_set, dev_set = tiny_data()
    return sweep.hyperband(ADAM, SPACE, train_set, dev_set, key=jax.random.key(8), min_epochs=1, max_epochs=9,
                           seeds=2, sampler="tpe", objectives={"dev_accuracy": "max", "final_cost": "min"}, **kwargs)


SEARCHES = {"hyperband": tiny_hyperband, "pbt": tiny_pbt, "median": tiny_median, "pareto": tiny_pareto}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(SEARCHES))
    parser.add_argument("out_dir")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each chunk (to be killed)")
    parser.add_argument("--devices", type=int, default=0, help="split the CPU into N devices")
    parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (with the next two)")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--process_1_metric", default=None, help="process 1 ranks by this metric (a wrong launch)")
    args = parser.parse_args()
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   heartbeat_timeout_seconds=10)  # a killed peer ends the others soon
    out_dir = pathlib.Path(args.out_dir)
    other = {"metric": args.process_1_metric} if args.process_1_metric and jax.process_index() == 1 else {}
    results = SEARCHES[args.method](results_path=out_dir / "results.jsonl", resume=True,
                                    progress=lambda _: time.sleep(args.sleep), **other)
    name = "final.json" if jax.process_index() == 0 else f"final-{jax.process_index()}.json"
    (out_dir / name).write_text(json.dumps({"rows": results.rows, "stats": results.stats,
                                            "history": results.history}))
    if args.coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
