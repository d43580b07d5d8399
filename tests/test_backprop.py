"""The hand-written backward pass equals jax.grad of the same cost (float64, 1e-10), batch norm included."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import backprop, batchnorm, gradcheck, losses, model

ARCHITECTURES = [(3, 1), (3, 4, 1), (3, 5, 4, 3), (3, 4, 4, 3, 1)]  # sigmoid and softmax heads, 0-3 hidden layers
NUM_EXAMPLES = 7


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with jax.enable_x64(True):
        yield


def make_problem(
    layer_sizes: tuple[int, ...], seed: int, dtype: jnp.dtype = jnp.float64
) -> tuple[tuple, jax.Array, jax.Array]:
    """Random params (non-zero biases), X and labels, drawn with numpy (no per-shape compilation)."""
    rng = np.random.default_rng(seed)
    params = tuple(
        {
            "W": jnp.asarray(rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=fan_out), dtype),
        }
        for fan_in, fan_out in itertools.pairwise(layer_sizes)
    )
    X = jnp.asarray(rng.normal(size=(NUM_EXAMPLES, layer_sizes[0])), dtype)
    y = jnp.asarray(rng.integers(0, max(layer_sizes[-1], 2), size=NUM_EXAMPLES), jnp.int32)
    return params, X, y


def fixed_masks(layer_sizes: tuple[int, ...], keep_prob: float, seed: int) -> tuple[jax.Array, ...]:
    """One 0/1 keep mask per hidden layer, drawn with numpy."""
    rng = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(rng.uniform(size=(NUM_EXAMPLES, width)) < keep_prob, jnp.float64) for width in layer_sizes[1:-1]
    )


def assert_trees_close(actual: tuple, expected: tuple, atol: float = 1e-10) -> None:
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for path_leaf, expected_leaf in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)):
        path, actual_leaf = path_leaf
        assert actual_leaf.shape == expected_leaf.shape, jax.tree_util.keystr(path)
        assert actual_leaf.dtype == expected_leaf.dtype, jax.tree_util.keystr(path)
        np.testing.assert_allclose(actual_leaf, expected_leaf, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


@functools.partial(jax.jit, static_argnames="activation")
def hand_and_autodiff_gradients(
    params: tuple, X: jax.Array, y: jax.Array, masks: tuple, keep_prob: jax.Array, l2: jax.Array, *, activation: str
) -> tuple[tuple, tuple]:
    """``backward``'s gradients and ``jax.grad`` of the documented cost, in one compiled program."""

    def reference_cost(params: tuple) -> jax.Array:
        logits = model.forward(params, X, activation=activation) if not masks else backprop.forward_with_cache(
            params, X, activation=activation, keep_prob=keep_prob, dropout_masks=masks
        )[0]
        return losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, X.shape[0])

    logits, cache = backprop.forward_with_cache(params, X, activation=activation, keep_prob=keep_prob, dropout_masks=masks)
    assert logits is cache.logits
    return backprop.backward(params, cache, y, l2=l2), jax.grad(reference_cost)(params)


@pytest.mark.parametrize(
    "layer_sizes, activation", list(itertools.product(ARCHITECTURES, sorted(model.ACTIVATIONS)))
)
def test_backward_equals_jax_grad_with_l2_and_dropout(layer_sizes: tuple[int, ...], activation: str) -> None:
    params, X, y = make_problem(layer_sizes, seed=len(layer_sizes))
    keep_prob, l2 = 0.7, 0.3
    masks = fixed_masks(layer_sizes, keep_prob, seed=5)
    if masks:
        assert 0 < float(jnp.mean(jnp.concatenate([m.ravel() for m in masks]))) < 1  # some units really dropped
    hand, autodiff = hand_and_autodiff_gradients(
        params, X, y, masks, jnp.float64(keep_prob), jnp.float64(l2), activation=activation
    )
    assert_trees_close(hand, autodiff)


@pytest.mark.parametrize("layer_sizes", ARCHITECTURES)
def test_backward_without_dropout_or_l2_matches_model_forward(layer_sizes: tuple[int, ...]) -> None:
    params, X, y = make_problem(layer_sizes, seed=11)
    logits, cache = backprop.forward_with_cache(params, X, activation="tanh")
    np.testing.assert_allclose(logits, model.forward(params, X, activation="tanh"), rtol=0, atol=1e-12)
    assert cache.dropout_masks is None
    expected = jax.grad(lambda p: losses.cross_entropy(model.forward(p, X, activation="tanh"), y))(params)
    assert_trees_close(backprop.backward(params, cache, y), expected)


def test_masks_reproduce_the_training_forward_and_its_gradient() -> None:
    """make_dropout_masks(key) draws the masks model.forward(key=key) uses, so backward is the training gradient."""
    params, X, y = make_problem((3, 5, 4, 1), seed=3)
    key, keep_prob, l2 = jax.random.key(42), 0.6, 0.5
    masks = backprop.make_dropout_masks(key, params, NUM_EXAMPLES, keep_prob)
    logits, cache = backprop.forward_with_cache(params, X, keep_prob=keep_prob, dropout_masks=masks)
    np.testing.assert_allclose(logits, model.forward(params, X, keep_prob=keep_prob, key=key), rtol=0, atol=1e-12)

    def training_cost(params: tuple) -> jax.Array:
        logits = model.forward(params, X, keep_prob=keep_prob, key=key)
        return losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, NUM_EXAMPLES)

    assert_trees_close(backprop.backward(params, cache, y, l2=l2), jax.grad(training_cost)(params))
    value, grads = backprop.cost_and_gradients(params, X, y, keep_prob=keep_prob, dropout_masks=masks, l2=l2)
    np.testing.assert_allclose(value, training_cost(params), rtol=1e-14)
    assert_trees_close(grads, jax.grad(training_cost)(params))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_derivative_at_exactly_zero_matches_jax_grad(activation: str) -> None:
    z = jnp.array([-2.0, -1e-300, 0.0, -0.0, 1e-300, 3.0])
    expected = jax.vmap(jax.grad(model.ACTIVATIONS[activation]))(z)
    np.testing.assert_array_equal(backprop.activation_derivative(activation, z), expected)
    # a net whose first hidden layer has units with pre-activation exactly 0 on every example
    params, X, y = make_problem((3, 4, 3, 1), seed=7)
    W0 = params[0]["W"].at[:, :2].set(0.0)
    params = ({"W": W0, "b": params[0]["b"].at[:2].set(0.0)},) + params[1:]
    _logits, cache = backprop.forward_with_cache(params, X, activation=activation)
    assert np.all(np.asarray(cache.hidden_pre_activations[0][:, :2]) == 0)
    expected_grads = jax.grad(lambda p: backprop.cost(p, X, y, activation=activation, l2=0.1))(params)
    assert_trees_close(backprop.backward(params, cache, y, l2=0.1), expected_grads)


@pytest.mark.parametrize("activation", sorted(model.ACTIVATIONS))
def test_activation_derivative_matches_jax_grad(activation: str) -> None:
    z = jnp.linspace(-4.0, 4.0, 17)
    expected = jax.vmap(jax.grad(model.ACTIVATIONS[activation]))(z)
    np.testing.assert_allclose(backprop.activation_derivative(activation, z), expected, rtol=1e-14, atol=1e-15)


def test_jit_with_traced_keep_prob_and_l2() -> None:
    params, X, y = make_problem((3, 4, 2), seed=9)
    key = jax.random.key(1)

    @jax.jit
    def run(params: tuple, keep_prob: jax.Array, l2: jax.Array) -> tuple[jax.Array, tuple]:
        masks = backprop.make_dropout_masks(key, params, NUM_EXAMPLES, keep_prob)
        return backprop.cost_and_gradients(params, X, y, keep_prob=keep_prob, dropout_masks=masks, l2=l2)

    value, grads = run(params, jnp.float64(0.8), jnp.float64(0.2))
    masks = backprop.make_dropout_masks(key, params, NUM_EXAMPLES, 0.8)
    expected = jax.grad(lambda p: backprop.cost(p, X, y, keep_prob=0.8, dropout_masks=masks, l2=0.2))(params)
    assert value.shape == ()
    assert_trees_close(grads, expected)


def test_float32_backward_is_close_to_jax_grad() -> None:
    with jax.enable_x64(False):
        params, X, y = make_problem((3, 4, 1), seed=2, dtype=jnp.float32)

        @jax.jit
        def both(params: tuple) -> tuple[jax.Array, tuple, tuple]:
            value, grads = backprop.cost_and_gradients(params, X, y, activation="sigmoid", l2=0.1)
            return value, grads, jax.grad(lambda p: backprop.cost(p, X, y, activation="sigmoid", l2=0.1))(params)

        value, grads, expected = both(params)
        assert value.dtype == jnp.float32
        assert_trees_close(grads, expected, atol=1e-6)


def test_errors_name_the_problem() -> None:
    params, X, y = make_problem((3, 4, 4, 1), seed=1)
    with pytest.raises(ValueError, match="needs explicit dropout_masks"):
        backprop.forward_with_cache(params, X, keep_prob=0.5)
    with pytest.raises(ValueError, match="one mask per hidden layer"):
        backprop.forward_with_cache(params, X, keep_prob=0.5, dropout_masks=[jnp.ones((NUM_EXAMPLES, 4))])
    with pytest.raises(ValueError, match=r"dropout_masks\[1\] must have shape \(7, 4\)"):
        backprop.forward_with_cache(
            params, X, keep_prob=0.5, dropout_masks=[jnp.ones((NUM_EXAMPLES, 4)), jnp.ones((NUM_EXAMPLES, 3))]
        )
    with pytest.raises(ValueError, match=r"keep_prob must be a scalar in \(0, 1\]"):
        backprop.forward_with_cache(params, X, keep_prob=1.5)
    with pytest.raises(ValueError, match="activation must be one of"):
        backprop.forward_with_cache(params, X, activation="swish")
    with pytest.raises(ValueError, match="X has 2 features"):
        backprop.forward_with_cache(params, X[:, :2])
    with_unknown_key = ({**params[0], "scale": jnp.ones(4)},) + params[1:]
    with pytest.raises(ValueError, match=r"params\[0\] has keys \['W', 'b', 'scale'\]: the hand-written backward handles"):
        backprop.forward_with_cache(with_unknown_key, X)
    _, cache = backprop.forward_with_cache(params, X)
    normalized = ({**params[0], "gamma": jnp.ones(4), "beta": jnp.zeros(4)},) + params[1:]
    with pytest.raises(ValueError, match=r"batch norm on hidden layers \(True, False\) but the cache on \(False, False\)"):
        backprop.backward(normalized, cache, y)
    with pytest.raises(ValueError, match="3-layer net but params has 2"):
        backprop.backward(params[1:], cache, y)
    with pytest.raises(TypeError, match="integer class ids"):
        backprop.backward(params, cache, y.astype(jnp.float64))
    with pytest.raises(TypeError, match="Cache returned by forward_with_cache"):
        backprop.backward(params, {"logits": cache.logits}, y)


@pytest.mark.parametrize(
    "layer_sizes, bad, pattern",
    [
        ((3, 4, 1), 2, r"y must be class ids in 0\.\.1 for a one-logit \(sigmoid\) head, got values in \[0, 2\] "
                       r"\(first offending label: 2 at index 3\)"),
        ((3, 4, 3), -1, r"y must be class ids in 0\.\.2 for 3 logits \(softmax\), got values in \[-1, \d\] "
                        r"\(first offending label: -1 at index 3\)"),
        ((3, 4, 3), 3, r"y must be class ids in 0\.\.2 for 3 logits \(softmax\), .*first offending label: 3 at index 3"),
    ],
)
def test_concrete_labels_out_of_range_are_refused(layer_sizes: tuple[int, ...], bad: int, pattern: str) -> None:
    """A binary net with y=2 gave a finite cost and gradients; a softmax label -1 wrapped: refused where y enters."""
    params, X, y = make_problem(layer_sizes, seed=2)
    y = y.at[3].set(bad)
    _, cache = backprop.forward_with_cache(params, X)
    for call in (
        lambda: backprop.cost_and_gradients(params, X, y),
        lambda: backprop.cost(params, X, y),
        lambda: backprop.backward(params, cache, y),
        lambda: backprop.output_gradient(cache.logits, y),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()


def test_traced_labels_are_not_checked_in_the_output_gradient() -> None:
    """Under jit the labels are tracers: not checked, and the output gradient is the bare formula."""
    params, X, y = make_problem((3, 4, 3), seed=3)
    logits = backprop.forward_with_cache(params, X)[0]

    def reference(logits: jax.Array, y: jax.Array) -> jax.Array:
        return (jax.nn.softmax(logits, axis=1) - jax.nn.one_hot(y, 3, dtype=logits.dtype)) / logits.shape[0]

    bad = y.at[0].set(7)
    assert str(jax.make_jaxpr(backprop.output_gradient)(logits, bad)) == str(jax.make_jaxpr(reference)(logits, bad))
    np.testing.assert_array_equal(jax.jit(backprop.output_gradient)(logits, bad), jax.jit(reference)(logits, bad))
    np.testing.assert_array_equal(backprop.output_gradient(logits, y), reference(logits, y))  # valid concrete y


# ----------------------------------------------------------------------------- batch norm


def with_batchnorm(params: tuple, layers: tuple[int, ...], seed: int) -> tuple:
    """``params`` with random ``gamma`` (around 1) and ``beta`` on the given hidden layers."""
    rng = np.random.default_rng(seed)
    return tuple(
        {**layer, "gamma": jnp.asarray(1 + 0.3 * rng.normal(size=layer["b"].shape)),
         "beta": jnp.asarray(0.2 * rng.normal(size=layer["b"].shape))} if l in layers else layer
        for l, layer in enumerate(params)
    )


@functools.partial(jax.jit, static_argnames="activation")
def batchnorm_gradients(
    params: tuple, X: jax.Array, y: jax.Array, key: jax.Array, keep_prob: jax.Array, l2: jax.Array, *, activation: str
) -> tuple[tuple, tuple]:
    """``backward`` on the masks ``key`` draws, and ``jax.grad`` of the training-mode cost of ``model.forward_with_state``."""

    def training_cost(params: tuple) -> jax.Array:
        logits, _ = model.forward_with_state(params, X, activation=activation, keep_prob=keep_prob, key=key, train=True)
        return losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, X.shape[0])

    masks = backprop.make_dropout_masks(key, params, X.shape[0], keep_prob)
    _, cache = backprop.forward_with_cache(params, X, activation=activation, keep_prob=keep_prob, dropout_masks=masks)
    return backprop.backward(params, cache, y, l2=l2), jax.grad(training_cost)(params)


@pytest.mark.parametrize(
    "layer_sizes, normalized, activation",
    [((3, 5, 4, 3), (0, 1), activation) for activation in sorted(model.ACTIVATIONS)]
    + [((3, 4, 4, 1), (1,), "relu"), ((3, 6, 1), (0,), "tanh")],
)
def test_batchnorm_backward_equals_jax_grad_of_training_cost(
    layer_sizes: tuple[int, ...], normalized: tuple[int, ...], activation: str
) -> None:
    """dgamma, dbeta, dW, db by hand equal jax.grad of the train-mode cost (batch statistics), with dropout and L2."""
    plain, X, y = make_problem(layer_sizes, seed=sum(layer_sizes))
    params = with_batchnorm(plain, normalized, seed=4)
    hand, autodiff = batchnorm_gradients(
        params, X, y, jax.random.key(3), jnp.float64(0.8), jnp.float64(0.3), activation=activation
    )
    assert_trees_close(hand, autodiff)
    for l in normalized:
        assert set(hand[l]) == {"W", "b", "gamma", "beta"}
        # the mean cancels b: its gradient is zero up to rounding, by hand and by autodiff
        assert float(jnp.max(jnp.abs(hand[l]["b"]))) < 1e-15
        assert float(jnp.max(jnp.abs(hand[l]["gamma"]))) > 1e-3


def test_batchnorm_cache_holds_the_batch_statistics() -> None:
    plain, X, _ = make_problem((3, 5, 4, 3), seed=2)
    params = with_batchnorm(plain, (0, 1), seed=1)
    logits, cache = backprop.forward_with_cache(params, X, activation="tanh")
    expected, _ = model.forward_with_state(params, X, activation="tanh", train=True)
    np.testing.assert_array_equal(logits, expected)  # the same forward pass, to the bit
    first = cache.batchnorm[0]
    Z = X @ params[0]["W"] + params[0]["b"]
    np.testing.assert_allclose(first.mean, Z.mean(axis=0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(first.var, Z.var(axis=0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(first.normalized, (Z - Z.mean(axis=0)) / np.sqrt(Z.var(axis=0) + batchnorm.DEFAULT_EPS),
                               rtol=0, atol=1e-12)
    assert first.eps == batchnorm.DEFAULT_EPS
    np.testing.assert_allclose(cache.hidden_pre_activations[0], params[0]["gamma"] * first.normalized + params[0]["beta"],
                               rtol=0, atol=0)


def test_gradcheck_passes_batchnorm_backward_and_names_a_planted_bug() -> None:
    plain, X, y = make_problem((3, 5, 4, 3), seed=6)
    params = with_batchnorm(plain, (0, 1), seed=2)

    def cost_fn(params: tuple) -> jax.Array:
        return backprop.cost(params, X, y, l2=0.2)

    value, grads = backprop.cost_and_gradients(params, X, y, l2=0.2)
    np.testing.assert_allclose(value, cost_fn(params), rtol=1e-14)
    report = gradcheck.check(cost_fn, params, grads)
    assert report.passed, str(report)
    assert report.difference < 1e-7
    # The biases of batch-normalized layers have a zero gradient: analytic ~1e-17 against a numeric
    # ~1e-9 of rounding noise, whose relative difference would be ~1 whatever the code; they are
    # judged by their share of the whole gradient instead, and pass.
    zero_gradient_arrays = {"params[0]['b']", "params[1]['b']"}
    for array in report.arrays:
        assert array.passed, str(report)
        assert (array.relative_to == "whole gradient") == (array.path in zero_gradient_arrays), str(report)
        if array.path in zero_gradient_arrays:
            assert abs(array.analytic) < 1e-15 and abs(array.numeric) < 1e-8 and array.difference < 1e-8
    assert "~0 gradient" in str(report)
    broken = tuple(dict(layer) for layer in grads)
    broken[1]["gamma"] = broken[1]["gamma"] * 1.5
    failing = gradcheck.check(cost_fn, params, broken)
    assert not failing.passed
    assert set(failing.failed_arrays) == {"params[1]['gamma']"}
    # a bias gradient that is wrong by more than the noise is still caught, even where the true one is 0
    biased = tuple(dict(layer) for layer in grads)
    biased[0]["b"] = biased[0]["b"] + 1e-3
    assert gradcheck.check(cost_fn, params, biased).failed_arrays == ("params[0]['b']",)
