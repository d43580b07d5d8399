"""A training run as pure, ``jit``-compiled functions: one whole run (``fit``), or an open one.

``fit(config, hp, key, train, dev)`` is a ``lax.scan`` over epochs with the mini-batches in an
inner ``lax.scan``. ``Config`` (static, hashable) fixes shapes and code; ``HParams`` (a pytree of
scalars) is traced, so one compiled program serves every hyperparameter value and key, and
``jax.vmap(lambda hp, k: fit(config, hp, k, train))`` trains many models at once.

The open run is the same computation cut into pieces: ``init_state`` makes a ``TrainState`` (a
public pytree of everything a run carries from one epoch to the next), ``advance`` trains it for
some epochs and returns it with an ``EpochLog`` of per-epoch metrics, and ``evaluate`` measures
it. Shuffling and dropout keys derive from the run key, the epoch and the batch index, so
``advance(a)`` then ``advance(b)`` equals ``advance(a + b)`` bit for bit, and ``fit`` is
``init_state``, ``advance(config.epochs)``, ``evaluate``, traced as one program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepopt import data as data_lib
from deepopt import init as init_lib
from deepopt import (
    batchnorm, model, modules, networks, optim, precision, schedules, tasks, vmap_hints, xla_options,
)
from deepopt.hparams import (  # noqa: F401 (re-exported)
    _HPARAM_RULES, HParams, HParamsValueError, broadcast_hparams, concrete_array, first_index, validate_hparams,
)
from deepopt.parameters import Params


KEEP_BEST = "keep_best"


@dataclasses.dataclass(frozen=True)
class Config:
    """Static choices of a run: everything that changes shapes or code. Hashable; one compilation each.

    Attributes:
      layer_sizes: ``(n_in, hidden..., n_out)`` of the built-in MLP; ``n_out = 1`` is binary,
        ``>= 2`` softmax. Leave it None when ``model`` is given.
      activation: hidden activation (``model.ACTIVATIONS``).
      init: initialization scheme (``init.SCHEMES``), ignored when ``fit`` gets ``init_params``.
      optimizer: ``optim.names()``.
      schedule: learning-rate schedule, ``schedules.names()``.
      batch_size: examples per update; None (or >= m) is full-batch gradient descent.
      epochs: passes over the training set.
      early_stopping: None (off); an int patience (stop updating once that many epochs pass
        without a dev improvement); or ``"keep_best"`` (train every epoch, keep the best). Either
        way ``fit`` returns the parameters of the best epoch (the task's primary dev metric, dev
        accuracy for classification; ties to the lower dev cost) and needs a dev set.
      batchnorm: batch-normalize every hidden layer before its activation (``gamma``/``beta``
        join the parameters; running statistics come back in ``TrainResult.bn_state`` and are
        what accuracy and prediction use).
      model: None (the built-in MLP of ``layer_sizes``) or your own Flax linen module
        (``deepopt.modules``): ``__call__(x, train: bool)`` returns logits ``(m, n_out)`` for ``X``
        of shape ``(m, ...)``. deepopt trains it with its own optimizer, schedule, L2 (on every
        ``kernel``, never on biases or normalization scales), early stopping and divergence
        handling; the module's ``'dropout'`` rng and ``train`` flag, and its ``'batch_stats'``
        (any non-parameter collection) as the model state. ``activation``, ``init`` and
        ``batchnorm`` are the MLP's: leave them at their defaults, and ``HParams.keep_prob`` at 1
        (the module does its own dropout). A module's ``nn.BatchNorm`` sees the padded rows of a
        smaller last mini-batch: pick a ``batch_size`` that divides ``m`` if that matters.
      cpu_kernels: deepopt's own kernels (the default): the built-in MLP's training step through
        ``deepopt.cpu_kernels`` (features-major small nets, custom-VJP matmuls, a multiply-add
        first layer), and a ``model``'s ``nn.Conv`` layers as patches × kernel
        (``deepopt.conv_patches``: a batched matmul under a sweep's per-config ``vmap``); faster,
        the same values up to float rounding. False: the course's forward pass, Flax's own
        convolutions and ``jax.grad`` everywhere (other float32 bits, the same float64 values to rounding).
      task: what is learned (``deepopt.tasks``): the loss, the metrics and the primary one early
        stopping keeps and searches rank by, the targets' kind. ``tasks.classification()`` (the
        default: class ids, sigmoid or softmax, cross-entropy, accuracy) or ``tasks.regression()``
        (float targets, squared error, ``mse``/``mae``/``r2``) or your own ``tasks.Task``.
      compute_dtype: the dtype of the forward and backward passes (``deepopt.precision``): None
        (the default) computes in the data's dtype; ``"bfloat16"`` or ``"float16"`` computes in 16
        bits on any data. Under 16-bit data or compute the parameters, optimizer state, update,
        ``HParams``, loss and metrics stay float32 (the master copy), float16 with a per-run
        dynamic loss scale; float32 and float64 runs are unchanged.
    """

    layer_sizes: tuple[int, ...] | None = None
    activation: str = "relu"
    init: str = "he"
    optimizer: str = "gd"
    schedule: str = "constant"
    batch_size: int | None = None
    epochs: int = 1000
    early_stopping: int | str | None = None
    batchnorm: bool = False
    model: Any = None
    cpu_kernels: bool = True
    task: tasks.Task = dataclasses.field(default_factory=tasks.classification)
    compute_dtype: str | None = None

    def __post_init__(self) -> None:
        tasks.check_task(self.task)
        precision.check_compute_dtype(self.compute_dtype)
        if self.model is None:
            if self.layer_sizes is None:
                raise ValueError(
                    "Config.layer_sizes is required for the built-in MLP, e.g. (2, 16, 1); "
                    "or give your own Flax module as Config.model"
                )
            object.__setattr__(
                self, "layer_sizes", init_lib.check_layer_sizes(self.layer_sizes, "Config.layer_sizes")
            )
        else:
            modules.check_module(self.model)
            mlp_only = {"layer_sizes": None, "activation": "relu", "init": "he", "batchnorm": False}
            for name, default in mlp_only.items():
                if getattr(self, name) != default:
                    raise ValueError(
                        f"Config.{name}={getattr(self, name)!r} is for the built-in MLP; with Config.model the module "
                        f"defines its own layers: leave {name} at {default!r}"
                    )
        for check, value in (
            (model.check_activation, self.activation),
            (init_lib.check_scheme, self.init),
            (optim.get, self.optimizer),
            (schedules.get, self.schedule),
        ):
            try:
                check(value)
            except ValueError as error:
                raise ValueError(f"Config.{error}") from None
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(f"Config.batch_size must be a positive int or None (full batch), got {self.batch_size!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"Config.epochs must be a positive int, got {self.epochs!r}")
        if not isinstance(self.batchnorm, bool):
            raise ValueError(f"Config.batchnorm must be a bool, got {self.batchnorm!r}")
        if not isinstance(self.cpu_kernels, bool):
            raise ValueError(f"Config.cpu_kernels must be a bool, got {self.cpu_kernels!r}")
        stopping = self.early_stopping
        if not (
            stopping is None
            or stopping == KEEP_BEST
            or (isinstance(stopping, int) and not isinstance(stopping, bool) and stopping >= 1)
        ):
            raise ValueError(
                f"Config.early_stopping must be None, a positive int patience or {KEEP_BEST!r}, got {stopping!r}"
            )


class TrainResult(NamedTuple):
    """What ``fit`` returns (batched along a leading axis under ``vmap``).

    Attributes:
      params: the final parameters (the last finite ones when the run diverged).
      costs: ``(epochs,)``: per epoch, the mean over its examples of the mini-batch cost
        (the task's loss, cross-entropy for classification, plus ``l2/(2 n_batch)·ΣW²``) on the
        forward pass that produced each gradient, i.e. before that update. NaN for epochs after
        a divergence.
      train_metrics: ``{metric: value}``, each of the task's metrics of ``params`` on the
        training set, no dropout (classification: ``{"accuracy"}``; ``train_accuracy`` reads it).
      dev_metrics: the same on ``dev`` (NaN when no dev set was given; ``dev_accuracy`` reads it).
      final_cost: cost of ``params`` on the whole training set (with L2, no dropout).
      diverged: True when the cost or the parameters stopped being finite.
      diverged_epoch: the epoch where that happened, -1 if never.
      best_epoch: with early stopping, the epoch whose parameters are returned; else -1.
      stopped_epoch: the last epoch trained before early stopping's patience ran out, -1 if
        it never stopped (costs after it are NaN).
      dev_curve: ``(epochs,)`` the primary dev metric after each epoch with early stopping on
        (NaN once the run is frozen); all NaN when it is off (``dev_accuracies`` reads it).
      bn_state: running statistics of the batch-norm layers (``()`` without batch norm); pass
        them to ``model.predict(..., bn_state=...)``.
    """

    params: Params
    costs: jax.Array
    train_metrics: dict[str, jax.Array]
    dev_metrics: dict[str, jax.Array]
    final_cost: jax.Array
    diverged: jax.Array
    diverged_epoch: jax.Array
    best_epoch: jax.Array
    stopped_epoch: jax.Array
    dev_curve: jax.Array
    bn_state: tuple[batchnorm.BatchNormState, ...]

    @property
    def train_accuracy(self) -> jax.Array:
        """``train_metrics["accuracy"]``: a classification's training accuracy."""
        return _accuracy(self.train_metrics, "train")

    @property
    def dev_accuracy(self) -> jax.Array:
        """``dev_metrics["accuracy"]``: a classification's dev accuracy (NaN without a dev set)."""
        return _accuracy(self.dev_metrics, "dev")

    @property
    def dev_accuracies(self) -> jax.Array:
        """``dev_curve``: the primary dev metric per epoch (dev accuracy for classification)."""
        return self.dev_curve


def _accuracy(metrics: dict[str, jax.Array], split: str) -> jax.Array:
    """``metrics["accuracy"]`` of ``split``, or an ``AttributeError`` naming the task's metrics (a regression has none)."""
    if "accuracy" not in metrics:
        raise AttributeError(f"{split}_accuracy: this run's task has no 'accuracy' metric; its metrics are "
                             f"{sorted(metrics)}: read {split}_metrics[...]")
    return metrics["accuracy"]


def check_key(key: Any) -> None:
    """The one check of a PRNG key (``fit``, ``init_state``, ``sweep.run``): one typed key, or raw ``uint32[2]`` data."""
    if isinstance(key, jax.core.Tracer):
        return
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
    elif key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(
            f"key must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got shape {key.shape} dtype {key.dtype}"
        )


_check_key = check_key  # the name the training functions use


def check_split(name: str, split: Any, config: Config, dtype: Any = None, on_host: bool = False) -> data_lib.Dataset:
    """Validate a split against ``config`` as ``fit`` does (``data.check_dataset``); return it as arrays.

    ``X`` float; ``y`` int32 class ids, or float targets in ``X``'s dtype for a regression.

    ``on_host=True``: numpy arrays (``check_dataset``'s host conversion), no XLA program dispatched.

    The MLP needs ``X`` of shape ``(m, layer_sizes[0])``; a ``Config.model`` takes ``(m, ...)``,
    checked by one abstract evaluation of the module (``modules.output_units``). Values must be
    finite and the targets what ``config.task`` learns with ``n_out`` outputs (``Task.check_targets``:
    class ids below ``max(2, n_out)`` for classification).
    """
    return networks.network_of(config).check_split(name, split, config.task, dtype, on_host)


def describe_config(config: Config) -> dict[str, Any]:
    """``config`` as JSON-able values (for results rows and ids): every field, the model as ``modules.describe``."""
    record = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    record["model"] = networks.network_of(config).describe()
    record["task"] = config.task.describe()
    return record


def hparam_defaults(config: Config) -> dict[str, float]:
    """The HParams fields whose default depends on ``config``: ``init_scale`` (the init's) and ``decay_epochs`` (epochs)."""
    return {"init_scale": init_lib.default_scale(config.init), "decay_epochs": float(config.epochs)}


@functools.lru_cache(maxsize=256)
def num_params(config: Config, example_shape: tuple[int, ...]) -> int:
    """The trainable parameters of ``config``'s network for examples of ``example_shape``: the MLP's or the module's.

    Counted from an abstract ``init`` (nothing is computed): every leaf of the ``'params'``
    collection (the MLP's ``W``, ``b`` and batch norm's ``gamma``, ``beta``; not running statistics).
    """
    X = jax.ShapeDtypeStruct((1, *example_shape), jnp.float32)
    params = jax.eval_shape(lambda x: networks.network_of(config).init(jax.random.key(0), x, 1.0, None)[0], X)
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(params)))


def policy_of(config: Config, x_dtype: Any) -> precision.Policy:
    """The run's precision policy for data of ``x_dtype`` (``precision.policy_of`` of ``Config.compute_dtype``)."""
    return precision.policy_of(config.compute_dtype, x_dtype)


def param_dtype(config: Config, x_dtype: Any) -> np.dtype:
    """The run's dtype: its parameters', optimizer state's, ``HParams``' and metrics' (float32 under 16-bit data)."""
    return np.dtype(policy_of(config, x_dtype).param_dtype)


def prepare_hparams(hp: HParams, config: Config, dtype: Any) -> HParams:
    """Fill the Config-derived ``None`` fields (``hparam_defaults``) and cast every field to a ``dtype`` array."""
    if not isinstance(hp, HParams):
        raise TypeError(f"hp must be a deepopt.train.HParams, got {type(hp).__name__}")
    defaults = hparam_defaults(config)
    filled = {name: defaults[name] if value is None else value for name, value in hp._asdict().items()}
    return HParams(**{name: jnp.asarray(value, dtype) for name, value in filled.items()})


class TrainState(NamedTuple):
    """Everything a run carries from one epoch to the next; a pytree (batched along a leading axis under ``vmap``).

    Attributes:
      params: the parameters (the last finite ones once the run diverged).
      model_state: the model's non-parameter state: the batch-norm running statistics, one
        ``BatchNormState`` per batch-normalized layer (``()`` without batch norm).
      opt_state: the optimizer's state (Adam's moments and step count, ...).
      step: updates taken (int32); a frozen run takes none.
      epoch: epochs done (int32): the next ``advance`` starts at this epoch.
      key: the run key; initialization, each epoch's shuffle and each batch's dropout derive from
        it, the epoch and the batch index.
      diverged, diverged_epoch: the cost or the parameters stopped being finite, and when (-1: never).
      stopped, stopped_epoch: early stopping's patience ran out, and at which epoch (-1: never).
      best_params, best_model_state: with early stopping, the parameters and model state of the
        best dev epoch so far (None when early stopping is off: the plain run carries nothing extra).
      best_dev_accuracy, best_dev_cost, best_epoch: that epoch's primary dev metric (the task's:
        accuracy for classification; the field keeps its name so checkpoints stay readable), dev
        cost and index (-1: none yet).
      precision: under 16-bit data or compute, the run's ``precision.LossScale`` (its loss scale
        and the record of its compute dtype); None for a float32 or float64 run.
    """

    params: Params
    model_state: tuple[batchnorm.BatchNormState, ...]
    opt_state: Any
    step: jax.Array
    epoch: jax.Array
    key: jax.Array
    diverged: jax.Array
    diverged_epoch: jax.Array
    stopped: jax.Array
    stopped_epoch: jax.Array
    best_params: Params | None
    best_model_state: tuple[batchnorm.BatchNormState, ...] | None
    best_dev_accuracy: jax.Array
    best_dev_cost: jax.Array
    best_epoch: jax.Array
    precision: precision.LossScale | None = None


class EpochLog(NamedTuple):
    """Per-epoch arrays of one ``advance`` call, ``(epochs,)`` each; NaN where not measured or once the run is frozen.

    Attributes:
      cost: the mean over the epoch's examples of the mini-batch cost (with L2) on the forward
        pass that produced each gradient, before that update (as ``TrainResult.costs``).
      train_metric: the task's primary metric on the whole training set after the epoch (no
        dropout; accuracy for classification, also read as ``train_accuracy``); measured with
        ``log_metrics=True``.
      dev_metric, dev_cost: the primary metric (``dev_accuracy``) and the mean loss on the dev set
        after the epoch; measured with ``log_metrics=True`` or early stopping (which needs them),
        and a dev set.
    """

    cost: jax.Array
    train_metric: jax.Array
    dev_metric: jax.Array
    dev_cost: jax.Array

    @property
    def train_accuracy(self) -> jax.Array:
        """``train_metric``: the name from when every task was a classification (its primary metric is accuracy)."""
        return self.train_metric

    @property
    def dev_accuracy(self) -> jax.Array:
        """``dev_metric``: the name from when every task was a classification (its primary metric is accuracy)."""
        return self.dev_metric


def _check_config(config: Any) -> None:
    if not isinstance(config, Config):
        raise TypeError(f"config must be a deepopt.train.Config, got {type(config).__name__}")


def _check_scalar_hparams(hp: HParams, where: str) -> None:
    for name, value in hp._asdict().items():
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"HParams.{name} must be a scalar inside {where}, got shape {jnp.shape(value)}; "
                f"vmap {where} over the leading axis to train many models"
            )


def _check_init_params(config: Config, init_params: Any, X: Any) -> Params:
    """``init_params`` must match ``config.layer_sizes`` and ``config.batchnorm`` (or the module's own); returned as arrays."""
    return networks.network_of(config).check_init_params(init_params, X)


FLOORED_SCHEDULES = ("cosine", "warmup_cosine")  # decay towards HParams.min_learning_rate


def validate_hparams_for_config(
    config: Config, hp: HParams, example_shape: tuple[int, ...] | None = None, dtype: str = "float32"
) -> None:
    """What ``validate_hparams`` cannot see alone: concrete values that make no sense for this ``config``.

    - ``schedule`` ``cosine`` / ``warmup_cosine``: ``min_learning_rate <= learning_rate`` (a floor
      above the rate would make the "decay" climb to it).
    - ``Config.model`` with ``l2 > 0``: the module must have a ``kernel`` leaf (L2 penalizes
      kernels only; without one it would silently do nothing). Checked when ``example_shape``
      (the examples' shape, ``X.shape[1:]``) is given.
    Traced fields are skipped; arrays are checked elementwise. Raises an ``HParamsValueError`` (a
    ``ValueError`` whose ``index`` is the first offending element's position, None for scalars).
    """
    if config.schedule in FLOORED_SCHEDULES:
        rate = concrete_array("HParams.learning_rate", hp.learning_rate)
        floor = concrete_array("HParams.min_learning_rate", hp.min_learning_rate)
        if rate is not None and floor is not None:
            rate, floor = np.broadcast_arrays(rate, floor)
            bad = floor > rate
            if np.any(bad):
                raise HParamsValueError(
                    f"HParams.min_learning_rate must be <= learning_rate with schedule={config.schedule!r} (the floor "
                    f"the rate decays to), got min_learning_rate={float(floor[bad].flat[0])!r} > "
                    f"learning_rate={float(rate[bad].flat[0])!r}",
                    first_index(bad),
                )
    networks.network_of(config).check_hparams(hp, example_shape, dtype)  # a module's l2 needs kernels


def _check_compute_dtype(config: Config, x_dtype: Any) -> None:
    """float64 compute (or float64 data) needs JAX's x64 mode, else it would silently run in float32."""
    if param_dtype(config, x_dtype) == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"Config.compute_dtype={config.compute_dtype!r} on {np.dtype(x_dtype).name} data needs float64, which JAX "
            "runs only with x64 on: jax.config.update('jax_enable_x64', True)"
        )


def _prepare_run(
    config: Any, hp: Any, train: Any, dev: Any, dropout: bool | None, where: str
) -> tuple[data_lib.Dataset, data_lib.Dataset | None, bool, HParams]:
    """The checks ``fit``, ``init_state`` and ``advance`` share, in Python and before any compilation."""
    _check_config(config)
    train = check_split("train", train, config)
    dtype = param_dtype(config, train.X.dtype)
    _check_compute_dtype(config, train.X.dtype)
    if dev is not None:
        dev = check_split("dev", dev, config, train.X.dtype)
    elif config.early_stopping is not None and where != "init_state":
        raise ValueError(f"Config.early_stopping={config.early_stopping!r} needs a dev set: pass dev=...")
    validate_hparams(hp)  # on the values as given, before any cast or compilation
    networks.network_of(config).check_dropout(hp)  # a module does its own dropout: keep_prob 1
    validate_hparams_for_config(config, hp, tuple(train.X.shape[1:]), str(dtype))
    dropout = resolve_dropout(hp.keep_prob, dropout) if dropout is not None else True
    hp = prepare_hparams(hp, config, dtype)
    _check_scalar_hparams(hp, where)
    return train, dev, dropout, hp


def fit(
    config: Config,
    hp: HParams,
    key: jax.Array,
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None = None,
    init_params: Params | None = None,
    *,
    dropout: bool = True,
) -> TrainResult:
    r"""Train one MLP; the whole run is one compiled ``lax.scan`` (one compilation per ``Config``).

    Every epoch draws a fresh permutation and walks its mini-batches; each step computes
    :math:`J_b = \frac{1}{n_b}\sum_{i \in b}\ell_i + \frac{\lambda}{2 n_b}\sum_l\|W_l\|^2` (with
    inverted dropout when ``keep_prob < 1``), takes :math:`\nabla J_b` and applies the optimizer
    at the scheduled rate. A non-finite cost or update freezes the run at its last finite
    parameters and sets ``diverged``. It is ``init_state``, ``advance(epochs=config.epochs)`` and
    ``evaluate``, traced as one program.

    Args:
      config: static choices (layer sizes, activation, init, optimizer, schedule, batch size, epochs).
      hp: traced hyperparameters (scalars; vmap ``fit`` to run many).
      key: PRNG key (initialization, shuffling, dropout).
      train: training ``Dataset``; its float dtype is the run's dtype.
      dev: optional dev ``Dataset`` for ``dev_metrics`` (and early stopping).
      init_params: start from these parameters instead of ``config.init`` (their dtype is kept).
      dropout: compile the dropout masks in (True, the default: ``keep_prob`` stays a traced
        hyperparameter) or out (False: for runs whose ``keep_prob`` is 1, where dropout is exactly
        the identity; results are unchanged and a small net's step is cheaper).
        ``False`` with a concrete ``keep_prob < 1`` is an error; under ``vmap`` (traced
        ``keep_prob``) the caller vouches for it (``sweep.run`` checks the values before choosing).
    Returns:
      A ``TrainResult``.
    """
    _check_config(config)
    _check_key(key)
    train, dev, dropout, hp = _prepare_run(config, hp, train, dev, dropout, "fit")
    if init_params is not None:
        init_params = _check_init_params(config, init_params, train.X)
    return _fit_compiled(config, dropout, hp, key, train, dev, init_params)


def init_state(
    config: Config,
    hp: HParams,
    key: jax.Array,
    train: data_lib.Dataset,
    init_params: Params | None = None,
) -> TrainState:
    """A new run's ``TrainState``: initial parameters (``config.init`` or ``init_params``), optimizer state, epoch 0.

    ``train`` gives the run's float dtype and is checked against ``config`` (its shapes, finite
    values, labels). ``jit``/``vmap``-able: vmap over ``hp`` and ``key`` to start many runs.
    """
    _check_key(key)
    train, _, _, hp = _prepare_run(config, hp, train, None, None, "init_state")
    if init_params is not None:
        init_params = _check_init_params(config, init_params, train.X)
    return _init_state_compiled(config, hp, key, train.X, init_params)


def advance(
    config: Config,
    hp: HParams,
    state: TrainState,
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None = None,
    *,
    epochs: int,
    log_metrics: bool = False,
    dropout: bool = True,
) -> tuple[TrainState, EpochLog]:
    """Train ``state`` for ``epochs`` more epochs, from epoch ``state.epoch``; returns the new state and their ``EpochLog``.

    Exactly what ``fit`` does between those epochs: the keys of epoch ``e`` and batch ``b``
    derive from ``(state.key, e, b)``, so ``advance(a)`` then ``advance(b)`` equals
    ``advance(a + b)`` bit for bit. A frozen run (diverged, or stopped by early stopping) stays
    frozen. ``hp`` may differ from the one the run started with (population-based training).

    Args:
      config, hp, train, dev: as for ``fit``; early stopping needs ``dev``.
      state: a ``TrainState`` of this ``config`` (``init_state`` or an earlier ``advance``).
      epochs: how many epochs to train (static: one compilation per value).
      log_metrics: also measure train accuracy and dev accuracy and cost after every epoch
        (``EpochLog``); off, the program is as lean as ``fit``'s.
      dropout: as for ``fit``.
    """
    train, dev, dropout, hp = _prepare_run(config, hp, train, dev, dropout, "advance")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(log_metrics, bool):
        raise TypeError(f"log_metrics must be a bool, got {log_metrics!r}")
    _check_state(config, hp, state, train.X)
    return _advance_compiled(config, dropout, epochs, log_metrics, hp, state, train, dev)


def evaluate(config: Config, state: TrainState, data: data_lib.Dataset) -> dict[str, jax.Array]:
    r"""Metrics of the run's result on ``data``: the task's metrics and ``cost`` (no dropout; running statistics).

    Classification gives ``{"accuracy", "cost"}``, regression ``{"mse", "mae", "r2", "cost"}``.
    The result is the current parameters, or with early stopping the best dev epoch's.
    ``cost`` is the mean loss :math:`\frac1m\sum_i \ell_i` (cross-entropy for classification)
    without the L2 term (which depends on ``hp``: ``TrainResult.final_cost`` adds it).
    """
    _check_config(config)
    data = check_split("data", data, config)
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a deepopt.train.TrainState, got {type(state).__name__}")
    _check_state(config, None, state, data.X)  # another Config's state would be read with the wrong net or loss
    return _evaluate_compiled(config, state, data)


def result_params(config: Config, state: TrainState) -> tuple[Params, tuple[batchnorm.BatchNormState, ...]]:
    """The run's result: ``(params, model_state)``, the best dev epoch's with early stopping, else the current ones."""
    if config.early_stopping is not None:
        return state.best_params, state.best_model_state
    return state.params, state.model_state


def _check_state(config: Config, hp: HParams, state: Any, X: Any) -> None:
    """``state`` must have the tree structure, shapes and dtypes ``init_state`` makes for ``config``."""
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a deepopt.train.TrainState (from init_state or advance), got {type(state).__name__}")
    del hp  # the state's shapes depend on the hyperparameters' dtype only, which is X's
    expected = _state_shape(config, tuple(X.shape), jnp.dtype(X.dtype), tuple(state.key.shape), state.key.dtype)
    got_structure, want_structure = jax.tree.structure(state), jax.tree.structure(expected)
    if got_structure != want_structure:
        raise ValueError(
            f"state does not belong to this Config (its tree differs: {got_structure} vs {want_structure}); "
            "make it with init_state(config, ...)"
        )
    for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected)):
        if jnp.shape(leaf) != want.shape or jnp.result_type(leaf) != want.dtype:
            raise ValueError(
                f"state{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)} dtype {jnp.result_type(leaf)}, "
                f"expected {want.shape} {want.dtype} for this Config and data"
            )


@functools.lru_cache(maxsize=64)
def _state_shape(config: Config, x_shape: tuple[int, ...], x_dtype: Any, key_shape: tuple[int, ...], key_dtype: Any) -> Any:
    """The abstract ``TrainState`` ``init_state`` makes for ``config`` and such data and key (traced once, then cached)."""
    hp_dtype = param_dtype(config, x_dtype)
    hp = jax.tree.map(lambda _: jax.ShapeDtypeStruct((), hp_dtype), HParams(*[0.0] * len(HParams._fields)))
    return jax.eval_shape(
        lambda h, k, x: _init_state(config, h, k, x, None),
        hp,
        jax.ShapeDtypeStruct(key_shape, key_dtype),
        jax.ShapeDtypeStruct(x_shape, x_dtype),
    )


def resolve_dropout(keep_prob: Any, dropout: bool | None = None) -> bool:
    """Whether dropout must be compiled in: ``dropout`` if given, else unless ``keep_prob`` is a concrete 1 everywhere.

    ``sweep.run`` asks with ``dropout=None`` for a whole group's keep_prob values. Raises a
    ``ValueError`` for ``dropout=False`` with a concrete ``keep_prob`` below 1.
    """
    if dropout is not None and not isinstance(dropout, bool):
        raise TypeError(f"dropout must be True, False or None (automatic), got {dropout!r}")
    concrete = keep_prob is not None and not isinstance(keep_prob, jax.core.Tracer)
    all_one = concrete and bool(np.all(np.asarray(keep_prob, np.float64) == 1.0))
    if dropout is False and concrete and not all_one:
        raise ValueError(
            f"dropout=False compiles dropout out, but HParams.keep_prob is {keep_prob!r}; "
            "pass keep_prob=1.0 or dropout=True"
        )
    return (not all_one) if dropout is None else dropout


_trace_count = 0


def trace_count() -> int:
    """How many times a training program (``fit``'s or ``advance``'s) has been traced (= compiled) in this process.

    Use it to check that new hyperparameter values or keys do not recompile.
    """
    return _trace_count


def _tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _carried_batched(state: TrainState, hp: HParams, early_stopping: bool, patience: int | None) -> TrainState:
    """``state`` with what an epoch changes batched under ``vmap`` wherever the learning rate or the parameters are.

    Each of these leaves comes out of an epoch depending on both (``vmap_hints``): the parameters,
    the model and optimizer state, the step count, the divergence marks, with early stopping the
    best epoch's record, and with a patience the stopping marks. The epoch counter and the key do
    not change in an epoch, nor do the stopping marks without a patience (``"keep_best"``).
    """
    changed = {"params": state.params, "model_state": state.model_state, "opt_state": state.opt_state,
               "step": state.step, "diverged": state.diverged, "diverged_epoch": state.diverged_epoch}
    if early_stopping:
        changed.update(best_params=state.best_params, best_model_state=state.best_model_state,
                       best_dev_accuracy=state.best_dev_accuracy, best_dev_cost=state.best_dev_cost,
                       best_epoch=state.best_epoch)
    if patience:
        changed.update(stopped=state.stopped, stopped_epoch=state.stopped_epoch)
    if state.precision is not None:
        changed.update(precision=state.precision)
    return state._replace(**vmap_hints.batched_like(changed, (hp.learning_rate, state.params)))


def _tree_all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _run_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(init, shuffle, dropout)`` keys of a run key."""
    init_key, shuffle_key, dropout_key = jax.random.split(key, 3)
    return init_key, shuffle_key, dropout_key


def _init_state(config: Config, hp: HParams, key: jax.Array, X: jax.Array, init_params: Params | None) -> TrainState:
    """The traced body of ``init_state`` (``X`` gives the dtype, and a module's input shape)."""
    policy = policy_of(config, X.dtype)
    dtype = np.dtype(policy.param_dtype)
    init_key, _, _ = _run_keys(key)
    example = X if not policy.mixed else X[:1].astype(dtype)  # the master copy is made in the param dtype
    params, bn_state = networks.network_of(config).init(init_key, example, hp.init_scale, init_params)
    early_stopping = config.early_stopping is not None
    minus_one = jnp.array(-1, jnp.int32)
    return TrainState(
        params=params,
        model_state=bn_state,
        opt_state=optim.get(config.optimizer).init(params),
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        key=key,
        diverged=jnp.array(False),
        diverged_epoch=minus_one,
        stopped=jnp.array(False),
        stopped_epoch=minus_one,
        best_params=params if early_stopping else None,  # not carried when off
        best_model_state=bn_state if early_stopping else None,
        best_dev_accuracy=config.task.worst(dtype),
        best_dev_cost=jnp.array(jnp.inf, dtype),
        best_epoch=minus_one,
        precision=precision.initial_state(policy),
    )


def _logits(config: Config, params: Params, model_state: Any, X: jax.Array) -> jax.Array:
    """Logits for evaluation: no dropout, batch norm's running statistics (the MLP's or the module's).

    Under a mixed policy the passes run in the compute dtype and the logits come back in the param dtype.
    """
    policy = policy_of(config, X.dtype)
    network = networks.network_of(config)
    if not policy.mixed:
        return network.apply_eval(params, model_state, X)
    compute = np.dtype(policy.compute_dtype)
    logits = network.apply_eval(precision.cast_floats(params, compute), precision.cast_floats(model_state, compute),
                                X.astype(compute))
    return logits.astype(policy.param_dtype)


def _l2_penalty(config: Config, params: Params, lambd: Any, m: Any) -> jax.Array:
    r""":math:`\frac{\lambda}{2m}\sum\|W\|^2` over the MLP's ``W`` or a module's kernels."""
    return networks.network_of(config).l2_penalty(params, lambd, m)


def evaluate_params(config: Config, params: Params, model_state: Any, data: data_lib.Dataset) -> dict[str, jax.Array]:
    """``evaluate`` of given parameters and model state, traceable (no checks, no jit): the task's metrics and cost."""
    return _evaluate(config, params, model_state, data)


def _evaluate(config: Config, params: Params, bn_state: tuple, data: data_lib.Dataset) -> dict[str, jax.Array]:
    """The traced body of ``evaluate``: ``Task.evaluate`` of the outputs (metrics in the data's float dtype, cost)."""
    return config.task.evaluate(_logits(config, params, bn_state, data.X), data.y, param_dtype(config, data.X.dtype))


def _advance(
    config: Config,
    dropout: bool,
    epochs: int,
    log_train: bool,
    log_dev: bool,
    hp: HParams,
    state: TrainState,
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
) -> tuple[TrainState, EpochLog]:
    """The traced body of ``advance``: a ``lax.scan`` over epochs ``state.epoch .. state.epoch + epochs - 1``."""
    X, y = train
    policy = policy_of(config, X.dtype)
    m, dtype = X.shape[0], np.dtype(policy.param_dtype)
    _, shuffle_key, dropout_key = _run_keys(state.key)
    optimizer = optim.get(config.optimizer)
    schedule = schedules.get(config.schedule)
    batch_size = m if config.batch_size is None else min(config.batch_size, m)
    full_batch = batch_size == m
    num_batches = -(-m // batch_size)
    network = networks.network_of(config)
    task = config.task

    def batch_cost(
        params: Params, bn_state: tuple, X_b: jax.Array, y_b: jax.Array, mask: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, tuple]:
        if policy.mixed:  # the passes in the compute dtype; the logits, loss and state back in the param dtype
            compute = np.dtype(policy.compute_dtype)
            logits, new_bn_state = network.apply_train(
                precision.cast_floats(params, compute), precision.cast_floats(bn_state, compute), X_b.astype(compute),
                key, hp.keep_prob.astype(compute), dropout, None if full_batch else mask)
            logits, new_bn_state = logits.astype(dtype), precision.cast_floats(new_bn_state, dtype)
        else:
            logits, new_bn_state = network.apply_train(
                params, bn_state, X_b, key, hp.keep_prob, dropout, None if full_batch else mask)
        per_example = task.loss(logits, y_b)
        if full_batch:
            return jnp.mean(per_example) + _l2_penalty(config, params, hp.l2, m), new_bn_state
        n_b = jnp.sum(mask).astype(per_example.dtype)
        cost = jnp.sum(jnp.where(mask, per_example, 0)) / n_b + _l2_penalty(config, params, hp.l2, n_b)
        return cost, new_bn_state

    early_stopping = config.early_stopping is not None
    patience = config.early_stopping if isinstance(config.early_stopping, int) else None
    measure_dev = dev is not None and (early_stopping or log_dev)
    nan = jnp.array(jnp.nan, dtype)

    def run_epoch(carry: TrainState, epoch: jax.Array) -> tuple[TrainState, tuple[jax.Array, ...]]:
        frozen = carry.diverged | carry.stopped  # a frozen run takes no more steps
        epoch_dropout_key = jax.random.fold_in(dropout_key, epoch)
        if full_batch:
            index = jnp.zeros((1, 1), jnp.int32)  # unused: the whole set is the batch
            mask = jnp.ones((1, m), bool)
        else:
            index, mask = data_lib.padded_minibatch_indices(jax.random.fold_in(shuffle_key, epoch), m, batch_size)

        def run_step(steps_to_take: jax.Array, step_carry: tuple, batch: tuple) -> tuple[tuple, jax.Array]:
            params, bn_state, opt_state, step, first_bad, loss_scale = step_carry
            batch_number, batch_index, batch_mask = batch
            X_b, y_b = (X, y) if full_batch else (X[batch_index], y[batch_index])
            step_key = jax.random.fold_in(epoch_dropout_key, batch_number)
            if policy.loss_scaling:  # float16: the gradients of s·J, unscaled; an overflow skips the step
                def scaled_cost(*args: Any) -> tuple[jax.Array, tuple]:
                    cost, new_state = batch_cost(*args)
                    return cost * loss_scale.scale.astype(dtype), (cost, new_state)

                (_, (cost, new_bn_state)), grads = jax.value_and_grad(scaled_cost, has_aux=True)(
                    params, bn_state, X_b, y_b, batch_mask, step_key
                )
                grads = jax.tree.map(lambda g: g / loss_scale.scale.astype(g.dtype), grads)
            else:
                (cost, new_bn_state), grads = jax.value_and_grad(batch_cost, has_aux=True)(
                    params, bn_state, X_b, y_b, batch_mask, step_key
                )
            step_hp = hp._replace(learning_rate=jnp.asarray(schedule(hp, epoch, step), dtype))
            # Whether this step applies is known before it is taken, so the selects below fuse
            # into the update; a non-finite cost or new parameters only mark it (``first_bad``).
            applied = batch_number < steps_to_take
            if policy.loss_scaling:
                # A non-finite cost is the run's own divergence (the halting below), not the scale's.
                grads_ok = _tree_all_finite(grads) | ~jnp.isfinite(cost)
                loss_scale = _tree_select(applied, precision.adjust(loss_scale, grads_ok), loss_scale)
                applied = applied & grads_ok
            # ``update`` in its two halves, the parameters' step reading the chosen state: the new
            # one where the step applies (the same values), the old one where it does not (and the
            # select discards that step), so no fusion recomputes the new moments from the old ones.
            opt_state = _tree_select(applied, optimizer.next_state(grads, opt_state, params, step_hp), opt_state)
            params = _tree_select(applied, optimizer.next_params(grads, opt_state, params, step_hp), params)
            bn_state = _tree_select(applied, new_bn_state, bn_state)
            bad = applied & ~(jnp.isfinite(cost) & _tree_all_finite(params))
            first_bad = jnp.where(bad & (first_bad == num_batches), batch_number, first_bad)
            step = step + applied.astype(step.dtype)
            return (params, bn_state, opt_state, step, first_bad, loss_scale), cost * jnp.sum(batch_mask).astype(dtype)

        # An epoch is a pass over its mini-batches that takes every step of a live run (none of a
        # frozen one) and marks the first whose cost or new parameters are non-finite. A run that
        # has one passes the epoch again from its start, taking only the steps before it: it halts
        # at its last finite parameters, exactly where a check-and-select after every step would
        # leave it, for one more pass per diverging run and epoch. Under ``vmap`` the loop runs
        # while any run asks for another pass (the others keep their state).
        batch_numbers = jnp.arange(num_batches)
        batches = (batch_numbers, index, mask)
        steps_to_take = jnp.where(frozen, 0, num_batches).astype(batch_numbers.dtype)
        # The step marks, the loop's flag and the costs depend on the parameters: batched wherever they are.
        no_bad_step, another_pass, steps_to_take, no_costs = vmap_hints.batched_like(
            (jnp.asarray(num_batches, batch_numbers.dtype), jnp.array(True), steps_to_take,
             jnp.zeros((num_batches,), dtype)),
            carry.params,
        )
        start = (carry.params, carry.model_state, carry.opt_state, carry.step, no_bad_step, carry.precision)

        def run_pass(pass_carry: tuple) -> tuple:
            steps_to_take = pass_carry[1]
            end, weighted_costs = jax.lax.scan(functools.partial(run_step, steps_to_take), start, batches)
            first_bad = end[4]
            return first_bad < num_batches, jnp.minimum(steps_to_take, first_bad), (*end[:4], end[5]), weighted_costs

        _, steps_to_take, (params, bn_state, opt_state, step, loss_scale), weighted_costs = jax.lax.while_loop(
            lambda pass_carry: pass_carry[0], run_pass, (another_pass, steps_to_take, (*start[:4], start[5]), no_costs)
        )
        halted = steps_to_take < num_batches
        epoch_cost = jnp.where(frozen, jnp.nan, jnp.sum(weighted_costs) / m).astype(dtype)
        diverged_now = halted & ~frozen
        carry = carry._replace(
            params=params,
            model_state=bn_state,
            opt_state=opt_state,
            step=step,
            precision=loss_scale,
            diverged=carry.diverged | diverged_now,
            diverged_epoch=jnp.where(diverged_now, epoch, carry.diverged_epoch),
        )
        train_metric = dev_metric = dev_cost = nan
        if log_train:
            train_metric = jnp.where(frozen, jnp.nan, _evaluate(config, params, bn_state, train)[task.primary])
        if not measure_dev:
            return carry, (epoch_cost, train_metric, dev_metric, dev_cost)
        on_dev = _evaluate(config, params, bn_state, dev)
        dev_metric, dev_cost = on_dev[task.primary], on_dev["cost"]
        logged = (epoch_cost, train_metric, jnp.where(frozen, jnp.nan, dev_metric), jnp.where(frozen, jnp.nan, dev_cost))
        if not early_stopping:
            return carry, logged
        better = task.better(dev_metric, dev_cost, carry.best_dev_accuracy, carry.best_dev_cost)
        improved = better & ~frozen & ~diverged_now
        best_epoch = jnp.where(improved, epoch, carry.best_epoch)
        stopped_now = ~frozen & ~diverged_now & (epoch - best_epoch >= patience) if patience else jnp.array(False)
        carry = carry._replace(
            best_params=_tree_select(improved, params, carry.best_params),
            best_model_state=_tree_select(improved, bn_state, carry.best_model_state),
            best_dev_accuracy=jnp.where(improved, dev_metric, carry.best_dev_accuracy),
            best_dev_cost=jnp.where(improved, dev_cost, carry.best_dev_cost),
            best_epoch=best_epoch,
            stopped=carry.stopped | stopped_now,
            stopped_epoch=jnp.where(stopped_now, epoch, carry.stopped_epoch),
        )
        return carry, logged

    state = _carried_batched(state, hp, early_stopping, patience)
    epoch_indices = state.epoch + jnp.arange(epochs, dtype=jnp.int32)
    state, (costs, train_metrics, dev_metrics, dev_costs) = jax.lax.scan(run_epoch, state, epoch_indices)
    state = state._replace(epoch=state.epoch + jnp.int32(epochs))
    return state, EpochLog(costs, train_metrics, dev_metrics, dev_costs)


@xla_options.jit(static_argnums=(0,))
def _init_state_compiled(
    config: Config, hp: HParams, key: jax.Array, X: jax.Array, init_params: Params | None
) -> TrainState:
    return _init_state(config, hp, key, X, init_params)


@xla_options.jit(static_argnums=(0, 1, 2, 3))
def _advance_compiled(
    config: Config,
    dropout: bool,
    epochs: int,
    log_metrics: bool,
    hp: HParams,
    state: TrainState,
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
) -> tuple[TrainState, EpochLog]:
    global _trace_count
    _trace_count += 1
    return _advance(config, dropout, epochs, log_metrics, log_metrics, hp, state, train, dev)


@xla_options.jit(static_argnums=(0,))
def _evaluate_compiled(config: Config, state: TrainState, data: data_lib.Dataset) -> dict[str, jax.Array]:
    params, bn_state = result_params(config, state)
    return _evaluate(config, params, bn_state, data)


def _fit_body(
    config: Config,
    dropout: bool,
    log_dev: bool,
    hp: HParams,
    key: jax.Array,
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
    init_params: Params | None,
) -> tuple[TrainResult, EpochLog]:
    """The traced body of ``fit``: ``init_state``, ``advance(config.epochs)``, ``evaluate``; also the ``EpochLog``."""
    state = _init_state(config, hp, key, train.X, init_params)
    state, log = _advance(config, dropout, config.epochs, False, log_dev, hp, state, train, dev)
    params, bn_state = result_params(config, state)
    scalars = final_metrics(config, hp, state, train, dev)
    metrics = config.task.metrics
    result = TrainResult(
        params=params, costs=log.cost, dev_curve=log.dev_metric, bn_state=bn_state,
        train_metrics={name: scalars.pop(f"train_{name}") for name in metrics},
        dev_metrics={name: scalars.pop(f"dev_{name}") for name in metrics}, **scalars,
    )
    return result, log


def final_metrics(
    config: Config, hp: HParams, state: TrainState, train: data_lib.Dataset, dev: data_lib.Dataset | None
) -> dict[str, jax.Array]:
    r"""``fit``'s per-run scalars of a state: what a ``TrainResult`` reports, traceable (no checks, no jit).

    ``train_<metric>`` and ``dev_<metric>`` for each of the task's metrics (``train_accuracy``,
    ``dev_accuracy`` for classification; NaN without ``dev``), ``final_cost`` (:math:`\frac1m\sum_i\ell_i
    + \frac{\lambda}{2m}\sum\|W\|^2` on the whole training set), ``diverged``, ``diverged_epoch``,
    ``best_epoch``, ``stopped_epoch``, of the run's result (``result_params``). ``hp`` must be prepared
    (``prepare_hparams``).
    """
    params, bn_state = result_params(config, state)
    on_train = _evaluate(config, params, bn_state, train)
    final_cost = on_train["cost"] + _l2_penalty(config, params, hp.l2, train.X.shape[0])
    dtype = param_dtype(config, train.X.dtype)
    on_dev = None if dev is None else _evaluate(config, params, bn_state, dev)
    nan = jnp.array(jnp.nan, dtype)
    metrics = config.task.metrics
    return {
        **{f"train_{name}": on_train[name] for name in metrics},
        **{f"dev_{name}": nan if on_dev is None else on_dev[name] for name in metrics},
        "final_cost": final_cost,
        "diverged": state.diverged,
        "diverged_epoch": state.diverged_epoch,
        "best_epoch": state.best_epoch,
        "stopped_epoch": state.stopped_epoch,
    }


@xla_options.jit(static_argnums=(0, 1))
def _fit_compiled(
    config: Config,
    dropout: bool,
    hp: HParams,
    key: jax.Array,
    train: data_lib.Dataset,
    dev: data_lib.Dataset | None,
    init_params: Params | None,
) -> TrainResult:
    global _trace_count
    _trace_count += 1
    return _fit_body(config, dropout, False, hp, key, train, dev, init_params)[0]


def fit_with_curves(
    config: Config,
    hp: HParams,
    key: jax.Array,
    train: data_lib.Dataset,
    dev: data_lib.Dataset,
    *,
    dropout: bool = True,
) -> tuple[TrainResult, EpochLog]:
    """``fit``, plus the ``EpochLog`` with every epoch's dev accuracy and dev cost (the learning curves).

    The training is ``fit``'s, bit for bit; measuring ``dev`` after every epoch is all it adds.
    Traceable like ``fit`` (``sweep.run(curves=True)`` vmaps it); ``EpochLog.train_metric`` is NaN.
    """
    if dev is None:
        raise ValueError("fit_with_curves needs a dev set: its curves are dev accuracy and dev cost per epoch")
    _check_key(key)
    train, dev, dropout, hp = _prepare_run(config, hp, train, dev, dropout, "fit")
    return _fit_with_curves_compiled(config, dropout, hp, key, train, dev)


@xla_options.jit(static_argnums=(0, 1))
def _fit_with_curves_compiled(
    config: Config, dropout: bool, hp: HParams, key: jax.Array, train: data_lib.Dataset, dev: data_lib.Dataset
) -> tuple[TrainResult, EpochLog]:
    global _trace_count
    _trace_count += 1
    return _fit_body(config, dropout, True, hp, key, train, dev, None)
