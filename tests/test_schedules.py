"""Learning-rate schedules: the course's values, optax where the forms coincide, traced hyperparameters.

optax counterparts (α0 learning_rate, k decay_factor, T time_interval, W warmup_epochs, D decay_epochs):
  exponential    optax.exponential_decay(α0, transition_steps=1, decay_rate=k)
  staircase      optax.exponential_decay(α0, transition_steps=T, decay_rate=k, staircase=True)
  cosine         optax.cosine_decay_schedule(α0, decay_steps=D, alpha=min_learning_rate / α0)
  warmup_cosine  optax.warmup_cosine_decay_schedule(α0 / (W + 1), α0, warmup_steps=W, decay_steps=D,
                                                    end_value=min_learning_rate)
inverse_time, scheduled and inverse_sqrt have no optax form; they are checked against the course's formulas.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepopt import schedules, train
from deepopt.train import HParams

NAMES = ("constant", "inverse_time", "scheduled", "exponential", "inverse_sqrt", "staircase", "cosine", "warmup_cosine")
EPOCHS = np.arange(0, 60, dtype=np.int32)


def _rates(name: str, hp: HParams, epochs: np.ndarray = EPOCHS) -> np.ndarray:
    """The schedule at every epoch, computed traced (vmapped over a traced int32 epoch)."""
    schedule = schedules.get(name)
    return np.asarray(jax.vmap(lambda e: schedule(hp, e, e * 7))(jnp.asarray(epochs, jnp.int32)))


def test_registry() -> None:
    assert set(schedules.names()) == set(NAMES)
    with pytest.raises(ValueError, match=r"schedule must be one of \[.*'warmup_cosine'.*\], got 'linear'"):
        schedules.get("linear")


# ----------------------------------------------------------------------------- the course's values


def test_inverse_time_course_value() -> None:
    """lr0 = 0.5, decay_rate = 1, epoch 2: 0.5 / (1 + 2) = 0.1666..."""
    rate = schedules.inverse_time(HParams(learning_rate=0.5, decay_rate=1.0), jnp.int32(2), jnp.int32(0))
    assert float(rate) == pytest.approx(0.5 / 3, rel=1e-6)


def test_scheduled_course_values() -> None:
    hp = HParams(learning_rate=0.5, decay_rate=1.0, time_interval=100.0)
    rates = _rates("scheduled", hp, np.array([0, 10, 99, 100, 150, 199, 200, 350]))
    expected = [0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.5 / 3, 0.5 / 4]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "name, hp, course",
    [
        ("constant", HParams(learning_rate=0.3), lambda e: 0.3),
        ("inverse_time", HParams(learning_rate=0.5, decay_rate=0.7), lambda e: 0.5 / (1 + 0.7 * e)),
        (
            "scheduled",
            HParams(learning_rate=0.5, decay_rate=2.0, time_interval=7.0),
            lambda e: 0.5 / (1 + 2.0 * math.floor(e / 7)),
        ),
        ("exponential", HParams(learning_rate=0.5, decay_factor=0.9), lambda e: 0.5 * 0.9**e),
        ("staircase", HParams(learning_rate=0.5, decay_factor=0.8, time_interval=5.0), lambda e: 0.5 * 0.8 ** (e // 5)),
        # the course's k / sqrt(epoch) * lr0 for epoch >= 1, held at epoch 1's value at epoch 0
        ("inverse_sqrt", HParams(learning_rate=0.5, decay_factor=0.6), lambda e: 0.6 * 0.5 / math.sqrt(max(e, 1))),
    ],
)
def test_course_formulas(name: str, hp: HParams, course: Callable[[int], float]) -> None:
    expected = np.array([course(int(e)) for e in EPOCHS])
    np.testing.assert_allclose(_rates(name, hp), expected, rtol=2e-6)


def test_inverse_sqrt_is_finite_at_epoch_zero() -> None:
    hp = HParams(learning_rate=0.5, decay_factor=0.6)
    rates = _rates("inverse_sqrt", hp, np.array([0, 1, 4]))
    np.testing.assert_allclose(rates, [0.3, 0.3, 0.15], rtol=1e-6)


def test_cosine_end_points() -> None:
    hp = HParams(learning_rate=0.4, min_learning_rate=0.1, decay_epochs=10.0)
    rates = _rates("cosine", hp, np.array([0, 5, 10, 11, 1000]))
    np.testing.assert_allclose(rates, [0.4, 0.25, 0.1, 0.1, 0.1], rtol=1e-6)


def test_warmup_cosine_shape() -> None:
    """Warm-up from lr0/(W+1) reaching lr0 at epoch W, half way down at W + (D-W)/2, the floor from D on."""
    hp = HParams(learning_rate=0.5, warmup_epochs=4.0, decay_epochs=14.0, min_learning_rate=0.1)
    rates = _rates("warmup_cosine", hp, np.array([0, 1, 3, 4, 9, 14, 30]))
    np.testing.assert_allclose(rates, [0.1, 0.2, 0.4, 0.5, 0.3, 0.1, 0.1], rtol=1e-6)


def test_warmup_cosine_without_warmup_is_cosine() -> None:
    hp = HParams(learning_rate=0.5, warmup_epochs=0.0, decay_epochs=40.0, min_learning_rate=0.01)
    np.testing.assert_allclose(_rates("warmup_cosine", hp), _rates("cosine", hp), rtol=1e-6)


def test_degenerate_spans_stay_finite() -> None:
    """decay_epochs <= warmup_epochs (or a traced decay_epochs of 0) gives the floor, never NaN."""
    hp = HParams(learning_rate=0.5, warmup_epochs=5.0, decay_epochs=3.0, min_learning_rate=0.05)
    np.testing.assert_allclose(
        _rates("warmup_cosine", hp, np.arange(8)), [0.5 * (e + 1) / 6 for e in range(5)] + [0.05] * 3, rtol=1e-6
    )
    cosine_at_zero = jax.jit(schedules.cosine)(
        HParams(learning_rate=0.5, decay_epochs=0.0, min_learning_rate=0.05), 3, 0
    )
    assert float(cosine_at_zero) == pytest.approx(0.05)


def test_decay_epochs_must_be_set() -> None:
    with pytest.raises(ValueError, match="decay_epochs"):
        schedules.cosine(HParams(learning_rate=0.5), jnp.int32(0), jnp.int32(0))


# ----------------------------------------------------------------------------- optax where the forms coincide


def _optax_counterpart(name: str, lr0: float, hp: HParams) -> Callable[[Any], Any]:
    if name == "constant":
        return optax.constant_schedule(lr0)
    if name == "exponential":
        return optax.exponential_decay(lr0, transition_steps=1, decay_rate=hp.decay_factor)
    if name == "staircase":
        return optax.exponential_decay(
            lr0, transition_steps=int(hp.time_interval), decay_rate=hp.decay_factor, staircase=True
        )
    if name == "cosine":
        return optax.cosine_decay_schedule(lr0, int(hp.decay_epochs), alpha=hp.min_learning_rate / lr0)
    if name == "warmup_cosine":
        warmup = int(hp.warmup_epochs)
        return optax.warmup_cosine_decay_schedule(
            lr0 / (warmup + 1), lr0, warmup, int(hp.decay_epochs), end_value=hp.min_learning_rate
        )
    raise AssertionError(name)


OPTAX_HPARAMS = HParams(
    learning_rate=0.3,
    decay_factor=0.93,
    time_interval=6.0,
    warmup_epochs=7.0,
    decay_epochs=45.0,
    min_learning_rate=0.02,
)


@pytest.mark.parametrize("name", ["constant", "exponential", "staircase", "cosine", "warmup_cosine"])
@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-6), (jnp.float64, 1e-12)])
def test_matches_optax(name: str, dtype: Any, rtol: float) -> None:
    with jax.enable_x64(dtype == jnp.float64):
        hp = jax.tree.map(lambda v: jnp.asarray(v, dtype), OPTAX_HPARAMS)
        ours = _rates(name, hp)
        assert ours.dtype == dtype
        reference = _optax_counterpart(name, float(OPTAX_HPARAMS.learning_rate), OPTAX_HPARAMS)
        expected = np.asarray(jax.vmap(reference)(jnp.asarray(EPOCHS, dtype)))  # float counts: optax keeps their dtype
        np.testing.assert_allclose(ours, expected, rtol=rtol, atol=rtol * 0.3)


# ----------------------------------------------------------------------------- traced, never recompiled


def test_schedules_are_traced_in_every_hparam() -> None:
    """One trace per schedule serves every value; vmapping over a batch of HParams gives each its own rate."""
    batch = HParams(  # the other fields broadcast to (2,) too
        learning_rate=jnp.array([0.5, 0.2]),
        decay_rate=jnp.array([1.0, 3.0]),
        time_interval=jnp.array([2.0, 3.0]),
        decay_factor=jnp.array([0.9, 0.5]),
        warmup_epochs=jnp.array([2.0, 6.0]),
        decay_epochs=jnp.array([10.0, 20.0]),
        min_learning_rate=jnp.array([0.0, 0.1]),
    )
    batch = train.broadcast_hparams(batch, 2)
    for name in NAMES:
        schedule, traces = schedules.get(name), []

        @jax.jit
        def rate(hp: HParams, epoch: jax.Array, schedule: Callable = schedule, traces: list = traces) -> jax.Array:
            traces.append(1)
            return schedule(hp, epoch, epoch)

        members = [jax.tree.map(lambda v, i=i: v[i], batch) for i in range(2)]
        singles = [float(rate(hp, jnp.int32(e))) for hp in members for e in (4, 5)]
        assert len(traces) == 1, name
        batched = jax.vmap(schedule, in_axes=(0, None, None))(batch, jnp.int32(4), jnp.int32(0))
        np.testing.assert_allclose(np.asarray(batched), [singles[0], singles[2]], rtol=1e-6)
        if name != "constant":
            assert singles[0] != singles[2], name  # the parameters reach the schedule


def test_fit_uses_the_schedule_without_recompiling() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 2)).astype(np.float32)
    train_set = (X, (X[:, 0] > 0).astype(np.int32))
    config = train.Config(layer_sizes=(2, 3, 1), optimizer="gd", schedule="inverse_time", epochs=20)
    key = jax.random.key(0)
    constant_rate = train.fit(config, HParams(learning_rate=0.5, decay_rate=0.0), key, train_set)
    count = train.trace_count()
    decayed = train.fit(config, HParams(learning_rate=0.5, decay_rate=1.0), key, train_set)
    assert train.trace_count() == count
    # same start, then a decayed rate moves the cost less than the constant one
    assert float(decayed.costs[0]) == float(constant_rate.costs[0])
    assert float(decayed.costs[-1]) > float(constant_rate.costs[-1])


@pytest.mark.parametrize(
    "field, value",
    [
        ("decay_rate", -1.0),
        ("time_interval", 0.0),
        ("decay_factor", 0.0),
        ("decay_factor", 1.5),
        ("warmup_epochs", -1.0),
        ("decay_epochs", 0.0),
        ("min_learning_rate", -0.1),
    ],
)
def test_fit_rejects_bad_schedule_hparams_before_compiling(field: str, value: float) -> None:
    config = train.Config(layer_sizes=(2, 3, 1), schedule="warmup_cosine", epochs=3)
    train_set = (np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1], np.int32))
    count = train.trace_count()
    with pytest.raises(ValueError, match=rf"HParams\.{field} must be"):
        train.fit(config, HParams(**{field: value}), jax.random.key(0), train_set)
    assert train.trace_count() == count


def test_a_cosine_floor_above_the_rate_is_refused_in_fit_broadcast_and_a_sweep() -> None:
    """min_learning_rate > learning_rate would make the cosine 'decay' climb: refused, naming both values."""
    from deepopt import sweep

    config = train.Config(layer_sizes=(2, 3, 1), schedule="cosine", epochs=3)
    train_set = (np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1], np.int32))
    count = train.trace_count()
    match = r"HParams.min_learning_rate must be <= learning_rate with schedule='cosine'.*got min_learning_rate=5.0 > learning_rate=0.01"
    with pytest.raises(ValueError, match=match):
        train.fit(config, HParams(learning_rate=0.01, min_learning_rate=5.0), jax.random.key(0), train_set)
    with pytest.raises(ValueError, match=r"min_learning_rate=0.5 > learning_rate=0.1 at index \[1\]"):
        train.validate_hparams_for_config(config, HParams(learning_rate=np.array([1.0, 0.1]), min_learning_rate=0.5))
    train.validate_hparams_for_config(dataclasses.replace(config, schedule="constant"), HParams(min_learning_rate=5.0))
    with pytest.raises(ValueError, match=r"config index 1\)"):
        sweep.run(config, {"learning_rate": sweep.grid([0.3, 0.01])}, train_set, train_set, key=jax.random.key(0),
                  num_configs=None, sampler="grid", hparams=HParams(min_learning_rate=0.1))
    assert train.trace_count() == count
