"""Convolutions as patches × kernel (``deepopt.conv_patches``): the same convolution, and Flax modules run through it."""

from __future__ import annotations

import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import conv_patches, data, sweep, train

PADDINGS = ("SAME", "VALID", 1, "explicit")
CASES = list(itertools.product((1, 2), PADDINGS, (1, 2), (1, 2)))  # spatial dims, padding, stride, dilation


def _close(a: jax.Array, b: jax.Array, tolerance: float = 1e-12) -> float:
    """The largest difference relative to the reference's scale (at least 1)."""
    scale = max(float(jnp.max(jnp.abs(b))), 1.0)
    return float(jnp.max(jnp.abs(a - b))) / scale


@pytest.mark.parametrize(("dims", "padding", "stride", "dilation"), CASES)
def test_patches_conv_is_the_convolution_in_float64_gradients_included(
    dims: int, padding: Any, stride: int, dilation: int
) -> None:
    with jax.enable_x64(True):
        spatial = (13,) if dims == 1 else (9, 8)
        kernel_size = (3,) if dims == 1 else (3, 2)
        pad = [(2, 1)] * dims if padding == "explicit" else padding
        x = jax.random.normal(jax.random.key(0), (3, *spatial, 4), jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (*kernel_size, 4, 5), jnp.float64)
        weights = jax.random.normal(jax.random.key(2), conv_patches.conv_reference(
            x, kernel, (stride,) * dims, pad, (dilation,) * dims).shape, jnp.float64)

        def loss(conv: Any) -> Any:
            return lambda x, k: jnp.sum(jnp.tanh(conv(x, k, (stride,) * dims, pad, (dilation,) * dims)) * weights)

        ours = conv_patches.patches_conv(x, kernel, (stride,) * dims, pad, (dilation,) * dims)
        reference = conv_patches.conv_reference(x, kernel, (stride,) * dims, pad, (dilation,) * dims)
        assert ours.shape == reference.shape
        assert _close(ours, reference) < 1e-12
        grads = jax.grad(loss(conv_patches.patches_conv), argnums=(0, 1))(x, kernel)
        reference_grads = jax.grad(loss(conv_patches.conv_reference), argnums=(0, 1))(x, kernel)
        for got, expected in zip(grads, reference_grads):
            assert _close(got, expected) < 1e-12


def test_a_window_larger_than_the_input_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="window"):
        conv_patches.patches_conv(jnp.ones((1, 2, 1)), jnp.ones((5, 1, 1)), (1,), "VALID")
    with pytest.raises(ValueError, match="channels"):
        conv_patches.patches_conv(jnp.ones((1, 8, 2)), jnp.ones((3, 1, 1)), (1,), "VALID")


class Convs(nn.Module):
    """Every kind of ``nn.Conv``: the ones computed as patches × kernel and the ones left to Flax."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = x[..., None]  # (m, 24, 1)
        h = nn.relu(nn.Conv(4, (5,), strides=2, padding=1)(h))
        h = nn.relu(nn.Conv(4, (3,), padding="SAME", kernel_dilation=2)(h))
        h = nn.relu(nn.Conv(4, (3,), padding="VALID", feature_group_count=2)(h))  # Flax's own
        h = nn.relu(nn.Conv(4, (2,), padding="CIRCULAR")(h))  # Flax's own
        square = h.reshape(h.shape[0], 2, -1, 2)
        square = nn.relu(nn.Conv(3, (2, 2), strides=(1, 2), padding=[(1, 0), (0, 1)])(square))
        return nn.Dense(3)(square.reshape(square.shape[0], -1))


def _conv_count(jaxpr: Any) -> int:
    return str(jaxpr).count("conv_general_dilated")


def test_intercepted_module_is_the_same_function_and_leaves_the_rest_to_flax() -> None:
    with jax.enable_x64(True):
        module = Convs()
        x = jax.random.normal(jax.random.key(0), (5, 24), jnp.float64)
        variables = module.init(jax.random.key(1), x)
        with conv_patches.intercept_convs():
            assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), variables,
                                             module.init(jax.random.key(1), x)))
            ours = module.apply(variables, x)
            ours_grad = jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(v, x))))(variables)
            traced = jax.make_jaxpr(lambda v: module.apply(v, x))(variables)
        reference = module.apply(variables, x)
        reference_grad = jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(v, x))))(variables)
        assert _close(ours, reference) < 1e-12
        for got, expected in zip(jax.tree.leaves(ours_grad), jax.tree.leaves(reference_grad)):
            assert _close(got, expected) < 1e-12
        assert _conv_count(jax.make_jaxpr(lambda v: module.apply(v, x))(variables)) == 5
        assert _conv_count(traced) == 2  # the grouped and the circular one


def test_under_a_per_config_vmap_the_convolution_becomes_a_batched_matmul() -> None:
    module = Convs()
    x = jnp.ones((5, 24), jnp.float32)
    variables = module.init(jax.random.key(1), x)
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, 2 * leaf]), variables)
    with conv_patches.intercept_convs():
        per_config = jax.vmap(lambda v: module.apply(v, x))
        text = str(jax.make_jaxpr(per_config)(stacked))
        values = per_config(stacked)
    assert text.count("feature_group_count=") == 2  # only Flax's own two remain convolutions
    np.testing.assert_allclose(values, jax.vmap(lambda v: module.apply(v, x))(stacked), rtol=2e-5, atol=2e-5)


class SmallCNN(nn.Module):
    """MNIST-1D's CNN in small: two strided convolutions, then a linear layer."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = x[..., None]
        for kernel in (5, 3):
            h = nn.relu(nn.Conv(6, (kernel,), strides=2, padding=1)(h))
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


@pytest.fixture(scope="module")
def cnn_data() -> tuple[data.Dataset, data.Dataset]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 16))
    y = (X[:, :8].sum(1) > 0).astype(np.int32) + (X[:, 8:].sum(1) > 1).astype(np.int32)
    return data.Dataset(X[:64], y[:64]), data.Dataset(X[64:], y[64:])


def test_a_cnn_trains_the_same_with_and_without_patches_in_float64(cnn_data: Any) -> None:
    train_set, dev_set = cnn_data
    with jax.enable_x64(True):
        train_set, dev_set = (data.Dataset(np.asarray(s.X, np.float64), s.y) for s in (train_set, dev_set))
        results = {}
        for kernels in (True, False):
            config = train.Config(model=SmallCNN(), optimizer="adam", batch_size=16, epochs=3, cpu_kernels=kernels)
            results[kernels] = sweep.run(config, {"learning_rate": sweep.grid([1e-3, 1e-2])}, train_set, dev_set,
                                         key=jax.random.key(3), num_configs=None, sampler="grid").rows
        for ours, reference in zip(results[True], results[False]):
            assert ours["final_cost"] == pytest.approx(reference["final_cost"], rel=1e-10, abs=1e-12)
            assert ours["dev_accuracy"] == reference["dev_accuracy"]
