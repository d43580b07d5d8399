"""fit's training step on features-major activations: which nets take it, the same values and
gradients as the batch-major pass up to rounding, the same dropout units, and a whole float64 run
that ends where the batch-major one ends (the rule itself: tests/test_dense_vjp.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, init, losses, model, train


def test_which_nets_run_features_major() -> None:
    small = init.mlp(jax.random.key(0), (2, 20, 10, 1))
    assert model.runs_features_major(small)
    assert not model.runs_features_major(init.mlp(jax.random.key(0), (2, 64, 64, 1)))  # 4096 weights
    assert model.runs_features_major(init.mlp(jax.random.key(0), (2, 32, 32, 1)))  # 1024: the limit itself
    assert not model.runs_features_major(init.mlp(jax.random.key(0), (2, 20, 10, 1), batchnorm=True))


@pytest.mark.parametrize("keep_prob", [1.0, 0.7])
def test_the_step_matches_the_batch_major_pass_in_float64(keep_prob: float) -> None:
    """The logits, the cost's gradient and (with dropout) the dropped units of one training pass."""
    with jax.enable_x64(True):
        params = init.mlp(jax.random.key(3), (2, 20, 10, 1), dtype=jnp.float64)
        X = jax.random.normal(jax.random.key(4), (44, 2), jnp.float64)
        y = (X[:, 0] > 0).astype(jnp.int32)
        key = None if keep_prob == 1.0 else jax.random.key(5)
        assert model.runs_features_major(params)

        def cost(p: tuple, dense_vjp: bool) -> tuple[jax.Array, jax.Array]:
            logits, _ = model.forward_with_state(p, X, keep_prob=keep_prob, key=key, train=True, dense_vjp=dense_vjp)
            return jnp.mean(losses.per_example_cross_entropy(logits, y)), logits

        (cost_fm, logits_fm), grads_fm = jax.value_and_grad(cost, has_aux=True)(params, True)
        (cost_bm, logits_bm), grads_bm = jax.value_and_grad(cost, has_aux=True)(params, False)
        np.testing.assert_allclose(np.asarray(logits_fm), np.asarray(logits_bm), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(float(cost_fm), float(cost_bm), rtol=1e-13)
        for mine, theirs in zip(jax.tree.leaves(grads_fm), jax.tree.leaves(grads_bm)):
            np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-11, atol=1e-13)
        if key is not None:  # the same units dropped: a dropped unit's incoming weights get no gradient from it
            _, _, values_fm = model._layers(params, X, "relu", keep_prob, key, (), True, None, dense_vjp=True)
            _, _, values_bm = model._layers(params, X, "relu", keep_prob, key, (), True, None)  # dense_vjp off: batch-major
            for a_fm, a_bm in zip(values_fm.a[:-1], values_bm.a[:-1]):
                np.testing.assert_array_equal(np.asarray(a_fm) == 0, np.asarray(a_bm) == 0)
                assert 0 < float(jnp.mean(a_bm == 0)) < 1


def test_a_float64_fit_ends_where_the_batch_major_one_ends() -> None:
    """Adam on mini-batches (the last one padded), 60 epochs: costs, parameters and accuracy agree to 1e-9.

    ``Config(cpu_kernels=False)``: the course's batch-major forward pass and ``jax.grad``."""
    with jax.enable_x64(True):
        moons = data.make_moons(jax.random.key(0), 150, noise=0.2)
        moons = data.Dataset(moons.X.astype(jnp.float64), moons.y)
        config = train.Config((2, 20, 10, 1), optimizer="adam", batch_size=32, epochs=60)
        hp = train.HParams(learning_rate=0.01)
        features_major = train.fit(config, hp, jax.random.key(1), moons)
        batch_major = train.fit(dataclasses.replace(config, cpu_kernels=False), hp, jax.random.key(1), moons)
        assert not np.array_equal(np.asarray(features_major.costs), np.asarray(batch_major.costs))  # two programs
        np.testing.assert_allclose(np.asarray(features_major.costs), np.asarray(batch_major.costs), rtol=1e-9)
        for mine, theirs in zip(jax.tree.leaves(features_major.params), jax.tree.leaves(batch_major.params)):
            np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-9, atol=1e-10)
        assert float(features_major.train_accuracy) == float(batch_major.train_accuracy)
