r"""The parallel hyperparameter sweep: many ``fit`` runs, compiled once per group of static choices.

A search ``space`` maps field names to distributions or fixed values. A field of ``train.HParams``
is traced (any distribution); a field of ``train.Config`` is static (a ``choice``/``grid`` of
values, or a fixed value), and every distinct combination of static values is one *group*: one
compiled program, whatever the number of configs in it.

``run`` samples ``num_configs`` configs (``"random"``, ``"quasi"`` = scrambled Halton, or
``"grid"`` = the Cartesian product), replicates each with ``seeds`` PRNG keys and validates every
value before compiling. Per group it compiles ``fit``, ``vmap``-ed over configs and seeds, once
for one chunk shape: ``C`` configs × every seed (``chunk_layout``; ``chunk_size="auto"`` sizes it
to a per-device cache budget, and fewer configs are taken when ``memory_budget_bytes`` per device,
read from ``memory_analysis()``, demands it). It cuts the group into chunks of that shape (the
last padded with copies of its last config, so ``C`` is a multiple of the device count) and
shards each chunk's config axis over a ``Mesh`` of every device, several processes included. The
seed keys are not batched along a chunk's config axis, so work that depends on the key alone
(permutations, mini-batch gathers, dropout's draws) is done once per seed, not once per run.
Each finished chunk is appended to ``results_path`` as JSON lines in one write, flushed and fsynced; with
``resume=True`` rows already there are skipped by id, so a killed sweep restarted with the same
arguments recomputes only unfinished chunks, with the same program, and ends with the same rows.

Samplers share one interface (``make_sampler(name, space, key)``): ``ask(n)`` returns the next
``n`` assignments, deterministic given the key, successive asks continuing one sequence;
``tell(assignments, values)`` reports what they scored (ignored by the three above). ``sample``
is a fresh sampler's first ask. Model-based samplers (``"tpe"``, or any Optuna sampler instance,
through ``OptunaSampler``: ``model_based``) condition their asks on what they were told: ``run``
then trains in rounds (ask ``C`` configs, train them as one chunk per group, tell all ``C``), and
``hyperband`` asks each bracket after the one before it is done.

A run's id (version 2) is a hash of its config's id, its seed index and key, and a fingerprint
of the data; the config's id hashes a version tag and only the Config and HParams fields whose
value differs from the field's default. The same arguments give the same ids, and adding a field
with a default to Config or HParams leaves every id unchanged. Files written with version 1 ids
(every field of the 9 Config and 15 HParams fields of that time) still resume: their rows are
matched by each planned run's v1 id and given its v2 id in memory; new rows carry v2 ids.

Distributions (``uniform``, ``log_uniform``, ``one_minus_log_uniform``, ``choice``, ``grid``) are
defined in ``space``, with their formulas.

The adaptive searches stop bad runs early or replace them, on runs that continue from their state
(``train.TrainState``), in one compiled program per group and chunk shape (the engine's chunk
program in its stage form): an algorithm decides the stages, ``driver.drive`` trains them:
``successive_halving`` and ``hyperband`` (Li et al., 2018; ``halving``), ``pbt``
(population-based training; ``population``) and ``median_stopping`` (Golovin et al., 2017;
``median``; it takes the shared ``Options``, ``options``). Their rows record ``epochs_trained`` and the rung and
bracket (or generation, parent and schedule); their states are checkpointed beside the results
file, so a killed search resumes where it was (``adaptive``). Every search runs over several
processes of ``jax.distributed`` too, with the same rows (``processes``; docs/multi-host.md).

Every call that writes ``results.jsonl`` records its method, space, metric and stats beside it
(``results.record.json``); ``load(path)`` reopens the file as the ``Results`` the calls returned.

Modules, each importing only from those before it:
``host_keys`` (Threefry key splits in numpy) -> ``space`` (distributions, field names) ->
``samplers`` (ask/tell, Halton) -> ``processes`` (what process 0 reads, every process gets) -> ``store`` (rows, ids, resume, the writer's lock) -> ``model_based`` (Optuna's samplers behind ask/tell) -> ``planning`` (``Run``, ``plan``, ``groups``, ``seed_keys``) ->
``jax_config`` (the caller's JAX configuration in threads and caches) -> ``engine`` (chunk sizes,
the one chunk program, whole runs or stages, compiled per group and shape, the mesh, one chunk's execution) ->
``chunks`` (``ChunkEngine``: the one chunk loop of every search, its rows, files and ``Progress``) -> ``analysis`` (``Results``, a row's Config /
HParams / key) -> ``reopen`` (the results record, ``load``) -> ``search`` (``run``) -> ``states``
(states on the host, one stage call) -> ``adaptive`` (``Search``: plan, file, manifest, checkpoints, chunks)
-> ``driver`` (``Stage``, ``Algorithm``, ``drive``) -> ``halving`` (``successive_halving``, ``hyperband``) -> ``population`` (``pbt``, ``replay``) ->
``median`` (``median_stopping``); ``options`` (``Options``) imports none of them.
"""

from deepopt.sweep.adaptive import manifest_path, states_path
from deepopt.sweep.analysis import LOWER_IS_BETTER, BoundaryWarning, Results, config_of, hparams_of, key_of, retrain
from deepopt.sweep.engine import (
    AUTO_CHUNK,
    CACHE_BYTES_PER_DEVICE,
    RUN_AXIS,
    auto_chunk_size,
    chunk_layout,
    compile_count,
    concurrent_chunks,
    cpu_cores,
    working_set_bytes,
)
from deepopt.sweep.halving import hyperband, hyperband_brackets, rung_epochs, rung_sizes, successive_halving
from deepopt.sweep.population import Exploit, pbt, replay
from deepopt.sweep.reopen import load, record_path
from deepopt.sweep.median import median_stopping
from deepopt.sweep.options import Options
from deepopt.sweep.planning import Run, groups, legacy_ids, plan, seed_keys
from deepopt.sweep.model_based import MODEL_BASED_SAMPLERS, OptunaSampler, make_sampler, optuna_distributions, sample
from deepopt.sweep.samplers import SAMPLERS, GridSampler, QuasiSampler, RandomSampler, Sampler, halton
from deepopt.sweep.planning import plan_assignments
from deepopt.sweep.chunks import Progress
from deepopt.sweep.search import MODEL_BASED_ROUNDS, ask_size, run
from deepopt.sweep.space import (
    Choice,
    Distribution,
    Grid,
    LogUniform,
    OneMinusLogUniform,
    Uniform,
    check_space,
    choice,
    grid,
    log_uniform,
    one_minus_log_uniform,
    static_fields,
    traced_fields,
    uniform,
)
from deepopt.sweep.states import state_compile_count
from deepopt.sweep.store import (
    ID_VERSION,
    V1_CONFIG_FIELDS,
    V1_HPARAMS_FIELDS,
    LegacyRun,
    ResultsInUseError,
    config_id,
    curves_path,
    data_fingerprint,
    legacy_config_id,
    legacy_run_id,
    lock_results,
    read_curves,
    read_rows,
    run_id,
)

__all__ = [
    "BoundaryWarning",
    "hyperband",
    "hyperband_brackets",
    "load",
    "Exploit",
    "median_stopping",
    "Options",
    "manifest_path",
    "record_path",
    "pbt",
    "replay",
    "retrain",
    "rung_epochs",
    "rung_sizes",
    "state_compile_count",
    "states_path",
    "successive_halving",
    "curves_path",
    "read_curves",
    "MODEL_BASED_ROUNDS",
    "MODEL_BASED_SAMPLERS",
    "OptunaSampler",
    "ask_size",
    "optuna_distributions",
    "plan_assignments",
    "AUTO_CHUNK",
    "CACHE_BYTES_PER_DEVICE",
    "ID_VERSION",
    "LOWER_IS_BETTER",
    "RUN_AXIS",
    "SAMPLERS",
    "V1_CONFIG_FIELDS",
    "V1_HPARAMS_FIELDS",
    "Choice",
    "Distribution",
    "Grid",
    "GridSampler",
    "LegacyRun",
    "LogUniform",
    "OneMinusLogUniform",
    "Progress",
    "QuasiSampler",
    "RandomSampler",
    "Results",
    "ResultsInUseError",
    "Run",
    "Sampler",
    "Uniform",
    "auto_chunk_size",
    "check_space",
    "choice",
    "chunk_layout",
    "compile_count",
    "concurrent_chunks",
    "cpu_cores",
    "config_id",
    "config_of",
    "data_fingerprint",
    "grid",
    "groups",
    "halton",
    "hparams_of",
    "key_of",
    "legacy_config_id",
    "legacy_ids",
    "legacy_run_id",
    "lock_results",
    "log_uniform",
    "make_sampler",
    "one_minus_log_uniform",
    "plan",
    "read_rows",
    "run",
    "run_id",
    "sample",
    "seed_keys",
    "static_fields",
    "traced_fields",
    "uniform",
    "working_set_bytes",
]
