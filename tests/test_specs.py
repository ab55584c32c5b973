"""Spec format: validation names the bad key path; defaults; round trips; the shipped files."""

import copy
import json
from pathlib import Path

import pytest

from kernelattn.experiments.specs import MAX_WIDTH, METRICS, Spec, SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "kind": "kernel",
    "datasets": [{"name": "digits", "n_train": 50, "n_test": 10}],
    "models": [{"name": "relu"}, {"name": "mlp-attn", "depth": 2}],
    "widths": [4, 16],
}


def spec_with(**changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = data
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
        if value is KeyError:
            target.pop(last)
        else:
            target[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    "changes, path, fragment",
    [
        ({"models__1__depth": 0}, "models[1].depth", "expected an integer >= 1, got 0"),
        ({"models__1__depth": True}, "models[1].depth", "expected an integer >= 1, got true"),
        ({"models__1__dpeth": 2}, "models[1].dpeth", "did you mean 'depth'?"),
        ({"models__0__depth": 2}, "models[0].depth", "not an option of model 'relu'"),
        ({"models__0__name": "reluu"}, "models[0].name", "did you mean 'relu'?"),
        ({"datasets__0__name": "digts"}, "datasets[0].name", "did you mean 'digits'?"),
        ({"datasets__0__n_train": 1}, "datasets[0].n_train", ">= 2"),
        ({"datasets__0__kapa": 3}, "datasets[0].kapa", "unknown key for dataset 'digits'"),
        ({"datasets__0__target": "one-hot"}, "datasets[0].target", "did you mean 'onehot'?"),
        ({"widths": {"log2": [2, 21]}}, "widths.log2[1]", "<= 20"),
        ({"widths": {"log2": [6, 2]}}, "widths.log2", "low <= high"),
        ({"widths": {"log": [2, 4]}}, "widths.log", "did you mean 'log2'?"),
        ({"widths": [4, 4]}, "widths", "distinct"),
        ({"widths": [4, MAX_WIDTH + 1]}, "widths[1]", f"<= {MAX_WIDTH}"),
        ({"widths": []}, "widths", "at least one width"),
        ({"seeds": 0}, "seeds", ">= 1"),
        ({"seeds": [1, -1]}, "seeds[1]", ">= 0"),
        ({"dtype": "float16"}, "dtype", "expected one of ['float32', 'float64']"),
        ({"metrics": ["rel_fro", "cret"]}, "metrics[1]", "did you mean 'cert'?"),
        ({"ridge": -1}, "ridge", ">= 0"),
        ({"kernel": {"sigma_ww": 1.0}}, "kernel.sigma_ww", "did you mean 'sigma_w'?"),
        ({"kernel": {"readout": "train"}}, "kernel.readout", "did you mean 'trained'?"),
        ({"kernel": {"batch_seeds": "yes"}}, "kernel.batch_seeds", "\"auto\", true or false"),
        ({"training": {"epochs": 5}}, "training", "only allowed when kind is 'training'"),
        ({"kind": "kernl"}, "kind", "did you mean 'kernel'?"),
        ({"name": "a b"}, "name", "directory name"),
        ({"name": KeyError}, "name", "required key is missing"),
        ({"trainig": {}}, "trainig", "did you mean 'training'?"),
        ({"models": [{"name": "relu"}, {"name": "relu"}]}, "models[1].label", "duplicate label '2L-ReLU'"),
        ({"models": [{"name": "qkv-attn", "head_width": "wide"}]}, "models[0].head_width", "\"width\""),
        ({"models": [{"name": "mlp-attn", "rank": 60}]}, "models[0].rank", "<= n_train of datasets[0] (50)"),
        ({"datasets": [{"name": "synthetic", "kappa": 0.5}]}, "datasets[0].kappa", ">= 1"),
        ({"datasets": [{"name": "synthetic", "classes": [0, 1]}]}, "datasets[0].classes", "n_classes"),
        ({"datasets": [{"name": "digits", "classes": [3]}]}, "datasets[0].classes", "at least 2 classes"),
    ],
)
def test_errors_name_the_key_path(changes, path, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(**changes))
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_training_kind_validates_its_section():
    data = spec_with(kind="training", training={"epochs": -1})
    with pytest.raises(SpecError, match=r"^training\.epochs: expected an integer >= 0, got -1"):
        parse_spec(data)
    with pytest.raises(SpecError, match=r"training\.lr: unknown key; did you mean 'loss'|training\.lr: unknown key"):
        parse_spec(spec_with(kind="training", training={"lr": 1e-3}))
    with pytest.raises(SpecError, match="did you mean 'ntk_distance'"):
        parse_spec(spec_with(kind="training", metrics=["ntk_distanse"]))


def test_defaults_and_normalization():
    spec = parse_spec(spec_with(widths={"log2": [2, 6], "step": 2}, seeds=3))
    assert spec.widths == (4, 16, 64)
    assert spec.seeds == (0, 1, 2)
    assert spec.dtype == "float32" and spec.ridge == 1e-3
    assert spec.metrics == METRICS["kernel"]
    assert spec.kernel.readout == "fixed" and spec.kernel.width_chunk == 1024
    assert spec.training is None
    assert [m.label for m in spec.models] == ["2L-ReLU", "MLP-Attn (k=2)"]
    assert spec.models[1].depth == 2 and spec.models[1].normalize is True
    assert spec.n_cells == 1 * 2 * 3 * 3
    training = parse_spec(spec_with(kind="training"))
    assert training.training.epochs == 500 and training.training.train_config().learning_rate == 1e-3
    qkv = parse_spec(spec_with(models=[{"name": "qkv"}]))
    assert qkv.models[0].name == "qkv-attn" and qkv.models[0].normalize is False
    assert qkv.models[0].qkv_head_width(256) == 256
    # explicit widths are sorted; integral floats accepted as integers
    assert parse_spec(spec_with(widths=[64, 4.0, 16])).widths == (4, 16, 64)


def test_default_labels_tell_same_named_entries_apart():
    spec = parse_spec(spec_with(models=[{"name": "mlp-attn"}, {"name": "mlp-attn", "depth": 2},
                                        {"name": "relu", "label": "2L-ReLU"}]))
    assert [m.label for m in spec.models] == ["MLP-Attn", "MLP-Attn (k=2)", "2L-ReLU"]
    # display labels that coincide are told apart by the options that differ
    spec = parse_spec(spec_with(datasets=[{"name": "digits", "n_train": 50}, {"name": "digits", "n_train": 60}]))
    assert [d.label for d in spec.datasets] == ["digits (n_train=50)", "digits (n_train=60)"]


def test_round_trip_and_json(tmp_path):
    spec = parse_spec(spec_with(kind="training", seeds=[3, 1], training={"epochs": 7, "ntk_time": 100}))
    assert parse_spec(spec.to_dict()) == spec
    assert parse_spec(json.loads(spec.to_json())) == spec
    path = tmp_path / "s.json"
    path.write_text(spec.to_json())
    loaded = load_spec(path)
    assert loaded == spec and loaded.source == str(path)
    assert load_spec(loaded) is loaded


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n "kind": "kernel",,}')
    with pytest.raises(SpecError, match=r"bad\.json: invalid JSON at line 2"):
        load_spec(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(spec_with(models__1__depth=0)))
    with pytest.raises(SpecError, match=r"wrong\.json: models\[1\]\.depth: expected an integer >= 1, got 0"):
        load_spec(wrong)
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps(spec_with()).replace('"n_test": 10', '"n_test": NaN'))
    with pytest.raises(SpecError, match="NaN is not a JSON number"):
        load_spec(nan)
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.json")


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.json")), ids=lambda p: p.name)
def test_shipped_experiment_specs_validate(path):
    spec = load_spec(path)
    assert isinstance(spec, Spec)
    assert spec.name == path.stem


def test_quick_width_sweep_is_what_issue_5_asks_for():
    spec = load_spec(ROOT / "experiments" / "quick_width_sweep.json")
    assert spec.kind == "kernel" and spec.dtype == "float32"
    assert [d.name for d in spec.datasets] == ["digits"] and spec.datasets[0].n_train == 500
    assert [m.name for m in spec.models] == ["relu", "mlp-attn"]
    assert spec.widths == tuple(2**e for e in range(2, 17)) and len(spec.seeds) == 5
