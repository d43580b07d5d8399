"""Halting: a run stops at its last finite parameters, at the step where it went non-finite.

``fit`` and ``advance`` take an epoch's steps without a check-and-select after each one: a pass
marks a run's first non-finite step, and a run that has one passes the epoch again taking only
the steps before it. These tests hold that to an eager step-by-step reference and check that the
extra pass leaves the other runs of a vmapped batch exactly as they were.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data as data_lib
from deepopt import losses, model, optim, train

# 120 examples in batches of 16: 8 steps per epoch, the last of 8 examples. With a large L2
# penalty plain gradient descent multiplies W by (1 - lr·λ/n_b) per step, so it overflows after
# a number of steps that depends on the rate, mostly in the middle of an epoch.
CONFIG = train.Config((2, 8, 1), optimizer="gd", batch_size=16, epochs=6)
STEPS_PER_EPOCH = 8
L2 = 176.0
DIVERGING_RATES = (0.3, 0.7, 1.5)


def reference_run(hp: train.HParams, key: jax.Array, data: data_lib.Dataset) -> tuple[list, int, int]:
    """One step at a time, eagerly: stop before the first step whose cost or new parameters are non-finite."""
    params = train.init_state(CONFIG, hp, key, data).params
    _, shuffle_key, _ = train._run_keys(key)
    m = data.X.shape[0]
    steps = 0
    for epoch in range(CONFIG.epochs):
        index, mask = data_lib.padded_minibatch_indices(jax.random.fold_in(shuffle_key, epoch), m, CONFIG.batch_size)
        for b in range(index.shape[0]):
            X_b, y_b, mask_b = data.X[index[b]], data.y[index[b]], mask[b]

            def cost(p: list) -> jax.Array:
                per_example = losses.per_example_cross_entropy(model.forward(p, X_b), y_b)
                n_b = jnp.sum(mask_b).astype(per_example.dtype)
                return jnp.sum(jnp.where(mask_b, per_example, 0)) / n_b + losses.l2_penalty(p, hp.l2, n_b)

            value, grads = jax.value_and_grad(cost)(params)
            new = jax.tree.map(lambda p, g: p - hp.learning_rate * g, params, grads)
            if not (np.isfinite(float(value)) and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(new))):
                return params, steps, epoch
            params, steps = new, steps + 1
    return params, steps, -1


def advance_batch(moons: data_lib.Dataset, rates: tuple[float, ...], l2s: tuple[float, ...]) -> train.TrainState:
    hps = train.broadcast_hparams(train.HParams(learning_rate=jnp.array(rates), l2=jnp.array(l2s)), len(rates))
    keys = jnp.stack([jax.random.key(0)] * len(rates))

    def one(hp: train.HParams, key: jax.Array) -> train.TrainState:
        return train.advance(CONFIG, hp, train.init_state(CONFIG, hp, key, moons), moons, epochs=CONFIG.epochs)[0]

    return jax.jit(jax.vmap(one))(hps, keys)


@pytest.fixture(scope="module")
def batches(moons: data_lib.Dataset) -> dict[str, train.TrainState]:
    # the same shape twice (one compilation): two well-behaved runs, then two more or two diverging ones
    return {
        "with_divergence": advance_batch(moons, (0.05, 0.2, 0.7, 1.5), (0.0, 0.5, L2, L2)),
        "without": advance_batch(moons, (0.05, 0.2, 0.1, 0.3), (0.0, 0.5, 0.0, 0.0)),
    }


def assert_close_to_reference(state: train.TrainState, hp: train.HParams, moons: data_lib.Dataset) -> None:
    params, steps, epoch = reference_run(hp, jax.random.key(0), moons)
    assert epoch >= 0 and steps % STEPS_PER_EPOCH != 0  # a halt inside an epoch, not at its start
    assert int(state.step) == steps  # every step before the bad one taken, none after
    assert bool(state.diverged) and int(state.diverged_epoch) == epoch
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4)


def test_a_vmapped_run_halts_at_the_step_before_its_first_non_finite_one(batches, moons):
    state = batches["with_divergence"]
    for i, rate in ((2, 0.7), (3, 1.5)):
        assert_close_to_reference(jax.tree.map(lambda x: x[i], state), train.HParams(learning_rate=rate, l2=L2), moons)


def test_a_single_run_halts_at_the_step_before_its_first_non_finite_one(moons):
    hp = train.HParams(learning_rate=DIVERGING_RATES[0], l2=L2)
    state, log = train.advance(CONFIG, hp, train.init_state(CONFIG, hp, jax.random.key(0), moons), moons,
                               epochs=CONFIG.epochs)
    assert_close_to_reference(state, hp, moons)
    epoch = int(state.diverged_epoch)
    assert not np.isfinite(float(log.cost[epoch])) and np.all(np.isnan(np.asarray(log.cost[epoch + 1:])))


def test_the_extra_pass_leaves_the_other_runs_of_a_batch_exactly_as_they_were(batches):
    with_divergence, without = batches["with_divergence"], batches["without"]
    assert not bool(jnp.any(without.diverged)) and [bool(d) for d in with_divergence.diverged] == [False, False, True, True]
    for i in (0, 1):
        assert int(with_divergence.step[i]) == CONFIG.epochs * STEPS_PER_EPOCH
        for a, b in zip(jax.tree.leaves((with_divergence.params, with_divergence.opt_state)),
                        jax.tree.leaves((without.params, without.opt_state))):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b[i]))


def test_every_registered_optimizer_gives_its_update_in_two_halves():
    # fit's step reads the chosen state between the halves; update is the one after the other
    params = {"W": jnp.array([[0.5, -1.0]]), "b": jnp.array([0.1, 0.2])}
    grads = {"W": jnp.array([[0.3, 0.7]]), "b": jnp.array([-0.2, 0.4])}
    hp = train.HParams(learning_rate=0.1, weight_decay=0.01)
    for name in optim.names():
        optimizer = optim.get(name)
        assert optimizer.next_state is not None and optimizer.next_params is not None, name
        state = optimizer.init(params)
        for _ in range(2):
            new_params, new_state = optimizer.update(grads, state, params, hp)
            half_state = optimizer.next_state(grads, state, params, hp)
            half_params = optimizer.next_params(grads, half_state, params, hp)
            for a, b in zip(jax.tree.leaves((new_params, new_state)), jax.tree.leaves((half_params, half_state))):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
            params, state = new_params, new_state
