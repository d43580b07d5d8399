"""gradcheck.check / directional: pass correct gradients, name the broken array, fail clearly."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from background import Finished, study

from deepopt import backprop, gradcheck

LAYER_SIZES = (4, 5, 3, 1)  # the course's 3-layer gradient-checking net
NUM_EXAMPLES = 6
L2 = 0.7
PATHS = ("params[0]['W']", "params[0]['b']", "params[1]['W']", "params[1]['b']", "params[2]['W']", "params[2]['b']")


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def problem() -> dict[str, Any]:
    """A small net, its cost (float64, fixed dropout masks, L2) and the hand-written gradient."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = tuple(
            {"W": jnp.asarray(rng.normal(size=(i, o)) / np.sqrt(i)), "b": jnp.asarray(0.1 * rng.normal(size=o))}
            for i, o in itertools.pairwise(LAYER_SIZES)
        )
        X = jnp.asarray(rng.normal(size=(NUM_EXAMPLES, LAYER_SIZES[0])))
        y = jnp.asarray(rng.integers(0, 2, size=NUM_EXAMPLES), jnp.int32)
        masks = tuple(jnp.asarray(rng.uniform(size=(NUM_EXAMPLES, w)) < 0.8, jnp.float64) for w in LAYER_SIZES[1:-1])
        options = {"activation": "tanh", "keep_prob": 0.8, "dropout_masks": masks, "l2": L2}

        def cost_fn(params: tuple) -> jax.Array:
            return backprop.cost(params, X, y, **options)

        _, grads = backprop.cost_and_gradients(params, X, y, **options)
        correct = gradcheck.check(cost_fn, params, grads)
    return {"params": params, "cost_fn": cost_fn, "grads": grads, "correct": correct}


def plant(grads: tuple, layer: int, name: str, factor: float) -> tuple:
    broken = [dict(g) for g in grads]
    broken[layer][name] = broken[layer][name] * factor
    return tuple(broken)


def test_check_passes_correct_gradients(problem: dict[str, Any]) -> None:
    report = problem["correct"]
    assert report.passed and report.difference < 1e-7
    assert report.method == "coordinates"
    assert report.num_checked == report.num_parameters == sum(i * o + o for i, o in itertools.pairwise(LAYER_SIZES))
    assert tuple(a.path for a in report.arrays) == PATHS
    assert report.failed_arrays == ()
    for array in report.arrays:
        assert array.passed and array.difference < 1e-7
        assert array.num_checked == int(np.prod(array.shape))
    assert "PASSED" in str(report) and "params[2]['b']" in str(report)


def test_check_accepts_a_gradient_function(problem: dict[str, Any]) -> None:
    report = gradcheck.check(problem["cost_fn"], problem["params"], jax.grad(problem["cost_fn"]))
    assert report.passed and report.difference < 1e-7


@pytest.mark.parametrize(
    "bugs",
    [
        [(1, "W", 2.0), (0, "b", 4.0)],  # the course's planted bug: dW2 doubled, db1 quadrupled
        [(2, "b", -1.0)],
        [(0, "W", 1.001)],  # a 0.1% error is still caught
    ],
)
def test_check_names_exactly_the_broken_arrays(problem: dict[str, Any], bugs: list[tuple[int, str, float]]) -> None:
    grads = problem["grads"]
    for layer, name, factor in bugs:
        grads = plant(grads, layer, name, factor)
    report = gradcheck.check(problem["cost_fn"], problem["params"], grads)
    broken = {f"params[{layer}]['{name}']" for layer, name, _ in bugs}
    assert not report.passed and report.difference > report.threshold
    assert set(report.failed_arrays) == broken
    for array in report.arrays:
        assert (array.difference > report.threshold) == (array.path in broken), array
    text = report.format()
    assert "FAILED" in text and all(path in text for path in broken)
    doubled = report.array("params[1]['W']")
    if "params[1]['W']" in broken:  # the worst coordinate's analytic value is twice the numeric one
        np.testing.assert_allclose(doubled.analytic, 2 * doubled.numeric, rtol=1e-6)
    json.dumps(report.as_dict(), allow_nan=False)


def test_random_subset_of_coordinates(problem: dict[str, Any]) -> None:
    report = gradcheck.check(
        problem["cost_fn"], problem["params"], problem["grads"], num_coordinates=12, key=jax.random.key(3)
    )
    assert report.passed and report.num_checked == 12 and sum(a.num_checked for a in report.arrays) == 12
    unchecked = [a for a in report.arrays if a.num_checked == 0]
    assert all(a.worst_index is None and a.analytic is None for a in unchecked)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        gradcheck.check(problem["cost_fn"], problem["params"], problem["grads"], num_coordinates=12)


def test_chunking_gives_the_same_numbers(problem: dict[str, Any]) -> None:
    report = gradcheck.check(problem["cost_fn"], problem["params"], problem["grads"], chunk_size=7)
    assert report.difference == pytest.approx(problem["correct"].difference, rel=1e-6)
    assert [a.worst_index for a in report.arrays] == [a.worst_index for a in problem["correct"].arrays]


def test_one_dimensional_linear_cost() -> None:
    """J(theta) = theta * x at theta = 4, x = 2: the derivative is x."""
    report = gradcheck.check(lambda theta: theta * 2.0, jnp.float64(4.0), jnp.float64(2.0))
    assert report.passed and report.difference < 1e-9
    (array,) = report.arrays
    assert array.path == "params" and array.worst_index == ()
    assert array.numeric == pytest.approx(2.0, rel=1e-9)


def test_directional_passes_correct_and_fails_planted_bug(problem: dict[str, Any]) -> None:
    key = jax.random.key(7)
    good = gradcheck.directional(problem["cost_fn"], problem["params"], problem["grads"], key=key, num_directions=3)
    assert good.passed and good.difference < 1e-7 and good.method == "directions"
    assert good.num_checked == 3 * len(PATHS) and all(a.num_checked == 3 for a in good.arrays)
    broken = plant(problem["grads"], 1, "W", 2.0)
    bad = gradcheck.directional(problem["cost_fn"], problem["params"], broken, key=key, num_directions=3)
    assert not bad.passed and bad.failed_arrays == ("params[1]['W']",)
    with pytest.raises(ValueError, match="num_directions must be a positive int"):
        gradcheck.directional(problem["cost_fn"], problem["params"], broken, key=key, num_directions=0)


def test_non_scalar_cost_is_refused(problem: dict[str, Any]) -> None:
    def per_layer_cost(params: tuple) -> jax.Array:
        return jnp.stack([jnp.sum(layer["W"] ** 2) for layer in params])

    with pytest.raises(ValueError, match=r"cost_fn must return a scalar, got an array of shape \(3,\)"):
        gradcheck.check(per_layer_cost, problem["params"], problem["grads"])
    with pytest.raises(ValueError, match="cost_fn must return a scalar"):
        gradcheck.directional(per_layer_cost, problem["params"], problem["grads"], key=jax.random.key(0))


def test_mismatched_gradient_pytrees_are_refused(problem: dict[str, Any]) -> None:
    cost_fn, params, grads = problem["cost_fn"], problem["params"], problem["grads"]
    with pytest.raises(ValueError, match="same pytree structure as params"):
        gradcheck.check(cost_fn, params, grads[:2])
    with pytest.raises(ValueError, match="same pytree structure as params"):
        gradcheck.check(cost_fn, params, [dict(g) for g in grads])  # a list is not a tuple
    transposed = plant(grads, 1, "W", 1.0)
    transposed[1]["W"] = transposed[1]["W"].T
    with pytest.raises(ValueError, match=r"grads\[1\]\['W'\] has shape \(3, 5\) but params\[1\]\['W'\] has shape \(5, 3\)"):
        gradcheck.check(cost_fn, params, transposed)


def test_float32_only_mode_is_refused(problem: dict[str, Any]) -> None:
    with jax.enable_x64(False):
        with pytest.raises(RuntimeError, match="JAX_ENABLE_X64=1"):
            gradcheck.check(problem["cost_fn"], problem["params"], problem["grads"])
        with pytest.raises(RuntimeError, match=r"jax.enable_x64\(True\)"):
            gradcheck.directional(problem["cost_fn"], problem["params"], problem["grads"], key=jax.random.key(0))


def test_float32_cost_is_refused(problem: dict[str, Any]) -> None:
    def float32_cost(params: tuple) -> jax.Array:
        return problem["cost_fn"](params).astype(jnp.float32)

    with pytest.raises(TypeError, match="needs the cost computed in float64"):
        gradcheck.check(float32_cost, problem["params"], problem["grads"])


def test_float32_params_are_checked_in_float64(problem: dict[str, Any]) -> None:
    """float32 leaves are cast to float64 (the cost of the rounded params is checked, exactly)."""
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), problem["params"])
    report = gradcheck.check(problem["cost_fn"], params32, jax.grad(problem["cost_fn"]))
    assert report.passed


# The study end to end, as a user runs it (a subprocess: each study defines its own absl flags), started in the
# background (background.py) so that it runs beside the tests above.
END_TO_END = study("gradient_checking", "--output_dir={dir}/out", "--l2=0.5", "--hidden=4,3")
BAD_KEEP_PROB = study("gradient_checking", "--output_dir={dir}/out", "--keep_prob=1.5")
BACKGROUND = {"end_to_end": [END_TO_END], "bad_keep_prob": [BAD_KEEP_PROB]}


@pytest.fixture
def end_to_end(background_runs) -> Finished:
    return background_runs.result(END_TO_END)


@pytest.fixture
def bad_keep_prob(background_runs) -> Finished:
    return background_runs.result(BAD_KEEP_PROB)


def test_gradient_checking_study_end_to_end(end_to_end: Finished) -> None:
    output_dir, completed = end_to_end.dir / "out", end_to_end.completed
    assert completed.returncode == 0, completed.stderr
    results = json.loads((output_dir / "results.json").read_text())
    cases = results["cases"]
    assert results["all_as_expected"] and results["settings"]["layer_sizes"] == [4, 4, 3, 1]
    assert results["settings"]["l2"] == 0.5
    one_d = cases["one_dimensional"]
    assert one_d["analytic"] == 2.0 and one_d["textbook_numeric"] == pytest.approx(2.0, rel=1e-8)
    assert one_d["textbook_difference"] < 1e-9 and one_d["passed"]
    for name in ("backprop", "jax_grad", "directional", "dropout_fixed_mask"):
        assert cases[name]["passed"] and cases[name]["difference"] < 1e-7, name
    for name in ("backprop_planted_bug", "directional_planted_bug"):
        assert not cases[name]["passed"]
        assert sorted(cases[name]["failed_arrays"]) == ["params[0]['b']", "params[1]['W']"], name
    fresh = cases["dropout_fresh_masks"]
    assert not fresh["passed"] and fresh["distinct_masks"] > fresh["evaluations"] // 2
    report = (output_dir / "report.md").read_text()
    assert "| backprop_planted_bug |" in report and "params[1]['W']" in report
    assert "params[0]['b'], params[1]['W']" in completed.stdout and "| dropout_fresh_masks |" in completed.stdout


def test_gradient_checking_study_bad_flag_is_one_line_exit_2(bad_keep_prob: Finished) -> None:
    completed = bad_keep_prob.completed
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "--keep_prob must be in (0, 1)" in completed.stderr


@pytest.mark.parametrize(
    "options, error, pattern",
    [
        ({"threshold": float("inf")}, ValueError, r"threshold must be a finite number > 0 \(the default is 2e-07\), got inf"),
        ({"threshold": float("nan")}, ValueError, r"threshold must be a finite number > 0 .*, got nan"),
        ({"threshold": 0.0}, ValueError, r"threshold must be a finite number > 0 .*, got 0\.0"),
        ({"threshold": "1e-7"}, TypeError, r"threshold must be a float, got '1e-7' of type str"),
        ({"epsilon": float("inf")}, ValueError, r"epsilon must be a finite number >= 1e-12 .*, got inf"),
        ({"epsilon": float("nan")}, ValueError, r"epsilon must be a finite number >= 1e-12 .*, got nan"),
        ({"epsilon": 1e-30}, ValueError, r"epsilon must be a finite number >= 1e-12 \(float64 rounding swamps smaller "
                                         r"steps; the default is 1e-07\), got 1e-30"),
        ({"epsilon": -1e-7}, ValueError, r"epsilon must be a finite number >= 1e-12 .*, got -1e-07"),
        ({"epsilon": True}, TypeError, r"epsilon must be a float, got True of type bool"),
    ],
)
def test_settings_that_cannot_give_a_verdict_are_refused(problem: dict[str, Any], options: dict, error: type,
                                                         pattern: str) -> None:
    """threshold=inf passed any gradient; epsilon=inf or 1e-30 gave a nan difference."""
    wrong = jax.tree.map(lambda a: a * 0 + 123.0, problem["grads"])
    with pytest.raises(error, match=pattern):
        gradcheck.check(problem["cost_fn"], problem["params"], wrong, **options)
    with pytest.raises(error, match=pattern):
        gradcheck.directional(problem["cost_fn"], problem["params"], wrong, key=jax.random.key(0), **options)


def test_smallest_epsilon_and_a_large_finite_threshold_still_work(problem: dict[str, Any]) -> None:
    report = gradcheck.check(problem["cost_fn"], problem["params"], problem["grads"], epsilon=1e-12, threshold=1.0)
    assert np.isfinite(report.difference) and report.passed and report.epsilon == 1e-12
