import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, init, losses, model, train

SMALL = train.Config((2, 6, 1), activation="relu", init="he", epochs=20)
MINIBATCH = train.Config((2, 6, 1), activation="tanh", init="he", batch_size=32, epochs=5)


@pytest.fixture(scope="module")
def small_result(moons, moons_dev):
    return train.fit(SMALL, train.HParams(learning_rate=0.1), jax.random.key(0), moons, moons_dev)


def test_result_shapes_and_dtypes(small_result):
    r = small_result
    assert r.costs.shape == (20,) and r.costs.dtype == jnp.float32
    assert [p["W"].shape for p in r.params] == [(2, 6), (6, 1)]
    for name in ("train_accuracy", "dev_accuracy", "final_cost", "diverged", "diverged_epoch"):
        assert getattr(r, name).shape == ()
    assert not bool(r.diverged) and int(r.diverged_epoch) == -1
    assert 0.0 <= float(r.train_accuracy) <= 1.0 and 0.0 <= float(r.dev_accuracy) <= 1.0


def test_full_batch_costs_are_the_cost_before_each_update(moons):
    params0 = init.mlp(jax.random.key(3), (2, 6, 1), "he")
    hp = train.HParams(learning_rate=0.5, l2=0.3)
    config = train.Config((2, 6, 1), epochs=3)
    result = train.fit(config, hp, jax.random.key(0), moons, init_params=params0)

    def cost(params):
        return losses.cross_entropy(model.forward(params, moons.X), moons.y) + losses.l2_penalty(params, 0.3, 120)

    params = params0
    for epoch in range(3):
        value, grads = jax.value_and_grad(cost)(params)
        assert float(result.costs[epoch]) == pytest.approx(float(value), rel=1e-5)
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(result.final_cost) == pytest.approx(float(cost(params)), rel=1e-5)
    assert float(result.train_accuracy) == pytest.approx(float(model.accuracy(params, moons.X, moons.y)))


def test_minibatch_epoch_cost_is_the_mean_over_examples(moons):
    # With a negligible learning rate the parameters stay put, so the epoch's cost is the mean
    # per-example loss at init plus, per batch b, (n_b / m) * lambda / (2 n_b) * sum W^2.
    params0 = init.mlp(jax.random.key(3), (2, 6, 1), "he")
    config = train.Config((2, 6, 1), batch_size=50, epochs=2)  # m = 120: batches 50, 50, 20
    result = train.fit(config, train.HParams(learning_rate=1e-30, l2=0.6), jax.random.key(0), moons, init_params=params0)
    data_cost = losses.cross_entropy(model.forward(params0, moons.X), moons.y)
    l2_term = 3 * 0.6 / (2 * 120) * losses.sum_of_squared_weights(params0)
    np.testing.assert_allclose(result.costs, float(data_cost + l2_term), rtol=1e-5)


def test_no_recompilation_across_hyperparameters_and_keys(moons, moons_dev, small_result):
    before = train.trace_count()
    for lr, l2, keep_prob, seed in [(0.05, 0.0, 1.0, 1), (0.3, 0.7, 0.8, 2), (1, 1, 1, 3)]:
        hp = train.HParams(learning_rate=lr, l2=l2, keep_prob=keep_prob, init_scale=2.0)
        train.fit(SMALL, hp, jax.random.key(seed), moons, moons_dev)
    assert train.trace_count() == before
    train.fit(train.Config((2, 6, 1), epochs=21), train.HParams(), jax.random.key(0), moons, moons_dev)
    assert train.trace_count() == before + 1  # a new Config is a new program


def test_same_key_same_result_different_key_different_result(moons, small_result):
    again = train.fit(SMALL, train.HParams(learning_rate=0.1), jax.random.key(0), moons, None)
    np.testing.assert_array_equal(again.costs, small_result.costs)
    other = train.fit(SMALL, train.HParams(learning_rate=0.1), jax.random.key(1), moons, None)
    assert not np.array_equal(other.costs, small_result.costs)


def test_vmapped_fit_equals_per_config_fit(moons, moons_dev):
    hps = train.broadcast_hparams(train.HParams(learning_rate=jnp.array([0.05, 0.2, 0.5]), keep_prob=0.9), 3)
    keys = jax.random.split(jax.random.key(7), 3)
    batched = jax.jit(jax.vmap(lambda hp, k: train.fit(MINIBATCH, hp, k, moons, moons_dev)))(hps, keys)
    assert batched.costs.shape == (3, 5)
    for i in range(3):
        single = train.fit(MINIBATCH, jax.tree.map(lambda x: x[i], hps), keys[i], moons, moons_dev)
        np.testing.assert_allclose(batched.costs[i], single.costs, rtol=2e-5)
        np.testing.assert_allclose(batched.dev_accuracy[i], single.dev_accuracy)
        for got, want in zip(jax.tree.leaves(batched.params), jax.tree.leaves(single.params)):
            np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=1e-6)


def test_training_learns_moons(moons, moons_dev):
    config = train.Config((2, 16, 1), activation="relu", batch_size=32, epochs=300)
    result = train.fit(config, train.HParams(learning_rate=0.3), jax.random.key(0), moons, moons_dev)
    assert float(result.costs[-1]) < 0.5 * float(result.costs[0])
    assert float(result.dev_accuracy) > 0.85


def test_stochastic_gradient_descent_runs(moons):
    config = train.Config((2, 4, 1), batch_size=1, epochs=2)
    result = train.fit(config, train.HParams(learning_rate=0.05), jax.random.key(0), moons)
    assert bool(jnp.all(jnp.isfinite(result.costs))) and float(result.costs[1]) < float(result.costs[0])
    assert np.isnan(float(result.dev_accuracy))


def test_zeros_init_keeps_hidden_units_identical(moons):
    # Sigmoid hidden units so the weights do move (with ReLU they stay exactly 0): they move together.
    config = train.Config((2, 5, 3, 1), activation="sigmoid", init="zeros", epochs=50)
    result = train.fit(config, train.HParams(learning_rate=0.5), jax.random.key(0), moons)
    for layer in result.params:
        W, b = np.asarray(layer["W"]), np.asarray(layer["b"])
        assert np.any(W != 0)
        np.testing.assert_array_equal(W, np.broadcast_to(W[:, :1], W.shape))
        np.testing.assert_array_equal(b, b[0])
    W_out = np.asarray(result.params[-1]["W"])
    np.testing.assert_array_equal(W_out, np.broadcast_to(W_out[:1], W_out.shape))


def test_float64_in_float64_throughout(moons):
    with jax.enable_x64(True):
        X64 = data.Dataset(jnp.asarray(moons.X, jnp.float64), moons.y)
        config = train.Config((2, 3, 1), epochs=3, batch_size=40)
        result = train.fit(config, train.HParams(learning_rate=0.1), jax.random.key(0), X64, X64)
        assert result.costs.dtype == jnp.float64 and result.final_cost.dtype == jnp.float64
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(result.params))
        params64 = init.mlp(jax.random.key(1), (2, 3, 1), dtype=jnp.float64)
        from_given = train.fit(config, train.HParams(), jax.random.key(0), X64, init_params=params64)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(from_given.params))


def test_divergence_is_recorded_and_stays_inside_its_run(moons):
    config = train.Config((2, 8, 1), init="random", epochs=30)
    hps = train.broadcast_hparams(train.HParams(learning_rate=jnp.array([0.01, 1e30]), init_scale=10.0), 2)
    keys = jnp.stack([jax.random.key(0), jax.random.key(0)])
    both = jax.vmap(lambda hp, k: train.fit(config, hp, k, moons))(hps, keys)
    assert [bool(d) for d in both.diverged] == [False, True]
    epoch = int(both.diverged_epoch[1])
    assert 0 <= epoch < 30
    assert not np.isfinite(float(both.costs[1, epoch])) and np.all(np.isnan(both.costs[1, epoch + 1:]))
    assert all(bool(jnp.all(jnp.isfinite(leaf[1]))) for leaf in jax.tree.leaves(both.params))
    alone = train.fit(config, jax.tree.map(lambda x: x[0], hps), jax.random.key(0), moons)
    np.testing.assert_allclose(both.costs[0], alone.costs, rtol=1e-5)


def test_hparams_validated_before_compiling(moons):
    before = train.trace_count()
    for hp, match in [
        (train.HParams(learning_rate=-0.1), "HParams.learning_rate must be finite and > 0, got -0.1"),
        (train.HParams(keep_prob=0.0), "HParams.keep_prob must be finite and in \\(0, 1\\]"),
        (train.HParams(l2=float("nan")), "HParams.l2 must be finite"),
        (train.HParams(beta1=1.0), "HParams.beta1"),
    ]:
        with pytest.raises(ValueError, match=match):
            train.fit(SMALL, hp, jax.random.key(0), moons)
    with pytest.raises(ValueError, match="must be a scalar inside fit.*vmap"):
        train.fit(SMALL, train.HParams(learning_rate=jnp.array([0.1, 0.2])), jax.random.key(0), moons)
    with pytest.raises(ValueError, match="index \\[1\\]") as caught:
        train.validate_hparams(train.HParams(learning_rate=np.array([0.1, -1.0])))
    # The position and the reason, for a caller that maps positions to its own names (a sweep's configs).
    assert isinstance(caught.value, train.HParamsValueError) and caught.value.index == (1,)
    assert caught.value.reason == "HParams.learning_rate must be finite and > 0, got -1.0"
    with pytest.raises(train.HParamsValueError) as caught:
        train.validate_hparams(train.HParams(l2=np.array([[0.0, 0.1], [0.2, -3.0]])))
    assert caught.value.index == (1, 1) and str(caught.value).endswith("got -3.0 at index [1, 1]")
    with pytest.raises(train.HParamsValueError) as caught:
        train.validate_hparams(train.HParams(l2=-1.0))
    assert caught.value.index is None and str(caught.value) == caught.value.reason
    # the README's vmap recipe: broadcast_hparams sees the concrete values that fit, under vmap, cannot
    for hp, match in [
        (train.HParams(learning_rate=jnp.linspace(0.0, 1.0, 4)), r"HParams.learning_rate must be finite and > 0, got 0.0 at index \[0\]"),
        (train.HParams(keep_prob=0.0), r"HParams.keep_prob must be finite and in \(0, 1\]"),
        (train.HParams(beta1=1.0), "HParams.beta1"),
    ]:
        with pytest.raises(ValueError, match=match):
            train.broadcast_hparams(hp, 4)
    assert train.trace_count() == before


def test_input_errors(moons):
    hp = train.HParams()
    with pytest.raises(ValueError, match="train.X has 2 features but Config.layer_sizes\\[0\\] is 3"):
        train.fit(train.Config((3, 1)), hp, jax.random.key(0), moons)
    with pytest.raises(ValueError, match="class ids in 0..1"):
        train.fit(SMALL, hp, jax.random.key(0), data.Dataset(moons.X, moons.y + 1))
    with pytest.raises(ValueError, match="train.y must be \\(m,\\)"):
        train.fit(SMALL, hp, jax.random.key(0), data.Dataset(moons.X, moons.y[:5]))
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        train.fit(SMALL, hp, jnp.zeros(3, jnp.uint32), moons)
    with pytest.raises(TypeError, match="hp must be a deepopt.train.HParams"):
        train.fit(SMALL, {"learning_rate": 0.1}, jax.random.key(0), moons)
    with pytest.raises(ValueError, match="init_params has layer sizes \\(2, 3, 1\\)"):
        train.fit(SMALL, hp, jax.random.key(0), moons, init_params=init.mlp(jax.random.key(0), (2, 3, 1)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer_sizes=(2,)), "Config.layer_sizes needs at least"),
        (dict(layer_sizes=(2, 1), activation="gelu"), "Config.activation must be one of"),
        (dict(layer_sizes=(2, 1), init="orthogonal"), "Config.init scheme must be one of"),
        (dict(layer_sizes=(2, 1), optimizer="lion"), "Config.optimizer must be one of"),
        (dict(layer_sizes=(2, 1), schedule="cyclic"), "Config.schedule must be one of"),
        (dict(layer_sizes=(2, 1), batch_size=0), "Config.batch_size must be a positive int or None"),
        (dict(layer_sizes=(2, 1), epochs=0), "Config.epochs must be a positive int"),
        (dict(layer_sizes=(2, 1), early_stopping=0), "Config.early_stopping must be None, a positive int"),
        (dict(layer_sizes=(2, 1), early_stopping="best"), "Config.early_stopping must be None"),
        (dict(layer_sizes=(2, 1), cpu_kernels="no"), "Config.cpu_kernels must be a bool, got 'no'"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.Config(**kwargs)


def test_config_is_hashable_and_normalizes_lists():
    assert train.Config([2, 3, 1]) == train.Config((2, 3, 1))
    assert hash(train.Config([2, 3, 1])) == hash(train.Config((2, 3, 1)))


def test_early_stopping_needs_a_dev_set(moons):
    with pytest.raises(ValueError, match="early_stopping=5 needs a dev set"):
        train.fit(train.Config((2, 3, 1), early_stopping=5), train.HParams(), jax.random.key(0), moons)


def test_early_stopping_returns_the_best_epoch_and_stops_after_patience(moons, moons_dev):
    # A large learning rate on a wide net: dev accuracy peaks, then patience runs out.
    patience = 3
    config = train.Config((2, 32, 1), batch_size=16, epochs=200, early_stopping=patience)
    result = train.fit(config, train.HParams(learning_rate=0.5), jax.random.key(0), moons, moons_dev)
    best, stopped = int(result.best_epoch), int(result.stopped_epoch)
    assert 0 <= best and stopped == best + patience
    accuracies = np.asarray(result.dev_accuracies)
    assert float(result.dev_accuracy) == pytest.approx(float(np.nanmax(accuracies)))
    assert accuracies[best] == np.nanmax(accuracies) and np.all(np.isnan(accuracies[stopped + 1:]))
    assert np.all(np.isnan(result.costs[stopped + 1:])) and np.all(np.isfinite(result.costs[: stopped + 1]))
    # Same key, trained for exactly best + 1 epochs without early stopping: the same parameters.
    short = train.fit(train.Config((2, 32, 1), batch_size=16, epochs=best + 1), train.HParams(learning_rate=0.5),
                      jax.random.key(0), moons, moons_dev)
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(short.params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_no_early_stopping_reports_minus_one(small_result):
    assert int(small_result.best_epoch) == -1 and int(small_result.stopped_epoch) == -1
    assert np.all(np.isnan(small_result.dev_accuracies))
