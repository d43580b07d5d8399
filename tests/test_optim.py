"""Optimizers: optax as the reference, the course's first steps by hand, dtypes, no recompilation, fit.

Mapping to optax (α learning_rate, β beta, β1 beta1, β2 beta2, ε epsilon, λ weight_decay):
  gd        optax.sgd(α)
  momentum  optax.sgd(α(1-β), momentum=β)          optax's trace u = βu + g is our v / (1-β)
  nesterov  optax.sgd(α(1-β), momentum=β, nesterov=True)   step α(1-β)(βu + g) = α(βv + (1-β)g)
  rmsprop   optax.rmsprop(α, decay=β2, eps=ε, eps_in_sqrt=False, initial_scale=0)
  adam      optax.adam(α, b1=β1, b2=β2, eps=ε)      (eps_root=0: ε outside the root)
  adamw     optax.adamw(α, b1=β1, b2=β2, eps=ε, weight_decay=λ)   (λ multiplied by α in both)
  adagrad   optax.adagrad(α, initial_accumulator_value=0, eps=ε)  (ε inside the root in both)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepopt import data, optim, train
from deepopt.train import HParams

NAMES = ("gd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "adagrad")
NUM_STEPS = 200
# dtype -> rtol; atol is rtol times the largest magnitude in the reference trajectory
TOLERANCE = {jnp.float32: 1e-6, jnp.float64: 1e-12}


def _hparams(dtype: Any) -> HParams:
    """Distinct values for every field, so a swapped beta / beta1 / beta2 shows; epsilon large enough that
    its placement (inside or outside the root) changes the result far beyond the tolerance."""
    value = lambda v: jnp.asarray(v, dtype)
    return HParams(
        learning_rate=value(0.03),
        beta=value(0.7),
        beta1=value(0.8),
        beta2=value(0.95),
        epsilon=value(1e-3),
        weight_decay=value(0.1),
    )


def _optax_counterpart(name: str, hp: HParams) -> optax.GradientTransformation:
    lr, beta, eps = hp.learning_rate, hp.beta, hp.epsilon
    return {
        "gd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr * (1 - beta), momentum=beta),
        "nesterov": lambda: optax.sgd(lr * (1 - beta), momentum=beta, nesterov=True),
        "rmsprop": lambda: optax.rmsprop(lr, decay=hp.beta2, eps=eps, eps_in_sqrt=False, initial_scale=0.0),
        "adam": lambda: optax.adam(lr, b1=hp.beta1, b2=hp.beta2, eps=eps),
        "adamw": lambda: optax.adamw(lr, b1=hp.beta1, b2=hp.beta2, eps=eps, weight_decay=hp.weight_decay),
        "adagrad": lambda: optax.adagrad(lr, initial_accumulator_value=0.0, eps=eps),
    }[name]()


def _problem(dtype: Any) -> tuple[Any, Any]:
    """Mixed-shape parameters (dict / tuple nest: a (3, 4) matrix, a (5,) vector, a scalar) and
    ``NUM_STEPS`` random gradients for them, stacked on a leading axis, with scales from 0.01 to 10
    (so epsilon matters on some steps) and some exact zeros. Drawn with NumPy: nothing to compile."""
    rng = np.random.default_rng(42)
    as_array = lambda x: jnp.asarray(np.asarray(x, dtype))
    params = {"W": as_array(rng.normal(size=(3, 4))), "rest": (as_array(rng.normal(size=(5,))), as_array(0.5))}
    scale = 10.0 ** rng.uniform(-2.0, 1.0, size=NUM_STEPS)
    keep = rng.uniform(size=(NUM_STEPS, 3, 4)) < 0.9
    grads = {
        "W": as_array(keep * rng.normal(size=(NUM_STEPS, 3, 4)) * scale[:, None, None]),
        "rest": (
            as_array(rng.normal(size=(NUM_STEPS, 5)) * scale[:, None]),
            as_array(rng.normal(size=NUM_STEPS) * scale),
        ),
    }
    return params, grads


def _trajectories(name: str, dtype: Any) -> tuple[Any, Any]:
    """Our parameters and optax's after every one of the ``NUM_STEPS`` steps (one compiled scan)."""
    hp = _hparams(dtype)
    ours, reference = optim.get(name), _optax_counterpart(name, hp)
    params, grads = _problem(dtype)

    @jax.jit
    def run(params: Any, grads: Any) -> tuple[Any, Any]:
        def step(carry: tuple, g: Any) -> tuple[tuple, tuple]:
            p, state, q, reference_state = carry
            p, state = ours.update(g, state, p, hp)
            updates, reference_state = reference.update(g, reference_state, q)
            q = optax.apply_updates(q, updates)
            return (p, state, q, reference_state), (p, q)

        carry = (params, ours.init(params), params, reference.init(params))
        return jax.lax.scan(step, carry, grads)[1]

    return run(params, grads)


def _assert_trees_close(actual: Any, expected: Any, rtol: float) -> None:
    scale = max(1.0, max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(expected)))
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", NAMES)
def test_matches_optax_float32(name: str) -> None:
    ours, reference = _trajectories(name, jnp.float32)
    _assert_trees_close(ours, reference, TOLERANCE[jnp.float32])


@pytest.mark.parametrize("name", NAMES)
def test_matches_optax_float64(name: str) -> None:
    with jax.enable_x64(True):
        ours, reference = _trajectories(name, jnp.float64)
        assert jax.tree.leaves(ours)[0].dtype == jnp.float64
        _assert_trees_close(ours, reference, TOLERANCE[jnp.float64])


def _first_step_by_hand(name: str, p: np.ndarray, g: np.ndarray, hp: HParams) -> np.ndarray:
    """The course's formulas for the first update from a zero state (t = 1), in float64 NumPy."""
    lr, beta, beta1, beta2, eps, wd = (float(x) for x in hp[:6])
    if name == "gd":
        return p - lr * g
    if name == "momentum":  # v = (1-β) g
        return p - lr * (1 - beta) * g
    if name == "nesterov":  # v = (1-β) g, step β v + (1-β) g
        return p - lr * (beta * (1 - beta) * g + (1 - beta) * g)
    if name == "rmsprop":  # s = (1-β2) g², ε outside the root
        return p - lr * g / (np.sqrt((1 - beta2) * g**2) + eps)
    if name in ("adam", "adamw"):  # m̂ = (1-β1) g / (1-β1¹) = g, ŝ = g², ε outside the root
        m_hat = (1 - beta1) * g / (1 - beta1)
        s_hat = (1 - beta2) * g**2 / (1 - beta2)
        decay = wd * p if name == "adamw" else 0.0
        return p - lr * (m_hat / (np.sqrt(s_hat) + eps) + decay)
    if name == "adagrad":  # s = g², ε inside the root
        return p - lr * g / np.sqrt(g**2 + eps)
    raise AssertionError(name)


@pytest.mark.parametrize("name", NAMES)
def test_first_step_is_the_course_formula(name: str) -> None:
    with jax.enable_x64(True):
        hp = HParams(learning_rate=0.1, beta=0.6, beta1=0.8, beta2=0.9, epsilon=0.05, weight_decay=0.3)
        p = np.array([1.0, -2.0, 0.5, 3.0])
        g = np.array([0.2, -1.5, 0.0, 4.0])
        optimizer = optim.get(name)
        new_p, _ = optimizer.update(jnp.asarray(g), optimizer.init(jnp.asarray(p)), jnp.asarray(p), hp)
        np.testing.assert_allclose(np.asarray(new_p), _first_step_by_hand(name, p, g, hp), rtol=1e-13, atol=1e-15)


def test_adam_counts_update_steps_from_one() -> None:
    params = jnp.ones((2,))
    state = optim.adam.init(params)
    assert state.count.dtype == jnp.int32 and int(state.count) == 0
    for expected in (1, 2, 3):
        params, state = optim.adam.update(jnp.array([0.5, -1.0]), state, params, HParams())
        assert int(state.count) == expected


@pytest.mark.parametrize("name", NAMES)
def test_state_dtypes_follow_params(name: str) -> None:
    """float64 params get float64 state; float32 params stay float32 even when hp and grads are float64;
    counters int32."""
    optimizer = optim.get(name)
    with jax.enable_x64(True):
        hp = HParams(learning_rate=jnp.float64(0.01), weight_decay=0.01)  # Python floats: float64 under x64
        for dtype in (jnp.float32, jnp.float64):
            params = {"W": jnp.ones((2, 3), dtype), "b": jnp.zeros((3,), dtype)}
            grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, jnp.float64), params)
            state = optimizer.init(params)
            assert isinstance(state, tuple) and hasattr(state, "_fields")  # a NamedTuple
            for _ in range(2):
                params, state = optimizer.update(grads, state, params, hp)
                assert all(p.dtype == dtype for p in jax.tree.leaves(params))
                for field, value in zip(state._fields, state):
                    expected = jnp.int32 if field == "count" else dtype
                    assert all(leaf.dtype == expected for leaf in jax.tree.leaves(value)), (field, dtype)


def test_grads_must_match_params() -> None:
    params = {"W": jnp.ones((2, 3)), "b": jnp.zeros((3,))}
    with pytest.raises(ValueError, match=r"grads\['b'\] has shape \(2,\)"):
        optim.adam.update({"W": jnp.ones((2, 3)), "b": jnp.zeros((2,))}, optim.adam.init(params), params, HParams())
    with pytest.raises(ValueError, match="tree structure"):
        optim.momentum.update({"W": jnp.ones((2, 3))}, optim.momentum.init(params), params, HParams())


def test_registry() -> None:
    assert set(optim.names()) == set(NAMES)
    for name in NAMES:
        assert isinstance(optim.get(name), optim.Optimizer)
    with pytest.raises(ValueError, match=r"optimizer must be one of \[.*'adam'.*'adagrad'.*\], got 'sgd'"):
        optim.get("sgd")


def test_update_does_not_retrace_for_new_hparams() -> None:
    """One trace per optimizer serves every hyperparameter value, and the values do reach the update."""
    params = {"W": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    grads = {"W": jnp.full((3, 2), 0.3), "b": jnp.full((2,), -0.2)}
    for name in NAMES:
        optimizer, traces = optim.get(name), []

        @jax.jit
        def update(hp: HParams, optimizer: optim.Optimizer = optimizer, traces: list = traces) -> Any:
            traces.append(1)
            return optimizer.update(grads, optimizer.init(params), params, hp)[0]

        cast = lambda hp: jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), hp)
        first = update(cast(HParams(learning_rate=0.1, beta=0.9, beta1=0.9, beta2=0.99, epsilon=1e-3)))
        second = update(cast(HParams(learning_rate=0.2, beta=0.5, beta1=0.5, beta2=0.9, epsilon=1e-2)))
        assert len(traces) == 1, name
        assert not np.allclose(first["W"], second["W"]), name


# ----------------------------------------------------------------------------- through fit


def _config(name: str) -> train.Config:
    """Tiny and full-batch: the quickest program to compile."""
    return train.Config(layer_sizes=(2, 3, 1), optimizer=name, epochs=200)


LEARNING_RATES = {"gd": 0.5, "momentum": 0.5, "nesterov": 0.5, "adagrad": 0.1}


@pytest.fixture(scope="module")
def blobs() -> data.Dataset:
    """Two noisy, nearly separable classes in 2-D (NumPy: nothing to compile)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 2)).astype(np.float32)
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.normal(size=64) > 0).astype(np.int32)
    return data.Dataset(X, y)


@pytest.mark.parametrize("name", NAMES)
def test_fit_lowers_the_cost(name: str, blobs: data.Dataset) -> None:
    hp = HParams(learning_rate=LEARNING_RATES.get(name, 0.05), weight_decay=0.01)
    result = train.fit(_config(name), hp, jax.random.key(1), blobs)
    costs = np.asarray(result.costs)
    assert not bool(result.diverged) and np.all(np.isfinite(costs))
    assert costs[-1] < 0.6 * costs[0], (name, costs[0], costs[-1])
    assert float(result.train_accuracy) > 0.8


def test_fit_does_not_recompile_for_new_learning_rates(blobs: data.Dataset) -> None:
    config = _config("adam")
    first = train.fit(config, HParams(learning_rate=0.05), jax.random.key(1), blobs)
    count = train.trace_count()
    second = train.fit(config, HParams(learning_rate=0.01), jax.random.key(1), blobs)
    third = train.fit(config, HParams(learning_rate=0.01, beta1=0.5, beta2=0.9, epsilon=1e-4), jax.random.key(1), blobs)
    assert train.trace_count() == count
    assert not np.allclose(first.costs, second.costs)
    assert not np.allclose(second.costs, third.costs)


@pytest.mark.parametrize(
    "field, value",
    [
        ("learning_rate", -1.0),
        ("learning_rate", 0.0),
        ("beta", 1.0),
        ("beta1", 1.0),
        ("beta2", -0.1),
        ("epsilon", 0.0),
        ("weight_decay", -0.01),
        ("beta1", float("nan")),
    ],
)
def test_fit_rejects_bad_hparams_before_compiling(field: str, value: float, blobs: data.Dataset) -> None:
    count = train.trace_count()
    with pytest.raises(ValueError, match=rf"HParams\.{field} must be"):
        train.fit(_config("adam"), HParams(**{field: value}), jax.random.key(0), blobs)
    assert train.trace_count() == count


def test_an_eager_update_or_schedule_with_bad_hyperparameters_is_refused() -> None:
    """Called directly (not through fit), concrete values are checked as fit checks them; traced ones are not."""
    from deepopt import init, schedules

    params = ({"W": jnp.ones((2, 2)), "b": jnp.zeros(2)},)
    grads = jax.tree.map(jnp.ones_like, params)
    adam = optim.get("adam")
    for hp, match in [(HParams(learning_rate=-1.0), r"HParams.learning_rate must be finite and > 0, got -1.0"),
                      (HParams(beta1=1.0), r"HParams.beta1 must be finite and in \[0, 1\)")]:
        with pytest.raises(ValueError, match=match):
            adam.update(grads, adam.init(params), params, hp)
    with pytest.raises(ValueError, match=r"HParams.beta must be finite and in \[0, 1\)"):
        optim.get("momentum").update(grads, optim.get("momentum").init(params), params, HParams(beta=1.5))
    integers = ({"W": jnp.ones((2, 2), jnp.int32), "b": jnp.zeros(2, jnp.int32)},)
    with pytest.raises(TypeError, match=r"params\[0\]\['W'\] must be a float array"):
        optim.get("gd").update(jax.tree.map(jnp.ones_like, integers), optim.get("gd").init(integers), integers, HParams())
    for name, hp in [("inverse_time", HParams(decay_rate=-0.5)), ("exponential", HParams(decay_factor=2.0))]:
        with pytest.raises(ValueError, match="HParams.decay_"):
            schedules.get(name)(hp, 3, 0)
    with pytest.raises(ValueError, match="scale must be finite and >= 0"):
        init.mlp(jax.random.key(0), (2, 3, 1), "random", float("nan"))
    # traced: nothing checked, the update runs as before
    step = jax.jit(lambda lr: adam.update(grads, adam.init(params), params, HParams(learning_rate=lr))[0])
    assert jax.tree.structure(step(0.1)) == jax.tree.structure(params)
