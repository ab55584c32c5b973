"""Infinite-width NNGP and NTK of the two-layer ReLU head in closed form (docs/math.md §6).

With pre-activation covariance Σ(x, x') = σ_w² xᵀx'/d + σ_b²,
c = Σ(x, x') / √(Σ(x, x) Σ(x', x')) and θ = arccos c (arc-cosine kernel of
order 1, Cho & Saul 2009; NTK of Jacot et al. 2018):

    K(x, x')  = √(Σ(x,x) Σ(x',x')) (sin θ + (π − θ) c) / (2π)    hidden NNGP
    K'(x, x') = (π − θ) / (2π)                                     derivative kernel
    NNGP      = σ_a² K
    NTK       = σ_a² Σ K'            first layer only (readout fixed, E[a²] = 1)
    NTK       = σ_a² (Σ K' + K)      both layers trained

These equal neural-tangents' ``kernel_fn`` for the same stax model. For the
MLP-Attn model, pass the attention output as the inputs.

Every matmul (Σ = σ_w² X₁X₂ᵀ/d, the QKV NNGP's Gram products) runs at the
precision policy of ``kernelattn._precision``: ``Precision.HIGHEST`` unless
``precision="fast"``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kernelattn._precision import lax_precision, resolve_dtype, resolve_precision
from kernelattn._validation import check_matrix, check_row_range
from kernelattn.models import HeadConfig


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Kernel:
    """A pair of kernel matrices between two sets of inputs.

    Attributes:
      nngp: ``(n1, n2)`` or, with ``full_output``, ``(n1, n2, C, C)``.
      ntk: same shape as ``nngp`` (``None`` where not computed).
    """

    nngp: jax.Array | None
    ntk: jax.Array | None

    def tree_flatten(self):
        return (self.nngp, self.ntk), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)


def safe_arccos(c: jax.Array) -> jax.Array:
    """arccos with finite (zero) gradients at c = ±1.

    There the true derivative is ∓∞, but c is ±1 identically (a point against
    itself, or its antipode), so its variation is 0; plain arccos would give NaN
    gradients to attacks that differentiate the kernel.
    """
    inside = jnp.abs(c) < 1.0
    return jnp.where(inside, jnp.arccos(jnp.where(inside, c, 0.0)), jnp.where(c > 0, 0.0, jnp.pi))


def arccos_relu(sigma_12: jax.Array, sigma_11: jax.Array, sigma_22: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Hidden NNGP K and derivative kernel K' of ReLU from pre-activation covariances.

    Args:
      sigma_12: ``(n1, n2)`` cross covariances Σ(x, x').
      sigma_11: ``(n1,)`` variances Σ(x, x).
      sigma_22: ``(n2,)`` variances Σ(x', x').

    Returns:
      ``(K, K')``, each ``(n1, n2)``.
    """
    norms = jnp.sqrt(sigma_11[:, None] * sigma_22[None, :])
    cosine = jnp.clip(sigma_12 / norms, -1.0, 1.0)
    theta = safe_arccos(cosine)
    k = norms * (jnp.sin(theta) + (jnp.pi - theta) * cosine) / (2 * jnp.pi)
    k_prime = (jnp.pi - theta) / (2 * jnp.pi)
    return k, k_prime


def _expand_outputs(matrix: jax.Array, out_dim: int) -> jax.Array:
    """Θ ⊗ I_C laid out as ``(n1, n2, C, C)``."""
    return matrix[:, :, None, None] * jnp.eye(out_dim, dtype=matrix.dtype)


def head_kernels_fn(x1: jax.Array, x2: jax.Array | None, head: HeadConfig, *, precision=None) -> Kernel:
    """Pure, jit-able and differentiable core of :func:`head_kernels` (no checks).

    ``x2 = None`` means x2 = x1 (exact on the diagonal). Output-traced ``(n1, n2)``.
    ``precision``: "highest", "fast" or None (the policy in force when traced).
    """
    return _head_kernels_core(
        x1, x2, head.sigma_w, head.sigma_b, head.sigma_a, head.train_readout, resolve_precision(precision)
    )


def _head_kernels_core(x1, x2, sigma_w, sigma_b, sigma_a, train_readout, precision="highest"):
    """``x2 is None`` means x2 = x1: the variances are then read off Σ's diagonal.

    That makes c = 1 exactly at x = x', where arccos would otherwise turn one
    rounding of c into an error of √eps in θ.
    """
    d = x1.shape[-1]
    x2t = (x1 if x2 is None else x2).T
    sigma_12 = sigma_w**2 * jnp.matmul(x1, x2t, precision=lax_precision(precision)) / d + sigma_b**2
    sigma_11 = sigma_w**2 * jnp.sum(x1 * x1, axis=1) / d + sigma_b**2
    if x2 is None:
        sigma_11 = sigma_22 = jnp.diagonal(sigma_12)
    else:
        sigma_22 = sigma_w**2 * jnp.sum(x2 * x2, axis=1) / d + sigma_b**2
    k, k_prime = arccos_relu(sigma_12, sigma_11, sigma_22)
    first_layer = sigma_a**2 * sigma_12 * k_prime
    nngp = sigma_a**2 * k
    ntk = first_layer + nngp if train_readout else first_layer
    return Kernel(nngp, ntk)


_head_kernels = jax.jit(_head_kernels_core, static_argnums=(5, 6))


#: Why a zero row has no ReLU-head kernel without a bias: c = Σ(x, x')/√(Σ(x, x)Σ(x', x')) is 0/0.
_ZERO_ROW_HINT = "its arc-cosine kernel divides by the norm (0/0); drop those rows or use a head with sigma_b > 0"


def head_kernels(
    x1: ArrayLike,
    x2: ArrayLike | None = None,
    head: HeadConfig | None = None,
    *,
    full_output: bool = False,
    dtype="float64",
    precision=None,
) -> Kernel:
    """Infinite-width NNGP and NTK of ``MLPHead`` between two input sets.

    Args:
      x1: ``(n1, d)`` inputs (for MLP-Attn: the attention output).
      x2: ``(n2, d)`` inputs; defaults to ``x1``.
      head: the head's σ's, readout mode and out_dim (width is ignored);
        defaults to ``HeadConfig(width=1)`` (σ_w = σ_a = 1, σ_b = 0, fixed readout).
      full_output: return ``(n1, n2, C, C)`` = Θ ⊗ I_C instead of the
        output-traced ``(n1, n2)``.
      dtype: "float64" (default; needs ``kernelattn.enable_x64()``) or "float32".
      precision: matmul precision, "highest" (``Precision.HIGHEST``) or "fast"
        (the device's default: TF32 on recent GPUs); None → the policy in
        force (``kernelattn.precision_policy``, default "highest").

    Returns:
      ``Kernel(nngp, ntk)``; ntk is first-layer-only when the readout is fixed.

    Raises:
      InputValueError: a NaN/inf entry, a zero row (without a bias, its kernel
        is 0/0), or a row whose norm would overflow ‖x‖² in ``dtype`` — each
        named by its row index.
    """
    head = head or HeadConfig(width=1)
    dtype = resolve_dtype(dtype)
    precision = resolve_precision(precision)
    zero_rows_ok = head.sigma_b > 0
    x1 = check_matrix(x1, "x1", allow_zero_rows=zero_rows_ok, zero_row_hint=_ZERO_ROW_HINT)
    check_row_range(x1, "x1", dtype=dtype)
    if x2 is not None:
        x2 = check_matrix(x2, "x2", n_cols=x1.shape[1], allow_zero_rows=zero_rows_ok, zero_row_hint=_ZERO_ROW_HINT)
        check_row_range(x2, "x2", dtype=dtype)
        x2 = jnp.asarray(x2, dtype)
    kernel = _head_kernels(
        jnp.asarray(x1, dtype),
        x2,
        head.sigma_w,
        head.sigma_b,
        head.sigma_a,
        head.train_readout,
        precision,
    )
    if full_output:
        return Kernel(_expand_outputs(kernel.nngp, head.out_dim), _expand_outputs(kernel.ntk, head.out_dim))
    return kernel


def qkv_attention_nngp(
    x1: jax.Array,
    x2: jax.Array | None = None,
    context: jax.Array | None = None,
    *,
    sigma_q: float = 1.0,
    sigma_v: float = 1.0,
    sigma_o: float = 1.0,
    dtype="float64",
    precision=None,
) -> jax.Array:
    """Infinite-head-width NNGP of tied, linearly scaled QKV attention (docs/math.md §4).

    (X₁ Cᵀ)(C Cᵀ)(C X₂ᵀ) σ_q⁴ σ_v² σ_o² / d³ with C the context (training set);
    on the training set this is σ_q⁴σ_v²σ_o² G³/d³. ``precision``: as in
    :func:`head_kernels`.

    Returns:
      ``(n1, n2)`` array.
    """
    dtype = resolve_dtype(dtype)
    hi = lax_precision(precision)
    checked: dict[str, np.ndarray] = {}
    for name, value in (("x1", x1), ("x2", x2), ("context", context)):
        if value is not None:
            checked[name] = check_matrix(value, name, n_cols=None if name == "x1" else checked["x1"].shape[1])
            check_row_range(checked[name], name, dtype=dtype, power=6, what="QKV-attention NNGP")
    x1 = jnp.asarray(checked["x1"], dtype)
    x2 = x1 if x2 is None else jnp.asarray(checked["x2"], dtype)
    c = x1 if context is None else jnp.asarray(checked["context"], dtype)
    d = x1.shape[1]
    scale = sigma_q**4 * sigma_v**2 * sigma_o**2 / math.pow(d, 3)
    left = jnp.matmul(jnp.matmul(x1, c.T, precision=hi), jnp.matmul(c, c.T, precision=hi), precision=hi)
    return scale * jnp.matmul(left, jnp.matmul(c, x2.T, precision=hi), precision=hi)
