"""Gradient-flow prediction (docs/math.md §12): kernelattn.learning.predict against neural-tangents' ``predict``.

``gradient_descent_mse`` gets the same kernel matrices as
``nt.predict.gradient_descent_mse``; ``gradient_descent_mse_ensemble`` the same
``kernel_fn`` (NT's stax Dense-Relu-Dense, ``nt_backend.head_stax``) as
``nt.predict.gradient_descent_mse_ensemble``. Every output — train and test,
mean and covariance, at t = None, 0, finite, inf and arrays of times — agrees to
1e-10 relative to its largest entry, in float64.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from oracle_utils import inputs, rel_err

import kernelattn as ka
from kernelattn.kernels import nt_backend
from kernelattn.learning.predict import (
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
)

pytestmark = pytest.mark.oracle

TOL = 1e-10
N, M, C, D = 12, 7, 3, 5
TIMES = [None, 0.0, 2.5, np.inf, np.array([[0.0, 1.0], [30.0, np.inf]])]
REGS = [(0.0, False), (1e-2, False), (0.3, True)]
HEAD = ka.HeadConfig(width=1, out_dim=1, sigma_w=1.4, sigma_b=0.3, sigma_a=1.1, train_readout=True)


@pytest.fixture(scope="module")
def problem(nt):
    """Inputs, targets, initial outputs and NT's Dense-Relu-Dense kernels, computed once."""
    x, x_test = inputs(7, N, M, D, unit=False)
    rng = np.random.default_rng(7)
    y, f0, f_test0 = rng.normal(size=(N, C)), rng.normal(size=(N, C)), rng.normal(size=(M, C))
    cache = {}
    kernel_fn = nt_backend.head_stax(HEAD)[2]

    def cached_kernel_fn(x1, x2, get):
        """NT's kernel_fn, each (inputs, get) computed once (it is traced anew on every call)."""
        key = (id(x1), id(x2), get)
        if key not in cache:
            cache[key] = kernel_fn(x1, x2, get)
        return cache[key]

    return {"x": x, "x_test": x_test, "y": y, "f0": f0, "f_test0": f_test0, "kernel_fn": cached_kernel_fn,
            "train": kernel_fn(x, None, ("nngp", "ntk")), "test": kernel_fn(x_test, x, ("nngp", "ntk"))}


def _agree(ours, theirs):
    """Same structure (arrays, tuples, NT's named tuples) and every array within TOL."""
    if isinstance(theirs, tuple):
        assert type(ours).__name__ == type(theirs).__name__ and len(ours) == len(theirs)
        assert getattr(ours, "_fields", None) == getattr(theirs, "_fields", None)
        for a, b in zip(ours, theirs):
            _agree(a, b)
        return
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    assert rel_err(ours, theirs) <= TOL, rel_err(ours, theirs)


@pytest.mark.parametrize("diag_reg, absolute", REGS)
@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_gradient_descent_mse(nt, problem, kernel, diag_reg, absolute):
    k, k_td = getattr(problem["train"], kernel), getattr(problem["test"], kernel)
    y, f0, f_test0 = problem["y"], problem["f0"], problem["f_test0"]
    theirs = nt.predict.gradient_descent_mse(k, jnp.asarray(y), 0.7, diag_reg, absolute)
    ours = gradient_descent_mse(np.asarray(k), y, 0.7, diag_reg, absolute)
    for t in TIMES:
        for fx_train_0, fx_test_0 in ((f0, f_test0), (0.0, 0.0), (None, f_test0), (f0, None)):
            _agree(ours(t, fx_train_0, fx_test_0, np.asarray(k_td)), theirs(t, fx_train_0, fx_test_0, k_td))


@pytest.mark.parametrize("diag_reg, absolute", REGS)
def test_gradient_descent_mse_ensemble(nt, problem, diag_reg, absolute):
    x, x_test, y = problem["x"], problem["x_test"], problem["y"]
    theirs = nt.predict.gradient_descent_mse_ensemble(problem["kernel_fn"], x, jnp.asarray(y), 0.7, diag_reg, absolute)
    ours = gradient_descent_mse_ensemble(problem["kernel_fn"], x, y, 0.7, diag_reg, absolute)
    gets = [None, "ntk", "nngp", ("ntk", "nngp"), ("nngp",)]
    for t, x_t, get, compute_cov in itertools.product(TIMES, (None, x_test), gets, (False, True)):
        _agree(ours(t, x_t, get, compute_cov), theirs(t, x_t, get, compute_cov))
