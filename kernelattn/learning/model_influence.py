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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._precision import resolve_dtype
from kernelattn._validation import check_choice, check_int, check_real
from kernelattn.errors import InputValueError
from kernelattn.kernels.analytic import head_kernels, head_kernels_fn
from kernelattn.kernels.empirical import empirical_ntk_fn, head_ntk_fn, structured_head_ntk
from kernelattn.learning.attribution import ATTRIBUTION_METHODS, gradient_products
from kernelattn.learning.fitting import (
    FittedModel,
    HeadModel,
    TrainTest,
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
from kernelattn.learning.model_attribution import (
    GradientModel,
    ModuleApply,
    gradient_attribution,
    head_gradient_model,
    module_gradient_model,
    takes_context,
    true_outputs,
)
from kernelattn.learning.training import TrainConfig, class_targets, train
from kernelattn.models import AttentionMLP, HeadConfig, TwoLayerReLU
from kernelattn.registry import is_user_model, model_entry

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
      method: the estimator (docs/math.md §9, §13): "loo" (exact leave-one-out of kernel ridge on
        ``kernel``, default) or "if" (its influence-function form, damping λ = ``ridge``); or from the
        network's own gradients at θ_T ("kernel" then unused): "tracin" (summed over ``checkpoints``
        of training), "grad-dot", "grad-cos", "representer" (the head's readout); or "trak" (the
        influence function on ``projection_dim`` random projections of the empirical NTK's features,
        at θ_T, or θ₀ with kernel "empirical-init"). The ``influence`` keyword of ``prepare`` and
        ``malleability``.
      targets: one-vs-rest ridge targets "pm1" (default) or "onehot".
      train_config: ``TrainConfig``; construction also takes a dict of its fields, or None (the
        defaults: AdamW 1e-3 with decoupled weight decay 1e-3, batch 128, 500 epochs; MSE on one ±1
        output for two classes, cross-entropy for more).
      dtype: "float64" (default; needs ``kernelattn.enable_x64()``) or "float32" for the network
        and features; the kernel solves are always float64.
      projection_dim: TRAK's projection dimension k (default 512).
      checkpoints: how many checkpoints of training TracIn sums over (default 5; the fit keeps them
        only for ``method="tracin"``).
    """

    model: Any = "mlp-attn"
    width: int = 1024
    ridge: float = 1e-3
    seed: int = 0
    kernel: str = "empirical"
    method: str = "loo"
    targets: str = "pm1"
    # Construction also takes a dict of its fields or None, normalized by ``as_train_config``.
    train_config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    dtype: Any = "float64"
    projection_dim: int = 512
    checkpoints: int = 5

    def __post_init__(self) -> None:
        checked = {
            "dtype": resolve_dtype(self.dtype),
            "ridge": check_real(self.ridge, "ridge", minimum=0.0, strict_min=True),
            "kernel": check_choice(self.kernel, "kernel", KERNELS),
            # "influence method": the keyword is ``method`` here and ``influence`` in malleability.
            "method": check_choice(self.method, "influence method", ATTRIBUTION_METHODS),
            "targets": check_choice(self.targets, "targets", TARGET_ENCODINGS),
            "train_config": as_train_config(self.train_config),
            "seed": check_int(self.seed, "seed", minimum=0),
            "projection_dim": check_int(self.projection_dim, "projection_dim", minimum=1),
            "checkpoints": check_int(self.checkpoints, "checkpoints", minimum=1),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if checked["method"] == "trak" and checked["kernel"] not in ("empirical", "empirical-init"):
            raise InputValueError(
                f"kernel: method='trak' projects the network's empirical NTK features; expected "
                f"kernel 'empirical' or 'empirical-init', got {checked['kernel']!r}"
            )

    @property
    def fit_checkpoints(self) -> int:
        """Checkpoints the fit keeps: :attr:`checkpoints` for TracIn, else 0."""
        return self.checkpoints if self.method == "tracin" else 0

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
    gram = np.asarray(k, np.float64)
    n = features.shape[0]
    return gram[:n], gram[n:]


def infinite_ntk_jnp(f1: jax.Array, f2: jax.Array | None, head: HeadConfig) -> jax.Array:
    """Differentiable closed-form NTK of the head (docs/math.md §6), ``(n1, n2)``; f2 = None means f1."""
    ntk = head_kernels_fn(f1, f2, head).ntk
    assert ntk is not None  # head_kernels_fn always computes the NTK
    return ntk


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


def tracin_scores(fitted: FittedModel, split_x, targets, x_test, targets_test, *, block: int = 128) -> np.ndarray:
    """TracIn at the trained parameters (Pruthi et al. 2020, one checkpoint): ``(n*, n)`` float64

        I(i, t) = ∇_θ ℓ(x*_t, y*_t) · ∇_θ ℓ(x_i, y_i),

    the first-order decrease of test point t's loss from a gradient step on
    training point i (positive: i helps t) — the network's own gradients, no
    kernel ridge. Equivalently g*_tᵀ Θ_m(x*_t, x_i) g_i with g = ∂ℓ/∂f, the
    full-output empirical NTK at θ_T weighted by the loss derivatives. The
    ``kernel="tracin"`` of :class:`FitOptions`: ``method="grad-dot"``
    (:func:`kernelattn.learning.attribution.gradient_products` at θ_T, weight 1).

    Args:
      fitted: the trained model.
      split_x: ``(n, d)`` raw training inputs (the attention's context).
      targets, targets_test: ``(n, C)`` / ``(n*, C)`` training targets of both splits.
      x_test: ``(n*, d)`` raw test inputs.
      block: training rows per gradient batch (memory: block·P).
    """
    spec = fitted.spec
    model = head_gradient_model(fitted, 1.0)
    scores, _ = gradient_products(
        model.apply_fn,
        fitted.loss,
        (model.params,),
        (1.0,),
        spec.features(split_x, split_x),
        targets,
        spec.features(x_test, split_x),
        targets_test,
        block=block,
    )
    return scores


# =========================================================================== influence of a fitted model, and from data


def fitted_influence(
    fitted: FittedModel, X, labels, X_test, labels_test, *, n_classes: int, options: FitOptions
) -> InfluenceResult:
    """Influence matrix of a trained model on (X, labels) → (X_test, labels_test).

    ``options.kernel`` in ``RIDGE_KERNELS`` and ``options.method`` "loo" / "if": kernel ridge influence
    (one-vs-rest ``options.targets``, ``options.ridge``) on that kernel; kernel "tracin":
    :func:`tracin_scores` with the network's training targets (``options.train_config.binary_output``);
    any other method: :func:`kernelattn.learning.model_attribution.gradient_attribution` on the head.

    Args:
      fitted: the trained model.
      X, X_test: ``(n, d)`` / ``(n*, d)`` raw inputs (both attend over X).
      labels, labels_test: ``(n,)`` / ``(n*,)`` int classes of ``n_classes``.
      options: the kernel, method, targets, ridge and training configuration.
    """
    kernel, targets = options.kernel, options.targets
    out_dim = options.train_config.out_dim(n_classes)
    if kernel == "tracin":
        train_targets = class_targets(labels, n_classes, out_dim)
        test_targets = class_targets(labels_test, n_classes, out_dim)
        scores = tracin_scores(fitted, X, train_targets, X_test, test_targets)
        true = true_outputs(np.asarray(fitted.outputs(X_test, X), np.float64), labels_test)
        result = InfluenceResult(scores, "tracin", "none", float("nan"), true, np.asarray(labels_test))
    elif options.method in INFLUENCE_METHODS:
        k_train, k_test_train = model_kernels(fitted, X, X_test, kernel)
        result = influence_scores(
            k_train,
            k_test_train,
            one_vs_rest(labels, n_classes, targets),
            options.ridge,
            test_labels=labels_test,
            method=options.method,
        )
    else:
        spec = fitted.spec
        model = head_gradient_model(fitted, options.train_config.learning_rate)
        result = network_attribution(
            model,
            spec.features(X, X),
            spec.features(X_test, X),
            labels,
            labels_test,
            n_classes=n_classes,
            out_dim=out_dim,
            options=options,
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


def network_attribution(
    model: GradientModel, x, x_test, labels, labels_test, *, n_classes: int, out_dim: int, options: FitOptions
) -> InfluenceResult:
    """:func:`kernelattn.learning.model_attribution.gradient_attribution` with ``options``' method,
    ridge, targets and projection on inputs ``x`` / ``x_test`` of ``model`` and int labels."""
    return gradient_attribution(
        model,
        x,
        class_targets(labels, n_classes, out_dim),
        x_test,
        class_targets(labels_test, n_classes, out_dim),
        options.method,
        ridge=options.ridge,
        ridge_targets=one_vs_rest(labels, n_classes, options.targets),
        test_labels=np.asarray(labels_test),
        projection_dim=options.projection_dim,
        key=options.keys()["attack"],
        at_init=options.kernel == "empirical-init",
    )


# =========================================================================== a user's Flax module


def user_module(model, width: int, out_dim: int):
    """The Flax module of ``model``: a ``"module:attr"`` constructor ``(width, out_dim, **options)``
    (``kernelattn.registry.model_entry``) called, or a module instance as is; ``None`` for kernelattn's
    own models (names and ``TwoLayerReLU`` / ``AttentionMLP`` instances)."""
    if is_user_model(model):
        return model_entry(model).network(width, out_dim)
    if isinstance(model, (str, TwoLayerReLU, AttentionMLP)) or not hasattr(model, "apply"):
        return None
    return model


def module_influence(module, variables, split: TrainTest, options: FitOptions) -> InfluenceResult:
    """Influence through a user's Flax module: trained here from ``options`` (``variables=None``) or
    taken at the given ``variables``; kernel ridge estimators on its empirical NTK by autodiff
    (``kernelattn.kernels.empirical.empirical_ntk_fn``), the others on its gradients.

    The module is called on the inputs as given (it does its own preprocessing) and must act row by
    row; one whose ``__call__`` takes a second argument gets the training inputs as context.
    """
    config, keys, dtype = options.train_config, options.keys(), options.dtype
    out_dim = config.out_dim(split.n_classes)
    X, X_test = jnp.asarray(split.X, dtype), jnp.asarray(split.X_test, dtype)
    targets = class_targets(split.labels, split.n_classes, out_dim)
    cast = functools.partial(jax.tree_util.tree_map, lambda v: jnp.asarray(v, dtype))
    context_args = (X,) if takes_context(module) else ()
    initial, checkpoints, losses = None, (), np.zeros(0)
    if variables is None:
        variables = initial_variables = cast(dict(module.init(keys["init"], X[:1], *context_args)))
        rest = {k: v for k, v in variables.items() if k != "params"}
        apply_fn = jax.tree_util.Partial(ModuleApply(module, bool(context_args)), rest, X)
        fit = train(
            apply_fn,
            variables["params"],
            np.asarray(X),
            targets,
            key=keys["train"],
            config=config,
            checkpoints=options.fit_checkpoints,
        )
        variables, initial = {**rest, "params": fit.params}, initial_variables["params"]
        checkpoints, losses = fit.checkpoints, fit.losses
    model = module_gradient_model(
        module,
        cast(dict(variables)),
        X,
        config.resolved_loss(out_dim),
        checkpoints=checkpoints,
        learning_rate=config.learning_rate,
        initial=initial,
    )
    width = model.outputs(X[:1]).shape[1]
    if width != out_dim:
        raise InputValueError(
            f"model: expected a module with {out_dim} outputs (1 for a binary task trained on ±1 "
            f"targets, else the number of classes), got {width}"
        )
    if options.kernel not in ("empirical", "empirical-init"):
        raise InputValueError(
            f"kernel: expected 'empirical' or 'empirical-init' for a user's module (it has no "
            f"closed-form kernel; TracIn is method='tracin'), got {options.kernel!r}"
        )
    if options.method in INFLUENCE_METHODS:
        at = model.initial if options.kernel == "empirical-init" else model.params
        if at is None:
            raise InputValueError(
                "kernel: 'empirical-init' needs the parameters at initialization, which are "
                "unknown for given variables; use kernel='empirical'"
            )
        # Any Flax module: rows may interact, so the whole-batch Jacobian contraction (vmap_axes=None).
        ntk = empirical_ntk_fn(lambda p, x: model.apply_fn(p, x), vmap_axes=None, implementation="jacobian")
        k = np.asarray(ntk(jnp.concatenate([X, X_test]), X, at), np.float64)
        n = X.shape[0]
        result = influence_scores(
            k[:n],
            k[n:],
            one_vs_rest(split.labels, split.n_classes, options.targets),
            options.ridge,
            test_labels=split.labels_test,
            method=options.method,
        )
    else:
        result = network_attribution(
            model,
            X,
            X_test,
            split.labels,
            split.labels_test,
            n_classes=split.n_classes,
            out_dim=out_dim,
            options=options,
        )
    return dataclasses.replace(
        result,
        kernel=options.kernel,
        targets=options.targets,
        model=type(module).__name__,
        seed=options.seed,
        train_losses=losses,
    )


def influence(data=None, *, X=None, y=None, X_test=None, y_test=None, variables=None, **options) -> InfluenceResult:
    """Train a model on data (or take a user's trained Flax module) and return the influence of each
    training point on each test point.

    kernelattn's models: raw pixels → unit rows → (attention over the
    training set) → MLP head, trained with optax (``train_config``) →
    kernel → ridge influence (or a network estimator, ``method``). The fit's
    training health is checked (a :class:`kernelattn.learning.training.TrainingWarning`
    when it did not train; an error under ``kernelattn.kernels.guards.strict()``)
    and returned in ``result.health``.

    Any other Flax module (``model=`` an instance, or a ``"module:attr"``
    constructor ``(width, out_dim)``): :func:`module_influence` — the kernel
    estimators on its empirical NTK by autodiff, trained here unless its
    ``variables`` are given.

    Args:
      data: a ``Dataset``-like object (``X_train``, ``labels_train``,
        ``X_test``, ``labels_test``), or pass the arrays below instead.
      X, y, X_test, y_test: ``(n, d)`` / ``(n*, d)`` inputs and int labels
        (or one-hot rows).
      variables: a user's module's trained Flax variables (``{"params": …}``);
        ``None``: initialize and train it.
      **options: the fields of :class:`FitOptions` — ``model`` ("mlp-attn"),
        ``width`` (1024), ``ridge`` (1e-3), ``seed`` (0), ``kernel``
        ("empirical"), ``method`` ("loo"), ``targets`` ("pm1"),
        ``train_config`` (None: the defaults), ``dtype`` ("float64"),
        ``projection_dim`` (512) and ``checkpoints`` (5).

    Returns:
      :class:`kernelattn.learning.influence.InfluenceResult` with ``(n*, n)``
      scores on each test point's true-class output, and each training
      point's self-influence.
    """
    fit_options = FitOptions(**options)
    keys = fit_options.keys()
    split = resolve_data(data, X=X, y=y, X_test=X_test, y_test=y_test)
    config = fit_options.train_config
    module = user_module(fit_options.model, fit_options.width, config.out_dim(split.n_classes))
    if module is not None:
        return dataclasses.replace(
            module_influence(module, variables, split, fit_options),
            model=(fit_options.model if isinstance(fit_options.model, str) else type(module).__name__),
        )
    if variables is not None:
        raise InputValueError(
            "variables: given variables are for a user's Flax module; kernelattn's own models "
            f"are trained here (model={fit_options.model!r})"
        )
    spec = fit_options.head_model(split.n_classes)
    fitted = fit_model(
        spec,
        split.X,
        split.train_targets(config),
        key_init=keys["init"],
        key_train=keys["train"],
        config=config,
        checkpoints=fit_options.fit_checkpoints,
    )
    fitted = assess_fit(fitted, split, config, what=fit_label(spec, fit_options.seed))
    result = fitted_influence(
        fitted, split.X, split.labels, split.X_test, split.labels_test, n_classes=split.n_classes, options=fit_options
    )
    return dataclasses.replace(result, seed=fit_options.seed)
