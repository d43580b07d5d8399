"""The vanishing / exploding gradients study: deep plain nets at initialization, then a short training run.

A net of ``--depth`` hidden layers of ``--width`` units (default 30 × 64) on moons (or your data),
for every activation (tanh, ReLU, sigmoid) and initialization (zeros, random ×0.01, random ×1,
Xavier, He). At initialization ``diagnostics.layer_stats`` measures, per layer, the norm of the
cost's gradient w.r.t. ``W``, the activations' size and the dead ReLUs, and
``diagnostics.gradient_flow`` names the flow (level / vanishing / exploding / zero / overflow)
from the relative gradient ``‖∂J/∂W_l‖ / ‖W_l‖``. Then every net trains ``--epochs`` epochs of
full-batch gradient descent from exactly those parameters (``fit(..., init_params=...)``; the
five initializations of one activation train together in one vmapped call, one compilation).

    python -m experiments.vanishing_gradients [--depth 30] [--width 64] [--epochs 300] [--output_dir DIR]
"""

from __future__ import annotations

import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import diagnostics, model, optim, train
from deepopt import init as init_lib
from experiments import common

STUDY = "vanishing_gradients"
FLAGS = flags.FLAGS

common.define_study_flags()
flags.DEFINE_integer("depth", 30, "Hidden layers.", lower_bound=1)
flags.DEFINE_integer("width", 64, "Units per hidden layer.", lower_bound=1)
flags.DEFINE_list("activations", ["tanh", "relu", "sigmoid"], "Hidden activations to compare.")
flags.DEFINE_list("inits", ["zeros", "random:0.01", "random:1", "xavier", "he"],
                  "Initializations, scheme[:scale] (random's scale is its std; for other schemes a multiplier).")
flags.DEFINE_integer("epochs", 300, "Full-batch training epochs after the measurement.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.05, "Learning rate of the training run.")
flags.DEFINE_string("optimizer", "gd", "Optimizer of the training run.")
flags.DEFINE_float("vanishing_below", 1e-3, "Relative gradient ‖∂J/∂W‖/‖W‖ below which a layer's gradient counts as vanished.")
flags.DEFINE_float("exploding_above", 10.0, "Relative gradient above which a layer's gradient counts as exploding.")
flags.DEFINE_integer("n_train", 200, "Generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_test", 200, "Generated test examples.", lower_bound=2)
flags.DEFINE_float("noise", 0.2, "Noise of the generated moons.", lower_bound=0.0)


class InitSpec(NamedTuple):
    """One initialization: ``init.mlp(key, sizes, scheme, scale)``."""

    label: str
    scheme: str
    scale: float | None


def parse_init(text: str) -> InitSpec:
    """``"random:0.01"`` -> ``InitSpec("random ×0.01", "random", 0.01)``; ``"he"`` -> ``InitSpec("he", "he", None)``."""
    scheme, _, scale = text.partition(":")
    init_lib.check_scheme(scheme)
    if not scale:
        return InitSpec(scheme, scheme, None)
    value = float(scale)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    return InitSpec(f"{scheme} ×{value:g}", scheme, value)


def _valid_inits(texts: list[str]) -> bool:
    try:
        labels = [parse_init(text).label for text in texts]
    except ValueError:
        return False
    return bool(labels) and len(set(labels)) == len(labels)


flags.register_validator(
    "inits", _valid_inits,
    message=f"--inits must be distinct scheme[:scale] entries, scheme one of {list(init_lib.SCHEMES)}, scale >= 0",
)
flags.register_validator(
    "activations",
    lambda names: bool(names) and all(name in model.ACTIVATIONS for name in names) and len(set(names)) == len(names),
    message=f"--activations must be distinct names from {list(model.ACTIVATIONS)}",
)
flags.register_validator("optimizer", lambda name: name in optim.names(), message=f"--optimizer must be one of {optim.names()}")
flags.register_validator("learning_rate", lambda value: value > 0, message="--learning_rate must be > 0")
flags.register_multi_flags_validator(
    ["vanishing_below", "exploding_above"],
    lambda values: 0 < values["vanishing_below"] < values["exploding_above"],
    message="need 0 < --vanishing_below < --exploding_above",
)


def stacked_params(key: jax.Array, layer_sizes: tuple[int, ...], inits: list[InitSpec]) -> Any:
    """The initial parameters of every initialization from the same key, stacked along a leading axis."""
    params = [init_lib.mlp(key, layer_sizes, spec.scheme, spec.scale) for spec in inits]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)


def plottable(values: np.ndarray) -> np.ndarray:
    """Zeros and non-finite values to NaN, so that a log-scale plot leaves them out instead of failing."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def measure_and_train(
    activation: str, params: Any, inits: list[InitSpec], layer_sizes: tuple[int, ...], key: jax.Array,
    train_set: data_lib.Dataset, test_set: data_lib.Dataset,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Layer statistics at init and a short training run of every initialization of one activation."""
    X, y = jnp.asarray(train_set.X), jnp.asarray(train_set.y)
    stats = jax.jit(jax.vmap(lambda p: diagnostics.layer_stats(p, X, y, activation=activation)))(params)
    config = train.Config(layer_sizes, activation=activation, optimizer=FLAGS.optimizer, epochs=FLAGS.epochs)
    hp = train.HParams(learning_rate=FLAGS.learning_rate)
    run = jax.jit(jax.vmap(lambda p: train.fit(config, hp, key, train_set, test_set, init_params=p)))
    start = time.perf_counter()
    result = jax.block_until_ready(run(params))
    seconds = time.perf_counter() - start
    rows, gradient_curves, cost_curves = {}, {}, {}
    for i, spec in enumerate(inits):
        one = diagnostics.LayerStats(*(np.asarray(field[i], np.float64) for field in stats))
        flow = diagnostics.gradient_flow(one, vanishing_below=FLAGS.vanishing_below, exploding_above=FLAGS.exploding_above)
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = one.grad_norm / one.weight_norm
        relative = relative[one.weight_norm > 0]
        costs = np.asarray(result.costs[i], np.float64)
        rows[spec.label] = {
            "activation": activation, "init": spec.label, "scheme": spec.scheme, "scale": spec.scale,
            "gradient_flow": flow,
            "grad_norm_first_layer": float(one.grad_norm[0]), "grad_norm_output_layer": float(one.grad_norm[-1]),
            "relative_gradient_min": float(np.min(relative)) if relative.size else None,
            "relative_gradient_max": float(np.max(relative)) if relative.size else None,
            "activation_rms_last_hidden": float(one.activation_rms[-2]) if len(layer_sizes) > 2 else None,
            "dead_fraction_mean": float(np.mean(one.dead_fraction[:-1])) if len(layer_sizes) > 2 else None,
            "layer_stats": one._asdict(),
            "first_cost": float(costs[0]), "final_cost": float(result.final_cost[i]),
            "train_accuracy": float(result.train_accuracy[i]), "test_accuracy": float(result.dev_accuracy[i]),
            "diverged": bool(result.diverged[i]), "diverged_epoch": int(result.diverged_epoch[i]),
        }
        suffix = " (all 0)" if not np.any(one.grad_norm) else ""
        gradient_curves[f"{spec.label}: {flow}{suffix}"] = plottable(one.grad_norm)
        cost_curves[f"{spec.label}: train {100 * rows[spec.label]['train_accuracy']:.0f}%"] = plottable(costs)
    print(f"  {activation}: measured and trained {len(inits)} initializations ({seconds:.1f} s with compilation)",
          end="")
    return rows, gradient_curves, cost_curves


def reading(activation: str, rows: dict[str, dict[str, Any]]) -> str:
    """One line per activation, from the measured numbers: which initializations keep the gradient level, which learn."""
    by_flow: dict[str, list[str]] = {}
    for label, row in rows.items():
        by_flow.setdefault(row["gradient_flow"], []).append(label)
    flows = "; ".join(f"{flow}: {', '.join(labels)}" for flow, labels in sorted(by_flow.items()))
    ranked = sorted(rows.items(), key=lambda item: -item[1]["train_accuracy"])
    learned = ", ".join(f"{label} {100 * row['train_accuracy']:.0f}%" for label, row in ranked)
    return f"**{activation}**: gradient at init — {flows}. Train accuracy after {FLAGS.epochs} epochs: {learned}."


def format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    data_key, test_key, init_key, fit_key = jax.random.split(jax.random.key(FLAGS.seed), 4)
    train_set, test_set = common.study_data(
        data_key, test_key, lambda key, n: data_lib.make_moons(key, n, FLAGS.noise), FLAGS.n_train, FLAGS.n_test
    )
    layer_sizes = common.layer_sizes_for([FLAGS.width] * FLAGS.depth, train_set, test_set)
    inits = [parse_init(text) for text in FLAGS.inits]
    params = stacked_params(init_key, layer_sizes, inits)
    print(f"{STUDY}: {FLAGS.depth} hidden layers × {FLAGS.width} units, inits {[spec.label for spec in inits]}, "
          f"then {FLAGS.epochs} epochs of full-batch {FLAGS.optimizer} at learning rate {FLAGS.learning_rate:g}, "
          f"data: {common.data_source()}")

    results: dict[str, dict[str, dict[str, Any]]] = {}
    plots = []
    clock = common.StudyClock(len(FLAGS.activations))
    for activation in FLAGS.activations:
        rows, gradient_curves, cost_curves = measure_and_train(
            activation, params, inits, layer_sizes, fit_key, train_set, test_set
        )
        print(clock.done())
        results[activation] = rows
        if common.plots_available():
            with warnings.catch_warnings():  # NaN (left-out) points make nanmean warn
                warnings.simplefilter("ignore", RuntimeWarning)
                common.plot_curves(output_dir / f"gradient_norms_{activation}.png", gradient_curves,
                                   xlabel="layer (0 = first hidden layer, last = output layer)",
                                   ylabel="‖∂J/∂W‖ at init",
                                   title=f"{activation}: gradient norm per layer at init (0 and inf not drawn)")
                common.plot_curves(output_dir / f"training_cost_{activation}.png", cost_curves, xlabel="epoch",
                                   ylabel="cost", title=f"{activation}: training cost from those initializations")
            plots += [f"gradient_norms_{activation}.png", f"training_cost_{activation}.png"]

    table = common.markdown_table(
        ["activation", "init", "gradient flow", "‖∂J/∂W₁‖", "‖∂J/∂W_out‖", "min ‖∂J/∂W‖/‖W‖", "max ‖∂J/∂W‖/‖W‖",
         "rms ‖a‖ last hidden", "dead units", "cost first → last", "train acc", "test acc"],
        [[row["activation"], label, row["gradient_flow"], format_number(row["grad_norm_first_layer"]),
          format_number(row["grad_norm_output_layer"]), format_number(row["relative_gradient_min"]),
          format_number(row["relative_gradient_max"]), format_number(row["activation_rms_last_hidden"]),
          "-" if row["dead_fraction_mean"] is None else f"{100 * row['dead_fraction_mean']:.0f}%",
          f"{row['first_cost']:.3g} → {row['final_cost']:.3g}" + (" (diverged)" if row["diverged"] else ""),
          f"{100 * row['train_accuracy']:.0f}%", f"{100 * row['test_accuracy']:.0f}%"]
         for rows in results.values() for label, row in rows.items()],
    )
    print("\n" + table)
    summary = [reading(activation, rows) for activation, rows in results.items()]
    settings = {
        "layer_sizes": layer_sizes, "depth": FLAGS.depth, "width": FLAGS.width, "inits": FLAGS.inits,
        "activations": FLAGS.activations, "epochs": FLAGS.epochs, "learning_rate": FLAGS.learning_rate,
        "optimizer": FLAGS.optimizer, "vanishing_below": FLAGS.vanishing_below,
        "exploding_above": FLAGS.exploding_above, "seed": FLAGS.seed, "data": common.data_source(),
        "n_train": int(train_set.X.shape[0]), "n_test": int(test_set.X.shape[0]),
    }
    report = [
        "# Vanishing and exploding gradients", "",
        (f"Plain nets of {FLAGS.depth} hidden layers × {FLAGS.width} units ({len(layer_sizes) - 1} weight matrices), "
         f"measured at initialization on the {train_set.X.shape[0]} training examples, then trained {FLAGS.epochs} "
         f"epochs of full-batch {FLAGS.optimizer} at learning rate {FLAGS.learning_rate:g} from the same parameters. "
         f"Data: {common.data_source()}."), "",
        (f"Gradient flow is read from the relative gradient r_l = ‖∂J/∂W_l‖ / ‖W_l‖ (how far one step at learning "
         f"rate 1 moves layer l, relative to its size): **vanishing** if some r_l < {FLAGS.vanishing_below:g}, "
         f"**exploding** if some r_l > {FLAGS.exploding_above:g}, **zero** if a zero-weight hidden layer gets no "
         f"gradient at all, **overflow** if a gradient or activation is not finite, **level** otherwise. "
         f"Dead units: hidden units whose activation is 0 on every training example, averaged over hidden layers."), "",
        table, "", "## Reading", "", *[f"- {line}" for line in summary], "",
    ]
    print("\n" + "\n".join(summary))
    common.finish_study(
        output_dir, {"study": STUDY, "settings": settings, "results": results, "findings": summary, "plots": plots},
        report, plots,
    )


if __name__ == "__main__":
    common.run_study(main)
