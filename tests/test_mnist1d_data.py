"""data.load_mnist1d: the mnist1d package's canonical data set, offline, and its spatially shuffled variant."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from deepopt import data

mnist1d = pytest.importorskip("mnist1d.data")


@pytest.fixture(scope="module")
def canonical() -> dict:
    state = np.random.get_state()
    generated = mnist1d.make_dataset(mnist1d.get_dataset_args())
    np.random.set_state(state)
    return generated


@pytest.fixture(scope="module")
def loaded() -> tuple[data.Dataset, data.Dataset]:
    return data.load_mnist1d()


def test_the_arrays_are_the_packages_canonical_data_set(canonical: dict, loaded) -> None:
    train, test = loaded
    assert train.X.shape == (4000, 40) and test.X.shape == (1000, 40)
    np.testing.assert_array_equal(train.X, canonical["x"].astype(np.float32))
    np.testing.assert_array_equal(test.X, canonical["x_test"].astype(np.float32))
    np.testing.assert_array_equal(train.y, canonical["y"])
    np.testing.assert_array_equal(test.y, canonical["y_test"])
    assert train.y.dtype == np.int32 and set(np.unique(train.y)) == set(range(10))
    wide, _ = data.load_mnist1d(dtype=np.float64)
    np.testing.assert_array_equal(wide.X, canonical["x"])  # the package's own values, uncast


def test_numpy_global_generator_is_left_as_it_was() -> None:
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    data.load_mnist1d()
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_shuffled_variant_permutes_the_positions_the_same_way_for_every_example(loaded) -> None:
    train, test = loaded
    shuffled_train, shuffled_test = data.load_mnist1d(shuffle_seq=True)
    np.testing.assert_array_equal(shuffled_train.y, train.y)
    assert not np.array_equal(shuffled_train.X, train.X)
    # column j of the shuffled set is one column of the plain set, the same for train and test
    matches = [int(np.argmin(np.abs(train.X - shuffled_train.X[:, [j]]).sum(axis=0))) for j in range(40)]
    assert sorted(matches) == list(range(40))
    np.testing.assert_allclose(shuffled_train.X, train.X[:, matches], rtol=0, atol=1e-6)
    np.testing.assert_allclose(shuffled_test.X, test.X[:, matches], rtol=0, atol=1e-6)


def test_without_the_package_the_error_names_the_extra() -> None:
    code = ("import sys; sys.modules['mnist1d'] = None; sys.modules['mnist1d.data'] = None\n"
            "from deepopt import data\n"
            "try:\n    data.load_mnist1d()\nexcept ImportError as e:\n    print(e)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install -e '.[datasets]'" in completed.stdout, completed.stderr


def test_shuffle_seq_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="shuffle_seq must be a bool"):
        data.load_mnist1d(shuffle_seq="yes")
