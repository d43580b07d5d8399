"""Benchmark of real workloads: a user's Flax models swept by deepopt against the ways their users write it.

    python -m experiments.benchmark_workloads [--workloads cnn,mlp,gru] [--configs 32,256] [--epochs 10]

The workloads (``workload_model``), on MNIST-1D's shapes (40 samples, 10 classes; random data of
those shapes unless the ``mnist1d`` package's data loads: the speed does not depend on the values):

- ``cnn``: the MNIST-1D paper's CNN (``experiments.mnist1d_models.PaperCNN``: three convolutions of 25
  channels, kernels 5/3/3, stride 2, then a linear layer);
- ``mlp``: a 40-256-256-10 ReLU MLP written as a Flax module (``WideMLP``);
- ``gru``: the paper's GRU in size (``PaperGRU``: a GRU of 6 units over the 40 samples, then a
  linear layer on every step's output).

Each is trained with Adam at ``--configs`` learning rates (log-spaced), batch 100, ``--epochs``
epochs, one seed, by:

- ``deepopt``: ``sweep.run(Config(model=...))`` over the grid (one device, the library default);
- ``deepopt_bfloat16`` / ``deepopt_float16``: the same on the data cast to 16 bits (the passes in
  16 bits, float32 master weights, float16 with its loss scale: ``deepopt.precision``);
- ``jax vmap``: a JAX user's ``train(learning_rate, key)`` (``model.init``, ``optax.adam``,
  ``lax.scan`` over epochs and mini-batches) under ``jax.jit(jax.vmap(train))``;
- ``jax loop``: the same ``train`` jitted once and called once per config;
- ``torch loop``: plain PyTorch, one model and ``torch.optim.Adam`` per config (when torch imports);
- ``torch.func`` (the MLP only): PyTorch's model-ensembling recipe, ``vmap(grad)`` over stacked
  parameters with Adam by hand.

Reported per approach: cold (the first call in the process, compilation included) and warm (the
median of ``--repeats``) config-steps per second, the share of the matmul peak (the training's
matmul and convolution FLOPs, from XLA's cost analysis of one config's step, over the measured
``perf.matmul_peak``) and the peak resident memory of the phase. Loops time ``--loop_configs``
configs and extrapolate. ``--output`` writes the numbers as JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import perf, sweep, train
from experiments import common
from experiments.mnist1d_models import PaperCNN

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["cnn", "mlp", "gru"], "Workloads to run: cnn, mlp, gru.")
flags.DEFINE_list("configs", ["32", "256"], "Numbers of configs (learning rates) to sweep.")
flags.DEFINE_integer("epochs", 10, "Epochs per run.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed warm calls (medians are reported).", lower_bound=1)
flags.DEFINE_integer("loop_configs", 8, "Configs a loop times per call (the rest extrapolated).", lower_bound=1)
flags.DEFINE_integer("examples", 4000, "Training examples (MNIST-1D has 4000).", lower_bound=100)
PEERS = ["deepopt", "deepopt_bfloat16", "deepopt_float16", "jax_vmap", "jax_loop", "torch_loop", "torch_func"]
flags.DEFINE_list("peers", ["deepopt", "deepopt_bfloat16", "jax_vmap", "jax_loop", "torch_loop", "torch_func"],
                  f"Approaches to measure: some of {', '.join(PEERS)}.")
flags.DEFINE_string("output", None, "Write the measurements as JSON here.")
flags.register_validator("workloads", lambda v: set(v) <= {"cnn", "mlp", "gru"} and bool(v),
                         message="--workloads must list cnn, mlp and/or gru")
flags.register_validator("configs", lambda v: bool(v) and all(s.isdigit() and int(s) > 0 for s in v),
                         message="--configs must list positive integers")
flags.register_validator("peers", lambda v: set(v) <= set(PEERS) and bool(v),
                         message=f"--peers must list some of {', '.join(PEERS)}")

BATCH = 100
LENGTH, CLASSES = 40, 10


class WideMLP(nn.Module):
    """A 40-256-256-10 ReLU MLP."""

    width: int = 256

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = nn.relu(nn.Dense(self.width)(x))
        h = nn.relu(nn.Dense(self.width)(h))
        return nn.Dense(CLASSES)(h)


class PaperGRU(nn.Module):
    """A GRU of ``hidden`` units over the signal's samples, then a linear layer on every step's output."""

    hidden: int = 6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = nn.RNN(nn.GRUCell(self.hidden))(x[..., None])
        return nn.Dense(CLASSES)(h.reshape(h.shape[0], -1))


def workload_model(name: str) -> nn.Module:
    return {"cnn": PaperCNN(), "mlp": WideMLP(), "gru": PaperGRU()}[name]


def workload_data(examples: int) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """Random data of MNIST-1D's shapes (train, dev of 1000)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(examples + 1000, LENGTH)).astype(np.float32)
    y = rng.integers(0, CLASSES, examples + 1000).astype(np.int32)
    return data_lib.Dataset(X[:examples], y[:examples]), data_lib.Dataset(X[examples:], y[examples:])


def steps_per_run(epochs: int, examples: int) -> int:
    return epochs * math.ceil(examples / BATCH)


# ------------------------------------------------------------------------------ the JAX user's program


def jax_user_train(model: nn.Module, train_set: data_lib.Dataset, epochs: int) -> Callable[[Any, Any], Any]:
    """``train(learning_rate, key) -> final epoch's mean loss``: init, ``optax.adam``, scan over epochs and batches."""
    import optax

    X, y = jnp.asarray(train_set.X), jnp.asarray(train_set.y)
    m = len(train_set.y)
    batches = m // BATCH

    def loss(params: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, xb, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def train_one(learning_rate: jax.Array, key: jax.Array) -> jax.Array:
        init_key, data_key = jax.random.split(key)
        params = model.init(init_key, X[:1], train=False)["params"]
        optimizer = optax.adam(learning_rate)
        opt_state = optimizer.init(params)

        def epoch(carry: Any, epoch_key: jax.Array) -> tuple[Any, jax.Array]:
            order = jax.random.permutation(epoch_key, m)[: batches * BATCH].reshape(batches, BATCH)

            def step(carry: Any, idx: jax.Array) -> tuple[Any, jax.Array]:
                params, opt_state = carry
                value, grads = jax.value_and_grad(loss)(params, X[idx], y[idx])
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), value

            carry, values = jax.lax.scan(step, carry, order)
            return carry, values.mean()

        _, losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(data_key, epochs))
        return losses[-1]

    return train_one


def step_flops(model: nn.Module, train_set: data_lib.Dataset) -> float:
    """FLOPs of one config's training step (forward and backward of a mini-batch), by XLA's cost analysis."""
    X = jnp.asarray(train_set.X[:BATCH])
    y = jnp.asarray(train_set.y[:BATCH])
    params = model.init(jax.random.key(0), X[:1], train=False)["params"]

    def loss(p: Any) -> jax.Array:
        logits = model.apply({"params": p}, X, train=True)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    analysis = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", 0.0))


# ------------------------------------------------------------------------------ the approaches


def timed(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """The first call's seconds (cold), then ``repeats`` more (warm, median), with the phase's peak memory."""
    start = time.perf_counter()
    jax.block_until_ready(call())
    cold = time.perf_counter() - start
    warm, memory = perf.measure_memory(lambda: perf.time_calls(lambda: jax.block_until_ready(call()), repeats), 1)
    return {"cold_seconds": cold, "warm_seconds": perf.median_seconds(warm), "peak_rss_mb": memory["peak_rss_mb"]}


def measure_deepopt(model: nn.Module, configs: int, epochs: int, sets: tuple, repeats: int,
                    dtype: Any = None) -> dict[str, Any]:
    """deepopt's sweep; with ``dtype`` on the data cast to it (``None``: as given, float32)."""
    if dtype is not None:
        sets = tuple(data_lib.Dataset(np.asarray(split.X).astype(dtype), split.y) for split in sets)
    config = train.Config(model=model, optimizer="adam", batch_size=BATCH, epochs=epochs)
    space = {"learning_rate": sweep.grid([float(v) for v in np.logspace(-4, -1, configs)])}
    return timed(lambda: sweep.run(config, space, *sets, key=jax.random.key(1), num_configs=None,
                                   sampler="grid", devices=jax.devices()[:1]), repeats)


def measure_jax_vmap(model: nn.Module, configs: int, epochs: int, sets: tuple, repeats: int) -> dict[str, Any]:
    program = jax.jit(jax.vmap(jax_user_train(model, sets[0], epochs)))
    rates = jnp.asarray(np.logspace(-4, -1, configs), jnp.float32)
    keys = jax.random.split(jax.random.key(1), configs)
    return timed(lambda: program(rates, keys), repeats)


def measure_jax_loop(model: nn.Module, configs: int, epochs: int, sets: tuple, repeats: int,
                     loop_configs: int) -> dict[str, Any]:
    program = jax.jit(jax_user_train(model, sets[0], epochs))
    rates = np.logspace(-4, -1, configs)[:loop_configs]
    keys = jax.random.split(jax.random.key(1), len(rates))
    result = timed(lambda: [program(jnp.float32(r), k) for r, k in zip(rates, keys)], repeats)
    return _extrapolated(result, len(rates), configs)


def _extrapolated(result: dict[str, Any], timed_configs: int, configs: int) -> dict[str, Any]:
    """A loop's times for ``configs`` from ``timed_configs``: warm scaled; cold is one compile plus the rest warm."""
    per_config = result["warm_seconds"] / timed_configs
    compile_seconds = max(result["cold_seconds"] - result["warm_seconds"], 0.0)
    return {**result, "warm_seconds": per_config * configs, "cold_seconds": compile_seconds + per_config * configs,
            "timed_configs": timed_configs}


def measure_torch_loop(name: str, configs: int, epochs: int, sets: tuple, repeats: int,
                       loop_configs: int) -> dict[str, Any]:
    """Plain PyTorch: for each config, build the model, ``torch.optim.Adam``, epochs of shuffled mini-batches."""
    import torch
    from torch import nn as tnn

    def build() -> Any:
        if name == "cnn":
            return tnn.Sequential(tnn.Conv1d(1, 25, 5, 2, 1), tnn.ReLU(), tnn.Conv1d(25, 25, 3, 2, 1), tnn.ReLU(),
                                  tnn.Conv1d(25, 25, 3, 2, 1), tnn.ReLU(), tnn.Flatten(), tnn.Linear(125, CLASSES))
        if name == "mlp":
            return tnn.Sequential(tnn.Linear(LENGTH, 256), tnn.ReLU(), tnn.Linear(256, 256), tnn.ReLU(),
                                  tnn.Linear(256, CLASSES))
        return _TorchGRU()

    class _TorchGRU(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = tnn.GRU(1, 6, batch_first=True)
            self.out = tnn.Linear(6 * LENGTH, CLASSES)

        def forward(self, x: Any) -> Any:
            h, _ = self.gru(x[..., None])
            return self.out(h.reshape(h.shape[0], -1))

    X = torch.tensor(np.asarray(sets[0].X))
    X = X[:, None, :] if name == "cnn" else X
    y = torch.tensor(np.asarray(sets[0].y), dtype=torch.long)
    m = len(y)
    rates = np.logspace(-4, -1, configs)[:loop_configs]

    def loop() -> None:
        for rate in rates:
            torch.manual_seed(0)
            net = build()
            optimizer = torch.optim.Adam(net.parameters(), lr=float(rate))
            for _ in range(epochs):
                order = torch.randperm(m)
                for begin in range(0, m - BATCH + 1, BATCH):
                    batch = order[begin : begin + BATCH]
                    optimizer.zero_grad()
                    loss = tnn.functional.cross_entropy(net(X[batch]), y[batch])
                    loss.backward()
                    optimizer.step()

    result = timed(loop, repeats)
    return {**_extrapolated(result, len(rates), configs), "threads": torch.get_num_threads(), "torch": torch.__version__}


def measure_torch_func(configs: int, epochs: int, sets: tuple, repeats: int) -> dict[str, Any]:
    """The MLP under ``torch.func``: ``vmap(grad)`` over stacked parameters, Adam by hand, one mini-batch for all."""
    import torch
    from torch import nn as tnn
    from torch.func import functional_call, grad, stack_module_state, vmap

    X = torch.tensor(np.asarray(sets[0].X))
    y = torch.tensor(np.asarray(sets[0].y), dtype=torch.long)
    m = len(y)
    rates = torch.tensor(np.logspace(-4, -1, configs), dtype=torch.float32)

    def build() -> Any:
        return tnn.Sequential(tnn.Linear(LENGTH, 256), tnn.ReLU(), tnn.Linear(256, 256), tnn.ReLU(),
                              tnn.Linear(256, CLASSES))

    def call() -> None:
        params, buffers = stack_module_state([build() for _ in range(configs)])
        base = build().to("meta")

        def loss(p: Any, b: Any, xb: Any, yb: Any) -> Any:
            return tnn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

        gradient = vmap(grad(loss), in_dims=(0, 0, None, None))
        first = {k: torch.zeros_like(v) for k, v in params.items()}
        second = {k: torch.zeros_like(v) for k, v in params.items()}
        t = 0
        with torch.no_grad():
            for _ in range(epochs):
                order = torch.randperm(m)
                for begin in range(0, m - BATCH + 1, BATCH):
                    batch = order[begin : begin + BATCH]
                    grads = gradient(params, buffers, X[batch], y[batch])
                    t += 1
                    for k, p in params.items():
                        first[k].mul_(0.9).add_(grads[k], alpha=0.1)
                        second[k].mul_(0.999).addcmul_(grads[k], grads[k], value=0.001)
                        step = (first[k] / (1 - 0.9**t)) / ((second[k] / (1 - 0.999**t)).sqrt() + 1e-8)
                        p.sub_(rates.view(-1, *([1] * (p.dim() - 1))) * step)

    return {**timed(call, repeats), "torch": torch.__version__}


def _torch_imports() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str]) -> None:
    del argv  # common.run_study refuses extra arguments
    sets = workload_data(FLAGS.examples)
    peak = perf.matmul_peak(devices=jax.devices()[:1])["single_device"]
    has_torch = _torch_imports()
    steps = steps_per_run(FLAGS.epochs, FLAGS.examples)
    results: dict[str, Any] = {"matmul_peak_flops": peak, "epochs": FLAGS.epochs, "examples": FLAGS.examples,
                               "device": jax.devices()[0].device_kind, "workloads": {}}
    print(f"{jax.devices()[0].device_kind}: matmul peak {peak / 1e9:.1f} GFLOP/s; {FLAGS.epochs} epochs of "
          f"{steps // FLAGS.epochs} steps; torch {'found' if has_torch else 'not installed: its rows are skipped'}")
    for name in FLAGS.workloads:
        model = workload_model(name)
        flops = step_flops(model, sets[0])
        results["workloads"][name] = {"step_flops": flops}
        for configs in (int(c) for c in FLAGS.configs):
            rows: dict[str, Any] = {}
            for peer in FLAGS.peers:
                if peer.startswith("torch") and not has_torch or peer == "torch_func" and name != "mlp":
                    continue
                if peer.startswith("deepopt"):
                    dtype = {"deepopt": None, "deepopt_bfloat16": jnp.bfloat16, "deepopt_float16": np.float16}[peer]
                    m = measure_deepopt(model, configs, FLAGS.epochs, sets, FLAGS.repeats, dtype)
                elif peer == "jax_vmap":
                    m = measure_jax_vmap(model, configs, FLAGS.epochs, sets, FLAGS.repeats)
                elif peer == "jax_loop":
                    m = measure_jax_loop(model, configs, FLAGS.epochs, sets, FLAGS.repeats, FLAGS.loop_configs)
                elif peer == "torch_loop":
                    m = measure_torch_loop(name, configs, FLAGS.epochs, sets, FLAGS.repeats, FLAGS.loop_configs)
                else:
                    m = measure_torch_func(configs, FLAGS.epochs, sets, FLAGS.repeats)
                config_steps = configs * steps
                m.update({"cold": config_steps / m["cold_seconds"], "warm": config_steps / m["warm_seconds"]})
                m["share_of_peak"] = m["warm"] * flops / peak
                rows[peer] = m
                print(f"{name:4s} {configs:4d} configs {peer:16s}: warm {m['warm']:8.0f}  cold {m['cold']:8.0f} "
                      f"config-steps/s, {100 * m['share_of_peak']:5.1f}% of peak, {m['peak_rss_mb']:6.0f} MB",
                      flush=True)
            results["workloads"][name][str(configs)] = rows
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as stream:
            json.dump(results, stream, indent=1)


if __name__ == "__main__":
    common.run_study(main)
