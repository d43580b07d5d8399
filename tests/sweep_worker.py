"""A tiny sweep shared by the sweep tests: run in-process, or as a subprocess (killed, sharded, multi-process).

    python tests/sweep_worker.py OUT_DIR [--chunk_size N] [--sleep S] [--devices N]
                                 [--coordinator HOST:PORT --num_processes P --process_id I]

Writes OUT_DIR/results.jsonl (process 0 only) and OUT_DIR/rows-<process>.json (the returned rows and stats).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import time
from typing import Any

import jax
import pytest

from deepopt import data, sweep, train
from deepopt.sweep import engine


def tiny_data() -> tuple[data.Dataset, data.Dataset]:
    """Small moons train and dev sets."""
    return data.make_moons(jax.random.key(10), 60, 0.2), data.make_moons(jax.random.key(11), 30, 0.2)


ADAM = train.Config((2, 4, 1), optimizer="adam", batch_size=32, epochs=4)


def tiny_sweep(**kwargs: Any) -> sweep.Results:
    """Adam on a 2-4-1 net for 4 epochs; 5 configs (learning rate, λ) × 2 seeds: one group of 10 runs."""
    train_set, dev_set = tiny_data()
    space = {"learning_rate": sweep.log_uniform(1e-2, 1.0), "l2": sweep.log_uniform(1e-3, 1e-1)}
    return sweep.run(ADAM, space, train_set, dev_set, key=jax.random.key(3), num_configs=5, seeds=2, **kwargs)


def without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without their wall time, the one field that differs between two runs of the same sweep."""
    return [{name: value for name, value in row.items() if name != "seconds"} for row in rows]


def file_rows(path: pathlib.Path) -> list[dict[str, Any]]:
    """The rows of a finished results file: whole lines only, none written twice."""
    text = path.read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    assert len({row["id"] for row in rows}) == len(rows), "duplicate rows"
    return rows


def assert_same_runs(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    """Same ids and choices; costs equal to float32 rounding, accuracies within one dev example.

    (Another chunk shape or device count changes the batch XLA sees, hence the last bits.)
    """
    m_dev = len(tiny_data()[1].y)
    assert [r["id"] for r in rows] == [r["id"] for r in reference]
    for row, ref in zip(rows, reference):
        assert (
            row["hparams"] == ref["hparams"] and row["config"] == ref["config"] and row["diverged"] == ref["diverged"]
        )
        assert row["final_cost"] == pytest.approx(ref["final_cost"], rel=1e-4)
        for name in ("train_accuracy", "dev_accuracy"):
            assert abs(row[name] - ref[name]) <= 1.0 / m_dev + 1e-6


def compilation_cache(base: pathlib.Path) -> dict[str, str]:
    """Environment for subprocesses sharing a persistent compilation cache under ``base`` (a restart skips XLA)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(base / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def chunk_program_collectives(results: sweep.Results) -> dict[str, int]:
    """The collective ops (``all-reduce``, ``all-gather``, ...) in the tiny sweep's compiled chunk program, by kind.

    The program is ``engine._compile``'s, for the chunk shape the sweep ran (cached: not compiled again).
    """
    train_set, dev_set = tiny_data()
    key = jax.random.key(3)
    configs = results.stats["layout"][0]["chunk"] // 2  # 2 seeds per config
    compiled, _ = engine._compile(
        ADAM, configs, 2, str(jax.random.key_impl(key)), tuple(jax.random.key_data(key).shape), "float32",
        ((train_set.X.shape, train_set.y.shape), (dev_set.X.shape, dev_set.y.shape), None), tuple(jax.devices()),
        False, False,
    )
    kinds = re.findall(r"= \S+ (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(",
                       compiled.as_text())
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--chunk_size", type=int, default=None)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each chunk (to be killed)")
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    out_dir = pathlib.Path(args.out_dir)
    results_path = out_dir / "results.jsonl" if jax.process_index() == 0 else None
    results = tiny_sweep(
        results_path=results_path, chunk_size=args.chunk_size, progress=lambda _: time.sleep(args.sleep)
    )
    record = {"rows": results.rows, "stats": results.stats, "trace_count": train.trace_count(),
              "collectives": chunk_program_collectives(results)}
    (out_dir / f"rows-{jax.process_index()}.json").write_text(json.dumps(record))
    if args.coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
