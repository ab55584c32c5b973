"""FGSM / PGD / MIM on the whole training set, through the transductive attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from kernelattn.learning.attacks import AttackConfig, kernel_ridge_loss, model_loss, run_attack
from kernelattn.learning.fitting import FittedModel, resolve_model
from kernelattn.learning.influence import one_vs_rest
from kernelattn.learning.model_influence import kernel_function


@pytest.fixture(scope="module")
def setup():
    x, labels = load_digits(return_X_y=True)
    x, labels = x[:40] / 16.0, labels[:40]
    spec = resolve_model("mlp-attn", 16, 10, "float64")
    variables = spec.init(jax.random.PRNGKey(0), spec.features(x, x))
    targets = np.eye(10)[labels]
    loss = model_loss(lambda z: spec.outputs(variables, z, z), targets, "xent")
    return x, labels, spec, variables, loss


@pytest.mark.parametrize("method", ["fgsm", "pgd", "mim"])
def test_attack_stays_in_ball_and_range_and_increases_loss(setup, method):
    x, _, _, _, loss = setup
    epsilon = 0.1
    result = run_attack(loss, x, method=method, epsilon=epsilon, key=jax.random.PRNGKey(1), config={"steps": 4})
    delta = result.x_adv - x
    assert np.max(np.abs(delta)) <= epsilon + 1e-12
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert result.loss_adv > result.loss_clean
    assert result.loss_clean == pytest.approx(float(jax.jit(loss)(jnp.asarray(x))), rel=1e-12)
    assert result.linf == pytest.approx(np.max(np.abs(delta))) and result.linf > 0.5 * epsilon
    assert result.n_perturbed == x.shape[0] and result.steps == (1 if method == "fgsm" else 4)


def test_attack_couples_points_through_attention_and_respects_mask(setup):
    x, _, _, _, loss = setup
    # Gradient of the loss w.r.t. one training point is non-zero even through other points' features.
    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(x)))
    assert np.all(np.any(g != 0, axis=1))
    mask = np.zeros(x.shape[0], bool)
    mask[:5] = True
    result = run_attack(loss, x, method="pgd", epsilon=0.2, config=AttackConfig(steps=4), mask=mask)
    np.testing.assert_array_equal(result.x_adv[5:], x[5:])
    assert np.max(np.abs(result.x_adv[:5] - x[:5])) > 0
    assert result.n_perturbed == 5 and result.loss_adv > result.loss_clean
    zero = run_attack(loss, x, method="mim", epsilon=0.0, config={"steps": 4})
    np.testing.assert_array_equal(zero.x_adv, x)


def test_kernel_ridge_attack_increases_its_loss(setup):
    x, labels, spec, variables, _ = setup

    fitted = FittedModel(spec, variables, variables, np.zeros(0))
    loss = kernel_ridge_loss(kernel_function(fitted, "empirical"), one_vs_rest(labels, 10), 1e-3)
    result = run_attack(loss, x, method="pgd", epsilon=0.1, config={"steps": 3, "target": "kernel"})
    assert np.isfinite(result.loss_adv) and result.loss_adv > result.loss_clean
    assert np.max(np.abs(result.x_adv - x)) <= 0.1 + 1e-12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": -0.1}, "epsilon"),
        ({"method": "cw"}, "attack"),
        ({"config": {"steps": 0}}, "steps"),
        ({"config": {"stepz": 3}}, "unknown key"),
        ({"config": {"bounds": (1.0, 0.0)}}, "bounds"),
        ({"config": {"target": "logits"}}, "target"),
        ({"mask": np.ones(3, bool)}, "mask"),
        ({"x": np.full((4, 64), 2.0)}, "valid range"),
    ],
)
def test_attack_validation(setup, kwargs, match):
    x, _, _, _, loss = setup
    args = {"method": "pgd", "epsilon": 0.1}
    x = kwargs.pop("x", x)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run_attack(loss, x, **args)


def test_non_finite_gradient_entries_do_not_move():
    from kernelattn.learning.attacks import finite_grad, fgsm

    loss = lambda x: jnp.sum(jnp.sqrt(x))  # noqa: E731 - d/dx √x is inf at 0
    x = jnp.array([[0.0, 0.25], [0.5, 0.0]])
    assert not np.isfinite(np.asarray(jax.grad(loss)(x))).all()
    g = np.asarray(finite_grad(loss)(x))
    assert np.isfinite(g).all() and g[0, 0] == 0 and g[0, 1] == 1.0
    moved = np.asarray(fgsm(loss, x, 0.1)) != np.asarray(x)
    np.testing.assert_array_equal(moved, [[False, True], [True, False]])
