"""The gradient-checking study: the hand-written backward pass against two-sided differences.

Cases (all in float64, epsilon 1e-7, pass below 2e-7):

- ``one_dimensional``: J(theta) = theta * x at the course's x = 2, theta = 4 (derivative x).
- ``backprop``: ``deepopt.backprop`` on the course's 3-layer net (4-5-3-1, ReLU, sigmoid head).
- ``backprop_planted_bug``: the course's bug, dW2 doubled and db1 quadrupled (1-based layers, i.e.
  ``grads[1]['W'] * 2`` and ``grads[0]['b'] * 4``): the check fails and names those two arrays.
- ``jax_grad``: ``jax.grad`` of the same cost.
- ``directional`` / ``directional_planted_bug``: the cheap check along random unit directions.
- ``dropout_fixed_mask``: dropout with one fixed mask in every evaluation: passes.
- ``dropout_fresh_masks``: every cost evaluation draws its own masks (from a key derived from the
  bits of the parameter vector it is evaluated at, so theta, theta + eps e_i and theta - eps e_i
  all get different masks): fails, which is why gradient checking is done with dropout off.

    python -m experiments.gradient_checking [--hidden 5,3] [--num_examples 3] [--output_dir DIR]
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.flatten_util import ravel_pytree

from deepopt import backprop, gradcheck, model
from experiments import common

STUDY = "gradient_checking"
FLAGS = flags.FLAGS

common.define_study_flags()
common.define_hidden_flag(
    ["5", "3"], "Hidden layer widths (the course's net is 4-5-3-1).", non_empty=True,
    message="--hidden must be a non-empty comma-separated list of positive ints (the planted bug needs 2+ layers)",
)
flags.DEFINE_enum("activation", "relu", sorted(model.ACTIVATIONS), "Hidden activation.")
flags.DEFINE_integer("num_features", 4, "Features of the generated inputs (ignored with --data).", lower_bound=1)
flags.DEFINE_integer("num_examples", 3, "Examples in the batch the cost is computed on.", lower_bound=1)
flags.DEFINE_float("l2", 0.0, "L2 strength lambda of the cost.", lower_bound=0.0)
flags.DEFINE_float("keep_prob", 0.8, "Dropout keep probability of the two dropout cases.")
flags.DEFINE_float("epsilon", gradcheck.DEFAULT_EPSILON, "Perturbation size of the two-sided differences.")
flags.DEFINE_float("threshold", gradcheck.DEFAULT_THRESHOLD, "A check passes when its difference is below this.")
flags.DEFINE_integer("num_directions", 4, "Random directions per parameter array in the directional check.", lower_bound=1)
flags.register_validator("keep_prob", lambda value: 0 < value < 1, message="--keep_prob must be in (0, 1)")
flags.register_validator("epsilon", lambda value: gradcheck.MIN_EPSILON <= value < 1,
                         message=f"--epsilon must be in [{gradcheck.MIN_EPSILON:g}, 1)")
flags.register_validator("threshold", lambda value: value > 0, message="--threshold must be > 0")

THETA_1D, X_1D = 4.0, 2.0  # the course's one-dimensional example


def parameter_fingerprint(params: Any) -> jax.Array:
    """A uint32 hash of the exact bits of every parameter: any change of any coordinate changes it."""
    theta, _ = ravel_pytree(params)
    words = jax.lax.bitcast_convert_type(theta.astype(jnp.float64), jnp.uint32).reshape(-1)
    multipliers = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * (multipliers * jnp.uint32(2654435761)), dtype=jnp.uint32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def generated_batch(key: jax.Array, num_examples: int, num_features: int) -> tuple[jax.Array, jax.Array]:
    """X ~ N(0, 1) float64 ``(m, n)``, y ~ Bernoulli(1/2)."""
    x_key, y_key = jax.random.split(key)
    X = jax.random.normal(x_key, (num_examples, num_features), jnp.float64)
    return X, jax.random.bernoulli(y_key, 0.5, (num_examples,)).astype(jnp.int32)


def make_problem(key: jax.Array) -> tuple[tuple[int, ...], Any, jax.Array, jax.Array]:
    """``(layer_sizes, params, X, y)``: ``--num_examples`` rows of ``--data`` or generated, params ~ N(0, 1) like the course's."""
    data_key, params_key = jax.random.split(key)
    user_data = common.load_user_data(data_key)
    if user_data is None:
        X, y = generated_batch(data_key, FLAGS.num_examples, FLAGS.num_features)
        n_out = 1
    else:
        train_set, test_set = user_data
        if train_set.X.shape[0] < FLAGS.num_examples:
            raise common.StudyInputError(
                f"--num_examples={FLAGS.num_examples} but the training part of --data has {train_set.X.shape[0]} rows"
            )
        X = jnp.asarray(train_set.X[: FLAGS.num_examples], jnp.float64)
        y = jnp.asarray(train_set.y[: FLAGS.num_examples], jnp.int32)
        n_out = common.output_units(train_set, test_set)
    layer_sizes = (X.shape[1], *common.hidden_widths(), n_out)
    return layer_sizes, standard_normal_params(params_key, layer_sizes), X, y


@functools.partial(jax.jit, static_argnums=1)
def standard_normal_params(key: jax.Array, layer_sizes: tuple[int, ...]) -> Any:
    """W and b ~ N(0, 1) (the course's gradient-checking test case), float64."""
    keys = jax.random.split(key, 2 * (len(layer_sizes) - 1))
    return tuple(
        {"W": jax.random.normal(w_key, (fan_in, fan_out), jnp.float64),
         "b": jax.random.normal(b_key, (fan_out,), jnp.float64)}
        for w_key, b_key, fan_in, fan_out in zip(keys[::2], keys[1::2], layer_sizes[:-1], layer_sizes[1:])
    )


def distinct_masks_seen(cost_masks: Any, params: Any, epsilon: float) -> tuple[int, int]:
    """How many different dropout masks the 2n + 1 evaluations (theta, theta +- eps e_i) of the check draw."""

    @jax.jit
    def all_masks(params: Any) -> jax.Array:
        theta, unravel = ravel_pytree(params)
        eye = jnp.eye(theta.size, dtype=theta.dtype)
        steps = jnp.concatenate([jnp.zeros((1, theta.size), theta.dtype), epsilon * eye, -epsilon * eye])
        masks = jax.vmap(lambda step: cost_masks(unravel(theta + step)))(steps)
        return jnp.concatenate([m.reshape(steps.shape[0], -1) for m in masks], axis=1)

    flat = np.asarray(all_masks(params))
    return int(np.unique(flat, axis=0).shape[0]), int(flat.shape[0])


def case_row(name: str, gradient: str, expect_pass: bool, report: gradcheck.Report, **extra: Any) -> dict[str, Any]:
    return {
        "case": name,
        "gradient": gradient,
        "expected": "pass" if expect_pass else "fail",
        "passed": report.passed,
        "as_expected": report.passed == expect_pass,
        "difference": report.difference,
        "failed_arrays": list(report.failed_arrays),
        "report": report.as_dict(),
        **extra,
    }


def run_cases(key: jax.Array) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Every case of the study; returns ``(settings, rows by case, printed reports)``."""
    settings_key, directions_key, dropout_key = jax.random.split(key, 3)
    options = {"epsilon": FLAGS.epsilon, "threshold": FLAGS.threshold}
    rows: dict[str, dict[str, Any]] = {}
    printed: dict[str, str] = {}

    # 1-D: J(theta) = theta x; the textbook formula and the library's check.
    theta, x, eps = THETA_1D, X_1D, FLAGS.epsilon
    textbook_numeric = ((theta + eps) * x - (theta - eps) * x) / (2 * eps)
    textbook_difference = abs(x - textbook_numeric) / (abs(x) + abs(textbook_numeric))
    report = gradcheck.check(lambda t: t * x, jnp.float64(theta), jnp.float64(x), **options)
    rows["one_dimensional"] = case_row(
        "one_dimensional", "dJ/dtheta = x", True, report,
        theta=theta, x=x, analytic=x, textbook_numeric=textbook_numeric, textbook_difference=textbook_difference,
    )

    layer_sizes, params, X, y = make_problem(settings_key)
    net = {"activation": FLAGS.activation, "l2": FLAGS.l2}

    def cost_fn(params: Any) -> jax.Array:
        return backprop.cost(params, X, y, **net)

    cost_and_gradients = jax.jit(backprop.cost_and_gradients, static_argnames="activation")
    _, grads = cost_and_gradients(params, X, y, **net)
    buggy = [dict(layer) for layer in grads]
    buggy[1]["W"] = buggy[1]["W"] * 2  # dW2, 1-based
    buggy[0]["b"] = buggy[0]["b"] * 4  # db1, 1-based
    buggy = tuple(buggy)
    for name, gradient, expect_pass, report in [
        ("backprop", "backprop.backward", True, gradcheck.check(cost_fn, params, grads, **options)),
        ("backprop_planted_bug", "backward, dW2 x2, db1 x4", False, gradcheck.check(cost_fn, params, buggy, **options)),
        ("jax_grad", "jax.grad", True, gradcheck.check(cost_fn, params, jax.grad(cost_fn), **options)),
        ("directional", "backprop.backward", True, gradcheck.directional(
            cost_fn, params, grads, key=directions_key, num_directions=FLAGS.num_directions, **options)),
        ("directional_planted_bug", "backward, dW2 x2, db1 x4", False, gradcheck.directional(
            cost_fn, params, buggy, key=directions_key, num_directions=FLAGS.num_directions, **options)),
    ]:
        rows[name] = case_row(name, gradient, expect_pass, report)
        printed[name] = str(report)

    # Dropout: one fixed mask for every evaluation, then a fresh mask in every evaluation.
    m, keep_prob = X.shape[0], FLAGS.keep_prob
    dropout = dict(net, keep_prob=keep_prob)
    fixed_masks = jax.jit(backprop.make_dropout_masks, static_argnums=2)(dropout_key, params, m, keep_prob)

    def fixed_mask_cost(params: Any) -> jax.Array:
        return backprop.cost(params, X, y, dropout_masks=fixed_masks, **dropout)

    _, fixed_grads = cost_and_gradients(params, X, y, dropout_masks=fixed_masks, **dropout)
    report = gradcheck.check(fixed_mask_cost, params, fixed_grads, **options)
    rows["dropout_fixed_mask"] = case_row("dropout_fixed_mask", "backward, same mask", True, report)
    printed["dropout_fixed_mask"] = str(report)

    def fresh_masks(params: Any) -> tuple[jax.Array, ...]:
        key = jax.random.fold_in(dropout_key, parameter_fingerprint(params))
        return backprop.make_dropout_masks(key, params, m, keep_prob)

    def fresh_mask_cost(params: Any) -> jax.Array:
        return backprop.cost(params, X, y, dropout_masks=fresh_masks(params), **dropout)

    # the analytic side is the gradient a training step takes: the masks drawn at theta itself
    _, fresh_grads = cost_and_gradients(params, X, y, dropout_masks=jax.jit(fresh_masks)(params), **dropout)
    report = gradcheck.check(fresh_mask_cost, params, fresh_grads, **options)
    distinct, evaluations = distinct_masks_seen(fresh_masks, params, FLAGS.epsilon)
    rows["dropout_fresh_masks"] = case_row(
        "dropout_fresh_masks", "backward, fresh masks", False, report,
        distinct_masks=distinct, evaluations=evaluations,
    )
    printed["dropout_fresh_masks"] = str(report)
    settings = {
        "layer_sizes": layer_sizes, "activation": FLAGS.activation, "num_examples": int(m), "l2": FLAGS.l2,
        "keep_prob": keep_prob, "epsilon": FLAGS.epsilon, "threshold": FLAGS.threshold,
        "num_directions": FLAGS.num_directions, "seed": FLAGS.seed, "data": common.data_source(),
        "num_parameters": int(ravel_pytree(params)[0].size),
    }
    return settings, rows, printed


def format_difference(value: float) -> str:
    return f"{value:.3e}" if np.isfinite(value) else str(value)


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    start = time.perf_counter()
    with jax.enable_x64(True):  # gradient checking needs float64; only inside this study
        settings, rows, printed = run_cases(jax.random.key(FLAGS.seed))
    seconds = time.perf_counter() - start
    print(f"{STUDY}: net {'-'.join(map(str, settings['layer_sizes']))} ({settings['activation']}), "
          f"{settings['num_examples']} examples, l2 {settings['l2']}, epsilon {settings['epsilon']:g}, "
          f"threshold {settings['threshold']:g}, data: {settings['data']}")
    one_d = rows["one_dimensional"]
    print(f"\n1-D J(theta) = theta x at theta = {one_d['theta']:g}, x = {one_d['x']:g}: analytic {one_d['analytic']:g}, "
          f"textbook numeric {one_d['textbook_numeric']!r}, difference {one_d['textbook_difference']:.3e}; "
          f"library check difference {one_d['difference']:.3e}")
    for name in ("backprop_planted_bug", "dropout_fresh_masks"):
        print(f"\n[{name}]\n{printed[name]}")
    fresh = rows["dropout_fresh_masks"]
    print(f"\ndropout_fresh_masks: the check's {fresh['evaluations']} evaluations drew {fresh['distinct_masks']} distinct masks")

    headers = ["case", "gradient", "expected", "difference", "result", "wrong arrays", "as expected"]
    table_rows = [
        [row["case"], row["gradient"], row["expected"], format_difference(row["difference"]),
         "pass" if row["passed"] else "FAIL", ", ".join(row["failed_arrays"]) or "-",
         "yes" if row["as_expected"] else "NO"]
        for row in rows.values()
    ]
    table = common.markdown_table(headers, table_rows)
    print("\n" + table)
    all_as_expected = all(row["as_expected"] for row in rows.values())
    bug = rows["backprop_planted_bug"]
    array_tables = []
    for name in ("backprop", "backprop_planted_bug", "dropout_fixed_mask", "dropout_fresh_masks"):
        arrays = rows[name]["report"]["arrays"]
        array_tables += [
            f"### {name}", "",
            common.markdown_table(
                ["array", "shape", "difference", "status", "worst at", "analytic", "numeric"],
                [[f"`{a['path']}`", tuple(a["shape"]), format_difference(a["difference"]),
                  "ok" if a["passed"] else "**WRONG**", a["worst_index"],
                  "-" if a["analytic"] is None else f"{a['analytic']:.10g}",
                  "-" if a["numeric"] is None else f"{a['numeric']:.10g}"] for a in arrays],
            ), "",
        ]
    head = "sigmoid" if settings["layer_sizes"][-1] == 1 else "softmax"
    setting_line = (
        f"Net {'-'.join(map(str, settings['layer_sizes']))} ({settings['activation']} hidden, {head} output), "
        f"{settings['num_examples']} examples, L2 lambda {settings['l2']}, {settings['num_parameters']} parameters. "
        f"Two-sided differences (J(θ+ε) − J(θ−ε)) / 2ε in float64, ε = {settings['epsilon']:g}; "
        f"difference = ‖g − g_approx‖ / (‖g‖ + ‖g_approx‖), passing below {settings['threshold']:g}. "
        f"Data: {settings['data']}."
    )
    one_d_line = (
        f"- One dimension, J(θ) = θx at θ = {one_d['theta']:g}, x = {one_d['x']:g}: the derivative is "
        f"x = {one_d['analytic']:g}; the textbook formula gives {one_d['textbook_numeric']!r} (difference "
        f"{one_d['textbook_difference']:.3e}, float64 rounding of θ ± ε); the library divides by the step "
        f"actually taken and gets difference {one_d['difference']:.3e}."
    )
    named = ", ".join(f"`{path}`" for path in bug["failed_arrays"]) or "nothing"
    bug_line = (
        f"- The planted bug (dW2 doubled, db1 quadrupled) {'fails' if not bug['passed'] else 'PASSES (unexpected)'} "
        f"with difference {bug['difference']:.3e}; the per-array differences name {named}."
    )
    fixed_verdict = "passes" if rows["dropout_fixed_mask"]["passed"] else "FAILS (unexpected)"
    dropout_line = (
        f"- With dropout drawing a fresh mask in every evaluation ({fresh['distinct_masks']} distinct masks in "
        f"{fresh['evaluations']} evaluations) the check {'fails' if not fresh['passed'] else 'passes (unexpected)'} "
        f"(difference {format_difference(fresh['difference'])}): the numerical derivative compares costs of "
        f"different networks. With one fixed mask it {fixed_verdict}: check with dropout off or a fixed mask."
    )
    report = [
        "# Gradient checking study", "",
        setting_line, "",
        table, "",
        "## Reading", "",
        one_d_line,
        bug_line,
        dropout_line,
        f"- Every case behaved as expected: {'yes' if all_as_expected else 'NO'}.", "",
        "## Per-array differences", "",
        *array_tables,
    ]
    common.finish_study(output_dir, {
        "study": STUDY, "settings": settings, "cases": rows, "all_as_expected": all_as_expected,
        "seconds": seconds,
    }, report, [], note=f" ({seconds:.1f} s)")


if __name__ == "__main__":
    common.run_study(main)
