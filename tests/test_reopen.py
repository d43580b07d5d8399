"""``sweep.load(path)``: a finished search's results file reopened as the ``Results`` the search returned."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
from adaptive_worker import ADAM, SPACE, tiny_data, tiny_hyperband, tiny_pbt

from deepopt import sweep

SHORT = dataclasses.replace(ADAM, epochs=3)
WITH_CHOICE = {**SPACE, "optimizer": sweep.choice(["momentum", "adam"])}


def _random(path: pathlib.Path) -> sweep.Results:
    train_set, dev_set = tiny_data()
    return sweep.run(SHORT, WITH_CHOICE, train_set, dev_set, key=jax.random.key(0), num_configs=6, seeds=2,
                     results_path=path, curves=True)


def _tpe(path: pathlib.Path) -> sweep.Results:
    train_set, dev_set = tiny_data()
    return sweep.run(SHORT, SPACE, train_set, dev_set, key=jax.random.key(1), num_configs=6, seeds=2,
                     sampler="tpe", results_path=path)


def _halving(path: pathlib.Path) -> sweep.Results:
    train_set, dev_set = tiny_data()
    return sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(2), num_configs=6,
                                    min_epochs=1, max_epochs=4, eta=2, seeds=2, results_path=path)


SEARCHES = {
    "random": _random,
    "tpe": _tpe,
    "successive_halving": _halving,
    "hyperband": lambda path: tiny_hyperband(results_path=path),
    "pbt": lambda path: tiny_pbt(results_path=path),
}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict[str, tuple[sweep.Results, sweep.Results, pathlib.Path]]:
    """Each search as it returned, its file reopened, and the file."""
    directory = tmp_path_factory.mktemp("reopen")
    pairs = {}
    for name, search in SEARCHES.items():
        path = directory / f"{name}.jsonl"
        pairs[name] = (search(path), sweep.load(path), path)
    return pairs


def _frame(results: sweep.Results):
    return results.to_pandas().to_dict("list")


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_a_reopened_search_reads_as_the_one_that_returned(searched, name) -> None:
    returned, loaded, _ = searched[name]
    assert loaded.rows == returned.rows and loaded.history == returned.history
    assert loaded.space == returned.space and loaded.metric == returned.metric
    assert loaded.config_steps == returned.config_steps and loaded.seconds == returned.seconds
    assert loaded.stats["finished"] and {k: v for k, v in loaded.stats.items() if k != "finished"} == json.loads(
        json.dumps(returned.stats))
    assert loaded.best(5) == returned.best(5)
    assert loaded.zoom(3) == returned.zoom(3)
    assert loaded.boundary_warnings() == returned.boundary_warnings()
    assert loaded.bias_variance() == returned.bias_variance()
    pytest.importorskip("optuna")
    pytest.importorskip("sklearn")
    assert loaded.importance() == returned.importance()
    pytest.importorskip("pandas")
    assert _frame(loaded) == _frame(returned)


def test_a_reopened_sweep_has_its_learning_curves(searched) -> None:
    returned, loaded, _ = searched["random"]
    assert loaded.curves.keys() == returned.curves.keys() and returned.curves
    config_id = returned.best(1)[0]["config_id"]
    for metric, curves in returned.curves_of(config_id).items():
        np.testing.assert_array_equal(loaded.curves_of(config_id)[metric], curves)


def test_two_rounds_in_one_file_reopen_as_one_results(tmp_path) -> None:
    """The main job's coarse round and its zoomed round, appended to one file."""
    path = tmp_path / "results.jsonl"
    train_set, dev_set = tiny_data()
    coarse = sweep.run(SHORT, SPACE, train_set, dev_set, key=jax.random.key(4), num_configs=6, results_path=path)
    fine = sweep.run(SHORT, coarse.zoom(2), train_set, dev_set, key=jax.random.key(5), num_configs=4,
                     results_path=path, resume=True)
    loaded = sweep.load(path)
    assert loaded.rows == coarse.rows + fine.rows
    assert loaded.space == coarse.space  # the zoomed box lies inside the coarse one
    assert loaded.config_steps == coarse.config_steps + fine.config_steps
    assert [call["runs"] for call in loaded.stats["calls"]] == [6, 4]
    combined = sweep.Results(rows=coarse.rows + fine.rows, space=coarse.space)
    assert loaded.best(5) == combined.best(5) and loaded.zoom(3) == combined.zoom(3)


def test_an_interrupted_search_reopens_with_the_rows_it_wrote(searched, tmp_path) -> None:
    """A search killed after some chunks: its record says it did not finish; the rows so far read as usual."""
    returned, _, written = searched["hyperband"]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in returned.history[:5]))
    record = json.loads(pathlib.Path(sweep.record_path(written)).read_text())
    record["calls"][0].update(finished=False, stats=None, row_ids=None)  # as written when the search started
    pathlib.Path(sweep.record_path(path)).write_text(json.dumps(record))
    loaded = sweep.load(path)
    assert loaded.history == returned.history[:5] and not loaded.stats["finished"]
    assert loaded.config_steps is None and loaded.best(1)


def test_a_foreign_file_is_refused_naming_it(tmp_path) -> None:
    csv = tmp_path / "results.csv"
    csv.write_text("learning_rate,dev_accuracy\n0.1,0.9\n")
    with pytest.raises(ValueError, match=r"results.csv is not a results file of deepopt: .*:1 is not a JSON row"):
        sweep.load(csv)
    with pytest.raises(FileNotFoundError, match="no results file at"):
        sweep.load(tmp_path / "missing.jsonl")


def test_rows_without_a_record_are_refused_saying_what_is_missing(searched, tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in searched["random"][0].rows))
    with pytest.raises(ValueError, match=r"has no results.record.json beside it .*search space and metric"):
        sweep.load(path)
    pathlib.Path(sweep.record_path(path)).write_text('{"calls": []}')
    with pytest.raises(ValueError, match="is not a results record of deepopt"):
        sweep.load(path)


def test_a_torn_file_is_refused_saying_how_to_repair_it(searched, tmp_path) -> None:
    returned, _, _ = searched["random"]
    path = tmp_path / "results.jsonl"
    whole = "".join(json.dumps(row) + "\n" for row in returned.rows)
    path.write_text(whole + json.dumps(returned.rows[0])[:40])  # killed while writing a row
    with pytest.raises(ValueError, match=rf"ends in a torn row .*resume=True.*cut the file at byte {len(whole)}"):
        sweep.load(path)
    path.write_text(whole.replace(whole.splitlines()[1], "{not json"))
    with pytest.raises(ValueError, match=r"results.jsonl:2 is not a JSON row of a sweep"):
        sweep.load(path)


@pytest.mark.parametrize("name", ["random", "successive_halving"])
def test_a_record_written_before_tasks_is_resumed_as_one_call(name, searched, tmp_path):
    """A record of the version before tasks (no ``directions``, no ``task`` in the config) resumes in place."""
    _, loaded, path = searched[name]
    copy = tmp_path / path.name
    for suffix in ("", ".record.json", ".curves.jsonl", ".search.json"):
        source = pathlib.Path(str(path).removesuffix(".jsonl") + suffix) if suffix else path
        if source.exists():
            (tmp_path / source.name).write_bytes(source.read_bytes())
    states = pathlib.Path(str(path).removesuffix(".jsonl") + ".states")
    if states.exists():
        import shutil

        shutil.copytree(states, tmp_path / states.name)
    record = sweep.record_path(copy)

    def older(node):
        if isinstance(node, dict):
            return {k: older(v) for k, v in node.items() if k != "directions" and not (k == "task")}
        return [older(v) for v in node] if isinstance(node, list) else node

    with open(record, encoding="utf-8") as stream:
        written = json.load(stream)
    with open(record, "w", encoding="utf-8") as stream:
        json.dump(older(written), stream)
    SEARCHES[name](copy)  # the same call again, resumed
    with open(record, encoding="utf-8") as stream:
        assert len(json.load(stream)["calls"]) == 1
    assert sweep.load(copy).rows == loaded.rows
