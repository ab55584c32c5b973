"""How far one influence matrix moved from another, test point by test point (docs/math.md §10).

Pure functions on ``(n*, n)`` float arrays I (clean) and I' (after an
intervention); per test point t, with k = ⌈τ n⌉:

- flip rate: among the k training points with the largest |I[t]|, the
  fraction whose sign differs in I'[t] (the paper's headline metric; τ = 0.1);
- Spearman ρ between I[t] and I'[t] (average ranks for ties; NaN when a row
  is constant), and Pearson's r of the values;
- top-k overlap |top_k(|I[t]|) ∩ top_k(|I'[t]|)| / k.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

from kernelattn._validation import check_real
from kernelattn.errors import InputValueError


def top_count(n: int, tau: float) -> int:
    """k = ⌈τ n⌉ (at least 1): how many training points count as "top-τ"."""
    return max(1, min(n, math.ceil(tau * n - 1e-9)))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """``(n*, k)`` column indices of the k largest |scores| of each row (stable order)."""
    return np.argsort(-np.abs(scores), axis=1, kind="stable")[:, :k]


def flip_rates(I: np.ndarray, I_prime: np.ndarray, tau: float = 0.1) -> np.ndarray:
    """Per test point, the fraction of its top-τ points by |I| whose sign differs in I'. ``(n*,)``."""
    top = _top(I, top_count(I.shape[1], tau))
    before = np.take_along_axis(np.sign(I), top, axis=1)
    after = np.take_along_axis(np.sign(I_prime), top, axis=1)
    return np.mean(before != after, axis=1)


def spearman_rows(I: np.ndarray, I_prime: np.ndarray, *, ranks: bool = True) -> np.ndarray:
    """Per test point, Spearman's ρ between I[t] and I'[t] (NaN for a constant row). ``(n*,)``.

    ``ranks=False``: the correlation of the values themselves, Pearson's r (:func:`pearson_rows`).
    """
    a = scipy.stats.rankdata(I, axis=1) if ranks else np.asarray(I, np.float64)
    b = scipy.stats.rankdata(I_prime, axis=1) if ranks else np.asarray(I_prime, np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    numerator = np.sum(a * b, axis=1)
    denominator = np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    out = np.full(I.shape[0], np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def pearson_rows(I: np.ndarray, I_prime: np.ndarray) -> np.ndarray:
    """Per test point, Pearson's r between I[t] and I'[t] (NaN for a constant row). ``(n*,)``."""
    return spearman_rows(I, I_prime, ranks=False)


def topk_overlaps(I: np.ndarray, I_prime: np.ndarray, tau: float = 0.1) -> np.ndarray:
    """Per test point, |top_k(|I|) ∩ top_k(|I'|)| / k with k = ⌈τ n⌉. ``(n*,)``."""
    k = top_count(I.shape[1], tau)
    a, b = _top(I, k), _top(I_prime, k)
    return np.array([np.intersect1d(x, y).size / k for x, y in zip(a, b)])


def compare_influence(I, I_prime, tau: float = 0.1) -> dict[str, np.ndarray]:
    """Flip rate, Spearman ρ and top-k overlap of two ``(n*, n)`` influence matrices, per test point.

    Raises:
      ValueError: shapes differ, or τ outside (0, 1].
    """
    tau = check_real(tau, "tau", minimum=0.0, maximum=1.0, strict_min=True)
    I, I_prime = np.asarray(I, np.float64), np.asarray(I_prime, np.float64)
    if I.ndim != 2 or I.shape != I_prime.shape:
        raise InputValueError(f"I_prime: expected the shape of I {I.shape}, got {I_prime.shape}")
    return {
        "flip_rate": flip_rates(I, I_prime, tau),
        "spearman": spearman_rows(I, I_prime),
        "topk_overlap": topk_overlaps(I, I_prime, tau),
    }


def influential_points(I: np.ndarray, tau: float) -> np.ndarray:
    """The ⌈τ n⌉ training points of largest mean |I| over test points (sorted indices)."""
    k = top_count(I.shape[1], tau)
    return np.sort(np.argsort(-np.mean(np.abs(I), axis=0), kind="stable")[:k])


def finite_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the finite entries of ``values`` (NaN, NaN when there are none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))
