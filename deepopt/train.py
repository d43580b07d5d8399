"""One whole training run as one pure, ``jit``-compiled function.

``fit(config, hp, key, train, dev)`` is a ``lax.scan`` over epochs with the mini-batches in an
inner ``lax.scan``. ``Config`` (static, hashable) fixes shapes and code; ``HParams`` (a pytree of
scalars) is traced, so one compiled program serves every hyperparameter value and key, and
``jax.vmap(lambda hp, k: fit(config, hp, k, train))`` trains many models at once.
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
from deepopt import batchnorm, losses, model, optim, schedules

Params = tuple[dict[str, jax.Array], ...]

KEEP_BEST = "keep_best"


@dataclasses.dataclass(frozen=True)
class Config:
    """Static choices of a run: everything that changes shapes or code. Hashable; one compilation each.

    Attributes:
      layer_sizes: ``(n_in, hidden..., n_out)``; ``n_out = 1`` is binary, ``>= 2`` softmax.
      activation: hidden activation (``model.ACTIVATIONS``).
      init: initialization scheme (``init.SCHEMES``), ignored when ``fit`` gets ``init_params``.
      optimizer: ``optim.names()``.
      schedule: learning-rate schedule, ``schedules.names()``.
      batch_size: examples per update; None (or >= m) is full-batch gradient descent.
      epochs: passes over the training set.
      early_stopping: None (off); an int patience (stop updating once that many epochs pass
        without a dev improvement); or ``"keep_best"`` (train every epoch, keep the best). Either
        way ``fit`` returns the parameters of the best epoch (dev accuracy, ties to lower dev
        cost) and needs a dev set.
      batchnorm: batch-normalize every hidden layer before its activation (``gamma``/``beta``
        join the parameters; running statistics come back in ``TrainResult.bn_state`` and are
        what accuracy and prediction use).
    """

    layer_sizes: tuple[int, ...]
    activation: str = "relu"
    init: str = "he"
    optimizer: str = "gd"
    schedule: str = "constant"
    batch_size: int | None = None
    epochs: int = 1000
    early_stopping: int | str | None = None
    batchnorm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "layer_sizes", init_lib.check_layer_sizes(self.layer_sizes, "Config.layer_sizes")
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
        stopping = self.early_stopping
        if not (
            stopping is None
            or stopping == KEEP_BEST
            or (isinstance(stopping, int) and not isinstance(stopping, bool) and stopping >= 1)
        ):
            raise ValueError(
                f"Config.early_stopping must be None, a positive int patience or {KEEP_BEST!r}, got {stopping!r}"
            )


class HParams(NamedTuple):
    """Traced hyperparameters: a pytree of scalars (arrays of them under ``vmap``).

    ``None`` means "derived from the Config": ``init_scale`` -> the scheme's default (10 for
    ``random``, else 1), ``decay_epochs`` -> ``Config.epochs``.
    """

    learning_rate: Any = 0.01
    beta: Any = 0.9  # momentum / Nesterov
    beta1: Any = 0.9  # Adam first moment
    beta2: Any = 0.999  # Adam second moment, RMSprop's square average
    epsilon: Any = 1e-8
    weight_decay: Any = 0.0  # AdamW's decoupled decay
    l2: Any = 0.0  # lambda of the L2 penalty
    keep_prob: Any = 1.0  # inverted dropout on hidden layers
    init_scale: Any = None
    decay_rate: Any = 1.0  # inverse_time, scheduled
    time_interval: Any = 1000.0  # scheduled: epochs per decay step
    decay_factor: Any = 0.95  # exponential (k**epoch), inverse_sqrt, staircase
    warmup_epochs: Any = 0.0  # warmup_cosine
    decay_epochs: Any = None  # cosine, warmup_cosine: length of the decay
    min_learning_rate: Any = 0.0  # cosine floor


# name -> (what it must be, test on a float64 array)
_HPARAM_RULES: dict[str, tuple[str, Any]] = {
    "learning_rate": ("> 0", lambda v: v > 0),
    "beta": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "beta1": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "beta2": ("in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "epsilon": ("> 0", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "l2": (">= 0", lambda v: v >= 0),
    "keep_prob": ("in (0, 1]", lambda v: (v > 0) & (v <= 1)),
    "init_scale": (">= 0", lambda v: v >= 0),
    "decay_rate": (">= 0", lambda v: v >= 0),
    "time_interval": ("> 0", lambda v: v > 0),
    "decay_factor": ("in (0, 1]", lambda v: (v > 0) & (v <= 1)),
    "warmup_epochs": (">= 0", lambda v: v >= 0),
    "decay_epochs": ("> 0", lambda v: v > 0),
    "min_learning_rate": (">= 0", lambda v: v >= 0),
}


def validate_hparams(hp: HParams) -> None:
    """Check every concrete field of ``hp`` (scalars or arrays) against its range; traced fields are skipped.

    Raises a ``ValueError`` naming the field, the offending value and the allowed range.
    """
    if not isinstance(hp, HParams):
        raise TypeError(f"hp must be a deepopt.train.HParams, got {type(hp).__name__}")
    for name, value in hp._asdict().items():
        if value is None or isinstance(value, jax.core.Tracer):
            continue
        try:
            values = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"HParams.{name} must be a number or an array of numbers, got {value!r}") from None
        rule, is_valid = _HPARAM_RULES[name]
        bad = ~(np.isfinite(values) & is_valid(values))
        if np.any(bad):
            where = "" if values.ndim == 0 else f" at index {np.argwhere(bad)[0].tolist()}"
            raise ValueError(f"HParams.{name} must be finite and {rule}, got {float(values[bad].flat[0])!r}{where}")


class TrainResult(NamedTuple):
    """What ``fit`` returns (batched along a leading axis under ``vmap``).

    Attributes:
      params: the final parameters (the last finite ones when the run diverged).
      costs: ``(epochs,)``: per epoch, the mean over its examples of the mini-batch cost
        (cross-entropy plus ``l2/(2 n_batch)·ΣW²``) on the forward pass that produced each
        gradient, i.e. before that update. NaN for epochs after a divergence.
      train_accuracy: accuracy of ``params`` on the training set, no dropout.
      dev_accuracy: the same on ``dev`` (NaN when no dev set was given).
      final_cost: cost of ``params`` on the whole training set (with L2, no dropout).
      diverged: True when the cost or the parameters stopped being finite.
      diverged_epoch: the epoch where that happened, -1 if never.
      best_epoch: with early stopping, the epoch whose parameters are returned; else -1.
      stopped_epoch: the last epoch trained before early stopping's patience ran out, -1 if
        it never stopped (costs after it are NaN).
      dev_accuracies: ``(epochs,)`` dev accuracy after each epoch with early stopping on (NaN
        once the run is frozen); all NaN when it is off.
      bn_state: running statistics of the batch-norm layers (``()`` without batch norm); pass
        them to ``model.predict(..., bn_state=...)``.
    """

    params: Params
    costs: jax.Array
    train_accuracy: jax.Array
    dev_accuracy: jax.Array
    final_cost: jax.Array
    diverged: jax.Array
    diverged_epoch: jax.Array
    best_epoch: jax.Array
    stopped_epoch: jax.Array
    dev_accuracies: jax.Array
    bn_state: tuple[batchnorm.BatchNormState, ...]


def _check_key(key: Any) -> None:
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


def check_split(name: str, split: Any, config: Config, dtype: Any = None) -> data_lib.Dataset:
    """Validate a split against ``config`` as ``fit`` does (``data.check_dataset``); return it as arrays (X float, y int32).

    ``X`` must have ``layer_sizes[0]`` features, finite values, and ``y`` class ids below ``max(2, n_out)``.
    """
    n_in, n_out = config.layer_sizes[0], config.layer_sizes[-1]
    return data_lib.check_dataset(
        split,
        name,
        num_features=n_in,
        features_from="Config.layer_sizes[0]",
        num_classes=2 if n_out == 1 else n_out,
        classes_from=f"n_out={n_out}",
        float_dtype=dtype,
    )


def prepare_hparams(hp: HParams, config: Config, dtype: Any) -> HParams:
    """Fill the Config-derived ``None`` fields and cast every field to a ``dtype`` array (scalar or batched)."""
    if not isinstance(hp, HParams):
        raise TypeError(f"hp must be a deepopt.train.HParams, got {type(hp).__name__}")
    defaults = {"init_scale": init_lib.default_scale(config.init), "decay_epochs": float(config.epochs)}
    filled = {name: defaults[name] if value is None else value for name, value in hp._asdict().items()}
    return HParams(**{name: jnp.asarray(value, dtype) for name, value in filled.items()})


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
    parameters and sets ``diverged``.

    Args:
      config: static choices (layer sizes, activation, init, optimizer, schedule, batch size, epochs).
      hp: traced hyperparameters (scalars; vmap ``fit`` to run many).
      key: PRNG key (initialization, shuffling, dropout).
      train: training ``Dataset``; its float dtype is the run's dtype.
      dev: optional dev ``Dataset`` for ``dev_accuracy``.
      init_params: start from these parameters instead of ``config.init`` (their dtype is kept).
      dropout: compile the dropout masks in (True, the default: ``keep_prob`` stays a traced
        hyperparameter) or out (False: for runs whose ``keep_prob`` is 1, where dropout is exactly
        the identity; results are unchanged and a small net's step is about a third cheaper).
        ``False`` with a concrete ``keep_prob < 1`` is an error; under ``vmap`` (traced
        ``keep_prob``) the caller vouches for it (``sweep.run`` checks the values before choosing).
    Returns:
      A ``TrainResult``.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a deepopt.train.Config, got {type(config).__name__}")
    _check_key(key)
    train = check_split("train", train, config)
    dtype = train.X.dtype
    if dev is not None:
        dev = check_split("dev", dev, config, dtype)
    elif config.early_stopping is not None:
        raise ValueError(f"Config.early_stopping={config.early_stopping!r} needs a dev set: pass dev=...")
    validate_hparams(hp)  # on the values as given, before any cast or compilation
    dropout = resolve_dropout(hp.keep_prob, dropout)
    hp = prepare_hparams(hp, config, dtype)
    for name, value in hp._asdict().items():
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"HParams.{name} must be a scalar inside fit, got shape {jnp.shape(value)}; "
                "vmap fit over the leading axis to train many models"
            )
    if init_params is not None:
        model.check_params(init_params, "init_params")
        sizes = (jnp.shape(init_params[0]["W"])[0],) + tuple(jnp.shape(p["W"])[1] for p in init_params)
        if sizes != config.layer_sizes:
            raise ValueError(f"init_params has layer sizes {sizes} but Config.layer_sizes is {config.layer_sizes}")
        normalized = tuple("gamma" in layer for layer in init_params[:-1])
        if not all(flag == config.batchnorm for flag in normalized):
            raise ValueError(
                f"Config.batchnorm={config.batchnorm} but init_params has gamma/beta on hidden layers {normalized}; "
                "make them agree (init.mlp(..., batchnorm=True) adds them)"
            )
        init_params = tuple({name: jnp.asarray(value) for name, value in layer.items()} for layer in init_params)
    return _fit_compiled(config, dropout, hp, key, train, dev, init_params)


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
    """How many times the training program has been traced (= compiled) in this process.

    Use it to check that new hyperparameter values or keys do not recompile.
    """
    return _trace_count


def _tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _tree_all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _EpochCarry(NamedTuple):
    """What the epoch scan threads: the run, its divergence / early-stopping state, the best so far."""

    params: Params
    bn_state: tuple[batchnorm.BatchNormState, ...]
    opt_state: Any
    step: jax.Array
    diverged: jax.Array
    diverged_epoch: jax.Array
    stopped: jax.Array
    stopped_epoch: jax.Array
    best_params: Params | None
    best_bn_state: tuple[batchnorm.BatchNormState, ...] | None
    best_dev_accuracy: jax.Array
    best_dev_cost: jax.Array
    best_epoch: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 1))
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
    X, y = train
    m, dtype = X.shape[0], X.dtype
    init_key, shuffle_key, dropout_key = jax.random.split(key, 3)
    if init_params is None:
        params = init_lib.mlp(
            init_key, config.layer_sizes, config.init, hp.init_scale, dtype=dtype, batchnorm=config.batchnorm
        )
    else:
        params = init_params
    optimizer = optim.get(config.optimizer)
    schedule = schedules.get(config.schedule)
    batch_size = m if config.batch_size is None else min(config.batch_size, m)
    full_batch = batch_size == m
    num_batches = -(-m // batch_size)

    def batch_cost(
        params: Params, bn_state: tuple, X_b: jax.Array, y_b: jax.Array, mask: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, tuple]:
        logits, new_bn_state = model.forward_with_state(
            params, X_b, activation=config.activation, keep_prob=hp.keep_prob if dropout else 1.0,
            key=key if dropout else None, bn_state=bn_state,
            train=True, mask=None if full_batch else mask,
        )
        per_example = losses.per_example_cross_entropy(logits, y_b)
        if full_batch:
            return jnp.mean(per_example) + losses.l2_penalty(params, hp.l2, m), new_bn_state
        n_b = jnp.sum(mask).astype(per_example.dtype)
        cost = jnp.sum(jnp.where(mask, per_example, 0)) / n_b + losses.l2_penalty(params, hp.l2, n_b)
        return cost, new_bn_state

    early_stopping = config.early_stopping is not None
    patience = config.early_stopping if isinstance(config.early_stopping, int) else None

    def run_epoch(carry: _EpochCarry, epoch: jax.Array) -> tuple[_EpochCarry, tuple[jax.Array, jax.Array]]:
        frozen = carry.diverged | carry.stopped  # a frozen run takes no more steps
        epoch_dropout_key = jax.random.fold_in(dropout_key, epoch)
        if full_batch:
            index = jnp.zeros((1, 1), jnp.int32)  # unused: the whole set is the batch
            mask = jnp.ones((1, m), bool)
        else:
            index, mask = data_lib.padded_minibatch_indices(jax.random.fold_in(shuffle_key, epoch), m, batch_size)

        def run_step(step_carry: tuple, batch: tuple) -> tuple[tuple, jax.Array]:
            params, bn_state, opt_state, step, halted = step_carry
            batch_number, batch_index, batch_mask = batch
            X_b, y_b = (X, y) if full_batch else (X[batch_index], y[batch_index])
            step_key = jax.random.fold_in(epoch_dropout_key, batch_number)
            (cost, new_bn_state), grads = jax.value_and_grad(batch_cost, has_aux=True)(
                params, bn_state, X_b, y_b, batch_mask, step_key
            )
            learning_rate = jnp.asarray(schedule(hp, epoch, step), dtype)
            new_params, new_state = optimizer.update(grads, opt_state, params, hp._replace(learning_rate=learning_rate))
            halted_now = halted | ~(jnp.isfinite(cost) & _tree_all_finite(new_params))
            params = _tree_select(halted_now, params, new_params)
            bn_state = _tree_select(halted_now, bn_state, new_bn_state)
            opt_state = _tree_select(halted_now, opt_state, new_state)
            step = step + jnp.where(halted_now, 0, 1).astype(step.dtype)
            return (params, bn_state, opt_state, step, halted_now), cost * jnp.sum(batch_mask).astype(dtype)

        batches = (jnp.arange(num_batches), index, mask)
        (params, bn_state, opt_state, step, halted), weighted_costs = jax.lax.scan(
            run_step, (carry.params, carry.bn_state, carry.opt_state, carry.step, frozen), batches
        )
        epoch_cost = jnp.where(frozen, jnp.nan, jnp.sum(weighted_costs) / m).astype(dtype)
        diverged_now = halted & ~frozen
        carry = carry._replace(
            params=params,
            bn_state=bn_state,
            opt_state=opt_state,
            step=step,
            diverged=carry.diverged | diverged_now,
            diverged_epoch=jnp.where(diverged_now, epoch, carry.diverged_epoch),
        )
        if not early_stopping:
            return carry, (epoch_cost, jnp.array(jnp.nan, dtype))
        dev_logits = model.forward(params, dev.X, activation=config.activation, bn_state=bn_state)
        dev_accuracy = jnp.mean(model.predict_from_logits(dev_logits) == dev.y).astype(dtype)
        dev_cost = losses.cross_entropy(dev_logits, dev.y)
        better = (dev_accuracy > carry.best_dev_accuracy) | (
            (dev_accuracy == carry.best_dev_accuracy) & (dev_cost < carry.best_dev_cost)
        )
        improved = better & ~frozen & ~diverged_now
        best_epoch = jnp.where(improved, epoch, carry.best_epoch)
        stopped_now = ~frozen & ~diverged_now & (epoch - best_epoch >= patience) if patience else jnp.array(False)
        carry = carry._replace(
            best_params=_tree_select(improved, params, carry.best_params),
            best_bn_state=_tree_select(improved, bn_state, carry.best_bn_state),
            best_dev_accuracy=jnp.where(improved, dev_accuracy, carry.best_dev_accuracy),
            best_dev_cost=jnp.where(improved, dev_cost, carry.best_dev_cost),
            best_epoch=best_epoch,
            stopped=carry.stopped | stopped_now,
            stopped_epoch=jnp.where(stopped_now, epoch, carry.stopped_epoch),
        )
        return carry, (epoch_cost, jnp.where(frozen, jnp.nan, dev_accuracy))

    minus_one = jnp.array(-1, jnp.int32)
    bn_state = batchnorm.init_states(params)
    carry = _EpochCarry(
        params=params,
        bn_state=bn_state,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        diverged=jnp.array(False),
        diverged_epoch=minus_one,
        stopped=jnp.array(False),
        stopped_epoch=minus_one,
        best_params=params if early_stopping else None,  # not carried when off
        best_bn_state=bn_state if early_stopping else None,
        best_dev_accuracy=jnp.array(-jnp.inf, dtype),
        best_dev_cost=jnp.array(jnp.inf, dtype),
        best_epoch=minus_one,
    )
    carry, (costs, dev_accuracies) = jax.lax.scan(run_epoch, carry, jnp.arange(config.epochs, dtype=jnp.int32))
    params = carry.best_params if early_stopping else carry.params
    bn_state = carry.best_bn_state if early_stopping else carry.bn_state

    train_logits = model.forward(params, X, activation=config.activation, bn_state=bn_state)
    train_accuracy = jnp.mean(model.predict_from_logits(train_logits) == y).astype(dtype)
    final_cost = losses.cross_entropy(train_logits, y) + losses.l2_penalty(params, hp.l2, m)
    if dev is None:
        dev_accuracy = jnp.array(jnp.nan, dtype)
    else:
        dev_predictions = model.predict(params, dev.X, activation=config.activation, bn_state=bn_state)
        dev_accuracy = jnp.mean(dev_predictions == dev.y).astype(dtype)
    return TrainResult(
        params=params,
        costs=costs,
        train_accuracy=train_accuracy,
        dev_accuracy=dev_accuracy,
        final_cost=final_cost,
        diverged=carry.diverged,
        diverged_epoch=carry.diverged_epoch,
        best_epoch=carry.best_epoch,
        stopped_epoch=carry.stopped_epoch,
        dev_accuracies=dev_accuracies,
        bn_state=bn_state,
    )


def broadcast_hparams(hp: HParams, num_runs: int) -> HParams:
    """Give every field of ``hp`` a leading axis of ``num_runs`` (scalars are repeated), ready for ``vmap``.

    ``None`` fields stay ``None`` (``fit`` derives them from the Config).
    """
    if not isinstance(hp, HParams):
        raise TypeError(f"hp must be a deepopt.train.HParams, got {type(hp).__name__}")
    if isinstance(num_runs, bool) or not isinstance(num_runs, int) or num_runs < 1:
        raise ValueError(f"num_runs must be a positive int, got {num_runs!r}")
    fields = {}
    for name, value in hp._asdict().items():
        if value is None:
            fields[name] = None
            continue
        array = jnp.asarray(value)
        if array.ndim == 0:
            array = jnp.broadcast_to(array, (num_runs,))
        elif array.shape != (num_runs,):
            raise ValueError(f"HParams.{name} must be a scalar or have shape ({num_runs},), got {array.shape}")
        fields[name] = array
    return HParams(**fields)
