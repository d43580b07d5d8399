"""deepopt.checkpoint: save / restore of a TrainState (or any pytree of arrays) with orbax.

A restored run continues bit for bit as the uninterrupted one (plain, batch norm, early stopping
with a dev set, vmapped, float64); torn, foreign and mismatched checkpoints are refused with a
one-line error before any array is read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ocp = pytest.importorskip("orbax.checkpoint")

from deepopt import checkpoint, data, train  # noqa: E402

HP = train.HParams(learning_rate=0.05)
# m = 50 with mini-batches of 16 (a padded last batch). The batch-norm and early-stopping Configs are
# tests/test_open_run.py's, so a whole-suite run shares their compiled programs.
CONFIGS = {
    "plain": train.Config((2, 4, 1), optimizer="adam", batch_size=16, epochs=4),
    "batchnorm": train.Config(
        (2, 4, 1), optimizer="adam", schedule="inverse_time", batch_size=16, epochs=4, batchnorm=True
    ),
    "early_stopping": train.Config((2, 5, 1), optimizer="adam", batch_size=16, epochs=4, early_stopping=1),
}


def splits(dtype: str = "float32") -> tuple[data.Dataset, data.Dataset]:
    train_set = data.make_moons(jax.random.key(0), 50, 0.3)
    dev_set = data.make_moons(jax.random.key(1), 30, 0.3)
    return (
        data.Dataset(jnp.asarray(train_set.X, dtype), train_set.y),
        data.Dataset(jnp.asarray(dev_set.X, dtype), dev_set.y),
    )


def assert_trees_equal(a, b) -> None:
    """Same tree structure; every leaf equal bit for bit with the same shape and dtype (keys by their data and impl)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert str(x.dtype) == str(y.dtype)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        np.testing.assert_array_equal(x, y)


class Run:
    """A state after 2 epochs, a checkpoint of it, and the uninterrupted 4-epoch run from the same start."""

    def __init__(self, case: str, tmp_dir) -> None:
        self.dtype = dtype = "float64" if case == "float64" else "float32"
        batched = case == "vmap"
        config = CONFIGS.get(case, CONFIGS["plain"])
        with jax.enable_x64(dtype == "float64"):
            train_set, dev_set = splits(dtype)
            dev = dev_set if config.early_stopping is not None else None
            if batched:
                keys = jax.random.split(jax.random.key(7), 3)
                start = jax.vmap(lambda k: train.init_state(config, HP, k, train_set))(keys)
                programs = {
                    n: jax.jit(jax.vmap(lambda t, n=n: train.advance(config, HP, t, train_set, dev, epochs=n)[0]))
                    for n in (2, 4)
                }
                self.advance = lambda s, n: programs[n](s)
            else:
                start = train.init_state(config, HP, jax.random.key(7), train_set)
                self.advance = lambda s, n: train.advance(config, HP, s, train_set, dev, epochs=n)[0]
            self.middle = self.advance(start, 2)
            self.whole = self.advance(start, 4)
        self.path = tmp_dir / f"{case}-{dtype}"
        checkpoint.save(self.path, self.middle)

    def restore(self, like=None):
        with jax.enable_x64(self.dtype == "float64"):
            return checkpoint.restore(self.path, like=self.middle if like is None else like)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each case trained once per module (its two programs compiled once), built on first use."""
    cache, tmp_dir = {}, tmp_path_factory.mktemp("runs")

    def get(case: str) -> Run:
        if case not in cache:
            cache[case] = Run(case, tmp_dir)
        return cache[case]

    return get


@pytest.fixture
def copy_of(tmp_path, runs):
    """A fresh copy of a case's checkpoint directory, free to damage."""

    def make(case: str = "plain"):
        target = tmp_path / "copy"
        shutil.copytree(runs(case).path, target)
        return target

    return make


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["plain", "batchnorm", "early_stopping", "vmap", "float64"])
def test_a_restored_run_continues_bit_for_bit(runs, case):
    run = runs(case)
    restored = run.restore()
    assert type(restored) is train.TrainState
    assert_trees_equal(restored, run.middle)  # the saved arrays, bit for bit
    traces = train.trace_count()
    with jax.enable_x64(run.dtype == "float64"):
        continued = run.advance(restored, 2)
    assert_trees_equal(continued, run.whole)  # = the uninterrupted run
    if case != "vmap":  # (under an outer jit the count says nothing)
        assert train.trace_count() == traces  # restored arrays hit the compiled program (uncommitted, like fresh ones)


def test_the_cases_cover_what_they_claim(runs):
    assert runs("early_stopping").middle.best_params is not None and runs("plain").middle.best_params is None
    assert runs("batchnorm").middle.model_state != ()
    assert runs("vmap").middle.key.shape == (3,) and runs("vmap").middle.params[0]["W"].shape == (3, 2, 4)
    assert runs("float64").middle.params[0]["W"].dtype == np.float64


def test_like_may_be_shape_dtype_structs(runs):
    run = runs("plain")
    abstract = jax.eval_shape(lambda: run.middle)
    assert_trees_equal(checkpoint.restore(run.path, like=abstract), run.middle)


def test_any_pytree_round_trips(tmp_path):
    tree = {
        "list": [np.arange(3, dtype=np.int64).astype(np.int32), None, jnp.array([1.5, -0.0, np.nan], jnp.float32)],
        "rbg key": jax.random.split(jax.random.key(3, impl="rbg"), 2),
        "a/b.c": jnp.ones((2, 1), jnp.bfloat16),
        "a_b_c": jnp.zeros((), jnp.uint8),
        "flag": np.bool_(True),
    }
    checkpoint.save(tmp_path / "tree", tree)
    restored = checkpoint.restore(tmp_path / "tree", like=tree)
    assert_trees_equal(restored, tree)
    leaves = json.loads((tmp_path / "tree" / checkpoint.METADATA_FILE).read_text())["leaves"]
    assert len({leaf["name"] for leaf in leaves}) == len(leaves)  # sanitized names stay distinct


def test_metadata_records_the_tree(runs):
    run = runs("plain")
    metadata = json.loads((run.path / checkpoint.METADATA_FILE).read_text())
    assert metadata["format"] == "deepopt-checkpoint" and metadata["version"] == 1
    assert metadata["treedef"] == str(jax.tree.structure(run.middle))
    leaves = jax.tree_util.tree_leaves_with_path(run.middle)
    assert [leaf["path"] for leaf in metadata["leaves"]] == [jax.tree_util.keystr(p) for p, _ in leaves]
    assert [leaf["shape"] for leaf in metadata["leaves"]] == [list(x.shape) for _, x in leaves]
    key = next(leaf for leaf in metadata["leaves"] if leaf["path"] == ".key")
    assert key["dtype"] == "key<fry>" and key["key_impl"] == "threefry2x32"
    assert metadata["files"] and metadata["written_by"]["orbax-checkpoint"] == ocp.__version__


def test_restoring_twice_leaves_the_checkpoint_unchanged(runs):
    run = runs("plain")
    run.restore()
    assert_trees_equal(run.restore(), run.middle)  # the file hashes still match


# --- writing ----------------------------------------------------------------------------------


def test_save_refuses_to_overwrite_unless_asked(runs, tmp_path):
    plain, batchnorm = runs("plain"), runs("batchnorm")
    path = tmp_path / "ckpt"
    checkpoint.save(path, plain.middle)
    refusal = f"path {re.escape(str(path))} already holds a checkpoint; pass overwrite=True"
    with pytest.raises(ValueError, match=refusal):
        checkpoint.save(path, batchnorm.middle)
    checkpoint.save(path, batchnorm.middle, overwrite=True)
    assert_trees_equal(checkpoint.restore(path, like=batchnorm.middle), batchnorm.middle)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary or old directories left


def test_save_never_replaces_what_it_did_not_write(runs, tmp_path):
    state = runs("plain").middle
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_dir" / "notes.txt").write_text("x")
    for name, kind in (("a_file", "a file"), ("a_dir", "a non-empty directory")):
        refusal = f"{re.escape(str(tmp_path / name))} exists and is not a deepopt checkpoint \\({kind}"
        with pytest.raises(ValueError, match=refusal):
            checkpoint.save(tmp_path / name, state, overwrite=True)
    (tmp_path / "empty").mkdir()
    checkpoint.save(tmp_path / "empty", state)  # an empty directory holds nothing to overwrite
    checkpoint.save(tmp_path / "new" / "parents" / "ckpt", state)
    assert_trees_equal(checkpoint.restore(tmp_path / "empty", like=state), state)


def test_a_failed_save_leaves_nothing_behind_and_the_old_checkpoint_intact(runs, tmp_path, monkeypatch):
    plain, batchnorm = runs("plain"), runs("batchnorm")
    checkpoint.save(tmp_path / "old", plain.middle)

    def crash(directory):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint, "_file_table", crash)
    for name in ("new", "old"):
        with pytest.raises(OSError, match="simulated"):
            checkpoint.save(tmp_path / name, batchnorm.middle, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["old"]
    assert_trees_equal(checkpoint.restore(tmp_path / "old", like=plain.middle), plain.middle)


def test_save_checks_its_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"save: state\['b'\] must be an array \(jax or numpy\), got int"):
        checkpoint.save(tmp_path / "x", {"a": jnp.ones(2), "b": 3})
    with pytest.raises(ValueError, match="save: state has no arrays to save"):
        checkpoint.save(tmp_path / "x", {"a": None})
    with pytest.raises(TypeError, match="save: overwrite must be a bool, got 1"):
        checkpoint.save(tmp_path / "x", {"a": jnp.ones(2)}, overwrite=1)
    with pytest.raises(TypeError, match="save: path must be a str or os.PathLike, got int"):
        checkpoint.save(3, {"a": jnp.ones(2)})
    assert not (tmp_path / "x").exists()


def test_orbax_stays_quiet(runs, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    state = runs("plain").middle
    checkpoint.save(tmp_path / "quiet", state)
    checkpoint.restore(tmp_path / "quiet", like=state)
    assert not [r for r in caplog.records if f"{os.sep}orbax{os.sep}" in r.pathname]
    assert not logging.getLogger("absl").filters  # the filter is gone afterwards


# --- refusals -------------------------------------------------------------------------------


def no_arrays_read(monkeypatch):
    def refuse(ocp_module):
        raise AssertionError("restore read the arrays before refusing")

    monkeypatch.setattr(checkpoint, "_checkpointer", refuse)


def test_a_missing_path_is_file_not_found(tmp_path, runs):
    with pytest.raises(FileNotFoundError, match=f"restore: path {re.escape(str(tmp_path / 'nope'))} does not exist"):
        checkpoint.restore(tmp_path / "nope", like=runs("plain").middle)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("rm metadata", "is torn: arrays/ is there but deepopt_checkpoint.json is missing"),
        ("truncate metadata", "is torn or corrupt: deepopt_checkpoint.json is not valid JSON"),
        ("rm arrays", "is torn: arrays/ is missing"),
        ("rm array file", r"is torn: arrays/manifest.ocdbt missing"),
        ("truncate array file", r"is torn: arrays/d/\w+ is \d+ bytes, expected \d+ \(truncated or overwritten\)"),
        ("corrupt array file", r"is corrupt: arrays/d/\w+ differs from what was written \(sha256"),
    ],
)
def test_a_torn_checkpoint_is_refused_before_reading(copy_of, runs, monkeypatch, damage, message):
    path = copy_of()
    arrays = path / "arrays"
    data_file = next((arrays / "d").iterdir())
    if damage == "rm metadata":
        (path / checkpoint.METADATA_FILE).unlink()
    elif damage == "truncate metadata":
        text = (path / checkpoint.METADATA_FILE).read_text()
        (path / checkpoint.METADATA_FILE).write_text(text[: len(text) // 2])
    elif damage == "rm arrays":
        shutil.rmtree(arrays)
    elif damage == "rm array file":
        (arrays / "manifest.ocdbt").unlink()
    elif damage == "truncate array file":
        data_file.write_bytes(data_file.read_bytes()[:-7])
    else:
        raw = bytearray(data_file.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data_file.write_bytes(bytes(raw))
    no_arrays_read(monkeypatch)
    with pytest.raises(ValueError, match=f"restore: checkpoint {re.escape(str(path))} {message}") as error:
        checkpoint.restore(path, like=runs("plain").middle)
    assert "\n" not in str(error.value)


def test_an_orbax_failure_past_the_checks_is_a_one_line_value_error(runs, monkeypatch):
    """Damage the file table cannot see (none known) would surface as orbax's error: a ValueError naming the path."""

    class Failing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def restore(self, directory, args):
            raise RuntimeError("OUT_OF_RANGE: Error reading " + "x" * 1000 + "\nsecond line")

    monkeypatch.setattr(checkpoint, "_checkpointer", lambda ocp_module: Failing())
    run = runs("plain")
    with pytest.raises(ValueError) as error:
        checkpoint.restore(run.path, like=run.middle)
    message = str(error.value)
    assert message.startswith(f"restore: checkpoint {run.path} could not be read by orbax (RuntimeError: OUT_OF_")
    assert "\n" not in message and len(message) < 400 and isinstance(error.value.__cause__, RuntimeError)


def test_a_foreign_directory_is_refused(tmp_path, runs, monkeypatch):
    state = runs("plain").middle
    (tmp_path / "empty").mkdir()
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as orbax_checkpointer:
        orbax_checkpointer.save(tmp_path / "orbax", args=ocp.args.StandardSave({"w": jnp.ones(3)}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.npz").write_bytes(b"")
    (tmp_path / "tagged").mkdir()
    (tmp_path / "tagged" / checkpoint.METADATA_FILE).write_text(json.dumps({"format": "something-else"}))
    for name, version in (("future", 99), ("fieldless", 1)):
        (tmp_path / name).mkdir()
        metadata = {"format": checkpoint.FORMAT, "version": version}
        (tmp_path / name / checkpoint.METADATA_FILE).write_text(json.dumps(metadata))
    (tmp_path / "file").write_text("x")
    no_arrays_read(monkeypatch)
    cases = {
        "empty": "is an empty directory, not a deepopt checkpoint",
        "orbax": "is an orbax checkpoint that deepopt.checkpoint.save did not write",
        "other": r"is not a deepopt checkpoint \(no deepopt_checkpoint.json; it holds weights.npz\)",
        "tagged": "is not a deepopt checkpoint: deepopt_checkpoint.json has format 'something-else', expected",
        "future": "has format version 99; this deepopt reads version 1",
        "file": "is a file, expected a checkpoint directory",
        "fieldless": "is corrupt: deepopt_checkpoint.json lacks treedef, leaves, files",
    }
    for name, message in cases.items():
        where = re.escape(str(tmp_path / name))
        with pytest.raises(ValueError, match=f"restore: (path|checkpoint) {where} {message}"):
            checkpoint.restore(tmp_path / name, like=state)


def test_the_inner_arrays_directory_points_to_its_checkpoint(runs, monkeypatch):
    run = runs("plain")
    no_arrays_read(monkeypatch)
    pointer = f"is the arrays directory inside the deepopt checkpoint {re.escape(str(run.path))}; pass path="
    with pytest.raises(ValueError, match=pointer):
        checkpoint.restore(run.path / "arrays", like=run.middle)


def abstract_state(config: train.Config):
    return jax.eval_shape(lambda: train.init_state(config, HP, jax.random.key(0), splits()[0]))


def test_a_mismatched_like_is_refused_before_reading(runs, monkeypatch):
    plain, batchnorm, f64, batched = runs("plain"), runs("batchnorm"), runs("float64"), runs("vmap")
    with jax.enable_x64(True):
        f64_as_f32 = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32 if x.dtype == jnp.float64 else x.dtype),
            jax.eval_shape(lambda: f64.middle),
        )
    rbg_key = plain.middle._replace(key=jax.random.key(0, impl="rbg"))
    differ = "tree structures differ"
    cases = [  # (checkpoint, like, what the message says after "restore: like does not match checkpoint PATH: ")
        (plain, batchnorm.middle, f"{differ} (23 leaves in the checkpoint, 31 in like; only in like: "
         ".params[0]['beta'], .params[0]['gamma'], .model_state[0].mean (+5 more))"),
        (plain, abstract_state(train.Config((2, 4, 1))), f"{differ} (23 leaves in the checkpoint, 14 in like; "
         "only in the checkpoint: .opt_state.count, .opt_state.first_moment[0]['W'], "
         ".opt_state.first_moment[0]['b'] (+6 more))"),
        (plain, abstract_state(train.Config((2, 5, 1), optimizer="adam")),
         "leaf .params[0]['W'] is float32[2,4] in the checkpoint, like has float32[2,5] (9 leaves differ)"),
        (f64, f64_as_f32, "leaf .params[0]['W'] is float64[2,4] in the checkpoint, like has float32[2,4] "
         "(14 leaves differ)"),
        (batched, plain.middle, "leaf .params[0]['W'] is float32[3,2,4] in the checkpoint, like has float32[2,4] "
         "(23 leaves differ)"),
        (plain, rbg_key, "leaf .key is key<fry>[] in the checkpoint, like has key<rbg>[]"),
        (plain, {"w": jnp.ones(2)}, f"{differ} (23 leaves in the checkpoint, 1 in like; only in the checkpoint: "
         ".params[0]['W'], .params[0]['b'], .params[1]['W'] (+20 more); only in like: ['w'])"),
    ]
    no_arrays_read(monkeypatch)
    for run, like, message in cases:
        with pytest.raises(ValueError) as error:
            checkpoint.restore(run.path, like=like)
        assert str(error.value) == f"restore: like does not match checkpoint {run.path}: {message}"
    with pytest.raises(ValueError) as error:  # a list where the checkpoint has a tuple
        checkpoint.restore(plain.path, like=plain.middle._replace(params=list(plain.middle.params)))
    assert str(error.value) == (
        f"restore: like does not match checkpoint {plain.path}: {differ} with the same leaf paths: checkpoint has "
        "`...tuple[TrainState], [({'W': *, 'b': *}, {'W': *, 'b': *}), ()...`, like has "
        "`...tuple[TrainState], [[{'W': *, 'b': *}, {'W': *, 'b': *}], ()...`"
    )
    with pytest.raises(TypeError, match=r"restore: like\.step must be an array or jax.ShapeDtypeStruct, got int"):
        checkpoint.restore(plain.path, like=plain.middle._replace(step=3))


def test_a_float64_checkpoint_needs_x64(runs, monkeypatch):
    run = runs("float64")
    with jax.enable_x64(True):
        like = jax.eval_shape(lambda: run.middle)
    no_arrays_read(monkeypatch)
    with pytest.raises(ValueError) as error:
        checkpoint.restore(run.path, like=like)
    assert str(error.value) == (
        f"restore: checkpoint {run.path} holds float64 leaves (first .params[0]['W']) but JAX's 64-bit mode is off; "
        "restore inside `with jax.enable_x64(True):`"
    )


# --- packaging ------------------------------------------------------------------------------


def test_import_deepopt_does_not_import_orbax():
    code = textwrap.dedent(
        """
        import sys
        import deepopt, deepopt.checkpoint
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "orbax")
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_without_orbax_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[checkpoint\]'"):
        checkpoint.save(tmp_path / "x", {"a": jnp.ones(2)})
    assert not (tmp_path / "x").exists()


def test_a_relative_path_is_taken_from_the_working_directory(tmp_path, monkeypatch) -> None:
    """As the README writes it: ``checkpoint.save("run-200", state)`` (orbax itself wants absolute paths)."""
    monkeypatch.chdir(tmp_path)
    state = {"w": np.arange(3.0, dtype=np.float32)}
    checkpoint.save("run-200", state)
    assert (tmp_path / "run-200").is_dir()
    np.testing.assert_array_equal(checkpoint.restore("run-200", like=state)["w"], state["w"])
