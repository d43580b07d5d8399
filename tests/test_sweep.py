"""The sweep library in one process: search spaces, samplers, validation, rows, resume, memory budget, Results."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from background import study
from sweep_worker import ADAM, assert_same_runs, tiny_data, tiny_sweep, without_time

from deepopt import data, model, sweep, train

TINY = train.Config((2, 4, 1), batch_size=32, epochs=4)


# ------------------------------------------------------------------------------ search spaces and samplers


def test_distributions_respect_bounds_and_scales():
    space = {
        "learning_rate": sweep.log_uniform(1e-4, 1.0),
        "beta1": sweep.one_minus_log_uniform(1e-3, 1e-1),
        "keep_prob": sweep.uniform(0.5, 1.0),
        "optimizer": sweep.choice(["gd", "adam"]),
        "epochs": 7,
    }
    configs = sweep.sample(space, jax.random.key(0), 4000, "random")
    lr = np.array([c["learning_rate"] for c in configs])
    beta = np.array([c["beta1"] for c in configs])
    keep = np.array([c["keep_prob"] for c in configs])
    assert lr.min() >= 1e-4 and lr.max() < 1.0
    assert beta.min() >= 0.9 and beta.max() <= 0.999
    assert keep.min() >= 0.5 and keep.max() < 1.0
    # Log scale: each decade of the learning rate gets a quarter of the draws; 1 - beta spreads over 2 decades.
    decades = np.histogram(np.log10(lr), bins=4, range=(-4, 0))[0] / len(lr)
    assert np.all(np.abs(decades - 0.25) < 0.04)
    assert abs(np.mean(np.log10(1 - beta) < -2) - 0.5) < 0.04
    assert {c["optimizer"] for c in configs} == {"gd", "adam"} and {c["epochs"] for c in configs} == {7}


@pytest.mark.parametrize(
    "make, args, message",
    [
        (sweep.log_uniform, (0.0, 1.0), "log_uniform(lo, hi) needs finite 0.0 < lo < hi"),
        (sweep.uniform, (1.0, 1.0), "uniform(lo, hi) needs finite"),
        (sweep.one_minus_log_uniform, (0.1, 2.0), "<= 1.0"),
        (sweep.choice, ([],), "at least one value"),
        (sweep.grid, ("abc",), "list or tuple"),
    ],
)
def test_bad_distributions_are_refused(make, args, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        make(*args)


@pytest.mark.parametrize("sampler", ["random", "quasi"])
def test_samplers_are_deterministic_given_the_key(sampler):
    space = {"learning_rate": sweep.log_uniform(1e-3, 1.0), "activation": sweep.choice(["relu", "tanh"])}
    first = sweep.sample(space, jax.random.key(1), 16, sampler)
    assert first == sweep.sample(space, jax.random.key(1), 16, sampler)
    assert first != sweep.sample(space, jax.random.key(2), 16, sampler)


def l2_star_discrepancy(points):
    """Warnock's closed form of the L2 star discrepancy of points in [0, 1)^d."""
    n, d = points.shape
    term1 = 3.0**-d
    term2 = 2.0 ** (1 - d) / n * np.sum(np.prod(1 - points**2, axis=1))
    pairwise = np.prod(1 - np.maximum(points[:, None, :], points[None, :, :]), axis=2)
    return math.sqrt(term1 - term2 + np.sum(pairwise) / n**2)


def test_quasi_random_covers_every_bin_and_beats_random():
    points = sweep.halton(jax.random.key(0), 125, 3)
    assert points.min() >= 0 and points.max() < 1
    # Base 2, 3, 5: the first b^K points put exactly one point in each of the b^K bins.
    for dim, (base, power) in enumerate([(2, 6), (3, 4), (5, 3)]):
        n = base**power
        if n <= len(points):
            counts = np.histogram(points[:n, dim], bins=n, range=(0, 1))[0]
            assert np.all(counts == 1), (dim, counts)
    # Lower discrepancy: every one of 8 scramblings beats every one of 8 uniform random draws.
    quasi = [l2_star_discrepancy(sweep.halton(jax.random.key(seed), 64, 4)) for seed in range(8)]
    random = [
        l2_star_discrepancy(np.asarray(jax.random.uniform(jax.random.key(seed), (64, 4)), np.float64))
        for seed in range(8)
    ]
    assert max(quasi) < min(random)


def test_grid_sampler_is_the_cartesian_product():
    space = {"learning_rate": sweep.grid([0.1, 0.2, 0.3]), "optimizer": sweep.choice(["gd", "adam"]), "l2": 0.5}
    configs = sweep.sample(space, jax.random.key(0), None, "grid")
    assert len(configs) == 6 and {(c["learning_rate"], c["optimizer"]) for c in configs} == {
        (lr, opt) for lr in (0.1, 0.2, 0.3) for opt in ("gd", "adam")
    }
    assert all(c["l2"] == 0.5 for c in configs)
    with pytest.raises(ValueError, match="num_configs must be None or 6, got 4"):
        sweep.sample(space, jax.random.key(0), 4, "grid")
    with pytest.raises(ValueError, match="sampler='grid' enumerates grid/choice values, but space\\['keep_prob'\\]"):
        sweep.sample({"keep_prob": sweep.uniform(0.5, 1.0)}, jax.random.key(0), None, "grid")


# ------------------------------------------------------------------------------ validation before compiling


BAD_SWEEPS = [  # (space, extra arguments of run, the error message)
    (
        {"learning_rat": sweep.log_uniform(1e-3, 1.0)},
        {},
        (
            r"unknown field 'learning_rat'; valid names are the HParams fields \['learning_rate'.*"
            r"Config fields \['layer_sizes'"
        ),
    ),
    ({"batch_size": sweep.uniform(8, 64)}, {}, r"space\['batch_size'\] is a static Config field"),
    ({"activation": sweep.choice(["relu", "swish!"])}, {}, r"make an invalid Config: Config.activation"),
    (
        {"keep_prob": sweep.uniform(0.5, 1.5)},
        {},
        r"space: HParams.keep_prob must be finite and in \(0, 1\], got .* \(config index \d+\)$",
    ),
    ({"learning_rate": 0.1}, {"metric": "test_accuracy"}, r"metric must be one of .* got 'test_accuracy'"),
    (
        {"layer_sizes": sweep.choice([(2, 4, 1), (3, 4, 1)])},
        {},
        r"train.X has 2 features but Config.layer_sizes\[0\] is 3",
    ),
    (
        {"learning_rate": 0.1},
        {"sampler": "sobol"},
        r"sampler must be one of \['random', 'quasi', 'grid', 'tpe', 'nsga2'\] or an optuna.samplers.BaseSampler instance, got 'sobol'",
    ),
    ({"learning_rate": 0.1}, {"seeds": 0}, r"seeds must be a positive int, got 0"),
    ({"learning_rate": 0.1}, {"memory_budget_bytes": -5}, r"memory_budget_bytes must be a positive int"),
    ({"learning_rate": 0.1}, {"concurrent_chunks": 0}, r"concurrent_chunks must be a positive int or None .* got 0"),
    ({"learning_rate": 0.1}, {"concurrent_chunks": True}, r"concurrent_chunks must be a positive int or None"),
]


def test_a_bad_value_names_its_config_index():
    """The planner's check and the per-group check both say which config: the grid's second, here."""
    train_set, dev_set = tiny_data()
    space = {"keep_prob": sweep.grid([0.5, 1.5])}
    with pytest.raises(ValueError, match=r"^space: HParams.keep_prob must be finite .* got 1.5 \(config index 1\)$"):
        sweep.run(TINY, space, train_set, dev_set, key=jax.random.key(0), num_configs=None, sampler="grid")
    cosine = dataclasses.replace(TINY, schedule="cosine")
    space = {"learning_rate": sweep.grid([0.3, 0.2, 0.01])}
    with pytest.raises(ValueError, match=r"^space: HParams.min_learning_rate .* > learning_rate=0.01 \(config index 2\)$"):
        sweep.run(cosine, space, train_set, dev_set, key=jax.random.key(0), num_configs=None, sampler="grid",
                  hparams=train.HParams(min_learning_rate=0.1))


@pytest.mark.parametrize("space, kwargs, message", BAD_SWEEPS)
def test_bad_sweeps_fail_before_compiling(space, kwargs, message):
    train_set, dev_set = tiny_data()
    compiled, traced = sweep.compile_count(), train.trace_count()
    arguments = {"key": jax.random.key(0), "num_configs": 12, **kwargs}
    with pytest.raises(ValueError, match=message):
        sweep.run(TINY, space, train_set, dev_set, **arguments)
    assert sweep.compile_count() == compiled and train.trace_count() == traced


# ------------------------------------------------------------------------------ running


@pytest.fixture(scope="module")
def two_groups():
    """gd and adam, 3 configs each way × 2 seeds, with a test set: the module's main sweep."""
    train_set, dev_set = tiny_data()
    test_set = data.make_moons(jax.random.key(12), 40, 0.2)
    space = {
        "optimizer": sweep.choice(["gd", "adam"]),
        "learning_rate": sweep.log_uniform(1e-2, 1.0),
        "beta1": sweep.one_minus_log_uniform(1e-3, 1e-1),
        "keep_prob": sweep.uniform(0.6, 1.0),
    }
    compiled, traced = sweep.compile_count(), train.trace_count()
    lines = []
    results = sweep.run(
        TINY,
        space,
        train_set,
        dev_set,
        key=jax.random.key(4),
        num_configs=6,
        seeds=2,
        test=test_set,
        progress=lambda p: lines.append(str(p)),
    )
    return (
        results,
        sweep.compile_count() - compiled,
        train.trace_count() - traced,
        lines,
        (train_set, dev_set, test_set),
    )


def test_one_compilation_per_static_group(two_groups):
    results, compiled, traced, lines, _ = two_groups
    groups = {row["config"]["optimizer"] for row in results.rows}
    assert groups == {"gd", "adam"}
    assert compiled == 2 and traced == 2 and results.stats["compilations"] == 2
    assert len(results.rows) == 12 and len({row["id"] for row in results.rows}) == 12
    layout = results.stats["layout"]
    assert (
        len(lines) == results.stats["chunks"] == sum(entry["chunks"] for entry in layout)
        and lines[-1].startswith("[12/12 runs]")
        and "runs/s, ETA" in lines[-1]
    )
    # "auto" spreads a small group over the chunks the CPU runs at once (one chunk per core per device).
    streams = sweep.concurrent_chunks(jax.devices())
    for entry in layout:
        assert entry["chunks"] == min(streams, entry["runs"] // 2)


def test_every_row_equals_a_single_fit(two_groups):
    results, _, _, _, (train_set, dev_set, test_set) = two_groups
    for row in results.rows:
        config, hp, key = sweep.config_of(row), sweep.hparams_of(row), sweep.key_of(row)
        single = train.fit(config, hp, key, train_set, dev_set)
        assert row["final_cost"] == pytest.approx(float(single.final_cost), rel=1e-5)
        assert row["train_accuracy"] == pytest.approx(float(single.train_accuracy), abs=1e-6)
        assert row["dev_accuracy"] == pytest.approx(float(single.dev_accuracy), abs=1e-6)
        assert row["diverged"] is False and row["diverged_epoch"] is None
        test_accuracy = model.accuracy(single.params, test_set.X, test_set.y, activation=config.activation)
        assert row["test_accuracy"] == pytest.approx(float(test_accuracy), abs=1e-6)
    # Seed s of every config trains with the s-th of the sweep's seed keys.
    keys = np.asarray(jax.random.key_data(sweep.seed_keys(jax.random.key(4), 2)))
    assert [row["key"] for row in results.rows[:2]] == keys.tolist()


def test_ids_are_stable_and_depend_on_every_input(two_groups):
    results, *_ = two_groups
    space = results.space
    again = sweep.plan(TINY, space, key=jax.random.key(4), num_configs=6, seeds=2)
    assert [r.id for r in again] == [
        r.id for r in sweep.plan(TINY, space, key=jax.random.key(4), num_configs=6, seeds=2)
    ]
    other_key = sweep.plan(TINY, space, key=jax.random.key(5), num_configs=6, seeds=2)
    longer = sweep.plan(dataclasses.replace(TINY, epochs=5), space, key=jax.random.key(4), num_configs=6, seeds=2)
    ids = {r.id for r in again}
    assert not ids & {r.id for r in other_key} and not ids & {r.id for r in longer}
    assert all(row["config_id"] == plan.config_id for row, plan in zip(results.rows, again))


def test_results_leaderboard_spread_zoom_and_csv(two_groups, tmp_path):
    results, *_ = two_groups
    entries = results.by_config()
    assert len(entries) == 6 and all(e["seeds"] == 2 for e in entries)
    dev = [row["dev_accuracy"] for row in results.rows if row["config_id"] == entries[0]["config_id"]]
    assert entries[0]["dev_accuracy"]["mean"] == pytest.approx(np.mean(dev))
    assert entries[0]["dev_accuracy"]["std"] == pytest.approx(np.std(dev, ddof=1))  # the sample formula
    top = results.best(3)
    means = [e["dev_accuracy"]["mean"] for e in top]
    assert len(top) == 3 and means == sorted(means, reverse=True)
    assert means[0] == max(e["dev_accuracy"]["mean"] for e in entries)

    zoomed = results.zoom(2)
    winners = {e["choices"]["optimizer"] for e in results.best(2)}
    assert ("beta1" in zoomed) == ("adam" in winners)  # Adam's β1 says nothing once only gd is left
    for name in ("learning_rate", "keep_prob") + (("beta1",) if "adam" in winners else ()):
        old, new = results.space[name], zoomed[name]
        assert type(new) is type(old) and old.lo <= new.lo < new.hi <= old.hi and (new.hi - new.lo) < (old.hi - old.lo)
        for entry in results.best(2):
            assert new.value_bounds[0] <= entry["choices"][name] <= new.value_bounds[1]
    assert set(zoomed["optimizer"].values) == {e["choices"]["optimizer"] for e in results.best(2)}

    path = tmp_path / "results.csv"
    results.to_csv(path)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 13 and {"id", "seed", "optimizer", "learning_rate", "layer_sizes", "dev_accuracy"} <= set(
        header
    )
    assert lines[1].split(",")[header.index("layer_sizes")] == "2-4-1"


def test_bias_variance_of_the_winner(two_groups):
    results, *_ = two_groups
    winner = results.best(1)[0]
    diagnosis = results.bias_variance(0.05, tolerance=0.02)
    assert diagnosis.train_error == pytest.approx(1 - winner["train_accuracy"]["mean"])
    assert diagnosis.dev_error == pytest.approx(1 - winner["dev_accuracy"]["mean"])
    assert diagnosis.avoidable_bias == pytest.approx(diagnosis.train_error - 0.05)
    assert diagnosis.verdict and diagnosis.advice


def test_a_diverging_run_is_recorded_and_changes_no_other_row(tmp_path):
    train_set, dev_set = tiny_data()
    config = ADAM  # the program of tiny_sweep(chunk_size=2), already compiled
    calm = {"learning_rate": sweep.grid([0.1, 0.5])}
    wild = {"learning_rate": sweep.grid([0.1, 0.5, 1e30])}
    kwargs = {"key": jax.random.key(0), "num_configs": None, "sampler": "grid", "chunk_size": 2}
    path = tmp_path / "rows.jsonl"
    with_divergence = sweep.run(config, wild, train_set, dev_set, results_path=path, **kwargs)
    reference = sweep.run(config, calm, train_set, dev_set, **kwargs)
    assert without_time(with_divergence.rows[:2]) == without_time(reference.rows)
    blown = with_divergence.rows[2]
    assert blown["diverged"] is True and isinstance(blown["diverged_epoch"], int) and blown["diverged_epoch"] >= 0
    assert all(not row["diverged"] for row in reference.rows)
    for line in path.read_text().splitlines():  # strict JSON: no NaN
        json.loads(line, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert with_divergence.best(3)[-1]["config_id"] == blown["config_id"]


def test_resume_skips_finished_runs_and_repairs_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    full = tiny_sweep(results_path=path, chunk_size=2)
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 10
    # A sweep killed after 3 chunks, in the middle of writing the 4th line of the next chunk.
    path.write_text("".join(lines[:6]) + lines[6][: len(lines[6]) // 2])
    assert len(sweep.read_rows(path)) == 6
    compiled = sweep.compile_count()
    resumed = tiny_sweep(results_path=path, chunk_size=2)
    assert resumed.stats["runs_resumed"] == 6 and resumed.stats["runs_computed"] == 4
    assert sweep.compile_count() == compiled  # same chunk shape: the compiled program is reused
    assert without_time(resumed.rows) == without_time(full.rows)
    kept = path.read_text().splitlines(keepends=True)
    assert len(kept) == 10 and all(line.endswith("\n") for line in kept)
    assert sorted(json.loads(line)["id"] for line in kept) == sorted(row["id"] for row in full.rows)
    again = tiny_sweep(results_path=path, chunk_size=2)
    assert again.stats["runs_computed"] == 0 and again.stats["chunks"] == 0
    fresh = tiny_sweep(results_path=path, chunk_size=2, resume=False)
    assert fresh.stats["runs_computed"] == 10 and len(path.read_text().splitlines()) == 10


def test_concurrent_chunks_record_the_same_rows_in_plan_order(tmp_path):
    one_at_a_time = tiny_sweep(results_path=tmp_path / "serial.jsonl", chunk_size=2, concurrent_chunks=1)
    compiled = sweep.compile_count()
    at_once = tiny_sweep(results_path=tmp_path / "three.jsonl", chunk_size=2, concurrent_chunks=3)
    assert sweep.compile_count() == compiled  # the same program, dispatched from three threads
    assert [g["concurrent_chunks"] for g in one_at_a_time.stats["layout"]] == [1]
    assert [g["concurrent_chunks"] for g in at_once.stats["layout"]] == [3]
    assert at_once.stats["chunks"] == 5 and without_time(at_once.rows) == without_time(one_at_a_time.rows)  # bit for bit
    file_ids = lambda name: [json.loads(line)["id"] for line in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    assert file_ids("three.jsonl") == file_ids("serial.jsonl") == [row["id"] for row in one_at_a_time.rows]


def test_an_error_between_concurrent_chunks_keeps_the_rows_recorded_before_it(tmp_path):
    path = tmp_path / "results.jsonl"
    reference = tiny_sweep(chunk_size=2, concurrent_chunks=1)
    seen = []

    def fail_at_the_second_chunk(progress: sweep.Progress) -> None:
        seen.append(progress.chunk)
        if progress.chunk == 2:
            raise RuntimeError("stopped by the user")

    with pytest.raises(RuntimeError, match="stopped by the user"):
        tiny_sweep(results_path=path, chunk_size=2, concurrent_chunks=2, progress=fail_at_the_second_chunk)
    assert seen == [1, 2] and len(sweep.read_rows(path)) == 4  # the two chunks recorded, in order, nothing torn
    resumed = tiny_sweep(results_path=path, chunk_size=2, concurrent_chunks=2)
    assert resumed.stats["runs_resumed"] == 4 and resumed.stats["runs_computed"] == 6
    assert without_time(resumed.rows) == without_time(reference.rows)


def test_a_damaged_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="results.jsonl:2 is not a JSON row"):
        sweep.read_rows(path)


def test_a_smaller_memory_budget_gives_more_chunks_and_the_same_rows():
    whole = tiny_sweep(chunk_size=None)  # the whole group in one chunk
    (layout,) = whole.stats["layout"]
    assert layout["chunks"] == 1 and layout["chunk"] == 10 and layout["bytes_per_device"] > 0
    budget = layout["bytes_per_device"] * 3 // 4
    split = tiny_sweep(chunk_size=None, memory_budget_bytes=budget)
    (small,) = split.stats["layout"]
    assert small["chunks"] > 1 and small["bytes_per_device"] <= budget
    assert_same_runs(split.rows, whole.rows)
    compiled = sweep.compile_count()
    with pytest.raises(ValueError, match="memory_budget_bytes=100 is below the data alone"):
        tiny_sweep(chunk_size=None, memory_budget_bytes=100)
    assert sweep.compile_count() == compiled


# ------------------------------------------------------------------------------ the main job, as a user runs it


# Both rounds (12 and 6 runs per optimizer at most) use chunks of 4: one compilation per optimizer.
SMALL = (
    "--num_configs=6",
    "--num_seeds=2",
    "--zoom_configs=3",
    "--zoom_top_k=2",
    "--epochs=3",
    "--hidden=3",
    "--optimizers=momentum,adam",
    "--n_train=60",
    "--n_dev=40",
    "--n_test=40",
    "--chunk_size=4",
)
# The main job, then the same command again (refused: results exist), then with --resume, all on one output
# directory, one after the other, in the background (background.py) beside the in-process tests above. What
# the main job wrote is copied aside before the second command starts (REFUSED's ``before``).
FIRST_OUTPUTS = ("results.jsonl", "results.json", "report.md", "results.csv", "dev_accuracy_vs_learning_rate.png",
                 "l2_learning_rate_heatmap.png", "hyperparameter_axes.png")
MAIN_JOB = study("sweep", "--output_dir={dir}", *SMALL)
REFUSED = study("sweep", "--output_dir={dir}", *SMALL, after=MAIN_JOB, snapshot=FIRST_OUTPUTS)
RESUMED = study("sweep", "--output_dir={dir}", "--resume", *SMALL, after=REFUSED)
BAD_FLAGS = (
    (("--l2_range=1,0.1",), "--l2_range must be two numbers lo,hi with 0 < lo < hi"),
    (("--resume",), "--resume needs --output_dir"),
    (("--num_processes=2",), "--coordinator_address, --num_processes and --process_id go together"),
    (("--sampler=tpe", "--search=pbt"), "--sampler=tpe or nsga2 learns between its asks"),
)
BAD_RUNS = [study("sweep", *flags) for flags, _ in BAD_FLAGS]
KNOBS = study("sweep", "--output_dir={dir}", "--l2=0", "--keep_prob=1", "--optimizers=rmsprop,adam",
              "--schedule=cosine", "--early_stopping=3", "--batchnorm", *SMALL[:2], "--zoom_configs=0", *SMALL[4:6],
              *SMALL[7:])
TPE_JOB = study("sweep", "--output_dir={dir}/out", "--sampler=tpe", "--tensorboard_dir={dir}/board", *SMALL)
BACKGROUND = {"main_job": [MAIN_JOB, REFUSED, RESUMED], "bad_flag_runs": BAD_RUNS, "knobs": [KNOBS],
              "tpe_job": [TPE_JOB]}


@pytest.fixture
def tpe_job(background_runs):
    return background_runs.result(TPE_JOB)


def test_main_job_with_tpe_writes_tensorboard_runs_and_importances(tpe_job):
    assert tpe_job.completed.returncode == 0, tpe_job.completed.stderr
    out = tpe_job.dir / "out"
    results = json.loads((out / "results.json").read_text())
    assert [r["sampler"] for r in results["rounds"]] == ["tpe", "tpe"]
    assert all(r["rounds"] == -(-r["asked"] // r["configs_per_round"]) for r in results["rounds"])
    rows = sweep.read_rows(out / "results.jsonl")
    configs = {row["config_id"] for row in rows}
    runs = [p for p in (tpe_job.dir / "board").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == len(configs)  # one TensorBoard run per config of both rounds
    assert {p.name.rsplit("-", 1)[1] for p in runs} == {c[:8] for c in configs}
    ranked = [line.split(":")[0] for line in results["importance"]]  # every searched field, most important first
    assert sorted(ranked) == sorted(["optimizer", "learning_rate", "beta", "beta1", "l2", "keep_prob"])
    report = (out / "report.md").read_text()
    assert "## What explains dev accuracy" in report and "tensorboard --logdir" in report


@pytest.fixture
def knobs(background_runs):
    return background_runs.result(KNOBS)


def test_main_job_takes_fixed_values_a_schedule_early_stopping_and_batch_norm(knobs):
    assert knobs.completed.returncode == 0, knobs.completed.stderr
    rows = sweep.read_rows(knobs.dir / "results.jsonl")
    assert rows and all(r["hparams"]["l2"] == 0 and r["hparams"]["keep_prob"] == 1 for r in rows)
    assert all(r["config"]["schedule"] == "cosine" and r["config"]["early_stopping"] == 3 and r["config"]["batchnorm"]
               for r in rows)
    results = json.loads((knobs.dir / "results.json").read_text())
    space = " ".join(results["space"])
    assert "`beta1`" in space and "`beta`" not in space  # rmsprop and adam: Adam's β1 only
    assert "`l2` fixed at 0" in space and "`keep_prob` fixed at 1" in space
    assert 0 <= results["retrained_winner"]["mean"] <= 1
    assert not (knobs.dir / "l2_learning_rate_heatmap.png").exists()  # no λ axis to plot


@pytest.fixture
def main_job(background_runs):
    return tuple(background_runs.result(run) for run in (MAIN_JOB, REFUSED, RESUMED))


@pytest.fixture
def bad_flag_runs(background_runs):
    return [background_runs.result(run).completed for run in BAD_RUNS]


@pytest.mark.slow
def test_main_job_writes_rows_report_and_plots_then_resumes(main_job):
    first, refused, resumed = main_job
    tmp_path, completed = refused.before, first.completed  # the main job's outputs, before the next command
    assert completed.returncode == 0, completed.stderr
    rows = sweep.read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 18 and len({row["id"] for row in rows}) == 18
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["runs"] for r in results["rounds"]] == [12, 6]
    assert results["diagnosis"]["verdict"] in results["verdict"]
    report = (tmp_path / "report.md").read_text()
    assert "## Leaderboard" in report and "## Bias and variance of the winner" in report
    assert "## Search-space boundaries" in report and isinstance(results["boundary_warnings"], list)
    retrained = results["retrained_winner"]  # the honest protocol: the winner again on train + dev, tested once
    assert retrained["seeds"] == 2 and len(retrained["test_accuracy"]) == 2 and 0 <= retrained["mean"] <= 1
    assert retrained["text"] in report and "train + dev (100 examples)" in retrained["text"]
    for line in results["boundary_warnings"]:  # each one in the report, naming a searched field and an end to move
        assert line in report and line.split(":")[0] in ("learning_rate", "beta", "beta1", "l2", "keep_prob")
    for name in ("results.csv", "dev_accuracy_vs_learning_rate.png", "l2_learning_rate_heatmap.png",
                 "hyperparameter_axes.png"):
        assert (tmp_path / name).exists()
    assert "[12/12 runs]" in completed.stdout and "| 1 |" in completed.stdout

    refused = refused.completed
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    resumed = resumed.completed
    assert resumed.returncode == 0, resumed.stderr
    assert "18 runs (0 trained now, 18 resumed" in resumed.stdout
    assert len(sweep.read_rows(first.dir / "results.jsonl")) == 18


def test_bad_flags_are_one_line_and_exit_2(bad_flag_runs):
    for (_, message), completed in zip(BAD_FLAGS, bad_flag_runs, strict=True):
        assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
        assert message in completed.stderr
