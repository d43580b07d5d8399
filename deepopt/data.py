"""Datasets: generators, splits, standardization, mini-batching and loading a user's files.

A ``Dataset`` is ``(X, y)`` with ``X`` of shape ``(m, n_features)`` (float) and ``y`` of
shape ``(m,)`` (int class ids ``0..C-1``). Batch-major throughout.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepopt import precision

CLASS_IDS = "class_ids"  # what y holds: integer labels (a classification's) ...
FLOATS = "floats"  # ... or real-valued targets (a regression's)
TARGET_KINDS = (CLASS_IDS, FLOATS)


class Dataset(NamedTuple):
    """Examples ``X`` ``(m, n_features)`` float and labels ``y`` ``(m,)`` int class ids."""

    X: Any
    y: Any


def _check_n(n: int, minimum: int = 2) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"n must be an int >= {minimum}, got {n!r}")


def _check_noise(noise: float) -> None:
    if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite float >= 0, got {noise!r}")


def _shuffled(key: jax.Array, X: jax.Array, y: jax.Array) -> Dataset:
    order = jax.random.permutation(key, X.shape[0])
    return Dataset(X[order], y[order].astype(jnp.int32))


def make_moons(key: jax.Array, n: int, noise: float) -> Dataset:
    """Two interleaving half circles: class 0 ``(cos t, sin t)``, class 1 ``(1 - cos t, 0.5 - sin t)``, plus N(0, noise²)."""
    _check_n(n)
    _check_noise(noise)
    n_outer, n_inner = n // 2 + n % 2, n // 2
    noise_key, shuffle_key = jax.random.split(key)
    t_outer = jnp.linspace(0.0, jnp.pi, n_outer)
    t_inner = jnp.linspace(0.0, jnp.pi, n_inner)
    outer = jnp.stack([jnp.cos(t_outer), jnp.sin(t_outer)], axis=1)
    inner = jnp.stack([1.0 - jnp.cos(t_inner), 0.5 - jnp.sin(t_inner)], axis=1)
    X = jnp.concatenate([outer, inner]) + noise * jax.random.normal(noise_key, (n, 2))
    y = jnp.concatenate([jnp.zeros(n_outer), jnp.ones(n_inner)])
    return _shuffled(shuffle_key, X, y)


def make_circles(key: jax.Array, n: int, noise: float, factor: float = 0.8) -> Dataset:
    """A large circle (class 0, radius 1) around a smaller one (class 1, radius ``factor``), plus N(0, noise²)."""
    _check_n(n)
    _check_noise(noise)
    if not isinstance(factor, (int, float)) or not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor!r}")
    n_outer, n_inner = n // 2 + n % 2, n // 2
    noise_key, shuffle_key = jax.random.split(key)
    t_outer = jnp.linspace(0.0, 2 * jnp.pi, n_outer, endpoint=False)
    t_inner = jnp.linspace(0.0, 2 * jnp.pi, n_inner, endpoint=False)
    outer = jnp.stack([jnp.cos(t_outer), jnp.sin(t_outer)], axis=1)
    inner = factor * jnp.stack([jnp.cos(t_inner), jnp.sin(t_inner)], axis=1)
    X = jnp.concatenate([outer, inner]) + noise * jax.random.normal(noise_key, (n, 2))
    y = jnp.concatenate([jnp.zeros(n_outer), jnp.ones(n_inner)])
    return _shuffled(shuffle_key, X, y)


def make_spirals(key: jax.Array, n: int, noise: float, classes: int = 3) -> Dataset:
    """``classes`` interleaved spiral arms: radius ``r ∈ [0, 1]``, angle ``4(c + r) + N(0, noise²)``."""
    _check_n(n)
    _check_noise(noise)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"classes must be an int >= 2, got {classes!r}")
    if n < classes:
        raise ValueError(f"n must be at least classes={classes}, got {n}")
    counts = [n // classes + (1 if c < n % classes else 0) for c in range(classes)]
    noise_key, shuffle_key = jax.random.split(key)
    noise_keys = jax.random.split(noise_key, classes)
    parts, labels = [], []
    for c, (count, c_key) in enumerate(zip(counts, noise_keys)):
        r = jnp.linspace(0.0, 1.0, count)
        t = 4.0 * (c + r) + noise * jax.random.normal(c_key, (count,))
        parts.append(jnp.stack([r * jnp.sin(t), r * jnp.cos(t)], axis=1))
        labels.append(jnp.full((count,), c))
    return _shuffled(shuffle_key, jnp.concatenate(parts), jnp.concatenate(labels))


def make_friedman1(key: jax.Array, n: int, noise: float = 1.0, n_features: int = 10) -> Dataset:
    r"""Friedman's regression problem #1: float targets for ``tasks.regression()``.

    :math:`x \sim U[0, 1]^{d}` (``d = n_features >= 5``; only the first five matter) and
    :math:`y = 10\sin(\pi x_1 x_2) + 20(x_3 - 0.5)^2 + 10x_4 + 5x_5 + \varepsilon`,
    :math:`\varepsilon \sim N(0, \text{noise}^2)`: the formula of scikit-learn's
    ``make_friedman1``, drawn from a JAX key. ``y`` is float ``(n,)``; its noise-free variance is
    about 24, so ``noise=1`` leaves an R² ceiling near 0.96.
    """
    _check_n(n)
    _check_noise(noise)
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 5:
        raise ValueError(f"n_features must be an int >= 5 (the formula reads five), got {n_features!r}")
    point_key, noise_key = jax.random.split(key)
    X = jax.random.uniform(point_key, (n, n_features))
    y = (10 * jnp.sin(jnp.pi * X[:, 0] * X[:, 1]) + 20 * jnp.square(X[:, 2] - 0.5) + 10 * X[:, 3] + 5 * X[:, 4]
         + noise * jax.random.normal(noise_key, (n,)))
    return Dataset(X, y)


def make_overfit_2d(key: jax.Array, n: int = 211, noise: float = 0.05, flip: float = 0.12) -> Dataset:
    """A small noisy 2-D problem that a 2-20-3-1 net overfits (the regularization study's data).

    Points uniform in ``[-1, 1]^2``; class 1 above the wavy boundary ``x2 = 0.3 sin(3 x1)``,
    positions jittered by N(0, noise²), then a ``flip`` fraction of labels flipped at random
    (label noise: an unregularized net bends its boundary around those points).
    """
    _check_n(n)
    _check_noise(noise)
    if not isinstance(flip, (int, float)) or not 0 <= flip < 0.5:
        raise ValueError(f"flip must be in [0, 0.5), got {flip!r}")
    point_key, jitter_key, flip_key = jax.random.split(key, 3)
    X = jax.random.uniform(point_key, (n, 2), minval=-1.0, maxval=1.0)
    y = (X[:, 1] > 0.3 * jnp.sin(3.0 * X[:, 0])).astype(jnp.int32)
    flipped = jax.random.uniform(flip_key, (n,)) < flip
    y = jnp.where(flipped, 1 - y, y)
    X = X + noise * jax.random.normal(jitter_key, (n, 2))
    return Dataset(X, y.astype(jnp.int32))


def train_dev_test_split(
    key: jax.Array, data: Dataset, dev_fraction: float, test_fraction: float
) -> tuple[Dataset, Dataset, Dataset]:
    """Shuffle, then split into ``(train, dev, test)`` of sizes ``m - n_dev - n_test``, ``round(m·dev_fraction)``, ``round(m·test_fraction)``."""
    for name, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    m = _check_dataset_shapes(data, "data")
    n_dev, n_test = round(m * dev_fraction), round(m * test_fraction)
    if n_dev + n_test >= m:
        raise ValueError(
            f"dev_fraction + test_fraction leave no training examples: m={m}, n_dev={n_dev}, n_test={n_test}"
        )
    order = jax.random.permutation(key, m)
    X, y = jnp.asarray(data.X)[order], jnp.asarray(data.y)[order]
    n_train = m - n_dev - n_test
    cuts = (slice(0, n_train), slice(n_train, n_train + n_dev), slice(n_train + n_dev, m))
    train, dev, test = (Dataset(X[c], y[c]) for c in cuts)
    return train, dev, test


def _check_dataset_shapes(data: Any, name: str) -> int:
    """``check_dataset``'s checks of ``data`` (float targets checked as a regression's); returns its number of examples."""
    return int(np.shape(check_dataset(data, name, targets=targets_of(data)).X)[0])


def targets_of(data: Any) -> str:
    """``FLOATS`` for a split whose ``y`` holds floats (a regression's), else ``CLASS_IDS`` (checked as labels)."""
    y = data[1] if isinstance(data, tuple) and len(data) == 2 else None
    if y is None:
        return CLASS_IDS
    dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    return FLOATS if jnp.issubdtype(dtype, jnp.floating) else CLASS_IDS


def standardize(train: Dataset, *others: Dataset) -> tuple[Dataset, ...]:
    r"""Standardize every feature with the training set's statistics: :math:`(x - \mu_{train}) / \sigma_{train}`.

    Constant features (``σ = 0``) are only centred. Returns ``(train, *others)`` standardized.
    Every split is checked by ``check_dataset``; as there, an integer or bool ``X`` is taken as
    the default float dtype (labels are returned as given).
    """
    X = check_dataset(train, "train", targets=targets_of(train)).X
    mean, std = jnp.mean(X, axis=0), jnp.std(X, axis=0)
    # A feature whose spread is rounding noise (relative to its size) is constant: centre it only.
    constant = std <= 64 * jnp.finfo(X.dtype).eps * (jnp.abs(mean) + 1)
    std = jnp.where(constant, jnp.ones_like(std), std)
    result = [Dataset((X - mean) / std, train.y)]
    for i, data in enumerate(others):
        other_X = check_dataset(data, f"others[{i}]", targets=targets_of(data)).X
        if other_X.shape[1] != X.shape[1]:
            raise ValueError(f"others[{i}] has {other_X.shape[1]} features, train has {X.shape[1]}")
        result.append(Dataset((other_X - mean) / std, data.y))
    return tuple(result)


def _check_batching(m: int, batch_size: int) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive int, got {m!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _index_bits(m: int) -> int:
    """Bits that hold a position in ``0..m-1`` (at least one)."""
    return max((m - 1).bit_length(), 1)


def shuffle_rounds(m: int) -> int:
    r"""Sort rounds ``permutation`` uses for ``m`` items (0: it falls back to ``jax.random.permutation``).

    Each round draws :math:`32 - \lceil\log_2 m\rceil` random bits per item; rounds are added until
    they total :math:`3\log_2 m` bits, the bound ``jax.random.permutation`` uses for its 32-bit keys.
    """
    random_bits = 32 - _index_bits(m)
    if random_bits < 12:
        return 0
    return max(1, math.ceil(3 * math.log2(max(m, 2)) / random_bits))


def permutation(key: jax.Array, m: int) -> jax.Array:
    r"""A uniformly random permutation of ``0..m-1`` (int32), cheaper than ``jax.random.permutation``.

    Each round packs random bits above the item's current position into one ``uint32``,
    :math:`k_i = (r_i \ll b) \mid i` with :math:`b = \lceil\log_2 m\rceil`, sorts the ``k_i`` and
    reads the positions back from the low bits: a one-operand sort, which XLA runs about 5x faster
    on CPU than the key-value sort of ``jax.random.permutation``. Ties in :math:`r` keep the
    previous round's (already random) order; ``shuffle_rounds(m)`` rounds make them as rare as
    ``jax.random.permutation``'s. Same key, same permutation.
    """
    rounds = shuffle_rounds(m)
    if rounds == 0:
        return jax.random.permutation(key, m).astype(jnp.int32)
    low = jnp.uint32((1 << _index_bits(m)) - 1)
    positions = jnp.arange(m, dtype=jnp.uint32)
    order = positions
    for round_key in jax.random.split(key, rounds):
        high = jax.random.bits(round_key, (m,), jnp.uint32) & ~low
        order = order[jnp.sort(high | positions) & low]
    return order.astype(jnp.int32)


def padded_minibatch_indices(key: jax.Array, m: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``minibatch_indices`` in a fixed shape for ``jit``: ``(index, mask)``, both ``(ceil(m/bs), bs)``.

    The epoch's order is ``permutation(key, m)``; row ``i`` holds batch ``i``; the last row is
    padded with index 0 and mask False.
    """
    _check_batching(m, batch_size)
    num_batches = -(-m // batch_size)
    padding = num_batches * batch_size - m
    order = permutation(key, m)
    index = jnp.concatenate([order, jnp.zeros((padding,), order.dtype)]).reshape(num_batches, batch_size)
    mask = (jnp.arange(num_batches * batch_size) < m).reshape(num_batches, batch_size)
    return index, mask


def minibatch_indices(key: jax.Array, m: int, batch_size: int) -> list[jax.Array]:
    """The course's mini-batches of one epoch: a fresh permutation, then consecutive slices of ``batch_size``.

    The last, smaller batch is kept: ``m=300, batch_size=64`` gives sizes 64, 64, 64, 64, 44.
    Call with a new key each epoch. Same key, same batches as ``padded_minibatch_indices``.
    """
    index, mask = padded_minibatch_indices(key, m, batch_size)
    return [row[: int(valid.sum())] for row, valid in zip(index, mask)]


def one_hot(y: jax.Array, num_classes: int) -> jax.Array:
    """``(m,)`` class ids to ``(m, num_classes)`` float one-hot rows.

    Concrete ``y`` must hold class ids in ``0..num_classes-1`` (``check_labels``: an id outside
    would give a row of zeros); traced ``y`` is not checked.
    """
    check_labels(y, num_classes, "y", f"one_hot with num_classes={num_classes}")
    return jax.nn.one_hot(y, num_classes)


def _is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_dataset(
    split: Any,
    name: str = "data",
    *,
    num_features: int | None = None,
    features_from: str = "the model's input width",
    num_classes: int | None = None,
    classes_from: str = "the model",
    float_dtype: Any = None,
    x_name: str | None = None,
    y_name: str | None = None,
    any_rank: bool = False,
    on_host: bool = False,
    targets: str = CLASS_IDS,
) -> Dataset:
    r"""The one validation of a data split, shared by ``train.fit``, ``sweep.run`` and ``load``.

    Checks that ``split`` is ``(X, y)`` with ``X`` numeric of shape ``(m, n)`` (``(m, ...)`` with
    ``any_rank=True``, for models that take more dimensions), ``m >= 1`` (and ``n = num_features``
    when given) and ``y`` integer of shape ``(m,)`` (``targets="class_ids"``, the default) or, with
    ``targets="floats"`` (a regression's), real numbers of shape ``(m,)`` or ``(m, k)``, finite when
    concrete, returned in ``X``'s float dtype. Concrete values (not
    tracers under ``jit``/``vmap``) are also checked: every :math:`X_{ij}` finite (the error names
    the first offending row and column, counting from 0) and every label in
    :math:`0..\text{num\_classes}-1` (without ``num_classes``: :math:`\ge 0` and within int32,
    so the cast cannot wrap). A complex ``X`` is refused (its imaginary part would be dropped).

    Returns the split as JAX arrays: ``X`` cast to ``float_dtype`` (a non-float ``X`` to the default
    float dtype first), ``y`` as int32; with ``on_host=True``, as numpy arrays of the same dtypes
    and values, converted in numpy (``sweep.run`` keeps its splits on the host). Errors name
    ``{name}.X`` / ``{name}.y`` (or ``x_name`` / ``y_name``), what they got and what was expected.
    """
    x_name = f"{name}.X" if x_name is None else x_name
    y_name = f"{name}.y" if y_name is None else y_name
    if not isinstance(split, tuple) or len(split) != 2:
        raise TypeError(f"{name} must be a deepopt.data.Dataset(X, y), got {type(split).__name__}")
    X, y = split
    if not _is_traced(X) and not isinstance(X, jax.Array):
        X = np.asarray(X)
        if not (jnp.issubdtype(X.dtype, jnp.number) or X.dtype == bool):  # jnp's: ml_dtypes' bfloat16 is a number
            raise TypeError(f"{x_name} must hold numbers, got dtype {X.dtype}")
    precision.check_trainable_dtype(X.dtype, x_name)
    if not _is_traced(y) and not isinstance(y, jax.Array):
        y = np.asarray(y)
    X_shape, y_shape = np.shape(X), np.shape(y)
    if (len(X_shape) < 2) if any_rank else (len(X_shape) != 2):
        expected = "at least 2-D (m, ...)" if any_rank else "2-D (m, n_features)"
        raise ValueError(f"{x_name} must be {expected}, got shape {X_shape}")
    floats = targets == FLOATS
    if targets not in TARGET_KINDS:
        raise ValueError(f"targets must be one of {list(TARGET_KINDS)}, got {targets!r}")
    if floats and (len(y_shape) not in (1, 2) or y_shape[0] != X_shape[0]):
        raise ValueError(f"{y_name} must be (m,) or (m, k) targets with m = {X_shape[0]}, got shape {y_shape}")
    if not floats and y_shape != (X_shape[0],):
        raise ValueError(f"{y_name} must be (m,) = ({X_shape[0]},), got shape {y_shape}")
    if X_shape[0] == 0:
        raise ValueError(f"{name} is empty: {x_name} has shape {X_shape}")
    if num_features is not None and X_shape[1] != num_features:
        raise ValueError(f"{x_name} has {X_shape[1]} features but {features_from} is {num_features}")
    if jnp.issubdtype(X.dtype, jnp.complexfloating):
        raise TypeError(f"{x_name} must hold real numbers (float, int or bool), got complex dtype {X.dtype}")
    if floats:
        _check_float_targets(y, y_name)
    elif not jnp.issubdtype(y.dtype, jnp.integer):
        hint = " (float targets are a regression: Config(task=tasks.regression()))" if jnp.issubdtype(
            y.dtype, jnp.floating) else ""
        raise TypeError(f"{y_name} must hold integer class ids, got dtype {y.dtype}{hint}")
    found = None if _is_traced(X) else _first_non_finite(np.asarray(X))
    if found is not None:
        (row, *rest), value, count = found
        where = f"column {rest[0]}" if len(rest) == 1 else f"position {tuple(rest)}"
        raise ValueError(
            f"{x_name} has a non-finite value ({value}) at row {row}, {where} "
            f"(counting from 0; {count} non-finite values in all): inputs must be finite numbers"
        )
    if not floats and num_classes is not None:
        check_labels(y, num_classes, y_name, classes_from)
    elif not floats:
        _check_label_bounds(y, y_name)
    if on_host and not _is_traced(X) and not _is_traced(y):
        return _host_arrays(X, y, float_dtype, floats)
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.zeros(()).dtype)
    if float_dtype is not None:
        X = X.astype(float_dtype)
    return Dataset(X, jnp.asarray(y).astype(X.dtype if floats else jnp.int32))


def _check_float_targets(y: Any, y_name: str) -> None:
    """Regression targets: real numbers (float, int or bool), finite when concrete; the error names the first bad one."""
    if jnp.issubdtype(y.dtype, jnp.complexfloating) or not (jnp.issubdtype(y.dtype, jnp.number) or y.dtype == bool):
        raise TypeError(f"{y_name} must hold real-valued targets, got dtype {y.dtype}")
    found = None if _is_traced(y) else _first_non_finite(np.asarray(y))
    if found is not None:
        where, value, count = found
        raise ValueError(
            f"{y_name} has a non-finite target ({value}) at index {where[0] if len(where) == 1 else where} "
            f"(counting from 0; {count} in all): targets must be finite numbers"
        )


def _first_non_finite(values: np.ndarray) -> tuple[tuple[int, ...], Any, int] | None:
    """For float ``values`` holding a NaN or inf: the first one's index, its value and how many there are; else None."""
    if not jnp.issubdtype(values.dtype, jnp.inexact):  # bfloat16 from ml_dtypes included
        return None
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    return where, values[where], int(bad.sum())


def _host_arrays(X: Any, y: Any, float_dtype: Any, floats: bool = False) -> Dataset:
    """``check_dataset``'s conversions done in numpy, step for step as ``jnp.asarray`` / ``astype`` do them.

    ``X`` to its canonical dtype (float64 to float32 without x64), a non-float ``X`` then to the
    default float dtype, then to ``float_dtype``; ``y`` to int32. Each cast rounds to nearest as
    XLA's convert does, so the values are the same bits; no XLA program is compiled for them.
    """
    X = np.asarray(X)
    X = X.astype(jax.dtypes.canonicalize_dtype(X.dtype), copy=False)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jax.dtypes.canonicalize_dtype(jnp.result_type(float)))
    if float_dtype is not None:
        X = X.astype(jax.dtypes.canonicalize_dtype(float_dtype), copy=False)
    y = np.asarray(y)
    y = y.astype(jax.dtypes.canonicalize_dtype(y.dtype), copy=False)
    return Dataset(X, y.astype(X.dtype) if floats else y.astype(np.int32))


INT32_MAX = int(np.iinfo(np.int32).max)


def _first_outside(y: Any, low: int, high: int) -> tuple[np.ndarray, str] | None:
    """For concrete ``y`` with a value outside ``[low, high]``: ``(labels, "V at index I")`` of the first one; else None.

    Tracers and empty arrays give None (nothing to check on the host).
    """
    if _is_traced(y):
        return None
    labels = np.asarray(y)
    if labels.size == 0:
        return None
    outside = (labels < low) | (labels > high)
    if not outside.any():
        return None
    position = tuple(int(i) for i in np.argwhere(outside)[0])
    where = str(position[0]) if len(position) == 1 else str(position)
    return labels, f"{labels[position]} at index {where}"


def check_labels(y: Any, num_classes: int, y_name: str = "y", classes_from: str = "the model") -> None:
    """Concrete labels ``y`` must be class ids in ``0..num_classes-1`` (tracers are not checked); the error names ``y_name``.

    The message gives the range of the labels found and the first offending one.
    """
    found = _first_outside(y, 0, num_classes - 1)
    if found is not None:
        labels, first = found
        raise ValueError(
            f"{y_name} must be class ids in 0..{num_classes - 1} for {classes_from}, got values in "
            f"[{labels.min()}, {labels.max()}] (first offending label: {first})"
        )


def _check_label_bounds(y: Any, y_name: str) -> None:
    """Concrete labels must be class ids ``>= 0`` that fit the int32 ``check_dataset`` casts them to."""
    found = _first_outside(y, 0, INT32_MAX)
    if found is not None:
        labels, first = found
        raise ValueError(
            f"{y_name} must be class ids >= 0 (and <= {INT32_MAX}, int32), got values in "
            f"[{labels.min()}, {labels.max()}] (first offending label: {first})"
        )


def validate(
    X: Any, y: Any, source: str = "data", *, dtype: Any = np.float32, num_classes: int | None = None,
    targets: str = CLASS_IDS,
) -> Dataset:
    """Check a user's arrays and return a host ``Dataset`` (``X`` of ``dtype``, ``y`` int32); errors name ``source``.

    ``targets="floats"`` (a regression): ``y`` finite real targets ``(m,)`` or ``(m, k)``, returned
    as ``dtype`` (``num_classes`` does not apply).

    ``X`` must be 2-D finite numbers (``check_dataset``); labels integer class ids, integral floats
    (``1.0``) accepted. Without ``num_classes`` the labels must be exactly ``0..K-1`` with every
    class present, ``K >= 2`` (labels ``1, 2`` or ``0, 2`` would silently build an empty class, so
    they are refused with the labels found and how to fix them); with ``num_classes`` (a test file
    checked against its training file) they must lie in ``0..num_classes-1``, classes may be missing.
    """
    X, y = np.asarray(X), np.asarray(y)
    dtype = np.dtype(dtype)  # "bfloat16" and "float16" by name too (ml_dtypes registers bfloat16 with numpy)
    precision.check_trainable_dtype(dtype, "dtype")
    if X.ndim == 2 and X.shape[1] == 0:
        raise ValueError(f"{source}: X is empty, shape {X.shape}")
    if X.dtype.kind == "V" and X.dtype.itemsize == 2:
        raise ValueError(
            f"{source}: X has dtype {X.dtype} (raw 2-byte values: numpy's .npz stores bfloat16 so, without its type); "
            "save X as float32 (X.astype(np.float32)) and load it with dtype='bfloat16'"
        )
    if not (jnp.issubdtype(X.dtype, jnp.number) or X.dtype == bool):
        raise ValueError(f"{source}: X must be numeric, got dtype {X.dtype}")
    if targets == FLOATS:
        checked = check_dataset(Dataset(X, y), source, x_name=f"{source}: X", y_name=f"{source}: targets",
                                targets=FLOATS, on_host=True)
        return Dataset(np.asarray(checked.X, dtype), np.asarray(checked.y, dtype))
    if y.ndim == 1 and (
        not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or np.any(y < 0)
    ):
        hint = (" (float targets are a regression: targets='floats', --task regression in the studies)"
                if np.issubdtype(y.dtype, np.number) and np.all(np.isfinite(y)) and np.any(y != np.round(y)) else "")
        raise ValueError(
            f"{source}: labels must be integer class ids 0..C-1, got values {np.unique(y)[:10].tolist()}{hint}"
        )
    labels = y.astype(np.int32) if y.ndim == 1 else y
    checked = check_dataset(
        Dataset(X, labels), source, num_classes=num_classes, classes_from="the classes of the training data",
        x_name=f"{source}: X", y_name=f"{source}: labels",
    )
    present = np.unique(labels)
    if num_classes is None:
        if present.size < 2:
            raise ValueError(f"{source}: labels must cover at least two classes 0..C-1, got only {present.tolist()}")
        if present.tolist() != list(range(present.size)):
            mapping = ", ".join(f"{old} -> {new}" for new, old in enumerate(present.tolist()))
            raise ValueError(
                f"{source}: labels must be the class ids 0..{present.size - 1} with every class present, "
                f"found {present.tolist()}; relabel the file ({mapping})"
            )
    return Dataset(np.asarray(checked.X, dtype), np.asarray(checked.y))


def _csv_has_header(path: str) -> bool:
    """Whether the first non-empty line of a CSV is a header: it is, unless every cell parses as a number."""
    with open(path, encoding="utf-8-sig") as stream:
        for line in stream:
            if line.strip():
                try:
                    [float(cell) for cell in line.strip().split(",")]
                except ValueError:
                    return True
                return False
    return False


def load(
    path: str | os.PathLike, *, dtype: Any = np.float32, num_classes: int | None = None, targets: str = CLASS_IDS
) -> Dataset:
    """Load a user's dataset: ``.csv`` (last column the label, or with ``targets="floats"`` the float target) or ``.npz`` (arrays ``X``, ``y``).

    A CSV's header row is optional: a first row whose every cell parses as a number is data,
    anything else is a header and skipped. ``X`` comes back in ``dtype`` (a dtype or its name:
    float32, float64, bfloat16 or float16; 16-bit data trains on float32 master weights, see
    ``deepopt.precision``). Validated with ``validate`` (2-D, finite, labels exactly
    ``0..C-1``, or within ``0..num_classes-1`` when given); errors name the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path!r}")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".csv":
        header = _csv_has_header(path)
        try:
            table = np.loadtxt(
                path, delimiter=",", skiprows=1 if header else 0, ndmin=2, dtype=np.float64, encoding="utf-8-sig"
            )
        except ValueError as error:
            what = "after its header row" if header else "(no header row: the first row is numbers, so it is data)"
            raise ValueError(f"{path}: not a numeric CSV {what} ({error})") from None
        if table.shape[0] == 0:
            raise ValueError(f"{path}: the CSV has no data rows")
        if table.shape[1] < 2:
            raise ValueError(f"{path}: needs at least one feature column and a label column, got {table.shape[1]} column(s)")
        return validate(table[:, :-1], table[:, -1], path, dtype=dtype, num_classes=num_classes, targets=targets)
    if extension == ".npz":
        with np.load(path) as archive:
            missing = {"X", "y"} - set(archive.files)
            if missing:
                raise ValueError(f"{path}: .npz needs arrays 'X' and 'y', missing {sorted(missing)} (has {archive.files})")
            return validate(archive["X"], archive["y"], path, dtype=dtype, num_classes=num_classes, targets=targets)
    raise ValueError(f"{path}: unsupported file type {extension!r}; expected .csv or .npz")


def load_digits(*, dtype: Any = np.float32) -> Dataset:
    """scikit-learn's bundled 8×8 handwritten digits: 1797 images, ``X`` ``(1797, 64)`` scaled to ``[0, 1]``, 10 classes.

    Needs the ``datasets`` extra (``pip install -e '.[datasets]'``); no download happens.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError:
        raise ImportError(
            "data.load_digits needs scikit-learn: install the datasets extra with pip install -e '.[datasets]'"
        ) from None
    digits = sklearn_load_digits()
    return Dataset((digits.data / 16.0).astype(dtype), digits.target.astype(np.int32))


MNIST1D_TRAIN, MNIST1D_TEST = 4000, 1000


def load_mnist1d(shuffle_seq: bool = False, *, dtype: Any = np.float32) -> tuple[Dataset, Dataset]:
    """MNIST-1D (Greydanus 2020): ``(train, test)``, 4000 and 1000 sequences of 40 values, 10 classes.

    Generated offline by the ``mnist1d`` package (``make_dataset(get_dataset_args())``, seed 42):
    the package's canonical data set, cast to ``dtype``; nothing is downloaded. ``shuffle_seq=True``
    is the paper's spatially shuffled variant (one fixed permutation of the 40 positions). The
    package seeds numpy's global generator; its state is restored afterwards. Needs the ``datasets``
    extra (``pip install -e '.[datasets]'``).
    """
    if not isinstance(shuffle_seq, bool):
        raise TypeError(f"shuffle_seq must be a bool, got {shuffle_seq!r}")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError(
            "data.load_mnist1d needs the mnist1d package: install the datasets extra with pip install -e '.[datasets]'"
        ) from None
    args = get_dataset_args()
    args.shuffle_seq = shuffle_seq
    saved = np.random.get_state()
    try:
        generated = make_dataset(args)
    finally:
        np.random.set_state(saved)
    train = Dataset(np.asarray(generated["x"]).astype(dtype), np.asarray(generated["y"]).astype(np.int32))
    test = Dataset(np.asarray(generated["x_test"]).astype(dtype), np.asarray(generated["y_test"]).astype(np.int32))
    return train, test
