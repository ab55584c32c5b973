"""A catalogue of bad inputs across the public API and the CLI (issue 10).

Each must give ONE clear error naming what was wrong — the argument, what was
expected, what came — a non-zero exit code from the CLI, and leave the result
store and the data cache as they were.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import pickle
import re
import signal
import stat
import struct
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import kernelattn as ka
from kernelattn import cli
from kernelattn.data import ChecksumError, DatasetNotFoundError
from kernelattn.errors import KernelattnError
from kernelattn.experiments.provenance import cell_key
from kernelattn.reproduce import reproduce
from kernelattn.kernels import guards
from kernelattn.experiments.store import ResultStore, StoreError, StoreVersionError

X = np.random.default_rng(0).random((6, 4))
Y = np.eye(2)[[0, 1, 0, 1, 0, 1]]
X_TEST = np.random.default_rng(1).random((3, 4))
HEAD = ka.HeadConfig(8)
KEY = jax.random.PRNGKey(0)


def _nan():
    x = X.copy()
    x[1, 2] = np.nan
    return x


def _zero_row():
    x = X.copy()
    x[2] = 0.0
    return x


# (id, callable, exception type, regex the message must match)
API_CASES = [
    ("gram 1-d", lambda: ka.gram(np.ones(3)), ValueError, r"x: expected a 2-d array"),
    ("gram NaN", lambda: ka.gram(_nan()), ValueError, r"x: expected finite values, got 1 NaN/inf"),
    ("gram inf", lambda: ka.condition_report(np.full((2, 2), np.inf)), ValueError, r"x: expected finite"),
    ("gram empty", lambda: ka.condition_report(np.zeros((0, 4))), ValueError, r"x: expected at least 1 row"),
    ("gram strings", lambda: ka.gram(np.array([["a", "b"]])), TypeError, r"x: expected a real numeric array"),
    ("kernel zero row", lambda: ka.head_kernels(_zero_row()), ValueError, r"x1: expected rows of non-zero norm.*index 2"),
    ("kernel columns", lambda: ka.head_kernels(X, X_TEST[:, :3]), ValueError, r"x2: expected 4 columns"),
    ("kernel dtype", lambda: ka.head_kernels(X, dtype="float16"), ValueError, r"dtype: expected one of"),
    ("attention depth 0", lambda: ka.linear_attention(X, depth=0), ValueError, r"depth: expected an integer >= 1, got 0"),
    ("attention rank", lambda: ka.linear_attention(X, rank=5), ValueError, r"rank: expected an integer <= 4, got 5"),
    ("width 0", lambda: ka.HeadConfig(0), ValueError, r"width: expected an integer >= 1, got 0"),
    ("width negative", lambda: ka.make_model("relu", -4), ValueError, r"width: expected an integer >= 1, got -4"),
    ("width non-integer", lambda: ka.make_model("relu", 4.5), ValueError, r"width: expected an integer, got float 4.5"),
    ("sigma negative", lambda: ka.HeadConfig(4, sigma_w=-1.0), ValueError, r"sigma_w: expected a number >= 0"),
    ("unknown model", lambda: ka.make_model("transformer", 4), ValueError, r"model: expected one of .*'transformer'"),
    ("chunk 0", lambda: ka.streaming_head_ntk(KEY, HEAD, X, width_chunk=0), ValueError, r"width_chunk: expected an integer >= 1"),
    ("ntk implementation", lambda: ka.empirical_ntk(lambda p, x: x @ p, np.ones((4, 1)), X, implementation="fast"),
     ValueError, r"implementation: expected one of"),
    ("epsilon negative", lambda: ka.malleability(X=X, y=np.array([0, 1] * 3), X_test=X_TEST, y_test=np.array([0, 1, 0]),
                                                  epsilon=-0.1), ValueError, r"epsilon: expected a number >= 0"),
    ("tau zero", lambda: ka.malleability(X=X, y=np.array([0, 1] * 3), X_test=X_TEST, y_test=np.array([0, 1, 0]), tau=0.0),
     ValueError, r"tau: expected a number > 0"),
    ("tau above one", lambda: ka.malleability(X=X, y=np.array([0, 1] * 3), X_test=X_TEST, y_test=np.array([0, 1, 0]), tau=1.5),
     ValueError, r"tau: expected a number <= 1"),
    ("ridge zero", lambda: ka.influence_scores(np.eye(3), np.ones((2, 3)), np.ones(3), 0.0), ValueError, r"ridge"),
    ("ridge negative", lambda: ka.influence_scores(np.eye(3), np.ones((2, 3)), np.ones(3), -1.0), ValueError, r"ridge"),
    ("influence shapes", lambda: ka.influence_scores(np.eye(3), np.ones((2, 4)), np.ones(3), 1e-3), ValueError, r"k_test_train"),
    ("unknown attack", lambda: ka.malleability(X=X, y=np.array([0, 1] * 3), X_test=X_TEST, y_test=np.array([0, 1, 0]),
                                               attack="cw"), ValueError, r"attack: expected one of"),
    ("n = 1", lambda: ka.malleability(X=X[:1], y=np.array([0]), X_test=X_TEST, y_test=np.array([0, 1, 0])), ValueError, r"X: expected at least 2 row\(s\), got array of shape \(1, 4\)"),
    ("train shapes", lambda: ka.train(lambda p, x: x @ p, np.ones((4, 1)), X, np.ones((5, 1)), key=KEY),
     ValueError, r"y: expected 6 rows to match x"),
    ("train config", lambda: ka.TrainConfig(batch_size=0), ValueError, r"batch_size: expected an integer >= 1"),
    ("spec unknown key", lambda: ka.load_spec({"name": "s", "kind": "kernel", "datasets": [{"name": "digits"}],
                                               "models": [{"name": "relu"}], "widths": [4], "seedz": 1}), ValueError, r"seedz"),
    ("spec bad value", lambda: ka.load_spec({"name": "s", "kind": "kernel", "datasets": [{"name": "digits"}],
                                             "models": [{"name": "mlp-attn", "depth": 0}], "widths": [4]}),
     ValueError, r"models\[0\]\.depth: expected an integer >= 1"),
    ("unknown dataset", lambda: ka.data.load("imagenet"), ValueError, r"name: expected one of"),
    ("class subset", lambda: ka.data.load("digits", classes=(3, 42)), ValueError, r"classes"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_rejects_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file below ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def store_dir(tmp_path):
    """A results store holding one record."""
    path = tmp_path / "results" / "tiny"
    store = ResultStore.open(path)
    cell = {"x": 1}
    store.put(cell_key(cell), _record(cell))
    return path


def _record(cell):
    from kernelattn.experiments.store import make_record

    return make_record("sweep", cell, {"rel_fro": 0.5}, spec={"name": "tiny"}, seed=0, seconds=0.1)


def _run_cli(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _bad_spec(tmp_path, content: str) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content)
    return str(path)


CLI_CASES = [
    ("unknown dataset", lambda t: ["data", "info", "imagenet"], r"name: expected one of"),
    ("zero depth", lambda t: ["data", "info", "digits", "--depth", "0"], r"depth: expected an integer >= 1"),
    ("bad classes", lambda t: ["data", "info", "digits", "--classes", "3", "99"], r"classes"),
    ("missing spec", lambda t: ["sweep", str(t / "nope.json")], r"nope\.json"),
    ("malformed spec", lambda t: ["sweep", _bad_spec(t, "{not json")], r"(JSON|json|Expecting)"),
    ("unknown spec key", lambda t: ["sweep", _bad_spec(t, json.dumps({"name": "s", "kind": "kernel",
                                                                     "datasets": [{"name": "digits"}],
                                                                     "models": [{"name": "relu"}], "widths": [4],
                                                                     "colour": "red"}))], r"colour"),
    ("negative width in spec", lambda t: ["sweep", _bad_spec(t, json.dumps({"name": "s", "kind": "kernel",
                                                                           "datasets": [{"name": "digits"}],
                                                                           "models": [{"name": "relu"}], "widths": [-4]}))],
     r"widths"),
    ("malleability bad epsilon", lambda t: ["malleability", _bad_spec(t, json.dumps({"datasets": [{"name": "digits"}],
                                                                                      "epsilon": -1}))], r"epsilon"),
    ("malleability unknown attack", lambda t: ["malleability", _bad_spec(t, json.dumps({"datasets": [{"name": "digits"}],
                                                                                         "attacks": ["cw"]}))], r"attack"),
]


@pytest.mark.parametrize("argv", [c[1] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_rejects_bad_input(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = next(c for c in CLI_CASES if c[1] is argv)
    args = argv(tmp_path)
    if args[0] in ("sweep", "malleability"):
        args += ["--out", str(tmp_path / "out")]
    before = _snapshot(tmp_path)
    code, err = _run_cli(args, capsys)
    assert code != 0
    assert re.search(case[2], err), err
    assert len(err.strip().splitlines()) == 1, err
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()  # no store was created for a rejected spec


def test_store_from_a_newer_format_is_refused_untouched(store_dir):
    manifest = store_dir / "kernelattn-store.json"
    data = json.loads(manifest.read_text())
    data["version"] = 99
    manifest.write_text(json.dumps(data))
    before = _snapshot(store_dir)
    with pytest.raises(StoreVersionError, match="99"):
        ResultStore.open(store_dir)
    assert _snapshot(store_dir) == before


def test_read_only_output_directory(store_dir, monkeypatch):
    before = _snapshot(store_dir)
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(StoreError, match="writ"):
        store = ResultStore.open(store_dir)
        store.put(cell_key({"x": 2}), _record({"x": 2}))
    monkeypatch.undo()
    assert _snapshot(store_dir) == before


def test_full_disk(store_dir, monkeypatch):
    store = ResultStore.open(store_dir)
    before = _snapshot(store_dir)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError, match="(?i)disk full|no space"):
        store.put(cell_key({"x": 3}), _record({"x": 3}))
    monkeypatch.undo()
    assert _snapshot(store_dir) == before


def test_missing_and_corrupt_data_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        ka.data.load("mnist", data_dir=empty, download=False, system_dirs=())
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (bad / name).write_bytes(b"\x1f\x8b not really gzip")
    before = _snapshot(tmp_path)
    with pytest.raises((ChecksumError, DatasetNotFoundError), match="(?i)sha-?256|checksum"):
        ka.data.load("mnist", data_dir=bad, download=False, system_dirs=())
    assert _snapshot(tmp_path) == before


def test_catalogue_is_large_enough():
    assert len(API_CASES) + len(CLI_CASES) + 4 >= 30


# =========================================================================== the catalogue (issue 15)
#
# Every case runs in a directory of its own (``world``: specs, an ``out`` results directory with a store,
# a data ``cache``), in-process (``cli.main`` or a library call) and within 10 s, and must give:
# - one line naming the cause, matching ``message`` (CLI: on stderr after "kernelattn CMD: error:", exit
#   ``code``; library: a ``KernelattnError`` of class ``error``) — or, for ``check`` cases, the correct result;
# - no traceback (an exception outside the contract is a failure);
# - the world byte-identical before and after (no store created, nothing written outside ``--out``).
# ``test_catalogue`` runs them all, counts them and reports every failure at once.

HANG_LIMIT_S = 10.0
DIGITS = {"name": "digits", "n_train": 20, "n_test": 10, "seed": 0}
SWEEP = {"name": "tiny_sweep", "kind": "kernel", "datasets": [DIGITS], "models": [{"name": "relu"}], "widths": [4],
         "metrics": ["rel_fro"]}
MALL = {"name": "tiny_mall", "kind": "malleability", "datasets": [DIGITS], "models": ["relu"], "width": 8,
        "training": {"epochs": 1}, "attacks": ["fgsm"], "epsilons": [0.1], "attack_config": {"steps": 1},
        "null_baselines": []}


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input. ``setup(world)`` writes what the case needs and returns the CLI argv (a list) or the
    library call (a callable)."""

    name: str
    setup: Callable[[Path], Any]
    message: str
    code: int = 2
    error: type = KernelattnError
    stream: str = "err"  # CLI: the stream holding the line ("out" for `store`'s own report)
    check: Callable[[Any], bool] | None = None  # a library call that must return a correct result
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None


def _tree(root: Path) -> dict[str, str]:
    """Relative path → sha256 of a regular file, or its kind (directory, FIFO, link): never opens a FIFO."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(root))
            if stat.S_ISREG(mode):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if stat.S_ISDIR(mode) else "fifo" if stat.S_ISFIFO(mode) else f"mode {mode:o}"
    return out


def _spec(world: Path, data: Any, name: str = "spec.json") -> str:
    path = world / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _store(world: Path, name: str = "tiny") -> ResultStore:
    """A store ``world/out/<name>`` holding one record."""
    store = ResultStore.open(world / "out" / name)
    store.put(cell_key({"x": 1}), _record({"x": 1}))
    return store


def _sweep_store(world: Path) -> tuple[str, ResultStore, list]:
    """The SWEEP spec file, its (empty) store and its planned cells."""
    from kernelattn.experiments.specs import load_spec
    from kernelattn.experiments.sweeps import plan_cells

    path = _spec(world, SWEEP)
    store = ResultStore.open(world / "out" / SWEEP["name"])
    return path, store, plan_cells(load_spec(path))


def _fifo_record(world: Path) -> list[str]:
    path, store, cells = _sweep_store(world)
    os.mkfifo(Path(store.path) / "records" / f"{cells[0].key}.json")
    return ["sweep", path, "--out", str(world / "out"), "--no-progress"]


def _corrupt_record(world: Path) -> list[str]:
    path, store, cells = _sweep_store(world)
    (Path(store.path) / "records" / f"{cells[0].key}.json").write_text('{"truncated": ')
    return ["sweep", path, "--out", str(world / "out"), "--no-progress"]


def _foreign_claim(world: Path) -> tuple[str, ResultStore]:
    path, store, cells = _sweep_store(world)
    claim = {"host": "another-host/0000", "pid": 4242, "pid_start": None, "time": time.time(), "token": "f" * 32}
    (Path(store.path) / "claims" / f"{cells[0].key}.claim").write_text(json.dumps(claim))
    return path, store


def _mall(world: Path, **changes) -> list[str]:
    spec = {**MALL, **changes}
    return ["malleability", _spec(world, {k: v for k, v in spec.items() if v is not None}), "--out",
            str(world / "out"), "--no-progress"]


def _sweep(world: Path, **changes) -> list[str]:
    return ["sweep", _spec(world, {**SWEEP, **changes}), "--out", str(world / "out"), "--no-progress"]


def _pickle_bomb() -> bytes:
    class Bomb:  # numpy.ndarray((2**31,), uint8) through __reduce__: 2 GiB from ~100 bytes
        def __reduce__(self):
            return (np.ndarray, ((2**31,), np.dtype("u1")))

    return pickle.dumps(Bomb(), protocol=2)


def _setstate_bomb() -> bytes:
    class Bomb:  # the standard array pickle, with a state declaring a 2 GiB shape
        def __reduce__(self):
            return (np.ndarray, ((0,), np.dtype("u1")), (1, (2**31,), np.dtype("u1"), False, b"abc"))

    return pickle.dumps(Bomb(), protocol=2)


def _object_array() -> bytes:
    return pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2)


def _big_row() -> np.ndarray:
    x = X.copy()
    x[3] *= 1e200
    return x


def _strict_head_kernels():
    with guards.strict():
        return ka.head_kernels(_big_row())


def _hmac_edited(world: Path):
    store = ResultStore.open(world / "out" / "signed", hmac_key="k3y")
    key = cell_key({"x": 1})
    store.put(key, _record({"x": 1}))
    path = Path(store.path) / "records" / f"{key}.json"
    record = json.loads(path.read_text())
    record["metrics"]["rel_fro"] = 0.25  # an edit that recomputes the plain checksum
    from kernelattn.experiments.store import record_checksum

    record["checksum"] = record_checksum(record)
    path.write_text(json.dumps(record))
    return lambda: list(ResultStore.open(store.path, readonly=True, hmac_key="k3y").records())


def _missing_record(world: Path):
    store = ResultStore.open(world / "out" / "tiny", readonly=True)
    return lambda: store.get(cell_key({"x": 2}))


def _small_memory(mp: pytest.MonkeyPatch, world: Path) -> None:
    """A machine with 16 GiB free and no accelerator, whatever runs the tests."""
    mp.setattr("kernelattn.kernels.memory.budgets.available_memory", lambda **_: 16 * 2**30)
    mp.setattr("kernelattn.kernels.memory.budgets.device_free_memory", lambda device=None: None)


def _read_only_out(mp: pytest.MonkeyPatch, world: Path) -> None:
    real = os.makedirs

    def deny(path, *args, **kwargs):
        if str(path).startswith(str(world / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    mp.setattr(os, "makedirs", deny)


def _out_of_device_memory(mp: pytest.MonkeyPatch, world: Path) -> None:
    class JaxRuntimeError(RuntimeError):  # jax.errors.JaxRuntimeError; matched by name, as the CLI does
        pass

    def run_sweep(*args, **kwargs):  # the text jax 0.11 gives on an H100 (first line), then more lines
        raise JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.50GiB with allocator "
                              "GPU_0_bfc on device 0.\nBufferAssignment OOM Debugging.")

    mp.setattr("kernelattn.experiments.sweeps.run_sweep", run_sweep)


def _idx(dims: tuple[int, ...]) -> bytes:
    return b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _mnist_files(world: Path) -> list[str]:
    bad = world / "mnist"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (bad / name).write_bytes(b"\x1f\x8b not really gzip")
    return ["data", "info", "mnist", "--data-dir", str(bad)]


def _fifo_spec(world: Path) -> list[str]:
    os.mkfifo(world / "spec.json")
    return ["sweep", str(world / "spec.json"), "--out", str(world / "out")]


def _big_condition(report) -> bool:
    return math.isfinite(report.kappa_d) and abs(report.kappa_d - ka.condition_report(X).kappa_d) < 1e-9 * \
        report.kappa_d and math.isfinite(report.log10_m_theory)


NAME_RULE = r"name: expected a store directory name .*no path separators, no '\.\.', not absolute"

CATALOGUE = [
    # --- path escapes: a store name is one directory name, for every kind of spec
    Case("malleability name ../", lambda w: _mall(w, name="../escaped"), NAME_RULE),
    Case("malleability name absolute", lambda w: _mall(w, name=str(w / "abs")), NAME_RULE),
    Case("malleability name from a file stem", lambda w: ["malleability", _spec(
        w, {k: v for k, v in MALL.items() if k != "name"}, "my spec.json"), "--out", str(w / "out")], NAME_RULE),
    Case("sweep name ../", lambda w: _sweep(w, name="../escaped"), NAME_RULE),
    Case("reproduce spec name ../", lambda w: lambda: reproduce(
        specs=[{"name": "../escaped", "kind": "conditions", "datasets": [DIGITS]}], out=w / "out", progress=False,
        compile_cache=False), NAME_RULE),
    # --- the error contract: the whole family maps to one line and exit 2
    Case("store: not a store", lambda w: ["store", str(w)], r"no result store at .*kernelattn-store\.json"),
    Case("sweep: corrupt record", _corrupt_record, r"corrupt store file .*\.json: not valid JSON"),
    Case("figures: corrupt record", lambda w: _corrupt_record(w) and ["figures", str(w / "out")],
         r"corrupt store file .*\.json: not valid JSON"),
    Case("figures: no store", lambda w: ["figures", str(w / "nothing")], r"no result store found"),
    Case("sweep --out is a file", lambda w: (w / "file").write_text("x") and _sweep(w)[:3] + [str(w / "file")],
         r"(not a directory|is not writable|Not a directory)"),
    Case("sweep --out read-only", lambda w: _sweep(w)[:3] + [str(w / "ro")], r"is not writable",
         patch=_read_only_out),
    Case("data info: corrupt files", _mnist_files, r"(?i)sha-?256"),
    Case("sweep: out of device memory", lambda w: _sweep(w), r"out of device memory \(RESOURCE_EXHAUSTED: Out of "
         r"memory while trying to allocate 2\.50GiB with allocator GPU_0_bfc on device 0\.\)",
         patch=_out_of_device_memory),
    Case("store: problems found is exit 1", lambda w: _corrupt_record(w) and ["store", str(w / "out" / "tiny_sweep")],
         r"^corrupt: .*not valid JSON", code=1, stream="out"),
    Case("store --release-claims alone", lambda w: _store(w) and ["store", str(w / "out" / "tiny"),
                                                                  "--release-claims"],
         r"--release-claims: expected together with --repair"),
    # --- one strict parser: the malleability spec on the same validator as sweeps
    Case("retrain as a string", lambda w: _mall(w, retrain="false"), r"retrain: expected true or false, got 'false'"),
    Case("unknown key under kernel", lambda w: _mall(w, kernel={"sigma_ww": 1.0}),
         r"kernel\.sigma_ww: unknown key; did you mean 'sigma_w'\?"),
    Case("unknown readout", lambda w: _mall(w, kernel={"readout": "trainedd"}),
         r"kernel\.readout: expected one of \['fixed', 'trained'\], got 'trainedd'; did you mean 'trained'\?"),
    Case("unknown top-level key", lambda w: _mall(w, epsilonz=[0.1]), r"epsilonz: unknown key .*did you mean"),
    Case("duplicate JSON key", lambda w: ["malleability", _spec(w, json.dumps(MALL)[:-1] + ', "width": 16}'),
                                          "--out", str(w / "out")],
         r"spec\.json: invalid JSON: duplicate key 'width'"),
    Case("duplicate JSON key in a sweep spec", lambda w: ["sweep", _spec(w, json.dumps(SWEEP)[:-1] +
                                                                         ', "widths": [8]}'), "--out", str(w / "out")],
         r"duplicate key 'widths'"),
    Case("NaN in a spec", lambda w: ["malleability", _spec(w, json.dumps(MALL)[:-1] + ', "tau": NaN}'), "--out",
                                     str(w / "out")], r"NaN is not a JSON number"),
    Case("unknown key in a variant", lambda w: _mall(w, variants=[{"label": "a", "epsilonz": [0.1]}]),
         r"variants\[0\]\.epsilonz: unknown key of a variant; did you mean"),
    Case("bad value in a variant", lambda w: _mall(w, variants=[{"label": "a", "epsilons": ["big"]}]),
         r"variants\[0\]\.epsilons\[0\]: expected a number >= 0, got 'big'"),
    Case("unknown model option", lambda w: _mall(w, models=[{"name": "mlp-attn", "dept": 2}]),
         r"models\[0\]\.dept: unknown key for model 'mlp-attn'; did you mean 'depth'\?"),
    Case("unknown dataset option", lambda w: _mall(w, datasets=[{**DIGITS, "n_trian": 10}]),
         r"datasets\[0\]\.n_trian: unknown key .*did you mean 'n_train'\?"),
    Case("model without malleability support", lambda w: _mall(w, models=["qkv-attn"]),
         r"models\[0\]: expected one of \['relu', 'mlp-attn'\], got 'qkv-attn'"),
    Case("plural and singular", lambda w: _mall(w, attack="pgd"), r"attacks: give either 'attacks' or 'attack'"),
    Case("training value type", lambda w: _mall(w, training={"epochs": "5"}),
         r"training\.epochs: expected an integer >= 0, got '5'"),
    Case("null baselines as a string", lambda w: _mall(w, null_baselines="seed"), r"null_baselines: expected a list"),
    Case("wrong kind", lambda w: _mall(w, kind="kernel"), r"kind: expected 'malleability'"),
    Case("attack bounds reversed", lambda w: _mall(w, attack_config={"bounds": [1, 0]}),
         r"attack_config\.bounds: expected lo < hi"),
    # --- limits: widths, grids, memory (refused quickly, before any store exists)
    Case("width 2^24 plans memory", lambda w: _mall(w, width=2**24),
         r"datasets\[0\] \('digits'\), model relu, width 16777216: training the head .* refusing before allocating",
         patch=_small_memory),
    Case("width above 2^31 in a spec", lambda w: _mall(w, width=2**31 + 1),
         r"width: expected an integer >= 1 and <= 2147483648, got 2147483649"),
    Case("width above 2^31", lambda w: lambda: ka.HeadConfig(2**31 + 1), r"width: expected an integer <= 2147483648"),
    Case("streaming NTK of width 2^40", lambda w: lambda: ka.streaming_head_ntk(KEY, ka.HeadConfig(2**40), X),
         r"width: expected an integer <= 2147483648, got 1099511627776"),
    Case("4.2M-cell sweep grid", lambda w: _sweep(w, models=[{"name": "relu"}, {"name": "mlp-attn"}],
                                                  widths={"log2": [0, 20]}, seeds=100_000),
         r"the grid has 4,200,000 cells \(1 dataset\(s\) × 2 model\(s\) × 21 width\(s\) × 100000 seed\(s\)\), more "
         r"than the limit of 100,000"),
    Case("malleability grid above the limit", lambda w: _mall(w, seeds=100_000, epsilons=[0.1, 0.2]),
         r"the grid has 200,000 cells .*more than the limit of 100,000"),
    Case("cell limit lowered", lambda w: _mall(w) + ["--max-cells", "0"], r"max_cells: expected an integer >= 1"),
    Case("cell limit overridden", lambda w: _mall(w, epsilons=[0.1, 0.2, 0.3]) + ["--max-cells", "2"],
         r"the grid has 3 cells .*more than the limit of 2"),
    # --- no store until the spec and its data are validated
    Case("malleability rejected at data load", lambda w: _mall(w, datasets=[{**DIGITS, "classes": [3, 42]}]),
         r"datasets\[0\] \('digits 3-vs-42'\): .*classes"),
    Case("sweep rejected at data load", lambda w: _sweep(w, datasets=[{**DIGITS, "classes": [3, 42]}]),
         r"datasets\[0\] \('digits 3-vs-42'\): .*classes"),  # the spec's default label, in the display style
    Case("sweep rejected at data load, n_train too large", lambda w: _sweep(w, datasets=[{**DIGITS, "n_train": 10**6}]),
         r"datasets\[0\] \('digits'\): .*n_train"),
    # --- files that are not what they seem: never opened, never hang
    Case("spec path is a directory", lambda w: ["sweep", str(w)], r"is a directory; expected a JSON spec file"),
    Case("spec is not UTF-8", lambda w: ["sweep", _spec(w, "x") and (w / "spec.json").write_bytes(b'{"name": "\xff"}')
                                         and str(w / "spec.json")],
         r"spec\.json: is not UTF-8 text \(byte 0xff at offset 10\)"),
    Case("spec is a FIFO", _fifo_spec, r"spec\.json: is not a regular file"),
    Case("FIFO record: sweep", _fifo_record, r"a FIFO, not a regular file; kernelattn never opens it"),
    Case("FIFO record: store", lambda w: _fifo_record(w) and ["store", str(w / "out" / "tiny_sweep")],
         r"^corrupt: .*a FIFO, not a regular file", code=1, stream="out"),
    Case("foreign claim: sweep does not hang", lambda w: ["sweep", _foreign_claim(w)[0], "--out", str(w / "out"),
                                                          "--no-progress"],
         r"1 cell\(s\) not computed; 1 claimed by other processes \(e\.g\. foreign claim by host another-host/0000 "
         r"pid 4242.*--repair --release-claims", code=1),
    Case("foreign claim: store lists it", lambda w: ["store", _foreign_claim(w)[1].path],
         r"^claim: .*foreign claim by host another-host/0000 pid 4242", code=0, stream="out"),
    Case("IDX with a 0 dimension", lambda w: lambda: ka.data.mnist.parse_idx(_idx((0, 28, 28)), name="x-idx3"),
         r"x-idx3: IDX header dimensions \(0, 28, 28\) include a 0"),
    # --- the unpickler refuses arrays above the cap before allocating
    Case("pickle: ndarray constructor bomb", lambda w: lambda: ka.data.cifar10.safe_unpickle(_pickle_bomb(), name="b"),
         r"b: pickle declares an array of 2147483648 bytes .*refused before allocating"),
    Case("pickle: __setstate__ bomb", lambda w: lambda: ka.data.cifar10.safe_unpickle(_setstate_bomb(), name="b"),
         r"pickle declares an array of 2147483648 bytes"),
    Case("pickle: object array", lambda w: lambda: ka.data.cifar10.safe_unpickle(_object_array(), name="b"),
         r"dtype object \(Python objects\)"),
    # --- no silent NaN: finiteness and dynamic range, κ and m_theory never NaN
    Case("head_kernels 1e200 row", lambda w: lambda: ka.head_kernels(_big_row()),
         r"x1: expected row norms within .*got norm 1\.\d+e\+200 at row 3"),
    Case("head_kernels 1e200 row, guards.strict()", lambda w: _strict_head_kernels,
         r"x1: expected row norms within .*at row 3"),
    Case("streaming NTK 1e200 row", lambda w: lambda: ka.streaming_head_ntk(KEY, HEAD, _big_row(), dtype="float64"),
         r"x1: expected row norms within .*at row 3"),
    Case("gram 1e200 row", lambda w: lambda: ka.gram(_big_row()), r"x: expected row norms within .*at row 3"),
    Case("attention of a 1e200 row", lambda w: lambda: ka.linear_attention(_big_row()),
         r"train: expected row norms within .*‖x‖\^3.*at row 3"),
    Case("attention of a zero row", lambda w: lambda: ka.linear_attention(_zero_row()),
         r"train: expected rows of non-zero norm, got a zero row at index 2"),
    Case("malleability of a zero row", lambda w: lambda: ka.malleability(
        X=_zero_row(), y=np.array([0, 1] * 3), X_test=X_TEST, y_test=np.array([0, 1, 0]), width=8,
        train_config={"epochs": 1}), r"X: expected rows of non-zero norm, got 1 zero row\(s\) \(first at index 2\); "
                                    r"every model scales its input rows to unit norm"),
    Case("malleability of a 1e200 row", lambda w: lambda: ka.malleability(
        X=_big_row(), y=np.array([0, 1] * 3), X_test=X_TEST, y_test=np.array([0, 1, 0]), width=8,
        train_config={"epochs": 1}), r"X: expected row norms within .*at row 3"),
    Case("condition_report of X·1e200", lambda w: lambda: ka.condition_report(X * 1e200), "", check=_big_condition),
    Case("condition_report of one row", lambda w: lambda: ka.condition_report(X[:1]),
         r"x: expected at least 2 rows \(the width threshold m_theory"),
    Case("HeadConfig(8.0)", lambda w: lambda: ka.HeadConfig(8.0), r"width: expected an integer, got float 8\.0"),
    # --- tamper evidence and lookups
    Case("edited record under an HMAC key", _hmac_edited, r"HMAC mismatch: the record was changed"),
    Case("record not found is a KeyError", lambda w: _store(w).get and _missing_record(w),
         r"no record for key [0-9a-f]{64}", error=KeyError),
    Case("load_spec of a directory", lambda w: lambda: ka.load_spec(w), r"is a directory; expected a JSON spec file"),
]


def _run(case: Case, world: Path, capsys, monkeypatch) -> str | None:
    """Run one case; the description of what went wrong, or None."""
    target = case.setup(world)
    capsys.readouterr()
    before = _tree(world)

    def alarm(signum, frame):
        raise TimeoutError(f"no answer within {HANG_LIMIT_S:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_LIMIT_S)
    start = time.monotonic()
    try:
        with monkeypatch.context() as mp:
            mp.chdir(world)
            if case.patch is not None:
                case.patch(mp, world)
            if isinstance(target, list):
                code = cli.main(target)
                out, err = capsys.readouterr()
                text = out if case.stream == "out" else err
                if code != case.code:
                    return f"exit {code}, expected {case.code}: {err.strip() or out.strip()}"
                lines = [line for line in text.splitlines() if re.search(case.message, line)]
                if not lines:
                    return f"no line matches {case.message!r} in: {text!r}"
                if case.stream == "err" and len(err.strip().splitlines()) != 1:
                    return f"expected one line on stderr, got: {err!r}"
            else:
                try:
                    result = target()
                except case.error as error:
                    if not isinstance(error, KernelattnError):
                        return f"{type(error).__name__} is not a KernelattnError: {error}"
                    message = str(error)
                    if len(message.splitlines()) != 1 or not re.search(case.message, message):
                        return f"{type(error).__name__}: {message!r} does not match {case.message!r}"
                else:
                    if case.check is None or not case.check(result):
                        return f"no error, and the result is not the correct one: {result!r}"
    except Exception:  # anything outside the contract: a traceback
        return "traceback:\n" + traceback.format_exc(limit=-4)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if time.monotonic() - start > HANG_LIMIT_S:
        return f"took {time.monotonic() - start:.1f} s"
    after = _tree(world)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        return f"changed the files: {changed[:4]}"
    return None


def test_catalogue(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERNELATTN_STORE_KEY", raising=False)
    monkeypatch.delenv("KERNELATTN_MAX_CELLS", raising=False)
    ran, failures = 0, []
    for i, case in enumerate(CATALOGUE):
        world = tmp_path / f"case{i:02d}"
        (world / "cache").mkdir(parents=True)
        monkeypatch.setenv("KERNELATTN_DATA", str(world / "cache"))
        problem = _run(case, world, capsys, monkeypatch)
        ran += 1
        if problem is not None:
            failures.append(f"[{case.name}] {problem}")
    assert ran == len(CATALOGUE) >= 60
    assert not failures, f"{len(failures)} of {ran} cases failed:\n" + "\n".join(failures)


def test_catalogue_names_are_unique():
    names = [case.name for case in CATALOGUE]
    assert len(set(names)) == len(names)


#: ``raise`` of a built-in exception class the contract allows, by (module, class): the module protocol's
#: ``AttributeError`` (``kernelattn.__getattr__``) and an ``OSError`` the store raises and catches itself.
_BUILTIN_RAISES_ALLOWED = {("__init__.py", "AttributeError"), ("disk.py", "OSError")}


def test_every_deliberate_error_is_a_kernelattn_error():
    """No ``raise ValueError(...)`` and the like in the package: every error it raises on purpose is of the
    KernelattnError family (InputValueError is still a ValueError for callers that catch those)."""
    import ast
    import builtins

    root = Path(ka.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                builtin = getattr(builtins, name, None)
                if isinstance(builtin, type) and issubclass(builtin, BaseException) \
                        and (path.name, name) not in _BUILTIN_RAISES_ALLOWED:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: raise {name}(...)")
    assert not found, "raise a kernelattn.errors class instead:\n" + "\n".join(found)


def test_public_error_classes_form_one_family():
    from kernelattn.data import DatasetError
    from kernelattn.errors import DependencyError, InputTypeError, InputValueError
    from kernelattn.kernels.guards import KernelError
    from kernelattn.kernels.memory import MemoryPlanError
    from kernelattn.experiments.specs import SpecError, SpecFileNotFoundError
    from kernelattn.experiments.store import RecordNotFoundError, StoreNotFoundError
    from kernelattn.learning.training import UntrainedError

    for cls, builtin in ((InputValueError, ValueError), (InputTypeError, TypeError), (SpecError, ValueError),
                         (SpecFileNotFoundError, FileNotFoundError), (KernelError, ValueError),
                         (MemoryPlanError, MemoryError), (UntrainedError, ValueError), (DependencyError, ImportError),
                         (RecordNotFoundError, KeyError), (StoreNotFoundError, FileNotFoundError),
                         (StoreError, Exception), (DatasetError, Exception)):
        assert issubclass(cls, KernelattnError) and issubclass(cls, builtin), cls
    assert ka.KernelattnError is KernelattnError


def test_release_claims_clears_a_foreign_claim(tmp_path, capsys):
    path, store = _foreign_claim(tmp_path)
    claims = Path(store.path) / "claims"
    assert cli.main(["store", store.path, "--repair", "--release-claims"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^released: .*foreign claim by host another-host/0000 pid 4242", out, re.M), out
    assert list(claims.iterdir()) == []
    assert cli.main(["store", store.path]) == 0 and "0 claim(s) held" in capsys.readouterr().out


def test_a_live_local_claim_is_kept_by_release_claims(tmp_path):
    store = ResultStore.open(tmp_path / "s")
    key = cell_key({"x": 5})
    assert store.claim(key)
    assert ResultStore.open(tmp_path / "s").release_claims() == []
    assert [c.state for c in store.claims()] == ["live"]
