"""Influence scores from your own kernel.

``kernelattn.influence_scores`` takes any kernel matrix — yours — and returns the
influence of every training point on every test prediction of kernel ridge
regression: exact leave-one-out by default, I(i, x*) = f(x*) − f₋ᵢ(x*), from one
factorization of K + λI (docs/math.md §9). This tutorial

1. builds a Gaussian (RBF) kernel by hand on digits 3-vs-8 and computes its
   influence matrix;
2. checks one score against an actual refit without that training point;
3. compares it with the influence under the kernel of linearized attention,
   G³ = (X Xᵀ)³ (docs/math.md §3): which training points matter depends on the
   kernel; the two kernels' top-10 % sets share fewer than half of their points.

Run it::

    python docs/tutorials/own_kernel_influence.py            # full size, seconds
    python docs/tutorials/own_kernel_influence.py --small    # tiny sizes
    python docs/tutorials/own_kernel_influence.py --out DIR  # also save DIR/own_kernel_influence.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

import kernelattn as ka


def rbf(a: np.ndarray, b: np.ndarray, lengthscale: float) -> np.ndarray:
    """Your kernel: k(x, x') = exp(−‖x − x'‖² / (2ℓ²)), symmetric positive definite."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.exp(-np.maximum(sq, 0.0) / (2 * lengthscale**2))


def krr_prediction(k_train: np.ndarray, k_test_train: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """f(x*) = k*ᵀ (K + λI)⁻¹ y, the predictor the influence scores describe."""
    return k_test_train @ np.linalg.solve(k_train + ridge * np.eye(len(y)), y)


def top_set(scores: np.ndarray, fraction: float) -> set[int]:
    """The ⌈fraction·n⌉ training points of largest |influence| on one test point."""
    k = int(np.ceil(fraction * scores.size))
    return set(np.argsort(-np.abs(scores))[:k].tolist())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=bool(os.environ.get("KERNELATTN_TUTORIAL_SMALL")),
                        help="tiny sizes (also: KERNELATTN_TUTORIAL_SMALL=1)")
    parser.add_argument("--out", type=Path, help="directory for the figure (none: no figure)")
    args = parser.parse_args(argv)
    n_train, n_test = (60, 10) if args.small else (240, 60)
    ridge = 1e-3

    # Digits 3 vs 8: unit-norm rows, targets ±1 (one output).
    data = ka.data.load("digits", classes=(3, 8), n_train=n_train, n_test=n_test, target="pm1", seed=0)
    X, X_test, y = data.X_train, data.X_test, data.y_train
    print(f"digits {' vs '.join(data.class_names)}: {X.shape[0]} training, {X_test.shape[0]} test points")

    # --- 1. Your kernel, your influence matrix.
    lengthscale = float(np.median(np.linalg.norm(X[:, None] - X[None], axis=-1)))
    K, K_test = rbf(X, X, lengthscale), rbf(X_test, X, lengthscale)
    result = ka.influence_scores(K, K_test, y, ridge)
    scores = result.scores  # (n_test, n_train): row t is the influence of every training point on test point t
    accuracy = float(np.mean(np.sign(result.predictions) == data.y_test))
    print(f"RBF kernel (lengthscale {lengthscale:.3f}): influence matrix {result.shape}, "
          f"solved by {result.factorization}, test accuracy of the ridge predictor {accuracy:.2f}")

    # --- 2. The score is an exact leave-one-out difference: refit without point i and compare.
    t = 0
    i = int(np.argmax(np.abs(scores[t])))
    keep = np.arange(len(y)) != i
    full = krr_prediction(K, K_test[t:t + 1], y, ridge)[0]
    without_i = krr_prediction(K[np.ix_(keep, keep)], K_test[t:t + 1, keep], y[keep], ridge)[0]
    print(f"test point {t}: most influential training point {i} (label {data.y_train[i]:+.0f}); "
          f"I = {scores[t, i]:+.6f}, refit f(x*) − f_-i(x*) = {full - without_i:+.6f}")
    assert np.isclose(scores[t, i], full - without_i, rtol=1e-6, atol=1e-9)

    # --- 3. Another kernel, other influential points: linearized attention's G³.
    G3 = np.linalg.matrix_power(X @ X.T, 3)
    G3_test = (X_test @ X.T) @ np.linalg.matrix_power(X @ X.T, 2)  # Z* Zᵀ = (X* Xᵀ) G² (docs/math.md §3)
    attention = ka.influence_scores(G3, G3_test, y, ridge)
    overlap = np.mean([len(top_set(scores[s], 0.1) & top_set(attention.scores[s], 0.1)) / len(top_set(scores[s], 0.1))
                       for s in range(len(X_test))])
    ranks = [np.corrcoef(np.argsort(np.argsort(scores[s])), np.argsort(np.argsort(attention.scores[s])))[0, 1]
             for s in range(len(X_test))]
    print(f"RBF vs G^3: mean top-10% overlap {overlap:.2f}, mean Spearman rank correlation {np.mean(ranks):.2f}")

    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.out.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(2, 6, figsize=(9, 3.4))
        for row, (name, s) in enumerate((("RBF", scores[t]), ("G³", attention.scores[t]))):
            axes[row, 0].imshow(X_test[t].reshape(8, 8), cmap="gray_r")
            axes[row, 0].set_title("test point", fontsize=8)
            axes[row, 0].set_ylabel(name)
            for col, j in enumerate(np.argsort(-np.abs(s))[:5], start=1):
                axes[row, col].imshow(X[j].reshape(8, 8), cmap="gray_r")
                axes[row, col].set_title(f"I = {s[j]:+.2g}", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("the five most influential training points, by kernel", fontsize=9)
        fig.tight_layout()
        path = args.out / "own_kernel_influence.png"
        fig.savefig(path, dpi=120)
        print(f"figure: {path}")
    return {"scores": scores, "attention_scores": attention.scores, "overlap": float(overlap),
            "accuracy": accuracy}


if __name__ == "__main__":
    main()
