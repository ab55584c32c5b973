"""Small data helpers shared by the test modules (import as ``from support import ...``)."""

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit ℓ2 norm."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def well_conditioned(rng: np.random.Generator, n: int, d: int, kappa_sqrt: float = 3.0) -> np.ndarray:
    """``(n, d)`` data with singular values spread geometrically over [1, kappa_sqrt]."""
    r = min(n, d)
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    v, _ = np.linalg.qr(rng.normal(size=(d, r)))
    s = np.geomspace(kappa_sqrt, 1.0, r)
    return (u * s) @ v.T
