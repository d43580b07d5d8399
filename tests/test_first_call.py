"""A sweep's first call compiles its chunk program and nothing else; the host conversions behind it are exact.

The seed keys (``host_keys``), the data check's conversions (``data.check_dataset(on_host=True)``)
and the chunk's hyperparameter columns (``engine._group_hparams``) are computed in numpy instead
of through small XLA programs, each of which a fresh process compiled; each must give the same
bits as the JAX computation it replaces.
"""

import logging
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, sweep, train
from deepopt.sweep import engine, host_keys, planning


@pytest.mark.parametrize("seed", [0, 3, 2**31 - 1])
@pytest.mark.parametrize("num", [1, 2, 7, 300])
def test_host_split_is_jax_random_split(seed, num):
    key = jax.random.key(seed)
    expected = np.asarray(jax.random.key_data(jax.random.split(key, num)))
    got = host_keys.split_key_data(key, num)
    assert got.dtype == expected.dtype == np.uint32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("impl", [None, "rbg"])
def test_seed_key_data_is_the_seed_keys_data(impl):
    key = jax.random.key(11) if impl is None else jax.random.key(11, impl=impl)
    assert host_keys.computes_on_host(key) == (impl is None)  # rbg keys go through jax.random.split
    _, model_key = jax.random.split(key)  # what seed_keys computed before host_keys
    expected = np.asarray(jax.random.key_data(jax.random.split(model_key, 5)))
    np.testing.assert_array_equal(planning.seed_key_data(key, 5), expected)
    seed_keys = planning.seed_keys(key, 5)
    assert seed_keys.shape == (5,) and jax.random.key_impl(seed_keys) == jax.random.key_impl(key)
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(seed_keys)), expected)


@pytest.mark.parametrize("seed", [0, 3, 2**31 - 1])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (300, 2), (5,), (2, 3, 4)])
def test_host_uniform_is_jax_random_uniform(seed, shape):
    key = jax.random.key(seed)
    expected = np.asarray(jax.random.uniform(key, shape, jnp.float32))
    got = host_keys.uniform(key, shape)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert np.all((got >= 0) & (got < 1))


@pytest.mark.parametrize("data", [0, 1, 2, 17, 2**31, 2**32 - 1])
def test_host_fold_in_is_jax_random_fold_in(data):
    for seed in (0, 9, 2**31 - 1):
        key = jax.random.key(seed)
        expected = np.asarray(jax.random.key_data(jax.random.fold_in(key, data)))
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(host_keys.fold_in(key, data))), expected)
    with pytest.raises(ValueError, match="fold_in data"):
        host_keys.fold_in_words(np.zeros(2, np.uint32), 2**32)


def test_host_uniform_has_jax_s_bits_over_many_draws():
    # a million draws: every mantissa pattern the shift can give shows up in both
    key = jax.random.fold_in(jax.random.key(123), 4)
    expected = np.asarray(jax.random.uniform(key, (1000, 1000), jnp.float32))
    np.testing.assert_array_equal(host_keys.uniform(key, (1000, 1000)), expected)


def test_the_samplers_draw_what_they_drew_through_jax():
    space = {"learning_rate": sweep.log_uniform(1e-4, 1.0), "l2": sweep.uniform(0.0, 0.5),
             "beta1": sweep.one_minus_log_uniform(1e-3, 0.5), "keep_prob": 0.9}
    key = jax.random.key(21)
    # the random sampler's asks t = 0, 1, 2 from jax.random.uniform with key, fold_in(key, t)
    random = sweep.make_sampler("random", space, key)
    varying = ["learning_rate", "l2", "beta1"]
    for ask in range(3):
        ask_key = key if ask == 0 else jax.random.fold_in(key, ask)
        unit = np.asarray(jax.random.uniform(ask_key, (5, 3), jnp.float32), np.float64)
        expected = {name: space[name].sample(unit[:, j]) for j, name in enumerate(varying)}
        got = random.ask(5)
        for j, name in enumerate(varying):
            assert [a[name] for a in got] == list(expected[name])
        assert all(a["keep_prob"] == 0.9 for a in got)
    # the quasi sampler's scrambling permutations from jax.random.split and jax.random.uniform
    from deepopt.sweep import samplers
    points = samplers.halton(key, 40, 3)
    expected = np.zeros((40, 3))
    for j, (base, dim_key) in enumerate(zip((2, 3, 5), jax.random.split(key, 3))):
        num_digits = max(int(np.ceil(40 * np.log(2) / np.log(base))), len(np.base_repr(39, base)))
        permutations = np.argsort(np.asarray(jax.random.uniform(dim_key, (num_digits, base))), axis=1)
        remaining = np.arange(40)
        for k in range(num_digits):
            expected[:, j] += permutations[k][remaining % base] * float(base) ** -(k + 1)
            remaining //= base
    np.testing.assert_array_equal(points, expected)


def test_the_host_threefry_is_the_published_one():
    # the Threefry-2x32 known-answer vector of Salmon et al. (Random123): key and counter all ones
    ones = np.full(1, 0xFFFFFFFF, np.uint32)
    x0, x1 = host_keys.threefry2x32(np.uint32(0xFFFFFFFF), np.uint32(0xFFFFFFFF), ones, ones)
    assert (int(x0[0]), int(x1[0])) == (0x1CB996FC, 0xBB002BE7)


def _splits():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 9)
    return {
        "float64": (rng.normal(size=(9, 3)) * 1e3 + 1e-9, y),
        "float32": (rng.normal(size=(9, 3)).astype(np.float32), y.astype(np.uint8)),
        "int64": (rng.integers(-(2**40), 2**40, (9, 3)), y),
        "bool": (rng.random((9, 3)) > 0.5, y.astype(np.int32)),
        "jax bfloat16": (jnp.asarray(rng.normal(size=(9, 3)), jnp.bfloat16), jnp.asarray(y)),
    }


@pytest.mark.parametrize("float_dtype", [None, np.float16, np.float64])
@pytest.mark.parametrize("kind", list(_splits()))
def test_the_host_data_check_converts_as_jax_does(kind, float_dtype):
    X, y = _splits()[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int64 values past int32 wrap (and warn) in both
        on_device = data.check_dataset(data.Dataset(X, y), float_dtype=float_dtype)
        on_host = data.check_dataset(data.Dataset(X, y), float_dtype=float_dtype, on_host=True)
    assert isinstance(on_host.X, np.ndarray) and isinstance(on_host.y, np.ndarray)
    for host, device in ((on_host.X, on_device.X), (on_host.y, on_device.y)):
        assert host.dtype == np.asarray(device).dtype
        np.testing.assert_array_equal(host, np.asarray(device))


def test_the_host_data_check_raises_the_same_errors():
    bad = data.Dataset(np.array([[0.0, np.inf]]), np.array([0]))
    with pytest.raises(ValueError, match=r"data.X has a non-finite value \(inf\) at row 0, column 1"):
        data.check_dataset(bad, on_host=True)


def test_group_hparams_equal_prepare_then_broadcast():
    config = train.Config((2, 4, 1), optimizer="momentum", init="xavier", schedule="cosine", epochs=37)
    rng = np.random.default_rng(2)
    values = [
        {**train.HParams()._asdict(), "learning_rate": float(10 ** rng.uniform(-4, 0)), "beta": float(rng.uniform(0.5, 1))}
        for _ in range(6)
    ]
    got = engine._group_hparams(values, config, np.dtype(np.float32))
    columns = {
        name: None if all(v[name] is None for v in values) else np.asarray([v[name] for v in values], np.float64)
        for name in train.HParams._fields
    }
    expected = train.broadcast_hparams(train.prepare_hparams(train.HParams(**columns), config, np.float32), 6)
    assert set(got) == set(train.HParams._fields)
    for name, value in expected._asdict().items():
        assert got[name].dtype == np.float32 and got[name].shape == (6,)
        np.testing.assert_array_equal(got[name], np.asarray(value))


EAGER_PROGRAMS = {"stage", "_threefry_split", "unstack", "convert_element_type", "broadcast_in_dim", "_uniform",
                  "_threefry_fold_in", "fold_in"}


def _programs_compiled(caplog, call):
    """``call()``'s result and the names of the programs JAX compiled during it (from ``jax_log_compiles``)."""
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            result = call()
    finally:
        jax.config.update("jax_log_compiles", previous)
    return result, set(re.findall(r"Compiling jit\((\w+)\)", caplog.text))


def test_a_first_sweep_compiles_its_chunk_program_only(caplog):
    # shapes no other test uses, so that nothing this call needs is compiled already
    rng = np.random.default_rng(3)
    train_set = data.Dataset(rng.normal(size=(37, 3)).astype(np.float32), rng.integers(0, 2, 37))
    dev_set = data.Dataset(rng.normal(size=(23, 3)).astype(np.float32), rng.integers(0, 2, 23))
    config = train.Config((3, 5, 1), optimizer="adam", batch_size=16, epochs=3)
    space = {"learning_rate": sweep.grid([1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.7])}
    key = jax.random.key(5)
    results, compiled = _programs_compiled(caplog, lambda: sweep.run(
        config, space, train_set, dev_set, key=key, num_configs=None, seeds=3, sampler="grid"))
    assert len(results.rows) == 21 and compiled  # the chunk program was compiled here ...
    assert not compiled & EAGER_PROGRAMS, compiled  # ... and no eager one beside it


def test_a_first_random_search_compiles_its_chunk_program_only(caplog):
    # the random sampler draws on the host: no _uniform or fold_in program beside the chunk program
    rng = np.random.default_rng(4)
    train_set = data.Dataset(rng.normal(size=(41, 3)).astype(np.float32), rng.integers(0, 2, 41))
    dev_set = data.Dataset(rng.normal(size=(19, 3)).astype(np.float32), rng.integers(0, 2, 19))
    config = train.Config((3, 6, 1), optimizer="adam", batch_size=16, epochs=2)
    space = {"learning_rate": sweep.log_uniform(1e-3, 0.3), "l2": sweep.log_uniform(1e-4, 1.0)}
    key = jax.random.key(6)  # made before the log starts: making it compiles a program of its own
    results, compiled = _programs_compiled(caplog, lambda: sweep.run(
        config, space, train_set, dev_set, key=key, num_configs=5, seeds=2))
    assert len(results.rows) == 10 and compiled
    assert not compiled & EAGER_PROGRAMS, compiled


@pytest.mark.parametrize("search", ["hyperband", "pbt"])
def test_a_first_adaptive_search_compiles_its_own_programs_only(caplog, tmp_path, search):
    # no key wrapped for a state's shape, no eager fold_in for PBT's explore draws
    rng = np.random.default_rng(5 if search == "pbt" else 6)
    m = 29 if search == "pbt" else 31
    train_set = data.Dataset(rng.normal(size=(m, 4)).astype(np.float32), rng.integers(0, 2, m))
    dev_set = data.Dataset(rng.normal(size=(17, 4)).astype(np.float32), rng.integers(0, 2, 17))
    config = train.Config((4, 3, 1), optimizer="adam", batch_size=8, epochs=4)
    space = {"learning_rate": sweep.log_uniform(1e-3, 0.3)}
    key = jax.random.key(7)
    if search == "pbt":
        def call():
            return sweep.pbt(config, space, train_set, dev_set, key=key, population=4, epochs=4, interval=2,
                             results_path=tmp_path / "r.jsonl")
    else:
        def call():
            return sweep.hyperband(config, space, train_set, dev_set, key=key, min_epochs=1, max_epochs=4, eta=2,
                                   results_path=tmp_path / "r.jsonl")
    _, compiled = _programs_compiled(caplog, call)
    assert compiled and not compiled & EAGER_PROGRAMS, compiled
