"""The adaptive searches' chunk-states files: exact round trip, refusals, and resume from an earlier version's checkpoints."""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import pytest
from adaptive_worker import ADAM, SPACE, tiny_data

from deepopt import checkpoint, sweep
from deepopt.sweep import state_files

NINE = dict(num_configs=9, min_epochs=1, max_epochs=9, eta=3)


def chunk_tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"params": [{"W": rng.normal(size=(2, 3, 4, 5)).astype(np.float32), "b": np.zeros((2, 3, 5), np.float32)}],
            "step": np.arange(6, dtype=np.int32).reshape(2, 3), "diverged": np.array([[True, False, True]] * 2)}


def test_a_chunk_s_states_come_back_bit_for_bit(tmp_path: pathlib.Path) -> None:
    tree, path = chunk_tree(), tmp_path / "states" / "b0r1-00003.npz"
    state_files.save(path, [3, 4], tree)
    positions, loaded = state_files.load(path, tree)
    assert positions.tolist() == [3, 4] and jax.tree.structure(loaded) == jax.tree.structure(tree)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(tree)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    state_files.save(path, [3, 4], chunk_tree(1))  # a recomputed chunk replaces its file
    assert np.array_equal(state_files.load(path, tree)[1]["params"][0]["W"], chunk_tree(1)["params"][0]["W"])


def test_torn_foreign_and_mismatched_files_are_refused(tmp_path: pathlib.Path) -> None:
    tree, path = chunk_tree(), tmp_path / "chunk.npz"
    state_files.save(path, [0], tree)
    with pytest.raises(FileNotFoundError, match="no chunk states at"):
        state_files.load(tmp_path / "missing.npz", tree)
    other = dict(tree, step=np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match=r"chunk.npz: state\['step'\] is int32\[2, 3\], expected int32\[2, 4\]"):
        state_files.load(path, other)
    with pytest.raises(ValueError, match="holds 4 arrays of state, expected 3"):
        state_files.load(path, {"a": tree["step"], "b": tree["step"], "c": tree["diverged"]})
    torn = tmp_path / "torn.npz"
    torn.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="torn.npz is not a readable chunk-states file"):
        state_files.load(torn, tree)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a deepopt chunk-states file"):
        state_files.load(foreign, tree)


def test_a_search_saved_by_an_earlier_version_resumes_from_its_checkpoint_directories(tmp_path: pathlib.Path) -> None:
    train_set, dev_set = tiny_data()
    whole = sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), **NINE)

    def stop_before_the_last_rung(progress: sweep.StageProgress) -> None:
        if progress.done == 9 + 3:  # rungs 0 and 1 recorded (9 and 3 configs, one seed), rung 2 not begun
            raise KeyboardInterrupt

    path = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), results_path=path,
                                 progress=stop_before_the_last_rung, **NINE)
    states = pathlib.Path(sweep.states_path(path))
    files = sorted(p for p in states.iterdir() if p.name.startswith("b0r1-"))
    assert files and all(p.suffix == ".npz" for p in files)
    rows_before = path.read_text().count("\n")
    for file in files:  # as an earlier version left them: deepopt.checkpoint directories, no .npz
        with np.load(file) as data:
            leaves = [data[f"leaf_{i}"] for i in range(len([n for n in data.files if n.startswith("leaf_")]))]
            positions = data["positions"]
        like = sweep.states.state_shape(ADAM, train_set, np.zeros(2, np.uint32), "threefry2x32")
        treedef = jax.tree.structure(like)
        checkpoint.save(states / file.stem, {"positions": positions, "state": jax.tree.unflatten(treedef, leaves)})
        file.unlink()
    resumed = sweep.successive_halving(ADAM, SPACE, train_set, dev_set, key=jax.random.key(1), results_path=path,
                                       resume=True, **NINE)
    assert resumed.stats["runs_resumed"] == rows_before and resumed.stats["runs_computed"] == 1  # rung 2 only
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.rows) == strip(whole.rows)
    assert not any(p.name.startswith("b0r1-") for p in states.iterdir())  # deleted once the last rung is done
