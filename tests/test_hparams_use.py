"""Which HParams fields a Config reads, and a sweep that searches a field no config reads refused."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from deepopt import hparams_use, optim, schedules, sweep, train

# What each update and schedule formula uses (optim's and schedules' docstrings), besides learning_rate.
OPTIMIZER_FIELDS = {
    "gd": set(), "momentum": {"beta"}, "nesterov": {"beta"}, "rmsprop": {"beta2", "epsilon"},
    "adam": {"beta1", "beta2", "epsilon"}, "adamw": {"beta1", "beta2", "epsilon", "weight_decay"},
    "adagrad": {"epsilon"},
}
SCHEDULE_FIELDS = {
    "constant": set(), "inverse_time": {"decay_rate"}, "scheduled": {"decay_rate", "time_interval"},
    "exponential": {"decay_factor"}, "inverse_sqrt": {"decay_factor"}, "staircase": {"decay_factor", "time_interval"},
    "cosine": {"decay_epochs", "min_learning_rate"},
    "warmup_cosine": {"decay_epochs", "min_learning_rate", "warmup_epochs"},
}


def test_the_traced_programs_read_what_the_formulas_say() -> None:
    assert set(OPTIMIZER_FIELDS) == set(optim.names()) and set(SCHEDULE_FIELDS) == set(schedules.names())
    for name, fields in OPTIMIZER_FIELDS.items():
        assert hparams_use.optimizer_fields(name) == {"learning_rate"} | fields, name
    for name, fields in SCHEDULE_FIELDS.items():
        assert hparams_use.schedule_fields(name) == {"learning_rate"} | fields, name
    mlp = train.Config((2, 3, 1), optimizer="momentum", schedule="exponential")
    assert hparams_use.fields_read(mlp) == {"learning_rate", "l2", "keep_prob", "init_scale", "beta", "decay_factor"}
    assert "init_scale" not in hparams_use.fields_read(train.Config((2, 3, 1), init="zeros"))
    module = train.Config(model=nn.Dense(1), optimizer="adam")
    assert hparams_use.fields_read(module) == {"learning_rate", "l2", "beta1", "beta2", "epsilon"}


def data() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    X = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    return (X, (X[:, 0] > 0).astype(np.int32)),


def test_a_sweep_of_a_field_no_config_reads_is_refused_before_compiling() -> None:
    (train_set,) = data()
    gd = train.Config((2, 3, 1), optimizer="gd", epochs=1)
    traced = train.trace_count()
    for config, space, field in [
        (gd, {"beta": sweep.uniform(0.0, 0.99)}, "beta"),
        (gd, {"decay_rate": sweep.log_uniform(0.1, 1.0)}, "decay_rate"),
        (gd, {"optimizer": sweep.choice(["gd", "momentum"]), "beta1": sweep.uniform(0.8, 0.99)}, "beta1"),
        (train.Config(model=nn.Dense(1), epochs=1), {"keep_prob": sweep.uniform(0.5, 1.0)}, "keep_prob"),
    ]:
        with pytest.raises(ValueError, match=rf"space\['{field}'\] searches HParams.{field}, which no config of this space reads"):
            sweep.run(config, space, train_set, train_set, key=jax.random.key(0), num_configs=2)
    assert train.trace_count() == traced
    # read by some of the configs: fine (gd's runs ignore β; momentum's use it); a fixed value is not a search
    mixed = {"optimizer": sweep.choice(["gd", "momentum"]), "beta": sweep.uniform(0.5, 0.99), "decay_rate": 0.5}
    assert len(sweep.plan(gd, mixed, key=jax.random.key(0), num_configs=3)) == 3
