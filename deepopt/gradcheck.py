r"""Numerical gradient checking: does an analytic gradient match two-sided differences of the cost?

``check`` perturbs coordinates of the flattened parameter pytree one at a time,

.. math:: \tilde g_i = \frac{J(\theta + \varepsilon e_i) - J(\theta - \varepsilon e_i)}{2\varepsilon},
   \qquad \mathrm{difference} = \frac{\|g - \tilde g\|_2}{\|g\|_2 + \|\tilde g\|_2},

and ``difference < threshold`` (course: ``epsilon = 1e-7``, ``threshold = 2e-7``) passes. The same
relative difference is reported per parameter array, with its worst coordinate, so a failing
report names the broken array. An array whose own gradient is below ``threshold`` times the whole
one (a batch-normalized layer's bias: true gradient 0, two-sided difference rounding noise) is
judged by its share of the whole, :math:`\|g - \tilde g\|_{\text{array}} / (\|g\|_2 + \|\tilde g\|_2)`,
since a relative difference of noise against nothing is 1 whatever the code. ``directional`` is the cheap variant along random unit
directions ``d``: it compares :math:`\langle g, d\rangle` with
:math:`(J(\theta+\varepsilon d) - J(\theta-\varepsilon d))/2\varepsilon`.

float64 only: with ``epsilon = 1e-7`` float32 rounding (about 1e-7 relative) swamps the
difference, so both functions raise a ``RuntimeError`` when ``jax_enable_x64`` is off (set
``JAX_ENABLE_X64=1`` or call them inside ``with jax.enable_x64(True):``). They never switch the
mode themselves. Parameters and gradients are cast to float64; the cost must come out float64.

Perturbed evaluations are batched: ``jax.vmap`` over a chunk of ``chunk_size`` directions, one
``jit`` compilation per cost function and parameter layout (the compiled program is reused when
the same ``cost_fn`` object is checked again, e.g. against another gradient). ``cost_fn`` and a
``grads`` function must be jit-compatible. The step actually taken, ``(\theta_i+\varepsilon) - (\theta_i-\varepsilon)``
after float64 rounding, is the divisor (and, for directions, the vector the analytic side is
projected on), so rounding of the perturbed parameters does not enter the difference.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
CostFn = Callable[[PyTree], jax.Array]

DEFAULT_EPSILON = 1e-7
DEFAULT_THRESHOLD = 2e-7
MIN_EPSILON = 1e-12  # below it float64 rounding swamps the step (θ ± ε == θ)


@dataclasses.dataclass(frozen=True)
class ArrayCheck:
    """The check of one parameter array.

    Attributes:
      path: where the array sits, e.g. ``"params[1]['W']"``.
      shape: its shape.
      num_checked: coordinates (``check``) or directions (``directional``) checked in it.
      difference: ``||g - g_approx|| / (||g|| + ||g_approx||)`` over them (0 when both are 0).
      passed: ``difference < threshold``.
      worst_index: the coordinate (``check``) or ``(direction number,)`` (``directional``) with the
        largest ``|g - g_approx|``; None when nothing was checked.
      analytic: the analytic value there (None when nothing was checked).
      numeric: the two-sided difference there (None when nothing was checked).
      relative_to: ``"array"`` when ``difference`` is relative to the array's own norms;
        ``"whole gradient"`` when the array's own gradient is too small to judge relatively
        (``||g|| + ||g_approx||`` below ``threshold`` times that of everything checked, e.g. a
        batch-normalized layer's bias, whose true gradient is 0 and whose two-sided difference is
        rounding noise): then ``difference = ||g - g_approx||`` over the array divided by
        ``||g|| + ||g_approx||`` over everything checked, its share of the whole gradient.
    """

    path: str
    shape: tuple[int, ...]
    num_checked: int
    difference: float
    passed: bool
    worst_index: tuple[int, ...] | None
    analytic: float | None
    numeric: float | None
    relative_to: str = "array"


@dataclasses.dataclass(frozen=True)
class Report:
    """The result of ``check`` or ``directional``; ``str(report)`` is a readable table.

    Attributes:
      difference: ``||g - g_approx|| / (||g|| + ||g_approx||)`` over everything checked.
      passed: ``difference < threshold``.
      threshold: the pass threshold.
      epsilon: the perturbation size.
      method: ``"coordinates"`` or ``"directions"``.
      num_checked: coordinates or directions checked.
      num_parameters: size of the flattened parameter vector.
      arrays: one ``ArrayCheck`` per parameter array, in pytree order.
    """

    difference: float
    passed: bool
    threshold: float
    epsilon: float
    method: str
    num_checked: int
    num_parameters: int
    arrays: tuple[ArrayCheck, ...]

    @property
    def failed_arrays(self) -> tuple[str, ...]:
        """Paths of the arrays whose own difference is not below the threshold."""
        return tuple(array.path for array in self.arrays if not array.passed)

    def array(self, path: str) -> ArrayCheck:
        """The ``ArrayCheck`` of ``path`` (e.g. ``"params[0]['b']"``)."""
        for array in self.arrays:
            if array.path == path:
                return array
        raise KeyError(f"no array {path!r}; known: {[a.path for a in self.arrays]}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly data (tuples become lists when serialised)."""
        return {**dataclasses.asdict(self), "failed_arrays": list(self.failed_arrays)}

    def format(self) -> str:
        """A header line with the verdict, then one table row per parameter array."""
        unit = "coordinates" if self.method == "coordinates" else "directions"
        verdict = "PASSED" if self.passed else "FAILED"
        comparison = "<" if self.passed else ">="
        header = (
            f"gradient check ({self.method}, two-sided, epsilon={self.epsilon:g}): {verdict}, "
            f"difference {self.difference:.3e} {comparison} threshold {self.threshold:g} "
            f"({self.num_checked} {unit} checked, {self.num_parameters} parameters)"
        )
        if self.failed_arrays:
            header += "\n  wrong arrays: " + ", ".join(self.failed_arrays)
        columns = ("array", "shape", "checked", "difference", "status", "worst at", "analytic", "numeric")
        rows = [
            (
                a.path,
                str(a.shape),
                str(a.num_checked),
                f"{a.difference:.3e}",
                ("ok" if a.passed else "WRONG") + ("" if a.relative_to == "array" else " (~0 gradient: share of all)"),
                "-" if a.worst_index is None else str(a.worst_index),
                "-" if a.analytic is None else f"{a.analytic:+.10e}",
                "-" if a.numeric is None else f"{a.numeric:+.10e}",
            )
            for a in self.arrays
        ]
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
        lines = [header, "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.format()


def _require_x64() -> None:
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "gradient checking needs float64 (epsilon=1e-7 is below float32 resolution), but JAX is in "
            "float32-only mode: set JAX_ENABLE_X64=1 or call it inside `with jax.enable_x64(True):`"
        )


def _relative_difference(analytic: np.ndarray, numeric: np.ndarray) -> float:
    denominator = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    if denominator == 0:
        return 0.0
    return float(np.linalg.norm(analytic - numeric) / denominator)


def _check_float_leaves(tree: PyTree, name: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{name}{jax.tree_util.keystr(path)} must be a float array, got dtype {dtype}")


def _cast_float64(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf).astype(jnp.float64), tree)


@jax.jit
def _flatten_float64(leaves: tuple[jax.Array, ...]) -> jax.Array:
    """The leaves raveled, cast to float64 and concatenated (pytree order), in one compiled call."""
    return jnp.concatenate([jnp.ravel(leaf).astype(jnp.float64) for leaf in leaves])


class _Layout(NamedTuple):
    """Where each parameter array sits in the flat vector (hashable: a static jit argument)."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # start of every array, then the total size

    def unravel(self, theta: jax.Array) -> PyTree:
        """The parameter pytree of a flat vector ``theta``."""
        leaves = [
            theta[start:stop].reshape(shape)
            for start, stop, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes)
        ]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


class _IdentityHashed:
    """Wraps an unhashable callable so it can be a static jit argument (no cache reuse then)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _hashable(fn: Callable[..., Any]) -> Callable[..., Any]:
    try:
        hash(fn)
    except TypeError:
        return _IdentityHashed(fn)
    return fn


@functools.partial(jax.jit, static_argnames=("grads_fn",))
def _gradient_at(params: PyTree, *, grads_fn: Callable[[PyTree], PyTree]) -> PyTree:
    return grads_fn(_cast_float64(params))


class _Problem:
    """Validated inputs: the flattened float64 parameters and gradient, the cost and the array layout."""

    def __init__(self, cost_fn: CostFn, params: PyTree, grads: PyTree | Callable[[PyTree], PyTree]) -> None:
        _require_x64()
        if not callable(cost_fn):
            raise TypeError(f"cost_fn must be a function of params, got {type(cost_fn).__name__}")
        _check_float_leaves(params, "params")
        path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        if not path_leaves:
            raise ValueError("params has no arrays to check")
        params_spec = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.float64), params)
        out = jax.eval_shape(cost_fn, params_spec)
        if not hasattr(out, "shape") or not hasattr(out, "dtype"):
            raise ValueError(f"cost_fn must return a scalar array, got {out!r:.200}")
        if out.shape != ():
            raise ValueError(f"cost_fn must return a scalar, got an array of shape {out.shape}")
        if out.dtype != jnp.float64:
            raise TypeError(
                f"cost_fn returned {out.dtype}, but gradient checking needs the cost computed in float64 "
                "(do not cast inside cost_fn; pass float64 data)"
            )
        if callable(grads):  # called under jit, at the float64 params
            grads = _gradient_at(params, grads_fn=_hashable(grads))
        grads_treedef = jax.tree_util.tree_structure(grads)
        if grads_treedef != treedef:
            raise ValueError(
                f"grads must have the same pytree structure as params; params is {treedef}, grads is {grads_treedef}"
            )
        self.paths = tuple("params" + jax.tree_util.keystr(path) for path, _ in path_leaves)
        shapes = tuple(tuple(int(d) for d in jnp.shape(leaf)) for _, leaf in path_leaves)
        grad_leaves = jax.tree_util.tree_leaves(grads)
        for path, shape, grad_leaf in zip(self.paths, shapes, grad_leaves):
            if tuple(jnp.shape(grad_leaf)) != shape:
                raise ValueError(
                    f"grads{path[len('params'):]} has shape {tuple(jnp.shape(grad_leaf))} but {path} has shape {shape}"
                )
        _check_float_leaves(grads, "grads")
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
        self.layout = _Layout(treedef, shapes, tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)])))
        self.cost_fn = _hashable(cost_fn)
        self.theta = _flatten_float64(tuple(leaf for _, leaf in path_leaves))
        self.gradient = _flatten_float64(tuple(grad_leaves))

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return self.layout.shapes

    @property
    def offsets(self) -> np.ndarray:
        return np.asarray(self.layout.offsets, dtype=np.int64)

    @property
    def size(self) -> int:
        return int(self.theta.shape[0])


@functools.partial(jax.jit, static_argnames=("cost_fn", "layout"))
def _coordinate_differences(
    theta: jax.Array, gradient: jax.Array, epsilon: jax.Array, indices: jax.Array, *, cost_fn: CostFn, layout: _Layout
) -> tuple[jax.Array, jax.Array]:
    """``(g_i, (J(θ + ε e_i) - J(θ - ε e_i)) / step_i)`` for a batch of coordinates ``i`` (vmapped)."""

    def at(index: jax.Array) -> tuple[jax.Array, jax.Array]:
        plus = theta.at[index].add(epsilon)
        minus = theta.at[index].add(-epsilon)
        step = plus[index] - minus[index]  # 2 * epsilon up to float64 rounding of theta_i +- epsilon
        return gradient[index], (cost_fn(layout.unravel(plus)) - cost_fn(layout.unravel(minus))) / step

    return jax.vmap(at)(indices)


@functools.partial(jax.jit, static_argnames=("cost_fn", "layout"))
def _directional_differences(
    theta: jax.Array, gradient: jax.Array, epsilon: jax.Array, key: jax.Array, items: jax.Array, *,
    cost_fn: CostFn, layout: _Layout,
) -> tuple[jax.Array, jax.Array]:
    """``(<g, d>, (J(θ + ε d) - J(θ - ε d)) / 2ε)`` for a batch of ``(array, direction number)`` items (vmapped)."""
    array_of_coordinate = jnp.repeat(
        jnp.arange(len(layout.shapes)), np.diff(layout.offsets), total_repeat_length=layout.offsets[-1]
    )

    def along(item: jax.Array) -> tuple[jax.Array, jax.Array]:
        leaf, number = item[0], item[1]
        normal = jax.random.normal(jax.random.fold_in(key, number), theta.shape, jnp.float64)
        direction = jnp.where(array_of_coordinate == leaf, normal, 0.0)
        direction = direction / jnp.linalg.norm(direction)
        plus, minus = theta + epsilon * direction, theta - epsilon * direction
        step = (plus - minus) / (2 * epsilon)  # the direction actually taken, after rounding
        numeric = (cost_fn(layout.unravel(plus)) - cost_fn(layout.unravel(minus))) / (2 * epsilon)
        return jnp.dot(gradient, step), numeric

    return jax.vmap(along)(items)


def _run_in_chunks(
    batched: Callable[[jax.Array], tuple[jax.Array, jax.Array]], inputs: np.ndarray, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``batched`` to ``inputs`` in equal chunks (the last padded, so one compilation), concatenated."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    count = inputs.shape[0]
    chunk = min(chunk_size, count)
    padded_count = -(-count // chunk) * chunk
    padded = np.concatenate([inputs, np.repeat(inputs[-1:], padded_count - count, axis=0)])
    analytic, numeric = [], []
    for start in range(0, padded_count, chunk):
        a, n = batched(jnp.asarray(padded[start:start + chunk]))
        analytic.append(np.asarray(a))
        numeric.append(np.asarray(n))
    return np.concatenate(analytic)[:count], np.concatenate(numeric)[:count]


def _array_checks(problem: _Problem, owner: np.ndarray, position_of: Callable[[int], tuple[int, ...]],
                  analytic: np.ndarray, numeric: np.ndarray, threshold: float) -> tuple[ArrayCheck, ...]:
    """Per-array differences; ``owner[k]`` is the array of item ``k``, ``position_of(k)`` its reported index.

    Relative to the array's own norms, or (``relative_to="whole gradient"``) to everything
    checked when the array's norms are below ``threshold`` times those of everything checked.
    """
    whole = float(np.linalg.norm(analytic) + np.linalg.norm(numeric))
    arrays = []
    for leaf, (path, shape) in enumerate(zip(problem.paths, problem.shapes)):
        items = np.flatnonzero(owner == leaf)
        if items.size == 0:
            arrays.append(ArrayCheck(path, shape, 0, 0.0, True, None, None, None))
            continue
        a, n = analytic[items], numeric[items]
        own = float(np.linalg.norm(a) + np.linalg.norm(n))
        relative_to = "whole gradient" if own < threshold * whole else "array"
        if relative_to == "array":
            difference = _relative_difference(a, n)
        else:
            difference = float(np.linalg.norm(a - n) / whole)
        worst = int(np.argmax(np.abs(a - n)))
        arrays.append(ArrayCheck(
            path=path,
            shape=shape,
            num_checked=int(items.size),
            difference=difference,
            passed=bool(difference < threshold),
            worst_index=position_of(int(items[worst])),
            analytic=float(a[worst]),
            numeric=float(n[worst]),
            relative_to=relative_to,
        ))
    return tuple(arrays)


def _check_settings(epsilon: float, threshold: float) -> None:
    """``epsilon`` finite in ``[1e-12, inf)`` (smaller steps vanish in float64 rounding: ``θ ± ε == θ``
    gives a 0/0 difference) and ``threshold`` finite and ``> 0`` (``inf`` would pass any gradient)."""
    for name, value in (("epsilon", epsilon), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {value!r} of type {type(value).__name__}")
    if not (np.isfinite(epsilon) and epsilon >= MIN_EPSILON):
        raise ValueError(
            f"epsilon must be a finite number >= {MIN_EPSILON:g} (float64 rounding swamps smaller steps; "
            f"the default is {DEFAULT_EPSILON:g}), got {epsilon!r}"
        )
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0 (the default is {DEFAULT_THRESHOLD:g}), got {threshold!r}")


def check(
    cost_fn: CostFn,
    params: PyTree,
    grads: PyTree | Callable[[PyTree], PyTree],
    *,
    epsilon: float = DEFAULT_EPSILON,
    threshold: float = DEFAULT_THRESHOLD,
    num_coordinates: int | None = None,
    key: jax.Array | None = None,
    chunk_size: int = 256,
) -> Report:
    r"""Compare ``grads`` with two-sided differences :math:`(J(\theta+\varepsilon e_i) - J(\theta-\varepsilon e_i))/2\varepsilon`.

    Args:
      cost_fn: ``params -> scalar`` cost ``J`` (float64; must be deterministic: the same params
        must give the same value, e.g. dropout with fixed masks).
      params: the parameter pytree ``\theta`` to check at.
      grads: the analytic gradient, a pytree shaped like ``params``, or a jit-compatible function
        of params returning one (e.g. ``jax.grad(cost_fn)``), called at the float64 params.
      epsilon: perturbation size ``\varepsilon``.
      threshold: ``passed = difference < threshold``, globally and per array.
      num_coordinates: check only this many coordinates, drawn uniformly without replacement
        with ``key`` (for large nets); None checks all.
      key: PRNG key for ``num_coordinates``.
      chunk_size: perturbed coordinates evaluated per ``vmap``-ed call.
    Returns:
      A ``Report``; its ``arrays`` give each array's difference and worst coordinate.
    Raises:
      RuntimeError: float32-only mode (``jax_enable_x64`` off).
      ValueError / TypeError: a non-scalar or non-float64 cost, ``grads`` not shaped like ``params``.
    """
    _check_settings(epsilon, threshold)
    problem = _Problem(cost_fn, params, grads)
    n = problem.size
    if num_coordinates is None:
        coordinates = np.arange(n, dtype=np.int64)
    else:
        if isinstance(num_coordinates, bool) or not isinstance(num_coordinates, int) or num_coordinates < 1:
            raise ValueError(f"num_coordinates must be a positive int or None, got {num_coordinates!r}")
        if key is None:
            raise ValueError("num_coordinates needs a PRNG key to draw the coordinates: pass key=...")
        if num_coordinates >= n:
            coordinates = np.arange(n, dtype=np.int64)
        else:
            drawn = jax.random.choice(key, n, (num_coordinates,), replace=False)
            coordinates = np.sort(np.asarray(drawn, dtype=np.int64))

    analytic, numeric = _run_in_chunks(
        lambda indices: _coordinate_differences(
            problem.theta, problem.gradient, jnp.float64(epsilon), indices,
            cost_fn=problem.cost_fn, layout=problem.layout,
        ),
        coordinates,
        chunk_size,
    )
    offsets = problem.offsets
    owner = np.searchsorted(offsets, coordinates, side="right") - 1

    def position_of(item: int) -> tuple[int, ...]:
        leaf = owner[item]
        return tuple(int(i) for i in np.unravel_index(coordinates[item] - offsets[leaf], problem.shapes[leaf]))

    difference = _relative_difference(analytic, numeric)
    return Report(
        difference=difference,
        passed=bool(difference < threshold),
        threshold=float(threshold),
        epsilon=float(epsilon),
        method="coordinates",
        num_checked=int(coordinates.size),
        num_parameters=n,
        arrays=_array_checks(problem, owner, position_of, analytic, numeric, threshold),
    )


def directional(
    cost_fn: CostFn,
    params: PyTree,
    grads: PyTree | Callable[[PyTree], PyTree],
    *,
    key: jax.Array,
    num_directions: int = 4,
    epsilon: float = DEFAULT_EPSILON,
    threshold: float = DEFAULT_THRESHOLD,
    chunk_size: int = 256,
) -> Report:
    r"""Cheap check along random unit directions: :math:`\langle g, d\rangle` vs :math:`(J(\theta+\varepsilon d)-J(\theta-\varepsilon d))/2\varepsilon`.

    ``num_directions`` directions are drawn *per parameter array*, each a standard normal on that
    array's coordinates (zero elsewhere) scaled to unit norm, so a failure still names the array:
    ``2 * num_directions * (number of arrays)`` cost evaluations instead of ``2 * (number of parameters)``.
    ``difference`` is the same relative difference as in ``check``, taken over the vector of
    directional derivatives (all arrays for the global one, one array's for each ``ArrayCheck``,
    whose ``worst_index`` is ``(direction number,)``); ``passed = difference < threshold``.
    A wrong gradient passes only if its error is orthogonal to every drawn direction (probability
    0 for a generic error); an error confined to a few coordinates of a large array is diluted by
    the projection, so locate it with ``check`` (``num_coordinates`` for large nets).
    """
    _check_settings(epsilon, threshold)
    if isinstance(num_directions, bool) or not isinstance(num_directions, int) or num_directions < 1:
        raise ValueError(f"num_directions must be a positive int, got {num_directions!r}")
    if key is None:
        raise ValueError("directional needs a PRNG key to draw the directions: pass key=...")
    problem = _Problem(cost_fn, params, grads)
    n = problem.size
    nonempty = np.flatnonzero(np.diff(problem.offsets) > 0)
    owner = np.repeat(nonempty, num_directions)
    direction_numbers = np.tile(np.arange(num_directions), nonempty.size)
    items = np.stack([owner, np.arange(owner.size)], axis=1)
    analytic, numeric = _run_in_chunks(
        lambda chunk: _directional_differences(
            problem.theta, problem.gradient, jnp.float64(epsilon), key, chunk,
            cost_fn=problem.cost_fn, layout=problem.layout,
        ),
        items,
        chunk_size,
    )
    difference = _relative_difference(analytic, numeric)
    return Report(
        difference=difference,
        passed=bool(difference < threshold),
        threshold=float(threshold),
        epsilon=float(epsilon),
        method="directions",
        num_checked=int(owner.size),
        num_parameters=n,
        arrays=_array_checks(
            problem, owner, lambda item: (int(direction_numbers[item]),), analytic, numeric, threshold
        ),
    )
