"""The open run: ``init_state`` -> ``advance`` -> ``evaluate`` (issue 13).

Where a run is cut never changes what it computes: ``advance(a)`` then ``advance(b)`` equals
``advance(a + b)`` bit for bit, in float32 and float64, one run or many under ``vmap``; and
``fit`` is that composition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, train

# m = 50 with mini-batches of 16: 16, 16, 16 and a padded last batch of 2.
CASES = {
    # Adam's step count, dropout, a decaying schedule, batch norm, a padded last mini-batch.
    "adam_dropout_bn_decay": (
        train.Config((2, 4, 1), optimizer="adam", schedule="inverse_time", batch_size=16, epochs=4, batchnorm=True),
        train.HParams(learning_rate=0.05, keep_prob=0.8, decay_rate=0.5, l2=0.01),
    ),
    # Early stopping with a patience that runs out across the cut.
    "early_stopping": (
        train.Config((2, 5, 1), optimizer="adam", batch_size=16, epochs=4, early_stopping=1),
        train.HParams(learning_rate=0.3),
    ),
    # A divergence inside the first segment: the run stays frozen in the second.
    "divergence": (
        train.Config((2, 5, 1), optimizer="gd", init="random", batch_size=16, epochs=4),
        train.HParams(learning_rate=1e200),  # inf in float32, an overflow within a step or two in float64
    ),
}
FIRST, SECOND = 2, 2


def splits(dtype: str) -> tuple[data.Dataset, data.Dataset]:
    train_set = data.make_moons(jax.random.key(0), 50, 0.3)
    dev_set = data.make_moons(jax.random.key(1), 30, 0.3)
    return (
        data.Dataset(jnp.asarray(train_set.X, dtype), train_set.y),
        data.Dataset(jnp.asarray(dev_set.X, dtype), dev_set.y),
    )


def assert_trees_equal(a, b) -> None:
    """Every leaf equal bit for bit (NaN equal to NaN), same dtypes; typed keys compared by their data."""
    a_leaves, b_leaves = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(a_leaves) == len(b_leaves)
    for x, y in zip(a_leaves, b_leaves):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def two_segments_and_one(config, hp, state, train_set, dev_set):
    """``advance(FIRST)`` then ``advance(SECOND)``, and ``advance(FIRST + SECOND)``, from ``state``."""
    middle, first_log = train.advance(config, hp, state, train_set, dev_set, epochs=FIRST, log_metrics=True)
    end, second_log = train.advance(config, hp, middle, train_set, dev_set, epochs=SECOND, log_metrics=True)
    whole, whole_log = train.advance(config, hp, state, train_set, dev_set, epochs=FIRST + SECOND, log_metrics=True)
    joined = jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=-1), first_log, second_log)
    return middle, end, joined, whole, whole_log


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_advance_a_then_b_equals_advance_a_plus_b(case, dtype):
    config, hp = CASES[case]
    with jax.enable_x64(dtype == "float64"):
        train_set, dev_set = splits(dtype)
        state = train.init_state(config, hp, jax.random.key(3), train_set)
        middle, end, joined, whole, whole_log = two_segments_and_one(config, hp, state, train_set, dev_set)
        assert_trees_equal(end, whole)
        assert_trees_equal(joined, whole_log)
        assert int(whole.epoch) == FIRST + SECOND and int(middle.epoch) == FIRST
        assert whole.params[0]["W"].dtype == jnp.dtype(dtype)
        if case == "adam_dropout_bn_decay":  # 4 mini-batches per epoch, all taken; Adam counts them
            assert int(whole.step) == 4 * (FIRST + SECOND) and int(whole.opt_state.count) == int(whole.step)
        if case == "early_stopping":
            assert bool(whole.stopped) and 0 <= int(whole.stopped_epoch) < FIRST + SECOND - 1
            assert np.isnan(np.asarray(whole_log.cost)[int(whole.stopped_epoch) + 1:]).all()
        if case == "divergence":
            assert bool(middle.diverged) and 0 <= int(middle.diverged_epoch) < FIRST
            assert_trees_equal(end.params, middle.params)  # frozen after the divergence


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_property_holds_under_vmap_and_each_run_is_its_own(case, dtype):
    config, hp = CASES[case]
    with jax.enable_x64(dtype == "float64"):
        train_set, dev_set = splits(dtype)
        rates = np.asarray([0.02, 0.3]) * hp.learning_rate  # float64: 0.3e200 is finite
        hps = train.broadcast_hparams(hp._replace(learning_rate=rates), 2)
        keys = jax.random.split(jax.random.key(4), 2)
        states = jax.vmap(lambda h, k: train.init_state(config, h, k, train_set))(hps, keys)
        step = jax.jit(
            jax.vmap(lambda h, s: train.advance(config, h, s, train_set, dev_set, epochs=FIRST)), static_argnums=()
        )
        middle, _ = step(hps, states)
        end, _ = step(hps, middle)
        whole, _ = jax.vmap(lambda h, s: train.advance(config, h, s, train_set, dev_set, epochs=FIRST + SECOND))(
            hps, states
        )
        assert_trees_equal(end, whole)
        # Run 1 of the batch is the same run on its own, to rounding: XLA orders a batched op's sums its own way (and
        # Adam amplifies the rounding noise in a batch-normalized layer's bias, whose true gradient is 0).
        hp_1 = hp._replace(learning_rate=float(rates[1]))
        alone = train.init_state(config, hp_1, keys[1], train_set)
        alone, _ = train.advance(  # the program of the test above (log_metrics on changes no state)
            config, hp_1, alone, train_set, dev_set, epochs=FIRST + SECOND, log_metrics=True
        )
        batched = jax.tree.map(lambda v: v[1], whole)
        assert jax.tree.structure(batched) == jax.tree.structure(alone)
        assert int(batched.step) == int(alone.step) and bool(batched.diverged) == bool(alone.diverged)
        if not bool(alone.diverged):
            mine, its = train.evaluate(config, batched, train_set), train.evaluate(config, alone, train_set)
            assert abs(float(mine["accuracy"]) - float(its["accuracy"])) <= 1 / 50 + 1e-6
            assert float(mine["cost"]) == pytest.approx(float(its["cost"]), rel=1e-2)  # a leak would be far larger


@pytest.mark.parametrize("case", list(CASES))
def test_fit_is_init_state_then_advance_then_evaluate(case):
    config, hp = CASES[case]
    train_set, dev_set = splits("float32")
    result = train.fit(config, hp, jax.random.key(5), train_set, dev_set)
    state = train.init_state(config, hp, jax.random.key(5), train_set)
    state, log = train.advance(config, hp, state, train_set, dev_set, epochs=config.epochs, log_metrics=True)
    on_train, on_dev = train.evaluate(config, state, train_set), train.evaluate(config, state, dev_set)
    params, model_state = train.result_params(config, state)
    assert_trees_equal(result.params, params)
    assert_trees_equal(result.bn_state, model_state)
    np.testing.assert_array_equal(result.costs, log.cost)
    np.testing.assert_array_equal(result.train_accuracy, on_train["accuracy"])
    np.testing.assert_array_equal(result.dev_accuracy, on_dev["accuracy"])
    l2 = float(jnp.sum(jnp.stack([jnp.sum(layer["W"] ** 2) for layer in params]))) * hp.l2 / (2 * 50)
    assert float(result.final_cost) == pytest.approx(float(on_train["cost"]) + l2, rel=1e-6, abs=1e-7)
    assert int(result.diverged_epoch) == int(state.diverged_epoch)
    if config.early_stopping is not None:
        np.testing.assert_array_equal(result.dev_accuracies, log.dev_accuracy)


def test_log_metrics_measure_the_state_after_each_epoch():
    config, hp = CASES["adam_dropout_bn_decay"]
    train_set, dev_set = splits("float32")
    state = train.init_state(config, hp, jax.random.key(6), train_set)
    state, log = train.advance(config, hp, state, train_set, dev_set, epochs=FIRST + SECOND, log_metrics=True)
    assert float(log.train_accuracy[-1]) == float(train.evaluate(config, state, train_set)["accuracy"])
    on_dev = train.evaluate(config, state, dev_set)
    assert float(log.dev_accuracy[-1]) == float(on_dev["accuracy"])
    assert float(log.dev_cost[-1]) == pytest.approx(float(on_dev["cost"]), rel=1e-6)
    _, lean = train.advance(config, hp, state, train_set, dev_set, epochs=FIRST + SECOND)
    assert np.isnan(np.asarray(lean.train_accuracy)).all() and np.isnan(np.asarray(lean.dev_accuracy)).all()


def test_a_state_of_another_config_is_refused_before_compiling():
    config, hp = CASES["divergence"]
    train_set, dev_set = splits("float32")
    state = train.init_state(config, hp, jax.random.key(7), train_set)
    wider = train.Config((2, 6, 1), optimizer="gd", batch_size=16, epochs=4)
    traced = train.trace_count()
    with pytest.raises(ValueError, match=r"state\.params\[0\]\['W'\] has shape \(2, 5\).*expected \(2, 6\)"):
        train.advance(wider, hp, state, train_set, epochs=1)
    with pytest.raises(ValueError, match="state does not belong to this Config"):
        train.advance(train.Config((2, 5, 1), optimizer="adam", batch_size=16, epochs=4), hp, state, train_set, epochs=1)
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        train.advance(config, hp, state, train_set, epochs=0)
    with pytest.raises(TypeError, match="state must be a deepopt.train.TrainState"):
        train.advance(config, hp, tuple(state), train_set, epochs=1)
    with pytest.raises(ValueError, match=r"state\.params\[0\]\['W'\] has shape \(2, 5\).*expected \(2, 6\)"):
        train.evaluate(wider, state, train_set)  # read with another net, its metrics would be garbage
    assert train.trace_count() == traced


def test_advance_with_new_hyperparameters_reuses_the_program():
    """A population-based search changes hp between segments: one compilation serves every value."""
    config, hp = CASES["early_stopping"]
    train_set, dev_set = splits("float32")
    state = train.init_state(config, hp, jax.random.key(8), train_set)
    state, _ = train.advance(config, hp, state, train_set, dev_set, epochs=1)
    traced = train.trace_count()
    for learning_rate in (0.1, 0.01):
        state, _ = train.advance(config, hp._replace(learning_rate=learning_rate), state, train_set, dev_set, epochs=1)
    assert train.trace_count() == traced and int(state.epoch) == 3
