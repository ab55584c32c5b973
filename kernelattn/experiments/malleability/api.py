"""The public entry points: one malleability measurement with its null baseline, and a grid of them.

Both validate the measurement's own arguments before anything is trained,
then :func:`~kernelattn.experiments.malleability.experiment.prepare` the clean
fit (which builds and validates the shared
:class:`~kernelattn.learning.model_influence.FitOptions`) and
:func:`~kernelattn.experiments.malleability.experiment.measure` on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from kernelattn._precision import precision_policy
from kernelattn._validation import check_choice, check_real
from kernelattn.errors import InputValueError
from kernelattn.experiments.malleability.experiment import (
    INTERVENTIONS,
    NULL_KINDS,
    Experiment,
    measure,
    measure_null,
    prepare,
)
from kernelattn.experiments.malleability.report import MalleabilityReport
from kernelattn.learning.attacks import ATTACKS, as_attack_config, check_in_bounds
from kernelattn.learning.fitting import resolve_data, warn_if_normalized

#: The paper's ε sweep.
EPSILON_SWEEP = (0.1, 0.2, 0.3, 0.5)


def malleability(
    data=None,
    *,
    X=None,
    y=None,
    X_test=None,
    y_test=None,
    attack: str = "pgd",
    epsilon: float = 0.3,
    tau: float = 0.1,
    intervention: str = "adversarial",
    training: str = "standard",
    at_epsilon: float | None = None,
    attack_config=None,
    retrain: bool = False,
    null: str | None = "seed",
    precision=None,
    **options,
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
      attack: "fgsm", "pgd" (default) or "mim".
      epsilon: ℓ∞ radius ε ≥ 0 on [0, 1] pixels (default 0.3, the paper's).
      tau: fraction τ ∈ (0, 1] of top influential points (default 0.1).
      intervention: "adversarial" (default: every training point attacked),
        "transformed" (the top-τ points only), "test" (the test points
        instead) or "curated" (the top-τ points removed).
      training: "standard" (default) or "pgd-at" (PGD adversarial training).
      at_epsilon: radius of adversarial training (default: ``epsilon``).
      attack_config: ``AttackConfig`` or dict (steps 10, PGD step 2.5ε/steps
        with random start, MIM step ε/steps and μ = 1, target "model",
        bounds (0, 1)).
      retrain: also retrain the network on the intervened data (default False).
      null: the null baseline measured beside it (``measure_null``):
        "seed" (default), "order", "rerun", or None for none.
      precision: matmul precision of everything computed (training, attacks,
        kernels): "highest" (``Precision.HIGHEST``) or "fast" (the device's
        default: TF32 on recent GPUs); None → the policy in force
        (``kernelattn.precision_policy``, default "highest").
      **options: ``influence`` — "loo" (exact leave-one-out, default) or "if" —
        and the other fields of :class:`kernelattn.learning.model_influence.FitOptions`:
        ``model`` ("mlp-attn"; "relu" is 2L-ReLU, or a ``TwoLayerReLU`` /
        ``AttentionMLP`` instance), ``width`` (1024), ``ridge`` (1e-3),
        ``seed`` (0; the PRNG keys of init, shuffles / adversarial training
        and the attack are split from ``PRNGKey(seed)``), ``kernel``
        ("empirical": the NTK of the trained width-m network; "empirical-init",
        "infinite" or "tracin"), ``targets`` ("pm1"), ``train_config`` (None:
        AdamW 1e-3 with decoupled weight decay 1e-3, batch 128, 500 epochs)
        and ``dtype`` ("float64").

    Returns:
      A :class:`MalleabilityReport` (``report.null`` holds the null
      baseline, ``report.excess_flip_rate`` the difference; ``report.health``
      the fit's training health, ``report.attack_effective`` whether the
      attack moved its objective).
    """
    if null is not None:
        check_choice(null, "null", NULL_KINDS)
    with precision_policy(precision):
        experiment = _prepare_checked(
            data,
            X=X,
            y=y,
            X_test=X_test,
            y_test=y_test,
            attack=attack,
            epsilon=epsilon,
            tau=tau,
            intervention=intervention,
            training=training,
            at_epsilon=epsilon if at_epsilon is None else at_epsilon,
            attack_config=attack_config,
            **options,
        )
        report = measure(
            experiment, attack=attack, epsilon=epsilon, tau=tau, intervention=intervention, retrain=retrain
        )
        if null is None:
            return report
        return dataclasses.replace(report, null=measure_null(experiment, kind=null, tau=tau))


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
    tau: float = 0.1,
    at_epsilon: float = 0.3,
    attack_config=None,
    retrain: bool = False,
    null: str | None = "seed",
    progress=None,
    precision=None,
    **options,
) -> list[MalleabilityReport]:
    """Grid of :func:`malleability` measurements sharing one clean fit per (model, training).

    Arguments as in :func:`malleability`, with lists for ``models``,
    ``attacks``, ``epsilons`` (the paper's sweep is ``EPSILON_SWEEP = (0.1,
    0.2, 0.3, 0.5)``), ``interventions`` and ``trainings``; ``at_epsilon`` is
    the radius of PGD adversarial training (fixed across the ε grid). The
    curated intervention does not depend on the attack or ε and is measured
    once per clean fit; one null baseline (``null``) per clean fit is attached
    to each of its reports. ``progress``: optional callable receiving each report.
    ``precision``: as in :func:`malleability`; ``**options``: ``influence`` and the
    fields of ``FitOptions`` but ``model``.
    """
    if null is not None:
        check_choice(null, "null", NULL_KINDS)
    if not attacks or not epsilons or not interventions or not models or not trainings:
        raise InputValueError("models, attacks, epsilons, interventions, trainings: expected non-empty sequences")
    attacked = any(i != "curated" for i in interventions)
    reports = []
    with precision_policy(precision):
        for model in models:
            for training in trainings:
                experiment = _prepare_checked(
                    data,
                    X=X,
                    y=y,
                    X_test=X_test,
                    y_test=y_test,
                    attack=attacks[0],
                    epsilon=epsilons[0],
                    tau=tau,
                    intervention="adversarial" if attacked else "curated",
                    model=model,
                    training=training,
                    at_epsilon=at_epsilon,
                    attack_config=attack_config,
                    **options,
                )
                baseline = None if null is None else measure_null(experiment, kind=null, tau=tau)
                for intervention in interventions:
                    grid = [("pgd", 0.0)] if intervention == "curated" else [(a, e) for a in attacks for e in epsilons]
                    for attack, epsilon in grid:
                        report = measure(
                            experiment,
                            attack=attack,
                            epsilon=epsilon,
                            tau=tau,
                            intervention=intervention,
                            retrain=retrain,
                        )
                        report = dataclasses.replace(report, null=baseline)
                        reports.append(report)
                        if progress is not None:
                            progress(report)
    return reports


def _prepare_checked(
    data, *, X, y, X_test, y_test, attack, epsilon, tau, intervention, training, attack_config, **kwargs
) -> Experiment:
    """Check the measurement arguments first (fail before training), then ``prepare``."""
    check_choice(str(attack).lower(), "attack", ATTACKS)
    check_real(epsilon, "epsilon", minimum=0.0)
    check_real(tau, "tau", minimum=0.0, maximum=1.0, strict_min=True)
    check_choice(intervention, "intervention", INTERVENTIONS)
    split = resolve_data(data, X=X, y=y, X_test=X_test, y_test=y_test)
    config = as_attack_config(attack_config)
    if intervention == "test":
        check_in_bounds(split.X_test, config.bounds, "X_test")
    if intervention not in ("curated", "test") or training == "pgd-at":
        check_in_bounds(split.X, config.bounds)
    if intervention != "curated" or training == "pgd-at":
        warn_if_normalized(split)
    return prepare(
        data,
        X=X,
        y=y,
        X_test=X_test,
        y_test=y_test,
        training=training,
        attack_config=attack_config,
        attack_targets=(config.target,) if intervention != "curated" else (),
        **kwargs,
    )
