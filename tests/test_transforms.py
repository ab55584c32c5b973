import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import well_conditioned
from kernelattn.kernels.gram import condition_report
from kernelattn.transforms import linear_attention


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_train_gram_identity(rng, depth):
    x = well_conditioned(rng, 12, 20, kappa_sqrt=2.0)
    z = np.asarray(linear_attention(x, depth=depth, normalize=False))
    g = x @ x.T
    assert _rel(z @ z.T, np.linalg.matrix_power(g, 2 * depth + 1)) < 1e-10
    assert _rel(z, np.linalg.matrix_power(g, depth) @ x) < 1e-10


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_test_train_gram_identity(rng, depth):
    x = well_conditioned(rng, 10, 16, kappa_sqrt=2.0)
    x_star = rng.normal(size=(4, 16))
    z = np.asarray(linear_attention(x, depth=depth, normalize=False))
    z_star = np.asarray(linear_attention(x, x_star, depth=depth, normalize=False))
    g = x @ x.T
    expected = (x_star @ x.T) @ np.linalg.matrix_power(g, 2 * depth)
    assert _rel(z_star @ z.T, expected) < 1e-10
    # Z* = X* Xᵀ G^{k-1} X
    assert _rel(z_star, x_star @ x.T @ np.linalg.matrix_power(g, depth - 1) @ x) < 1e-10


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(3, 10),
    extra=st.integers(0, 10),
    depth=st.integers(1, 3),
    spread=st.floats(1.2, 4.0),
    seed=st.integers(0, 10**6),
)
def test_condition_number_is_raised_to_2k_plus_1(n, extra, depth, spread, seed):
    x = well_conditioned(np.random.default_rng(seed), n, n + extra, kappa_sqrt=spread)
    z = np.asarray(linear_attention(x, depth=depth, normalize=False))
    kappa = condition_report(x).kappa
    kappa_attention = condition_report(z).kappa
    assert kappa_attention == pytest.approx(kappa ** (2 * depth + 1), rel=1e-8)


def test_kappa_d_cubed_when_n_exceeds_d(rng):
    x = well_conditioned(rng, 30, 6, kappa_sqrt=3.0)
    z = np.asarray(linear_attention(x, normalize=False))
    assert condition_report(z).kappa_d == pytest.approx(condition_report(x).kappa_d ** 3, rel=1e-8)


def test_rank_truncation_equals_truncated_gram(rng):
    x = well_conditioned(rng, 9, 12, kappa_sqrt=5.0)
    r = 4
    z = np.asarray(linear_attention(x, rank=r, normalize=False))
    lam, vec = np.linalg.eigh(x @ x.T)
    g_r = (vec[:, -r:] * lam[-r:]) @ vec[:, -r:].T
    assert _rel(z @ z.T, np.linalg.matrix_power(g_r, 3)) < 1e-9
    assert np.linalg.matrix_rank(z, tol=1e-8) == r


def test_constant_term(rng):
    x = rng.normal(size=(5, 3))
    q = rng.normal(size=(2, 3))
    z = np.asarray(linear_attention(x, q, constant_term=True, normalize=False))
    np.testing.assert_allclose(z, q @ x.T @ x + np.ones((2, 5)) @ x, rtol=1e-12)


def test_rows_are_renormalized(rng):
    x = rng.normal(size=(7, 4))
    z = np.asarray(linear_attention(x))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-12)


def test_float32_inputs_stay_float32(rng):
    x = rng.normal(size=(5, 3)).astype(np.float32)
    assert linear_attention(x).dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 0}, "depth: expected an integer >= 1, got 0"),
        ({"depth": 1.5}, "depth: expected an integer"),
        ({"rank": 0}, "rank: expected an integer >= 1"),
        ({"rank": 6}, "rank: expected an integer <= 4"),
    ],
)
def test_bad_options(rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_attention(rng.normal(size=(4, 5)), **kwargs)


def test_bad_arrays(rng):
    with pytest.raises(ValueError, match="queries: expected 5 columns"):
        linear_attention(rng.normal(size=(4, 5)), rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match="train: expected finite values"):
        linear_attention(np.full((2, 2), np.inf))
    with pytest.raises(ValueError, match="norm 0"):
        linear_attention(np.eye(3)[:2], np.eye(3)[2:])
