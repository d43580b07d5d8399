"""MNIST-1D (Greydanus 2020): the paper's table reproduced with deepopt, then the MLP and the CNN tuned by deepopt.

Part 1 trains the paper's baselines the paper's way (Adam at 1e-2, mini-batches of 100, 200 epochs
= 8000 steps, no weight decay) over ``--num_seeds`` keys, on the plain and the spatially shuffled
variant: logistic regression (no hidden layer), deepopt's own 40-100-100-10 MLP, the paper's
residual MLP (``h = relu(W1 x); h = h + relu(W2 h)``, a Flax module) and its CNN (three Conv1d of 25
channels, kernels 5, 3, 3, stride 2, padding 1, then a linear layer; a Flax module).

Part 2 tunes deepopt's MLP and the CNN on the plain variant with ``--search`` (Hyperband by
default) over the learning rate, the L2 λ, dropout (the MLP's keep_prob; the CNN's dropout rate
before its linear layer, a static choice) and the schedule (constant or cosine), on a dev split of
the 4000 training examples; the winner is retrained on all 4000 with ``--num_seeds`` new keys and
its test accuracy reported once.

    python -m experiments.mnist1d [--num_seeds 3] [--search hyperband|pbt|random] [--quick]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import modules, sweep, train
from experiments import common
from experiments.mnist1d_models import PaperCNN, PaperResidualMLP, pytorch_init  # noqa: F401  (re-exported)

STUDY = "mnist1d"
FLAGS = flags.FLAGS
# The paper's README (test accuracy, %): plain variant, and the spatially shuffled one where it gives it.
PAPER = {"logistic regression": (32, None), "MLP": (68, 68), "CNN": (94, 56), "GRU": (91, None), "human expert": (96, None)}
QUICK = {"epochs": 3, "num_seeds": 2, "subset": 400, "min_epochs": 1, "schedules": ["constant"],
         "cnn_dropouts": ["0", "0.25"], "num_configs": 4, "population": 4, "interval": 1}


common.define_study_flags()
common.define_host_devices_flag()
FLAGS.set_default("host_devices", 0)  # one device: the CNN's convolutions use both cores better in one
flags.DEFINE_integer("epochs", 200, "Epochs (the paper: 8000 steps of 100 = 200 epochs).", lower_bound=1)
flags.DEFINE_integer("batch_size", 100, "Mini-batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-2, "Adam's learning rate for the paper's settings.")
flags.DEFINE_integer("num_seeds", 3, "Keys per row (mean ± sample std over them).", lower_bound=1)
flags.DEFINE_list("variants", ["plain", "shuffled"], "Data variants of part 1: plain and/or shuffled.")
flags.DEFINE_list("tune", ["mlp", "cnn"], "Models part 2 tunes: mlp (deepopt's 40-100-100-10) and/or cnn; empty: none.")
flags.DEFINE_enum("search", "hyperband", ["hyperband", "pbt", "random"], "How part 2 searches.")
flags.DEFINE_integer("min_epochs", None, "hyperband: first rung (default --epochs // 27).", lower_bound=1)
flags.DEFINE_integer("eta", 3, "hyperband: keep the top 1/eta.", lower_bound=2)
flags.DEFINE_integer("num_configs", 27, "random: configs; pbt: see --population.", lower_bound=1)
flags.DEFINE_integer("population", 27, "pbt: members.", lower_bound=2)
flags.DEFINE_integer("interval", 20, "pbt: epochs between exploits.", lower_bound=1)
flags.DEFINE_float("dev_fraction", 0.2, "Part 2: fraction of the 4000 training examples held out to tune on.")
flags.DEFINE_list("learning_rate_range", ["1e-3", "3e-2"], "Part 2: log-uniform range of the learning rate.")
flags.DEFINE_list("l2_range", ["1e-3", "3"], "Part 2: log-uniform range of the L2 λ.")
flags.DEFINE_list("keep_prob_range", ["0.5", "1"], "Part 2: uniform range of the MLP's keep_prob.")
flags.DEFINE_list("cnn_dropouts", ["0", "0.1", "0.25"], "Part 2: the CNN's dropout rates to choose from.")
flags.DEFINE_list("schedules", ["constant", "cosine"], "Part 2: learning-rate schedules to choose from.")
flags.DEFINE_integer("subset", None, "Use the first N training and N/4 test examples (for quick runs).", lower_bound=20)
flags.DEFINE_bool("quick", False, "A small run: " + ", ".join(f"--{k}={v}" for k, v in QUICK.items()) + ".")
flags.register_validator("variants", lambda v: bool(v) and set(v) <= {"plain", "shuffled"},
                         message="--variants must be a comma-separated list of plain and shuffled")
flags.register_validator("tune", lambda v: set(v) <= {"mlp", "cnn"}, message="--tune must list mlp and/or cnn")
flags.register_validator("learning_rate", lambda v: v > 0, message="--learning_rate must be > 0")
flags.register_validator("dev_fraction", lambda v: 0 < v < 1, message="--dev_fraction must be in (0, 1)")
for _name, _high in (("learning_rate_range", None), ("l2_range", None), ("keep_prob_range", 1.0)):
    common.register_range_validator(_name, 0.0, _high)
flags.register_validator("schedules", lambda v: bool(v) and set(v) <= {"constant", "cosine"},
                         message="--schedules must list constant and/or cosine")


def settings() -> dict[str, Any]:
    names = ("epochs", "batch_size", "learning_rate", "num_seeds", "variants", "tune", "search", "min_epochs", "eta",
             "num_configs", "population", "interval", "dev_fraction", "cnn_dropouts", "schedules", "subset", "seed")
    values = {name: FLAGS[name].value for name in names}
    if FLAGS.quick:
        values.update(QUICK)
    values["min_epochs"] = values["min_epochs"] or max(values["epochs"] // 27, 1)
    values["cnn_dropouts"] = [float(v) for v in values["cnn_dropouts"]]
    if any(not 0 <= v < 1 for v in values["cnn_dropouts"]) or not values["cnn_dropouts"]:
        raise common.StudyInputError(f"--cnn_dropouts must be rates in [0, 1), got {values['cnn_dropouts']}")
    if values["min_epochs"] > values["epochs"] or values["interval"] > values["epochs"]:
        raise common.StudyInputError("--min_epochs and --interval must be <= --epochs")
    return values


def load(shuffled: bool, subset: int | None) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    try:
        train_set, test_set = data_lib.load_mnist1d(shuffle_seq=shuffled)
    except ImportError as error:
        raise common.StudyInputError(str(error)) from None
    if subset:
        train_set = data_lib.Dataset(train_set.X[:subset], train_set.y[:subset])
        test_set = data_lib.Dataset(test_set.X[: max(subset // 4, 10)], test_set.y[: max(subset // 4, 10)])
    return train_set, test_set


def paper_rows(s: dict[str, Any]) -> dict[str, train.Config]:
    common_fields = dict(optimizer="adam", batch_size=s["batch_size"], epochs=s["epochs"])
    return {
        "logistic regression": train.Config((40, 10), **common_fields),
        "MLP (deepopt, 40-100-100-10)": train.Config((40, 100, 100, 10), **common_fields),
        "MLP (paper's residual, Flax)": train.Config(model=PaperResidualMLP(), **common_fields),
        "CNN (paper's, Flax)": train.Config(model=PaperCNN(), **common_fields),
    }


def paper_number(row: str, variant: str) -> int | None:
    key = "CNN" if row.startswith("CNN") else "MLP" if row.startswith("MLP") else row
    plain, shuffled = PAPER[key]
    return plain if variant == "plain" else shuffled


def train_seeds(config: train.Config, hp: train.HParams, keys: jax.Array, train_set: data_lib.Dataset,
                test_set: data_lib.Dataset) -> dict[str, Any]:
    """``fit_with_curves`` vmapped over ``keys`` (one compiled call): test accuracy per seed and its curve per epoch."""
    run = jax.jit(jax.vmap(lambda key: train.fit_with_curves(config, hp, key, train_set, test_set)))
    started = time.perf_counter()
    result, log = jax.block_until_ready(run(keys))
    return {
        "test_accuracy": [float(v) for v in np.asarray(result.dev_accuracy)],
        "train_accuracy": [float(v) for v in np.asarray(result.train_accuracy)],
        "curve": np.nanmean(np.asarray(log.dev_accuracy, np.float64), axis=0).tolist(),
        "seconds": time.perf_counter() - started,
    }


def stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max())}


def percent(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}%"


def tuning_space(model: str, s: dict[str, Any]) -> tuple[train.Config, dict[str, Any], dict[str, Any]]:
    """The base config, the space and ``{description: module}`` of the choices (to rebuild a row's Config)."""
    lr, l2, keep = (tuple(map(float, FLAGS[name].value)) for name in ("learning_rate_range", "l2_range",
                                                                      "keep_prob_range"))
    space: dict[str, Any] = {"learning_rate": sweep.log_uniform(*lr), "l2": sweep.log_uniform(*l2)}
    if len(s["schedules"]) > 1:
        space["schedule"] = sweep.choice(s["schedules"])
    common_fields = dict(optimizer="adam", batch_size=s["batch_size"], epochs=s["epochs"], schedule=s["schedules"][0])
    if model == "mlp":
        space["keep_prob"] = sweep.uniform(*keep)
        return train.Config((40, 100, 100, 10), **common_fields), space, {}
    cnns = [PaperCNN(dropout=rate) for rate in s["cnn_dropouts"]]
    space["model"] = sweep.choice(cnns) if len(cnns) > 1 else cnns[0]
    return train.Config(model=cnns[0], **common_fields), space, {modules.describe(m): m for m in cnns}


def search(model: str, s: dict[str, Any], tune_train: data_lib.Dataset, tune_dev: data_lib.Dataset,
           key: jax.Array) -> tuple[sweep.Results, dict[str, Any]]:
    config, space, cnns = tuning_space(model, s)
    if s["search"] == "hyperband":
        results = sweep.hyperband(config, space, tune_train, tune_dev, key=key, min_epochs=s["min_epochs"],
                                  max_epochs=s["epochs"], eta=s["eta"])
    elif s["search"] == "pbt":
        results = sweep.pbt(config, space, tune_train, tune_dev, key=key, population=s["population"],
                            epochs=s["epochs"], interval=s["interval"])
    else:
        results = sweep.run(config, space, tune_train, tune_dev, key=key, num_configs=s["num_configs"])
    return results, cnns


def retrain(method: str, row: dict[str, Any], cnns: dict[str, Any], keys: jax.Array, s: dict[str, Any],
            train_set: data_lib.Dataset, test_set: data_lib.Dataset) -> dict[str, Any]:
    """The winner's config (PBT: its hyperparameter schedule) trained on all of ``train_set`` with ``keys``; test once."""
    model = cnns.get(row["config"].get("model")) if row["config"].get("model") else None
    config = dataclasses.replace(sweep.config_of(row, model), epochs=s["epochs"])
    if method != "pbt":
        return train_seeds(config, sweep.hparams_of(row), keys, train_set, test_set)
    started, accuracies, train_accuracies, curves = time.perf_counter(), [], [], []
    base = sweep.hparams_of(row)
    for key in keys:
        state = train.init_state(config, base, key, train_set)
        curve = []
        for segment in row["schedule"]:
            state, log = train.advance(config, base._replace(**segment["hparams"]), state, train_set, test_set,
                                       epochs=segment["to_epoch"] - segment["from_epoch"], log_metrics=True)
            curve += np.asarray(log.dev_accuracy, np.float64).tolist()
        accuracies.append(float(train.evaluate(config, state, test_set)["accuracy"]))
        train_accuracies.append(float(train.evaluate(config, state, train_set)["accuracy"]))
        curves.append(curve)
    return {"test_accuracy": accuracies, "train_accuracy": train_accuracies,
            "curve": np.mean(np.asarray(curves), axis=0).tolist(), "seconds": time.perf_counter() - started}


def plot_curves(path: Any, curves: dict[str, list[float]]) -> None:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.8))
    for label, curve in curves.items():
        axis.plot(np.arange(1, len(curve) + 1), curve, label=label, linestyle="--" if "tuned" in label else "-")
    axis.set_xlabel("epoch")
    axis.set_ylabel("test accuracy (mean over seeds)")
    axis.set_title("MNIST-1D: the paper's settings and deepopt's tuned ones")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_bars(path: Any, table: list[dict[str, Any]]) -> None:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.8))
    labels = [entry["row"] for entry in table]
    x = np.arange(len(labels))
    paper = [entry["paper"] if entry["paper"] is not None else np.nan for entry in table]
    ours = [100 * entry["deepopt"]["mean"] for entry in table]
    spread = [100 * entry["deepopt"]["std"] for entry in table]
    axis.bar(x - 0.2, paper, 0.4, label="paper")
    axis.bar(x + 0.2, ours, 0.4, yerr=spread, capsize=3, label="deepopt (mean ± std over seeds)")
    axis.set_xticks(x, labels, rotation=25, ha="right", fontsize=8)
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> None:
    del argv
    common.split_cpu(FLAGS.host_devices)
    s = settings()
    output_dir = common.prepare_output_dir(STUDY)
    started = time.perf_counter()
    reproduce_key, split_key, search_key, retrain_key = jax.random.split(jax.random.key(s["seed"]), 4)
    seed_keys = jax.random.split(reproduce_key, s["num_seeds"])
    hp = train.HParams(learning_rate=s["learning_rate"])
    print(f"{STUDY}: Adam {s['learning_rate']:g}, batch {s['batch_size']}, {s['epochs']} epochs, {s['num_seeds']} seeds, "
          f"{len(jax.devices())} device(s)" + (f", first {s['subset']} training examples" if s["subset"] else ""))
    table, curves, timings = [], {}, {}
    clock = common.StudyClock(len(s["variants"]) * len(paper_rows(s)))  # part 1: the paper's rows
    for variant in s["variants"]:
        train_set, test_set = load(variant == "shuffled", s["subset"])
        for name, config in paper_rows(s).items():
            measured = train_seeds(config, hp, seed_keys, train_set, test_set)
            summary = stats(measured["test_accuracy"])
            paper = paper_number(name, variant)
            table.append({"row": f"{name}, {variant}", "variant": variant, "paper": paper, "deepopt": summary,
                          "train_accuracy": stats(measured["train_accuracy"]), "seconds": measured["seconds"],
                          "per_seed": measured["test_accuracy"]})
            if variant == "plain":
                curves[f"{name} (paper's settings)"] = measured["curve"]
            print(f"  {name:>30} ({variant}): test {percent(summary)} (paper {paper if paper is not None else '—'}%), "
                  f"{measured['seconds']:.1f} s" + clock.done())
    timings["reproduce"] = time.perf_counter() - started

    tuned = {}
    if s["tune"]:
        train_set, test_set = load(False, s["subset"])
        tune_train, tune_dev, _ = data_lib.train_dev_test_split(split_key, train_set, s["dev_fraction"], 0.0)
        retrain_keys = jax.random.split(retrain_key, s["num_seeds"])
        clock = common.StudyClock(len(s["tune"]))  # part 2: one search and retrain per model
        for model in s["tune"]:
            search_started = time.perf_counter()
            try:
                results, cnns = search(model, s, tune_train, tune_dev, search_key)
            except ValueError as error:
                raise common.StudyInputError(f"tuning the {model}: {error}") from None
            search_seconds = time.perf_counter() - search_started
            entry = results.best(1)[0]
            row = next(r for r in results.rows if r["config_id"] == entry["config_id"])
            measured = retrain(s["search"], row, cnns, retrain_keys, s, train_set, test_set)
            summary = stats(measured["test_accuracy"])
            label = "MLP (deepopt, 40-100-100-10)" if model == "mlp" else "CNN (paper's, Flax)"
            tuned[model] = {
                "row": f"{label}, tuned ({s['search']})", "variant": "plain", "paper": None, "deepopt": summary,
                "train_accuracy": stats(measured["train_accuracy"]), "per_seed": measured["test_accuracy"],
                "dev_accuracy": entry["dev_accuracy"]["mean"], "config": row["config"],
                "hparams": {name: row["hparams"][name] for name in ("learning_rate", "l2", "keep_prob")},
                "schedule": row.get("schedule"), "configs_searched": results.stats["configs"],
                "config_steps": results.config_steps, "search_seconds": search_seconds,
                "retrain_seconds": measured["seconds"],
            }
            table.append(tuned[model])
            curves[f"{label} (tuned)"] = measured["curve"]
            print(f"  tuned {model}: dev {100 * entry['dev_accuracy']['mean']:.1f}% over {results.stats['configs']} "
                  f"configs ({search_seconds:.0f} s); retrained on all {len(train_set.y)}: test {percent(summary)}"
                  + clock.done())
    timings["tune"] = time.perf_counter() - started - timings["reproduce"]
    timings["total"] = time.perf_counter() - started

    markdown = common.markdown_table(
        ["model, variant", "paper", "deepopt (mean ± std over seeds)", "per seed", "train accuracy", "seconds"],
        [[e["row"], "—" if e["paper"] is None else f"{e['paper']}%", percent(e["deepopt"]),
          ", ".join(f"{100 * v:.1f}" for v in e["per_seed"]), percent(e["train_accuracy"]),
          f"{e.get('seconds', e.get('search_seconds', 0) + e.get('retrain_seconds', 0)):.0f}"] for e in table],
    )
    findings = []
    for e in table:
        if e["paper"] is not None:
            gap = 100 * e["deepopt"]["mean"] - e["paper"]
            inside = abs(gap) <= 2 * 100 * e["deepopt"]["std"] or 100 * e["deepopt"]["min"] <= e["paper"] <= 100 * e[
                "deepopt"]["max"]
            findings.append(f"{e['row']}: {percent(e['deepopt'])} against the paper's {e['paper']}% ({gap:+.1f} points; "
                            f"{'within' if inside else 'outside'} the seed spread: 2 std or the seeds' range).")
    for model, target in (("mlp", 75), ("cnn", 96)):
        if model in tuned:
            mean = 100 * tuned[model]["deepopt"]["mean"]
            findings.append(f"Tuned {model.upper()}: {mean:.1f}% test accuracy, target {target}%: "
                            f"{'met' if mean >= target else 'not met'}.")
    findings.append(f"The whole study took {timings['total'] / 60:.1f} min (part 1 {timings['reproduce']:.0f} s, "
                    f"part 2 {timings['tune']:.0f} s).")
    print("\n" + markdown + "\n\n" + "\n".join(findings))
    plots = []
    if common.plots_available():
        plot_curves(output_dir / "learning_curves.png", curves)
        plot_bars(output_dir / "accuracy_bars.png", table)
        plots = ["learning_curves.png", "accuracy_bars.png"]
    record = {"study": STUDY, "settings": s, "paper": PAPER, "table": table, "tuned": tuned, "findings": findings,
              "timings": timings, "curves": curves, "plots": plots}
    report = [
        "# MNIST-1D: the paper's table with deepopt, then tuned", "",
        f"Part 1: the paper's settings (Adam {s['learning_rate']:g}, mini-batches of {s['batch_size']}, {s['epochs']} "
        f"epochs, no weight decay), {s['num_seeds']} seeds, trained on the 4000 training examples and tested on the "
        "1000 test examples. Part 2: deepopt's MLP and the CNN tuned with "
        f"{s['search']} on a {s['dev_fraction']:g} dev split of the training set over the learning rate, L2, dropout "
        f"and the schedule ({', '.join(s['schedules'])}); the winner retrained on all 4000 with {s['num_seeds']} new "
        "keys and tested once.", "", markdown, "", "## Findings", "", *[f"- {line}" for line in findings], "",
    ]
    common.finish_study(output_dir, record, report, plots, note=f" ({timings['total']:.0f} s)")


if __name__ == "__main__":
    common.run_study(main)
