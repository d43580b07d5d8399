"""Loop carries batched from the start under ``vmap``: the same program, traced in fewer passes.

``vmap`` of a ``lax.scan`` or ``lax.while_loop`` must know which carries are batched before it
can batch the body. JAX finds out by a fixpoint: it batches the body with the carries batched
as they come in, and when a carry comes out batched that went in unbatched (Adam's moments start
as zeros, the step counter at 0, while the learning rate is batched) it batches the whole body
again. Loops nested in loops repeat that inside every outer pass, and the sweep nests two
``vmap``\\ s (configs, then seeds) around three loops (epochs, halting passes, mini-batches), so
its largest loop bodies are batched many times over: a noticeable share of the first call
(measurements: docs/engine-measurements.md).

``batched_like(tree, witness)`` returns ``tree`` with every leaf batched wherever a leaf of
``witness`` is batched (unchanged outside ``vmap``), so the fixpoint holds at its first pass.
Each leaf goes through ``lax.select_n(False, leaf, broadcast(witness))``, whose predicate is a
constant: XLA's simplifier folds it to ``leaf`` and the witness computation is dead code, so the
optimized program is the one the fixpoint would have built (``tests/test_vmap_hints.py`` compares
the compiled programs). A carry must only be hinted where it would come out batched anyway (it
depends on the witness): a leaf hinted needlessly is still correct but makes the program carry a
batched copy of it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _witness_scalar(witness: Any) -> jax.Array | None:
    """A float32 scalar that depends on the first element of every non-empty leaf of ``witness``."""
    parts = [jnp.ravel(leaf)[0].astype(jnp.float32) for leaf in jax.tree.leaves(witness) if jnp.size(leaf) > 0]
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def batched_like(tree: Any, witness: Any) -> Any:
    r"""``tree``, each leaf batched under ``vmap`` wherever a leaf of ``witness`` is batched.

    For each leaf :math:`x`: :math:`\mathrm{select}(\mathrm{False}, x, w)` with :math:`w` the
    witness broadcast to :math:`x`'s shape and dtype; the values are :math:`x`'s, and XLA removes the
    select. ``witness`` leaves must be numeric arrays (not PRNG keys); ``None`` leaves of ``tree``
    stay ``None``.
    """
    w = _witness_scalar(witness)
    if w is None:
        return tree

    def hint(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        return jax.lax.select_n(False, x, jnp.broadcast_to(w.astype(x.dtype), x.shape))

    return jax.tree.map(hint, tree)
