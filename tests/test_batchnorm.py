"""Batch norm: the formula, Flax's BatchNorm as reference, masked statistics, and batch norm inside fit."""

from __future__ import annotations

import functools
import operator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import batchnorm, data, init, losses, model, optim, train

MOMENTUM, EPS = 0.9, 1e-5


def features(seed: int, m: int = 16, n: int = 5) -> jax.Array:
    """``(m, n)`` float32 pre-activations with a different mean and scale per feature."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(3.0, 1.0, size=n) + rng.normal(size=(m, n)) * rng.uniform(0.5, 4.0, size=n),
                       jnp.float32)


def test_init_state_and_init_states() -> None:
    state = batchnorm.init_state(4)
    np.testing.assert_array_equal(state.mean, np.zeros(4))
    np.testing.assert_array_equal(state.var, np.ones(4))
    assert state.mean.dtype == jnp.float32
    params = init.mlp(jax.random.key(0), (3, 5, 4, 2), batchnorm=True)
    states = batchnorm.init_states(params)
    assert [s.mean.shape for s in states] == [(5,), (4,)]
    assert batchnorm.init_states(init.mlp(jax.random.key(0), (3, 5, 2))) == ()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_features must be a positive int"):
            batchnorm.init_state(bad)


def test_training_mode_normalizes_with_the_batch_statistics_and_moves_the_running_ones() -> None:
    z = features(0)
    gamma, beta = jnp.linspace(0.5, 2.0, 5), jnp.linspace(-1.0, 1.0, 5)
    state = batchnorm.BatchNormState(jnp.full(5, 0.5), jnp.full(5, 2.0))
    out, new_state = batchnorm.batch_norm(z, gamma, beta, state, train=True)
    normalized = (out - beta) / gamma
    np.testing.assert_allclose(normalized.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(normalized.var(axis=0), z.var(axis=0) / (z.var(axis=0) + EPS), rtol=1e-5)
    np.testing.assert_allclose(new_state.mean, MOMENTUM * 0.5 + (1 - MOMENTUM) * z.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(new_state.var, MOMENTUM * 2.0 + (1 - MOMENTUM) * z.var(axis=0), rtol=1e-6)
    evaluated, same_state = batchnorm.batch_norm(z, gamma, beta, new_state, train=False)
    assert same_state is new_state
    expected = gamma * (z - new_state.mean) / jnp.sqrt(new_state.var + EPS) + beta
    np.testing.assert_allclose(evaluated, expected, rtol=1e-6, atol=1e-6)


def test_batch_norm_equals_flax_batchnorm_over_several_steps_then_in_evaluation() -> None:
    """Outputs and running statistics agree with flax.linen.BatchNorm (momentum 0.9, epsilon 1e-5) to 1e-6."""
    layer = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS, use_fast_variance=False)
    n = 5
    gamma, beta = jnp.linspace(0.5, 2.0, n), jnp.linspace(-1.0, 1.0, n)
    variables = {"params": {"scale": gamma, "bias": beta},
                 "batch_stats": {"mean": jnp.zeros(n), "var": jnp.ones(n)}}
    state = batchnorm.init_state(n)
    for step in range(4):
        z = features(10 + step)
        expected, updates = layer.apply(variables, z, use_running_average=False, mutable=["batch_stats"])
        variables = {**variables, "batch_stats": updates["batch_stats"]}
        out, state = batchnorm.batch_norm(z, gamma, beta, state, train=True, momentum=MOMENTUM, eps=EPS)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(state.mean, variables["batch_stats"]["mean"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(state.var, variables["batch_stats"]["var"], rtol=1e-6, atol=1e-6)
    assert float(jnp.min(state.mean)) > 0.5  # the statistics really moved from (0, 1)
    z = features(99)
    expected = layer.apply(variables, z, use_running_average=True)
    out, _ = batchnorm.batch_norm(z, gamma, beta, state, train=False)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_masked_statistics_equal_the_statistics_of_the_valid_rows() -> None:
    """fit's padded last mini-batch: batch_norm with a mask equals batch_norm on the valid rows only (and Flax's mask)."""
    z = features(3, m=8)
    mask = jnp.array([True, True, False, True, True, False, False, True])
    gamma, beta = jnp.full(5, 1.5), jnp.full(5, 0.25)
    state = batchnorm.BatchNormState(jnp.full(5, 0.5), jnp.full(5, 2.0))
    padded_out, padded_state = batchnorm.batch_norm(z, gamma, beta, state, train=True, mask=mask)
    valid_out, valid_state = batchnorm.batch_norm(z[mask], gamma, beta, state, train=True)
    np.testing.assert_allclose(padded_out[mask], valid_out, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), padded_state, valid_state)
    flax_out, _ = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS, use_fast_variance=False).apply(
        {"params": {"scale": gamma, "bias": beta}, "batch_stats": state._asdict()},
        z, use_running_average=False, mask=mask[:, None], mutable=["batch_stats"],
    )
    np.testing.assert_allclose(padded_out[mask], flax_out[mask], rtol=1e-6, atol=1e-6)
    # the same through the network's forward pass
    params = init.mlp(jax.random.key(1), (5, 6, 3), batchnorm=True)
    logits, net_state = model.forward_with_state(params, z, train=True, mask=mask)
    valid_logits, valid_net_state = model.forward_with_state(params, z[mask], train=True)
    np.testing.assert_allclose(logits[mask], valid_logits, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), net_state, valid_net_state)


# One small problem for the fit tests, so that the single-run program compiles once for both.
FIT_SIZES = (2, 4, 3, 1)
FIT_CONFIG = train.Config(FIT_SIZES, optimizer="gd", batch_size=4, epochs=2, batchnorm=True)  # m = 10: 4, 4, 2
FIT_KEY = jax.random.key(4)


@pytest.fixture(scope="module")
def fit_problem() -> tuple[data.Dataset, tuple]:
    """Ten moons and batch-normalized initial parameters."""
    return data.make_moons(jax.random.key(2), 10, 0.2), init.mlp(jax.random.key(3), FIT_SIZES, batchnorm=True)


def test_fit_padded_last_batch_equals_unpadded_minibatches(fit_problem: tuple[data.Dataset, tuple]) -> None:
    """Two epochs of fit (m = 10, batches 4, 4, 2; the last padded inside fit) equal a loop over unpadded batches.

    The loop draws the batches the way WORKSPACE.md documents fit does: the permutation of
    epoch ``e`` is ``fold_in(shuffle_key, e)`` with ``shuffle_key = split(key, 3)[1]``.
    """
    dataset, params = fit_problem
    (X, y), m, learning_rate = dataset, 10, 0.1
    result = train.fit(FIT_CONFIG, train.HParams(learning_rate=learning_rate), FIT_KEY, dataset, init_params=params)

    @jax.jit
    @functools.partial(jax.value_and_grad, has_aux=True)
    def batch_cost(params: tuple, bn_state: tuple, X_b: jax.Array, y_b: jax.Array) -> tuple[jax.Array, tuple]:
        logits, new_state = model.forward_with_state(params, X_b, bn_state=bn_state, train=True)
        return losses.cross_entropy(logits, y_b), new_state

    shuffle_key = jax.random.split(FIT_KEY, 3)[1]
    bn_state, costs = batchnorm.init_states(params), []
    for epoch in range(FIT_CONFIG.epochs):
        batches = data.minibatch_indices(jax.random.fold_in(shuffle_key, epoch), m, FIT_CONFIG.batch_size)
        assert [len(b) for b in batches] == [4, 4, 2]
        epoch_cost = 0.0
        for index in batches:
            (cost, bn_state), grads = batch_cost(params, bn_state, X[index], y[index])
            params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
            epoch_cost += len(index) / m * float(cost)
        costs.append(epoch_cost)
    np.testing.assert_allclose(result.costs, costs, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), result.params, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), result.bn_state, bn_state)


def test_vmapped_fit_keeps_each_runs_statistics(fit_problem: tuple[data.Dataset, tuple]) -> None:
    """vmap over learning rates and data scalings: each run has its own bn_state, equal to its single fit."""
    dataset, params = fit_problem
    learning_rates, scales = jnp.array([0.05, 0.5]), jnp.array([1.0, 4.0])

    def run(hp: train.HParams, scale: jax.Array) -> train.TrainResult:
        return train.fit(FIT_CONFIG, hp, FIT_KEY, data.Dataset(dataset.X * scale, dataset.y), init_params=params)

    hps = train.broadcast_hparams(train.HParams(learning_rate=learning_rates), 2)
    batched = jax.jit(jax.vmap(run))(hps, scales)
    first_layer_means = np.asarray(batched.bn_state[0].mean)
    assert np.all(np.abs(first_layer_means[0] - first_layer_means[1]) > 1e-3)  # the first layer sees 4x the inputs
    assert not np.allclose(batched.bn_state[1].var[0], batched.bn_state[1].var[1])
    for i in range(2):
        scaled = data.Dataset(dataset.X * scales[i], dataset.y)
        single = train.fit(FIT_CONFIG, train.HParams(learning_rate=float(learning_rates[i])), FIT_KEY, scaled,
                           init_params=params)
        run_i = jax.tree.map(operator.itemgetter(i), batched)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), run_i.bn_state,
                     single.bn_state)
        np.testing.assert_allclose(run_i.costs, single.costs, rtol=1e-5)
        # accuracy and prediction use the running statistics
        expected = model.accuracy(single.params, scaled.X, scaled.y, bn_state=single.bn_state)
        np.testing.assert_allclose(single.train_accuracy, expected)


def test_errors_name_the_argument() -> None:
    z = features(0)
    state = batchnorm.init_state(5)
    with pytest.raises(ValueError, match=r"z must be \(m, num_features\)"):
        batchnorm.batch_norm(z[0], jnp.ones(5), jnp.zeros(5), state, train=True)
    with pytest.raises(ValueError, match=r"gamma must have shape \(5,\)"):
        batchnorm.batch_norm(z, jnp.ones(4), jnp.zeros(5), state, train=True)
    with pytest.raises(ValueError, match=r"state.var must have shape \(5,\)"):
        batchnorm.batch_norm(z, jnp.ones(5), jnp.zeros(5), batchnorm.BatchNormState(jnp.zeros(5), jnp.ones(3)),
                             train=False)
    params = init.mlp(jax.random.key(0), (5, 4, 2), batchnorm=True)
    with pytest.raises(ValueError, match="needs bn_state"):
        model.forward_with_state(params, z, train=False)
    assert optim.get("adam").init(params).first_moment[0].keys() == params[0].keys()  # any pytree


def test_predict_on_a_batch_normalized_net_needs_the_running_statistics() -> None:
    """Without bn_state one example's class would depend on the rest of X: refused, not silently computed."""
    params = init.mlp(jax.random.key(0), (5, 4, 2), batchnorm=True)
    z, y = features(1), jnp.zeros(16, jnp.int32)
    for call in (lambda: model.predict(params, z), lambda: model.accuracy(params, z, y)):
        with pytest.raises(ValueError, match="predict: a batch-normalized network needs bn_state"):
            call()
    state = batchnorm.init_states(params)
    one_at_a_time = jnp.concatenate([model.predict(params, z[i:i + 1], bn_state=state) for i in range(4)])
    np.testing.assert_array_equal(one_at_a_time, model.predict(params, z[:4], bn_state=state))


# ------------------------------------------------------------------------------ settings and masks


@pytest.mark.parametrize(
    "options, error, pattern",
    [
        ({"eps": -100.0}, ValueError, r"eps must be finite and > 0, got -100\.0"),
        ({"eps": 0.0}, ValueError, r"eps must be finite and > 0, got 0\.0"),
        ({"eps": float("inf")}, ValueError, r"eps must be finite and > 0, got inf"),
        ({"eps": float("nan")}, ValueError, r"eps must be finite and > 0, got nan"),
        ({"eps": "small"}, TypeError, r"eps must be a number, got 'small'"),
        ({"momentum": 2.0}, ValueError, r"momentum must be in \[0, 1\], got 2\.0"),
        ({"momentum": -0.1}, ValueError, r"momentum must be in \[0, 1\], got -0\.1"),
        ({"momentum": float("nan")}, ValueError, r"momentum must be in \[0, 1\], got nan"),
        ({"mask": jnp.array([True])}, ValueError, r"mask must have shape \(m,\) = \(4,\) to match z, got shape \(1,\)"),
        ({"mask": jnp.ones((4, 1), bool)}, ValueError, r"mask must have shape \(m,\) = \(4,\) to match z, got shape \(4, 1\)"),
        ({"mask": jnp.array([2, 0, 0, 0])}, TypeError, r"mask must be a bool array .*, got dtype int32"),
        ({"mask": np.ones(4)}, TypeError, r"mask must be a bool array .*, got dtype float64"),
        ({"mask": jnp.zeros(4, bool)}, ValueError, r"mask must select at least one row of z .*, got all 4 entries False"),
    ],
)
def test_bad_settings_and_masks_are_refused(options, error, pattern) -> None:
    """eps=-100 gave NaN, momentum=2 a negative running variance, a (1,) mask broadcast, an all-False one NaN."""
    z = jnp.arange(12.0).reshape(4, 3)
    with pytest.raises(error, match=pattern):
        batchnorm.batch_norm(z, jnp.ones(3), jnp.zeros(3), batchnorm.init_state(3), train=True, **options)


def test_valid_settings_at_the_ends_of_their_ranges_still_work() -> None:
    z, state = features(5, m=4, n=3), batchnorm.init_state(3)
    gamma, beta = jnp.ones(3), jnp.zeros(3)
    _, frozen = batchnorm.batch_norm(z, gamma, beta, state, train=True, momentum=1.0)
    jax.tree.map(np.testing.assert_array_equal, frozen, state)
    out, batch = batchnorm.batch_norm(z, gamma, beta, state, train=True, momentum=0.0, eps=1e-12,
                                      mask=np.array([True, False, False, False]))
    np.testing.assert_array_equal(batch.mean, z[0])  # one valid row: its own mean, zero variance
    assert bool(jnp.all(jnp.isfinite(out)))
    # in evaluation an all-False mask is unused (no batch statistics), so it is not refused
    batchnorm.batch_norm(z, gamma, beta, state, train=False, mask=jnp.zeros(4, bool))


def test_traced_settings_and_mask_are_not_checked() -> None:
    """Under jit (fit's masks are traced) only the static shape and dtype are checked; the values are not."""
    z, state = features(6, m=4, n=3), batchnorm.init_state(3)

    @jax.jit
    def normalize(eps: jax.Array, momentum: jax.Array, mask: jax.Array) -> tuple:
        return batchnorm.batch_norm(z, jnp.ones(3), jnp.zeros(3), state, train=True, eps=eps, momentum=momentum, mask=mask)

    mask = jnp.array([True, True, False, True])
    out, new_state = normalize(EPS, MOMENTUM, mask)
    eager_out, eager_state = batchnorm.batch_norm(z, jnp.ones(3), jnp.zeros(3), state, train=True, mask=mask)
    np.testing.assert_allclose(out, eager_out, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state, eager_state)
    assert bool(jnp.all(jnp.isnan(normalize(-100.0, 2.0, mask)[0])))  # traced: unchanged, not checked
    with pytest.raises(ValueError, match=r"mask must have shape \(m,\) = \(4,\)"):
        normalize(EPS, MOMENTUM, jnp.array([True]))
    with pytest.raises(TypeError, match="mask must be a bool array"):
        normalize(EPS, MOMENTUM, jnp.ones(4, jnp.int32))
