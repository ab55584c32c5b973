"""Influence malleability: how far perturbing the training data moves a model's influence scores (docs/math.md §10).

Procedure (:func:`malleability`):

1. Train the model on clean raw pixels (standard training, or PGD adversarial
   training with ``training="pgd-at"``) and compute the influence matrix
   I (n* × n) of its kernel (:mod:`kernelattn.learning.influence`).
2. Intervene on the training data, then **rebuild everything that depends on
   X** at the trained parameters: unit-row preprocessing, the transductive
   attention of the training *and* test points over the perturbed training
   set, the head's features, the kernel (empirical NTK at the trained
   parameters, or infinite-width NTK), the ridge fit and the influence matrix
   I'. With ``retrain=True`` the network is also retrained on the new data
   from the same initialization and keys (off by default: the network is the
   object under attack, and for adversarial training the comparison is between
   two fixed trained networks).
3. Compare I and I' test point by test point (:func:`compare_influence`).

Interventions (the "top-τ points" are the ⌈τ n⌉ training points of largest
mean |I| over the test points, one shared set since the training set is
shared):

- ``"adversarial"``: every training point perturbed by the attack (default);
- ``"transformed"``: only the top-τ points perturbed (the attack maximizes
  the loss on the whole training set but moves only those rows);
- ``"curated"``: the top-τ points removed; I' has n − ⌈τ n⌉ columns and the
  metrics are computed on the remaining points (I restricted to them).

Metrics, per test point t, then mean and std over test points:

- flip rate: among the k = ⌈τ n'⌉ training points with the largest |I[t]|
  (n' = columns compared), the fraction whose sign differs in I'[t]
  (the paper's headline metric; τ = 0.1);
- Spearman ρ between I[t] and I'[t] (average ranks for ties; NaN when a row
  is constant);
- top-k overlap |top_k(|I[t]|) ∩ top_k(|I'[t]|)| / k with the same k.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from kernelattn.experiments import specs
from kernelattn.kernels import memory
from kernelattn._precision import precision_policy, resolve_dtype, resolve_precision
from kernelattn._validation import check_choice, check_real
from kernelattn.learning.attacks import (
    ATTACK_TARGETS,
    ATTACKS,
    AttackConfig,
    as_attack_config,
    check_in_bounds,
    kernel_predictor_loss,
    kernel_ridge_loss,
    model_loss,
    pgd,
    run_attack,
)
from kernelattn.errors import InputValueError
from kernelattn.learning.influence import (
    INFLUENCE_METHODS,
    KERNELS,
    TARGET_ENCODINGS,
    FittedModel,
    HeadModel,
    InfluenceResult,
    RIDGE_KERNELS,
    TrainTest,
    as_train_config,
    assess_fit,
    fit_label,
    fit_model,
    fitted_influence,
    kernel_function,
    one_vs_rest,
    resolve_data,
    resolve_model,
    split_keys,
    warn_if_normalized,
)
from kernelattn.kernels.empirical import DEFAULT_WIDTH_CHUNK
from kernelattn.learning.training import TrainConfig, class_targets, loss_value, make_optimizer

INTERVENTIONS = ("adversarial", "transformed", "test", "curated")
#: Null baselines: no perturbation, the network retrained with another initialization and data order
#: ("seed"), with another data order only ("order"), or with the very same keys ("rerun": exactly 0,
#: a determinism check).
NULL_KINDS = ("seed", "order", "rerun")
#: Folded into the PRNG keys of a null refit (any fixed constant: it only has to differ from the fit's).
_NULL_FOLD = 7919
TRAININGS = ("standard", "pgd-at")
EPSILON_SWEEP = (0.1, 0.2, 0.3, 0.5)


# =========================================================================== metrics


def top_count(n: int, tau: float) -> int:
    """k = ⌈τ n⌉ (at least 1): how many training points count as "top-τ"."""
    return max(1, min(n, math.ceil(tau * n - 1e-9)))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """``(n*, k)`` column indices of the k largest |scores| of each row (stable order)."""
    return np.argsort(-np.abs(scores), axis=1, kind="stable")[:, :k]


def flip_rates(I: np.ndarray, I_prime: np.ndarray, tau: float = 0.1) -> np.ndarray:  # noqa: N803
    """Per test point, the fraction of its top-τ points by |I| whose sign differs in I'. ``(n*,)``."""
    top = _top(I, top_count(I.shape[1], tau))
    before = np.take_along_axis(np.sign(I), top, axis=1)
    after = np.take_along_axis(np.sign(I_prime), top, axis=1)
    return np.mean(before != after, axis=1)


def spearman_rows(I: np.ndarray, I_prime: np.ndarray) -> np.ndarray:  # noqa: N803
    """Per test point, Spearman's ρ between I[t] and I'[t] (NaN for a constant row). ``(n*,)``."""
    a = scipy.stats.rankdata(I, axis=1)
    b = scipy.stats.rankdata(I_prime, axis=1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    numerator = np.sum(a * b, axis=1)
    denominator = np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    out = np.full(I.shape[0], np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def topk_overlaps(I: np.ndarray, I_prime: np.ndarray, tau: float = 0.1) -> np.ndarray:  # noqa: N803
    """Per test point, |top_k(|I|) ∩ top_k(|I'|)| / k with k = ⌈τ n⌉. ``(n*,)``."""
    k = top_count(I.shape[1], tau)
    a, b = _top(I, k), _top(I_prime, k)
    return np.array([np.intersect1d(x, y).size / k for x, y in zip(a, b)])


def compare_influence(I, I_prime, tau: float = 0.1) -> dict[str, np.ndarray]:  # noqa: N803
    """Flip rate, Spearman ρ and top-k overlap of two ``(n*, n)`` influence matrices, per test point.

    Raises:
      ValueError: shapes differ, or τ outside (0, 1].
    """
    tau = check_real(tau, "tau", minimum=0.0, maximum=1.0, strict_min=True)
    I, I_prime = np.asarray(I, np.float64), np.asarray(I_prime, np.float64)  # noqa: N806
    if I.ndim != 2 or I.shape != I_prime.shape:
        raise InputValueError(f"I_prime: expected the shape of I {I.shape}, got {I_prime.shape}")
    return {
        "flip_rate": flip_rates(I, I_prime, tau),
        "spearman": spearman_rows(I, I_prime),
        "topk_overlap": topk_overlaps(I, I_prime, tau),
    }


def influential_points(I: np.ndarray, tau: float) -> np.ndarray:  # noqa: N803
    """The ⌈τ n⌉ training points of largest mean |I| over test points (sorted indices)."""
    k = top_count(I.shape[1], tau)
    return np.sort(np.argsort(-np.mean(np.abs(I), axis=0), kind="stable")[:k])


# =========================================================================== adversarial training


def _epoch_batches(key, n: int, batch_size: int, dtype):
    n_batches = -(-n // batch_size)
    order = jax.random.permutation(key, n)
    padded = jnp.concatenate([order, jnp.zeros(n_batches * batch_size - n, order.dtype)])
    weights = (jnp.arange(n_batches * batch_size) < n).astype(dtype)
    return padded.reshape(n_batches, batch_size), weights.reshape(n_batches, batch_size)


def adversarial_fit(
    spec: HeadModel,
    X,
    targets,
    *,
    key_init: jax.Array,
    key_train: jax.Array,
    config: TrainConfig,
    epsilon: float,
    attack_config: AttackConfig,
) -> FittedModel:
    """PGD adversarial training (Madry et al. 2018), transductive.

    Each epoch: PGD (``attack_config``: steps, step size, random start,
    bounds) perturbs the whole training set jointly to maximize the current
    network's training loss, with gradients through the attention over the
    perturbed set; then one epoch of minibatch Adam (``config``, the same
    optimizer as ``kernelattn.learning.training.train``) on the perturbed set, whose
    features attend over the perturbed set. One jit-compiled loop.

    Returns:
      :class:`FittedModel` with ``training="pgd-at"`` and the per-epoch mean
      adversarial training loss.
    """
    dtype = spec.dtype
    x = jnp.asarray(X, dtype)
    y = jnp.asarray(targets, dtype)
    initial = spec.init(key_init, spec.features(x, x))
    params, rest = initial["params"], {k: v for k, v in initial.items() if k != "params"}
    if config.epochs == 0:
        return FittedModel(spec, initial, initial, np.zeros(0), "pgd-at", config.resolved_loss(y.shape[1]))
    opt_state = make_optimizer(config).init(params)
    eta = attack_config.resolved_step_size("pgd", epsilon)
    params, losses = _adversarial_epochs(
        spec, config, attack_config, min(config.batch_size, x.shape[0]), params, rest, opt_state, x, y,
        jax.random.split(key_train, config.epochs), jnp.asarray(epsilon, dtype), jnp.asarray(eta, dtype),
    )
    return FittedModel(spec, {"params": params, **rest}, initial, np.asarray(losses, np.float64), "pgd-at",
                       config.resolved_loss(y.shape[1]))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _adversarial_epochs(spec, config, attack_config, batch_size, params, rest, opt_state, x, y, keys, epsilon, eta):
    """The PGD-AT loop, compiled once per (model, configs, batch size) and shapes."""
    n = x.shape[0]
    loss = config.resolved_loss(y.shape[1])
    optimizer = make_optimizer(config)
    ones = jnp.ones(n, x.dtype)

    def epoch(carry, key):
        params, opt_state = carry
        k_attack, k_order = jax.random.split(key)

        def full_loss(x_adv):
            return loss_value(spec.outputs({"params": params, **rest}, x_adv, x_adv), y, ones, loss)

        x_adv = pgd(
            full_loss, x, epsilon, key=k_attack, steps=attack_config.steps, step_size=eta,
            random_start=attack_config.random_start, bounds=attack_config.bounds,
        )
        features = spec.features(jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(x_adv))
        idx, w = _epoch_batches(k_order, n, batch_size, x.dtype)

        def step(carry, batch):
            params, opt_state = carry
            i, wb = batch
            value, grads = jax.value_and_grad(
                lambda p: loss_value(spec.apply({"params": p, **rest}, features[i]), y[i], wb, loss)
            )(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        carry, values = jax.lax.scan(step, (params, opt_state), (idx, w))
        return carry, jnp.mean(values)

    (params, _), losses = jax.lax.scan(epoch, (params, opt_state), keys)
    return params, losses


# =========================================================================== experiment


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A clean model and its influence matrix, ready for interventions (see :func:`prepare`).

    Compared and hashed by identity (it caches its attack objectives).
    """

    split: TrainTest
    fitted: FittedModel
    clean: InfluenceResult
    kernel: str
    ridge: float
    method: str
    targets: str
    train_config: TrainConfig
    training: str
    at_epsilon: float | None
    attack_config: AttackConfig
    seed: int
    keys: dict


def _fit(spec, X, labels, n_classes, *, keys, config, training, at_epsilon, attack_config) -> FittedModel:
    targets = class_targets(labels, n_classes, config.out_dim(n_classes))
    if training == "standard":
        return fit_model(spec, X, targets, key_init=keys["init"], key_train=keys["train"], config=config)
    return adversarial_fit(
        spec, X, targets, key_init=keys["init"], key_train=keys["train"], config=config,
        epsilon=at_epsilon, attack_config=attack_config,
    )


def prepare(
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
    influence: str = "loo",
    targets: str = "pm1",
    training: str = "standard",
    at_epsilon: float = 0.3,
    train_config=None,
    attack_config=None,
    dtype="float64",
    attack_targets: Sequence[str] = (),
    fitted: FittedModel | None = None,
) -> Experiment:
    """Validate the inputs, plan the memory, train on clean data and compute the clean influence matrix I.

    Arguments as in :func:`malleability`; ``at_epsilon`` is the radius of
    PGD adversarial training (``training="pgd-at"``); ``attack_targets``:
    the attack targets ("model", "kernel") to include in the memory plan.
    Before anything is trained, :func:`plan_memory` refuses a model whose
    training, influence kernel or attacks would not fit (``MemoryPlanError``).
    ``fitted``: the clean fit of an earlier ``prepare`` with the same data,
    model, width, seed, training and configs (say, for another influence
    kernel), reused instead of training again.
    """
    dtype = resolve_dtype(dtype)
    ridge = check_real(ridge, "ridge", minimum=0.0, strict_min=True)
    kernel = check_choice(kernel, "kernel", KERNELS)
    influence = check_choice(influence, "influence", INFLUENCE_METHODS)
    targets = check_choice(targets, "targets", TARGET_ENCODINGS)
    training = check_choice(training, "training", TRAININGS)
    at_epsilon = check_real(at_epsilon, "at_epsilon", minimum=0.0)
    config = as_train_config(train_config)
    attack_config = as_attack_config(attack_config)
    keys = split_keys(seed)
    split = resolve_data(data, X=X, y=y, X_test=X_test, y_test=y_test)
    if kernel not in RIDGE_KERNELS and attack_config.target == "kernel":
        raise InputValueError(f"attack_config.target: 'kernel' attacks a kernel ridge predictor, but kernel={kernel!r} "
                              f"has none; expected kernel in {list(RIDGE_KERNELS)} or target 'model'")
    spec = resolve_model(model, width, config.out_dim(split.n_classes), dtype)
    for target in attack_targets:
        check_choice(target, "attack_targets[]", ATTACK_TARGETS)
    plan_memory(split.X.shape[0], split.X_test.shape[0], split.X.shape[1], spec.head, config=config, kernel=kernel,
                training=training, dtype=dtype, attack_targets=tuple(attack_targets))
    if fitted is None:
        fitted = _fit(
            spec, split.X, split.labels, split.n_classes, keys=keys, config=config, training=training,
            at_epsilon=at_epsilon, attack_config=attack_config,
        )
        fitted = assess_fit(fitted, split, config, what=fit_label(spec, seed, training))
    clean = fitted_influence(
        fitted, split.X, split.labels, split.X_test, split.labels_test, n_classes=split.n_classes,
        ridge=ridge, kernel=kernel, method=influence, targets=targets, train_config=config,
    )
    return Experiment(
        split, fitted, dataclasses.replace(clean, seed=int(seed)), kernel, ridge, influence, targets, config,
        training, at_epsilon if training == "pgd-at" else None, attack_config, int(seed), keys,
    )


@dataclasses.dataclass(frozen=True)
class MalleabilityReport:
    """Result of one malleability measurement.

    Attributes:
      model, kernel, influence, training, intervention, attack: what was run
        (``attack`` is "none" for the curated intervention and the null
        baselines, whose ``intervention`` is "null-seed", "null-order" or
        "null-rerun").
      epsilon, tau, ridge, seed, width: settings.
      n_train, n_test: sizes of the clean split.
      top_k: k = ⌈τ n'⌉ points per test point entering flip rate and overlap.
      flip_rate, spearman, topk_overlap: means over test points (NaN-ignoring
        for ρ); ``*_std``: their standard deviations over test points.
      flip_rates, spearmans, topk_overlaps_per_test: ``(n*,)`` per-test-point values.
      influence_clean: I, ``(n*, n)``; influence_perturbed: I', ``(n*, n')``.
      columns: ``(n',)`` indices (into the clean training set) of I''s columns.
      intervened: indices of the perturbed (or removed) training points.
      perturbation: the perturbation actually used: linf (max |X' − X|),
        mean_linf / mean_l2 over perturbed rows, n_perturbed, steps,
        step_size, loss_clean / loss_adv of the attacked objective.
      factorization: how K + λI was solved, clean and perturbed.
      retrain: whether the network was retrained on the perturbed data.
      seconds: wall time of the measurement (attack + rebuild), excluding the
        clean training.
      attack_effective: False when the attack raised its objective by less
        than ``attacks.NO_OP_GAIN`` (a "no-op"; flagged in tables and
        figures), None when nothing was attacked.
      health: the clean fit's training health (``TrainingHealth.to_dict()``;
        for a null baseline, the null refit's), None when unknown.
      null: the null baseline measured beside this report (see
        :func:`measure_null`), or None.
    """

    model: str
    kernel: str
    influence: str
    training: str
    intervention: str
    attack: str
    epsilon: float
    tau: float
    ridge: float
    seed: int
    width: int
    n_train: int
    n_test: int
    top_k: int
    flip_rate: float
    flip_rate_std: float
    spearman: float
    spearman_std: float
    topk_overlap: float
    topk_overlap_std: float
    flip_rates: np.ndarray
    spearmans: np.ndarray
    topk_overlaps_per_test: np.ndarray
    influence_clean: np.ndarray
    influence_perturbed: np.ndarray
    columns: np.ndarray
    intervened: np.ndarray
    perturbation: dict
    factorization: tuple[str, str]
    retrain: bool
    seconds: float
    attack_effective: bool | None = None
    health: dict | None = None
    null: MalleabilityReport | None = None

    @property
    def excess_flip_rate(self) -> float:
        """flip_rate − null.flip_rate (NaN without a null baseline)."""
        return self.flip_rate - self.null.flip_rate if self.null is not None else math.nan

    @property
    def I(self) -> np.ndarray:  # noqa: E743, N802
        """The clean influence matrix I."""
        return self.influence_clean

    @property
    def I_prime(self) -> np.ndarray:  # noqa: N802
        """The influence matrix I' after the intervention."""
        return self.influence_perturbed

    _SCALARS = (
        "model", "kernel", "influence", "training", "intervention", "attack", "epsilon", "tau", "ridge",
        "seed", "width", "n_train", "n_test", "top_k", "flip_rate", "flip_rate_std", "spearman",
        "spearman_std", "topk_overlap", "topk_overlap_std", "retrain", "seconds", "attack_effective",
    )

    def to_dict(self, arrays: bool = False) -> dict:
        """Scalars, ``perturbation`` and ``factorization``; with ``arrays=True`` also the per-test
        arrays and the influence matrices as lists."""
        out = {name: getattr(self, name) for name in self._SCALARS}
        out["perturbation"] = dict(self.perturbation)
        out["factorization"] = list(self.factorization)
        out["health"] = None if self.health is None else dict(self.health)
        if self.null is not None:
            out["null_flip_rate"] = self.null.flip_rate
            out["null_kind"] = self.null.intervention
        if arrays:
            out["flip_rates"] = self.flip_rates.tolist()
            out["spearmans"] = self.spearmans.tolist()
            out["topk_overlaps"] = self.topk_overlaps_per_test.tolist()
            out["influence_clean"] = self.influence_clean.tolist()
            out["influence_perturbed"] = self.influence_perturbed.tolist()
            out["columns"] = self.columns.tolist()
            out["intervened"] = self.intervened.tolist()
        return out

    def to_frame(self, per_test: bool = False):
        """pandas DataFrame: one summary row (default), or one row per test point."""
        import pandas as pd

        summary = {name: getattr(self, name) for name in self._SCALARS}
        summary.update({f"perturbation_{k}": v for k, v in self.perturbation.items()})
        summary.update({f"health_{k}": v for k, v in (self.health or {}).items()})
        if self.null is not None:
            summary.update(null_flip_rate=self.null.flip_rate, excess_flip_rate=self.excess_flip_rate)
        if not per_test:
            return pd.DataFrame([summary])
        frame = pd.DataFrame(
            {
                "test_index": np.arange(self.n_test),
                "flip_rate": self.flip_rates,
                "spearman": self.spearmans,
                "topk_overlap": self.topk_overlaps_per_test,
            }
        )
        for name in ("model", "kernel", "training", "intervention", "attack", "epsilon", "tau", "seed"):
            frame[name] = summary[name]
        return frame


@functools.lru_cache(maxsize=32)
def _attack_loss(experiment: Experiment, config: AttackConfig, on: str = "train"):
    """The attack objective of an experiment, as a function of the training inputs (``on="train"``)
    or of the test inputs (``on="test"``, the training set fixed and clean).

    One function object per (experiment, config, on), so repeated measurements (ε sweeps,
    interventions) reuse the compiled attack.
    """
    fitted, split = experiment.fitted, experiment.split
    if config.target == "kernel":
        kernel_fn = kernel_function(fitted, experiment.kernel)
        targets = one_vs_rest(split.labels, split.n_classes, experiment.targets)
        if on == "train":
            return kernel_ridge_loss(kernel_fn, targets, experiment.ridge)
        x = jnp.asarray(split.X, fitted.spec.dtype)
        k = np.asarray(kernel_fn(x), np.float64)
        alpha = jnp.asarray(np.linalg.solve((k + k.T) / 2 + experiment.ridge * np.eye(len(k)), targets), x.dtype)
        return kernel_predictor_loss(lambda x_star: kernel_fn(x_star, x) @ alpha,
                                     one_vs_rest(split.labels_test, split.n_classes, experiment.targets))
    if on == "train":
        return model_loss(lambda x: fitted.outputs(x, x), split.train_targets(experiment.train_config), fitted.loss)
    context = jnp.asarray(split.X, fitted.spec.dtype)
    return model_loss(lambda x_star: fitted.outputs(x_star, context),
                      split.train_targets(experiment.train_config, split.labels_test), fitted.loss)


def _summary(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))


def measure(
    experiment: Experiment,
    *,
    attack: str = "pgd",
    epsilon: float = 0.3,
    tau: float = 0.1,
    intervention: str = "adversarial",
    attack_config=None,
    retrain: bool = False,
) -> MalleabilityReport:
    """Intervene on the data of a prepared experiment, rebuild, and compare I' with I.

    Args as in :func:`malleability`; ``attack_config`` defaults to the
    experiment's. ``intervention="test"`` perturbs the test points instead
    (the training set, the network and the kernel ridge fit stay clean; the
    test points' attention features are rebuilt over the clean training set).
    """
    attack = check_choice(str(attack).lower(), "attack", ATTACKS)
    epsilon = check_real(epsilon, "epsilon", minimum=0.0)
    tau = check_real(tau, "tau", minimum=0.0, maximum=1.0, strict_min=True)
    intervention = check_choice(intervention, "intervention", INTERVENTIONS)
    config = experiment.attack_config if attack_config is None else as_attack_config(attack_config)
    if not isinstance(retrain, bool):
        raise InputValueError(f"retrain: expected a bool, got {retrain!r}")
    if experiment.kernel not in RIDGE_KERNELS and config.target == "kernel":
        raise InputValueError(f"attack_config.target: 'kernel' needs a kernel ridge influence (kernel in "
                              f"{list(RIDGE_KERNELS)}), got kernel={experiment.kernel!r}")
    start = time.perf_counter()
    split, clean = experiment.split, experiment.clean.scores
    n = split.X.shape[0]
    influential = influential_points(clean, tau)
    x_new, labels_new, x_test_new, columns = split.X, split.labels, split.X_test, np.arange(n)
    attack_name, epsilon_used, effective = "none", 0.0, None
    if intervention == "curated":
        columns = np.setdiff1d(np.arange(n), influential)
        if columns.size == 0:
            raise InputValueError(f"tau: removing the top-τ points must leave some training points, got tau={tau} with n={n}")
        x_new, labels_new = split.X[columns], split.labels[columns]
        perturbation = {"linf": 0.0, "mean_linf": 0.0, "mean_l2": 0.0, "n_perturbed": 0, "n_removed": int(influential.size)}
        intervened = influential
    else:
        on = "test" if intervention == "test" else "train"
        x_attacked = split.X_test if on == "test" else split.X
        check_in_bounds(x_attacked, config.bounds, "X_test" if on == "test" else "X")
        head = experiment.fitted.spec.head
        memory.ensure_fits(memory.attack_memory(
            max(n, x_attacked.shape[0]), split.X.shape[1], width=head.width, out_dim=head.out_dim,
            target=config.target,
            n_params=memory.head_param_count(split.X.shape[1], head.width, out_dim=head.out_dim,
                                             use_bias=head.use_bias, train_readout=head.train_readout),
        ))
        mask = np.zeros(x_attacked.shape[0], bool)
        mask[influential if intervention == "transformed" else slice(None)] = True
        result = run_attack(
            _attack_loss(experiment, config, on), x_attacked, method=attack, epsilon=epsilon,
            key=experiment.keys["attack"], config=config, mask=mask,
        )
        if on == "test":
            x_test_new = result.x_adv
        else:
            x_new = result.x_adv
        attack_name, epsilon_used, effective = attack, epsilon, bool(result.effective)
        perturbation = {k: v for k, v in result.summary().items() if k not in ("method", "epsilon")}
        perturbation["target"] = config.target
        intervened = np.flatnonzero(mask)
    fitted = experiment.fitted
    if retrain and intervention != "test":
        fitted = _fit(
            fitted.spec, x_new, labels_new, split.n_classes, keys=experiment.keys, config=experiment.train_config,
            training=experiment.training, at_epsilon=experiment.at_epsilon, attack_config=config,
        )
    perturbed = _influence_of(experiment, fitted, x_new, labels_new, x_test_new)
    return _report(
        experiment, perturbed, intervention=intervention, attack=attack_name, epsilon=epsilon_used, tau=tau,
        columns=columns, intervened=intervened, perturbation=perturbation, retrain=retrain, start=start,
        effective=effective, health=experiment.fitted.health,
    )


def _influence_of(experiment: Experiment, fitted: FittedModel, X, labels, X_test) -> InfluenceResult:
    """The experiment's influence (same kernel, method, targets) of ``fitted`` on new data."""
    return fitted_influence(
        fitted, X, labels, X_test, experiment.split.labels_test, n_classes=experiment.split.n_classes,
        ridge=experiment.ridge, kernel=experiment.kernel, method=experiment.method, targets=experiment.targets,
        train_config=experiment.train_config,
    )


def _report(experiment: Experiment, perturbed: InfluenceResult, *, intervention, attack, epsilon, tau, columns,
            intervened, perturbation, retrain, start, effective, health) -> MalleabilityReport:
    """Compare the clean influence (its ``columns``) with ``perturbed`` into a :class:`MalleabilityReport`."""
    clean = experiment.clean.scores
    metrics = compare_influence(clean[:, columns], perturbed.scores, tau)
    flip, flip_std = _summary(metrics["flip_rate"])
    rho, rho_std = _summary(metrics["spearman"])
    overlap, overlap_std = _summary(metrics["topk_overlap"])
    fitted = experiment.fitted
    return MalleabilityReport(
        model=fitted.spec.name,
        kernel=experiment.kernel,
        influence=experiment.method,
        training=experiment.training,
        intervention=intervention,
        attack=attack,
        epsilon=epsilon,
        tau=tau,
        ridge=experiment.ridge,
        seed=experiment.seed,
        width=fitted.spec.head.width,
        n_train=experiment.split.X.shape[0],
        n_test=experiment.split.X_test.shape[0],
        top_k=top_count(columns.size, tau),
        flip_rate=flip,
        flip_rate_std=flip_std,
        spearman=rho,
        spearman_std=rho_std,
        topk_overlap=overlap,
        topk_overlap_std=overlap_std,
        flip_rates=metrics["flip_rate"],
        spearmans=metrics["spearman"],
        topk_overlaps_per_test=metrics["topk_overlap"],
        influence_clean=clean,
        influence_perturbed=perturbed.scores,
        columns=columns,
        intervened=intervened,
        perturbation=perturbation,
        factorization=(experiment.clean.factorization, perturbed.factorization),
        retrain=retrain,
        seconds=time.perf_counter() - start,
        attack_effective=effective,
        health=None if health is None else health.to_dict(),
    )


def null_keys(keys: Mapping[str, jax.Array], kind: str) -> dict[str, jax.Array]:
    """The PRNG keys of a null refit: "seed" changes the init and train keys, "order" the train
    key (epoch shuffles; PGD-AT's starts) only, "rerun" nothing. The attack key is kept."""
    kind = check_choice(kind, "null", NULL_KINDS)
    keys = dict(keys)
    if kind in ("seed", "order"):
        keys["train"] = jax.random.fold_in(keys["train"], _NULL_FOLD)
    if kind == "seed":
        keys["init"] = jax.random.fold_in(keys["init"], _NULL_FOLD)
    return keys


def null_refit(experiment: Experiment, kind: str = "seed") -> FittedModel:
    """The experiment's clean fit repeated with the PRNG keys of a null baseline (:func:`null_keys`)."""
    kind = check_choice(kind, "null", NULL_KINDS)
    split, fitted = experiment.split, experiment.fitted
    refit = _fit(
        fitted.spec, split.X, split.labels, split.n_classes, keys=null_keys(experiment.keys, kind),
        config=experiment.train_config, training=experiment.training, at_epsilon=experiment.at_epsilon,
        attack_config=experiment.attack_config,
    )
    return assess_fit(refit, split, experiment.train_config,
                      what=fit_label(fitted.spec, experiment.seed, experiment.training) + f", null-{kind} refit")


def measure_null(experiment: Experiment, *, kind: str = "seed", tau: float = 0.1,
                 refit: FittedModel | None = None) -> MalleabilityReport:
    """The null baseline of a malleability number: no perturbation, the same pipeline refitted
    with other PRNG keys (:func:`null_keys`), and its influence compared with the experiment's.

    A flip rate at or below this null cannot be told apart from retraining noise. ``kind="rerun"``
    refits with the same keys and must give exactly 0 (determinism). ``refit``: the
    :func:`null_refit` of an experiment with the same fit (say, for another influence kernel),
    reused instead of training again.

    Returns:
      A :class:`MalleabilityReport` with ``intervention = "null-<kind>"``, ``attack = "none"`` and the
      null refit's training health.
    """
    kind = check_choice(kind, "null", NULL_KINDS)
    tau = check_real(tau, "tau", minimum=0.0, maximum=1.0, strict_min=True)
    start = time.perf_counter()
    split = experiment.split
    refit = null_refit(experiment, kind) if refit is None else refit
    perturbed = _influence_of(experiment, refit, split.X, split.labels, split.X_test)
    n = split.X.shape[0]
    return _report(
        experiment, perturbed, intervention=f"null-{kind}", attack="none", epsilon=0.0, tau=tau,
        columns=np.arange(n), intervened=np.zeros(0, np.int64), perturbation={}, retrain=True, start=start,
        effective=None, health=refit.health,
    )


def malleability(
    data=None,
    *,
    X=None,
    y=None,
    X_test=None,
    y_test=None,
    model="mlp-attn",
    width: int = 1024,
    attack: str = "pgd",
    epsilon: float = 0.3,
    tau: float = 0.1,
    ridge: float = 1e-3,
    seed: int = 0,
    intervention: str = "adversarial",
    kernel: str = "empirical",
    train_config=None,
    attack_config=None,
    influence: str = "loo",
    dtype="float64",
    training: str = "standard",
    at_epsilon: float | None = None,
    targets: str = "pm1",
    retrain: bool = False,
    null: str | None = "seed",
    precision=None,
) -> MalleabilityReport:
    """Measure how far an attack on the training data moves a model's influence scores.

    Train on clean data → I; intervene on the training set (attack every
    point, the top-τ points, or remove them); rebuild everything that depends
    on X (preprocessing, the transductive attention of train and test points
    over the perturbed training set, features, kernel, ridge fit) → I';
    compare per test point (flip rate among the top-τ |I|, Spearman ρ, top-k
    overlap).

    Args:
      data: ``Dataset``-like object with ``X_train``, ``labels_train``,
        ``X_test``, ``labels_test`` holding **raw [0, 1] pixels**
        (``kernelattn.data.load(name, normalize=False)``); the model
        normalizes rows itself, so the attack acts on pixels.
      X, y, X_test, y_test: arrays instead of ``data`` (labels int ``(n,)``
        or one-hot ``(n, C)``).
      model: "relu" (2L-ReLU), "mlp-attn" (default) or a ``TwoLayerReLU`` /
        ``AttentionMLP`` instance.
      width: hidden width m (default 1024) of a model given by name.
      attack: "fgsm", "pgd" (default) or "mim".
      epsilon: ℓ∞ radius ε ≥ 0 on [0, 1] pixels (default 0.3, the paper's).
      tau: fraction τ ∈ (0, 1] of top influential points (default 0.1).
      ridge: λ > 0 of the kernel ridge fit (default 1e-3).
      seed: int ≥ 0; PRNG keys for init, shuffles/adversarial training and
        the attack are split from ``PRNGKey(seed)``.
      intervention: "adversarial" (default: every training point attacked),
        "transformed" (the top-τ points only), "test" (the test points
        instead) or "curated" (the top-τ points removed).
      kernel: influence source: "empirical" (default: NTK of the trained
        width-m network at its trained parameters — the finite-width kernel
        the paper is about), "empirical-init" (the NTK at initialization),
        "infinite" (closed-form NTK of the head on the same features) or
        "tracin" (the trained network's own loss gradients).
      train_config: ``TrainConfig`` or dict (default: AdamW 1e-3 with
        decoupled weight decay 1e-3, batch 128, 500 epochs; MSE on one ±1
        output for two classes, cross-entropy for more).
      attack_config: ``AttackConfig`` or dict (steps 10, PGD step 2.5ε/steps
        with random start, MIM step ε/steps and μ = 1, target "model",
        bounds (0, 1)).
      influence: "loo" (exact leave-one-out, default) or "if".
      dtype: "float64" (default) or "float32" for the network and features.
      training: "standard" (default) or "pgd-at" (PGD adversarial training).
      at_epsilon: radius of adversarial training (default: ``epsilon``).
      targets: one-vs-rest ridge targets "pm1" (default) or "onehot".
      retrain: also retrain the network on the intervened data (default False).
      null: the null baseline measured beside it (:func:`measure_null`):
        "seed" (default), "order", "rerun", or None for none.
      precision: matmul precision of everything computed (training, attacks,
        kernels): "highest" (``Precision.HIGHEST``) or "fast" (the device's
        default: TF32 on recent GPUs); None → the policy in force
        (``kernelattn.precision_policy``, default "highest").

    Returns:
      A :class:`MalleabilityReport` (``report.null`` holds the null
      baseline, ``report.excess_flip_rate`` the difference; ``report.health``
      the fit's training health, ``report.attack_effective`` whether the
      attack moved its objective).
    """
    if null is not None:
        check_choice(null, "null", NULL_KINDS)
    with precision_policy(precision):
        return _malleability(data, X=X, y=y, X_test=X_test, y_test=y_test, model=model, width=width, attack=attack,
                             epsilon=epsilon, tau=tau, ridge=ridge, seed=seed, intervention=intervention,
                             kernel=kernel, train_config=train_config, attack_config=attack_config,
                             influence=influence, dtype=dtype, training=training, at_epsilon=at_epsilon,
                             targets=targets, retrain=retrain, null=null)


def _malleability(data, *, X, y, X_test, y_test, model, width, attack, epsilon, tau, ridge, seed, intervention,
                  kernel, train_config, attack_config, influence, dtype, training, at_epsilon, targets, retrain,
                  null) -> MalleabilityReport:
    experiment = _prepare_checked(
        data, X=X, y=y, X_test=X_test, y_test=y_test, model=model, width=width, ridge=ridge, seed=seed,
        kernel=kernel, influence=influence, targets=targets, training=training,
        at_epsilon=epsilon if at_epsilon is None else at_epsilon, train_config=train_config,
        attack_config=attack_config, dtype=dtype, attack=attack, epsilon=epsilon, tau=tau,
        intervention=intervention,
    )
    report = measure(
        experiment, attack=attack, epsilon=epsilon, tau=tau, intervention=intervention, retrain=retrain
    )
    if null is None:
        return report
    return dataclasses.replace(report, null=measure_null(experiment, kind=null, tau=tau))


def _prepare_checked(data=None, *, attack, epsilon, tau, intervention, **kwargs) -> Experiment:
    """Check the measurement arguments first (fail before training), then :func:`prepare`."""
    check_choice(str(attack).lower(), "attack", ATTACKS)
    check_real(epsilon, "epsilon", minimum=0.0)
    check_real(tau, "tau", minimum=0.0, maximum=1.0, strict_min=True)
    check_choice(intervention, "intervention", INTERVENTIONS)
    split = resolve_data(data, X=kwargs["X"], y=kwargs["y"], X_test=kwargs["X_test"], y_test=kwargs["y_test"])
    config = as_attack_config(kwargs["attack_config"])
    if intervention == "test":
        check_in_bounds(split.X_test, config.bounds, "X_test")
    if intervention not in ("curated", "test") or kwargs["training"] == "pgd-at":
        check_in_bounds(split.X, config.bounds)
    if intervention != "curated" or kwargs["training"] == "pgd-at":
        warn_if_normalized(split)
    return prepare(data, attack_targets=(config.target,) if intervention != "curated" else (), **kwargs)


def malleability_sweep(
    data=None,
    *,
    X=None,
    y=None,
    X_test=None,
    y_test=None,
    models: Sequence = ("relu", "mlp-attn"),
    attacks: Sequence[str] = ("pgd",),
    epsilons: Sequence[float] = (0.3,),
    interventions: Sequence[str] = ("adversarial",),
    trainings: Sequence[str] = ("standard",),
    width: int = 1024,
    tau: float = 0.1,
    ridge: float = 1e-3,
    seed: int = 0,
    kernel: str = "empirical",
    train_config=None,
    attack_config=None,
    influence: str = "loo",
    dtype="float64",
    at_epsilon: float = 0.3,
    targets: str = "pm1",
    retrain: bool = False,
    null: str | None = "seed",
    progress=None,
    precision=None,
) -> list[MalleabilityReport]:
    """Grid of :func:`malleability` measurements sharing one clean fit per (model, training).

    Arguments as in :func:`malleability`, with lists for ``models``,
    ``attacks``, ``epsilons`` (the paper's sweep is ``EPSILON_SWEEP = (0.1,
    0.2, 0.3, 0.5)``), ``interventions`` and ``trainings``; ``at_epsilon`` is
    the radius of PGD adversarial training (fixed across the ε grid). The
    curated intervention does not depend on the attack or ε and is measured
    once per clean fit; one null baseline (``null``) per clean fit is attached
    to each of its reports. ``progress``: optional callable receiving each report.
    ``precision``: as in :func:`malleability`.
    """
    if null is not None:
        check_choice(null, "null", NULL_KINDS)
    if not attacks or not epsilons or not interventions or not models or not trainings:
        raise InputValueError("models, attacks, epsilons, interventions, trainings: expected non-empty sequences")
    with precision_policy(precision):
        return _malleability_grid(data, X=X, y=y, X_test=X_test, y_test=y_test, models=models, attacks=attacks,
                                  epsilons=epsilons, interventions=interventions, trainings=trainings, width=width,
                                  tau=tau, ridge=ridge, seed=seed, kernel=kernel, train_config=train_config,
                                  attack_config=attack_config, influence=influence, dtype=dtype,
                                  at_epsilon=at_epsilon, targets=targets, retrain=retrain, null=null,
                                  progress=progress)


def _malleability_grid(data, *, X, y, X_test, y_test, models, attacks, epsilons, interventions, trainings, width,
                       tau, ridge, seed, kernel, train_config, attack_config, influence, dtype, at_epsilon, targets,
                       retrain, null, progress) -> list[MalleabilityReport]:
    reports = []
    for model in models:
        for training in trainings:
            experiment = _prepare_checked(
                data, X=X, y=y, X_test=X_test, y_test=y_test, model=model, width=width, ridge=ridge, seed=seed,
                kernel=kernel, influence=influence, targets=targets, training=training, at_epsilon=at_epsilon,
                train_config=train_config, attack_config=attack_config, dtype=dtype, attack=attacks[0],
                epsilon=epsilons[0], tau=tau,
                intervention="adversarial" if any(i != "curated" for i in interventions) else "curated",
            )
            baseline = None if null is None else measure_null(experiment, kind=null, tau=tau)
            for intervention in interventions:
                grid = [("pgd", 0.0)] if intervention == "curated" else [(a, e) for a in attacks for e in epsilons]
                for attack, epsilon in grid:
                    report = measure(
                        experiment, attack=attack, epsilon=epsilon, tau=tau, intervention=intervention, retrain=retrain
                    )
                    report = dataclasses.replace(report, null=baseline)
                    reports.append(report)
                    if progress is not None:
                        progress(report)
    return reports


# =========================================================================== spec runner (CLI)

#: The keys of a malleability spec; the schema and its validator live in ``kernelattn.experiments.specs``.
SPEC_KEYS = specs.MALLEABILITY_KEYS
#: The null baselines of a spec that names none.
DEFAULT_NULLS = next(key.default for key in specs.MALLEABILITY_SCHEMA if key.name == "null_baselines")
_HEAD_KEYS = {"readout": "train_readout", "sigma_w": "sigma_w", "sigma_b": "sigma_b", "sigma_a": "sigma_a"}


def _spec_model(entry, width: int, out_dim: int, head_options: Mapping):
    """A model name, or a ``make_model`` instance for a mapping ``{"name": ..., options}``."""
    options = {}
    for key, value in dict(head_options).items():
        if key not in _HEAD_KEYS:
            continue
        options[_HEAD_KEYS[key]] = (value == "trained") if key == "readout" else value
    if isinstance(entry, Mapping):
        entry = dict(entry)
        name = entry.pop("name")
        options.update(entry)
    else:
        name = entry
    if not options:
        return name
    from kernelattn.models import make_model

    return make_model(name, width, out_dim, **options)


def spec_variants(spec: Mapping) -> list[tuple[str, dict]]:
    """The spec itself ("default") and each of its ``"variants"``, as (label, full spec) pairs.

    A variant is a mapping with a unique ``"label"`` and overrides of any spec key but
    ``name``/``kind``/``description``/``variants``; ``"n_train"`` sets every dataset's training-set
    size. One-factor-at-a-time designs list one override per variant; a factorial block lists the
    factors' plural keys (``"influence_kernels": [...]``, ``"interventions": [...]`` …) in one variant.
    Cells are keyed by content, so a cell shared by several variants is computed once.

    Raises:
      kernelattn.experiments.specs.SpecError: a malformed variant (see ``kernelattn.experiments.specs.malleability_variants``).
    """
    return [(label, merged) for label, merged, _ in specs.malleability_variants(spec)]


def validate_spec(spec: Mapping, *, max_cells: int | None = None) -> specs.MalleabilitySpec:
    """Check a malleability spec and its variants without running it (``kernelattn.experiments.specs.SpecError``
    naming the key path); see ``kernelattn.experiments.specs.parse_malleability_spec``."""
    return specs.parse_malleability_spec(spec, max_cells=max_cells)


def _load_dataset(dataset: Mapping, label: str, index: int):
    """``kernelattn.data.load`` of one parsed dataset entry, errors prefixed with the entry."""
    from kernelattn.data import load

    try:
        return load(**dataset, target="labels")
    except ValueError as err:  # a bad option only the loader can judge (sizes, class names)
        raise InputValueError(f"datasets[{index}] ({label!r}): {err}") from err


def check_malleability_spec(spec: Mapping, *, max_cells: int | None = None, budget: int | None = None) -> dict:
    """Everything that can be checked before any work: the spec, its data and the memory of every fit.

    Validates the spec (:func:`validate_spec`), loads every dataset, and
    plans the memory of the training, the influence kernel and the attacks
    of every (dataset, model, width, training mode, kernel) group
    (:func:`plan_memory`). The CLI runs it before it creates the store, so
    a spec refused here leaves nothing behind.

    Returns:
      The loaded datasets, for ``run_malleability_spec(..., loaded=...)``.

    Raises:
      kernelattn.experiments.specs.SpecError, InputValueError: an invalid spec or data option.
      kernelattn.data.DatasetError: missing or bad data files.
      kernelattn.kernels.memory.MemoryPlanError: a group that would not fit in memory (naming it).
    """
    from kernelattn.experiments import provenance

    parsed_spec = validate_spec(spec, max_cells=max_cells)
    loaded: dict[str, Any] = {}
    for _, parsed in parsed_spec.plans:
        for index, (dataset, label) in enumerate(zip(parsed["datasets"], parsed["dataset_labels"])):
            data_key = provenance.canonical_json(dataset)
            if data_key not in loaded:
                loaded[data_key] = _load_dataset(dataset, label, index)
            data = loaded[data_key]
            config = as_train_config(parsed["training"] or None)
            out_dim = config.out_dim(data.n_classes)
            attacked = any(i != "curated" for i in parsed["interventions"])
            for _, model, width, mode, kernel in _spec_groups(parsed):
                head = resolve_model(_spec_model(model, width, out_dim, parsed["head"]), width, out_dim,
                                     "float32").head
                try:
                    plan_memory(data.X_train.shape[0], data.X_test.shape[0], data.X_train.shape[1], head,
                                config=config, kernel=kernel, training=mode, dtype=parsed["dtype"],
                                attack_targets=parsed["attack_targets"] if attacked else (), budget=budget)
                except memory.MemoryPlanError as err:
                    model_name = model if isinstance(model, str) else model["name"]
                    raise memory.MemoryPlanError(f"datasets[{index}] ({label!r}), model {model_name}, width {width}: "
                                                 f"{err}", err.estimate, err.budget) from None
    return loaded


def memory_estimates(n: int, n_test: int, d: int, head, *, config: TrainConfig, kernel: str, training: str,
                     dtype, attack_targets: Sequence[str] = ()) -> list[memory.MemoryEstimate]:
    """What one clean fit and its measurements need, phase by phase (they run one after another).

    Training (Adam on the head; with "pgd-at" also the attack on the whole
    training set each epoch), the influence kernel on the n + n* points
    ("empirical", "empirical-init": the structured head NTK at given
    parameters, float64; "infinite": its closed form; "tracin": per-example
    gradients), and the attack on each target in ``attack_targets``.

    Args:
      n, n_test, d: the split's shape.
      head: the model's ``HeadConfig``.
      config, kernel, training, dtype: as in :func:`prepare`.
      attack_targets: "model" and/or "kernel" (none: no attack planned).
    """
    dtype = np.dtype(dtype).name
    p = memory.head_param_count(d, head.width, out_dim=head.out_dim, use_bias=head.use_bias,
                                train_readout=head.train_readout)
    estimates = [memory.training_memory(n, d, width=head.width, out_dim=head.out_dim,
                                        batch_size=config.batch_size, n_params=p, dtype=dtype)]
    if training == "pgd-at":
        estimates.append(memory.attack_memory(n, d, width=head.width, out_dim=head.out_dim, target="model",
                                              n_params=p, dtype=dtype))
    if kernel in ("empirical", "empirical-init"):
        estimates.append(memory.head_ntk_memory(
            n + n_test, n, d, head.width, width_chunk=min(DEFAULT_WIDTH_CHUNK, head.width), out_dim=head.out_dim,
            train_readout=head.train_readout, use_bias=head.use_bias, params_given=True, dtype="float64"))
    elif kernel == "infinite":
        estimates.append(memory.MemoryEstimate(f"the infinite-width NTK ({n + n_test}×{n}, float64)",
                                               {"kernel and its covariances": 6 * (n + n_test) * n * 8}))
    else:
        item = np.dtype(dtype).itemsize
        estimates.append(memory.MemoryEstimate(
            f"TracIn gradients (n*={n_test}, P={p}, {dtype})",
            {"per-example gradients": (n_test + min(128, n)) * p * item},
            options=("a smaller width (P grows as d·m)",)))
    for target in attack_targets:
        estimates.append(memory.attack_memory(max(n, n_test), d, width=head.width, out_dim=head.out_dim,
                                              target=target, n_params=p, dtype=dtype))
    return estimates


def plan_memory(n: int, n_test: int, d: int, head, *, budget: int | None = None, **kwargs) -> None:
    """Refuse (``MemoryPlanError``, before allocating) a fit whose phases would not fit the budget.

    Args:
      n, n_test, d, head, **kwargs: as in :func:`memory_estimates`.
      budget: bytes; None → half of the free memory (``kernelattn.kernels.memory``).
    """
    for estimate in memory_estimates(n, n_test, d, head, **kwargs):
        memory.ensure_fits(estimate, budget)


def run_malleability_spec(spec: Mapping, store, *, progress=None, loaded: Mapping | None = None,
                          max_cells: int | None = None) -> list[str]:
    """Run a malleability experiment spec into a ``ResultStore``, resumably.

    The spec is a plain dict (e.g. parsed from ``experiments/*.json``); key
    names follow ``kernelattn.experiments.specs`` where they overlap::

        {"datasets": [{"name": "digits", "n_train": 1000, "n_test": 200, "seed": 0, "label": "digits"}],
                                            # or "dataset": {...}; kernelattn.data.load options
         "models": ["relu", "mlp-attn"],    # names, or {"name": "mlp-attn", "depth": 2, ...}
         "width": 1024,                     # or "widths": [256, 1024]
         "seeds": 3,                        # a count n (0..n-1), or a list
         "kernel": {"readout": "fixed", "sigma_w": 1.0, "sigma_b": 0.0, "sigma_a": 1.0},
         "training": {"epochs": 500, ...},  # TrainConfig fields
         "training_modes": ["standard"],    # and/or "pgd-at"
         "at_epsilon": 0.3,                 # radius of PGD adversarial training
         "influence_kernels": ["empirical"],# and/or "empirical-init", "infinite", "tracin"
         "influence": "loo", "targets": "pm1", "ridge": 1e-3, "tau": 0.1, "retrain": false,
         "attacks": ["fgsm", "pgd", "mim"], "epsilons": [0.1, 0.2, 0.3, 0.5],
         "interventions": ["adversarial"],  # and/or "transformed", "test", "curated"
         "attack_targets": ["model"],       # and/or "kernel" (the loss attacked)
         "attack_config": {"steps": 10, ...},  # AttackConfig fields
         "null_baselines": ["seed", "order"],  # no perturbation, refit with other keys
         "variants": [{"label": "n=100", "n_train": 100}, ...],  # see spec_variants
         "dtype": "float64",
         "precision": null}                 # "highest" | "fast" | null: the policy in force (CLI --precision)

    Singular keys ("model", "attack", "epsilon", "seed", …) are accepted for
    one value. Datasets are loaded with ``normalize=False`` (raw [0, 1]
    pixels; the models normalize rows themselves) unless the spec says
    otherwise; ``label``/``target`` entries of a dataset are not part of the
    cell. Each cell — (dataset, model, width, seed, training mode, influence
    kernel, intervention, attack target, attack, ε), plus one null-baseline
    cell per null kind with ``intervention = "null-<kind>"`` — is one record
    of kind "malleability" keyed by ``provenance.cell_key(cell)``; finished
    cells are skipped (resume) and claimed cells left to their owner. One
    clean fit serves all cells of a (dataset, model, width, seed, training
    mode, kernel), and is skipped when they are all done. Metrics are
    ``MalleabilityReport.to_dict()`` plus the per-test-point arrays
    (``flip_rates``, ``spearmans``, ``topk_overlaps``), the fit's training
    health (``health``), the dataset's label and the labels of the variants
    the cell belongs to (``variants``). Each variant runs inside
    ``precision_policy(its precision)``; a cell computed at "fast" carries
    ``"precision": "fast"`` (the default "highest" keeps the keys cells had
    before the precision policy existed).

    The spec is validated by ``kernelattn.experiments.specs.parse_malleability_spec``
    (types checked, unknown keys and values refused with a did-you-mean,
    nested ones too; at most ``max_cells`` cells), and every fit's memory is
    planned before it trains (:func:`plan_memory`).

    Args:
      spec: the experiment spec (a ``kernelattn.experiments.specs.SpecError`` names any bad key).
      store: a ``kernelattn.experiments.store.ResultStore`` (``has``, ``claim``, ``put``, ``release``).
      progress: optional callable ``progress(cell, report)`` after each stored cell.
      loaded: datasets already loaded by :func:`check_malleability_spec`.
      max_cells: the cell limit (see ``kernelattn.experiments.specs.parse_malleability_spec``).

    Returns:
      The keys of the records written by this call.
    """
    from kernelattn.experiments import provenance

    # None: the policy in force (CLI --precision); resolved now, since "fast" is part of a cell's key.
    plans = [(label, {**parsed, "precision": resolve_precision(parsed.get("precision"))})
             for label, parsed in validate_spec(spec, max_cells=max_cells).plans]
    membership: dict[str, list[str]] = {}
    for label, parsed in plans:
        for dataset in parsed["datasets"]:
            for group in _spec_groups(parsed):
                for cell in _group_cells(parsed, dataset, group):
                    membership.setdefault(provenance.cell_key(cell), []).append(label)
    written: list[str] = []
    loaded = dict(loaded or {})
    for _, parsed in plans:
        with precision_policy(parsed["precision"]):
            for index, (dataset, dataset_label) in enumerate(zip(parsed["datasets"], parsed["dataset_labels"])):
                fits: dict[tuple, FittedModel] = {}  # one clean fit serves every influence kernel
                jax.clear_caches()  # drop the last dataset's executables: each holds memory mappings of its own
                for group in _spec_groups(parsed):
                    cells = [(provenance.cell_key(cell), cell) for cell in _group_cells(parsed, dataset, group)]
                    cells = [(key, cell) for key, cell in cells if key not in written and not store.has(key)]
                    if not cells:
                        continue
                    data_key = provenance.canonical_json(dataset)
                    if data_key not in loaded:
                        loaded[data_key] = _load_dataset(dataset, dataset_label, index)
                    data = loaded[data_key]
                    seed, model, width, mode, kernel = group
                    config = as_train_config(parsed["training"] or None)
                    fit_key = (seed, provenance.canonical_json(model), width, mode)
                    experiment = prepare(
                        data, model=_spec_model(model, width, config.out_dim(data.n_classes), parsed["head"]),
                        width=width, ridge=parsed["ridge"], seed=seed, kernel=kernel, influence=parsed["influence"],
                        targets=parsed["targets"], training=mode, at_epsilon=parsed["at_epsilon"], train_config=config,
                        attack_config=parsed["attack_config"] or None, dtype=parsed["dtype"], fitted=fits.get(fit_key),
                        attack_targets=parsed["attack_targets"] if any(i != "curated" for i in parsed["interventions"])
                        else (),
                    )
                    fits[fit_key] = experiment.fitted
                    context = {"spec": spec, "parsed": parsed, "dataset_label": dataset_label, "fits": fits,
                               "fit_key": fit_key}
                    for key, cell in cells:
                        report = _run_cell(store, key, cell, experiment, context, membership.get(key, []))
                        if report is not None:
                            written.append(key)
                            if progress is not None:
                                progress(cell, report)
    return written


def _spec_groups(parsed: dict):
    """(seed, model, width, training mode, kernel): the cells sharing one clean fit."""
    for seed in parsed["seeds"]:
        for model in parsed["models"]:
            for width in parsed["widths"]:
                for mode in parsed["modes"]:
                    for kernel in parsed["kernels"]:
                        yield seed, model, width, mode, kernel


def _group_cells(parsed: dict, dataset: dict, group: tuple) -> list[dict]:
    """The cells of one group: interventions × attack targets × (attacks × ε, or once for "curated"),
    then one null-baseline cell per null kind."""
    seed, model, width, mode, kernel = group
    grid = []
    for intervention in parsed["interventions"]:
        if intervention == "curated":
            grid.append((intervention, "none", "none", 0.0))
            continue
        grid += [(intervention, target, attack, epsilon) for target in parsed["attack_targets"]
                 for attack in parsed["attacks"] for epsilon in parsed["epsilons"]]
    grid += [(f"null-{kind}", "none", "none", 0.0) for kind in parsed["nulls"]]
    precision = {"precision": "fast"} if parsed["precision"] == "fast" else {}  # "highest" keeps earlier keys
    return [{
        "dataset": dataset, "model": model, "width": width, "seed": seed, "training_mode": mode,
        "kernel": kernel, "head": parsed["head"], "training": parsed["training"],
        "attack_config": parsed["attack_config"],
        "at_epsilon": parsed["at_epsilon"] if mode == "pgd-at" else None,
        "intervention": intervention, "attack_target": target, "attack": attack, "epsilon": epsilon,
        **{k: parsed[k] for k in ("tau", "ridge", "influence", "targets", "retrain", "dtype")}, **precision,
    } for intervention, target, attack, epsilon in grid]


def _run_cell(store, key: str, cell: dict, experiment: Experiment, context: dict, variants: list[str]):
    """Claim, measure and store one cell; its report, or None when another process holds it."""
    from kernelattn.experiments.store import make_record, utc_now

    if not store.claim(key):
        return None
    started = utc_now()
    parsed = context["parsed"]
    try:
        if cell["intervention"].startswith("null-"):
            kind = cell["intervention"][len("null-"):]
            refit_key = (context["fit_key"], kind)
            if refit_key not in context["fits"]:
                context["fits"][refit_key] = null_refit(experiment, kind)
            report = measure_null(experiment, kind=kind, tau=parsed["tau"], refit=context["fits"][refit_key])
        else:
            config = dataclasses.replace(
                experiment.attack_config, target="model" if cell["attack_target"] == "none" else cell["attack_target"]
            )
            report = measure(
                experiment, attack="pgd" if cell["attack"] == "none" else cell["attack"], epsilon=cell["epsilon"],
                tau=parsed["tau"], intervention=cell["intervention"], retrain=parsed["retrain"], attack_config=config,
            )
        # Settings live in the cell; metrics keep the results (no clashing to_frame columns).
        metrics = {k: v for k, v in report.to_dict().items() if k not in cell and k not in ("training", "seconds")}
        metrics.update(
            flip_rates=report.flip_rates.tolist(),
            spearmans=report.spearmans.tolist(),
            topk_overlaps=report.topk_overlaps_per_test.tolist(),
            final_train_loss=float(experiment.fitted.losses[-1]) if experiment.fitted.losses.size else None,
            dataset_label=context["dataset_label"],
            variants=list(variants),
        )
        record = make_record(
            "malleability", cell, metrics, spec=dict(context["spec"]), seed=cell["seed"], seconds=report.seconds,
            started=started, finished=utc_now(),
        )
        store.put(key, record)
        return report
    finally:
        store.release(key)


SUMMARY_KEYS = ("dataset.name", "model", "width", "training_mode", "kernel", "intervention", "attack", "epsilon")
SUMMARY_METRICS = ("flip_rate", "spearman", "topk_overlap")


def summary_frame(store):
    """Stored malleability cells averaged over seeds: one row per (dataset, model, …, attack, ε).

    Args:
      store: a ``kernelattn.experiments.store.ResultStore``.

    Returns:
      pandas DataFrame with the ``SUMMARY_KEYS`` columns present, ``seeds`` and
      the mean of each ``SUMMARY_METRICS`` column.
    """
    frame = store.to_frame("malleability")
    if frame.empty:
        return frame
    if "model.name" in frame and "model" not in frame:
        frame = frame.rename(columns={"model.name": "model"})
    keys = [k for k in SUMMARY_KEYS if k in frame]
    metrics = [m for m in SUMMARY_METRICS if m in frame]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    summary = grouped[metrics].mean()
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()
