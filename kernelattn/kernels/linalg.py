"""Float64 solves with kernel matrices: one factorization, many right-hand sides.

``psd_solve`` factors K + λI once by Cholesky; if that fails (K not positive
definite in floating point: a tiny ridge on a near-singular kernel, or a
float32 kernel that lost its PSD-ness) it falls back to an eigen-decomposition
with eigenvalues clipped at ``clip_floor · λ_max``, and says which ran. Never
an explicit inverse (docs/math.md §9).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from kernelattn._validation import check_matrix, check_real
from kernelattn.errors import InputValueError
from kernelattn.kernels import guards


@dataclasses.dataclass(frozen=True)
class Factorization:
    """A factorization of A = K + λI ready to solve with.

    Attributes:
      method: "cholesky" or "eigh-clipped".
      size: n.
      ridge: λ.
      clipped: number of eigenvalues raised to the floor (eigh only).
    """

    method: str
    size: int
    ridge: float
    clipped: int
    _cholesky: tuple[np.ndarray, bool] | None = None
    _eigh: tuple[np.ndarray, np.ndarray] | None = None

    def solve(self, b: np.ndarray) -> np.ndarray:
        """A⁻¹ b for ``(n,)`` or ``(n, k)`` b, float64."""
        b = np.asarray(b, dtype=np.float64)
        if self._cholesky is not None:
            return scipy.linalg.cho_solve(self._cholesky, b)
        values, vectors = self._eigenpairs()
        projected = vectors.T @ b
        return vectors @ (projected / (values[:, None] if projected.ndim == 2 else values))

    def _eigenpairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values (n,), vectors (n, n))`` of the clipped eigendecomposition: set whenever the Cholesky
        factor is not."""
        assert self._eigh is not None
        return self._eigh

    def inverse_diagonal(self) -> np.ndarray:
        """diag(A⁻¹), ``(n,)``, without forming A⁻¹ (O(n³/3) from the factor)."""
        if self._cholesky is not None:
            factor, lower = self._cholesky
            l_inv = scipy.linalg.solve_triangular(factor, np.eye(self.size), lower=lower, trans=0 if lower else 1)
            return np.sum(l_inv**2, axis=0)
        values, vectors = self._eigenpairs()
        return np.sum(vectors**2 / values, axis=1)


def _computed_dtype(k: np.ndarray) -> str:
    """The dtype a kernel was (most likely) computed in: "float32" for float32 entries,
    also once cast to float64 (every entry a float32 number), else "float64"."""
    if k.dtype == np.float32:
        return "float32"
    k64 = np.asarray(k, dtype=np.float64)
    with np.errstate(over="ignore"):
        return "float32" if np.array_equal(k64.astype(np.float32), k64) else "float64"


def factorize(
    k: np.ndarray, ridge: float, *, name: str = "kernel", clip_floor: float = 1e-12, dtype=None
) -> Factorization:
    """Factor K + ridge·I (float64): Cholesky, else clipped eigen-decomposition.

    K is symmetrized, (K + Kᵀ)/2. Beyond round-off that changes K, so an
    asymmetric K is reported first (``guards.check_symmetry``: ‖K − Kᵀ‖_F/‖K‖_F
    against the policy's symmetry tolerance, 1000·eps(dtype) by default).

    Args:
      k: ``(n, n)`` symmetric kernel matrix.
      ridge: λ ≥ 0 added to the diagonal.
      name: argument name for error messages.
      clip_floor: relative eigenvalue floor for the fallback.
      dtype: "float32" or "float64", the dtype K was computed in, which sets
        its round-off; None → :func:`computed_dtype`.

    Returns:
      A ``Factorization``. An asymmetric K, and the fallback when it ran, are
      reported by ``kernelattn.kernels.guards`` (a ``KernelWarning``, or a
      ``KernelError`` under ``guards.strict()``).
    """
    k = check_matrix(k, name)
    if k.shape[0] != k.shape[1]:
        raise InputValueError(f"{name}: expected a square (n, n) kernel matrix, got shape {k.shape}")
    ridge = check_real(ridge, "ridge", minimum=0.0)
    guards.check_symmetry(k, name=name, dtype=_computed_dtype(k) if dtype is None else dtype, stacklevel=3)
    k = k.astype(np.float64)
    a = (k + k.T) / 2 + ridge * np.eye(k.shape[0])
    try:
        factor = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
        if np.all(np.diag(factor[0]) > 0):
            return Factorization("cholesky", k.shape[0], ridge, 0, _cholesky=factor)
    except np.linalg.LinAlgError:
        pass
    values, vectors = np.linalg.eigh(a)
    floor = clip_floor * max(values[-1], np.finfo(np.float64).tiny)
    clipped = int(np.count_nonzero(values < floor))
    factorization = Factorization(
        "eigh-clipped", k.shape[0], ridge, clipped, _eigh=(np.maximum(values, floor), vectors)
    )
    # Warns (or raises under guards.strict()) with the numbers and the remedy; asymmetry was reported above.
    policy = guards.current_policy()
    guards.check_solve(
        k,
        ridge,
        name=name,
        factorization=factorization,
        eigenvalues=values - ridge,
        dtype="float64",
        policy=dataclasses.replace(policy, ignore=(*policy.ignore, "asymmetric")),
        stacklevel=3,
    )
    return factorization


def kernel_regression(
    k_train: np.ndarray, k_test_train: np.ndarray, y: np.ndarray, ridge: float
) -> tuple[np.ndarray, str]:
    """Kernel ridge predictor f(X*) = K*ᵀ (K + λI)⁻¹ y.

    Args:
      k_train: ``(n, n)`` train kernel.
      k_test_train: ``(n*, n)`` test-by-train kernel.
      y: ``(n,)`` or ``(n, C)`` targets.
      ridge: λ ≥ 0.

    Returns:
      ``(predictions (n*,) or (n*, C), method)`` in float64.
    """
    factorization = factorize(k_train, ridge, name="k_train")
    k_test_train = check_matrix(k_test_train, "k_test_train", n_cols=k_train.shape[0]).astype(np.float64)
    return k_test_train @ factorization.solve(y), factorization.method
