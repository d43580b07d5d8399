"""Shared fixtures: small generated datasets, reused across test modules."""

import jax
import pytest

from deepopt import data


@pytest.fixture(scope="session")
def moons() -> data.Dataset:
    return data.make_moons(jax.random.key(0), 120, 0.2)


@pytest.fixture(scope="session")
def moons_dev() -> data.Dataset:
    return data.make_moons(jax.random.key(1), 60, 0.2)
