import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import init


@pytest.mark.parametrize("scheme", init.SCHEMES)
def test_shapes_dtypes_and_zero_biases(scheme):
    params = init.mlp(jax.random.key(0), (4, 6, 3, 1), scheme)
    assert isinstance(params, tuple) and len(params) == 3
    assert [p["W"].shape for p in params] == [(4, 6), (6, 3), (3, 1)]
    assert [p["b"].shape for p in params] == [(6,), (3,), (1,)]
    for layer in params:
        assert layer["W"].dtype == jnp.float32
        np.testing.assert_array_equal(layer["b"], 0.0)


@pytest.mark.parametrize(
    "scheme, expected_variance",
    [
        ("he", lambda fan_in, fan_out: 2 / fan_in),
        ("xavier", lambda fan_in, fan_out: 1 / fan_in),
        ("lecun", lambda fan_in, fan_out: 1 / fan_in),
        ("glorot", lambda fan_in, fan_out: 2 / (fan_in + fan_out)),
        ("random", lambda fan_in, fan_out: 100.0),
    ],
)
def test_weight_variance_on_a_large_layer(scheme, expected_variance):
    fan_in, fan_out = 800, 400
    (layer,) = init.mlp(jax.random.key(1), (fan_in, fan_out), scheme)
    variance = float(jnp.var(layer["W"]))
    assert variance == pytest.approx(expected_variance(fan_in, fan_out), rel=0.02)
    assert abs(float(jnp.mean(layer["W"]))) < 0.01 * np.sqrt(variance)


def test_scale_multiplies_the_std_and_may_be_traced():
    key = jax.random.key(2)
    he = init.mlp(key, (50, 20), "he")
    doubled = init.mlp(key, (50, 20), "he", scale=2.0)
    np.testing.assert_allclose(doubled[0]["W"], 2.0 * he[0]["W"], rtol=1e-6)
    random_small = jax.jit(lambda s: init.mlp(key, (50, 20), "random", scale=s))(0.01)
    random_default = init.mlp(key, (50, 20), "random")
    np.testing.assert_allclose(random_small[0]["W"] * 1000.0, random_default[0]["W"], rtol=1e-5)


def test_zeros_and_float64():
    params = init.mlp(jax.random.key(0), (3, 2), "zeros")
    np.testing.assert_array_equal(params[0]["W"], 0.0)
    with jax.enable_x64(True):
        params = init.mlp(jax.random.key(0), (3, 2), "he", dtype=jnp.float64)
        assert params[0]["W"].dtype == jnp.float64 and params[0]["b"].dtype == jnp.float64


def test_errors():
    with pytest.raises(ValueError, match=r"init scheme must be one of \['zeros', 'random', 'xavier', 'glorot', 'he', 'lecun'\], got 'kaiming'"):
        init.mlp(jax.random.key(0), (2, 3), "kaiming")
    with pytest.raises(ValueError, match="at least"):
        init.mlp(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match="positive ints"):
        init.mlp(jax.random.key(0), (2, 0, 1))
    with pytest.raises(TypeError, match="float dtype"):
        init.mlp(jax.random.key(0), (2, 1), dtype=jnp.int32)
