"""A regression sweep against scikit-learn's baselines on Friedman #1: does ``tasks.regression()`` learn?

scikit-learn's ``make_friedman1`` (``--n_train`` training, ``--n_dev`` dev and ``--n_test`` test
examples, noise 1, 10 features) is fitted by

- ``LinearRegression()`` and ``MLPRegressor()`` at their default settings (the MLP with
  ``random_state=--seed``), their dev R² from ``score``;
- a deepopt sweep: ``sweep.run`` of an Adam MLP (``--hidden``, mini-batches of 64, ``--epochs``,
  early stopping that keeps the best epoch) over a log-uniform learning rate and L2 λ,
  ``--num_configs`` configs, ranked by dev MSE; its winner's dev R² and test R².

It prints a markdown table and, with ``--output``, writes it as JSON. Needs scikit-learn (the
``datasets`` or ``optuna`` extra).

    python -m experiments.regression_baseline [--num_configs 64 --epochs 200]
"""

from __future__ import annotations

import json
import time
import warnings

import jax
import numpy as np
from absl import app, flags

from deepopt import data, sweep, tasks, train

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_train", 1000, "Training examples.", lower_bound=10)
flags.DEFINE_integer("n_dev", 500, "Dev examples (the sweep ranks on them).", lower_bound=10)
flags.DEFINE_integer("n_test", 500, "Test examples.", lower_bound=10)
flags.DEFINE_integer("num_configs", 64, "Configs of the sweep.", lower_bound=1)
flags.DEFINE_integer("epochs", 200, "Epochs per run (early stopping keeps the best).", lower_bound=1)
flags.DEFINE_list("hidden", ["64", "64"], "Hidden layer widths of the sweep's MLP.")
flags.DEFINE_integer("seed", 0, "Seed of the data, the sweep and the MLPRegressor.", lower_bound=0)
flags.DEFINE_string("output", None, "Also write the measurements as JSON to this file.")


def friedman_splits(seed: int) -> tuple[data.Dataset, data.Dataset, data.Dataset]:
    """scikit-learn's ``make_friedman1`` (noise 1, 10 features) cut into train, dev and test, float32."""
    from sklearn.datasets import make_friedman1

    total = FLAGS.n_train + FLAGS.n_dev + FLAGS.n_test
    X, y = make_friedman1(n_samples=total, n_features=10, noise=1.0, random_state=seed)
    X, y = X.astype(np.float32), y.astype(np.float32)
    cuts = np.cumsum([0, FLAGS.n_train, FLAGS.n_dev, FLAGS.n_test])
    return tuple(data.Dataset(X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))


def baselines(train_set: data.Dataset, dev_set: data.Dataset, test_set: data.Dataset) -> dict[str, dict]:
    """Dev and test R² of ``LinearRegression()`` and ``MLPRegressor()`` at their defaults."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LinearRegression
    from sklearn.neural_network import MLPRegressor

    measured = {}
    for name, model in (("LinearRegression", LinearRegression()), ("MLPRegressor", MLPRegressor(random_state=FLAGS.seed))):
        start = time.perf_counter()
        with warnings.catch_warnings():  # the default 200 iterations stop before convergence: that is the default
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train_set.X, train_set.y)
        measured[name] = {"dev_r2": float(model.score(dev_set.X, dev_set.y)),
                          "test_r2": float(model.score(test_set.X, test_set.y)),
                          "seconds": time.perf_counter() - start}
    return measured


def deepopt_sweep(train_set: data.Dataset, dev_set: data.Dataset, test_set: data.Dataset) -> dict:
    """The sweep's winner (lowest dev MSE): its dev and test R², hyperparameters and the sweep's seconds."""
    config = train.Config((10, *map(int, FLAGS.hidden), 1), optimizer="adam", batch_size=64, epochs=FLAGS.epochs,
                          early_stopping=train.KEEP_BEST, task=tasks.regression())
    space = {"learning_rate": sweep.log_uniform(1e-4, 1e-1), "l2": sweep.log_uniform(1e-6, 1.0)}
    start = time.perf_counter()
    results = sweep.run(config, space, train_set, dev_set, key=jax.random.key(FLAGS.seed),
                        num_configs=FLAGS.num_configs, test=test_set)
    winner = results.best(1)[0]
    return {"dev_r2": winner["dev_r2"]["mean"], "test_r2": winner["test_r2"]["mean"],
            "dev_mse": winner["dev_mse"]["mean"], "seconds": time.perf_counter() - start,
            "learning_rate": winner["hparams"]["learning_rate"], "l2": winner["hparams"]["l2"],
            "configs": FLAGS.num_configs}


def main(argv: list[str]) -> None:
    del argv
    splits = friedman_splits(FLAGS.seed)
    measured = baselines(*splits)
    measured["deepopt sweep"] = deepopt_sweep(*splits)
    print(f"Friedman #1 (scikit-learn's make_friedman1, noise 1, 10 features): {FLAGS.n_train} train / "
          f"{FLAGS.n_dev} dev / {FLAGS.n_test} test; {jax.devices()[0].platform}, jax {jax.__version__}\n")
    print("| model | dev R² | test R² | seconds |\n|---|---|---|---|")
    for name, entry in measured.items():
        print(f"| {name} | {entry['dev_r2']:.4f} | {entry['test_r2']:.4f} | {entry['seconds']:.1f} |")
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as stream:
            json.dump({"settings": {name: FLAGS[name].value for name in ("n_train", "n_dev", "n_test", "num_configs",
                                                                         "epochs", "hidden", "seed")},
                       "models": measured}, stream, indent=1)


if __name__ == "__main__":
    app.run(main)
