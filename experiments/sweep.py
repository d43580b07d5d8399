"""The main job: a parallel random search, then one coarse-to-fine round, on moons (or spirals).

Round 1 samples ``--num_configs`` configs × ``--num_seeds`` keys over the learning rate
(log-uniform 1e-4 … 1), momentum's β and Adam's β1 (``1 - β`` log-uniform), the L2 λ
(log-uniform), keep_prob (uniform) and the optimizer (momentum, RMSprop, Adam: one compiled
program each). Round 2 zooms the box around the top ``--zoom_top_k`` configs and samples
``--zoom_configs`` more. Every run is one row of ``results.jsonl`` (appended chunk by chunk, so
``--resume`` continues a killed sweep); the leaderboard, the winner's bias/variance verdict and
plots go to ``report.md``.

    python -m experiments.sweep [--num_configs 256] [--num_seeds 2] [--output_dir DIR] [--resume]

``--search=hyperband`` runs Li et al.'s brackets (``sweep.hyperband``) from ``--min_epochs`` to
``--epochs`` instead, ``--search=pbt`` population-based training (``sweep.pbt``) of
``--num_configs`` members, one sub-population per optimizer; neither has a zoomed round.
``--sampler=tpe`` samples with Optuna's TPE, asked and told in rounds (``sweep.run``) or bracket by
bracket (``hyperband``). ``--tensorboard_dir DIR`` also writes one TensorBoard run per config.
The report ranks the hyperparameters by fANOVA importance (``Results.importance``, the ``optuna`` extra).

Scale-out: ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (or ``--host_devices N``)
shards the runs over N CPU devices; ``--coordinator_address HOST:PORT --num_processes P
--process_id I`` joins P processes (hosts) into one global mesh, for every ``--search``; process 0
writes the files (docs/multi-host.md: the launch, the data each host needs, a host that dies).
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import flags

from deepopt import bayes, schedules, sweep, tasks, train
from deepopt import data as data_lib
from deepopt.sweep import processes, tensorboard_log
from experiments import common

STUDY = "sweep"
FLAGS = flags.FLAGS
DATASETS = {"moons": data_lib.make_moons, "spirals": data_lib.make_spirals, "circles": data_lib.make_circles}
REGRESSION_DATASETS = {"friedman1": data_lib.make_friedman1}  # --task regression's (common.REGRESSION_SETS)
SCALES = {
    sweep.Uniform: "uniform",
    sweep.LogUniform: "log-uniform",
    sweep.OneMinusLogUniform: "1 − 10^U (1 − β log-uniform)",
}
BETA_FIELD = {"momentum": "beta", "nesterov": "beta", "adam": "beta1", "adamw": "beta1"}

common.define_study_flags()
common.define_task_flag()
flags.DEFINE_enum("dataset", "moons", [*DATASETS, *REGRESSION_DATASETS, "mnist1d"],
                  "Generated data set, or mnist1d (its 4000 training examples split by --dev_fraction, its 1000 test "
                  "examples; the datasets extra); ignored with --data.")
flags.DEFINE_integer("n_train", 300, "Generated training examples.", lower_bound=2)
flags.DEFINE_integer("n_dev", 200, "Generated dev examples (the sweep ranks configs on them).", lower_bound=2)
flags.DEFINE_integer("n_test", 200, "Generated test examples.", lower_bound=2)
flags.DEFINE_float("noise", 0.2, "Noise of the generated data.", lower_bound=0.0)
flags.DEFINE_float("dev_fraction", 0.25, "With --data or --dataset mnist1d: fraction of the training set held out as dev set.")
common.define_hidden_flag(["16", "16"])
flags.DEFINE_string("activation", "relu", "Hidden activation.")
flags.DEFINE_string("init", "he", "Initialization scheme.")
flags.DEFINE_integer("batch_size", 64, "Mini-batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", 400, "Epochs per run.", lower_bound=1)
flags.DEFINE_list("optimizers", ["momentum", "rmsprop", "adam"], "Optimizers to choose from (one compilation each).")
flags.DEFINE_enum(
    "search", "random", ["random", "quasi", "hyperband", "pbt"],
    "random / quasi: --num_configs full runs, then a zoomed round; hyperband: Li et al.'s brackets from --min_epochs "
    "to --epochs; pbt: population-based training of --num_configs members (one sub-population per optimizer).",
)
flags.DEFINE_enum("sampler", "random", ["random", "quasi", "tpe", "nsga2"], "How configs are sampled: i.i.d., "
                  "scrambled Halton (--search=quasi is --search=random --sampler=quasi), or Optuna's TPE or NSGA-II "
                  "(several --objectives at once), model-based: asked and told in rounds of --chunk_size runs (needs "
                  "optuna; with --search=random or hyperband).")
flags.DEFINE_string("tensorboard_dir", None, "Also write one TensorBoard run per config there (hyperparameters, "
                    "final metrics, per-epoch curves): tensorboard --logdir DIR, then the HParams tab. Needs tensorboard.")
flags.DEFINE_integer("min_epochs", None, "hyperband: epochs of the first rung (default --epochs // 27).", lower_bound=1)
flags.DEFINE_integer("eta", 3, "hyperband: keep the top 1/eta at each rung.", lower_bound=2)
flags.DEFINE_integer("interval", None, "pbt: epochs between exploits (default --epochs // 10).", lower_bound=1)
flags.DEFINE_float("fraction", 0.25, "pbt: the bottom fraction copies the top fraction.")
flags.DEFINE_integer("num_configs", 256, "Configs of the coarse round.", lower_bound=1)
flags.DEFINE_integer("num_seeds", 2, "Keys per config (mean and spread over seeds).", lower_bound=1)
flags.DEFINE_list("learning_rate_range", ["1e-4", "1"], "Log-uniform range of the learning rate.")
flags.DEFINE_list("one_minus_beta_range", ["1e-3", "1e-1"], "Log-uniform range of 1 - β (momentum's β, Adam's β1).")
flags.DEFINE_list("l2_range", ["1e-4", "1"], "Log-uniform range of the L2 λ.")
flags.DEFINE_list("keep_prob_range", ["0.5", "1"], "Uniform range of the dropout keep_prob.")
flags.DEFINE_float("l2", None, "A fixed L2 λ instead of searching --l2_range (e.g. --l2 0: no L2).", lower_bound=0.0)
flags.DEFINE_float("keep_prob", None, "A fixed keep_prob instead of searching --keep_prob_range (1: no dropout).")
flags.DEFINE_enum("schedule", "constant", list(schedules.names()), "Learning-rate schedule of every run.")
flags.DEFINE_integer("early_stopping", None, "Early-stopping patience in epochs (on the dev set; default off).",
                     lower_bound=1)
flags.DEFINE_bool("batchnorm", False, "Batch-normalize the hidden layers.")
flags.DEFINE_integer("zoom_top_k", 8, "Configs the fine round zooms around.", lower_bound=1)
flags.DEFINE_integer("zoom_configs", 64, "Configs of the fine round (0: no fine round).", lower_bound=0)
flags.DEFINE_integer("chunk_size", 64, "Runs per chunk: the unit of progress lines and of --resume.", lower_bound=1)
flags.DEFINE_float("memory_budget_mb", 0.0, "Memory per device a chunk may use, in MB (0: no limit).", lower_bound=0.0)
flags.DEFINE_float(
    "bayes_error",
    None,
    "Bayes (human-level) error estimate for the bias/variance verdict (default: the generated data set's own, "
    "from deepopt.bayes; unknown with --data, then assumed 0 and the report says so).",
)
flags.DEFINE_float("tolerance", 0.02, "Gap that counts as high bias or high variance.", lower_bound=0.0)
flags.DEFINE_bool(
    "resume",
    False,
    "Continue the sweep in --output_dir: runs already in results.jsonl are skipped. Refused when its manifest.json "
    "records other flags or data, or the directory holds another study; a missing or empty directory starts afresh.",
)
flags.DEFINE_list(
    "objectives", [],
    "Several objectives ranked together, field:max|min (e.g. dev_accuracy:max,num_params:min): the leaderboard goes by "
    "Pareto rank, then crowding distance; Hyperband promotes so; the report adds the Pareto front. Fields: the task's "
    "train_/dev_ metrics, final_cost, num_params, config_steps, seconds.",
)
flags.DEFINE_multi_string(
    "hidden_choice", [],
    "Searched hidden widths, one comma-separated list per flag (e.g. --hidden_choice 8 --hidden_choice 32,32): the net "
    "is a searched choice of these (with --objectives num_params:min, a trade of size against accuracy).",
)
flags.DEFINE_string(
    "optuna_storage", None,
    "Also write every config as an Optuna trial into this RDB storage (e.g. sqlite:///runs/optuna.db), to open with "
    "optuna-dashboard.",
)
common.define_host_devices_flag()
flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, to run one sweep over several processes/hosts."
)
flags.DEFINE_integer("num_processes", None, "Processes in the multi-process sweep.", lower_bound=1)
flags.DEFINE_integer(
    "process_id", None, "This process's index, 0 .. num_processes - 1 (0 writes the files).", lower_bound=0
)
flags.DEFINE_integer(
    "heartbeat_timeout", 100,
    "Seconds without a heartbeat after which the processes of a multi-process sweep count one as dead and stop.",
    lower_bound=1,
)


common.register_range_validator("learning_rate_range", 0.0)
common.register_range_validator("one_minus_beta_range", 0.0, 1.0)
common.register_range_validator("l2_range", 0.0)
common.register_range_validator("keep_prob_range", 0.0, 1.0)
flags.register_validator("dev_fraction", lambda value: 0 < value < 1, message="--dev_fraction must be in (0, 1)")
flags.register_validator("keep_prob", lambda value: value is None or 0 < value <= 1,
                         message="--keep_prob must be in (0, 1]")
flags.register_validator("fraction", lambda value: 0 < value <= 0.5, message="--fraction must be in (0, 0.5]")
flags.register_multi_flags_validator(
    ["sampler", "search"], lambda v: v["sampler"] not in ("tpe", "nsga2") or v["search"] in ("random", "hyperband"),
    message="--sampler=tpe or nsga2 learns between its asks: use it with --search=random (rounds of asks) or hyperband "
    "(brackets asked one after another); pbt and quasi ask once",
)
flags.register_validator("tensorboard_dir", lambda value: value is None or not pathlib.Path(value).is_file(),
                         message="--tensorboard_dir must be a directory (it names an existing file)")
flags.register_multi_flags_validator(
    ["min_epochs", "epochs"], lambda v: v["min_epochs"] is None or v["min_epochs"] <= v["epochs"],
    message="--min_epochs must be <= --epochs",
)
flags.register_multi_flags_validator(
    ["interval", "epochs"], lambda v: v["interval"] is None or v["interval"] <= v["epochs"],
    message="--interval must be <= --epochs",
)
flags.register_validator(
    "bayes_error", lambda value: value is None or 0 <= value < 1, message="--bayes_error must be in [0, 1)"
)
flags.register_validator(
    "objectives", lambda items: all(len(item.split(":")) == 2 and item.split(":")[1] in ("max", "min") for item in items),
    message="--objectives must list field:max or field:min, e.g. dev_accuracy:max,num_params:min",
)
flags.register_validator(
    "hidden_choice", lambda items: all(w.strip().isdigit() and int(w) > 0 for item in items for w in item.split(",")),
    message="--hidden_choice must be comma-separated positive widths, e.g. 32,32",
)
flags.register_multi_flags_validator(
    ["resume", "output_dir"],
    lambda v: not v["resume"] or v["output_dir"] is not None,
    message="--resume needs --output_dir (the directory of the sweep to continue)",
)
flags.register_multi_flags_validator(
    ["coordinator_address", "num_processes", "process_id"],
    lambda v: (
        (v["coordinator_address"] is None) == (v["num_processes"] is None) == (v["process_id"] is None)
        and (v["process_id"] is None or v["process_id"] < v["num_processes"])
    ),
    message="--coordinator_address, --num_processes and --process_id go together, with process_id < num_processes",
)


def objectives() -> dict[str, str] | None:
    """``--objectives`` as ``{field: "max" | "min"}`` (None when not given)."""
    return {item.split(":")[0]: item.split(":")[1] for item in FLAGS.objectives} or None


def start_devices() -> None:
    """Split the CPU into ``--host_devices`` devices and join the multi-process runtime; before any computation."""
    common.split_cpu(FLAGS.host_devices)
    if FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                   heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)


MANIFEST = "manifest.json"
# Flags that change how a sweep is executed or reported, not which runs it holds: --resume may change them.
EXECUTION_FLAGS = frozenset(
    {
        "output_dir", "overwrite", "resume", "host_devices", "coordinator_address", "num_processes", "process_id",
        "heartbeat_timeout",
        "chunk_size", "memory_budget_mb", "bayes_error", "tolerance",
        "data", "test_data",  # the paths: the data themselves are compared by their fingerprint
    }
)


def defining_flags() -> dict[str, Any]:
    """The flags that define the sweep's runs: every flag of this study and the shared ones, minus ``EXECUTION_FLAGS``."""
    defined = [*FLAGS.get_flags_for_module(sys.modules[__name__]), *FLAGS.get_flags_for_module(common)]
    return {flag.name: flag.value for flag in defined if flag.name not in EXECUTION_FLAGS}


def output_directory() -> pathlib.Path:
    """The output directory; ``--resume`` reuses a sweep's, a results.jsonl is otherwise never overwritten by accident.

    ``--resume`` refuses a directory holding another study's results; on a missing or empty
    directory it says so and starts a fresh sweep.
    """
    if FLAGS.resume:
        path = pathlib.Path(FLAGS.output_dir)
        summary = path / "results.json"
        if summary.is_file():
            try:
                study = json.loads(summary.read_text()).get("study")
            except (OSError, ValueError, AttributeError):
                study = None
            if study != STUDY:
                raise common.StudyInputError(
                    f"--resume: --output_dir {str(path)!r} holds the results of "
                    f"{'the ' + repr(study) + ' study' if study else 'something that is not a sweep'}, not a sweep; "
                    "choose the directory of the sweep to continue"
                )
        FLAGS.overwrite = True  # resuming rewrites the summaries from the kept rows; results.jsonl only grows
    path = common.prepare_output_dir(STUDY)
    rows = path / "results.jsonl"
    if not FLAGS.resume and not FLAGS.overwrite and rows.exists() and rows.stat().st_size > 0:
        raise common.StudyInputError(
            f"--output_dir {str(path)!r} already holds results.jsonl; "
            "pass --resume to continue it or --overwrite to start afresh"
        )
    return path


def check_manifest(output_dir: pathlib.Path, manifest: dict[str, Any], say: Any) -> None:
    """With ``--resume``: refuse a directory whose sweep was made with other defining flags or data, naming them.

    A directory with no sweep in it yet starts fresh (and says so); one written before manifests
    existed is continued with a note, since what made it cannot be checked.
    """
    if not FLAGS.resume:
        return
    path, rows = output_dir / MANIFEST, output_dir / "results.jsonl"
    if not path.exists():
        if rows.exists() and rows.stat().st_size > 0:
            say(f"--resume: {output_dir} has no {MANIFEST} (written by an older deepopt): its flags cannot be checked")
        else:
            say(f"--resume: {output_dir} holds no sweep yet; starting a fresh one")
        return
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise common.StudyInputError(f"--resume: {path} is not a readable manifest ({error})") from None
    if recorded.get("study") != STUDY:
        raise common.StudyInputError(f"--resume: {path} belongs to the {recorded.get('study')!r} study, not a sweep")
    differences = []
    old_flags, new_flags = recorded.get("flags", {}), common.to_jsonable(manifest["flags"])
    for name in sorted(set(old_flags) | set(new_flags)):
        if name not in old_flags and name in FLAGS and new_flags.get(name) == common.to_jsonable(FLAGS[name].default):
            continue  # a flag newer than the manifest, at its default: what the older sweep did (--task)
        if old_flags.get(name) != new_flags.get(name):
            differences.append(f"--{name} was {_flag_text(old_flags.get(name))}, now {_flag_text(new_flags.get(name))}")
    if recorded.get("data_fingerprint") != manifest["data_fingerprint"]:
        differences.append(
            f"the data differ (fingerprint {recorded.get('data_fingerprint')}, now {manifest['data_fingerprint']}; "
            "--data, --test_data, --dataset or the generator's flags)"
        )
    if differences:
        raise common.StudyInputError(
            f"--resume: {output_dir} holds a sweep made with other settings: {'; '.join(differences)}; "
            "rerun with the same ones or choose another --output_dir"
        )


def _flag_text(value: Any) -> str:
    if value is None:
        return "unset"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def load_data(data_key: jax.Array) -> tuple[data_lib.Dataset, data_lib.Dataset, data_lib.Dataset]:
    """``(train, dev, test)``: generated, or ``--data`` (dev held out of it) and ``--test_data``."""
    train_key, dev_key, test_key, split_key = jax.random.split(data_key, 4)
    user_data = common.load_user_data(split_key)
    if user_data is None and FLAGS.dataset == "mnist1d" and common.study_task().targets == tasks.CLASS_IDS:
        try:
            user_data = data_lib.load_mnist1d()
        except ImportError as error:
            raise common.StudyInputError(str(error)) from None
    if user_data is None:
        name, noise = common.task_dataset(FLAGS.dataset, FLAGS.noise)
        make = {**DATASETS, **REGRESSION_DATASETS}[name]
        return tuple(
            data_lib.Dataset(*map(np.asarray, make(k, n, noise)))
            for k, n in ((train_key, FLAGS.n_train), (dev_key, FLAGS.n_dev), (test_key, FLAGS.n_test))
        )
    train_set, test_set = user_data
    try:
        train_set, dev_set, _ = data_lib.train_dev_test_split(split_key, train_set, FLAGS.dev_fraction, 0.0)
    except ValueError as error:
        raise common.StudyInputError(f"--dev_fraction: {error}") from None
    return data_lib.Dataset(*map(np.asarray, train_set)), data_lib.Dataset(*map(np.asarray, dev_set)), test_set


def search_space() -> dict[str, Any]:
    """The coarse box: learning rate, the chosen optimizers' β (momentum) / β1 (Adam), λ and keep_prob (or fixed)."""
    lr, beta, l2, keep = (
        tuple(map(float, FLAGS[name].value))
        for name in ("learning_rate_range", "one_minus_beta_range", "l2_range", "keep_prob_range")
    )
    space: dict[str, Any] = {"optimizer": sweep.choice(FLAGS.optimizers), "learning_rate": sweep.log_uniform(*lr)}
    for field in dict.fromkeys(BETA_FIELD[name] for name in FLAGS.optimizers if name in BETA_FIELD):
        space[field] = sweep.one_minus_log_uniform(*beta)  # only the β the chosen optimizers use
    space["l2"] = sweep.log_uniform(*l2) if FLAGS.l2 is None else FLAGS.l2
    space["keep_prob"] = sweep.uniform(*keep) if FLAGS.keep_prob is None else FLAGS.keep_prob
    return space


def with_width_choice(space: dict[str, Any], layer_sizes: tuple[int, ...]) -> dict[str, Any]:
    """``space`` with the net's layer sizes a choice of ``--hidden_choice`` widths (unchanged without it)."""
    if not FLAGS.hidden_choice:
        return space
    widths = [tuple(int(w) for w in item.split(",")) for item in FLAGS.hidden_choice]
    return {"layer_sizes": sweep.choice([(layer_sizes[0], *w, layer_sizes[-1]) for w in widths]), **space}


def describe(space: dict[str, Any]) -> list[str]:
    """One line per searched field: its distribution and range."""
    lines = []
    for name, value in space.items():
        if isinstance(value, sweep.Choice):
            lines.append(f"`{name}` ∈ {{{', '.join(map(str, value.values))}}}")
        elif isinstance(value, sweep.Uniform):
            lo, hi = value.value_bounds
            lines.append(f"`{name}` {SCALES[type(value)]} on [{lo:.4g}, {hi:.4g}]")
        elif value is not None:
            lines.append(f"`{name}` fixed at {value:g}")
    return lines


def leaderboard(entries: list[dict[str, Any]], rounds: dict[str, int], primary: str = "accuracy") -> str:
    """The markdown leaderboard of seed-aggregated configs: the task's ``primary`` metric on dev, train and test."""

    def beta(entry: dict[str, Any]) -> str:
        field = BETA_FIELD.get(entry["config"]["optimizer"])
        return "—" if field is None else f"{field} {entry['hparams'][field]:.4f}"

    rows = [
        [
            rank,
            rounds[e["config_id"]],
            e["config"]["optimizer"],
            f"{e['hparams']['learning_rate']:.3g}",
            beta(e),
            f"{e['hparams']['l2']:.3g}",
            f"{e['hparams']['keep_prob']:.2f}",
            *(formatted(f"{split}_{primary}", e.get(f"{split}_{primary}", {})) for split in ("dev", "train", "test")),
            e["diverged"],
        ]
        for rank, e in enumerate(entries, start=1)
    ]
    headers = [
        "#",
        "round",
        "optimizer",
        "learning rate",
        "β",
        "λ",
        "keep_prob",
        *(f"{split} {primary}" for split in ("dev", "train", "test")),
        "diverged",
    ]
    return common.markdown_table(headers, rows)


def metric_words(metric: str) -> str:
    """A metric's name in words: ``dev_accuracy`` -> ``dev accuracy``."""
    return metric.replace("_", " ")


def formatted(metric: str, stats: dict[str, Any]) -> str:
    """``mean ± std`` of a metric: accuracies in percent, other metrics to four significant digits."""
    if stats.get("mean") is None:
        return "—"
    if metric.endswith("accuracy"):
        return common.percent(stats)
    return f"{stats['mean']:.4g} ± {stats['std']:.2g}"


def plot_learning_rate(path: pathlib.Path, entries: list[dict[str, Any]], metric: str = "dev_accuracy") -> None:
    """Seed-mean ``metric`` (dev accuracy) of every config against its learning rate, one colour per optimizer."""
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for optimizer in dict.fromkeys(e["config"]["optimizer"] for e in entries):
        mine = [e for e in entries if e["config"]["optimizer"] == optimizer and e[metric]["mean"] is not None]
        axis.scatter(
            [e["hparams"]["learning_rate"] for e in mine],
            [e[metric]["mean"] for e in mine],
            s=14,
            alpha=0.7,
            label=optimizer,
        )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel(f"{metric_words(metric)} (mean over seeds)")
    axis.set_title(f"{metric_words(metric).capitalize()} against learning rate")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_axes(
    path: pathlib.Path, entries: list[dict[str, Any]], space: dict[str, Any], bins: int = 8,
    metric: str = "dev_accuracy", maximize: bool = True,
) -> bool:
    """The playbook's hyperparameter-axis plots: seed-mean ``metric`` against each searched field, best per bin marked.

    One panel per continuous field, on its own scale (log for log-uniform; ``1 - β`` on a log axis for
    β, over the configs whose optimizer uses it); the bins split that scale into ``bins`` equal parts.
    False when no field is searched.
    """
    fields = [name for name, value in space.items() if isinstance(value, sweep.Uniform)]
    kept = [e for e in entries if e[metric]["mean"] is not None]
    if not fields or not kept:
        return False
    plt = common.pyplot()
    figure, axes = plt.subplots(1, len(fields), figsize=(3.6 * len(fields), 3.6), squeeze=False)
    for axis, name in zip(axes[0], fields):
        distribution = space[name]
        one_minus = isinstance(distribution, sweep.OneMinusLogUniform)
        uses = [e for e in kept if name not in BETA_FIELD.values() or BETA_FIELD.get(e["config"]["optimizer"]) == name]
        if not uses:  # a β no config's optimizer uses
            axis.set_visible(False)
            continue
        values = np.asarray([e["hparams"][name] for e in uses], np.float64)
        scores = np.asarray([e[metric]["mean"] for e in uses])
        shown = 1.0 - values if one_minus else values
        axis.scatter(shown, scores, s=10, alpha=0.6)
        pick = np.argmax if maximize else np.argmin
        lo, hi = distribution.scaled_bounds
        where = np.clip(((distribution.to_scale(values) - lo) / (hi - lo) * bins).astype(int), 0, bins - 1)
        best = [int(np.flatnonzero(where == b)[pick(scores[where == b])]) for b in range(bins) if np.any(where == b)]
        order = sorted(best, key=lambda i: shown[i])
        axis.plot(shown[order], scores[order], "r.-", label="best per bin")
        if isinstance(distribution, (sweep.LogUniform, sweep.OneMinusLogUniform)):
            axis.set_xscale("log")
        axis.set_xlabel(f"1 − {name}" if one_minus else name)
        axis.set_ylabel(f"{metric_words(metric)} (mean over seeds)")
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"{metric_words(metric).capitalize()} against each searched hyperparameter")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_heatmap(path: pathlib.Path, entries: list[dict[str, Any]], bins: int = 8, metric: str = "dev_accuracy") -> None:
    """Mean ``metric`` (dev accuracy) of the configs in each (log λ, log learning rate) cell."""
    plt = common.pyplot()
    kept = [e for e in entries if e[metric]["mean"] is not None]
    x = np.log10([e["hparams"]["learning_rate"] for e in kept])
    y = np.log10([e["hparams"]["l2"] for e in kept])
    z = np.asarray([e[metric]["mean"] for e in kept])
    x_edges, y_edges = np.linspace(x.min(), x.max() + 1e-9, bins + 1), np.linspace(y.min(), y.max() + 1e-9, bins + 1)
    totals, _, _ = np.histogram2d(x, y, [x_edges, y_edges], weights=z)
    counts, _, _ = np.histogram2d(x, y, [x_edges, y_edges])
    with np.errstate(invalid="ignore"):
        means = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    figure, axis = plt.subplots(figsize=(6.5, 5))
    mesh = axis.pcolormesh(10.0**x_edges, 10.0**y_edges, means.T, cmap="viridis", shading="flat")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("L2 λ")
    axis.set_title(f"Mean {metric_words(metric)} per cell (all optimizers)")
    figure.colorbar(mesh, ax=axis, label=metric_words(metric))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def bayes_estimate() -> tuple[float, str, bool]:
    """``(bayes_error, where it comes from, known)`` for the verdict: the flag, the generator's own, or unknown (0)."""
    if FLAGS.bayes_error is not None:
        return FLAGS.bayes_error, "given by --bayes_error", True
    if FLAGS.data is None and FLAGS.dataset == "mnist1d":
        return 0.0, "unknown for MNIST-1D (human experts: 4% error): assumed 0, the avoidable bias is an upper bound", False
    if FLAGS.data is None:
        value = bayes.bayes_error(FLAGS.dataset, noise=FLAGS.noise)
        return value, f"the {FLAGS.dataset} generator's own at noise {FLAGS.noise:g} (deepopt.bayes)", True
    return 0.0, "unknown for your data: assumed 0, so the avoidable bias is an upper bound (pass --bayes_error)", False


def pareto_lines(results: sweep.Results, front: list[dict[str, Any]] | None) -> list[str]:
    """The report's Pareto-front section: a table of ``front`` (``results.pareto()``; None: no section)."""
    if front is None:
        return []
    names = list(results.objectives)
    header = "| config | " + " | ".join(f"{n} ({results.objectives[n]})" for n in names) + " | crowding |"
    rows = [header, "|" + "---|" * (len(names) + 2)]
    for entry in front:
        searched = {k: v for k, v in entry["choices"].items()
                    if isinstance(results.space.get(k), (sweep.Uniform, sweep.Choice))}
        choices = ", ".join(f"{k}={_flag_text(v) if not isinstance(v, float) else f'{v:.3g}'}" for k, v in searched.items())
        values = " | ".join("–" if entry["objectives"][n] is None else f"{entry['objectives'][n]:.4g}" for n in names)
        rows.append(f"| {choices} | {values} | {entry['crowding_distance']:.3g} |")
    return [f"## Pareto front over {', '.join(names)} (seed means; non-dominated configs)", "", *rows, ""]


def write_optuna(results: sweep.Results, output_dir: pathlib.Path) -> str | None:
    """``--optuna_storage``: every config as an Optuna trial (``Results.to_optuna``); the report's line about it."""
    if FLAGS.optuna_storage is None:
        return None
    name = f"deepopt-sweep-{output_dir.name}"
    try:
        results.to_optuna(FLAGS.optuna_storage, name)
    except Exception as error:  # the sweep's own results stand; say why the study was not written
        return f"Optuna: study `{name}` not written to `{FLAGS.optuna_storage}` ({type(error).__name__}: {error})."
    return (f"Optuna: every config is a trial of study `{name}` in `{FLAGS.optuna_storage}`; open it with "
            f"`optuna-dashboard {FLAGS.optuna_storage}`.")


def plot_pareto(path: pathlib.Path, results: sweep.Results) -> bool:
    """Every config's first two objectives, the Pareto front highlighted; False (nothing drawn) with fewer than two."""
    if len(results.objectives) < 2:
        return False
    plt = common.pyplot()
    first, second = list(results.objectives)[:2]
    ranked = results.pareto_ranked()
    points = [(e["objectives"][second], e["objectives"][first], e["pareto_rank"]) for e in ranked
              if e["objectives"][first] is not None and e["objectives"][second] is not None]
    front = sorted((x, y) for x, y, rank in points if rank == 0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([x for x, _, r in points if r > 0], [y for _, y, r in points if r > 0], s=12, color="0.6",
               label="dominated")
    ax.plot([x for x, _ in front], [y for _, y in front], "o-", color="C3", label="Pareto front")
    ax.set_xlabel(f"{second} ({results.objectives[second]})")
    ax.set_ylabel(f"{first} ({results.objectives[first]})")
    if second == "num_params":
        ax.set_xscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_top_curves(
    path: pathlib.Path, results: sweep.Results, top: list[dict[str, Any]], metric: str = "dev_accuracy"
) -> bool:
    """``metric`` (dev accuracy) and dev cost per epoch of the ``top`` configs (mean over seeds, min..max band); False without curves."""
    curves = []
    for rank, entry in enumerate(top, start=1):
        try:
            curves.append((rank, entry, results.curves_of(entry["config_id"])))
        except KeyError:  # a resumed run trained before curves were recorded
            continue
    if not curves:
        return False
    plt = common.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for rank, entry, curve in curves:
        label = f"#{rank} {entry['config']['optimizer']} lr {entry['hparams']['learning_rate']:.3g}"
        for axis, name in zip(axes, (metric, "dev_cost")):
            values = np.asarray(curve[name], np.float64)
            epochs = np.arange(1, values.shape[1] + 1)
            with warnings.catch_warnings():  # epochs where every seed was frozen (early stopping) are NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = (f(values, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))
            line = axis.plot(epochs, mean, label=label)[0]
            if values.shape[0] > 1:
                axis.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
    for axis, name in zip(axes, (metric_words(metric), "dev cost")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
    axes[1].set_yscale("log")
    axes[0].set_title("Learning curves of the top configs (mean over seeds)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def on_process_zero(step: Callable[[], Any]) -> Any:
    """``step()`` run by process 0 alone (the files); its refusal is the same one-line error on every process.

    Over several processes the others wait here for it (``processes.share``) instead of going on to
    the sweep's first collective and waiting there for a process that has stopped.
    """
    try:
        return processes.share(step)
    except sweep.ResultsInUseError as error:
        raise common.StudyInputError(str(error)) from None
    except processes.ProcessZeroError as error:
        raise common.StudyInputError(error.message) from None


def main(argv: list[str]) -> None:
    del argv
    start_devices()
    writer = processes.is_writer()
    opened: dict[str, Any] = {}
    with contextlib.ExitStack() as held:

        def open_output() -> None:  # process 0 holds the results file's lock for its whole life: one writer
            output_dir = output_directory()
            results_path = output_dir / "results.jsonl"
            opened.update(output_dir=output_dir, results_path=results_path, created=not results_path.exists())
            held.enter_context(sweep.lock_results(results_path))

        on_process_zero(open_output)
        results_path = opened.get("results_path")
        try:
            run_sweep(writer, opened.get("output_dir"), results_path)
        except common.StudyInputError:
            if opened.get("created") and results_path.exists() and results_path.stat().st_size == 0:
                results_path.unlink()  # the lock's empty file: a refused sweep leaves nothing behind
            raise


def run_sweep(writer: bool, output_dir: pathlib.Path | None, results_path: pathlib.Path | None) -> None:
    """Both rounds, then (on process 0) the summaries; process 0 holds the results file's lock."""
    say = print if writer else (lambda *args, **kwargs: None)
    if FLAGS.tensorboard_dir:
        try:
            tensorboard_log._tensorboard()
        except ImportError as error:
            raise common.StudyInputError(str(error)) from None
    if FLAGS.sampler in ("tpe", "nsga2") or FLAGS.optuna_storage:
        try:
            sweep.model_based.import_optuna()
        except ImportError as error:
            raise common.StudyInputError(str(error)) from None
    data_key, coarse_key, fine_key = jax.random.split(jax.random.key(FLAGS.seed), 3)
    train_set, dev_set, test_set = load_data(data_key)
    manifest = {
        "study": STUDY,
        "flags": defining_flags(),
        "data_fingerprint": sweep.data_fingerprint(train_set, dev_set, test_set),
    }

    def write_manifest() -> None:
        check_manifest(output_dir, manifest, say)
        common.write_json(output_dir / MANIFEST, manifest)  # before the first run: the directory says what it is

    on_process_zero(write_manifest)
    layer_sizes = common.layer_sizes_for(common.hidden_widths(), train_set, dev_set, test_set)
    try:
        base = train.Config(
            layer_sizes, activation=FLAGS.activation, init=FLAGS.init, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
            schedule=FLAGS.schedule, early_stopping=FLAGS.early_stopping, batchnorm=FLAGS.batchnorm,
            task=common.study_task(),
        )
        space = with_width_choice(search_space(), layer_sizes)
        sweep.check_space(space)
    except ValueError as error:
        raise common.StudyInputError(str(error)) from None
    sampler = "quasi" if FLAGS.search == "quasi" else FLAGS.sampler
    if FLAGS.search in ("hyperband", "pbt"):
        run_adaptive(writer, output_dir, results_path, base, space, (train_set, dev_set, test_set), coarse_key,
                     layer_sizes, sampler, say)
        return
    search = functools.partial(  # one round: everything but the space, the key and the size
        sweep.run,
        base,
        seeds=FLAGS.num_seeds,
        sampler=sampler,
        results_path=results_path,
        chunk_size=FLAGS.chunk_size,
        memory_budget_bytes=int(FLAGS.memory_budget_mb * 2**20) or None,
        test=test_set,
        progress=say,
        curves=True,  # every run's per-epoch primary dev metric and cost, for the top configs' curves
        tensorboard_dir=FLAGS.tensorboard_dir,
        objectives=objectives(),
    )
    say(
        f"{STUDY}: net {'-'.join(map(str, layer_sizes))}, mini-batch {FLAGS.batch_size}, {FLAGS.epochs} epochs, "
        f"{FLAGS.num_configs} configs × {FLAGS.num_seeds} seeds ({sampler}) + {FLAGS.zoom_configs} zoomed, "
        f"{len(jax.devices())} device(s) in {jax.process_count()} process(es), data: {common.data_source()}"
    )

    try:
        rounds = [search(space, train_set, dev_set, key=coarse_key, num_configs=FLAGS.num_configs, resume=FLAGS.resume)]
        fine_space = rounds[0].zoom(FLAGS.zoom_top_k)
        if FLAGS.zoom_configs:
            say(f"zoom around the top {FLAGS.zoom_top_k}: " + "; ".join(describe(fine_space)))
            rounds.append(
                search(fine_space, train_set, dev_set, key=fine_key, num_configs=FLAGS.zoom_configs, resume=True)
            )
    except ValueError as error:  # a user's data that does not fit the net, a budget below one run
        raise common.StudyInputError(str(error)) from None
    if writer:
        method = (
            f"Round 1: {sampler} search of {FLAGS.num_configs} configs × {FLAGS.num_seeds} seeds over:",
            f"Round 2: {FLAGS.zoom_configs} configs in the box around the top {FLAGS.zoom_top_k}:",
        )
        write_summaries(output_dir, rounds, space, fine_space, method, layer_sizes, (train_set, dev_set, test_set),
                        sampler, say)


def run_adaptive(
    writer: bool,
    output_dir: pathlib.Path | None,
    results_path: pathlib.Path | None,
    base: train.Config,
    space: dict[str, Any],
    splits: tuple[data_lib.Dataset, data_lib.Dataset, data_lib.Dataset],
    key: jax.Array,
    layer_sizes: tuple[int, ...],
    sampler: str,
    say: Any,
) -> None:
    """``--search=hyperband`` or ``pbt``: one adaptive search (no zoomed round), then the same summaries."""
    train_set, dev_set, test_set = splits
    common_args = dict(key=key, seeds=FLAGS.num_seeds, sampler=sampler, results_path=results_path,
                       resume=FLAGS.resume, test=test_set, progress=say, objectives=objectives())
    try:
        if FLAGS.search == "hyperband":
            min_epochs = FLAGS.min_epochs or max(FLAGS.epochs // 27, 1)
            brackets = sweep.hyperband_brackets(min_epochs, FLAGS.epochs, FLAGS.eta)
            say(f"{STUDY}: hyperband over net {'-'.join(map(str, layer_sizes))}, {len(brackets)} brackets "
                f"({', '.join(str(b['configs']) for b in brackets)} configs) from {min_epochs} to {FLAGS.epochs} "
                f"epochs, eta {FLAGS.eta}, {FLAGS.num_seeds} seeds, data: {common.data_source()}")
            results = sweep.hyperband(base, space, train_set, dev_set, min_epochs=min_epochs, max_epochs=FLAGS.epochs,
                                      eta=FLAGS.eta, **common_args)
            method = (f"Hyperband ({sampler} sampling), {len(brackets)} brackets from {min_epochs} to {FLAGS.epochs} "
                      f"epochs (eta {FLAGS.eta}), {FLAGS.num_seeds} seeds per config, over:",)
        else:
            interval = FLAGS.interval or max(FLAGS.epochs // 10, 1)
            say(f"{STUDY}: pbt over net {'-'.join(map(str, layer_sizes))}, {FLAGS.num_configs} members "
                f"(one sub-population per optimizer), {FLAGS.epochs} epochs, exploit every {interval}, "
                f"{FLAGS.num_seeds} seeds, data: {common.data_source()}")
            results = sweep.pbt(base, space, train_set, dev_set, population=FLAGS.num_configs, epochs=FLAGS.epochs,
                                interval=interval, fraction=FLAGS.fraction, **common_args)
            method = (f"Population-based training: {FLAGS.num_configs} members ({sampler} initial sampling, one "
                      f"sub-population per optimizer), {FLAGS.epochs} epochs, the bottom {FLAGS.fraction:g} copying "
                      f"the top every {interval} epochs, {FLAGS.num_seeds} seeds per member, over:",)
    except ValueError as error:
        raise common.StudyInputError(str(error)) from None
    if writer and FLAGS.tensorboard_dir:  # the adaptive searches' runs, with their final rows (no curves)
        tensorboard_log.write_runs(FLAGS.tensorboard_dir, results)
    if writer:
        write_summaries(output_dir, [results], space, None, method, layer_sizes, splits, sampler, say)


def importance_lines(results: sweep.Results) -> list[str]:
    """``Results.importance()`` as report lines, or why there are none (no optuna, too few configs)."""
    try:
        scores = results.importance()
    except ImportError as error:  # the message names the missing package and the extra that brings it
        return [f"Not computed: {error}."]
    except ValueError as error:
        return [f"Not computed: {error}."]
    return [f"{name}: {100 * share:.0f}%" for name, share in scores.items()]


def retrain_winner(
    results: sweep.Results,
    winner: dict[str, Any],
    train_set: data_lib.Dataset,
    dev_set: data_lib.Dataset,
    test_set: data_lib.Dataset,
) -> dict[str, Any]:
    """The honest protocol's last step: the winner trained again on train + dev (each seed's key), tested once."""
    full = common.train_plus_dev(train_set, dev_set)
    primary = common.study_task().primary
    values = common.retrained_test_metrics(results.rows, winner["config_id"], full, test_set, primary)
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    seeds = len(values)
    scale, unit, digits = (100, "%", ".1f") if primary == "accuracy" else (1, "", ".4g")
    text = (
        f"The winner retrained on train + dev ({len(full.y)} examples) with each of its {seeds} seed keys: "
        f"test {primary} {scale * mean:{digits}}{unit}"
        + (f" ± {scale * std:{digits}}{unit} (sample std)" if seeds > 1 else "")
        + ". This is the one number to quote: the test set chose nothing."
    )
    return {f"test_{primary}": values, "mean": mean, "std": std, "seeds": seeds, "text": text}


def write_summaries(
    output_dir: pathlib.Path,
    rounds: list[sweep.Results],
    space: dict[str, Any],
    fine_space: dict[str, Any] | None,
    method: tuple[str, ...],
    layer_sizes: tuple[int, ...],
    splits: tuple[data_lib.Dataset, data_lib.Dataset, data_lib.Dataset],
    sampler: str,
    say: Any,
) -> None:
    """The leaderboard, the winner's verdict, the cost, results.csv / results.json / report.md and the plots."""
    train_set, dev_set, test_set = splits
    task = common.study_task()
    metric, primary = common.ranked_metric(), task.primary
    combined = sweep.Results(
        rows=[row for r in rounds for row in r.rows],
        space=space,
        metric=metric,
        curves={run_id: curve for r in rounds for run_id, curve in r.curves.items()},
        directions=task.row_directions(),
        objectives=dict(rounds[0].objectives),
        history=[row for r in rounds for row in r.history],
    )
    entries = combined.by_config()
    round_of = {row["config_id"]: number for number, r in enumerate(rounds, start=1) for row in r.rows}
    top = combined.best(10)
    retrained = retrain_winner(combined, top[0], train_set, dev_set, test_set)
    table = leaderboard(top, round_of, primary)
    used_beta = BETA_FIELD.get(top[0]["config"]["optimizer"])  # a β the winner's optimizer does not use says nothing
    boundaries = [str(w) for w in sweep.Results(rows=rounds[0].rows, space=space, metric=metric,
                                                directions=task.row_directions()).boundary_warnings()
                  if w.field not in set(BETA_FIELD.values()) or w.field == used_beta]
    importance = importance_lines(combined)
    runs, seconds = sum(r.stats["runs"] for r in rounds), sum(r.stats["seconds"] for r in rounds)
    computed = sum(r.stats["runs_computed"] for r in rounds)
    diverged = sum(bool(row["diverged"]) for row in combined.rows)
    winner_text = f"Winner: {top[0]['config']['optimizer']} at learning rate {top[0]['hparams']['learning_rate']:.3g}: "
    if task.name == "classification":
        bayes_error, bayes_source, bayes_known = bayes_estimate()
        diagnosis = combined.bias_variance(bayes_error, tolerance=FLAGS.tolerance)
        verdict = (
            winner_text + f"train error {diagnosis.train_error:.1%}, dev error {diagnosis.dev_error:.1%} "
            f"(Bayes error {diagnosis.bayes_error:.1%}: {bayes_source}): avoidable bias "
            f"{'at most ' if not bayes_known else ''}{diagnosis.avoidable_bias:+.1%}, "
            f"variance {diagnosis.variance:+.1%} -> {diagnosis.verdict}. Next: {'; '.join(diagnosis.advice)}."
        )
        diagnosis_record, bayes_record = diagnosis._asdict(), {"value": bayes_error, "source": bayes_source,
                                                               "known": bayes_known}
    else:  # bias and variance against a Bayes error is a classification diagnosis: report the gap instead
        gap = {name: (top[0][f"train_{name}"]["mean"], top[0][f"dev_{name}"]["mean"]) for name in task.metrics}
        verdict = winner_text + ", ".join(f"train {name} {a:.4g}, dev {b:.4g}" for name, (a, b) in gap.items()) + (
            f" (a {task.name}: the classification bias/variance verdict does not apply; a dev {primary} well "
            f"beyond the train {primary} is variance, a train {primary} far above the noise is bias)."
        )
        diagnosis_record, bayes_record = {"train_dev": gap}, None
    if fine_space is None:  # an adaptive search: rows are run-stages, the work is counted in config-steps
        stats = rounds[0].stats
        full = len({row["config_id"] for row in combined.rows}) * FLAGS.num_seeds * FLAGS.epochs
        timing = (
            f"{stats['rows']} run-stages of {runs} runs ({stats['runs_computed']} trained now, {stats['runs_resumed']} "
            f"resumed, {diverged} runs diverged), {rounds[0].config_steps} config-steps "
            f"({rounds[0].config_steps / (full * stats['batches_per_epoch']):.2f}× these configs at the full budget) "
            f"in {seconds:.1f} s including {stats['compilations']} compilations, on {stats['devices']} device(s)."
        )
    else:
        timing = (
            f"{runs} runs ({computed} trained now, {runs - computed} resumed, {diverged} diverged) in {seconds:.1f} s "
            f"({computed / seconds:.1f} runs/s including {sum(r.stats['compilations'] for r in rounds)} compilations) "
            f"on {rounds[0].stats['devices']} device(s), {rounds[0].stats['processes']} process(es)."
        )
    say("\n" + table + "\n\n" + verdict + "\n" + retrained["text"] + "\n" + timing)

    combined.to_csv(output_dir / "results.csv")
    front = combined.pareto() if len(combined.objectives) >= 2 else None  # once: report and results.json
    front_lines = pareto_lines(combined, front)
    optuna_line = write_optuna(combined, output_dir)
    plots = []
    if common.plots_available():
        plot_learning_rate(output_dir / f"{metric}_vs_learning_rate.png", entries, metric)
        plots = [f"{metric}_vs_learning_rate.png"]
        if isinstance(space["l2"], sweep.Uniform):  # a fixed λ has no axis to plot
            plot_heatmap(output_dir / "l2_learning_rate_heatmap.png", entries, metric=metric)
            plots.append("l2_learning_rate_heatmap.png")
        if plot_axes(output_dir / "hyperparameter_axes.png", entries, space, metric=metric,
                     maximize=task.higher_is_better):
            plots.append("hyperparameter_axes.png")
        if plot_top_curves(output_dir / "top_curves.png", combined, top[:5], metric):
            plots.append("top_curves.png")
        if plot_pareto(output_dir / "pareto_front.png", combined):
            plots.append("pareto_front.png")
    settings_record = {
        "layer_sizes": layer_sizes,
        "activation": FLAGS.activation,
        "init": FLAGS.init,
        "batch_size": FLAGS.batch_size,
        "epochs": FLAGS.epochs,
        "optimizers": FLAGS.optimizers,
        "schedule": FLAGS.schedule,
        "early_stopping": FLAGS.early_stopping,
        "batchnorm": FLAGS.batchnorm,
        "l2": FLAGS.l2,
        "keep_prob": FLAGS.keep_prob,
        "search": FLAGS.search,
        "sampler": sampler,
        "num_configs": FLAGS.num_configs,
        "num_seeds": FLAGS.num_seeds,
        "zoom_top_k": FLAGS.zoom_top_k,
        "zoom_configs": FLAGS.zoom_configs,
        "chunk_size": FLAGS.chunk_size,
        "memory_budget_mb": FLAGS.memory_budget_mb,
        "seed": FLAGS.seed,
        "task": task.name,
        "data": common.data_source() if FLAGS.data else common.task_dataset(FLAGS.dataset, FLAGS.noise)[0],
        "n_train": len(train_set.y),
        "n_dev": len(dev_set.y),
        "n_test": len(test_set.y),
    }
    common.write_json(
        output_dir / "results.json",
        {
            "study": STUDY,
            "settings": settings_record,
            "space": describe(space),
            "zoomed_space": None if fine_space is None else describe(fine_space),
            "leaderboard": top,
            "task": task.name,
            "diagnosis": diagnosis_record,
            "bayes_error": bayes_record,
            "verdict": verdict,
            "boundary_warnings": boundaries,
            "importance": importance,
            "objectives": combined.objectives,
            "pareto_front": front,
            "retrained_winner": retrained,
            "timing": timing,
            "rounds": [r.stats for r in rounds],
            "plots": plots,
            "files": ["results.jsonl", "results.record.json", *(("results.curves.jsonl",) if fine_space is not None else
                                          ("results.search.json", "results.states/")),
                      "results.csv", "report.md", MANIFEST, *plots],
        },
    )
    report = [
        "# Hyperparameter sweep",
        "",
        (
            f"Net {'-'.join(map(str, layer_sizes))} ({FLAGS.activation}, {FLAGS.init} init), mini-batches of "
            f"{FLAGS.batch_size}, {FLAGS.epochs} epochs. Data: {settings_record['data']} "
            f"({len(train_set.y)} train / {len(dev_set.y)} dev / {len(test_set.y)} test). "
            + method[0]
        ),
        "",
        *[f"- {line}" for line in describe(space)],
        "",
        *(
            [method[1], "", *[f"- {line}" for line in describe(fine_space)], ""]
            if fine_space is not None
            else []
        ),
        f"## Leaderboard (mean ± sample std over {FLAGS.num_seeds} seed{'s' if FLAGS.num_seeds > 1 else ''}, "
        f"ranked by {metric_words(metric)}"
        + (")" if fine_space is not None else "; runs trained to the full budget first)"),
        "",
        table,
        "",
        "## Search-space boundaries (the first round's top 5)",
        "",
        *([f"- {line}" for line in boundaries] or ["No searched range has its best configs at an edge."]),
        "",
        *front_lines,
        *([optuna_line, ""] if optuna_line else []),
        f"## What explains {metric_words(metric)} (fANOVA importance over the configs)",
        "",
        *[f"- {line}" for line in importance],
        "",
        *(
            [f"TensorBoard: `tensorboard --logdir {FLAGS.tensorboard_dir}`, then the HParams tab.", ""]
            if FLAGS.tensorboard_dir else []
        ),
        "## The winner retrained on train + dev, tested once",
        "",
        retrained["text"],
        "",
        "## Bias and variance of the winner" if task.name == "classification" else "## Train and dev of the winner",
        "",
        verdict,
        "",
        "## Cost",
        "",
        timing,
        "",
        *[f"![{plot}]({plot})" for plot in plots],
    ]
    common.write_text(output_dir / "report.md", "\n".join(report) + "\n")
    say(
        f"\nwrote {output_dir}/results.jsonl, results.record.json (sweep.load reopens them), "
        + ("results.curves.jsonl" if fine_space is not None else "results.search.json, results.states/")
        + ", results.csv, results.json, report.md"
        + (f", {', '.join(plots)}" if plots else "")
    )


if __name__ == "__main__":
    common.run_study(main)
