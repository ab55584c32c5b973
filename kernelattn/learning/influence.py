"""Influence of training points on test predictions of kernel ridge regression (docs/math.md §9).

For a kernel K (empirical Θ_m of a trained network, or the infinite-width
Θ_∞) and ridge λ > 0, with H = (K + λI)⁻¹, α = H y and f(x*) = k*ᵀ α:

- exact leave-one-out influence (the default, ``method="loo"``):

      I(i, x*) = f(x*) − f_{−i}(x*) = (k*ᵀ H e_i) α_i / H_ii,

  the change of the prediction at x* when point i is removed and the ridge
  problem is re-solved on the other n − 1 points (exact, by the
  Sherman–Morrison identity for the bordered inverse; no approximation);
- influence-function form (``method="if"``; Zhang et al. 2022, NTK regime,
  MSE loss): I_IF(i, x*) = (k*ᵀ H)_i r_i with the ridge fit's training
  residual r = y − K α. Since (K + λI) α = y, r = λ α, so I_IF differs from
  I by the positive per-point factor λ H_ii: the two always agree in sign.

Self-influence (each training point as its own test point, on its own class)
comes with every result; :func:`top_k` reads the most helpful / harmful
training points of each test point.

Multi-class: targets are one-vs-rest, ``"pm1"`` (+1 for the class, −1
otherwise; default) or ``"onehot"`` (1 / 0), one ridge fit per class sharing
the one factorization; the influence on test point t is taken on its
**true-class output** c_t: I(i, t) = (k_tᵀ H e_i) α_{i, c_t} / H_ii.

Everything is float64, batched over the test points, and solved, never
inverted: one factorization of K + λI (Cholesky, eigen-decomposition fallback;
:func:`kernelattn.kernels.linalg.factorize`) serves all classes and test points, and
the method that ran is reported.

This module is the kernel mathematics alone: any kernel matrices in, scores
out. Building the kernel of a trained network from data is
:mod:`kernelattn.learning.model_influence` (whose :func:`~kernelattn.learning.model_influence.influence`
is the public entry point from data).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from kernelattn._validation import check_choice, check_int, check_matrix, check_real
from kernelattn.errors import InputValueError
from kernelattn.kernels.linalg import factorize
from kernelattn.learning.training import TrainingHealth

INFLUENCE_METHODS = ("loo", "if")
TARGET_ENCODINGS = ("pm1", "onehot")
#: Which end of a test point's row :func:`top_k` reads: the largest scores or the most negative ones.
DIRECTIONS = ("helpful", "harmful")


def top_k(scores, k: int, direction: str = "helpful") -> np.ndarray:
    """``(n*, k)`` int training indices of each test point's k most helpful (largest score) or most
    harmful (most negative score) training points, best first (ties: the lower index first).

    Args:
      scores: ``(n*, n)`` influence scores (positive: the training point helps the test point).
      k: 1 ≤ k ≤ n.
      direction: "helpful" (default) or "harmful".
    """
    direction = check_choice(direction, "direction", DIRECTIONS)
    scores = check_matrix(scores, "scores")
    k = check_int(k, "k", minimum=1, maximum=scores.shape[1])
    signed = -scores if direction == "helpful" else scores
    return np.argsort(signed, axis=1, kind="stable")[:, :k]


@dataclasses.dataclass(frozen=True)
class InfluenceResult:
    """Influence scores of every training point on every test point.

    Attributes:
      scores: ``(n*, n)`` float64, I(i, x*_t) in row t, column i.
      method: the estimator: "loo" (exact leave-one-out) or "if" (influence-function form) here;
        "tracin", "grad-dot", "grad-cos", "representer" or "trak" from
        :mod:`kernelattn.learning.attribution`.
      factorization: how K + λI was solved: "cholesky" or "eigh-clipped" ("none": no kernel solve).
      ridge: λ.
      predictions: ``(n*,)`` f(x*_t) on the output the influence is taken on
        (the true class c_t for multi-class targets).
      test_labels: ``(n*,)`` int class of each test point, or ``None`` for a
        single output.
      kernel: where the scores come from: "empirical" (Θ_m at θ_T),
        "empirical-init" (Θ_m at θ₀), "infinite" (Θ_∞), "tracin" (the
        network's own loss gradients at θ_T) or "precomputed".
      targets: one-vs-rest encoding ("pm1" / "onehot"), ``None`` if given as is.
      model, width, seed: provenance when built by
        :func:`kernelattn.learning.model_influence.influence`.
      train_losses: per-epoch training losses of the network (may be empty).
      health: the network fit's :class:`kernelattn.learning.training.TrainingHealth`
        (``None`` for a precomputed kernel).
      self_influence: ``(n,)`` float64 influence of each training point on itself under the same
        method (the training point as the test point, on its own class), or ``None``.
    """

    scores: np.ndarray
    method: str
    factorization: str
    ridge: float
    predictions: np.ndarray
    test_labels: np.ndarray | None = None
    kernel: str = "precomputed"
    targets: str | None = None
    model: str | None = None
    width: int | None = None
    seed: int | None = None
    train_losses: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    health: TrainingHealth | None = None
    self_influence: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(n*, n)``."""
        return tuple(self.scores.shape)

    def to_dict(self, arrays: bool = False) -> dict:
        """Metadata (and, with ``arrays=True``, the arrays as nested lists)."""
        out = {
            "method": self.method,
            "factorization": self.factorization,
            "ridge": self.ridge,
            "kernel": self.kernel,
            "targets": self.targets,
            "model": self.model,
            "width": self.width,
            "seed": self.seed,
            "n_test": self.shape[0],
            "n_train": self.shape[1],
            "health": None if self.health is None else self.health.to_dict(),
        }
        if arrays:
            out["scores"] = self.scores.tolist()
            out["predictions"] = self.predictions.tolist()
            out["test_labels"] = None if self.test_labels is None else self.test_labels.tolist()
            out["self_influence"] = None if self.self_influence is None else self.self_influence.tolist()
        return out

    def to_frame(self) -> pd.DataFrame:
        """Long format, one row per (test point, training point): columns ``test_index``,
        ``train_index`` (int64), ``method`` (str) and ``score`` (float64), test-major order."""
        n_test, n = self.shape
        return pd.DataFrame(
            {
                "test_index": np.repeat(np.arange(n_test, dtype=np.int64), n),
                "train_index": np.tile(np.arange(n, dtype=np.int64), n_test),
                "method": self.method,
                "score": np.asarray(self.scores, np.float64).reshape(-1),
            }
        )

    def most_helpful(self, k: int) -> np.ndarray:
        """``(n*, k)`` indices of each test point's k largest scores (:func:`top_k`)."""
        return top_k(self.scores, k, "helpful")

    def most_harmful(self, k: int) -> np.ndarray:
        """``(n*, k)`` indices of each test point's k most negative scores (:func:`top_k`)."""
        return top_k(self.scores, k, "harmful")


def _check_kernels(k_train, k_test_train) -> tuple[np.ndarray, np.ndarray]:
    k_train = check_matrix(k_train, "k_train").astype(np.float64)
    if k_train.shape[0] != k_train.shape[1]:
        raise InputValueError(f"k_train: expected a square (n, n) kernel matrix, got shape {k_train.shape}")
    k_test_train = check_matrix(k_test_train, "k_test_train").astype(np.float64)
    if k_test_train.shape[1] != k_train.shape[0]:
        raise InputValueError(
            f"k_test_train: expected shape (n*, {k_train.shape[0]}) to match k_train, got {k_test_train.shape}"
        )
    return k_train, k_test_train


def _check_targets(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise InputValueError(f"y: expected shape ({n},) or ({n}, C) to match k_train, got {y.shape}")
    y = check_matrix(y, "y", ndim=y.ndim).astype(np.float64)
    return y[:, None] if y.ndim == 1 else y


def _check_test_labels(test_labels, n_test: int, n_outputs: int) -> np.ndarray | None:
    if test_labels is None:
        if n_outputs > 1:
            raise InputValueError(
                f"test_labels: expected ({n_test},) class indices in [0, {n_outputs - 1}] for {n_outputs}-output "
                "targets (the influence is taken on each test point's true-class output), got None"
            )
        return None
    labels = np.asarray(test_labels)
    if labels.shape != (n_test,) or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise InputValueError(
            f"test_labels: expected ({n_test},) integer class indices, got {labels.shape} {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_outputs):
        raise InputValueError(
            f"test_labels: expected class indices in [0, {n_outputs - 1}], got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64)


def influence_scores(
    k_train,
    k_test_train,
    y,
    ridge: float,
    *,
    test_labels=None,
    method: str = "loo",
) -> InfluenceResult:
    """Influence of each training point on each test prediction of kernel ridge regression.

    I(i, x*) = (k*ᵀ H e_i) α_i / H_ii  (exact LOO, ``method="loo"``, default), or
    I_IF(i, x*) = (k*ᵀ H)_i r_i with r = y − K α  (``method="if"``),
    H = (K + λI)⁻¹, α = H y; one factorization for all test points and outputs.

    Args:
      k_train: ``(n, n)`` symmetric PSD kernel K of the training set (any kernel:
        empirical at width m, infinite-width, …).
      k_test_train: ``(n*, n)`` kernel between test and training points.
      y: ``(n,)`` targets, or ``(n, C)`` one-vs-rest targets.
      ridge: λ > 0.
      test_labels: ``(n*,)`` true class of each test point (required when C > 1):
        the influence is taken on that output.
      method: "loo" (default) or "if".

    Returns:
      :class:`InfluenceResult` with ``scores`` ``(n*, n)`` (float64) and ``self_influence`` ``(n,)``:
      each training point on itself, on its own class c_i = argmax_c y_ic,
      (K H)_ii α_{i,c_i} / H_ii ("loo": f(x_i) − f_{−i}(x_i)) or (K H)_ii r_{i,c_i} ("if").
    """
    method = check_choice(method, "influence", INFLUENCE_METHODS)
    ridge = check_real(ridge, "ridge", minimum=0.0, strict_min=True)
    k_train, k_test_train = _check_kernels(k_train, k_test_train)
    n, n_test = k_train.shape[0], k_test_train.shape[0]
    y = _check_targets(y, n)
    labels = _check_test_labels(test_labels, n_test, y.shape[1])
    column = np.zeros(n_test, np.int64) if labels is None else labels
    own = np.argmax(y, axis=1)  # each training point's own class (one-vs-rest targets peak there)
    factorization = factorize(k_train, ridge, name="k_train")
    k_sym = (k_train + k_train.T) / 2
    alpha = factorization.solve(y)  # (n, C)
    k_h = factorization.solve(k_test_train.T).T  # (n*, n) = K* H   (H symmetric)
    if method == "loo":
        per_point = alpha / factorization.inverse_diagonal()[:, None]  # (n, C) α_ic / H_ii
    else:
        per_point = y - k_sym @ alpha  # (n, C) residuals r = y − K α
    predictions = np.einsum("ti,it->t", k_test_train, alpha[:, column])
    self_influence = np.diag(factorization.solve(k_sym)) * per_point[np.arange(n), own]  # (K H)_ii w_i
    return InfluenceResult(
        scores=k_h * per_point[:, column].T,
        method=method,
        factorization=factorization.method,
        ridge=ridge,
        predictions=predictions,
        self_influence=self_influence,
        test_labels=labels,
    )


def one_vs_rest(labels: np.ndarray, n_classes: int, encoding: str = "pm1") -> np.ndarray:
    """``(n, C)`` one-vs-rest targets: ±1 ("pm1", default) or 1/0 ("onehot"), float64."""
    encoding = check_choice(encoding, "targets", TARGET_ENCODINGS)
    onehot = np.eye(n_classes, dtype=np.float64)[np.asarray(labels)]
    return 2.0 * onehot - 1.0 if encoding == "pm1" else onehot
