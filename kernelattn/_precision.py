"""Floating-point policy: dtypes and matmul precision.

Dtypes. JAX computes in float32 unless 64-bit mode is on, and then silently
truncates float64 requests. Condition numbers cubed by attention (κ³ of 1e3 is
1e9) do not fit float32, so every public function takes an explicit ``dtype``
and refuses float64 when JAX cannot honour it, instead of returning float32.

Matmul precision. XLA's default float32 matmul on NVIDIA Ampere/Hopper GPUs is
TF32 (inputs rounded to a 10-bit mantissa, eps 2^-10 ≈ 9.8e-4) and on TPUs a
single bfloat16 pass (eps 2^-7): measured on an H200, the float32 head NTK
differed from float64 by 3.8e-4 relative, against 2.2e-7 on a CPU. So every
kernel, attention, Gram and training matmul of kernelattn runs at
``jax.lax.Precision.HIGHEST`` (true float32 products) unless the caller opts
into ``precision="fast"`` (the device's default: TF32 / bf16 where it has
them, the same as "highest" on CPUs):

- ``precision=None`` (every public function's default) means the policy in
  force: the innermost ``with precision_policy(...)`` block, else "highest";
- :func:`precision_policy` also sets JAX's ``jax_default_matmul_precision``
  for the block, so matmuls traced inside it that name no precision (user
  models, pipeline code) follow the policy too, and jit caches keep the two
  policies apart (the setting is part of JAX's trace context);
- :func:`effective_eps` is the machine epsilon that guard-rails and accuracy
  checks must assume: the dtype's, or TF32's / bf16's for float32 at "fast"
  on a GPU / TPU.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._validation import check_matrix, check_row_range
from kernelattn.errors import InputValueError

DTYPES = ("float32", "float64")
#: Matmul precision policies: true float32 products, or the device's default.
PRECISIONS = ("highest", "fast")
#: Machine epsilon of TF32 (10 explicit mantissa bits): float32 matmuls at the default precision on
#: NVIDIA GPUs of compute capability 8.0 and later.
TF32_EPS = 2.0**-10
#: Machine epsilon of bfloat16 (7 explicit mantissa bits): float32 matmuls at the default precision on TPUs.
BF16_EPS = 2.0**-7
#: ``jax_default_matmul_precision`` per policy; "float32" → ``Precision.HIGHEST`` and "bfloat16" →
#: ``Precision.DEFAULT`` in jax 0.4.25 and current JAX alike.
_JAX_DEFAULT_MATMUL = {"highest": "float32", "fast": "bfloat16"}
_POLICY: contextvars.ContextVar[str] = contextvars.ContextVar("kernelattn_precision", default="highest")


def x64_enabled() -> bool:
    """Whether JAX's 64-bit mode (``jax_enable_x64``) is on."""
    return bool(jax.config.read("jax_enable_x64"))


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
    """Machine epsilon of a floating dtype (:func:`effective_eps` starts from it)."""
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


# --------------------------------------------------------------------------- matmul precision


def current_precision() -> str:
    """The precision policy in force: the innermost :func:`precision_policy` block's, else "highest"."""
    return _POLICY.get()


def resolve_precision(precision=None, name: str = "precision") -> str:
    """Validate a precision policy; ``None`` → the policy in force (:func:`current_precision`).

    Raises:
      ValueError: anything but "highest", "fast" or None.
    """
    if precision is None:
        return _POLICY.get()
    if isinstance(precision, str) and precision.lower() in PRECISIONS:
        return precision.lower()
    raise InputValueError(
        f"{name}: expected one of {list(PRECISIONS)} (or None for the policy in force), got {precision!r}"
    )


@contextlib.contextmanager
def precision_policy(precision=None) -> Iterator[str]:
    """Run every kernelattn matmul in this block at ``precision`` ("highest" or "fast").

    Functions called with ``precision=None`` inside the block use it, and so
    does every matmul traced inside it that names no precision of its own
    (JAX's ``jax_default_matmul_precision`` is set for the block). Blocks
    nest; the setting is per thread (a ``contextvars.ContextVar``).

    Yields:
      The resolved policy.
    """
    resolved = resolve_precision(precision)
    token = _POLICY.set(resolved)
    try:
        with jax.default_matmul_precision(_JAX_DEFAULT_MATMUL[resolved]):
            yield resolved
    finally:
        _POLICY.reset(token)


def lax_precision(precision=None) -> jax.lax.Precision:
    """The ``jax.lax.Precision`` of a policy: HIGHEST for "highest", DEFAULT for "fast"."""
    return jax.lax.Precision.HIGHEST if resolve_precision(precision) == "highest" else jax.lax.Precision.DEFAULT


def matmul(a: jax.Array, b: jax.Array, precision=None) -> jax.Array:
    """``a @ b`` at the policy ``precision`` (None → the policy in force)."""
    return jnp.matmul(a, b, precision=lax_precision(precision))


def fast_matmul_eps(platform: str | None = None, device=None) -> float | None:
    """Machine epsilon of float32 matmul inputs at the device's default precision (None: float32's own).

    TF32 (2^-10) on NVIDIA GPUs of compute capability ≥ 8.0 (and on GPUs that
    do not report one), bfloat16 (2^-7) on TPUs, None on CPUs and older GPUs.

    Args:
      platform: "cpu", "gpu", "cuda", "rocm", "tpu"; None → ``jax.default_backend()``.
      device: a device whose ``compute_capability`` is read (default: the first of the platform).
    """
    platform = (platform or jax.default_backend()).lower()
    if platform == "cpu":
        return None
    if platform == "tpu":
        return BF16_EPS
    if device is None:
        try:
            device = jax.devices()[0]
        except RuntimeError:  # pragma: no cover - no backend at all
            device = None
    capability = getattr(device, "compute_capability", None)
    try:
        if capability is not None and int(str(capability).split(".")[0]) < 8:
            return None
    except ValueError:
        pass
    return TF32_EPS


def effective_eps(dtype, precision=None, platform: str | None = None) -> float:
    """Machine epsilon a kernel computed in ``dtype`` at ``precision`` must be assumed to carry.

    The dtype's epsilon, except float32 at "fast" on a device whose default
    matmul rounds its inputs further (TF32 on GPUs: 2^-10 ≈ 9.8e-4; bf16 on
    TPUs: 2^-7). float64 matmuls are never reduced.

    Args:
      dtype: the dtype the kernel was computed in.
      precision: "highest", "fast" or None (the policy in force).
      platform: as in :func:`fast_matmul_eps` (None → the default backend; only read for "fast").
    """
    eps = float_eps(dtype)
    if np.dtype(dtype) != np.float32 or resolve_precision(precision) == "highest":
        return eps
    fast = fast_matmul_eps(platform)
    return eps if fast is None else max(eps, fast)
