"""model.dense_matmul: ∂W in W's own layout, the same bits as jax.grad's rule, in isolation and in fit's step;
model.transposed_matmul (fit's features-major form): the same values up to rounding; and
model.elementwise_transposed_matmul (its first layer of 2 or 3 inputs): transposed_matmul's bits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import cpu_kernels, data, init, model, train, xla_options


MATMULS = {
    "jax": jnp.matmul,
    "dense": model.dense_matmul,
    "transposed": lambda a, W: model.transposed_matmul(W, a.T).T,  # fit's features-major form
    "elementwise": lambda a, W: model.elementwise_transposed_matmul(W, a.T).T,  # its first layer of 2 or 3 inputs
}


def gradients(form: str, a: jax.Array, W: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(∂a, ∂W)`` of ``sum(tanh(a @ W) * g)`` with ``MATMULS[form]``, configs batched by ``vmap`` as the sweep batches them."""
    cost = lambda a, W, g: jnp.sum(jnp.tanh(MATMULS[form](a, W)) * g)  # noqa: E731
    return jax.jit(jax.vmap(jax.grad(cost, argnums=(0, 1))))(a, W, g)


def operands(shape: tuple[int, int, int], dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``a (3, m, fan_in)``, ``W (3, fan_in, fan_out)``, ``g (3, m, fan_out)``: three configs' N(0, 1) draws."""
    m, fan_in, fan_out = shape
    rng = np.random.default_rng(fan_in)
    return tuple(jnp.asarray(rng.normal(size=(3, *s)), dtype) for s in ((m, fan_in), (fan_in, fan_out), (m, fan_out)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shape", [(64, 40, 40), (64, 256, 256), (44, 512, 64), (64, 20, 10)])
def test_the_rule_gives_jax_grads_bits(shape: tuple[int, int, int], dtype: jnp.dtype) -> None:
    with jax.enable_x64(dtype == jnp.float64):
        a, W, g = operands(shape, dtype)
        ours, jaxs = gradients("dense", a, W, g), gradients("jax", a, W, g)
        for mine, theirs in zip(ours, jaxs):
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
        np.testing.assert_array_equal(np.asarray(jax.vmap(model.dense_matmul)(a, W)), np.asarray(jax.vmap(jnp.matmul)(a, W)))


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 2e-5), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(64, 20, 10), (44, 2, 20), (64, 10, 1), (64, 40, 40)])
def test_transposed_matmul_is_jax_grad_up_to_rounding(shape: tuple[int, int, int], dtype: jnp.dtype, rtol: float) -> None:
    """fit's features-major rule, both ∂W forms (40×40 has DENSE_VJP_MIN_WEIGHTS weights): other sums, the same values."""
    with jax.enable_x64(dtype == jnp.float64):
        a, W, g = operands(shape, dtype)
        ours, jaxs = gradients("transposed", a, W, g), gradients("jax", a, W, g)
        for mine, theirs in zip(ours, jaxs):
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
            np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=rtol, atol=rtol * 10)
        zT = jax.vmap(model.transposed_matmul)(W, jnp.swapaxes(a, 1, 2))
        np.testing.assert_allclose(np.asarray(jnp.swapaxes(zT, 1, 2)), np.asarray(a @ W), rtol=rtol, atol=rtol * 10)


def test_fits_training_step_is_the_same_with_and_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three configs of a 2-40-40-1 Adam net (its 40×40 layer takes the rule), mini-batches, 3 epochs: equal states."""
    config = train.Config((2, 40, 40, 1), optimizer="adam", batch_size=16, epochs=3)
    moons = data.make_moons(jax.random.key(0), 60, noise=0.2)
    hps = train.broadcast_hparams(train.HParams(learning_rate=jnp.array([0.003, 0.01, 0.03])), 3)
    keys = jax.random.split(jax.random.key(1), 3)

    transposes: list[int] = []

    def trained() -> train.TrainState:
        def one(hp: train.HParams, key: jax.Array) -> train.TrainState:
            hp = train.prepare_hparams(hp, config, moons.X.dtype)
            state = train._init_state(config, hp, key, moons.X, None)
            return train._advance(config, False, 3, False, False, hp, state, moons, None)[0]

        transposes.append(str(jax.make_jaxpr(jax.vmap(one))(hps, keys)).count("transpose["))  # jax.grad's ∂W has one
        return jax.jit(jax.vmap(one))(hps, keys)  # a fresh trace: reads DENSE_VJP_MIN_WEIGHTS now

    assert config.layer_sizes[1] * config.layer_sizes[2] >= model.DENSE_VJP_MIN_WEIGHTS
    with_rule = trained()
    monkeypatch.setattr(cpu_kernels, "DENSE_VJP_MIN_WEIGHTS", 10**9)
    without = trained()
    for mine, theirs in zip(jax.tree.leaves(with_rule._replace(key=None)), jax.tree.leaves(without._replace(key=None))):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert int(with_rule.step[0]) == 3 * 4 and transposes[0] < transposes[1]


def test_forward_stays_differentiable_in_forward_mode() -> None:
    params = init.mlp(jax.random.key(0), (3, 40, 40, 1))
    X = jnp.ones((5, 3))
    primal, tangent = jax.jvp(lambda p: model.forward(p, X), (params,), (params,))
    assert primal.shape == tangent.shape == (5, 1)
    logits, _ = model.forward_with_state(params, X, train=True, dense_vjp=True)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(primal))


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 2e-5), (jnp.float64, 1e-12)])
def test_the_elementwise_product_is_jax_grad_up_to_rounding(dtype: jnp.dtype, rtol: float) -> None:
    with jax.enable_x64(dtype == jnp.float64):
        a, W, g = operands((44, 3, 16), dtype)
        for mine, theirs in zip(gradients("elementwise", a, W, g), gradients("jax", a, W, g)):
            np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=rtol, atol=rtol * 10)


ELEMENTWISE_BITS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from deepopt import cpu_kernels, model, train, xla_options

def jit(f):
    return jax.jit(f, compiler_options=xla_options.compiler_options("cpu"))  # the library's options, as fit's

rng = np.random.default_rng(0)
failures = []
for m, fan_in, fan_out in ((64, 2, 20), (44, 3, 16), (64, 2, 1), (64, 3, 10)):  # data shared by 3 configs
    X = jnp.asarray(rng.normal(size=(m, fan_in)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(3, fan_in, fan_out)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(3, fan_out, m)), jnp.float32)
    def outputs(product):
        cost = lambda W, g: jnp.sum(jnp.tanh(product(W, X.T)) * g)
        return (jit(jax.vmap(lambda W: product(W, X.T)))(W), jit(jax.vmap(jax.grad(cost)))(W, g),
                jit(lambda W: product(W, X.T))(W[0]))
    for mine, theirs in zip(outputs(model.elementwise_transposed_matmul), outputs(model.transposed_matmul)):
        if not np.array_equal(np.asarray(mine), np.asarray(theirs)):
            failures.append(f"product {(m, fan_in, fan_out)}")

for fan_in in model.ELEMENTWISE_FAN_INS:  # Adam, the last mini-batch padded, 8 epochs
    X = rng.normal(size=(150, fan_in)).astype(np.float32)
    points = train.data_lib.Dataset(jnp.asarray(X), jnp.asarray((X @ rng.normal(size=fan_in) > 0).astype(np.int32)))
    config = train.Config((fan_in, 20, 10, 1), optimizer="adam", batch_size=64, epochs=8)
    hps = train.broadcast_hparams(train.HParams(learning_rate=jnp.logspace(-3, -0.5, 128)), 128)
    key, hp0 = jax.random.key(2), jax.tree.map(lambda v: v[0], hps)
    def one(hp, key):
        hp = train.prepare_hparams(hp, config, points.X.dtype)
        state = train._init_state(config, hp, key, points.X, None)
        return train._advance(config, False, 8, False, False, hp, state, points, None)[0]
    states = []
    for fan_ins in (cpu_kernels.ELEMENTWISE_FAN_INS, ()):
        cpu_kernels.ELEMENTWISE_FAN_INS = fan_ins
        # fresh traces (they read ELEMENTWISE_FAN_INS now): a chunk of 128 configs sharing one seed's
        # mini-batches, as the sweep runs the benchmark's job, and one run alone
        states.append([s._replace(key=None) for s in (jit(jax.vmap(one, (0, None)))(hps, key), jit(one)(hp0, key))])
    cpu_kernels.ELEMENTWISE_FAN_INS = (2, 3)
    for (path, mine), theirs in zip(jax.tree_util.tree_leaves_with_path(states[0]), jax.tree.leaves(states[1])):
        if not np.array_equal(np.asarray(mine), np.asarray(theirs)):
            failures.append(f"fit, {fan_in} inputs: {jax.tree_util.keystr(path)}")
for config in (train.Config((2, 6, 1), optimizer="adam", batch_size=32, epochs=6),  # test_engine's, at level 1
               train.Config((2, 20, 10, 1), optimizer="adam", batch_size=64, epochs=6)):
    X = rng.normal(size=(100, 2)).astype(np.float32)
    points = train.data_lib.Dataset(jnp.asarray(X), jnp.asarray((X[:, 0] * X[:, 1] > 0).astype(np.int32)))
    runs = [train.fit(config, train.HParams(learning_rate=0.05), jax.random.key(2), points, dropout=d) for d in (True, False)]
    if not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params))):
        failures.append(f"fit {config.layer_sizes}: keep_prob-1 masks compiled in and out differ")
print(json.dumps(failures))
"""


def test_the_elementwise_first_layer_keeps_the_products_bits() -> None:
    """With the library's compile options (LLVM level 1; this suite compiles at 0, where LLVM fuses no
    multiply-adds): the products and their gradients are the same bits as through the matrix product,
    and so are float32 fits of one run and of a chunk of 128 configs of a 2-20-10-1 (or 3-20-10-1) net
    on mini-batches of 64, the benchmark's layout (a chunk whose first layer has under 32k
    activations, or several seeds, can differ in the last bits: XLA then sums the first layer's ∂b in
    another order). A subprocess, since JAX reads XLA_FLAGS once per process."""
    env = {**os.environ, "XLA_FLAGS": " ".join(
        flag for flag in os.environ.get("XLA_FLAGS", "").split() if flag.split("=")[0] != "--xla_backend_optimization_level"
    )}
    done = subprocess.run([sys.executable, "-c", ELEMENTWISE_BITS], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_first_layer_is_a_product_where_llvm_fuses_no_multiply_adds(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLVM level 0 (this suite's; XLA_FLAGS' own setting wins) rounds a multiply and an add apart, unlike
    the matrix kernels: there the first layer stays a matrix product."""
    W = jnp.ones((2, 20))
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0")
    assert xla_options.cpu_llvm_level() == 0 and not cpu_kernels.elementwise_first_layer(W)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert xla_options.cpu_llvm_level() == 3 and cpu_kernels.elementwise_first_layer(W)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert xla_options.cpu_llvm_level() == 1 and cpu_kernels.elementwise_first_layer(W)
    assert not cpu_kernels.elementwise_first_layer(jnp.ones((4, 20))) and not cpu_kernels.elementwise_first_layer(jnp.ones((1, 20)))
