"""Your own model: ``train.Config(model=module)`` with a Flax linen module (issue 13).

A small 1-D CNN and a residual MLP, trained by deepopt's optimizers, schedules, L2 (kernels only),
early stopping and divergence handling, through ``fit``, ``advance`` and ``sweep.run``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, modules, sweep, train


class TinyCNN(nn.Module):
    """A 1-D CNN in the style of MNIST-1D's: a Conv1d, ReLU, dropout, then a linear layer."""

    channels: int = 4
    n_out: int = 3
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = x[..., None] if x.ndim == 2 else x  # (m, length) or (m, length, 1)
        h = nn.relu(nn.Conv(self.channels, (3,), strides=2, padding=1)(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return nn.Dense(self.n_out)(h.reshape(h.shape[0], -1))


class ResidualMLP(nn.Module):
    """MNIST-1D's MLP baseline in small: ``h = relu(W1 x); h = h + relu(W2 h)``, then a linear layer; with batch norm."""

    width: int = 8
    n_out: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = nn.relu(nn.Dense(self.width)(x))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = h + nn.relu(nn.Dense(self.width)(h))
        return nn.Dense(self.n_out)(h)


class FixedLength(nn.Module):
    """A module that only takes signals of 12 samples (it reshapes to them)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.Dense(3)(x.reshape(x.shape[0], 12))


class NoKernel(nn.Module):
    """A linear classifier whose weights are not named ``kernel``: L2 cannot reach them."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return x @ self.param("w", nn.initializers.normal(1.0), (x.shape[-1], 3))


def sequences(key: jax.Array, m: int, length: int = 12, classes: int = 3) -> data.Dataset:
    """Noisy 1-D signals: class c is a bump at position ~ (c + 1) · length / (classes + 1)."""
    position_key, noise_key, label_key = jax.random.split(key, 3)
    y = jax.random.randint(label_key, (m,), 0, classes)
    centre = (y + 1) * length / (classes + 1) + jax.random.normal(position_key, (m,))
    grid = jnp.arange(length)[None, :]
    X = jnp.exp(-0.5 * (grid - centre[:, None]) ** 2) + 0.2 * jax.random.normal(noise_key, (m, length))
    return data.Dataset(np.asarray(X, np.float32), np.asarray(y, np.int32))


@pytest.fixture(scope="module")
def splits() -> tuple[data.Dataset, data.Dataset]:
    return sequences(jax.random.key(0), 64), sequences(jax.random.key(1), 40)


CNN_CONFIG = train.Config(model=TinyCNN(), optimizer="adam", batch_size=16, epochs=30)
RES_CONFIG = train.Config(model=ResidualMLP(), optimizer="momentum", batch_size=16, epochs=30)


@pytest.fixture(scope="module")
def cnn_result(splits):
    train_set, dev_set = splits
    return train.fit(CNN_CONFIG, train.HParams(learning_rate=0.03), jax.random.key(2), train_set, dev_set)


def test_fit_trains_a_flax_cnn(cnn_result):
    costs = np.asarray(cnn_result.costs)
    assert np.isfinite(costs).all() and costs[-1] < 0.6 * costs[0]
    assert float(cnn_result.train_accuracy) > 0.8 and float(cnn_result.dev_accuracy) > 0.6  # chance is 1/3
    assert set(cnn_result.params) == {"Conv_0", "Dense_0"} and cnn_result.bn_state == {}


def test_a_residual_mlp_with_batch_norm_keeps_its_batch_stats(splits):
    train_set, dev_set = splits
    result = train.fit(RES_CONFIG, train.HParams(learning_rate=0.1), jax.random.key(3), train_set, dev_set)
    assert float(result.train_accuracy) > 0.7
    stats = result.bn_state["batch_stats"]["BatchNorm_0"]
    assert np.abs(np.asarray(stats["mean"])).max() > 0  # moved away from the initial zeros
    logits = RES_CONFIG.model.apply({"params": result.params, **result.bn_state}, jnp.asarray(train_set.X), train=False)
    accuracy = np.mean(np.asarray(jnp.argmax(logits, axis=1)) == train_set.y)
    assert accuracy == pytest.approx(float(result.train_accuracy))  # evaluation uses the running statistics


@pytest.mark.parametrize("config", [CNN_CONFIG, RES_CONFIG], ids=["cnn", "residual_mlp"])
def test_advance_a_then_b_equals_advance_a_plus_b_for_a_module(splits, config):
    train_set, dev_set = splits
    hp = train.HParams(learning_rate=0.05)
    state = train.init_state(config, hp, jax.random.key(4), train_set)
    middle, _ = train.advance(config, hp, state, train_set, dev_set, epochs=2)
    end, _ = train.advance(config, hp, middle, train_set, dev_set, epochs=2)
    whole, _ = train.advance(config, hp, state, train_set, dev_set, epochs=4)
    for a, b in zip(jax.tree.leaves((end.params, end.model_state, end.opt_state)),
                    jax.tree.leaves((whole.params, whole.model_state, whole.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_l2_applies_to_kernels_only(splits):
    """One full-batch GD step: L2 adds exactly lr · λ/m · K to every kernel and nothing to biases."""
    train_set, _ = splits
    config = train.Config(model=TinyCNN(dropout_rate=0.0), optimizer="gd", epochs=1)
    key, lr, lambd, m = jax.random.key(5), 0.1, 2.0, len(train_set.y)
    plain = train.fit(config, train.HParams(learning_rate=lr), key, train_set)
    with_l2 = train.fit(config, train.HParams(learning_rate=lr, l2=lambd), key, train_set)
    start = train.init_state(config, train.HParams(), key, train_set).params
    for layer in ("Conv_0", "Dense_0"):
        np.testing.assert_allclose(
            np.asarray(plain.params[layer]["kernel"] - with_l2.params[layer]["kernel"]),
            np.asarray(lr * lambd / m * start[layer]["kernel"]),
            rtol=1e-4, atol=1e-7,
        )
        np.testing.assert_array_equal(np.asarray(plain.params[layer]["bias"]), np.asarray(with_l2.params[layer]["bias"]))
    l2 = lambd / (2 * m) * sum(float(jnp.sum(with_l2.params[layer]["kernel"] ** 2)) for layer in ("Conv_0", "Dense_0"))
    assert float(with_l2.final_cost) - l2 == pytest.approx(
        float(train.evaluate(config, train.init_state(config, train.HParams(), key, train_set)._replace(
            params=with_l2.params), train_set)["cost"]), rel=1e-5)


def test_inputs_with_more_dimensions(splits):
    train_set, _ = splits
    X3 = data.Dataset(train_set.X[:, :, None], train_set.y)  # (m, length, channels)
    result = train.fit(train.Config(model=TinyCNN(), optimizer="adam", batch_size=16, epochs=2), train.HParams(),
                       jax.random.key(6), X3)
    assert np.isfinite(np.asarray(result.costs)).all()


def test_early_stopping_and_divergence_with_a_module(splits):
    train_set, dev_set = splits
    stopping = train.Config(model=TinyCNN(), optimizer="adam", batch_size=16, epochs=12, early_stopping="keep_best")
    kept = train.fit(stopping, train.HParams(learning_rate=0.03), jax.random.key(7), train_set, dev_set)
    best = int(kept.best_epoch)
    assert 0 <= best < 12 and float(kept.dev_accuracy) == pytest.approx(float(np.nanmax(kept.dev_accuracies)))
    exploding = train.fit(CNN_CONFIG, train.HParams(learning_rate=1e30), jax.random.key(8), train_set)
    assert bool(exploding.diverged) and int(exploding.diverged_epoch) >= 0
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(exploding.params))


def test_bad_inputs_for_a_module_fail_before_compiling(splits):
    train_set, _ = splits
    traced = train.trace_count()
    with pytest.raises(ValueError, match=r"class ids in 0\.\.2 for the 3 output units of Config\.model"):
        train.fit(CNN_CONFIG, train.HParams(), jax.random.key(0), data.Dataset(train_set.X, train_set.y + 3))
    with pytest.raises(ValueError, match=r"Config.model .*FixedLength\(\) cannot take inputs X of shape \(m, 10\) float32"):
        train.fit(train.Config(model=FixedLength()), train.HParams(), jax.random.key(0),
                  data.Dataset(train_set.X[:, :10], train_set.y))
    with pytest.raises(ValueError, match="HParams.keep_prob=0.5 is the built-in MLP's dropout"):
        train.fit(CNN_CONFIG, train.HParams(keep_prob=0.5), jax.random.key(0), train_set)
    no_kernel = train.Config(model=NoKernel(), epochs=1)
    with pytest.raises(ValueError, match=r"HParams.l2=0.5 but Config.model .*NoKernel\(\) has no parameter named 'kernel'"):
        train.fit(no_kernel, train.HParams(l2=0.5), jax.random.key(0), train_set)
    with pytest.raises(ValueError, match=r"no parameter named 'kernel'.*\(config index 0\)"):
        sweep.run(no_kernel, {"l2": sweep.log_uniform(1e-3, 1e-1)}, train_set, train_set, key=jax.random.key(0),
                  num_configs=2)
    with pytest.raises(ValueError, match=r"Config.layer_sizes=\(12, 3\) is for the built-in MLP"):
        train.Config((12, 3), model=TinyCNN())
    with pytest.raises(TypeError, match="Config.model must be a flax.linen.Module"):
        train.Config(model=lambda x: x)
    with pytest.raises(ValueError, match="Config.layer_sizes is required for the built-in MLP"):
        train.Config()
    assert train.trace_count() == traced


def test_sweep_runs_a_module_vmapped_and_resumes(splits, tmp_path):
    train_set, dev_set = splits
    space = {"learning_rate": sweep.log_uniform(1e-3, 1e-1), "l2": sweep.log_uniform(1e-4, 1e-1)}
    config = train.Config(model=TinyCNN(), optimizer="adam", batch_size=16, epochs=4)
    path = tmp_path / "rows.jsonl"
    kwargs = dict(key=jax.random.key(9), num_configs=3, seeds=2, results_path=path, test=dev_set)
    results = sweep.run(config, space, train_set, dev_set, **kwargs)
    assert len(results.rows) == 6 and results.stats["compilations"] == 1
    row = results.rows[3]
    assert row["config"]["model"] == modules.describe(config.model) and "TinyCNN(channels=4" in row["config"]["model"]
    again = train.fit(sweep.config_of(row, model=config.model), sweep.hparams_of(row), sweep.key_of(row), train_set,
                      dev_set)
    assert row["final_cost"] == pytest.approx(float(again.final_cost), rel=1e-4)
    assert abs(row["dev_accuracy"] - float(again.dev_accuracy)) <= 1 / 40 + 1e-6
    resumed = sweep.run(config, space, train_set, dev_set, resume=True, **kwargs)
    assert resumed.stats["runs_computed"] == 0 and [r["id"] for r in resumed.rows] == [r["id"] for r in results.rows]
    with pytest.raises(ValueError, match="pass that module as model="):
        sweep.config_of(row)


def test_a_choice_of_modules_is_one_group_each_in_run_and_hyperband(splits, tmp_path):
    train_set, dev_set = splits
    config = train.Config(model=TinyCNN(), optimizer="adam", batch_size=20, epochs=2)
    space = {"model": sweep.choice([TinyCNN(dropout_rate=0.0), TinyCNN(dropout_rate=0.2)]),
             "learning_rate": sweep.log_uniform(1e-3, 1e-1)}
    results = sweep.run(config, space, train_set, dev_set, key=jax.random.key(0), num_configs=4)
    assert results.stats["groups"] == 2
    assert {row["config"]["model"] for row in results.rows} == {modules.describe(TinyCNN(dropout_rate=r))
                                                                 for r in (0.0, 0.2)}
    searched = sweep.hyperband(config, space, train_set, dev_set, key=jax.random.key(0), min_epochs=1, max_epochs=3,
                               results_path=tmp_path / "hb.jsonl")
    assert searched.stats["groups"] == 2 and "TinyCNN" in (tmp_path / "hb.search.json").read_text()
