"""deepopt: the practical side of training deep networks, as pure, jit-compiled, vmap-able JAX functions."""

from deepopt import (
    backprop, batchnorm, data, diagnostics, gradcheck, init, losses, model, optim, schedules, sweep, tasks, train,
)
from deepopt.data import Dataset
from deepopt.train import Config, HParams, TrainResult, fit

__all__ = [
    "Config",
    "Dataset",
    "HParams",
    "TrainResult",
    "backprop",
    "batchnorm",
    "data",
    "diagnostics",
    "fit",
    "gradcheck",
    "init",
    "losses",
    "model",
    "optim",
    "schedules",
    "sweep",
    "tasks",
    "train",
]
__version__ = "0.1.0"
