"""The MNIST-1D study end to end on --quick, and --dataset mnist1d in the studies that take a generated data set."""

from __future__ import annotations

import json

import pytest
from background import study

from deepopt import sweep

pytest.importorskip("mnist1d.data")

QUICK = study("mnist1d", "--output_dir={dir}/out", "--quick")
QUICK_PBT = study("mnist1d", "--output_dir={dir}/out", "--quick", "--search=pbt", "--tune=mlp", "--variants=plain")
BAD_FLAGS = [
    (("--variants=plain,rotated",), "--variants must be a comma-separated list"),
    (("--cnn_dropouts=0,1.5",), "--cnn_dropouts must be rates in [0, 1)"),
    (("--tune=gru",), "--tune must list mlp and/or cnn"),
]
BAD_RUNS = [study("mnist1d", *flags) for flags, _ in BAD_FLAGS]
MAIN_JOB = study("sweep", "--output_dir={dir}", "--dataset=mnist1d", "--hidden=16", "--epochs=2", "--num_configs=2",
                 "--num_seeds=1", "--zoom_configs=0", "--optimizers=adam")
BATCH_NORM = study("batch_norm", "--output_dir={dir}", "--dataset=mnist1d", "--hidden_layers=2", "--width=8",
                   "--epochs=2", "--num_lrs=2", "--num_seeds=1", "--min_lr=0.01", "--max_lr=0.1")
BACKGROUND = {"quick": [QUICK], "quick_pbt": [QUICK_PBT], "bad_flags": BAD_RUNS, "main_job": [MAIN_JOB],
              "batch_norm": [BATCH_NORM]}


@pytest.fixture(scope="module")
def quick(background_runs):
    finished = background_runs.result(QUICK)
    assert finished.completed.returncode == 0, finished.completed.stderr
    return finished.dir / "out", json.loads((finished.dir / "out" / "results.json").read_text())


@pytest.fixture(scope="module")
def quick_pbt(background_runs):
    return background_runs.result(QUICK_PBT)


@pytest.fixture(scope="module")
def bad_flags(background_runs):
    return [background_runs.result(run).completed for run in BAD_RUNS]


@pytest.fixture(scope="module")
def main_job(background_runs):
    return background_runs.result(MAIN_JOB)


@pytest.fixture(scope="module")
def batch_norm(background_runs):
    return background_runs.result(BATCH_NORM)


@pytest.mark.slow
def test_the_quick_study_reproduces_every_row_and_tunes_both_models(quick) -> None:
    output_dir, results = quick
    rows = [entry["row"] for entry in results["table"]]
    for variant in ("plain", "shuffled"):
        for model in ("logistic regression", "MLP (deepopt, 40-100-100-10)", "MLP (paper's residual, Flax)",
                      "CNN (paper's, Flax)"):
            assert f"{model}, {variant}" in rows
    assert results["tuned"].keys() == {"mlp", "cnn"}
    for entry in results["table"]:
        assert len(entry["per_seed"]) == 2 and 0 <= entry["deepopt"]["mean"] <= 1  # --quick: 2 seeds
    paper = {entry["row"]: entry["paper"] for entry in results["table"]}
    assert paper["CNN (paper's, Flax), plain"] == 94 and paper["CNN (paper's, Flax), shuffled"] == 56
    cnn = results["tuned"]["cnn"]
    assert "PaperCNN" in cnn["config"]["model"] and cnn["configs_searched"] == 5  # hyperband 1 -> 3 epochs: 3 + 2
    assert cnn["config_steps"] > 0 and len(results["curves"]) == 6  # 4 paper rows (plain) + 2 tuned
    assert any("target 96%" in line for line in results["findings"])
    report = (output_dir / "report.md").read_text()
    assert "| CNN (paper's, Flax), plain | 94% |" in report
    for plot in ("learning_curves.png", "accuracy_bars.png"):
        assert (output_dir / plot).exists()


@pytest.mark.slow
def test_the_mlp_can_be_tuned_with_pbt_and_retrained_by_its_schedule(quick_pbt) -> None:
    completed = quick_pbt.completed
    assert completed.returncode == 0, completed.stderr
    results = json.loads((quick_pbt.dir / "out" / "results.json").read_text())
    tuned = results["tuned"]["mlp"]
    assert tuned["schedule"] and tuned["schedule"][-1]["to_epoch"] == 3
    assert len(results["curves"]["MLP (deepopt, 40-100-100-10) (tuned)"]) == 3  # one point per epoch of the replay


def test_bad_flags_are_one_line_and_exit_2(bad_flags) -> None:
    for (_, message), completed in zip(BAD_FLAGS, bad_flags, strict=True):
        assert completed.returncode == 2 and completed.stderr.strip().count("\n") == 0, completed.stderr
        assert message in completed.stderr


def test_the_main_job_and_batch_norm_take_dataset_mnist1d(main_job, batch_norm) -> None:
    assert main_job.completed.returncode == 0, main_job.completed.stderr
    settings = json.loads((main_job.dir / "results.json").read_text())["settings"]
    assert settings["data"] == "mnist1d" and settings["n_train"] + settings["n_dev"] == 4000
    assert settings["n_test"] == 1000
    rows = sweep.read_rows(main_job.dir / "results.jsonl")
    assert rows and rows[0]["config"]["layer_sizes"] == [40, 16, 10]
    assert "unknown for MNIST-1D" in (main_job.dir / "report.md").read_text()
    assert batch_norm.completed.returncode == 0, batch_norm.completed.stderr
    layer_sizes = json.loads((batch_norm.dir / "results.json").read_text())["settings"]["layer_sizes"]
    assert layer_sizes[0] == 40 and layer_sizes[-1] == 10
