"""Multi-class end to end: softmax cross-entropy, one-hot labels, the digits data and a softmax classifier."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepopt import data, losses, model, train


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_softmax_cross_entropy_equals_optax(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    logits = jnp.asarray(3 * rng.normal(size=(20, num_classes)), jnp.float32)
    y = jnp.asarray(rng.integers(0, num_classes, 20), jnp.int32)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    np.testing.assert_allclose(losses.per_example_cross_entropy(logits, y), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses.cross_entropy(logits, y), jnp.mean(expected), rtol=1e-6)
    grad = jax.grad(losses.cross_entropy)(logits, y)
    expected_grad = jax.grad(lambda z: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, y)))(logits)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    # the one-hot form: -sum(Y * log softmax(z)) per row
    Y = data.one_hot(y, num_classes)
    np.testing.assert_allclose(-jnp.sum(Y * jax.nn.log_softmax(logits), axis=1), expected, rtol=1e-6, atol=1e-6)


def test_softmax_cross_entropy_is_finite_for_huge_logits() -> None:
    logits = jnp.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 1e30], [3e38, -3e38, 1.0], [0.0, 0.0, 0.0]], jnp.float32)
    y = jnp.array([0, 0, 2, 1])
    per_example = losses.per_example_cross_entropy(logits, y)
    assert np.all(np.isfinite(per_example))
    np.testing.assert_allclose(per_example, [0.0, 2e30, 3e38, np.log(3)], rtol=1e-6)
    np.testing.assert_allclose(per_example, optax.softmax_cross_entropy_with_integer_labels(logits, y), rtol=1e-6)
    grad = jax.grad(losses.cross_entropy)(logits, y)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0], [0, 0, 0], atol=1e-7)  # confident and right: nothing to learn
    np.testing.assert_allclose(grad[1], [-0.25, 0.125, 0.125], atol=1e-7)  # softmax(z) - one_hot(y), over m = 4


def test_one_hot() -> None:
    Y = data.one_hot(jnp.array([2, 0, 1, 2]), 3)
    np.testing.assert_array_equal(Y, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert jnp.issubdtype(Y.dtype, jnp.floating)
    np.testing.assert_array_equal(model.predict_from_logits(Y), [2, 0, 1, 2])  # argmax inverts it


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    pytest.importorskip("sklearn")
    return data.load_digits()


def test_load_digits(digits: data.Dataset) -> None:
    assert digits.X.shape == (1797, 64) and digits.y.shape == (1797,)
    assert digits.X.dtype == np.float32 and digits.y.dtype == np.int32
    assert float(digits.X.min()) == 0.0 and float(digits.X.max()) == 1.0
    np.testing.assert_array_equal(np.unique(digits.y), np.arange(10))


def test_load_digits_without_scikit_learn_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # `from sklearn.datasets import ...` now fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[datasets\]'"):
        data.load_digits()


def test_softmax_classifier_learns_the_digits(digits: data.Dataset) -> None:
    """64 -> 16 -> 10 with full-batch Adam on 600 digits: the softmax head reaches high accuracy."""
    train_set = data.Dataset(digits.X[:600], digits.y[:600])
    dev_set = data.Dataset(digits.X[600:900], digits.y[600:900])
    config = train.Config((64, 16, 10), optimizer="adam", epochs=60)
    result = train.fit(config, train.HParams(learning_rate=0.01), jax.random.key(0), train_set, dev_set)
    assert result.costs[0] > 1.5 and result.costs[-1] < 0.3  # from about log(10) = 2.3 down
    assert float(result.train_accuracy) > 0.95 and float(result.dev_accuracy) > 0.8
    predictions = model.predict(result.params, dev_set.X)
    assert predictions.shape == (300,) and set(np.unique(predictions)) <= set(range(10))
    np.testing.assert_allclose(jnp.mean(predictions == dev_set.y), result.dev_accuracy)
