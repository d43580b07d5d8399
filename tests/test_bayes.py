import functools
import math

import jax
import numpy as np
import pytest

from deepopt import bayes, data

MODELS = {
    "moons": dict(noise=0.2),
    "circles": dict(noise=0.1),
    "spirals": dict(noise=0.5),
    "overfit_2d": dict(),
}

MAKERS = {
    "moons": lambda key, n, p: data.make_moons(key, n, **p),
    "circles": lambda key, n, p: data.make_circles(key, n, **p),
    "spirals": lambda key, n, p: data.make_spirals(key, n, **p),
    "overfit_2d": lambda key, n, p: data.make_overfit_2d(key, n, **p),
}


N = 20000  # one size for every generated set: JAX compiles the generators' ops once per shape


def _sample(generator: str, seed: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
    return _cached_sample(generator, seed, tuple(sorted(params.items())))


@functools.lru_cache(maxsize=None)
def _cached_sample(generator: str, seed: int, items: tuple) -> tuple[np.ndarray, np.ndarray]:
    dataset = MAKERS[generator](jax.random.key(seed), N, dict(items))
    return np.asarray(dataset.X, dtype=np.float64), np.asarray(dataset.y)


def _knn_predict(X_train: np.ndarray, y_train: np.ndarray, X: np.ndarray, k: int = 25) -> np.ndarray:
    classes = int(y_train.max()) + 1
    predictions = []
    train_sq = (X_train**2).sum(1)
    for start in range(0, X.shape[0], 1000):
        chunk = X[start : start + 1000]
        d2 = train_sq[None, :] - 2.0 * chunk @ X_train.T
        neighbours = np.argpartition(d2, k, axis=1)[:, :k]
        votes = np.stack([(y_train[neighbours] == c).sum(1) for c in range(classes)], axis=1)
        predictions.append(votes.argmax(1))
    return np.concatenate(predictions)


def test_api():
    assert bayes.GENERATORS == ("moons", "circles", "spirals", "overfit_2d")
    for name in bayes.GENERATORS:
        assert hasattr(data, f"make_{name}")


def test_noise_zero_is_exact():
    assert bayes.bayes_error("moons", noise=0.0) == 0.0
    assert bayes.bayes_error("circles", noise=0, factor=0.5) == 0.0
    assert bayes.bayes_error("spirals", noise=0.0, classes=4) == 0.0
    assert bayes.bayes_error("overfit_2d", noise=0.0) == 0.12
    assert bayes.bayes_error("overfit_2d", noise=0.0, flip=0.3) == 0.3
    assert bayes.bayes_error("overfit_2d", noise=0.0, flip=0.0) == 0.0


def test_noise_zero_posterior_classifies_the_clean_data_perfectly():
    for generator, params in (("moons", {}), ("circles", {}), ("spirals", {"classes": 3})):
        X, y = _sample(generator, 0, {"noise": 0.0, **params})
        post = bayes.posterior(generator, X, noise=0.0, **params)
        centre = np.hypot(*X.T) < 1e-6  # the spirals' arms all start at the origin
        assert np.array_equal(post.argmax(1)[~centre], y[~centre]), generator
        assert centre.sum() == (3 if generator == "spirals" else 0)
    X, _ = _sample("overfit_2d", 0, {"noise": 0.0, "flip": 0.0})
    clean = (X[:, 1] > 0.3 * np.sin(3 * X[:, 0])).astype(int)
    assert np.array_equal(bayes.posterior("overfit_2d", X, noise=0.0, flip=0.0).argmax(1), clean)


@pytest.mark.parametrize("generator", MODELS)
def test_matches_the_empirical_error_of_the_bayes_classifier(generator):
    params = MODELS[generator]
    X, y = _sample(generator, 0, params)
    wrong = bayes.posterior(generator, X, **params).argmax(1) != y
    expected = bayes.bayes_error(generator, **params)
    se = math.sqrt(expected * (1 - expected) / y.size)
    assert abs(wrong.mean() - expected) < 4 * se + 0.002, (wrong.mean(), expected)


@pytest.mark.parametrize("generator", MODELS)
def test_no_simple_rival_beats_the_bayes_classifier(generator):
    params = MODELS[generator]
    X_all, y_all = _sample(generator, 1, params)  # shuffled: two disjoint parts
    X_train, y_train, X, y = X_all[:3000], y_all[:3000], X_all[3000:9000], y_all[3000:9000]
    bayes_wrong = (bayes.posterior(generator, X, **params).argmax(1) != y).astype(float)
    rivals = {"knn": _knn_predict(X_train, y_train, X)}
    if generator == "circles":  # the Bayes rule is a radius threshold: fit the best one on train
        r_train, r = np.hypot(*X_train.T), np.hypot(*X.T)
        cuts = np.linspace(0.6, 1.2, 601)
        errors = [np.mean((r_train < c) != (y_train == 1)) for c in cuts]
        rivals["threshold"] = (r < cuts[int(np.argmin(errors))]).astype(int)
    if generator == "overfit_2d":  # the clean boundary itself
        rivals["boundary"] = (X[:, 1] > 0.3 * np.sin(3 * X[:, 0])).astype(int)
    for name, prediction in rivals.items():
        difference = bayes_wrong - (prediction != y)
        se = difference.std() / math.sqrt(y.size)
        assert difference.mean() <= 3 * se + 1e-12, (name, difference.mean(), se)


def test_circles_posterior_matches_the_bessel_closed_form():
    special = pytest.importorskip("scipy.special")
    X = np.random.default_rng(0).uniform(-1.6, 1.6, (2000, 2))
    R = np.hypot(*X.T)
    for noise, factor in ((0.1, 0.8), (0.3, 0.5), (0.02, 0.8)):
        logs = [
            -((R - rho) ** 2) / (2 * noise**2) + np.log(special.i0e(R * rho / noise**2)) for rho in (1.0, factor)
        ]
        logs = np.stack(logs, 1)
        expected = np.exp(logs - logs.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(bayes.posterior("circles", X, noise=noise, factor=factor), expected, atol=1e-7)


def test_moons_posterior_matches_brute_force_quadrature():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.uniform(-1.5, 2.5, (30, 2)), [[1.0, 0.0], [0.0, 0.5], [2.0, 0.5], [-1.0, 0.0], [0.5, 0.25]]])
    theta = np.linspace(0.0, np.pi, 40001)
    for noise in (0.3, 0.1):
        logs = []
        for center, start in (((0.0, 0.0), 0.0), ((1.0, 0.5), np.pi)):
            mu = np.stack([center[0] + np.cos(theta + start), center[1] + np.sin(theta + start)], 1)
            exponent = -((X[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * noise**2)
            top = exponent.max(1)
            logs.append(top + np.log(np.trapezoid(np.exp(exponent - top[:, None]), theta, axis=1)))
        logs = np.stack(logs, 1)
        expected = np.exp(logs - logs.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(bayes.posterior("moons", X, noise=noise), expected, atol=1e-6)


def test_spirals_series_forms_agree_and_wide_noise_tends_to_chance():
    X = np.random.default_rng(2).uniform(-1, 1, (500, 2))
    direct = bayes.posterior("spirals", X, noise=2.0)
    fourier = bayes.posterior("spirals", X, noise=2.0 + 1e-9)
    np.testing.assert_allclose(direct, fourier, atol=1e-7)
    assert abs(bayes.bayes_error("spirals", noise=20.0, classes=4) - 0.75) < 1e-3


def test_overfit_2d_is_slightly_above_flip_and_posterior_in_flip_band():
    error = bayes.bayes_error("overfit_2d")
    assert 0.12 < error < 0.16
    X = np.random.default_rng(3).uniform(-3, 3, (1000, 2))
    p1 = bayes.posterior("overfit_2d", X, flip=0.2)[:, 1]
    assert np.all((p1 >= 0.2 - 1e-9) & (p1 <= 0.8 + 1e-9))


def test_monotone_in_noise():
    moons = [bayes.bayes_error("moons", noise=s) for s in (0.1, 0.2, 0.3)]
    assert 0 < moons[0] < moons[1] < moons[2] < 0.5
    circles = [bayes.bayes_error("circles", noise=s) for s in (0.05, 0.1, 0.2)]
    assert circles[0] < circles[1] < circles[2] < 0.5
    spirals = [bayes.bayes_error("spirals", noise=s) for s in (0.2, 0.5, 1.0)]
    assert spirals[0] < spirals[1] < spirals[2] < 2 / 3
    overfit = [bayes.bayes_error("overfit_2d", noise=s) for s in (0.0, 0.05, 0.1)]
    assert overfit[0] < overfit[1] < overfit[2]


@pytest.mark.parametrize(
    "generator, params",
    [
        ("moons", dict(noise=0.2)),
        ("moons", dict(noise=0.0)),
        ("moons", dict(noise=1e-4)),
        ("circles", dict(noise=0.1, factor=0.3)),
        ("circles", dict(noise=0.0)),
        ("spirals", dict(noise=0.3, classes=5)),
        ("spirals", dict(noise=5.0)),
        ("spirals", dict(noise=0.0)),
        ("overfit_2d", dict()),
        ("overfit_2d", dict(noise=0.0)),
    ],
)
def test_posterior_rows_are_distributions(generator, params):
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.uniform(-2, 2, (3000, 2)), rng.uniform(-50, 50, (200, 2)), np.zeros((1, 2))])
    post = bayes.posterior(generator, X, **params)
    classes = params.get("classes", 3) if generator == "spirals" else 2
    assert post.shape == (X.shape[0], classes) and post.dtype == np.float64
    assert np.all(np.isfinite(post)) and np.all(post >= 0)
    np.testing.assert_allclose(post.sum(1), 1.0, atol=1e-12)


def test_posterior_accepts_jax_arrays_and_empty_input():
    X = data.make_moons(jax.random.key(0), 50, 0.2).X
    np.testing.assert_array_equal(bayes.posterior("moons", X, noise=0.2), bayes.posterior("moons", np.asarray(X), noise=0.2))
    assert bayes.posterior("spirals", np.zeros((0, 2)), noise=0.1, classes=4).shape == (0, 4)


def test_monte_carlo_standard_error_is_small():
    for generator, params in (("moons", dict(noise=0.3)), ("circles", dict(noise=0.2)), ("spirals", dict(noise=1.0)), ("overfit_2d", {})):
        generator, items = bayes._normalize(generator, params)
        values = dict(items)
        X = bayes._sample(generator, values, np.random.default_rng(bayes._SEED))
        loss = 1 - bayes.posterior(generator, X, **params).max(1)
        assert loss.std() / math.sqrt(loss.size) < 0.002


def test_deterministic_and_cached():
    first = bayes.bayes_error("moons", noise=0.25)
    assert bayes.bayes_error("moons", noise=0.25) == first
    bayes._bayes_error_cached.cache_clear()
    assert bayes.bayes_error("moons", noise=0.25) == first
    # defaults and int/float spellings normalize to the same cached entry
    assert bayes.bayes_error("circles", noise=0.1) == bayes.bayes_error("circles", noise=0.1, factor=0.8)
    assert bayes.bayes_error("overfit_2d") == bayes.bayes_error("overfit_2d", noise=0.05, flip=0.12)
    before = bayes._bayes_error_cached.cache_info().hits
    bayes.bayes_error("overfit_2d")
    assert bayes._bayes_error_cached.cache_info().hits == before + 1


@pytest.mark.parametrize(
    "call, names",
    [
        (lambda: bayes.bayes_error("blobs", noise=0.1), ["generator", "'blobs'", "moons"]),
        (lambda: bayes.bayes_error("moons", noise=0.1, factor=0.5), ["factor", "0.5", "noise"]),
        (lambda: bayes.bayes_error("moons", noise=-0.1), ["noise", "-0.1", ">= 0"]),
        (lambda: bayes.bayes_error("moons", noise=float("nan")), ["noise", "nan"]),
        (lambda: bayes.bayes_error("moons", noise=True), ["noise", "True"]),
        (lambda: bayes.bayes_error("moons"), ["noise", "required"]),
        (lambda: bayes.bayes_error("circles", noise=0.1, factor=1.0), ["factor", "1.0", "(0, 1)"]),
        (lambda: bayes.bayes_error("spirals", noise=0.1, classes=1), ["classes", "1", ">= 2"]),
        (lambda: bayes.bayes_error("spirals", noise=0.1, classes=2.5), ["classes", "2.5"]),
        (lambda: bayes.bayes_error("overfit_2d", flip=0.5), ["flip", "0.5", "[0, 0.5)"]),
        (lambda: bayes.posterior("moons", np.zeros((3, 3)), noise=0.1), ["X", "(3, 3)"]),
        (lambda: bayes.posterior("moons", np.full((3, 2), np.nan), noise=0.1), ["X", "finite"]),
        (lambda: bayes.posterior("moons", np.zeros((3, 2)), noise=-1.0), ["noise", "-1.0"]),
    ],
)
def test_errors_name_the_argument(call, names):
    with pytest.raises(ValueError) as info:
        call()
    for name in names:
        assert name in str(info.value), (name, str(info.value))
