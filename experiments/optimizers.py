"""The optimization study: GD, momentum, RMSprop and Adam, then learning-rate decay.

Course setting: moons (300 points, noise 0.2), net 2-5-2-1 (ReLU, He init), mini-batches of 64,
5000 epochs. Part 1, learning rate 0.0007: GD, momentum (beta 0.9), RMSprop, Adam. Part 2,
with decay (lr0 0.1 for GD and momentum, 0.01 for Adam; decay_rate 1): ``scheduled`` decay
(every time_interval = 1000 epochs) against per-epoch ``inverse_time`` decay. Every row trains
``--num_seeds`` models in one vmapped call.

    python -m experiments.optimizers [--epochs 5000] [--num_seeds 3] [--output_dir DIR]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import train
from experiments import common

STUDY = "optimizers"
FLAGS = flags.FLAGS

common.define_study_flags()
common.define_hidden_flag(["5", "2"])
flags.DEFINE_integer("epochs", 5000, "Epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Mini-batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.0007, "Learning rate of part 1 (no decay).")
flags.DEFINE_float("beta", 0.9, "Momentum's beta.")
flags.DEFINE_float("beta1", 0.9, "Adam's beta1.")
flags.DEFINE_float("beta2", 0.999, "Adam's beta2, RMSprop's decay.")
flags.DEFINE_float("epsilon", 1e-8, "Epsilon of RMSprop and Adam.")
flags.DEFINE_float("decay_lr0_gd", 0.1, "Initial learning rate of GD and momentum with decay.")
flags.DEFINE_float("decay_lr0_adam", 0.01, "Initial learning rate of Adam with decay.")
flags.DEFINE_float("decay_rate", 1.0, "decay_rate of both decay schedules.", lower_bound=0.0)
flags.DEFINE_float("time_interval", 1000.0, "Epochs per decay step of the scheduled decay.")
flags.DEFINE_integer("num_seeds", 3, "Models per row, trained in one vmapped call.", lower_bound=1)
flags.DEFINE_integer("n_train", 300, "Generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_test", 300, "Generated test examples.", lower_bound=2)
flags.DEFINE_float("noise", 0.2, "Noise of the generated moons.", lower_bound=0.0)
for _name in ("learning_rate", "decay_lr0_gd", "decay_lr0_adam", "epsilon", "time_interval"):
    flags.register_validator(_name, lambda value: value > 0, message=f"--{_name} must be > 0")
for _name in ("beta", "beta1", "beta2"):
    flags.register_validator(_name, lambda value: 0 <= value < 1, message=f"--{_name} must be in [0, 1)")


class Row(NamedTuple):
    """One line of the study: an optimizer, a schedule and its initial learning rate."""

    name: str
    optimizer: str
    schedule: str
    learning_rate: float


def study_rows() -> list[Row]:
    """Part 1 at the fixed rate, then GD / momentum / Adam with scheduled and with per-epoch decay."""
    rows = [Row(name, name, "constant", FLAGS.learning_rate) for name in ("gd", "momentum", "rmsprop", "adam")]
    for schedule in ("scheduled", "inverse_time"):
        for optimizer in ("gd", "momentum", "adam"):
            lr0 = FLAGS.decay_lr0_adam if optimizer == "adam" else FLAGS.decay_lr0_gd
            rows.append(Row(f"{optimizer} + {schedule}", optimizer, schedule, lr0))
    return rows


def findings(results: dict[str, dict[str, Any]]) -> list[str]:
    """The study's three comparisons, stated with the measured numbers."""

    def acc(name: str) -> str:
        return f"{100 * results[name]['train_accuracy']['mean']:.1f}%"

    lines = [
        f"At learning rate {FLAGS.learning_rate:g}: Adam {acc('adam')} train accuracy, RMSprop {acc('rmsprop')}, "
        f"momentum {acc('momentum')}, GD {acc('gd')}.",
        f"Scheduled decay (lr0 {FLAGS.decay_lr0_gd:g} / {FLAGS.decay_lr0_adam:g}, every {FLAGS.time_interval:g} epochs): "
        f"GD {acc('gd + scheduled')}, momentum {acc('momentum + scheduled')}, Adam {acc('adam + scheduled')}.",
        f"Per-epoch inverse-time decay: the rate is lr0/(1 + {FLAGS.decay_rate:g}·epoch), "
        f"{1 / (1 + FLAGS.decay_rate * (FLAGS.epochs - 1)):.2g}×lr0 by the last epoch: "
        f"GD {acc('gd + inverse_time')}, momentum {acc('momentum + inverse_time')}, Adam {acc('adam + inverse_time')}.",
    ]
    return lines


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    data_key, test_key, model_key = jax.random.split(jax.random.key(FLAGS.seed), 3)
    train_set, test_set = common.study_data(
        data_key, test_key, lambda key, n: data_lib.make_moons(key, n, FLAGS.noise), FLAGS.n_train, FLAGS.n_test
    )
    layer_sizes = common.layer_sizes_for(common.hidden_widths(), train_set, test_set)
    seed_keys = jax.random.split(model_key, FLAGS.num_seeds)
    print(f"{STUDY}: net {'-'.join(map(str, layer_sizes))}, mini-batch {FLAGS.batch_size}, {FLAGS.epochs} epochs, "
          f"{FLAGS.num_seeds} seeds per row, data: {common.data_source()}")

    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, np.ndarray] = {}
    panels = []
    clock = common.StudyClock(len(study_rows()))
    for row in study_rows():
        config = train.Config(layer_sizes, activation="relu", init="he", optimizer=row.optimizer,
                              schedule=row.schedule, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs)
        hp = train.HParams(learning_rate=row.learning_rate, beta=FLAGS.beta, beta1=FLAGS.beta1, beta2=FLAGS.beta2,
                           epsilon=FLAGS.epsilon, decay_rate=FLAGS.decay_rate, time_interval=FLAGS.time_interval)
        result, seconds = common.fit_seeds(config, hp, seed_keys, train_set, test_set)
        results[row.name] = {**row._asdict(), **common.summarize_runs(result, seconds)}
        curves[row.name] = np.asarray(result.costs)
        panels.append(common.boundary_panel(
            f"{row.name}: train {100 * results[row.name]['train_accuracy']['mean']:.0f}%",
            common.first_run(result.params), "relu"))
        print(f"  {row.name:>22}: train {common.percent(results[row.name]['train_accuracy'])}, "
              f"test {common.percent(results[row.name]['test_accuracy'])}, final cost "
              f"{results[row.name]['final_cost']:.4g} ({seconds:.1f} s)" + clock.done())

    table = common.markdown_table(
        ["optimizer", "schedule", "lr0", "train accuracy", "test accuracy", "final cost", "diverged"],
        [[r["optimizer"], r["schedule"], f"{r['learning_rate']:g}", common.percent(r["train_accuracy"]),
          common.percent(r["test_accuracy"]), f"{r['final_cost']:.4g}", r["diverged_runs"]] for r in results.values()],
    )
    print("\n" + table)
    plots = []
    if common.plots_available():
        if train_set.X.shape[1] == 2:
            common.plot_decision_boundaries(output_dir / "decision_boundaries.png", panels, train_set.X, train_set.y)
            plots.append("decision_boundaries.png")
        fixed = {name: c for name, c in curves.items() if "+" not in name}
        decayed = {name: c for name, c in curves.items() if "+" in name}
        common.plot_curves(output_dir / "cost_curves.png", fixed, xlabel="epoch", ylabel="cost",
                           title=f"Learning rate {FLAGS.learning_rate:g}, no decay")
        common.plot_curves(output_dir / "cost_curves_decay.png", decayed, xlabel="epoch", ylabel="cost",
                           title="Scheduled vs per-epoch (inverse_time) decay")
        plots += ["cost_curves.png", "cost_curves_decay.png"]
    settings = {
        "layer_sizes": layer_sizes, "batch_size": FLAGS.batch_size, "epochs": FLAGS.epochs,
        "beta": FLAGS.beta, "beta1": FLAGS.beta1, "beta2": FLAGS.beta2, "epsilon": FLAGS.epsilon,
        "decay_rate": FLAGS.decay_rate, "time_interval": FLAGS.time_interval, "num_seeds": FLAGS.num_seeds,
        "seed": FLAGS.seed, "data": common.data_source(), "n_train": int(train_set.X.shape[0]),
        "n_test": int(test_set.X.shape[0]),
    }
    summary = findings(results)
    report = [
        "# Optimization study", "",
        f"Net {'-'.join(map(str, layer_sizes))} (ReLU, He init), mini-batches of {FLAGS.batch_size}, "
        f"{FLAGS.epochs} epochs, {FLAGS.num_seeds} seeds per row (mean ± std over seeds). "
        f"Data: {common.data_source()}.", "",
        table, "", "## Findings", "", *[f"- {line}" for line in summary], "",
    ]
    print("\n" + "\n".join(summary))
    common.finish_study(
        output_dir, {"study": STUDY, "settings": settings, "rows": results, "findings": summary, "plots": plots},
        report, plots,
    )


if __name__ == "__main__":
    common.run_study(main)
