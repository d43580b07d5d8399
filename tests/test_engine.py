"""The engine's speed-ups change no result: the one-operand-sort permutation and dropout compiled out."""

import collections
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data, sweep, train

SMALL = train.Config((2, 6, 1), optimizer="adam", batch_size=32, epochs=6)


@pytest.mark.parametrize("m", [1, 2, 3, 64, 300, 1000])
def test_permutation_is_a_permutation_and_repeats_with_its_key(m):
    order = np.asarray(data.permutation(jax.random.key(7), m))
    assert order.dtype == np.int32 and sorted(order.tolist()) == list(range(m))
    np.testing.assert_array_equal(order, np.asarray(data.permutation(jax.random.key(7), m)))
    if m >= 64:
        assert not np.array_equal(order, np.asarray(data.permutation(jax.random.key(8), m)))


def test_permutation_is_uniform():
    # All 24 orders of 4 items, 24000 draws: each count is 1000 ± 31 (1 sd); allow 5 sd.
    draws = jax.jit(jax.vmap(lambda k: data.permutation(k, 4)))(jax.random.split(jax.random.key(0), 24000))
    counts = collections.Counter(map(tuple, np.asarray(draws).tolist()))
    assert len(counts) == 24
    assert all(abs(c - 1000) < 5 * math.sqrt(1000) for c in counts.values())
    # Every item is equally likely in every position (m = 300: 2 rounds of 23 random bits).
    first_item = jax.jit(jax.vmap(lambda k: data.permutation(k, 300)[0]))  # one program, not one per operation
    first = np.asarray(first_item(jax.random.split(jax.random.key(1), 30000)))
    histogram = np.bincount(first // 30, minlength=10)  # 10 bins of 30 items, 3000 ± 52 each
    assert np.all(np.abs(histogram - 3000) < 5 * 52)


def test_shuffle_rounds_match_jax_bound_and_fall_back_for_huge_sets():
    assert [data.shuffle_rounds(m) for m in (1, 2, 300, 60_000, 2**20)] == [1, 1, 2, 3, 5]
    assert data.shuffle_rounds(2**21) == 0  # fewer than 12 random bits left: jax.random.permutation


def test_minibatches_use_the_permutation():
    index, mask = data.padded_minibatch_indices(jax.random.key(3), 300, 64)
    order = np.asarray(data.permutation(jax.random.key(3), 300))
    np.testing.assert_array_equal(np.asarray(index).reshape(-1)[:300], order)
    assert int(mask.sum()) == 300


@pytest.fixture(scope="module")
def moons_pair():
    return data.make_moons(jax.random.key(0), 100, 0.2), data.make_moons(jax.random.key(1), 40, 0.2)


def test_dropout_compiled_out_gives_the_same_run(moons_pair):
    train_set, dev_set = moons_pair
    hp = train.HParams(learning_rate=0.05)
    with_masks = train.fit(SMALL, hp, jax.random.key(2), train_set, dev_set)
    without = train.fit(SMALL, hp, jax.random.key(2), train_set, dev_set, dropout=False)
    np.testing.assert_array_equal(np.asarray(with_masks.costs), np.asarray(without.costs))
    for a, b in zip(jax.tree.leaves(with_masks.params), jax.tree.leaves(without.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dropout_false_with_keep_prob_below_one_is_refused(moons_pair):
    train_set, _ = moons_pair
    with pytest.raises(ValueError, match=r"dropout=False compiles dropout out, but HParams.keep_prob is 0.8"):
        train.fit(SMALL, train.HParams(keep_prob=0.8), jax.random.key(0), train_set, dropout=False)
    with pytest.raises(TypeError, match="dropout must be True, False or None"):
        train.fit(SMALL, train.HParams(), jax.random.key(0), train_set, dropout="no")
    assert train.resolve_dropout(np.array([1.0, 1.0])) is False
    assert train.resolve_dropout(np.array([1.0, 0.9])) is True


def test_sweep_compiles_dropout_out_only_for_groups_without_it(moons_pair):
    train_set, dev_set = moons_pair
    space = {"learning_rate": sweep.grid([0.01, 0.1]), "keep_prob": sweep.grid([1.0])}
    plain = sweep.run(SMALL, space, train_set, dev_set, key=jax.random.key(5), num_configs=None, sampler="grid")
    assert [group["dropout"] for group in plain.stats["layout"]] == [False]
    assert plain.stats["layout"][0]["compile_seconds"] > 0
    for row in plain.rows:  # the same numbers as fit with the masks compiled in
        single = train.fit(SMALL, sweep.hparams_of(row), sweep.key_of(row), train_set, dev_set)
        assert row["final_cost"] == pytest.approx(float(single.final_cost), rel=1e-6)
        assert row["dev_accuracy"] == pytest.approx(float(single.dev_accuracy), abs=1e-6)
    dropped = sweep.run(
        SMALL, {**space, "keep_prob": sweep.grid([1.0, 0.7])}, train_set, dev_set,
        key=jax.random.key(5), num_configs=None, sampler="grid",
    )
    assert [group["dropout"] for group in dropped.stats["layout"]] == [True]


def test_auto_chunk_fits_the_cache_budget():
    small = train.Config((2, 20, 10, 1), optimizer="adam", batch_size=64, epochs=1)
    wide = train.Config((2, 256, 256, 1), optimizer="adam", batch_size=64, epochs=1)
    # P params · (params + grads + 2 Adam slots) + 4 activations per hidden unit and example, float32
    assert sweep.working_set_bytes(small, 300) == 4 * (281 * 4 + 4 * 64 * 30) + 4  # + Adam's int32 step count
    assert sweep.working_set_bytes(train.Config((2, 20, 10, 1), optimizer="gd", batch_size=64), 300) == 4 * (
        281 * 2 + 4 * 64 * 30
    )
    assert sweep.auto_chunk_size(small, 300, 2) == 256  # 128 runs per device
    assert sweep.auto_chunk_size(wide, 300, 2) == 8  # 4 runs per device: fastest measured here
    huge = train.Config((2, 2048, 2048, 1), optimizer="adam", batch_size=64)
    assert sweep.auto_chunk_size(huge, 300, 3) == 3  # never below one run per device
    for size, devices in ((small, 1), (wide, 4)):
        chunk = sweep.auto_chunk_size(size, 300, devices)
        assert chunk % devices == 0 and chunk // devices * sweep.working_set_bytes(size, 300) <= max(
            sweep.CACHE_BYTES_PER_DEVICE, sweep.working_set_bytes(size, 300)
        )


class _Recurrent(nn.Module):
    """A GRU over the inputs' 40 steps, then Dense(2): its backward keeps every step's gates."""

    hidden: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = nn.RNN(nn.GRUCell(self.hidden))(x[..., None])
        return nn.Dense(2)(h[:, -1])


class _Wide(nn.Module):
    """Dense(16), Dense(2) on the same inputs: about as many parameters, little to keep."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dense(2)(nn.relu(nn.Dense(16)(x)))


def test_a_modules_working_set_counts_what_its_backward_pass_keeps():
    # The residuals of one mini-batch's vjp: a GRU keeps each step's hidden state (at least
    # steps · batch · hidden floats), so its chunks shrink; a Dense net keeps its layers' activations.
    def working_set(module: nn.Module, steps: int) -> int:
        return sweep.working_set_bytes(train.Config(model=module, optimizer="gd", batch_size=50), 500,
                                       jnp.float32, (steps,))

    short, long = working_set(_Recurrent(), 40), working_set(_Recurrent(), 160)
    assert long - short >= 4 * (160 - 40) * 50 * 16  # grows with the sequence, at least the hidden states
    assert working_set(_Wide(), 40) < short / 10
    assert working_set(_Recurrent(hidden=32), 40) > short
    chunk = lambda module, steps: sweep.auto_chunk_size(  # noqa: E731
        train.Config(model=module, optimizer="gd", batch_size=50), 500, 1, jnp.float32, (steps,))
    assert chunk(_Recurrent(), 160) < chunk(_Wide(), 160)
    assert chunk(_Recurrent(), 160) * working_set(_Recurrent(), 160) <= sweep.CACHE_BYTES_PER_DEVICE


def test_sweep_with_auto_chunks(moons_pair):
    train_set, dev_set = moons_pair
    wide = train.Config((2, 4096, 1), optimizer="adam", batch_size=32, epochs=2)  # about 2.4 MB per run
    space = {"learning_rate": sweep.grid([0.001, 0.01, 0.1])}
    results = sweep.run(wide, space, train_set, dev_set, key=jax.random.key(0), num_configs=None, sampler="grid",
                        chunk_size="auto", devices=jax.devices()[:1])
    (layout,) = results.stats["layout"]
    assert layout["chunk"] == sweep.auto_chunk_size(wide, 100, 1) == 2 and layout["chunks"] == 2
    for row in results.rows:
        single = train.fit(wide, sweep.hparams_of(row), sweep.key_of(row), train_set, dev_set)
        assert row["final_cost"] == pytest.approx(float(single.final_cost), rel=1e-5)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, None \\(whole groups\\) or 'auto', got 'big'"):
        sweep.run(wide, space, train_set, dev_set, key=jax.random.key(0), num_configs=None, sampler="grid",
                  chunk_size="big")


# ------------------------------------------------------------------------------ compiler options


def test_cpu_programs_compile_at_llvm_level_1_unless_xla_flags_say_otherwise(monkeypatch) -> None:
    from deepopt import xla_options

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_options.compiler_options("cpu") == {
        "xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
    assert xla_options.compiler_options("gpu") is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert xla_options.compiler_options("cpu") == {"xla_cpu_use_fusion_emitters": False}  # the user's level wins
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true")
    assert xla_options.compiler_options("cpu") is None  # and the user's emitters


def test_the_tuned_jit_works_at_top_level_and_inside_another_trace(monkeypatch) -> None:
    from deepopt import xla_options

    monkeypatch.setenv("XLA_FLAGS", "")  # the options are passed: a top-level call compiles with them

    @xla_options.jit(static_argnums=(0,))
    def scaled(factor: int, x: jax.Array) -> jax.Array:
        return factor * jnp.tanh(x)

    x = jnp.linspace(-1.0, 1.0, 5)
    top = scaled(2, x)
    nested = jax.jit(lambda v: scaled(2, v))(x)  # nested jits take no options: the outer program's apply
    mapped = jax.vmap(lambda v: scaled(2, v))(x[:, None])[:, 0]
    np.testing.assert_allclose(top, 2 * np.tanh(np.asarray(x)), rtol=1e-6)
    np.testing.assert_allclose(nested, top, rtol=1e-6)
    np.testing.assert_allclose(mapped, top, rtol=1e-6)


# ------------------------------------------------------------------------------ concurrent chunks


class _Device:
    """A stand-in device: only its platform matters to ``concurrent_chunks``."""

    def __init__(self, platform: str) -> None:
        self.platform = platform


def test_concurrent_chunks_are_the_cores_per_cpu_device_within_the_budget(monkeypatch):
    monkeypatch.setattr(sweep.engine, "cpu_cores", lambda: 8)
    cpu = [_Device("cpu")]
    assert sweep.concurrent_chunks(cpu) == 8
    assert sweep.concurrent_chunks(cpu * 2) == 4 and sweep.concurrent_chunks(cpu * 16) == 1
    assert sweep.concurrent_chunks(cpu, bytes_per_device=1000, budget=3500) == 3  # 3 chunks fit the budget
    assert sweep.concurrent_chunks(cpu, bytes_per_device=1000, budget=500) == 1
    assert sweep.concurrent_chunks([_Device("gpu")]) == 1  # an accelerator runs one chunk at a time
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert sweep.concurrent_chunks(cpu) == 1  # collectives across processes must meet in one order
    assert sweep.cpu_cores() >= 1
