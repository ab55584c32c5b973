"""Training-data attribution from a model's own gradients (docs/math.md §14).

For any model f(θ, x) → ``(n, C)`` (a ``jax.tree_util.Partial``, so that one
configuration compiles once) with per-example loss ℓ_i = ℓ(f(θ, x_i), y_i),
g_i(θ) = ∇_θ ℓ_i ∈ R^P, and each test point t read on its target direction y*_t:

- **TracIn** (Pruthi et al. 2020): I(i, t) = Σ_c η_c g_t(θ_c) · g_i(θ_c) over
  the checkpoints θ_c of training (step size η_c);
- **grad-dot / grad-cos**: g_t(θ_T) · g_i(θ_T), or its cosine;
- **representer points** (Yeh et al. 2018), for a last linear layer
  f = φ(x) A: I(i, t) = ⟨φ_i, φ_t⟩ ⟨α_i, y*_t⟩ with α_i = −∂ℓ_i/∂f_i / (2λn);
- **TRAK** (Park et al. 2023): the output Jacobian's rows J_c(x) ∈ R^P
  projected to k dimensions, Φ(x) = [J_c(x) R]_c / √(kC), R ~ N(0, 1)^(P×k),
  then τ(i, t) = Φ_tᵀ(ΦᵀΦ + λI)⁻¹Φ_i r_i — by the push-through identity the
  influence-function form of kernel ridge on the projected kernel ΦΦᵀ, which
  tends to the output-traced empirical NTK as k → ∞ (Johnson–Lindenstrauss).

Positive scores mean the training point helps the test point. Every result
carries the self-influence of each training point (the point as its own test
point). The gradient products run in the model's dtype at the precision
policy's matmul precision and are returned as float64.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._precision import lax_precision
from kernelattn._validation import check_int, check_matrix, check_real
from kernelattn.errors import InputValueError
from kernelattn.learning.influence import (
    INFLUENCE_METHODS,
    InfluenceResult,
    influence_scores,
)
from kernelattn.learning.training import loss_value

#: The network's own gradients (no kernel ridge).
GRADIENT_METHODS = ("tracin", "representer", "grad-dot", "grad-cos")
#: Every estimator: the kernel ridge forms, the gradient ones, and TRAK's projected NTK features.
ATTRIBUTION_METHODS = (*INFLUENCE_METHODS, *GRADIENT_METHODS, "trak")


# =========================================================================== per-example derivatives


def _flatten_rows(tree, n: int) -> jax.Array:
    """``(n, P)``: the leaves of a per-example pytree, each ``(n, ...)``, flattened and concatenated."""
    return jnp.concatenate([leaf.reshape(n, -1) for leaf in jax.tree_util.tree_leaves(tree)], axis=1)


@functools.partial(jax.jit, static_argnums=1)
def loss_gradients(apply_fn, loss: str, params, x: jax.Array, targets: jax.Array) -> jax.Array:
    """``(b, P)`` per-example gradients ∇_θ ℓ(f(θ, x_i), y_i) of all leaves of ``params``.

    Args:
      apply_fn: ``jax.tree_util.Partial`` ``(params, x) -> (b, C)`` acting row by row.
      loss: "mse" or "xent" (:func:`kernelattn.learning.training.loss_value`).
      params: the parameters (pytree).
      x: ``(b, ...)`` inputs; targets: ``(b, C)``.
    """

    def example_loss(p, row, target):
        return loss_value(apply_fn(p, row[None]), target[None], jnp.ones(1, row.dtype), loss)

    return _flatten_rows(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, targets), x.shape[0])


@jax.jit
def output_jacobian(apply_fn, params, x: jax.Array) -> jax.Array:
    """``(b, C, P)`` per-example Jacobians ∂f_c(θ, x_i)/∂θ of an ``apply_fn`` acting row by row."""
    rows = jax.vmap(jax.jacrev(lambda p, row: apply_fn(p, row[None])[0]), in_axes=(None, 0))(params, x)
    leaves = jax.tree_util.tree_leaves(rows)
    return jnp.concatenate([leaf.reshape((*leaf.shape[:2], -1)) for leaf in leaves], axis=2)


@functools.partial(jax.jit, static_argnums=1)
def output_loss_gradients(outputs: jax.Array, loss: str, targets: jax.Array) -> jax.Array:
    """``(n, C)`` ∂ℓ_i/∂f_i of the per-example loss (MSE: f − y; cross-entropy: softmax(f) − y)."""
    per_row = jax.grad(lambda f, y: loss_value(f[None], y[None], jnp.ones(1, f.dtype), loss))
    return jax.vmap(per_row)(outputs, targets)


# =========================================================================== estimators


def gradient_products(
    apply_fn,
    loss: str,
    checkpoints: Sequence,
    weights: Sequence[float],
    x,
    targets,
    x_test,
    targets_test,
    *,
    cosine: bool = False,
    block: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_c w_c G*_c G_cᵀ (``(n*, n)``) and its diagonal on the training set Σ_c w_c ‖g_i(θ_c)‖² (``(n,)``).

    TracIn with the step sizes as ``weights``; grad-dot with one checkpoint, θ_T, and weight 1;
    grad-cos with ``cosine=True`` (each product divided by both gradients' norms at that checkpoint;
    self-influence Σ_c w_c).

    Args:
      apply_fn: ``jax.tree_util.Partial`` ``(params, x) -> (b, C)`` acting row by row.
      loss: "mse" or "xent".
      checkpoints: parameter pytrees θ_c.
      weights: one float per checkpoint.
      x, x_test: ``(n, ...)`` / ``(n*, ...)`` inputs of ``apply_fn``; targets, targets_test: ``(n, C)`` / ``(n*, C)``.
      block: training rows per gradient batch (memory: block·P).
    """
    if len(checkpoints) == 0 or len(weights) != len(checkpoints):
        raise InputValueError(f"weights: expected one weight per checkpoint ({len(checkpoints)}), got {len(weights)}")
    dtype = jax.tree_util.tree_leaves(checkpoints[0])[0].dtype
    x, x_test = jnp.asarray(x, dtype), jnp.asarray(x_test, dtype)
    targets, targets_test = jnp.asarray(targets, dtype), jnp.asarray(targets_test, dtype)
    scores = np.zeros((x_test.shape[0], x.shape[0]))
    self_influence = np.zeros(x.shape[0])
    for params, weight in zip(checkpoints, weights):
        g_test = loss_gradients(apply_fn, loss, params, x_test, targets_test)
        test_norms = np.linalg.norm(np.asarray(g_test, np.float64), axis=1)
        columns, norms = [], []
        for start in range(0, x.shape[0], block):
            g = loss_gradients(apply_fn, loss, params, x[start : start + block], targets[start : start + block])
            columns.append(np.asarray(jnp.matmul(g_test, g.T, precision=lax_precision()), np.float64))
            norms.append(np.linalg.norm(np.asarray(g, np.float64), axis=1))
        products, train_norms = np.concatenate(columns, axis=1), np.concatenate(norms)
        if cosine:
            products = products / np.maximum(np.outer(test_norms, train_norms), np.finfo(np.float64).tiny)
            self_influence += weight
        else:
            self_influence += weight * train_norms**2
        scores += weight * products
    return scores, self_influence


def representer_scores(
    features, features_test, output_gradients, targets, targets_test, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Representer values (Yeh et al. 2018) of a last linear layer f = φ(x) A, float64.

    I(i, t) = ⟨φ_i, φ_t⟩ ⟨α_i, y*_t⟩,  α_i = −∂ℓ_i/∂f_i / (2λn),

    the part of f(x*_t) along its target y*_t that training point i carries
    at a stationary point of (1/n) Σ ℓ_i + λ‖A‖² (λ only scales the scores).

    Args:
      features, features_test: ``(n, h)`` / ``(n*, h)`` inputs φ of the last layer.
      output_gradients: ``(n, C)`` ∂ℓ_i/∂f_i (:func:`output_loss_gradients`).
      targets, targets_test: ``(n, C)`` / ``(n*, C)`` target rows (the direction each point is read on).
      ridge: λ > 0.

    Returns:
      ``(scores (n*, n), self_influence (n,) = ‖φ_i‖² ⟨α_i, y_i⟩)``.
    """
    ridge = check_real(ridge, "ridge", minimum=0.0, strict_min=True)
    features = check_matrix(features, "features").astype(np.float64)
    n = features.shape[0]
    features_test = check_matrix(features_test, "features_test", n_cols=features.shape[1]).astype(np.float64)
    gradients = check_matrix(output_gradients, "output_gradients").astype(np.float64)
    targets = check_matrix(targets, "targets", n_cols=gradients.shape[1]).astype(np.float64)
    targets_test = check_matrix(targets_test, "targets_test", n_cols=gradients.shape[1]).astype(np.float64)
    if gradients.shape[0] != n or targets.shape[0] != n or targets_test.shape[0] != features_test.shape[0]:
        raise InputValueError(
            f"output_gradients: expected ({n}, C) rows to match features {features.shape}, "
            f"got {gradients.shape} (targets {targets.shape}, targets_test {targets_test.shape})"
        )
    alpha = -gradients / (2.0 * ridge * n)  # (n, C)
    scores = (features_test @ features.T) * (targets_test @ alpha.T)
    return scores, np.sum(features**2, axis=1) * np.sum(alpha * targets, axis=1)


def projection_matrix(key: jax.Array, n_params: int, k: int, dtype) -> jax.Array:
    """``(P, k)`` R ~ N(0, 1) of the TRAK projection, drawn from ``key`` (memory P·k in ``dtype``)."""
    k = check_int(k, "projection_dim", minimum=1)
    return jax.random.normal(key, (n_params, k), dtype)


def projected_features(jacobian, projection) -> np.ndarray:
    """``(n, C·k)`` float64 Φ = [J_c R]_c / √(kC) of a ``(n, C, P)`` Jacobian and a ``(P, k)`` projection R,
    so that ΦΦᵀ → (1/C) Σ_c J_c J_cᵀ, the output-traced empirical NTK, as k grows."""
    n, c, _ = jacobian.shape
    k = projection.shape[1]
    projected = jnp.einsum("ncp,pk->nck", jacobian, projection, precision=lax_precision())
    return np.asarray(projected, np.float64).reshape(n, c * k) / np.sqrt(k * c)


def trak_scores(features, features_test, y, ridge: float, *, test_labels=None) -> InfluenceResult:
    """TRAK with damping λ: τ(i, t) = Φ_tᵀ(ΦᵀΦ + λI)⁻¹Φ_i r_i on projected features Φ (``(n, D)``,
    ``(n*, D)``), r the ridge residuals of y — :func:`kernelattn.learning.influence.influence_scores`
    (``method="if"``) on the kernel ΦΦᵀ (push-through identity), reported as method "trak"."""
    features = check_matrix(features, "features").astype(np.float64)
    features_test = check_matrix(features_test, "features_test", n_cols=features.shape[1]).astype(np.float64)
    result = influence_scores(
        features @ features.T, features_test @ features.T, y, ridge, test_labels=test_labels, method="if"
    )
    return dataclasses.replace(result, method="trak")
