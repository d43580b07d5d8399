"""The XLA options deepopt compiles its programs with: LLVM at optimization level 1 on the CPU.

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

A level given in ``XLA_FLAGS`` (``--xla_backend_optimization_level=N``) wins, so
``XLA_FLAGS=--xla_backend_optimization_level=3`` gives XLA's default back; other platforms get
XLA's defaults. ``jit`` is ``jax.jit`` with these options for the platform the call runs on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options(platform: str) -> dict[str, Any] | None:
    """The options for a program on ``platform`` (``"cpu"``, ``"gpu"``, ...): ``CPU_COMPILER_OPTIONS`` on the CPU."""
    if platform != "cpu" or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(CPU_COMPILER_OPTIONS)


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
