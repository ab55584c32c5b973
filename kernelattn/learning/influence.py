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

Multi-class: targets are one-vs-rest, ``"pm1"`` (+1 for the class, −1
otherwise; default) or ``"onehot"`` (1 / 0), one ridge fit per class sharing
the one factorization; the influence on test point t is taken on its
**true-class output** c_t: I(i, t) = (k_tᵀ H e_i) α_{i, c_t} / H_ii.

Everything is float64, batched over the test points, and solved, never
inverted: one factorization of K + λI (Cholesky, eigen-decomposition fallback;
:func:`kernelattn.kernels.linalg.factorize`) serves all classes and test points, and
the method that ran is reported.

The second half of the module builds that kernel from data and a model:
raw pixels → unit rows → (parameter-free attention over the training set) →
MLP head trained with optax → empirical NTK at the trained parameters
(kernelattn's structured path) or the closed-form infinite-width NTK on the
same features. :func:`influence` is the public entry point.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._precision import lax_precision, resolve_dtype
from kernelattn._validation import as_config, check_choice, check_int, check_matrix, check_real, check_row_range
from kernelattn.errors import InputValueError
from kernelattn.kernels.analytic import head_kernels, head_kernels_fn
from kernelattn.kernels.empirical import head_ntk_fn, structured_head_ntk
from kernelattn.kernels.linalg import factorize
from kernelattn.models import (
    AttentionMLP,
    HeadConfig,
    MLPHead,
    TwoLayerReLU,
    canonical_model_name,
    head_preactivations,
    make_model,
)
from kernelattn.learning.training import (
    TrainConfig,
    TrainingHealth,
    check_health,
    class_targets,
    loss_value,
    train,
    training_health,
)
from kernelattn.transforms import AttentionConfig, attend

INFLUENCE_METHODS = ("loo", "if")
#: Where influence comes from: the empirical NTK at the trained parameters θ_T, the empirical NTK at
#: initialization θ₀, the infinite-width NTK (kernel ridge on each), or the trained network's own loss
#: gradients (TracIn at θ_T: no kernel ridge).
KERNELS = ("empirical", "empirical-init", "infinite", "tracin")
RIDGE_KERNELS = ("empirical", "empirical-init", "infinite")
TARGET_ENCODINGS = ("pm1", "onehot")
SUPPORTED_MODELS = ("relu", "mlp-attn")


# =========================================================================== scores from a kernel


@dataclasses.dataclass(frozen=True)
class InfluenceResult:
    """Influence scores of every training point on every test point.

    Attributes:
      scores: ``(n*, n)`` float64, I(i, x*_t) in row t, column i.
      method: "loo" (exact leave-one-out) or "if" (influence-function form).
      factorization: how K + λI was solved: "cholesky" or "eigh-clipped".
      ridge: λ.
      predictions: ``(n*,)`` f(x*_t) on the output the influence is taken on
        (the true class c_t for multi-class targets).
      test_labels: ``(n*,)`` int class of each test point, or ``None`` for a
        single output.
      kernel: where the scores come from: "empirical" (Θ_m at θ_T),
        "empirical-init" (Θ_m at θ₀), "infinite" (Θ_∞), "tracin" (the
        network's own loss gradients at θ_T) or "precomputed".
      targets: one-vs-rest encoding ("pm1" / "onehot"), ``None`` if given as is.
      model, width, seed: provenance when built by :func:`influence`.
      train_losses: per-epoch training losses of the network (may be empty).
      health: the network fit's :class:`kernelattn.learning.training.TrainingHealth`
        (``None`` for a precomputed kernel).
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
        return out


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
        raise InputValueError(f"test_labels: expected ({n_test},) integer class indices, got {labels.shape} {labels.dtype}")
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
      :class:`InfluenceResult` with ``scores`` ``(n*, n)`` (float64).
    """
    method = check_choice(method, "influence", INFLUENCE_METHODS)
    ridge = check_real(ridge, "ridge", minimum=0.0, strict_min=True)
    k_train, k_test_train = _check_kernels(k_train, k_test_train)
    n, n_test = k_train.shape[0], k_test_train.shape[0]
    y = _check_targets(y, n)
    labels = _check_test_labels(test_labels, n_test, y.shape[1])
    column = np.zeros(n_test, np.int64) if labels is None else labels
    factorization = factorize(k_train, ridge, name="k_train")
    alpha = factorization.solve(y)  # (n, C)
    k_h = factorization.solve(k_test_train.T).T  # (n*, n) = K* H   (H symmetric)
    if method == "loo":
        weights = alpha[:, column].T / factorization.inverse_diagonal()[None, :]
    else:
        residual = y - ((k_train + k_train.T) / 2) @ alpha
        weights = residual[:, column].T
    predictions = np.einsum("ti,it->t", k_test_train, alpha[:, column])
    return InfluenceResult(
        scores=k_h * weights,
        method=method,
        factorization=factorization.method,
        ridge=ridge,
        predictions=predictions,
        test_labels=labels,
    )


def one_vs_rest(labels: np.ndarray, n_classes: int, encoding: str = "pm1") -> np.ndarray:
    """``(n, C)`` one-vs-rest targets: ±1 ("pm1", default) or 1/0 ("onehot"), float64."""
    encoding = check_choice(encoding, "targets", TARGET_ENCODINGS)
    onehot = np.eye(n_classes, dtype=np.float64)[np.asarray(labels)]
    return 2.0 * onehot - 1.0 if encoding == "pm1" else onehot


# =========================================================================== data


@dataclasses.dataclass(frozen=True)
class TrainTest:
    """Validated arrays: raw inputs and int labels of both splits, and the class count."""

    X: np.ndarray
    labels: np.ndarray
    X_test: np.ndarray
    labels_test: np.ndarray
    n_classes: int
    normalized: bool | None = None

    def onehot(self, labels: np.ndarray | None = None) -> np.ndarray:
        """One-hot training targets."""
        return np.eye(self.n_classes, dtype=np.float64)[self.labels if labels is None else labels]

    def train_targets(self, config: TrainConfig, labels: np.ndarray | None = None) -> np.ndarray:
        """``(n, C')`` targets the network is trained on: ±1 on one output for a binary task under
        ``config.binary_output == "pm1"`` (the paper's), else one-hot rows."""
        labels = self.labels if labels is None else labels
        return class_targets(labels, self.n_classes, config.out_dim(self.n_classes))


def _labels_of(y, name: str, n: int) -> tuple[np.ndarray, int | None]:
    """Int labels from ``(n,)`` class indices or ``(n, C)`` one-hot / ±1 rows; and C if known."""
    if y is None:
        raise InputValueError(f"{name}: expected ({n},) class labels or ({n}, C) one-hot targets, got None")
    y = np.asarray(y)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise InputValueError(f"{name}: expected ({n},) class labels or ({n}, C) one-hot targets to match the inputs, got shape {y.shape}")
    if y.ndim == 2:
        return np.argmax(y, axis=1).astype(np.int64), int(y.shape[1])
    if not (np.issubdtype(y.dtype, np.integer) or np.all(np.equal(np.mod(y, 1), 0))):
        raise InputValueError(f"{name}: expected integer class labels (classification only), got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise InputValueError(f"{name}: expected class labels >= 0, got minimum {y.min()}")
    return y.astype(np.int64), None


def resolve_data(data=None, *, X=None, y=None, X_test=None, y_test=None) -> TrainTest:
    """Validate a dataset given as a ``Dataset``-like object or as arrays.

    Args:
      data: any object with ``X_train``, ``X_test`` and ``labels_train`` /
        ``labels_test`` (else ``y_train`` / ``y_test``) — e.g.
        ``kernelattn.data.load("digits", normalize=False)``.
      X, y, X_test, y_test: raw arrays instead: ``(n, d)`` inputs, labels
        ``(n,)`` int or ``(n, C)`` one-hot.

    Returns:
      :class:`TrainTest` (float64 inputs, int64 labels).
    """
    normalized = None
    n_classes = None
    if data is not None:
        if any(v is not None for v in (X, y, X_test, y_test)):
            raise InputValueError("data: pass either data or the arrays X, y, X_test, y_test, not both")
        missing = [a for a in ("X_train", "X_test") if not hasattr(data, a)]
        if missing:
            raise InputValueError(f"data: expected an object with X_train, labels_train, X_test, labels_test, got {type(data).__name__} lacking {missing}")
        X, X_test = data.X_train, data.X_test
        y = getattr(data, "labels_train", None)
        y = getattr(data, "y_train", None) if y is None else y
        y_test = getattr(data, "labels_test", None)
        y_test = getattr(data, "y_test", None) if y_test is None else y_test
        names = getattr(data, "class_names", None)
        n_classes = len(names) if names else None
        meta = getattr(data, "metadata", None) or {}
        normalized = (meta.get("preprocessing") or {}).get("normalize") if isinstance(meta, Mapping) else None
    if X is None or X_test is None:
        raise InputValueError(f"{'X' if X is None else 'X_test'}: expected an (n, d) array (or pass data=...), got None")
    # Leave-one-out needs at least two training points to leave one out of.
    # Every model scales its input rows to unit norm first: a zero row has no direction, and a row
    # whose squared norm overflows (float32: beyond ~1e16) would become 0 or NaN without a word.
    hint = "every model scales its input rows to unit norm, which a zero row does not have; drop them"
    X = check_matrix(X, "X", min_rows=2, allow_zero_rows=False, zero_row_hint=hint).astype(np.float64)
    X_test = check_matrix(X_test, "X_test", n_cols=X.shape[1], allow_zero_rows=False,
                          zero_row_hint=hint).astype(np.float64)
    check_row_range(X, "X", dtype="float32", what="model input normalization")
    check_row_range(X_test, "X_test", dtype="float32", what="model input normalization")
    labels, c_train = _labels_of(y, "y", X.shape[0])
    labels_test, c_test = _labels_of(y_test, "y_test", X_test.shape[0])
    if c_train is not None and c_test is not None and c_train != c_test:
        raise InputValueError(f"y_test: expected {c_train} columns like y, got {c_test}")
    inferred = max(int(labels.max()), int(labels_test.max())) + 1
    n_classes = n_classes or c_train or c_test or inferred
    if inferred > n_classes:
        raise InputValueError(f"y_test: expected class labels below {n_classes}, got {inferred - 1}")
    if n_classes < 2:
        raise InputValueError(f"y: expected at least 2 classes, got {n_classes}")
    return TrainTest(X, labels, X_test, labels_test, int(n_classes), normalized)


# =========================================================================== model pipeline


def unit_rows(x: jax.Array) -> jax.Array:
    """Rows scaled to unit ℓ2 norm (jnp, differentiable; an all-zero row stays 0)."""
    norms = jnp.linalg.norm(x, axis=1, keepdims=True)
    return x / jnp.maximum(norms, jnp.finfo(x.dtype).tiny)


@dataclasses.dataclass(frozen=True)
class HeadModel:
    """A kernelattn model as a function of raw pixels.

    raw X → unit rows → (MLP-Attn: parameter-free attention of the queries
    over the training set, re-normalized) → ``MLPHead``. The attention has no
    parameters, so features can be computed once and the head trained on them.

    Attributes:
      name: "relu" (2L-ReLU) or "mlp-attn".
      head: the head's ``HeadConfig``.
      attention: the attention's ``AttentionConfig`` (``None`` for "relu").
      dtype: compute dtype.
    """

    name: str
    head: HeadConfig
    attention: AttentionConfig | None
    dtype: Any

    def features(self, queries: jax.Array, context: jax.Array) -> jax.Array:
        """``(n_q, d)`` head inputs of raw ``queries`` given the raw training set ``context``."""
        return _features(self, jnp.asarray(queries, self.dtype), jnp.asarray(context, self.dtype))

    def apply(self, variables: dict, features: jax.Array) -> jax.Array:
        """Head outputs ``(n_q, C)`` on precomputed features."""
        return _apply(self, variables, features)

    def outputs(self, variables: dict, queries: jax.Array, context: jax.Array) -> jax.Array:
        """Model outputs ``(n_q, C)`` on raw queries, attending over the raw training set."""
        return self.apply(variables, self.features(queries, context))

    def init(self, key: jax.Array, features: jax.Array) -> dict:
        """Head variables ``{"params": {"W", ["b"], ["a"]}, ["constants": {"a"}]}``, N(0, 1) / ±1."""
        return _init(self, key, jnp.asarray(features, self.dtype))


# Jitted with the (hashable, frozen) HeadModel static: one compilation per model
# configuration and shape instead of one per primitive in eager mode.
@functools.partial(jax.jit, static_argnums=0)
def _features(spec: HeadModel, queries, context):
    queries = unit_rows(queries)
    if spec.attention is None:
        return queries
    return attend(queries, unit_rows(context), spec.attention)


@functools.partial(jax.jit, static_argnums=0)
def _apply(spec: HeadModel, variables, features):
    return MLPHead(spec.head, spec.dtype).apply(variables, features)


@functools.partial(jax.jit, static_argnums=0)
def _init(spec: HeadModel, key, features):
    variables = MLPHead(spec.head, spec.dtype).init(key, features)
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, spec.dtype), dict(variables))


def resolve_model(model, width: int, out_dim: int, dtype) -> HeadModel:
    """A :class:`HeadModel` from a name ("relu", "mlp-attn" and aliases) or a model instance.

    A ``TwoLayerReLU`` / ``AttentionMLP`` instance keeps its head and attention
    configuration (its ``width`` wins over the ``width`` argument) but must
    have ``out_dim`` outputs. Trainable-QKV models are not supported here.
    """
    dtype = resolve_dtype(dtype)
    if isinstance(model, str):
        try:
            name = canonical_model_name(model)
        except ValueError:
            name = None
        if name not in SUPPORTED_MODELS:
            raise InputValueError(f"model: expected one of {list(SUPPORTED_MODELS)} or a TwoLayerReLU/AttentionMLP instance, got {model!r}")
        width = check_int(width, "width", minimum=1)
        model = make_model(name, width, out_dim)
    if isinstance(model, TwoLayerReLU):
        name, attention = "relu", None
    elif isinstance(model, AttentionMLP):
        name, attention = "mlp-attn", model.attention.validated()
    else:
        raise InputValueError(
            f"model: expected one of {list(SUPPORTED_MODELS)} or a TwoLayerReLU/AttentionMLP instance, "
            f"got {type(model).__name__}"
        )
    head = model.head
    if head.out_dim != out_dim:
        raise InputValueError(f"model: expected a head with out_dim = {out_dim} (the network outputs: 1 for a binary task "
                              f"trained on ±1 targets, else the number of classes), got {head.out_dim}")
    return HeadModel(name, head, attention, jnp.dtype(dtype))


@dataclasses.dataclass(frozen=True)
class FittedModel:
    """A trained :class:`HeadModel`.

    Attributes:
      spec: the model.
      variables: trained head variables (``params`` and ``constants``).
      initial: the head variables at initialization.
      losses: per-epoch mean training loss.
      training: "standard" or "pgd-at".
      loss: the training loss, "mse" or "xent".
      health: :class:`TrainingHealth` once :func:`assess_fit` has run.
    """

    spec: HeadModel
    variables: dict
    initial: dict
    losses: np.ndarray
    training: str = "standard"
    loss: str = "xent"
    health: TrainingHealth | None = None

    def outputs(self, queries, context) -> jax.Array:
        """``(n_q, C)`` outputs on raw queries attending over the raw training set."""
        return self.spec.outputs(self.variables, queries, context)


def as_train_config(value: Any) -> TrainConfig:
    """``None`` → paper defaults; a dict → ``TrainConfig(**dict)``; a ``TrainConfig`` as is."""
    return as_config(value, TrainConfig, "train_config")


def fit_model(spec: HeadModel, X, targets, *, key_init: jax.Array, key_train: jax.Array, config: TrainConfig) -> FittedModel:
    """Initialize the head and train it (optax, ``kernelattn.learning.training.train``) on raw X.

    The features (attention over X) are computed once; the head is trained on
    them, which is exactly training the whole model since the attention has no
    parameters.

    Args:
      spec: the model.
      X: ``(n, d)`` raw training inputs.
      targets: ``(n, C)`` training targets (``TrainTest.train_targets``).
      key_init, key_train: PRNG keys of the initialization and the epoch shuffles.
      config: optimization settings.
    """
    features = spec.features(X, X)
    initial = spec.init(key_init, features)
    params, rest = initial["params"], {k: v for k, v in initial.items() if k != "params"}

    def apply_fn(p, f):
        return spec.apply({"params": p, **rest}, f)

    result = train(apply_fn, params, np.asarray(features), np.asarray(targets), key=key_train, config=config)
    loss = config.resolved_loss(np.asarray(targets).shape[1])
    return FittedModel(spec, {"params": result.params, **rest}, initial, result.losses, "standard", loss)


def assess_fit(fitted: FittedModel, split: TrainTest, config: TrainConfig, *, what: str) -> FittedModel:
    """The fit with its :class:`TrainingHealth` on ``split``, checked (warning, or error under
    ``guards.strict()``, when it did not train; ``what`` names it in the message)."""
    spec = fitted.spec
    features = spec.features(split.X, split.X)
    head, head0 = _flat_head(fitted.variables), _flat_head(fitted.initial)
    health = training_health(
        loss=fitted.loss,
        targets=split.train_targets(config),
        labels=split.labels,
        outputs=np.asarray(spec.apply(fitted.variables, features)),
        params=fitted.variables["params"],
        initial_params=fitted.initial["params"],
        hidden=np.asarray(head_preactivations(spec.head, head, features)),
        hidden_initial=np.asarray(head_preactivations(spec.head, head0, features)),
        features=np.asarray(features),
        labels_test=split.labels_test,
        outputs_test=np.asarray(fitted.outputs(split.X_test, split.X)),
    )
    return dataclasses.replace(fitted, health=check_health(health, what))


def fit_label(spec: HeadModel, seed: int, training: str = "standard") -> str:
    """How a fit is named in messages: "mlp-attn, width 256, seed 0[, pgd-at]"."""
    return f"{spec.name}, width {spec.head.width}, seed {seed}" + ("" if training == "standard" else f", {training}")


# --------------------------------------------------------------------------- kernels


def model_kernels(fitted: FittedModel, X, X_test, kernel: str = "empirical") -> tuple[np.ndarray, np.ndarray]:
    """``(K (n, n), K* (n*, n))`` float64 NTKs on the features of raw X and X_test.

    Both splits attend over the raw training set X. "empirical": the NTK of the
    trained network at its parameters (``structured_head_ntk``, output-traced);
    "empirical-init": the same at the initial parameters θ₀; "infinite": the
    closed-form infinite-width NTK (``head_kernels``) of the same head on the
    same features.
    """
    kernel = check_choice(kernel, "kernel", RIDGE_KERNELS)
    spec = fitted.spec
    features = np.asarray(spec.features(X, X), np.float64)
    features_test = np.asarray(spec.features(X_test, X), np.float64)
    both = np.concatenate([features, features_test])
    if kernel == "infinite":
        k = head_kernels(both, features, spec.head, dtype="float64").ntk
    else:
        variables = fitted.variables if kernel == "empirical" else fitted.initial
        k = structured_head_ntk(_flat_head(variables), spec.head, both, features, dtype="float64")
    k = np.asarray(k, np.float64)
    n = features.shape[0]
    return k[:n], k[n:]


def _flat_head(variables: dict) -> dict:
    """``{"W", ["b"], "a"}`` from head variables ``{"params": …, ["constants": {"a"}]}``."""
    return {**variables["params"], **variables.get("constants", {})}


def infinite_ntk_jnp(f1: jax.Array, f2: jax.Array | None, head: HeadConfig) -> jax.Array:
    """Differentiable closed-form NTK of the head (docs/math.md §6), ``(n1, n2)``; f2 = None means f1."""
    return head_kernels_fn(f1, f2, head).ntk


def empirical_ntk_jnp(f1: jax.Array, f2: jax.Array | None, head: HeadConfig, variables: dict) -> jax.Array:
    """Differentiable structured empirical NTK of the head (docs/math.md §7), output-traced, ``(n1, n2)``."""
    return head_ntk_fn(_flat_head(variables), head, f1, f2)


def kernel_function(fitted: FittedModel, kernel: str = "empirical"):
    """``kernel_fn(queries, context=None)`` → K ``(n_q, n)`` in jnp: the kernel between raw queries and
    the raw training set ``context`` (``None``: the queries themselves), rebuilt from raw pixels with
    the attention over ``context``, differentiable in both — for attacks on the kernel predictor."""
    kernel = check_choice(kernel, "kernel", RIDGE_KERNELS)
    spec = fitted.spec
    variables = fitted.initial if kernel == "empirical-init" else fitted.variables

    def kernel_fn(queries, context=None):
        context = queries if context is None else context
        f_context = spec.features(context, context)
        f_queries = f_context if queries is context else spec.features(queries, context)
        if kernel == "infinite":
            return infinite_ntk_jnp(f_queries, f_context, spec.head)
        return empirical_ntk_jnp(f_queries, f_context, spec.head, variables)

    return kernel_fn


# --------------------------------------------------------------------------- network gradients


@functools.partial(jax.jit, static_argnums=(0, 1))
def _loss_gradients(spec: HeadModel, loss: str, variables: dict, features: jax.Array, targets: jax.Array) -> jax.Array:
    """``(b, P)`` per-example gradients ∇_θ ℓ(f(x_i), y_i) of the trainable head parameters."""
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def example_loss(p, f, y):
        out = spec.apply({"params": p, **rest}, f[None])
        return loss_value(out, y[None], jnp.ones(1, f.dtype), loss)

    grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, features, targets)
    return jnp.concatenate([g.reshape(features.shape[0], -1) for g in jax.tree_util.tree_leaves(grads)], axis=1)


def tracin_scores(fitted: FittedModel, split_x, targets, x_test, targets_test, *, block: int = 128) -> np.ndarray:
    """TracIn at the trained parameters (Pruthi et al. 2020, one checkpoint): ``(n*, n)`` float64

        I(i, t) = ∇_θ ℓ(x*_t, y*_t) · ∇_θ ℓ(x_i, y_i),

    the first-order decrease of test point t's loss from a gradient step on
    training point i (positive: i helps t) — the network's own gradients, no
    kernel ridge. Equivalently g*_tᵀ Θ_m(x*_t, x_i) g_i with g = ∂ℓ/∂f, the
    full-output empirical NTK at θ_T weighted by the loss derivatives.

    Args:
      fitted: the trained model.
      split_x: ``(n, d)`` raw training inputs (the attention's context).
      targets, targets_test: ``(n, C)`` / ``(n*, C)`` training targets of both splits.
      x_test: ``(n*, d)`` raw test inputs.
      block: training rows per gradient batch (memory: block·P).
    """
    spec = fitted.spec
    dtype = spec.dtype
    features = spec.features(split_x, split_x)
    features_test = spec.features(x_test, split_x)
    g_test = _loss_gradients(spec, fitted.loss, fitted.variables, features_test, jnp.asarray(targets_test, dtype))
    targets = jnp.asarray(targets, dtype)
    columns = []
    for start in range(0, features.shape[0], block):
        g = _loss_gradients(spec, fitted.loss, fitted.variables, features[start:start + block],
                            targets[start:start + block])
        columns.append(np.asarray(jnp.matmul(g_test, g.T, precision=lax_precision()), np.float64))  # the policy
    return np.concatenate(columns, axis=1)


def fitted_influence(
    fitted: FittedModel,
    X,
    labels,
    X_test,
    labels_test,
    *,
    n_classes: int,
    ridge: float,
    kernel: str,
    method: str,
    targets: str,
    train_config: TrainConfig = TrainConfig(),
) -> InfluenceResult:
    """Influence matrix of a trained model on (X, labels) → (X_test, labels_test).

    ``kernel`` in ``RIDGE_KERNELS``: kernel ridge influence (``method``,
    one-vs-rest ``targets``) on that kernel; "tracin": :func:`tracin_scores`
    with the network's training targets (``train_config.binary_output``).
    """
    if kernel == "tracin":
        out_dim = train_config.out_dim(n_classes)
        scores = tracin_scores(fitted, X, class_targets(labels, n_classes, out_dim), X_test,
                               class_targets(labels_test, n_classes, out_dim))
        outputs = np.asarray(fitted.outputs(X_test, X), np.float64)
        true = outputs[:, 0] if out_dim == 1 else outputs[np.arange(len(labels_test)), labels_test]
        result = InfluenceResult(scores, "tracin", "none", float("nan"), true, np.asarray(labels_test))
    else:
        k_train, k_test_train = model_kernels(fitted, X, X_test, kernel)
        result = influence_scores(
            k_train, k_test_train, one_vs_rest(labels, n_classes, targets), ridge, test_labels=labels_test,
            method=method,
        )
    return dataclasses.replace(
        result,
        kernel=kernel,
        targets=targets,
        model=fitted.spec.name,
        width=fitted.spec.head.width,
        train_losses=fitted.losses,
        health=fitted.health,
    )


def split_keys(seed: int) -> dict[str, jax.Array]:
    """Named PRNG keys derived from ``seed``: init, train (shuffles, PGD-AT), attack."""
    seed = check_int(seed, "seed", minimum=0)
    init, train_key, attack = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"init": init, "train": train_key, "attack": attack}


def influence(
    data=None,
    *,
    X=None,
    y=None,
    X_test=None,
    y_test=None,
    model="mlp-attn",
    width: int = 1024,
    ridge: float = 1e-3,
    seed: int = 0,
    kernel: str = "empirical",
    method: str = "loo",
    targets: str = "pm1",
    train_config=None,
    dtype="float64",
) -> InfluenceResult:
    """Train a model on data and return the influence of each training point on each test point.

    raw pixels → unit rows → (attention over the training set) → MLP head,
    trained with optax (``train_config``; defaults: AdamW 1e-3 with decoupled
    weight decay 1e-3, batch 128, 500 epochs; MSE on one ±1 output for two
    classes, cross-entropy for more) → kernel → ridge influence. The fit's
    training health is checked (a :class:`kernelattn.learning.training.TrainingWarning`
    when it did not train; an error under ``kernelattn.kernels.guards.strict()``)
    and returned in ``result.health``.

    Args:
      data: a ``Dataset``-like object (``X_train``, ``labels_train``,
        ``X_test``, ``labels_test``), or pass the arrays below instead.
      X, y, X_test, y_test: ``(n, d)`` / ``(n*, d)`` inputs and int labels
        (or one-hot rows).
      model: "relu" (2L-ReLU), "mlp-attn" (default) or a ``TwoLayerReLU`` /
        ``AttentionMLP`` instance.
      width: hidden width m (for a model given by name).
      ridge: λ > 0 (default 1e-3).
      seed: seeds the initialization and the shuffles.
      kernel: "empirical" (default: the NTK of the trained width-m network,
        the finite-width object the paper studies), "empirical-init" (its
        NTK at initialization), "infinite" (closed-form NTK of the head on
        the same features) or "tracin" (the trained network's own loss
        gradients, :func:`tracin_scores`; ``method`` and ``ridge`` unused).
      method: "loo" (exact leave-one-out, default) or "if" (influence function).
      targets: one-vs-rest ridge targets "pm1" (default) or "onehot".
      train_config: ``TrainConfig`` or dict of its fields.
      dtype: "float64" (default; needs ``kernelattn.enable_x64()``) or "float32"
        for the network and features; the kernel solves are always float64.

    Returns:
      :class:`InfluenceResult` with ``(n*, n)`` scores on each test point's
      true-class output.
    """
    dtype = resolve_dtype(dtype)
    method = check_choice(method, "method", INFLUENCE_METHODS)
    kernel = check_choice(kernel, "kernel", KERNELS)
    targets = check_choice(targets, "targets", TARGET_ENCODINGS)
    ridge = check_real(ridge, "ridge", minimum=0.0, strict_min=True)
    config = as_train_config(train_config)
    keys = split_keys(seed)
    split = resolve_data(data, X=X, y=y, X_test=X_test, y_test=y_test)
    spec = resolve_model(model, width, config.out_dim(split.n_classes), dtype)
    fitted = fit_model(spec, split.X, split.train_targets(config), key_init=keys["init"], key_train=keys["train"],
                       config=config)
    fitted = assess_fit(fitted, split, config, what=fit_label(spec, seed))
    result = fitted_influence(
        fitted, split.X, split.labels, split.X_test, split.labels_test,
        n_classes=split.n_classes, ridge=ridge, kernel=kernel, method=method, targets=targets, train_config=config,
    )
    return dataclasses.replace(result, seed=int(seed))


def warn_if_normalized(split: TrainTest) -> None:
    """Warn when the inputs look unit-normalized rather than raw pixels (ε is then on that scale)."""
    norms = np.linalg.norm(split.X, axis=1)
    if split.normalized or (split.normalized is None and np.allclose(norms, 1.0, atol=1e-6)):
        warnings.warn(
            "X: the training rows are already unit-normalized; attacks then act on that scale rather than on "
            "[0, 1] pixels, so epsilon is not comparable to the paper's. Load raw pixels "
            "(kernelattn.data.load(..., normalize=False)); the model re-normalizes them itself.",
            UserWarning,
            stacklevel=3,
        )
