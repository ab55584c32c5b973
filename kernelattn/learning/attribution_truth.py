"""Attribution estimators scored against ground truth (docs/math.md §14, "Ground truth").

Three ground truths of "what removing training point i does to test point t":

- exact leave-one-out of kernel ridge, in closed form
  (:func:`kernelattn.learning.influence.influence_scores`, ``method="loo"``);
- the same by brute force, refitting the ridge problem n times without each
  point (:func:`kernel_loo_by_refit`, the check of the closed form);
- the network's own: retraining it without each point, from the same
  initialization and shuffle keys, averaged over seeds
  (:func:`retrained_loo`; small n only: n + 1 fits per seed).

:func:`compare_to_ground_truth` scores any estimators' ``(n*, n)`` matrices
against one of them with the row metrics of
:mod:`kernelattn.learning.malleability_metrics` (one implementation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from kernelattn._validation import check_matrix, check_real
from kernelattn.errors import InputValueError
from kernelattn.learning.fitting import HeadModel, fit_model, split_keys
from kernelattn.learning.influence import InfluenceResult
from kernelattn.learning.malleability_metrics import (
    compare_influence,
    finite_mean_std,
    pearson_rows,
)
from kernelattn.learning.training import TrainConfig, class_targets

#: The columns of :func:`compare_to_ground_truth`'s table besides ``method``.
TRUTH_METRICS = ("spearman", "pearson", "topk_overlap", "sign_agreement")


def scores_of(value, name: str) -> np.ndarray:
    """``(n*, n)`` float64 scores of an :class:`InfluenceResult` or of an array."""
    array = value.scores if isinstance(value, InfluenceResult) else value
    return check_matrix(array, name).astype(np.float64)


def compare_to_ground_truth(scores_by_method: Mapping, reference, *, tau: float = 0.1) -> pd.DataFrame:
    """How well each estimator recovers a ground truth, one row per method.

    Per test point t (row of the matrices), then averaged over the test points
    where it is defined (NaN rows, e.g. constant ones, are left out):
    Spearman ρ and Pearson r of the estimator's row against the reference's,
    top-k overlap of the k = ⌈τ n⌉ largest |scores|, and sign agreement: the
    fraction of the reference's top-k points (by |score|) whose sign the
    estimator gets right (1 − the flip rate of docs/math.md §10).

    Args:
      scores_by_method: method name → :class:`InfluenceResult` or ``(n*, n)`` array.
      reference: the ground truth, an :class:`InfluenceResult` or ``(n*, n)`` array.
      tau: the top fraction, in (0, 1].

    Returns:
      DataFrame with columns ``method``, ``spearman``, ``pearson``, ``topk_overlap``,
      ``sign_agreement`` (float64 means), and ``spearman_std``.
    """
    truth = scores_of(reference, "reference")
    if not isinstance(scores_by_method, Mapping) or not scores_by_method:
        raise InputValueError(
            f"scores_by_method: expected a non-empty mapping of method → scores, got {type(scores_by_method).__name__}"
        )
    tau = check_real(tau, "tau", minimum=0.0, maximum=1.0, strict_min=True)
    rows = []
    for method, value in scores_by_method.items():
        scores = scores_of(value, f"scores_by_method[{method!r}]")
        metrics = compare_influence(truth, scores, tau)
        spearman, spearman_std = finite_mean_std(metrics["spearman"])
        rows.append(
            {
                "method": str(method),
                "spearman": spearman,
                "pearson": finite_mean_std(pearson_rows(truth, scores))[0],
                "topk_overlap": finite_mean_std(metrics["topk_overlap"])[0],
                "sign_agreement": 1.0 - finite_mean_std(metrics["flip_rate"])[0],
                "spearman_std": spearman_std,
            }
        )
    return pd.DataFrame(rows, columns=["method", *TRUTH_METRICS, "spearman_std"])


def kernel_loo_by_refit(k_train, k_test_train, y, ridge: float, *, test_labels=None) -> np.ndarray:
    """``(n*, n)`` f(x*_t) − f_{−i}(x*_t) of kernel ridge by refitting without each point (n solves).

    Args, outputs as :func:`kernelattn.learning.influence.influence_scores` (``y`` ``(n,)`` or
    ``(n, C)``; with C > 1 each test point is read on its ``test_labels`` column); explicit
    ``numpy.linalg.solve`` of the (n−1)-point problems, the brute-force check of the closed form.
    """
    k = check_matrix(k_train, "k_train").astype(np.float64)
    k_star = check_matrix(k_test_train, "k_test_train", n_cols=k.shape[0]).astype(np.float64)
    ridge = check_real(ridge, "ridge", minimum=0.0, strict_min=True)
    y = np.asarray(y, np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n, rows = k.shape[0], np.arange(k_star.shape[0])
    columns = np.zeros(len(rows), np.int64) if test_labels is None else np.asarray(test_labels)
    full = (k_star @ np.linalg.solve(k + ridge * np.eye(n), y))[rows, columns]
    out = np.empty((len(rows), n))
    for i in range(n):
        keep = np.delete(np.arange(n), i)
        alpha = np.linalg.solve(k[np.ix_(keep, keep)] + ridge * np.eye(n - 1), y[keep])
        out[:, i] = full - (k_star[:, keep] @ alpha)[rows, columns]
    return out


def retrained_loo(
    spec: HeadModel,
    X,
    labels,
    X_test,
    labels_test,
    *,
    n_classes: int,
    config: TrainConfig,
    seeds: Iterable[int] = (0, 1),
) -> np.ndarray:
    """``(n*, n)`` float64 effect of removing each training point on the trained network, by retraining.

    For each seed s (initialization and shuffle keys of ``split_keys(s)``): the
    network trained on all n points and on the n − 1 points without i (same
    keys; the attention's context is then the n − 1 points too), read on each
    test point's target direction y*_t (its true-class output, or ±f for one
    ±1 output): ⟨f(x*_t) − f_{−i}(x*_t), y*_t⟩; averaged over the seeds.

    Args:
      spec: the model.
      X, X_test: ``(n, d)`` / ``(n*, d)`` raw inputs; labels, labels_test: int classes.
      n_classes: C.
      config: the training configuration (its epochs dominate the cost: (n + 1) fits per seed).
      seeds: the seeds averaged over.
    """
    X, X_test = np.asarray(X, np.float64), np.asarray(X_test, np.float64)
    out_dim = config.out_dim(n_classes)
    targets = class_targets(labels, n_classes, out_dim)
    directions = class_targets(labels_test, n_classes, out_dim)
    seeds = list(seeds)
    if not seeds:
        raise InputValueError("seeds: expected at least one seed, got none")
    n = X.shape[0]
    total = np.zeros((X_test.shape[0], n))
    for seed in seeds:
        keys = split_keys(seed)
        full = _margins(spec, X, targets, X_test, directions, np.arange(n), keys, config)
        for i in range(n):
            keep = np.delete(np.arange(n), i)
            total[:, i] += full - _margins(spec, X, targets, X_test, directions, keep, keys, config)
    return total / len(seeds)


def _margins(
    spec: HeadModel, X, targets, X_test, directions, keep: np.ndarray, keys: dict, config: TrainConfig
) -> np.ndarray:
    """``(n*,)`` ⟨f(x*_t), y*_t⟩ of the network trained on the rows ``keep`` (attending over them)."""
    fitted = fit_model(spec, X[keep], targets[keep], key_init=keys["init"], key_train=keys["train"], config=config)
    return np.sum(np.asarray(fitted.outputs(X_test, X[keep]), np.float64) * directions, axis=1)
