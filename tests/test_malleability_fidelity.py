"""Training that trains, null baselines, attack efficacy and the protocol variants (docs/math.md §8–10)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernelattn as ka
from kernelattn.kernels import guards
from kernelattn.analysis import paired_bootstrap
from kernelattn.learning.attacks import attack_gain
from kernelattn.learning.fitting import assess_fit, fit_model, resolve_data, resolve_model, split_keys
from kernelattn.learning.model_influence import tracin_scores
from kernelattn.experiments.malleability.experiment import measure, measure_null, null_keys, prepare
from kernelattn.experiments.malleability.runner import spec_variants
from kernelattn.learning.training import TrainConfig, TrainingWarning, UntrainedError, class_targets, loss_value


@pytest.fixture(scope="module")
def binary():
    ka.enable_x64()
    return ka.data.load("digits", classes=(3, 8), n_train=120, n_test=30, normalize=False, target="labels")


def _fit(data, model, config, seed=0):
    split = resolve_data(data)
    spec = resolve_model(model, 128, config.out_dim(split.n_classes), "float64")
    keys = split_keys(seed)
    fitted = fit_model(spec, split.X, split.train_targets(config), key_init=keys["init"], key_train=keys["train"],
                       config=config)
    return split, fitted


def test_coupled_l2_at_ntk_scale_collapses_and_is_flagged(binary):
    config = TrainConfig(epochs=300, weight_decay=1e-1, weight_decay_mode="coupled")
    split, fitted = _fit(binary, "mlp-attn", config)
    with pytest.warns(TrainingWarning, match="did not train"):
        assessed = assess_fit(fitted, split, config, what="collapse")
    assert not assessed.health.trained and assessed.health.loss_ratio > 0.9
    with guards.strict(), pytest.raises(UntrainedError, match="collapse: the network did not train"):
        assess_fit(fitted, split, config, what="collapse")


def test_default_training_trains_relu_on_binary_digits(binary):
    config = TrainConfig()
    split, fitted = _fit(binary, "relu", config)
    assert fitted.loss == "mse" and fitted.spec.head.out_dim == 1  # the paper's one ±1 output
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        health = assess_fit(fitted, split, config, what="relu").health
    assert health.trained and health.test_accuracy >= 0.9 and health.loss_ratio < 0.5
    assert 0 < health.weight_change and 0 < health.varying_units <= 1 and 0 <= health.pattern_change <= 1


def test_decoupled_is_adamw():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.zeros(3)}
    config = TrainConfig(learning_rate=0.1, weight_decay=0.5)
    from kernelattn.learning.training import make_optimizer

    opt = make_optimizer(config)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones(3))  # zero gradient: only −η λ θ


def test_null_rerun_is_exactly_zero_and_seed_null_is_not(binary):
    exp = prepare(binary, model="relu", width=64, train_config={"epochs": 30})
    rerun = measure_null(exp, kind="rerun")
    assert rerun.flip_rate == 0.0 and np.array_equal(rerun.influence_perturbed, exp.clean.scores)
    seed = measure_null(exp, kind="seed")
    assert seed.intervention == "null-seed" and seed.flip_rate > 0
    keys = split_keys(0)
    order = null_keys(keys, "order")
    assert np.array_equal(order["init"], keys["init"]) and not np.array_equal(order["train"], keys["train"])


def test_attack_efficacy_and_no_op():
    assert attack_gain(2.0, 2.0) == 0.0 and attack_gain(1.0, 1.5) == pytest.approx(0.5)
    report = ka.malleability(
        ka.data.load("digits", classes=(3, 8), n_train=40, n_test=10, normalize=False, target="labels"),
        model="relu", width=16, epsilon=0.0, train_config={"epochs": 5}, null=None)
    assert report.attack_effective is False and report.perturbation["loss_gain"] == 0.0


def test_tracin_equals_brute_force_gradient_products(binary):
    config = TrainConfig(epochs=20)
    split, fitted = _fit(binary, "mlp-attn", config)
    targets = split.train_targets(config)
    targets_test = split.train_targets(config, split.labels_test)
    scores = tracin_scores(fitted, split.X, targets, split.X_test, targets_test, block=7)
    spec, rest = fitted.spec, {k: v for k, v in fitted.variables.items() if k != "params"}
    f, f_test = spec.features(split.X, split.X), spec.features(split.X_test, split.X)

    def grad(x, y):
        g = jax.grad(lambda p: loss_value(spec.apply({"params": p, **rest}, x[None]), jnp.asarray(y)[None],
                                          jnp.ones(1), fitted.loss))(fitted.variables["params"])
        return np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(g)])

    for t in (0, 5):
        for i in (0, 3, 77):
            expected = grad(f_test[t], targets_test[t]) @ grad(f[i], targets[i])
            assert scores[t, i] == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_influence_sources_against_brute_force_ridge(binary):
    exp = prepare(binary, model="relu", width=32, kernel="empirical-init", train_config={"epochs": 5})
    from kernelattn.kernels.empirical import structured_head_ntk
    from kernelattn.learning.fitting import flat_head
    from kernelattn.learning.influence import one_vs_rest

    spec = exp.fitted.spec
    feats = np.asarray(spec.features(exp.split.X, exp.split.X))
    feats_t = np.asarray(spec.features(exp.split.X_test, exp.split.X))
    k = np.asarray(structured_head_ntk(flat_head(exp.fitted.initial), spec.head, np.concatenate([feats, feats_t]),
                                       feats, dtype="float64"))
    n = feats.shape[0]
    y = one_vs_rest(exp.split.labels, 2)
    t, i = 2, 9

    def predict(rows):
        a = np.linalg.solve(k[rows][:, rows] + 1e-3 * np.eye(len(rows)), y[rows])
        return k[n + t, rows] @ a

    rows = np.arange(n)
    loo = predict(rows) - predict(np.delete(rows, i))
    assert exp.clean.scores[t, i] == pytest.approx(loo[exp.split.labels_test[t]], rel=1e-8)


def test_test_point_intervention_keeps_training_set(binary):
    exp = prepare(binary, model="relu", width=32, train_config={"epochs": 5})
    report = measure(exp, intervention="test", epsilon=0.2)
    assert report.intervention == "test" and report.perturbation["n_perturbed"] == binary.X_test.shape[0]
    assert report.influence_perturbed.shape == exp.clean.scores.shape


def test_variants_expand_with_n_train_and_reject_fixed_keys():
    spec = {"datasets": [{"name": "digits", "n_train": 300}], "variants": [{"label": "n=100", "n_train": 100},
                                                                          {"label": "inf", "influence_kernels": ["infinite"]}]}
    variants = dict(spec_variants(spec))
    assert variants["n=100"]["datasets"][0]["n_train"] == 100 and variants["default"]["datasets"][0]["n_train"] == 300
    with pytest.raises(ValueError, match="cannot override"):
        spec_variants({**spec, "variants": [{"label": "x", "name": "y"}]})
    with pytest.raises(ValueError, match="unique label"):
        spec_variants({**spec, "variants": [{"label": "x"}, {"label": "x"}]})


def test_paired_bootstrap_pairs_and_covers():
    rng = np.random.default_rng(0)
    a = [rng.random(50) for _ in range(4)]
    exact = paired_bootstrap({"a": a, "b": [2 * v for v in a]}, lambda m: m["b"] / m["a"])
    assert exact.lo == exact.hi == pytest.approx(2.0)  # paired: the ratio never varies
    diff = paired_bootstrap({"a": a, "b": [v + 0.1 for v in a]}, lambda m: m["b"] - m["a"])
    assert diff.lo == pytest.approx(0.1) and not diff.excludes(0.1)
    spread = paired_bootstrap({"a": a}, lambda m: m["a"])
    assert spread.lo < np.mean(a) < spread.hi and spread.excludes(0.0)
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap({"a": a, "b": a[:2]}, lambda m: m["a"])


def test_class_targets():
    assert class_targets(np.array([0, 1, 1]), 2, 1).ravel().tolist() == [-1.0, 1.0, 1.0]
    assert class_targets(np.array([2, 0]), 3, 3).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_a_reused_fit_gives_the_same_experiment_as_training_again(binary):
    first = prepare(binary, model="relu", width=32, kernel="empirical", train_config={"epochs": 5})
    reused = prepare(binary, model="relu", width=32, kernel="infinite", train_config={"epochs": 5},
                     fitted=first.fitted)
    fresh = prepare(binary, model="relu", width=32, kernel="infinite", train_config={"epochs": 5})
    assert reused.fitted is first.fitted
    np.testing.assert_array_equal(reused.clean.scores, fresh.clean.scores)
    from kernelattn.experiments.malleability.experiment import null_refit

    shared = measure_null(reused, kind="seed", refit=null_refit(first, "seed"))
    np.testing.assert_array_equal(shared.flip_rates, measure_null(fresh, kind="seed").flip_rates)


def test_collapsed_features_are_named_as_the_cause(binary):
    config = TrainConfig(epochs=3)
    split, fitted = _fit(binary, "mlp-attn", config)
    with pytest.warns(TrainingWarning, match="attention collapse"):
        health = assess_fit(fitted, split, config, what="mlp-attn").health
    assert health.collapsed and health.feature_cosine > 0.99
    import pandas as pd

    from kernelattn.viz.report_tables import untrained_note

    row = {"intervention": "adversarial", "dataset": "d", "n_train": 120, "training_mode": "standard", "width": 128}
    records = pd.DataFrame([
        {**row, "model": "MLP-Attn", "seed": 0, "trained": False, "health_collapsed": True,
         "health_feature_cosine": health.feature_cosine},
        {**row, "model": "2L-ReLU", "seed": 0, "trained": True, "health_collapsed": False,
         "health_feature_cosine": 0.5},
    ])
    note = untrained_note(records)
    assert "1 of 1 MLP-Attn fits" in note and "attention collapse" in note and "2L-ReLU" not in note
    assert untrained_note(records.assign(trained=True)) is None
