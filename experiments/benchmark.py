"""Benchmark: the sweep's throughput against the alternatives, and against this machine's matmul peak.

One run measures, on the same job (default: moons 300 points, net 2-20-10-1, Adam, mini-batch 64,
200 epochs, 256 learning rates × 1 seed):

1. deepopt's sweep (``sweep.run``) sharded over every device;
2. the strong baseline: a Python loop calling one jitted ``fit`` per run, the learning rate
   traced (compiled once), on one device;
3. the path most users take: an idiomatic Flax + optax loop per run (``TrainState`` holding
   ``optax.adam(lr)`` with the learning rate a Python float, a jitted step, a Python loop over
   epochs and mini-batches), which recompiles for every run: a subset is measured, compilation
   included, and extrapolated to the whole job;
4. the float32 matmul peak (a large ``jnp.dot``) and the sweep's achieved matmul FLOP/s as a
   fraction of it, for the default net and a compute-bound one (hidden width 256);
5. peak resident memory (RSS) of each phase and memory per run.

Throughput is config-steps per second (one optimizer update of one run); times are medians of
``--repeats`` repeats, compilation reported apart. Writes ``results.json`` and ``report.md``.

    python -m experiments.benchmark [--num_configs 512] [--num_seeds 2] [--repeats 3] [--output_dir DIR]
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax.training import train_state

from deepopt import data as data_lib
from deepopt import flax_models, init, perf, sweep, train
from deepopt.perf import ResidentMemory, measure_memory  # noqa: F401  (re-exported)
from experiments import benchmark_peers, common

STUDY = "benchmark"
FLAGS = flags.FLAGS
DATASETS = {"moons": data_lib.make_moons, "circles": data_lib.make_circles}
# The targets: sweep / jitted loop (CPU, GPU), sweep / recompiling loop, compute-bound share of the peak.
TARGET_VS_JITTED_CPU, TARGET_VS_JITTED_GPU = 1.5, 50.0
TARGET_VS_RECOMPILING = 20.0
TARGET_PEAK_FRACTION = 0.40
# Issue 17: against the peers (one device = the library default), and the small net's share of the peak.
TARGET_COLD_VS_JAX_USER, TARGET_WARM_VS_JAX_USER, TARGET_WARM_VS_TORCH, TARGET_DEVICES_VS_JAX_USER = 2.5, 3.0, 5.0, 5.0
TARGET_SMALL_NET_PEAK_FRACTION = 0.25

common.define_study_flags()
FLAGS.set_default("compilation_cache", "off")  # cold numbers include compilation: never load it from a cache
flags.DEFINE_enum("dataset", "moons", list(DATASETS), "Generated data set (ignored with --data).")
flags.DEFINE_integer("n_train", 300, "Generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_dev", 200, "Generated dev examples (every approach reports dev accuracy).", lower_bound=2)
flags.DEFINE_float("noise", 0.2, "Noise of the generated data.", lower_bound=0.0)
flags.DEFINE_list("hidden", ["20", "10"], "Hidden layer widths of the default net.")
flags.DEFINE_enum("optimizer", "adam", ["gd", "momentum", "rmsprop", "adam"], "Optimizer of every run.")
flags.DEFINE_integer("batch_size", 64, "Mini-batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", 200, "Epochs per run.", lower_bound=1)
flags.DEFINE_integer("num_configs", 256, "Learning rates (log-spaced over --learning_rate_range).", lower_bound=1)
flags.DEFINE_integer("num_seeds", 1, "Keys per learning rate.", lower_bound=1)
flags.DEFINE_list("learning_rate_range", ["1e-4", "1e-1"], "Smallest and largest learning rate.")
flags.DEFINE_integer("repeats", 3, "Timed repeats of each measurement (medians are reported).", lower_bound=3)
flags.DEFINE_string(
    "chunk_size", sweep.AUTO_CHUNK, "Runs per sweep chunk: a positive int, 0 (a whole group in one chunk) or 'auto' "
    "(as many runs per device as fit sweep.CACHE_BYTES_PER_DEVICE)."
)
flags.DEFINE_integer("loop_runs", 128, "Runs the jitted loop trains per repeat (0: all; more are extrapolated).", lower_bound=0)
flags.DEFINE_integer("recompile_runs", 4, "Runs of the recompiling Flax + optax loop (extrapolated).", lower_bound=3)
flags.DEFINE_list("compute_hidden", ["256", "256"], "Hidden widths of the compute-bound net.")
flags.DEFINE_integer("compute_configs", 32, "Learning rates of the compute-bound sweep.", lower_bound=1)
flags.DEFINE_integer("compute_epochs", 20, "Epochs of the compute-bound sweep.", lower_bound=1)
flags.DEFINE_integer("matmul_size", 2048, "n of the (n, n) @ (n, n) peak measurement.", lower_bound=16)
flags.DEFINE_bool(
    "baselines_in_own_process",
    True,
    "On a CPU split into several devices, time the two loops in a child process with JAX's default single CPU "
    "device: measured here, a one-device loop runs 15-25% slower in a process that also holds the split devices.",
)
flags.DEFINE_string("baselines_to", None, "Internal: only time the one-device approaches and write them as JSON here.")
flags.DEFINE_string("first_call_to", None, "Internal: only time the one-device sweep's first call and write it as JSON here.")
flags.DEFINE_bool("cached_first_call", True, "Also time the one-device sweep's first call in a new process whose "
                  "persistent compilation cache an earlier process filled (what the scripts meet from their second run).")
flags.DEFINE_list("peers", ["jax_user", "torch_func"], "Peers to measure: jax_user (jit(vmap(train)) over optax.adam), "
                  "torch_func (PyTorch's ensembling recipe; measured when torch is installed).")
flags.DEFINE_integer("search_configs", 64, "Time to accuracy: configs of random search and PBT members (0: skip).",
                     lower_bound=0)
common.define_host_devices_flag()


def _range_is_valid(values: list[str]) -> bool:
    try:
        lo, hi = (float(v) for v in values)
    except ValueError:
        return False
    return 0 < lo < hi < float("inf")


flags.register_validator(
    "chunk_size",
    lambda value: value == sweep.AUTO_CHUNK or value.isdigit(),
    message="--chunk_size must be a non-negative int or 'auto'",
)
flags.register_validator("peers", lambda v: set(v) <= {"jax_user", "torch_func"},
                         message="--peers must be a comma-separated list from jax_user, torch_func")
flags.register_validator(
    "learning_rate_range", _range_is_valid, message="--learning_rate_range must be two numbers lo,hi with 0 < lo < hi"
)
for _name in ("hidden", "compute_hidden"):
    flags.register_validator(
        _name,
        lambda widths: bool(widths) and all(w.isdigit() and int(w) > 0 for w in widths),
        message=f"--{_name} must be a comma-separated list of positive ints",
    )


# ------------------------------------------------------------------------------ the three approaches


def grid_sweep_call(
    config: train.Config,
    learning_rates: np.ndarray,
    seeds: int,
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
    key: jax.Array,
    chunk_size: int | str | None,
    devices: Any = None,
    concurrent_chunks: int | None = None,
) -> Callable[[], sweep.Results]:
    """The job as one ``sweep.run`` over the grid of ``learning_rates`` × ``seeds``, ready to call."""
    space = {"learning_rate": sweep.grid([float(lr) for lr in learning_rates])}

    def call() -> sweep.Results:
        return sweep.run(
            config, space, train_set, dev_set, key=key, num_configs=None, seeds=seeds, sampler="grid",
            chunk_size=chunk_size, devices=devices, concurrent_chunks=concurrent_chunks,
        )

    return call


def measure_sweep(
    config: train.Config,
    learning_rates: np.ndarray,
    seeds: int,
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
    key: jax.Array,
    repeats: int,
    chunk_size: int | str | None,
    devices: Any = None,
    concurrent_chunks: int | None = None,
) -> dict[str, Any]:
    """``sweep.run`` over ``devices`` (default every one): the first call (compilation + run), then ``repeats`` timed calls.

    ``concurrent_chunks``: as ``sweep.run`` takes it (None: the library's choice, the CPU's cores per device).
    """
    call = grid_sweep_call(config, learning_rates, seeds, train_set, dev_set, key, chunk_size, devices,
                           concurrent_chunks)
    start = time.perf_counter()
    first, first_memory = measure_memory(call, 0)
    first_seconds = time.perf_counter() - start
    compile_seconds = sum(group["compile_seconds"] for group in first.stats["layout"])
    runs = first.stats["runs"]
    chunk = max(group["chunk"] for group in first.stats["layout"])
    timed, memory = measure_memory(lambda: perf.time_calls(call, repeats), chunk)
    per_device = max(group["bytes_per_device"] for group in first.stats["layout"])
    runs_per_device = chunk // first.stats["devices"]
    memory["xla_kb_per_run"] = per_device / 1024 / max(runs_per_device, 1)
    memory["first_call_peak_rss_mb"] = first_memory["peak_rss_mb"]  # compilation included
    seconds = perf.median_seconds(timed)
    steps = perf.steps_per_run(config, len(train_set.y))
    return {
        "runs": runs,
        "runs_measured": runs,
        "devices": first.stats["devices"],
        "chunk": chunk,
        "concurrent_chunks": max(group["concurrent_chunks"] for group in first.stats["layout"]),
        "dropout_compiled": any(group["dropout"] for group in first.stats["layout"]),
        "compile_seconds": compile_seconds,
        "first_call_seconds": first_seconds,
        "repeat_seconds": timed,
        "seconds": seconds,
        "config_steps_per_second": runs * steps / seconds,
        "cold_config_steps_per_second": runs * steps / first_seconds,
        "end_to_end_seconds": first_seconds,
        "memory": memory,
        "rows": first.rows,
    }


def measure_jitted_loop(
    config: train.Config,
    learning_rates: np.ndarray,
    keys: jax.Array,
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
    num_runs: int,
    repeats: int,
) -> dict[str, Any]:
    """A Python loop of one jitted ``fit`` per run (learning rate traced, so compiled once), on one device.

    Runs are taken in the sweep's order (learning rate major, then seed) and only the scalars the
    sweep keeps come back. The loop dispatches every run, then waits for all of them.
    """
    train_set = data_lib.Dataset(jnp.asarray(train_set.X), jnp.asarray(train_set.y))
    dev_set = data_lib.Dataset(jnp.asarray(dev_set.X), jnp.asarray(dev_set.y))

    @jax.jit
    def one_run(learning_rate: jax.Array, key: jax.Array) -> tuple[jax.Array, ...]:
        result = train.fit(config, train.HParams(learning_rate=learning_rate), key, train_set, dev_set, dropout=False)
        return result.train_accuracy, result.dev_accuracy, result.final_cost

    dtype = train_set.X.dtype
    plan = [(jnp.asarray(lr, dtype), seed_key) for lr in learning_rates for seed_key in keys][:num_runs]
    start = time.perf_counter()
    jax.block_until_ready(one_run(*plan[0]))
    first_call_seconds = time.perf_counter() - start

    last: list[tuple[jax.Array, ...]] = []

    def loop() -> list[tuple[jax.Array, ...]]:
        last[:] = [one_run(lr, seed_key) for lr, seed_key in plan]
        return jax.block_until_ready(last)

    timed, memory = measure_memory(lambda: perf.time_calls(loop, repeats), 1)
    outputs = [tuple(float(v) for v in output) for output in last]
    seconds = perf.median_seconds(timed)
    steps = perf.steps_per_run(config, len(train_set.y))
    return {
        "runs_measured": len(plan),
        "devices": 1,
        "compile_seconds": max(first_call_seconds - seconds / len(plan), 0.0),  # the first call less one run
        "first_call_seconds": first_call_seconds,
        "repeat_seconds": timed,
        "seconds": seconds,
        "seconds_per_run": seconds / len(plan),
        "config_steps_per_second": len(plan) * steps / seconds,
        "memory": memory,
        "outputs": outputs,
    }


_FLAX_STEP_TRACES: list[int] = []  # one entry per trace (= compilation) of _flax_train_step


@jax.jit
def _flax_train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
    """The tutorial's jitted step: binary cross-entropy, ``value_and_grad``, ``apply_gradients``."""
    import optax

    _FLAX_STEP_TRACES.append(1)  # Python runs here only while tracing

    def loss_fn(params: Any) -> jax.Array:
        logits = state.apply_fn({"params": params}, x)[:, 0]
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def flax_optax_run(
    layer_sizes: tuple[int, ...],
    optimizer: str,
    learning_rate: float,
    seed: int,
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
    batch_size: int,
    epochs: int,
) -> dict[str, float]:
    """One run the way a Flax tutorial writes it; the learning rate is a Python float inside ``optax``.

    A new ``optax`` transformation per run is new static data of the ``TrainState``, so the
    jitted step recompiles for every run (and once more for the smaller last mini-batch).
    Returns the run's seconds, the seconds of the calls that compiled, and its dev accuracy.
    """
    import optax  # the benchmark extra; main() checks for it before any measurement

    traced_before_run = len(_FLAX_STEP_TRACES)
    start = time.perf_counter()
    compile_seconds = 0.0
    tx = {"gd": optax.sgd, "momentum": optax.sgd, "rmsprop": optax.rmsprop, "adam": optax.adam}[optimizer]
    tx = tx(learning_rate, momentum=0.9) if optimizer == "momentum" else tx(learning_rate)
    net = flax_models.MLP(tuple(layer_sizes))  # the library's Flax MLP: Dense layers, ReLU between them
    X, y = np.asarray(train_set.X), np.asarray(train_set.y, np.float32)
    params = flax_models.to_flax_params(init.mlp(jax.random.key(seed), tuple(layer_sizes), "he"))  # the job's He init
    state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=tx)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for begin in range(0, len(y), batch_size):
            batch = order[begin : begin + batch_size]
            traced_before, step_start = len(_FLAX_STEP_TRACES), time.perf_counter()
            state, loss = _flax_train_step(state, X[batch], y[batch])
            if len(_FLAX_STEP_TRACES) > traced_before:
                jax.block_until_ready(loss)
                compile_seconds += time.perf_counter() - step_start
    logits = net.apply({"params": state.params}, np.asarray(dev_set.X))[:, 0]
    dev_accuracy = float(jnp.mean((logits > 0) == (np.asarray(dev_set.y) == 1)))
    return {
        "seconds": time.perf_counter() - start,
        "compile_seconds": compile_seconds,
        "compilations": len(_FLAX_STEP_TRACES) - traced_before_run,
        "dev_accuracy": dev_accuracy,
    }


def measure_recompiling_loop(
    config: train.Config,
    learning_rates: np.ndarray,
    seeds: int,
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
    num_runs: int,
) -> dict[str, Any]:
    """``num_runs`` Flax + optax runs spread over the learning rates; their median extrapolates to the job."""
    picks = np.linspace(0, len(learning_rates) - 1, num_runs).round().astype(int)
    runs = []

    def loop() -> None:
        for number, index in enumerate(picks):
            runs.append(
                flax_optax_run(
                    config.layer_sizes, config.optimizer, float(learning_rates[index]), number % seeds,
                    train_set, dev_set, config.batch_size or len(train_set.y), config.epochs,
                )
            )

    _, memory = measure_memory(loop, 1)
    seconds = perf.median_seconds([r["seconds"] for r in runs])
    steps = perf.steps_per_run(config, len(train_set.y))
    return {
        "runs_measured": num_runs,
        "devices": 1,
        "run_seconds": [r["seconds"] for r in runs],
        "seconds_per_run": seconds,
        "compile_seconds_per_run": perf.median_seconds([r["compile_seconds"] for r in runs]),
        "compilations_per_run": perf.median_seconds([r["compilations"] for r in runs]),
        "config_steps_per_second": steps / seconds,
        "dev_accuracies": [r["dev_accuracy"] for r in runs],
        "memory": memory,
    }


# ------------------------------------------------------------------------------ report


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:,.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"


def peer_ratios(sweep_m: dict[str, Any], baselines: dict[str, Any]) -> dict[str, float]:
    """deepopt against the peers: warm and cold, the one-device sweep (library default) and the sweep on every device."""
    one = baselines["sweep_one_device"]
    ratios = {}
    for peer in ("jax_user", "torch_func"):
        if peer in baselines:
            ratios[f"one_device_vs_{peer}_warm"] = one["config_steps_per_second"] / baselines[peer]["config_steps_per_second"]
            ratios[f"one_device_vs_{peer}_cold"] = (
                one["cold_config_steps_per_second"] / baselines[peer]["cold_config_steps_per_second"])
            ratios[f"all_devices_vs_{peer}_warm"] = (
                sweep_m["config_steps_per_second"] / baselines[peer]["config_steps_per_second"])
    return ratios


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what was measured."""
    gpu = results["machine"]["platform"] == "gpu"
    vs_jitted = TARGET_VS_JITTED_GPU if gpu else TARGET_VS_JITTED_CPU
    ratios, flops = results["ratios"], results["flops"]
    rows = [
        ("sweep / jitted loop (config-steps/s)", vs_jitted, ratios["sweep_vs_jitted_loop"], "×"),
        ("sweep / recompiling Flax + optax loop (end to end)", TARGET_VS_RECOMPILING, ratios["sweep_vs_recompiling_loop"], "×"),
        ("compute-bound net: share of the matmul peak", TARGET_PEAK_FRACTION, flops["compute_bound"]["peak_fraction"], "%"),
        ("default net: share of the matmul peak", TARGET_SMALL_NET_PEAK_FRACTION, flops["default"]["peak_fraction"], "%"),
    ]
    peer_targets = [
        ("one device, cold: sweep / JAX user's jit(vmap)", TARGET_COLD_VS_JAX_USER, "one_device_vs_jax_user_cold"),
        ("one device, warm: sweep / JAX user's jit(vmap)", TARGET_WARM_VS_JAX_USER, "one_device_vs_jax_user_warm"),
        ("one device, warm: sweep / torch.func recipe", TARGET_WARM_VS_TORCH, "one_device_vs_torch_func_warm"),
    ]
    if results["machine"]["devices"] > 1:
        peer_targets.append((f"{results['machine']['devices']} devices, warm: sweep / JAX user's jit(vmap)",
                             TARGET_DEVICES_VS_JAX_USER, "all_devices_vs_jax_user_warm"))
    rows += [(name, wanted, ratios[key], "×") for name, wanted, key in peer_targets if key in ratios]
    return [{"target": name, "wanted": wanted, "measured": got, "unit": unit, "met": got >= wanted} for name, wanted, got, unit in rows]


def cold_warm_table(results: dict[str, Any]) -> str:
    """Every approach's warm and cold config-steps per second, its compile seconds, and how far deepopt is ahead."""
    measured, job = results["measured"], results["job"]
    total = job["runs"] * job["steps_per_run"]
    one = measured["sweep_one_device"]
    rows = []

    def add(name: str, devices: int, warm: float, cold: float | None, compile_seconds: float | None) -> None:
        rows.append([name, devices, _fmt(warm), "—" if cold is None else _fmt(cold),
                     "—" if compile_seconds is None else _fmt(compile_seconds),
                     f"{one['config_steps_per_second'] / warm:.2f}×",
                     "—" if cold is None else f"{one['cold_config_steps_per_second'] / cold:.2f}×"])

    add(f"deepopt `sweep.run`, library default (1 device, {one.get('concurrent_chunks', 1)} chunks at once)", 1,
        one["config_steps_per_second"], one["cold_config_steps_per_second"], one["compile_seconds"])
    if "first_calls" in measured:
        filled = measured["first_calls"]["filled_cache"]
        add("deepopt `sweep.run`, 1 device, a new process whose persistent compilation cache is filled "
            "(the scripts from their second run)", 1, one["config_steps_per_second"],
            filled["cold_config_steps_per_second"], filled["compile_seconds"])
    if "sweep_one_device_serial" in measured:
        serial = measured["sweep_one_device_serial"]
        add("deepopt `sweep.run`, 1 device, `concurrent_chunks=1` (one chunk at a time; compiled already)", 1,
            serial["config_steps_per_second"], None, None)
    sweep_m = measured["sweep"]
    if sweep_m["devices"] > 1:
        add(f"deepopt `sweep.run`, {sweep_m['devices']} host devices", sweep_m["devices"],
            sweep_m["config_steps_per_second"], sweep_m["cold_config_steps_per_second"], sweep_m["compile_seconds"])
    if "jax_user" in measured:
        peer = measured["jax_user"]
        add("`jax.jit(jax.vmap(train))` over an `optax.adam` loop (JAX user)", 1, peer["config_steps_per_second"],
            peer["cold_config_steps_per_second"], peer["compile_seconds"])
    if "torch_func" in measured:
        peer = measured["torch_func"]
        add(f"PyTorch `torch.func` ensembling, hand-written Adam ({peer['threads']} threads)", 1,
            peer["config_steps_per_second"], peer["cold_config_steps_per_second"], None)
    else:
        rows.append(["PyTorch `torch.func` ensembling", 1, "not measured (torch not installed)", "", "", "", ""])
    loop_m, recompile_m = measured["jitted_loop"], measured["recompiling_loop"]
    loop_cold = total / (loop_m["compile_seconds"] + loop_m["seconds_per_run"] * job["runs"])
    add("Python loop of one jitted `fit`", 1, loop_m["config_steps_per_second"], loop_cold, loop_m["compile_seconds"])
    add("Flax + optax loop, recompiling every run", 1, recompile_m["config_steps_per_second"],
        recompile_m["config_steps_per_second"], recompile_m["compile_seconds_per_run"])
    return common.markdown_table(
        ["approach", "devices", "warm config-steps/s", "cold config-steps/s", "compile s per group",
         "deepopt (1 device) ahead, warm", "cold"], rows)


FIRST_CALL_ROWS = {
    "tracing": "tracing (Python to jaxpr, `vmap` included)",
    "lowering": "lowering (jaxpr to an XLA module)",
    "compiling": "XLA's compile, or the persistent cache's load",
    "other": "everything else: data checks, planning, dispatch, the chunks' run",
}


def first_call_lines(results: dict[str, Any]) -> list[str]:
    """Where the one-device first call of a new process goes, cache empty and filled (report lines)."""
    calls = results["measured"].get("first_calls")
    if not calls or "phase_seconds" not in calls["empty_cache"]:
        return []
    empty, filled = calls["empty_cache"], calls["filled_cache"]
    rows = [[label, _fmt(empty["phase_seconds"][name]), _fmt(filled["phase_seconds"][name])]
            for name, label in FIRST_CALL_ROWS.items()]
    rows.append(["first call, wall", _fmt(empty["first_call_seconds"]), _fmt(filled["first_call_seconds"])])
    return [
        "Where the one-device first call of a new process goes (seconds; JAX's own compile events, each "
        "phase's spans merged, through `deepopt.perf.compile_phases`):",
        "",
        common.markdown_table(["phase", "persistent cache empty", "filled (programs loaded)"], rows),
        "",
    ]


def time_to_accuracy_lines(results: dict[str, Any]) -> list[str]:
    """The adaptive searches' wall time to random search's best dev accuracy (report lines)."""
    found = results.get("time_to_accuracy")
    if not found:
        return []
    rows = []
    for name, entry in found["searches"].items():
        reached = entry["seconds_to_random_best"]
        rows.append([name, _fmt(entry["seconds"]), f"{entry['best_dev_accuracy']:.2%}", entry["config_steps"],
                     "—" if reached is None else _fmt(reached)])
    return [
        f"## Time to accuracy: adaptive searches against random search ({found['configs']} configs)",
        "",
        common.markdown_table(["search", "wall s (compile included)", "best dev accuracy", "config-steps",
                               f"s to random's best ({found['target_dev_accuracy']:.2%})"], rows),
        "",
        "Same net, data and epochs as above, over the learning rate and L2 λ (log-uniform); Hyperband from "
        "epochs / 27, eta 3; PBT exploits every epochs / 10. A search reaches the target when any of its rows "
        "(any rung or generation) has a dev accuracy at least random search's best.",
        "",
    ]


def report(results: dict[str, Any]) -> str:
    """``report.md``: machine, job, the throughput table, FLOP/s against the peak, memory, targets."""
    machine, job, measured = results["machine"], results["job"], results["measured"]
    sweep_m, loop_m, recompile_m = measured["sweep"], measured["jitted_loop"], measured["recompiling_loop"]
    runs, steps = job["runs"], job["steps_per_run"]
    throughput = common.markdown_table(
        ["approach", "devices", "runs timed", "median s (timed runs)", "config-steps/s", "compile s", "whole job, end to end s", "sweep is faster by"],
        [
            [f"deepopt sweep (`sweep.run`, chunks of {sweep_m['chunk']})", sweep_m["devices"], sweep_m["runs_measured"],
             _fmt(sweep_m["seconds"]), _fmt(sweep_m["config_steps_per_second"]), _fmt(sweep_m["compile_seconds"]),
             _fmt(results["end_to_end"]["sweep"]), "1×"],
            ["Python loop of one jitted `fit` (learning rate traced)", 1, loop_m["runs_measured"], _fmt(loop_m["seconds"]),
             _fmt(loop_m["config_steps_per_second"]), _fmt(loop_m["compile_seconds"]),
             _fmt(results["end_to_end"]["jitted_loop"]) + ("" if loop_m["runs_measured"] == runs else " (extrapolated)"),
             f"{results['ratios']['sweep_vs_jitted_loop']:.2f}×"],
            ["Flax + optax loop, Python-float learning rate (recompiles every run)", 1, recompile_m["runs_measured"],
             _fmt(recompile_m["seconds_per_run"]) + " per run", _fmt(recompile_m["config_steps_per_second"]),
             _fmt(recompile_m["compile_seconds_per_run"]) + " per run",
             _fmt(results["end_to_end"]["recompiling_loop"]) + " (extrapolated)",
             f"{results['ratios']['sweep_vs_recompiling_loop']:.1f}× end to end"],
        ],
    )
    cold_warm = cold_warm_table(results)
    accuracy_lines = time_to_accuracy_lines(results)
    flops = results["flops"]
    flop_rows = [
        [f"{name.replace('_', ' ')}: {'-'.join(map(str, entry['layer_sizes']))}", entry["runs"], entry["chunk"], entry["epochs"],
         _fmt(entry["gflop_per_run"]), _fmt(entry["seconds"]), _fmt(entry["gflops_per_second"]),
         f"{entry['peak_fraction']:.1%}"]
        for name, entry in (("default", flops["default"]), ("compute_bound", flops["compute_bound"]))
    ]
    peak = results["matmul_peak"]
    memory_rows = [
        ["sweep, first call (compiles)", _fmt(sweep_m["memory"]["first_call_peak_rss_mb"]), "", "", "", ""]
    ] + [
        [name, _fmt(m["memory"]["peak_rss_mb"]), _fmt(m["memory"]["added_rss_mb"]), m["memory"]["runs_in_flight"],
         _fmt(m["memory"]["added_rss_kb_per_run"]),
         _fmt(m["memory"]["xla_kb_per_run"]) if "xla_kb_per_run" in m["memory"] else "—"]
        for name, m in (("sweep, timed repeats", sweep_m), ("jitted loop", loop_m), ("Flax + optax loop", recompile_m))
    ]
    target_rows = [
        [t["target"], (f"≥ {t['wanted']:.0%}" if t["unit"] == "%" else f"≥ {t['wanted']:g}×"),
         (f"{t['measured']:.1%}" if t["unit"] == "%" else f"{t['measured']:.2f}×"), "yes" if t["met"] else "**no**"]
        for t in results["targets"]
    ]
    lines = [
        "# Benchmark: the sweep against the alternatives",
        "",
        f"Machine: {machine['device_kind']} ({machine['platform']}), {machine['devices']} JAX device(s), "
        f"{machine['cpu_cores']} CPU cores ({machine['cpu']}), jax {machine['jax']}, Python {machine['python']}.",
        "",
        f"Job: {job['data']}, {job['n_train']} training examples, net {'-'.join(map(str, job['layer_sizes']))}, "
        f"{job['optimizer']}, mini-batch {job['batch_size']}, {job['epochs']} epochs ({steps} updates per run), "
        f"{job['num_configs']} learning rates × {job['num_seeds']} seeds = {runs} runs = {runs * steps:,} config-steps. "
        f"Medians of {job['repeats']} repeats; compilation reported apart.",
        "",
        "## Throughput",
        "",
        throughput,
        "",
        f"The jitted loop times {loop_m['runs_measured']} of the {runs} runs per repeat and the Flax + optax loop "
        f"{recompile_m['runs_measured']} runs (spread over the learning rates); their whole-job times are the "
        f"per-run medians × {runs}. Both loops do the same work per run as the sweep (same data, updates and "
        f"dev evaluation) and ran in a process with {loop_m['process_devices']} JAX device(s)"
        + (" (their fastest setting: a one-device loop is slower beside split devices)" if loop_m["process_devices"] == 1
           and machine["devices"] > 1 else "") + "."
        + f" Jitted loop against the sweep on the runs both trained: largest |Δ final cost| "
        f"{results['agreement']['max_final_cost_difference']:.2g}, dev accuracy equal in "
        f"{results['agreement']['dev_accuracy_equal']}/{results['agreement']['runs']} runs.",
        "",
        "## Cold and warm, against what users write by hand",
        "",
        cold_warm,
        "",
        "Cold: the first call, compilation included, as a user's first run meets it (the persistent-cache row: "
        "the first call of a new process loading the program an earlier process compiled; compile s is then the "
        "load); warm: the median of the repeated calls. The JAX user's program is `jax.jit(jax.vmap(train))` over a `train(learning_rate, key)` "
        "written with `optax.adam` and `lax.scan` (a fresh permutation per epoch, the last smaller mini-batch kept); "
        "the torch.func recipe stacks one `nn.Sequential` per config (`stack_module_state`), takes "
        "`vmap(grad(loss))` through `functional_call` on a shared mini-batch and applies Adam by hand over the "
        "stacked parameters (eager PyTorch: nothing to compile). Both are in `experiments/benchmark_peers.py`.",
        "",
        *first_call_lines(results),
        *accuracy_lines,
        "## Against the matmul peak",
        "",
        f"Float32 matmul peak ({peak['size']}×{peak['size']} `jnp.dot`): one device {peak['single_device'] / 1e9:,.1f} "
        f"GFLOP/s, one dot per device at once {peak['all_devices'] / 1e9:,.1f} GFLOP/s; peak = "
        f"{peak['peak'] / 1e9:,.1f} GFLOP/s. FLOPs counted: the training matmuls only (forward, ∂W, ∂a; "
        "`deepopt.perf.matmul_flops_per_example`) over the real examples, so padding, the optimizer and the "
        "random numbers are work the count leaves out.",
        "",
        common.markdown_table(["net (sweep over all devices)", "runs", "chunk", "epochs", "GFLOP per run", "median s", "GFLOP/s", "of peak"], flop_rows),
        "",
        "## Memory",
        "",
        common.markdown_table(
            ["phase", "peak RSS MB", "added RSS MB", "runs in flight", "added KB per run", "XLA KB per run"], memory_rows
        ),
        "",
        "Peak RSS is each phase's own high-water mark"
        + ("" if sweep_m["memory"]["peak_is_per_phase"] else " (not resettable here: the process's peak so far)")
        + "; added = peak − resident at its start. XLA KB per run: the compiled chunk's `memory_analysis()` per run.",
        "",
        "## Targets",
        "",
        common.markdown_table(["target", "wanted", "measured", "met"], target_rows),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def cpu_model() -> str:
    """The processor's name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_data(key: jax.Array) -> tuple[data_lib.Dataset, data_lib.Dataset, str]:
    """``(train, dev, description)``: generated, or ``--data`` with its held-out part as dev set."""
    train_key, dev_key, split_key = jax.random.split(key, 3)
    user_data = common.load_user_data(split_key)
    if user_data is not None:
        train_set, dev_set = user_data
        held_out = FLAGS.test_data or f"{FLAGS.test_fraction:.0%} of it"
        return train_set, dev_set, f"{FLAGS.data} (dev set: {held_out})"
    make = DATASETS[FLAGS.dataset]
    train_set = data_lib.Dataset(*map(np.asarray, make(train_key, FLAGS.n_train, FLAGS.noise)))
    dev_set = data_lib.Dataset(*map(np.asarray, make(dev_key, FLAGS.n_dev, FLAGS.noise)))
    return train_set, dev_set, f"{FLAGS.dataset} (noise {FLAGS.noise})"


def measure_baselines(
    config: train.Config,
    learning_rates: np.ndarray,
    model_key: jax.Array,
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
) -> dict[str, Any]:
    """The one-device approaches, in this process: the sweep at its library default, both loops, the peers."""
    runs = FLAGS.num_configs * FLAGS.num_seeds
    loop_runs = runs if FLAGS.loop_runs == 0 else min(FLAGS.loop_runs, runs)
    say = print if FLAGS.baselines_to is None else (lambda *args, **kwargs: None)
    say("deepopt sweep, one device (the library default) ...", flush=True)
    one_device = measure_sweep(config, learning_rates, FLAGS.num_seeds, train_set, dev_set, model_key, FLAGS.repeats,
                               chunk_size_flag(), devices=jax.devices()[:1])
    one_device.pop("rows")
    say(f"  {one_device['config_steps_per_second']:,.0f} config-steps/s "
        f"({one_device['concurrent_chunks']} chunks at once)")
    serial: dict[str, Any] = {}
    if one_device["concurrent_chunks"] > 1:  # the engine change measured in the same run: one chunk at a time
        say("deepopt sweep, one device, one chunk at a time ...", flush=True)
        serial = {"sweep_one_device_serial": measure_sweep(
            config, learning_rates, FLAGS.num_seeds, train_set, dev_set, model_key, FLAGS.repeats,
            chunk_size_flag(), devices=jax.devices()[:1], concurrent_chunks=1)}
        serial["sweep_one_device_serial"].pop("rows")
        say(f"  {serial['sweep_one_device_serial']['config_steps_per_second']:,.0f} config-steps/s")
    peers = measure_peers(config, learning_rates, model_key, train_set, dev_set)
    say(f"jitted fit loop ({loop_runs} runs) ...", flush=True)
    keys = sweep.seed_keys(model_key, FLAGS.num_seeds)
    loop_m = measure_jitted_loop(config, learning_rates, keys, train_set, dev_set, loop_runs, FLAGS.repeats)
    say(f"  {loop_m['config_steps_per_second']:,.0f} config-steps/s")
    say(f"Flax + optax loop, recompiling ({FLAGS.recompile_runs} runs) ...", flush=True)
    recompile_m = measure_recompiling_loop(config, learning_rates, FLAGS.num_seeds, train_set, dev_set, FLAGS.recompile_runs)
    say(f"  {recompile_m['seconds_per_run']:.2f} s per run, {recompile_m['compile_seconds_per_run']:.2f} s of it compiling")
    for entry in (loop_m, recompile_m, one_device, *serial.values(), *peers.values()):
        entry["process_devices"] = len(jax.devices())
    return {"jitted_loop": loop_m, "recompiling_loop": recompile_m, "sweep_one_device": one_device, **serial, **peers}


def chunk_size_flag() -> int | str | None:
    """``--chunk_size`` as ``sweep.run`` takes it."""
    return FLAGS.chunk_size if FLAGS.chunk_size == sweep.AUTO_CHUNK else (int(FLAGS.chunk_size) or None)


def measure_peers(
    config: train.Config, learning_rates: np.ndarray, model_key: jax.Array, train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
) -> dict[str, dict[str, Any]]:
    """The JAX user's ``jit(vmap(train))`` and the ``torch.func`` recipe on the job (``--peers``), cold and warm."""
    say = print if FLAGS.baselines_to is None else (lambda *args, **kwargs: None)
    steps = perf.steps_per_run(config, len(train_set.y))
    batch = config.batch_size or len(train_set.y)
    measured: dict[str, dict[str, Any]] = {}
    if "jax_user" in FLAGS.peers:
        say("JAX user's jit(vmap(train)) over optax.adam ...", flush=True)
        keys = sweep.seed_keys(model_key, FLAGS.num_seeds)
        measured["jax_user"] = benchmark_peers.measure_jax_user(
            config.layer_sizes, batch, config.epochs, learning_rates, keys, train_set, dev_set, FLAGS.repeats)
    if "torch_func" in FLAGS.peers:
        if benchmark_peers.torch_available():
            say("PyTorch torch.func ensembling recipe ...", flush=True)
            measured["torch_func"] = benchmark_peers.measure_torch_func(
                config.layer_sizes, batch, config.epochs, learning_rates, FLAGS.num_seeds, train_set, dev_set,
                FLAGS.repeats)
        else:
            say("PyTorch torch.func: not measured (torch is not installed)")
    for entry in measured.values():
        entry["seconds"] = perf.median_seconds(entry["repeat_seconds"])
        entry["config_steps_per_second"] = entry["runs"] * steps / entry["seconds"]
        entry["cold_config_steps_per_second"] = entry["runs"] * steps / entry["first_call_seconds"]
        entry["compile_seconds"] = max(entry["first_call_seconds"] - entry["seconds"], 0.0)
        say(f"  warm {entry['config_steps_per_second']:,.0f}, cold {entry['cold_config_steps_per_second']:,.0f} "
            "config-steps/s")
    return measured


def measure_time_to_accuracy(
    config: train.Config, train_set: data_lib.Dataset, dev_set: data_lib.Dataset, key: jax.Array, num_configs: int
) -> dict[str, Any]:
    """Wall time for random search, Hyperband and PBT (the job's net and epochs, learning rate and λ searched).

    Each search writes its rows to a file; after every chunk its progress callback reads them back
    and records ``(seconds since the call started, best dev accuracy seen in any row)``. The
    time-to-accuracy of Hyperband and PBT is the first such point at or above random search's
    final best (compilation included: what a user waits for).
    """
    lo, hi = (float(v) for v in FLAGS.learning_rate_range)
    space = {"learning_rate": sweep.log_uniform(lo, hi), "l2": sweep.log_uniform(1e-4, 1.0)}
    epochs = config.epochs
    searches = {
        "random": lambda path, progress: sweep.run(
            config, space, train_set, dev_set, key=key, num_configs=num_configs, results_path=path,
            chunk_size=max(num_configs // 8, 1), progress=progress),
        "hyperband": lambda path, progress: sweep.hyperband(
            config, space, train_set, dev_set, key=key, min_epochs=max(epochs // 27, 1), max_epochs=epochs, eta=3,
            results_path=path, progress=progress),
        "pbt": lambda path, progress: sweep.pbt(
            config, space, train_set, dev_set, key=key, population=num_configs, epochs=epochs,
            interval=max(epochs // 10, 1), results_path=path, progress=progress),
    }
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, search in searches.items():
            path = os.path.join(folder, f"{name}.jsonl")
            points: list[tuple[float, float]] = []
            start = time.perf_counter()

            def progress(_: Any, path: str = path, points: list = points, start: float = start) -> None:
                values = [r["dev_accuracy"] for r in sweep.read_rows(path) if r.get("dev_accuracy") is not None]
                points.append((time.perf_counter() - start, max(values, default=float("nan"))))

            results = search(path, progress)
            measured[name] = {"seconds": time.perf_counter() - start, "points": points,
                              "best_dev_accuracy": max(p[1] for p in points), "config_steps": results.config_steps}
    target = measured["random"]["best_dev_accuracy"]
    for entry in measured.values():
        reached = [t for t, best in entry["points"] if best >= target]
        entry["seconds_to_random_best"] = reached[0] if reached else None
    return {"configs": num_configs, "target_dev_accuracy": target, "searches": measured}


def measure_first_call(
    config: train.Config, learning_rates: np.ndarray, train_set: data_lib.Dataset, dev_set: data_lib.Dataset,
    key: jax.Array,
) -> dict[str, Any]:
    """The one-device ``sweep.run`` of the job, called once: its wall seconds, its groups' compile seconds,
    how many programs it loaded from the persistent compilation cache (JAX's ``cache_hits`` events) and
    where the time went (``perf.compile_phases``: tracing, lowering, compiling or loading; the rest is
    the data checks, planning, dispatch and the chunks' run)."""
    call = grid_sweep_call(config, learning_rates, FLAGS.num_seeds, train_set, dev_set, key, chunk_size_flag(),
                           jax.devices()[:1])
    events: list[str] = []
    jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
    start = time.perf_counter()
    with perf.compile_phases() as phases:
        results = call()
    seconds = time.perf_counter() - start
    steps = perf.steps_per_run(config, len(train_set.y))
    return {"first_call_seconds": seconds, "compile_seconds": sum(g["compile_seconds"] for g in results.stats["layout"]),
            "cold_config_steps_per_second": len(results.rows) * steps / seconds,
            "persistent_cache_hits": events.count("/jax/compilation_cache/cache_hits"),
            "phase_seconds": {**{name: phases[name] for name in perf.COMPILE_PHASES},
                              "other": max(seconds - phases["any"], 0.0)}}


def _child_env() -> dict[str, str]:
    """This process's environment for a one-device child: ``XLA_FLAGS`` without the host device count."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        part for part in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in part
    )
    return env


def _run_child(extra_flags: list[str], path: str, what: str) -> dict[str, Any]:
    """``python -m experiments.benchmark`` with this run's flags, one CPU device and ``extra_flags``; the JSON it wrote."""
    command = [sys.executable, "-m", "experiments.benchmark", *sys.argv[1:], "--host_devices=0", *extra_flags]
    completed = subprocess.run(command, env=_child_env(), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the {what} process failed (exit {completed.returncode}): {last}")
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def first_calls_with_cache() -> dict[str, Any]:
    """The one-device sweep's first call in two new processes sharing a fresh persistent compilation cache.

    The first process compiles and fills the cache (``empty_cache``); the second loads the program
    (``filled_cache``): what a script meets from its second run on, with its default cache.
    """
    print("first call in a new process, persistent cache empty then filled ...", flush=True)
    calls = {}
    with tempfile.TemporaryDirectory() as folder:
        cache, path = os.path.join(folder, "jax-cache"), os.path.join(folder, "first_call.json")
        for name in ("empty_cache", "filled_cache"):
            calls[name] = _run_child([f"--compilation_cache={cache}", f"--first_call_to={path}"], path, "first-call")
    print(f"  {calls['empty_cache']['first_call_seconds']:.2f} s, then {calls['filled_cache']['first_call_seconds']:.2f} s")
    return calls


def baselines_in_child_process() -> dict[str, Any]:
    """``measure_baselines`` in ``python -m experiments.benchmark`` with the same flags and one CPU device."""
    print("jitted fit loop and Flax + optax loop, in a one-device process ...", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "baselines.json")
        measured = _run_child([f"--baselines_to={path}"], path, "baselines'")
    loop_m, recompile_m = measured["jitted_loop"], measured["recompiling_loop"]
    print(f"  sweep on one device {measured['sweep_one_device']['config_steps_per_second']:,.0f} config-steps/s; "
          f"jitted loop {loop_m['config_steps_per_second']:,.0f}; Flax + optax "
          f"{recompile_m['seconds_per_run']:.2f} s per run, {recompile_m['compile_seconds_per_run']:.2f} s compiling"
          + "".join(f"; {name} {measured[name]['config_steps_per_second']:,.0f}" for name in ("jax_user", "torch_func")
                    if name in measured))
    return measured


def main(argv: list[str]) -> None:
    del argv
    try:
        import optax  # noqa: F401  (the Flax + optax baseline; checked before any measurement)
    except ImportError:
        raise common.StudyInputError(
            "the Flax + optax baseline needs optax: pip install -e '.[benchmark]'"
        ) from None
    common.split_cpu(FLAGS.host_devices)
    output_dir = common.prepare_output_dir(STUDY) if FLAGS.baselines_to is None else None
    data_key, model_key = jax.random.split(jax.random.key(FLAGS.seed))
    train_set, dev_set, source = load_data(data_key)
    if common.output_units(train_set, dev_set) != 1:
        raise common.StudyInputError("the benchmark trains binary classifiers: --data must have labels 0 and 1")
    n_in, m = train_set.X.shape[1], len(train_set.y)
    try:
        config = train.Config(
            (n_in, *map(int, FLAGS.hidden), 1), optimizer=FLAGS.optimizer, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs
        )
        compute_config = train.Config(
            (n_in, *map(int, FLAGS.compute_hidden), 1), optimizer=FLAGS.optimizer, batch_size=FLAGS.batch_size,
            epochs=FLAGS.compute_epochs,
        )
    except ValueError as error:
        raise common.StudyInputError(str(error)) from None
    lo, hi = (float(v) for v in FLAGS.learning_rate_range)
    learning_rates = np.logspace(np.log10(lo), np.log10(hi), FLAGS.num_configs)
    runs = FLAGS.num_configs * FLAGS.num_seeds
    steps = perf.steps_per_run(config, m)
    chunk_size = chunk_size_flag()
    devices = jax.devices()
    if FLAGS.baselines_to is not None:
        common.write_json(pathlib.Path(FLAGS.baselines_to), measure_baselines(config, learning_rates, model_key, train_set, dev_set))
        return
    if FLAGS.first_call_to is not None:
        common.write_json(pathlib.Path(FLAGS.first_call_to),
                          measure_first_call(config, learning_rates, train_set, dev_set, model_key))
        return
    print(
        f"{STUDY}: {runs} runs × {steps} updates of {'-'.join(map(str, config.layer_sizes))} ({FLAGS.optimizer}) "
        f"on {len(devices)} {devices[0].platform} device(s); medians of {FLAGS.repeats}"
    )

    # Weights: the phases' rough share of the wall time at the defaults, for the ETA.
    clock = common.StudyClock([5, 50, 15] + ([10] if FLAGS.search_configs else []) + [1])
    print("deepopt sweep ...", flush=True)
    sweep_m = measure_sweep(config, learning_rates, FLAGS.num_seeds, train_set, dev_set, model_key, FLAGS.repeats, chunk_size)
    print(f"  {sweep_m['config_steps_per_second']:,.0f} config-steps/s (compile {sweep_m['compile_seconds']:.1f} s)"
          + clock.done())

    if FLAGS.baselines_in_own_process and devices[0].platform == "cpu" and len(devices) > 1:
        baselines = baselines_in_child_process()
    else:
        baselines = measure_baselines(config, learning_rates, model_key, train_set, dev_set)
    loop_m, recompile_m = baselines["jitted_loop"], baselines["recompiling_loop"]
    print("  baselines done" + clock.done())
    first_calls = first_calls_with_cache() if FLAGS.cached_first_call and devices[0].platform == "cpu" else None

    print("compute-bound sweep ...", flush=True)
    compute_rates = np.logspace(np.log10(lo), np.log10(hi), FLAGS.compute_configs)
    compute_m = measure_sweep(
        compute_config, compute_rates, FLAGS.num_seeds, train_set, dev_set, model_key, FLAGS.repeats, chunk_size
    )
    print(f"  {compute_m['config_steps_per_second']:,.0f} config-steps/s" + clock.done())

    search_m = None
    if FLAGS.search_configs:
        print("time to accuracy: random search, Hyperband, PBT ...", flush=True)
        search_m = measure_time_to_accuracy(config, train_set, dev_set, model_key, FLAGS.search_configs)
        print("  " + "; ".join(f"{name} {entry['seconds']:.1f} s" for name, entry in search_m["searches"].items())
              + clock.done())

    # The peak last: its 2048² products leave this process's later sweeps slower
    # (measurements: docs/engine-measurements.md).
    print("matmul peak ...", flush=True)
    peak = perf.matmul_peak(FLAGS.matmul_size, max(FLAGS.repeats, 5))
    peak["size"] = FLAGS.matmul_size
    print(f"  {peak['peak'] / 1e9:.1f} GFLOP/s" + clock.done())

    def flop_entry(cfg: train.Config, measured: dict[str, Any]) -> dict[str, Any]:
        flops_per_run = perf.training_flops(cfg, m)
        rate = measured["runs"] * flops_per_run / measured["seconds"]
        return {
            "layer_sizes": list(cfg.layer_sizes),
            "runs": measured["runs"],
            "chunk": measured["chunk"],
            "epochs": cfg.epochs,
            "gflop_per_run": flops_per_run / 1e9,
            "seconds": measured["seconds"],
            "gflops_per_second": rate / 1e9,
            "peak_fraction": rate / peak["peak"],
        }

    sweep_rows = sweep_m.pop("rows")
    compute_m.pop("rows")
    loop_outputs = loop_m.pop("outputs")
    measured_rows = sweep_rows[: len(loop_outputs)]  # the sweep's plan order is the loop's: rate major, then seed
    cost_gaps = [
        abs((row["final_cost"] if row["final_cost"] is not None else np.nan) - output[2])
        for row, output in zip(measured_rows, loop_outputs)
    ]
    end_to_end = {
        "sweep": sweep_m["end_to_end_seconds"],
        "jitted_loop": loop_m["compile_seconds"] + loop_m["seconds_per_run"] * runs,
        "recompiling_loop": recompile_m["seconds_per_run"] * runs,
    }
    results = {
        "study": STUDY,
        "machine": {
            "platform": devices[0].platform,
            "device_kind": devices[0].device_kind,
            "devices": len(devices),
            "cpu_cores": os.cpu_count(),
            "cpu": cpu_model(),
            "jax": jax.__version__,
            "python": platform.python_version(),
        },
        "job": {
            "data": source,
            "n_train": m,
            "n_dev": len(dev_set.y),
            "layer_sizes": list(config.layer_sizes),
            "optimizer": FLAGS.optimizer,
            "batch_size": FLAGS.batch_size,
            "epochs": FLAGS.epochs,
            "num_configs": FLAGS.num_configs,
            "num_seeds": FLAGS.num_seeds,
            "learning_rate_range": [lo, hi],
            "runs": runs,
            "steps_per_run": steps,
            "repeats": FLAGS.repeats,
            "seed": FLAGS.seed,
        },
        "matmul_peak": peak,
        "measured": {"sweep": sweep_m, "jitted_loop": loop_m, "recompiling_loop": recompile_m,
                     "compute_bound_sweep": compute_m, "sweep_one_device": baselines["sweep_one_device"],
                     **{name: baselines[name] for name in ("sweep_one_device_serial", "jax_user", "torch_func")
                        if name in baselines},
                     **({} if first_calls is None else {"first_calls": first_calls})},
        "time_to_accuracy": search_m,
        "end_to_end": end_to_end,
        "ratios": {
            "sweep_vs_jitted_loop": sweep_m["config_steps_per_second"] / loop_m["config_steps_per_second"],
            "sweep_vs_recompiling_loop": end_to_end["recompiling_loop"] / end_to_end["sweep"],
            "sweep_vs_recompiling_loop_steady": sweep_m["config_steps_per_second"] / recompile_m["config_steps_per_second"],
            **peer_ratios(sweep_m, baselines),
        },
        "flops": {"default": flop_entry(config, sweep_m), "compute_bound": flop_entry(compute_config, compute_m)},
        "agreement": {
            "runs": len(loop_outputs),
            "max_final_cost_difference": float(np.nanmax(cost_gaps)) if cost_gaps else float("nan"),
            "dev_accuracy_equal": sum(
                row["dev_accuracy"] is not None and abs(row["dev_accuracy"] - output[1]) < 1e-6
                for row, output in zip(measured_rows, loop_outputs)
            ),
        },
    }
    results["targets"] = targets(results)
    text = report(results)
    common.write_json(output_dir / "results.json", results)
    common.write_text(output_dir / "report.md", text)
    print("\n" + text)
    print(f"wrote {output_dir}/results.json, report.md")


if __name__ == "__main__":
    common.run_study(main)
