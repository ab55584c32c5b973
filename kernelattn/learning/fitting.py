"""Fitting a model for an influence experiment: validated data, the model as a function of raw pixels, its training.

raw pixels → unit rows → (parameter-free attention over the training set) →
MLP head trained with optax (:func:`kernelattn.learning.training.train`),
with its training health assessed. The kernels and influence of the fitted
model are :mod:`kernelattn.learning.model_influence`; PGD adversarial
training is :mod:`kernelattn.learning.adversarial`.
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
from jax.typing import ArrayLike

from kernelattn._precision import resolve_dtype
from kernelattn._validation import as_config, check_int, check_matrix, check_row_range
from kernelattn.errors import InputValueError
from kernelattn.learning.training import (
    TrainConfig,
    TrainingHealth,
    check_health,
    class_targets,
    train,
    training_health,
)
from kernelattn.models import (
    AttentionMLP,
    HeadConfig,
    MLPHead,
    TwoLayerReLU,
    canonical_model_name,
    head_preactivations,
    make_model,
)
from kernelattn.transforms import AttentionConfig, attend

SUPPORTED_MODELS = ("relu", "mlp-attn")


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
        raise InputValueError(
            f"{name}: expected ({n},) class labels or ({n}, C) one-hot targets to match the inputs, got shape {y.shape}"
        )
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
            raise InputValueError(
                "data: expected an object with X_train, labels_train, X_test, labels_test, "
                f"got {type(data).__name__} lacking {missing}"
            )
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
        raise InputValueError(
            f"{'X' if X is None else 'X_test'}: expected an (n, d) array (or pass data=...), got None"
        )
    # Leave-one-out needs at least two training points to leave one out of.
    # Every model scales its input rows to unit norm first: a zero row has no direction, and a row
    # whose squared norm overflows (float32: beyond ~1e16) would become 0 or NaN without a word.
    hint = "every model scales its input rows to unit norm, which a zero row does not have; drop them"
    X = check_matrix(X, "X", min_rows=2, allow_zero_rows=False, zero_row_hint=hint).astype(np.float64)
    X_test = check_matrix(X_test, "X_test", n_cols=X.shape[1], allow_zero_rows=False, zero_row_hint=hint).astype(
        np.float64
    )
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


# =========================================================================== the model


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

    def features(self, queries: ArrayLike, context: ArrayLike) -> jax.Array:
        """``(n_q, d)`` head inputs of raw ``queries`` given the raw training set ``context``."""
        return _features(self.attention, jnp.asarray(queries, self.dtype), jnp.asarray(context, self.dtype))

    def apply(self, variables: dict, features: jax.Array) -> jax.Array:
        """Head outputs ``(n_q, C)`` on precomputed features."""
        return _apply(self.head, self.dtype, variables, features)

    def outputs(self, variables: dict, queries: jax.Array, context: jax.Array) -> jax.Array:
        """Model outputs ``(n_q, C)`` on raw queries, attending over the raw training set."""
        return self.apply(variables, self.features(queries, context))

    def init(self, key: jax.Array, features: jax.Array) -> dict:
        """Head variables ``{"params": {"W", ["b"], ["a"]}, ["constants": {"a"}]}``, N(0, 1) / ±1."""
        return _init(self.head, self.dtype, key, jnp.asarray(features, self.dtype))


# Jitted with only what each part depends on static (frozen, hashable configurations): one
# compilation per configuration and shape instead of one per primitive in eager mode, and the
# features of every head, the head of every model (2L-ReLU and MLP-Attn train the same head
# program on features of the same shape) compiled once.
@functools.partial(jax.jit, static_argnums=0)
def _features(attention: AttentionConfig | None, queries, context):
    queries = unit_rows(queries)
    if attention is None:
        return queries
    return attend(queries, unit_rows(context), attention)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(head: HeadConfig, dtype, variables, features):
    return MLPHead(head, dtype).apply(variables, features)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(head: HeadConfig, dtype, key, features):
    variables = MLPHead(head, dtype).init(key, features)
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), dict(variables))


@dataclasses.dataclass(frozen=True)
class HeadApply:
    """``(rest, params, features) ↦ (n, C)`` head outputs, the non-trainable collections ``rest`` passed in.

    Compared by value (the head's configuration and dtype, not the model's: the head is trained on
    precomputed features): ``jax.tree_util.Partial(HeadApply(spec.head, spec.dtype), rest)`` is the
    ``apply_fn`` of :func:`kernelattn.learning.training.train`, compiled once per head configuration.
    """

    head: HeadConfig
    dtype: Any

    def __call__(self, rest: dict, params: dict, features: jax.Array) -> jax.Array:
        return _apply(self.head, self.dtype, {"params": params, **rest}, features)


@dataclasses.dataclass(frozen=True)
class RawOutputs:
    """``(variables, context, queries) ↦ (n_q, C)`` outputs on raw queries attending over the raw
    ``context`` (``None``: the queries themselves, the transductive training-set view).

    Compared by value, so attack objectives built from it compile once per model configuration.
    """

    spec: HeadModel

    def __call__(self, variables: dict, context: jax.Array | None, queries: jax.Array) -> jax.Array:
        return self.spec.outputs(variables, queries, queries if context is None else context)


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
            raise InputValueError(
                f"model: expected one of {list(SUPPORTED_MODELS)} or a TwoLayerReLU/AttentionMLP "
                f"instance, got {model!r}"
            )
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
        raise InputValueError(
            f"model: expected a head with out_dim = {out_dim} (the network outputs: 1 for a "
            f"binary task trained on ±1 targets, else the number of classes), got {head.out_dim}"
        )
    return HeadModel(name, head, attention, jnp.dtype(dtype))


# =========================================================================== fitting


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
      checkpoints: the variables at the end of each run of epochs (``fit_model(checkpoints=c)``,
        TracIn's checkpoints; the last are ``variables``), or ``()``.
    """

    spec: HeadModel
    variables: dict
    initial: dict
    losses: np.ndarray
    training: str = "standard"
    loss: str = "xent"
    health: TrainingHealth | None = None
    checkpoints: tuple = ()

    def outputs(self, queries, context) -> jax.Array:
        """``(n_q, C)`` outputs on raw queries attending over the raw training set."""
        return self.spec.outputs(self.variables, queries, context)

    def outputs_fn(self, context: jax.Array | None = None) -> jax.tree_util.Partial:
        """``queries ↦ (n_q, C)`` outputs attending over ``context`` (``None``: over the queries
        themselves), as a ``jax.tree_util.Partial`` whose arrays are traced (see :class:`RawOutputs`)."""
        return jax.tree_util.Partial(RawOutputs(self.spec), self.variables, context)


def flat_head(variables: dict) -> dict:
    """``{"W", ["b"], "a"}`` from head variables ``{"params": …, ["constants": {"a"}]}``."""
    return {**variables["params"], **variables.get("constants", {})}


def as_train_config(value: Any) -> TrainConfig:
    """``None`` → paper defaults; a dict → ``TrainConfig(**dict)``; a ``TrainConfig`` as is."""
    return as_config(value, TrainConfig, "train_config")


def split_keys(seed: int) -> dict[str, jax.Array]:
    """Named PRNG keys derived from ``seed``: init, train (shuffles, PGD-AT), attack."""
    seed = check_int(seed, "seed", minimum=0)
    init, train_key, attack = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"init": init, "train": train_key, "attack": attack}


def fit_model(
    spec: HeadModel, X, targets, *, key_init: jax.Array, key_train: jax.Array, config: TrainConfig, checkpoints: int = 0
) -> FittedModel:
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
      checkpoints: keep the variables after each of this many runs of epochs (0: none;
        :func:`kernelattn.learning.training.train`).
    """
    features = spec.features(X, X)
    initial = spec.init(key_init, features)
    params, rest = initial["params"], {k: v for k, v in initial.items() if k != "params"}

    apply_fn = jax.tree_util.Partial(HeadApply(spec.head, spec.dtype), rest)
    result = train(
        apply_fn,
        params,
        np.asarray(features),
        np.asarray(targets),
        key=key_train,
        config=config,
        checkpoints=checkpoints,
    )
    loss = config.resolved_loss(np.asarray(targets).shape[1])
    saved = tuple({"params": p, **rest} for p in result.checkpoints)
    return FittedModel(
        spec, {"params": result.params, **rest}, initial, result.losses, "standard", loss, checkpoints=saved
    )


def assess_fit(fitted: FittedModel, split: TrainTest, config: TrainConfig, *, what: str) -> FittedModel:
    """The fit with its :class:`TrainingHealth` on ``split``, checked (warning, or error under
    ``guards.strict()``, when it did not train; ``what`` names it in the message)."""
    spec = fitted.spec
    features = spec.features(split.X, split.X)
    head, head0 = flat_head(fitted.variables), flat_head(fitted.initial)
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
