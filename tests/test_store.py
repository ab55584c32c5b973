"""Tests of the results store (``kernelattn.experiments.store``) and provenance (``kernelattn.experiments.provenance``).

Fast (a few seconds): crash safety is checked by fault injection at every byte
of a record, by SIGKILLing writer subprocesses, and by racing two claimant
subprocesses; filesystem errors are simulated where root could bypass them.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kernelattn.experiments import provenance
from kernelattn.experiments.provenance import cell_key
from kernelattn.experiments.store import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    STORE_FORMAT_NAME,
    RecordExistsError,
    ResultStore,
    StoreCorruptError,
    StoreError,
    StoreVersionError,
    encode_record,
    make_record,
    record_fingerprint,
)
from kernelattn.experiments.store.claims import host_tag

REPO = Path(__file__).resolve().parents[1]
ENV = {"python": "3.x", "packages": {"numpy": "x"}, "hostname": "test", "jax_backend": "cpu", "x64": True}
SPEC = {"experiment": "widths_quick", "widths": [64, 128], "lr": 0.1}


# --------------------------------------------------------------------------- helpers


def cell_of(i: int, kind: str = "sweep") -> dict[str, Any]:
    return {"dataset": "synthetic", "model": "mlp_attn", "width": 2 ** (i % 12), "seed": i, "kind": kind}


def record_of(i: int, kind: str = "sweep", **metrics: Any) -> tuple[str, dict[str, Any]]:
    cell = cell_of(i, kind)
    metrics = {"train_loss": 0.25 + i, "test_acc": 1.0 / (i + 3), **metrics}
    record = make_record(
        kind, cell, metrics, spec=SPEC, seed=i, seconds=0.5 * i,
        started="2026-01-01T00:00:00+00:00", finished="2026-01-01T00:00:01+00:00", environment=ENV,
    )
    return cell_key(cell), record


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def record_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "records"))


# Subprocesses import ``kernelattn.experiments.store``/``provenance`` (the modules under test)
# without running the package ``__init__``, which pulls in JAX/Flax (~2 s per
# process); the store modules themselves need only numpy and the stdlib.
BOOT = f"""
import sys, types
_pkg = types.ModuleType("kernelattn")
_pkg.__path__ = [{str(REPO / "kernelattn")!r}]
sys.modules["kernelattn"] = _pkg
"""


def python_command(code: str, *args: str) -> list[str]:
    """``[python, -c, BOOT + code, *args]``."""
    return [sys.executable, "-c", BOOT + textwrap.dedent(code), *args]


def run_python(code: str, *args: str) -> subprocess.Popen:
    """Start ``python -c code args`` (see ``BOOT``), stdout/stderr piped as text."""
    return subprocess.Popen(
        python_command(code, *args), cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


# --------------------------------------------------------------------------- provenance


def test_cell_key_is_canonical_and_pinned() -> None:
    cell = {"dataset": "digits", "width": 512, "lr": 0.1, "seed": 3, "widths": [1, 2], "opts": {"b": 1, "a": None}}
    key = cell_key(cell)
    # Pinned: the same cell must keep the same key across runs and releases.
    canonical = '{"dataset":"digits","lr":0.1,"opts":{"a":null,"b":1},"seed":3,"width":512,"widths":[1,2]}'
    assert provenance.canonical_json(cell) == canonical
    assert key == "5a3a1851fee321b1b5a51fcd755e9cd0cb17c1b1af477e9a799e31242d53c738"
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")
    reordered = {"opts": {"a": None, "b": 1}, "seed": np.int64(3), "widths": np.array([1, 2]), "lr": np.float64(0.1),
                 "width": np.int32(512), "dataset": np.str_("digits")}
    assert cell_key(reordered) == key
    assert cell_key({**cell, "widths": (1, 2)}) == key
    assert cell_key({**cell, "width": 512.0}) != key  # int and float are different parameters
    assert cell_key({**cell, "lr": float(np.float32(0.1))}) != key  # a different number
    with pytest.raises(TypeError, match="mapping keys must be str"):
        cell_key({"a": {1: 2}})
    with pytest.raises(TypeError, match=r"cell\['f'\]"):
        cell_key({"f": object()})
    with pytest.raises(TypeError, match="expected a mapping"):
        cell_key([("a", 1)])  # type: ignore[arg-type]


def test_cell_key_same_in_another_process() -> None:
    cell = {"dataset": "digits", "width": 512, "lr": 0.1, "nan": float("nan"), "seed": 3}
    code = "import json\nfrom kernelattn.experiments.provenance import cell_key\nprint(cell_key(json.loads(sys.argv[1])))"
    out = subprocess.run(
        python_command(code, json.dumps(cell)), env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out == cell_key(cell)


def test_environment_fields() -> None:
    env = provenance.environment()
    for field in ("python", "packages", "platform", "hostname", "jax_backend", "device_kinds", "x64"):
        assert field in env
    assert set(env["packages"]) == {"kernelattn", "jax", "jaxlib", "flax", "optax", "numpy", "scipy"}
    assert env["packages"]["numpy"] == np.__version__
    assert isinstance(env["device_kinds"], list) and env["device_kinds"]
    assert isinstance(env["x64"], bool)
    assert provenance.package_versions(("no-such-distribution-kernelattn",)) == {"no-such-distribution-kernelattn": None}
    json.dumps(env, allow_nan=False)  # plain JSON


# --------------------------------------------------------------------------- basic API


def test_put_get_keys_has(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path / "s")
    assert store.keys() == [] and len(store) == 0
    written = []
    for i in range(5):
        key, record = record_of(i)
        assert not store.has(key)
        assert store.put(key, record) is True
        assert store.has(key) and key in store
        written.append(key)
    assert store.keys() == sorted(written)
    got = store.get(written[2])
    assert got["format"] == FORMAT_VERSION and got["key"] == written[2]
    assert got["cell"] == cell_of(2) and got["seed"] == 2 and got["kind"] == "sweep"
    assert got["metrics"] == {"train_loss": 2.25, "test_acc": 0.2}
    assert got["spec"] == SPEC and got["environment"] == ENV
    assert got["timing"] == {"seconds": 1.0, "started": "2026-01-01T00:00:00+00:00",
                             "finished": "2026-01-01T00:00:01+00:00"}
    assert len(got["checksum"]) == 64
    assert [r["key"] for r in store.records()] == sorted(written)
    with pytest.raises(KeyError, match="no record"):
        store.get(cell_key({"missing": 1}))
    with pytest.raises(ValueError, match="key: expected a cell key"):
        store.get("../../etc/passwd")


def test_put_validates_record(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path)
    key, record = record_of(0)
    with pytest.raises(ValueError, match="is not cell_key"):
        store.put(cell_key({"other": 1}), record)
    with pytest.raises(ValueError, match="differs from key"):
        store.put(key, {**record, "key": cell_key({"other": 1})})
    with pytest.raises(ValueError, match="missing field"):
        store.put(key, {k: v for k, v in record.items() if k != "metrics"})
    with pytest.raises(ValueError, match="seconds"):
        store.put(key, {**record, "timing": {"seconds": "slow"}})
    with pytest.raises(TypeError, match="cannot store"):
        store.put(key, {**record, "metrics": {"x": object()}})
    assert store.keys() == [] and record_files(tmp_path) == []


def test_errors_are_picklable() -> None:
    err = pickle.loads(pickle.dumps(StoreCorruptError("/x/records/k.json", "checksum mismatch")))
    assert isinstance(err, StoreCorruptError) and err.path == "/x/records/k.json" and err.problem == "checksum mismatch"
    assert "checksum mismatch" in str(err)


def test_failed_creation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError, match="disk full"):
        ResultStore.open(tmp_path / "new")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_environment_filled_in_when_absent(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path)
    key, record = record_of(1)
    del record["environment"]
    store.put(key, record)
    env = store.get(key)["environment"]
    assert env["packages"]["numpy"] == np.__version__ and "jax_backend" in env


def test_reopen_sees_records(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path / "s")
    keys = [store.put(*record_of(i)) for i in range(3)]
    assert all(keys)
    again = ResultStore.open(tmp_path / "s", create=False)
    assert again.keys() == store.keys()
    assert list(again.records()) == list(store.records())
    manifest = json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())
    assert manifest["format"] == STORE_FORMAT_NAME and manifest["version"] == FORMAT_VERSION
    reader = ResultStore.open(tmp_path / "s", readonly=True)
    assert reader.keys() == store.keys()
    with pytest.raises(StoreError, match="read-only"):
        reader.put(*record_of(9))
    with pytest.raises(StoreError, match="no result store"):
        ResultStore.open(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_nan_inf_and_exact_floats_round_trip(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path)
    values = {"nan": float("nan"), "inf": math.inf, "ninf": -math.inf, "negzero": -0.0, "tenth": 0.1 + 0.2,
              "tiny": 5e-324, "big": 1.7976931348623157e308, "f32": np.float32(1 / 3), "arr": np.linspace(0, 1, 7),
              "int": np.int64(2**53 + 1), "flag": np.bool_(True)}
    key, record = record_of(0, **values)
    store.put(key, record)
    got = ResultStore.open(tmp_path).get(key)["metrics"]
    for name in ("nan", "inf", "ninf", "negzero", "tenth", "tiny", "big"):
        assert bits(got[name]) == bits(values[name]), name
    assert bits(got["f32"]) == bits(float(np.float32(1 / 3)))
    assert [bits(v) for v in got["arr"]] == [bits(float(v)) for v in np.linspace(0, 1, 7)]
    assert got["int"] == 2**53 + 1 and type(got["int"]) is int and got["flag"] is True
    # the file re-encodes to the very same bytes
    path = tmp_path / "records" / f"{key}.json"
    assert encode_record(store.get(key)) == path.read_bytes()


def test_to_frame_columns(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path)
    empty = store.to_frame()
    assert list(empty.columns) == ["key", "kind", "seed", "seconds"] and len(empty) == 0
    for i in range(4):
        store.put(*record_of(i, extra={"spearman": 0.5, "flip": math.nan}))
    store.put(*record_of(10, kind="malleability", flip_rate=0.125))
    df = store.to_frame()
    assert list(df.columns[:4]) == ["key", "kind", "seed", "seconds"]
    assert {"dataset", "model", "width", "train_loss", "test_acc", "extra.spearman", "extra.flip",
            "flip_rate"} <= set(df.columns)
    assert len(df) == 5 and list(df["key"]) == sorted(df["key"])
    sweep = store.to_frame(kind="sweep")
    assert len(sweep) == 4 and set(sweep["kind"]) == {"sweep"} and "flip_rate" not in sweep.columns
    row = sweep.set_index("seed").loc[2]
    assert row["width"] == 4 and row["train_loss"] == 2.25 and row["seconds"] == 1.0 and math.isnan(row["extra.flip"])
    assert sweep["width"].dtype.kind == "i" and sweep["test_acc"].dtype.kind == "f"
    mall = store.to_frame(kind="malleability")
    assert list(mall["flip_rate"]) == [0.125]
    # the cell's "seed" equals the record's seed, so they merge; a clash is an error
    store.put(*record_of(20, seconds_metric=1.0, seed=99))
    with pytest.raises(ValueError, match="clashes"):
        store.to_frame()
    prefixed = store.to_frame(prefix=True)
    assert {"cell.width", "metrics.seed", "metrics.train_loss", "seed"} <= set(prefixed.columns)


def test_to_frame_of_sweep_stores_whose_cell_names_its_own_kind(tmp_path: Path) -> None:
    """A sweep's cell says ``kind`` "kernel" / "training", its record "kernel_sweep" / "training_sweep"."""
    store = ResultStore.open(tmp_path)
    for i, (record_kind, cell_kind) in enumerate([("kernel_sweep", "kernel"), ("training_sweep", "training")]):
        cell = {**cell_of(i, cell_kind), "seed": i}
        store.put(cell_key(cell), make_record(record_kind, cell, {"rel_fro": 0.5 + i}, spec=SPEC, seed=i,
                                              seconds=1.0, environment=ENV))
    df = store.to_frame()
    assert list(df.columns[:4]) == ["key", "kind", "seed", "seconds"]
    assert sorted(zip(df["kind"], df["cell.kind"])) == [("kernel_sweep", "kernel"), ("training_sweep", "training")]
    assert "cell.seed" not in df.columns  # equal values still merge
    kernel = store.to_frame("kernel_sweep")
    assert list(kernel["cell.kind"]) == ["kernel"] and list(kernel["rel_fro"]) == [0.5]
    prefixed = store.to_frame(prefix=True)
    assert set(prefixed["cell.kind"]) == {"kernel", "training"} and set(prefixed["kind"]) == {"kernel_sweep",
                                                                                             "training_sweep"}


def test_append_only(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path)
    key, record = record_of(3)
    store.put(key, record)
    before = snapshot(tmp_path)
    changed = {**record, "metrics": {"train_loss": -1.0}}
    with pytest.raises(RecordExistsError, match="append-only"):
        store.put(key, changed)
    with pytest.raises(RecordExistsError):
        ResultStore.open(tmp_path).put(key, changed)
    assert store.put(key, changed, exist_ok=True) is False
    assert snapshot(tmp_path) == before
    assert store.get(key)["metrics"]["train_loss"] == 3.25


def test_no_hardlink_filesystem_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore.open(tmp_path)

    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    key, record = record_of(1)
    assert store.put(key, record) is True
    with pytest.raises(RecordExistsError):
        store.put(key, record)
    assert store.get(key)["seed"] == 1 and record_files(tmp_path) == [f"{key}.json"]


def test_determinism_fingerprint(tmp_path: Path) -> None:
    a, b = ResultStore.open(tmp_path / "a"), ResultStore.open(tmp_path / "b")
    key, record = record_of(5, curve=[0.1, 0.2, math.inf])
    a.put(key, record)
    rerun = {**record, "environment": {**ENV, "hostname": "other"}, "timing": {"seconds": 99.0}}
    b.put(key, rerun)
    ra, rb = a.get(key), b.get(key)
    strip = ("environment", "timing", "checksum")
    assert {k: v for k, v in ra.items() if k not in strip} == {k: v for k, v in rb.items() if k not in strip}
    assert ra["checksum"] != rb["checksum"]
    assert record_fingerprint(ra) == record_fingerprint(rb) == record_fingerprint(record)
    assert record_fingerprint({**ra, "metrics": {**ra["metrics"], "train_loss": 5.250000000000001}}) != record_fingerprint(ra)


# --------------------------------------------------------------------------- versions and corruption


def test_newer_format_version_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ResultStore.open(root)
    store.put(*record_of(0))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "version": FORMAT_VERSION + 1}))
    before = snapshot(root)
    for kwargs in ({}, {"create": False}, {"readonly": True}):
        with pytest.raises(StoreVersionError, match="newer kernelattn"):
            ResultStore.open(root, **kwargs)
    assert snapshot(root) == before
    # a record from a newer format inside an older store is refused too
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    path = root / "records" / f"{store.keys()[0]}.json"
    path.write_text(path.read_text().replace('"format": 1', '"format": 2'))
    with pytest.raises(StoreVersionError, match="format version 2"):
        list(ResultStore.open(root).records())


def test_bad_manifest(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(StoreCorruptError, match=MANIFEST_NAME):
        ResultStore.open(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(StoreError, match="not a kernelattn"):
        ResultStore.open(tmp_path)


def test_corrupt_records_reported_and_repaired(tmp_path: Path) -> None:
    store = ResultStore.open(tmp_path)
    keys = []
    for i in range(6):
        key, record = record_of(i)
        store.put(key, record)
        keys.append(key)
    rec = tmp_path / "records"
    truncated, garbled, wrong, healthy = (rec / f"{k}.json" for k in keys[:4])
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])
    garbled.write_text(garbled.read_text().replace('"train_loss": 1.25', '"train_loss": 1.35'))
    shutil.copyfile(healthy, wrong)  # valid JSON, valid checksum, wrong key
    stray = rec / "notes.txt"
    stray.write_text("hello")

    with pytest.raises(StoreCorruptError) as info:
        store.get(keys[0])
    assert info.value.path == str(truncated) and "not valid JSON" in info.value.problem
    assert str(truncated) in str(info.value)
    with pytest.raises(StoreCorruptError, match="checksum mismatch") as info:
        store.get(keys[1])
    assert info.value.path == str(garbled)
    with pytest.raises(StoreCorruptError, match="key mismatch"):
        store.get(keys[2])
    with pytest.raises(StoreCorruptError):
        list(store.records())
    with pytest.raises(StoreCorruptError):
        store.to_frame()

    problems = store.verify()
    assert sorted(p.path for p in problems) == sorted(map(str, (truncated, garbled, wrong, stray)))
    assert {p.kind for p in problems} == {"corrupt"}
    assert snapshot(tmp_path)  # verify changed nothing: files still present
    assert truncated.exists() and stray.exists()

    repaired = store.repair(quarantine=True)
    assert sorted(p.path for p in repaired) == sorted(p.path for p in problems)
    quarantined = sorted(os.listdir(tmp_path / "quarantine"))
    assert len(quarantined) == 4 and any(q.startswith("notes.txt.") for q in quarantined)
    assert store.verify() == []
    assert [r["key"] for r in store.records()] == sorted([keys[3], keys[4], keys[5]])
    assert not store.has(keys[0]) and store.claim(keys[0])  # a quarantined cell is redone on resume

    bad = rec / f"{keys[4]}.json"
    bad.write_bytes(b"")
    with pytest.raises(StoreCorruptError, match="empty file"):
        store.get(keys[4])
    store.repair(quarantine=False)
    assert not bad.exists() and len(os.listdir(tmp_path / "quarantine")) == 4


# --------------------------------------------------------------------------- crash safety


def test_fault_injection_at_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer failing after k bytes, for every k, leaves the complete record or none."""
    root = tmp_path / "s"
    store = ResultStore.open(root)
    for i in range(2):
        store.put(*record_of(i))
    key, record = record_of(7, curve=[0.5, math.nan, -math.inf], note="ü")
    real_write = os.write

    # measure the bytes a put writes
    counter = [0]

    def counting(fd: int, data: bytes) -> int:
        n = real_write(fd, data)
        counter[0] += n
        return n

    scratch = ResultStore.open(tmp_path / "scratch")
    with monkeypatch.context() as m:
        m.setattr(os, "write", counting)
        scratch.put(key, record)
    total = counter[0]
    assert total > 500

    before = snapshot(root)
    baseline = sorted(store.keys())
    for k in range(total + 1):
        budget = [k]

        def failing(fd: int, data: bytes) -> int:
            if budget[0] <= 0:
                raise OSError(errno.EIO, "injected I/O error")
            n = real_write(fd, bytes(data[: budget[0]]))
            budget[0] -= n
            return n

        with monkeypatch.context() as m:
            m.setattr(os, "write", failing)
            if k < total:
                with pytest.raises(StoreError, match="injected"):
                    store.put(key, record)
            else:
                assert store.put(key, record) is True
        assert all(not name.startswith(".") for name in record_files(root)), k
        if k < total:
            assert snapshot(root) == before, k  # no record, no temp file, nothing else
        loaded = {r["key"]: r for r in ResultStore.open(root).records()}
        assert sorted(loaded) == sorted(baseline + [key] * (k == total)), k
    assert loaded[key]["metrics"]["note"] == "ü" and math.isnan(loaded[key]["metrics"]["curve"][1])


@pytest.mark.parametrize("step", ["fsync", "link", "close"])
def test_fault_after_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    store = ResultStore.open(tmp_path)
    store.put(*record_of(0))
    before = snapshot(tmp_path)
    real = getattr(os, step)
    calls = [0]

    def failing(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            if step == "close":
                real(*args)
            raise OSError(errno.EIO, f"injected {step} failure")
        return real(*args)

    monkeypatch.setattr(os, step, failing)
    key, record = record_of(1)
    with pytest.raises(StoreError, match=f"injected {step}"):
        store.put(key, record)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before and not store.has(key)


WRITER = """
import sys
from kernelattn.experiments.store import ResultStore, make_record
from kernelattn.experiments.provenance import cell_key
root, run = sys.argv[1], int(sys.argv[2])
store = ResultStore.open(root)
env = {"hostname": "writer", "run": run}
print("ready", flush=True)
i = 0
while True:
    cell = {"i": i}
    key = cell_key(cell)
    if not store.has(key):
        n = (i % 5) * 400
        metrics = {"i": i, "n": n, "values": [j * 0.1 for j in range(n)], "nan": float("nan")}
        store.put(key, make_record("sweep", cell, metrics, spec={"run": run}, seed=i, seconds=0.0, environment=env))
    i += 1
"""


def test_sigkill_writer_leaves_store_loadable(tmp_path: Path) -> None:
    root = tmp_path / "s"
    ResultStore.open(root)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    delays = []
    for run in range(4):
        proc = run_python(WRITER, str(root), str(run))
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.stderr.read()
            delays.append(rng.uniform(0.01, 0.3))
            time.sleep(delays[-1])
            assert proc.poll() is None, proc.stderr.read()
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        store = ResultStore.open(root)
        records = list(store.records())  # every record loads intact
        n = len(records)
        assert n > 0, delays
        assert {r["key"] for r in records} == {cell_key({"i": i}) for i in range(n)}, delays
        for r in records:
            i = r["cell"]["i"]
            assert r["metrics"]["i"] == i and len(r["metrics"]["values"]) == r["metrics"]["n"] == (i % 5) * 400
            assert math.isnan(r["metrics"]["nan"])
    assert all(p.kind == "temp" for p in store.verify()), delays
    store.repair()
    assert store.verify() == [] and all(not n.startswith(".") for n in record_files(root))


# --------------------------------------------------------------------------- filesystem errors


def _writable_despite_mode(directory: Path) -> bool:
    """True if a file can be created in ``directory`` (root ignores mode bits)."""
    probe = directory / ".can-i-write"
    try:
        probe.touch()
    except PermissionError:
        return False
    probe.unlink()
    return True


def _deny_writes_under(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Simulate a read-only directory for a user (root) that mode bits cannot stop."""
    real_open, real_mkdir = os.open, os.mkdir
    prefix = str(directory)

    def is_under(path: Any) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(prefix)

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if is_under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if is_under(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def test_read_only_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    existing = tmp_path / "existing"
    store = ResultStore.open(existing)
    key0, rec0 = record_of(0)
    store.put(key0, rec0)
    before_existing = snapshot(existing)
    os.chmod(fresh, 0o500)
    os.chmod(existing, 0o500)
    os.chmod(existing / "records", 0o500)
    os.chmod(existing / "claims", 0o500)
    try:
        if _writable_despite_mode(fresh):  # running as root: mode bits do not stop writes
            _deny_writes_under(monkeypatch, tmp_path)
        with pytest.raises(StoreError, match="is not writable"):
            ResultStore.open(fresh)
        assert list(fresh.iterdir()) == []
        with pytest.raises(StoreError, match="is not writable"):
            ResultStore.open(fresh / "nested" / "store")
        assert list(fresh.iterdir()) == []
        with pytest.raises(StoreError, match="is not writable"):
            ResultStore.open(existing)  # writable open fails fast, before any work
        # store opened while writable, permission lost later: refused at the write
        with pytest.raises(StoreError, match="is not writable"):
            store.put(*record_of(1))
        with pytest.raises(StoreError, match="is not writable"):
            store.claim(record_of(2)[0])
        reader = ResultStore.open(existing, readonly=True)
        assert reader.get(key0)["seed"] == 0 and len(reader.to_frame()) == 1
        assert snapshot(existing) == before_existing
    finally:
        monkeypatch.undo()
        for path in (fresh, existing, existing / "records", existing / "claims"):
            os.chmod(path, 0o700)


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    store = ResultStore.open(tmp_path)
    store.put(*record_of(0))
    before = snapshot(tmp_path)

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, call, full)
    key, record = record_of(1)
    with pytest.raises(StoreError, match=r"disk full \(ENOSPC\).*store unchanged"):
        store.put(key, record)
    with pytest.raises(StoreError, match="disk full"):
        store.claim(key)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert store.keys() == [record_of(0)[0]] and store.put(key, record)


# --------------------------------------------------------------------------- claims


CLAIMANT = """
import json, os, sys, time
from kernelattn.experiments.store import ResultStore, make_record
from kernelattn.experiments.provenance import cell_key
root, go = sys.argv[1], sys.argv[2]
store = ResultStore.open(root)
cells = [{"c": i} for i in range(50)]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.0005)
won = []
for cell in cells:
    key = cell_key(cell)
    if store.claim(key):
        won.append(key)
        store.put(key, make_record("sweep", cell, {"pid": os.getpid()}, spec={}, seed=0, seconds=0.0,
                                   environment={"pid": os.getpid()}))
print(json.dumps(won), flush=True)
"""


def test_two_processes_race_for_claims(tmp_path: Path) -> None:
    root = tmp_path / "s"
    ResultStore.open(root)
    go = tmp_path / "go"
    procs = [run_python(CLAIMANT, str(root), str(go)) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        outs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err
    won = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    all_keys = {cell_key({"c": i}) for i in range(50)}
    assert not set(won[0]) & set(won[1])
    assert sorted(won[0] + won[1]) == sorted(all_keys)
    store = ResultStore.open(root)
    assert set(store.keys()) == all_keys
    by_pid = {pid: {r["key"] for r in store.records() if r["metrics"]["pid"] == pid} for pid in (p.pid for p in procs)}
    assert sorted(map(sorted, by_pid.values())) == sorted(map(sorted, won))
    assert os.listdir(root / "claims") == []  # put released every claim


def _write_claim(root: Path, key: str, **info: Any) -> Path:
    path = root / "claims" / f"{key}.claim"
    path.write_text(json.dumps(info))
    return path


def test_stale_claim_of_dead_process_is_taken_over(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ResultStore.open(root)
    key = record_of(0)[0]
    proc = run_python(
        """
        import os, sys
        from kernelattn.experiments.store import ResultStore
        assert ResultStore.open(sys.argv[1]).claim(sys.argv[2])
        os._exit(0)  # crash without releasing
        """,
        str(root), key,
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    claim = json.loads((root / "claims" / f"{key}.claim").read_text())
    assert claim["pid"] == proc.pid and {"host", "time", "token"} <= set(claim)
    assert store.claim(key) is True  # owner dead on this host: stale, taken over
    assert json.loads((root / "claims" / f"{key}.claim").read_text())["pid"] == os.getpid()
    assert store.claim(key) is True  # re-claiming one's own claim is fine
    assert store.held_claims() == [key]
    assert store.release(key) is True and store.release(key) is False
    assert os.listdir(root / "claims") == []


def test_claims_of_finished_cells_left_by_a_killed_owner_are_cleared(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ResultStore.open(root)
    (dead_key, dead_record), (live_key, live_record) = record_of(0), record_of(1)
    proc = run_python(
        """
        import os, sys
        from kernelattn.experiments.store import ResultStore
        assert ResultStore.open(sys.argv[1]).claim(sys.argv[2])
        os._exit(0)  # killed after its record, before its release
        """,
        str(root), dead_key,
    )
    assert proc.communicate(timeout=60)[0] is not None and proc.returncode == 0
    other = ResultStore.open(root)
    assert other.claim(live_key)  # a live owner (this process) that has not released yet
    store.put(dead_key, dead_record)
    store.put(live_key, live_record)
    assert {c.key for c in store.claims() if c.state == "finished"} == {dead_key, live_key}
    assert [c.key for c in store.clear_finished_claims()] == [dead_key]
    assert [c.key for c in store.claims()] == [live_key]
    assert other.release(live_key) and not [p for p in store.verify() if p.kind == "claim"]


def test_claimed_elsewhere(tmp_path: Path) -> None:
    a, b = ResultStore.open(tmp_path / "s"), ResultStore.open(tmp_path / "s")
    key, record = record_of(0)
    assert not a.claimed_elsewhere(key)  # nobody
    assert a.claim(key)
    assert b.claimed_elsewhere(key) and not a.claimed_elsewhere(key)  # not by ourselves
    a.put(key, record)
    assert not b.claimed_elsewhere(key)  # finished
    k_other = record_of(1)[0]
    _write_claim(tmp_path / "s", k_other, host="elsewhere/boot", pid=1, time=time.time() - 3 * 86400, token="t")
    assert not a.claimed_elsewhere(k_other)  # stale


def test_claim_rules(tmp_path: Path) -> None:
    root = tmp_path / "s"
    a = ResultStore.open(root)
    b = ResultStore.open(root)
    k1, k2, k3, k4, k5, k6 = (record_of(i)[0] for i in range(6))
    host = provenance.host_id()

    assert a.claim(k1) and not b.claim(k1)  # live owner (this very process)
    assert not b.release(k1)  # b never held it
    a.put(*record_of(0))  # put releases a's claim
    assert a.held_claims() == [] and not b.claim(k1)  # finished cells are never claimed

    # older than the timeout: stale whoever owns it
    assert a.claim(k2)
    time.sleep(0.01)
    impatient = ResultStore.open(root, claim_timeout=0.001)
    assert impatient.claim(k2)
    assert a.release(k2) is False  # taken over meanwhile: a must not remove the new claim
    assert (root / "claims" / f"{k2}.claim").exists() and impatient.release(k2)

    # another host: only the timeout applies
    now = time.time()
    _write_claim(root, k3, host="elsewhere/boot", pid=1, time=now, token="t3")
    assert not a.claim(k3)
    _write_claim(root, k4, host="elsewhere/boot", pid=1, time=now - 3 * 86400, token="t4")
    assert a.claim(k4)

    # this host, pid reused by a younger process (our own pid, different start time)
    _write_claim(root, k5, host=host, pid=os.getpid(), pid_start="0", time=now, token="t5")
    assert a.claim(k5)

    # unreadable claim: judged by file age
    path = _write_claim(root, k6)
    path.write_text("garbage")
    assert not a.claim(k6)
    os.utime(path, (now - 3 * 86400, now - 3 * 86400))
    assert a.claim(k6)

    with pytest.raises(ValueError, match="claim_timeout"):
        ResultStore.open(root, claim_timeout=-1)
    assert [p.kind for p in ResultStore.open(root, claim_timeout=None).verify()] == []


def test_verify_reports_orphans_and_repair_cleans_them(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ResultStore.open(root)
    key, record = record_of(0)
    store.put(key, record)
    dead = subprocess.run(python_command("import os; print(os.getpid())"), capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    tag = host_tag(provenance.host_id())
    orphan = root / "records" / f".tmp-{tag}-{dead_pid}-{'0' * 32}"
    orphan.write_text("{partial")
    live = root / "records" / f".tmp-{tag}-{os.getpid()}-{'1' * 32}"
    live.write_text("{in flight")
    leftover = _write_claim(root, key, host=provenance.host_id(), pid=dead_pid, time=time.time(), token="x")
    assert [r["key"] for r in store.records()] == [key]  # temp files are never read as records
    problems = {(Path(p.path).name, p.kind) for p in store.verify()}
    assert problems == {(orphan.name, "temp"), (leftover.name, "claim")}
    store.repair()
    assert not orphan.exists() and not leftover.exists() and live.exists()


# --------------------------------------------------------------------------- tamper evidence (issue 15)


def test_hmac_round_trip_and_tamper_detection(tmp_path, monkeypatch):
    """The plain checksum detects corruption only: an edit that recomputes it passes. With a key, records
    carry an HMAC; a reader with the key refuses an edit by someone without it, and a record without one."""
    from kernelattn.experiments.store import HMAC_ENV_VAR, record_checksum

    monkeypatch.delenv(HMAC_ENV_VAR, raising=False)
    key, record = record_of(1)
    signed = ResultStore.open(tmp_path / "signed", hmac_key=b"secret")
    signed.put(key, record)
    path = tmp_path / "signed" / "records" / f"{key}.json"
    stored = json.loads(path.read_text())
    assert isinstance(stored["hmac"], str) and len(stored["hmac"]) == 64
    assert signed.get(key)["metrics"] == record["metrics"]
    assert ResultStore.open(tmp_path / "signed", readonly=True).get(key)  # no key: read as before

    stored["metrics"]["train_loss"] = 0.0
    stored["checksum"] = record_checksum(stored)
    path.write_text(json.dumps(stored))
    assert ResultStore.open(tmp_path / "signed", readonly=True).verify() == []  # the checksum cannot tell
    with pytest.raises(StoreCorruptError, match="HMAC mismatch"):
        ResultStore.open(tmp_path / "signed", readonly=True, hmac_key="secret").get(key)
    monkeypatch.setenv(HMAC_ENV_VAR, "secret")
    problems = ResultStore.open(tmp_path / "signed", readonly=True).verify()
    assert [p.kind for p in problems] == ["corrupt"] and "HMAC mismatch" in problems[0].problem

    monkeypatch.delenv(HMAC_ENV_VAR)
    plain = ResultStore.open(tmp_path / "plain")
    plain.put(key, record)
    with pytest.raises(StoreCorruptError, match="no HMAC"):
        ResultStore.open(tmp_path / "plain", readonly=True, hmac_key="secret").get(key)


def test_non_regular_files_are_never_opened(tmp_path):
    key, record = record_of(2)
    store = ResultStore.open(tmp_path / "s")
    store.put(key, record)
    fifo_key, _ = record_of(3)
    os.mkfifo(tmp_path / "s" / "records" / f"{fifo_key}.json")
    os.mkfifo(tmp_path / "s" / "claims" / f"{fifo_key}.claim")
    signal.alarm(10)  # opening a FIFO for reading would block forever
    try:
        problems = store.verify()
        assert sorted(p.kind for p in problems) == ["claim", "corrupt"]
        assert all("FIFO" in p.problem for p in problems)
        with pytest.raises(StoreCorruptError, match="a FIFO, not a regular file"):
            store.get(fifo_key)
        assert sorted(p.kind for p in store.repair()) == ["claim", "corrupt"]
        assert store.verify() == [] and [r["key"] for r in store.records()] == [key]
    finally:
        signal.alarm(0)


def test_claiming_yields_the_keys_held_and_releases_them_however_the_block_ends(tmp_path):
    store = ResultStore.open(tmp_path / "s")
    other = ResultStore.open(tmp_path / "s")
    keys = [provenance.cell_key({"i": i}) for i in range(3)]
    assert other.claim(keys[2])  # a live owner elsewhere
    with store.claiming(keys) as held:
        assert held == keys[:2] and set(store.held_claims()) == set(keys[:2])
        store.put(keys[0], make_record("t", {"i": 0}, {}, spec={}, seed=0, seconds=0.0))  # put releases its claim
    assert store.held_claims() == [] and not store.claimed_elsewhere(keys[1])
    with pytest.raises(RuntimeError), store.claiming(keys[1:2]) as held:
        assert held == keys[1:2]
        raise RuntimeError("killed mid-cell")
    assert store.held_claims() == [] and other.held_claims() == [keys[2]]
