"""Training with optax, the linearized model, and infinite-width kernel predictors (MATH.md §8).

Defaults follow the paper: Adam, learning rate 1e-3, batch 128, 500 epochs,
L2 1e-3 (as coupled weight decay: the gradient of (λ/2)‖θ‖² is added before
Adam, like PyTorch's ``Adam(weight_decay=…)``), MSE for one output and
cross-entropy for several.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kernelattn._validation import check_choice, check_int, check_matrix, check_real

ApplyFn = Callable[[dict, jax.Array], jax.Array]
LOSSES = ("auto", "mse", "xent")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings (paper defaults).

    Attributes:
      learning_rate: Adam step size.
      batch_size: minibatch size (the last batch of an epoch may be smaller).
      epochs: passes over the training set.
      weight_decay: L2 coefficient λ (gradient λθ added before Adam).
      loss: "mse" (½ mean squared error), "xent" (softmax cross-entropy on
        one-hot targets) or "auto" (mse for one output, xent for several).
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 500
    weight_decay: float = 1e-3
    loss: str = "auto"

    def __post_init__(self):
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict_min=True)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.epochs, "epochs", minimum=0)
        check_real(self.weight_decay, "weight_decay", minimum=0.0)
        check_choice(self.loss, "loss", LOSSES)

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


@functools.lru_cache(maxsize=64)
def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with coupled L2: chain(add_decayed_weights(λ), adam(lr)).

    Cached per (frozen, hashable) config: the optimizer is a static argument of
    the jitted training loop, so the same object avoids a recompilation.
    """
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))


def _epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A shuffled epoch as ``(n_batches, batch_size)`` indices and 0/1 weights."""
    n_batches = -(-n // batch_size)
    order = jax.random.permutation(key, n)
    padded = jnp.concatenate([order, jnp.zeros(n_batches * batch_size - n, order.dtype)])
    weights = (jnp.arange(n_batches * batch_size) < n).astype(jnp.float32)
    return padded.reshape(n_batches, batch_size), weights.reshape(n_batches, batch_size)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of ``train``.

    Attributes:
      params: trained parameters.
      losses: ``(epochs,)`` mean training loss of each epoch (numpy float64).
    """

    params: dict
    losses: np.ndarray


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 8))
def _run_epochs(apply_fn, optimizer, loss, params, opt_state, x, y, keys, batch_size):
    def step(carry, batch):
        params, opt_state = carry
        idx, w = batch
        value, grads = jax.value_and_grad(lambda p: loss_value(apply_fn(p, x[idx]), y[idx], w.astype(x.dtype), loss))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    def epoch(carry, key):
        idx, w = _epoch_batches(key, x.shape[0], batch_size)
        carry, values = jax.lax.scan(step, carry, (idx, w))
        return carry, jnp.mean(values)

    (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), keys)
    return params, opt_state, losses


def train(
    apply_fn: ApplyFn,
    params: dict,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: jax.Array,
    config: TrainConfig = TrainConfig(),
) -> TrainResult:
    """Train ``apply_fn``'s parameters on (x, y) with minibatch Adam.

    Args:
      apply_fn: ``f(params, x) -> (n, C)``; for attention models it closes
        over the full training set as context, so a batch still attends to
        every training sample.
      params: initial trainable parameters.
      x: ``(n, d)`` training inputs.
      y: ``(n, C)`` targets (one-hot for cross-entropy; ``(n,)`` is read as C = 1).
      key: PRNG key for the epoch shuffles.
      config: ``TrainConfig``.

    Returns:
      ``TrainResult(params, losses)``.
    """
    x = check_matrix(x, "x")
    y = np.asarray(y)
    y = y[:, None] if y.ndim == 1 else y
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y: expected {x.shape[0]} rows to match x, got shape {y.shape}")
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    optimizer = make_optimizer(config)
    loss = config.resolved_loss(y.shape[1])
    batch_size = min(config.batch_size, x.shape[0])
    if config.epochs == 0:
        return TrainResult(params, np.zeros(0))
    keys = jax.random.split(key, config.epochs)
    params, _, losses = _run_epochs(apply_fn, optimizer, loss, params, optimizer.init(params), x, y, keys, batch_size)
    return TrainResult(params, np.asarray(losses, dtype=np.float64))


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
        from kernelattn.linalg import kernel_regression

        return kernel_regression(k_train, k_test_train, y, ridge)[0]
    check_real(time, "time", minimum=0.0)
    values, vectors = np.linalg.eigh((k_train + k_train.T) / 2)
    n = k_train.shape[0]
    values = np.maximum(values, 0.0)
    decay = -np.expm1(-learning_rate * values * time / n)
    safe = np.where(values > 0, values, 1.0)
    coefficients = vectors @ ((decay / safe)[:, None] * (vectors.T @ y.reshape(n, -1)))
    return (k_test_train @ coefficients).reshape((k_test_train.shape[0],) + y.shape[1:])
