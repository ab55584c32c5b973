"""Influence malleability: how far perturbing the training data moves a model's influence scores (docs/math.md §10).

Procedure (:func:`prepare`, then :func:`measure`; ``kernelattn.experiments.malleability.api.malleability``
runs both with a null baseline beside, :func:`measure_null`):

1. Train the model on clean raw pixels (standard training, or PGD adversarial
   training with ``training="pgd-at"``) and compute the influence matrix
   I (n* × n) of its kernel (:mod:`kernelattn.learning.model_influence`).
2. Intervene on the training data, then **rebuild everything that depends on
   X** at the trained parameters: unit-row preprocessing, the transductive
   attention of the training *and* test points over the perturbed training
   set, the head's features, the kernel (empirical NTK at the trained
   parameters, or infinite-width NTK), the ridge fit and the influence matrix
   I'. With ``retrain=True`` the network is also retrained on the new data
   from the same initialization and keys (off by default: the network is the
   object under attack, and for adversarial training the comparison is between
   two fixed trained networks).
3. Compare I and I' test point by test point
   (:func:`kernelattn.learning.malleability_metrics.compare_influence`).

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
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._validation import check_choice, check_real
from kernelattn.errors import InputValueError
from kernelattn.experiments.malleability.report import MalleabilityReport
from kernelattn.kernels import memory
from kernelattn.kernels.empirical import DEFAULT_WIDTH_CHUNK
from kernelattn.learning.adversarial import TRAININGS, fit_in_mode
from kernelattn.learning.attacks import (
    ATTACK_TARGETS,
    ATTACKS,
    AttackConfig,
    as_attack_config,
    check_in_bounds,
    kernel_predictor_loss,
    kernel_ridge_loss,
    model_loss,
    run_attack,
)
from kernelattn.learning.fitting import FittedModel, TrainTest, assess_fit, fit_label, resolve_data
from kernelattn.learning.influence import INFLUENCE_METHODS, InfluenceResult, one_vs_rest
from kernelattn.learning.malleability_metrics import compare_influence, finite_mean_std, influential_points, top_count
from kernelattn.learning.model_influence import (
    RIDGE_KERNELS,
    FitOptions,
    fitted_influence,
    kernel_function,
    kernel_prediction,
)
from kernelattn.learning.training import TrainConfig

#: What :func:`measure` changes: every training point attacked, the top-τ points attacked, the test
#: points attacked, or the top-τ points removed.
INTERVENTIONS = ("adversarial", "transformed", "test", "curated")
#: Null baselines: no perturbation, the network retrained with another initialization and data order
#: ("seed"), with another data order only ("order"), or with the very same keys ("rerun": exactly 0,
#: a determinism check).
NULL_KINDS = ("seed", "order", "rerun")
#: Folded into the PRNG keys of a null refit (any fixed constant: it only has to differ from the fit's).
_NULL_FOLD = 7919


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A clean model and its influence matrix, ready for interventions (see :func:`prepare`).

    Compared and hashed by identity (it caches its attack objectives).

    Attributes:
      split: the validated clean data.
      fitted: the clean fit (with its training health).
      clean: its influence matrix I (``clean.scores``, ``(n*, n)`` float64).
      options: the validated fit and influence options.
      training: "standard" or "pgd-at"; at_epsilon: the radius of PGD-AT (None for "standard").
      attack_config: the default attack of :func:`measure`.
      keys: the named PRNG keys of ``options.seed`` (init, train, attack).
    """

    split: TrainTest
    fitted: FittedModel
    clean: InfluenceResult
    options: FitOptions
    training: str
    at_epsilon: float | None
    attack_config: AttackConfig
    keys: dict

    def refit(self, X, labels, *, keys: Mapping[str, jax.Array], attack_config: AttackConfig) -> FittedModel:
        """The experiment's model trained again, in its training mode, on raw ``X`` ``(n', d)`` with int
        ``labels`` ``(n',)``, from the PRNG ``keys``; PGD-AT attacks with ``attack_config``."""
        return fit_in_mode(
            self.fitted.spec,
            X,
            labels,
            self.split.n_classes,
            mode=self.training,
            keys=keys,
            config=self.options.train_config,
            at_epsilon=self.at_epsilon,
            attack_config=attack_config,
        )

    def influence_of(self, fitted: FittedModel, X, labels, X_test) -> InfluenceResult:
        """The experiment's influence (same kernel, method, targets, ridge) of ``fitted`` on new data:
        raw ``X`` ``(n', d)`` with ``labels`` ``(n',)`` → raw ``X_test`` ``(n*, d)`` (the clean test labels)."""
        return fitted_influence(
            fitted, X, labels, X_test, self.split.labels_test, n_classes=self.split.n_classes, options=self.options
        )


def memory_estimates(
    n: int,
    n_test: int,
    d: int,
    head,
    *,
    config: TrainConfig,
    kernel: str,
    training: str,
    dtype,
    attack_targets: Sequence[str] = (),
) -> list[memory.MemoryEstimate]:
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
    p = memory.head_param_count(
        d, head.width, out_dim=head.out_dim, use_bias=head.use_bias, train_readout=head.train_readout
    )
    estimates = [
        memory.training_memory(
            n, d, width=head.width, out_dim=head.out_dim, batch_size=config.batch_size, n_params=p, dtype=dtype
        )
    ]
    if training == "pgd-at":
        estimates.append(
            memory.attack_memory(n, d, width=head.width, out_dim=head.out_dim, target="model", n_params=p, dtype=dtype)
        )
    if kernel in ("empirical", "empirical-init"):
        estimates.append(
            memory.head_ntk_memory(
                n + n_test,
                n,
                d,
                head.width,
                width_chunk=min(DEFAULT_WIDTH_CHUNK, head.width),
                out_dim=head.out_dim,
                train_readout=head.train_readout,
                use_bias=head.use_bias,
                params_given=True,
                dtype="float64",
            )
        )
    elif kernel == "infinite":
        estimates.append(
            memory.MemoryEstimate(
                f"the infinite-width NTK ({n + n_test}×{n}, float64)",
                {"kernel and its covariances": 6 * (n + n_test) * n * 8},
            )
        )
    else:
        item = np.dtype(dtype).itemsize
        estimates.append(
            memory.MemoryEstimate(
                f"TracIn gradients (n*={n_test}, P={p}, {dtype})",
                {"per-example gradients": (n_test + min(128, n)) * p * item},
                options=("a smaller width (P grows as d·m)",),
            )
        )
    for target in attack_targets:
        estimates.append(
            memory.attack_memory(
                max(n, n_test), d, width=head.width, out_dim=head.out_dim, target=target, n_params=p, dtype=dtype
            )
        )
    return estimates


def plan_memory(n: int, n_test: int, d: int, head, *, budget: int | None = None, **kwargs) -> None:
    """Refuse (``MemoryPlanError``, before allocating) a fit whose phases would not fit the budget.

    Args:
      n, n_test, d, head, **kwargs: as in :func:`memory_estimates`.
      budget: bytes; None → half of the free memory (``kernelattn.kernels.memory``).
    """
    for estimate in memory_estimates(n, n_test, d, head, **kwargs):
        memory.ensure_fits(estimate, budget)


class _Setting(NamedTuple):
    """The validated arguments of :func:`prepare` that determine its clean fit."""

    split: TrainTest
    options: FitOptions
    training: str
    at_epsilon: float | None
    attack_config: AttackConfig

    @classmethod
    def of(cls, data, X, y, X_test, y_test, influence, training, at_epsilon, attack_config, options) -> _Setting:
        # Malleability compares kernel ridge influence (FitOptions also takes the network estimators).
        fit_options = FitOptions(method=check_choice(influence, "influence method", INFLUENCE_METHODS), **options)
        training = check_choice(training, "training", TRAININGS)
        at_epsilon = check_real(at_epsilon, "at_epsilon", minimum=0.0)
        attack_config = as_attack_config(attack_config)
        split = resolve_data(data, X=X, y=y, X_test=X_test, y_test=y_test)
        if fit_options.kernel not in RIDGE_KERNELS and attack_config.target == "kernel":
            raise InputValueError(
                f"attack_config.target: 'kernel' attacks a kernel ridge predictor, but "
                f"kernel={fit_options.kernel!r} has none; expected kernel in {list(RIDGE_KERNELS)} or "
                "target 'model'"
            )
        return cls(split, fit_options, training, at_epsilon, attack_config)

    def plan(self, attack_targets: Sequence[str]) -> None:
        """:func:`plan_memory` of the training, the influence kernel and attacks on ``attack_targets``."""
        for target in attack_targets:
            check_choice(target, "attack_targets[]", ATTACK_TARGETS)
        split, options = self.split, self.options
        plan_memory(
            split.X.shape[0],
            split.X_test.shape[0],
            split.X.shape[1],
            options.head_model(split.n_classes).head,
            config=options.train_config,
            kernel=options.kernel,
            training=self.training,
            dtype=options.dtype,
            attack_targets=tuple(attack_targets),
        )

    def train(self, keys: Mapping[str, jax.Array], null: str | None = None) -> FittedModel:
        """The network trained from ``keys`` on the clean data, its training health assessed (a warning names
        the fit, and the ``null`` kind of a null refit, when it did not train)."""
        spec, config = self.options.head_model(self.split.n_classes), self.options.train_config
        fitted = fit_in_mode(
            spec,
            self.split.X,
            self.split.labels,
            self.split.n_classes,
            mode=self.training,
            keys=keys,
            config=config,
            at_epsilon=self.at_epsilon,
            attack_config=self.attack_config,
        )
        what = fit_label(spec, self.options.seed, self.training) + ("" if null is None else f", null-{null} refit")
        return assess_fit(fitted, self.split, config, what=what)


def train_network(
    data=None,
    *,
    null: str | None = None,
    influence: str = "loo",
    training: str = "standard",
    at_epsilon: float = 0.3,
    attack_config=None,
    attack_targets: Sequence[str] = (),
    **options,
) -> FittedModel:
    """The clean fit :func:`prepare` trains with the same arguments (``null=None``), or the refit of its
    null baseline of that kind (:func:`null_refit`), with its training health — nothing else computed.

    The same network, bit for bit, as the one :func:`prepare` would train: passed back as
    ``prepare(..., fitted=...)`` or ``measure_null(..., refit=...)`` it saves the training. Training is
    pure JAX, so several networks can be trained at once in threads (the malleability runner does).
    Like :func:`prepare`, it plans the memory first (``attack_targets`` as there).
    """
    setting = _Setting.of(data, None, None, None, None, influence, training, at_epsilon, attack_config, options)
    setting.plan(attack_targets)
    keys = setting.options.keys()
    return setting.train(keys if null is None else null_keys(keys, null), null)


def prepare(
    data=None,
    *,
    X=None,
    y=None,
    X_test=None,
    y_test=None,
    influence: str = "loo",
    training: str = "standard",
    at_epsilon: float = 0.3,
    attack_config=None,
    attack_targets: Sequence[str] = (),
    fitted: FittedModel | None = None,
    **options,
) -> Experiment:
    """Validate the inputs, plan the memory, train on clean data and compute the clean influence matrix I.

    Arguments as in ``kernelattn.experiments.malleability.api.malleability``: ``influence`` is
    the influence method ("loo", "if") and ``**options`` the other fields of
    :class:`kernelattn.learning.model_influence.FitOptions` (model, width, ridge, seed, kernel,
    targets, train_config, dtype), validated here once. ``at_epsilon`` is the radius of PGD
    adversarial training (``training="pgd-at"``); ``attack_targets``: the attack targets ("model",
    "kernel") to include in the memory plan. Before anything is trained, :func:`plan_memory`
    refuses a model whose training, influence kernel or attacks would not fit (``MemoryPlanError``).
    ``fitted``: the clean fit of an earlier ``prepare`` with the same data, model, width, seed,
    training and configs (say, for another influence kernel), reused instead of training again.
    """
    setting = _Setting.of(data, X, y, X_test, y_test, influence, training, at_epsilon, attack_config, options)
    split, fit_options, training, _, attack_config = setting
    keys = fit_options.keys()
    setting.plan(attack_targets)
    if fitted is None:
        fitted = setting.train(keys)
    clean = fitted_influence(
        fitted, split.X, split.labels, split.X_test, split.labels_test, n_classes=split.n_classes, options=fit_options
    )
    return Experiment(
        split,
        fitted,
        dataclasses.replace(clean, seed=fit_options.seed),
        fit_options,
        training,
        setting.at_epsilon if training == "pgd-at" else None,
        attack_config,
        keys,
    )


@functools.lru_cache(maxsize=32)
def _attack_loss(experiment: Experiment, config: AttackConfig, on: str = "train"):
    """The attack objective of an experiment, as a function of the training inputs (``on="train"``)
    or of the test inputs (``on="test"``, the training set fixed and clean).

    One function object per (experiment, config, on), so repeated measurements (ε sweeps,
    interventions) reuse the compiled attack.
    """
    fitted, split, options = experiment.fitted, experiment.split, experiment.options
    if config.target == "kernel":
        kernel_fn = kernel_function(fitted, options.kernel)
        targets = one_vs_rest(split.labels, split.n_classes, options.targets)
        if on == "train":
            return kernel_ridge_loss(kernel_fn, targets, options.ridge)
        x = jnp.asarray(split.X, fitted.spec.dtype)
        k = np.asarray(kernel_fn(x), np.float64)
        alpha = jnp.asarray(np.linalg.solve((k + k.T) / 2 + options.ridge * np.eye(len(k)), targets), x.dtype)
        return kernel_predictor_loss(
            jax.tree_util.Partial(kernel_prediction, kernel_fn, x, alpha),
            one_vs_rest(split.labels_test, split.n_classes, options.targets),
        )
    if on == "train":
        return model_loss(fitted.outputs_fn(), split.train_targets(options.train_config), fitted.loss)
    context = jnp.asarray(split.X, fitted.spec.dtype)
    return model_loss(
        fitted.outputs_fn(context), split.train_targets(options.train_config, split.labels_test), fitted.loss
    )


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

    Args as in ``kernelattn.experiments.malleability.api.malleability``; ``attack_config`` defaults to the
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
    if experiment.options.kernel not in RIDGE_KERNELS and config.target == "kernel":
        raise InputValueError(
            f"attack_config.target: 'kernel' needs a kernel ridge influence (kernel in "
            f"{list(RIDGE_KERNELS)}), got kernel={experiment.options.kernel!r}"
        )
    start = time.perf_counter()
    split = experiment.split
    influential = influential_points(experiment.clean.scores, tau)
    if intervention == "curated":
        change = _curate(split, influential, tau)
    else:
        chosen = influential if intervention == "transformed" else None
        change = _attack(experiment, config, attack, epsilon, chosen, on="test" if intervention == "test" else "train")
    fitted = experiment.fitted
    if retrain and intervention != "test":
        fitted = experiment.refit(change.X, change.labels, keys=experiment.keys, attack_config=config)
    perturbed = experiment.influence_of(fitted, change.X, change.labels, change.X_test)
    return _report(
        experiment,
        change,
        perturbed,
        intervention=intervention,
        tau=tau,
        retrain=retrain,
        start=start,
        health=experiment.fitted.health,
    )


@dataclasses.dataclass(frozen=True)
class _Intervened:
    """The data after an intervention, and what was done.

    Attributes:
      X, labels: ``(n', d)`` raw training inputs and ``(n',)`` int labels; X_test: ``(n*, d)`` raw test inputs.
      columns: ``(n',)`` indices of the kept training points in the clean set.
      intervened: indices of the perturbed (or removed) points.
      attack, epsilon, effective: the attack run ("none", 0.0, None when none); perturbation: its summary.
    """

    X: np.ndarray
    labels: np.ndarray
    X_test: np.ndarray
    columns: np.ndarray
    intervened: np.ndarray
    perturbation: dict
    attack: str = "none"
    epsilon: float = 0.0
    effective: bool | None = None


def _curate(split: TrainTest, influential: np.ndarray, tau: float) -> _Intervened:
    """The training set without its ``influential`` points."""
    n = split.X.shape[0]
    columns = np.setdiff1d(np.arange(n), influential)
    if columns.size == 0:
        raise InputValueError(
            f"tau: removing the top-τ points must leave some training points, got tau={tau} with n={n}"
        )
    perturbation = {"linf": 0.0, "mean_linf": 0.0, "mean_l2": 0.0, "n_perturbed": 0, "n_removed": int(influential.size)}
    return _Intervened(split.X[columns], split.labels[columns], split.X_test, columns, influential, perturbation)


def _attack(
    experiment: Experiment, config: AttackConfig, attack: str, epsilon: float, chosen: np.ndarray | None, *, on: str
) -> _Intervened:
    """The training set (``on="train"``) or the test set (``on="test"``) attacked with the experiment's
    attack key: every point, or only the ``chosen`` indices."""
    split = experiment.split
    n = split.X.shape[0]
    x_attacked = split.X_test if on == "test" else split.X
    check_in_bounds(x_attacked, config.bounds, "X_test" if on == "test" else "X")
    head = experiment.fitted.spec.head
    memory.ensure_fits(
        memory.attack_memory(
            max(n, x_attacked.shape[0]),
            split.X.shape[1],
            width=head.width,
            out_dim=head.out_dim,
            target=config.target,
            n_params=memory.head_param_count(
                split.X.shape[1],
                head.width,
                out_dim=head.out_dim,
                use_bias=head.use_bias,
                train_readout=head.train_readout,
            ),
        )
    )
    mask = np.zeros(x_attacked.shape[0], bool)
    mask[slice(None) if chosen is None else chosen] = True
    result = run_attack(
        _attack_loss(experiment, config, on),
        x_attacked,
        method=attack,
        epsilon=epsilon,
        key=experiment.keys["attack"],
        config=config,
        mask=mask,
    )
    perturbation = {k: v for k, v in result.summary().items() if k not in ("method", "epsilon")}
    perturbation["target"] = config.target
    x_new, x_test_new = (split.X, result.x_adv) if on == "test" else (result.x_adv, split.X_test)
    return _Intervened(
        x_new,
        split.labels,
        x_test_new,
        np.arange(n),
        np.flatnonzero(mask),
        perturbation,
        attack,
        epsilon,
        bool(result.effective),
    )


def _report(
    experiment: Experiment,
    change: _Intervened,
    perturbed: InfluenceResult,
    *,
    intervention: str,
    tau: float,
    retrain: bool,
    start: float,
    health,
) -> MalleabilityReport:
    """Compare the clean influence (on the columns ``change`` kept) with ``perturbed`` into a
    :class:`MalleabilityReport`; ``start``: the ``time.perf_counter()`` the measurement began at."""
    clean, columns = experiment.clean.scores, change.columns
    metrics = compare_influence(clean[:, columns], perturbed.scores, tau)
    flip, flip_std = finite_mean_std(metrics["flip_rate"])
    rho, rho_std = finite_mean_std(metrics["spearman"])
    overlap, overlap_std = finite_mean_std(metrics["topk_overlap"])
    fitted = experiment.fitted
    return MalleabilityReport(
        model=fitted.spec.name,
        kernel=experiment.options.kernel,
        influence=experiment.options.method,
        training=experiment.training,
        intervention=intervention,
        attack=change.attack,
        epsilon=change.epsilon,
        tau=tau,
        ridge=experiment.options.ridge,
        seed=experiment.options.seed,
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
        intervened=change.intervened,
        perturbation=change.perturbation,
        factorization=(experiment.clean.factorization, perturbed.factorization),
        retrain=retrain,
        seconds=time.perf_counter() - start,
        attack_effective=change.effective,
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
    setting = _Setting(
        experiment.split, experiment.options, experiment.training, experiment.at_epsilon, experiment.attack_config
    )
    return setting.train(null_keys(experiment.keys, kind), kind)


def measure_null(
    experiment: Experiment, *, kind: str = "seed", tau: float = 0.1, refit: FittedModel | None = None
) -> MalleabilityReport:
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
    perturbed = experiment.influence_of(refit, split.X, split.labels, split.X_test)
    unchanged = _Intervened(split.X, split.labels, split.X_test, np.arange(split.X.shape[0]), np.zeros(0, np.int64), {})
    return _report(
        experiment,
        unchanged,
        perturbed,
        intervention=f"null-{kind}",
        tau=tau,
        retrain=True,
        start=start,
        health=refit.health,
    )
