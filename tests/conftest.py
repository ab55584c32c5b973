"""Shared test set-up: 64-bit JAX (kernel identities are checked to 1e-10) and small fixtures."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit ℓ2 norm."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def well_conditioned(rng: np.random.Generator, n: int, d: int, kappa_sqrt: float = 3.0) -> np.ndarray:
    """``(n, d)`` data with singular values spread geometrically over [1, kappa_sqrt]."""
    r = min(n, d)
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    v, _ = np.linalg.qr(rng.normal(size=(d, r)))
    s = np.geomspace(kappa_sqrt, 1.0, r)
    return (u * s) @ v.T
