"""Influence scores of kernel ridge regression (MATH.md §9) and the model → kernel pipeline."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from kernelattn.kernels import guards
from kernelattn.kernels.guards import KernelError, KernelWarning
from kernelattn.learning.fitting import HeadModel, resolve_data, resolve_model
from kernelattn.learning.influence import influence_scores, one_vs_rest
from kernelattn.learning.model_influence import empirical_ntk_jnp, infinite_ntk_jnp, influence
from kernelattn.kernels.analytic import head_kernels
from kernelattn.kernels.empirical import structured_head_ntk
from kernelattn.models import HeadConfig, make_model


def _psd(rng, n, n_test, d=6):
    """A PSD kernel (linear + Gaussian) on random points, split train / test-train."""
    z = rng.normal(size=(n + n_test, d))
    full = z @ z.T / d + np.exp(-np.sum((z[:, None] - z[None]) ** 2, -1) / 4)
    return full[:n, :n], full[n:, :n]


def _refit_loo(k, k_star, y, ridge, i):
    keep = np.delete(np.arange(k.shape[0]), i)
    alpha = np.linalg.solve(k[np.ix_(keep, keep)] + ridge * np.eye(keep.size), y[keep])
    return k_star[:, keep] @ alpha


@pytest.fixture(scope="module")
def digits():
    x, labels = load_digits(return_X_y=True)
    return x / 16.0, labels


@pytest.mark.parametrize("multi", [False, True])
def test_loo_equals_brute_force_refit(rng, multi):
    n, n_test, ridge = 25, 6, 0.05
    k, k_star = _psd(rng, n, n_test)
    if multi:
        labels = rng.integers(0, 3, n)
        test_labels = rng.integers(0, 3, n_test)
        y = one_vs_rest(labels, 3)
    else:
        y, test_labels = rng.normal(size=n), None
    result = influence_scores(k, k_star, y, ridge, test_labels=test_labels)
    assert result.method == "loo" and result.factorization == "cholesky"
    assert result.scores.shape == (n_test, n)
    y2 = y[:, None] if y.ndim == 1 else y
    cols = np.zeros(n_test, int) if test_labels is None else test_labels
    full = (k_star @ np.linalg.solve(k + ridge * np.eye(n), y2))[np.arange(n_test), cols]
    np.testing.assert_allclose(result.predictions, full, rtol=1e-10, atol=1e-12)
    for i in range(n):
        loo = _refit_loo(k, k_star, y2, ridge, i)[np.arange(n_test), cols]
        np.testing.assert_allclose(result.scores[:, i], full - loo, rtol=1e-8, atol=1e-10)


def test_influence_function_form_matches_definition(rng):
    n, n_test, ridge = 20, 5, 0.1
    k, k_star = _psd(rng, n, n_test)
    labels, test_labels = rng.integers(0, 4, n), rng.integers(0, 4, n_test)
    y = one_vs_rest(labels, 4, "onehot")
    result = influence_scores(k, k_star, y, ridge, test_labels=test_labels, method="if")
    h = np.linalg.inv(k + ridge * np.eye(n))  # the definition, with an explicit inverse
    residual = y - k @ (h @ y)
    expected = (k_star @ h) * residual[:, test_labels].T
    np.testing.assert_allclose(result.scores, expected, rtol=1e-9, atol=1e-12)
    loo = influence_scores(k, k_star, y, ridge, test_labels=test_labels)
    # r = λα and I_IF = λ H_ii · I_LOO: same signs everywhere.
    np.testing.assert_allclose(result.scores, loo.scores * ridge * np.diag(h)[None, :], rtol=1e-9, atol=1e-14)


def _wide_empirical_ntk(f, f2, width, rng):
    """Structured empirical NTK (MATH.md §7) of a fresh head, fixed ±1 readout, σ's = 1:
    Θ_m = (1/m) (S Sᵀ) ⊙ (F F₂ᵀ/d), S = 1[F W > 0], W ~ N(0, 1)."""
    w = rng.normal(size=(f.shape[1], width))
    s, s2 = (f @ w > 0).astype(float), (f2 @ w > 0).astype(float)
    return (s @ s2.T) / width * (f @ f2.T) / f.shape[1]


@pytest.mark.parametrize("model", ["relu", "mlp-attn"])
def test_infinite_and_wide_empirical_influence_converge(digits, model):
    x, labels = digits
    spec = resolve_model(model, 1, 10, "float64")
    f = np.asarray(spec.features(x[:50], x[:40]))
    y = one_vs_rest(labels[:40], 10)
    ridge = 1e-3
    k_inf = np.asarray(head_kernels(f, f[:40], HeadConfig(width=1)).ntk)
    exact = influence_scores(k_inf[:40], k_inf[40:], y, ridge, test_labels=labels[40:50]).scores
    rng = np.random.default_rng(7)
    errors = []
    for width in (2**6, 2**10, 2**14, 2**17):
        k_m = _wide_empirical_ntk(f, f[:40], width, rng)
        approx = influence_scores(k_m[:40], k_m[40:], y, ridge, test_labels=labels[40:50]).scores
        errors.append(np.linalg.norm(approx - exact) / np.linalg.norm(exact))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.2 * errors[0]


def test_jnp_kernels_match_kernelattn_and_have_finite_gradients(rng):
    x = rng.uniform(size=(12, 7))
    spec = resolve_model(make_model("mlp-attn", 50, 3, sigma_b=0.3, train_readout=True), 1, 3, "float64")
    f = spec.features(x, x)
    variables = spec.init(jax.random.PRNGKey(0), f)
    np.testing.assert_allclose(
        jax.jit(infinite_ntk_jnp, static_argnums=2)(f, None, spec.head), head_kernels(np.asarray(f), head=spec.head).ntk, rtol=1e-12, atol=1e-14
    )
    merged = dict(variables["params"])
    np.testing.assert_allclose(
        jax.jit(empirical_ntk_jnp, static_argnums=2)(f, None, spec.head, variables),
        structured_head_ntk(merged, spec.head, np.asarray(f), dtype="float64"),
        rtol=1e-12, atol=1e-14,
    )
    grad = jax.jit(jax.grad(lambda z: jnp.sum(infinite_ntk_jnp(spec.features(z, z), spec.features(z, z), spec.head))))(
        jnp.asarray(x)
    )
    assert np.all(np.isfinite(grad))


def test_head_model_equals_flax_model(rng):
    x = rng.uniform(size=(10, 5))
    model = make_model("mlp-attn", 16, 2, param_dtype=jnp.float64)
    spec = resolve_model(model, 999, 2, "float64")
    assert spec.head.width == 16 and spec.name == "mlp-attn"
    variables = spec.init(jax.random.PRNGKey(0), spec.features(x, x))
    full = {"params": {"head": variables["params"]}, "constants": {"head": variables["constants"]}}
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(
        spec.outputs(variables, x[:4], x), jax.jit(model.apply)(full, unit[:4], unit), rtol=1e-12
    )


def test_influence_end_to_end(digits):
    # epochs=0: the network at initialization (training itself is exercised by test_malleability).
    x, labels = digits
    result = influence(
        X=x[:40], y=labels[:40], X_test=x[40:48], y_test=labels[40:48], model="relu", width=32,
        train_config={"epochs": 0}, kernel="infinite",
    )
    assert result.scores.shape == (8, 40)
    assert result.kernel == "infinite" and result.method == "loo" and result.factorization == "cholesky"
    assert result.model == "relu" and result.width == 32 and result.train_losses.shape == (0,)
    assert np.all(np.isfinite(result.scores))
    assert result.to_dict()["n_train"] == 40


def test_asymmetric_train_kernel_is_reported_not_silently_symmetrized(rng):
    n, n_test, ridge = 20, 4, 0.1
    k, k_star = _psd(rng, n, n_test)
    y = rng.normal(size=n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelWarning)
        clean = influence_scores(k, k_star, y, ridge)  # symmetric: nothing to report
    bad = k.copy()
    bad[0, 1] += 0.3 * np.abs(k).max()
    relative = np.linalg.norm(bad - bad.T) / np.linalg.norm(bad)
    with pytest.warns(KernelWarning, match=f"kernel 'k_train'.*‖K − Kᵀ‖_F/‖K‖_F = {relative:.2g} >"):
        result = influence_scores(bad, k_star, y, ridge)
    assert result.scores.shape == clean.scores.shape
    with guards.strict(), pytest.raises(KernelError, match="not symmetric"):
        influence_scores(bad, k_star, y, ridge)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ridge": 0.0}, "ridge"),
        ({"ridge": -1.0}, "ridge"),
        ({"k_train": np.ones((4, 3))}, "k_train: expected a square"),
        ({"k_test_train": np.ones((2, 3))}, "k_test_train"),
        ({"y": np.ones(3)}, "y: expected shape"),
        ({"test_labels": None}, "test_labels"),
        ({"test_labels": np.array([0, 5])}, "test_labels"),
        ({"method": "exact"}, "influence"),
    ],
)
def test_influence_scores_validation(kwargs, match):
    args = {
        "k_train": np.eye(4), "k_test_train": np.ones((2, 4)), "y": one_vs_rest(np.array([0, 1, 2, 0]), 3),
        "ridge": 1e-3, "test_labels": np.array([0, 1]), "method": "loo",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        influence_scores(args.pop("k_train"), args.pop("k_test_train"), args.pop("y"), args.pop("ridge"), **args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "transformer"}, "model"),
        ({"model": "qkv-attn"}, "model"),
        ({"kernel": "ntk"}, "kernel"),
        ({"method": "exact"}, "method"),
        ({"ridge": 0}, "ridge"),
        ({"X_test": np.ones((3, 5))}, "X_test"),
        ({"y": np.zeros(7, int)}, "y"),
        ({"targets": "binary"}, "targets"),
    ],
)
def test_influence_validation(digits, kwargs, match):
    x, labels = digits
    args = {"X": x[:10], "y": labels[:10], "X_test": x[10:13], "y_test": labels[10:13], "width": 8}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        influence(**args)


def test_resolve_data_accepts_dataset_like_objects(digits):
    x, labels = digits

    class Data:
        X_train, labels_train, X_test, labels_test = x[:10], labels[:10], x[10:14], labels[10:14]
        class_names = tuple(str(i) for i in range(10))

    split = resolve_data(Data())
    assert split.n_classes == 10 and split.X.shape == (10, 64) and split.labels_test.shape == (4,)
    with pytest.raises(ValueError, match="either data or the arrays"):
        resolve_data(Data(), X=x[:10])
    with pytest.raises(ValueError, match="out_dim"):
        resolve_model(make_model("relu", 8, 3), 8, 10, "float64")
    assert isinstance(resolve_model("2l-relu", 8, 10, "float64"), HeadModel)
