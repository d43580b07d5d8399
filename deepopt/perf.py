r"""Counting and timing the work of training: config-steps, matmul FLOPs, medians, the matmul peak, compile phases,
peak resident memory.

A *config-step* is one optimizer update of one run; a run of ``fit`` takes
``epochs · ceil(m / batch_size)`` of them (``epochs`` with full batches). The matmul FLOPs of one
training example through an MLP with weights :math:`W_l` of shape ``(n_{l-1}, n_l)`` are

.. math:: 2\sum_l n_{l-1} n_l \;(\text{forward}) + 2\sum_l n_{l-1} n_l \;(\partial W)
          + 2\sum_{l \ge 2} n_{l-1} n_l \;(\partial a),

the first layer needing no gradient with respect to the input. Elementwise work (activations,
loss, optimizer) is not counted: this is the useful work a matmul peak can be compared with.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepopt import train as train_lib


def steps_per_run(config: train_lib.Config, num_examples: int) -> int:
    """Optimizer updates in one ``fit`` run: ``epochs · ceil(m / batch_size)`` (``epochs`` for full batches)."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
    batch = num_examples if config.batch_size is None else min(config.batch_size, num_examples)
    return config.epochs * -(-num_examples // batch)


def matmul_flops_per_example(layer_sizes: Sequence[int]) -> int:
    r"""Training matmul FLOPs of one example: :math:`4\sum_l n_{l-1}n_l + 2\sum_{l\ge2} n_{l-1}n_l`."""
    sizes = [int(n) for n in layer_sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"layer_sizes must be at least two positive ints, got {tuple(layer_sizes)!r}")
    products = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 4 * sum(products) + 2 * sum(products[1:])


def training_flops(config: train_lib.Config, num_examples: int) -> int:
    """Matmul FLOPs of one ``fit`` run over ``num_examples`` training examples: every epoch sees each once."""
    steps_per_run(config, num_examples)  # validates num_examples
    return config.epochs * num_examples * matmul_flops_per_example(config.layer_sizes)


def median_seconds(seconds: Sequence[float]) -> float:
    """The median of repeated timings (robust to a noisy neighbour on a shared machine)."""
    if not seconds:
        raise ValueError("median_seconds needs at least one timing")
    return float(statistics.median(seconds))


def time_calls(call: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``call()``, each waited for with ``jax.block_until_ready``."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        seconds.append(time.perf_counter() - start)
    return seconds


def matmul_peak(size: int = 2048, repeats: int = 5, devices: Sequence[Any] | None = None) -> dict[str, float]:
    r"""This machine's float32 matmul rate: :math:`2n^3` FLOPs per ``(n, n) @ (n, n)`` over the median time.

    Measured two ways: one ``jnp.dot`` on the first device (XLA spreads it over the cores it may
    use), and one dot per device at once (a batch of ``D`` products sharded over ``devices``).
    Returns ``{"single_device": FLOP/s, "all_devices": FLOP/s, "peak": the larger}``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    devices = tuple(jax.devices() if devices is None else devices)
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    single = jax.jit(jnp.dot).lower(a, b).compile()
    jax.block_until_ready(single(a, b))
    single_rate = 2 * size**3 / median_seconds(time_calls(lambda: single(a, b), repeats))
    mesh = Mesh(np.asarray(devices), ("devices",))
    sharded = NamedSharding(mesh, P("devices"))
    stack_a = jax.device_put(jnp.broadcast_to(a, (len(devices), size, size)), sharded)
    stack_b = jax.device_put(jnp.broadcast_to(b, (len(devices), size, size)), sharded)
    batched = jax.jit(jax.vmap(jnp.dot), out_shardings=sharded).lower(stack_a, stack_b).compile()
    jax.block_until_ready(batched(stack_a, stack_b))
    all_rate = 2 * len(devices) * size**3 / median_seconds(time_calls(lambda: batched(stack_a, stack_b), repeats))
    return {"single_device": single_rate, "all_devices": all_rate, "peak": max(single_rate, all_rate)}


COMPILE_PHASES: dict[str, str] = {
    "tracing": "/jax/core/compile/jaxpr_trace_duration",
    "lowering": "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "compiling": "/jax/core/compile/backend_compile_duration",
}
"""``compile_phases``'s phases and the ``jax.monitoring`` events that time them (``compiling`` is XLA's
compile, or the load of a program the persistent compilation cache holds)."""


def covered_seconds(spans: Sequence[tuple[float, float]]) -> float:
    """The length of the union of the intervals ``(start, end)``: overlapping or nested spans count once."""
    total, reach = 0.0, -float("inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@contextlib.contextmanager
def compile_phases() -> Iterator[dict[str, float]]:
    """Seconds the block spends tracing, lowering and compiling, from JAX's own events (``COMPILE_PHASES``).

    Yields a dict that is filled when the block ends: one entry per phase, the union of that phase's
    spans (a trace nested in another counts once), and ``"any"``, the union of them all (the rest of
    the block's wall time is Python, dispatch and running). Spans from every thread count, so a
    program compiled ahead in a thread is included.
    """
    spans: dict[str, list[tuple[float, float]]] = {event: [] for event in COMPILE_PHASES.values()}

    def listener(event: str, start: float, end: float, **_: Any) -> None:
        if event in spans:
            spans[event].append((start, end))

    jax.monitoring.register_event_time_span_listener(listener)
    phases: dict[str, float] = {}
    try:
        yield phases
    finally:
        jax.monitoring.unregister_event_time_span_listener(listener)
        phases.update({name: covered_seconds(spans[event]) for name, event in COMPILE_PHASES.items()})
        phases["any"] = covered_seconds([span for event_spans in spans.values() for span in event_spans])


class ResidentMemory:
    """Peak resident memory of a phase, from ``/proc/self/status`` (Linux).

    ``start()`` resets the kernel's high-water mark (``VmHWM``, by writing 5 to
    ``/proc/self/clear_refs``) so that ``peak_bytes()`` is the phase's own peak; where that is not
    allowed the peak is the process's since it started (``resettable`` says which).
    """

    def __init__(self) -> None:
        self.resettable = False
        self.baseline = 0

    @staticmethod
    def _status(field: str) -> int:
        try:
            with open("/proc/self/status", encoding="ascii") as stream:
                for line in stream:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource  # not Linux's /proc: the process-wide peak

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
                stream.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.baseline = self._status("VmRSS")

    def peak_bytes(self) -> int:
        return self._status("VmHWM")


def measure_memory(phase: Callable[[], Any], runs_in_flight: int) -> tuple[Any, dict[str, Any]]:
    """Run ``phase()``; return its value and its peak RSS, the RSS it added, and that per run in flight."""
    memory = ResidentMemory()
    memory.start()
    value = phase()
    peak = memory.peak_bytes()
    added = max(peak - memory.baseline, 0)
    return value, {
        "peak_rss_mb": peak / 2**20,
        "added_rss_mb": added / 2**20,
        "runs_in_flight": runs_in_flight,
        "added_rss_kb_per_run": added / 1024 / max(runs_in_flight, 1),
        "peak_is_per_phase": memory.resettable,
    }
