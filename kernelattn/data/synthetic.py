"""Gaussian-like data with a prescribed Gram spectrum.

Training inputs are built as X = U diag(s) Vᵀ with U (n×r) and V (d×r)
Haar-random with orthonormal columns, r = min(n, d), in float64. The Gram
matrix G = X Xᵀ then has eigenvalues s_k² (and n - r zeros), so

* ``kappa`` prescribes κ(G) = (s_1 / s_r)² when n ≤ d, and the effective
  κ_d(G) over the top min(n, d) eigenvalues when n > d (docs/math.md §2); the
  singular values are geometrically spaced, s_k = κ^{-(k-1) / (2(r-1))};
* or ``singular_values`` gives s (length r) explicitly.

Unit-norm rows (``normalize=True``, the default): dividing rows by their
norms would change the spectrum, so instead s is rescaled so that Σ s_k² = n
and U is rotated, two rows at a time, until every row has norm 1 (the
Bendel–Mickey / Davies–Higham algorithm, Davies & Higham 2000, "Numerically
stable generation of correlation matrices and their factors", BIT 40). Left
rotations leave the singular values unchanged, so the rows have unit norm AND
κ is met to rounding (far below 1e-6 relative). Only the *scale* of
``singular_values`` is changed, never their ratios. With ``normalize=False``
X = U diag(s) Vᵀ uses s exactly as given.

Test inputs follow the training second moment: x* = V (s ⊙ z) / √n with
z ~ N(0, I_r), normalized to unit norm when ``normalize=True``.

Targets: ``task="classification"`` — a random linear teacher W ~ N(0, 1)^{d×C}:
for C = 2, label = [x·w₁ > median over the training set] (balanced); for
C > 2, label = argmax_c x·w_c. ``task="regression"`` — a random one-hidden-
layer ReLU teacher f(x) = aᵀ relu(W x) / √h with W ~ N(0, 1)^{h×d},
a ~ N(0, 1)^h, h = ``teacher_width``.

Every random draw comes from its own stream spawned from
``numpy.random.SeedSequence(seed)``, so e.g. ``n_test`` never changes the
training inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernelattn._validation import check_choice, check_int, check_real
from kernelattn.data.dataset import RawData
from kernelattn.errors import InputValueError

__all__ = [
    "DEFAULT_D",
    "DEFAULT_KAPPA",
    "DEFAULT_N_TEST",
    "DEFAULT_N_TRAIN",
    "geometric_spectrum",
    "haar_orthonormal",
    "make_synthetic",
    "unit_rows_by_rotation",
]

DEFAULT_KAPPA = 100.0
DEFAULT_D = 100
DEFAULT_N_TRAIN = 200
DEFAULT_N_TEST = 200
TASKS = ("classification", "regression")


def geometric_spectrum(kappa: float, r: int) -> np.ndarray:
    """``(r,)`` float64 singular values, descending, s_1 = 1, (s_1/s_r)² = kappa."""
    if r == 1:
        return np.ones(1)
    return kappa ** (-np.arange(r, dtype=np.float64) / (2.0 * (r - 1)))


def haar_orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """``(rows, cols)`` float64 matrix with Haar-distributed orthonormal columns."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def unit_rows_by_rotation(f: np.ndarray, *, tol: float = 1e-10) -> np.ndarray:
    """Rotate pairs of rows of ``f`` until every row has unit ℓ2 norm.

    Args:
      f: ``(n, r)`` float64 with Σ‖f_i‖² = n.
      tol: accepted deviation of a squared row norm from 1.

    Returns:
      ``(n, r)`` float64 Q f with Q orthogonal (a product of Givens rotations),
      so the singular values of ``f`` are unchanged. Each step picks a row
      with ‖f_i‖² < 1 and one with ‖f_j‖² > 1 and rotates them so that
      ‖f_i‖² = 1 exactly (the stable root of Davies & Higham 2000, §3).
    """
    f = np.array(f, dtype=np.float64, copy=True)
    norms2 = np.einsum("ij,ij->i", f, f)
    for _ in range(2 * f.shape[0]):
        low = np.flatnonzero(norms2 < 1.0 - tol)
        high = np.flatnonzero(norms2 > 1.0 + tol)
        if low.size == 0 or high.size == 0:
            break
        i, j = int(low[0]), int(high[0])
        aii, ajj, aij = norms2[i], norms2[j], float(f[i] @ f[j])
        # t = tan θ solves (ajj - 1) t² + 2 aij t + (aii - 1) = 0; aii < 1 < ajj, so the
        # discriminant exceeds aij² and q is never 0.
        q = -(aij + math.copysign(math.sqrt(aij * aij - (aii - 1.0) * (ajj - 1.0)), aij))
        t = (aii - 1.0) / q
        c = 1.0 / math.sqrt(1.0 + t * t)
        s = t * c
        fi, fj = f[i].copy(), f[j]
        f[i] = c * fi + s * fj
        f[j] = -s * fi + c * fj
        norms2[i], norms2[j] = f[i] @ f[i], f[j] @ f[j]
    return f


def _spectrum(kappa: Any, singular_values: Any, r: int) -> tuple[np.ndarray, float]:
    if singular_values is not None:
        if kappa is not None:
            raise InputValueError(f"kappa: expected None when singular_values is given, got {kappa!r}")
        s = np.asarray(singular_values, dtype=np.float64)
        if s.ndim != 1 or s.shape[0] != r:
            raise InputValueError(f"singular_values: expected {r} = min(n_train, d) values, got shape {s.shape}")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise InputValueError(f"singular_values: expected finite positive values, got {s}")
        s = np.sort(s)[::-1]
        return s, float((s[0] / s[-1]) ** 2)
    kappa = DEFAULT_KAPPA if kappa is None else check_real(kappa, "kappa", minimum=1.0)
    if r == 1 and kappa != 1.0:
        raise InputValueError(f"kappa: expected 1 when min(n_train, d) = 1, got {kappa}")
    return geometric_spectrum(kappa, r), kappa


def make_synthetic(
    *,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    d: int = DEFAULT_D,
    kappa: float | None = None,
    singular_values: Any = None,
    n_classes: int = 2,
    task: str = "classification",
    teacher_width: int = 100,
    normalize: bool = True,
    seed: int = 0,
) -> RawData:
    """Generate a synthetic train/test split (see the module docstring).

    Args:
      n_train, n_test: sample counts.
      d: input dimension.
      kappa: κ(G) (n ≤ d) or κ_d(G) (n > d) of the training Gram matrix;
        default 100 when ``singular_values`` is not given.
      singular_values: explicit ``(min(n_train, d),)`` positive values
        (exclusive with ``kappa``).
      n_classes: C ≥ 2 (classification).
      task: ``"classification"`` or ``"regression"``.
      teacher_width: hidden width h of the regression teacher.
      normalize: unit-norm rows with the spectrum kept (see above).
      seed: root of the random streams.

    Returns:
      ``RawData`` with float64 ``(n_train, d)`` / ``(n_test, d)`` inputs,
      ``pixel_max=None``; for regression, ``values_*`` hold the float64
      targets and the labels are all 0.
    """
    n_train = check_int(n_train, "n_train", minimum=2)
    n_test = check_int(n_test, "n_test", minimum=1)
    d = check_int(d, "d", minimum=1)
    n_classes = check_int(n_classes, "n_classes", minimum=2)
    task = check_choice(task, "task", TASKS)
    teacher_width = check_int(teacher_width, "teacher_width", minimum=1)
    r = min(n_train, d)
    s, kappa_value = _spectrum(kappa, singular_values, r)
    u_rng, v_rng, test_rng, teacher_rng = (np.random.default_rng(c) for c in np.random.SeedSequence(seed).spawn(4))

    u = haar_orthonormal(u_rng, n_train, r)
    v = haar_orthonormal(v_rng, d, r)
    if normalize:
        s = s * math.sqrt(n_train / float(s @ s))
        factor = unit_rows_by_rotation(u * s)
    else:
        factor = u * s
    x_train = factor @ v.T
    x_test = (test_rng.standard_normal((n_test, r)) * s) @ v.T / math.sqrt(n_train)
    if normalize:
        x_test /= np.linalg.norm(x_test, axis=1, keepdims=True)

    values_train = values_test = None
    if task == "classification":
        w = teacher_rng.standard_normal((d, n_classes))
        if n_classes == 2:
            threshold = float(np.median(x_train @ w[:, 0]))
            labels_train = (x_train @ w[:, 0] > threshold).astype(np.int64)
            labels_test = (x_test @ w[:, 0] > threshold).astype(np.int64)
        else:
            labels_train = np.argmax(x_train @ w, axis=1).astype(np.int64)
            labels_test = np.argmax(x_test @ w, axis=1).astype(np.int64)
        class_names = tuple(str(c) for c in range(n_classes))
    else:
        w = teacher_rng.standard_normal((teacher_width, d))
        a = teacher_rng.standard_normal(teacher_width)
        values_train = np.maximum(x_train @ w.T, 0.0) @ a / math.sqrt(teacher_width)
        values_test = np.maximum(x_test @ w.T, 0.0) @ a / math.sqrt(teacher_width)
        labels_train = np.zeros(n_train, dtype=np.int64)
        labels_test = np.zeros(n_test, dtype=np.int64)
        class_names = ()

    return RawData(
        x_train=x_train,
        labels_train=labels_train,
        x_test=x_test,
        labels_test=labels_test,
        class_names=class_names,
        pixel_max=None,
        source={
            "generator": "kernelattn.data.synthetic.make_synthetic",
            "n_train": n_train,
            "n_test": n_test,
            "d": d,
            "kappa": kappa_value,
            "singular_values": [float(x) for x in s],
            "n_classes": n_classes if task == "classification" else 0,
            "task": task,
            "teacher_width": teacher_width if task == "regression" else None,
            "unit_rows": normalize,
        },
        values_train=values_train,
        values_test=values_test,
    )
