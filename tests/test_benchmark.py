"""The benchmark end to end on a tiny job, as a user runs it (a subprocess: it defines its own absl flags)."""

import json

import pytest
from background import Finished, study

from deepopt.sweep import engine as sweep_lib

pytestmark = pytest.mark.slow  # every test reads one benchmark run (a child process, the loops, the matmul peak)
TINY = [
    "--num_configs=4", "--num_seeds=2", "--epochs=3", "--loop_runs=3", "--recompile_runs=3",
    "--compute_hidden=16", "--compute_configs=2", "--compute_epochs=2", "--matmul_size=64", "--host_devices=2",
    "--search_configs=4",
]
# Started in the background (background.py), beside the in-process tests; the second invocation on the same
# output directory starts once the first has finished, and results.json is copied just before it starts.
# Every program goes into the first-call children's persistent cache, however fast this machine compiles it
# (the scripts' threshold of 0.25 s would leave the tiny chunk program out on a fast one).
CACHE_ALL = (("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),)
TINY_RUN = study("benchmark", "--output_dir={dir}/out", *TINY, env=CACHE_ALL)
AGAIN = study("benchmark", "--output_dir={dir}/out", *TINY, after=TINY_RUN, snapshot=("out/results.json",))
BAD_FLAGS = [
    (["--repeats=2"], "--repeats"),
    (["--learning_rate_range=1,0.1"], "--learning_rate_range must be two numbers"),
    (["--compute_hidden=0"], "--compute_hidden must be a comma-separated list"),
]
BAD_RUNS = [study("benchmark", *flags) for flags, _ in BAD_FLAGS]
BACKGROUND = {"tiny": [TINY_RUN], "second_invocations": [*BAD_RUNS, AGAIN]}


@pytest.fixture(scope="module")
def tiny(background_runs):
    finished = background_runs.result(TINY_RUN)
    completed, output_dir = finished.completed, finished.dir / "out"
    assert completed.returncode == 0, completed.stderr
    return output_dir, json.loads((output_dir / "results.json").read_text()), completed


@pytest.fixture(scope="module")
def second_invocations(background_runs, tiny) -> tuple[list, Finished]:
    return [background_runs.result(run).completed for run in BAD_RUNS], background_runs.result(AGAIN)


def test_measures_every_approach_on_the_same_job(tiny):
    _, results, _ = tiny
    job, measured = results["job"], results["measured"]
    assert job["runs"] == 8 and job["steps_per_run"] == 3 * 5  # 300 examples in batches of 64
    assert results["machine"]["devices"] == 2 and measured["sweep"]["devices"] == 2
    assert measured["sweep"]["runs_measured"] == 8 and measured["jitted_loop"]["runs_measured"] == 3
    assert measured["recompiling_loop"]["runs_measured"] == 3
    for name in ("sweep", "jitted_loop"):
        entry = measured[name]
        assert len(entry["repeat_seconds"]) == 3 and entry["seconds"] == sorted(entry["repeat_seconds"])[1]
        assert entry["compile_seconds"] > 0
    sweep, loop = measured["sweep"], measured["jitted_loop"]
    assert sweep["config_steps_per_second"] == pytest.approx(8 * 15 / sweep["seconds"])
    assert loop["config_steps_per_second"] == pytest.approx(3 * 15 / loop["seconds"])
    one_device, peer = measured["sweep_one_device"], measured["jax_user"]
    assert one_device["devices"] == 1 and one_device["process_devices"] == 1  # the library default, in its own process
    # "auto" spreads the 8 runs (4 configs x 2 seeds) over the CPU's cores, a chunk each (at most 4 chunks);
    # with several at once, the one-chunk-at-a-time measurement runs beside it.
    cores = sweep_lib.cpu_cores()
    chunks = -(-4 // max(sweep_lib.spread_over_streams(1 << 20, 8, 1, cores) // 2, 1))
    assert one_device["concurrent_chunks"] == min(cores, chunks)
    assert ("sweep_one_device_serial" in measured) == (one_device["concurrent_chunks"] > 1)
    # The first call of a new process: compiling into an empty persistent cache, then loading from it.
    empty, filled = measured["first_calls"]["empty_cache"], measured["first_calls"]["filled_cache"]
    # The second process loads what the first compiled (a structural check: timings are too noisy to compare).
    assert empty["persistent_cache_hits"] == 0 and filled["persistent_cache_hits"] >= 1
    assert filled["first_call_seconds"] > 0 and filled["compile_seconds"] >= 0
    # Where each first call went: JAX's compile events, phases merged, the rest "other".
    for entry in (empty, filled):
        phases = entry["phase_seconds"]
        assert set(phases) == {"tracing", "lowering", "compiling", "other"} and min(phases.values()) >= 0
        assert phases["tracing"] > 0 and phases["lowering"] > 0 and phases["compiling"] > 0  # loading, when filled
        assert phases["tracing"] + phases["lowering"] + phases["compiling"] + phases["other"] <= (
            entry["first_call_seconds"] * 1.01)
    for entry in (one_device, peer):
        assert entry["runs"] == 8 and entry["config_steps_per_second"] == pytest.approx(8 * 15 / entry["seconds"])
        assert entry["cold_config_steps_per_second"] == pytest.approx(8 * 15 / entry["first_call_seconds"])
        assert entry["first_call_seconds"] > entry["seconds"]  # cold includes the compilation
    # The JAX user's program trains the same job: its dev accuracies are those of real runs.
    assert len(peer["dev_accuracies"]) == 8 and all(0.3 < a <= 1 for a in peer["dev_accuracies"])
    if "torch_func" in measured:  # measured where torch is installed
        assert measured["torch_func"]["runs"] == 8
    ratios = results["ratios"]
    assert ratios["one_device_vs_jax_user_warm"] == pytest.approx(
        one_device["config_steps_per_second"] / peer["config_steps_per_second"])
    assert ratios["one_device_vs_jax_user_cold"] == pytest.approx(
        one_device["cold_config_steps_per_second"] / peer["cold_config_steps_per_second"])
    # The idiomatic loop compiles its step for every run (full and last, smaller, mini-batch).
    assert measured["recompiling_loop"]["compilations_per_run"] == 2
    assert not sweep["dropout_compiled"]


def test_loop_and_sweep_agree_run_by_run(tiny):
    _, results, _ = tiny
    agreement = results["agreement"]
    assert agreement["runs"] == 3 and agreement["dev_accuracy_equal"] == 3
    assert agreement["max_final_cost_difference"] < 1e-4


def test_ratios_flops_and_targets_are_computed_from_the_measurements(tiny):
    _, results, _ = tiny
    ratios, measured, end_to_end = results["ratios"], results["measured"], results["end_to_end"]
    assert ratios["sweep_vs_jitted_loop"] == pytest.approx(
        measured["sweep"]["config_steps_per_second"] / measured["jitted_loop"]["config_steps_per_second"]
    )
    assert end_to_end["recompiling_loop"] == pytest.approx(8 * measured["recompiling_loop"]["seconds_per_run"])
    assert ratios["sweep_vs_recompiling_loop"] == pytest.approx(end_to_end["recompiling_loop"] / end_to_end["sweep"])
    peak = results["matmul_peak"]["peak"]
    compute = results["flops"]["compute_bound"]
    assert compute["layer_sizes"] == [2, 16, 1] and compute["runs"] == 4
    assert compute["gflops_per_second"] * 1e9 / peak == pytest.approx(compute["peak_fraction"])
    assert [t["met"] for t in results["targets"]] == [t["measured"] >= t["wanted"] for t in results["targets"]]
    memory = measured["sweep"]["memory"]
    assert memory["peak_rss_mb"] > 0 and memory["runs_in_flight"] == 8 and memory["xla_kb_per_run"] > 0


def test_time_to_accuracy_of_the_adaptive_searches(tiny):
    _, results, _ = tiny
    found = results["time_to_accuracy"]
    searches = found["searches"]
    assert list(searches) == ["random", "hyperband", "pbt"] and found["configs"] == 4
    assert found["target_dev_accuracy"] == searches["random"]["best_dev_accuracy"]
    for entry in searches.values():
        times = [t for t, _ in entry["points"]]
        best = [b for _, b in entry["points"]]
        assert times == sorted(times) and best == sorted(best)  # best so far only grows
        reached = entry["seconds_to_random_best"]
        assert reached is None or (reached in times and reached <= entry["seconds"])
        assert (reached is not None) == (entry["best_dev_accuracy"] >= found["target_dev_accuracy"])
    assert searches["random"]["seconds_to_random_best"] is not None


def test_report_has_the_tables(tiny):
    output_dir, _, completed = tiny
    report = (output_dir / "report.md").read_text()
    for heading in ("## Throughput", "## Cold and warm", "## Time to accuracy", "## Against the matmul peak",
                    "## Memory", "## Targets"):
        assert heading in report
    assert "recompiles every run" in report and "(extrapolated)" in report
    assert "Where the one-device first call of a new process goes" in report and "XLA's compile, or the" in report
    assert "## Targets" in completed.stdout


def test_bad_flags_and_existing_results_are_one_line_errors(tiny, second_invocations):
    output_dir, _, _ = tiny
    bad_runs, again = second_invocations
    for (_, message), completed in zip(BAD_FLAGS, bad_runs, strict=True):
        assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
        assert message in completed.stderr
    before = (again.before / "out" / "results.json").read_text()  # copied just before the second run started
    completed = again.completed
    assert completed.returncode == 2 and "already holds results.json" in completed.stderr
    assert (output_dir / "results.json").read_text() == before
