import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from support import unit_rows, well_conditioned
from kernelattn.kernels import gram as g


def test_gram_is_float64_and_symmetric(rng):
    x = rng.normal(size=(6, 4)).astype(np.float32)
    k = g.gram(x)
    assert k.dtype == np.float64
    np.testing.assert_allclose(k, k.T, rtol=0, atol=0)
    np.testing.assert_allclose(k, x.astype(np.float64) @ x.T.astype(np.float64))


def test_kappa_matches_eigenvalues_when_square_and_full_rank(rng):
    x = well_conditioned(rng, 8, 12, kappa_sqrt=10.0)
    report = g.condition_report(x)
    assert report.rank == 8
    assert report.kappa == pytest.approx(100.0, rel=1e-10)
    assert report.kappa_d == pytest.approx(100.0, rel=1e-10)
    assert report.kappa_cubed_attention == pytest.approx(1e6, rel=1e-9)


def test_kappa_d_is_finite_when_n_exceeds_d(rng):
    x = rng.normal(size=(50, 5))
    report = g.condition_report(x)
    assert report.kappa == math.inf
    assert math.isfinite(report.kappa_d)
    s = np.linalg.svd(x, compute_uv=False)
    assert report.kappa_d == pytest.approx((s[0] / s[-1]) ** 2, rel=1e-12)


def test_digits_rank_and_kappa_d_as_documented():
    x = unit_rows(load_digits().data.astype(np.float64))
    with pytest.warns(UserWarning, match="numerical rank 61"):
        report = g.condition_report(x)
    assert report.rank == 61 and report.rank_bound == 64
    assert report.kappa_d == pytest.approx(6.7e6, rel=0.05)


def test_width_threshold_in_log_space():
    assert g.log10_width_threshold(10.0, 100) == pytest.approx(6 + math.log10(100 * math.log(100)))
    report = g.condition_report(np.diag([1.0, 1e-3]))
    assert report.log10_m_theory == pytest.approx(36 + math.log10(2 * math.log(2)))  # κ(G) = 1e6


def test_energy_truncation_ranks():
    x = np.diag(np.sqrt([10.0, 5.0, 1.0, 1e-4]))
    report = g.condition_report(x, energy_fractions=(0.6, 0.99, 1.0))
    assert report.energy[0.6] == (1, 1.0)
    assert report.energy[0.99][0] == 3 and report.energy[0.99][1] == pytest.approx(10.0)
    assert report.energy[1.0][0] == 4


def test_centering_changes_the_spectrum(rng):
    x = rng.normal(size=(20, 5)) + 3.0
    assert g.condition_report(x, center=True).kappa_d < g.condition_report(x).kappa_d


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(2, 12), seed=st.integers(0, 10**6))
def test_spectrum_from_singular_values_matches_eigvalsh(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    lam = g.gram_spectrum(x)
    assert lam.shape == (n,)
    np.testing.assert_allclose(np.sort(lam), np.clip(np.linalg.eigvalsh(x @ x.T), 0, None), atol=1e-10)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones(3), "x: expected a 2-d array"),
        (np.array([[1.0, np.nan]]), "x: expected finite values"),
        (np.zeros((0, 3)), "x: expected at least 1 row"),
        (np.zeros((3, 3)), "numerical rank 0"),
    ],
)
def test_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        g.condition_report(bad)
