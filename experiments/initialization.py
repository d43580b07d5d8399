"""The initialization study: zeros vs random x10 vs He vs Xavier on the circles data.

Course setting: circles (300 train / 100 test, noise 0.05), net 2-10-5-1 ReLU with a sigmoid
output, full-batch gradient descent at learning rate 0.01 for 15000 iterations. Every scheme
trains ``--num_seeds`` models in one vmapped call (the same seeds for every scheme).

    python -m experiments.initialization [--epochs 15000] [--num_seeds 3] [--output_dir DIR]
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import init as init_lib
from deepopt import train
from experiments import common

STUDY = "initialization"
FLAGS = flags.FLAGS

common.define_study_flags()
flags.DEFINE_list("schemes", ["zeros", "random", "he", "xavier"], "Initialization schemes to compare.")
common.define_hidden_flag(["10", "5"])
flags.DEFINE_integer("epochs", 15000, "Full-batch gradient-descent iterations.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.01, "Learning rate.", lower_bound=0.0)
flags.DEFINE_float("random_scale", 10.0, "Standard deviation of the 'random' scheme (the course's x10).", lower_bound=0.0)
flags.DEFINE_integer("num_seeds", 3, "Models per scheme, trained in one vmapped call.", lower_bound=1)
flags.DEFINE_integer("n_train", 300, "Generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_test", 100, "Generated test examples.", lower_bound=2)
flags.DEFINE_float("noise", 0.05, "Noise of the generated circles.", lower_bound=0.0)
flags.register_validator(
    "schemes",
    lambda names: bool(names) and all(name in init_lib.SCHEMES for name in names),
    message=f"--schemes must be a non-empty list from {list(init_lib.SCHEMES)}",
)
flags.register_validator("learning_rate", lambda value: value > 0, message="--learning_rate must be > 0")

def hidden_units_identical(params: Any) -> bool:
    """True when, in every hidden layer of every seed, all units have identical incoming weights (symmetry not broken)."""
    for layer in params[:-1]:
        W = np.asarray(layer["W"])  # (seeds, fan_in, fan_out)
        if not np.allclose(W, W[:, :, :1], rtol=0, atol=1e-7):
            return False
    return True


def reading(name: str, row: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """A one-line reading of one scheme's row, from the measured numbers only."""
    best_name = max(rows, key=lambda other: rows[other]["test_accuracy"]["mean"])
    lowest_start = min(r["first_cost"] for r in rows.values())
    test = row["test_accuracy"]["mean"]
    parts = []
    if row["hidden_units_identical"]:
        parts.append("every hidden unit of a layer stays identical (symmetry never broken)")
    if row["first_cost"] > 10 * lowest_start:
        parts.append(f"starts at cost {row['first_cost']:.3g}, {row['first_cost'] / lowest_start:.0f}x the lowest start")
    if row["diverged_runs"]:
        parts.append(f"{row['diverged_runs']} run(s) diverged")
    if name == best_name:
        parts.append(f"best test accuracy, {100 * test:.1f}%")
    else:
        gap = 100 * (rows[best_name]["test_accuracy"]["mean"] - test)
        parts.append(f"test accuracy {100 * test:.1f}%, {gap:.1f} points below {best_name}")
    return f"**{name}**: " + "; ".join(parts) + "."


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    data_key, test_key, model_key = jax.random.split(jax.random.key(FLAGS.seed), 3)
    train_set, test_set = common.study_data(
        data_key, test_key, lambda key, n: data_lib.make_circles(key, n, FLAGS.noise), FLAGS.n_train, FLAGS.n_test
    )
    layer_sizes = common.layer_sizes_for(common.hidden_widths(), train_set, test_set)
    seed_keys = jax.random.split(model_key, FLAGS.num_seeds)
    print(f"{STUDY}: net {'-'.join(map(str, layer_sizes))}, {FLAGS.epochs} epochs of full-batch GD at "
          f"learning rate {FLAGS.learning_rate}, {FLAGS.num_seeds} seeds per scheme, data: {common.data_source()}")

    rows: dict[str, dict[str, Any]] = {}
    first_seed_params: dict[str, Any] = {}
    curves: dict[str, np.ndarray] = {}
    clock = common.StudyClock(len(FLAGS.schemes))
    for scheme in FLAGS.schemes:
        config = train.Config(layer_sizes, activation="relu", init=scheme, optimizer="gd", epochs=FLAGS.epochs)
        hp = train.HParams(
            learning_rate=FLAGS.learning_rate, init_scale=FLAGS.random_scale if scheme == "random" else None
        )
        result, seconds = common.fit_seeds(config, hp, seed_keys, train_set, test_set)
        curves[scheme] = np.asarray(result.costs)
        first_seed_params[scheme] = common.first_run(result.params)
        rows[scheme] = {**common.summarize_runs(result, seconds), "hidden_units_identical": hidden_units_identical(result.params)}
        print(f"  {scheme:>8}: train {common.percent(rows[scheme]['train_accuracy'])}, "
              f"test {common.percent(rows[scheme]['test_accuracy'])}, cost {rows[scheme]['first_cost']:.4g} -> "
              f"{rows[scheme]['final_cost']:.4g} ({seconds:.1f} s)" + clock.done())

    headers = ["scheme", "train accuracy", "test accuracy", "first cost", "final cost", "units identical"]
    table = common.markdown_table(
        headers,
        [
            [name, common.percent(row["train_accuracy"]), common.percent(row["test_accuracy"]),
             f"{row['first_cost']:.4g}", f"{row['final_cost']:.4g}", "yes" if row["hidden_units_identical"] else "no"]
            for name, row in rows.items()
        ],
    )
    print("\n" + table)
    settings = {
        "layer_sizes": layer_sizes, "activation": "relu", "optimizer": "gd", "epochs": FLAGS.epochs,
        "learning_rate": FLAGS.learning_rate, "random_scale": FLAGS.random_scale, "num_seeds": FLAGS.num_seeds,
        "seed": FLAGS.seed, "data": common.data_source(), "n_train": int(train_set.X.shape[0]),
        "n_test": int(test_set.X.shape[0]),
    }
    plots = []
    if common.plots_available():
        boundary_panels = [
            common.boundary_panel(f"{name}: test {100 * rows[name]['test_accuracy']['mean']:.0f}%", params, "relu")
            for name, params in first_seed_params.items()
        ]
        if train_set.X.shape[1] == 2:
            common.plot_decision_boundaries(output_dir / "decision_boundaries.png", boundary_panels, train_set.X, train_set.y)
            plots.append("decision_boundaries.png")
        common.plot_curves(output_dir / "cost_curves.png", curves, xlabel="epoch", ylabel="cost",
                           title="Training cost by initialization (mean, min..max over seeds)")
        plots.append("cost_curves.png")
    report = [
        "# Initialization study", "",
        f"Net {'-'.join(map(str, layer_sizes))} (ReLU hidden, {common.output_description(layer_sizes[-1])}), full-batch "
        f"gradient descent, learning rate {FLAGS.learning_rate}, {FLAGS.epochs} epochs, {FLAGS.num_seeds} seeds per scheme "
        f"(mean ± std over seeds). Data: {common.data_source()}.", "",
        table, "", "## Reading", "",
        *[f"- {reading(name, row, rows)}" for name, row in rows.items()], "",
    ]
    common.finish_study(
        output_dir, {"study": STUDY, "settings": settings, "schemes": rows, "plots": plots}, report, plots
    )


if __name__ == "__main__":
    common.run_study(main)
