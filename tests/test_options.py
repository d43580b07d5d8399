"""``sweep.Options``: every search takes the shared options as one dataclass or as today's keywords, the same."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import jax
import numpy as np
import pytest
from adaptive_worker import ADAM, PBT_SPACE, SPACE, tiny_data

from deepopt import data, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHORT = dataclasses.replace(ADAM, epochs=3)


def _strip(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


SEARCHES = {
    "run": lambda tr, dv, **kw: sweep.run(SHORT, SPACE, tr, dv, key=jax.random.key(0), num_configs=4, **kw),
    "successive_halving": lambda tr, dv, **kw: sweep.successive_halving(
        ADAM, SPACE, tr, dv, key=jax.random.key(1), num_configs=4, min_epochs=1, max_epochs=4, eta=2, **kw),
    "hyperband": lambda tr, dv, **kw: sweep.hyperband(
        ADAM, SPACE, tr, dv, key=jax.random.key(2), min_epochs=1, max_epochs=3, eta=3, **kw),
    "pbt": lambda tr, dv, **kw: sweep.pbt(
        ADAM, PBT_SPACE, tr, dv, key=jax.random.key(3), population=4, epochs=4, interval=2, **kw),
    "median_stopping": lambda tr, dv, **kw: sweep.median_stopping(
        ADAM, SPACE, tr, dv, key=jax.random.key(4), num_configs=4, max_epochs=4, interval=2, **kw),
}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_options_or_keywords_give_the_same_search(name, tmp_path) -> None:
    train_set, dev_set = tiny_data()
    search = SEARCHES[name]
    by_keywords = search(train_set, dev_set, seeds=2, metric="final_cost", results_path=tmp_path / "a.jsonl")
    options = sweep.Options(seeds=2, metric="final_cost", results_path=tmp_path / "b.jsonl")
    by_options = search(train_set, dev_set, options=options)
    overridden = search(train_set, dev_set, options=dataclasses.replace(options, seeds=5), seeds=2,
                        results_path=tmp_path / "c.jsonl")  # a keyword wins over the same field of options
    assert by_keywords.metric == by_options.metric == "final_cost" and by_keywords.stats["seeds"] == 2
    history = by_keywords.history or by_keywords.rows
    assert _strip(history) == _strip(by_options.history or by_options.rows) == _strip(overridden.history
                                                                                     or overridden.rows)


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_an_unknown_option_is_refused_naming_it(name) -> None:
    train_set, dev_set = tiny_data()
    with pytest.raises(TypeError, match=rf"{name}\(\) got unexpected keyword argument\(s\) \['seed'\]"):
        SEARCHES[name](train_set, dev_set, seed=2)


@pytest.mark.parametrize("name", ["successive_halving", "hyperband", "pbt", "median_stopping"])
@pytest.mark.parametrize("option, value", [("curves", True)])
def test_the_adaptive_searches_refuse_what_their_engine_cannot_do_yet(name, option, value) -> None:
    train_set, dev_set = tiny_data()
    before = sweep.compile_count() + sweep.state_compile_count()
    with pytest.raises(ValueError, match=rf"{name} does not support Options.{option} yet"):
        SEARCHES[name](train_set, dev_set, **{option: value})
    assert sweep.compile_count() + sweep.state_compile_count() == before


def test_pbt_takes_its_exploit_settings_as_a_dataclass_or_keywords() -> None:
    train_set, dev_set = tiny_data()
    by_keywords = SEARCHES["pbt"](train_set, dev_set, fraction=0.5, perturb=(0.5, 2.0))
    by_exploit = SEARCHES["pbt"](train_set, dev_set, exploit=sweep.Exploit(fraction=0.5, perturb=(0.5, 2.0)))
    assert _strip(by_keywords.history) == _strip(by_exploit.history)
    assert _strip(by_keywords.history) != _strip(SEARCHES["pbt"](train_set, dev_set).history)  # the settings count
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 0.5\]"):
        SEARCHES["pbt"](train_set, dev_set, exploit=sweep.Exploit(fraction=0.9))


def test_the_searches_share_one_default_for_every_option() -> None:
    assert sweep.Options().resume is True and sweep.Options().chunk_size == "auto" and sweep.Options().seeds == 1


def _public_functions(path: pathlib.Path):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            a = node.args
            yield node.name, len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)


def test_no_public_function_takes_more_than_twelve_parameters() -> None:
    wide = {f"{path.relative_to(ROOT)}:{name}": count for path in sorted((ROOT / "deepopt").rglob("*.py"))
            for name, count in _public_functions(path) if count > 12}
    assert not wide, f"public functions over 12 parameters (group shared options in a dataclass): {wide}"


def test_the_stage_searches_take_concurrent_chunks_with_the_same_rows() -> None:
    train_set, dev_set = tiny_data()
    one_at_a_time = SEARCHES["successive_halving"](train_set, dev_set, concurrent_chunks=1, chunk_size=2)
    together = SEARCHES["successive_halving"](train_set, dev_set, concurrent_chunks=2, chunk_size=2)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(one_at_a_time.history) == strip(together.history)
    with pytest.raises(ValueError, match="concurrent_chunks must be a positive int or None"):
        SEARCHES["median_stopping"](train_set, dev_set, concurrent_chunks=0)


def test_a_stage_search_shrinks_its_chunks_to_a_memory_budget() -> None:
    from deepopt.sweep import engine

    train_set, dev_set = tiny_data()
    unlimited = SEARCHES["successive_halving"](train_set, dev_set)
    devices = tuple(jax.devices())
    key = jax.random.key(1)
    host = [data.check_dataset(split, "split", on_host=True) for split in (train_set, dev_set)] + [None]
    _, one_per_device = engine._compile(  # the stage program of one config per device, as the search compiles it
        dataclasses.replace(ADAM, epochs=4), len(devices), 1, str(jax.random.key_impl(key)),
        tuple(np.asarray(jax.random.key_data(key)).shape), "float32", engine.split_shapes(host), devices, False,
        False, stage=True,
    )
    shrunk = SEARCHES["successive_halving"](train_set, dev_set, memory_budget_bytes=one_per_device)
    assert shrunk.stats["chunks"] > unlimited.stats["chunks"]
    assert [row["id"] for row in shrunk.history] == [row["id"] for row in unlimited.history]
    for a, b in zip(shrunk.history, unlimited.history):
        assert a["dev_accuracy"] == pytest.approx(b["dev_accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match=r"memory_budget_bytes=1 is below what one config \(1 seeds\) per device"):
        SEARCHES["median_stopping"](train_set, dev_set, memory_budget_bytes=1)
    with pytest.raises(ValueError, match="pbt trains each sub-population as one chunk, which a memory budget"):
        SEARCHES["pbt"](train_set, dev_set, memory_budget_bytes=2**30)
