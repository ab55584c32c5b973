"""Sharded empirical NTK (kernelattn.kernels.distributed) against the single-device paths.

Several devices need XLA's ``--xla_force_host_platform_device_count`` flag,
which only takes effect before JAX initializes; this process has initialized
JAX already, so the multi-device checks run once, in a subprocess (this file
run as a script with the flag and ``JAX_PLATFORMS=cpu``), which reports
relative errors as JSON; the tests below assert on them case by case.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernelattn.kernels import distributed
from kernelattn.kernels.distributed import (
    device_memory,
    device_mesh,
    initialize_distributed,
    local_device_count,
    materialized_parameter_bytes,
    sharded_streaming_head_ntk,
    sharded_structured_head_ntk,
    streaming_memory_model,
)
from kernelattn.kernels.empirical import streaming_head_ntk, structured_head_ntk
from kernelattn.models import HeadConfig

N_DEVICES = 4
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
HEADS = {
    "fixed-readout": dict(sigma_w=1.3, sigma_a=0.8),
    "bias+trained-readout": dict(sigma_w=1.1, sigma_b=0.4, sigma_a=0.9, train_readout=True),
}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# A covering design rather than the full product (each case costs two XLA
# compilations): per path and dtype every (trace, C) pair, both heads in both
# trace modes, x2 given or not, sample sharding on and off, and the
# fewer-chunks-than-devices width. Width 37 with chunk 5 is divisible by neither
# the 4 devices nor the chunk (8 chunks, 2 per device, the last partly dead);
# width 3 < 4 devices (one chunk: three devices draw only dead units).
#          path          dtype      head  C  trace  width chunk  x2    samples
_DESIGN = [("streaming", "float64", "F", 1, True, 37, 5, False, False),
           ("streaming", "float64", "B", 3, False, 37, 5, True, True),
           ("streaming", "float64", "B", 3, True, 37, 5, False, True),
           ("streaming", "float64", "F", 1, False, 37, 5, True, False),
           ("streaming", "float64", "B", 1, True, 3, 4, True, False),
           ("streaming", "float64", "F", 3, False, 3, 4, False, True),
           ("structured", "float64", "F", 1, True, 37, 5, True, False),
           ("structured", "float64", "B", 3, False, 37, 5, False, True),
           ("structured", "float64", "B", 3, True, 37, 5, True, True),
           ("structured", "float64", "F", 1, False, 3, 4, False, False),
           ("streaming", "float32", "B", 3, True, 37, 5, False, False),
           ("streaming", "float32", "F", 1, False, 37, 5, True, True),
           ("structured", "float32", "B", 1, True, 37, 5, True, False),
           ("structured", "float32", "F", 3, False, 37, 5, False, True)]
_HEAD_KEYS = {"F": "fixed-readout", "B": "bias+trained-readout"}


def _cases():
    """(name, settings) of every multi-device comparison."""
    cases = []
    for path, dtype, head, out_dim, trace, width, chunk, cross, samples in _DESIGN:
        name = (f"{path}-{dtype}-{_HEAD_KEYS[head]}-C{out_dim}-{'trace' if trace else 'full'}"
                f"-m{width}c{chunk}{'-x2' if cross else ''}{'-samples' if samples else ''}")
        cases.append((name, dict(path=path, dtype=dtype, head=_HEAD_KEYS[head], out_dim=out_dim, trace=trace,
                                 width=width, chunk=chunk, cross=cross, samples=samples)))
    return cases


CASES = _cases()


def _child(part: int, parts: int) -> None:
    """Runs with 4 forced host devices: relative errors of cases part, part + parts, …, as JSON."""
    jax.config.update("jax_enable_x64", True)
    from kernelattn.kernels.empirical import draw_head_units

    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(7, 6))  # 7 rows: not divisible by the 2 sample shards
    x2 = rng.normal(size=(5, 6))
    key = jax.random.PRNGKey(11)
    errors = {}
    for name, c in CASES[part::parts]:
        head = HeadConfig(c["width"], c["out_dim"], **HEADS[c["head"]])
        other = x2 if c["cross"] else None
        kw = dict(trace_output=c["trace"], dtype=c["dtype"])
        if c["path"] == "streaming":
            ref = streaming_head_ntk(key, head, x1, other, width_chunk=c["chunk"], **kw)
            out = sharded_streaming_head_ntk(key, head, x1, other, width_chunk=c["chunk"],
                                             shard_samples=c["samples"], **kw)
        else:
            w, b, a = draw_head_units(key, 0, x1.shape[1], head.width, head.width, head, jnp.float64)
            variables = {"W": np.asarray(w), "a": np.asarray(a)} | ({"b": np.asarray(b)} if head.use_bias else {})
            ref = structured_head_ntk(variables, head, x1, other, width_chunk=c["chunk"], **kw)
            out = sharded_structured_head_ntk(variables, head, x1, other, width_chunk=2,
                                              shard_samples=c["samples"], **kw)
        errors[name] = {"rel": _rel(out, ref), "shape_ok": out.shape == ref.shape,
                        "dtype_ok": out.dtype == ref.dtype}

    placement = {}
    if part == 0:
        placement = _placement(key, rng)
    print(json.dumps({"errors": errors, "placement": placement, "jax": jax.__version__}))


def _placement(key, rng) -> dict:
    # Placement: 8 rows split over 2 sample shards stay row-sharded, 4 rows per device.
    x8 = rng.normal(size=(8, 6))
    mesh = device_mesh(sample_shards=2)
    rows = sharded_streaming_head_ntk(key, HeadConfig(37), x8, mesh=mesh, width_chunk=5, dtype="float64",
                                      shard_samples=True)
    return {
        "devices": jax.local_device_count(),
        "width_mesh": dict(device_mesh().shape),
        "sample_mesh": dict(mesh.shape),
        "row_shards": sorted({tuple(s.data.shape) for s in rows.addressable_shards}),
        "row_rel": _rel(rows, streaming_head_ntk(key, HeadConfig(37), x8, width_chunk=5, dtype="float64")),
    }


@functools.lru_cache(maxsize=1)
def _child_report(parts: int = 2) -> dict:
    """Run the cases in ``parts`` concurrent subprocesses (compilation dominates; one core each)."""
    env = dict(os.environ)
    # LLVM optimization off: these programs are tiny and compiling them is ~all
    # of the cost; the sharding logic under test is the same at any level.
    flags = f"--xla_force_host_platform_device_count={N_DEVICES} --xla_backend_optimization_level=0"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    env["JAX_PLATFORMS"] = "cpu"  # the flag forces host (CPU) devices only
    children = [subprocess.Popen([sys.executable, __file__, str(part), str(parts)], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for part in range(parts)]
    merged = {"errors": {}, "placement": {}}
    for child in children:
        out, err = child.communicate(timeout=600)
        if child.returncode:
            raise RuntimeError(f"multi-device subprocess failed:\n{err[-4000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        merged["errors"].update(result["errors"])
        merged["placement"].update(result["placement"])
    return merged


@pytest.fixture(scope="module")
def report():
    return _child_report()


def test_subprocess_sees_forced_devices(report):
    placement = report["placement"]
    assert placement["devices"] == N_DEVICES
    assert placement["width_mesh"] == {"width": N_DEVICES}
    assert placement["sample_mesh"] == {"samples": 2, "width": 2}


@pytest.mark.parametrize("name,case", CASES, ids=[name for name, _ in CASES])
def test_sharded_equals_single_device(report, name, case):
    result = report["errors"][name]
    assert result["shape_ok"] and result["dtype_ok"]
    assert result["rel"] < TOLERANCE[case["dtype"]], f"{name}: relative error {result['rel']:.3e}"


def test_sample_sharded_output_stays_row_sharded(report):
    placement = report["placement"]
    assert placement["row_shards"] == [[4, 8]]
    assert placement["row_rel"] < 1e-12


# ------------------------------------------------------------- in-process (1 device)


def test_one_device_mesh_matches_streaming(rng):
    # A typed key (jax.random.key) and the full C x C output; the multi-device
    # subprocess covers raw keys and the traced output.
    x = rng.normal(size=(6, 4))
    head = HeadConfig(21, 2, sigma_b=0.2)
    key = jax.random.key(5)
    ref = streaming_head_ntk(key, head, x, width_chunk=4, trace_output=False, dtype="float64")
    out = sharded_streaming_head_ntk(key, head, x, width_chunk=4, trace_output=False, dtype="float64",
                                     mesh=device_mesh(jax.local_devices()[:1]))
    assert out.shape == (6, 6, 2, 2)
    assert _rel(out, ref) < 1e-13


def test_mesh_and_argument_errors(rng):
    x = rng.normal(size=(4, 3))
    head = HeadConfig(8)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="devices: expected at least one device"):
        device_mesh([])
    with pytest.raises(ValueError, match="sample_shards: expected an integer <= 1"):
        device_mesh(jax.local_devices()[:1], sample_shards=2)
    with pytest.raises(ValueError, match="needs a 2-D mesh"):
        sharded_streaming_head_ntk(key, head, x, mesh=device_mesh(), shard_samples=True)
    with pytest.raises(ValueError, match="expected a 1-D mesh"):
        sharded_streaming_head_ntk(key, head, x, mesh=device_mesh(sample_shards=1))
    with pytest.raises(TypeError, match="mesh: expected a jax.sharding.Mesh"):
        sharded_streaming_head_ntk(key, head, x, mesh="cpu")
    with pytest.raises(TypeError, match="head: expected a HeadConfig"):
        sharded_streaming_head_ntk(key, {"width": 8}, x)
    with pytest.raises(ValueError, match="width_chunk: expected an integer >= 1"):
        sharded_streaming_head_ntk(key, head, x, width_chunk=0)
    with pytest.raises(ValueError, match=r"head_variables\['W'\]: expected shape \(3, 8\)"):
        sharded_structured_head_ntk({"W": np.zeros((3, 9)), "a": np.ones((8, 1))}, head, x)
    with pytest.raises(ValueError, match="head_variables: expected key 'b'"):
        sharded_structured_head_ntk({"W": np.zeros((3, 8)), "a": np.ones((8, 1))}, HeadConfig(8, sigma_b=1.0), x)


def test_memory_model():
    est = streaming_memory_model(500, 784, width_chunk=4096)
    assert est["accumulator"] == 4 * 500 * 500 * 4
    assert est["total"] == est["accumulator"] + est["chunk"] + est["inputs"]
    halved = streaming_memory_model(500, 784, width_chunk=4096, sample_shards=2)
    assert halved["accumulator"] == est["accumulator"] // 2
    full = streaming_memory_model(500, 784, out_dim=3, trace_output=False, dtype="float64")
    assert full["accumulator"] == (1 + 3 * 9) * 500 * 500 * 8
    assert materialized_parameter_bytes(784, 2**16) == 785 * 2**16 * 4
    assert materialized_parameter_bytes(784, 10, width_shards=4, use_bias=True) == 786 * 3 * 4
    with pytest.raises(ValueError, match="dtype: expected one of"):
        streaming_memory_model(10, 3, dtype="int32")


def test_device_reporting():
    assert local_device_count() == len(jax.local_devices())
    rows = device_memory()
    assert len(rows) == local_device_count()
    assert {"id", "platform", "bytes_in_use", "peak_bytes_in_use", "bytes_limit"} <= set(rows[0])


_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
                 "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def test_initialize_distributed_is_a_noop_single_process(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for name in _CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    assert initialize_distributed() is False
    assert initialize_distributed(num_processes=1) is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert initialize_distributed(coordinator_address="localhost:1234") is False
    assert calls == []


def test_initialize_distributed_reads_the_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed, "_DISTRIBUTED_STARTED", False)
    for name in _CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    assert initialize_distributed() is True
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}]
    assert initialize_distributed() is False  # once per process
    assert len(calls) == 1


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
