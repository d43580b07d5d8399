"""``jax.random.split`` of a Threefry key on the host, in numpy: the sweep's seed keys without a compile.

``jax.random.split`` dispatches a small XLA program, and the first one a process runs is compiled:
time every sweep's first call would pay before any training (measurements:
docs/engine-measurements.md). For the default key (``threefry2x32`` with
``jax_threefry_partitionable``, JAX's default) ``split_key_data`` computes the same words in
numpy, exact integer arithmetic; any other key implementation or setting goes through
``jax.random.split`` as before. Threefry-2x32 (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011) with 20 rounds: the key schedule ``k0, k1, k0 ^ k1 ^ 0x1BD11BDA`` is injected
after every 4 rounds; a round is ``x0 += x1; x1 = rotl(x1, r) ^ x0``.

The samplers' draws go the same way: ``fold_in`` (the hash of the counter pair ``(0, data)``) and
``uniform`` (``jax.random.uniform(key, shape)`` on ``[0, 1)`` in float32: the 32 bits of element
``i`` are the two words of the hash of ``i``'s 64-bit index XOR-ed, and the float is
``bitcast((bits >> 9) | bits(1.0)) - 1``, exact in numpy). A random search's first call then
compiles no ``_uniform`` program.
"""

from __future__ import annotations

import math

import jax
import numpy as np

THREEFRY = "threefry2x32"
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0: np.uint32, k1: np.uint32, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash of the counter pairs ``(x0, x1)`` (uint32 arrays) under key ``(k0, k1)``."""
    ks = (np.uint32(k0), np.uint32(k1), np.uint32(k0) ^ np.uint32(k1) ^ _PARITY)
    with np.errstate(over="ignore"):  # uint32 addition wraps, as the hash wants
        x0, x1 = x0 + ks[0], x1 + ks[1]
        for block in range(5):
            for r in _ROTATIONS[block % 2]:
                x0 = x0 + x1
                x1 = _rotate_left(x1, r) ^ x0
            x0 = x0 + ks[(block + 1) % 3]
            x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def computes_on_host(key: jax.Array) -> bool:
    """Whether ``split_key_data`` computes ``key``'s split in numpy (a Threefry key, partitionable splits)."""
    return str(jax.random.key_impl(key)) == THREEFRY and bool(jax.config.jax_threefry_partitionable)


def _key_pair(words: np.ndarray) -> tuple[np.uint32, np.uint32]:
    """The two uint32 words of a key's data ``words`` (``(2,)``)."""
    k0, k1 = np.asarray(words, np.uint32).reshape(2)
    return np.uint32(k0), np.uint32(k1)


def _index_words(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The high and low uint32 words of the 64-bit indices ``0 .. size - 1``."""
    counts = np.arange(size, dtype=np.uint64)
    return (counts >> np.uint64(32)).astype(np.uint32), (counts & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def split_words(words: np.ndarray, num: int) -> np.ndarray:
    """Partitionable Threefry's split of the key data ``words`` (uint32 ``(2,)``): ``(num, 2)`` uint32.

    The ``i``-th new key is the hash of the counter pair ``(hi, lo)`` of the 64-bit ``i``.
    """
    k0, k1 = _key_pair(words)
    bits0, bits1 = threefry2x32(k0, k1, *_index_words(num))
    return np.stack([bits0, bits1], axis=-1)


def split_key_data(key: jax.Array, num: int) -> np.ndarray:
    """``jax.random.key_data(jax.random.split(key, num))`` as a host ``uint32`` array ``(num, *key data shape)``.

    ``key`` is one typed key: in numpy where ``computes_on_host(key)``, else through ``jax.random.split``.
    """
    if not computes_on_host(key):
        return np.asarray(jax.random.key_data(jax.random.split(key, num)))
    return split_words(np.asarray(jax.random.key_data(key)), num)


def split_key(key: jax.Array, num: int, index: int) -> jax.Array:
    """``jax.random.split(key, num)[index]``, the typed key, without an XLA program where ``computes_on_host(key)``."""
    if not computes_on_host(key):
        return jax.random.split(key, num)[index]
    return jax.random.wrap_key_data(split_key_data(key, num)[index], impl=jax.random.key_impl(key))


def fold_in_words(words: np.ndarray, data: int) -> np.ndarray:
    """Partitionable Threefry's ``fold_in`` of the key data ``words`` with ``0 <= data < 2**32``: uint32 ``(2,)``.

    The hash of the counter pair ``(0, data)``, which is also the ``data``-th key of a split.
    """
    if not 0 <= int(data) < 2**32:
        raise ValueError(f"fold_in data must be in [0, 2**32), got {data!r}")
    k0, k1 = _key_pair(words)
    bits0, bits1 = threefry2x32(k0, k1, np.zeros(1, np.uint32), np.full(1, int(data), np.uint32))
    return np.concatenate([bits0, bits1])


def uniform_words(words: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    r"""``jax.random.uniform`` on :math:`[0, 1)` in float32 under the key data ``words`` (partitionable Threefry).

    Element ``i`` (row-major): :math:`b = t_0 \oplus t_1` with :math:`(t_0, t_1)` the hash of ``i``'s
    64-bit index, then the float32 :math:`\mathrm{bitcast}((b \gg 9) \mid \mathrm{bits}(1.0)) - 1`.
    """
    k0, k1 = _key_pair(words)
    bits0, bits1 = threefry2x32(k0, k1, *_index_words(math.prod(shape)))
    mantissa = ((bits0 ^ bits1) >> np.uint32(9)) | np.float32(1.0).view(np.uint32)
    return (mantissa.view(np.float32) - np.float32(1.0)).reshape(shape)


def fold_in(key: jax.Array, data: int) -> jax.Array:
    """``jax.random.fold_in(key, data)``, without an XLA program where ``computes_on_host(key)``."""
    if not computes_on_host(key):
        return jax.random.fold_in(key, data)
    words = fold_in_words(np.asarray(jax.random.key_data(key)), data)
    return jax.random.wrap_key_data(words, impl=jax.random.key_impl(key))


def uniform(key: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
    """``np.asarray(jax.random.uniform(key, shape, jnp.float32))``, in numpy where ``computes_on_host(key)``."""
    if not computes_on_host(key):
        return np.asarray(jax.random.uniform(key, shape, np.float32))
    return uniform_words(np.asarray(jax.random.key_data(key)), tuple(shape))
