"""Shared helpers of the oracle tests (numpy only at import time)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

TOL = {"float32": 1e-5, "float64": 1e-9}
# Diagonal of a self-kernel's NTK: kernelattn's arccos of a cosine that rounds
# to 1 − O(eps) gives θ = O(√eps) (see test_analytic.py); this is the bound
# that holds today, TOL the one that holds after the fix proposed there.
DIAG_TOL = {"float32": 2e-3, "float64": 1e-6}


def rel_err(actual, expected) -> float:
    """max |actual − expected| / max |expected|, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.max(np.abs(expected))
    return float(np.max(np.abs(actual - expected)) / (scale if scale > 0 else 1.0))


def inputs(seed: int, n: int, n_test: int, d: int, unit: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train ``(n, d)`` and test ``(n_test, d)`` float64 inputs, rows unit-norm if ``unit``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=(n, 1))
    x_test = rng.normal(size=(n_test, d)) * rng.uniform(0.5, 2.0, size=(n_test, 1))
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x_test /= np.linalg.norm(x_test, axis=1, keepdims=True)
    return x, x_test


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` and returned as float64 (the oracle's input)."""
    return np.asarray(x, dtype).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class HeadCase:
    """One random head configuration of the grids."""

    d: int
    n: int
    n_test: int
    out_dim: int
    sigma_w: float
    sigma_b: float
    sigma_a: float
    use_bias: bool
    train_readout: bool
    unit: bool
    seed: int

    @property
    def id(self) -> str:
        bias = f"b{self.sigma_b:g}" if self.use_bias else "nob"
        readout = "trained" if self.train_readout else "fixed"
        return f"d{self.d}-n{self.n}x{self.n_test}-C{self.out_dim}-{bias}-{readout}-{'unit' if self.unit else 'raw'}"


def head_grid(
    count: int, seed: int, dims=(3, 10, 64, 784), outs=(1, 10), sizes: tuple[int, int] = (12, 17)
) -> list[HeadCase]:
    """A seeded grid of ``count`` head cases cycling through every option.

    σ_w, σ_a are drawn from [0.5, 2]; σ_b from {0, 0.3, 1} with the bias on,
    σ_b = 0 with it off. ``sizes`` = (n, n_test), n ≠ n_test: fixed, because
    every new input shape costs neural-tangents' ``kernel_fn`` seconds of
    tracing (the suite must stay within minutes on 2 cores).
    """
    rng = np.random.default_rng(seed)
    cases = []
    n, n_test = sizes
    for i in range(count):
        use_bias = bool(i % 3 != 0)
        cases.append(
            HeadCase(
                d=int(dims[i % len(dims)]),
                n=n,
                n_test=n_test,
                out_dim=int(outs[(i // len(dims)) % len(outs)]),
                sigma_w=float(rng.uniform(0.5, 2.0)),
                sigma_b=float(rng.choice([0.0, 0.3, 1.0])) if use_bias else 0.0,
                sigma_a=float(rng.uniform(0.5, 2.0)),
                use_bias=use_bias,
                train_readout=bool((i // 2) % 2),
                unit=bool(i % 2 == 0),
                seed=1000 * seed + i,
            )
        )
    return cases


def loglog_slope(widths, errors) -> float:
    """Least-squares slope of log(error) against log(width)."""
    return float(np.polyfit(np.log(np.asarray(widths, float)), np.log(np.asarray(errors, float)), 1)[0])


def qkv_head_closed_form(x_train, x_test, sigmas: dict, head) -> dict:
    """Our own closed form of the QKV + head kernels over S = train ∪ test (float64 numpy).

    Attention (queries S, keys/values the training set X):
    K_att = s (S Xᵀ)(X Xᵀ)(X Sᵀ)/d³, s = σ_q⁴σ_v²σ_o², Θ_att = 2 K_att.
    Head (NT's Dense/Relu rules): Σ = σ_w² K_att + σ_b², Θ₁ = Σ + σ_w² Θ_att,
    Θ_first = σ_a² K' Θ₁, NNGP = σ_a² K, Θ_both = Θ_first + NNGP.

    Returns:
      ``{"nngp": (N, N), "ntk": (N, N)}`` with the head's readout mode.
    """
    s_all = np.concatenate([x_train, x_test]) if x_test is not None else x_train
    d = x_train.shape[1]
    scale = sigmas["q"] ** 4 * sigmas["v"] ** 2 * sigmas["o"] ** 2 / d**3
    k_att = scale * (s_all @ x_train.T) @ (x_train @ x_train.T) @ (x_train @ s_all.T)
    sigma = head.sigma_w**2 * k_att + head.sigma_b**2
    var = np.diag(sigma)
    norms = np.sqrt(var[:, None] * var[None, :])
    cosine = np.clip(sigma / norms, -1.0, 1.0)
    theta = np.arccos(cosine)
    k = norms * (np.sin(theta) + (math.pi - theta) * cosine) / (2 * math.pi)
    k_prime = (math.pi - theta) / (2 * math.pi)
    theta_first = head.sigma_a**2 * k_prime * (sigma + head.sigma_w**2 * 2 * k_att)
    nngp = head.sigma_a**2 * k
    return {"nngp": nngp, "ntk": theta_first + nngp if head.train_readout else theta_first}
