"""Exports of a result store: Parquet files that read back equal, MLflow runs in a local file store, and the
git provenance of every record.

Parquet needs the extra ``parquet`` (pyarrow) and MLflow the extra ``mlflow`` (mlflow-skinny); without them
these tests skip, or fail with ``KERNELATTN_REQUIRE_EXTRAS=1`` (CI installs both).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import REQUIRE_EXTRAS_ENV, require_extra

from kernelattn import cli
from kernelattn.errors import DependencyError, InputTypeError, InputValueError
from kernelattn.experiments import provenance
from kernelattn.experiments.provenance import cell_key
from kernelattn.experiments.store import ResultStore, make_record, read_parquet, write_parquet

REPO = Path(__file__).resolve().parents[1]
SPEC = {"name": "tiny", "widths": [64, 128], "training": {"lr": 0.1, "epochs": 5}}
ENV = {"python": "3.x", "git": {"commit": "c" * 40, "dirty": False}}

#: Metrics of every shape a record holds: lists (per test point), nested mappings (flattened, or empty and kept),
#: None beside numbers, NaN and infinities, text, bools beside None, and a value of two types across records.
METRICS = [
    {"flip_rate": 0.25, "flip_rates": [0.0, 0.5], "spearman": float("nan"), "health": None, "attack_effective": True,
     "perturbation": {"linf": 0.1, "n_perturbed": 3}, "factorization": ["cholesky", "cholesky"], "extra": {},
     "final_train_loss": None, "label": "digits", "mixed": 1, "nested": [[1.0, 2.0], [3.0]]},
    {"flip_rate": float("inf"), "flip_rates": [1.0], "spearman": 0.5, "health": {"trained": False},
     "attack_effective": None, "perturbation": {"linf": float("-inf"), "n_perturbed": 4},
     "factorization": ["eigh", "cholesky"], "extra": {}, "final_train_loss": 0.75, "label": None, "mixed": "two",
     "nested": []},
    {"flip_rate": 0.0, "flip_rates": [], "spearman": -0.25, "health": None, "attack_effective": False,
     "perturbation": {"linf": 0.0, "n_perturbed": 0}, "factorization": ["cholesky", "eigh"], "extra": {},
     "final_train_loss": 1e-300, "label": "3 vs 8", "mixed": 2.5, "nested": [[]], "only_here": 7},
]


def _store(path: Path) -> ResultStore:
    store = ResultStore.open(path)
    for i, metrics in enumerate(METRICS):
        cell = {"dataset": {"name": "digits"}, "width": 64 * (i + 1), "seed": i, "kind": "malleability"}
        record = make_record("malleability", cell, metrics, spec=SPEC, seed=i, seconds=0.5 + i, environment=ENV)
        store.put(cell_key(cell), record)
    sweep_cell = {"dataset": "synthetic", "width": 8, "seed": 0}
    store.put(cell_key(sweep_cell), make_record("sweep", sweep_cell, {"rel_fro": 0.125}, spec={"name": "other"},
                                                seed=0, seconds=1.0, environment=ENV))
    return store


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    return _store(tmp_path / "results" / "tiny")


@pytest.fixture
def pyarrow():
    return require_extra("pyarrow", "parquet")


@pytest.fixture
def mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    return require_extra("mlflow", "mlflow")


def assert_same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal frames, dtypes included, and every cell of the same Python type (NaN equal to NaN)."""
    pd.testing.assert_frame_equal(got, want)
    for column in want.columns:
        for a, b in zip(want[column], got[column]):
            assert provenance.canonical_json(b) == provenance.canonical_json(a), (column, a, b)
            assert type(a) is type(b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (column, a, b)


# --------------------------------------------------------------------------- Parquet


@pytest.mark.parametrize("kind, prefix", [(None, False), ("malleability", True), ("sweep", False), ("none", False)])
def test_parquet_round_trip(store, tmp_path, pyarrow, kind, prefix):
    want = store.to_frame(kind, prefix=prefix)
    path = store.to_parquet(tmp_path / "out" / "records.parquet", kind, prefix=prefix)
    assert path == str(tmp_path / "out" / "records.parquet")
    assert_same_frame(read_parquet(path), want)
    assert os.listdir(tmp_path / "out") == ["records.parquet"]


def test_parquet_keeps_lists_as_arrow_lists_and_names_its_json_columns(store, tmp_path, pyarrow):
    import pyarrow.parquet as pq

    table = pq.read_table(store.to_parquet(tmp_path / "r.parquet", "malleability"))
    assert pyarrow.types.is_list(table.schema.field("flip_rates").type)
    assert pyarrow.types.is_floating(table.schema.field("flip_rate").type)
    ours = json.loads(table.schema.metadata[b"kernelattn"])
    assert {"extra", "mixed", "health.trained"} <= set(ours["json"])  # empty mapping, int/str/float, NaN/bool
    assert "flip_rates" in ours["objects"]
    plain = pd.read_parquet(tmp_path / "r.parquet")  # any Parquet reader sees JSON text there
    assert sorted(plain["mixed"]) == ['"two"', "1", "2.5"]


def test_parquet_round_trip_of_an_influence_table(tmp_path, pyarrow):
    """A per-test-point table (as ``MalleabilityReport.to_frame(per_test=True)``), with an index of its own."""
    frame = pd.DataFrame({"test_index": [0, 1, 2], "flip_rate": [0.0, 0.5, float("nan")],
                          "spearman": [0.25, -1.0, 1.0], "attack": ["pgd", "pgd", "fgsm"],
                          "retrain": [True, False, True], "scores": [[0.5, -0.25], [], [1e-12]]},
                         index=pd.Index([10, 20, 30], name="test_point"))
    assert_same_frame(read_parquet(write_parquet(frame, tmp_path / "influence.parquet")), frame)


def test_parquet_replaces_atomically_and_leaves_nothing_on_failure(store, tmp_path, pyarrow, monkeypatch):
    import pyarrow.parquet as pq

    target = tmp_path / "r.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), target)
    before = target.read_bytes()

    def torn(table, sink, **kwargs):
        sink.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", torn)
    with pytest.raises(OSError, match="No space"):
        store.to_parquet(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["r.parquet", "results"]
    monkeypatch.undo()
    store.to_parquet(target)
    assert_same_frame(read_parquet(target), store.to_frame())


def test_parquet_refuses_what_it_cannot_store(tmp_path, pyarrow):
    with pytest.raises(InputTypeError, match="DataFrame"):
        write_parquet({"a": [1]}, tmp_path / "x.parquet")
    with pytest.raises(InputValueError, match="str column names"):
        write_parquet(pd.DataFrame({0: [1]}), tmp_path / "x.parquet")
    with pytest.raises(InputTypeError, match=r"mixed.*object"):
        write_parquet(pd.DataFrame({"mixed": [1, object()]}), tmp_path / "x.parquet")
    assert os.listdir(tmp_path) == []
    (tmp_path / "not.parquet").write_text("hello")
    with pytest.raises(ValueError):
        read_parquet(tmp_path / "not.parquet")


def test_parquet_without_pyarrow_names_the_install_command(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(DependencyError, match=re.escape("pip install 'kernelattn[parquet]'")):
        store.to_parquet(tmp_path / "r.parquet")
    assert cli.main(["export", store.path, "--parquet", str(tmp_path / "r.parquet")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "kernelattn[parquet]" in err
    assert not (tmp_path / "r.parquet").exists()


# --------------------------------------------------------------------------- the export command


def test_export_command_writes_parquet(store, tmp_path, pyarrow, capsys):
    out = tmp_path / "exports" / "tiny.parquet"
    assert cli.main(["export", store.path, "--parquet", str(out), "--kind", "malleability"]) == 0
    assert capsys.readouterr().out.strip() == f"parquet: {out}"
    assert_same_frame(read_parquet(out), store.to_frame("malleability"))


@pytest.mark.parametrize("argv, message", [
    (lambda t, s: ["export", s], r"expected --parquet FILE and/or --mlflow URI"),
    (lambda t, s: ["export", str(t / "nowhere"), "--parquet", str(t / "x.parquet")], r"no result store at"),
    (lambda t, s: ["export", s, "--parquet", str(t / "x.parquet"), "--figures", str(t)], r"--figures: expected "
                                                                                          r"together with --mlflow"),
    (lambda t, s: ["export", s, "--parquet", str(t / "results")], r"(directory|Is a directory)"),
])
def test_export_command_refuses_bad_input_in_one_line(store, tmp_path, pyarrow, capsys, argv, message):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli.main(argv(tmp_path, store.path)) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- MLflow


def _client(mlflow, uri: str):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # reading a file store back; monkeypatch undoes it
    return mlflow.MlflowClient(tracking_uri=uri)


def test_mlflow_logs_one_run_per_store(store, tmp_path, mlflow, monkeypatch):
    from kernelattn.experiments.tracking import log_store_to_mlflow

    figures = tmp_path / "figures"
    (figures / "sub").mkdir(parents=True)
    (figures / "widths.png").write_bytes(b"\x89PNG fake")
    (figures / "sub" / "kappa.pdf").write_bytes(b"%PDF fake")
    lone = tmp_path / "lone.png"
    lone.write_bytes(b"\x89PNG")
    run_id = log_store_to_mlflow(store, tmp_path / "mlruns", experiment="exports", figures=[figures, lone])
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # set only while logging

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = _client(mlflow, (tmp_path / "mlruns").as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert client.get_experiment(run.info.experiment_id).name == "exports"
    # params: the spec, flattened; a name whose value differs between records lists its values
    params = run.data.params
    assert params["training.lr"] == "0.1" and params["widths"] == "[64,128]" and params["name"] == "[tiny,other]"
    # metrics: every numeric metric per record, step = position in key order; NaN left out
    records = list(store.records())
    history = {m.step: m.value for m in client.get_metric_history(run_id, "flip_rate")}
    want = {i: r["metrics"]["flip_rate"] for i, r in enumerate(records) if "flip_rate" in r["metrics"]}
    assert history == want
    spearman = {m.step for m in client.get_metric_history(run_id, "spearman")}
    assert spearman == {i for i, r in enumerate(records) if not math.isnan(r["metrics"].get("spearman", math.nan))}
    assert {m.step for m in client.get_metric_history(run_id, "perturbation.linf")} == set(want)
    assert [m.value for m in client.get_metric_history(run_id, "seconds")] == [r["timing"]["seconds"] for r in records]
    assert "label" not in run.data.metrics and "attack_effective" not in run.data.metrics
    # tags: the store and the records' provenance
    tags = run.data.tags
    assert tags["kernelattn.store"] == store.path and tags["kernelattn.records"] == "4"
    assert tags["kernelattn.kinds"] == "malleability,sweep"
    assert tags["kernelattn.git_commit"] == "c" * 40 and tags["kernelattn.git_dirty"] == "False"
    # artifacts: every record, one line each in step order, and the figures
    artifacts = Path(client.download_artifacts(run_id, "", str(tmp_path / "download")))
    lines = (artifacts / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [r["key"] for r in records]
    assert sorted(str(p.relative_to(artifacts / "figures")) for p in (artifacts / "figures").rglob("*.*")) == [
        "lone.png", "sub/kappa.pdf", "widths.png"]


def test_mlflow_export_command_and_a_second_run(store, tmp_path, pyarrow, mlflow, monkeypatch, capsys):
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "r.parquet"
    assert cli.main(["export", store.path, "--mlflow", uri, "--kind", "sweep", "--experiment", "cli",
                     "--parquet", str(out)]) == 0
    printed = capsys.readouterr().out
    run_id = re.search(r"mlflow: run ([0-9a-f]{32}) in experiment 'cli'", printed).group(1)
    assert_same_frame(read_parquet(out), store.to_frame("sweep"))
    assert cli.main(["export", store.path, "--mlflow", uri, "--experiment", "cli"]) == 0
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = _client(mlflow, uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "cli"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and run_id in {r.info.run_id for r in runs}
    assert client.get_run(run_id).data.metrics == {"rel_fro": 0.125, "seconds": 1.0}


def test_mlflow_refuses_before_logging_anything(store, tmp_path, mlflow, capsys):
    from kernelattn.experiments.tracking import log_store_to_mlflow

    with pytest.raises(InputValueError, match="no such file or directory"):
        log_store_to_mlflow(store, tmp_path / "mlruns", figures=tmp_path / "missing.png")
    with pytest.raises(InputValueError, match="experiment"):
        log_store_to_mlflow(store, tmp_path / "mlruns", experiment=" ")
    assert cli.main(["export", store.path, "--mlflow", str(tmp_path / "mlruns"), "--figures", "nope.png"]) == 2
    assert "no such file or directory: nope.png" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()


def test_mlflow_is_off_by_default_and_names_its_install_command(store, tmp_path, monkeypatch, capsys):
    from kernelattn.experiments.tracking import log_store_to_mlflow

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(DependencyError, match=re.escape("pip install 'kernelattn[mlflow]'")):
        log_store_to_mlflow(store, tmp_path / "mlruns")
    assert cli.main(["export", store.path, "--mlflow", str(tmp_path / "mlruns")]) == 2
    assert "kernelattn[mlflow]" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()
    tracking = REPO / "kernelattn" / "experiments" / "tracking.py"
    others = [p for p in (REPO / "kernelattn").rglob("*.py") if p != tracking]
    assert not [p for p in others if "import mlflow" in p.read_text()]  # nothing logs unless asked


# --------------------------------------------------------------------------- git provenance


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True, timeout=60)


@pytest.fixture
def git():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")


def test_git_state_of_a_checkout_clean_dirty_and_cached(tmp_path, git):
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    for root in (clean, dirty):
        root.mkdir()
        _git(root, "init", "-q")
        (root / "a.txt").write_text("a")
        _git(root, "add", "a.txt")
        _git(root, "commit", "-q", "-m", "first")
    (dirty / "a.txt").write_text("changed")
    head = subprocess.run(["git", "-C", str(clean), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    state = provenance.git_state(clean)
    assert state == {"commit": head.strip(), "dirty": False} and re.fullmatch(r"[0-9a-f]{40}", state["commit"])
    assert provenance.git_state(dirty)["dirty"] is True
    (clean / "new.txt").write_text("untracked")
    assert provenance.git_state(clean)["dirty"] is False  # asked once per process
    (clean / "sub").mkdir()
    assert provenance.git_state(clean / "sub") == {"commit": None, "dirty": None}  # inside, not the top
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert provenance.git_state(empty) == {"commit": None, "dirty": False}


def test_git_state_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert provenance.git_state(tmp_path / "elsewhere") == {"commit": None, "dirty": None}


def test_records_carry_git_provenance_and_keep_their_keys(tmp_path, git):
    env = provenance.environment()
    assert env["git"] == provenance.git_state()
    if (REPO / ".git").exists() and Path(provenance.PACKAGE_ROOT) == REPO:
        assert re.fullmatch(r"[0-9a-f]{40}", env["git"]["commit"]) and isinstance(env["git"]["dirty"], bool)
    cell = {"dataset": "digits", "width": 512, "lr": 0.1, "seed": 3, "widths": [1, 2], "opts": {"b": 1, "a": None}}
    key = cell_key(cell)
    assert key == "5a3a1851fee321b1b5a51fcd755e9cd0cb17c1b1af477e9a799e31242d53c738"  # pinned in test_store.py
    store = ResultStore.open(tmp_path / "s")
    store.put(key, make_record("sweep", cell, {"rel_fro": 0.5}, spec={}, seed=0, seconds=0.0))
    record = store.get(key)
    assert record["key"] == key and record["environment"]["git"] == env["git"]
    old = {k: v for k, v in ENV.items() if k != "git"}  # a record written before provenance had git
    other = {**cell, "seed": 1}
    store.put(cell_key(other), make_record("sweep", other, {"rel_fro": 0.5}, spec={}, seed=1, seconds=0.0,
                                           environment=old))
    assert store.get(cell_key(other))["environment"] == old and store.verify() == []


def test_require_extras_makes_a_missing_extra_fail(monkeypatch):
    monkeypatch.setitem(sys.modules, "no_such_extra_module", None)
    monkeypatch.delenv(REQUIRE_EXTRAS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape("pip install -e '.[nope]'")):
        require_extra("no_such_extra_module", "nope")
    monkeypatch.setenv(REQUIRE_EXTRAS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="KERNELATTN_REQUIRE_EXTRAS=1"):
        require_extra("no_such_extra_module", "nope")
