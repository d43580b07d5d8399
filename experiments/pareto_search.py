"""Accuracy against size: the Pareto fronts three searches find, compared by hypervolume.

Default: MNIST-1D (the mnist1d package's 4000 training sequences, a dev split of --dev_fraction
of them; the search never sees the 1000 test sequences), one hidden layer whose width is a
searched choice of ``--widths``, Adam, mini-batches of 100, over the width, the learning rate and
the L2 λ. Two objectives: dev accuracy (max) and the net's trainable parameters (min).

- ``pareto_hyperband``: Hyperband (Li et al.) from ``--min_epochs`` to ``--max_epochs``, eta
  ``--eta``, whose rungs promote by Pareto rank, then crowding distance (``objectives=...``);
- ``hyperband``: the same brackets and key, promoting by dev accuracy alone (single-objective
  Hyperband, as Optuna's and Ray Tune's pruners do);
- ``random``: random search at the same budget: as many configs × ``--max_epochs`` epochs as the
  Pareto Hyperband's config-steps allow.

Each method's front is the non-dominated set of its configs' last rows (``Results.pareto``);
the hypervolume is the area they dominate up to the reference point (dev accuracy 0,
``1.1 ×`` the widest net's parameters), as a share of that box; and the same with the parameters
on a log10 axis (from the smallest net's ``/ 1.1``), where each halving of the size counts alike. The report has
the table, each front, and a plot of the three fronts. ``--quick``: a small run on moons.

    python -m experiments.pareto_search [--widths 8,16,32,64,128,256] [--max_epochs 27] [--repeats 1]
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import sweep, train
from deepopt.sweep import pareto
from experiments import common

STUDY = "pareto_search"
FLAGS = flags.FLAGS
METHODS = ("pareto_hyperband", "hyperband", "random")
OBJECTIVES = {"dev_accuracy": "max", "num_params": "min"}
QUICK = {"dataset": "moons", "max_epochs": 8, "min_epochs": 2, "eta": 2, "widths": ["2", "8", "32"]}

common.define_study_flags()
common.define_host_devices_flag()
flags.DEFINE_enum("dataset", "mnist1d", ["mnist1d", "moons"], "Data set (ignored with --data).")
flags.DEFINE_float("dev_fraction", 0.2, "Fraction of the training set held out as the dev set the searches rank on.")
flags.DEFINE_list("widths", ["8", "16", "32", "64", "128", "256"], "Hidden-layer widths to choose from.")
flags.DEFINE_integer("max_epochs", 27, "Epochs of a config trained to the full budget.", lower_bound=1)
flags.DEFINE_integer("min_epochs", 1, "Epochs of Hyperband's first rung.", lower_bound=1)
flags.DEFINE_integer("eta", 3, "Hyperband keeps the top 1/eta of each rung.", lower_bound=2)
flags.DEFINE_integer("repeats", 1, "Repeats of every search with another search key.", lower_bound=1)
flags.DEFINE_bool("quick", False, "A small run on moons, in seconds (what the tests run).")
flags.register_validator("widths", lambda v: bool(v) and all(w.isdigit() and int(w) > 0 for w in v),
                         message="--widths must list positive integers")
flags.register_multi_flags_validator(["min_epochs", "max_epochs"], lambda v: v["min_epochs"] <= v["max_epochs"],
                                     message="--min_epochs must be <= --max_epochs")


def settings() -> dict[str, Any]:
    """The run's settings: the flags, with ``--quick``'s small values over them."""
    s = {name: FLAGS[name].value for name in ("dataset", "dev_fraction", "widths", "max_epochs", "min_epochs", "eta",
                                                "repeats", "seed")}
    return {**s, **(QUICK if FLAGS.quick else {})}


def load_data(key: jax.Array, s: dict[str, Any]) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """``(train, dev)``: --data, MNIST-1D's training set or moons, with a dev split."""
    split_key, train_key, dev_key = jax.random.split(key, 3)
    user = common.load_user_data(split_key)
    if user is None and s["dataset"] == "moons":
        return tuple(data_lib.Dataset(*map(np.asarray, data_lib.make_moons(k, n, 0.2)))
                     for k, n in ((train_key, 400), (dev_key, 200)))
    if user is None:
        try:
            user = data_lib.load_mnist1d()
        except ImportError as error:
            raise common.StudyInputError(str(error)) from None
    train_set, dev_set, _ = data_lib.train_dev_test_split(split_key, user[0], s["dev_fraction"], 0.0)
    return data_lib.Dataset(*map(np.asarray, train_set)), data_lib.Dataset(*map(np.asarray, dev_set))


def hypervolume_of(front: list[dict[str, Any]], reference: tuple[float, float], log: bool = False) -> float:
    """The area a front dominates (dev accuracy up, parameters down, or their log10) up to ``reference``."""
    points = np.asarray([[e["objectives"]["dev_accuracy"], e["objectives"]["num_params"]] for e in front], np.float64)
    points = points.reshape(-1, 2)
    if log:
        points[:, 1] = np.log10(points[:, 1])
    return pareto.hypervolume(points, ["max", "min"], reference)


def run_methods(s: dict[str, Any], config: train.Config, space: dict[str, Any], splits: tuple, key: jax.Array,
                batches: int) -> dict[str, sweep.Results]:
    """The three searches on one key: Pareto Hyperband first (its config-steps set random search's size)."""
    shared = dict(key=key, min_epochs=s["min_epochs"], max_epochs=s["max_epochs"], eta=s["eta"])
    found = {"pareto_hyperband": sweep.hyperband(config, space, *splits, objectives=OBJECTIVES, **shared)}
    found["hyperband"] = sweep.hyperband(config, space, *splits, **shared)
    budget = found["pareto_hyperband"].config_steps
    configs = max(budget // (s["max_epochs"] * batches), 1)
    found["random"] = sweep.run(config, space, *splits, key=key, num_configs=int(configs), objectives=OBJECTIVES)
    return found


def main(argv: list[str]) -> None:
    del argv
    common.split_cpu(FLAGS.host_devices)
    s = settings()
    output_dir = common.prepare_output_dir(STUDY)
    data_key, search_key = jax.random.split(jax.random.key(s["seed"]))
    train_set, dev_set = load_data(data_key, s)
    n_in, n_out = train_set.X.shape[1], int(np.max(train_set.y)) + 1
    n_out = 1 if n_out == 2 else n_out
    sizes = [(n_in, int(w), n_out) for w in s["widths"]]
    config = train.Config(sizes[0], optimizer="adam", batch_size=100, epochs=s["max_epochs"])
    space = {"layer_sizes": sweep.choice(sizes), "learning_rate": sweep.log_uniform(1e-4, 1e-1),
             "l2": sweep.log_uniform(1e-4, 1.0)}
    counts = [train.num_params(train.Config(size), (n_in,)) for size in sizes]
    reference = (0.0, 1.1 * max(counts))
    box = 1.0 * reference[1]
    log_reference = (0.0, float(np.log10(reference[1])))
    log_box = log_reference[1] - float(np.log10(min(counts) / 1.1))
    batches = -(-len(train_set.y) // min(100, len(train_set.y)))
    source = common.data_source() if FLAGS.data else s["dataset"]
    print(f"{STUDY}: widths {', '.join(s['widths'])}, data {source} ({len(train_set.y)} train / {len(dev_set.y)} dev), "
          f"Hyperband {s['min_epochs']}..{s['max_epochs']} epochs, eta {s['eta']}, {s['repeats']} repeat(s)")
    repeats = []
    fronts: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(s["repeats"]):
        key = search_key if repeat == 0 else jax.random.fold_in(search_key, repeat)
        found = run_methods(s, config, space, (train_set, dev_set), key, batches)
        summary = {}
        for method, results in found.items():
            front = results.pareto(OBJECTIVES)
            volume = hypervolume_of(front, reference)
            log_volume = hypervolume_of(front, log_reference, log=True)
            summary[method] = {"configs": len({r["config_id"] for r in results.rows}),
                               "config_steps": results.config_steps, "hypervolume": volume,
                               "hypervolume_share": volume / box, "log_hypervolume_share": log_volume / log_box,
                               "front": [
                                   {"num_params": e["objectives"]["num_params"],
                                    "dev_accuracy": e["objectives"]["dev_accuracy"],
                                    "learning_rate": e["hparams"]["learning_rate"], "l2": e["hparams"]["l2"]}
                                   for e in front]}
            print(f"  repeat {repeat + 1} {method:17s}: {summary[method]['configs']:3d} configs, "
                  f"{results.config_steps} config-steps, hypervolume {volume / box:.4f} of the box "
                  f"({log_volume / log_box:.4f} on log parameters), front of {len(front)}")
            if repeat == 0:
                fronts[method] = front
        repeats.append(summary)
    share = {m: [r[m]["hypervolume_share"] for r in repeats] for m in METHODS}
    log_share = {m: [r[m]["log_hypervolume_share"] for r in repeats] for m in METHODS}

    def shown(values: list[float]) -> str:
        return f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")

    table = common.markdown_table(
        ["method", "configs", "config-steps", "hypervolume (share of the box)", "on log10 parameters",
         "front, repeat 1 (params: dev accuracy)"],
        [[m, repeats[0][m]["configs"], repeats[0][m]["config_steps"], shown(share[m]), shown(log_share[m]),
          "; ".join(f"{int(p['num_params'])}: {100 * p['dev_accuracy']:.1f}%" for p in repeats[0][m]["front"])]
         for m in METHODS])
    print("\n" + table)
    findings = []
    for name, values in (("hypervolume", share), ("hypervolume on log10 parameters", log_share)):
        best = max(METHODS, key=lambda m: np.mean(values[m]))
        findings.append(f"The largest {name}: {best} ({np.mean(values[best]):.4f} of the box), against "
                        + ", ".join(f"{m} {np.mean(values[m]):.4f}" for m in METHODS if m != best) + ".")
    plots = []
    if common.plots_available():
        plt = common.pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, front in fronts.items():
            points = sorted((e["objectives"]["num_params"], e["objectives"]["dev_accuracy"]) for e in front)
            ax.step([p for p, _ in points], [a for _, a in points], "o-", where="post", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (min)")
        ax.set_ylabel("dev accuracy (max)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / "pareto_fronts.png", dpi=120)
        plt.close(fig)
        plots.append("pareto_fronts.png")
    record = {"study": STUDY, "settings": {**s, "data": source, "reference": reference}, "repeats": repeats,
              "findings": findings, "plots": plots}
    report = [
        "# Accuracy against size: Pareto fronts by hypervolume", "",
        f"Data {source} ({len(train_set.y)} train / {len(dev_set.y)} dev), one hidden layer of width in "
        f"{{{', '.join(s['widths'])}}}, Adam, batch 100, learning rate and L2 λ log-uniform. Objectives: dev accuracy "
        f"(max), trainable parameters (min). Hyperband from {s['min_epochs']} to {s['max_epochs']} epochs, eta "
        f"{s['eta']}, Pareto-aware (promotion by Pareto rank, then crowding distance) and single-objective; random "
        f"search at the Pareto Hyperband's config-steps. Hypervolume up to (accuracy 0, {reference[1]:.0f} "
        f"parameters), as a share of that box; {s['repeats']} repeat(s).", "",
        table, "", "## Findings", "", *[f"- {line}" for line in findings], "",
    ]
    common.finish_study(output_dir, record, report, plots)


if __name__ == "__main__":
    common.run_study(main)
