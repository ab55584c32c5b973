"""Gram matrices, spectra, condition numbers and width thresholds (float64).

All quantities are computed from the singular values of X (λ_i = s_i²), never
from the eigenvalues of G = X Xᵀ, which lose half the significant digits
(docs/math.md §2). Everything here is numpy float64 on the host, so the matmul
precision policy (``kernelattn._precision``) has nothing to reduce: these
products are always full float64 ones, whatever ``precision`` is in force.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from kernelattn._validation import check_int, check_matrix, check_real, check_row_range
from kernelattn.errors import InputValueError


def gram(x: np.ndarray, x2: np.ndarray | None = None) -> np.ndarray:
    """Gram matrix G = X X₂ᵀ in float64.

    Args:
      x: ``(n, d)`` inputs.
      x2: optional ``(n2, d)`` inputs; defaults to ``x``.

    Returns:
      ``(n, n2)`` float64 array.

    Raises:
      InputValueError: a NaN/inf entry, or a row norm whose square would
        overflow float64 (named by its row index).
    """
    x = check_matrix(x, "x").astype(np.float64)
    check_row_range(x, "x", what="Gram matrix")
    if x2 is not None:
        x2 = check_matrix(x2, "x2", n_cols=x.shape[1]).astype(np.float64)
        check_row_range(x2, "x2", what="Gram matrix")
    return x @ (x if x2 is None else x2).T


def singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of ``(n, d)`` X in float64, descending, length min(n, d)."""
    x = check_matrix(x, "x").astype(np.float64)
    return np.linalg.svd(x, compute_uv=False)


def gram_spectrum(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of G = X Xᵀ, descending, float64: λ_i = s_i², padded with 0 to n."""
    x = check_matrix(x, "x")
    s = singular_values(x)
    return np.concatenate([s**2, np.zeros(x.shape[0] - s.size)])


def numerical_rank(s: np.ndarray, shape: tuple[int, int]) -> int:
    """Number of singular values above ``max(n, d) · eps · s_1`` (numpy's matrix_rank rule).

    Args:
      s: singular values, descending, float64.
      shape: ``(n, d)`` of the matrix they come from.
    """
    if s.size == 0 or s[0] == 0:
        return 0
    tol = max(shape) * np.finfo(np.float64).eps * s[0]
    return int(np.count_nonzero(s > tol))


def energy_rank(eigenvalues: np.ndarray, fraction: float) -> int:
    """Smallest r with Σ_{i≤r} λ_i ≥ ``fraction`` · Σ λ_i (λ descending)."""
    fraction = check_real(fraction, "fraction", minimum=0.0, maximum=1.0, strict_min=True)
    cumulative = np.cumsum(eigenvalues)
    return int(min(np.searchsorted(cumulative, fraction * cumulative[-1] * (1 - 1e-15)) + 1, eigenvalues.size))


def safe_power(base: float, exponent: float) -> float:
    """``base ** exponent`` for base ≥ 0, inf where it overflows float64 (Python raises OverflowError)."""
    try:
        return float(base) ** exponent
    except OverflowError:
        return math.inf


def log10_width_threshold(kappa_d: float, n: int, power: float = 6.0) -> float:
    """log10 of m_theory = κ_d^power · n · ln n (constant 1; paper v2: m = Ω(κ_d(G)^6 n log n)).

    Computed in log space, so it stays finite where m_theory itself overflows.
    """
    n = check_int(n, "n", minimum=2)
    if not math.isfinite(kappa_d):
        return math.inf
    return power * math.log10(kappa_d) + math.log10(n * math.log(n))


@dataclasses.dataclass(frozen=True)
class ConditionReport:
    """Spectral summary of the Gram matrix of one training set (docs/math.md §2).

    Attributes:
      n, d: shape of X.
      rank_bound: r0 = min(n, d).
      rank: numerical rank r of X.
      lambda_max: λ_1 of G.
      lambda_min: λ_n of G (0 when n > rank).
      kappa: κ(G) = λ_1 / λ_n (inf when singular).
      kappa_d: λ_1 / λ_r over the numerical rank r (the effective κ_d(G)).
      kappa_cubed_attention: κ_d of the attention Gram G^{2k+1} for depth
        ``depth``: κ_d^{2k+1}.
      depth: attention depth k used for ``kappa_cubed_attention``.
      log10_m_theory: log10(κ_d^6 n ln n).
      m_theory: 10**log10_m_theory (inf when it overflows float64).
      energy: {fraction: (rank, κ at that rank)} for energy truncations.
      centered: whether the columns of X were centered first.
    """

    n: int
    d: int
    rank_bound: int
    rank: int
    lambda_max: float
    lambda_min: float
    kappa: float
    kappa_d: float
    kappa_cubed_attention: float
    depth: int
    log10_m_theory: float
    m_theory: float
    energy: dict
    centered: bool

    def as_dict(self) -> dict:
        """Plain-dict view (for tables and the result store)."""
        out = dataclasses.asdict(self)
        out["energy"] = {str(k): {"rank": r, "kappa": kap} for k, (r, kap) in self.energy.items()}
        return out


def condition_report(
    x: np.ndarray,
    *,
    energy_fractions: tuple[float, ...] = (),
    center: bool = False,
    depth: int = 1,
    warn_rank_deficient: bool = True,
) -> ConditionReport:
    """κ(G), κ_d(G), numerical rank and the width threshold for training inputs X.

    Args:
      x: ``(n, d)`` training inputs, any float dtype (computed in float64).
      energy_fractions: also report κ at the rank keeping this fraction of the
        spectral energy Σλ (e.g. ``(0.99, 0.999)``).
      center: subtract the column means of X first.
      depth: attention depth k; ``kappa_cubed_attention`` = κ_d^{2k+1}.
      warn_rank_deficient: warn when the numerical rank r < min(n, d), since
        then λ_{min(n,d)} is round-off and κ_d is taken at rank r.

    Returns:
      A ``ConditionReport``. κ's are ratios of singular values of X scaled to
      max |x| = 1 first, so they are exact for any scale of X (X·1e200
      included); λ's that overflow float64 are reported as inf, never NaN.

    Raises:
      InputValueError: a NaN/inf entry, fewer than 2 rows (m_theory =
        κ_d^6 n ln n needs n ≥ 2), or numerical rank 0.
    """
    x = check_matrix(x, "x").astype(np.float64)
    depth = check_int(depth, "depth", minimum=1)
    if x.shape[0] < 2:
        raise InputValueError(
            f"x: expected at least 2 rows (the width threshold m_theory = κ_d^6 n ln n needs n >= 2), got {x.shape[0]}"
        )
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    n, d = x.shape
    # Scale by a power of two near max |x| (exact: the singular values scale exactly too), so that
    # s² neither overflows nor underflows whatever the scale of X.
    scale = math.ldexp(1.0, math.frexp(float(np.max(np.abs(x))))[1])
    s_unit = np.linalg.svd(x / scale, compute_uv=False)
    lam_unit = s_unit**2
    with np.errstate(over="ignore", under="ignore"):
        lam = (s_unit * scale) ** 2
    rank_bound = min(n, d)
    rank = numerical_rank(s_unit, x.shape)
    if rank == 0:
        raise InputValueError("x: expected a non-zero matrix, got numerical rank 0")
    if warn_rank_deficient and rank < rank_bound:
        warnings.warn(
            f"X has numerical rank {rank} < min(n, d) = {rank_bound}; κ_d is taken over the "
            f"top {rank} eigenvalues (λ_{rank_bound} is round-off).",
            stacklevel=2,
        )
    full_rank = n <= d and rank == n
    lambda_min = float(lam[-1]) if full_rank else 0.0
    kappa = float(lam_unit[0] / lam_unit[-1]) if full_rank else math.inf
    kappa_d = float(lam_unit[0] / lam_unit[rank - 1])
    log10_m = log10_width_threshold(kappa_d, n)
    energy = {}
    for fraction in energy_fractions:
        r = min(energy_rank(lam_unit[:rank], fraction), rank)
        energy[float(fraction)] = (r, float(lam_unit[0] / lam_unit[r - 1]))
    return ConditionReport(
        n=n,
        d=d,
        rank_bound=rank_bound,
        rank=rank,
        lambda_max=float(lam[0]),
        lambda_min=lambda_min,
        kappa=kappa,
        kappa_d=kappa_d,
        kappa_cubed_attention=safe_power(kappa_d, 2 * depth + 1),
        depth=depth,
        log10_m_theory=log10_m,
        m_theory=10.0**log10_m if log10_m < 308 else math.inf,
        energy=energy,
        centered=center,
    )


def psd_spectrum(k: np.ndarray, name: str = "k") -> np.ndarray:
    """Eigenvalues of a symmetric ``(n, n)`` kernel matrix, ascending, float64."""
    k = check_matrix(k, name).astype(np.float64)
    if k.shape[0] != k.shape[1]:
        raise InputValueError(f"{name}: expected a square matrix, got shape {k.shape}")
    return np.linalg.eigvalsh((k + k.T) / 2)
