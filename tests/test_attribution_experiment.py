"""The "attribution" spec kind end to end at tiny size: store → report section → figure; bad specs refused."""

from __future__ import annotations

import copy

import pytest

from kernelattn.experiments.attribution import parse_attribution, run_attribution
from kernelattn.experiments.specs import SpecError
from kernelattn.experiments.store import ResultStore
from kernelattn.reproduce import reproduce

TINY = {
    "name": "t_attribution",
    "kind": "attribution",
    "description": "tiny ground-truth comparison",
    "datasets": [{"name": "digits", "classes": [3, 8], "n_train": 8, "n_test": 4, "seed": 0, "label": "digits 3-vs-8"}],
    "models": ["relu", "mlp-attn"],
    "widths": [8, 16],
    "seeds": [0],
    "dampings": [0.01, 0.1],
    "estimators": ["loo", "if", "grad-dot", "tracin"],
    "training": {"epochs": 3},
    "projection_dim": 8,
    "checkpoints": 2,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    return out, reproduce("tiny", out=out, specs=[TINY], progress=False, compile_cache=False)


def test_store_report_and_figure(tiny):
    out, result = tiny
    (run,) = result.runs
    assert (run.kind, run.written, run.stored) == ("attribution", 8, 8)  # 2 models × 2 widths × 2 dampings
    records = ResultStore.open(out / "t_attribution", create=False, readonly=True).records()
    for record in records:
        assert record["kind"] == "attribution"
        for reference in ("vs_loo", "vs_retrained"):
            assert set(record["metrics"][reference]) == set(TINY["estimators"])
        assert record["metrics"]["vs_loo"]["loo"]["spearman"] == pytest.approx(1.0)  # the truth against itself
    text = result.report.read_text()
    assert "Attribution estimators against ground truth" in text
    assert "Spearman vs kernel LOO" in text and "Spearman vs retraining" in text
    section = text.split("Attribution estimators against ground truth")[1]
    assert section.count("| digits 3-vs-8 |") == 2 * 2 * 2 * len(TINY["estimators"])
    keys = {r["key"][:12] for r in records}
    listed = text.split("## Record keys")[1]
    assert all(f"`{k}`" in listed for k in keys)  # every row cites its records
    assert {p.name for p in result.figures} == {"t_attribution_attribution.png", "t_attribution_attribution.pdf"}
    assert "figures/t_attribution_attribution.png" in text


def test_resume_writes_nothing(tiny):
    out, _ = tiny
    assert run_attribution(TINY, out) == []


def _bad(**changes):
    spec = copy.deepcopy(TINY)
    for key, value in changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    return spec


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"widths": None}, "widths"),
        ({"widht": [8]}, "widht"),
        ({"dampings": [0.0]}, "dampings[0]"),
        ({"dampings": []}, "dampings"),
        ({"estimators": ["loo", "tracn"]}, "estimators[1]"),
        ({"models": ["qkv-attn"]}, "models[0]"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"retrain": "yes"}, "retrain"),
        ({"tau": 1.5}, "tau"),
        ({"training": {"epoch": 3}}, "training.epoch"),
        ({"datasets": [{"name": "digitz"}]}, "datasets[0].name"),
    ],
)
def test_bad_specs_are_refused_with_their_key(changes, path):
    with pytest.raises(SpecError) as err:
        parse_attribution(_bad(**changes), "spec.json")
    assert err.value.path == path and "spec.json" in str(err.value)


def test_reproduce_refuses_a_bad_spec_before_any_store(tmp_path):
    with pytest.raises(SpecError, match="dampings"):
        reproduce("tiny", out=tmp_path, specs=[_bad(dampings=[-1.0])], progress=False, compile_cache=False)
    assert not (tmp_path / "t_attribution").exists()
