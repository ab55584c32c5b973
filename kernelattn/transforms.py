"""Parameter-free linearized attention over the training set (docs/math.md §3).

The "sequence" is the whole training set X: every query attends to all
training samples, with keys = values = X and W_Q = W_K = W_V = I. With the
softmax linearized and its constant term dropped, one layer maps a query row q
to q Xᵀ X, so depth k gives

    A_k(Q) = Q (XᵀX)^k,     train: Z = G^k X,     test: Z* = X* Xᵀ G^{k-1} X,

and the Gram identities Z Zᵀ = G^{2k+1}, Z* Zᵀ = (X* Xᵀ) G^{2k} hold exactly
(paper Thm 4.1), so κ(Z Zᵀ) = κ(G)^{2k+1} (Thm 4.7).

Everything here is written in ``jax.numpy``: the transform is differentiable
with respect to both the queries and the training set, which the attacks need
(perturbing one training point moves every attention output). Its matmuls run
at the precision policy (``Precision.HIGHEST`` unless ``precision="fast"``;
``kernelattn._precision``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kernelattn._precision import lax_precision, resolve_precision
from kernelattn._validation import check_int, check_matrix, check_row_range, row_norms
from kernelattn.errors import InputValueError


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Options of the parameter-free linearized attention.

    Attributes:
      depth: number of stacked attention layers k ≥ 1.
      rank: if set, replace XᵀX by its top-``rank`` eigen-truncation (the
        paper's remedy; equivalently G by G_r). ``None`` keeps the full matrix.
      constant_term: keep the constant of exp(a) ≈ 1 + a, i.e.
        A(Q) = Q XᵀX + 1 1ᵀ X per layer (off by default, as in the paper).
      normalize: re-normalize output rows to unit ℓ2 norm, x̃ = z / ‖z‖
        (on by default: this is what feeds the MLP head).
    """

    depth: int = 1
    rank: int | None = None
    constant_term: bool = False
    normalize: bool = True

    def validated(self, n_features: int | None = None, n_samples: int | None = None) -> AttentionConfig:
        """Return self after checking every field (ValueError naming the field)."""
        check_int(self.depth, "depth", minimum=1)
        if self.rank is not None:
            bound = None if n_features is None or n_samples is None else min(n_features, n_samples)
            check_int(self.rank, "rank", minimum=1, maximum=bound)
        return self


def key_matrix(keys: jnp.ndarray, rank: int | None = None, *, precision=None) -> jnp.ndarray:
    """M = XᵀX ``(d, d)``, or its top-``rank`` eigen-truncation M_r (``precision``: as in :func:`attend`)."""
    hi = lax_precision(precision)
    m = jnp.matmul(keys.T, keys, precision=hi)
    if rank is None:
        return m
    eigenvalues, eigenvectors = jnp.linalg.eigh(m)  # ascending
    top_values, top_vectors = eigenvalues[-rank:], eigenvectors[:, -rank:]
    return jnp.matmul(top_vectors * top_values, top_vectors.T, precision=hi)


def attend(
    queries: jnp.ndarray, keys: jnp.ndarray, config: AttentionConfig = AttentionConfig(), *, precision=None
) -> jnp.ndarray:
    """Pure, jit-able core of :func:`linear_attention` (no input checks).

    Args:
      queries: ``(n_q, d)`` query rows.
      keys: ``(n, d)`` training set (keys = values).
      config: attention options.
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force when traced (``kernelattn.precision_policy``, default "highest").

    Returns:
      ``(n_q, d)`` attention output, dtype of the inputs.
    """
    precision = resolve_precision(precision)
    m = key_matrix(keys, config.rank, precision=precision)
    values_sum = jnp.sum(keys, axis=0)
    z = queries
    for _ in range(config.depth):
        z = jnp.matmul(z, m, precision=lax_precision(precision))
        if config.constant_term:
            z = z + values_sum
    if config.normalize:
        z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    return z


def linear_attention(
    train: ArrayLike,
    queries: ArrayLike | None = None,
    *,
    depth: int = 1,
    rank: int | None = None,
    constant_term: bool = False,
    normalize: bool = True,
    precision=None,
) -> jnp.ndarray:
    """Parameter-free linearized attention with the training set as keys and values.

    A_k(Q) = Q (XᵀX)^k  (optionally with M = XᵀX truncated to rank r and the
    constant term 1 1ᵀ X added per layer), then rows re-normalized.

    Args:
      train: ``(n, d)`` training inputs X (keys and values).
      queries: ``(n_q, d)`` inputs to transform; ``None`` means the training
        set itself (Z = G^k X).
      depth: k ≥ 1.
      rank: optional rank-r truncation, 1 ≤ r ≤ min(n, d).
      constant_term: add 1 1ᵀ X at each layer.
      normalize: unit-norm output rows.
      precision: matmul precision, "highest" (``Precision.HIGHEST``, default
        policy) or "fast" (the device's default: TF32 on recent GPUs); None →
        the policy in force.

    Returns:
      ``(n_q, d)`` array in the inputs' dtype (use float64 for the exact Gram
      identities; float32 cannot hold κ³ beyond ~1e7).

    Raises:
      InputValueError: naming the row: a NaN/inf entry; a row norm whose
        power 2k + 1 would overflow the dtype (the output scales as
        ‖x‖^(2k+1)); with ``normalize``, a zero query row or a query row
        orthogonal to the (truncated) span of the training set (output norm 0).
    """
    n, d = check_matrix(train, "train").shape
    if queries is not None:
        check_matrix(queries, "queries", n_cols=d)
    config = AttentionConfig(depth, rank, constant_term, normalize).validated(n_features=d, n_samples=n)
    train_j = jnp.asarray(train)
    queries_j = train_j if queries is None else jnp.asarray(queries)
    power, what = 2 * config.depth + 1, f"depth-{config.depth} attention"
    check_row_range(train, "train", dtype=train_j.dtype, power=power, what=what)
    query_name = "train" if queries is None else "queries"
    if queries is not None:
        check_row_range(queries, "queries", dtype=queries_j.dtype, power=power, what=what)
    if normalize:
        zero = jnp.flatnonzero(~jnp.any(queries_j != 0, axis=1)) if not constant_term else jnp.zeros(0, int)
        if zero.size:
            raise InputValueError(
                f"{query_name}: expected rows of non-zero norm, got a zero row at index {int(zero[0])}, whose "
                "attention output has norm 0 and cannot be re-normalized; drop it or pass normalize=False"
            )
    z = attend(queries_j, train_j, config, precision=resolve_precision(precision))
    if normalize and not bool(jnp.all(jnp.isfinite(z))):
        raw = attend(queries_j, train_j, AttentionConfig(config.depth, config.rank, config.constant_term, False))
        norms = row_norms(np.asarray(raw)) if bool(jnp.all(jnp.isfinite(raw))) else None
        bad = int(np.flatnonzero(norms == 0)[0]) if norms is not None and np.any(norms == 0) else None
        if bad is None:
            raise InputValueError(
                f"{query_name}: the attention output overflows {train_j.dtype.name}; rescale "
                "the inputs, e.g. to unit-norm rows"
            )
        raise InputValueError(
            f"{query_name}: row {bad} is orthogonal to the (truncated) span of the training set, so its "
            "attention output has norm 0 and cannot be re-normalized; pass normalize=False"
        )
    return z
