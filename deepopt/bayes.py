r"""Bayes error of deepopt's generated data sets, from their own generative models.

The generators of ``deepopt.data`` know their class-conditional densities :math:`p(x \mid c)`, so
the error of the best possible classifier (a population figure, the floor any net's error can
reach) follows from the exact class posterior:

.. math::

    p(c \mid x) = \frac{\pi_c\, p(x \mid c)}{\sum_{c'} \pi_{c'}\, p(x \mid c')}, \qquad
    \varepsilon_{\mathrm{Bayes}} = \mathbb{E}_x\!\left[1 - \max_c p(c \mid x)\right].

``posterior`` evaluates :math:`p(c \mid x)` (numpy, float64) and ``bayes_error`` averages
:math:`1 - \max_c p(c \mid x)` over a fixed, class- and latent-stratified sample of ``x`` drawn from
the generator's distribution (``numpy.random.default_rng`` with a fixed seed, so every call gives
the same number). Per generator (all priors :math:`\pi_c` equal):

* ``moons`` / ``circles``: a point of class :math:`c` is :math:`\mu_c(\theta) + \sigma z` with
  :math:`\theta` uniform on an arc of a circle of centre :math:`o_c` and radius :math:`\rho_c` and
  :math:`z \sim N(0, I_2)`. With :math:`x - o_c = R(\cos\varphi, \sin\varphi)`,
  :math:`\lVert x - \mu_c(\theta)\rVert^2 = (R - \rho_c)^2 + 2R\rho_c(1 - \cos(\theta - \varphi))`, so

  .. math::

      p(x \mid c) = \frac{e^{-(R - \rho_c)^2 / 2\sigma^2}}{2\pi\sigma^2}\,
      \frac{1}{L_c} \int_{\mathrm{arc}_c} e^{-\kappa (1 - \cos(\theta - \varphi))}\, d\theta,
      \qquad \kappa = \frac{R \rho_c}{\sigma^2},

  with :math:`L_c` the arc's length in angle (:math:`\pi` for the moons' half circles, centres
  :math:`(0, 0)` and :math:`(1, \tfrac12)`, angles :math:`[0, \pi]` and :math:`[\pi, 2\pi]`;
  :math:`2\pi` for the circles, radii 1 and ``factor``). The arc is cut where
  :math:`\psi = |\theta - \varphi|` (wrapped) passes 0 or :math:`\pi`, into at most two pieces on which
  the integrand decreases from one end; each piece is integrated in the log domain by composite
  Gauss–Legendre on the window where the integrand is within :math:`e^{-50}` of its maximum (found in
  closed form), and the pieces are combined with logsumexp. For the full circle the integral is
  :math:`2\pi\, e^{-\kappa} I_0(\kappa)`, which the tests use as a check.
* ``spirals``: radius :math:`r \sim U[0, 1]` and angle :math:`4(c + r) + \sigma\epsilon`; given
  :math:`x`, :math:`r = \lVert x\rVert` exactly and the angle :math:`\alpha` of :math:`x` has a wrapped
  normal density, so :math:`p(c \mid x) \propto \sum_k \exp(-(\alpha - 4(c + r) + 2\pi k)^2 / 2\sigma^2)`
  (:math:`|k| \le \lceil (12\sigma + \pi) / 2\pi \rceil`; for :math:`\sigma > 2` the equivalent Fourier
  series :math:`1 + 2\sum_n e^{-n^2\sigma^2/2}\cos(n\,\cdot)`).
* ``overfit_2d``: :math:`x_0 \sim U([-1, 1]^2)`, clean label :math:`\ell = 1[x_{0,2} > 0.3\sin(3x_{0,1})]`,
  flipped with probability :math:`f` (``flip``), then :math:`x = x_0 + \sigma z`. Hence
  :math:`p(1 \mid x) = f + (1 - 2f)\, q(x)` with

  .. math::

      q(x) = \frac{\int_{-1}^{1} \phi_\sigma(x_1 - s)\, P\big(b(s) < x_{0,2} < 1 \mid x_2\big)\, ds}
                  {\int_{-1}^{1} \phi_\sigma(x_1 - s)\, P\big(-1 < x_{0,2} < 1 \mid x_2\big)\, ds},
      \qquad b(s) = 0.3 \sin 3s,

  the inner probabilities being normal-CDF differences (:math:`\Phi` from a rational ``erfc``,
  relative error below :math:`1.2\cdot10^{-7}`) and the outer integral composite Gauss–Legendre on
  the window of the kernel. :math:`\varepsilon_{\mathrm{Bayes}} = f + (1 - 2f)\,\mathbb{E}[\min(q, 1 - q)]`.

With ``noise = 0`` the answers are exact: 0 for moons, circles and spirals (their curves do not
meet) and exactly ``flip`` for ``overfit_2d``; ``posterior`` then returns the :math:`\sigma \to 0`
limit (the nearest curve wins; for ``overfit_2d`` the clean label of ``x`` clipped to the square).

Sample sizes: :math:`2^{15}` points (:math:`2^{16}` for spirals), about 0.1 s per call; the Monte
Carlo standard error is at most :math:`\tfrac12(1 - 1/C)/\sqrt{N}`, below 0.002 (and in practice
far below, since the sample is stratified). Results are cached per normalized arguments.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np

GENERATORS: tuple[str, ...] = ("moons", "circles", "spirals", "overfit_2d")

_REQUIRED = object()
_PARAMETERS: dict[str, dict[str, Any]] = {
    "moons": {"noise": _REQUIRED},
    "circles": {"noise": _REQUIRED, "factor": 0.8},
    "spirals": {"noise": _REQUIRED, "classes": 3},
    "overfit_2d": {"noise": 0.05, "flip": 0.12},
}

_SEED = 0
_SAMPLES = 1 << 15
_SPIRAL_SAMPLES = 1 << 16
_CHUNK = 4096
_DECAY = 50.0  # integration windows end where the integrand is e^-50 below its maximum
_GL_PANELS, _GL_ORDER = 4, 8


def _composite_gauss_legendre(panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of composite Gauss–Legendre on ``[0, 1]`` (weights sum to 1)."""
    x, w = np.polynomial.legendre.leggauss(order)
    starts = np.arange(panels)[:, None] / panels
    nodes = (starts + (x[None, :] + 1.0) / (2.0 * panels)).ravel()
    weights = np.tile(w / (2.0 * panels), panels)
    return nodes, weights


_NODES, _WEIGHTS = _composite_gauss_legendre(_GL_PANELS, _GL_ORDER)
_SQUARE_NODES, _SQUARE_WEIGHTS = _composite_gauss_legendre(8, 8)


# --------------------------------------------------------------------------- arguments


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _normalize(generator: Any, params: dict[str, Any]) -> tuple[str, tuple[tuple[str, float | int], ...]]:
    """Validate ``generator`` and its parameters (data.py's ranges); return hashable, defaulted ones."""
    if not isinstance(generator, str) or generator not in _PARAMETERS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
    spec = _PARAMETERS[generator]
    for name, value in params.items():
        if name not in spec:
            raise ValueError(
                f"unknown parameter {name}={value!r} for generator {generator!r}; expected one of {tuple(spec)}"
            )
    values: dict[str, Any] = {}
    for name, default in spec.items():
        if name in params:
            values[name] = params[name]
        elif default is _REQUIRED:
            raise ValueError(f"{name} is required for generator {generator!r} (a finite float >= 0)")
        else:
            values[name] = default
    noise = values["noise"]
    if not _is_real(noise) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite float >= 0, got {noise!r}")
    values["noise"] = float(noise)
    if "factor" in values:
        factor = values["factor"]
        if not _is_real(factor) or not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        values["factor"] = float(factor)
    if "classes" in values:
        classes = values["classes"]
        if not isinstance(classes, numbers.Integral) or isinstance(classes, bool) or classes < 2:
            raise ValueError(f"classes must be an int >= 2, got {classes!r}")
        values["classes"] = int(classes)
    if "flip" in values:
        flip = values["flip"]
        if not _is_real(flip) or not 0 <= flip < 0.5:
            raise ValueError(f"flip must be in [0, 0.5), got {flip!r}")
        values["flip"] = float(flip)
    return generator, tuple(values.items())


def _check_points(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"X must be an (m, 2) array of points, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite, got NaN or inf values")
    return X


# --------------------------------------------------------------------------- numerics


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / np.sum(weights, axis=1, keepdims=True)


def _nearest(distances: np.ndarray) -> np.ndarray:
    """The ``σ → 0`` posterior: one-hot on the smallest distance, ties split evenly."""
    hits = (distances <= np.min(distances, axis=1, keepdims=True)).astype(np.float64)
    return hits / np.sum(hits, axis=1, keepdims=True)


def _log_decreasing_integral(lo: np.ndarray, hi: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    r""":math:`\log \int_{lo}^{hi} e^{-\kappa(1 - \cos\psi)} d\psi` for :math:`0 \le lo \le hi \le \pi` (decreasing integrand)."""
    half_sin_lo = np.sin(lo / 2.0) ** 2
    with np.errstate(divide="ignore"):
        reach = half_sin_lo + _DECAY / (2.0 * kappa)
    window_end = np.where(reach >= 1.0, np.pi, 2.0 * np.arcsin(np.sqrt(np.minimum(reach, 1.0))))
    width = np.maximum(np.minimum(hi, window_end) - lo, 0.0)
    psi = lo[..., None] + width[..., None] * _NODES
    # κ(cos ψ - cos lo) = -2κ sin((ψ - lo)/2) sin((ψ + lo)/2): no cancellation near ψ = lo.
    exponent = -2.0 * kappa[..., None] * np.sin((psi - lo[..., None]) / 2.0) * np.sin((psi + lo[..., None]) / 2.0)
    integral = width * np.sum(_WEIGHTS * np.exp(exponent), axis=-1)
    with np.errstate(divide="ignore"):
        return -2.0 * kappa * half_sin_lo + np.log(integral)


def _log_arc_density(X: np.ndarray, center: tuple[float, float], radius: float, start: float | None, sigma: float) -> np.ndarray:
    r"""Log density of ``μ(θ) + N(0, σ² I)`` with ``θ`` uniform on a half circle from angle ``start`` (``None``: full circle)."""
    dx, dy = X[:, 0] - center[0], X[:, 1] - center[1]
    R = np.hypot(dx, dy)
    kappa = R * radius / sigma**2
    if start is None:  # ψ covers [0, π] twice
        lo = np.zeros((X.shape[0], 1))
        hi = np.full((X.shape[0], 1), np.pi)
        log_length = math.log(math.pi)
    else:
        # The arc is u = θ - φ in [u_a, u_a + π]; split where ψ = |u| (wrapped) passes 0 or π.
        u_a = np.pi - np.mod(np.pi - (start - np.arctan2(dy, dx)), 2.0 * np.pi)  # in (-π, π]
        before = u_a <= 0.0
        lo = np.stack([np.where(before, 0.0, u_a), np.where(before, 0.0, np.pi - u_a)], axis=1)
        hi = np.stack([np.where(before, -u_a, np.pi), np.where(before, np.pi + u_a, np.pi)], axis=1)
        log_length = math.log(math.pi)
    pieces = _log_decreasing_integral(lo, hi, kappa[:, None])
    top = np.max(pieces, axis=1)
    log_integral = top + np.log(np.sum(np.exp(pieces - top[:, None]), axis=1))
    return -math.log(2.0 * math.pi * sigma**2) - (R - radius) ** 2 / (2.0 * sigma**2) + log_integral - log_length


def _arc_distance(X: np.ndarray, center: tuple[float, float], radius: float, start: float | None) -> np.ndarray:
    """Distance from each point to a half circle from angle ``start`` (``None``: the full circle)."""
    dx, dy = X[:, 0] - center[0], X[:, 1] - center[1]
    R = np.hypot(dx, dy)
    if start is None:
        return np.abs(R - radius)
    u_a = np.pi - np.mod(np.pi - (start - np.arctan2(dy, dx)), 2.0 * np.pi)
    nearest = np.where(u_a <= 0.0, 0.0, np.minimum(u_a, np.pi - u_a))
    return np.sqrt((R - radius) ** 2 + 4.0 * R * radius * np.sin(nearest / 2.0) ** 2)


def _erfc_tail(z: np.ndarray) -> np.ndarray:
    """``erfc(z)`` for ``z >= 0`` (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7)."""
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    return t * np.exp(-z * z + poly)


def _normal_tail(a: np.ndarray) -> np.ndarray:
    """``2 P(Z > |a|)`` for standard normal ``Z``."""
    return _erfc_tail(np.abs(a) / math.sqrt(2.0))


def _normal_mass(a: np.ndarray, b: np.ndarray, tail_a: np.ndarray, tail_b: np.ndarray) -> np.ndarray:
    """``P(a < Z < b)`` for ``a <= b`` from ``tail_x = _normal_tail(x)``, without cancellation in either tail."""
    return np.where(a >= 0.0, 0.5 * (tail_a - tail_b), np.where(b <= 0.0, 0.5 * (tail_b - tail_a), 1.0 - 0.5 * (tail_a + tail_b)))


# --------------------------------------------------------------------------- posteriors

_MOON_ARCS = (((0.0, 0.0), 1.0, 0.0), ((1.0, 0.5), 1.0, math.pi))


def _posterior_moons(X: np.ndarray, noise: float) -> np.ndarray:
    if noise == 0.0:
        return _nearest(np.stack([_arc_distance(X, *arc) for arc in _MOON_ARCS], axis=1))
    return _softmax(np.stack([_log_arc_density(X, *arc, noise) for arc in _MOON_ARCS], axis=1))


def _posterior_circles(X: np.ndarray, noise: float, factor: float) -> np.ndarray:
    arcs = (((0.0, 0.0), 1.0, None), ((0.0, 0.0), factor, None))
    if noise == 0.0:
        return _nearest(np.stack([_arc_distance(X, *arc) for arc in arcs], axis=1))
    return _softmax(np.stack([_log_arc_density(X, *arc, noise) for arc in arcs], axis=1))


def _posterior_spirals(X: np.ndarray, noise: float, classes: int) -> np.ndarray:
    r = np.hypot(X[:, 0], X[:, 1])
    angle = np.arctan2(X[:, 0], X[:, 1])  # a point is (r sin t, r cos t)
    means = 4.0 * (np.arange(classes)[None, :] + r[:, None])
    offset = np.mod(angle[:, None] - means + np.pi, 2.0 * np.pi) - np.pi  # in [-π, π)
    if noise == 0.0:
        return _nearest(np.abs(offset))
    if noise <= 2.0:
        reach = math.ceil((12.0 * noise + math.pi) / (2.0 * math.pi))  # terms beyond are below e^-72
        k = np.arange(-reach, reach + 1)
        terms = -((offset[..., None] + 2.0 * math.pi * k) ** 2) / (2.0 * noise**2)
        top = np.max(terms, axis=-1)
        logits = top + np.log(np.sum(np.exp(terms - top[..., None]), axis=-1))
    else:  # wrapped normal as its Fourier series: converges in a few terms for wide noise
        n = np.arange(1, math.ceil(math.sqrt(2.0 * 45.0) / noise) + 2)
        series = 1.0 + 2.0 * np.sum(np.exp(-(n**2) * noise**2 / 2.0) * np.cos(offset[..., None] * n), axis=-1)
        logits = np.log(series)
    return _softmax(logits)


def _boundary(s: np.ndarray) -> np.ndarray:
    return 0.3 * np.sin(3.0 * s)


def _clean_probability(X: np.ndarray, noise: float) -> np.ndarray:
    """``q(x) = P(clean label 1 | x)`` for ``overfit_2d``: x0 uniform on the square, x = x0 + N(0, σ²)."""
    clipped = np.clip(X, -1.0, 1.0)
    limit = (clipped[:, 1] > _boundary(clipped[:, 0])).astype(np.float64)
    if noise == 0.0:
        return limit
    x1, x2 = X[:, 0:1], X[:, 1:2]
    peak = np.clip(x1, -1.0, 1.0)
    half = np.sqrt((x1 - peak) ** 2 + 2.0 * noise**2 * _DECAY)
    lo, hi = np.maximum(-1.0, x1 - half), np.minimum(1.0, x1 + half)
    s = lo + (hi - lo) * _SQUARE_NODES
    weight = (hi - lo) * _SQUARE_WEIGHTS * np.exp(-((x1 - s) ** 2 - (x1 - peak) ** 2) / (2.0 * noise**2))
    b = (_boundary(s) - x2) / noise
    top, bottom = (1.0 - x2) / noise, (-1.0 - x2) / noise
    tail_b, tail_top, tail_bottom = _normal_tail(b), _normal_tail(top), _normal_tail(bottom)
    upper = _normal_mass(b, top, tail_b, tail_top)
    lower = _normal_mass(bottom, b, tail_bottom, tail_b)
    numerator = np.sum(weight * upper, axis=1)
    denominator = numerator + np.sum(weight * lower, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = numerator / denominator
    # Points so far outside the square that both masses underflow: the σ → 0 rule.
    return np.where(denominator > 0.0, q, limit)


def _posterior_overfit_2d(X: np.ndarray, noise: float, flip: float) -> np.ndarray:
    p1 = flip + (1.0 - 2.0 * flip) * _clean_probability(X, noise)
    return np.stack([1.0 - p1, p1], axis=1)


_POSTERIORS = {
    "moons": _posterior_moons,
    "circles": _posterior_circles,
    "spirals": _posterior_spirals,
    "overfit_2d": _posterior_overfit_2d,
}


def _posterior(generator: str, X: np.ndarray, values: dict[str, Any]) -> np.ndarray:
    compute = _POSTERIORS[generator]
    if X.shape[0] == 0:
        return np.zeros((0, values.get("classes", 2)))
    return np.concatenate([compute(X[i : i + _CHUNK], **values) for i in range(0, X.shape[0], _CHUNK)])


def posterior(generator: str, X: Any, **params: float) -> np.ndarray:
    r"""The exact class posterior :math:`p(c \mid x)` of ``generator``'s model at the points ``X``.

    ``X`` is ``(m, 2)``; returns ``(m, C)`` float64 rows that sum to 1 (``C = classes`` for spirals,
    2 otherwise). ``params`` are the generator's keyword arguments (see ``bayes_error``). The
    Bayes classifier is ``posterior(...).argmax(axis=1)``. Points the model cannot produce get the
    natural extension: spirals beyond radius 1 the same angle posterior, ``overfit_2d`` points so far
    outside the square that both class masses underflow the ``σ → 0`` rule.
    """
    generator, items = _normalize(generator, params)
    return _posterior(generator, _check_points(X), dict(items))


# --------------------------------------------------------------------------- Bayes error


def _sample(generator: str, values: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Points from the generator's distribution, stratified by class and by the latent curve parameter."""
    noise = values["noise"]
    if generator == "overfit_2d":
        points = rng.uniform(-1.0, 1.0, (_SAMPLES, 2))
        return points + noise * rng.standard_normal((_SAMPLES, 2))
    classes = values.get("classes", 2)
    per_class = (_SPIRAL_SAMPLES if generator == "spirals" else _SAMPLES) // classes
    strata = (np.arange(per_class) + rng.random((classes, per_class))) / per_class  # U[0, 1), stratified
    if generator == "spirals":
        r = strata
        t = 4.0 * (np.arange(classes)[:, None] + r) + noise * rng.standard_normal(r.shape)
        return np.stack([r * np.sin(t), r * np.cos(t)], axis=-1).reshape(-1, 2)
    if generator == "moons":
        t = np.pi * strata
        outer = np.stack([np.cos(t[0]), np.sin(t[0])], axis=1)
        inner = np.stack([1.0 - np.cos(t[1]), 0.5 - np.sin(t[1])], axis=1)
    else:
        t = 2.0 * np.pi * strata
        outer = np.stack([np.cos(t[0]), np.sin(t[0])], axis=1)
        inner = values["factor"] * np.stack([np.cos(t[1]), np.sin(t[1])], axis=1)
    points = np.concatenate([outer, inner])
    return points + noise * rng.standard_normal(points.shape)


@functools.lru_cache(maxsize=256)
def _bayes_error_cached(generator: str, items: tuple[tuple[str, float | int], ...]) -> float:
    values = dict(items)
    if values["noise"] == 0.0:
        return values.get("flip", 0.0)
    X = _sample(generator, values, np.random.default_rng(_SEED))
    return float(np.mean(1.0 - np.max(_posterior(generator, X, values), axis=1)))


def bayes_error(generator: str, **params: float) -> float:
    r"""Bayes error :math:`\mathbb{E}_x[1 - \max_c p(c \mid x)]` of a generated data set (a fraction).

    ``generator`` is one of ``GENERATORS`` (``data.make_<generator>`` without ``make_``) and
    ``params`` are that function's keyword arguments with its names, defaults and ranges:
    ``moons(noise)``, ``circles(noise, factor=0.8)``, ``spirals(noise, classes=3)``,
    ``overfit_2d(noise=0.05, flip=0.12)``. Exact (0, or ``flip``) for ``noise = 0``; otherwise a
    deterministic stratified Monte Carlo average of the exact posterior (standard error < 0.002).
    Raises ``ValueError`` naming the argument for an unknown generator or parameter or a value out
    of range. Cached.
    """
    return _bayes_error_cached(*_normalize(generator, params))
