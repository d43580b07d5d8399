"""The caller's JAX configuration, carried into the sweep's threads and into its program caches.

JAX's configuration contexts (``jax.enable_x64``, ``jax.default_device``,
``jax.default_matmul_precision``, a mesh context, ...) are thread-local. The sweep compiles the next
group's program in a thread and runs chunks from threads; without help those threads would trace
under the global configuration, e.g. a float32 program for a caller inside
``with jax.enable_x64(True):``. ``ThreadPool.submit`` runs each task under the configuration of the
thread that submitted it, and ``cache_per_config`` keys a cache of compiled programs on that
configuration, so a program compiled under one is never served under another.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Any, Callable, TypeVar

from jax._src import config as _config

_R = TypeVar("_R")


def _contexts() -> list[Any]:
    """Every JAX configuration value that a context manager can set for one thread."""
    states = list(_config.config_states.values())
    seen = {id(state) for state in states}
    others = [value for value in vars(_config).values()
              if isinstance(value, _config.config_ext.Config) and id(value) not in seen]
    return states + others


def snapshot() -> tuple[tuple[Any, Any], ...]:
    """This thread's configuration overrides: ``(option, value)`` for each option a context has set here."""
    return tuple((option, value) for option in _contexts()
                 if (value := option.get_local()) is not _config.config_ext.unset)


def run_under(overrides: tuple[tuple[Any, Any], ...], function: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """``function(*args, **kwargs)`` with ``overrides`` (a ``snapshot``) set for this thread, restored after.

    Each option is entered the way its own context manager enters it (the value, then its
    thread-local hook), and left in the reverse order.
    """
    entered = []
    try:
        for option, value in overrides:
            previous = option.swap_local(value)
            entered.append((option, previous))
            hook = getattr(option, "_update_thread_local_hook", None)
            if hook is not None:
                hook(value)
        return function(*args, **kwargs)
    finally:
        for option, previous in reversed(entered):
            option.set_local(previous)
            hook = getattr(option, "_update_thread_local_hook", None)
            if hook is not None:
                hook(None if previous is _config.config_ext.unset else previous)


class ThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run under the JAX configuration of the thread that submitted them."""

    def submit(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[_R]:
        return super().submit(run_under, snapshot(), fn, *args, **kwargs)


def cache_key() -> Any:
    """What JAX itself keys its compilation caches on: every configuration value that changes a trace."""
    return _config.trace_context()


def cache_per_config(maxsize: int) -> Callable[[Callable[..., _R]], Callable[..., _R]]:
    """``functools.lru_cache(maxsize)`` with the caller's JAX configuration (``cache_key``) added to every key."""

    def decorate(function: Callable[..., _R]) -> Callable[..., _R]:
        @functools.lru_cache(maxsize=maxsize)
        def cached(configuration: Any, *args: Any, **kwargs: Any) -> _R:
            del configuration  # only a key
            return function(*args, **kwargs)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> _R:
            return cached(cache_key(), *args, **kwargs)

        call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return call

    return decorate
