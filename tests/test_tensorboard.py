"""A sweep's results as TensorBoard runs (``deepopt.sweep.tensorboard_log``): read back by TensorBoard's own readers."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from deepopt import sweep, train
from deepopt.sweep import tensorboard_log

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import api_pb2, metadata  # noqa: E402

CURVES = ("cost", "dev_accuracy", "dev_cost")
EPOCHS = 5


@pytest.fixture(scope="module")
def results(moons, moons_dev) -> sweep.Results:
    """4 configs × 2 seeds, two optimizers (two compilations), with learning curves."""
    config = train.Config(layer_sizes=(2, 8, 1), epochs=EPOCHS, batch_size=32, optimizer="adam")
    space = {
        "learning_rate": sweep.log_uniform(1e-3, 1e-1),
        "beta1": sweep.one_minus_log_uniform(1e-2, 1e-1),  # beta1 in [0.9, 0.99]
        "optimizer": sweep.choice(["adam", "momentum"]),
        "layer_sizes": sweep.choice([(2, 8, 1)]),  # a list value, shown as text
        "keep_prob": 1.0,  # a fixed value
    }
    return sweep.run(config, space, moons, moons_dev, key=jax.random.key(0), num_configs=4, seeds=2, curves=True)


@pytest.fixture(scope="module")
def logdir(results, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tensorboard")
    tensorboard_log.write_runs(directory, results)
    return directory


def f32(value: float) -> float:
    """What TensorBoard stores of a scalar: float32."""
    return float(np.float32(value))


def loaded(path: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(path))
    accumulator.Reload()
    return accumulator


def event_files(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if "tfevents" in name)


def expected_hparams(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "learning_rate": entry["choices"]["learning_rate"],
        "beta1": entry["choices"]["beta1"],
        "optimizer": entry["choices"]["optimizer"],
        "layer_sizes": "2-8-1",
        "keep_prob": 1.0,
        "seeds": 2.0,
    }


def session_hparams(accumulator: EventAccumulator) -> tuple[dict[str, Any], Any]:
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return values, end


def test_every_config_is_a_run_with_its_hparams_seed_means_and_curves(results, logdir):
    entries = results.by_config()
    assert len(entries) == 4
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == sorted(map(tensorboard_log.run_name, entries))
    for entry in entries:
        run = logdir / tensorboard_log.run_name(entry)
        assert len(event_files(run)) == 1
        accumulator = loaded(run)
        hparams, end = session_hparams(accumulator)
        assert hparams == expected_hparams(entry)
        assert end.status == api_pb2.STATUS_SUCCESS
        tags = set(accumulator.Tags()["scalars"])
        finals = [name for name in results.metric_names() if entry[name]["mean"] is not None]
        assert "diverged_epoch" not in finals  # null for every seed: not written
        assert tags == {f"final/{n}" for n in finals} | {"final/diverged_seeds"} | {f"curves/{n}" for n in CURVES}
        for name in finals:
            (point,) = accumulator.Scalars(f"final/{name}")
            assert (point.step, point.value) == (EPOCHS, f32(entry[name]["mean"])), name
        assert accumulator.Scalars("final/diverged_seeds")[0].value == entry["diverged"]
        curves = results.curves_of(entry["config_id"])
        for name in CURVES:
            points = accumulator.Scalars(f"curves/{name}")
            assert [p.step for p in points] == list(range(1, EPOCHS + 1))
            assert [p.value for p in points] == [f32(v) for v in np.mean(curves[name].astype(np.float64), axis=0)]


def test_the_experiment_names_the_columns_and_their_domains(results, logdir):
    (name,) = event_files(logdir)
    assert name.endswith(tensorboard_log.EXPERIMENT_SUFFIX)
    content = loaded(logdir).PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    infos = {info.name: info for info in experiment.hparam_infos}
    assert list(infos) == ["learning_rate", "beta1", "optimizer", "layer_sizes", "keep_prob", "seeds"]
    interval = {n: (i.domain_interval.min_value, i.domain_interval.max_value) for n, i in infos.items()
                if i.HasField("domain_interval")}
    assert interval["learning_rate"] == (1e-3, 1e-1)
    assert interval["beta1"] == pytest.approx((0.9, 0.99), abs=1e-15)  # the field's own values, not 1 - beta
    assert interval["seeds"] == (2.0, 2.0)
    assert list(infos["optimizer"].domain_discrete) == ["adam", "momentum"]
    assert list(infos["layer_sizes"].domain_discrete) == ["2-8-1"]
    assert list(infos["keep_prob"].domain_discrete) == [1.0]
    assert infos["optimizer"].type == api_pb2.DATA_TYPE_STRING and infos["keep_prob"].type == api_pb2.DATA_TYPE_FLOAT64
    tags = [metric.name.tag for metric in experiment.metric_infos]
    assert tags[0] == f"final/{results.metric}"  # the ranking metric first
    assert set(tags) == {f"final/{n}" for n in results.metric_names() if n != "diverged_epoch"} | {"final/diverged_seeds"}


def test_writing_again_adds_nothing_and_config_ids_choose(results, tmp_path):
    entries = results.by_config()
    ids = [entry["config_id"] for entry in entries]
    first = tensorboard_log.write_runs(tmp_path, results, config_ids=ids[1:3])
    assert first == [os.path.join(tmp_path, tensorboard_log.run_name(e)) for e in entries[1:3]]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(os.path.basename(p) for p in first)
    (experiment_file,) = event_files(tmp_path)
    rest = tensorboard_log.write_runs(str(tmp_path), results)  # "a resumed sweep": every config again
    assert rest == [os.path.join(str(tmp_path), tensorboard_log.run_name(entries[i])) for i in (0, 3)]
    assert tensorboard_log.write_runs(tmp_path, results) == []
    assert tensorboard_log.write_runs(tmp_path, results, config_ids=ids[:1]) == []
    assert event_files(tmp_path) == [experiment_file]  # the same columns: the file is left as it was
    assert sorted(os.listdir(tmp_path)) == sorted([experiment_file] + [tensorboard_log.run_name(e) for e in entries])
    assert all(len(event_files(tmp_path / tensorboard_log.run_name(e))) == 1 for e in entries)


def test_the_experiment_file_is_replaced_by_one_covering_both_rounds(results, tmp_path):
    wide = dataclasses.replace(results, space=results.space | {"learning_rate": sweep.log_uniform(1e-4, 1e-1)})
    assert tensorboard_log.write_runs(tmp_path, wide, config_ids=[]) == []
    zoomed = dataclasses.replace(
        results, space=results.space | {"learning_rate": sweep.log_uniform(1e-2, 1.0), "optimizer": sweep.choice(["gd"])}
    )
    tensorboard_log.write_runs(tmp_path, zoomed)
    (name,) = event_files(tmp_path)
    content = loaded(tmp_path).PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    infos = {i.name: i for i in metadata.parse_experiment_plugin_data(content).hparam_infos}
    assert (infos["learning_rate"].domain_interval.min_value, infos["learning_rate"].domain_interval.max_value) == (
        1e-4, 1.0)
    assert list(infos["optimizer"].domain_discrete) == ["gd", "adam", "momentum"]


def test_missing_metrics_and_non_finite_curve_points_are_left_out(results, tmp_path):
    entry = results.by_config()[0]
    rows = copy.deepcopy(results.rows)
    curves = copy.deepcopy(results.curves)
    for row in rows:
        if row["config_id"] == entry["config_id"]:
            row["dev_accuracy"] = None  # non-finite for every seed
    some_run = next(r["id"] for r in rows if r["config_id"] == entry["config_id"])
    curves[some_run]["cost"][2] = np.nan  # one seed's third epoch
    edited = dataclasses.replace(results, rows=rows, curves=curves)
    (path,) = tensorboard_log.write_runs(tmp_path, edited, config_ids=[entry["config_id"]])
    accumulator = loaded(Path(path))
    assert "final/dev_accuracy" not in accumulator.Tags()["scalars"]
    assert [p.step for p in accumulator.Scalars("curves/cost")] == [1, 2, 4, 5]
    no_curves = dataclasses.replace(results, curves={})
    (path,) = tensorboard_log.write_runs(tmp_path / "plain", no_curves, config_ids=[entry["config_id"]])
    assert not [tag for tag in loaded(Path(path)).Tags()["scalars"] if tag.startswith("curves/")]


def test_wrong_arguments_are_refused_by_name(results, tmp_path):
    with pytest.raises(ValueError, match="no-such-config"):
        tensorboard_log.write_runs(tmp_path, results, config_ids=["no-such-config", results.rows[0]["config_id"]])
    with pytest.raises(TypeError, match="config_ids"):
        tensorboard_log.write_runs(tmp_path, results, config_ids=results.rows[0]["config_id"])
    with pytest.raises(TypeError, match="directory"):
        tensorboard_log.write_runs(3, results)
    with pytest.raises(TypeError, match="results"):
        tensorboard_log.write_runs(tmp_path, results.rows)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="directory"):
        tensorboard_log.write_runs(tmp_path / "a_file", results)
    with pytest.raises(ValueError, match="config_index"):
        tensorboard_log.run_name({"config_id": "abc"})
    assert not list(tmp_path.glob("*/"))  # nothing written by a refused call
    assert tensorboard_log.run_name({"config_index": 7, "config_id": "0123456789abcdef"}) == "config-0007-01234567"


def test_without_tensorboard_the_error_says_how_to_install_it(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tensorboard\]'"):
        tensorboard_log.write_runs(tmp_path, results)


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """A JSON POST as TensorBoard's frontend sends it (the Content-Type matters: without it the body is read as a form)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["auto", "false"])  # the Rust data server (when installed), the Python loader
def test_a_tensorboard_server_shows_every_config(results, logdir, tmp_path, load_fast):
    entries = {tensorboard_log.run_name(e): e for e in results.by_config()}
    log = tmp_path / "tensorboard.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0",
             f"--load_fast={load_fast}"],
            stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        url, groups = None, []
        while len(groups) < len(entries):
            assert server.poll() is None, f"tensorboard exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"tensorboard did not show the runs in 60 s: {log.read_text()}"
            time.sleep(0.1)
            if url is None:
                found = re.search(r"http://127\.0\.0\.1:\d+/", log.read_text())
                url = found and found.group(0)
                continue
            request = {"allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0, "sliceSize": 100}
            groups = post(url + "data/plugin/hparams/session_groups", request)["sessionGroups"]
        with urllib.request.urlopen(url + "data/runs", timeout=10) as response:
            assert set(entries) <= set(json.load(response))
        experiment = post(url + "data/plugin/hparams/experiment", {"experimentName": ""})
        assert experiment["metricInfos"][0]["name"]["tag"] == f"final/{results.metric}"
        assert {info["name"] for info in experiment["hparamInfos"]} == set(expected_hparams(next(iter(entries.values()))))
        assert sorted(group["name"] for group in groups) == sorted(entries)
        for group in groups:
            entry = entries[group["name"]]
            assert group["hparams"] == expected_hparams(entry)
            values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            assert values[f"final/{results.metric}"] == f32(entry[results.metric]["mean"])
            assert values["final/final_cost"] == f32(entry["final_cost"]["mean"])
    finally:
        server.kill()
        server.wait(timeout=30)


def test_sweep_run_writes_the_same_runs_as_it_trains(results, logdir, moons, moons_dev, tmp_path) -> None:
    """``sweep.run(..., tensorboard_dir=...)``: curves on by default, every config written once, resume adds nothing."""
    board, path = tmp_path / "board", tmp_path / "results.jsonl"
    config = train.Config(layer_sizes=(2, 8, 1), epochs=EPOCHS, batch_size=32, optimizer="adam")
    arguments = dict(key=jax.random.key(0), num_configs=4, seeds=2, results_path=path, tensorboard_dir=board)
    again = sweep.run(config, results.space, moons, moons_dev, **arguments)
    assert [r["id"] for r in again.rows] == [r["id"] for r in results.rows] and again.curves  # curves=None -> True
    names = sorted(p.name for p in board.iterdir() if p.is_dir())
    assert names == sorted(p.name for p in logdir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        ours, reference = loaded(board / name), loaded(logdir / name)
        assert ours.Tags()["scalars"] == reference.Tags()["scalars"]
        for tag in reference.Tags()["scalars"]:
            assert [e.value for e in ours.Scalars(tag)] == [e.value for e in reference.Scalars(tag)]
    files = {name: event_files(board / name) for name in names}
    resumed = sweep.run(config, results.space, moons, moons_dev, **arguments)
    assert resumed.stats["runs_computed"] == 0
    assert {name: event_files(board / name) for name in names} == files


def test_tensorboard_dir_errors_before_training(results, moons, moons_dev, tmp_path) -> None:
    config = train.Config(layer_sizes=(2, 8, 1), epochs=EPOCHS, batch_size=32, optimizer="adam")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    before = sweep.compile_count()
    with pytest.raises(ValueError, match="tensorboard_dir must be a directory"):
        sweep.run(config, results.space, moons, moons_dev, key=jax.random.key(0), num_configs=2,
                  tensorboard_dir=not_a_dir)
    with pytest.raises(TypeError, match="tensorboard_dir must be a path"):
        sweep.run(config, results.space, moons, moons_dev, key=jax.random.key(0), num_configs=2, tensorboard_dir=3)
    assert sweep.compile_count() == before
