"""Dropout, L2 and early stopping as fit and model implement them (the course's semantics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, init, losses, model, train

NET = (2, 32, 16, 1)


@pytest.fixture(scope="module")
def overfit():
    return data.make_overfit_2d(jax.random.key(0), 60)


@pytest.fixture(scope="module")
def overfit_dev():
    return data.make_overfit_2d(jax.random.key(1), 60)


# --- inverted dropout ---------------------------------------------------------------------


def test_keep_prob_one_is_the_identity():
    a = jax.random.normal(jax.random.key(0), (50, 8))
    np.testing.assert_array_equal(model.dropout(jax.random.key(1), a, 1.0), a)
    np.testing.assert_array_equal(model.dropout_mask(jax.random.key(1), (50, 8), 1.0, jnp.float32), 1.0)


@pytest.mark.parametrize("keep_prob", [0.5, 0.86])
def test_kept_fraction_is_keep_prob_and_kept_units_are_scaled(keep_prob):
    a = jnp.ones((400, 250))
    mask = model.dropout_mask(jax.random.key(2), a.shape, keep_prob, a.dtype)
    assert float(jnp.mean(mask)) == pytest.approx(keep_prob, abs=0.01)  # 1e5 draws: 0.01 is > 6 sigma
    dropped = model.dropout(jax.random.key(2), a, keep_prob)
    np.testing.assert_allclose(dropped, mask / keep_prob, rtol=1e-6)  # a * mask / keep_prob, the same mask


def test_expected_activations_are_preserved():
    a = jax.random.uniform(jax.random.key(3), (20, 6), minval=0.5, maxval=2.0)
    keys = jax.random.split(jax.random.key(4), 4000)
    mean = jnp.mean(jax.vmap(lambda k: model.dropout(k, a, 0.7))(keys), axis=0)
    # Per entry the mean of 4000 draws has a relative std of sqrt(0.3/0.7)/sqrt(4000) ~ 1%.
    np.testing.assert_allclose(mean, a, rtol=0.06)


def test_different_keys_give_different_masks_same_key_the_same():
    shape = (30, 10)
    first = model.dropout_mask(jax.random.key(5), shape, 0.5, jnp.float32)
    np.testing.assert_array_equal(first, model.dropout_mask(jax.random.key(5), shape, 0.5, jnp.float32))
    assert not np.array_equal(first, model.dropout_mask(jax.random.key(6), shape, 0.5, jnp.float32))


# --- L2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_prob", [1.0, 0.7])
def test_one_l2_step_adds_lr_lambda_over_m_times_w_and_leaves_biases_alone(overfit, keep_prob):
    lr, lambd, m = 0.5, 0.9, 60
    with jax.enable_x64(True):
        train_set = data.Dataset(jnp.asarray(overfit.X, jnp.float64), overfit.y)
        params0 = init.mlp(jax.random.key(9), NET, "he", dtype=jnp.float64)
        config = train.Config(NET, epochs=1)

        def one_step(l2: float) -> train.TrainResult:
            hp = train.HParams(learning_rate=lr, l2=l2, keep_prob=keep_prob)
            return train.fit(config, hp, jax.random.key(10), train_set, init_params=params0)

        plain, with_l2 = one_step(0.0), one_step(lambd)  # same key: same dropout masks
        for p0, p_plain, p_l2 in zip(params0, plain.params, with_l2.params):
            np.testing.assert_allclose(p_plain["W"] - p_l2["W"], lr * lambd / m * p0["W"], rtol=1e-9, atol=1e-15)
            np.testing.assert_array_equal(p_plain["b"], p_l2["b"])
        expected = lambd / (2 * m) * float(losses.sum_of_squared_weights(params0))
        assert float(with_l2.costs[0] - plain.costs[0]) == pytest.approx(expected, rel=1e-9)


def test_l2_and_keep_prob_are_traced_and_sweep_in_one_program(overfit, overfit_dev):
    config = train.Config(NET, epochs=40)
    l2 = jnp.array([0.0, 0.5, 5.0, 0.0, 0.5, 5.0])
    keep_prob = jnp.array([1.0, 1.0, 1.0, 0.8, 0.8, 0.8])
    hps = train.broadcast_hparams(train.HParams(learning_rate=0.3, l2=l2, keep_prob=keep_prob), 6)
    before = train.trace_count()
    sweep = jax.jit(jax.vmap(lambda hp: train.fit(config, hp, jax.random.key(11), overfit, overfit_dev)))(hps)
    assert train.trace_count() - before == 1  # six (λ, keep_prob) pairs, one program
    assert not np.any(sweep.diverged)
    squared = np.asarray(jax.vmap(losses.sum_of_squared_weights)(sweep.params))
    assert squared[0] > squared[1] > squared[2] and squared[3] > squared[4] > squared[5]  # λ shrinks the weights
    assert not np.allclose(sweep.costs[0], sweep.costs[3])  # dropout changes the run


# --- early stopping -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keep_best_run(overfit, overfit_dev):
    # A large learning rate on a wide net, with dropout: dev accuracy peaks early.
    config = train.Config(NET, epochs=150, early_stopping="keep_best")
    hp = train.HParams(learning_rate=1.0, keep_prob=0.8)
    return config, hp, train.fit(config, hp, jax.random.key(3), overfit, overfit_dev)


def test_keep_best_returns_the_best_dev_epoch_parameters(overfit, overfit_dev, keep_best_run):
    _, hp, result = keep_best_run
    best = int(result.best_epoch)
    accuracies = np.asarray(result.dev_accuracies)
    assert 0 <= best < 100  # it peaked early
    assert accuracies[best] == np.max(accuracies) and float(result.dev_accuracy) == pytest.approx(accuracies[best])
    assert int(result.stopped_epoch) == -1 and np.all(np.isfinite(result.costs))  # keep_best trains every epoch
    # The same key and init trained for exactly best + 1 epochs without early stopping (the
    # same dropout masks, epoch by epoch): the same parameters and the same costs.
    short = train.fit(train.Config(NET, epochs=best + 1), hp, jax.random.key(3), overfit, overfit_dev)
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(short.params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.costs[: best + 1], short.costs, rtol=1e-5)
    assert float(result.train_accuracy) == pytest.approx(float(model.accuracy(result.params, overfit.X, overfit.y)))
    assert float(short.dev_accuracy) == pytest.approx(float(result.dev_accuracy))


def test_no_dropout_at_evaluation(overfit, overfit_dev, keep_best_run):
    config, hp, result = keep_best_run  # trained with keep_prob 0.8
    params = result.params
    assert float(result.train_accuracy) == pytest.approx(float(model.accuracy(params, overfit.X, overfit.y)))
    assert float(result.dev_accuracy) == pytest.approx(float(model.accuracy(params, overfit_dev.X, overfit_dev.y)))
    full_cost = losses.cross_entropy(model.forward(params, overfit.X), overfit.y)
    assert float(result.final_cost) == pytest.approx(float(full_cost), rel=1e-5)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model.forward(params, overfit.X, keep_prob=0.5)
    # Training does drop units: the same key reproduces the run, another key changes it.
    again = train.fit(config, hp, jax.random.key(3), overfit, overfit_dev)
    np.testing.assert_array_equal(again.costs, result.costs)
    other = train.fit(config, hp, jax.random.key(4), overfit, overfit_dev)
    assert not np.array_equal(other.costs, result.costs)


def test_early_stopping_under_vmap_equals_each_run(overfit, overfit_dev):
    config = train.Config(NET, epochs=120, early_stopping=10)
    hps = train.broadcast_hparams(train.HParams(learning_rate=jnp.array([0.05, 0.3, 1.0])), 3)
    keys = jax.random.split(jax.random.key(12), 3)
    batched = jax.jit(jax.vmap(lambda hp, k: train.fit(config, hp, k, overfit, overfit_dev)))(hps, keys)
    assert len(set(np.asarray(batched.stopped_epoch).tolist())) > 1  # the runs stop at their own epochs
    for i in range(3):
        one = train.fit(config, jax.tree.map(lambda v, i=i: v[i], hps), keys[i], overfit, overfit_dev)
        assert int(batched.best_epoch[i]) == int(one.best_epoch)
        assert int(batched.stopped_epoch[i]) == int(one.stopped_epoch)
        for got, want in zip(jax.tree.leaves(batched.params), jax.tree.leaves(one.params)):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
        stopped = int(one.stopped_epoch)
        if stopped >= 0:  # each run freezes on its own: NaN costs after its own stop only
            assert stopped == int(one.best_epoch) + 10
            assert np.all(np.isnan(batched.costs[i, stopped + 1:])) and np.all(np.isfinite(batched.costs[i, : stopped + 1]))
