"""Bias/variance diagnosis and per-layer gradient statistics (deepopt.diagnostics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, diagnostics, init, losses, model


@pytest.mark.parametrize(
    "train_error, dev_error, bayes_error, verdict",
    [
        (0.01, 0.11, 0.0, "high variance"),  # the course's 1% / 11%
        (0.15, 0.16, 0.0, "high bias"),  # 15% / 16%
        (0.15, 0.30, 0.0, "high bias and high variance"),  # 15% / 30%
        (0.005, 0.01, 0.0, "good fit"),  # 0.5% / 1%
        (0.15, 0.16, 0.14, "good fit"),  # 15% / 16% is fine when humans get 14% wrong
        (0.08, 0.10, 0.0, "high bias"),  # human 0%: 8% avoidable bias, 2% variance (not above the tolerance)
        (0.08, 0.10, 0.075, "good fit"),
    ],
)
def test_verdicts_on_the_course_cases(train_error, dev_error, bayes_error, verdict):
    diagnosis = diagnostics.bias_variance(train_error, dev_error, bayes_error)
    assert diagnosis.verdict == verdict
    assert diagnosis.avoidable_bias == pytest.approx(train_error - bayes_error)
    assert diagnosis.variance == pytest.approx(dev_error - train_error)
    assert diagnosis.high_bias == ("bias" in verdict) and diagnosis.high_variance == ("variance" in verdict)
    assert diagnosis.verdict in diagnostics.VERDICTS


def test_advice_in_the_course_terms():
    bias = diagnostics.bias_variance(0.2, 0.21).advice
    variance = diagnostics.bias_variance(0.01, 0.2).advice
    both = diagnostics.bias_variance(0.2, 0.4).advice
    assert any("bigger network" in a for a in bias) and any("train longer" in a for a in bias)
    assert any("Adam" in a for a in bias) and not any("more training data" in a for a in bias)
    assert any("more training data" in a for a in variance) and any("L2, dropout" in a for a in variance)
    assert any("early stopping" in a for a in variance) and not any("bigger network" in a for a in variance)
    assert both[: len(bias)] == bias and set(variance) <= set(both)  # bias first, nothing twice
    assert len(set(both)) == len(both)


def test_tolerance_is_a_strict_threshold():
    assert diagnostics.bias_variance(0.05, 0.08, 0.0, tolerance=0.05).verdict == "good fit"
    assert diagnostics.bias_variance(0.05, 0.08, 0.0, tolerance=0.01).verdict == "high bias and high variance"
    assert diagnostics.bias_variance(jnp.float32(0.0), np.float64(0.5)).verdict == "high variance"


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((11.0, 15.0), {}, ValueError, r"train_error must be a finite fraction in \[0, 1\].*percentage.*11.0"),
        ((0.1, -0.1), {}, ValueError, "dev_error must be a finite fraction"),
        ((0.1, 0.2, float("nan")), {}, ValueError, "bayes_error must be a finite fraction"),
        ((0.1, float("inf")), {}, ValueError, "dev_error"),
        ((0.1, 0.2), {"tolerance": 2.0}, ValueError, "tolerance"),
        ((np.array([0.1, 0.2]), 0.2), {}, ValueError, r"train_error must be a scalar.*shape \(2,\)"),
        (("high", 0.2), {}, TypeError, "train_error must be a number"),
    ],
)
def test_bias_variance_validates_its_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        diagnostics.bias_variance(*args, **kwargs)


# Jitted once per (activation, shapes): eager op-by-op dispatch of deep nets is what costs time here.
layer_stats = jax.jit(diagnostics.layer_stats, static_argnames="activation")


@pytest.fixture(scope="module")
def moons():
    return data.make_moons(jax.random.key(0), 64, 0.2)


def deep_sizes(depth: int, width: int) -> tuple[int, ...]:
    return (2,) + (width,) * depth + (1,)


def test_layer_stats_match_their_definitions(moons):
    params = init.mlp(jax.random.key(1), (2, 8, 5, 1), "he")
    stats = layer_stats(params, moons.X, moons.y, activation="relu", l2=0.3)
    for field in stats:
        assert field.shape == (3,)
    np.testing.assert_allclose(stats.weight_norm, [np.linalg.norm(p["W"]) for p in params], rtol=1e-6)

    def cost(p):
        return losses.cross_entropy(model.forward(p, moons.X), moons.y) + losses.l2_penalty(p, 0.3, 64)

    grads = jax.grad(cost)(params)
    np.testing.assert_allclose(stats.grad_norm, [np.linalg.norm(g["W"]) for g in grads], rtol=1e-5)
    a1 = jax.nn.relu(moons.X @ params[0]["W"] + params[0]["b"])
    logits = model.forward(params, moons.X)
    assert float(stats.activation_rms[0]) == pytest.approx(float(jnp.linalg.norm(a1) / 8.0), rel=1e-5)  # sqrt(64) = 8
    assert float(stats.activation_rms[2]) == pytest.approx(float(jnp.linalg.norm(logits) / 8.0), rel=1e-5)
    assert float(stats.zero_fraction[0]) == pytest.approx(float(jnp.mean(a1 == 0)))
    assert np.isnan(stats.dead_fraction[2]) and np.isnan(stats.zero_fraction[2])  # the output layer has no ReLU


def test_dead_relu_is_zero_on_every_example(moons):
    params = list(init.mlp(jax.random.key(2), (2, 4, 1), "he"))
    # Unit 0 dead everywhere (huge negative bias), unit 1 alive everywhere (huge positive bias).
    params[0] = {"W": params[0]["W"], "b": jnp.array([-100.0, 100.0, 0.0, 0.0])}
    stats = layer_stats(tuple(params), moons.X, moons.y)
    a = jax.nn.relu(moons.X @ params[0]["W"] + params[0]["b"])
    expected_dead = float(jnp.mean(jnp.all(a == 0, axis=0)))
    assert float(stats.dead_fraction[0]) == pytest.approx(expected_dead) and expected_dead >= 0.25
    assert float(stats.zero_fraction[0]) >= float(stats.dead_fraction[0])
    zeros = layer_stats(init.mlp(jax.random.key(0), (2, 4, 3, 1), "zeros"), moons.X, moons.y)
    np.testing.assert_array_equal(zeros.dead_fraction[:2], [1.0, 1.0])
    np.testing.assert_array_equal(zeros.grad_norm, [0.0, 0.0, 0.0])
    assert diagnostics.gradient_flow(zeros) == "zero"


def test_layer_stats_jit_and_vmap_over_parameter_sets(moons):
    keys = jax.random.split(jax.random.key(3), 4)
    sizes = (2, 6, 6, 1)
    stacked = jax.vmap(lambda k: init.mlp(k, sizes, "xavier"))(keys)
    batched = jax.jit(jax.vmap(lambda p: layer_stats(p, moons.X, moons.y, activation="tanh")))(stacked)
    assert batched.grad_norm.shape == (4, 3)
    for i, key in enumerate(keys):
        one = layer_stats(init.mlp(key, sizes, "xavier"), moons.X, moons.y, activation="tanh")
        for got, want in zip(batched, one):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, equal_nan=True)


def test_vanishing_gradients_in_a_deep_sigmoid_net_with_small_init(moons):
    params = init.mlp(jax.random.key(4), deep_sizes(12, 16), "random", 0.01)
    stats = layer_stats(params, moons.X, moons.y, activation="sigmoid")
    grad_norm = np.asarray(stats.grad_norm, np.float64)
    assert grad_norm[0] < 1e-6 * grad_norm[-1]
    # Geometric decay from the output towards the input: every hidden layer gets less than the next.
    assert np.all(grad_norm[:-1] <= grad_norm[1:])
    assert diagnostics.gradient_flow(stats) == "vanishing"


def test_batch_norm_keeps_the_small_init_sigmoid_net_level(moons):
    params = init.mlp(jax.random.key(4), deep_sizes(12, 16), "random", 0.01, batchnorm=True)
    stats = layer_stats(params, moons.X, moons.y, activation="sigmoid")
    grad_norm = np.asarray(stats.grad_norm, np.float64)
    assert np.max(grad_norm) < 10 * np.min(grad_norm)  # the same net without batch norm spans > 1e6
    assert diagnostics.gradient_flow(stats) == "level"


def test_exploding_gradients_with_x10_init(moons):
    sizes = deep_sizes(12, 16)
    exploding = layer_stats(init.mlp(jax.random.key(5), sizes, "he", 10.0), moons.X, moons.y)
    level = layer_stats(init.mlp(jax.random.key(5), sizes, "he"), moons.X, moons.y)
    growth = np.asarray(exploding.activation_rms[1:-1]) / np.asarray(exploding.activation_rms[:-2])
    assert np.all(growth > 3)  # about 10x per layer
    assert np.min(exploding.grad_norm) > 1e6 * np.max(level.grad_norm)
    assert diagnostics.gradient_flow(exploding) == "exploding"
    assert diagnostics.gradient_flow(level) == "level"
    # In a deep tanh net, Xavier x10 makes the gradient grow from the output back to the input.
    tanh = layer_stats(init.mlp(jax.random.key(5), sizes, "xavier", 10.0), moons.X, moons.y,
                                   activation="tanh")
    assert tanh.grad_norm[1] > 10 * tanh.grad_norm[-1]


def test_gradient_flow_overflow_and_validation(moons):
    overflow = layer_stats(init.mlp(jax.random.key(6), deep_sizes(20, 16), "random", 10.0), moons.X, moons.y)
    assert diagnostics.gradient_flow(overflow) == "overflow"
    with pytest.raises(ValueError, match="vanishing_below < exploding_above"):
        diagnostics.gradient_flow(overflow, vanishing_below=1.0, exploding_above=0.5)


def test_layer_stats_rows_and_errors(moons):
    params = init.mlp(jax.random.key(7), (2, 5, 1), "he")
    rows = diagnostics.layer_stats_rows(layer_stats(params, moons.X, moons.y))
    assert len(rows) == 2 and all(len(row) == len(diagnostics.LAYER_STATS_HEADERS) for row in rows)
    assert rows[0][0] == "1" and rows[1][4] == "-"
    with pytest.raises(ValueError, match="X has 3 features"):
        diagnostics.layer_stats(params, jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="X has 64 rows but y has 5"):
        diagnostics.layer_stats(params, moons.X, moons.y[:5])
    with pytest.raises(ValueError, match="activation must be one of"):
        diagnostics.layer_stats(params, moons.X, moons.y, activation="swish")
