import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepopt import data

GENERATORS = {
    "moons": lambda key, n: data.make_moons(key, n, 0.1),
    "circles": lambda key, n: data.make_circles(key, n, 0.05),
    "spirals": lambda key, n: data.make_spirals(key, n, 0.2, classes=3),
    "overfit_2d": lambda key, n: data.make_overfit_2d(key, n),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_shapes_dtypes_and_determinism(name):
    make = GENERATORS[name]
    dataset = make(jax.random.key(0), 91)
    assert isinstance(dataset, data.Dataset)
    assert dataset.X.shape == (91, 2) and jnp.issubdtype(dataset.X.dtype, jnp.floating)
    assert dataset.y.shape == (91,) and dataset.y.dtype == jnp.int32
    assert bool(jnp.all(jnp.isfinite(dataset.X)))
    again = make(jax.random.key(0), 91)
    other = make(jax.random.key(1), 91)
    np.testing.assert_array_equal(dataset.X, again.X)
    assert not np.array_equal(dataset.X, other.X)


def test_class_counts_are_balanced():
    assert np.bincount(np.asarray(data.make_moons(jax.random.key(0), 101, 0.1).y)).tolist() == [51, 50]
    assert np.bincount(np.asarray(data.make_circles(jax.random.key(0), 100, 0.0).y)).tolist() == [50, 50]
    assert np.bincount(np.asarray(data.make_spirals(jax.random.key(0), 100, 0.1, classes=4).y)).tolist() == [25, 25, 25, 25]


def test_circles_radii_without_noise():
    circles = data.make_circles(jax.random.key(0), 200, 0.0, factor=0.8)
    radius = jnp.linalg.norm(circles.X, axis=1)
    np.testing.assert_allclose(radius[circles.y == 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(radius[circles.y == 1], 0.8, atol=1e-6)


def test_overfit_2d_has_label_noise():
    clean = data.make_overfit_2d(jax.random.key(3), 2000, noise=0.0, flip=0.0)
    noisy = data.make_overfit_2d(jax.random.key(3), 2000, noise=0.0, flip=0.2)
    np.testing.assert_array_equal(clean.X, noisy.X)
    flipped = float(jnp.mean(clean.y != noisy.y))
    assert 0.15 < flipped < 0.25


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data.make_moons(jax.random.key(0), 1, 0.1), "n must be"),
        (lambda: data.make_moons(jax.random.key(0), 10, -0.1), "noise must be"),
        (lambda: data.make_circles(jax.random.key(0), 10, 0.1, factor=1.5), "factor must be"),
        (lambda: data.make_spirals(jax.random.key(0), 10, 0.1, classes=1), "classes must be"),
        (lambda: data.make_overfit_2d(jax.random.key(0), 10, flip=0.7), "flip must be"),
    ],
)
def test_generator_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_train_dev_test_split_partitions_the_data():
    dataset = data.Dataset(jnp.arange(200.0).reshape(100, 2), jnp.arange(100) % 2)
    train, dev, test = data.train_dev_test_split(jax.random.key(0), dataset, 0.2, 0.1)
    assert (train.X.shape[0], dev.X.shape[0], test.X.shape[0]) == (70, 20, 10)
    rows = np.concatenate([train.X[:, 0], dev.X[:, 0], test.X[:, 0]])
    assert sorted(rows.tolist()) == sorted(np.asarray(dataset.X[:, 0]).tolist())
    np.testing.assert_array_equal(np.asarray(train.X[:, 0]) / 2 % 2, train.y)  # rows keep their labels
    with pytest.raises(ValueError, match="dev_fraction"):
        data.train_dev_test_split(jax.random.key(0), dataset, 1.2, 0.1)
    with pytest.raises(ValueError, match="no training examples"):
        data.train_dev_test_split(jax.random.key(0), dataset, 0.6, 0.4)


def test_standardize_uses_training_statistics_only():
    key_a, key_b = jax.random.split(jax.random.key(0))
    train = data.Dataset(3.0 + 5.0 * jax.random.normal(key_a, (500, 3)), jnp.zeros(500, jnp.int32))
    train = train._replace(X=train.X.at[:, 2].set(7.0))  # a constant feature
    other = data.Dataset(jax.random.normal(key_b, (50, 3)), jnp.zeros(50, jnp.int32))
    train_s, other_s = data.standardize(train, other)
    np.testing.assert_allclose(jnp.mean(train_s.X[:, :2], axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(train_s.X[:, :2], axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(train_s.X[:, 2], 0.0, atol=1e-5)  # centred, not blown up
    mean, std = jnp.mean(train.X[:, :2], axis=0), jnp.std(train.X[:, :2], axis=0)
    np.testing.assert_allclose(other_s.X[:, :2], (other.X[:, :2] - mean) / std, rtol=1e-5)
    with pytest.raises(ValueError, match="features"):
        data.standardize(train, data.Dataset(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32)))


def test_minibatch_indices_course_semantics():
    batches = data.minibatch_indices(jax.random.key(0), 300, 64)
    assert [len(b) for b in batches] == [64, 64, 64, 64, 44]
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))  # every example once
    next_epoch = data.minibatch_indices(jax.random.key(1), 300, 64)
    assert not np.array_equal(np.concatenate(batches), np.concatenate(next_epoch))  # fresh permutation
    assert [len(b) for b in data.minibatch_indices(jax.random.key(0), 128, 64)] == [64, 64]
    index, mask = data.padded_minibatch_indices(jax.random.key(0), 300, 64)
    assert index.shape == mask.shape == (5, 64)
    np.testing.assert_array_equal(np.asarray(index)[np.asarray(mask)], np.concatenate(batches))
    with pytest.raises(ValueError, match="batch_size"):
        data.minibatch_indices(jax.random.key(0), 300, 0)


def test_one_hot():
    np.testing.assert_array_equal(data.one_hot(jnp.array([0, 2]), 3), [[1, 0, 0], [0, 0, 1]])


def test_one_hot_refuses_concrete_labels_out_of_range():
    """An id outside 0..num_classes-1 gave a row of zeros: refused when concrete, unchanged when traced."""
    with pytest.raises(
        ValueError,
        match=r"y must be class ids in 0\.\.2 for one_hot with num_classes=3, got values in \[-1, 3\] "
        r"\(first offending label: 3 at index 0\)",
    ):
        data.one_hot(jnp.array([3, -1, 1]), 3)
    with pytest.raises(ValueError, match=r"first offending label: -1 at index 1"):
        data.one_hot(np.array([0, -1]), 3)
    traced = jax.jit(data.one_hot, static_argnums=1)(jnp.array([3, 1]), 3)
    np.testing.assert_array_equal(traced, [[0, 0, 0], [0, 1, 0]])  # jax.nn.one_hot's behaviour, as before


XOR_X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)


@pytest.mark.parametrize(
    "labels, offending",
    [(np.array([-3, 1, 1, 0]), r"got values in \[-3, 1\] \(first offending label: -3 at index 0\)"),
     (np.array([0, 1, 2**32 + 1, 0], np.int64), r"got values in \[0, 4294967297\] \(first offending label: 4294967297 at index 2\)")],
    ids=["negative", "beyond_int32"],
)
def test_labels_must_be_non_negative_and_fit_int32(labels, offending):
    """Without num_classes: a negative label was accepted and 2**32 + 1 wrapped to 1 in the int32 cast."""
    expected = r"must be class ids >= 0 \(and <= 2147483647, int32\), " + offending
    with pytest.raises(ValueError, match=r"data\.y " + expected):
        data.check_dataset(data.Dataset(XOR_X, labels))
    with pytest.raises(ValueError, match=r"data\.y " + expected):
        data.train_dev_test_split(jax.random.key(0), data.Dataset(XOR_X, labels), 0.25, 0.0)
    with pytest.raises(ValueError, match=r"train\.y " + expected):
        data.standardize(data.Dataset(XOR_X, labels))
    with pytest.raises(ValueError, match=r"others\[1\]\.y " + expected):
        data.standardize(data.Dataset(XOR_X, np.zeros(4, int)), data.Dataset(XOR_X, np.zeros(4, int)),
                         data.Dataset(XOR_X, labels))
    with pytest.raises(ValueError, match=r"in 0\.\.1 for the model"):  # with num_classes: the classes' range
        data.check_dataset(data.Dataset(XOR_X, labels), num_classes=2)


def test_valid_int64_labels_are_cast_and_traced_labels_not_checked():
    checked = data.check_dataset(data.Dataset(XOR_X, np.array([0, 1, 2**31 - 1, 0], np.int64)))
    assert checked.y.dtype == jnp.int32 and checked.y.tolist() == [0, 1, 2**31 - 1, 0]
    traced = jax.jit(lambda y: data.check_dataset(data.Dataset(XOR_X, y)).y)(jnp.array([-3, 1, 1, 0]))
    assert traced.tolist() == [-3, 1, 1, 0]


def test_complex_X_is_refused_naming_X_and_its_dtype():
    """The imaginary part was dropped with only a warning."""
    complex_X = XOR_X.astype(np.complex64) + 1j
    y = np.array([0, 1, 1, 0])
    with pytest.raises(TypeError, match=r"data\.X must hold real numbers \(float, int or bool\), got complex dtype complex64"):
        data.check_dataset(data.Dataset(complex_X, y))
    with pytest.raises(TypeError, match=r"train\.X must hold real numbers .* complex64"):
        data.standardize(data.Dataset(jnp.asarray(complex_X), y))
    with pytest.raises(TypeError, match=r"others\[0\]\.X must hold real numbers .* complex64"):
        data.standardize(data.Dataset(XOR_X, y), data.Dataset(complex_X, y))
    with pytest.raises(TypeError, match=r"data\.X must hold real numbers"):
        data.train_dev_test_split(jax.random.key(0), data.Dataset(complex_X, y), 0.25, 0.0)


def test_standardize_takes_int_and_bool_X_as_float_like_check_dataset():
    """An int X raised "data type int32 not inexact"; it is now the default float dtype, as in check_dataset."""
    y = np.array([0, 1, 1, 0])
    as_float = data.standardize(data.Dataset(XOR_X, y), data.Dataset(XOR_X, y))
    for dtype in (np.int32, bool):
        as_other = data.standardize(data.Dataset(XOR_X.astype(dtype), y), data.Dataset(XOR_X.astype(dtype), y))
        for got, expected in zip(as_other, as_float):
            assert got.X.dtype == data.check_dataset(data.Dataset(XOR_X.astype(dtype), y)).X.dtype
            np.testing.assert_array_equal(got.X, expected.X)
            assert got.y is expected.y  # labels come back as given


def test_load_csv_and_npz(tmp_path):
    X = np.array([[0.5, 1.0], [2.0, -1.0], [0.0, 0.0]])
    y = np.array([1, 0, 2])
    csv = tmp_path / "points.csv"
    csv.write_text("a,b,label\n" + "\n".join(f"{r[0]},{r[1]},{float(c)}" for r, c in zip(X, y)) + "\n")
    loaded = data.load(csv)
    np.testing.assert_allclose(loaded.X, X)
    np.testing.assert_array_equal(loaded.y, y)
    assert loaded.X.dtype == np.float32 and loaded.y.dtype == np.int32
    npz = tmp_path / "points.npz"
    np.savez(npz, X=X, y=y)
    np.testing.assert_array_equal(data.load(npz).y, y)


@pytest.mark.parametrize(
    "content, match",
    [
        ("a,b,label\n1,2,0\n3,nan,1\n", "non-finite"),
        ("a,b,label\n1,2,0\n3,4,-1\n", "class ids"),
        ("a,b,label\n1,2,0\n3,4,0.5\n", "class ids"),
        ("a,b,label\n1,2,1\n3,4,1\n", "at least two classes"),
        ("a,b,label\n1,x,0\n3,4,1\n", "numeric CSV"),
        ("label\n0\n1\n", "feature column"),
    ],
)
def test_load_rejects_bad_csv(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        data.load(path)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load(tmp_path / "missing.csv")
    npz = tmp_path / "no_y.npz"
    np.savez(npz, X=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="missing \\['y'\\]"):
        data.load(npz)
    wrong = tmp_path / "points.txt"
    wrong.write_text("1,2,0\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        data.load(wrong)
    flat = tmp_path / "flat.npz"
    np.savez(flat, X=np.zeros(3), y=np.zeros(3))
    with pytest.raises(ValueError, match="2-D"):
        data.load(flat)
