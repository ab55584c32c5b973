"""Attribution of a trained network by its own gradients: a kernelattn head or any Flax module (docs/math.md §14).

A :class:`GradientModel` is what the gradient estimators of
:mod:`kernelattn.learning.attribution` need from a network — its apply
function on the inputs it acts on, its trained parameters, its loss, the
checkpoints of its training and, for representer points, the input of its
last linear layer. :func:`head_gradient_model` builds it for a fitted
kernelattn head, :func:`module_gradient_model` for a user's Flax module;
:func:`gradient_attribution` runs any estimator but the kernel ridge ones
(those are :func:`kernelattn.learning.influence.influence_scores` on a
kernel of the model).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn._validation import check_choice
from kernelattn.errors import InputValueError
from kernelattn.learning.attribution import (
    GRADIENT_METHODS,
    gradient_products,
    output_jacobian,
    output_loss_gradients,
    projected_features,
    projection_matrix,
    representer_scores,
    trak_scores,
)
from kernelattn.learning.fitting import FittedModel, HeadApply, HeadModel, flat_head
from kernelattn.learning.influence import InfluenceResult
from kernelattn.models import head_preactivations

#: The estimators :func:`gradient_attribution` runs.
NETWORK_METHODS = (*GRADIENT_METHODS, "trak")


@dataclasses.dataclass(frozen=True)
class HeadPenultimate:
    """``(rest, params, features) ↦ (n, m)`` input of the head's readout, σ_a relu(H)/√m (f = φ a)."""

    spec: HeadModel

    def __call__(self, rest: dict, params: dict, features: jax.Array) -> jax.Array:
        head = self.spec.head
        hidden = head_preactivations(head, flat_head({"params": params, **rest}), features)
        return head.sigma_a * jax.nn.relu(hidden) / math.sqrt(head.width)


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """``(rest, context, params, x) ↦ module.apply({"params": params, **rest}, x[, context])``: a user's
    Flax module with its other collections (and, when its ``__call__`` takes a second argument, the
    training set as context) bound; compared by value, so one module configuration compiles once."""

    module: Any
    takes_context: bool

    def __call__(self, rest: dict, context: jax.Array, params: dict, x: jax.Array) -> jax.Array:
        variables = {"params": params, **rest}
        return self.module.apply(variables, x, context) if self.takes_context else self.module.apply(variables, x)


@dataclasses.dataclass(frozen=True)
class GradientModel:
    """A trained network seen through its parameters.

    Attributes:
      apply_fn: ``jax.tree_util.Partial`` ``(params, x (b, ...)) -> (b, C)``, acting row by row.
      params: the trained parameters θ_T (pytree).
      loss: the training loss, "mse" or "xent".
      checkpoints: θ_c saved during training (TracIn); empty: θ_T alone.
      learning_rate: the step size η of every checkpoint.
      initial: θ₀, or ``None`` when unknown.
      penultimate: ``jax.tree_util.Partial`` ``(params, x) -> (b, h)``, the input of the last linear
        layer (representer points), or ``None``.
    """

    apply_fn: Any
    params: Any
    loss: str
    checkpoints: tuple = ()
    learning_rate: float = 1.0
    initial: Any = None
    penultimate: Any = None

    def outputs(self, x) -> np.ndarray:
        """``(b, C)`` float64 outputs at θ_T."""
        return np.asarray(self.apply_fn(self.params, jnp.asarray(x, self.dtype)), np.float64)

    @property
    def dtype(self):
        return jax.tree_util.tree_leaves(self.params)[0].dtype


def head_gradient_model(fitted: FittedModel, learning_rate: float) -> GradientModel:
    """The :class:`GradientModel` of a fitted head (inputs: its features, ``HeadModel.features``)."""
    rest = {k: v for k, v in fitted.variables.items() if k != "params"}
    return GradientModel(
        apply_fn=jax.tree_util.Partial(HeadApply(fitted.spec.head, fitted.spec.dtype), rest),
        params=fitted.variables["params"],
        loss=fitted.loss,
        checkpoints=tuple(v["params"] for v in fitted.checkpoints),
        learning_rate=learning_rate,
        initial=fitted.initial["params"],
        penultimate=jax.tree_util.Partial(HeadPenultimate(fitted.spec), rest),
    )


def takes_context(module) -> bool:
    """Whether a Flax module's ``__call__`` takes a second positional argument (kernelattn's context)."""
    try:
        parameters = list(inspect.signature(module.__call__).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def module_gradient_model(
    module, variables: dict, context, loss: str, *, checkpoints: tuple = (), learning_rate: float = 1.0, initial=None
) -> GradientModel:
    """The :class:`GradientModel` of a user's Flax module at ``variables`` (``{"params": …, …}``).

    The module is called as ``module.apply(variables, x)``, or ``module.apply(variables, x, context)``
    with ``context`` the ``(n, d)`` training inputs when its ``__call__`` takes a second argument.
    """
    if not hasattr(variables, "items") or "params" not in variables:
        raise InputValueError(
            f"variables: expected Flax variables {{'params': ..., ...}}, got {type(variables).__name__}"
        )
    variables = dict(variables)
    params = variables.pop("params")
    apply_fn = jax.tree_util.Partial(ModuleApply(module, takes_context(module)), variables, context)
    return GradientModel(apply_fn, params, loss, tuple(checkpoints), learning_rate, initial)


def true_outputs(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(n*,)`` each test point's output on its true class (the one output of a ±1 network)."""
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs[np.arange(len(labels)), labels]


def gradient_attribution(
    model: GradientModel,
    x,
    targets,
    x_test,
    targets_test,
    method: str,
    *,
    ridge: float,
    ridge_targets=None,
    test_labels=None,
    projection_dim: int = 512,
    key: jax.Array | None = None,
    at_init: bool = False,
    block: int = 128,
) -> InfluenceResult:
    """Scores ``(n*, n)`` of a network estimator, with self-influence.

    Args:
      model: the network.
      x, x_test: ``(n, ...)`` / ``(n*, ...)`` inputs of ``model.apply_fn``.
      targets, targets_test: ``(n, C)`` / ``(n*, C)`` the network's training targets of both splits.
      method: "tracin" (checkpoints, step-size weighted), "grad-dot", "grad-cos", "representer" or "trak".
      ridge: λ > 0: the damping of TRAK, the L2 weight of the representer decomposition.
      ridge_targets, test_labels: TRAK's ridge targets ``(n,)`` / ``(n, C')`` and ``(n*,)`` test classes
        (as for ``influence_scores``).
      projection_dim: TRAK's k.
      key: PRNG key of TRAK's projection (default ``PRNGKey(0)``).
      at_init: TRAK on the Jacobian at θ₀ (``model.initial``) instead of θ_T.
      block: training rows per gradient batch.
    """
    method = check_choice(method, "method", NETWORK_METHODS)
    dtype = model.dtype
    x, x_test = jnp.asarray(x, dtype), jnp.asarray(x_test, dtype)
    if method in ("tracin", "grad-dot", "grad-cos"):
        if method == "tracin" and model.checkpoints:
            checkpoints, weights = model.checkpoints, [model.learning_rate] * len(model.checkpoints)
        else:
            checkpoints, weights = (model.params,), [model.learning_rate if method == "tracin" else 1.0]
        scores, self_influence = gradient_products(
            model.apply_fn,
            model.loss,
            checkpoints,
            weights,
            x,
            targets,
            x_test,
            targets_test,
            cosine=method == "grad-cos",
            block=block,
        )
    elif method == "representer":
        if model.penultimate is None:
            raise InputValueError(
                "method: 'representer' needs the input of the model's last linear layer "
                "(GradientModel.penultimate); call representer_scores with your own features"
            )
        outputs = model.apply_fn(model.params, x)
        gradients = output_loss_gradients(outputs, model.loss, jnp.asarray(targets, dtype))
        scores, self_influence = representer_scores(
            np.asarray(model.penultimate(model.params, x)),
            np.asarray(model.penultimate(model.params, x_test)),
            np.asarray(gradients),
            np.asarray(targets),
            np.asarray(targets_test),
            ridge,
        )
    else:
        params = model.initial if at_init else model.params
        if params is None:
            raise InputValueError(
                "kernel: 'empirical-init' needs the parameters at initialization, which are unknown "
                "for given variables; use kernel='empirical'"
            )
        jac, jac_test = output_jacobian(model.apply_fn, params, x), output_jacobian(model.apply_fn, params, x_test)
        projection = projection_matrix(
            jax.random.PRNGKey(0) if key is None else key, jac.shape[2], projection_dim, dtype
        )
        return trak_scores(
            projected_features(jac, projection),
            projected_features(jac_test, projection),
            ridge_targets,
            ridge,
            test_labels=test_labels,
        )
    outputs = model.outputs(x_test)
    predictions = (
        np.sum(outputs * np.asarray(targets_test, np.float64), axis=1)
        if test_labels is None
        else true_outputs(outputs, np.asarray(test_labels))
    )
    return InfluenceResult(
        scores,
        method,
        "none",
        float(ridge) if method == "representer" else float("nan"),
        predictions,
        None if test_labels is None else np.asarray(test_labels),
        self_influence=self_influence,
    )
