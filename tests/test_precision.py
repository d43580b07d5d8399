"""Mixed precision: 16-bit data trains on float32 master weights, float16 with a per-run loss scale."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from deepopt import checkpoint, data, model, optim, precision, sweep, tasks, train

MOONS = train.Config((2, 16, 1), optimizer="adam", batch_size=64, epochs=20)
HP = train.HParams(learning_rate=0.01)


@pytest.fixture(scope="module")
def moons_splits():
    moons = data.make_moons(jax.random.key(0), 1200, noise=0.2)
    return data.train_dev_test_split(jax.random.key(1), moons, 0.2, 0.2)


def _as(split: data.Dataset, dtype) -> data.Dataset:
    return data.Dataset(np.asarray(split.X).astype(dtype), split.y)


def test_the_policy_keeps_float32_master_weights_under_16_bit_data_or_compute():
    assert precision.policy_of(None, jnp.bfloat16) == precision.Policy("float32", "bfloat16")
    assert precision.policy_of(None, np.float16) == precision.Policy("float32", "float16")
    assert precision.policy_of(None, ml_dtypes.bfloat16) == precision.Policy("float32", "bfloat16")
    assert not precision.policy_of(None, np.float32).mixed and not precision.policy_of(None, np.float64).mixed
    assert precision.policy_of("bfloat16", np.float32) == precision.Policy("float32", "bfloat16")
    assert precision.policy_of("float32", jnp.bfloat16) == precision.Policy("float32", "float32")
    assert precision.policy_of("float16", np.float32).loss_scaling
    with pytest.raises(ValueError, match=r"Config.compute_dtype must be None .* got 'half'"):
        train.Config((2, 1), compute_dtype="half")


@pytest.mark.parametrize("make", [
    lambda X: X.astype(ml_dtypes.bfloat16),  # numpy with ml_dtypes
    lambda X: jnp.asarray(X, jnp.bfloat16),  # JAX
    lambda X: X.astype(np.float16),
    lambda X: jnp.asarray(X, jnp.float16),
])
def test_every_library_s_16_bit_arrays_are_accepted_and_train_on_float32_masters(moons_splits, make):
    tr, dev, _ = moons_splits
    split = data.Dataset(make(np.asarray(tr.X)), tr.y)
    config = train.Config((2, 4, 1), optimizer="adam", batch_size=64, epochs=2)
    state = train.init_state(config, HP, jax.random.key(0), split)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert {leaf.dtype for leaf in jax.tree.leaves(state.opt_state) if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)}
    assert state.precision.compute.dtype == jnp.dtype(split.X.dtype)
    state, log = train.advance(config, HP, state, split, epochs=2)
    assert log.cost.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(log.cost)))
    result = train.fit(config, HP, jax.random.key(0), split, data.Dataset(make(np.asarray(dev.X)), dev.y))
    assert result.dev_accuracy.dtype == jnp.float32 and float(result.dev_accuracy) > 0.6


def test_a_dtype_deepopt_cannot_train_is_refused_with_what_to_do(moons_splits):
    tr = moons_splits[0]
    with pytest.raises(TypeError, match=r"train.X has dtype float8_e4m3fn, which deepopt cannot train in .* cast it"):
        train.fit(MOONS, HP, jax.random.key(0), _as(tr, ml_dtypes.float8_e4m3fn))
    checked = data.check_dataset(_as(tr, ml_dtypes.bfloat16), "train", on_host=True)
    assert checked.X.dtype == ml_dtypes.bfloat16
    bad = np.asarray(tr.X).astype(ml_dtypes.bfloat16)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"train.X has a non-finite value \(inf\) at row 3, column 1"):
        data.check_dataset(data.Dataset(bad, tr.y), "train")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_moons_reach_float32_s_test_accuracy_within_2_points(moons_splits, dtype):
    tr, dev, test = moons_splits
    for seed in (0, 1):
        wide = train.fit(MOONS, HP, jax.random.key(seed), tr, test)
        half = train.fit(MOONS, HP, jax.random.key(seed), _as(tr, dtype), _as(test, dtype))
        assert not bool(half.diverged)
        assert float(half.dev_accuracy) >= float(wide.dev_accuracy) - 0.02, (seed, half.dev_accuracy, wide.dev_accuracy)


def test_compute_dtype_computes_in_bfloat16_on_float32_data(moons_splits):
    tr, _, test = moons_splits
    config = train.Config((2, 16, 1), optimizer="adam", batch_size=64, epochs=20, compute_dtype="bfloat16")
    wide = train.fit(MOONS, HP, jax.random.key(0), tr, test)
    half = train.fit(config, HP, jax.random.key(0), tr, test)
    cast = train.fit(MOONS, HP, jax.random.key(0), _as(tr, jnp.bfloat16), _as(test, jnp.bfloat16))
    assert half.params[0]["W"].dtype == jnp.float32
    assert abs(float(half.dev_accuracy) - float(wide.dev_accuracy)) <= 0.02
    assert not np.array_equal(np.asarray(half.costs), np.asarray(wide.costs))  # it did compute in bfloat16
    assert float(cast.dev_accuracy) == pytest.approx(float(half.dev_accuracy), abs=0.02)


def test_the_float32_master_update_equals_the_float32_update_of_the_same_gradients(moons_splits):
    # One full-batch Adam step on bfloat16 data: the gradients come from the bfloat16 passes, the
    # update is the float32 optimizer's on the float32 masters, exactly as a float32 run applies it.
    tr = moons_splits[0]
    config = train.Config((2, 8, 1), optimizer="adam", epochs=1, cpu_kernels=False)
    half = _as(tr, jnp.bfloat16)
    state = train.init_state(config, HP, jax.random.key(0), half)
    after, _ = train.advance(config, HP, state, half, epochs=1)

    def cost(params):
        logits = model.forward(precision.cast_floats(params, jnp.bfloat16), jnp.asarray(half.X)).astype(jnp.float32)
        return jnp.mean(tasks.classification().loss(logits, jnp.asarray(half.y)))

    hp = train.prepare_hparams(HP, config, jnp.float32)
    grads = jax.jit(jax.grad(cost))(state.params)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    expected, _ = jax.jit(optim.get("adam").update)(grads, state.opt_state, state.params, hp)
    for got, want in zip(jax.tree.leaves(after.params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_loss_scale_halves_on_overflow_and_doubles_after_the_growth_interval():
    state = precision.initial_state(precision.Policy("float32", "float16"))
    assert float(state.scale) == 2.0**15
    down = precision.adjust(state, jnp.array(False))
    assert float(down.scale) == 2.0**14 and int(down.good_steps) == 0
    grown = precision.adjust(state._replace(good_steps=jnp.int32(precision.GROWTH_INTERVAL - 1)), jnp.array(True))
    assert float(grown.scale) == 2.0**16 and int(grown.good_steps) == 0
    floor = precision.adjust(state._replace(scale=jnp.float32(1.0)), jnp.array(False))
    assert float(floor.scale) == 1.0
    assert precision.initial_state(precision.Policy("float32", "bfloat16")).scale == 1.0
    assert precision.initial_state(precision.Policy("float32", "float32")) is None


def test_one_float16_run_s_overflow_touches_no_other_run_under_vmap(moons_splits):
    # Three runs in one vmapped program; a huge init scale makes run 1's scaled gradients overflow
    # float16 (the scale must come down) while runs 0 and 2 train as they would beside any others.
    tr = moons_splits[0]
    half = _as(tr, np.float16)
    config = train.Config((2, 16, 1), optimizer="adam", batch_size=64, epochs=3, init="xavier")

    def sweep_of(scales):
        hp = train.broadcast_hparams(train.HParams(learning_rate=0.01, init_scale=np.asarray(scales)), 3)
        run = lambda h, k: train.advance(config, h, train.init_state(config, h, k, half), half, epochs=3)[0]  # noqa: E731
        return jax.jit(jax.vmap(run))(hp, jax.random.split(jax.random.key(0), 3))

    overflowing = sweep_of([1.0, 300.0, 1.0])
    calm = sweep_of([1.0, 1.0, 1.0])
    for i in (0, 2):
        for a, b in zip(jax.tree.leaves(overflowing.params), jax.tree.leaves(calm.params)):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b[i]))
    scales = np.asarray(overflowing.precision.scale)
    assert scales[1] < 2.0**15 and scales[0] == scales[2] == 2.0**15
    assert not np.asarray(overflowing.diverged).any()  # a skipped step is not a divergence
    assert np.asarray(overflowing.step)[1] < np.asarray(overflowing.step)[0]  # its overflowing steps were skipped
    assert all(np.isfinite(np.asarray(leaf[1])).all() for leaf in jax.tree.leaves(overflowing.params))


def test_a_checkpoint_records_the_policy_and_refuses_another(moons_splits, tmp_path):
    tr = moons_splits[0]
    state = train.init_state(MOONS, HP, jax.random.key(0), _as(tr, jnp.bfloat16))
    checkpoint.save(tmp_path / "run", state)
    back = checkpoint.restore(tmp_path / "run", like=state)
    assert back.precision.compute.dtype == jnp.bfloat16
    other = train.init_state(MOONS, HP, jax.random.key(0), _as(tr, np.float16))
    with pytest.raises(ValueError, match=r"precision.*float16|bfloat16"):
        checkpoint.restore(tmp_path / "run", like=other)
    with pytest.raises(ValueError, match="precision"):
        checkpoint.restore(tmp_path / "run", like=train.init_state(MOONS, HP, jax.random.key(0), tr))


def test_a_sweep_trains_16_bit_data_with_float32_hyperparameters(moons_splits):
    tr, dev, _ = moons_splits
    space = {"learning_rate": sweep.grid([0.003, 0.01, 0.03])}
    wide = sweep.run(MOONS, space, tr, dev, key=jax.random.key(0), num_configs=None, sampler="grid")
    half = sweep.run(MOONS, space, _as(tr, ml_dtypes.bfloat16), _as(dev, ml_dtypes.bfloat16),
                     key=jax.random.key(0), num_configs=None, sampler="grid")
    by_rate = lambda rows: {r["hparams"]["learning_rate"]: r["dev_accuracy"] for r in rows}  # noqa: E731
    assert by_rate(half.rows).keys() == by_rate(wide.rows).keys()
    for rate, accuracy in by_rate(wide.rows).items():
        assert by_rate(half.rows)[rate] >= accuracy - 0.03


def test_data_load_gives_16_bit_data_by_name_and_explains_an_npz_of_raw_bfloat16(tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    np.savez(tmp_path / "plain.npz", X=X, y=y)
    assert data.load(tmp_path / "plain.npz", dtype="bfloat16").X.dtype == ml_dtypes.bfloat16
    assert data.load(tmp_path / "plain.npz", dtype=np.float16).X.dtype == np.float16
    np.savez(tmp_path / "raw.npz", X=X.astype(ml_dtypes.bfloat16), y=y)  # numpy stores it as 2-byte voids
    with pytest.raises(ValueError, match=r"raw.npz: X has dtype \|V2 .* load it with dtype='bfloat16'"):
        data.load(tmp_path / "raw.npz")
    with pytest.raises(TypeError, match="dtype has dtype float8_e5m2"):
        data.load(tmp_path / "plain.npz", dtype=ml_dtypes.float8_e5m2)


class _TinyCNN(nn.Module):
    """A convolution and a Dense head: a user's module, its nn.Conv run as patches."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Conv(4, (3,), strides=2)(x[..., None]))
        return nn.Dense(2)(h.reshape(h.shape[0], -1))


def test_a_flax_module_trains_on_16_bit_data_with_float32_masters(moons_splits):
    tr, dev, _ = moons_splits
    X = np.concatenate([np.asarray(tr.X)] * 4, axis=1)  # 8 samples a row for the convolution
    Xd = np.concatenate([np.asarray(dev.X)] * 4, axis=1)
    config = train.Config(model=_TinyCNN(), optimizer="adam", batch_size=64, epochs=10)
    wide = train.fit(config, HP, jax.random.key(0), data.Dataset(X, tr.y), data.Dataset(Xd, dev.y))
    for dtype in (jnp.bfloat16, np.float16):
        half = train.fit(config, HP, jax.random.key(0), data.Dataset(X.astype(dtype), tr.y),
                         data.Dataset(Xd.astype(dtype), dev.y))
        assert {leaf.dtype for leaf in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.float32)}
        assert float(half.dev_accuracy) >= float(wide.dev_accuracy) - 0.03 and not bool(half.diverged)


def test_adaptive_searches_train_16_bit_data_and_resume_its_states(moons_splits, tmp_path):
    tr, dev, _ = moons_splits
    half, half_dev = _as(tr, np.float16), _as(dev, np.float16)
    space = {"learning_rate": sweep.log_uniform(1e-3, 0.1)}
    config = train.Config((2, 8, 1), optimizer="adam", batch_size=64, epochs=4)
    path = tmp_path / "halving.jsonl"
    halving = sweep.successive_halving(config, space, half, half_dev, key=jax.random.key(0), num_configs=4,
                                       min_epochs=1, max_epochs=4, eta=2, results_path=str(path))
    assert len(halving.rows) >= 4 and all(np.isfinite(r["dev_accuracy"]) for r in halving.rows)
    again = sweep.successive_halving(config, space, half, half_dev, key=jax.random.key(0), num_configs=4,
                                     min_epochs=1, max_epochs=4, eta=2, results_path=str(path), resume=True)
    assert again.rows == halving.rows
    population = sweep.pbt(config, space, _as(tr, jnp.bfloat16), _as(dev, jnp.bfloat16), key=jax.random.key(1),
                           population=4, epochs=4, interval=2)
    assert population.best(1)[0]["dev_accuracy"]["mean"] > 0.7


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_16_bit_mnist1d_reaches_float32_s_test_accuracy_within_2_points(name):
    # MNIST-1D's canonical split, Adam, 2 seeds: the seed-mean test accuracy of bfloat16 and
    # float16 data is within 2 points of float32's (deepopt's MLP, and the paper's CNN as a Flax module).
    pytest.importorskip("mnist1d.data")
    from experiments.mnist1d_models import PaperCNN

    train_set, test_set = data.load_mnist1d()
    config = (train.Config((40, 100, 100, 10), optimizer="adam", batch_size=100, epochs=20) if name == "mlp"
              else train.Config(model=PaperCNN(), optimizer="adam", batch_size=100, epochs=10))
    space = {"learning_rate": sweep.grid([0.003 if name == "mlp" else 0.01])}

    def test_accuracy(dtype) -> float:
        cast = lambda split: data.Dataset(np.asarray(split.X).astype(dtype), split.y)  # noqa: E731
        results = sweep.run(config, space, cast(train_set), cast(test_set), key=jax.random.key(0), num_configs=None,
                            sampler="grid", seeds=2)
        assert len(results.rows) == 2 and not any(row["diverged"] for row in results.rows)
        return float(np.mean([row["dev_accuracy"] for row in results.rows]))

    wide = test_accuracy(np.float32)
    assert wide > (0.55 if name == "mlp" else 0.8)
    for dtype in (ml_dtypes.bfloat16, np.float16):
        assert test_accuracy(dtype) >= wide - 0.02, dtype


def test_a_checkpoint_from_before_the_precision_field_still_restores(moons_splits, tmp_path):
    # Earlier versions wrote TrainState without its last field: the same leaves, a shorter tree.
    import collections
    import json

    state = train.init_state(MOONS, HP, jax.random.key(0), moons_splits[0])
    checkpoint.save(tmp_path / "run", state)
    metadata_file = tmp_path / "run" / checkpoint.METADATA_FILE
    metadata = json.loads(metadata_file.read_text())
    older = collections.namedtuple("TrainState", train.TrainState._fields[:-1])
    metadata["treedef"] = str(jax.tree.structure(older(*state[:-1])))
    metadata_file.write_text(json.dumps(metadata))
    back = checkpoint.restore(tmp_path / "run", like=state)
    assert back.precision is None
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                                                 else a),
                                      np.asarray(jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key)
                                                 else b))
