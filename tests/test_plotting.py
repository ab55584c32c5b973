"""Figures and report from hand-written result stores (no computation): every figure kind, pure functions."""

from __future__ import annotations

import io
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from kernelattn.analysis.flip_summary import malleability_summary
from kernelattn.viz import figures_malleability, figures_sweeps, report, style
from kernelattn.viz.figures import FigureJob, figure_jobs, figure_tasks, figures_for, save_figures
from kernelattn.viz.figures_sweeps import plot_spectra
from kernelattn.viz.workers import Task, run_tasks
from kernelattn.viz.frames import SHORT_KEY, load_frames
from kernelattn.experiments.provenance import cell_key
from kernelattn.experiments.store import ResultStore, make_record

SPEC_DIGITS = {"name": "digits", "n_train": 40, "n_test": 10, "seed": 0}


def _put(store: ResultStore, kind: str, cell: dict, metrics: dict, spec: dict) -> str:
    key = cell_key(cell)
    store.put(key, make_record(kind, cell, metrics, spec=spec, seed=cell.get("seed", 0), seconds=0.01))
    return key


def _kernel_cell(sweep, dataset, model, width, seed, kind="kernel"):
    return {"sweep": sweep, "kind": kind, "dataset": dataset, "model": model, "width": width, "seed": seed,
            "dtype": "float32", "ridge": 1e-3, "head": {"readout": "fixed"}, "metrics": ["rel_fro", "cert"]}


def _group_metrics(kappa_d: float, attention: bool, rank: int | None = None) -> dict:
    features = kappa_d ** 3 if attention and rank is None else (1e3 if attention else kappa_d)
    return {"kappa_G": math.inf, "kappa_d_G": kappa_d, "rank_G": 30, "log10_m_theory": 6 * math.log10(kappa_d) + 2.2,
            "kappa_d_features": features, "rank_features": 30, "lambda_min_inf": 1e-3 / (100 if attention else 1),
            "lambda_max_inf": 2.0, "kappa_inf": 2e3, "limit": "closed-form"}


def _model(name, **options):
    return {"name": name, "depth": options.get("depth", 1), "rank": options.get("rank"), "constant_term": False,
            "normalize": True} if name == "mlp-attn" else {"name": name}


def make_stores(out) -> dict[str, list[str]]:
    """Hand-made stores of every kind; returns store name → keys."""
    rng = np.random.default_rng(0)
    keys: dict[str, list[str]] = {}

    # conditions
    store = ResultStore.open(out / "t_conditions")
    spec = {"name": "t_conditions", "kind": "conditions", "description": "tiny conditions",
            "datasets": [{**SPEC_DIGITS, "label": "digits"},
                         {"name": "synthetic", "kappa": 100.0, "d": 32, "n_train": 24, "label": "synthetic κ=1e2"}]}
    keys["t_conditions"] = []
    for ds, kd in ((spec["datasets"][0], 3.9e6), (spec["datasets"][1], 100.0)):
        ident = {k: v for k, v in ds.items() if k != "label"}
        lam = np.geomspace(1, 1 / kd, 20)
        metrics = {"n": 40, "d": 64, "rank_bound": 40, "rank_G": 20, "kappa_G": math.inf, "kappa_d_G": kd,
                   "power": 3, "kappa_d_G_power": kd**3, "kappa_attention": math.inf, "kappa_d_attention": kd**3 * 1.01,
                   "rank_attention": 20, "kappa_d_features": kd**3, "rank_features": 20,
                   "log10_m_theory": 6 * math.log10(kd) + 2.2, "m_theory": 10 ** (6 * math.log10(kd) + 2.2),
                   "energy": {}, "eigenvalues_G": lam.tolist(), "eigenvalues_attention": (lam**3).tolist()}
        keys["t_conditions"].append(_put(store, "conditions", {"sweep": "t_conditions", "kind": "conditions",
                                                              "dataset": ident, "depth": 1}, metrics, spec))

    # kernel sweep with a remedy variant, and a synthetic κ sweep
    for name, datasets, models in (
        ("t_width", [(SPEC_DIGITS, 3.9e6, "digits")],
         [_model("relu"), _model("mlp-attn"), _model("mlp-attn", rank=5)]),
        ("t_kappa", [({"name": "synthetic", "kappa": k, "d": 32, "n_train": 24}, k, f"synthetic κ={k:g}")
                     for k in (10.0, 1000.0)], [_model("relu"), _model("mlp-attn")]),
    ):
        store = ResultStore.open(out / name)
        spec = {"name": name, "kind": "kernel", "description": f"tiny {name}",
                "datasets": [{**d, "label": label} for d, _, label in datasets], "models": models}
        keys[name] = []
        for ds, kd, _ in datasets:
            for model in models:
                attention = model["name"] == "mlp-attn"
                for width in (4, 16, 64, 256):
                    for seed in (0, 1):
                        noise = 1 + 0.2 * rng.random()
                        cert = (200.0 if attention else 2.0) * math.sqrt(kd if attention else 1) ** 0 * noise
                        metrics = {"rel_fro": noise / math.sqrt(width), "cert": cert * 16 / math.sqrt(width),
                                   "krr_err": 0.1 * noise, **_group_metrics(kd, attention, model.get("rank"))}
                        keys[name].append(_put(store, "kernel_sweep", _kernel_cell(name, ds, model, width, seed),
                                               metrics, spec))

    # training sweep
    store = ResultStore.open(out / "t_train")
    ds = {**SPEC_DIGITS, "classes": [3, 8]}
    spec = {"name": "t_train", "kind": "training", "datasets": [{**ds, "label": "digits 3-vs-8"}]}
    keys["t_train"] = []
    for model in (_model("relu"), _model("mlp-attn")):
        for width in (8, 32, 128):
            metrics = {"ntk_distance": 1 / math.sqrt(width), "lin_distance": 0.5 / math.sqrt(width), "acc_m": 0.9,
                       "acc_ntk": 0.92, "acc_lin": 0.91, **_group_metrics(1e6, model["name"] == "mlp-attn")}
            keys["t_train"].append(_put(store, "training_sweep", _kernel_cell("t_train", ds, model, width, 0,
                                                                              "training"), metrics, spec))

    # malleability: attacks, ε sweep, adversarial training, a depth-2 variant; and a synthetic κ sweep
    for name, datasets, models, attacks, epsilons, modes in (
        ("t_mall", [SPEC_DIGITS], ["relu", "mlp-attn", {"name": "mlp-attn", "depth": 2}], ["fgsm", "pgd"],
         [0.1, 0.3], ["standard", "pgd-at"]),
        ("t_kmall", [{"name": "synthetic", "kappa": k, "d": 32, "n_train": 24, "normalize": True}
                     for k in (10.0, 1000.0)], ["relu", "mlp-attn"], ["pgd"], [0.05], ["standard"]),
    ):
        store = ResultStore.open(out / name)
        spec = {"name": name, "kind": "malleability", "datasets": datasets, "models": models}
        keys[name] = []
        for ds in datasets:
            for model in models:
                for mode in modes:
                    for attack in attacks:
                        for eps in epsilons:
                            flips = rng.random(10) * (0.6 if model != "relu" else 0.3)
                            cell = {"dataset": {"normalize": False, **ds}, "model": model, "width": 16, "seed": 0,
                                    "training_mode": mode, "kernel": "empirical", "intervention": "adversarial",
                                    "attack": attack, "epsilon": eps, "tau": 0.1, "ridge": 1e-3,
                                    "at_epsilon": 0.3 if mode == "pgd-at" else None}
                            metrics = {"n_train": 30, "n_test": 10, "top_k": 3, "flip_rate": float(flips.mean()),
                                       "flip_rate_std": float(flips.std()), "spearman": 0.3, "spearman_std": 0.1,
                                       "topk_overlap": 0.5, "topk_overlap_std": 0.1, "flip_rates": flips.tolist(),
                                       "perturbation": {"linf": eps, "loss_clean": 1.0, "loss_adv": 1.5}}
                            keys[name].append(_put(store, "malleability", cell, metrics, spec))
    return keys


EXPECTED = ["t_conditions_spectra", "t_conditions_kappa_power", "t_width_convergence", "t_width_remedies",
            "t_kappa_convergence", "t_kappa_kappa", "t_train_ntk_distance", "t_mall_epsilon",
            "t_mall_adversarial_training", "t_mall_remedies", "t_mall_flip_rates", "t_kmall_kappa"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    keys = make_stores(out)
    return out, keys


def test_every_figure_kind_is_drawn_from_the_stores(stores):
    from kernelattn.reproduce import redraw

    out, _ = stores
    rc_before = dict(matplotlib.rcParams)
    files = redraw(out)
    names = sorted(p.name for p in files)
    assert names == sorted([f"{s}.{ext}" for s in EXPECTED for ext in ("png", "pdf")] + ["report.md"])
    for path in files:
        data = path.read_bytes()
        assert len(data) > 1000, path
        if path.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        elif path.suffix == ".pdf":
            assert data[:5] == b"%PDF-" and b"CreationDate" not in data  # deterministic metadata
    assert dict(matplotlib.rcParams) == rc_before  # paper style applied locally only
    text = (out / "report.md").read_text()
    for stem in EXPECTED:
        assert f"figures/{stem}.png" in text


def test_workers_write_the_files_drawn_here(stores, tmp_path):
    out, _ = stores
    jobs = figure_jobs(load_frames(out))[:4]
    here = save_figures(jobs, tmp_path / "here", workers=1)
    pooled = save_figures(jobs, tmp_path / "pooled", workers=3)  # this process and two workers
    assert [p.name for p in pooled] == [p.name for p in here] == [f"{j.stem}.{e}" for j in jobs for e in ("png", "pdf")]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(here, pooled))


def test_a_worker_runs_each_task_and_sends_errors_back(stores, tmp_path):
    out, _ = stores
    good = figure_jobs(load_frames(out))[0]
    bad = FigureJob("bad", "no frame", plot_spectra, {"conditions": None})
    tasks = figure_tasks([good, bad], tmp_path, {good.stem: "highest"})
    worker = subprocess.run([sys.executable, "-c", "from kernelattn.viz.workers import serve; serve()"],
                            input=b"".join(map(pickle.dumps, tasks)), capture_output=True, check=True, timeout=300)
    answers = io.BytesIO(worker.stdout)
    assert pickle.load(answers) is None  # ready
    assert pickle.load(answers) == (True, [tmp_path / f"{good.stem}.png", tmp_path / f"{good.stem}.pdf"])
    ok, error = pickle.load(answers)
    assert not ok and isinstance(error, TypeError)
    with pytest.raises(TypeError):  # the same exception, raised in the caller, whoever drew the bad job
        save_figures([good, bad], tmp_path / "both", workers=2)


def test_run_tasks_returns_results_in_task_order_wherever_they_ran():
    tasks = [Task(f"pow {i}", pow, (i, 2)) for i in range(7)]
    assert run_tasks(tasks, workers=3) == run_tasks(tasks, workers=1) == [i * i for i in range(7)]
    assert run_tasks([], workers=2) == []


def test_a_worker_that_cannot_start_leaves_its_figures_to_the_others(stores, tmp_path, monkeypatch):
    out, _ = stores
    jobs = figure_jobs(load_frames(out))[:2]
    if not Path("/bin/false").exists():
        pytest.skip("needs /bin/false")
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.warns(RuntimeWarning, match="did not start"):
        paths = save_figures(jobs, tmp_path, workers=2)
    assert [p.name for p in paths] == [f"{j.stem}.{e}" for j in jobs for e in ("png", "pdf")]


def test_the_figure_modules_load_no_jax():
    code = ("import sys, kernelattn.viz.figures, kernelattn.viz.report, kernelattn.viz.workers; "
            "print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_figure_functions_are_pure(stores):
    out, _ = stores
    frames = load_frames(out)
    kernel = frames.kernel[frames.kernel["store"] == "t_width"]
    before = kernel.copy()
    fig = figures_sweeps.plot_convergence(kernel)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert kernel.equals(before)  # the frame is not modified
    assert abs(fig.get_figwidth() - style.SINGLE) < 1e-9  # one dataset: one column wide
    texts = [c.get_text() for ax in fig.axes for c in ax.texts]
    assert any("m_theory" in t for t in texts)  # m_theory ≈ 1e42: off the axis, shown as an arrow note
    labels = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}
    assert labels["2L-ReLU"] == style.MODEL_COLORS["2L-ReLU"]
    assert labels["MLP-Attn"] == style.MODEL_COLORS["MLP-Attn"]
    assert labels["MLP-Attn (r=5)"] not in style.MODEL_COLORS.values()
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"


def test_empty_frames_give_a_placeholder_figure():
    import pandas as pd

    empty = pd.DataFrame()
    for function in (figures_sweeps.plot_convergence, figures_malleability.plot_flip_rates,
                     figures_malleability.plot_epsilon_sweep, figures_malleability.plot_adversarial_training,
                     figures_sweeps.plot_ntk_distance):
        assert isinstance(function(empty), matplotlib.figure.Figure)
    assert isinstance(figures_malleability.plot_remedies(), matplotlib.figure.Figure)
    assert isinstance(figures_malleability.plot_kappa_sweep(), matplotlib.figure.Figure)


def test_frames_labels_and_order(stores):
    out, _ = stores
    frames = load_frames(out)
    assert set(frames.stores) == {"t_conditions", "t_width", "t_kappa", "t_train", "t_mall", "t_kmall"}
    mall = frames.malleability[frames.malleability["store"] == "t_mall"]
    assert list(dict.fromkeys(mall["model"])) == ["2L-ReLU", "MLP-Attn", "MLP-Attn (k=2)"]
    assert set(frames.kernel["model"]) == {"2L-ReLU", "MLP-Attn", "MLP-Attn (r=5)"}
    kappa = frames.kernel[frames.kernel["store"] == "t_kappa"]
    assert list(dict.fromkeys(kappa["dataset"])) == ["synthetic κ=10", "synthetic κ=1000"]
    assert set(frames.training["dataset"]) == {"digits 3-vs-8"}


def test_report_numbers_are_the_stored_ones(stores):
    out, keys = stores
    frames = load_frames(out)
    text = report.render_report(frames)
    store = ResultStore.open(out / "t_mall", create=False, readonly=True)
    by_short = {k[:SHORT_KEY]: k for k in keys["t_mall"]}
    checked = 0
    for line in text.splitlines():
        match = re.search(r"`([0-9a-f]{12})` \|$", line)
        if not line.startswith("|") or not match or match.group(1) not in by_short:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        record = store.get(by_short[match.group(1)])
        header = _header_of(text, line)
        flip = float(cells[header.index("flip rate")])
        assert flip == pytest.approx(record["metrics"]["flip_rate"], rel=5e-4)
        checked += 1
    assert checked == len(keys["t_mall"])
    # Aggregated rows point to R<n>, whose keys are listed.
    assert "## Record keys" in text and re.search(r"\*\*R1\*\* — store `", text)


def _header_of(text: str, row: str) -> list[str]:
    lines = text.splitlines()
    i = lines.index(row)
    while i > 0 and not lines[i - 1].startswith("|:") and not lines[i - 1].startswith("|-"):
        i -= 1
    return [c.strip() for c in lines[i - 2].strip("|").split("|")]


def test_several_datasets_get_rows_and_wrapped_columns(stores):
    import pandas as pd

    out, _ = stores
    frames = load_frames(out)
    kernel = frames.kernel[frames.kernel["store"] == "t_width"]
    two = pd.concat([kernel, kernel.assign(dataset="other")], ignore_index=True)
    fig = figures_malleability.plot_remedies(kernel=two)
    assert len([ax for ax in fig.axes if ax.get_visible() and ax.axison]) == 4  # 2 datasets × (cert, κ_d)
    mall = frames.malleability[frames.malleability["store"] == "t_mall"]
    fig = figures_malleability.plot_epsilon_sweep(pd.concat([mall, mall.assign(dataset="other")], ignore_index=True))
    assert len([ax for ax in fig.axes if ax.axison]) == 4  # 2 datasets × (FGSM, PGD)
    many = pd.concat([kernel.assign(dataset=f"d{i}") for i in range(6)], ignore_index=True)
    fig = figures_sweeps.plot_convergence(many)
    assert len([ax for ax in fig.axes if ax.axison]) == 12  # 6 datasets × 2 metrics, wrapped at 4 columns
    assert fig.get_figwidth() <= style.DOUBLE + 1e-9


def test_records_of_an_edited_spec_are_never_merged(tmp_path):
    """A store holding cells of two settings (here: two ridges) reports them apart, not as two seeds."""
    store = ResultStore.open(tmp_path / "edited")
    spec = {"name": "edited", "kind": "malleability", "datasets": [SPEC_DIGITS]}
    for ridge, flip in ((1e-3, 0.2), (1e-2, 0.6)):
        cell = {"dataset": {"normalize": False, **SPEC_DIGITS}, "model": "relu", "width": 16, "seed": 0,
                "training_mode": "standard", "kernel": "empirical", "intervention": "adversarial", "attack": "pgd",
                "epsilon": 0.3, "ridge": ridge}
        _put(store, "malleability", cell, {"flip_rate": flip, "flip_rate_std": 0.1, "spearman": 0.5,
                                           "topk_overlap": 0.5, "n_test": 10}, spec)
    frames = load_frames(tmp_path)
    groups = sorted(set(frames.malleability["store"]))
    assert len(groups) == 2 and all(g.startswith("edited~") for g in groups)
    summary = malleability_summary(frames.malleability)
    assert sorted(summary["flip_rate"]) == [0.2, 0.6] and set(summary["n_seeds"]) == {1}
    text = report.render_report(frames)
    assert text.count("### `edited` — setting `") == 2
    stems = [stem for stem, _, _ in figures_for(frames)]
    assert sorted(stems) == sorted(f"{g}_flip_rates" for g in groups)
