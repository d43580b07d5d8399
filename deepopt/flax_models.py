r"""The deepopt MLP written in Flax (``flax.linen``), and the conversions between the two parameter formats.

``MLP`` computes what ``model.forward_with_state`` computes: for every hidden layer
``Z = A W + b`` (``nn.Dense``), optional batch norm (``nn.BatchNorm`` with deepopt's conventions:
momentum 0.9 on the old running statistic, epsilon 1e-5, the two-pass variance
``mean((z - mu)^2)``), the activation, inverted dropout (``nn.Dropout``, ``rate = 1 - keep_prob``);
then a linear output layer (logits). Training mode (``train=True``) uses the batch's statistics and
updates the ``batch_stats`` collection (``mutable=["batch_stats"]``); evaluation uses the running
statistics (``use_running_average``).

Layer ``l`` (0-based) is ``dense_l``; the batch norm of hidden layer ``l`` is ``batchnorm_l``:

=====================  ===============================================
deepopt                Flax
=====================  ===============================================
``params[l]["W"]``     ``params["dense_l"]["kernel"]``
``params[l]["b"]``     ``params["dense_l"]["bias"]``
``params[l]["gamma"]`` ``params["batchnorm_l"]["scale"]``
``params[l]["beta"]``  ``params["batchnorm_l"]["bias"]``
``bn_state[l].mean``   ``batch_stats["batchnorm_l"]["mean"]``
``bn_state[l].var``    ``batch_stats["batchnorm_l"]["var"]``
=====================  ===============================================

Flax parameters are a plain pytree, so deepopt's optimizers train them as they are
(``train_step`` with ``optim.get("adam")``). Batch norm is on every hidden layer or on none
(``Config.batchnorm``'s networks); ``to_flax_params`` refuses other layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepopt import batchnorm, losses, model, optim
from deepopt.parameters import Params, is_batch_normalized, normalized_layers

if TYPE_CHECKING:
    from deepopt.hparams import HParams

FlaxParams = dict[str, dict[str, jax.Array]]
FlaxBatchStats = dict[str, dict[str, jax.Array]]

DENSE = "dense_{}"
BATCHNORM = "batchnorm_{}"


class MLP(nn.Module):
    """The deepopt MLP in Flax: ``(Dense -> [BatchNorm] -> activation -> Dropout)`` per hidden layer, then ``Dense``.

    Attributes:
      layer_sizes: ``(n_in, hidden..., n_out)``, as in ``train.Config``.
      activation: hidden activation, one of ``model.ACTIVATIONS``.
      keep_prob: inverted-dropout keep probability on hidden layers (a Python float: Flax's
        ``Dropout`` takes its rate as a static attribute).
      batchnorm: batch-normalize every hidden layer before its activation.
    """

    layer_sizes: tuple[int, ...]
    activation: str = "relu"
    keep_prob: float = 1.0
    batchnorm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        """Logits ``(m, n_out)`` of ``x`` ``(m, n_in)``; ``train`` selects batch statistics and dropout.

        ``mask`` (``(m,)`` bool, training only): rows that count in the batch statistics.
        """
        model.check_activation(self.activation)
        if not 0 < self.keep_prob <= 1:
            raise ValueError(f"keep_prob must be in (0, 1], got {self.keep_prob!r}")
        if x.ndim != 2 or x.shape[1] != self.layer_sizes[0]:
            raise ValueError(f"x must be (m, {self.layer_sizes[0]}), got shape {x.shape}")
        g = model.ACTIVATIONS[self.activation]
        row_mask = None if mask is None else mask[:, None]
        for l, width in enumerate(self.layer_sizes[1:-1]):
            x = nn.Dense(width, name=DENSE.format(l))(x)
            if self.batchnorm:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=batchnorm.DEFAULT_MOMENTUM,
                    epsilon=batchnorm.DEFAULT_EPS,
                    use_fast_variance=False,
                    name=BATCHNORM.format(l),
                )(x, mask=row_mask)
            x = g(x)
            x = nn.Dropout(rate=1.0 - self.keep_prob, deterministic=not train)(x)
        return nn.Dense(self.layer_sizes[-1], name=DENSE.format(len(self.layer_sizes) - 2))(x)


def _batchnorm_layout(params: Params) -> bool:
    """True when every hidden layer has batch norm, False when none has; a ``ValueError`` otherwise."""
    model.check_params(params)
    normalized = list(normalized_layers(params[:-1]))
    if any(normalized) and not all(normalized):
        raise ValueError(
            f"flax_models.MLP batch-normalizes every hidden layer or none, but params has batch norm on "
            f"hidden layers {tuple(normalized)}"
        )
    return any(normalized)


def module_for(params: Params, *, activation: str = "relu", keep_prob: float = 1.0) -> MLP:
    """The ``MLP`` whose layer sizes and batch norm match deepopt ``params``."""
    has_batchnorm = _batchnorm_layout(params)
    sizes = (params[0]["W"].shape[0], *(layer["W"].shape[1] for layer in params))
    return MLP(layer_sizes=tuple(int(size) for size in sizes), activation=activation, keep_prob=keep_prob,
               batchnorm=has_batchnorm)


def to_flax_params(params: Params) -> FlaxParams:
    """deepopt ``params`` -> the ``"params"`` collection of ``MLP`` (``W, b`` -> ``kernel, bias``; ``gamma, beta`` -> ``scale, bias``)."""
    _batchnorm_layout(params)
    flax_params: FlaxParams = {}
    for l, layer in enumerate(params):
        flax_params[DENSE.format(l)] = {"kernel": layer["W"], "bias": layer["b"]}
        if is_batch_normalized(layer):
            flax_params[BATCHNORM.format(l)] = {"scale": layer["gamma"], "bias": layer["beta"]}
    return flax_params


def _consecutive(entries: Any, pattern: str) -> int:
    """How many of ``pattern.format(0)``, ``pattern.format(1)``, ... are keys of ``entries``, in a row from 0."""
    count = 0
    while pattern.format(count) in entries:
        count += 1
    return count


def from_flax_params(flax_params: FlaxParams) -> Params:
    """The ``"params"`` collection of ``MLP`` -> deepopt ``params`` (the inverse of ``to_flax_params``)."""
    if not hasattr(flax_params, "keys"):
        raise TypeError(f"flax_params must be a dict of layers, got {type(flax_params).__name__}")
    num_layers = _consecutive(flax_params, DENSE)
    if num_layers == 0:
        raise ValueError(f"flax_params has no '{DENSE.format(0)}' entry: got keys {sorted(flax_params)}")
    expected = {DENSE.format(l) for l in range(num_layers)} | {
        BATCHNORM.format(l) for l in range(num_layers - 1) if BATCHNORM.format(l) in flax_params
    }
    if set(flax_params) != expected:
        raise ValueError(f"flax_params has unexpected entries {sorted(set(flax_params) - expected)}")
    params = []
    for l in range(num_layers):
        dense = flax_params[DENSE.format(l)]
        layer = {"W": dense["kernel"], "b": dense["bias"]}
        if BATCHNORM.format(l) in flax_params:
            norm = flax_params[BATCHNORM.format(l)]
            layer["gamma"], layer["beta"] = norm["scale"], norm["bias"]
        params.append(layer)
    params = tuple(params)
    _batchnorm_layout(params)
    return params


def to_flax_batch_stats(bn_state: Sequence[batchnorm.BatchNormState]) -> FlaxBatchStats:
    """deepopt running statistics (one ``BatchNormState`` per hidden layer) -> the ``"batch_stats"`` collection."""
    return {BATCHNORM.format(l): {"mean": state.mean, "var": state.var} for l, state in enumerate(bn_state)}


def from_flax_batch_stats(batch_stats: FlaxBatchStats) -> tuple[batchnorm.BatchNormState, ...]:
    """The ``"batch_stats"`` collection -> deepopt's ``bn_state`` (the inverse of ``to_flax_batch_stats``)."""
    count = _consecutive(batch_stats, BATCHNORM)
    if count != len(batch_stats):
        raise ValueError(f"batch_stats must hold {BATCHNORM.format('0..L-2')} entries in order, got {sorted(batch_stats)}")
    return tuple(
        batchnorm.BatchNormState(batch_stats[BATCHNORM.format(l)]["mean"], batch_stats[BATCHNORM.format(l)]["var"])
        for l in range(count)
    )


def to_flax_variables(
    params: Params, bn_state: Sequence[batchnorm.BatchNormState] | None = None
) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}`` for ``MLP.apply``; ``bn_state`` None starts the statistics at mean 0, var 1."""
    variables: dict[str, Any] = {"params": to_flax_params(params)}
    if model.has_batchnorm(params):
        variables["batch_stats"] = to_flax_batch_stats(batchnorm.init_states(params) if bn_state is None else bn_state)
    return variables


def apply(
    module: MLP,
    flax_params: FlaxParams,
    X: jax.Array,
    *,
    batch_stats: FlaxBatchStats | None = None,
    train: bool = False,
    key: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, FlaxBatchStats]:
    """``(logits, new_batch_stats)``: ``module.apply`` with the ``batch_stats`` bookkeeping done.

    In training mode a batch-normalized module updates its statistics (``mutable=["batch_stats"]``)
    and dropout draws from ``key`` (required when ``keep_prob < 1``); in evaluation the statistics
    come back unchanged. Without batch norm ``batch_stats`` is ``{}``.
    """
    batch_stats = {} if batch_stats is None else batch_stats
    if module.batchnorm and not batch_stats:
        raise ValueError("a batch-normalized MLP needs batch_stats (to_flax_batch_stats or to_flax_variables)")
    if train and module.keep_prob < 1 and key is None:
        raise ValueError(f"training with keep_prob={module.keep_prob} needs a PRNG key for dropout: pass key=...")
    variables = {"params": flax_params, **({"batch_stats": batch_stats} if batch_stats else {})}
    rngs = {"dropout": key} if key is not None else None
    if train and module.batchnorm:
        logits, updates = module.apply(variables, X, train=True, mask=mask, rngs=rngs, mutable=["batch_stats"])
        return logits, updates["batch_stats"]
    return module.apply(variables, X, train=train, mask=mask, rngs=rngs), batch_stats


def cost(
    module: MLP,
    flax_params: FlaxParams,
    X: jax.Array,
    y: jax.Array,
    *,
    batch_stats: FlaxBatchStats | None = None,
    key: jax.Array | None = None,
    l2: Any = 0.0,
) -> tuple[jax.Array, FlaxBatchStats]:
    r"""Training cost ``cross_entropy(logits, y) + \frac{\lambda}{2m}\sum_l \|W_l\|^2`` and the new ``batch_stats``."""
    logits, new_batch_stats = apply(module, flax_params, X, batch_stats=batch_stats, train=True, key=key)
    penalty = losses.l2_penalty(from_flax_params(flax_params), l2, X.shape[0])
    return losses.cross_entropy(logits, y) + penalty, new_batch_stats


def train_step(
    module: MLP,
    optimizer: optim.Optimizer,
    flax_params: FlaxParams,
    batch_stats: FlaxBatchStats,
    opt_state: Any,
    X: jax.Array,
    y: jax.Array,
    hp: HParams,
    key: jax.Array | None = None,
) -> tuple[FlaxParams, FlaxBatchStats, Any, jax.Array]:
    """One update of the Flax model by a deepopt optimizer: ``(params, batch_stats, opt_state, cost)``.

    ``hp`` is a ``train.HParams`` (its ``learning_rate`` is used as is; ``l2`` enters the cost).
    Pure; ``jax.jit(train_step, static_argnums=(0, 1))`` compiles it once per module and optimizer.
    """
    (value, new_batch_stats), grads = jax.value_and_grad(cost, argnums=1, has_aux=True)(
        module, flax_params, X, y, batch_stats=batch_stats, key=key, l2=hp.l2
    )
    new_params, new_opt_state = optimizer.update(grads, opt_state, flax_params, hp)
    return new_params, new_batch_stats, new_opt_state, value


def accuracy(
    module: MLP, flax_params: FlaxParams, X: jax.Array, y: jax.Array, *, batch_stats: FlaxBatchStats | None = None
) -> jax.Array:
    """Fraction of ``y`` predicted right in evaluation mode (running statistics, no dropout)."""
    logits, _ = apply(module, flax_params, X, batch_stats=batch_stats)
    return jnp.mean(model.predict_from_logits(logits) == y)
