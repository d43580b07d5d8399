"""Each common Flax layer under a per-config ``vmap`` against a loop of one config at a time.

    python -m experiments.benchmark_layers [--configs 32] [--repeats 5]

For each layer, a small model (the layer, then ``nn.Dense(10)``) and one training step's gradient
of softmax cross-entropy on a mini-batch of 100, over ``--configs`` configs' parameters (deepopt's
own layer kernels on, as ``Config.cpu_kernels`` sets them):

- ``vmap``: ``jit(vmap(step))`` of all the configs at once;
- ``chunks``: the same vmap in chunks of the size deepopt's sweep picks for the layer on one core
  (``sweep.auto_chunk_size`` of Adam on that model: the chunk whose working set fits the cache),
  run one after another inside one program (``lax.map`` with that ``batch_size``);
- ``loop``: the same ``jit(step)`` called once per config.

Prints config-steps per second of each and the ratios to the loop (above 1: faster than the loop).
Results go to docs/performance.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deepopt import conv_patches, sweep, train
from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("configs", 32, "Configs under the vmap (and calls of the loop).", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed repeats of each (the median is reported).", lower_bound=1)
flags.DEFINE_integer("batch", 100, "Mini-batch size.", lower_bound=1)


class Head(nn.Module):
    """``layer`` then a flattening ``nn.Dense(10)``."""

    layer: Callable[[], nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # each layer's mode is fixed (training), as in a sweep's step
        h = self.layer()(x)
        return nn.Dense(10)(h.reshape(h.shape[0], -1))


def _dense() -> nn.Module:
    return nn.Dense(256)


class _Conv(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(nn.Conv(25, (5,), strides=2, padding=1)(x))


class _Norm(nn.Module):
    kind: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Dense(128)(x)
        if self.kind == "batchnorm":
            h = nn.BatchNorm(use_running_average=False, momentum=0.9)(h)
        elif self.kind == "layernorm":
            h = nn.LayerNorm()(h)
        else:
            h = nn.Dropout(0.2, deterministic=False)(h)
        return nn.relu(h)


class _Attention(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)(x)


LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "nn.Dense(256)": (_dense, (64,)),
    "nn.Conv 1-D (25, k5, s2)": (_Conv, (40, 1)),
    "nn.RNN(GRUCell(64))": (lambda: nn.RNN(nn.GRUCell(64)), (40, 1)),
    "nn.RNN(LSTMCell(64))": (lambda: nn.RNN(nn.LSTMCell(64)), (40, 1)),
    "nn.BatchNorm": (lambda: _Norm("batchnorm"), (64,)),
    "nn.LayerNorm": (lambda: _Norm("layernorm"), (64,)),
    "nn.Dropout(0.2)": (lambda: _Norm("dropout"), (64,)),
    "nn.MultiHeadDotProductAttention(4 heads)": (_Attention, (16, 32)),
}


def step_of(model: nn.Module, x: jax.Array, y: jax.Array) -> Callable[[Any, jax.Array], Any]:
    """One training step's gradient: ``(variables, dropout key) -> grads`` of the mean cross-entropy."""

    def loss(params: Any, rest: Any, key: jax.Array) -> jax.Array:
        logits, _ = model.apply({"params": params, **rest}, x, rngs={"dropout": key}, mutable=["batch_stats"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def step(variables: Any, key: jax.Array) -> Any:
        params = variables["params"]
        rest = {name: value for name, value in variables.items() if name != "params"}
        with conv_patches.intercept_convs():
            return jax.grad(loss)(params, rest, key)

    return step


def _median_seconds(call: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def sweep_chunk(model: nn.Module, example_shape: tuple[int, ...], batch: int) -> int:
    """Configs per chunk deepopt's sweep picks for ``model`` on one device (Adam, mini-batch ``batch``)."""
    config = train.Config(model=model, optimizer="adam", batch_size=batch, epochs=1)
    return sweep.auto_chunk_size(config, batch, 1, jnp.float32, example_shape)


def measure(name: str, configs: int, batch: int, repeats: int) -> dict[str, float]:
    """Config-steps per second of the vmapped step, of the same in the sweep's chunks and of the loop."""
    make, shape = LAYERS[name]
    model = Head(make)
    x = jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    keys = jax.random.split(jax.random.key(2), configs)
    variables = jax.vmap(lambda k: model.init({"params": k, "dropout": k}, x))(keys)
    step = step_of(model, x, y)
    chunk = min(sweep_chunk(model, shape, batch), configs)
    batched = jax.jit(jax.vmap(step))
    chunked = jax.jit(lambda v, k: jax.lax.map(lambda args: step(*args), (v, k), batch_size=chunk))
    one = jax.jit(step)
    singles = [jax.tree.map(lambda leaf, i=i: leaf[i], variables) for i in range(configs)]
    vmapped = _median_seconds(lambda: batched(variables, keys), repeats)
    in_chunks = _median_seconds(lambda: chunked(variables, keys), repeats)
    looped = _median_seconds(lambda: [one(v, k) for v, k in zip(singles, keys)], repeats)
    return {"vmap": configs / vmapped, "chunks": configs / in_chunks, "chunk": chunk, "loop": configs / looped,
            "ratio": looped / vmapped, "chunks_ratio": looped / in_chunks}


def main(argv: list[str]) -> None:
    del argv  # common.run_study refuses extra arguments
    print(f"{FLAGS.configs} configs, mini-batch {FLAGS.batch}, {jax.devices()[0].device_kind}; config-steps/s")
    print(f"{'layer':44s} {'vmap':>8s} {'chunks':>8s} {'chunk':>6s} {'loop':>8s} {'vmap/loop':>10s} {'chunks/loop':>12s}")
    for name in LAYERS:
        m = measure(name, FLAGS.configs, FLAGS.batch, FLAGS.repeats)
        print(f"{name:44s} {m['vmap']:8.0f} {m['chunks']:8.0f} {m['chunk']:6d} {m['loop']:8.0f} {m['ratio']:10.2f} "
              f"{m['chunks_ratio']:12.2f}", flush=True)

if __name__ == "__main__":
    common.run_study(main)
