"""ℓ∞ attacks on the whole training set: FGSM, PGD and MIM (docs/math.md §10).

Every attack maximizes a scalar loss L(X) of the *whole* ``(n, d)`` training
set at once. For a transductive model the loss couples all rows: with
parameter-free linearized attention, perturbing one training point moves every
attention output (train and test), so the gradient ∇_X L is taken through the
attention over the perturbed set — L is built by the caller (see
:func:`model_loss` and :func:`kernel_ridge_loss`) as

    raw pixels X → unit rows → attention over the same (perturbed) X → head → loss,

and the attacks only see a function of X. Each iterate is projected onto the
ℓ∞ ball of radius ε around the clean X and clipped to the valid input range
(default ``[0, 1]`` pixels); an optional row ``mask`` restricts the
perturbation to some training points (the others stay clean but still take
part in the loss and the attention).

- FGSM (Goodfellow et al. 2015): X' = Π(X + ε sign ∇L(X)).
- PGD (Madry et al. 2018): uniform random start in the ball, then ``steps``
  iterations X ← Π(X + η sign ∇L(X)); default η = 2.5 ε / steps. The last
  iterate is returned.
- MIM (Dong et al. 2018): g ← μ g + ∇L / ‖∇L‖₁ (ℓ1 norm per training point),
  X ← Π(X + η sign g); defaults μ = 1, η = ε / steps, no random start.

``fgsm``, ``pgd`` and ``mim`` are pure ``jax.numpy`` functions (jit them, or
call them inside a jitted function, as adversarial training does);
:func:`run_attack` validates its inputs, jit-compiles the chosen attack and
reports the losses before and after and the perturbation size actually used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kernelattn._validation import as_config, check_choice, check_int, check_matrix, check_real
from kernelattn.errors import InputValueError
from kernelattn.learning.training import as_traced_function, loss_value

LossFn = Callable[[jax.Array], jax.Array]
ATTACKS = ("fgsm", "pgd", "mim")
ATTACK_TARGETS = ("model", "kernel")
#: An attack that raised its objective by less than this fraction of |L(X)| is flagged "no-op".
NO_OP_GAIN = 0.01


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Settings of the iterative attacks (FGSM uses only ``bounds`` and ``target``).

    Attributes:
      steps: iterations of PGD / MIM (default 10).
      step_size: η; ``None`` → 2.5 ε / steps for PGD (Madry et al.), ε / steps
        for MIM (Dong et al.); FGSM always steps by ε.
      random_start: PGD starts from a uniform point of the ε-ball (default True).
      momentum: μ of MIM (default 1.0, Dong et al.).
      target: "model" — maximize the trained network's training loss (default);
        "kernel" — maximize the training loss of the kernel-ridge predictor,
        differentiating through the kernel of the perturbed data.
      bounds: valid input range ``(lo, hi)``, default ``(0.0, 1.0)`` pixels.
    """

    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    momentum: float = 1.0
    target: str = "model"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        check_int(self.steps, "attack_config.steps", minimum=1)
        if self.step_size is not None:
            check_real(self.step_size, "attack_config.step_size", minimum=0.0, strict_min=True)
        if not isinstance(self.random_start, bool):
            raise InputValueError(f"attack_config.random_start: expected a bool, got {self.random_start!r}")
        check_real(self.momentum, "attack_config.momentum", minimum=0.0)
        check_choice(self.target, "attack_config.target", ATTACK_TARGETS)
        bounds = tuple(self.bounds) if isinstance(self.bounds, (list, tuple)) else None
        if bounds is None or len(bounds) != 2:
            raise InputValueError(f"attack_config.bounds: expected a pair (lo, hi), got {self.bounds!r}")
        lo = check_real(bounds[0], "attack_config.bounds[0]")
        hi = check_real(bounds[1], "attack_config.bounds[1]")
        if not lo < hi:
            raise InputValueError(f"attack_config.bounds: expected lo < hi, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))

    def resolved_step_size(self, method: str, epsilon: float) -> float:
        """η actually used by ``method`` at radius ``epsilon``."""
        if method == "fgsm":
            return float(epsilon)
        if self.step_size is not None:
            return float(self.step_size)
        return (2.5 if method == "pgd" else 1.0) * float(epsilon) / self.steps


def as_attack_config(value: Any) -> AttackConfig:
    """``None`` → defaults; a dict → ``AttackConfig(**dict)``; an ``AttackConfig`` as is."""
    return as_config(value, AttackConfig, "attack_config")


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """Outcome of :func:`run_attack`.

    Attributes:
      x_adv: ``(n, d)`` perturbed training set (numpy, dtype of the input).
      method: "fgsm", "pgd" or "mim".
      epsilon: the ℓ∞ radius ε requested.
      steps: iterations run (1 for FGSM).
      step_size: η used.
      loss_clean: L(X).
      loss_adv: L(X').
      linf: max |X' − X|, the perturbation size actually used (≤ ε).
      mean_linf: mean over perturbed rows of ‖x'_i − x_i‖_∞.
      mean_l2: mean over perturbed rows of ‖x'_i − x_i‖_2.
      n_perturbed: number of rows allowed to move (the mask's support).
      loss_gain: (L(X') − L(X)) / |L(X)|, the attack's relative effect.
      effective: loss_gain ≥ ``NO_OP_GAIN``; False flags a "no-op" attack
        (its flip rates measure the rebuild on a barely moved objective).
    """

    x_adv: np.ndarray
    method: str
    epsilon: float
    steps: int
    step_size: float
    loss_clean: float
    loss_adv: float
    linf: float
    mean_linf: float
    mean_l2: float
    n_perturbed: int
    loss_gain: float = float("nan")
    effective: bool = True

    def summary(self) -> dict:
        """Scalars only (for reports and the result store)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "x_adv"}


# ------------------------------------------------------------------- pure cores


def project(x_adv: jax.Array, x: jax.Array, epsilon, mask: jax.Array, lo, hi) -> jax.Array:
    """Π: back into the ε-ball around ``x`` (rows with mask 0 reset to ``x``), then into [lo, hi]."""
    delta = jnp.clip(x_adv - x, -epsilon, epsilon) * mask
    return jnp.clip(x + delta, lo, hi)


def _mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones((x.shape[0], 1), x.dtype)
    return jnp.asarray(mask, x.dtype).reshape(x.shape[0], 1)


def finite_grad(loss_fn):
    """``jax.grad(loss_fn)`` with non-finite entries set to 0: those coordinates do not move in that step.

    The rank-r attention differentiates through an eigendecomposition, whose derivative divides by
    eigenvalue gaps (1/(λ_i − λ_j)) and is inf/NaN where the discarded tail of the spectrum is
    (near-)degenerate. A step then moves only the coordinates with a finite gradient; an attack left
    with none raises its loss by less than ``NO_OP_GAIN`` and is flagged no-op.
    """
    grad = jax.grad(loss_fn)

    def finite(x):
        g = grad(x)
        return jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))

    return finite


def fgsm(loss_fn: LossFn, x: jax.Array, epsilon, *, mask=None, bounds=(0.0, 1.0)) -> jax.Array:
    """Fast gradient sign method: Π(X + ε sign ∇L(X)).

    Args:
      loss_fn: L, ``(n, d) → ()``, differentiable.
      x: ``(n, d)`` clean training set, inside ``bounds``.
      epsilon: ℓ∞ radius ε ≥ 0.
      mask: optional ``(n,)`` 0/1, the rows allowed to move.
      bounds: valid range ``(lo, hi)``.

    Returns:
      ``(n, d)`` perturbed set.
    """
    m = _mask(x, mask)
    g = finite_grad(loss_fn)(x)
    return project(x + epsilon * jnp.sign(g), x, epsilon, m, *bounds)


def pgd(
    loss_fn: LossFn,
    x: jax.Array,
    epsilon,
    *,
    key: jax.Array,
    steps: int = 10,
    step_size=None,
    random_start: bool = True,
    mask=None,
    bounds=(0.0, 1.0),
) -> jax.Array:
    """Projected gradient descent (ascent on L) with sign steps, last iterate.

    Args:
      loss_fn, x, epsilon, mask, bounds: as in :func:`fgsm`.
      key: PRNG key of the random start.
      steps: iterations (static under jit).
      step_size: η; ``None`` → 2.5 ε / steps.
      random_start: start from X + U(−ε, ε) (projected), else from X.
    """
    m = _mask(x, mask)
    eta = 2.5 * epsilon / steps if step_size is None else step_size
    start = x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * epsilon if random_start else x
    x0 = project(start, x, epsilon, m, *bounds)
    grad = finite_grad(loss_fn)

    def body(_, x_adv):
        return project(x_adv + eta * jnp.sign(grad(x_adv)), x, epsilon, m, *bounds)

    return jax.lax.fori_loop(0, steps, body, x0)


def mim(
    loss_fn: LossFn,
    x: jax.Array,
    epsilon,
    *,
    steps: int = 10,
    step_size=None,
    momentum=1.0,
    mask=None,
    bounds=(0.0, 1.0),
) -> jax.Array:
    """Momentum iterative method: g ← μ g + ∇L/‖∇L‖₁ (per row), X ← Π(X + η sign g).

    Args:
      loss_fn, x, epsilon, mask, bounds: as in :func:`fgsm`.
      steps: iterations (static under jit).
      step_size: η; ``None`` → ε / steps.
      momentum: μ ≥ 0.
    """
    m = _mask(x, mask)
    eta = epsilon / steps if step_size is None else step_size
    grad = finite_grad(loss_fn)
    tiny = jnp.finfo(x.dtype).tiny

    def body(_, carry):
        x_adv, velocity = carry
        g = grad(x_adv) * m
        velocity = momentum * velocity + g / jnp.maximum(jnp.sum(jnp.abs(g), axis=1, keepdims=True), tiny)
        return project(x_adv + eta * jnp.sign(velocity), x, epsilon, m, *bounds), velocity

    x_adv, _ = jax.lax.fori_loop(0, steps, body, (x, jnp.zeros_like(x)))
    return x_adv


# ------------------------------------------------------------------ loss builders


@dataclasses.dataclass(frozen=True)
class _MeanTrainingLoss:
    """L(X) = mean ``loss`` of ``outputs_fn(X)`` against ``targets`` (compared by value: one compilation)."""

    loss: str

    def __call__(self, outputs_fn, targets, x):
        return loss_value(outputs_fn(x), targets, jnp.ones(targets.shape[0], targets.dtype), self.loss)


@dataclasses.dataclass(frozen=True)
class _KernelRidgeResidual:
    """L(X) = ½ mean_i ‖λ ((K(X) + λI)⁻¹ Y)_i‖², the in-sample residual of kernel ridge regression."""

    ridge: float

    def __call__(self, kernel_fn, targets, x):
        k = kernel_fn(x)
        k = (k + k.T) / 2 + self.ridge * jnp.eye(k.shape[0], dtype=k.dtype)
        residual = self.ridge * jnp.linalg.solve(k, targets)
        return 0.5 * jnp.mean(jnp.sum(residual**2, axis=1))


def _predictor_squared_error(predict_fn, targets, x):
    return 0.5 * jnp.mean(jnp.sum((targets - predict_fn(x)) ** 2, axis=1))


def _as_columns(targets) -> jax.Array:
    targets = jnp.asarray(targets)
    return targets[:, None] if targets.ndim == 1 else targets


def model_loss(outputs_fn: Callable[[jax.Array], jax.Array], targets: ArrayLike, loss: str = "xent") -> LossFn:
    """L(X) = mean training loss of a fixed, trained model on the (perturbed) training set.

    Args:
      outputs_fn: X ↦ ``(n, C)`` outputs of every training point; for a
        transductive model it must rebuild the attention over X itself.
      targets: ``(n, C)`` training targets (one-hot for "xent").
      loss: "xent" (softmax cross-entropy) or "mse" (½‖f − y‖²), as in training.

    Returns:
      L as a ``jax.tree_util.Partial``: with ``outputs_fn`` itself a ``Partial`` of a
      value-comparable callable (:func:`kernelattn.learning.training.as_traced_function`),
      :func:`run_attack` compiles once per configuration and shapes.
    """
    return jax.tree_util.Partial(_MeanTrainingLoss(loss), as_traced_function(outputs_fn), jnp.asarray(targets))


def kernel_ridge_loss(kernel_fn: Callable[[jax.Array], jax.Array], targets: ArrayLike, ridge: float) -> LossFn:
    """L(X) = ½ mean_i ‖y_i − f(x_i)‖² of the kernel-ridge fit f = K (K + λI)⁻¹ Y on X.

    The in-sample residual is Y − K(K + λI)⁻¹Y = λ (K + λI)⁻¹ Y, so the loss
    is differentiated through one linear solve of the kernel built from X.

    Args:
      kernel_fn: X ↦ ``(n, n)`` kernel of the (perturbed) training set, in jnp.
      targets: ``(n, C)`` regression targets.
      ridge: λ > 0.

    Returns:
      L as a ``jax.tree_util.Partial`` (see :func:`model_loss`).
    """
    return jax.tree_util.Partial(
        _KernelRidgeResidual(float(ridge)), as_traced_function(kernel_fn), _as_columns(targets)
    )


def kernel_predictor_loss(predict_fn: Callable[[jax.Array], jax.Array], targets: ArrayLike) -> LossFn:
    """L(X*) = ½ mean_t ‖y*_t − f(x*_t)‖² of a fixed kernel predictor f on (perturbed) test points.

    Args:
      predict_fn: X* ↦ ``(n*, C)`` predictions, e.g. K(X*, X) α with α = (K + λI)⁻¹ Y fitted on the
        clean training set.
      targets: ``(n*, C)`` targets of the test points.

    Returns:
      L as a ``jax.tree_util.Partial`` (see :func:`model_loss`).
    """
    return jax.tree_util.Partial(_predictor_squared_error, as_traced_function(predict_fn), _as_columns(targets))


# --------------------------------------------------------------------- public entry


def check_in_bounds(x: np.ndarray, bounds: tuple[float, float], name: str = "X") -> None:
    """ValueError unless every entry of ``x`` lies in ``[lo, hi]``."""
    lo, hi = bounds
    below, above = float(np.min(x)), float(np.max(x))
    if below < lo or above > hi:
        raise InputValueError(
            f"{name}: expected inputs inside the attack's valid range [{lo:g}, {hi:g}] (raw pixels; "
            f"load data with normalize=False, or set attack_config bounds), got values in [{below:g}, {above:g}]"
        )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _attack_and_evaluate(loss_fn, method, config, x, mask, key, epsilon, eta):
    """One compiled program: the attack and L before and after.

    ``loss_fn`` is a ``jax.tree_util.Partial`` (its arrays traced), so the program is compiled once
    per (loss function's callables, method, config) and shapes; ε and η are traced too.
    """
    if method == "fgsm":
        x_adv = fgsm(loss_fn, x, epsilon, mask=mask, bounds=config.bounds)
    elif method == "pgd":
        x_adv = pgd(
            loss_fn,
            x,
            epsilon,
            key=key,
            steps=config.steps,
            step_size=eta,
            random_start=config.random_start,
            mask=mask,
            bounds=config.bounds,
        )
    else:
        x_adv = mim(
            loss_fn,
            x,
            epsilon,
            steps=config.steps,
            step_size=eta,
            momentum=config.momentum,
            mask=mask,
            bounds=config.bounds,
        )
    return x_adv, loss_fn(x), loss_fn(x_adv)


def run_attack(
    loss_fn: LossFn,
    x,
    *,
    method: str = "pgd",
    epsilon: float = 0.3,
    key: jax.Array | None = None,
    config: AttackConfig | Mapping | None = None,
    mask=None,
) -> AttackResult:
    """Validate, jit-compile and run one attack on the whole training set.

    Args:
      loss_fn: L, ``(n, d) → ()`` in jnp, differentiable (see :func:`model_loss`).
      x: ``(n, d)`` clean training set inside ``config.bounds``.
      method: "fgsm", "pgd" or "mim".
      epsilon: ℓ∞ radius ε ≥ 0.
      key: PRNG key (PGD's random start); default ``PRNGKey(0)``.
      config: :class:`AttackConfig` (or a dict of its fields).
      mask: optional ``(n,)`` bool/0-1: which rows may be perturbed.

    Returns:
      An :class:`AttackResult`.
    """
    method = check_choice(str(method).lower(), "attack", ATTACKS)
    epsilon = check_real(epsilon, "epsilon", minimum=0.0)
    config = as_attack_config(config)
    x = check_matrix(x, "X")
    check_in_bounds(x, config.bounds)
    n = x.shape[0]
    if mask is None:
        mask_np = np.ones(n, bool)
    else:
        mask_np = np.asarray(mask)
        if mask_np.shape != (n,):
            raise InputValueError(f"mask: expected shape ({n},) to match X, got {mask_np.shape}")
        mask_np = mask_np.astype(bool)
    key = jax.random.PRNGKey(0) if key is None else key
    xj = jnp.asarray(x)
    mj = jnp.asarray(mask_np, xj.dtype)
    eta = config.resolved_step_size(method, epsilon)
    steps = 1 if method == "fgsm" else config.steps
    x_adv, loss_clean, loss_adv = _attack_and_evaluate(
        as_traced_function(loss_fn),
        method,
        config,
        xj,
        mj,
        key,
        jnp.asarray(epsilon, xj.dtype),
        jnp.asarray(eta, xj.dtype),
    )
    loss_clean, loss_adv = float(loss_clean), float(loss_adv)
    x_adv = np.asarray(x_adv)
    delta = (x_adv - x)[mask_np]
    return AttackResult(
        x_adv=x_adv,
        method=method,
        epsilon=epsilon,
        steps=steps,
        step_size=eta,
        loss_clean=loss_clean,
        loss_adv=loss_adv,
        linf=float(np.max(np.abs(x_adv - x))) if x_adv.size else 0.0,
        mean_linf=float(np.mean(np.max(np.abs(delta), axis=1))) if delta.size else 0.0,
        mean_l2=float(np.mean(np.linalg.norm(delta, axis=1))) if delta.size else 0.0,
        n_perturbed=int(mask_np.sum()),
        loss_gain=attack_gain(loss_clean, loss_adv),
        effective=attack_gain(loss_clean, loss_adv) >= NO_OP_GAIN,
    )


def attack_gain(loss_clean: float, loss_adv: float) -> float:
    """Relative increase (L(X') − L(X)) / |L(X)| of the attacked objective (0 when both are 0)."""
    if loss_adv == loss_clean:
        return 0.0
    return (loss_adv - loss_clean) / max(abs(loss_clean), np.finfo(np.float64).tiny)
