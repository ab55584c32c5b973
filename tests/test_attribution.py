"""Attribution estimators (docs/math.md §14), each checked against a brute-force or closed-form computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kernelattn.errors import InputValueError
from kernelattn.kernels.empirical import empirical_ntk, structured_head_ntk
from kernelattn.learning.attribution import (
    gradient_products,
    output_jacobian,
    projected_features,
    projection_matrix,
    representer_scores,
)
from kernelattn.learning.attribution_truth import (
    compare_to_ground_truth,
    kernel_loo_by_refit,
    retrained_loo,
)
from kernelattn.learning.fitting import fit_model, flat_head, resolve_model, split_keys
from kernelattn.learning.influence import influence_scores, one_vs_rest, top_k
from kernelattn.learning.model_attribution import (
    gradient_attribution,
    head_gradient_model,
)
from kernelattn.learning.model_influence import FitOptions, influence
from kernelattn.learning.training import TrainConfig, class_targets, loss_value, train
from kernelattn.models import make_model


def _psd(rng, n, n_test, d=5):
    z = rng.normal(size=(n + n_test, d))
    full = z @ z.T / d + np.exp(-np.sum((z[:, None] - z[None]) ** 2, -1) / 4)
    return full[:n, :n], full[n:, :n]


def _data(rng, n=14, n_test=5, d=6, classes=2):
    x = rng.uniform(0.1, 1.0, size=(n + n_test, d))
    labels = np.arange(n + n_test) % classes
    return x[:n], labels[:n], x[n:], labels[n:]


@pytest.fixture(scope="module")
def fitted_head():
    """A small MLP-Attn head trained 12 epochs (MSE, one ±1 output) with 3 checkpoints, and its data."""
    rng = np.random.default_rng(1)
    x, labels, x_test, labels_test = _data(rng)
    config = TrainConfig(epochs=12, batch_size=7, learning_rate=1e-2)
    spec = resolve_model("mlp-attn", 8, 1, "float64")
    keys = split_keys(0)
    fitted = fit_model(spec, x, class_targets(labels, 2, 1), key_init=keys["init"], key_train=keys["train"],
                       config=config, checkpoints=3)
    return fitted, config, x, labels, x_test, labels_test


@pytest.mark.parametrize("method", ["loo", "if"])
def test_kernel_self_influence_and_brute_force_loo(rng, method):
    k, _ = _psd(rng, 12, 0)
    labels = rng.integers(0, 3, 12)
    y = one_vs_rest(labels, 3)
    result = influence_scores(k, k, y, 0.05, test_labels=labels, method=method)
    # self-influence = the diagonal of the scores with the training set as the test set
    np.testing.assert_allclose(result.self_influence, np.diag(result.scores), rtol=1e-9, atol=1e-12)
    if method == "loo":
        np.testing.assert_allclose(result.scores, kernel_loo_by_refit(k, k, y, 0.05, test_labels=labels),
                                   rtol=1e-8, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (3, 7), elements=st.floats(-10, 10, allow_nan=False)), st.integers(1, 7))
def test_top_k_are_the_largest_and_most_negative(scores, k):
    helpful, harmful = top_k(scores, k), top_k(scores, k, "harmful")
    for row, best, worst in zip(scores, helpful, harmful):
        np.testing.assert_array_equal(row[best], np.sort(row)[::-1][:k])
        np.testing.assert_array_equal(row[worst], np.sort(row)[:k])


def test_to_frame_long_format(rng):
    k, k_star = _psd(rng, 6, 3)
    result = influence_scores(k, k_star, rng.normal(size=6), 0.1)
    frame = result.to_frame()
    assert list(frame.columns) == ["test_index", "train_index", "method", "score"] and len(frame) == 18
    wide = frame.pivot(index="test_index", columns="train_index", values="score").to_numpy()
    np.testing.assert_array_equal(wide, result.scores)
    np.testing.assert_array_equal(result.most_harmful(2), top_k(result.scores, 2, "harmful"))


def test_checkpointed_training_is_the_same_training(rng):
    x, labels, _, _ = _data(rng)
    spec = resolve_model("relu", 8, 1, "float64")
    keys = split_keys(3)
    args = {"key_init": keys["init"], "key_train": keys["train"], "config": TrainConfig(epochs=7, batch_size=5)}
    plain = fit_model(spec, x, class_targets(labels, 2, 1), **args)
    saved = fit_model(spec, x, class_targets(labels, 2, 1), checkpoints=3, **args)
    assert len(saved.checkpoints) == 3 and plain.checkpoints == ()
    np.testing.assert_allclose(saved.variables["params"]["W"], plain.variables["params"]["W"], rtol=1e-12)
    np.testing.assert_allclose(saved.losses, plain.losses, rtol=1e-12)
    np.testing.assert_array_equal(saved.checkpoints[-1]["params"]["W"], saved.variables["params"]["W"])


def _hand_gradient(spec, loss, variables, feature, target):
    rest = {k: v for k, v in variables.items() if k != "params"}
    grad = jax.grad(lambda p: loss_value(spec.apply({"params": p, **rest}, feature[None]), target[None],
                                         jnp.ones(1), loss))(variables["params"])
    return np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(grad)])


def test_tracin_and_grad_similarity_equal_hand_summed_gradient_products(fitted_head):
    fitted, config, x, labels, x_test, labels_test = fitted_head
    spec = fitted.spec
    f, f_test = np.asarray(spec.features(x, x)), np.asarray(spec.features(x_test, x))
    y, y_test = class_targets(labels, 2, 1), class_targets(labels_test, 2, 1)
    model = head_gradient_model(fitted, config.learning_rate)
    expected = np.zeros((len(f_test), len(f)))
    expected_self = np.zeros(len(f))
    for variables in fitted.checkpoints:
        g = np.stack([_hand_gradient(spec, "mse", variables, f[i], y[i]) for i in range(len(f))])
        g_test = np.stack([_hand_gradient(spec, "mse", variables, f_test[t], y_test[t]) for t in range(len(f_test))])
        expected += config.learning_rate * g_test @ g.T
        expected_self += config.learning_rate * np.sum(g * g, axis=1)
    for method in ("tracin", "grad-dot", "grad-cos"):
        result = gradient_attribution(model, f, y, f_test, y_test, method, ridge=1e-3, test_labels=labels_test)
        if method == "tracin":
            np.testing.assert_allclose(result.scores, expected, rtol=1e-9, atol=1e-14)
            np.testing.assert_allclose(result.self_influence, expected_self, rtol=1e-9)
            last = (g, g_test)  # the last checkpoint is θ_T
        elif method == "grad-dot":
            np.testing.assert_allclose(result.scores, last[1] @ last[0].T, rtol=1e-9, atol=1e-14)
        else:
            norms = np.outer(np.linalg.norm(last[1], axis=1), np.linalg.norm(last[0], axis=1))
            np.testing.assert_allclose(result.scores, last[1] @ last[0].T / norms, rtol=1e-9)
            np.testing.assert_allclose(result.self_influence, np.ones(len(f)))


def test_representer_against_its_definition(fitted_head):
    fitted, _, x, labels, x_test, labels_test = fitted_head
    spec, ridge = fitted.spec, 0.01
    f, f_test = np.asarray(spec.features(x, x)), np.asarray(spec.features(x_test, x))
    y, y_test = class_targets(labels, 2, 1), class_targets(labels_test, 2, 1)
    head = flat_head(fitted.variables)
    phi = lambda z: np.maximum(z @ np.asarray(head["W"]) / np.sqrt(z.shape[1]), 0) / np.sqrt(8)
    residual = np.asarray(spec.apply(fitted.variables, f)) - y  # ∂(½‖f − y‖²)/∂f
    alpha = -residual / (2 * ridge * len(f))
    expected = np.array([[alpha[i] @ y_test[t] * phi(f[i:i + 1])[0] @ phi(f_test[t:t + 1])[0]
                          for i in range(len(f))] for t in range(len(f_test))])
    result = gradient_attribution(head_gradient_model(fitted, 1.0), f, y, f_test, y_test, "representer", ridge=ridge)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-9, atol=1e-14)


def test_representer_decomposition_is_exact_at_the_ridge_optimum(rng):
    # The theorem: at the minimizer of (1/n) Σ ½‖φ_i A − y_i‖² + λ‖A‖², f(x_t) = Σ_i α_i φ_iᵀφ_t.
    n, h, c, ridge = 15, 6, 3, 0.05
    phi, phi_test = rng.normal(size=(n, h)), rng.normal(size=(4, h))
    y = np.eye(c)[rng.integers(0, c, n)]
    a = np.linalg.solve(phi.T @ phi / n + 2 * ridge * np.eye(h), phi.T @ y / n)
    directions = np.eye(c)[rng.integers(0, c, 4)]
    scores, _ = representer_scores(phi, phi_test, phi @ a - y, y, directions, ridge)
    np.testing.assert_allclose(scores.sum(axis=1), np.sum((phi_test @ a) * directions, axis=1), rtol=1e-10)


def test_trak_projection_tends_to_the_exact_influence_function(fitted_head):
    fitted, _, x, labels, x_test, labels_test = fitted_head
    spec = fitted.spec
    f, f_test = spec.features(x, x), spec.features(x_test, x)
    model = head_gradient_model(fitted, 1.0)
    both = np.concatenate([np.asarray(f), np.asarray(f_test)])
    k = np.asarray(structured_head_ntk(flat_head(fitted.variables), spec.head, both, np.asarray(f), dtype="float64"))
    jac = output_jacobian(model.apply_fn, model.params, jnp.asarray(both))
    p = jac.shape[2]
    # R = √P·I: ΦΦᵀ is the empirical NTK exactly.
    phi = projected_features(jac, jnp.sqrt(p) * jnp.eye(p))
    np.testing.assert_allclose(phi @ phi[: len(f)].T, k, rtol=1e-10, atol=1e-12)
    n = len(f)
    y, ridge = one_vs_rest(labels, 2), 0.05
    exact = influence_scores(k[:n], k[n:], y, ridge, test_labels=labels_test, method="if").scores
    errors = []
    for dim in (8, 128, 8192):
        trak = gradient_attribution(model, f, class_targets(labels, 2, 1), f_test, class_targets(labels_test, 2, 1),
                                    "trak", ridge=ridge, ridge_targets=y, test_labels=labels_test,
                                    projection_dim=dim, key=jax.random.PRNGKey(5))
        assert trak.method == "trak" and trak.self_influence.shape == (n,)
        errors.append(np.linalg.norm(trak.scores - exact) / np.linalg.norm(exact))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1, errors


class UserMLP(nn.Module):
    """A user's model: tanh MLP on the raw rows, three outputs."""

    hidden: int = 12

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, param_dtype=jnp.float64)(jnp.tanh(nn.Dense(self.hidden, param_dtype=jnp.float64)(x)))


def test_user_flax_module_influence_through_its_empirical_ntk(rng):
    x, labels, x_test, labels_test = _data(rng, classes=3)
    module = UserMLP()
    variables = module.init(jax.random.PRNGKey(2), jnp.asarray(x[:1]))
    result = influence(X=x, y=labels, X_test=x_test, y_test=labels_test, model=module, variables=variables,
                       ridge=0.01)
    apply_fn = lambda p, z: module.apply({"params": p}, z)
    k = np.asarray(empirical_ntk(apply_fn, variables["params"], np.concatenate([x, x_test]), x, dtype="float64"))
    expected = influence_scores(k[: len(x)], k[len(x):], one_vs_rest(labels, 3), 0.01, test_labels=labels_test)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-8, atol=1e-12)
    assert result.model == "UserMLP" and result.method == "loo"
    trained = influence(X=x, y=labels, X_test=x_test, y_test=labels_test, model=UserMLP(hidden=5), method="tracin",
                        train_config={"epochs": 4, "batch_size": 7}, checkpoints=2)
    assert trained.scores.shape == (5, 14) and trained.train_losses.shape == (4,)
    assert np.all(np.isfinite(trained.scores)) and np.all(trained.self_influence > 0)
    with pytest.raises(InputValueError, match="^model: expected a module with 3 outputs"):
        influence(X=x, y=labels, X_test=x_test, y_test=labels_test, model=nn.Dense(2),
                  variables=nn.Dense(2).init(jax.random.PRNGKey(0), jnp.asarray(x[:1])))


@pytest.mark.filterwarnings("ignore:.*did not train")
def test_network_methods_through_influence_and_the_legacy_tracin_kernel(fitted_head):
    _, _, x, labels, x_test, labels_test = fitted_head
    common = {"X": x, "y": labels, "X_test": x_test, "y_test": labels_test, "model": "relu", "width": 8,
              "train_config": {"epochs": 3, "batch_size": 7}}
    legacy = influence(kernel="tracin", **common)
    assert np.array_equal(influence(method="grad-dot", **common).scores, legacy.scores)
    for method in ("representer", "trak", "tracin"):
        result = influence(method=method, projection_dim=16, **common)
        assert result.method == method and result.scores.shape == (5, 14) and result.self_influence.shape == (14,)


def test_ground_truth_comparison_and_network_retraining(rng):
    x, labels, x_test, labels_test = _data(rng, n=10, n_test=4)
    spec = resolve_model("relu", 16, 1, "float64")
    config = TrainConfig(epochs=15, batch_size=10, learning_rate=1e-2)
    truth = retrained_loo(spec, x, labels, x_test, labels_test, n_classes=2, config=config, seeds=(0, 1))
    assert truth.shape == (4, 10) and np.all(np.isfinite(truth))
    k, k_star = _psd(rng, 10, 4)
    y = one_vs_rest(labels, 2)
    loo = influence_scores(k, k_star, y, 0.05, test_labels=labels_test)
    estimates = {"loo": loo, "if": influence_scores(k, k_star, y, 0.05, test_labels=labels_test, method="if"),
                 "negated": -loo.scores}
    table = compare_to_ground_truth(estimates, loo, tau=0.3)
    assert list(table["method"]) == ["loo", "if", "negated"]
    exact = table.set_index("method")
    assert np.allclose(exact.loc["loo", ["spearman", "pearson", "topk_overlap", "sign_agreement"]], 1.0)
    assert exact.loc["if", "sign_agreement"] == 1.0  # I_IF = λ H_ii I_LOO: same signs
    assert exact.loc["negated", "sign_agreement"] == 0.0 and np.isclose(exact.loc["negated", "pearson"], -1.0)
    against_network = compare_to_ground_truth({"loo": loo}, truth)
    assert np.all(np.isfinite(against_network[["spearman", "topk_overlap"]].to_numpy()))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: top_k(np.ones((2, 3)), 0), "^k"),
        (lambda: top_k(np.ones((2, 3)), 1, "best"), "^direction"),
        (lambda: representer_scores(np.ones((3, 2)), np.ones((1, 2)), np.ones((2, 1)), np.ones((3, 1)),
                                    np.ones((1, 1)), 0.1), "^output_gradients"),
        (lambda: representer_scores(np.ones((3, 2)), np.ones((1, 2)), np.ones((3, 1)), np.ones((3, 1)),
                                    np.ones((1, 1)), 0.0), "^ridge"),
        (lambda: compare_to_ground_truth({}, np.ones((2, 3))), "^scores_by_method"),
        (lambda: compare_to_ground_truth({"a": np.ones((2, 2))}, np.ones((2, 3))), "^I_prime"),
        (lambda: FitOptions(method="trak", kernel="infinite"), "^kernel"),
        (lambda: FitOptions(method="shapley"), "influence method"),
        (lambda: FitOptions(projection_dim=0), "^projection_dim"),
        (lambda: projection_matrix(jax.random.PRNGKey(0), 4, 0, jnp.float64), "^projection_dim"),
        (lambda: gradient_products(None, "mse", [{}], [1.0, 2.0], None, None, None, None), "^weights"),
        (lambda: train(lambda p, z: z @ p, jnp.ones((2, 1)), np.ones((3, 2)), np.ones(3),
                       key=jax.random.PRNGKey(0), checkpoints=-1), "^checkpoints"),
        (lambda: retrained_loo(None, np.ones((2, 2)), [0, 1], np.ones((1, 2)), [0], n_classes=2,
                               config=TrainConfig(), seeds=()), "^seeds"),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(InputValueError, match=match):
        call()


def test_given_variables_are_for_user_modules_only(rng):
    x, labels, x_test, labels_test = _data(rng)
    with pytest.raises(InputValueError, match="^variables"):
        influence(X=x, y=labels, X_test=x_test, y_test=labels_test, model="relu", variables={"params": {}})
    module = make_model("relu", 4, 1)
    with pytest.raises(InputValueError, match="^variables"):
        influence(X=x, y=labels, X_test=x_test, y_test=labels_test, model=module, variables={"params": {}})
