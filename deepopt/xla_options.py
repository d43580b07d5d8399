"""The XLA options deepopt compiles its programs with on the CPU: LLVM at level 1, XLA's elemental emitters.

Both shorten compilation, which every user's first call pays. LLVM level 1 compiles faster than
XLA's default level 3 and runs as fast (level 0 compiles faster still but runs far slower). The
elemental loop-fusion emitters (``xla_cpu_use_fusion_emitters=False``) generate each kernel more
quickly than XLA's newer MLIR ones, for a shorter first call and slightly slower warm runs; both
compute the same formulas. (Measurements: docs/engine-measurements.md.)

What it changes: floating-point results are rounded as a different compiler build would round
them. Against level 3, costs can differ in the last float32 bit, and a run whose training
amplifies rounding can end elsewhere; every run is as valid and as reproducible (the test suite
compiles at level 0 and checks the course's figures there).

An option given in ``XLA_FLAGS`` wins over deepopt's (``--xla_backend_optimization_level=3``
gives XLA's default level back, ``--xla_cpu_use_fusion_emitters=true`` its default emitters);
other platforms get XLA's defaults. ``jit`` is ``jax.jit`` with these options for the platform the
call runs on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}


def compiler_options(platform: str) -> dict[str, Any] | None:
    """The options for a program on ``platform`` (``"cpu"``, ``"gpu"``, ...).

    On the CPU: ``CPU_COMPILER_OPTIONS`` less those ``XLA_FLAGS`` names (None when it names them all).
    """
    if platform != "cpu":
        return None
    given = os.environ.get("XLA_FLAGS", "")
    options = {name: value for name, value in CPU_COMPILER_OPTIONS.items() if f"--{name}" not in given}
    return options or None


def cpu_llvm_level() -> int:
    """The LLVM optimization level of deepopt's CPU programs: ``XLA_FLAGS``' ``--xla_backend_optimization_level``
    where it is given, else deepopt's own (1). From level 1 up LLVM fuses a multiply and an add into one
    rounding, as the matrix kernels do (``model.elementwise_transposed_matmul`` relies on it)."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        name, _, value = flag.partition("=")
        if name == "--xla_backend_optimization_level" and value.strip().lstrip("-").isdigit():
            return int(value)
    return int(CPU_COMPILER_OPTIONS["xla_backend_optimization_level"])


def jit(static_argnums: Sequence[int] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``functools.partial(jax.jit, static_argnums=...)`` with ``compiler_options`` for the default backend.

    The backend is read at the first call (not at import, which would start JAX's backends), and
    one ``jax.jit`` is kept per backend. Called inside another trace (a user's ``jax.jit`` or
    ``vmap`` around ``fit``), it is a plain nested ``jax.jit``: the outer program's options apply.
    """

    def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
        nested = jax.jit(fun, static_argnums=tuple(static_argnums))
        jitted: dict[str, Callable[..., Any]] = {}

        @functools.wraps(fun)
        def call(*args: Any) -> Any:
            if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
                return nested(*args)
            platform = jax.default_backend()
            if platform not in jitted:
                jitted[platform] = jax.jit(
                    fun, static_argnums=tuple(static_argnums), compiler_options=compiler_options(platform)
                )
            return jitted[platform](*args)

        return call

    return decorate
