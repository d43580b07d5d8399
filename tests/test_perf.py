"""deepopt.perf: the counts the benchmark divides by, checked against XLA's own count."""

import time

import jax
import jax.numpy as jnp
import pytest

from deepopt import init, losses, model, perf, train


def test_steps_per_run_counts_every_update():
    assert perf.steps_per_run(train.Config((2, 4, 1), batch_size=64, epochs=3), 300) == 15  # 64,64,64,64,44
    assert perf.steps_per_run(train.Config((2, 4, 1), batch_size=None, epochs=7), 300) == 7
    assert perf.steps_per_run(train.Config((2, 4, 1), batch_size=500, epochs=7), 300) == 7
    with pytest.raises(ValueError, match="num_examples must be a positive int, got 0"):
        perf.steps_per_run(train.Config((2, 4, 1)), 0)


def test_matmul_flops_formula():
    # forward 2·(40+200+10), dW the same, da for layers 2 and 3: 2·(200+10)
    assert perf.matmul_flops_per_example((2, 20, 10, 1)) == 4 * 250 + 2 * 210
    config = train.Config((2, 20, 10, 1), batch_size=64, epochs=5)
    assert perf.training_flops(config, 300) == 5 * 300 * 1420
    with pytest.raises(ValueError, match="layer_sizes"):
        perf.matmul_flops_per_example((3,))


def test_matmul_flops_agree_with_xla_cost_analysis():
    """On a wide net the matmuls are nearly all of XLA's FLOP count for one gradient step."""
    sizes, batch = (16, 128, 128, 1), 32
    params = init.mlp(jax.random.key(0), sizes, "he")
    X = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    y = (X[:, 0] > 0).astype(jnp.int32)

    def cost(params):
        return losses.cross_entropy(model.forward(params, X), y)

    analysis = jax.jit(jax.grad(cost)).lower(params).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    counted = batch * perf.matmul_flops_per_example(sizes)
    assert counted <= analysis["flops"] <= 1.15 * counted


def test_timing_helpers():
    seconds = perf.time_calls(lambda: jnp.ones(3) * 2, 3)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert perf.median_seconds([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError, match="repeats must be a positive int, got 0"):
        perf.time_calls(lambda: None, 0)
    with pytest.raises(ValueError, match="at least one timing"):
        perf.median_seconds([])


def test_matmul_peak_reports_both_ways():
    peak = perf.matmul_peak(64, repeats=2)
    assert peak["single_device"] > 0 and peak["all_devices"] > 0
    assert peak["peak"] == max(peak["single_device"], peak["all_devices"])


def test_covered_seconds_counts_overlaps_once():
    assert perf.covered_seconds([]) == 0.0
    assert perf.covered_seconds([(3.0, 4.0), (0.0, 1.0), (0.5, 2.0), (0.6, 0.7)]) == pytest.approx(3.0)
    assert perf.covered_seconds([(0.0, 2.0), (2.0, 3.0)]) == pytest.approx(3.0)


def test_compile_phases_time_a_first_call_and_nothing_for_a_compiled_one():
    def program(x: jax.Array) -> jax.Array:
        return jnp.tanh(x) * 3.0 + jnp.sin(x)

    jitted = jax.jit(program)
    x = jnp.arange(7.0)
    start = time.perf_counter()
    with perf.compile_phases() as first:
        jitted(x).block_until_ready()
    wall = time.perf_counter() - start
    assert set(first) == {*perf.COMPILE_PHASES, "any"}
    assert all(first[name] > 0 for name in perf.COMPILE_PHASES)
    assert max(first[name] for name in perf.COMPILE_PHASES) <= first["any"] <= wall
    with perf.compile_phases() as again:  # compiled already: nothing to trace, lower or compile
        jitted(x).block_until_ready()
    assert again == {name: 0.0 for name in first}
