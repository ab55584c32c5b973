"""Training with optax, the linearized model, and infinite-width kernel predictors (docs/math.md §8).

Defaults follow the paper where it is explicit — Adam, learning rate 1e-3,
batch 128, 500 epochs, L2 coefficient 1e-3, MSE on one ±1 output for binary
tasks and cross-entropy for several classes — and are our documented choice
where it is not: the L2 term is applied as **decoupled** weight decay (AdamW,
Loshchilov & Hutter 2019: θ ← θ − η (adam(∇L) + λ θ)). The coupled form (the
gradient λθ added before Adam, PyTorch's ``Adam(weight_decay=…)``) is offered
as ``weight_decay_mode="coupled"``; on NTK-parameterized weights (W ~ N(0, 1),
h = x W/√d) its λθ is d times stronger than in standard parameterization and
dominates the loss gradient (11–42× per entry on digits at width 256): Adam
then shrinks W and the networks do not train (docs/math.md §8).

:func:`training_health` measures whether a fit trained (final loss against
the loss of predicting 0, accuracy against chance, how far the weights and
the ReLU patterns moved); :func:`check_health` warns
(:class:`TrainingWarning`), or raises :class:`UntrainedError` under
``kernelattn.kernels.guards.strict()``, for a fit that did not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from kernelattn._precision import precision_policy, resolve_precision
from kernelattn._validation import check_choice, check_int, check_matrix, check_real
from kernelattn.errors import InputValueError, KernelattnError
from kernelattn.kernels import guards
from kernelattn.kernels.linalg import kernel_regression

ApplyFn = Callable[[dict, jax.Array], jax.Array]
LOSSES = ("auto", "mse", "xent")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
BINARY_OUTPUTS = ("pm1", "onehot")
#: A fit is "not trained" when its final loss stays above this fraction of the chance loss …
UNTRAINED_LOSS_FRACTION = 0.9
#: … or its training accuracy is within this many points (fraction) of chance.
UNTRAINED_ACCURACY_MARGIN = 0.02
#: Mean pairwise cosine of the head's inputs above which they count as collapsed (docs/math.md §10.1).
COLLAPSED_FEATURE_COSINE = 0.99


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings (paper defaults).

    Attributes:
      learning_rate: Adam step size.
      batch_size: minibatch size (the last batch of an epoch may be smaller).
      epochs: passes over the training set.
      weight_decay: L2 coefficient λ.
      weight_decay_mode: "decoupled" (default, AdamW: λθ added to Adam's
        update, scaled by the learning rate) or "coupled" (λθ added to the
        gradient before Adam).
      loss: "mse" (½ mean squared error), "xent" (softmax cross-entropy on
        one-hot targets) or "auto" (mse for one output, xent for several).
      binary_output: how a 2-class task is trained: "pm1" (default, the
        paper's: one output, targets ±1, so "auto" gives MSE) or "onehot"
        (two outputs, one-hot targets, "auto" gives cross-entropy).
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 500
    weight_decay: float = 1e-3
    loss: str = "auto"
    weight_decay_mode: str = "decoupled"
    binary_output: str = "pm1"

    def __post_init__(self):
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict_min=True)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.epochs, "epochs", minimum=0)
        check_real(self.weight_decay, "weight_decay", minimum=0.0)
        check_choice(self.loss, "loss", LOSSES)
        check_choice(self.weight_decay_mode, "weight_decay_mode", WEIGHT_DECAY_MODES)
        check_choice(self.binary_output, "binary_output", BINARY_OUTPUTS)

    def out_dim(self, n_classes: int) -> int:
        """Network outputs for ``n_classes`` classes: 1 for a binary task with ±1 targets, else C."""
        return 1 if n_classes == 2 and self.binary_output == "pm1" else n_classes

    def resolved_loss(self, out_dim: int) -> str:
        """The loss actually used for ``out_dim`` outputs."""
        return ("mse" if out_dim == 1 else "xent") if self.loss == "auto" else self.loss


def loss_value(outputs: jax.Array, targets: jax.Array, weights: jax.Array, loss: str) -> jax.Array:
    """Weighted mean loss over rows.

    Args:
      outputs: ``(b, C)`` network outputs.
      targets: ``(b, C)`` targets (one-hot for "xent").
      weights: ``(b,)`` row weights (0 for padding).
      loss: "mse" or "xent".
    """
    if loss == "mse":
        per_row = 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)
    else:
        per_row = optax.softmax_cross_entropy(outputs, targets)
    return jnp.sum(per_row * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def class_targets(labels: np.ndarray, n_classes: int, out_dim: int) -> np.ndarray:
    """Training targets ``(n, out_dim)`` float64: ±1 (class 1 → +1) for one output, else one-hot rows."""
    labels = np.asarray(labels)
    if out_dim == 1:
        return np.where(labels == 1, 1.0, -1.0)[:, None]
    return np.eye(n_classes, dtype=np.float64)[labels]


def predicted_labels(outputs: np.ndarray) -> np.ndarray:
    """Class predictions ``(n,)`` of ``(n, C)`` outputs: argmax, or 1[f > 0] for one ±1 output."""
    outputs = np.asarray(outputs)
    return (outputs[:, 0] > 0).astype(np.int64) if outputs.shape[1] == 1 else np.argmax(outputs, axis=1)


@functools.lru_cache(maxsize=64)
def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with L2: AdamW (decoupled, default) or chain(add_decayed_weights(λ), adam(lr)) (coupled).

    Cached per (frozen, hashable) config: the optimizer is a static argument of
    the jitted training loop, so the same object avoids a recompilation.
    """
    if config.weight_decay_mode == "decoupled":
        return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))


def epoch_batches(key: jax.Array, n: int, batch_size: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """A shuffled epoch as ``(n_batches, batch_size)`` int indices and 0/1 weights in ``dtype`` (the last
    batch padded with index 0 at weight 0)."""
    n_batches = -(-n // batch_size)
    order = jax.random.permutation(key, n)
    padded = jnp.concatenate([order, jnp.zeros(n_batches * batch_size - n, order.dtype)])
    weights = (jnp.arange(n_batches * batch_size) < n).astype(dtype)
    return padded.reshape(n_batches, batch_size), weights.reshape(n_batches, batch_size)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of ``train``.

    Attributes:
      params: trained parameters.
      losses: ``(epochs,)`` mean training loss of each epoch (numpy float64).
      checkpoints: the parameters at the end of each of the ``checkpoints`` equal runs of epochs
        :func:`train` was asked for (the last is ``params``); empty when none were asked for.
    """

    params: dict
    losses: np.ndarray
    checkpoints: tuple = ()


def as_traced_function(fn: Callable) -> jax.tree_util.Partial:
    """``fn`` as a jit *argument*: a ``jax.tree_util.Partial``, whose bound arrays are traced and whose
    function (compared with ``==``) keys the compilation cache.

    A ``Partial`` of a value-comparable callable (a frozen dataclass with ``__call__``) over arrays
    compiles once per configuration and shapes, however many fits, seeds or attacks use it; any other
    callable is wrapped as is and compiles once per function object, as a static argument would.
    """
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


@functools.partial(jax.jit, static_argnums=(1, 2, 8, 9))
def _run_epochs(apply_fn, optimizer, loss, params, opt_state, x, y, keys, batch_size, precision="highest"):
    """The epochs of :func:`train`, traced inside ``precision_policy(precision)``: the model's
    matmuls that name no precision (and their gradients) run at the policy's.

    ``apply_fn`` is a ``jax.tree_util.Partial`` (:func:`as_traced_function`); the optimizer comes from
    the cached :func:`make_optimizer`, so one configuration compiles once per shape."""
    with precision_policy(precision):
        return _epochs(apply_fn, optimizer, loss, params, opt_state, x, y, keys, batch_size)


def _epochs(apply_fn, optimizer, loss, params, opt_state, x, y, keys, batch_size):
    def step(carry, batch):
        params, opt_state = carry
        idx, w = batch

        def batch_loss(p):
            return loss_value(apply_fn(p, x[idx]), y[idx], w.astype(x.dtype), loss)

        value, grads = jax.value_and_grad(batch_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    def epoch(carry, key):
        idx, w = epoch_batches(key, x.shape[0], batch_size)
        carry, values = jax.lax.scan(step, carry, (idx, w))
        return carry, jnp.mean(values)

    (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), keys)
    return params, opt_state, losses


def train(
    apply_fn: ApplyFn,
    params: dict,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: jax.Array,
    config: TrainConfig = TrainConfig(),
    precision=None,
    checkpoints: int = 0,
) -> TrainResult:
    """Train ``apply_fn``'s parameters on (x, y) with minibatch Adam.

    Args:
      apply_fn: ``f(params, x) -> (n, C)``; for attention models it closes
        over the full training set as context, so a batch still attends to
        every training sample. A ``jax.tree_util.Partial`` of a value-comparable
        callable over arrays (see :func:`as_traced_function`) compiles once for
        every fit of the same configuration and shapes; a closure compiles per object.
      params: initial trainable parameters.
      x: ``(n, d)`` training inputs.
      y: ``(n, C)`` targets (one-hot for cross-entropy; ``(n,)`` is read as C = 1).
      key: PRNG key for the epoch shuffles.
      config: ``TrainConfig``.
      precision: matmul precision of the forward and backward passes,
        "highest" (``Precision.HIGHEST``) or "fast" (the device's default:
        TF32 on recent GPUs); None → the policy in force
        (``kernelattn.precision_policy``, default "highest"). Applies to the
        model's matmuls that name no precision of their own (kernelattn's
        models default to the policy in force).
      checkpoints: 0 (default) or c ≥ 1: also keep the parameters after each of c runs of
        ⌈epochs / c⌉ epochs (the last run shorter, fewer runs when epochs < c; TracIn's
        checkpoints). The runs continue one
        another (parameters, optimizer state and the epoch keys), so training is the same.

    Returns:
      ``TrainResult(params, losses, checkpoints)``.
    """
    checkpoints = check_int(checkpoints, "checkpoints", minimum=0)
    precision = resolve_precision(precision)
    x = check_matrix(x, "x")
    y = np.asarray(y)
    y = y[:, None] if y.ndim == 1 else y
    if y.shape[0] != x.shape[0]:
        raise InputValueError(f"y: expected {x.shape[0]} rows to match x, got shape {y.shape}")
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    optimizer = make_optimizer(config)
    loss = config.resolved_loss(y.shape[1])
    batch_size = min(config.batch_size, x.shape[0])
    if config.epochs == 0:
        return TrainResult(params, np.zeros(0))
    keys = jax.random.split(key, config.epochs)
    apply_fn, opt_state = as_traced_function(apply_fn), optimizer.init(params)
    if checkpoints == 0:
        params, _, losses = _run_epochs(apply_fn, optimizer, loss, params, opt_state, x, y, keys, batch_size, precision)
        return TrainResult(params, np.asarray(losses, dtype=np.float64))
    run = -(-config.epochs // checkpoints)
    saved, losses = [], []
    for start in range(0, config.epochs, run):
        params, opt_state, run_losses = _run_epochs(
            apply_fn, optimizer, loss, params, opt_state, x, y, keys[start : start + run], batch_size, precision
        )
        saved.append(params)
        losses.append(np.asarray(run_losses, dtype=np.float64))
    return TrainResult(params, np.concatenate(losses), tuple(saved))


def linearize(apply_fn: ApplyFn, params0: dict) -> ApplyFn:
    """First-order Taylor model f_lin(θ, x) = f(θ₀, x) + J(θ₀, x)(θ − θ₀).

    Returns a function with the same signature as ``apply_fn``.
    """

    def apply_lin(params, x):
        delta = jax.tree_util.tree_map(lambda p, p0: p - p0, params, params0)
        out, tangent = jax.jvp(lambda p: apply_fn(p, x), (params0,), (delta,))
        return out + tangent

    return apply_lin


def ntk_predictor(
    k_train: np.ndarray,
    k_test_train: np.ndarray,
    y: np.ndarray,
    *,
    time: float | None = None,
    learning_rate: float = 1.0,
    ridge: float = 0.0,
) -> np.ndarray:
    """Infinite-width NTK predictor of MSE gradient flow (Lee et al. 2019), float64.

    f_t(X*) = Θ*ᵀ Θ⁻¹ (I − exp(−η Θ t / n)) y  (zero initial function; MSE
    ½‖f − y‖²/n), and t = None gives the t → ∞ limit Θ*ᵀ (Θ + λI)⁻¹ y.

    Args:
      k_train: ``(n, n)`` NTK on the training set.
      k_test_train: ``(n*, n)`` NTK between test and train points.
      y: ``(n,)`` or ``(n, C)`` targets.
      time: training time t (in steps of ``learning_rate``), or None for ∞.
      learning_rate: η.
      ridge: λ ≥ 0 (t = ∞ only).

    Returns:
      ``(n*,)`` or ``(n*, C)`` predictions.
    """
    k_train = np.asarray(k_train, np.float64)
    k_test_train = np.asarray(k_test_train, np.float64)
    y = np.asarray(y, np.float64)
    if time is None:
        return kernel_regression(k_train, k_test_train, y, ridge)[0]
    check_real(time, "time", minimum=0.0)
    values, vectors = np.linalg.eigh((k_train + k_train.T) / 2)
    n = k_train.shape[0]
    values = np.maximum(values, 0.0)
    decay = -np.expm1(-learning_rate * values * time / n)
    safe = np.where(values > 0, values, 1.0)
    coefficients = vectors @ ((decay / safe)[:, None] * (vectors.T @ y.reshape(n, -1)))
    return (k_test_train @ coefficients).reshape((k_test_train.shape[0], *y.shape[1:]))


# =========================================================================== training health


class TrainingWarning(UserWarning):
    """A network fit did not train (see :func:`training_health`)."""


class UntrainedError(KernelattnError, ValueError):
    """Raised instead of :class:`TrainingWarning` under ``kernelattn.kernels.guards.strict()``."""


@dataclasses.dataclass(frozen=True)
class TrainingHealth:
    """Did a fit train, and how lazily?

    Attributes:
      final_loss: mean training loss of the trained network (full batch).
      chance_loss: the same loss of the zero function (ln C for
        cross-entropy, ½ mean ‖y‖² for MSE: ½ for ±1 targets).
      loss_ratio: final_loss / chance_loss.
      train_accuracy, test_accuracy: fraction of correct class predictions
        (test NaN when no test set was given).
      chance_accuracy: the majority-class fraction of the training labels.
      weight_change: ‖θ − θ₀‖ / ‖θ₀‖ over the trainable parameters (lazy
        training keeps it ≪ 1).
      varying_units: fraction of hidden units whose ReLU pattern 1[h > 0]
        is not the same on every training point (a unit on, or off,
        everywhere cannot tell the points apart).
      pattern_change: fraction of (training point, unit) ReLU patterns that
        differ between initialization and the trained network.
      feature_cosine: mean pairwise cosine similarity of the head's inputs
        over the training points (MLP-Attn: its attention features).
      trained: False when loss_ratio > ``UNTRAINED_LOSS_FRACTION`` or
        train_accuracy − chance_accuracy < ``UNTRAINED_ACCURACY_MARGIN``.
      reasons: why not trained (empty when trained).
      collapsed: feature_cosine > ``COLLAPSED_FEATURE_COSINE``: the head's
        inputs barely differ across samples (MLP-Attn's attention collapse).
    """

    final_loss: float
    chance_loss: float
    loss_ratio: float
    train_accuracy: float
    test_accuracy: float
    chance_accuracy: float
    weight_change: float
    varying_units: float
    pattern_change: float
    feature_cosine: float
    trained: bool
    reasons: tuple[str, ...] = ()
    collapsed: bool = False

    def to_dict(self) -> dict:
        """Plain scalars (``reasons`` joined by "; ") for the result store."""
        out = dataclasses.asdict(self)
        out["reasons"] = "; ".join(self.reasons)
        return out

    def summary(self) -> str:
        """One line: loss against chance, accuracies, and the verdict."""
        verdict = "trained" if self.trained else "NOT TRAINED (" + "; ".join(self.reasons) + ")"
        return (
            f"loss {self.final_loss:.4g} (chance {self.chance_loss:.4g}), train acc {self.train_accuracy:.3f}, "
            f"test acc {self.test_accuracy:.3f} (chance {self.chance_accuracy:.3f}), "
            f"‖θ−θ₀‖/‖θ₀‖ {self.weight_change:.3g}, feature cosine {self.feature_cosine:.4f}: {verdict}"
        )


def _tree_norm(tree) -> float:
    leaves = jax.tree_util.tree_leaves(tree)
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(leaf, np.float64))) for leaf in leaves)))


def mean_pairwise_cosine(features: np.ndarray) -> float:
    """Mean cosine similarity over pairs i ≠ j of the rows of ``(n, d)`` features (NaN for n < 2)."""
    f = np.asarray(features, np.float64)
    if f.shape[0] < 2:
        return math.nan
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    total = np.sum(f.sum(axis=0) ** 2) - np.sum(f * f)
    return float(total / (f.shape[0] * (f.shape[0] - 1)))


def training_health(
    *,
    loss: str,
    targets: np.ndarray,
    labels: np.ndarray,
    outputs: np.ndarray,
    params,
    initial_params,
    hidden: np.ndarray | None,
    hidden_initial: np.ndarray | None,
    features: np.ndarray,
    labels_test: np.ndarray | None = None,
    outputs_test: np.ndarray | None = None,
) -> TrainingHealth:
    """Training-health diagnostics of one fit (pure numpy on the fit's arrays).

    Args:
      loss: "mse" or "xent", the training loss.
      targets: ``(n, C)`` training targets; labels: ``(n,)`` int classes.
      outputs: ``(n, C)`` trained network outputs on the training points.
      params, initial_params: trainable parameter pytrees after / before training.
      hidden, hidden_initial: ``(n, m)`` hidden pre-activations on the
        training points, trained / at initialization (None: the pattern
        diagnostics are NaN).
      features: ``(n, d)`` the head's inputs on the training points.
      labels_test, outputs_test: optional ``(n*,)`` / ``(n*, C)`` test labels and outputs.
    """
    targets = np.asarray(targets, np.float64)
    outputs = np.asarray(outputs, np.float64)
    y = jnp.asarray(targets)
    ones = jnp.ones(targets.shape[0], y.dtype)
    final = float(loss_value(jnp.asarray(outputs, y.dtype), y, ones, loss))
    chance = float(loss_value(jnp.zeros_like(y), y, ones, loss))
    labels = np.asarray(labels)
    train_acc = float(np.mean(predicted_labels(outputs) == labels))
    test_acc = math.nan
    if outputs_test is not None and labels_test is not None and len(labels_test):
        test_acc = float(np.mean(predicted_labels(np.asarray(outputs_test)) == np.asarray(labels_test)))
    chance_acc = float(np.max(np.bincount(labels)) / labels.size)
    delta = jax.tree_util.tree_map(
        lambda p, p0: np.asarray(p, np.float64) - np.asarray(p0, np.float64), params, initial_params
    )
    patterns = np.zeros((0, 0), bool) if hidden is None else np.asarray(hidden) > 0
    patterns0 = np.zeros((0, 0), bool) if hidden_initial is None else np.asarray(hidden_initial) > 0
    ratio = final / chance if chance > 0 else math.nan
    reasons = []
    if ratio > UNTRAINED_LOSS_FRACTION:
        reasons.append(
            f"final loss {final:.4g} is {ratio:.3f} of the chance loss {chance:.4g} (> {UNTRAINED_LOSS_FRACTION})"
        )
    if train_acc - chance_acc < UNTRAINED_ACCURACY_MARGIN:
        reasons.append(
            f"train accuracy {train_acc:.3f} within {UNTRAINED_ACCURACY_MARGIN:.0%} of chance {chance_acc:.3f}"
        )
    cosine = mean_pairwise_cosine(features)
    return TrainingHealth(
        final_loss=final,
        chance_loss=chance,
        loss_ratio=ratio,
        train_accuracy=train_acc,
        test_accuracy=test_acc,
        chance_accuracy=chance_acc,
        weight_change=_tree_norm(delta) / max(_tree_norm(initial_params), np.finfo(np.float64).tiny),
        varying_units=float(np.mean(patterns.any(axis=0) & ~patterns.all(axis=0))) if patterns.size else math.nan,
        pattern_change=float(np.mean(patterns != patterns0)) if patterns.size else math.nan,
        feature_cosine=cosine,
        trained=not reasons,
        reasons=tuple(reasons),
        collapsed=bool(cosine > COLLAPSED_FEATURE_COSINE),
    )


def check_health(health: TrainingHealth, what: str) -> TrainingHealth:
    """Warn (:class:`TrainingWarning`) about a fit that did not train; raise :class:`UntrainedError`
    under ``kernelattn.kernels.guards.strict()``; nothing under ``guards.policy("ignore")``.

    Args:
      health: the fit's :func:`training_health`.
      what: names the fit in the message (e.g. "mlp-attn, width 256, seed 0").
    """
    if health.trained:
        return health
    action = guards.current_policy().action
    cause = (
        f"; its head inputs are nearly identical across samples (mean pairwise cosine "
        f"{health.feature_cosine:.4f}), the attention collapse of docs/math.md §10.1"
        if health.collapsed
        else ""
    )
    message = (
        f"{what}: the network did not train — "
        + "; ".join(health.reasons)
        + cause
        + ". Its influence and malleability numbers describe an untrained network (raise the learning rate "
        "or the epochs; with weight_decay_mode='coupled', lower weight_decay)"
    )
    if action == "raise":
        raise UntrainedError(message)
    if action == "warn":
        warnings.warn(message, TrainingWarning, stacklevel=3)
    return health
