"""``vmap_hints.batched_like``: the loops' carries batched from the start, and the compiled programs unchanged.

The hints exist to make tracing cheaper (JAX's fixpoint over which loop carries are batched holds at
its first pass); they must not change what runs. So the sweep's chunk programs and the adaptive
searches' state programs are compiled with and without them and compared instruction by
instruction, for a spread of configurations (optimizers, mini-batch and full batch, dropout,
batch norm, early stopping, curves, a Flax module).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import train, vmap_hints
from deepopt.sweep import engine


def _instructions(compiled: object) -> list[str]:
    """The optimized HLO's instructions, names and metadata left out (they differ between traces)."""
    lines = []
    for line in compiled.as_text().splitlines():
        if re.match(r"^\s*\d+ [\"{]", line) or re.match(r"^(FileNames|FunctionNames|FileLocations|StackFrames)", line):
            continue  # the stack-frame tables: where the ops came from, not what they do
        line = re.sub(r", metadata=\{[^}]*\}", "", line)
        lines.append(re.sub(r"\b[A-Za-z_][\w\-]*\.\d+\b", "_", re.sub(r"%[\w.\-]+", "%_", line)).strip())
    return lines


def test_batched_like_keeps_the_values_and_batches_where_the_witness_is_batched() -> None:
    tree = {"zeros": jnp.zeros((3,)), "count": jnp.int32(4), "flag": jnp.array(True), "none": None}

    def hinted(witness: jax.Array) -> dict:
        return vmap_hints.batched_like(tree, witness)

    batched = jax.vmap(hinted)(jnp.arange(5.0))
    assert batched["zeros"].shape == (5, 3) and batched["count"].shape == (5,) and batched["flag"].shape == (5,)
    np.testing.assert_array_equal(batched["zeros"], np.zeros((5, 3)))
    np.testing.assert_array_equal(batched["count"], np.full(5, 4))
    assert bool(jnp.all(batched["flag"])) and batched["none"] is None
    # An unbatched witness leaves the tree unbatched (out_axes=None raises on a batched output).
    unbatched = jax.vmap(hinted, in_axes=None, out_axes=None, axis_size=5)(jnp.float32(1.0))
    assert unbatched["zeros"].shape == (3,)
    # A witness of several leaves: batched if any of them is.
    two = jax.vmap(lambda a, b: vmap_hints.batched_like(jnp.float32(0), (a, b)), in_axes=(None, 0))(
        jnp.ones(2), jnp.ones((4, 2))
    )
    assert two.shape == (4,)
    # Outside vmap it is the identity.
    assert vmap_hints.batched_like(tree, jnp.float32(2.0))["count"] == 4
    assert vmap_hints.batched_like(tree, (jnp.zeros((0,)),)) is tree  # nothing to witness


def test_the_compiled_select_is_gone() -> None:
    """XLA folds the constant-predicate select, batched or not: the optimized program has none left."""
    def hinted(x: jax.Array, w: jax.Array) -> jax.Array:
        return vmap_hints.batched_like(x * 2.0, w)

    plain = jax.jit(hinted).lower(jnp.ones(4), jnp.float32(1)).compile()
    batched = jax.jit(jax.vmap(hinted, in_axes=(None, 0))).lower(jnp.ones(4), jnp.ones(3)).compile()
    for compiled in (plain, batched):
        assert not any(" select(" in line for line in _instructions(compiled))


class _BatchNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = nn.relu(nn.Dense(4)(x))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.Dense(1)(h)


_CASES = {
    "adam, mini-batch": (train.Config((2, 4, 3, 1), optimizer="adam", batch_size=8, epochs=3), False, False),
    "momentum, batch norm, dropout, early stopping, curves": (
        train.Config((2, 4, 1), optimizer="momentum", batch_size=8, epochs=3, batchnorm=True, early_stopping=1),
        True, True,
    ),
    "gd, full batch, zeros init, a schedule": (
        train.Config((2, 3, 1), optimizer="gd", epochs=2, init="zeros", schedule="inverse_time"), False, False,
    ),
    "a Flax module with batch norm, rmsprop, keep_best": (
        train.Config(model=_BatchNormMLP(), optimizer="rmsprop", batch_size=8, epochs=2, early_stopping="keep_best"),
        False, False,
    ),
}


def _compile_both(monkeypatch: pytest.MonkeyPatch, compile_once: callable) -> tuple[list[str], list[str]]:
    jax.clear_caches()  # fit's nested jit would hand the second trace the first one's jaxpr
    hinted = _instructions(compile_once())
    with monkeypatch.context() as patch:
        patch.setattr(vmap_hints, "batched_like", lambda tree, witness: tree)
        jax.clear_caches()
        plain = _instructions(compile_once())
    jax.clear_caches()
    return hinted, plain


_SHAPES = (((20, 2), (20,)), ((12, 2), (12,)), None)


@pytest.mark.parametrize("case", list(_CASES))
def test_the_chunk_program_is_the_program_the_fixpoint_builds(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    config, dropout, curves = _CASES[case]
    key = jax.random.key(0)
    key_shape = tuple(np.asarray(jax.random.key_data(key)).shape)

    def compile_once() -> object:
        return engine._compile.__wrapped__(
            config, 2, 2, str(jax.random.key_impl(key)), key_shape, "float32", _SHAPES, tuple(jax.devices()[:1]),
            False, dropout, curves,
        )[0]

    hinted, plain = _compile_both(monkeypatch, compile_once)
    assert len(hinted) > 100 and hinted == plain


def test_the_state_program_is_the_program_the_fixpoint_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    config = train.Config((2, 4, 1), optimizer="adam", batch_size=8, epochs=3, early_stopping=2)
    key = jax.random.key(0)
    key_shape = tuple(np.asarray(jax.random.key_data(key)).shape)

    def compile_once() -> object:
        return engine._compile.__wrapped__(
            config, 2, 2, str(jax.random.key_impl(key)), key_shape, "float32", _SHAPES, tuple(jax.devices()[:1]),
            False, False, stage=True,
        )[0]

    hinted, plain = _compile_both(monkeypatch, compile_once)
    assert len(hinted) > 100 and hinted == plain
