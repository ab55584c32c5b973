"""The reproduce pipeline end to end on tiny specs: files, resume, redraw from the store alone, traceability."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from kernelattn.viz.frames import load_frames
from kernelattn.analysis.fits import convergence_fits
from kernelattn.reproduce import TIERS, experiments_dir, list_specs, redraw, reproduce
from kernelattn.experiments.store import ResultStore

DIGITS = {"name": "digits", "n_train": 40, "n_test": 10, "seed": 0}
TINY_SPECS = [
    {"name": "t_conditions", "kind": "conditions", "description": "tiny condition table",
     "datasets": [{**DIGITS, "label": "digits"},
                  {"name": "synthetic", "n_train": 24, "n_test": 4, "d": 32, "kappa": 100, "label": "synthetic"}],
     "energy_fractions": [0.99]},
    {"name": "t_width", "kind": "kernel", "description": "tiny width sweep",
     "datasets": [{**DIGITS, "label": "digits"}], "models": [{"name": "relu"}, {"name": "mlp-attn"}],
     "widths": [4, 16, 64], "seeds": 2, "metrics": ["rel_fro", "cert"]},
    {"name": "t_mall", "kind": "malleability", "description": "tiny malleability",
     "datasets": [{"name": "digits", "n_train": 30, "n_test": 10, "seed": 0, "label": "digits"}],
     "models": ["relu", "mlp-attn"], "width": 8, "seeds": [0], "training": {"epochs": 2},
     "attacks": ["fgsm", "pgd"], "epsilons": [0.1, 0.3], "attack_config": {"steps": 2}},
]
FIGURES = ["t_conditions_spectra", "t_conditions_kappa_power", "t_width_convergence", "t_mall_epsilon",
           "t_mall_flip_rates"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    result = reproduce("tiny", out=out, specs=TINY_SPECS, progress=False, compile_cache=False)
    return out, result


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_pipeline_writes_every_expected_file(pipeline):
    out, result = pipeline
    assert [r.name for r in result.runs] == ["t_conditions", "t_width", "t_mall"]  # conditions, kernel, malleability
    assert [r.written for r in result.runs] == [2, 12, 12]  # malleability: 8 cells + 4 null baselines
    assert all(r.stored == r.written for r in result.runs)
    expected = {f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "pdf")}
    assert {p.name for p in result.figures} == expected
    assert all(p.parent == out / "figures" and p.stat().st_size > 1000 for p in result.figures)
    assert result.report == out / "report.md" and result.report.is_file()
    text = result.report.read_text()
    for heading in ("Condition numbers", "Convergence to the kernel regime", "Influence malleability", "Record keys"):
        assert heading in text
    for stem in FIGURES:
        assert f"figures/{stem}.png" in text
    assert "t_width" in result.summary()


def test_rerun_resumes_without_recomputing(pipeline, tmp_path):
    out, _ = pipeline
    again = reproduce("tiny", out=out, specs=TINY_SPECS, progress=False, compile_cache=False,
                      figures_dir=tmp_path / "figs")
    assert [r.written for r in again.runs] == [0, 0, 0]
    assert {p.name for p in again.figures} == {f"{s}.{e}" for s in FIGURES for e in ("png", "pdf")}
    assert all(p.parent == tmp_path / "figs" for p in again.figures)


def test_redraw_reads_the_store_only(pipeline, monkeypatch):
    out, _ = pipeline
    import importlib

    def forbidden(*args, **kwargs):
        raise AssertionError("redraw must not compute")

    for module, name in (("kernelattn.reproduce", "run_sweep"),
                         ("kernelattn.experiments.sweeps.runner", "run_sweep"),
                         ("kernelattn.experiments.sweeps.runner", "prepare_group"),
                         ("kernelattn.experiments.malleability.runner", "run_malleability_spec"),
                         ("kernelattn.reproduce", "run_malleability_spec"),
                         ("kernelattn.experiments.malleability.runner", "prepare"),
                         ("kernelattn.experiments.malleability.runner", "measure"),
                         ("kernelattn.experiments.malleability.runner", "measure_null"),
                         ("kernelattn.reproduce", "run_conditions"),
                         ("kernelattn.reproduce", "_run_one"), ("kernelattn.data", "load"),
                         ("kernelattn.data.api", "load")):
        monkeypatch.setattr(importlib.import_module(module), name, forbidden)
    stores = [p for p in out.iterdir() if (p / "kernelattn-store.json").is_file()]
    assert sorted(p.name for p in stores) == ["t_conditions", "t_mall", "t_width"]
    before = {p.name: _snapshot(p) for p in stores}
    (out / "report.md").unlink()
    files = redraw(out)
    assert {p.name for p in files} == {f"{s}.{e}" for s in FIGURES for e in ("png", "pdf")} | {"report.md"}
    after = {p.name: _snapshot(p) for p in stores}
    assert after == before  # every store file byte-identical, none added or removed
    assert (out / "report.md").is_file()


def test_report_numbers_equal_the_stored_ones(pipeline):
    out, _ = pipeline
    text = (out / "report.md").read_text()
    rows = _single_record_rows(text)
    checked = {"conditions": 0, "malleability": 0}
    for store_name, header, cells, short in rows:
        store = ResultStore.open(out / store_name, create=False, readonly=True)
        (key,) = [k for k in store.keys() if k.startswith(short)]
        metrics = store.get(key)["metrics"]
        if "κ_d(G)" in header and "log10 m_theory" in header and "n" in header:  # condition table
            assert float(cells[header.index("κ_d(G)")]) == pytest.approx(metrics["kappa_d_G"], rel=5e-4)
            assert float(cells[header.index("κ_d(G)^3")]) == pytest.approx(metrics["kappa_d_G_power"], rel=5e-4)
            assert float(cells[header.index("κ_d(G^3) measured")]) == pytest.approx(metrics["kappa_d_attention"],
                                                                                   rel=5e-4)
            assert float(cells[header.index("log10 m_theory")]) == pytest.approx(metrics["log10_m_theory"], abs=0.006)
            assert int(cells[header.index("rank r")]) == metrics["rank_G"]
            checked["conditions"] += 1
        elif "flip rate" in header:
            assert float(cells[header.index("flip rate")]) == pytest.approx(metrics["flip_rate"], rel=5e-4, abs=1e-12)
            assert float(cells[header.index("Spearman ρ")]) == pytest.approx(metrics["spearman"], rel=5e-4,
                                                                               abs=1e-12)
            checked["malleability"] += 1
    assert checked == {"conditions": 2, "malleability": 8}


def test_aggregated_rows_list_their_record_keys(pipeline):
    out, _ = pipeline
    text = (out / "report.md").read_text()
    frames = load_frames(out)
    fits = convergence_fits(frames.kernel)
    row = next(line for line in text.splitlines() if line.startswith("| digits | 2L-ReLU | 3 × 2"))
    ref = re.search(r"(R\d+) \((\d+)\) \|$", row)
    assert ref and int(ref.group(2)) == 6
    listed = re.search(rf"\*\*{ref.group(1)}\*\* — store `t_width`[^:]*: (.*)$", text, re.M).group(1)
    keys = set(re.findall(r"`([0-9a-f]{12})`", listed))
    relu = fits[fits["model"] == "2L-ReLU"].iloc[0]
    assert keys == {k[:12] for k in relu["keys"]}
    assert float(row.split("|")[5]) == pytest.approx(relu["slope_rel_fro"], abs=6e-4)


def _single_record_rows(text: str):
    """(store, header, cells, short key) of every table row that cites one record."""
    store, header, rows = None, None, []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"### `([^`]+)`", line)
        if heading:
            store = heading.group(1)
        if line.startswith("|:") and i > 0:
            header = [c.strip() for c in lines[i - 1].strip("|").split("|")]
        match = re.search(r"`([0-9a-f]{12})` \|$", line)
        if line.startswith("|") and match and store and header:
            rows.append((store, header, [c.strip() for c in line.strip("|").split("|")], match.group(1)))
    return rows


def test_missing_data_names_the_spec_and_the_files(tmp_path):
    from kernelattn.data import DatasetNotFoundError

    spec = {"name": "needs_mnist", "kind": "conditions",
            "datasets": [{"name": "mnist", "n_train": 20, "data_dir": str(tmp_path / "empty"), "download": False,
                          "system_dirs": []}]}
    with pytest.raises(DatasetNotFoundError) as info:
        reproduce(specs=[spec], out=tmp_path / "out", progress=False, compile_cache=False)
    message = str(info.value)
    assert "needs_mnist" in message and "train-images-idx3-ubyte.gz" in message and "sha256" in message
    assert not (tmp_path / "out" / "needs_mnist").exists()  # checked before any work


def test_only_selects_specs_and_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="matches no spec"):
        reproduce(specs=TINY_SPECS, only="nonexistent", out=tmp_path, progress=False, compile_cache=False)
    with pytest.raises(ValueError, match="no experiment folder"):
        reproduce("no-such-tier", out=tmp_path, progress=False, compile_cache=False)
    result = reproduce(specs=TINY_SPECS, only="t_cond*", out=tmp_path / "o", progress=False, compile_cache=False)
    assert [r.name for r in result.runs] == ["t_conditions"]
    assert {p.stem for p in result.figures} == {"t_conditions_spectra", "t_conditions_kappa_power"}


def test_every_spec_is_validated_before_any_work(tmp_path):
    bad = {**TINY_SPECS[2], "name": "t_zz_bad", "epsilonz": [0.1]}
    with pytest.raises(ValueError, match="epsilonz"):
        reproduce(specs=[TINY_SPECS[0], bad], out=tmp_path, progress=False, compile_cache=False)
    assert not (tmp_path / "t_conditions").exists()


def test_redraw_without_a_store_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no result store"):
        redraw(tmp_path)


#: The paper artifacts each tier must cover (the paper tier: every MNIST experiment, no remedies or κ sweep).
_PAPER_MNIST = ("conditions", "width", "malleability", "epsilon", "adversarial_training")
_MORE = ("remedies_kernel", "remedies_malleability", "kappa_kernel", "kappa_malleability")
TIER_ARTIFACTS = {"quick": _PAPER_MNIST + _MORE + ("attribution", "depth"), "real": _PAPER_MNIST + _MORE, "full": _PAPER_MNIST + _MORE,
                  "paper": _PAPER_MNIST + ("ntk_distance",)}


@pytest.mark.parametrize("tier", TIERS)
def test_experiment_specs_are_valid(tier):
    from kernelattn.experiments.attribution import parse_attribution
    from kernelattn.experiments.conditions import parse_conditions
    from kernelattn.experiments.malleability.runner import validate_spec
    from kernelattn.experiments.specs import load_spec

    specs = list_specs(tier)
    kinds = {s["kind"] for s in specs} - {"attribution"}  # the quick tier also compares attribution estimators
    assert kinds == {"conditions", "kernel", "malleability"} or kinds == {"conditions", "kernel", "training",
                                                                          "malleability"}
    names = [s["name"] for s in specs]
    assert all(name.startswith(f"{tier}_") for name in names)
    for entry in specs:
        path = Path(entry["source"])
        assert path.parent == experiments_dir() / tier and path.stem == entry["name"]
        data = json.loads(path.read_text())
        if entry["kind"] in ("kernel", "training"):
            load_spec(path)
        elif entry["kind"] == "conditions":
            parse_conditions(data, str(path))
        elif entry["kind"] == "attribution":
            parse_attribution(data, str(path))
        else:
            validate_spec(data)
    for artifact in TIER_ARTIFACTS[tier]:
        assert f"{tier}_{artifact}" in names, artifact


def test_tier_datasets():
    def datasets(tier):
        out = set()
        for entry in list_specs(tier):
            data = json.loads(Path(entry["source"]).read_text())
            out |= {d["name"] for d in data.get("datasets", [])}
        return out

    assert datasets("quick") <= {"digits", "synthetic"}  # offline
    assert "fashion_mnist" in datasets("real") and datasets("real") <= {"fashion_mnist", "digits", "synthetic"}  # offline + FMNIST
    assert {"mnist", "cifar10"} <= datasets("full")
    assert datasets("paper") == {"mnist", "fashion_mnist"}  # offline: MNIST-5k, Fashion-MNIST for CIFAR-10


def test_paper_tier_reads_mnist5k_and_labels_the_cifar10_stand_in():
    for entry in list_specs("paper"):
        data = json.loads(Path(entry["source"]).read_text())
        for d in data["datasets"]:
            if d["name"] == "mnist":
                assert d["source"] == "mnist5k" and d["label"].startswith("MNIST-5k"), entry["name"]
            else:
                assert "stand-in for CIFAR-10" in d["label"], entry["name"]
        assert "n = " in data["description"], entry["name"]  # the number of training points is documented


def _smoke(spec: dict) -> dict:
    """A paper-tier spec at smoke sizes: 20-30 training points, tiny widths, 2 epochs, one seed; the
    condition table keeps one entry per dataset and class subset, the other specs one dataset (MNIST-5k
    3-vs-8 where they have it: one data shape, so fewer compilations)."""
    spec = json.loads(json.dumps(spec))
    kept = {}
    for d in spec["datasets"]:
        kept.setdefault((d["name"], json.dumps(d.get("classes"))), d)
    if spec["kind"] != "conditions":
        kept = {key: d for key, d in kept.items() if key == ("mnist", "[3, 8]")} or dict([next(iter(kept.items()))])
    spec["datasets"] = list(kept.values())
    for d in spec["datasets"]:
        d.update(n_train=20 if d.get("classes") else 30, n_test=10)
    if spec["kind"] == "kernel":
        spec.update(widths=[4, 16], seeds=1)
    elif spec["kind"] == "training":
        spec.update(widths=[16], seeds=1, training={**spec["training"], "epochs": 2})
    elif spec["kind"] == "malleability":
        spec.update(width=8, seeds=[0], training={"epochs": 2}, attack_config={"steps": 2})
    return spec


@pytest.mark.slow
def test_paper_tier_smoke_runs_end_to_end(tmp_path):
    """The paper tier's specs at smoke sizes on the real data (MNIST-5k, Fashion-MNIST): CI runs this; the
    full-size tier is the ≤ 20 min benchmark of the README."""
    from support import require_fashion_mnist, require_mnist5k

    require_mnist5k()
    require_fashion_mnist()
    specs = [_smoke(json.loads(Path(e["source"]).read_text())) for e in list_specs("paper")]
    result = reproduce("paper", out=tmp_path, specs=specs, progress=False, compile_cache=False)
    assert [r.name for r in result.runs] == [e["name"] for e in list_specs("paper")]
    assert all(r.written > 0 and r.stored == r.written for r in result.runs)
    records = ResultStore.open(tmp_path / "paper_conditions", create=False, readonly=True).records()
    mnist = [r["metrics"]["data_source"] for r in records if r["cell"]["dataset"]["name"] == "mnist"]
    assert len(mnist) == 2 and all(s["loader"] == "mnist5k" for s in mnist)  # 10-class and 3-vs-8
    text = result.report.read_text()
    assert "The paper's claims against these results" in text and "stand-in for CIFAR-10" in text


def test_experiments_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.json").write_text(json.dumps(TINY_SPECS[0]))
    monkeypatch.setenv("KERNELATTN_EXPERIMENTS", os.fspath(tmp_path))
    assert [s["name"] for s in list_specs("mine")] == ["t_conditions"]
