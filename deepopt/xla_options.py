"""The XLA options deepopt compiles its programs with on the CPU: LLVM at level 1, XLA's elemental emitters.

Measured on this project's 2-core CPU (jax 0.10.2), on the benchmark's chunk program (128 runs
of a 2-20-10-1 Adam net, 200 epochs), each setting in a fresh process:

| LLVM level | compile s | run s |
|---|---|---|
| 3 (XLA's default) | 1.70, 1.81, 1.98, 1.81 | 0.66, 0.62, 0.70, 0.64 |
| 2 | 1.77, 1.50 | 0.62, 0.61 |
| 1 (deepopt's) | 1.29, 1.29, 1.44, 1.36 | 0.61, 0.59, 0.63, 0.67 |
| 0 | 0.97, 0.88 | 2.29, 2.04 |

End to end, ``sweep.run`` of the benchmark's 256 runs on one device (4 alternating runs each):
first call 3.36 s median against 3.99 s, compilation 1.69 s against 2.22 s, warm runs as fast.

What it changes: floating-point results are rounded as a different compiler build would round
them. Against level 3, per-epoch and final costs differ in the last float32 bit (relative
differences up to 3e-7), and a run whose training amplifies rounding (full-batch RMSprop at a
learning rate of 3, say) can end elsewhere: such a run's final cost differed by 0.1% and its train
accuracy by one example in 100. Every run is as valid and as reproducible as before; it is not
the same run as deepopt computed before this setting (the test suite compiles at level 0 and
checks the course's figures there).

XLA's elemental emitters for loop fusions (``xla_cpu_use_fusion_emitters=False``) instead of its
newer MLIR fusion emitters: the program has as many kernels, each quicker to generate. The same
job, 256 runs on one device with two chunks at once, fresh processes alternating (2-core EPYC):

| fusion emitters | compile s | first call s | warm s |
|---|---|---|---|
| MLIR (XLA's default) | 2.23, 1.63 | 3.46, 2.68 | 0.704, 0.720 |
| elemental (deepopt's) | 1.15, 1.16 | 2.22, 2.24 | 0.734, 0.759 |

and on the compute-bound 2-256-256-1 net (32 runs, chunks of 4): compile 1.69 / 1.94 s against
1.24 / 1.31 s, warm 0.62 / 0.66 s against 0.68 / 0.71 s. The first call, which every user meets,
is 0.4-1.2 s shorter; warm runs are 4-8% slower. The rows are the same bit for bit on the
benchmark's ReLU and tanh jobs (both emitters compute the same formulas).

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
