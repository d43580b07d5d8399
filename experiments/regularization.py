"""The regularization study: no regularization vs L2 vs dropout vs early stopping, then a λ sweep.

Course setting: a small noisy 2-D problem (``data.make_overfit_2d``: 211 training points, 12% of
labels flipped; or your data via ``--data``), net 2-20-3-1 (ReLU, Xavier init, sigmoid output),
full-batch gradient descent at learning rate 0.3 for 30000 iterations. Rows: no
regularization, L2 (λ 0.7), inverted dropout (keep_prob 0.86) and early stopping.

Early stopping and choosing λ need a dev set, so ``--dev_fraction`` of the training set is
carved out as one, and every row and the sweep train on the rest (the same examples for all,
so the rows compare like with like). Each row gets a bias/variance verdict
(``diagnostics.bias_variance``) from its train and test error. ``--sweep_points`` log-spaced
values of λ train in the same vmapped, compiled call as the plain rows: train and dev error
against λ, the bias/variance trade-off on one picture.

    python -m experiments.regularization [--epochs 30000] [--num_seeds 3] [--output_dir DIR]
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import bayes, diagnostics, losses, model, train
from deepopt import init as init_lib
from experiments import common

STUDY = "regularization"
FLAGS = flags.FLAGS

common.define_study_flags()
common.define_hidden_flag(["20", "3"])
flags.DEFINE_string("init", "xavier", "Initialization scheme (the course's sqrt(1/fan_in)).")
flags.DEFINE_integer("epochs", 30000, "Full-batch gradient-descent iterations.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.3, "Learning rate.")
flags.DEFINE_float("l2", 0.7, "λ of the L2 row.")
flags.DEFINE_float("keep_prob", 0.86, "keep_prob of the dropout row.")
flags.DEFINE_string("early_stopping", "keep_best", "Early stopping of its row: 'keep_best' or a patience in epochs.")
flags.DEFINE_float("dev_fraction", 0.2, "Fraction of the training set carved out as dev set (early stopping, λ sweep).")
flags.DEFINE_integer("num_seeds", 3, "Models per row, trained in one vmapped call.", lower_bound=1)
flags.DEFINE_integer("sweep_points", 16, "Number of log-spaced λ values in the sweep.", lower_bound=2)
flags.DEFINE_float("sweep_min", 1e-3, "Smallest λ of the sweep.")
flags.DEFINE_float("sweep_max", 100.0, "Largest λ of the sweep.")
flags.DEFINE_float(
    "bayes_error", None,
    "Bayes-error estimate for the diagnosis (default: the generated data's own, deepopt.bayes; unknown on yours: 0, said so).",
)
flags.DEFINE_float("tolerance", 0.02, "Largest gap (fraction) that the diagnosis still calls small.")
flags.DEFINE_integer("n_train", 211, "Generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_test", 400, "Generated test examples.", lower_bound=2)
flags.DEFINE_float("noise", 0.05, "Position jitter of the generated points.", lower_bound=0.0)
flags.DEFINE_float("flip", 0.12, "Fraction of generated labels flipped (label noise).")
for _name in ("learning_rate", "sweep_min", "sweep_max"):
    flags.register_validator(_name, lambda value: value > 0, message=f"--{_name} must be > 0")
flags.register_validator(
    "init", lambda name: name in init_lib.SCHEMES, message=f"--init must be one of {list(init_lib.SCHEMES)}"
)
flags.register_validator("l2", lambda value: value >= 0, message="--l2 must be >= 0")
flags.register_validator("keep_prob", lambda value: 0 < value <= 1, message="--keep_prob must be in (0, 1]")
flags.register_validator("dev_fraction", lambda value: 0 < value < 1, message="--dev_fraction must be in (0, 1)")
flags.register_validator("flip", lambda value: 0 <= value < 0.5, message="--flip must be in [0, 0.5)")
for _name in ("bayes_error", "tolerance"):
    flags.register_validator(
        _name, lambda value: value is None or 0 <= value <= 1, message=f"--{_name} must be a fraction in [0, 1]"
    )
flags.register_validator(
    "early_stopping",
    lambda value: value == train.KEEP_BEST or (value.isdigit() and int(value) > 0),
    message="--early_stopping must be 'keep_best' or a positive int patience",
)
flags.register_multi_flags_validator(
    ["sweep_min", "sweep_max"],
    lambda values: values["sweep_min"] < values["sweep_max"],
    message="--sweep_min must be below --sweep_max",
)


class Row(NamedTuple):
    """One line of the study: the regularization it applies."""

    name: str
    setting: str
    l2: float
    keep_prob: float
    early_stopping: bool


def study_rows() -> list[Row]:
    """No regularization, L2, dropout, early stopping."""
    return [
        Row("none", "-", 0.0, 1.0, False),
        Row("L2", f"λ = {FLAGS.l2:g}", FLAGS.l2, 1.0, False),
        Row("dropout", f"keep_prob = {FLAGS.keep_prob:g}", 0.0, FLAGS.keep_prob, False),
        Row("early stopping", f"{FLAGS.early_stopping} on the dev set", 0.0, 1.0, True),
    ]


def early_stopping_setting() -> int | str:
    """``--early_stopping`` as ``Config.early_stopping``: ``"keep_best"`` or an int patience."""
    return train.KEEP_BEST if FLAGS.early_stopping == train.KEEP_BEST else int(FLAGS.early_stopping)


def bayes_estimate() -> tuple[float, str]:
    """The verdicts' Bayes-error estimate and its source: ``--bayes_error``, else the generator's own, else 0 on the user's data."""
    if FLAGS.bayes_error is not None:
        return FLAGS.bayes_error, "given by --bayes_error"
    if common.generated_data():
        return (bayes.bayes_error("overfit_2d", noise=FLAGS.noise, flip=FLAGS.flip),
                f"the generator's own (deepopt.bayes: --flip {FLAGS.flip:g} with jitter {FLAGS.noise:g})")
    return 0.0, "unknown for your data: assumed 0, so the avoidable bias is an upper bound (pass --bayes_error)"


def accuracies(params: Any, dataset: data_lib.Dataset) -> jax.Array:
    """Accuracy of each model of a run-batched ``params`` on ``dataset``."""
    X, y = jnp.asarray(dataset.X), jnp.asarray(dataset.y)
    return jax.vmap(lambda p: model.accuracy(p, X, y, activation="relu"))(params)


def costs(params: Any, dataset: data_lib.Dataset) -> jax.Array:
    """Cross-entropy (no L2) of each model of a run-batched ``params`` on ``dataset``."""
    X, y = jnp.asarray(dataset.X), jnp.asarray(dataset.y)
    return jax.vmap(lambda p: losses.cross_entropy(model.forward(p, X, activation="relu"), y))(params)


def sweep_summary(
    result: train.TrainResult, test_accuracy: jax.Array, lambdas: np.ndarray, dev_part: data_lib.Dataset
) -> dict[str, Any]:
    """Errors per λ of the sweep's runs, and the λ with the lowest dev error (ties to the lower dev cost)."""
    dev_error = 1 - np.asarray(result.dev_accuracy, np.float64)
    dev_cost = np.asarray(costs(result.params, dev_part), np.float64)
    best = int(np.lexsort((dev_cost, dev_error))[0])
    return {
        "lambdas": lambdas,
        "train_error": 1 - np.asarray(result.train_accuracy, np.float64),
        "dev_error": dev_error,
        "test_error": 1 - np.asarray(test_accuracy, np.float64),
        "dev_cost": dev_cost,
        "diverged": np.asarray(result.diverged),
        "best_index": best,
        "best_lambda": float(lambdas[best]),
    }


def plot_sweep(path: Any, sweep: dict[str, Any], title: str) -> None:
    """Train, dev and test error against λ (log x axis), the chosen λ marked."""
    plt = common.pyplot()  # the shared Agg set-up
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, style in (("train_error", "-o"), ("dev_error", "-s"), ("test_error", ":^")):
        axis.plot(sweep["lambdas"], 100 * np.asarray(sweep[name]), style, markersize=4, label=name.replace("_", " "))
    axis.axvline(sweep["best_lambda"], color="gray", linestyle="--", label=f"best dev: λ = {sweep['best_lambda']:.3g}")
    axis.set_xscale("log")
    axis.set_xlabel("λ (L2)")
    axis.set_ylabel("error (%)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def split_dev(key: jax.Array, train_set: data_lib.Dataset) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """Carve ``--dev_fraction`` of the training set out as a dev set: ``(rest, dev)``."""
    m = int(np.shape(train_set.X)[0])
    n_dev = round(m * FLAGS.dev_fraction)
    if n_dev < 1 or n_dev >= m:
        raise common.StudyInputError(
            f"--dev_fraction {FLAGS.dev_fraction:g} of {m} training examples leaves {n_dev} for dev and "
            f"{m - n_dev} for training; both need at least one"
        )
    rest, dev, _ = data_lib.train_dev_test_split(key, train_set, FLAGS.dev_fraction, 0.0)
    return rest, dev


def fit_runs(
    config: train.Config, hps: train.HParams, keys: jax.Array, train_set: data_lib.Dataset, dev_set: data_lib.Dataset,
) -> tuple[train.TrainResult, float]:
    """One model per entry of the batched ``hps`` and ``keys`` in one vmapped, jitted call; the result and the seconds (compilation included)."""
    train.validate_hparams(hps)  # inside vmap the values are traced, and fit can no longer check them
    run = jax.jit(jax.vmap(lambda hp, key: train.fit(config, hp, key, train_set, dev_set)))
    start = time.perf_counter()
    result = jax.block_until_ready(run(hps, keys))
    return result, time.perf_counter() - start


def summarize_row(
    result: train.TrainResult, test_accuracy: jax.Array, seconds: float
) -> dict[str, Any]:
    """``common.summarize_runs`` of one row's seeds, with dev accuracy (the dev split) and test accuracy (the test set)."""
    with warnings.catch_warnings():  # epochs after a patience stop are NaN in every seed
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = common.summarize_runs(result, seconds)
    summary.update(dev_accuracy=common.summarize(result.dev_accuracy), test_accuracy=common.summarize(test_accuracy))
    return summary


def run_study_rows(
    rows: list[Row], config: train.Config, seed_keys: jax.Array, fit_part: data_lib.Dataset,
    dev_part: data_lib.Dataset, test_set: data_lib.Dataset,
) -> tuple[dict[str, tuple[dict[str, Any], Any]], dict[str, Any]]:
    """Train every row (``--num_seeds`` models each) and the λ sweep; per row its summary and first model, and the sweep.

    The rows without early stopping and the sweep's runs differ only in traced hyperparameters:
    they all train together in one vmapped call. Early stopping is another program.
    """
    num_seeds = len(seed_keys)
    plain = [row for row in rows if not row.early_stopping]
    lambdas = np.logspace(math.log10(FLAGS.sweep_min), math.log10(FLAGS.sweep_max), FLAGS.sweep_points)
    l2 = [row.l2 for row in plain for _ in range(num_seeds)] + list(lambdas)
    keep_prob = [row.keep_prob for row in plain for _ in range(num_seeds)] + [1.0] * len(lambdas)
    hps = train.broadcast_hparams(
        train.HParams(learning_rate=FLAGS.learning_rate, l2=np.array(l2), keep_prob=np.array(keep_prob)), len(l2))
    # The sweep reuses the first seed for every λ, so λ is the only difference between its runs.
    keys = jnp.concatenate([seed_keys] * len(plain) + [seed_keys[:1]] * len(lambdas))
    stopping_rows = [row for row in rows if row.early_stopping]
    clock = common.StudyClock([len(l2)] + [num_seeds] * len(stopping_rows))  # weights: runs per call
    result, seconds = fit_runs(config, hps, keys, fit_part, dev_part)
    print(f"  trained {len(l2)} runs in one vmapped call ({seconds:.1f} s)" + clock.done())
    test_accuracy = accuracies(result.params, test_set)

    def runs(start: int, stop: int) -> tuple[train.TrainResult, jax.Array]:
        return jax.tree.map(lambda leaf: leaf[start:stop], (result, test_accuracy))

    summaries = {}
    for i, row in enumerate(plain):
        part, part_test = runs(i * num_seeds, (i + 1) * num_seeds)
        summaries[row.name] = (summarize_row(part, part_test, seconds), common.first_run(part.params))
    sweep = sweep_summary(*runs(len(plain) * num_seeds, len(l2)), lambdas, dev_part)
    sweep["seconds_with_compilation"] = seconds
    for row in rows:
        if row.early_stopping:
            hp = train.HParams(learning_rate=FLAGS.learning_rate, l2=row.l2, keep_prob=row.keep_prob)
            stopping_config = dataclasses.replace(config, early_stopping=early_stopping_setting())
            stopped, stopping_seconds = common.fit_seeds(stopping_config, hp, seed_keys, fit_part, dev_part)
            summary = summarize_row(stopped, accuracies(stopped.params, test_set), stopping_seconds)
            summary.update(best_epoch=common.summarize(stopped.best_epoch),
                           stopped_epoch=[int(e) for e in np.asarray(stopped.stopped_epoch)])
            summaries[row.name] = (summary, common.first_run(stopped.params))
            print(f"  trained {row.name} ({num_seeds} runs, {stopping_seconds:.1f} s)" + clock.done())
    return {row.name: summaries[row.name] for row in rows}, sweep


def findings(rows: dict[str, dict[str, Any]], sweep: dict[str, Any], bayes_error: float) -> list[str]:
    """The study's comparisons, stated with the measured numbers."""

    def gap(name: str) -> float:
        return 100 * (rows[name]["train_accuracy"]["mean"] - rows[name]["test_accuracy"]["mean"])

    def acc(name: str, split: str) -> str:
        return f"{100 * rows[name][f'{split}_accuracy']['mean']:.1f}%"

    lines = [
        (f"No regularization: train {acc('none', 'train')}, test {acc('none', 'test')}: a train-test gap of "
         f"{gap('none'):.1f} points ({rows['none']['diagnosis']['verdict']}, Bayes-error estimate {100 * bayes_error:.1f}%)."),
    ]
    for name in ("L2", "dropout", "early stopping"):
        lines.append(
            f"{name} ({rows[name]['setting']}): train {acc(name, 'train')}, test {acc(name, 'test')}, gap "
            f"{gap(name):.1f} points ({gap(name) - gap('none'):+.1f} vs none), test accuracy "
            f"{100 * (rows[name]['test_accuracy']['mean'] - rows['none']['test_accuracy']['mean']):+.1f} points vs none: "
            f"{rows[name]['diagnosis']['verdict']}."
        )
    best = sweep["best_index"]
    lines.append(
        f"λ sweep ({len(sweep['lambdas'])} values from {sweep['lambdas'][0]:.3g} to {sweep['lambdas'][-1]:.3g}): "
        f"train error {100 * sweep['train_error'][0]:.1f}% at the smallest λ and {100 * sweep['train_error'][-1]:.1f}% at "
        f"the largest; the lowest dev error, {100 * sweep['dev_error'][best]:.1f}%, at λ = {sweep['best_lambda']:.3g} "
        f"(test error there {100 * sweep['test_error'][best]:.1f}%)."
    )
    return lines


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    data_key, test_key, split_key, model_key = jax.random.split(jax.random.key(FLAGS.seed), 4)
    train_set, test_set = common.study_data(
        data_key, test_key, lambda key, n: data_lib.make_overfit_2d(key, n, FLAGS.noise, FLAGS.flip),
        FLAGS.n_train, FLAGS.n_test,
    )
    bayes_error, bayes_source = bayes_estimate()
    fit_part, dev_part = split_dev(split_key, train_set)
    layer_sizes = common.layer_sizes_for(common.hidden_widths(), train_set, test_set)
    seed_keys = jax.random.split(model_key, FLAGS.num_seeds)
    config = train.Config(layer_sizes, activation="relu", init=FLAGS.init, optimizer="gd", epochs=FLAGS.epochs)
    print(f"{STUDY}: net {'-'.join(map(str, layer_sizes))}, {FLAGS.epochs} epochs of full-batch GD at learning rate "
          f"{FLAGS.learning_rate:g}, {FLAGS.num_seeds} seeds per row, data: {common.data_source()} "
          f"({train_set.X.shape[0]} train = {fit_part.X.shape[0]} + {dev_part.X.shape[0]} dev, {test_set.X.shape[0]} test)")

    rows: dict[str, dict[str, Any]] = {}
    panels = []
    rows_run, sweep = run_study_rows(study_rows(), config, seed_keys, fit_part, dev_part, test_set)
    for row in study_rows():
        summary, params = rows_run[row.name]
        diagnosis = diagnostics.bias_variance(
            1 - summary["train_accuracy"]["mean"], 1 - summary["test_accuracy"]["mean"], bayes_error,
            tolerance=FLAGS.tolerance,
        )
        rows[row.name] = {**row._asdict(), **summary, "diagnosis": diagnosis._asdict()}
        panels.append(common.boundary_panel(
            f"{row.name}: train {100 * summary['train_accuracy']['mean']:.0f}%, "
            f"test {100 * summary['test_accuracy']['mean']:.0f}%", params, "relu"))
        print(f"  {row.name:>14}: train {common.percent(summary['train_accuracy'])}, test "
              f"{common.percent(summary['test_accuracy'])}: {diagnosis.verdict}")
    together = [name for name, row in rows.items() if not row["early_stopping"]]
    print(f"  λ sweep: lowest dev error at λ = {sweep['best_lambda']:.3g}")
    print(f"  ({', '.join(together)} and the {FLAGS.sweep_points} λ values trained together in one vmapped call, "
          f"{sweep['seconds_with_compilation']:.1f} s; early stopping {rows['early stopping']['seconds_with_compilation']:.1f} s; "
          f"compilation included)")

    table = common.markdown_table(
        ["regularization", "setting", "train accuracy", "test accuracy", "gap (points)", "avoidable bias",
         "variance", "verdict"],
        [[name, r["setting"], common.percent(r["train_accuracy"]), common.percent(r["test_accuracy"]),
          f"{100 * (r['train_accuracy']['mean'] - r['test_accuracy']['mean']):.1f}",
          f"{100 * r['diagnosis']['avoidable_bias']:.1f}%", f"{100 * r['diagnosis']['variance']:.1f}%",
          r["diagnosis"]["verdict"]] for name, r in rows.items()],
    )
    sweep_table = common.markdown_table(
        ["λ", "train error", "dev error", "test error"],
        [[f"{lam:.3g}" + (" (best dev)" if i == sweep["best_index"] else ""), f"{100 * tr:.1f}%", f"{100 * dv:.1f}%",
          f"{100 * te:.1f}%"]
         for i, (lam, tr, dv, te) in enumerate(zip(sweep["lambdas"], sweep["train_error"], sweep["dev_error"],
                                                   sweep["test_error"]))],
    )
    print("\n" + table)
    summary_lines = findings(rows, sweep, bayes_error)
    plots = []
    if common.plots_available():
        if train_set.X.shape[1] == 2:
            common.plot_decision_boundaries(output_dir / "decision_boundaries.png", panels, fit_part.X, fit_part.y)
            plots.append("decision_boundaries.png")
        plot_sweep(output_dir / "lambda_sweep.png", sweep,
                   f"Bias/variance trade-off: train ({fit_part.X.shape[0]}) and dev ({dev_part.X.shape[0]}) error vs λ")
        common.plot_curves(output_dir / "cost_curves.png", {name: np.asarray(r["cost_curve"]["mean"]) for name, r in rows.items()},
                           xlabel=f"epoch (sampled, {len(rows['none']['cost_curve']['epochs'])} points)", ylabel="cost",
                           title="Training cost (mean over seeds)")
        plots += ["lambda_sweep.png", "cost_curves.png"]
    settings = {
        "layer_sizes": layer_sizes, "activation": "relu", "init": FLAGS.init, "optimizer": "gd",
        "epochs": FLAGS.epochs, "learning_rate": FLAGS.learning_rate, "num_seeds": FLAGS.num_seeds,
        "early_stopping": FLAGS.early_stopping, "dev_fraction": FLAGS.dev_fraction, "bayes_error": bayes_error,
        "bayes_error_source": bayes_source, "tolerance": FLAGS.tolerance, "seed": FLAGS.seed, "data": common.data_source(),
        "n_train": int(train_set.X.shape[0]), "n_fit": int(fit_part.X.shape[0]), "n_dev": int(dev_part.X.shape[0]),
        "n_test": int(test_set.X.shape[0]),
        **({"noise": FLAGS.noise, "flip": FLAGS.flip} if common.generated_data() else {}),
    }
    report = [
        "# Regularization study", "",
        (f"Net {'-'.join(map(str, layer_sizes))} (ReLU, {FLAGS.init} init, "
         f"{common.output_description(layer_sizes[-1])}), full-batch gradient "
         f"descent, learning rate {FLAGS.learning_rate:g}, {FLAGS.epochs} epochs, {FLAGS.num_seeds} seeds per row "
         f"(mean ± std over seeds). Data: {common.data_source()}: {train_set.X.shape[0]} training and "
         f"{test_set.X.shape[0]} test examples."), "",
        (f"Early stopping and the choice of λ need a dev set: {dev_part.X.shape[0]} examples "
         f"({FLAGS.dev_fraction:.0%}) are carved out of the training set, and every row and the λ sweep train on the "
         f"other {fit_part.X.shape[0]} (train accuracy is on those). Test accuracy is on the test set. The verdicts "
         f"compare train error with a Bayes-error estimate of {100 * bayes_error:.1f}% ({bayes_source}; avoidable "
         f"bias) and test error "
         f"with train error (variance); a gap above {100 * FLAGS.tolerance:.0f} points counts as high."), "",
        table, "", "## Findings", "", *[f"- {line}" for line in summary_lines], "",
        f"Advice for the unregularized net ({rows['none']['diagnosis']['verdict']}): "
        + "; ".join(rows["none"]["diagnosis"]["advice"]) + ".", "",
        "## λ sweep", "",
        (f"{FLAGS.sweep_points} values, one compiled program, trained together (vmap, with the rows above) on the "
         f"{fit_part.X.shape[0]} training examples from the same initialization; dev error on the "
         f"{dev_part.X.shape[0]} dev examples, test error on the test set "
         f"({sweep['seconds_with_compilation']:.1f} s for the whole call, compilation included)."), "",
        sweep_table, "",
    ]
    print("\n" + "\n".join(summary_lines))
    common.finish_study(output_dir, {
        "study": STUDY, "settings": settings, "rows": rows,
        "lambda_sweep": sweep, "findings": summary_lines, "plots": plots,
    }, report, plots)


if __name__ == "__main__":
    common.run_study(main)
