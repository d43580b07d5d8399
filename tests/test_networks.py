"""deepopt.networks: the built-in MLP and a Flax module behind one interface, which is all ``train`` asks of a model."""

from __future__ import annotations

import ast
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import init, model, networks, train


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(1)(nn.relu(nn.Dense(4)(x)))


def _methods(kind: type) -> set[str]:
    return {name for name in vars(kind) if not name.startswith("_") and callable(getattr(kind, name))}


def test_both_networks_answer_the_same_methods() -> None:
    assert _methods(networks.MLP) == _methods(networks.FlaxModule) >= {
        "check_split", "check_init_params", "check_hparams", "check_dropout", "init", "apply_train", "apply_eval",
        "l2_penalty", "describe"}
    mlp = networks.network_of(train.Config((2, 4, 1), activation="tanh", batchnorm=True, cpu_kernels=False))
    assert mlp == networks.MLP((2, 4, 1), "tanh", "he", True, False)
    module = networks.network_of(train.Config(model=Tiny()))
    assert module == networks.FlaxModule(Tiny()) and module.describe().endswith("Tiny()")


def test_the_mlp_network_is_the_course_forward_pass_and_l2() -> None:
    mlp = networks.MLP((2, 4, 1))
    X = jax.random.normal(jax.random.key(1), (5, 2))
    params, state = mlp.init(jax.random.key(0), X, None, None)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, init.mlp(jax.random.key(0), (2, 4, 1)))
    np.testing.assert_array_equal(np.asarray(mlp.apply_eval(params, state, X)), np.asarray(model.forward(params, X)))
    by_hand = 0.3 / (2 * 5) * sum(float(jnp.sum(layer["W"] ** 2)) for layer in params)
    assert float(mlp.l2_penalty(params, 0.3, 5)) == pytest.approx(by_hand, rel=1e-6)


def test_the_module_network_penalizes_kernels_only_and_refuses_its_dropout_field() -> None:
    module = networks.FlaxModule(Tiny())
    X = jax.random.normal(jax.random.key(1), (5, 2))
    params, state = module.init(jax.random.key(0), X, None, None)
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if "kernel" in jax.tree_util.keystr(path)]
    assert len(kernels) == 2
    by_hand = 0.3 / (2 * 5) * sum(float(jnp.sum(k**2)) for k in kernels)
    assert float(module.l2_penalty(params, 0.3, 5)) == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ValueError, match="keep_prob=0.5 is the built-in MLP's dropout"):
        module.check_dropout(train.HParams(keep_prob=0.5))
    networks.MLP((2, 4, 1)).check_dropout(train.HParams(keep_prob=0.5))  # the MLP's own dropout


def test_train_never_asks_which_kind_of_model_it_trains() -> None:
    tree = ast.parse(pathlib.Path(train.__file__).read_text())
    asked = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
             and ast.unparse(node.left) in ("config.model", "self.model")]
    assert len(asked) == 1  # Config.__post_init__ validating its own fields, nowhere in training
