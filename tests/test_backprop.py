"""The hand-written backward pass equals jax.grad of the same cost (float64, 1e-10)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import backprop, losses, model

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
    with_batchnorm = ({**params[0], "gamma": jnp.ones(4), "beta": jnp.zeros(4)},) + params[1:]
    with pytest.raises(ValueError, match="plain linear"):
        backprop.forward_with_cache(with_batchnorm, X)
    _, cache = backprop.forward_with_cache(params, X)
    with pytest.raises(ValueError, match="3-layer net but params has 2"):
        backprop.backward(params[1:], cache, y)
    with pytest.raises(TypeError, match="integer class ids"):
        backprop.backward(params, cache, y.astype(jnp.float64))
    with pytest.raises(TypeError, match="Cache returned by forward_with_cache"):
        backprop.backward(params, {"logits": cache.logits}, y)
