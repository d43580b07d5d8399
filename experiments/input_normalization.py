"""The input normalization study: raw features on very different scales vs standardized features.

On moons (or your data), the raw features are ``x * --feature_scales + --feature_offsets``
(default: the first feature ×1000, the second shifted by +50, like the course's x1 in 1..1000
and x2 in 0..1); the standardized ones are ``(x - μ_train) / σ_train`` (``data.standardize``,
training statistics only, applied to the test set too). The same net (2-10-5-1, ReLU, He) trains
with full-batch gradient descent at every learning rate of a log-spaced grid, both inputs in
one compiled program (the learning rate is traced and vmapped, the data is an argument). For
each input: the epochs to reach ``--target_cost`` at its best learning rate, and the cost curves.

    python -m experiments.input_normalization [--epochs 2000] [--target_cost 0.3] [--output_dir DIR]
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import train
from experiments import common

STUDY = "input_normalization"
FLAGS = flags.FLAGS

common.define_study_flags()
flags.DEFINE_list("feature_scales", None, "Raw feature i is x_i * scale_i + offset_i (default on generated data: 1000,1).")
flags.DEFINE_list("feature_offsets", None, "Offsets of the raw features (default on generated data: 0,50).")
common.define_hidden_flag(["10", "5"])
flags.DEFINE_integer("epochs", 2000, "Full-batch gradient-descent epochs.", lower_bound=1)
flags.DEFINE_float("target_cost", 0.3, "Training cost to reach.")
flags.DEFINE_float("lr_min", 1e-7, "Smallest learning rate of the grid.")
flags.DEFINE_float("lr_max", 10.0, "Largest learning rate of the grid.")
flags.DEFINE_integer("lr_points", 17, "Learning rates in the grid (log-spaced, half-decades by default).", lower_bound=1)
flags.DEFINE_integer("n_train", 300, "Generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_test", 300, "Generated test examples.", lower_bound=2)
flags.DEFINE_float("noise", 0.2, "Noise of the generated moons.", lower_bound=0.0)
GENERATED_SCALES = (1000.0, 1.0)
GENERATED_OFFSETS = (0.0, 50.0)


def _finite_numbers(values: list[str] | None) -> bool:
    if values is None:
        return True
    try:
        return bool(values) and all(math.isfinite(float(value)) for value in values)
    except ValueError:
        return False


flags.register_validator("feature_scales", lambda values: _finite_numbers(values) and (
    values is None or all(float(value) != 0 for value in values)), message="--feature_scales must be non-zero numbers")
flags.register_validator("feature_offsets", _finite_numbers, message="--feature_offsets must be finite numbers")
for _name in ("target_cost", "lr_min", "lr_max"):
    flags.register_validator(_name, lambda value: value > 0, message=f"--{_name} must be > 0")
flags.register_multi_flags_validator(
    ["lr_min", "lr_max"], lambda values: values["lr_min"] <= values["lr_max"], message="--lr_min must be <= --lr_max"
)


def affine_per_feature(values: list[str] | None, default: float, num_features: int, name: str) -> np.ndarray:
    """A flag's per-feature list as an array of ``num_features`` (missing trailing entries take ``default``)."""
    numbers = [float(value) for value in values or []]
    if len(numbers) > num_features:
        raise common.StudyInputError(f"--{name} has {len(numbers)} entries but the data has {num_features} features")
    return np.array(numbers + [default] * (num_features - len(numbers)), np.float32)


def epochs_to_reach(costs: np.ndarray, target: float) -> np.ndarray:
    """Per run, the number of epochs after which the cost first is ``<= target`` (``costs[e]`` is the cost before update ``e``); -1 if never."""
    reached = np.asarray(costs) <= target
    return np.where(reached.any(axis=1), np.argmax(reached, axis=1), -1)


def best_run(epochs: np.ndarray, final_costs: np.ndarray, diverged: np.ndarray) -> int:
    """The run reaching the target in the fewest epochs; if none does, the lowest final cost (diverged runs last)."""
    reached = (epochs >= 0) & ~diverged
    if np.any(reached):
        return int(np.argmin(np.where(reached, epochs, np.iinfo(np.int64).max)))
    return int(np.argmin(np.where(diverged | ~np.isfinite(final_costs), np.inf, final_costs)))


def describe(dataset: data_lib.Dataset) -> dict[str, list[float]]:
    """Per-feature mean and standard deviation."""
    X = np.asarray(dataset.X, np.float64)
    return {"mean": X.mean(axis=0), "std": X.std(axis=0)}


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    data_key, test_key, model_key = jax.random.split(jax.random.key(FLAGS.seed), 3)
    base_train, base_test = common.study_data(
        data_key, test_key, lambda key, n: data_lib.make_moons(key, n, FLAGS.noise), FLAGS.n_train, FLAGS.n_test
    )
    if common.generated_data():
        default_scales, default_offsets = GENERATED_SCALES, GENERATED_OFFSETS
    else:
        default_scales, default_offsets = (), ()  # the user's features are the raw ones
    num_features = int(base_train.X.shape[1])
    scale_flags = FLAGS.feature_scales if FLAGS.feature_scales is not None else [str(s) for s in default_scales]
    offset_flags = FLAGS.feature_offsets if FLAGS.feature_offsets is not None else [str(o) for o in default_offsets]
    scales = affine_per_feature(scale_flags, 1.0, num_features, "feature_scales")
    offsets = affine_per_feature(offset_flags, 0.0, num_features, "feature_offsets")
    raw = tuple(data_lib.Dataset(jnp.asarray(d.X) * scales + offsets, jnp.asarray(d.y)) for d in (base_train, base_test))
    variants = {"raw": raw, "standardized": data_lib.standardize(*raw)}
    layer_sizes = common.layer_sizes_for(common.hidden_widths(), base_train, base_test)
    config = train.Config(layer_sizes, activation="relu", init="he", optimizer="gd", epochs=FLAGS.epochs)
    learning_rates = np.logspace(math.log10(FLAGS.lr_min), math.log10(FLAGS.lr_max), FLAGS.lr_points)
    hps = train.broadcast_hparams(train.HParams(learning_rate=learning_rates), FLAGS.lr_points)
    run = jax.jit(jax.vmap(lambda hp, train_set, test_set: train.fit(config, hp, model_key, train_set, test_set),
                           in_axes=(0, None, None)))
    print(f"{STUDY}: net {'-'.join(map(str, layer_sizes))}, {FLAGS.epochs} epochs of full-batch GD at "
          f"{FLAGS.lr_points} learning rates in [{FLAGS.lr_min:g}, {FLAGS.lr_max:g}], target cost "
          f"{FLAGS.target_cost:g}, raw features x·{scales.tolist()} + {offsets.tolist()}, data: {common.data_source()}")

    results: dict[str, dict[str, Any]] = {}
    curves, panels = {}, []
    clock = common.StudyClock(len(variants))
    for name, (train_set, test_set) in variants.items():
        start = time.perf_counter()
        result = jax.block_until_ready(run(hps, train_set, test_set))
        seconds = time.perf_counter() - start
        costs = np.asarray(result.costs, np.float64)
        epochs = epochs_to_reach(costs, FLAGS.target_cost)
        final_costs = np.asarray(result.final_cost, np.float64)
        diverged = np.asarray(result.diverged)
        best = best_run(epochs, final_costs, diverged)
        results[name] = {
            "features": describe(train_set), "learning_rates": learning_rates, "epochs_to_target": epochs,
            "first_cost": costs[:, 0], "final_cost": final_costs, "diverged": diverged,
            "train_accuracy": np.asarray(result.train_accuracy), "test_accuracy": np.asarray(result.dev_accuracy),
            "best_index": best, "best_learning_rate": float(learning_rates[best]),
            "best_epochs_to_target": int(epochs[best]), "seconds_with_compilation": seconds,
        }
        curves[f"{name} (lr {learning_rates[best]:.2g})"] = costs[best]
        feature_std = ", ".join(f"{s:.3g}" for s in results[name]["features"]["std"])
        reached = f"target in {epochs[best]} epochs" if epochs[best] >= 0 else f"target never reached in {FLAGS.epochs} epochs"
        print(f"  {name:>12}: feature std [{feature_std}]; best lr {learning_rates[best]:.2g}: {reached}, final cost "
              f"{final_costs[best]:.4g}, train {100 * float(result.train_accuracy[best]):.1f}% ({seconds:.1f} s)"
              + clock.done())
        if num_features == 2:
            panels.append((train_set, common.boundary_panel(
                f"{name}, lr {learning_rates[best]:.2g}: test {100 * float(result.dev_accuracy[best]):.0f}%",
                jax.tree.map(lambda leaf, i=best: leaf[i], result.params), "relu")))

    def reach_text(row: dict[str, Any], index: int) -> str:
        epochs = int(row["epochs_to_target"][index])
        return (f"{epochs}" if epochs >= 0 else "never") + (" (diverged)" if row["diverged"][index] else "")

    table = common.markdown_table(
        ["input", "feature mean", "feature std", "best learning rate", "epochs to cost ≤ target", "final cost",
         "train accuracy", "test accuracy"],
        [[name, ", ".join(f"{round(v, 6) + 0.0:.3g}" for v in row["features"]["mean"]),  # no -4e-07 for a 0 mean
          ", ".join(f"{v:.3g}" for v in row["features"]["std"]), f"{row['best_learning_rate']:.2g}",
          reach_text(row, row["best_index"]), f"{row['final_cost'][row['best_index']]:.4g}",
          f"{100 * row['train_accuracy'][row['best_index']]:.1f}%", f"{100 * row['test_accuracy'][row['best_index']]:.1f}%"]
         for name, row in results.items()],
    )
    grid_table = common.markdown_table(
        ["learning rate", *[f"{name}: epochs to target" for name in results], *[f"{name}: final cost" for name in results]],
        [[f"{lr:.2g}", *[reach_text(row, i) for row in results.values()],
          *[f"{row['final_cost'][i]:.4g}" for row in results.values()]] for i, lr in enumerate(learning_rates)],
    )
    print("\n" + table)
    def finding(name: str, row: dict[str, Any]) -> str:
        best = row["best_index"]
        epochs = int(row["epochs_to_target"][best])
        reached = (f"reaches cost {FLAGS.target_cost:g} after {epochs} epochs" if epochs >= 0
                   else f"never reaches cost {FLAGS.target_cost:g} in {FLAGS.epochs} epochs")
        edge = " (an end of the grid)" if best in (0, FLAGS.lr_points - 1) else ""
        successes = int(np.sum((row["epochs_to_target"] >= 0) & ~row["diverged"]))
        return (f"{name} features (std {', '.join(f'{v:.3g}' for v in row['features']['std'])}): at its best learning "
                f"rate, {row['best_learning_rate']:.2g}{edge}, the run {reached}; final cost {row['final_cost'][best]:.4g}. "
                f"{successes} of {FLAGS.lr_points} learning rates reach the target.")

    summary = [finding(name.capitalize(), row) for name, row in results.items()]
    plots = []
    if common.plots_available():
        common.plot_curves(output_dir / "cost_curves.png", curves, xlabel="epoch", ylabel="cost",
                           title="Training cost at each input's best learning rate")
        plots.append("cost_curves.png")
        for (train_set, panel), name in zip(panels, results):
            common.plot_decision_boundaries(output_dir / f"decision_boundary_{name}.png", [panel], train_set.X, train_set.y)
            plots.append(f"decision_boundary_{name}.png")
    settings = {
        "layer_sizes": layer_sizes, "activation": "relu", "init": "he", "optimizer": "gd", "epochs": FLAGS.epochs,
        "target_cost": FLAGS.target_cost, "learning_rates": learning_rates, "feature_scales": scales,
        "feature_offsets": offsets, "seed": FLAGS.seed, "data": common.data_source(),
        "n_train": int(base_train.X.shape[0]), "n_test": int(base_test.X.shape[0]),
    }
    report = [
        "# Input normalization study", "",
        (f"Net {'-'.join(map(str, layer_sizes))} (ReLU, He init), full-batch gradient descent for {FLAGS.epochs} epochs "
         f"at {FLAGS.lr_points} log-spaced learning rates in [{FLAGS.lr_min:g}, {FLAGS.lr_max:g}] (one compiled program, "
         f"same initialization key). Raw features: x·{scales.tolist()} + {offsets.tolist()}; standardized: "
         f"(x − μ_train) / σ_train with the training set's statistics, applied to the test set as well. "
         f"Data: {common.data_source()}. Target: training cost ≤ {FLAGS.target_cost:g}."), "",
        table, "", "## Findings", "", *[f"- {line}" for line in summary], "",
        "## Every learning rate", "", grid_table, "",
    ]
    print("\n" + "\n".join(summary))
    common.finish_study(
        output_dir, {"study": STUDY, "settings": settings, "inputs": results, "findings": summary, "plots": plots},
        report, plots,
    )


if __name__ == "__main__":
    common.run_study(main)
