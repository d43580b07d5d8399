"""The frameworks study: the course's softmax classifier, in Flax and as deepopt's pure ``train.fit``.

Setting (the course's framework lesson, on scikit-learn's 8x8 digits instead of the SIGNS
images): 64 -> 25 -> 12 -> 10, ReLU, softmax output, Xavier initialization, Adam on mini-batches
of 32. Both implementations start from the same parameters, walk the same mini-batches (those
``train.fit`` draws) and update with the same rule (``deepopt.optim``'s Adam); they differ in how the
network and the loop are written:

- pure function: ``train.fit``'s computation as an open run, ``train.init_state`` then one
  ``train.advance`` over every epoch with ``log_metrics=True`` (fit's own loop, one compiled
  ``lax.scan``, the test set as its dev set). Its ``EpochLog`` holds every epoch's train accuracy,
  test accuracy and cost (the curves); ``train.evaluate`` of the final state gives the final
  accuracies, which the curves end at.
- Flax: ``deepopt.flax_models.MLP`` (``flax.linen``), a plain Python loop over epochs and
  mini-batches around a jitted ``flax_models.train_step``, evaluated after every epoch.

    python -m experiments.frameworks [--epochs 40] [--learning_rate 0.001] [--output_dir DIR]

Needs the ``datasets`` extra (scikit-learn) unless ``--data`` is given.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deepopt import data as data_lib
from deepopt import flax_models, init, losses, model, optim, train
from experiments import common

STUDY = "frameworks"
FLAGS = flags.FLAGS
PURE, FLAX = "pure function (train.fit)", "Flax (linen) + Python loop"

common.define_study_flags()
common.define_hidden_flag(["25", "12"], "Hidden layer widths (the course's 25, 12).")
flags.DEFINE_integer("epochs", 40, "Epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Mini-batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.001, "Adam's learning rate (beta1 0.9, beta2 0.999, epsilon 1e-8).")
flags.register_validator("learning_rate", lambda value: value > 0, message="--learning_rate must be > 0")


def load_data(key: jax.Array) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """``(train, test)``: ``--data``, else the digits split by ``--test_fraction`` (exit 2 with the install hint without scikit-learn)."""
    user_data = common.load_user_data(key)
    if user_data is not None:
        return user_data
    try:
        digits = data_lib.load_digits()
    except ImportError as error:
        raise common.StudyInputError(str(error)) from None
    train_set, _, test_set = data_lib.train_dev_test_split(key, digits, 0.0, FLAGS.test_fraction)
    return train_set, test_set


def fit_curves(
    config: train.Config, hp: train.HParams, key: jax.Array, init_params: Any,
    train_set: data_lib.Dataset, test_set: data_lib.Dataset,
) -> tuple[dict[str, np.ndarray], Any, dict[str, float], float]:
    """The pure-function side, one open run: ``(curves, final params, final accuracies, seconds)``.

    The curves are the ``EpochLog`` of ``advance(..., log_metrics=True)`` over every epoch (train
    and test accuracy, cost); the final accuracies are ``evaluate`` of the final state.
    """
    start = time.perf_counter()
    state = train.init_state(config, hp, key, train_set, init_params)
    state, log = train.advance(config, hp, state, train_set, test_set, epochs=config.epochs, log_metrics=True)
    curves = {"train": np.asarray(log.train_accuracy), "test": np.asarray(log.dev_accuracy), "cost": np.asarray(log.cost)}
    final_accuracy = {split: float(train.evaluate(config, state, data)["accuracy"])
                      for split, data in (("train", train_set), ("test", test_set))}
    params, _ = train.result_params(config, state)
    return curves, params, final_accuracy, time.perf_counter() - start


def flax_curves(
    config: train.Config, hp: train.HParams, key: jax.Array, init_params: Any,
    train_set: data_lib.Dataset, test_set: data_lib.Dataset,
) -> tuple[dict[str, np.ndarray], Any, float]:
    """The Flax side: a Python loop over epochs and the mini-batches ``fit`` draws, a jitted step, evaluation per epoch.

    ``fit`` shuffles epoch ``e`` with ``fold_in(shuffle_key, e)``, ``shuffle_key = split(key, 3)[1]``
    (WORKSPACE.md, "How fit works"); the loop draws the same batches, unpadded.
    """
    start = time.perf_counter()
    module = flax_models.module_for(init_params, activation=config.activation)
    adam = optim.get(config.optimizer)
    step = jax.jit(flax_models.train_step, static_argnums=(0, 1))
    accuracy = jax.jit(flax_models.accuracy, static_argnums=0)
    flax_params = flax_models.to_flax_params(init_params)
    opt_state = adam.init(flax_params)
    X, y = jnp.asarray(train_set.X), jnp.asarray(train_set.y)
    m = X.shape[0]
    shuffle_key = jax.random.split(key, 3)[1]
    curves: dict[str, list[float]] = {"train": [], "test": [], "cost": []}
    for epoch in range(config.epochs):
        epoch_cost = 0.0
        for index in data_lib.minibatch_indices(jax.random.fold_in(shuffle_key, epoch), m, config.batch_size):
            flax_params, _, opt_state, cost = step(module, adam, flax_params, {}, opt_state, X[index], y[index], hp)
            epoch_cost += float(cost) * index.shape[0] / m
        curves["cost"].append(epoch_cost)
        curves["train"].append(float(accuracy(module, flax_params, X, y)))
        curves["test"].append(float(accuracy(module, flax_params, jnp.asarray(test_set.X), jnp.asarray(test_set.y))))
    return {name: np.asarray(values) for name, values in curves.items()}, flax_params, time.perf_counter() - start


def confusion_matrix(y: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = how many examples of class ``i`` were predicted as ``j``."""
    return np.bincount(num_classes * np.asarray(y) + np.asarray(predictions), minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def plot_confusion_matrices(path: Any, matrices: dict[str, np.ndarray]) -> None:
    """One annotated heat map per implementation: true class down, predicted class across."""
    plt = common.pyplot()
    figure, axes = plt.subplots(1, len(matrices), figsize=(5.2 * len(matrices), 4.6), squeeze=False)
    for axis, (title, matrix) in zip(axes.flat, matrices.items()):
        axis.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                axis.text(j, i, str(count), ha="center", va="center", fontsize=7,
                          color="white" if count > matrix.max() / 2 else "black")
        axis.set_xticks(range(matrix.shape[1]))
        axis.set_yticks(range(matrix.shape[0]))
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> None:
    del argv
    output_dir = common.prepare_output_dir(STUDY)
    data_key, init_key, model_key = jax.random.split(jax.random.key(FLAGS.seed), 3)
    train_set, test_set = load_data(data_key)
    layer_sizes = common.layer_sizes_for(common.hidden_widths(), train_set, test_set)
    n_out = layer_sizes[-1]
    source = common.data_source() if FLAGS.data else "digits (scikit-learn)"
    config = train.Config(layer_sizes, activation="relu", init="xavier", optimizer="adam",
                          batch_size=FLAGS.batch_size, epochs=FLAGS.epochs)
    hp = train.prepare_hparams(train.HParams(learning_rate=FLAGS.learning_rate), config, jnp.asarray(train_set.X).dtype)
    init_params = init.mlp(init_key, layer_sizes, "xavier", dtype=jnp.asarray(train_set.X).dtype)
    print(f"{STUDY}: net {'-'.join(map(str, layer_sizes))}, Adam {FLAGS.learning_rate:g}, mini-batch {FLAGS.batch_size}, "
          f"{FLAGS.epochs} epochs, data: {source} ({train_set.X.shape[0]} train / {test_set.X.shape[0]} test)")

    pure, pure_params, pure_final, pure_seconds = fit_curves(config, hp, model_key, init_params, train_set, test_set)
    print(f"  {PURE}: {pure_seconds:.1f} s (one run: init_state, then advance over every epoch with log_metrics)")
    flax, flax_params, flax_seconds = flax_curves(config, hp, model_key, init_params, train_set, test_set)
    print(f"  {FLAX}: {flax_seconds:.1f} s")

    num_classes = max(n_out, 2)
    final_params = {PURE: pure_params, FLAX: flax_models.from_flax_params(flax_params)}
    rows: dict[str, dict[str, Any]] = {}
    matrices: dict[str, np.ndarray] = {}
    for name, curves, seconds in ((PURE, pure, pure_seconds), (FLAX, flax, flax_seconds)):
        predictions = np.asarray(model.predict(final_params[name], jnp.asarray(test_set.X)))
        matrices[name] = confusion_matrix(test_set.y, predictions, num_classes)
        train_logits = model.forward(final_params[name], jnp.asarray(train_set.X))
        rows[name] = {
            "train_accuracy": float(curves["train"][-1]),
            "test_accuracy": float(curves["test"][-1]),
            "final_train_cost": float(losses.cross_entropy(train_logits, jnp.asarray(train_set.y))),
            "seconds_with_compilation": seconds,
            "curves": curves,
            "test_confusion_matrix": matrices[name],
        }
    consistency = {
        "pure_curve_end_equals_final_run": bool(
            np.isclose(pure["train"][-1], pure_final["train"]) and np.isclose(pure["test"][-1], pure_final["test"])
        ),
        **{f"max_{split}_accuracy_gap": float(np.max(np.abs(pure[split] - flax[split]))) for split in ("train", "test")},
        "max_relative_cost_gap": float(np.max(np.abs(pure["cost"] - flax["cost"]) / pure["cost"])),
        "max_parameter_gap": float(max(jax.tree.leaves(jax.tree.map(
            lambda a, b: jnp.max(jnp.abs(a - b)), final_params[PURE], final_params[FLAX])))),
    }
    table = common.markdown_table(
        ["implementation", "train accuracy", "test accuracy", "final train cost", "seconds (with compilation)"],
        [[name, f"{100 * row['train_accuracy']:.2f}%", f"{100 * row['test_accuracy']:.2f}%",
          f"{row['final_train_cost']:.4g}", f"{row['seconds_with_compilation']:.1f}"] for name, row in rows.items()],
    )
    summary = [
        (f"Per-epoch accuracy: the two implementations differ by at most "
         f"{100 * consistency['max_train_accuracy_gap']:.2f} points on the training set and "
         f"{100 * consistency['max_test_accuracy_gap']:.2f} on the test set over {FLAGS.epochs} epochs; epoch costs "
         f"by at most {100 * consistency['max_relative_cost_gap']:.2g}% (relative); final parameters by at most "
         f"{consistency['max_parameter_gap']:.2g}."),
        "The pure-function curves end at the final state's accuracies (train.evaluate): "
        + ("yes." if consistency["pure_curve_end_equals_final_run"] else "NO (the EpochLog ends elsewhere)."),
        (f"Wall time: {rows[PURE]['seconds_with_compilation']:.1f} s for one whole-run compilation and run of "
         f"train.advance (metrics logged every epoch), {rows[FLAX]['seconds_with_compilation']:.1f} s for the Flax "
         "loop (one jitted step per mini-batch, evaluation per epoch)."),
    ]
    print("\n" + table + "\n\n" + "\n".join(summary))
    plots = []
    if common.plots_available():
        common.plot_curves(
            output_dir / "accuracy_curves.png",
            {f"{split} ({short})": curves[split] for short, curves in (("pure", pure), ("Flax", flax))
             for split in ("train", "test")},
            xlabel="epoch", ylabel="accuracy", log_y=False,
            title=("Accuracy after each epoch (pure and Flax curves overlap where equal; largest gap "
                   f"{100 * max(consistency['max_train_accuracy_gap'], consistency['max_test_accuracy_gap']):.2f} points)"),
        )
        common.plot_curves(output_dir / "cost_curves.png", {"pure": pure["cost"], "Flax": flax["cost"]},
                           xlabel="epoch", ylabel="training cost", title="Mean mini-batch cost per epoch")
        plot_confusion_matrices(output_dir / "confusion_matrix.png",
                                {f"{name}: test {100 * rows[name]['test_accuracy']:.1f}%": matrix
                                 for name, matrix in matrices.items()})
        plots += ["accuracy_curves.png", "cost_curves.png", "confusion_matrix.png"]
    settings = {
        "layer_sizes": layer_sizes, "activation": "relu", "init": "xavier", "optimizer": "adam",
        "learning_rate": FLAGS.learning_rate, "beta1": float(hp.beta1), "beta2": float(hp.beta2),
        "epsilon": float(hp.epsilon),
        "batch_size": FLAGS.batch_size, "epochs": FLAGS.epochs, "seed": FLAGS.seed, "data": source,
        "n_train": int(train_set.X.shape[0]), "n_test": int(test_set.X.shape[0]),
    }
    report = [
        "# Frameworks study: Flax and the pure function", "",
        (f"Net {'-'.join(map(str, layer_sizes))} (ReLU, softmax output, Xavier init), Adam (learning rate "
         f"{FLAGS.learning_rate:g}) on mini-batches of {FLAGS.batch_size}, {FLAGS.epochs} epochs. Data: {source} "
         f"({settings['n_train']} train / {settings['n_test']} test). Both start from the same parameters, walk the "
         "same mini-batches and use deepopt's Adam. Accuracies are those of the last epoch; the pure-function "
         "per-epoch curves are the `EpochLog` of one `train.advance(..., log_metrics=True)` over every epoch "
         "(train accuracy, test accuracy with the test set as dev set, cost); its final accuracies are "
         "`train.evaluate` of the final state."), "",
        table, "", "## Findings", "", *[f"- {line}" for line in summary], "",
    ]
    common.finish_study(output_dir, {
        "study": STUDY, "settings": settings, "rows": rows, "consistency": consistency, "findings": summary,
        "plots": plots,
    }, report, plots)


if __name__ == "__main__":
    common.run_study(main)
