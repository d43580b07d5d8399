"""The batch-normalization study: a deep net over a learning-rate grid, with and without batch norm.

Setting: three-arm spirals (600 train / 300 dev points, noise 0.2) or the 8x8 digits
(``--dataset digits``), a deep ReLU net (8 hidden layers of 16 units, He init), mini-batch
gradient descent (batches of 64) for 100 epochs, over ``--num_lrs`` learning rates spaced
log-uniformly from ``--min_lr`` to ``--max_lr``, ``--num_seeds`` seeds each. Every (learning
rate, seed) pair of one setting trains in one vmapped call: one compilation with batch norm, one
without (the learning rate is a traced hyperparameter). Reported: final dev accuracy against the
learning rate, the epochs each rate needs to bring the training cost down to ``--target_cost``,
the best rate, and the largest rate at which every seed still reaches the target.

    python -m experiments.batch_norm [--hidden_layers 8] [--width 16] [--epochs 100] [--output_dir DIR]
"""

from __future__ import annotations

import operator
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import optim, train
from experiments import common

STUDY = "batch_norm"
FLAGS = flags.FLAGS
SETTINGS = {"without batch norm": False, "with batch norm": True}
SHORT_NAMES = {"without batch norm": "no BN", "with batch norm": "BN"}

common.define_study_flags()
flags.DEFINE_enum("dataset", "spirals", ["spirals", "digits", "mnist1d"],
                  "Generated spirals, scikit-learn's digits or MNIST-1D (its 4000 / 1000 split; ignored with --data).")
flags.DEFINE_integer("hidden_layers", 8, "Number of hidden layers.", lower_bound=1)
flags.DEFINE_integer("width", 16, "Units per hidden layer.", lower_bound=1)
flags.DEFINE_enum("optimizer", "gd", list(optim.names()), "Optimizer (mini-batch gradient descent by default).")
flags.DEFINE_integer("epochs", 100, "Epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Mini-batch size.", lower_bound=1)
flags.DEFINE_float("min_lr", 1e-3, "Smallest learning rate of the grid.")
flags.DEFINE_float("max_lr", 10.0, "Largest learning rate of the grid.")
flags.DEFINE_integer("num_lrs", 9, "Learning rates in the grid, log-spaced from --min_lr to --max_lr.", lower_bound=1)
flags.DEFINE_integer("num_seeds", 3, "Models per learning rate.", lower_bound=1)
flags.DEFINE_float("target_cost", 0.5, "Training cost whose first epoch is reported ('epochs to target').")
flags.DEFINE_integer("n_train", 600, "Generated training examples (spirals).", lower_bound=3)
flags.DEFINE_integer("n_test", 300, "Generated dev examples (spirals).", lower_bound=3)
flags.DEFINE_float("noise", 0.2, "Noise of the generated spirals.", lower_bound=0.0)
for _name in ("min_lr", "max_lr", "target_cost"):
    flags.register_validator(_name, lambda value: value > 0, message=f"--{_name} must be > 0")
flags.register_multi_flags_validator(
    ["min_lr", "max_lr"], lambda values: values["min_lr"] <= values["max_lr"], message="--min_lr must be <= --max_lr"
)


def load_data(key: jax.Array) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """``(train, dev)``: ``--data``, else the digits, MNIST-1D (``--dataset digits|mnist1d``) or generated spirals."""
    user_data = common.load_user_data(key)
    if user_data is not None:
        return user_data
    split_key, dev_key = jax.random.split(key)
    if FLAGS.dataset == "digits":
        try:
            digits = data_lib.load_digits()
        except ImportError as error:
            raise common.StudyInputError(str(error)) from None
        train_set, _, dev_set = data_lib.train_dev_test_split(split_key, digits, 0.0, FLAGS.test_fraction)
        return train_set, dev_set
    if FLAGS.dataset == "mnist1d":
        try:
            return data_lib.load_mnist1d()
        except ImportError as error:
            raise common.StudyInputError(str(error)) from None
    return (data_lib.make_spirals(split_key, FLAGS.n_train, FLAGS.noise),
            data_lib.make_spirals(dev_key, FLAGS.n_test, FLAGS.noise))


def fit_grid(
    config: train.Config,
    learning_rates: np.ndarray,
    seed_keys: jax.Array,
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
) -> tuple[train.TrainResult, float]:
    """Every (learning rate, seed) pair in one vmapped, jitted ``fit``; the result has leading axes ``(num_lrs, num_seeds)``."""
    num_lrs, num_seeds = len(learning_rates), seed_keys.shape[0]
    rates = jnp.repeat(jnp.asarray(learning_rates, train_set.X.dtype), num_seeds)
    hps = train.broadcast_hparams(train.HParams(learning_rate=rates), num_lrs * num_seeds)
    keys = seed_keys[jnp.tile(jnp.arange(num_seeds), num_lrs)]
    run = jax.jit(jax.vmap(lambda hp, key: train.fit(config, hp, key, train_set, dev_set)))
    start = time.perf_counter()
    result = jax.block_until_ready(run(hps, keys))
    seconds = time.perf_counter() - start
    return jax.tree.map(lambda leaf: leaf.reshape(num_lrs, num_seeds, *leaf.shape[1:]), result), seconds


def epochs_to_target(costs: np.ndarray, target: float) -> list[int | None]:
    """Per run, the first epoch (1-based) whose cost is at most ``target``; None if it never gets there."""
    reached = costs <= target  # NaN (diverged) never reaches
    return [int(np.argmax(row)) + 1 if row.any() else None for row in reached]


def summarize_setting(result: train.TrainResult, learning_rates: np.ndarray, seconds: float) -> dict[str, Any]:
    """Per learning rate: the study row (``common.summarize_runs``) plus epochs to the target; then the setting's summary."""
    rows = []
    for i, rate in enumerate(learning_rates):
        runs = jax.tree.map(operator.itemgetter(i), result)
        epochs = epochs_to_target(np.asarray(runs.costs, dtype=np.float64), FLAGS.target_cost)
        reached = all(e is not None for e in epochs)
        rows.append({
            "learning_rate": float(rate),
            **common.summarize_runs(runs, seconds),
            "epochs_to_target": epochs,
            "mean_epochs_to_target": float(np.mean(epochs)) if reached else None,
        })
    accuracies = [row["test_accuracy"]["mean"] for row in rows]
    best = rows[int(np.argmax(accuracies))]
    summary = {
        "rows": rows,
        "best_learning_rate": best["learning_rate"],
        "best_dev_accuracy": best["test_accuracy"]["mean"],
        "largest_rate_reaching_target": None,
        "dev_accuracy_at_largest_rate": None,
        "fewest_epochs_to_target": None,
        "rate_with_fewest_epochs": None,
        "diverged_rates": [row["learning_rate"] for row in rows if row["diverged_runs"]],
        "seconds_with_compilation": seconds,
    }
    reaching = [row for row in rows if row["mean_epochs_to_target"] is not None]
    if reaching:
        largest, fastest = reaching[-1], min(reaching, key=lambda row: row["mean_epochs_to_target"])
        summary.update(
            largest_rate_reaching_target=largest["learning_rate"],
            dev_accuracy_at_largest_rate=largest["test_accuracy"]["mean"],
            fewest_epochs_to_target=fastest["mean_epochs_to_target"],
            rate_with_fewest_epochs=fastest["learning_rate"],
        )
    return summary


def findings(settings: dict[str, dict[str, Any]]) -> list[str]:
    """One line per setting, then the comparison, all with the measured numbers."""
    lines = []
    for name, s in settings.items():
        line = (f"{name.capitalize()}: best dev accuracy {100 * s['best_dev_accuracy']:.1f}% at learning rate "
                f"{s['best_learning_rate']:.3g}; ")
        if s["largest_rate_reaching_target"] is None:
            line += f"no learning rate brought every seed to cost {FLAGS.target_cost:g}"
        else:
            line += (f"every seed reaches cost {FLAGS.target_cost:g} up to learning rate "
                     f"{s['largest_rate_reaching_target']:.3g} (dev accuracy there {100 * s['dev_accuracy_at_largest_rate']:.1f}%), "
                     f"fastest in {s['fewest_epochs_to_target']:.3g} epochs (at {s['rate_with_fewest_epochs']:.3g})")
        if s["diverged_rates"]:
            line += f"; diverged at {', '.join(f'{rate:.3g}' for rate in s['diverged_rates'])}"
        lines.append(line + ".")
    plain, normalized = settings["without batch norm"], settings["with batch norm"]
    if plain["largest_rate_reaching_target"] and normalized["largest_rate_reaching_target"]:
        lines.append(
            f"Largest rate reaching the target: {normalized['largest_rate_reaching_target'] / plain['largest_rate_reaching_target']:.3g}x "
            f"with batch norm; fewest epochs to it: {normalized['fewest_epochs_to_target']:.3g} with batch norm against "
            f"{plain['fewest_epochs_to_target']:.3g} without."
        )
    return lines


def plot_accuracy_against_rate(path: Any, settings: dict[str, dict[str, Any]]) -> None:
    """Mean final dev accuracy (min..max over seeds) against the learning rate, log scale, one line per setting."""
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, s in settings.items():
        rates = [row["learning_rate"] for row in s["rows"]]
        axis.plot(rates, [row["test_accuracy"]["mean"] for row in s["rows"]], marker="o", label=name)
        axis.fill_between(rates, [row["test_accuracy"]["min"] for row in s["rows"]],
                          [row["test_accuracy"]["max"] for row in s["rows"]], alpha=0.2)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("final dev accuracy")
    axis.set_title("Dev accuracy after training, by learning rate")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    data_key, model_key = jax.random.split(jax.random.key(FLAGS.seed))
    train_set, dev_set = load_data(data_key)
    layer_sizes = common.layer_sizes_for([FLAGS.width] * FLAGS.hidden_layers, train_set, dev_set)
    learning_rates = np.geomspace(FLAGS.min_lr, FLAGS.max_lr, FLAGS.num_lrs)
    seed_keys = jax.random.split(model_key, FLAGS.num_seeds)
    source = common.data_source() if FLAGS.data else FLAGS.dataset
    print(f"{STUDY}: net {'-'.join(map(str, layer_sizes))}, {FLAGS.optimizer}, mini-batch {FLAGS.batch_size}, "
          f"{FLAGS.epochs} epochs, {FLAGS.num_lrs} learning rates x {FLAGS.num_seeds} seeds per setting, data: {source}")

    settings: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    clock = common.StudyClock(len(SETTINGS))
    for name, batchnorm in SETTINGS.items():
        config = train.Config(layer_sizes, activation="relu", init="he", optimizer=FLAGS.optimizer,
                              batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, batchnorm=batchnorm)
        result, seconds = fit_grid(config, learning_rates, seed_keys, train_set, dev_set)
        settings[name] = summarize_setting(result, learning_rates, seconds)
        curves[name] = {f"lr {rate:.3g}": np.asarray(costs) for rate, costs in zip(learning_rates, result.costs)}
        print(f"  {name}: {seconds:.1f} s ({FLAGS.num_lrs * FLAGS.num_seeds} runs, one compilation)" + clock.done())

    def cells(row: dict[str, Any]) -> list[str]:
        epochs = row["mean_epochs_to_target"]
        return [common.percent(row["test_accuracy"]), "never" if epochs is None else f"{epochs:.3g}",
                str(row["diverged_runs"])]

    headers = ["learning rate"] + [f"{column} ({SHORT_NAMES[name]})" for name in SETTINGS
                                   for column in ("dev accuracy", f"epochs to cost {FLAGS.target_cost:g}", "diverged")]
    table = common.markdown_table(headers, [
        [f"{rate:.3g}", *cells(settings["without batch norm"]["rows"][i]), *cells(settings["with batch norm"]["rows"][i])]
        for i, rate in enumerate(learning_rates)
    ])
    print("\n" + table)
    summary = findings(settings)
    plots = []
    if common.plots_available():
        plot_accuracy_against_rate(output_dir / "accuracy_vs_learning_rate.png", settings)
        plots.append("accuracy_vs_learning_rate.png")
        for name, setting_curves in curves.items():
            filename = f"cost_curves_{name.replace(' ', '_')}.png"
            common.plot_curves(output_dir / filename, setting_curves, xlabel="epoch", ylabel="training cost",
                               title=f"{name.capitalize()}: cost by learning rate (mean, min..max over seeds)")
            plots.append(filename)
    run_settings = {
        "layer_sizes": layer_sizes, "activation": "relu", "init": "he", "optimizer": FLAGS.optimizer,
        "batch_size": FLAGS.batch_size, "epochs": FLAGS.epochs, "learning_rates": learning_rates,
        "num_seeds": FLAGS.num_seeds, "target_cost": FLAGS.target_cost, "seed": FLAGS.seed, "data": source,
        "n_train": int(train_set.X.shape[0]), "n_dev": int(dev_set.X.shape[0]),
    }
    report = [
        "# Batch-normalization study", "",
        (f"Net {'-'.join(map(str, layer_sizes))} (ReLU, He init; batch norm before every hidden activation in the "
         f"second setting), {FLAGS.optimizer} on mini-batches of {FLAGS.batch_size}, {FLAGS.epochs} epochs, "
         f"{FLAGS.num_seeds} seeds per learning rate (mean ± std over seeds). Data: {source} "
         f"({run_settings['n_train']} train / {run_settings['n_dev']} dev). 'Epochs to cost {FLAGS.target_cost:g}': "
         "the first epoch whose training cost is at most the target, mean over seeds ('never' when a seed does not "
         "get there). BN = batch norm; batch-normalized nets are evaluated with their running statistics."), "",
        table, "", "## Findings", "", *[f"- {line}" for line in summary], "",
    ]
    print("\n" + "\n".join(summary))
    common.finish_study(output_dir, {
        "study": STUDY, "settings": run_settings, "results": settings, "findings": summary, "plots": plots,
    }, report, plots)


if __name__ == "__main__":
    common.run_study(main)
