"""The Flax MLP computes what deepopt's model computes: logits, gradients, batch statistics, updates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import batchnorm, flax_models, init, losses, model, optim, train

LAYER_SIZES = (3, 6, 5, 4)
NUM_EXAMPLES = 12


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[float]:
    """float64 mode for the float64 cases; yields the tolerance to use."""
    with jax.enable_x64(dtype == "float64"):
        yield 1e-12 if dtype == "float64" else 2e-6


def make_problem(batchnormed: bool, dtype: str, seed: int = 0) -> tuple[tuple, jax.Array, jax.Array]:
    """He-initialized params (gamma, beta, b made non-trivial), X with an offset, labels; all from numpy."""
    rng = np.random.default_rng(seed)
    params = init.mlp(jax.random.key(seed), LAYER_SIZES, batchnorm=batchnormed, dtype=dtype)
    params = jax.tree.map(lambda leaf: leaf + jnp.asarray(0.2 * rng.normal(size=leaf.shape), dtype), params)
    X = jnp.asarray(1.0 + rng.normal(size=(NUM_EXAMPLES, LAYER_SIZES[0])), dtype)
    y = jnp.asarray(rng.integers(0, LAYER_SIZES[-1], NUM_EXAMPLES), jnp.int32)
    return params, X, y


def assert_trees_close(actual: object, expected: object, tolerance: float) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance), actual, expected)


@pytest.mark.parametrize("batchnormed", [False, True])
def test_conversions_round_trip_and_match_flax_init(batchnormed: bool) -> None:
    params, X, _ = make_problem(batchnormed, "float32")
    module = flax_models.module_for(params, activation="tanh")
    assert module.layer_sizes == LAYER_SIZES and module.batchnorm == batchnormed
    variables = flax_models.to_flax_variables(params)
    flax_init = module.init(jax.random.key(1), X)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, flax_init)
    assert_trees_close(flax_models.from_flax_params(variables["params"]), params, 0)
    converted_init = flax_models.from_flax_params(flax_init["params"])  # Flax's own initialization converts too
    assert jax.tree.map(jnp.shape, converted_init) == jax.tree.map(jnp.shape, params)
    if batchnormed:
        state = (batchnorm.BatchNormState(jnp.arange(6.0), jnp.arange(1.0, 7.0)), batchnorm.init_state(5))
        assert_trees_close(flax_models.from_flax_batch_stats(flax_models.to_flax_batch_stats(state)), state, 0)
        assert_trees_close(flax_models.from_flax_batch_stats(flax_init["batch_stats"]),
                           batchnorm.init_states(params), 0)


@jax.jit
def flax_and_deepopt(params: tuple, X: jax.Array, y: jax.Array) -> dict[str, tuple[object, object]]:
    """``name -> (Flax's value, deepopt's value)`` for logits, statistics, cost and gradients, in one program."""
    module = flax_models.module_for(params, activation="tanh")
    variables = flax_models.to_flax_variables(params)
    l2 = 0.3
    pairs: dict[str, tuple[object, object]] = {}

    logits, batch_stats = flax_models.apply(module, variables["params"], X,
                                            batch_stats=variables.get("batch_stats"), train=True)
    expected, bn_state = model.forward_with_state(params, X, activation="tanh", train=True)
    pairs["training logits"] = (logits, expected)
    pairs["batch statistics"] = (flax_models.from_flax_batch_stats(batch_stats), bn_state)

    def deepopt_cost(params: tuple) -> jax.Array:
        logits, _ = model.forward_with_state(params, X, activation="tanh", train=True)
        return losses.cross_entropy(logits, y) + losses.l2_penalty(params, l2, NUM_EXAMPLES)

    def flax_cost(flax_params: dict) -> jax.Array:
        return flax_models.cost(module, flax_params, X, y, batch_stats=variables.get("batch_stats"), l2=l2)[0]

    pairs["cost"] = (flax_cost(variables["params"]), deepopt_cost(params))
    pairs["gradients"] = (flax_models.from_flax_params(jax.grad(flax_cost)(variables["params"])),
                          jax.grad(deepopt_cost)(params))

    # evaluation with the statistics just updated (deterministic: no dropout, running averages)
    evaluated, unchanged = flax_models.apply(module, variables["params"], X + 0.5, batch_stats=batch_stats)
    pairs["evaluation logits"] = (evaluated, model.forward(params, X + 0.5, activation="tanh",
                                                           bn_state=bn_state if module.batchnorm else None))
    pairs["evaluation keeps the statistics"] = (unchanged, batch_stats)

    if module.batchnorm:  # fit's padded mini-batch: only the masked rows count in the statistics
        mask = jnp.arange(NUM_EXAMPLES) < 9
        masked, masked_stats = flax_models.apply(module, variables["params"], X, batch_stats=batch_stats,
                                                 train=True, mask=mask)
        expected, masked_state = model.forward_with_state(params, X, activation="tanh", bn_state=bn_state,
                                                          train=True, mask=mask)
        pairs["masked training logits"] = (masked, expected)
        pairs["masked batch statistics"] = (flax_models.from_flax_batch_stats(masked_stats), masked_state)
    return pairs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batchnormed", [False, True])
def test_same_logits_gradients_and_statistics_as_deepopt(batchnormed: bool, dtype: str) -> None:
    """Training mode (batch statistics, masked too) and evaluation (running statistics), from the same parameters."""
    with precision(dtype) as tolerance:
        pairs = flax_and_deepopt(*make_problem(batchnormed, dtype))
        assert len(pairs) == (8 if batchnormed else 6)
        for name, (flax_value, deepopt_value) in pairs.items():
            try:
                assert_trees_close(flax_value, deepopt_value, tolerance)
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None
        assert jax.tree.leaves(pairs["gradients"][0])[0].dtype == dtype


def test_dropout_is_inverted_dropout_on_hidden_layers() -> None:
    """With an identity output layer the logits are the dropped hidden units: 0 or a / keep_prob."""
    width, keep_prob = 40, 0.6
    hidden = init.mlp(jax.random.key(0), (3, width, 1))[0]
    params = (hidden, {"W": jnp.eye(width), "b": jnp.zeros(width)})
    X = jax.random.normal(jax.random.key(1), (30, 3))
    module = flax_models.module_for(params, keep_prob=keep_prob)
    flax_params = flax_models.to_flax_params(params)
    dropped, _ = flax_models.apply(module, flax_params, X, train=True, key=jax.random.key(2))
    activations = model.forward(params, X)  # no dropout
    evaluated, _ = flax_models.apply(module, flax_params, X)  # evaluation: no dropout either
    np.testing.assert_allclose(evaluated, activations, rtol=1e-6)
    kept = np.asarray(dropped != 0)
    np.testing.assert_allclose(np.asarray(dropped)[kept], np.asarray(activations)[kept] / keep_prob, rtol=1e-6)
    alive = np.asarray(activations != 0)
    assert abs(kept[alive].mean() - keep_prob) < 0.05
    with pytest.raises(ValueError, match="needs a PRNG key for dropout"):
        flax_models.apply(module, flax_params, X, train=True)


def test_deepopt_adam_trains_the_flax_model_like_the_pure_one() -> None:
    """Three Adam steps with batch norm and L2: flax_models.train_step equals deepopt's own loop."""
    params, X, y = make_problem(True, "float32", seed=3)
    module = flax_models.module_for(params)
    adam = optim.get("adam")
    # epsilon 1e-3, not 1e-8: the bias of a batch-normalized layer cancels in the output, so its
    # gradient is rounding noise (~1e-9), different in the two programs; with a tiny epsilon Adam's
    # g / (sqrt(s) + eps) would turn that noise into steps of about the learning rate, of either sign.
    hp = train.HParams(learning_rate=0.05, l2=0.1, epsilon=1e-3)
    step = jax.jit(flax_models.train_step, static_argnums=(0, 1))
    variables = flax_models.to_flax_variables(params)
    flax_params, batch_stats, flax_state = variables["params"], variables["batch_stats"], adam.init(variables["params"])

    @jax.jit
    def deepopt_step(params: tuple, bn_state: tuple, opt_state: optim.AdamState) -> tuple:
        def cost(params: tuple) -> tuple[jax.Array, tuple]:
            logits, new_state = model.forward_with_state(params, X, bn_state=bn_state, train=True)
            return losses.cross_entropy(logits, y) + losses.l2_penalty(params, hp.l2, NUM_EXAMPLES), new_state

        (value, new_state), grads = jax.value_and_grad(cost, has_aux=True)(params)
        return *adam.update(grads, opt_state, params, hp), new_state, value

    bn_state, opt_state = batchnorm.init_states(params), adam.init(params)
    for _ in range(3):
        flax_params, batch_stats, flax_state, flax_cost = step(module, adam, flax_params, batch_stats, flax_state,
                                                               X, y, hp)
        params, opt_state, bn_state, cost = deepopt_step(params, bn_state, opt_state)
        np.testing.assert_allclose(flax_cost, cost, rtol=1e-5)
    assert_trees_close(flax_models.from_flax_params(flax_params), params, 1e-5)
    assert_trees_close(flax_models.from_flax_batch_stats(batch_stats), bn_state, 1e-5)
    logits, _ = flax_models.apply(module, flax_params, X, batch_stats=batch_stats)
    np.testing.assert_allclose(logits, model.forward(params, X, bn_state=bn_state), rtol=1e-5, atol=1e-5)
    assert int(flax_state.count) == 3


def test_errors_name_the_problem() -> None:
    params, X, _ = make_problem(True, "float32")
    partly = (params[0], {"W": params[1]["W"], "b": params[1]["b"]}, params[2])
    with pytest.raises(ValueError, match=r"every hidden layer or none.*\(True, False\)"):
        flax_models.to_flax_params(partly)
    flax_params = flax_models.to_flax_params(params)
    with pytest.raises(ValueError, match=r"unexpected entries \['extra'\]"):
        flax_models.from_flax_params({**flax_params, "extra": {}})
    with pytest.raises(ValueError, match="has no 'dense_0' entry"):
        flax_models.from_flax_params({"Dense_0": {}})
    with pytest.raises(ValueError, match=r"batch_stats must hold batchnorm_0\.\.L-2 entries in order"):
        flax_models.from_flax_batch_stats({"batchnorm_1": {"mean": jnp.zeros(5), "var": jnp.ones(5)}})
    with pytest.raises(ValueError, match="needs batch_stats"):
        flax_models.apply(flax_models.module_for(params), flax_params, X)
    plain, _, _ = make_problem(False, "float32")
    with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\], got 0.0"):
        flax_models.apply(flax_models.module_for(plain, keep_prob=0.0), flax_models.to_flax_params(plain), X)
    with pytest.raises(ValueError, match=r"x must be \(m, 3\)"):
        flax_models.apply(flax_models.module_for(params), flax_params, X[:, :2],
                          batch_stats=flax_models.to_flax_batch_stats(batchnorm.init_states(params)))
