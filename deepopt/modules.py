r"""A user's Flax linen module as the model of a deepopt run (``train.Config(model=module)``).

The module's ``__call__(x, train: bool)`` maps a batch ``x`` of shape ``(m, ...)`` to logits
``(m, n_out)``: one unit is a binary (sigmoid) classifier, two or more a softmax one. deepopt
keeps its parameters (the ``'params'`` collection) apart from its other collections (the model
state, e.g. ``'batch_stats'`` of ``nn.BatchNorm``), which training updates through ``mutable``;
dropout draws from the ``'dropout'`` rng, which deepopt derives from the run key, the epoch and
the batch. L2 applies to kernels only: :math:`\frac{\lambda}{2m}\sum \|K\|_F^2` over every leaf
named ``kernel`` (``nn.Dense``, ``nn.Conv``, ...), never to biases or normalization scales.

Nothing here imports flax: a linen module is used through its own ``init`` and ``apply``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

PARAMS = "params"
DROPOUT_RNG = "dropout"
KERNEL = "kernel"


def check_module(module: Any, name: str = "Config.model") -> None:
    """``module`` must be a Flax linen module (``init``/``apply`` and hashable, so it can be static)."""
    try:
        import flax.linen as nn
    except ImportError:  # flax is a core dependency; this only guards a broken install
        raise ImportError("Config.model needs flax: pip install flax") from None
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name} must be a flax.linen.Module instance (or None for the built-in MLP), got {module!r:.80}")
    try:
        hash(module)
    except TypeError as error:
        raise TypeError(f"{name} must be hashable (its fields are static: use tuples, not lists): {error}") from None


def is_module(value: Any) -> bool:
    """Whether ``value`` looks like a Flax linen module (a dataclass with ``init`` and ``apply``), without importing flax."""
    return hasattr(value, "init") and hasattr(value, "apply") and dataclasses.is_dataclass(value)


def describe(module: Any) -> str:
    """A stable one-line description of the module: its class and field values, e.g. ``mypkg.CNN(channels=25)``."""
    kind = type(module)
    fields = [
        f"{field.name}={getattr(module, field.name)!r}"
        for field in dataclasses.fields(module)
        if field.name not in ("parent", "name")
    ]
    return f"{kind.__module__}.{kind.__qualname__}({', '.join(fields)})"


def _cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves to the run's float ``dtype`` (Flax initializes in float32 by default)."""
    return jax.tree.map(lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf, tree)


def init(module: Any, key: jax.Array, X: jax.Array) -> tuple[Any, dict[str, Any]]:
    """``(params, model_state)`` of ``module`` for inputs like ``X``: ``module.init`` on one example, in ``X``'s dtype."""
    variables = module.init({PARAMS: key, DROPOUT_RNG: key}, X[:1], train=False)
    variables = _cast(dict(variables), X.dtype)
    params = variables.pop(PARAMS, {})
    return params, variables


def apply_train(
    module: Any, params: Any, model_state: dict[str, Any], X: jax.Array, key: jax.Array | None
) -> tuple[jax.Array, dict[str, Any]]:
    """Logits of a training step and the updated model state (``train=True``, dropout from ``key``)."""
    rngs = {} if key is None else {DROPOUT_RNG: key}
    variables = {PARAMS: params, **model_state}
    if not model_state:
        return module.apply(variables, X, train=True, rngs=rngs), model_state
    logits, updates = module.apply(variables, X, train=True, rngs=rngs, mutable=list(model_state))
    return logits, {name: updates.get(name, value) for name, value in model_state.items()}


def apply_eval(module: Any, params: Any, model_state: dict[str, Any], X: jax.Array) -> jax.Array:
    """Logits for evaluation and prediction (``train=False``: no dropout, running statistics)."""
    return module.apply({PARAMS: params, **model_state}, X, train=False)


def kernel_sum_of_squares(params: Any) -> jax.Array:
    r""":math:`\sum \|K\|_F^2` over every parameter leaf named ``kernel`` (not biases, not normalization scales)."""
    kernels = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path and getattr(path[-1], "key", None) == KERNEL
    ]
    if not kernels:
        return jnp.zeros((), jax.tree.leaves(params)[0].dtype if jax.tree.leaves(params) else None)
    return sum(jnp.sum(jnp.square(kernel)) for kernel in kernels)


@functools.lru_cache(maxsize=64)
def has_kernels(module: Any, example_shape: tuple[int, ...], dtype: str) -> bool:
    """Whether ``module``'s parameters hold a leaf named ``kernel`` (what L2 penalizes), by an abstract init."""
    X = jax.ShapeDtypeStruct((2, *example_shape), jnp.dtype(dtype))
    params, _ = jax.eval_shape(lambda x: init(module, jax.random.key(0), x), X)
    return any(path and getattr(path[-1], "key", None) == KERNEL for path, _ in jax.tree_util.tree_leaves_with_path(params))


@functools.lru_cache(maxsize=64)
def output_units(module: Any, example_shape: tuple[int, ...], dtype: str) -> int:
    """``n_out`` of ``module`` on examples of ``example_shape``, by one abstract evaluation (nothing is computed).

    Raises a ``ValueError`` saying what the module did with such inputs when it cannot take them
    or does not return ``(m, n_out)`` logits.
    """
    X = jax.ShapeDtypeStruct((2, *example_shape), jnp.dtype(dtype))

    def logits_of(x: jax.Array) -> jax.Array:
        params, state = init(module, jax.random.key(0), x)
        return apply_eval(module, params, state, x)

    try:
        out = jax.eval_shape(logits_of, X)
    except Exception as error:  # whatever the user's module raises on such inputs
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"Config.model {describe(module)} cannot take inputs X of shape (m, {', '.join(map(str, example_shape))}) "
            f"{dtype}: {message}"
        ) from None
    if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 2 or out.shape[0] != 2:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"Config.model {describe(module)} must return logits of shape (m, n_out), got {shape} for m=2"
        )
    return int(out.shape[1])
