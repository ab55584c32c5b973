"""PGD adversarial training (Madry et al. 2018) of a :class:`~kernelattn.learning.fitting.HeadModel`, and the
one entry point that fits a model in either training mode.

Transductive: each epoch, PGD perturbs the whole training set jointly to
maximize the current network's training loss, with gradients through the
attention over the perturbed set; then one epoch of minibatch Adam on the
perturbed set, whose features attend over the perturbed set.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kernelattn.errors import InputValueError
from kernelattn.learning.attacks import AttackConfig, pgd
from kernelattn.learning.fitting import FittedModel, HeadModel, fit_model
from kernelattn.learning.training import TrainConfig, class_targets, epoch_batches, loss_value, make_optimizer

#: Training modes: plain minibatch Adam, or PGD adversarial training.
TRAININGS = ("standard", "pgd-at")


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

    Args:
      spec: the model.
      X: ``(n, d)`` raw training inputs; targets: ``(n, C)`` training targets.
      key_init, key_train: PRNG keys of the initialization and of the epochs (PGD starts, shuffles).
      config: optimization settings; epsilon: the ℓ∞ radius of the attack.
      attack_config: PGD steps, step size, random start and bounds.

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
        spec,
        config,
        attack_config,
        min(config.batch_size, x.shape[0]),
        params,
        rest,
        opt_state,
        x,
        y,
        jax.random.split(key_train, config.epochs),
        jnp.asarray(epsilon, dtype),
        jnp.asarray(eta, dtype),
    )
    return FittedModel(
        spec,
        {"params": params, **rest},
        initial,
        np.asarray(losses, np.float64),
        "pgd-at",
        config.resolved_loss(y.shape[1]),
    )


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
            full_loss,
            x,
            epsilon,
            key=k_attack,
            steps=attack_config.steps,
            step_size=eta,
            random_start=attack_config.random_start,
            bounds=attack_config.bounds,
        )
        features = spec.features(jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(x_adv))
        idx, w = epoch_batches(k_order, n, batch_size, x.dtype)

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


def fit_in_mode(
    spec: HeadModel,
    X,
    labels,
    n_classes: int,
    *,
    mode: str,
    keys: Mapping[str, jax.Array],
    config: TrainConfig,
    at_epsilon: float | None,
    attack_config: AttackConfig,
) -> FittedModel:
    """Train ``spec`` on raw X with int ``labels`` in a training mode (``TRAININGS``).

    Args:
      spec: the model.
      X: ``(n, d)`` raw training inputs; labels: ``(n,)`` int classes of ``n_classes``.
      mode: "standard" (:func:`kernelattn.learning.fitting.fit_model`) or "pgd-at" (:func:`adversarial_fit`
        at radius ``at_epsilon`` with ``attack_config``).
      keys: PRNG keys ``{"init", "train", …}`` (``kernelattn.learning.fitting.split_keys``).
      config: optimization settings.
    """
    targets = class_targets(labels, n_classes, config.out_dim(n_classes))
    if mode == "standard":
        return fit_model(spec, X, targets, key_init=keys["init"], key_train=keys["train"], config=config)
    if at_epsilon is None:
        raise InputValueError("at_epsilon: training 'pgd-at' needs a radius, got None")
    return adversarial_fit(
        spec,
        X,
        targets,
        key_init=keys["init"],
        key_train=keys["train"],
        config=config,
        epsilon=at_epsilon,
        attack_config=attack_config,
    )
