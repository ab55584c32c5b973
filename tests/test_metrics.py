"""Convergence metrics against values computed by hand on 2×2 and 3×3 cases."""

import math

import numpy as np
import pytest

from kernelattn.kernels import metrics as M


def test_relative_frobenius_by_hand():
    reference = np.eye(2)
    theta = np.diag([2.0, 1.0])
    # ‖Θ − I‖_F = 1, ‖I‖_F = √2
    assert M.relative_frobenius(theta, reference) == pytest.approx(1 / math.sqrt(2), rel=1e-15)
    assert M.relative_frobenius(reference, reference) == 0.0
    assert M.relative_frobenius(np.ones((2, 2)), np.zeros((2, 2))) == math.inf
    assert math.isnan(M.relative_frobenius(np.zeros((2, 2)), np.zeros((2, 2))))


def test_spectral_norm_and_spectrum_by_hand():
    assert M.spectral_norm([[0.0, 1.0], [1.0, 0.0]]) == pytest.approx(1.0, rel=1e-15)
    assert M.spectral_norm(np.diag([3.0, -5.0])) == pytest.approx(5.0, rel=1e-15)
    s = M.spectrum([[2.0, 1.0], [1.0, 2.0]])  # eigenvalues 1 and 3
    assert (s.lambda_min, s.lambda_max, s.kappa) == pytest.approx((1.0, 3.0, 3.0), rel=1e-14)
    # 3×3: eigenvalues of [[2,-1,0],[-1,2,-1],[0,-1,2]] are 2 - √2, 2, 2 + √2
    s3 = M.spectrum([[2.0, -1.0, 0.0], [-1.0, 2.0, -1.0], [0.0, -1.0, 2.0]])
    assert s3.lambda_min == pytest.approx(2 - math.sqrt(2), rel=1e-14)
    assert s3.kappa == pytest.approx((2 + math.sqrt(2)) / (2 - math.sqrt(2)), rel=1e-14)
    singular = M.spectrum([[1.0, 1.0], [1.0, 1.0]])
    assert singular.kappa == math.inf
    # symmetrized before decomposing: (K + Kᵀ)/2
    assert M.spectrum([[2.0, 2.0], [0.0, 2.0]]).lambda_min == pytest.approx(1.0, rel=1e-14)


def test_certificate_by_hand():
    reference = np.array([[2.0, 1.0], [1.0, 2.0]])  # λ_min = 1
    theta = reference + np.diag([0.1, -0.2])  # ‖E‖₂ = 0.2
    assert M.certificate(theta, reference) == pytest.approx(0.2, rel=1e-14)
    assert M.certificate(theta, reference, lambda_min_reference=0.5) == pytest.approx(0.4, rel=1e-14)
    assert M.certificate(theta, [[1.0, 1.0], [1.0, 1.0]]) == math.inf
    # 3×3 with λ_min(Θ_∞) = 2 - √2 and E = 0.01·J (‖J‖₂ = 3)
    ref3 = np.array([[2.0, -1.0, 0.0], [-1.0, 2.0, -1.0], [0.0, -1.0, 2.0]])
    assert M.certificate(ref3 + 0.01, ref3) == pytest.approx(0.03 / (2 - math.sqrt(2)), rel=1e-13)


def test_krr_predict_by_hand():
    # K = I, λ = 1: (K + λI)⁻¹ = I/2, so f = K* y / 2
    k_star = np.array([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
    y = np.array([2.0, -4.0])
    f, method = M.krr_predict(np.eye(2), k_star, y, ridge=1.0)
    np.testing.assert_allclose(f, k_star @ y / 2, rtol=1e-15)
    assert method == "cholesky"
    # 3×3 diagonal, λ = 0: α = y / diag
    k = np.diag([1.0, 2.0, 4.0])
    y3 = np.array([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    f3, _ = M.krr_predict(k, np.eye(3), y3, ridge=0.0)
    np.testing.assert_allclose(f3, y3 / np.array([1.0, 2.0, 4.0])[:, None], rtol=1e-15)


def test_krr_predict_on_singular_kernel_falls_back_without_warning(recwarn):
    f, method = M.krr_predict(np.ones((2, 2)), np.ones((1, 2)), np.array([1.0, 1.0]), ridge=0.0)
    assert method == "eigh-clipped"
    assert np.all(np.isfinite(f))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_relative_error_and_accuracy_by_hand():
    assert M.relative_error([3.0, 4.0], [0.0, 0.0]) == math.inf
    assert M.relative_error([[1.0], [1.0]], [1.0, 2.0]) == pytest.approx(1 / math.sqrt(5), rel=1e-15)
    assert M.accuracy([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 0, 0]) == pytest.approx(2 / 3)
    assert M.accuracy([0.5, -0.1, 2.0, -3.0], [1, 0, 0, 0]) == pytest.approx(3 / 4)  # one output: > 0 is class 1
    assert M.accuracy([[0.5], [-0.1]], [1, 1]) == 0.5


def test_kernel_convergence_matches_the_pieces():
    ref_train = np.array([[2.0, -1.0, 0.0], [-1.0, 2.0, -1.0], [0.0, -1.0, 2.0]])
    ref_test = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    reference = M.limit_reference(ref_train, ref_test, y, ridge=0.1, labels_test=np.array([0, 1]))
    theta = ref_train + 0.01 * np.array([[1.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 0.5]])
    theta_test = ref_test + 0.02
    out = M.kernel_convergence(theta, theta_test, reference)
    assert out["rel_fro"] == pytest.approx(0.01 * math.sqrt(1 + 4 + 0.25) / math.sqrt(4 * 3 + 4), rel=1e-13)
    assert out["spec_err"] == pytest.approx(0.02, rel=1e-13)
    assert out["cert"] == pytest.approx(0.02 / (2 - math.sqrt(2)), rel=1e-13)
    assert out["lambda_min"] == pytest.approx(np.linalg.eigvalsh(theta)[0], rel=1e-13)
    f_inf = ref_test @ np.linalg.solve(ref_train + 0.1 * np.eye(3), y)
    f_m = theta_test @ np.linalg.solve(theta + 0.1 * np.eye(3), y)
    assert out["krr_err"] == pytest.approx(np.linalg.norm(f_m - f_inf) / np.linalg.norm(f_inf), rel=1e-12)
    assert out["krr_acc_inf"] == M.accuracy(f_inf, [0, 1])
    only = M.kernel_convergence(theta, theta_test, reference, metrics=("rel_fro",))
    assert set(only) == {"rel_fro", "rel_fro_test"}


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="theta"):
        M.relative_frobenius(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match="square"):
        M.spectrum(np.ones((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        M.relative_frobenius([[math.nan]], [[1.0]])
