"""Adaptive and model-based search against random search on one space and budget: TPE, halving, Hyperband, PBT, median stopping.

Default: MNIST-1D (the mnist1d package's 4000 training sequences, a dev split of --dev_fraction
of them for the search; the 1000 test sequences touched once per method), a 40-64-64-10 ReLU MLP
with Adam and mini-batches of 100, over the learning rate, the L2 λ and keep_prob:

- random search: ``--num_configs`` configs × ``--max_epochs`` epochs (the reference budget);
- TPE: the same budget, sampled by Optuna's TPE in rounds (``sweep.run(..., sampler="tpe")``: ask
  ``⌈num_configs / 8⌉`` configs, train them in one chunk, tell them, ask again);
- successive halving: ``--num_configs`` configs from ``--min_epochs`` to ``--max_epochs``, keeping 1/``--eta``;
- Hyperband: Li et al.'s brackets from ``--min_epochs`` to ``--max_epochs``; ``hyperband_tpe``: the
  same brackets with TPE asking each bracket's configs after the bracket before (a BOHB-like mix);
- PBT: ``--population`` members (default: as many as random search's configs) for ``--max_epochs``,
  exploiting every ``--interval`` epochs: random search's compute;
- median stopping (Golovin et al. 2017): ``--num_configs`` configs up to ``--max_epochs``, each
  stopped at a check every ``--interval`` epochs once its best is below the median of the others'
  running averages.

Each method's winner (a config, or PBT's hyperparameter schedule) is retrained on train + dev and
its test accuracy reported once. The report has a table, and a plot of the best dev accuracy found
against the config-steps spent. ``--quick`` is a small run on moons (what the tests run).

    python -m experiments.adaptive_search [--dataset mnist1d|moons] [--methods random,tpe,halving,hyperband,...]
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import sweep, train
from experiments import common

STUDY = "adaptive_search"
FLAGS = flags.FLAGS
METHODS = ("random", "tpe", "halving", "hyperband", "hyperband_tpe", "pbt", "median")
QUICK = {  # a small run on moons, end to end in seconds
    "dataset": "moons", "num_configs": 9, "max_epochs": 9, "min_epochs": 1, "interval": 3, "n_train": 200,
    "n_dev": 100, "n_test": 100, "batch_size": 50,
}

common.define_study_flags()
common.define_task_flag()
common.define_hidden_flag(["64", "64"])
common.define_host_devices_flag()
flags.DEFINE_enum("dataset", "mnist1d", ["mnist1d", "moons", "friedman1"],
                  "Data set (ignored with --data); --task regression generates friedman1 (its noise: --noise, "
                  "default 1).")
flags.DEFINE_float("dev_fraction", 0.2, "Fraction of the training set (MNIST-1D's or --data's) held out as dev set.")
flags.DEFINE_integer("n_train", 600, "moons: generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_dev", 300, "moons: generated dev examples.", lower_bound=2)
flags.DEFINE_integer("n_test", 300, "moons: generated test examples.", lower_bound=2)
flags.DEFINE_float("noise", 0.2, "moons: noise.", lower_bound=0.0)
flags.DEFINE_integer("batch_size", 100, "Mini-batch size.", lower_bound=1)
flags.DEFINE_list("methods", list(METHODS), f"Methods to compare, from {', '.join(METHODS)}.")
flags.DEFINE_integer("num_configs", 81, "Configs of random search and of successive halving.", lower_bound=1)
flags.DEFINE_integer("max_epochs", 81, "Epochs of a full run (random search's, and the top rung).", lower_bound=1)
flags.DEFINE_integer("min_epochs", 1, "Epochs of the first rung (halving, Hyperband).", lower_bound=1)
flags.DEFINE_integer("eta", 3, "Keep the top 1/eta at each rung.", lower_bound=2)
flags.DEFINE_integer("population", None, "PBT members (default --num_configs: random search's compute).", lower_bound=2)
flags.DEFINE_integer("interval", 9, "PBT: epochs between exploits; median stopping: between checks.", lower_bound=1)
flags.DEFINE_float("fraction", 0.25, "PBT: the bottom fraction copies the top fraction.")
flags.DEFINE_integer("num_seeds", 1, "Keys per config (the metric is their mean).", lower_bound=1)
flags.DEFINE_list("learning_rate_range", ["1e-4", "1e-1"], "Log-uniform range of Adam's learning rate.")
flags.DEFINE_list("l2_range", ["1e-6", "1"], "Log-uniform range of the L2 λ.")
flags.DEFINE_list("keep_prob_range", ["0.5", "1"], "Uniform range of keep_prob.")
flags.DEFINE_integer("repeats", 1, "Repeat every search with another search key (same data); mean ± std.",
                     lower_bound=1)
flags.DEFINE_bool("quick", False, "A small run on moons: " + ", ".join(f"--{k}={v}" for k, v in QUICK.items()) + ".")
flags.register_validator("methods", lambda v: bool(v) and set(v) <= set(METHODS),
                         message=f"--methods must be a comma-separated list from {', '.join(METHODS)}")
flags.register_validator("dev_fraction", lambda v: 0 < v < 1, message="--dev_fraction must be in (0, 1)")
flags.register_validator("fraction", lambda v: 0 < v <= 0.5, message="--fraction must be in (0, 0.5]")
for _name, _high in (("learning_rate_range", None), ("l2_range", None), ("keep_prob_range", 1.0)):
    common.register_range_validator(_name, 0.0, _high)
flags.register_multi_flags_validator(["min_epochs", "max_epochs"], lambda v: v["min_epochs"] <= v["max_epochs"],
                                     message="--min_epochs must be <= --max_epochs")
flags.register_multi_flags_validator(["interval", "max_epochs"], lambda v: v["interval"] <= v["max_epochs"],
                                     message="--interval must be <= --max_epochs")


def settings() -> dict[str, Any]:
    """The flags, with ``--quick``'s values in place of the ones it sets (explicit flags count only without it)."""
    values = {name: FLAGS[name].value for name in (
        "dataset", "dev_fraction", "n_train", "n_dev", "n_test", "noise", "batch_size", "methods", "num_configs",
        "max_epochs", "min_epochs", "eta", "population", "interval", "fraction", "num_seeds", "seed", "repeats")}
    if FLAGS.quick:
        values.update(QUICK)
    values["dataset"], values["noise"] = common.task_dataset(values["dataset"], values["noise"])
    values["population"] = values["population"] or values["num_configs"]
    return values


def shown(metric: str, value: float) -> str:
    """A metric's value for the report: accuracies in percent, others to four significant digits."""
    return f"{100 * value:.1f}%" if metric.endswith("accuracy") else f"{value:.4g}"


def load_data(key: jax.Array, s: dict[str, Any]) -> tuple[data_lib.Dataset, data_lib.Dataset, data_lib.Dataset]:
    """``(train, dev, test)`` as host arrays: --data, MNIST-1D (dev split of its training set) or moons."""
    split_key, train_key, dev_key, test_key = jax.random.split(key, 4)
    user = common.load_user_data(split_key)
    if user is None and s["dataset"] in ("moons", "friedman1"):
        make = data_lib.make_moons if s["dataset"] == "moons" else data_lib.make_friedman1
        return tuple(data_lib.Dataset(*map(np.asarray, make(k, n, s["noise"])))
                     for k, n in ((train_key, s["n_train"]), (dev_key, s["n_dev"]), (test_key, s["n_test"])))
    if user is None:
        try:
            user = data_lib.load_mnist1d()
        except ImportError as error:
            raise common.StudyInputError(str(error)) from None
    train_set, test_set = user
    try:
        train_set, dev_set, _ = data_lib.train_dev_test_split(split_key, train_set, s["dev_fraction"], 0.0)
    except ValueError as error:
        raise common.StudyInputError(f"--dev_fraction: {error}") from None
    return (data_lib.Dataset(*map(np.asarray, train_set)), data_lib.Dataset(*map(np.asarray, dev_set)),
            data_lib.Dataset(*map(np.asarray, test_set)))


def search_space() -> dict[str, Any]:
    lr, l2, keep = (tuple(map(float, FLAGS[name].value)) for name in ("learning_rate_range", "l2_range",
                                                                      "keep_prob_range"))
    return {"learning_rate": sweep.log_uniform(*lr), "l2": sweep.log_uniform(*l2), "keep_prob": sweep.uniform(*keep)}


def added_epochs(history: list[dict[str, Any]]) -> list[int]:
    """Epochs each row's stage trained: its epochs_trained less the same run's previous row's (0 before)."""
    last: dict[str, int] = {}
    added = []
    for row in history:
        run = row.get("run_id", row["id"])
        epochs = int(row.get("epochs_trained", row["config"]["epochs"]))
        added.append(epochs - last.get(run, 0))
        last[run] = epochs
    return added


def best_so_far(
    history: list[dict[str, Any]], batches: int, seeds: int, metric: str = "dev_accuracy", maximize: bool = True
) -> tuple[list[int], list[float]]:
    """Cumulative config-steps and the best seed-mean ``metric`` (dev accuracy) seen so far, after each config-stage."""
    steps, best, spent = [], [], 0
    top = -np.inf if maximize else np.inf
    better = max if maximize else min
    added = added_epochs(history)
    for start in range(0, len(history), seeds):
        rows = history[start : start + seeds]
        spent += sum(added[start : start + seeds]) * batches
        values = [r[metric] for r in rows if r.get(metric) is not None]
        if values and not any(r.get("diverged") for r in rows):
            top = better(top, float(np.mean(values)))
        steps.append(spent)
        best.append(top)
    return steps, best


def plot_best(path: pathlib.Path, curves: dict[str, tuple[list[int], list[float]]], metric: str = "dev_accuracy") -> None:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, (steps, best) in curves.items():
        axis.step(steps, best, where="post", label=method)
    axis.set_xscale("log")
    axis.set_xlabel("config-steps spent (updates × runs)")
    axis.set_ylabel(f"best {metric.replace('_', ' ')} so far")
    axis.set_title(f"Best {metric.replace('_', ' ')} found against compute")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> None:
    del argv
    common.split_cpu(FLAGS.host_devices)
    s = settings()
    output_dir = common.prepare_output_dir(STUDY)
    data_key, search_key = jax.random.split(jax.random.key(s["seed"]))
    train_set, dev_set, test_set = load_data(data_key, s)
    layer_sizes = common.layer_sizes_for(common.hidden_widths(), train_set, dev_set, test_set)
    task = common.study_task()
    metric, primary = common.ranked_metric(), task.primary
    config = train.Config(layer_sizes, activation="relu", init="he", optimizer="adam", batch_size=s["batch_size"],
                          epochs=s["max_epochs"], task=task)
    space = search_space()
    source = common.data_source() if FLAGS.data else s["dataset"]
    batches = -(-len(train_set.y) // min(s["batch_size"], len(train_set.y)))
    print(f"{STUDY}: net {'-'.join(map(str, layer_sizes))} (Adam, batch {s['batch_size']}), data {source} "
          f"({len(train_set.y)} train / {len(dev_set.y)} dev / {len(test_set.y)} test), {len(jax.devices())} device(s)")
    full_train = common.train_plus_dev(train_set, dev_set)
    repeats = []  # per repeat: {method: summary}
    curves = {}  # the first repeat's
    clock = common.StudyClock(s["repeats"] * len(s["methods"]))
    for repeat in range(s["repeats"]):
        key = search_key if repeat == 0 else jax.random.fold_in(search_key, repeat)
        if s["repeats"] > 1:
            print(f" repeat {repeat + 1}/{s['repeats']} (search key {repeat}):")
        summaries, repeat_curves = run_methods(s, config, space, (train_set, dev_set, test_set), full_train, key,
                                               batches, clock)
        repeats.append(summaries)
        curves = curves or repeat_curves
    reference = repeats[0].get("random", {}).get("config_steps")
    table = common.markdown_table(
        ["method", "configs", "config-steps", "vs random", f"best dev {primary}", "winner (lr, λ, keep_prob)",
         f"test {primary} (retrained on train + dev)", "seconds"],
        [[method, v["configs"], v["config_steps"], f"{v['config_steps'] / reference:.2f}×" if reference else "—",
          spread([r[method][f"best_{metric}"] for r in repeats], metric),
          f"{v['winner']['learning_rate']:.3g}, {v['winner']['l2']:.3g}, {v['winner']['keep_prob']:.2f}"
          + (" (repeat 1)" if len(repeats) > 1 else ""),
          spread([r[method][f"test_{primary}_after_retraining"] for r in repeats], metric),
          f"{np.mean([r[method]['seconds'] for r in repeats]):.1f}"] for method, v in repeats[0].items()],
    )
    print("\n" + table)
    findings = target_findings(repeats, reference, targets=s["dataset"] == "mnist1d" and not FLAGS.data,
                               metric=metric)
    print("\n".join(findings))
    plots = []
    if common.plots_available():
        plot_best(output_dir / f"best_{metric}_vs_config_steps.png", curves, metric)
        plots.append(f"best_{metric}_vs_config_steps.png")
    record = {
        "study": STUDY, "settings": {**s, "task": task.name, "layer_sizes": layer_sizes, "data": source,
                                     "space": sweep_space_text(space)},
        "methods": repeats[0], "repeats": repeats,
        "curves": {m: {"config_steps": c[0], f"best_{metric}": c[1]} for m, c in curves.items()},
        "findings": findings, "plots": plots,
    }
    report = [
        "# Adaptive search against random search", "",
        f"Net {'-'.join(map(str, layer_sizes))} (ReLU, He init, Adam), mini-batches of {s['batch_size']}, "
        f"data {source} ({len(train_set.y)} train / {len(dev_set.y)} dev / {len(test_set.y)} test), "
        f"{s['num_seeds']} seed(s) per config, {s['repeats']} repeat(s) of every search with another search key "
        f"(mean ± std over repeats; the winner shown is repeat 1's). Space: {'; '.join(sweep_space_text(space))}. Random search "
        f"and TPE (Optuna's, asked and told in rounds of {sweep.ask_size(s['num_configs'], s['num_seeds'], None, 1)} "
        f"configs): {s['num_configs']} configs × {s['max_epochs']} epochs; halving and Hyperband from {s['min_epochs']} to "
        f"{s['max_epochs']} epochs, eta {s['eta']}; PBT: {s['population']} members, exploit every {s['interval']} "
        f"epochs (bottom {s['fraction']:g} copy the top); median stopping: {s['num_configs']} configs, checked every "
        f"{s['interval']} epochs. Each winner is retrained on train + dev and tested once.", "",
        table, "", "## Findings", "", *[f"- {line}" for line in findings], "",
    ]
    common.finish_study(output_dir, record, report, plots)


def run_methods(
    s: dict[str, Any],
    config: train.Config,
    space: dict[str, Any],
    splits: tuple[data_lib.Dataset, data_lib.Dataset, data_lib.Dataset],
    full_train: data_lib.Dataset,
    key: jax.Array,
    batches: int,
    clock: common.StudyClock,
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[list[int], list[float]]]]:
    """Every method of ``--methods`` with one search key: their summaries and best-so-far curves."""
    train_set, dev_set, test_set = splits
    common_args = dict(key=key, seeds=s["num_seeds"], test=None)
    runners = {
        "random": lambda: sweep.run(config, space, train_set, dev_set, num_configs=s["num_configs"], **common_args),
        "tpe": lambda: sweep.run(config, space, train_set, dev_set, num_configs=s["num_configs"], sampler="tpe",
                                 **common_args),
        "halving": lambda: sweep.successive_halving(
            config, space, train_set, dev_set, num_configs=s["num_configs"], min_epochs=s["min_epochs"],
            max_epochs=s["max_epochs"], eta=s["eta"], **common_args),
        "hyperband": lambda: sweep.hyperband(
            config, space, train_set, dev_set, min_epochs=s["min_epochs"], max_epochs=s["max_epochs"], eta=s["eta"],
            **common_args),
        "hyperband_tpe": lambda: sweep.hyperband(
            config, space, train_set, dev_set, min_epochs=s["min_epochs"], max_epochs=s["max_epochs"], eta=s["eta"],
            sampler="tpe", **common_args),
        "pbt": lambda: sweep.pbt(
            config, space, train_set, dev_set, population=s["population"], epochs=s["max_epochs"],
            interval=s["interval"], fraction=s["fraction"], **common_args),
        "median": lambda: sweep.median_stopping(
            config, space, train_set, dev_set, num_configs=s["num_configs"], max_epochs=s["max_epochs"],
            interval=s["interval"], **common_args),
    }
    summaries, curves = {}, {}
    for method in s["methods"]:
        started = time.perf_counter()
        try:
            results = runners[method]()
        except ValueError as error:
            raise common.StudyInputError(f"{method}: {error}") from None
        seconds = time.perf_counter() - started
        history = results.history or results.rows
        task = config.task
        metric, primary = f"dev_{task.primary}", task.primary
        curves[method] = best_so_far(history, batches, s["num_seeds"], metric, task.higher_is_better)
        winner = results.best(1)[0]
        test_value = float(np.mean(common.retrained_test_metrics(results.rows, winner["config_id"], full_train,
                                                                 test_set, primary)))
        summaries[method] = {
            "configs": results.stats["configs"],
            "config_steps": results.config_steps,
            f"best_{metric}": winner[metric]["mean"],
            "winner": {name: winner["hparams"][name] for name in space},
            "winner_epochs": int(winner.get("epochs_trained", {}).get("min") or s["max_epochs"]),
            f"test_{primary}_after_retraining": test_value,
            "seconds": seconds,
            "compilations": results.stats["compilations"],
            **({"brackets": results.stats["brackets"]} if "brackets" in results.stats else {}),
            **({"exploits": len(results.stats["exploits"])} if "exploits" in results.stats else {}),
            **({"stopped": len(results.stats["stopped"])} if "stopped" in results.stats else {}),
        }
        print(f"  {method:>13}: best dev {primary} {shown(metric, summaries[method][f'best_{metric}'])} after "
              f"{results.config_steps} config-steps, retrained test {shown(metric, test_value)} ({seconds:.1f} s)"
              + clock.done())
    return summaries, curves


def spread(values: list[float], metric: str = "dev_accuracy") -> str:
    """``mean ± std`` over repeats (the sample std), or the one value: accuracies in percent, others as numbers."""
    scale, unit, digits = (100, "%", ".2f") if metric.endswith("accuracy") else (1, "", ".4g")
    if len(values) == 1:
        return f"{scale * values[0]:{digits}}{unit}"
    return f"{scale * np.mean(values):{digits}} ± {scale * np.std(values, ddof=1):{digits}}{unit}"


def target_findings(
    repeats: list[dict[str, dict[str, Any]]], reference: int | None, targets: bool, metric: str = "dev_accuracy"
) -> list[str]:
    """Each method against random search, per repeat; ``targets``: the MNIST-1D targets checked on the numbers."""
    if not reference:
        return []
    lines = []
    for method in repeats[0]:
        if method == "random":
            continue
        gaps = [r[method][f"best_{metric}"] - r["random"][f"best_{metric}"] for r in repeats]
        ratio = repeats[0][method]["config_steps"] / reference
        differences = (", ".join(f"{100 * g:+.2f}" for g in gaps) + " points" if metric.endswith("accuracy")
                       else ", ".join(f"{g:+.4g}" for g in gaps))
        lines.append(
            f"{method}: best {metric.replace('_', ' ')} {differences} against random "
            f"search's best (per repeat), at {ratio:.2f}× its config-steps.")
        if method == "hyperband" and targets:
            met = sum(g >= -0.005 for g in gaps)
            lines.append(f"Target (Hyperband within 0.5 points of random search's best at ≤ 1/3 of its config-steps): "
                         f"{'met' if met == len(gaps) and ratio <= 1 / 3 else 'not met'} "
                         f"({met} of {len(gaps)} repeats within 0.5 points, {ratio:.2f}× the config-steps).")
        if method == "pbt" and targets:
            met = sum(g > 0 for g in gaps)
            lines.append(f"Target (PBT beats random search's best at its compute): "
                         f"{'met' if met == len(gaps) and ratio <= 1.0 + 1e-9 else 'not met'} "
                         f"({met} of {len(gaps)} repeats above it, {ratio:.2f}× the config-steps).")
    return lines


def sweep_space_text(space: dict[str, Any]) -> list[str]:
    return [f"{name} {type(value).__name__} [{value.value_bounds[0]:.3g}, {value.value_bounds[1]:.3g}]"
            for name, value in space.items()]


if __name__ == "__main__":
    common.run_study(main)
