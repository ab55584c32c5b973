"""Convergence metrics of a finite-width kernel to its infinite-width limit (docs/math.md §8).

Pure functions of numpy arrays, computed in float64 whatever the input dtype:

- ``relative_frobenius``  ‖Θ_m − Θ_∞‖_F / ‖Θ_∞‖_F            (→ m^{-1/2})
- ``certificate``         ‖Θ_m − Θ_∞‖₂ / λ_min(Θ_∞)           (kernel regime needs < 1)
- ``spectrum``            λ_min, λ_max and κ = λ_max/λ_min of a kernel matrix
- ``krr_predict``         kernel-ridge predictor K*ᵀ (K + λI)⁻¹ y
- ``relative_error``      ‖f − f_ref‖_F / ‖f_ref‖_F
- ``accuracy``            argmax (several outputs) or sign (one output) accuracy

and ``kernel_convergence``, which evaluates them for one cell against a
precomputed ``LimitReference`` (the Θ_∞ side is factored once per dataset ×
model, not once per cell).

Conventions. Symmetric matrices are symmetrized, (K + Kᵀ)/2, before any
eigen-decomposition. A non-positive λ_min(Θ_∞) (singular to working
precision) gives κ = inf and cert = inf rather than a negative or NaN value.
A zero reference norm gives inf (NaN when both are zero). The log-log fits of
these metrics against width are ``kernelattn.analysis.fits``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelattn.errors import InputValueError
from kernelattn.kernels.linalg import factorize

__all__ = [
    "LimitReference",
    "Spectrum",
    "accuracy",
    "certificate",
    "kernel_convergence",
    "krr_predict",
    "limit_reference",
    "relative_error",
    "relative_frobenius",
    "spectral_norm",
    "spectrum",
    "symmetrize",
]


def _f64(a: Any, name: str) -> np.ndarray:
    array = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise InputValueError(f"{name}: expected finite values, got {bad} NaN/inf")
    return array


def _square(a: Any, name: str) -> np.ndarray:
    array = _f64(a, name)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise InputValueError(f"{name}: expected a square (n, n) matrix, got shape {array.shape}")
    return array


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    return math.nan if numerator == 0 else math.inf


def symmetrize(k: Any) -> np.ndarray:
    """(K + Kᵀ)/2 in float64."""
    k = _square(k, "k")
    return (k + k.T) / 2


def relative_frobenius(theta: Any, reference: Any) -> float:
    """‖Θ − Θ_ref‖_F / ‖Θ_ref‖_F (float64).

    Args:
      theta: ``(n1, n2)`` finite-width kernel.
      reference: ``(n1, n2)`` limit kernel.
    """
    theta, reference = _f64(theta, "theta"), _f64(reference, "reference")
    if theta.shape != reference.shape:
        raise InputValueError(f"theta: expected shape {reference.shape} like reference, got {theta.shape}")
    return _ratio(float(np.linalg.norm(theta - reference)), float(np.linalg.norm(reference)))


def spectral_norm(a: Any) -> float:
    """‖A‖₂ of a symmetric matrix: max |λ_i| of (A + Aᵀ)/2 (float64)."""
    values = np.linalg.eigvalsh(symmetrize(a))
    return float(max(abs(values[0]), abs(values[-1])))


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Extreme eigenvalues of a symmetric kernel matrix.

    Attributes:
      lambda_min, lambda_max: smallest and largest eigenvalue.
      kappa: λ_max/λ_min, inf when λ_min ≤ 0.
    """

    lambda_min: float
    lambda_max: float
    kappa: float


def spectrum(k: Any, eigenvalues: Any | None = None) -> Spectrum:
    """λ_min, λ_max and κ of a symmetric ``(n, n)`` kernel (float64).

    Args:
      k: the kernel matrix (symmetrized first).
      eigenvalues: its eigenvalues if already known (then ``k`` may be None).
    """
    values = np.sort(_f64(eigenvalues, "eigenvalues")) if eigenvalues is not None else np.linalg.eigvalsh(symmetrize(k))
    lo, hi = float(values[0]), float(values[-1])
    return Spectrum(lo, hi, hi / lo if lo > 0 else math.inf)


def certificate(theta: Any, reference: Any, lambda_min_reference: float | None = None) -> float:
    """cert = ‖Θ − Θ_ref‖₂ / λ_min(Θ_ref) on the training set (float64).

    The kernel regime needs cert < 1 (Θ_m stays positive definite and close
    to Θ_∞ relative to its smallest direction). inf when λ_min(Θ_ref) ≤ 0.

    Args:
      theta: ``(n, n)`` finite-width kernel.
      reference: ``(n, n)`` limit kernel.
      lambda_min_reference: λ_min(Θ_ref) if already known.
    """
    theta, reference = _square(theta, "theta"), _square(reference, "reference")
    if theta.shape != reference.shape:
        raise InputValueError(f"theta: expected shape {reference.shape} like reference, got {theta.shape}")
    lam = spectrum(reference).lambda_min if lambda_min_reference is None else float(lambda_min_reference)
    if lam <= 0:
        return math.inf
    return spectral_norm(theta - reference) / lam


def krr_predict(k_train: Any, k_test_train: Any, y: Any, ridge: float) -> tuple[np.ndarray, str]:
    """Kernel-ridge predictor f(X*) = K*ᵀ (K + λI)⁻¹ y, float64, solved (never inverted).

    One Cholesky factorization of K + λI; if K + λI is not positive definite
    in float64, a clipped eigen-decomposition (``kernelattn.kernels.linalg.factorize``)
    and the method says so (no warning is raised here: callers record it).

    Args:
      k_train: ``(n, n)`` kernel on the training set.
      k_test_train: ``(n*, n)`` test-by-train kernel.
      y: ``(n,)`` or ``(n, C)`` targets.
      ridge: λ ≥ 0.

    Returns:
      ``(predictions (n*,) or (n*, C), method)``, method "cholesky" or "eigh-clipped".
    """
    k_train = symmetrize(k_train)
    k_test_train = _f64(k_test_train, "k_test_train")
    y = _f64(y, "y")
    if k_test_train.ndim != 2 or k_test_train.shape[1] != k_train.shape[0]:
        raise InputValueError(f"k_test_train: expected shape (n*, {k_train.shape[0]}), got {k_test_train.shape}")
    if y.shape[0] != k_train.shape[0]:
        raise InputValueError(f"y: expected {k_train.shape[0]} rows, got shape {y.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        factorization = factorize(k_train, ridge, name="k_train")
    return k_test_train @ factorization.solve(y), factorization.method


def relative_error(f: Any, reference: Any) -> float:
    """‖f − f_ref‖_F / ‖f_ref‖_F (float64); shapes (n,) and (n, 1) are interchangeable."""
    f, reference = _f64(f, "f"), _f64(reference, "reference")
    if f.size != reference.size or f.shape[0] != reference.shape[0]:
        raise InputValueError(f"f: expected shape {reference.shape} like reference, got {f.shape}")
    f = f.reshape(reference.shape)
    return _ratio(float(np.linalg.norm(f - reference)), float(np.linalg.norm(reference)))


def accuracy(outputs: Any, labels: Any) -> float:
    """Classification accuracy of network/predictor outputs.

    Args:
      outputs: ``(n, C)`` scores with C ≥ 2 (argmax), or ``(n,)`` / ``(n, 1)``
        one output for two classes (class 1 when > 0, the ±1 encoding).
      labels: ``(n,)`` integer classes.

    Returns:
      The fraction correct in [0, 1].
    """
    outputs = _f64(outputs, "outputs")
    labels = np.asarray(labels)
    if outputs.shape[0] != labels.shape[0]:
        raise InputValueError(f"labels: expected {outputs.shape[0]} entries, got {labels.shape[0]}")
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        predicted = (outputs.reshape(-1) > 0).astype(np.int64)
    else:
        predicted = np.argmax(outputs, axis=1)
    return float(np.mean(predicted == labels))


# --------------------------------------------------------------------------- per cell


@dataclasses.dataclass(frozen=True)
class LimitReference:
    """What every cell of one dataset × model compares against, computed once.

    Attributes:
      theta_train: ``(n, n)`` float64 Θ_∞ on the training set (symmetrized).
      theta_test: ``(n*, n)`` float64 Θ_∞ between test and training points.
      eigenvalues: ``(n,)`` ascending eigenvalues of ``theta_train``.
      spectrum: its ``Spectrum``.
      norm_fro: ‖Θ_∞‖_F on the training set.
      y: ``(n,)`` or ``(n, C)`` training targets.
      labels_test: ``(n*,)`` test classes (None for regression).
      ridge: λ of the kernel-ridge predictors.
      predictions: ``(n*, …)`` kernel-ridge predictions of Θ_∞.
      method: the solver of those predictions.
    """

    theta_train: np.ndarray
    theta_test: np.ndarray
    eigenvalues: np.ndarray
    spectrum: Spectrum
    norm_fro: float
    y: np.ndarray
    labels_test: np.ndarray | None
    ridge: float
    predictions: np.ndarray | None
    method: str | None


def limit_reference(
    theta_train: Any, theta_test: Any, y: Any, ridge: float, *, labels_test: Any | None = None, predict: bool = True
) -> LimitReference:
    """Precompute the Θ_∞ side of ``kernel_convergence``.

    Args:
      theta_train: ``(n, n)`` limit kernel on the training set.
      theta_test: ``(n*, n)`` limit kernel between test and training points.
      y: ``(n,)`` or ``(n, C)`` training targets.
      ridge: λ ≥ 0.
      labels_test: test classes for accuracies (None: no accuracies).
      predict: also compute the Θ_∞ kernel-ridge predictions.
    """
    theta_train = symmetrize(theta_train)
    theta_test = _f64(theta_test, "theta_test")
    y = _f64(y, "y")
    eigenvalues = np.linalg.eigvalsh(theta_train)
    predictions, method = krr_predict(theta_train, theta_test, y, ridge) if predict else (None, None)
    return LimitReference(
        theta_train=theta_train,
        theta_test=theta_test,
        eigenvalues=eigenvalues,
        spectrum=spectrum(None, eigenvalues),
        norm_fro=float(np.linalg.norm(theta_train)),
        y=y,
        labels_test=None if labels_test is None else np.asarray(labels_test),
        ridge=float(ridge),
        predictions=predictions,
        method=method,
    )


def kernel_convergence(
    theta_train: Any,
    theta_test: Any,
    reference: LimitReference,
    metrics: Sequence[str] = ("rel_fro", "cert", "spectrum", "krr"),
) -> dict[str, Any]:
    """Convergence metrics of one finite-width kernel against Θ_∞ (float64).

    Args:
      theta_train: ``(n, n)`` Θ_m on the training set.
      theta_test: ``(n*, n)`` Θ_m between test and training points.
      reference: the ``LimitReference`` of the same dataset and model.
      metrics: groups to compute:
        "rel_fro" → ``rel_fro`` = ‖Θ_m − Θ_∞‖_F/‖Θ_∞‖_F (training set);
        "cert" → ``spec_err`` = ‖Θ_m − Θ_∞‖₂ and ``cert`` = spec_err/λ_min(Θ_∞);
        "spectrum" → ``lambda_min``, ``lambda_max``, ``kappa`` of Θ_m;
        "krr" → ``krr_err`` = ‖f_m(X*) − f_∞(X*)‖/‖f_∞(X*)‖ with ridge λ,
        ``krr_acc_m``/``krr_acc_inf`` (classification) and the solver.

    Returns:
      A flat dict of Python floats/strings.
    """
    theta_train = symmetrize(theta_train)
    theta_test = _f64(theta_test, "theta_test")
    if theta_train.shape != reference.theta_train.shape or theta_test.shape != reference.theta_test.shape:
        raise InputValueError(
            f"theta_train/theta_test: expected shapes {reference.theta_train.shape}/{reference.theta_test.shape}, "
            f"got {theta_train.shape}/{theta_test.shape}"
        )
    out: dict[str, Any] = {}
    if "rel_fro" in metrics:
        out["rel_fro"] = _ratio(float(np.linalg.norm(theta_train - reference.theta_train)), reference.norm_fro)
        out["rel_fro_test"] = relative_frobenius(theta_test, reference.theta_test)
    if "cert" in metrics:
        err = spectral_norm(theta_train - reference.theta_train)
        out["spec_err"] = err
        lam = reference.spectrum.lambda_min
        out["cert"] = err / lam if lam > 0 else math.inf
    if "spectrum" in metrics:
        s = spectrum(theta_train)
        out.update(lambda_min=s.lambda_min, lambda_max=s.lambda_max, kappa=s.kappa)
    if "krr" in metrics:
        if reference.predictions is None:
            raise InputValueError("reference: built with predict=False, cannot compute 'krr'")
        f_m, method = krr_predict(theta_train, theta_test, reference.y, reference.ridge)
        out["krr_err"] = relative_error(f_m, reference.predictions)
        out["krr_solver"] = method
        if reference.labels_test is not None:
            out["krr_acc_m"] = accuracy(f_m, reference.labels_test)
            out["krr_acc_inf"] = accuracy(reference.predictions, reference.labels_test)
    return out
