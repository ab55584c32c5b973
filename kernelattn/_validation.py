"""Input checks for the public boundary.

Every check raises ``ValueError`` (``TypeError`` for a wrong type) whose
message names the argument, what was expected and what was received, in the
spirit of scikit-learn's ``check_array``. Internals trust their inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from kernelattn.errors import InputTypeError, InputValueError


def _describe(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def check_matrix(
    value: Any,
    name: str,
    *,
    ndim: int = 2,
    min_rows: int = 1,
    n_cols: int | None = None,
    allow_zero_rows: bool = True,
    zero_row_hint: str = "drop them or pass normalize=False",
) -> np.ndarray:
    """Validate a real, finite array of rank ``ndim`` and return it as numpy.

    Args:
      value: array-like, e.g. ``(n, d)`` inputs.
      name: the argument's name, used in the error message.
      ndim: required rank.
      min_rows: required minimum length of the first axis.
      n_cols: required size of the last axis, if any.
      allow_zero_rows: if False, a row of ℓ2 norm 0 is an error.
      zero_row_hint: what the zero-row error suggests.

    Returns:
      The array as ``np.ndarray`` (dtype kept for floats, integers become
      float64).
    """
    try:
        array = np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise InputTypeError(f"{name}: expected a numeric array, got {type(value).__name__} ({err})") from err
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.bool_)
    ):
        raise InputTypeError(f"{name}: expected a real numeric array, got {_describe(array)}")
    if array.ndim != ndim:
        raise InputValueError(f"{name}: expected a {ndim}-d array, got {_describe(array)}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if array.shape[0] < min_rows:
        raise InputValueError(f"{name}: expected at least {min_rows} row(s), got {_describe(array)}")
    if array.size == 0:
        raise InputValueError(f"{name}: expected a non-empty array, got {_describe(array)}")
    if n_cols is not None and array.shape[-1] != n_cols:
        raise InputValueError(f"{name}: expected {n_cols} columns to match the other inputs, got {_describe(array)}")
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputValueError(f"{name}: expected finite values, got {bad} NaN/inf entries in {_describe(array)}")
    if not allow_zero_rows and array.ndim == 2:
        zero = np.flatnonzero(~np.any(array != 0, axis=1))
        if zero.size:
            raise InputValueError(
                f"{name}: expected rows of non-zero norm, got {zero.size} zero row(s) "
                f"(first at index {int(zero[0])}); {zero_row_hint}"
            )
    return array


#: Headroom kept between the largest product of row norms a computation forms and the dtype's
#: largest (or smallest normal) number: sums of up to 2^20 such products stay finite and non-zero.
RANGE_HEADROOM = 2.0**20


def row_norms(array: np.ndarray) -> np.ndarray:
    """ℓ2 norms of the rows of a finite ``(n, d)`` array, float64, without overflow or underflow.

    Each row is divided by its largest |entry| before squaring, so a row of
    1e200s has norm 1e200·√d (not inf) and a row of 1e-200s a non-zero norm.
    """
    array = np.asarray(array, np.float64)
    scale = np.max(np.abs(array), axis=1) if array.shape[1] else np.zeros(array.shape[0])
    safe = np.where(scale > 0, scale, 1.0)
    return scale * np.sqrt(np.sum((array / safe[:, None]) ** 2, axis=1))


def norm_range(dtype: Any = "float64", power: int = 2) -> tuple[float, float]:
    """``(lo, hi)``: the row norms whose ``power``-th power stays within ``dtype``'s range with headroom.

    A Gram or kernel entry is a product of two row norms (``power=2``); a
    depth-k linearized attention output scales as ‖x‖^(2k+1).
    """
    info = np.finfo(np.dtype(dtype))
    return ((float(info.tiny) * RANGE_HEADROOM) ** (1.0 / power), (float(info.max) / RANGE_HEADROOM) ** (1.0 / power))


def check_row_range(array: Any, name: str, *, dtype: Any = "float64", power: int = 2, what: str = "kernel") -> None:
    """Refuse a row whose norm would overflow (or underflow to 0) once raised to ``power`` in ``dtype``.

    Args:
      array: finite ``(n, d)`` array (see :func:`check_matrix`).
      name: the argument's name, used in the message.
      dtype: the dtype the computation runs in.
      power: the power of the row norm the computation forms (2 for a Gram
        or kernel matrix, 2k + 1 for depth-k attention).
      what: what is computed, for the message.

    Raises:
      InputValueError: naming the first offending row, its norm and the range.
    """
    array = np.asarray(array)
    if array.ndim != 2 or array.size == 0:
        return
    lo, hi = norm_range(dtype, power)
    norms = row_norms(array)
    bad = np.flatnonzero((norms > hi) | ((norms > 0) & (norms < lo)))
    if bad.size:
        i = int(bad[0])
        raise InputValueError(
            f"{name}: expected row norms within [{lo:.2g}, {hi:.2g}] (a {np.dtype(dtype).name} {what} forms "
            f"‖x‖^{power}, which must not overflow or underflow), got norm {norms[i]:.3g} at row {i}"
            + (f" ({bad.size} such rows)" if bad.size > 1 else "")
            + "; rescale the inputs, e.g. to unit-norm rows"
        )


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Validate an integer (bools refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputValueError(f"{name}: expected an integer, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputValueError(f"{name}: expected an integer <= {maximum}, got {value}")
    return value


def check_real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_min: bool = False,
    strict_max: bool = False,
) -> float:
    """Validate a finite real number within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real | np.floating | np.integer):
        raise InputValueError(f"{name}: expected a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise InputValueError(f"{name}: expected a finite number, got {value}")
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        op = ">" if strict_min else ">="
        raise InputValueError(f"{name}: expected a number {op} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (strict_max and value == maximum)):
        op = "<" if strict_max else "<="
        raise InputValueError(f"{name}: expected a number {op} {maximum}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    """Validate that ``value`` is one of the named ``choices``."""
    if value not in choices:
        raise InputValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value


def as_config(value: Any, cls: type, name: str) -> Any:
    """``None`` → ``cls()``; a mapping → ``cls(**mapping)``; an instance of ``cls`` as is.

    Unknown mapping keys are a ValueError naming them and the allowed fields.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise InputValueError(f"{name}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
        return cls(**dict(value))
    raise InputValueError(f"{name}: expected None, a dict or a {cls.__name__}, got {type(value).__name__}")
