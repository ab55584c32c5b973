"""Shared test set-up: 64-bit JAX (kernel identities are checked to 1e-10) and small fixtures."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
