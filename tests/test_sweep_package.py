"""The sweep package: one ask/tell interface for the samplers, stable (v2) ids, v1 files still resume, the old names."""

from __future__ import annotations

import ast
import collections
import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
from sweep_worker import ADAM, tiny_data, tiny_sweep, without_time

from deepopt import data, sweep, train

SPACE = {
    "learning_rate": sweep.log_uniform(1e-3, 1.0),
    "beta1": sweep.one_minus_log_uniform(1e-3, 1e-1),
    "l2": sweep.uniform(0.0, 0.1),
    "optimizer": sweep.choice(["adam", "gd"]),
    "epochs": 3,
}
GRID = {"optimizer": sweep.grid(["adam", "gd", "momentum"]), "l2": sweep.grid([0.0, 0.1]), "epochs": 3}
DIGEST = "0123456789abcdef"


# ------------------------------------------------------------------------------ samplers


@pytest.mark.parametrize("name, space, n", [("random", SPACE, 5), ("quasi", SPACE, 5), ("grid", GRID, 6)])
def test_first_ask_is_sample(name: str, space: dict[str, Any], n: int) -> None:
    key = jax.random.key(7)
    sampler = sweep.make_sampler(name, space, key)
    assert isinstance(sampler, sweep.Sampler)
    assert sampler.ask(n) == sweep.sample(space, key, None if name == "grid" else n, name)


def test_quasi_asks_continue_the_halton_sequence() -> None:
    key = jax.random.key(7)
    sampler = sweep.make_sampler("quasi", SPACE, key)
    asked = sampler.ask(4) + sampler.ask(4)
    assert asked == sweep.sample(SPACE, key, 8, "quasi")  # the first 8 Halton points
    again = sweep.make_sampler("quasi", SPACE, key)
    assert again.ask(3) + again.ask(5) == asked  # however the asks are cut
    assert sampler.asked == 8 and sampler.asks == 2


def test_random_asks_are_fresh_and_deterministic() -> None:
    key = jax.random.key(7)
    first, second = sweep.make_sampler("random", SPACE, key), sweep.make_sampler("random", SPACE, key)
    a = first.ask(4) + first.ask(4)
    assert a == second.ask(4) + second.ask(4)
    assert a[:4] == sweep.sample(SPACE, key, 4, "random")
    assert a[4:] != a[:4]  # the second ask draws with another fold of the key
    assert len({json.dumps(x, sort_keys=True) for x in a}) == 8


def test_grid_asks_enumerate_then_run_out() -> None:
    sampler = sweep.make_sampler("grid", GRID, jax.random.key(0))
    assert sampler.size == 6
    asked = sampler.ask(4) + sampler.ask(4)  # the second gets the last 2
    assert asked == sweep.sample(GRID, jax.random.key(0), None, "grid")
    assert sampler.ask(1) == []


@pytest.mark.parametrize("name", sweep.SAMPLERS)
def test_tell_is_accepted(name: str) -> None:
    space = GRID if name == "grid" else SPACE
    sampler = sweep.make_sampler(name, space, jax.random.key(1))
    asked = sampler.ask(2)
    assert sampler.tell(asked, [0.5, None]) is None
    untold = sweep.make_sampler(name, space, jax.random.key(1))
    untold.ask(2)
    assert sampler.ask(2) == untold.ask(2)  # tell changes nothing here
    with pytest.raises(ValueError, match="one value per assignment"):
        sampler.tell(asked, [0.5])


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match=r"sampler must be one of \['random', 'quasi', 'grid', 'tpe', 'nsga2'\]"):
        sweep.make_sampler("bayes", SPACE, jax.random.key(0))
    with pytest.raises(ValueError, match="sampler='grid' enumerates grid/choice values"):
        sweep.make_sampler("grid", SPACE, jax.random.key(0))
    with pytest.raises(ValueError, match="sampler='grid' makes all 6 combinations"):
        sweep.sample(GRID, jax.random.key(0), 5, "grid")
    with pytest.raises(ValueError, match="n must be a positive int"):
        sweep.make_sampler("quasi", SPACE, jax.random.key(0)).ask(0)


# ------------------------------------------------------------------------------ ids


def _values(**changes: Any) -> dict[str, Any]:
    """HParams values as ``plan`` records them (floats, or None) with ``changes``."""
    values = {name: None if v is None else float(v) for name, v in train.HParams()._asdict().items()}
    return values | changes


def test_ids_are_pinned() -> None:
    """v2 and v1 ids of one plan, as computed by this code and (v1) by deepopt before the split."""
    space = {"learning_rate": sweep.grid([0.1, 0.01]), "l2": 0.001}
    runs = sweep.plan(ADAM, space, key=jax.random.key(0), num_configs=None, sampler="grid", seeds=2, data_digest=DIGEST)
    assert [r.id for r in runs] == ["abe0224ce02d4ec5", "be444fb13d85811a", "e0986f0a58514632", "1507c166e58dfb4a"]
    assert sweep.legacy_config_id(runs[0].config, runs[0].hparams) == "3de9ca339cf4b88e"
    assert list(sweep.legacy_ids(runs, DIGEST)) == [
        "21d3a8bca1765986", "375d0ee8627c1287", "d5ef90b02e9278ca", "d4ef6634ef29b463"
    ]


def test_a_new_field_at_its_default_keeps_every_id(monkeypatch: pytest.MonkeyPatch) -> None:
    config, values = ADAM, _values(learning_rate=0.3)
    before = sweep.config_id(config, values)

    # A Config with one more field (as Config.model was added), at its default, has the same id.
    Extended = dataclasses.make_dataclass("Config", [("precision", str, "default")], bases=(train.Config,), frozen=True)
    extended = Extended(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    assert sweep.config_id(extended, values) == before
    assert sweep.config_id(dataclasses.replace(extended, precision="bf16"), values) != before

    # One more HParams field with a default.
    fields = train.HParams._fields + ("momentum_decay",)
    defaults = tuple(train.HParams._field_defaults[name] for name in train.HParams._fields) + (0.5,)
    monkeypatch.setattr(train, "HParams", collections.namedtuple("HParams", fields, defaults=defaults))
    assert sweep.config_id(config, values | {"momentum_decay": 0.5}) == before
    assert sweep.config_id(config, values | {"momentum_decay": 0.25}) != before

    # The same through the digest itself: an extra {name: default} entry on both sides.
    config_values, config_defaults = train.describe_config(config), sweep.store.config_defaults(type(config))
    digest = sweep.store._config_digest
    hparams_defaults = sweep.store.hparams_defaults()
    assert digest(config_values, config_defaults, values, hparams_defaults) == before
    assert (
        digest(config_values | {"new": [1, 2]}, config_defaults | {"new": (1, 2)}, values, hparams_defaults) == before
    )


def test_config_id_equals_the_written_out_digest_for_many_configs() -> None:
    """config_id caches Δ(Config) per Config and the HParams defaults' JSON: the same ids as the formula."""
    digest, config_defaults = sweep.store._config_digest, sweep.store.config_defaults(train.Config)
    hparams_defaults = sweep.store.hparams_defaults()
    configs = (ADAM, dataclasses.replace(ADAM, activation="tanh"), dataclasses.replace(ADAM, batch_size=16), train.Config((2, 3, 1)))
    for config in configs:
        for values in (_values(), _values(learning_rate=0.3), _values(l2=0.5, keep_prob=0.75)):
            expected = digest(train.describe_config(config), config_defaults, values, hparams_defaults)
            assert sweep.config_id(config, values) == expected
            assert sweep.config_id(config, values) == expected  # a second call, from the cache
    assert len({sweep.config_id(c, _values()) for c in configs}) == len(configs)


CANONICAL_VALUES = (
    None, True, False, 0, -7, 2**70, 0.0, -0.0, 1.0, 0.1, 1e-05, 5e-324, 1e16, 1.7976931348623157e308, -2.5e-300,
    np.float64(0.3), np.float32(0.1).item(), "relu", "naïve \"q\"", [1, 2.5, None], (3, "a"), {"b": 1, "a": [0.5]},
)


@pytest.mark.parametrize("value", CANONICAL_VALUES, ids=repr)
def test_canonical_text_is_json_text(value: Any) -> None:
    """Ids compare values by their canonical JSON: the direct path for scalars writes what json.dumps writes."""
    assert sweep.store._canonical(value) == json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))


@pytest.mark.parametrize("value", (float("nan"), float("inf"), -float("inf"), np.float64("nan")))
def test_canonical_text_refuses_non_finite_floats_as_json_does(value: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        sweep.store._canonical(value)


def test_json_round_trip_is_what_a_results_file_gives_back() -> None:
    """A row built directly equals json.loads(json.dumps(row)): tuples become lists, numpy floats plain floats."""
    row = {
        "id": "abc", "seed": 0, "key": (0, 42), "diverged": False, "final_cost": 0.123456789012345,
        "dev_accuracy": np.float64(0.875), "none": None, "negative_zero": -0.0,
        "config": {"layer_sizes": (2, 4, 1), "nested": [{"x": (1.5, 2)}], "early_stopping": None},
        "hparams": {"learning_rate": 5e-324, "l2": 1e16},
    }
    expected = json.loads(json.dumps(row, allow_nan=False))
    got = sweep.store.json_round_trip(row)
    assert got == expected and json.dumps(got) == json.dumps(expected)
    assert type(got["dev_accuracy"]) is float and type(got["key"]) is list
    assert got["config"] is not row["config"]  # a fresh copy: editing a row never edits another's
    with pytest.raises(ValueError, match="JSON compliant"):
        sweep.store.json_round_trip({"final_cost": float("nan")})
    with pytest.raises(TypeError, match="not JSON serializable"):
        sweep.store.json_round_trip({"count": np.int64(3)})


def test_a_warm_sweep_skips_the_data_checks_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data check traces fit once per config, devices and data shapes; other data shapes trace again."""
    traces = []  # each Python call of fit is a trace (the compiled programs call no Python)
    real = train.fit
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: traces.append(1) or real(*args, **kwargs))
    train_set, dev_set = tiny_data()
    space = {"learning_rate": sweep.grid([0.1, 0.01])}
    config = dataclasses.replace(ADAM, epochs=2, batch_size=16)  # a config no other test traces first
    first = sweep.run(config, space, train_set, dev_set, key=jax.random.key(0), num_configs=None, sampler="grid")
    traced = len(traces)
    again = sweep.run(config, space, train_set, dev_set, key=jax.random.key(0), num_configs=None, sampler="grid")
    assert traced > 0 and len(traces) == traced and without_time(again.rows) == without_time(first.rows)
    fewer = data.Dataset(train_set.X[:40], train_set.y[:40])
    sweep.run(config, space, fewer, dev_set, key=jax.random.key(0), num_configs=None, sampler="grid")
    assert len(traces) > traced


def test_every_non_default_value_changes_the_id() -> None:
    base = sweep.config_id(ADAM, _values())
    ids = {base}
    for name, default in train.HParams()._asdict().items():
        changed = 0.5 if default is None else float(default) + 0.125
        ids.add(sweep.config_id(ADAM, _values(**{name: changed})))
    alternatives = {
        "layer_sizes": (2, 5, 1),
        "activation": "tanh",
        "init": "xavier",
        "optimizer": "gd",
        "schedule": "cosine",
        "batch_size": 16,
        "epochs": 5,
        "early_stopping": 3,
        "batchnorm": True,
    }
    assert set(alternatives) <= {field.name for field in dataclasses.fields(train.Config)}
    for name, value in alternatives.items():
        ids.add(sweep.config_id(dataclasses.replace(ADAM, **{name: value}), _values()))
    # a non-default value changed to another non-default value, and back to the default
    ids.add(sweep.config_id(ADAM, _values(learning_rate=0.3)))
    ids.add(sweep.config_id(ADAM, _values(learning_rate=0.4)))
    assert len(ids) == 1 + len(train.HParams._fields) + len(alternatives) + 2
    assert sweep.config_id(ADAM, _values(learning_rate=0.01)) == base  # 0.01 is the default
    # ids are v2: not the v1 digest of the same config
    assert sweep.legacy_config_id(ADAM, _values()) not in ids


def test_legacy_ids_only_for_configs_a_v1_file_can_hold() -> None:
    Extended = dataclasses.make_dataclass("Config", [("precision", str, "default")], bases=(train.Config,), frozen=True)
    extended = Extended(**{f.name: getattr(ADAM, f.name) for f in dataclasses.fields(ADAM)})
    assert sweep.legacy_config_id(extended, _values()) == sweep.legacy_config_id(ADAM, _values())
    assert sweep.legacy_config_id(dataclasses.replace(extended, precision="bf16"), _values()) is None
    # Config.model is a field added since v1: a module-trained config has no v1 id.
    assert sweep.legacy_config_id(train.Config(model=_Linear(), optimizer="adam"), _values()) is None
    assert len(sweep.V1_CONFIG_FIELDS) == 9 and len(sweep.V1_HPARAMS_FIELDS) == 15


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.Dense(1)(x)


# ------------------------------------------------------------------------------ resuming a v1 file


def _to_v1(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as deepopt before the split wrote them: v1 ``id`` and ``config_id``."""
    fingerprint = sweep.data_fingerprint(*tiny_data())
    legacy = []
    for row in rows:
        v1_config_id = sweep.legacy_config_id(sweep.config_of(row), row["hparams"])
        v1_id = sweep.legacy_run_id(v1_config_id, row["seed"], row["key"], fingerprint)
        legacy.append(row | {"id": v1_id, "config_id": v1_config_id})
    return legacy


def _write(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, allow_nan=False, separators=(", ", ": ")) + "\n" for row in rows))


def test_a_v1_results_file_resumes_without_recomputing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "results.jsonl"
    original = tiny_sweep(results_path=path).rows
    assert sweep.run_id(original[0]["config_id"], 0, original[0]["key"], sweep.data_fingerprint(*tiny_data())) == (
        original[0]["id"]
    )
    legacy = _to_v1(original)
    assert all(a["id"] != b["id"] and a["config_id"] != b["config_id"] for a, b in zip(legacy, original))
    _write(path, legacy)
    before = path.read_bytes()

    resumed = tiny_sweep(results_path=path)
    assert resumed.stats["runs_computed"] == 0 and resumed.stats["runs_resumed"] == len(original)
    assert resumed.rows == original  # the v2 ids, in memory
    strip = lambda row: {k: v for k, v in row.items() if k not in ("id", "config_id")}  # noqa: E731
    assert [strip(r) for r in resumed.rows] == [strip(r) for r in legacy]
    assert path.read_bytes() == before  # the file is not rewritten


def test_a_partly_v1_file_finishes_with_v2_rows(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "results.jsonl"
    original = tiny_sweep(results_path=path).rows
    _write(path, _to_v1(original)[:6])  # 3 configs × 2 seeds finished before the upgrade

    resumed = tiny_sweep(results_path=path)
    assert resumed.stats["runs_computed"] == 4 and resumed.stats["runs_resumed"] == 6
    assert [r["id"] for r in resumed.rows] == [r["id"] for r in original]
    assert [r["config_id"] for r in resumed.rows] == [r["config_id"] for r in original]
    assert [entry["seeds"] for entry in resumed.by_config()] == [2] * 5  # resumed and new rows group together
    on_disk = sweep.read_rows(path)
    assert [r["id"] for r in on_disk[6:]] == [r["id"] for r in original[6:]]  # appended rows carry v2 ids
    again = tiny_sweep(results_path=path)  # and the mixed file resumes completely
    assert again.stats["runs_computed"] == 0 and again.rows == resumed.rows


def test_a_v1_row_gets_the_fields_added_since(tmp_path: pathlib.Path) -> None:
    """A v1 row lacks a field added later (at its default, or it would have no v1 id): resuming fills it in."""
    path = tmp_path / "results.jsonl"
    row = {"id": "v1run", "config_id": "v1config", "config": {"epochs": 4}, "hparams": {"l2": 0.1}, "seed": 0}
    _write(path, [row])
    now = sweep.LegacyRun("v2run", "v2config", {"epochs": 4, "model": "mlp"}, {"l2": 0.1, "momentum_decay": 0.5})
    done = sweep.store._resume(path, ["other"], True, {"v1run": now})
    assert done == {
        "v2run": row
        | {"id": "v2run", "config_id": "v2config", "config": now.config, "hparams": now.hparams}
    }
    assert sweep.read_rows(path) == [row]


# ------------------------------------------------------------------------------ the package


OLD_NAMES = (
    "AUTO_CHUNK CACHE_BYTES_PER_DEVICE Choice Distribution Grid LOWER_IS_BETTER LogUniform OneMinusLogUniform "
    "Progress RUN_AXIS Results ResultsInUseError Run SAMPLERS Uniform auto_chunk_size check_space choice "
    "chunk_layout compile_count config_of data_fingerprint grid groups halton hparams_of key_of lock_results "
    "log_uniform one_minus_log_uniform plan read_rows run sample seed_keys static_fields traced_fields uniform "
    "working_set_bytes"
).split()


def test_the_old_names_import_from_deepopt_sweep() -> None:
    namespace: dict[str, Any] = {}
    exec(f"from deepopt.sweep import {', '.join(OLD_NAMES)}", namespace)  # noqa: S102
    assert all(name in namespace for name in OLD_NAMES)
    assert set(OLD_NAMES) <= set(sweep.__all__)
    assert callable(sweep.run) and callable(sweep.plan)  # functions, not submodules
    assert sweep.RUN_AXIS == "runs" and sweep.SAMPLERS == ("random", "quasi", "grid")
    assert isinstance(sweep.compile_count(), int)


CHAIN = ("options", "pareto", "host_keys", "space", "samplers", "processes", "store", "model_based", "planning", "jax_config", "engine", "chunks", "analysis", "reopen",
         "tensorboard_log", "search",
         "states", "state_files", "adaptive", "driver", "halving", "population", "median")


def test_submodules_import_only_earlier_ones() -> None:
    folder = pathlib.Path(sweep.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} == {"__init__", *CHAIN}
    for position, name in enumerate(CHAIN):
        tree = ast.parse((folder / f"{name}.py").read_text())
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "deepopt.sweep":
                used |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deepopt.sweep."):
                used.add(node.module.removeprefix("deepopt.sweep."))
        assert used <= set(CHAIN[:position]), (name, used)


def test_halton_points_are_the_sampler_coordinates() -> None:
    key = jax.random.key(3)
    space = {"learning_rate": sweep.uniform(0.0, 1.0), "l2": sweep.uniform(0.0, 1.0)}
    sampler = sweep.make_sampler("quasi", space, key)
    asked = sampler.ask(5) + sampler.ask(3)
    points = np.asarray([[a["learning_rate"], a["l2"]] for a in asked])
    np.testing.assert_array_equal(points, sweep.halton(key, 8, 2))
