"""The influence of a fitted network: its kernels, TracIn, and :func:`influence` from data (docs/math.md §9).

A :class:`~kernelattn.learning.fitting.FittedModel` gives influence through a
kernel — the empirical NTK at the trained parameters θ_T, the same at
initialization θ₀, or the closed-form infinite-width NTK on the same
features — fed to the kernel ridge mathematics of
:func:`kernelattn.learning.influence.influence_scores`; or through its own
loss gradients (TracIn, no kernel ridge). :class:`FitOptions` holds the
options every such pipeline shares (:func:`influence` here, ``prepare`` and
``malleability`` in ``kernelattn.experiments.malleability``), validated once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._precision import lax_precision, resolve_dtype
from kernelattn._validation import check_choice, check_int, check_real
from kernelattn.kernels.analytic import head_kernels, head_kernels_fn
from kernelattn.kernels.empirical import head_ntk_fn, structured_head_ntk
from kernelattn.learning.fitting import (
    FittedModel,
    HeadModel,
    as_train_config,
    assess_fit,
    fit_label,
    fit_model,
    flat_head,
    resolve_data,
    resolve_model,
    split_keys,
)
from kernelattn.learning.influence import (
    INFLUENCE_METHODS,
    TARGET_ENCODINGS,
    InfluenceResult,
    influence_scores,
    one_vs_rest,
)
from kernelattn.learning.training import TrainConfig, class_targets, loss_value
from kernelattn.models import HeadConfig

#: Where influence comes from: the empirical NTK at the trained parameters θ_T, the empirical NTK at
#: initialization θ₀, the infinite-width NTK (kernel ridge on each), or the trained network's own loss
#: gradients (TracIn at θ_T: no kernel ridge).
KERNELS = ("empirical", "empirical-init", "infinite", "tracin")
#: The kernels with a kernel ridge predictor (all but TracIn).
RIDGE_KERNELS = tuple(kernel for kernel in KERNELS if kernel != "tracin")


# =========================================================================== options


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """What to fit and how its influence is read: the options :func:`influence`, ``prepare`` and
    ``malleability`` (``kernelattn.experiments.malleability``) share, validated once on construction.

    Construction checks and normalizes every field (``dtype`` to a ``numpy.dtype``, ``train_config``
    to a ``TrainConfig``, ``seed`` to an int); ``dataclasses.replace`` validates again.

    Attributes:
      model: "relu" (2L-ReLU), "mlp-attn" (default) or a ``TwoLayerReLU`` / ``AttentionMLP``
        instance (its own width wins over ``width``).
      width: hidden width m of a model given by name (default 1024).
      ridge: λ > 0 of the kernel ridge fit (default 1e-3).
      seed: int ≥ 0; the PRNG keys of initialization, shuffles (and attacks) are split from
        ``PRNGKey(seed)`` (:meth:`keys`).
      kernel: the influence source: "empirical" (default: the NTK of the trained width-m network,
        the finite-width object the paper studies), "empirical-init" (its NTK at initialization),
        "infinite" (closed-form NTK of the head on the same features) or "tracin" (the trained
        network's own loss gradients, :func:`tracin_scores`; ``method`` and ``ridge`` unused).
      method: "loo" (exact leave-one-out, default) or "if" (influence function); the ``influence``
        keyword of ``prepare`` and ``malleability``.
      targets: one-vs-rest ridge targets "pm1" (default) or "onehot".
      train_config: ``TrainConfig``, a dict of its fields, or None (the defaults: AdamW 1e-3 with
        decoupled weight decay 1e-3, batch 128, 500 epochs; MSE on one ±1 output for two classes,
        cross-entropy for more).
      dtype: "float64" (default; needs ``kernelattn.enable_x64()``) or "float32" for the network
        and features; the kernel solves are always float64.
    """

    model: Any = "mlp-attn"
    width: int = 1024
    ridge: float = 1e-3
    seed: int = 0
    kernel: str = "empirical"
    method: str = "loo"
    targets: str = "pm1"
    train_config: TrainConfig | Mapping | None = None
    dtype: Any = "float64"

    def __post_init__(self) -> None:
        checked = {
            "dtype": resolve_dtype(self.dtype),
            "ridge": check_real(self.ridge, "ridge", minimum=0.0, strict_min=True),
            "kernel": check_choice(self.kernel, "kernel", KERNELS),
            # "influence method": the keyword is ``method`` here and ``influence`` in malleability.
            "method": check_choice(self.method, "influence method", INFLUENCE_METHODS),
            "targets": check_choice(self.targets, "targets", TARGET_ENCODINGS),
            "train_config": as_train_config(self.train_config),
            "seed": check_int(self.seed, "seed", minimum=0),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def keys(self) -> dict[str, jax.Array]:
        """The named PRNG keys of :attr:`seed` (``kernelattn.learning.fitting.split_keys``)."""
        return split_keys(self.seed)

    def head_model(self, n_classes: int) -> HeadModel:
        """The model for a task of ``n_classes`` classes (its output count from ``train_config``)."""
        return resolve_model(self.model, self.width, self.train_config.out_dim(n_classes), self.dtype)


# =========================================================================== kernels of a fitted model


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
        k = structured_head_ntk(flat_head(variables), spec.head, both, features, dtype="float64")
    k = np.asarray(k, np.float64)
    n = features.shape[0]
    return k[:n], k[n:]




def infinite_ntk_jnp(f1: jax.Array, f2: jax.Array | None, head: HeadConfig) -> jax.Array:
    """Differentiable closed-form NTK of the head (docs/math.md §6), ``(n1, n2)``; f2 = None means f1."""
    return head_kernels_fn(f1, f2, head).ntk


def empirical_ntk_jnp(f1: jax.Array, f2: jax.Array | None, head: HeadConfig, variables: dict) -> jax.Array:
    """Differentiable structured empirical NTK of the head (docs/math.md §7), output-traced, ``(n1, n2)``."""
    return head_ntk_fn(flat_head(variables), head, f1, f2)


@dataclasses.dataclass(frozen=True)
class RawKernel:
    """``(variables, queries, context=None) ↦ (n_q, n)`` kernel between raw queries and the raw training
    set ``context`` (``None``: the queries themselves), the attention rebuilt over ``context``.

    Compared by value (model and kernel name), so attacks through it compile once per configuration.
    """

    spec: HeadModel
    kernel: str

    def __call__(self, variables: dict, queries: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = queries if context is None else context
        f_context = self.spec.features(context, context)
        f_queries = f_context if queries is context else self.spec.features(queries, context)
        if self.kernel == "infinite":
            return infinite_ntk_jnp(f_queries, f_context, self.spec.head)
        return empirical_ntk_jnp(f_queries, f_context, self.spec.head, variables)


def kernel_function(fitted: FittedModel, kernel: str = "empirical") -> jax.tree_util.Partial:
    """``kernel_fn(queries, context=None)`` → K ``(n_q, n)`` in jnp: the kernel between raw queries and
    the raw training set ``context`` (``None``: the queries themselves), rebuilt from raw pixels with
    the attention over ``context``, differentiable in both — for attacks on the kernel predictor.
    A ``jax.tree_util.Partial`` of :class:`RawKernel` over the fit's variables."""
    kernel = check_choice(kernel, "kernel", RIDGE_KERNELS)
    variables = fitted.initial if kernel == "empirical-init" else fitted.variables
    return jax.tree_util.Partial(RawKernel(fitted.spec, kernel), variables)


def kernel_prediction(kernel_fn, context: jax.Array, alpha: jax.Array, queries: jax.Array) -> jax.Array:
    """``(n_q, C)`` kernel predictor K(queries, context) α (bind the first three with ``jax.tree_util.Partial``)."""
    return kernel_fn(queries, context) @ alpha


# =========================================================================== network gradients (TracIn)


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


# =========================================================================== influence of a fitted model, and from data


def fitted_influence(fitted: FittedModel, X, labels, X_test, labels_test, *, n_classes: int,
                     options: FitOptions) -> InfluenceResult:
    """Influence matrix of a trained model on (X, labels) → (X_test, labels_test).

    ``options.kernel`` in ``RIDGE_KERNELS``: kernel ridge influence (``options.method``, one-vs-rest
    ``options.targets``, ``options.ridge``) on that kernel; "tracin": :func:`tracin_scores` with the
    network's training targets (``options.train_config.binary_output``).

    Args:
      fitted: the trained model.
      X, X_test: ``(n, d)`` / ``(n*, d)`` raw inputs (both attend over X).
      labels, labels_test: ``(n,)`` / ``(n*,)`` int classes of ``n_classes``.
      options: the kernel, method, targets, ridge and training configuration.
    """
    kernel, targets = options.kernel, options.targets
    if kernel == "tracin":
        out_dim = options.train_config.out_dim(n_classes)
        scores = tracin_scores(fitted, X, class_targets(labels, n_classes, out_dim), X_test,
                               class_targets(labels_test, n_classes, out_dim))
        outputs = np.asarray(fitted.outputs(X_test, X), np.float64)
        true = outputs[:, 0] if out_dim == 1 else outputs[np.arange(len(labels_test)), labels_test]
        result = InfluenceResult(scores, "tracin", "none", float("nan"), true, np.asarray(labels_test))
    else:
        k_train, k_test_train = model_kernels(fitted, X, X_test, kernel)
        result = influence_scores(
            k_train, k_test_train, one_vs_rest(labels, n_classes, targets), options.ridge, test_labels=labels_test,
            method=options.method,
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


def influence(data=None, *, X=None, y=None, X_test=None, y_test=None, **options) -> InfluenceResult:
    """Train a model on data and return the influence of each training point on each test point.

    raw pixels → unit rows → (attention over the training set) → MLP head,
    trained with optax (``train_config``) → kernel → ridge influence. The
    fit's training health is checked (a :class:`kernelattn.learning.training.TrainingWarning`
    when it did not train; an error under ``kernelattn.kernels.guards.strict()``)
    and returned in ``result.health``.

    Args:
      data: a ``Dataset``-like object (``X_train``, ``labels_train``,
        ``X_test``, ``labels_test``), or pass the arrays below instead.
      X, y, X_test, y_test: ``(n, d)`` / ``(n*, d)`` inputs and int labels
        (or one-hot rows).
      **options: the fields of :class:`FitOptions` — ``model`` ("mlp-attn"),
        ``width`` (1024), ``ridge`` (1e-3), ``seed`` (0), ``kernel``
        ("empirical"), ``method`` ("loo"), ``targets`` ("pm1"),
        ``train_config`` (None: the defaults) and ``dtype`` ("float64").

    Returns:
      :class:`kernelattn.learning.influence.InfluenceResult` with ``(n*, n)``
      scores on each test point's true-class output.
    """
    options = FitOptions(**options)
    keys = options.keys()
    split = resolve_data(data, X=X, y=y, X_test=X_test, y_test=y_test)
    spec = options.head_model(split.n_classes)
    config = options.train_config
    fitted = fit_model(spec, split.X, split.train_targets(config), key_init=keys["init"], key_train=keys["train"],
                       config=config)
    fitted = assess_fit(fitted, split, config, what=fit_label(spec, options.seed))
    result = fitted_influence(fitted, split.X, split.labels, split.X_test, split.labels_test,
                              n_classes=split.n_classes, options=options)
    return dataclasses.replace(result, seed=options.seed)
