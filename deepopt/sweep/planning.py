"""The plan: every run of a sweep (config × seed) with its id, sampled and validated before anything compiles.

(Named ``planning``, not ``plan``, so that ``deepopt.sweep.plan`` stays the function.)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from deepopt import train as train_lib
from deepopt.sweep import host_keys, store
from deepopt.sweep.model_based import sample
from deepopt.sweep.space import _check_count, check_fields_read, static_fields
from deepopt.sweep.store import _plain, static_text


class Run(NamedTuple):
    """One planned training run: the ``index``-th of the sweep, config ``config_index``, seed ``seed``."""

    index: int
    id: str
    config_id: str
    config_index: int
    seed: int
    config: train_lib.Config
    hparams: dict[str, Any]
    key_data: tuple[int, ...]


def seed_keys(key: jax.Array, seeds: int) -> jax.Array:
    """The ``seeds`` model keys of a sweep run with ``key``: seed ``s`` of every config trains with key ``s``."""
    typed = _typed_key(key)
    return jax.random.wrap_key_data(seed_key_data(typed, seeds), impl=jax.random.key_impl(typed))


def seed_key_data(key: jax.Array, seeds: int) -> np.ndarray:
    """The words of ``seed_keys(key, seeds)`` on the host: ``(seeds, *key data shape)`` uint32.

    ``split(split(key)[1], seeds)``, through ``host_keys``: for a Threefry key in numpy (the same
    words, no XLA program to compile in a sweep's first call), for other keys by ``jax.random.split``.
    """
    model_key = host_keys.split_key(_typed_key(key), 2, 1)
    return host_keys.split_key_data(model_key, seeds)


def _typed_key(key: Any) -> jax.Array:
    """``key`` checked as ``fit`` checks it (``train.check_key``), as a typed key."""
    train_lib.check_key(key)
    return key if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


def check_plan_arguments(
    base_config: Any, hparams: Any, seeds: Any
) -> tuple[train_lib.HParams, int]:
    """``plan``'s checks of its arguments (a Config, HParams or None, a positive seed count); the HParams and seeds."""
    if not isinstance(base_config, train_lib.Config):
        raise TypeError(f"base_config must be a deepopt.train.Config, got {type(base_config).__name__}")
    hparams = train_lib.HParams() if hparams is None else hparams
    if not isinstance(hparams, train_lib.HParams):
        raise TypeError(f"hparams must be a deepopt.train.HParams, got {type(hparams).__name__}")
    return hparams, _check_count("seeds", seeds)


def plan(
    base_config: train_lib.Config,
    space: Mapping[str, Any],
    *,
    key: jax.Array,
    num_configs: int | None,
    seeds: int = 1,
    sampler: Any = "random",
    hparams: train_lib.HParams | None = None,
    data_digest: str = "",
) -> list[Run]:
    """Sample and validate the sweep's runs (config-major, then seed); nothing is compiled.

    A sampled config identical to an earlier one (same Config and HParams, as an all-discrete
    space sampled more often than it has combinations gives, or an empty space: every config is
    the base one) is planned once, under the index it was first sampled at: run ids are unique,
    and a sweep may therefore hold fewer than ``num_configs`` configs.

    Every static combination is built with ``dataclasses.replace(base_config, ...)`` (so new
    Config fields join the sweep by themselves) and every hyperparameter column is checked with
    ``train.validate_hparams``, whose error names the config index. Ids are v2
    (``store.config_id``, ``store.run_id``: the fields that differ from their defaults).
    """
    hparams, seeds = check_plan_arguments(base_config, hparams, seeds)
    key = _typed_key(key)
    sample_key = host_keys.split_key(key, 2, 0)  # jax.random.split(key)[0]
    assignments = sample(space, sample_key, num_configs, sampler)
    runs, _ = plan_assignments(base_config, space, assignments, key=key, seeds=seeds, hparams=hparams,
                               data_digest=data_digest)
    return runs


def plan_assignments(
    base_config: train_lib.Config,
    space: Mapping[str, Any],
    assignments: Sequence[Mapping[str, Any]],
    *,
    key: jax.Array,
    seeds: int = 1,
    hparams: train_lib.HParams | None = None,
    data_digest: str = "",
    first_config_index: int = 0,
    first_run_index: int = 0,
    seen: set[str] | None = None,
) -> tuple[list[Run], list[str]]:
    """The runs of sampled ``assignments`` (``plan`` after sampling), and each assignment's config id.

    Config ``i`` gets ``config_index = first_config_index + i`` and runs are numbered from
    ``first_run_index``; a config whose id is in ``seen`` (updated in place) is not planned again,
    so a model-based sweep can plan its rounds one at a time with ``plan``'s ids and checks.
    """
    hparams = train_lib.HParams() if hparams is None else hparams
    static = [name for name in space if name in static_fields()]
    traced = [name for name in space if name not in static_fields()]

    check_fields_read(base_config, space)
    configs: dict[tuple, train_lib.Config] = {}
    for assignment in assignments:
        combo = tuple(static_text(name, assignment[name]) for name in static)
        if combo not in configs:
            choices = {name: assignment[name] for name in static}
            try:
                configs[combo] = dataclasses.replace(base_config, **choices)
            except (TypeError, ValueError) as error:
                raise ValueError(f"space: the static choices {choices} make an invalid Config: {error}") from None

    columns = {  # a fixed None (init_scale, decay_epochs) means "derived from the Config": nothing to check
        name: np.asarray([a[name] for a in assignments]) for name in traced if space[name] is not None
    }
    try:
        train_lib.validate_hparams(hparams._replace(**columns))
    except train_lib.HParamsValueError as error:  # the columns hold one value per sampled config: an index is (position,)
        where = "" if error.index is None else f" (config index {first_config_index + error.index[0]})"
        raise ValueError(f"space: {error.reason}{where}") from None
    except TypeError as error:
        raise TypeError(f"space: {error}") from None

    key_data = [tuple(int(v) for v in words.reshape(-1)) for words in seed_key_data(key, seeds)]
    runs: list[Run] = []
    config_ids: list[str] = []
    seen = set() if seen is None else seen
    for position, assignment in enumerate(assignments):
        config = configs[tuple(static_text(name, assignment[name]) for name in static)]
        values = {name: (None if v is None else _plain(v)) for name, v in hparams._asdict().items()}
        values.update({name: _plain(assignment[name]) for name in traced})
        config_id = store.config_id(config, values)
        config_ids.append(config_id)
        if config_id in seen:  # the same Config and HParams again (an empty or all-discrete space): trained once
            continue
        seen.add(config_id)
        for seed in range(seeds):
            run_id = store.run_id(config_id, seed, key_data[seed], data_digest)
            runs.append(Run(first_run_index + len(runs), run_id, config_id, first_config_index + position, seed,
                            config, values, key_data[seed]))
    return runs, config_ids


def legacy_ids(runs: Sequence[Run], data_digest: str = "") -> dict[str, store.LegacyRun]:
    """``{v1 run id: LegacyRun}`` of the runs a v1 results file can hold (``store.legacy_config_id``).

    ``data_digest`` as given to ``plan``. What ``run`` resumes old files with.
    """
    legacy: dict[str, store.LegacyRun] = {}
    by_config: dict[str, tuple[str | None, dict[str, Any]]] = {}  # config_id -> (v1 config id, Config as JSON)
    for run_ in runs:
        if run_.config_id not in by_config:
            config = json.loads(json.dumps(train_lib.describe_config(run_.config)))  # as a row holds it
            by_config[run_.config_id] = (store.legacy_config_id(run_.config, run_.hparams), config)
        v1_config_id, config = by_config[run_.config_id]
        if v1_config_id is not None:
            v1_run_id = store.legacy_run_id(v1_config_id, run_.seed, run_.key_data, data_digest)
            legacy[v1_run_id] = store.LegacyRun(run_.id, run_.config_id, config, dict(run_.hparams))
    return legacy


def groups(runs: Sequence[Run]) -> dict[train_lib.Config, list[Run]]:
    """Runs grouped by their static Config (one compiled program each), in order of first appearance."""
    grouped: dict[train_lib.Config, list[Run]] = {}
    for run_ in runs:
        grouped.setdefault(run_.config, []).append(run_)
    return grouped
