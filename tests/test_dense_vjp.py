"""model.dense_matmul: ∂W in W's own layout, the same bits as jax.grad's rule, in isolation and in fit's step;
model.transposed_matmul (fit's features-major form): the same values up to rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, init, model, train


MATMULS = {
    "jax": jnp.matmul,
    "dense": model.dense_matmul,
    "transposed": lambda a, W: model.transposed_matmul(W, a.T).T,  # fit's features-major form
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
    monkeypatch.setattr(model, "DENSE_VJP_MIN_WEIGHTS", 10**9)
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
