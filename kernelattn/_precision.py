"""Floating-point policy.

JAX computes in float32 unless 64-bit mode is on, and then silently truncates
float64 requests. Condition numbers cubed by attention (κ³ of 1e3 is 1e9) do
not fit float32, so every public function takes an explicit ``dtype`` and
refuses float64 when JAX cannot honour it, instead of returning float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._validation import check_matrix, check_row_range
from kernelattn.errors import InputValueError

DTYPES = ("float32", "float64")


def x64_enabled() -> bool:
    """Whether JAX's 64-bit mode (``jax_enable_x64``) is on."""
    return bool(jax.config.jax_enable_x64)


def enable_x64() -> None:
    """Turn JAX's 64-bit mode on (call once at program start, as the CLI does)."""
    jax.config.update("jax_enable_x64", True)


def resolve_dtype(dtype, name: str = "dtype") -> np.dtype:
    """Validate ``dtype`` (float32 or float64) and check JAX can compute in it.

    Raises:
      ValueError: for any other dtype, or float64 while 64-bit mode is off.
    """
    try:
        resolved = np.dtype(dtype)
    except TypeError as err:
        raise InputValueError(f"{name}: expected one of {list(DTYPES)}, got {dtype!r}") from err
    if resolved.name not in DTYPES:
        raise InputValueError(f"{name}: expected one of {list(DTYPES)}, got {resolved.name!r}")
    if resolved == np.float64 and not x64_enabled():
        raise InputValueError(
            f"{name}: float64 was requested but JAX's 64-bit mode is off, so JAX would "
            "silently compute in float32. Call kernelattn.enable_x64() (or "
            "jax.config.update('jax_enable_x64', True)) at program start."
        )
    return resolved


def float_eps(dtype) -> float:
    """Machine epsilon of a floating dtype."""
    return float(np.finfo(np.dtype(dtype)).eps)


def kernel_inputs(x1, x2, dtype) -> tuple[np.dtype, jax.Array, jax.Array | None]:
    """Validate a kernel's ``(n1, d)`` and optional ``(n2, d)`` inputs and cast them to ``dtype``.

    Besides shape and finiteness, every row norm must keep ‖x‖² within
    ``dtype``'s range (``_validation.check_row_range``): a kernel of a row of
    norm 1e200 would overflow to inf and NaN.

    Returns:
      ``(dtype, x1, x2)`` with ``dtype`` resolved (see :func:`resolve_dtype`)
      and ``x2`` kept ``None`` when not given.
    """
    dtype = resolve_dtype(dtype)
    x1 = check_matrix(x1, "x1")
    check_row_range(x1, "x1", dtype=dtype)
    if x2 is not None:
        x2 = check_matrix(x2, "x2", n_cols=x1.shape[1])
        check_row_range(x2, "x2", dtype=dtype)
        x2 = jnp.asarray(x2, dtype)
    return dtype, jnp.asarray(x1, dtype), x2
