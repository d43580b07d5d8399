r"""One model interface for training: the built-in MLP and a user's Flax module behind the same methods.

``network_of(config)`` gives the network of a ``train.Config``: ``MLP`` (``config.model`` is None:
``layer_sizes``, ``activation``, ``init``, ``batchnorm``) or ``FlaxModule`` (``config.model``).
Both answer:

- ``check_split(name, split, task, dtype, on_host)``: a split as this network takes it (features) with
  targets the ``task`` can learn with its outputs (``Task.check_targets``);
- ``check_init_params(init_params, X)``: given starting parameters, checked, as arrays;
- ``check_hparams(hp, example_shape, dtype)``: concrete values that make no sense for it;
- ``check_dropout(hp)``: ``keep_prob`` values it can train with;
- ``init(key, X, init_scale, init_params)``: ``(params, model_state)``;
- ``apply_train(params, model_state, X, key, keep_prob, dropout, mask)``: logits and the new model
  state (dropout drawn from ``key``; ``mask`` marks the real rows of a padded mini-batch);
- ``apply_eval(params, model_state, X)``: logits without dropout, running statistics;
- ``l2_penalty(params, lambd, m)``: :math:`\frac{\lambda}{2m}\sum\|W\|_F^2` over the weights L2
  acts on (the MLP's ``W``, a module's ``kernel`` leaves; never biases or normalization scales);
- ``describe()``: what rows record as the model.

``train`` calls only these, so it never asks which kind of model it trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepopt import batchnorm, conv_patches, losses, model, modules, tasks
from deepopt import data as data_lib
from deepopt import init as init_lib
from deepopt.hparams import HParams, HParamsValueError, concrete_array, first_index
from deepopt.parameters import Params, normalized_layers


@dataclasses.dataclass(frozen=True)
class MLP:
    """The built-in MLP of ``layer_sizes`` (``deepopt.model``), its training step through ``cpu_kernels`` when asked."""

    layer_sizes: tuple[int, ...]
    activation: str = "relu"
    init_scheme: str = "he"
    batchnorm: bool = False
    cpu_kernels: bool = True

    def check_split(
        self, name: str, split: Any, task: tasks.Task, dtype: Any = None, on_host: bool = False
    ) -> data_lib.Dataset:
        """``X`` of shape ``(m, layer_sizes[0])``, targets ``task`` learns with ``n_out`` outputs (class ids below ``max(2, n_out)``)."""
        n_in, n_out = self.layer_sizes[0], self.layer_sizes[-1]
        class_ids = task.targets == tasks.CLASS_IDS
        checked = data_lib.check_dataset(
            split, name, num_features=n_in, features_from="Config.layer_sizes[0]", float_dtype=dtype,
            on_host=on_host, targets=task.targets, num_classes=(2 if n_out == 1 else n_out) if class_ids else None,
            classes_from=f"n_out={n_out}",
        )
        if not class_ids:
            task.check_targets(checked.y, n_out, f"{name}.y", f"n_out={n_out}")
        return checked

    def check_init_params(self, init_params: Any, X: Any) -> Params:
        """``init_params`` must match ``layer_sizes`` and ``batchnorm``."""
        del X
        model.check_params(init_params, "init_params")
        sizes = (jnp.shape(init_params[0]["W"])[0],) + tuple(jnp.shape(p["W"])[1] for p in init_params)
        if sizes != self.layer_sizes:
            raise ValueError(f"init_params has layer sizes {sizes} but Config.layer_sizes is {self.layer_sizes}")
        normalized = normalized_layers(init_params[:-1])
        if not all(flag == self.batchnorm for flag in normalized):
            raise ValueError(
                f"Config.batchnorm={self.batchnorm} but init_params has gamma/beta on hidden layers {normalized}; "
                "make them agree (init.mlp(..., batchnorm=True) adds them)"
            )
        return tuple({name: jnp.asarray(value) for name, value in layer.items()} for layer in init_params)

    def check_hparams(self, hp: HParams, example_shape: tuple[int, ...] | None, dtype: str) -> None:
        """Nothing beyond ``validate_hparams``: every value in range fits the MLP."""

    def check_dropout(self, hp: HParams) -> None:
        """The MLP's dropout is ``HParams.keep_prob``: any value in range."""

    def init(self, key: jax.Array, X: jax.Array, init_scale: Any, init_params: Params | None) -> tuple[Params, Any]:
        """``init.mlp`` (or ``init_params``) and fresh batch-norm statistics."""
        if init_params is None:
            params = init_lib.mlp(key, self.layer_sizes, self.init_scheme, init_scale, dtype=X.dtype,
                                  batchnorm=self.batchnorm)
        else:
            params = init_params
        return params, batchnorm.init_states(params)

    def apply_train(
        self, params: Params, model_state: Any, X: jax.Array, key: jax.Array, keep_prob: Any, dropout: bool,
        mask: jax.Array | None,
    ) -> tuple[jax.Array, Any]:
        """Training-mode logits: inverted dropout with ``keep_prob`` when ``dropout``, batch statistics of ``mask``'s rows."""
        return model.forward_with_state(
            params, X, activation=self.activation, keep_prob=keep_prob if dropout else 1.0,
            key=key if dropout else None, bn_state=model_state, train=True, mask=mask, dense_vjp=self.cpu_kernels,
        )

    def apply_eval(self, params: Params, model_state: Any, X: jax.Array) -> jax.Array:
        return model.forward(params, X, activation=self.activation, bn_state=model_state)

    def l2_penalty(self, params: Params, lambd: Any, m: Any) -> jax.Array:
        return losses.l2_penalty(params, lambd, m)

    def describe(self) -> None:
        """What rows record as ``config["model"]``: None (the MLP is described by the Config's own fields)."""
        return None


@dataclasses.dataclass(frozen=True)
class FlaxModule:
    """A user's Flax linen module (``deepopt.modules``): its own layers, dropout and batch statistics.

    ``conv_patches``: its ``nn.Conv`` layers run as patches × kernel (``deepopt.conv_patches``), a
    batched matmul under a sweep's per-config ``vmap`` instead of a grouped convolution; the same
    values up to float rounding. ``Config.cpu_kernels`` sets it.
    """

    module: Any
    conv_patches: bool = True

    def check_split(
        self, name: str, split: Any, task: tasks.Task, dtype: Any = None, on_host: bool = False
    ) -> data_lib.Dataset:
        """``X`` of shape ``(m, ...)`` that the module takes (one abstract evaluation), targets ``task`` learns with its outputs."""
        checked = data_lib.check_dataset(split, name, float_dtype=dtype, any_rank=True, on_host=on_host,
                                         targets=task.targets)
        n_out = modules.output_units(self.module, tuple(checked.X.shape[1:]), str(checked.X.dtype))
        task.check_targets(
            checked.y,
            n_out,
            f"{name}.y",
            f"the {n_out} output unit{'s' if n_out > 1 else ''} of Config.model",
        )
        return checked

    def check_init_params(self, init_params: Any, X: Any) -> Any:
        """``init_params`` must be the module's ``'params'`` collection, shaped as its ``init`` makes it."""
        expected = jax.eval_shape(lambda x: modules.init(self.module, jax.random.key(0), x)[0], X)
        if jax.tree.structure(init_params) != jax.tree.structure(expected) or any(
            jnp.shape(a) != b.shape for a, b in zip(jax.tree.leaves(init_params), jax.tree.leaves(expected))
        ):
            raise ValueError(
                f"init_params must be the module's 'params' collection, shaped as {modules.describe(self.module)} "
                f"initializes it: {jax.tree.map(lambda leaf: leaf.shape, expected)}"
            )
        return jax.tree.map(jnp.asarray, init_params)

    def check_dropout(self, hp: HParams) -> None:
        """``keep_prob`` stays 1: the module does its own dropout."""
        if not isinstance(hp.keep_prob, jax.core.Tracer) and np.any(np.asarray(hp.keep_prob, np.float64) != 1.0):
            raise ValueError(
                f"HParams.keep_prob={hp.keep_prob!r} is the built-in MLP's dropout; Config.model does its own "
                "(nn.Dropout's rate, fed by deepopt's 'dropout' rng): keep keep_prob=1"
            )

    def check_hparams(self, hp: HParams, example_shape: tuple[int, ...] | None, dtype: str) -> None:
        """``l2 > 0`` needs a ``kernel`` leaf (checked when ``example_shape`` is given)."""
        l2 = concrete_array("HParams.l2", hp.l2)
        if example_shape is not None and l2 is not None and np.any(l2 > 0):
            if not modules.has_kernels(self.module, tuple(example_shape), dtype):
                positive = l2 > 0
                raise HParamsValueError(
                    f"HParams.l2={float(l2[positive].flat[0])!r} but Config.model {modules.describe(self.module)} has "
                    "no parameter named 'kernel' (L2 penalizes kernels only, so it would do nothing): name the weights "
                    "'kernel' (as nn.Dense and nn.Conv do) or keep l2=0",
                    first_index(positive),
                )

    def init(self, key: jax.Array, X: jax.Array, init_scale: Any, init_params: Any) -> tuple[Any, Any]:
        """The module's own ``init`` (its parameters replaced by ``init_params`` when given)."""
        del init_scale  # the module initializes itself
        params, model_state = modules.init(self.module, key, X)
        return (params if init_params is None else init_params), model_state

    def apply_train(
        self, params: Any, model_state: Any, X: jax.Array, key: jax.Array, keep_prob: Any, dropout: bool,
        mask: jax.Array | None,
    ) -> tuple[jax.Array, Any]:
        """Training-mode logits; the module's own dropout always draws from the ``'dropout'`` rng (``key``)."""
        del keep_prob, dropout, mask
        with self._layers():
            return modules.apply_train(self.module, params, model_state, X, key)

    def apply_eval(self, params: Any, model_state: Any, X: jax.Array) -> jax.Array:
        with self._layers():
            return modules.apply_eval(self.module, params, model_state, X)

    def _layers(self) -> contextlib.AbstractContextManager:
        """Where the module's layers are traced: ``conv_patches.intercept_convs`` when ``conv_patches``."""
        return conv_patches.intercept_convs() if self.conv_patches else contextlib.nullcontext()

    def l2_penalty(self, params: Any, lambd: Any, m: Any) -> jax.Array:
        return lambd / (2 * m) * modules.kernel_sum_of_squares(params)

    def describe(self) -> str:
        """What rows record as ``config["model"]``: the module's class and fields (``modules.describe``)."""
        return modules.describe(self.module)


Network = MLP | FlaxModule


def network_of(config: Any) -> Network:
    """The network a ``train.Config`` trains: ``FlaxModule(config.model)``, else the ``MLP`` of its fields."""
    if config.model is not None:
        return FlaxModule(config.model, config.cpu_kernels)
    return MLP(config.layer_sizes, config.activation, config.init, config.batchnorm, config.cpu_kernels)
