"""The engine: compiled chunk programs over a device mesh, sized to the cache and to a memory budget.

A group (one static Config) is trained as fixed-shape chunks of ``C`` configs × every seed
(``chunk_layout``; ``chunk_size="auto"``: ``auto_chunk_size`` from ``working_set_bytes`` and
``CACHE_BYTES_PER_DEVICE``), under two nested ``vmap``s (configs outer, seeds inner, the key
unbatched along the configs: ``_chunk_program``), compiled once per shape (``_compile``, counted
by ``compile_count``) with the configs sharded over ``Mesh(devices, (RUN_AXIS,))`` and the seed
keys and data replicated, each device running its own configs with no collective until the
outputs are gathered (``per_device``); ``fit_budget`` shrinks ``C`` until ``memory_analysis``
fits the budget, and ``_execute`` runs one chunk (``chunks.ChunkEngine`` drives them). Nothing here reads or writes files.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepopt import data as data_lib
from deepopt import init as init_lib
from deepopt import networks, optim, xla_options
from deepopt import train as train_lib
from deepopt.sweep import jax_config, store
from deepopt.sweep.planning import Run

RUN_AXIS = "runs"


# ------------------------------------------------------------------------------ compiled programs

_compilations = 0
_stage_compilations = 0


def compile_count() -> int:
    """How many chunk programs this process has compiled: whole runs (``sweep.run``) and stages alike.

    One per group and chunk shape, plus one per shrinking step of a group whose chunk exceeds the
    memory budget.
    """
    return _compilations


def state_compile_count() -> int:
    """How many of ``compile_count``'s programs were stage programs (``stage=True``: the adaptive searches')."""
    return _stage_compilations


def _chunk_program(
    config: train_lib.Config, key_impl: str, with_test: bool, dropout: bool, curves: bool = False, stage: bool = False
) -> Callable:
    """The one chunk program: ``C`` configs × ``S`` seeds of training, every per-run scalar of ``fit``.

    Two nested ``vmap``s: the outer one maps the configs with the key *unbatched*, the inner one the
    seeds, so whatever depends on the key alone (initial draws, each epoch's permutation and
    mini-batch gathers, dropout's uniform draws) is computed once per seed instead of once per run:
    every config's seed ``s`` trains with the same key, so nothing changes but the work.
    ``dropout=False`` (every run of the group has ``keep_prob == 1``) compiles the masks out. The
    scalars are ``train.final_metrics`` (``train_<metric>``, ``dev_<metric>``, ``final_cost``,
    divergence and early stopping), plus ``test_<metric>`` with a test split, ``(C · S,)`` each in
    plan order (config-major, then seed).

    A stage is what every search trains, in one of two forms (both static):

    - ``stage=False``, a whole run (``sweep.run``): ``(hp (C,), key_data (S, ...), train, dev, test)
      -> scalars``: ``init_state``, ``config.epochs`` epochs, the scalars: ``fit``'s own program.
      ``curves=True`` also returns ``curve_<name>`` ``(C · S, epochs)`` (``store.curve_names``: the
      training cost, the primary dev metric, the dev cost per epoch), from the same training.
    - ``stage=True``, a stage continued from states (the adaptive searches): ``(hp (C,), state (C,
      S, ...), key_data, fresh, epochs, train, dev, test) -> (state, scalars)``, the states' ``key``
      left out; ``fresh`` (start from ``init_state``) and ``epochs`` are traced, so one program
      serves every rung, bracket and generation; ``epochs`` one-epoch bodies of ``advance`` in a
      loop compute what ``fit`` computes straight through, bit for bit.
    """
    if stage and curves:
        raise ValueError("a stage program records no learning curves")

    def test_scalars(params: Any, model_state: Any, test_set: data_lib.Dataset) -> dict[str, jax.Array]:
        on_test = train_lib.evaluate_params(config, params, model_state, test_set)
        return {f"test_{name}": on_test[name] for name in config.task.metrics}

    def scalars_of(
        hp: train_lib.HParams, state: train_lib.TrainState, train_set: data_lib.Dataset,
        dev_set: data_lib.Dataset | None, test_set: data_lib.Dataset | None,
    ) -> dict[str, jax.Array]:
        scalars = train_lib.final_metrics(config, hp, state, train_set, dev_set)
        if with_test:
            scalars.update(test_scalars(*train_lib.result_params(config, state), test_set))
        return scalars

    def whole_run(
        hp: train_lib.HParams, key_data: jax.Array, train_set: data_lib.Dataset, dev_set: data_lib.Dataset | None,
        test_set: data_lib.Dataset | None,
    ) -> dict[str, jax.Array]:
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        if curves:  # fit's training bit for bit, plus the dev metrics after every epoch
            result, log = train_lib.fit_with_curves(config, hp, key, train_set, dev_set, dropout=dropout)
        else:
            result = train_lib.fit(config, hp, key, train_set, dev_set, dropout=dropout)
        scalars = {  # train.final_metrics' names and order, as a stage's
            **{f"train_{name}": value for name, value in result.train_metrics.items()},
            **{f"dev_{name}": value for name, value in result.dev_metrics.items()},
            **{name: value for name, value in result._asdict().items() if getattr(value, "ndim", None) == 0},
        }
        if with_test:
            scalars.update(test_scalars(result.params, result.bn_state, test_set))
        if curves:
            scalars.update({CURVE_PREFIX + name: value for name, value in store.curve_values(config.task, log).items()})
        return scalars

    def continued(
        hp: train_lib.HParams, state: train_lib.TrainState, key_data: jax.Array, fresh: jax.Array, epochs: jax.Array,
        train_set: data_lib.Dataset, dev_set: data_lib.Dataset | None, test_set: data_lib.Dataset | None,
    ) -> tuple[train_lib.TrainState, dict[str, jax.Array]]:
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        state = jax.lax.cond(
            fresh,
            lambda: train_lib._init_state(config, hp, key, train_set.X, None)._replace(key=None),
            lambda: state,
        )

        def one_epoch(_: Any, current: train_lib.TrainState) -> train_lib.TrainState:
            return train_lib._advance(config, dropout, 1, False, False, hp, current, train_set, dev_set)[0]

        state = jax.lax.fori_loop(0, epochs, one_epoch, state._replace(key=key))
        return state._replace(key=None), scalars_of(hp, state, train_set, dev_set, test_set)

    if not stage:
        over_configs = jax.vmap(jax.vmap(whole_run, in_axes=(None, 0, None, None, None)),
                                in_axes=(0, None, None, None, None))

        def whole_program(hp: train_lib.HParams, key_data: jax.Array, *splits: data_lib.Dataset | None) -> Any:
            by_config = over_configs(hp, key_data, *splits)  # (C, S) scalars, (C, S, epochs) curves
            return {name: value.reshape(-1, *value.shape[2:]) for name, value in by_config.items()}

        return whole_program

    over_configs = jax.vmap(jax.vmap(continued, in_axes=(None, 0, 0, None, None, None, None, None)),
                            in_axes=(0, 0, None, None, None, None, None, None))

    def stage_program(hp: train_lib.HParams, state: Any, key_data: jax.Array, fresh: jax.Array, epochs: jax.Array,
                      *splits: data_lib.Dataset | None) -> Any:
        state, by_config = over_configs(hp, state, key_data, fresh, epochs, *splits)
        return state, {name: value.reshape(-1) for name, value in by_config.items()}

    return stage_program


def gather_runs(outputs: Any) -> Any:
    """Every leaf of ``outputs`` all-gathered along ``RUN_AXIS`` (leading axis): the local runs → every run, in order."""
    return jax.tree.map(lambda x: jax.lax.all_gather(x, RUN_AXIS, axis=0, tiled=True), outputs)


def per_device(program: Callable, mesh: Mesh, in_specs: Any, out_specs: Any, gather: Callable[[Any], Any]) -> Callable:
    """``program`` run by each device of ``mesh`` on its own shard of the runs: ``jax.shard_map`` over ``RUN_AXIS``.

    Each device runs ``program`` on its local configs with no collective until ``gather`` (applied
    to its outputs, e.g. ``gather_runs``) at the end. Under a sharded ``jit`` instead, the halting
    passes' ``while`` loop (it runs while any run of the chunk asks) is an all-reduce across the
    devices every epoch, which holds them in lockstep; per device is faster, with the same bits
    (measurements: docs/engine-measurements.md).
    """

    def local(*args: Any) -> Any:
        return gather(program(*args))

    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def runs_per_device(config: train_lib.Config) -> bool:
    """Whether ``config``'s programs run through ``per_device``: the built-in MLP's do.

    A ``Config.model``'s stay one sharded ``jit`` over the mesh: under ``shard_map``, JAX 0.10's
    batching rule of a convolution whose kernel is batched (a vmapped CNN's backward pass) raises
    ``NotImplementedError`` once its output carries the manual mesh's sharding.
    """
    return config.model is None


def sharded_program(
    config: train_lib.Config, program: Callable, mesh: Mesh, in_specs: Any, out_specs: Any,
    gather: Callable[[Any], Any],
) -> Callable:
    """``per_device(program, ...)`` where ``runs_per_device(config)``, else ``program`` (jit it with shardings)."""
    return per_device(program, mesh, in_specs, out_specs, gather) if runs_per_device(config) else program


@jax_config.cache_per_config(maxsize=32)
def _compile(
    config: train_lib.Config,
    configs: int,
    seeds: int,
    key_impl: str,
    key_shape: tuple[int, ...],
    dtype: str,
    data_shapes: tuple,
    devices: tuple,
    with_test: bool,
    dropout: bool,
    curves: bool = False,
    stage: bool = False,
) -> tuple[Any, int]:
    """Compile the chunk program (``_chunk_program``) for ``configs`` × ``seeds`` runs, configs sharded over ``devices``.

    The hyperparameters (and a stage's states) are sharded by config, the seed keys and the data
    replicated; each device runs its own configs (``sharded_program``); the scalars are gathered,
    a stage's new states stay sharded. Returns the program and its bytes per device.
    """
    global _compilations, _stage_compilations
    _compilations += 1
    _stage_compilations += stage
    mesh = Mesh(np.asarray(devices), (RUN_AXIS,))
    by_run, replicated = NamedSharding(mesh, P(RUN_AXIS)), NamedSharding(mesh, P())
    hp, datasets = abstract_inputs(configs, dtype, data_shapes, train_lib.param_dtype(config, dtype))
    keys = jax.ShapeDtypeStruct((seeds, *key_shape), jnp.uint32)
    data_specs, data_shardings = tuple(P() for _ in datasets), tuple(None if d is None else replicated for d in datasets)
    program = _chunk_program(config, key_impl, with_test, dropout, curves, stage)
    if stage:
        per_run = state_shape(config, datasets[0], np.zeros(key_shape, np.uint32), key_impl)
        state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((configs, seeds, *leaf.shape), leaf.dtype), per_run)
        scalar_bool, scalar_int = jax.ShapeDtypeStruct((), jnp.bool_), jax.ShapeDtypeStruct((), jnp.int32)
        jitted = jax.jit(
            sharded_program(config, program, mesh, (P(RUN_AXIS), P(RUN_AXIS), P(), P(), P(), *data_specs),
                            (P(RUN_AXIS), P()), lambda outputs: (outputs[0], gather_runs(outputs[1]))),
            in_shardings=(by_run, by_run, replicated, replicated, replicated, *data_shardings),
            out_shardings=(by_run, replicated),
        )
        lowered = jitted.lower(hp, state, keys, scalar_bool, scalar_int, *datasets)
    else:
        jitted = jax.jit(
            sharded_program(config, program, mesh, (P(RUN_AXIS), P(), *data_specs), P(), gather_runs),
            in_shardings=(by_run, replicated, *data_shardings), out_shardings=replicated,
        )
        lowered = jitted.lower(hp, keys, *datasets)
    compiled = lowered.compile(compiler_options=xla_options.compiler_options(devices[0].platform))
    stats = compiled.memory_analysis()
    size = (
        0
        if stats is None
        else (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        )
    )
    return compiled, int(size)


def state_shape(config: train_lib.Config, example: data_lib.Dataset, key_data: np.ndarray, key_impl: str) -> Any:
    """The abstract per-run ``TrainState`` (``key=None``) of ``config`` for data like ``example``."""
    key = jax.eval_shape(  # the key's shape and dtype only: wrapping real data would compile a program
        functools.partial(jax.random.wrap_key_data, impl=key_impl), jax.ShapeDtypeStruct(key_data.shape, np.uint32)
    )
    abstract = train_lib._state_shape(
        config, tuple(example.X.shape), jnp.dtype(example.X.dtype), tuple(key.shape), key.dtype
    )
    return abstract._replace(key=None)


def abstract_hparams(shape: tuple[int, ...], dtype: Any) -> train_lib.HParams:
    """``HParams`` with every field abstract, of ``shape`` and ``dtype`` (as ``train.prepare_hparams`` casts them)."""
    return train_lib.HParams(**{name: jax.ShapeDtypeStruct(shape, dtype) for name in train_lib.HParams._fields})


def abstract_inputs(
    configs: int, dtype: str, data_shapes: tuple, hparams_dtype: Any = None
) -> tuple[train_lib.HParams, list[data_lib.Dataset | None]]:
    """A chunk program's abstract ``HParams`` (``(configs,)`` per field) and splits (``None`` kept), for ``lower``.

    ``dtype`` is the data's; ``hparams_dtype`` the run's (``train.param_dtype``: float32 under
    16-bit data; default ``dtype``). ``data_shapes`` holds ``(X shape, y shape, y dtype)`` per
    split (``split_shapes``): class ids are int32, a regression's targets the data's float dtype.
    """
    hp = abstract_hparams((configs,), dtype if hparams_dtype is None else hparams_dtype)
    datasets = [
        None
        if shapes is None
        else data_lib.Dataset(jax.ShapeDtypeStruct(shapes[0], dtype),
                              jax.ShapeDtypeStruct(shapes[1], shapes[2] if len(shapes) > 2 else jnp.int32))
        for shapes in data_shapes
    ]
    return hp, datasets


def split_bytes(splits: Sequence[data_lib.Dataset | None]) -> int:
    """Bytes of the host splits (None left out): what every device holds besides its chunks."""
    return sum(s.X.nbytes + s.y.nbytes for s in splits if s is not None)


def split_shapes(splits: Sequence[data_lib.Dataset | None]) -> tuple:
    """``(X shape, y shape, y dtype)`` of each host split (None kept): what the compiled programs are keyed on."""
    return tuple(None if s is None else (s.X.shape, s.y.shape, str(s.y.dtype)) for s in splits)


def replicate_splits(mesh: Mesh, splits: Sequence[data_lib.Dataset | None]) -> list[data_lib.Dataset | None]:
    """Host splits (``data.check_dataset``'s: ``y`` int32 class ids or float targets) replicated on every device of ``mesh``."""
    replicated = NamedSharding(mesh, P())
    return [
        None if s is None else data_lib.Dataset(_global_array(s.X, replicated), _global_array(s.y, replicated))
        for s in splits
    ]


def _global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host value on every process (each fills its own devices)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


CURVE_PREFIX = "curve_"  # chunk outputs holding per-epoch curves rather than per-run scalars
AUTO_CHUNK = "auto"
CACHE_BYTES_PER_DEVICE = 8 * 2**20  # the per-device working set that ran fastest here (see WORKSPACE.md)


def working_set_bytes(
    config: train_lib.Config, num_examples: int, dtype: Any = jnp.float32, example_shape: Sequence[int] | None = None
) -> int:
    """Bytes one run touches every step: parameters, gradients, optimizer state and one mini-batch's activations.

    ``itemsize · (P · (2 + state slots) + 4 · batch · Σ hidden widths)`` with ``P`` parameters, from
    the shapes of ``init.mlp`` and the optimizer's ``init`` (nothing is computed or compiled). For a
    ``Config.model`` (whose ``example_shape``, one example's input shape, is then needed) the
    activations are what the backward pass keeps: the bytes of the residuals of one mini-batch's
    ``jax.vjp`` through the module's training ``apply`` (``module_residual_bytes``, abstract), so a
    recurrent or attention module whose residuals are large gets small chunks.
    """
    batch = num_examples if config.batch_size is None else min(config.batch_size, num_examples)
    if config.model is None:
        params = jax.eval_shape(
            lambda: init_lib.mlp(
                jax.random.key(0), config.layer_sizes, config.init, 1.0, dtype=dtype, batchnorm=config.batchnorm
            )
        )
        activation_bytes = 4 * batch * sum(config.layer_sizes[1:-1]) * np.dtype(dtype).itemsize
    else:
        if example_shape is None:
            raise ValueError("working_set_bytes of a Config.model needs example_shape (one example's input shape)")
        params, activation_bytes = module_residual_bytes(config, batch, tuple(example_shape), np.dtype(dtype).name)
    state = jax.eval_shape(optim.get(config.optimizer).init, params)
    param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    return int(2 * param_bytes + state_bytes + activation_bytes)


@functools.lru_cache(maxsize=64)
def module_residual_bytes(
    config: train_lib.Config, batch: int, example_shape: tuple[int, ...], dtype: str
) -> tuple[Any, int]:
    """``(abstract params, bytes)`` of ``Config.model``: the residuals its backward pass keeps for one mini-batch.

    The leaves of ``jax.vjp``'s pullback of the training ``apply`` (``networks.FlaxModule``, its
    layers as the sweep traces them) with respect to the parameters, found with ``jax.eval_shape``:
    nothing is computed or compiled.
    """
    network = networks.network_of(config)

    def residuals(X: jax.Array) -> tuple[Any, list[jax.Array]]:
        params, model_state = network.init(jax.random.key(0), X, 1.0, None)
        _, pullback = jax.vjp(
            lambda p: network.apply_train(p, model_state, X, jax.random.key(1), 1.0, False, None)[0], params
        )
        return params, jax.tree.leaves(pullback)

    params, saved = jax.eval_shape(residuals, jax.ShapeDtypeStruct((batch, *example_shape), np.dtype(dtype)))
    return params, int(sum(leaf.size * leaf.dtype.itemsize for leaf in saved))


def auto_chunk_size(
    config: train_lib.Config,
    num_examples: int,
    num_devices: int,
    dtype: Any = jnp.float32,
    example_shape: Sequence[int] | None = None,
) -> int:
    r"""Runs per chunk so that each device's runs fit ``CACHE_BYTES_PER_DEVICE``: :math:`D \cdot 2^k`.

    ``k`` is the largest with :math:`2^k \cdot` ``working_set_bytes`` within the budget (at least one run
    per device): the chunk size that ran fastest on the CPU (measurements: docs/engine-measurements.md).
    """
    per_run = max(working_set_bytes(config, num_examples, dtype, example_shape), 1)
    runs_per_device = max(CACHE_BYTES_PER_DEVICE // per_run, 1)
    return num_devices * (1 << (int(runs_per_device).bit_length() - 1))


def spread_over_streams(chunk_size: int, group_runs: int, num_devices: int, streams: int) -> int:
    r"""``chunk_size`` lowered so that a group's chunks fill ``streams`` concurrent chunks: :math:`D \cdot 2^k`.

    ``k`` is the smallest with :math:`2^k \ge \lceil \text{group\_runs} / (D \cdot \text{streams}) \rceil`:
    a group smaller than the cache allows would otherwise run as one chunk on one core of a
    multi-core CPU (``concurrent_chunks``). ``streams`` ≤ 1: unchanged.
    """
    if streams <= 1:
        return chunk_size
    runs_per_device = max(-(-group_runs // (streams * num_devices)), 1)
    return max(min(chunk_size, num_devices * (1 << (runs_per_device - 1).bit_length())), num_devices)


def chunk_layout(group_size: int, chunk_size: int | None, num_devices: int) -> int:
    """Runs per chunk: a multiple of ``num_devices``; the last chunk of a group is padded.

    ``chunk_size=None``: the whole group in one chunk. Otherwise ``min(chunk_size, 2^⌈log2 n⌉)``:
    a group smaller than ``chunk_size`` is padded up to a power of two, so groups of similar size
    (a coarse-to-fine round after a coarse one) share the compiled program of that shape.
    """
    if chunk_size is None:
        return _round_up(group_size, num_devices)
    return _round_up(min(chunk_size, 1 << (group_size - 1).bit_length()), num_devices)


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def concurrent_chunks(devices: Sequence[Any], bytes_per_device: int = 0, budget: int | None = None) -> int:
    r"""How many chunks of one group run at once: :math:`\max(1, \lfloor \text{cores} / D\rfloor)` on the CPU.

    One XLA:CPU execution of a small-net chunk keeps about one core busy (its while loop runs
    step after step), so with ``D`` CPU devices in the mesh and more cores than devices, as many
    chunks as there are cores per device are dispatched from threads at once: each is the same
    compiled program on its own inputs, so every result is the same bit for bit (two chunks at once
    take far less than twice one: docs/engine-measurements.md). With ``budget`` (bytes per device), at most
    ``budget // bytes_per_device`` chunks are in flight. Accelerators, and meshes spanning several
    processes (whose collectives must meet in the same order everywhere), run one chunk at a time.
    """
    if jax.process_count() > 1 or any(d.platform != "cpu" for d in devices):
        return 1
    streams = max(cpu_cores() // max(len(devices), 1), 1)
    if budget is not None and bytes_per_device > 0:
        streams = min(streams, max(budget // bytes_per_device, 1))
    return streams


def in_order(compute: Callable[[Any], Any], items: Iterable[Any], streams: int) -> Iterator[Any]:
    """``compute(item)`` for each of ``items``, yielded in order, with up to ``streams`` computing at once (threads).

    ``streams == 1`` computes each in this thread when it is asked for. Otherwise a sliding window:
    ``streams`` items are in flight, and the next one is dispatched as soon as the oldest is taken,
    so a chunk's rows are recorded (and a kill loses) at most ``streams`` chunks after it ran.
    ``items`` is read lazily, in the calling thread, as each is dispatched: a generator can prepare
    an item there (gather its states, say) just before it is computed.
    """
    if streams <= 1:
        for item in items:
            yield compute(item)
        return
    pending = iter(items)
    pool = jax_config.ThreadPool(max_workers=streams, thread_name_prefix="deepopt-chunk")
    try:
        in_flight = collections.deque(pool.submit(compute, item) for item in itertools.islice(pending, streams))
        for item in pending:
            result = in_flight.popleft().result()
            in_flight.append(pool.submit(compute, item))
            yield result
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------ groups and chunks


def _check_data(
    grouped: Mapping[train_lib.Config, Sequence[Run]],
    splits: Sequence[Any],
    key: jax.Array,
    devices: Sequence[Any] | None = None,
) -> None:
    """``fit``'s own checks (``train.check_split``) of train, dev and test against every group.

    Then ``eval_shape`` traces ``fit`` once per group (what is left: the config against the data's
    shapes), on abstract hyperparameters, as the chunk program calls it (one run per device under
    ``per_device`` over ``devices``, default ``jax.devices()``, where ``runs_per_device``): the
    trace is cached and reused by the group's compilation, so it costs no second trace, and a
    later sweep with the same config, devices and data shapes skips it (``_trace_fit``).
    """
    train_set, dev_set, test_set = splits
    dtype = train_set.X.dtype
    mesh_devices = tuple(jax.devices() if devices is None else devices)
    abstract_key = jax.ShapeDtypeStruct(jnp.shape(key), key.dtype)
    for config, group_runs in grouped.items():
        for name, split in (("train", train_set), ("dev", dev_set), ("test", test_set)):
            if split is not None:  # exactly fit's checks, in Python, before anything is traced
                train_lib.check_split(name, split, config, on_host=True)
        columns = {  # what fit's own checks would say of the runs' concrete values, one column per field
            name: None if any(run_.hparams[name] is None for run_ in group_runs)
            else np.asarray([run_.hparams[name] for run_ in group_runs], np.float64)
            for name in train_lib.HParams._fields
        }
        try:
            train_lib.validate_hparams_for_config(
                config, train_lib.HParams(**columns), tuple(train_set.X.shape[1:]), str(dtype)
            )
        except ValueError as error:  # the columns hold one value per run: an index is (run,)
            index = getattr(error, "index", None)
            where = "" if index is None else f" (config index {group_runs[index[0]].config_index})"
            raise ValueError(f"space: {getattr(error, 'reason', error)}{where}") from None
        dropout = _group_dropout(group_runs)  # as the group's program will call fit: one trace serves both
        _trace_fit(
            config, dropout, mesh_devices, abstract_key, str(dtype), _split_avals(train_set), _split_avals(dev_set)
        )


def _split_avals(split: Any) -> tuple[tuple[tuple[int, ...], str], ...] | None:
    """A split's ``(shape, dtype)`` per array (None for no split): what ``_trace_fit`` is keyed on."""
    return None if split is None else tuple((tuple(np.shape(part)), str(part.dtype)) for part in split)


@jax_config.cache_per_config(maxsize=64)
def _trace_fit(
    config: train_lib.Config, dropout: bool, devices: tuple, key: jax.ShapeDtypeStruct, dtype: str,
    train_avals: tuple, dev_avals: tuple | None,
) -> None:
    """``_check_data``'s trace of ``fit`` on abstract values, once per process for each of its arguments.

    A trace that raises is not remembered (``lru_cache`` keeps only returns), so a bad group
    raises again each call; a warm sweep skips the retrace (some milliseconds a group).
    """
    mesh = Mesh(np.asarray(devices), (RUN_AXIS,))
    train_set, dev_set = (
        None if avals is None else data_lib.Dataset(*(jax.ShapeDtypeStruct(shape, kind) for shape, kind in avals))
        for avals in (train_avals, dev_avals)
    )

    def one_run(h: train_lib.HParams, k: jax.Array, train: Any, dev: Any) -> Any:
        return train_lib.fit(config, h, k, train, dev, dropout=dropout)

    if runs_per_device(config):  # one run per device, its hparams the device's row
        def one_run_per_device(h: train_lib.HParams, *args: Any) -> Any:
            return jax.tree.map(lambda leaf: leaf[None], one_run(jax.tree.map(lambda v: v[0], h), *args))

        program = per_device(one_run_per_device, mesh, (P(RUN_AXIS), P(), P(), P()), P(RUN_AXIS), lambda out: out)
        jax.eval_shape(program, abstract_hparams((mesh.size,), train_lib.param_dtype(config, dtype)), key, train_set,
                       dev_set)
    else:
        jax.eval_shape(one_run, abstract_hparams((), train_lib.param_dtype(config, dtype)), key, train_set, dev_set)


def _group_dropout(group_runs: Sequence[Run]) -> bool:
    """Whether the group's program needs dropout: some run has ``keep_prob < 1``."""
    return train_lib.resolve_dropout(np.asarray([run_.hparams["keep_prob"] for run_ in group_runs], np.float64))


def _seeds_per_config(group_runs: Sequence[Run]) -> int:
    """``S``: a group's runs are every one of its configs × the same ``S`` seeds, config-major (as ``plan`` makes them)."""
    seeds = 1
    while seeds < len(group_runs) and group_runs[seeds].config_index == group_runs[0].config_index:
        seeds += 1
    layout_ok = len(group_runs) % seeds == 0 and all(
        run_.seed == i % seeds and run_.key_data == group_runs[i % seeds].key_data for i, run_ in enumerate(group_runs)
    )
    if not layout_ok:
        raise ValueError("a sweep group must hold every config × the same seeds, config-major (sweep.plan's order)")
    return seeds


def fit_budget(
    compile_at: Callable[[int], tuple[Any, int]], configs: int, num_devices: int, budget: int | None,
    data_bytes: int, seeds: int, config: train_lib.Config,
) -> tuple[int, Any, int]:
    """``(C, program, bytes per device)``: ``C`` configs per chunk shrunk until ``compile_at(C)``'s bytes fit ``budget``.

    Bytes per device are modelled as ``data + per_config · C / D``; ``per_config`` is read off the
    compiled program, then the largest fitting ``C`` (a multiple of the ``D`` devices) is compiled
    and checked again. ``budget`` None: ``C`` as given.
    """
    compiled, size = compile_at(configs)
    while budget is not None and size > budget:
        if configs == num_devices:
            raise ValueError(
                f"memory_budget_bytes={budget} is below what one config ({seeds} seeds) per device takes "
                f"({size} bytes for {config})"
            )
        per_config = max(size - data_bytes, 1) / (configs // num_devices)
        fitting = max(int((budget - data_bytes) // per_config), 1) * num_devices
        configs = min(fitting, configs - num_devices)
        compiled, size = compile_at(configs)
    return configs, compiled, size


def _group_hparams(
    values: Sequence[Mapping[str, Any]], config: train_lib.Config, dtype: Any
) -> dict[str, np.ndarray]:
    """Every HParams field of ``values`` (one ``{field: value}`` per config) as a host array ``(n,)`` of the run dtype.

    ``None`` fields are derived from ``config`` (``train.hparam_defaults``), as
    ``train.prepare_hparams`` and ``broadcast_hparams`` would, in numpy (casting a float64 column
    rounds to nearest as XLA's convert does): a sweep's first call compiles no program for it.
    """
    defaults = train_lib.hparam_defaults(config)
    columns = {}
    for name in train_lib.HParams._fields:
        column = [hparams[name] for hparams in values]
        if all(v is None for v in column):
            column = [defaults[name]] * len(values)
        columns[name] = np.asarray(column, np.float64).astype(dtype)
    train_lib.validate_hparams(train_lib.HParams(**columns))
    return columns


def _execute(
    compiled: Any,
    mesh: Mesh,
    hp_host: Mapping[str, np.ndarray],
    key_host: np.ndarray,
    local: np.ndarray,
    device_data: Sequence[data_lib.Dataset | None],
) -> dict[str, np.ndarray]:
    """Run one chunk: configs ``local`` (padding included) sharded over ``mesh`` × every seed key; host outputs."""
    by_run, replicated = NamedSharding(mesh, P(RUN_AXIS)), NamedSharding(mesh, P())
    hp = train_lib.HParams(**{name: _global_array(values[local], by_run) for name, values in hp_host.items()})
    outputs = compiled(hp, _global_array(key_host, replicated), *device_data)
    return {name: np.asarray(value) for name, value in outputs.items()}
