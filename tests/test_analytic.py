import jax
import numpy as np
import pytest

from support import unit_rows
from kernelattn.kernels.analytic import head_kernels, qkv_attention_nngp
from kernelattn.kernels.empirical import streaming_head_ntk
from kernelattn.models import HeadConfig


@pytest.mark.parametrize("sigma_b", [0.0, 0.3])
@pytest.mark.parametrize("train_readout", [False, True])
def test_monte_carlo_limit(rng, sigma_b, train_readout):
    """The mean of empirical NTKs at m = 2^16 matches the closed form within its standard error."""
    x = unit_rows(rng.normal(size=(6, 5)))
    head = HeadConfig(width=2**16, sigma_w=1.3, sigma_b=sigma_b, sigma_a=0.8, train_readout=train_readout)
    draws = np.stack([np.asarray(streaming_head_ntk(jax.random.PRNGKey(s), head, x, dtype="float64")) for s in range(8)])
    analytic = np.asarray(head_kernels(x, head=head).ntk)
    # ‖mean − Θ_∞‖_F against its standard error sqrt(Σ var / S): the ratio concentrates near 1.
    standard_error = np.sqrt(np.sum(draws.var(axis=0, ddof=1)) / len(draws))
    assert np.linalg.norm(draws.mean(axis=0) - analytic) <= 4 * standard_error


def test_error_decays_like_inverse_square_root_of_width(rng):
    x = unit_rows(rng.normal(size=(8, 5)))
    analytic = np.asarray(head_kernels(x, head=HeadConfig(1)).ntk)
    errors = []
    for log2_m in (8, 12, 16):
        head = HeadConfig(width=2**log2_m)
        e = [np.linalg.norm(np.asarray(streaming_head_ntk(jax.random.PRNGKey(s), head, x, dtype="float64")) - analytic) for s in range(8)]
        errors.append(np.mean(e))
    slope = np.polyfit([8, 12, 16], np.log2(errors), 1)[0]
    assert -0.7 < slope < -0.3


def test_diagonal_and_antipodal_points_are_exact():
    x = np.array([[0.6, 0.8], [-0.6, -0.8]])
    head = HeadConfig(1, sigma_w=2.0, sigma_a=1.5, train_readout=True)
    k = head_kernels(x, head=head)
    sigma = 4.0 / 2  # σ_w² ‖x‖²/d
    nngp_diag = 1.5**2 * sigma / 2  # K(x, x) = Σ/2
    ntk_diag = 1.5**2 * (sigma * 0.5 + sigma / 2)
    np.testing.assert_allclose(np.diag(np.asarray(k.nngp)), nngp_diag, rtol=1e-15)
    np.testing.assert_allclose(np.diag(np.asarray(k.ntk)), ntk_diag, rtol=1e-15)
    # θ = π: K = K' = 0, up to arccos's conditioning at c = -1 (K ∝ (π − θ)³).
    assert abs(float(k.nngp[0, 1])) < 1e-15 and abs(float(k.ntk[0, 1])) < 1e-15


def test_first_layer_only_formula(rng):
    x = unit_rows(rng.normal(size=(4, 3)))
    k = np.asarray(head_kernels(x, head=HeadConfig(1, sigma_w=1.0, sigma_a=2.0)).ntk)
    c = np.clip(x @ x.T, -1, 1)
    expected = 4.0 * (c / 3) * (np.pi - np.arccos(c)) / (2 * np.pi)
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(k[off], expected[off], rtol=1e-12)
    # On the diagonal c = 1 exactly (variances read off Σ's diagonal): θ = 0, K' = 1/2.
    np.testing.assert_allclose(np.diag(k), np.sum(x * x, axis=1) * 4.0 / 3 / 2, rtol=1e-15)


def test_symmetric_psd_and_multi_output(rng):
    x = rng.normal(size=(10, 4))
    head = HeadConfig(1, out_dim=3, sigma_b=0.2, train_readout=True)
    k = head_kernels(x, head=head)
    for m in (np.asarray(k.nngp), np.asarray(k.ntk)):
        np.testing.assert_allclose(m, m.T, atol=1e-14)
        assert np.linalg.eigvalsh(m).min() > -1e-12
    full = head_kernels(x, x[:4], head=head, full_output=True)
    assert full.ntk.shape == (10, 4, 3, 3)
    np.testing.assert_allclose(np.asarray(full.ntk[:, :, 1, 1]), np.asarray(k.ntk)[:, :4])
    assert float(np.abs(full.ntk[:, :, 0, 1]).max()) == 0.0


def test_qkv_nngp_is_g_cubed_over_d_cubed(rng):
    x = rng.normal(size=(5, 4))
    g = x @ x.T
    np.testing.assert_allclose(np.asarray(qkv_attention_nngp(x)), g @ g @ g / 4**3, rtol=1e-12)


def test_float64_requires_x64():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="dtype: float64 was requested but JAX's 64-bit mode is off"):
            head_kernels(np.eye(2))
        assert head_kernels(np.eye(2), dtype="float32").ntk.dtype == np.float32
    finally:
        jax.config.update("jax_enable_x64", True)


def test_bad_inputs():
    with pytest.raises(ValueError, match="x1: expected rows of non-zero norm"):
        head_kernels(np.array([[0.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="x2: expected 2 columns"):
        head_kernels(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match="dtype: expected one of"):
        head_kernels(np.eye(2), dtype="int32")
