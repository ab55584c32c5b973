"""The small pieces every kernel check shares: the kernel as a matrix, its dtype, and the remedies a
message offers (float64, precision "highest", a ridge)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernelattn._precision import effective_eps, float_eps
from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.kernels.guards.reporting import GuardPolicy

__all__ = [
    "KERNEL_DTYPES",
    "as_kernel_matrix",
    "computed_as",
    "float64_remedy",
    "kernel_dtype_name",
    "precision_remedy",
    "ridge_for",
    "sig2",
]

#: The dtypes a kernel can have been computed in.
KERNEL_DTYPES = ("float32", "float64")


def computed_as(dtype: str, precision: str) -> str:
    """How a kernel was computed, for messages: "float32", or "float32 at precision 'fast'"."""
    return dtype if precision == "highest" else f"{dtype} at precision '{precision}'"


def precision_remedy(dtype: str, precision: str) -> list[str]:
    if precision == "highest" or effective_eps(dtype, precision) <= float_eps(dtype):
        return []
    return [
        f"recompute it at precision='highest' (true {dtype} products: eps {sig2(float_eps(dtype))} instead of "
        f"{sig2(effective_eps(dtype, precision))}; kernelattn.precision_policy('highest'), the default)"
    ]


def kernel_dtype_name(dtype, k: np.ndarray) -> str:
    if dtype is None:
        dtype = k.dtype if np.issubdtype(k.dtype, np.floating) else np.float64
    try:
        name = np.dtype(dtype).name
    except TypeError as err:
        raise InputValueError(f"dtype: expected one of {list(KERNEL_DTYPES)}, got {dtype!r}") from err
    if name not in KERNEL_DTYPES:
        raise InputValueError(
            f"dtype: expected one of {list(KERNEL_DTYPES)} (the dtype the kernel was computed in), got {name!r}"
        )
    return name


def as_kernel_matrix(k: Any, name: str) -> np.ndarray:
    """The kernel as a 2-d array; ``(n1, n2, C, C)`` becomes ``(n1·C, n2·C)``."""
    if not isinstance(name, str) or not name:
        raise InputValueError(f"name: expected a non-empty string naming the kernel, got {name!r}")
    try:
        array = np.asarray(k)
    except Exception as err:
        raise InputTypeError(f"{name}: expected a numeric array, got {type(k).__name__} ({err})") from err
    if array.dtype == object or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputTypeError(f"{name}: expected a real numeric array, got dtype {array.dtype}")
    if array.ndim == 4:
        n1, n2, c1, c2 = array.shape
        array = np.transpose(array, (0, 2, 1, 3)).reshape(n1 * c1, n2 * c2)
    if array.ndim != 2 or array.size == 0:
        raise InputValueError(
            f"{name}: expected a non-empty (n1, n2) or (n1, n2, C, C) kernel, got shape {array.shape}"
        )
    return array


def sig2(x: float) -> str:
    """``x`` to two significant digits: stable text for the same problem, precise enough to act on."""
    return "inf" if math.isinf(x) else f"{x:.2g}"


def float64_remedy(dtype: str) -> list[str]:
    if dtype == "float64":
        return []
    return [
        "compute it in float64 (kernelattn.enable_x64() at program start, then dtype='float64'; "
        f"float64 resolves κ up to {sig2(GuardPolicy().kappa_limit('float64'))})"
    ]


def ridge_for(lam_max: float, lam_min: float, limit: float) -> float:
    """Smallest λ ≥ 0 with (λ_max + λ)/(max(λ_min, 0) + λ) ≤ limit."""
    lo = max(lam_min, 0.0)
    return max((lam_max - limit * lo) / (limit - 1.0), 0.0)
