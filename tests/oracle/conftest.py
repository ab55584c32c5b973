"""Oracle tests: kernelattn against neural-tangents 0.6.5 (legacy environment only).

Every test here is marked ``oracle``. They need neural-tangents, which runs on
jax 0.4.25 only; outside that environment every test FAILS (it does not skip),
with the command that builds it:

    bash scripts/legacy_env.sh            # creates .venv-legacy/
    .venv-legacy/bin/python -m pytest tests/oracle

In the main environment deselect them: ``pytest -m "not oracle"``.
JAX's 64-bit mode is switched on for these tests (and restored afterwards).
"""

from __future__ import annotations

import pathlib

import jax
import pytest

_HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Mark every test of this directory ``oracle`` (also those that forget to)."""
    for item in items:
        if _HERE in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.oracle)
            # neural-tangents 0.6.5 uses jax.interpreters.ad aliases that jax 0.4.25 deprecates
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning:neural_tangents"))


@pytest.fixture(scope="session", autouse=True)
def nt():
    """The ``neural_tangents`` module; fails every oracle test when it cannot be imported."""
    from kernelattn.kernels import nt_backend

    try:
        return nt_backend._nt()
    except ImportError as err:
        reason = str(err)
    pytest.fail(
        f"oracle tests cannot import neural-tangents: {reason}. Build the environment with "
        "`bash scripts/legacy_env.sh`, then run `.venv-legacy/bin/python -m pytest tests/oracle`.",
        pytrace=False,
    )


@pytest.fixture(scope="session", autouse=True)
def x64(nt):
    """Turn JAX's 64-bit mode on for the oracle tests, restore it after."""
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
