"""The real-workload and per-layer benchmarks end to end on tiny settings, as a user runs them (subprocesses)."""

import json

import pytest
from background import study

pytestmark = pytest.mark.slow
TINY = ["--workloads=mlp,gru", "--configs=2", "--epochs=1", "--examples=200", "--repeats=1", "--loop_configs=1",
        "--peers=deepopt,deepopt_bfloat16,jax_vmap,jax_loop", "--output={dir}/out.json"]
WORKLOADS = study("benchmark_workloads", *TINY)
LAYERS = study("benchmark_layers", "--configs=2", "--repeats=1", "--batch=8")
BAD = [study("benchmark_workloads", "--workloads=resnet"), study("benchmark_layers", "--configs=0")]
BACKGROUND = {"workloads": [WORKLOADS, LAYERS, *BAD]}


def test_every_approach_reports_cold_and_warm_speed_share_of_peak_and_memory(background_runs) -> None:
    finished = background_runs.result(WORKLOADS)
    assert finished.completed.returncode == 0, finished.completed.stderr
    results = json.loads((finished.dir / "out.json").read_text())
    assert results["matmul_peak_flops"] > 0 and results["epochs"] == 1
    for name in ("mlp", "gru"):
        workload = results["workloads"][name]
        assert workload["step_flops"] > 0
        assert set(workload["2"]) == {"deepopt", "deepopt_bfloat16", "jax_vmap", "jax_loop"}
        for entry in workload["2"].values():
            assert entry["warm"] > 0 and entry["cold"] > 0 and entry["peak_rss_mb"] > 0
            assert entry["share_of_peak"] == pytest.approx(entry["warm"] * workload["step_flops"]
                                                           / results["matmul_peak_flops"])
        assert workload["2"]["jax_loop"]["timed_configs"] == 1  # one timed, the other extrapolated
    assert "deepopt" in finished.completed.stdout and "% of peak" in finished.completed.stdout


def test_every_layer_is_measured_against_the_loop(background_runs) -> None:
    finished = background_runs.result(LAYERS)
    assert finished.completed.returncode == 0, finished.completed.stderr
    lines = finished.completed.stdout.splitlines()
    for layer in ("nn.Dense", "nn.Conv", "GRUCell", "LSTMCell", "nn.BatchNorm", "nn.LayerNorm", "nn.Dropout",
                  "nn.MultiHeadDotProductAttention"):
        row = next(line for line in lines if layer in line)
        vmapped, in_chunks, chunk, looped, ratio, chunks_ratio = (float(v) for v in row.split()[-6:])
        assert vmapped > 0 and in_chunks > 0 and looped > 0 and 1 <= chunk <= 2  # --configs=2
        assert ratio == pytest.approx(vmapped / looped, rel=0.02, abs=0.01)
        assert chunks_ratio == pytest.approx(in_chunks / looped, rel=0.02, abs=0.01)


def test_bad_flags_are_one_line_and_exit_2(background_runs) -> None:
    for run, flag in zip(BAD, ("--workloads", "--configs")):
        completed = background_runs.result(run).completed
        assert completed.returncode == 2 and flag in completed.stderr and len(completed.stderr.strip().splitlines()) == 1
