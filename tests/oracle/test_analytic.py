"""Infinite-width kernels of the head (MATH.md §5-6): kernelattn's closed form vs neural-tangents.

Reference: ``nt_backend.head_kernels_nt`` — NT's ``kernel_fn`` of the stax
head, computed in float64 on the inputs rounded to the tested dtype, readout
fixed via Θ_first = Θ_both − NNGP. kernelattn computes in the tested dtype.

Tolerances (max-abs error relative to max |reference|): 1e-5 in float32,
1e-9 in float64, everywhere except the diagonal of a self-kernel's NTK (see
``test_self_ntk_diagonal_exact``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelattn as ka
from kernelattn.kernels import nt_backend
from oracle_utils import DIAG_TOL, TOL, head_grid, inputs, rel_err, rounded

pytestmark = pytest.mark.oracle

CASES = head_grid(12, seed=1)
DTYPES = ("float32", "float64")


def _head(case, width: int = 1) -> ka.HeadConfig:
    return ka.HeadConfig(
        width=width,
        out_dim=case.out_dim,
        sigma_w=case.sigma_w,
        sigma_b=case.sigma_b,
        sigma_a=case.sigma_a,
        use_bias=case.use_bias,
        train_readout=case.train_readout,
    )


def _model_inputs(case, model: str):
    """Head inputs of the case: raw rows (2L-ReLU) or the attention output (MLP-Attn)."""
    x, x_test = inputs(case.seed, case.n, case.n_test, case.d, case.unit)
    if model == "mlp-attn":
        x, x_test = (np.asarray(ka.linear_attention(x, q)) for q in (x, x_test))
    return x, x_test


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", ["relu", "mlp-attn"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cross_kernels(case, model, dtype):
    """Train × test NNGP and NTK (n ≠ n*), traced and full ``(n, n*, C, C)``."""
    x, x_test = _model_inputs(case, model)
    head = _head(case)
    x32 = np.asarray(x, dtype), np.asarray(x_test, dtype)
    ours = ka.head_kernels(*x32, head, dtype=dtype)
    ref = nt_backend.head_kernels_nt(rounded(x, dtype), rounded(x_test, dtype), head)
    assert ours.nngp.shape == ref.nngp.shape == (case.n, case.n_test)
    assert rel_err(ours.nngp, ref.nngp) < TOL[dtype]
    assert rel_err(ours.ntk, ref.ntk) < TOL[dtype]
    full = ka.head_kernels(*x32, head, dtype=dtype, full_output=True)
    full_ref = nt_backend.head_kernels_nt(rounded(x, dtype), rounded(x_test, dtype), head, full_output=True)
    assert full.ntk.shape == full_ref.ntk.shape == (case.n, case.n_test, case.out_dim, case.out_dim)
    assert rel_err(full.ntk, full_ref.ntk) < TOL[dtype]
    assert rel_err(full.nngp, full_ref.nngp) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", ["relu", "mlp-attn"])
@pytest.mark.parametrize("case", CASES[::2], ids=[c.id for c in CASES[::2]])
def test_self_kernels(case, model, dtype):
    """K(X, X): NNGP everywhere and the NTK off the diagonal to TOL; its diagonal to DIAG_TOL."""
    x, _ = _model_inputs(case, model)
    head = _head(case)
    ours = ka.head_kernels(np.asarray(x, dtype), None, head, dtype=dtype)
    ref = nt_backend.head_kernels_nt(rounded(x, dtype), None, head)
    assert rel_err(ours.nngp, ref.nngp) < TOL[dtype]
    off = ~np.eye(case.n, dtype=bool)
    scale = np.max(np.abs(np.asarray(ref.ntk)))
    off_err = np.max(np.abs(np.asarray(ours.ntk, np.float64) - np.asarray(ref.ntk))[off]) / scale
    assert off_err < TOL[dtype]
    assert rel_err(np.diag(ours.ntk), np.diag(ref.ntk)) < DIAG_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_self_ntk_diagonal_exact(dtype):
    """The NTK diagonal at θ = 0 to TOL (Σ(x, x) is read off Σ(x, x')'s diagonal, so c = 1 exactly)."""
    errors = []
    for case in CASES:
        x, _ = inputs(case.seed, case.n, case.n_test, case.d, case.unit)
        head = _head(case)
        ours = ka.head_kernels(np.asarray(x, dtype), None, head, dtype=dtype)
        ref = nt_backend.head_kernels_nt(rounded(x, dtype), None, head)
        errors.append(rel_err(np.diag(ours.ntk), np.diag(ref.ntk)))
    assert max(errors) < TOL[dtype]


def test_oracle_diagonal_is_exact():
    """The reference itself: NT (diagonal_batch=False) gives K' = 1/2 at θ = 0 to 1e-15."""
    for case in CASES:
        x, _ = inputs(case.seed, case.n, case.n_test, case.d, case.unit)
        head = ka.HeadConfig(width=1, sigma_w=case.sigma_w, sigma_b=case.sigma_b, use_bias=case.use_bias)
        ref = nt_backend.head_kernels_nt(x, None, head)
        variance = case.sigma_w**2 * np.sum(x * x, axis=1) / case.d + case.sigma_b**2
        assert rel_err(np.diag(ref.ntk), variance / 2) < 1e-14
        assert rel_err(np.diag(ref.nngp), variance / 2) < 1e-14


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    d=st.sampled_from([3, 10, 64, 784]),
    sigma_w=st.floats(0.1, 3.0),
    sigma_b=st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.0]),
    sigma_a=st.floats(0.1, 3.0),
    train_readout=st.booleans(),
    unit=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cross_kernels_hypothesis(d, sigma_w, sigma_b, sigma_a, train_readout, unit, seed):
    """Random σ's and inputs, d in {3, 10, 64, 784}, n = 12 ≠ n* = 17: float64 to 1e-9.

    (Shapes are fixed: each new one costs NT's kernel_fn seconds of tracing.)
    """
    x, x_test = inputs(seed, 12, 17, d, unit)
    head = ka.HeadConfig(1, 1, sigma_w, sigma_b, sigma_a, sigma_b > 0, train_readout)
    ours = ka.head_kernels(x, x_test, head)
    ref = nt_backend.head_kernels_nt(x, x_test, head)
    assert rel_err(ours.nngp, ref.nngp) < TOL["float64"]
    assert rel_err(ours.ntk, ref.ntk) < TOL["float64"]


def test_first_layer_only_derivation():
    """Θ_first = Θ_both − NNGP from NT equals MATH.md §6's σ_a² Σ K' (both from scratch)."""
    x, x_test = inputs(7, 12, 17, 10, unit=False)
    for sigma_b in (0.0, 0.3):
        head = ka.HeadConfig(1, 1, sigma_w=1.4, sigma_b=sigma_b, sigma_a=0.7, use_bias=sigma_b > 0)
        both = nt_backend.head_kernels_nt(x, x_test, ka.HeadConfig(**{**head.__dict__, "train_readout": True}))
        first = nt_backend.head_kernels_nt(x, x_test, head)
        np.testing.assert_allclose(np.asarray(both.ntk) - np.asarray(both.nngp), first.ntk, rtol=0, atol=0)
        sigma = 1.4**2 * x @ x_test.T / 10 + sigma_b**2
        var1 = 1.4**2 * np.sum(x * x, 1) / 10 + sigma_b**2
        var2 = 1.4**2 * np.sum(x_test * x_test, 1) / 10 + sigma_b**2
        theta = np.arccos(np.clip(sigma / np.sqrt(np.outer(var1, var2)), -1, 1))
        closed = 0.7**2 * sigma * (np.pi - theta) / (2 * np.pi)
        assert rel_err(first.ntk, closed) < 1e-12
