import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import init, losses, model


@pytest.fixture(scope="module")
def params():
    return init.mlp(jax.random.key(0), (3, 5, 4, 2), "he")


@pytest.mark.parametrize("activation", model.ACTIVATIONS)
def test_forward_shapes(params, activation):
    X = jax.random.normal(jax.random.key(1), (7, 3))
    logits = model.forward(params, X, activation=activation)
    assert logits.shape == (7, 2) and logits.dtype == jnp.float32
    assert model.predict(params, X, activation=activation).shape == (7,)


def test_forward_matches_the_formula(params):
    X = jax.random.normal(jax.random.key(1), (7, 3))
    a1 = jnp.tanh(X @ params[0]["W"] + params[0]["b"])
    a2 = jnp.tanh(a1 @ params[1]["W"] + params[1]["b"])
    np.testing.assert_allclose(model.forward(params, X, activation="tanh"), a2 @ params[2]["W"] + params[2]["b"], rtol=1e-6)


def test_forward_errors(params):
    X = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="activation must be one of"):
        model.forward(params, X, activation="swish")
    with pytest.raises(ValueError, match="X has 2 features but params\\[0\\]\\['W'\\] expects 3"):
        model.forward(params, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model.forward(params, X, keep_prob=0.5)
    with pytest.raises(TypeError, match="params\\[1\\] must be a dict"):
        model.forward((params[0], [1, 2]), X)
    with pytest.raises(ValueError, match="fan_in 4 but the previous layer has 5 units"):
        model.forward((params[0], params[2]), X)


def test_dropout_keep_prob_one_is_identity_and_masks_hidden_units_only(params):
    X = jax.random.normal(jax.random.key(1), (64, 3))
    plain = model.forward(params, X)
    np.testing.assert_array_equal(model.forward(params, X, keep_prob=1.0, key=jax.random.key(5)), plain)
    dropped = model.forward(params, X, keep_prob=0.5, key=jax.random.key(5))
    assert not np.allclose(dropped, plain)
    # Only hidden layers drop: with no hidden layer, dropout is the identity.
    linear = init.mlp(jax.random.key(0), (3, 2))
    np.testing.assert_array_equal(model.forward(linear, X, keep_prob=0.5, key=jax.random.key(5)), model.forward(linear, X))


def test_predict_and_accuracy():
    single = ({"W": jnp.array([[1.0]]), "b": jnp.array([0.0])},)
    X = jnp.array([[-2.0], [0.0], [3.0]])
    np.testing.assert_array_equal(model.predict(single, X), [0, 0, 1])  # z > 0, so z = 0 is class 0
    assert float(model.accuracy(single, X, jnp.array([0, 1, 1]))) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(model.predict_from_logits(jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])), [1, 0])


def test_binary_cross_entropy_equals_naive_formula_where_finite():
    z = jnp.linspace(-6.0, 6.0, 25)[:, None]
    y = (jnp.arange(25) % 2).astype(jnp.int32)
    p = jax.nn.sigmoid(z[:, 0])
    naive = -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))
    assert float(losses.cross_entropy(z, y)) == pytest.approx(float(naive), rel=1e-5)


def test_softmax_cross_entropy_equals_naive_formula_where_finite():
    z = jax.random.normal(jax.random.key(0), (10, 4)) * 3
    y = jnp.arange(10) % 4
    naive = -jnp.mean(jnp.log(jax.nn.softmax(z)[jnp.arange(10), y]))
    assert float(losses.cross_entropy(z, y)) == pytest.approx(float(naive), rel=1e-5)


@pytest.mark.parametrize("n_out", [1, 3])
def test_loss_finite_and_right_for_huge_logits(n_out):
    if n_out == 1:
        z, right = jnp.array([[1e4], [-1e4]]), jnp.array([1, 0])
        wrong = 1 - right
    else:
        z, right = jnp.array([[1e4, 0.0, 0.0], [0.0, 1e4, 0.0]]), jnp.array([0, 1])
        wrong = jnp.array([2, 2])
    assert float(losses.cross_entropy(z, right)) == pytest.approx(0.0, abs=1e-6)
    # Confidently wrong costs |z| (finite) instead of log(0) = inf.
    assert float(losses.cross_entropy(z, wrong)) == pytest.approx(1e4, rel=1e-6)
    grads = jax.grad(losses.cross_entropy)(z, wrong)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_gradient_exact_at_zero_logit():
    z = jnp.zeros((4, 1))
    y = jnp.array([0, 1, 0, 1])
    grad = jax.grad(losses.cross_entropy)(z, y)[:, 0]
    np.testing.assert_array_equal(grad, (jax.nn.sigmoid(0.0) - y) / 4)  # (sigma(z) - y) / m, exactly


def test_loss_errors():
    with pytest.raises(ValueError, match="logits has 3 rows but y has 2"):
        losses.cross_entropy(jnp.zeros((3, 1)), jnp.zeros(2, jnp.int32))
    with pytest.raises(TypeError, match="integer class ids"):
        losses.cross_entropy(jnp.zeros((3, 1)), jnp.zeros(3))


def test_l2_penalty_counts_weights_only(params):
    penalized = tuple({"W": p["W"], "b": p["b"] + 100.0} for p in params)
    expected = 0.7 / (2 * 50) * sum(float(jnp.sum(p["W"] ** 2)) for p in params)
    assert float(losses.l2_penalty(penalized, 0.7, 50)) == pytest.approx(expected, rel=1e-6)
    grads = jax.grad(losses.l2_penalty)(penalized, 0.7, 50)
    for g, p in zip(grads, penalized):
        np.testing.assert_allclose(g["W"], 0.7 / 50 * p["W"], rtol=1e-6)
        np.testing.assert_array_equal(g["b"], 0.0)


# ------------------------------------------------------------------------------ concrete labels out of range


LOGITS_3 = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
LOGITS_1 = jnp.array([[3.0], [1.0]])


@pytest.mark.parametrize(
    "logits, labels, pattern",
    [
        (LOGITS_3, [-1, 0], r"y must be class ids in 0\.\.2 for 3 logits \(softmax\), got values in \[-1, 0\] "
                            r"\(first offending label: -1 at index 0\)"),
        (LOGITS_3, [0, 5], r"y must be class ids in 0\.\.2 for 3 logits \(softmax\), got values in \[0, 5\] "
                           r"\(first offending label: 5 at index 1\)"),
        (LOGITS_1, [2, 0], r"y must be class ids in 0\.\.1 for a one-logit \(sigmoid\) head, got values in \[0, 2\] "
                           r"\(first offending label: 2 at index 0\)"),
        (LOGITS_1, [0, -1], r"y must be class ids in 0\.\.1 for a one-logit \(sigmoid\) head, .*-1 at index 1"),
    ],
)
def test_concrete_labels_out_of_range_are_refused(logits, labels, pattern):
    """A label outside the head's classes wrapped (-1), gave nan (5) or a negative binary loss (2): refused."""
    y = jnp.array(labels)
    for loss in (losses.per_example_cross_entropy, losses.cross_entropy):
        with pytest.raises(ValueError, match=pattern):
            loss(logits, y)
    with pytest.raises(ValueError, match=pattern):  # y stays concrete under grad with respect to the logits
        jax.grad(losses.cross_entropy)(logits, y)
    with pytest.raises(ValueError, match=pattern):  # numpy labels too
        losses.cross_entropy(logits, np.asarray(labels))


def test_valid_labels_at_the_ends_of_the_range_still_work():
    assert np.all(np.isfinite(losses.per_example_cross_entropy(LOGITS_3, jnp.array([0, 2]))))
    binary = losses.per_example_cross_entropy(LOGITS_1, jnp.array([1, 0]))
    np.testing.assert_allclose(binary, [jax.nn.softplus(3.0) - 3.0, jax.nn.softplus(1.0)], rtol=1e-6)
    assert losses.per_example_cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)).shape == (0,)


def _reference_per_example(logits: jax.Array, y: jax.Array) -> jax.Array:
    """The loss's formula without any check: what the traced path must compile to."""
    if logits.shape[1] == 1:
        z = logits[:, 0]
        return jax.nn.softplus(z) - y.astype(z.dtype) * z
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.take_along_axis(log_probs, y[:, None].astype(jnp.int32), axis=1)[:, 0]


@pytest.mark.parametrize("logits", [LOGITS_1, LOGITS_3], ids=["sigmoid", "softmax"])
def test_traced_labels_are_not_checked_and_add_no_ops(logits):
    """Under jit/vmap the labels are tracers: no check, no host sync, the very same program as the bare formula."""
    y = jnp.array([7, -3])  # not checked when traced: the training loop's behaviour is unchanged
    traced = jax.make_jaxpr(losses.per_example_cross_entropy)(logits, y)
    assert str(traced) == str(jax.make_jaxpr(_reference_per_example)(logits, y))
    np.testing.assert_array_equal(
        jax.jit(losses.per_example_cross_entropy)(logits, y), jax.jit(_reference_per_example)(logits, y)
    )
    batched = jax.vmap(losses.cross_entropy, in_axes=(None, 0))(logits, jnp.stack([y, y]))
    assert batched.shape == (2,)


# ------------------------------------------------------------------------------ dropout keep_prob


@pytest.mark.parametrize("keep_prob", [0.0, 1.5, -0.5, float("nan"), np.array([0.5, 0.5])])
def test_dropout_refuses_a_concrete_keep_prob_outside_0_1(params, keep_prob):
    a = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"keep_prob must be a scalar in \(0, 1\], got"):
        model.dropout(jax.random.key(0), a, keep_prob)
    with pytest.raises(ValueError, match=r"keep_prob must be a scalar in \(0, 1\], got"):
        model.forward(params, jnp.ones((4, 3)), keep_prob=keep_prob, key=jax.random.key(0))
    linear = init.mlp(jax.random.key(0), (3, 2))  # no hidden layer, no dropout: still a wrong argument
    with pytest.raises(ValueError, match=r"keep_prob must be a scalar in \(0, 1\], got"):
        model.forward(linear, jnp.ones((4, 3)), keep_prob=keep_prob, key=jax.random.key(0))


def test_dropout_keep_prob_errors_and_valid_values(params):
    a = jnp.ones((4, 3))
    with pytest.raises(TypeError, match="keep_prob must be a number, got 'half'"):
        model.dropout(jax.random.key(0), a, "half")
    with pytest.raises(ValueError, match=r"keep_prob must be a scalar in \(0, 1\], got 0\.0"):
        model.dropout(jax.random.key(0), a, jnp.float32(0.0))  # a concrete JAX scalar is checked too
    np.testing.assert_array_equal(model.dropout(jax.random.key(0), a, 1.0), a)
    kept = model.dropout(jax.random.key(0), a, np.float32(0.5))
    assert set(np.unique(np.asarray(kept)).tolist()) <= {0.0, 2.0}


def test_traced_keep_prob_is_not_checked_and_adds_no_ops():
    """A traced keep_prob (fit's HParams) compiles to the bare formula; even 0 is not checked (as before)."""
    key, a = jax.random.key(0), jnp.ones((4, 3))

    def reference(keep_prob: jax.Array) -> jax.Array:
        return a * model.dropout_mask(key, a.shape, keep_prob, a.dtype) / keep_prob

    def dropped(keep_prob: jax.Array) -> jax.Array:
        return model.dropout(key, a, keep_prob)

    assert str(jax.make_jaxpr(dropped)(0.5)) == str(jax.make_jaxpr(reference)(0.5))
    np.testing.assert_array_equal(jax.jit(dropped)(0.5), jax.jit(reference)(0.5))
    np.testing.assert_array_equal(jax.jit(dropped)(0.0), jax.jit(reference)(0.0))  # traced: not checked
