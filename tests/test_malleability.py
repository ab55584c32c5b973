"""Influence malleability: metrics, interventions, adversarial training, the public entry point."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from sklearn.datasets import load_digits

from kernelattn.experiments.malleability.api import malleability
from kernelattn.experiments.malleability.experiment import measure, prepare
from kernelattn.learning.malleability_metrics import (
    compare_influence,
    flip_rates,
    influential_points,
    spearman_rows,
    top_count,
    topk_overlaps,
)

FAST_TRAIN = {"epochs": 3, "batch_size": 32}
FAST_ATTACK = {"steps": 3}


@pytest.fixture(scope="module")
def digits():
    x, labels = load_digits(return_X_y=True)
    x = x / 16.0
    return {"X": x[:60], "y": labels[:60], "X_test": x[60:75], "y_test": labels[60:75]}


@pytest.fixture(scope="module")
def attn_experiment(digits):
    # The network at initialization (epochs=0): the interventions do not depend on training,
    # which test_malleability_end_to_end exercises.
    return prepare(model="mlp-attn", width=32, train_config={"epochs": 0}, attack_config=FAST_ATTACK, **digits)


# ----------------------------------------------------------------------------- metrics


def test_identical_influences_do_not_move(rng):
    influence = rng.normal(size=(7, 40))
    metrics = compare_influence(influence, influence.copy(), tau=0.1)
    np.testing.assert_array_equal(metrics["flip_rate"], 0.0)
    np.testing.assert_allclose(metrics["spearman"], 1.0)
    np.testing.assert_array_equal(metrics["topk_overlap"], 1.0)


def test_sign_reversed_influences_flip_everything(rng):
    influence = rng.normal(size=(7, 40))
    metrics = compare_influence(influence, -influence, tau=0.25)
    np.testing.assert_array_equal(metrics["flip_rate"], 1.0)
    np.testing.assert_allclose(metrics["spearman"], -1.0)
    np.testing.assert_array_equal(metrics["topk_overlap"], 1.0)  # |I| unchanged


def test_metrics_by_hand():
    a = np.array([[5.0, -4.0, 3.0, 0.1, 0.2, -0.3, 0.4, 0.5, 0.6, 0.7]])
    b = a.copy()
    b[0, 1] = 4.0  # the 2nd most influential point changes sign
    assert top_count(10, 0.3) == 3 and top_count(10, 0.01) == 1 and top_count(10, 1.0) == 10
    np.testing.assert_allclose(flip_rates(a, b, 0.3), [1 / 3])
    np.testing.assert_allclose(flip_rates(a, b, 0.1), [0.0])
    c = a.copy()
    c[0, 0] = 0.0  # drops out of the top 3; 0.7 comes in
    np.testing.assert_allclose(topk_overlaps(a, c, 0.3), [2 / 3])
    np.testing.assert_allclose(spearman_rows(a, b)[0], scipy.stats.spearmanr(a[0], b[0])[0], rtol=1e-12)
    assert np.isnan(spearman_rows(np.ones((1, 5)), a[:, :5])[0])
    np.testing.assert_array_equal(influential_points(np.array([[1.0, -9.0, 2.0], [0.0, 9.0, -3.0]]), 0.5), [1, 2])


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_compare_rejects_bad_tau(rng, tau):
    with pytest.raises(ValueError, match="tau"):
        compare_influence(np.ones((2, 5)), np.ones((2, 5)), tau=tau)


def test_compare_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="I_prime"):
        compare_influence(np.ones((2, 5)), np.ones((2, 4)))


# ------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("model", ["relu", "mlp-attn"])
def test_malleability_end_to_end(digits, model):
    report = malleability(
        model=model, width=32, attack="pgd", epsilon=0.3, train_config=FAST_TRAIN,
        attack_config=FAST_ATTACK, **digits,
    )
    n, n_test = 60, 15
    assert report.model == model and report.kernel == "empirical" and report.influence == "loo"
    assert report.I.shape == report.I_prime.shape == (n_test, n)
    assert report.flip_rates.shape == report.spearmans.shape == report.topk_overlaps_per_test.shape == (n_test,)
    assert 0.0 <= report.flip_rate <= 1.0 and -1.0 <= report.spearman <= 1.0 and 0.0 <= report.topk_overlap <= 1.0
    assert report.flip_rate == pytest.approx(np.mean(report.flip_rates))
    assert report.top_k == 6 and report.factorization == ("cholesky", "cholesky")
    assert report.perturbation["linf"] <= 0.3 + 1e-12 and report.perturbation["n_perturbed"] == n
    assert report.perturbation["loss_adv"] > report.perturbation["loss_clean"]
    assert not np.allclose(report.I, report.I_prime)
    summary = report.to_dict()
    assert summary["flip_rate"] == report.flip_rate and "influence_clean" not in summary
    assert len(report.to_dict(arrays=True)["flip_rates"]) == n_test
    frame = report.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 1 and frame.loc[0, "model"] == model
    assert len(report.to_frame(per_test=True)) == n_test


def test_interventions_share_one_clean_fit(attn_experiment):
    exp = attn_experiment
    n = exp.split.X.shape[0]
    top = influential_points(exp.clean.scores, 0.1)
    # One attack objective per experiment: all PGD measurements below reuse one compiled attack.
    same = measure(exp, attack="pgd", epsilon=0.0)
    assert same.flip_rate == 0.0 and same.spearman == pytest.approx(1.0)
    transformed = measure(exp, attack="pgd", epsilon=0.2, intervention="transformed")
    np.testing.assert_array_equal(transformed.intervened, top)
    assert transformed.perturbation["n_perturbed"] == top.size
    curated = measure(exp, intervention="curated", tau=0.1)
    assert curated.attack == "none" and curated.I_prime.shape == (15, n - top.size)
    np.testing.assert_array_equal(curated.columns, np.setdiff1d(np.arange(n), top))
    assert curated.top_k == top_count(n - top.size, 0.1)
    sweep = [measure(exp, attack="pgd", epsilon=e) for e in (0.1, 0.5)]
    assert all(r.perturbation["linf"] <= r.epsilon + 1e-12 for r in sweep)
    # "Retraining" on unchanged data with the same keys reproduces the clean network exactly.
    again = measure(exp, attack="pgd", epsilon=0.0, retrain=True)
    assert again.retrain and again.flip_rate == 0.0 and again.spearman == pytest.approx(1.0)


def test_spec_runner_writes_and_resumes(tmp_path):
    from kernelattn.experiments.malleability.runner import run_malleability_spec
    from kernelattn.experiments.store import ResultStore

    store = ResultStore.open(tmp_path / "store")
    spec = {
        "kind": "malleability",
        "datasets": [{"name": "digits", "n_train": 30, "n_test": 10, "seed": 0, "label": "digits"}],
        "models": ["relu"], "attacks": ["fgsm", "pgd"], "epsilons": [0.1, 0.3], "interventions": ["curated"],
        "width": 8, "training": {"epochs": 1}, "attack_config": {"steps": 1},
    }
    written = run_malleability_spec({**spec, "null_baselines": []}, store)
    assert len(written) == 1 and run_malleability_spec({**spec, "null_baselines": []}, store) == []  # curated: attack-independent
    frame = store.to_frame(kind="malleability")
    assert list(frame["intervention"]) == ["curated"] and frame["flip_rate"].between(0, 1).all()
    assert frame.loc[0, "n_train"] == 30 and frame.loc[0, "top_k"] == 3
    # The default null baselines add one record per null kind, computed once.
    assert len(run_malleability_spec(spec, store)) == 2 and run_malleability_spec(spec, store) == []
    frame = store.to_frame(kind="malleability")
    assert sorted(frame["intervention"]) == ["curated", "null-order", "null-seed"]
    with pytest.raises(ValueError, match="unknown key"):
        run_malleability_spec({**spec, "epsilonz": [0.1]}, store)


def test_adversarial_training(digits):
    report = malleability(
        model="relu", width=16, training="pgd-at", epsilon=0.1, kernel="infinite", influence="if",
        train_config={"epochs": 2, "batch_size": 32}, attack_config={"steps": 2}, **digits,
    )
    assert report.training == "pgd-at" and report.kernel == "infinite" and report.influence == "if"
    assert report.perturbation["target"] == "model" and report.perturbation["linf"] <= 0.1 + 1e-12
    assert report.perturbation["loss_adv"] > report.perturbation["loss_clean"]
    assert np.isfinite(report.flip_rate) and report.I.shape == (15, 60)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": -0.1}, "epsilon"),
        ({"tau": 0.0}, "tau"),
        ({"tau": 1.2}, "tau"),
        ({"ridge": 0.0}, "ridge"),
        ({"ridge": -1e-3}, "ridge"),
        ({"attack": "deepfool"}, "attack"),
        ({"model": "resnet"}, "model"),
        ({"intervention": "poison"}, "intervention"),
        ({"kernel": "gaussian"}, "kernel"),
        ({"influence": "tracin"}, "influence"),
        ({"training": "trades"}, "training"),
        ({"targets": "binary"}, "targets"),
        ({"X_test": np.zeros((4, 10))}, "X_test"),
        ({"y": np.zeros(59, int)}, "y"),
        ({"X": np.full((60, 64), 3.0)}, "valid range"),
        ({"seed": -1}, "seed"),
        ({"train_config": {"epoch": 3}}, "train_config"),
        ({"attack_config": {"steps": 0}}, "steps"),
    ],
)
def test_malleability_bad_arguments(digits, kwargs, match):
    args = {**digits, "width": 8, "train_config": FAST_TRAIN}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        malleability(**args)


def test_fit_cache_trains_each_network_once_across_variants_and_specs(tmp_path, monkeypatch):
    """Variants and specs that train the same network (data, model, seed, settings) share one fit;
    the records equal those of a run that trains every group afresh."""
    from kernelattn.experiments.malleability import experiment, runner
    from kernelattn.experiments.store import ResultStore

    trained = []
    fit_in_mode = experiment.fit_in_mode
    monkeypatch.setattr(experiment, "fit_in_mode", lambda *a, **k: trained.append(1) or fit_in_mode(*a, **k))
    spec = {
        "kind": "malleability",
        "datasets": [{"name": "digits", "n_train": 30, "n_test": 10, "seed": 0, "label": "digits"}],
        "models": ["relu"], "attacks": ["pgd"], "epsilons": [0.1], "width": 8,
        "training": {"epochs": 2}, "attack_config": {"steps": 1}, "null_baselines": ["seed"],
        "variants": [{"label": "Θ_∞", "influence_kernels": ["infinite"]}, {"label": "n = 20", "n_train": 20}],
    }
    fits = runner.FitCache()
    shared = ResultStore.open(tmp_path / "shared")
    runner.run_malleability_spec(spec, shared, fits=fits)
    assert len(trained) == 4  # clean fit and null refit, at n = 30 and at n = 20
    runner.run_malleability_spec(spec, ResultStore.open(tmp_path / "again"), fits=fits)
    assert len(trained) == 4  # a second spec with the same networks trains none
    fresh = ResultStore.open(tmp_path / "fresh")
    for label, variant in runner.spec_variants(spec):
        runner.run_malleability_spec({**variant, "variants": []}, fresh, fits=runner.FitCache())
    strip = ["seconds", "started", "finished", "variants"]
    mine = shared.to_frame("malleability").drop(columns=strip, errors="ignore").sort_values("key")
    theirs = fresh.to_frame("malleability").drop(columns=strip, errors="ignore").sort_values("key")
    pd.testing.assert_frame_equal(mine.reset_index(drop=True), theirs.reset_index(drop=True))


def test_fit_cache_drops_the_least_recently_used_past_its_byte_limit():
    from kernelattn.experiments.malleability.runner import FitCache
    from kernelattn.learning.fitting import FittedModel

    def fit(width):
        w = np.zeros((4, width), np.float32)
        return FittedModel(None, {"params": {"W": w}}, {"params": {"W": w}}, np.zeros(0))

    cache = FitCache(max_bytes=2 * 2 * 4 * 8 * 4)  # two fits of width 8 (variables and initial)
    cache.put("a", fit(8)), cache.put("b", fit(8))
    assert cache.get("a") is not None  # now the most recently used
    cache.put("c", fit(8))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    for _ in range(3):  # storing a key again replaces it: nothing else is dropped
        cache.put("c", fit(8))
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2 and [key for key, _ in cache.items()] == ["a", "c"]  # least recently used first


def test_networks_trained_ahead_in_threads_give_the_records_of_one_at_a_time(tmp_path):
    from kernelattn.experiments.malleability import runner
    from kernelattn.experiments.store import ResultStore
    from kernelattn.kernels import guards
    from kernelattn.learning.training import UntrainedError

    spec = {
        "kind": "malleability",
        "datasets": [{"name": "digits", "classes": [3, 8], "n_train": 30, "n_test": 10, "seed": 0}],
        "models": ["relu", "mlp-attn"], "seeds": [0, 1], "attacks": ["pgd"], "epsilons": [0.1], "width": 8,
        "training": {"epochs": 3}, "attack_config": {"steps": 1},
    }
    DEFAULTS = runner.DEFAULT_NULLS
    frames, fits = [], runner.FitCache()
    for workers in (1, 2):
        store = ResultStore.open(tmp_path / f"w{workers}")
        runner.run_malleability_spec(spec, store, workers=workers, fits=fits if workers == 2 else None)
        frame = store.to_frame("malleability").drop(columns=["seconds", "started", "finished"], errors="ignore")
        frames.append(frame.sort_values("key").reset_index(drop=True))
    pd.testing.assert_frame_equal(*frames)
    keys = [json.loads(key) for key, _ in fits.items()]  # every network of the spec, trained once
    assert sorted((k["model"], k["seed"], k["null"] or "") for k in keys) == [
        (model, seed, null) for model in ("mlp-attn", "relu") for seed in (0, 1) for null in ("", *sorted(DEFAULTS))
    ]
    # The worker threads run in the caller's context: strict guards refuse an untrained fit there too.
    with guards.strict(), pytest.raises(UntrainedError):
        runner.run_malleability_spec(
            {**spec, "training": {"epochs": 0}}, ResultStore.open(tmp_path / "strict"), workers=2
        )


def test_cli_malleability_runs_a_spec_and_prints_its_summary(tmp_path, capsys):
    import json

    from kernelattn.cli import main

    spec = {
        "name": "tiny", "kind": "malleability",
        "datasets": [{"name": "digits", "n_train": 30, "n_test": 10, "seed": 0}],
        "models": ["relu"], "attacks": ["pgd"], "epsilons": [0.1], "width": 8,
        "training": {"epochs": 2}, "attack_config": {"steps": 1}, "null_baselines": ["seed"],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    assert main(["malleability", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "flip_rate" in printed and "null-seed" in printed and "adversarial" in printed
