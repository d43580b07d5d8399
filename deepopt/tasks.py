r"""What a run learns: a ``Task`` is its loss, its metrics, its primary metric and its targets.

``train.Config(task=...)`` sets it; ``classification()`` is the default, so every run written
before tasks existed keeps its meaning and its results. Everything task-specific in deepopt reads
the ``Task``: the training step minimizes :math:`\frac1m\sum_i \ell(\hat y_i, y_i)` (plus L2),
evaluation reports each metric (the mean of its per-example values unless the task aggregates it
otherwise) and ``cost`` (the mean loss), early stopping keeps the epoch with the best primary dev
metric (ties to the lower dev cost), and searches rank rows named ``train_<metric>``,
``dev_<metric>`` and ``test_<metric>`` in each metric's direction.

- ``classification()``: integer class ids; one output unit is a sigmoid head, two or more a
  softmax one; loss cross-entropy; metric ``accuracy`` (primary, higher is better).
- ``regression()``: float targets ``(m,)`` (one output) or ``(m, k)`` (``k`` outputs); loss the
  squared error :math:`\frac1k\sum_j(\hat y_{ij} - y_{ij})^2`; metrics ``mse`` (primary, lower is
  better), ``mae`` and ``r2`` (:math:`1 - \mathrm{SSE}/\mathrm{SST}`, SST about each output's mean
  over the split, summed over outputs: the variance-weighted R²).
- ``Task(name=..., loss=fn, metrics={...}, primary=..., higher_is_better=...)``: your own, from
  plain functions of ``(outputs, y)``. It is hashable (a static part of ``Config``); its ``name``
  identifies it in rows and run ids.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepopt import data as data_lib
from deepopt import losses, model
from deepopt.data import CLASS_IDS, FLOATS, TARGET_KINDS  # noqa: F401 (the targets' kinds, re-exported)

MAXIMIZE, MINIMIZE = "maximize", "minimize"
RESERVED_METRICS = ("cost",)  # evaluate's mean loss; final_cost is the training set's cost with L2
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

PerExample = Callable[[jax.Array, jax.Array], jax.Array]
Aggregate = Callable[[jax.Array, jax.Array], jax.Array]


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable ``{name: value}`` (insertion order kept): how a ``Task`` holds its functions."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = tuple(items.items())

    def __getitem__(self, name: str) -> Any:
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrozenMap) and self._items == other._items

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{key!r}: {getattr(value, '__name__', value)!r}" for key, value in self._items) + "}"


@dataclasses.dataclass(frozen=True)
class Task:
    """What is learned: a loss, metrics, the primary metric and its direction, the targets' kind.

    Attributes:
      name: identifies the task in rows (``config["task"]``) and run ids; ``classification`` and
        ``regression`` are the built-in ones.
      loss: ``loss(outputs, y) -> (m,)``, each example's loss (differentiable in ``outputs``).
      metrics: ``{name: fn}``, ``fn(outputs, y) -> (m,)`` per-example values; a metric is their
        mean unless ``aggregate`` names it. Names are lower-case identifiers, not ``cost``.
      primary: the metric early stopping and searches rank by (a key of ``metrics``).
      higher_is_better: the primary metric's direction.
      targets: ``"class_ids"`` (integer labels ``(m,)`` below the model's classes: ``max(2, n_out)``)
        or ``"floats"`` (finite real targets ``(m,)`` with one output, or ``(m, n_out)``), the default.
      aggregate: ``{name: fn}``, ``fn(per_example, y) -> scalar`` for metrics that are not a mean.
      directions: ``{name: "maximize" | "minimize"}`` for the non-primary metrics; a metric not
        named here goes the primary's way.
      predict: ``predict(outputs) -> predictions`` (class ids, values); None: the outputs themselves.
    """

    name: str
    loss: PerExample
    metrics: Mapping[str, PerExample]
    primary: str
    higher_is_better: bool
    targets: str = FLOATS
    aggregate: Mapping[str, Aggregate] = dataclasses.field(default_factory=dict)
    directions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    predict: Callable[[jax.Array], jax.Array] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Task.name must be a non-empty str, got {self.name!r}")
        if not callable(self.loss):
            raise TypeError(f"Task.loss must be a function loss(outputs, y) -> (m,), got {self.loss!r}")
        for field in ("metrics", "aggregate", "directions"):
            value = getattr(self, field)
            if not isinstance(value, Mapping):
                raise TypeError(f"Task.{field} must be a mapping of metric names, got {type(value).__name__}")
            object.__setattr__(self, field, FrozenMap(value))
        if not self.metrics:
            raise ValueError("Task.metrics must name at least one metric, e.g. {'mse': fn}")
        for name, fn in self.metrics.items():
            if not isinstance(name, str) or not _METRIC_NAME.match(name) or name in RESERVED_METRICS:
                raise ValueError(
                    f"Task.metrics: {name!r} is not a usable metric name: use a lower-case identifier "
                    f"(rows name it train_<name>, dev_<name>), not one of {list(RESERVED_METRICS)}"
                )
            if not callable(fn):
                raise TypeError(f"Task.metrics[{name!r}] must be a function fn(outputs, y) -> (m,), got {fn!r}")
        if self.primary not in self.metrics:
            raise ValueError(f"Task.primary must be one of the metrics {list(self.metrics)}, got {self.primary!r}")
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(f"Task.higher_is_better must be a bool, got {self.higher_is_better!r}")
        if self.targets not in TARGET_KINDS:
            raise ValueError(f"Task.targets must be one of {list(TARGET_KINDS)}, got {self.targets!r}")
        for field, allowed in (("aggregate", None), ("directions", (MAXIMIZE, MINIMIZE))):
            for name, value in getattr(self, field).items():
                if name not in self.metrics:
                    raise ValueError(f"Task.{field} names {name!r}, which is not one of the metrics {list(self.metrics)}")
                if allowed is not None and value not in allowed:
                    raise ValueError(f"Task.directions[{name!r}] must be one of {list(allowed)}, got {value!r}")
                if allowed is None and not callable(value):
                    raise TypeError(f"Task.aggregate[{name!r}] must be a function fn(per_example, y), got {value!r}")
        if self.primary in self.directions and self.directions[self.primary] != self.direction(self.primary):
            raise ValueError(f"Task.directions[{self.primary!r}] contradicts higher_is_better={self.higher_is_better}")
        if self.predict is not None and not callable(self.predict):
            raise TypeError(f"Task.predict must be a function of the outputs or None, got {self.predict!r}")

    def direction(self, metric: str) -> str:
        """``"maximize"`` or ``"minimize"``: how ``metric`` (one of ``metrics``) ranks."""
        if metric == self.primary:
            return MAXIMIZE if self.higher_is_better else MINIMIZE
        return self.directions.get(metric, self.direction(self.primary))

    def row_directions(self) -> dict[str, str]:
        """Every row field of this task's metrics with its direction: ``train_<m>``, ``dev_<m>``, ``test_<m>``, ``final_cost``."""
        directions = {f"{split}_{name}": self.direction(name) for name in self.metrics for split in ("train", "dev", "test")}
        directions["final_cost"] = MINIMIZE
        return directions

    def describe(self) -> str:
        """What rows and run ids record as ``config["task"]``: the name."""
        return self.name

    def check_targets(self, y: Any, n_out: int, y_name: str, outputs_from: str) -> None:
        """Concrete targets ``y`` (host values; tracers are skipped) fit ``n_out`` outputs; a ``ValueError`` names ``y_name``."""
        if isinstance(y, jax.core.Tracer):
            return
        if self.targets == CLASS_IDS:
            data_lib.check_labels(y, 2 if n_out == 1 else n_out, y_name, outputs_from)
            return
        width = 1 if np.ndim(y) == 1 else np.shape(y)[1]
        if width != n_out:
            got = "(m,) targets need 1" if np.ndim(y) == 1 else f"{width} target columns need {width}"
            raise ValueError(f"{y_name}: {got} output unit(s), but {outputs_from} gives {n_out}")

    def evaluate(self, outputs: jax.Array, y: jax.Array, dtype: Any) -> dict[str, jax.Array]:
        r"""Every metric on a whole split, in ``dtype``, and ``cost``: :math:`\frac1m\sum_i\ell_i` (no L2)."""
        values = {}
        for name, fn in self.metrics.items():
            per_example = fn(outputs, y)
            aggregate = self.aggregate.get(name)
            values[name] = (jnp.mean(per_example) if aggregate is None else aggregate(per_example, y)).astype(dtype)
        values["cost"] = jnp.mean(self.loss(outputs, y))
        return values

    def predictions(self, outputs: jax.Array) -> jax.Array:
        """What the outputs predict: ``predict(outputs)``, or the outputs themselves."""
        return outputs if self.predict is None else self.predict(outputs)

    def worst(self, dtype: Any) -> jax.Array:
        """The primary metric's worst value (``-inf`` when higher is better, else ``inf``): early stopping's start."""
        return jnp.array(-jnp.inf if self.higher_is_better else jnp.inf, dtype)

    def better(self, value: jax.Array, cost: jax.Array, best: jax.Array, best_cost: jax.Array) -> jax.Array:
        """Whether ``(value, cost)`` beats ``(best, best_cost)``: a better primary metric, or the same and a lower cost."""
        strictly = value > best if self.higher_is_better else value < best
        return strictly | ((value == best) & (cost < best_cost))


# ------------------------------------------------------------------------- classification


def _correct(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per example: the predicted class (``model.predict_from_logits``) equals the label."""
    return model.predict_from_logits(logits) == y


def classification() -> Task:
    """Class ids; sigmoid for one output unit, softmax for more; cross-entropy; ``accuracy`` (higher is better)."""
    return _CLASSIFICATION


_CLASSIFICATION = Task(
    name="classification", loss=losses.per_example_cross_entropy, metrics={"accuracy": _correct}, primary="accuracy",
    higher_is_better=True, targets=CLASS_IDS, predict=model.predict_from_logits,
)


# ----------------------------------------------------------------------------- regression


def _as_columns(outputs: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``outputs`` ``(m, k)`` and ``y`` as ``(m, k)`` in the outputs' dtype (a ``(m,)`` target is one column)."""
    y = y.astype(outputs.dtype)
    return outputs, (y[:, None] if y.ndim == 1 else y)


def squared_error(outputs: jax.Array, y: jax.Array) -> jax.Array:
    r"""Per example :math:`\frac1k\sum_j(\hat y_{ij} - y_{ij})^2`, ``(m,)``."""
    outputs, y = _as_columns(outputs, y)
    return jnp.mean(jnp.square(outputs - y), axis=1)


def absolute_error(outputs: jax.Array, y: jax.Array) -> jax.Array:
    r"""Per example :math:`\frac1k\sum_j|\hat y_{ij} - y_{ij}|`, ``(m,)``."""
    outputs, y = _as_columns(outputs, y)
    return jnp.mean(jnp.abs(outputs - y), axis=1)


def r2_from_squared_errors(per_example: jax.Array, y: jax.Array) -> jax.Array:
    r"""R² :math:`= 1 - \mathrm{SSE}/\mathrm{SST}` from per-example squared errors and the split's targets.

    :math:`\mathrm{SST} = \sum_{ij}(y_{ij} - \bar y_j)^2` about each output's mean over the split
    (the variance-weighted R² of several outputs); a constant target gives ``-inf`` or NaN.
    """
    y = y.astype(per_example.dtype)
    y = y[:, None] if y.ndim == 1 else y
    total = jnp.mean(jnp.square(y - jnp.mean(y, axis=0)))  # SST / (m k)
    return 1.0 - jnp.mean(per_example) / total  # SSE / (m k) over it


def _outputs_as_targets(outputs: jax.Array) -> jax.Array:
    """Predictions of a regression: ``(m,)`` for one output, ``(m, k)`` for more."""
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def regression() -> Task:
    """Float targets; squared-error loss; ``mse`` (primary, lower is better), ``mae``, ``r2`` (higher is better)."""
    return _REGRESSION


_REGRESSION = Task(
    name="regression", loss=squared_error,
    metrics={"mse": squared_error, "mae": absolute_error, "r2": squared_error},
    primary="mse", higher_is_better=False, targets=FLOATS, aggregate={"r2": r2_from_squared_errors},
    directions={"mae": MINIMIZE, "r2": MAXIMIZE}, predict=_outputs_as_targets,
)

BUILT_IN = {"classification": classification, "regression": regression}


def by_name(name: str) -> Task:
    """A built-in task by name (the ``--task`` flag): ``classification`` or ``regression``."""
    if name not in BUILT_IN:
        raise ValueError(f"task must be one of {list(BUILT_IN)}, got {name!r}")
    return BUILT_IN[name]()


def check_task(task: Any, where: str = "Config.task") -> Task:
    """``task`` must be a ``Task``; returned as is."""
    if not isinstance(task, Task):
        raise TypeError(f"{where} must be a deepopt.tasks.Task (tasks.classification(), tasks.regression(), ...), "
                        f"got {type(task).__name__}")
    return task
