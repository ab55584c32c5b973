"""Memory planning (kernelattn.kernels.memory): estimates against measured peaks, planners, budgets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import psutil
import pytest

from kernelattn.kernels import memory as M
from kernelattn.kernels.memory import MemoryPlanError

ROOT = Path(__file__).resolve().parents[1]

# Two sizes, each dominated by a different term: the n1 × n2 accumulator, and a chunk's
# pre-activations and parameters (readout trained). ~100 MB each, measured one after the
# other in one process (peak reset in between); measured: 88 and 81 MB, estimates 112 and 132 MB.
MEASURED_SIZES = [
    {"n1": 3000, "d": 64, "width": 256, "chunk": 256, "dtype": "float32"},
    {"n1": 300, "n2": 200, "d": 128, "width": 16384, "chunk": 16384, "readout": True, "dtype": "float32"},
]


def estimate_for(size: dict) -> M.MemoryEstimate:
    return M.head_ntk_memory(size["n1"], size.get("n2"), size["d"], size["width"], width_chunk=size["chunk"],
                             train_readout=size.get("readout", False), dtype=size["dtype"])


def measure(sizes: list) -> list:
    """Peak-RSS increase of one streaming_head_ntk call per size, in a fresh process (benchmarks/memory_peak.py)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    script = ROOT / "benchmarks" / "memory_peak.py"
    proc = subprocess.run([sys.executable, str(script), json.dumps(sizes)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_estimates_match_measured_peak_rss_within_a_factor_of_two():
    results = measure(MEASURED_SIZES)
    for i, result in enumerate(results):
        if result["delta"] is None:  # the peak could not be reset: a fresh process per size
            results[i] = measure([MEASURED_SIZES[i]])[0]
    for size, result in zip(MEASURED_SIZES, results):
        estimate = estimate_for(size)
        ratio = estimate.total / result["delta"]
        assert 0.5 <= ratio <= 2.0, (size, estimate.describe(), result, ratio)


# --------------------------------------------------------------------------- estimators


def test_head_ntk_estimate_terms():
    base = M.head_ntk_memory(1000, None, 64, 10**6, width_chunk=1024)
    item = 4
    assert base.terms["Θ accumulator"] == 2 * 1000 * 1000 * item
    assert base.terms["pre-activations of a chunk"] == 2 * 1000 * 1024 * item
    assert base.total == sum(base.terms.values()) + M.RUNTIME_OVERHEAD
    # float64 doubles every term; the accumulator is quadratic in n; memory does not grow with the width.
    f64 = M.head_ntk_memory(1000, None, 64, 10**6, width_chunk=1024, dtype="float64")
    assert f64.total - M.RUNTIME_OVERHEAD == 2 * (base.total - M.RUNTIME_OVERHEAD)
    double_n = M.head_ntk_memory(2000, None, 64, 10**6, width_chunk=1024)
    assert double_n.terms["Θ accumulator"] == 4 * base.terms["Θ accumulator"]
    assert M.head_ntk_memory(1000, None, 64, 10**9, width_chunk=1024).total == base.total
    # The chunk is capped at the width; full output holds C² blocks; seeds multiply; shards divide rows.
    assert M.head_ntk_memory(1000, None, 64, 100, width_chunk=1024).terms["pre-activations of a chunk"] == \
        2 * 1000 * 100 * item
    full = M.head_ntk_memory(1000, None, 64, 10**6, width_chunk=1024, out_dim=10, trace_output=False)
    assert full.terms["Θ accumulator"] == 201 * 1000 * 1000 * item
    assert M.head_ntk_memory(1000, None, 64, 10**6, width_chunk=1024, seeds=3).terms["Θ accumulator"] == \
        3 * base.terms["Θ accumulator"]
    assert M.head_ntk_memory(1000, None, 64, 10**6, width_chunk=1024, sample_shards=4).terms["Θ accumulator"] == \
        2 * 250 * 1000 * item
    assert "Θ accumulator" in base.describe()
    given = M.head_ntk_memory(1000, None, 64, 1000, width_chunk=512, params_given=True)
    assert given.terms["parameters (given, and chunked copy)"] == (1000 + 1024) * (64 + 1) * item
    with pytest.raises(ValueError, match="dtype"):
        M.head_ntk_memory(10, None, 4, 8, width_chunk=8, dtype="float16")


def test_autodiff_and_attack_and_sweep_estimates():
    p = M.head_param_count(64, 2048, out_dim=3, train_readout=True)
    assert p == 64 * 2048 + 2048 * 3
    jac = M.autodiff_ntk_memory(100, None, n_params=p, out_dim=3, activations=2048)
    assert jac.terms["reverse-mode cotangents"] == 100 * 100 * 3 * 2048 * 4
    blocked = M.autodiff_ntk_memory(100, None, n_params=p, out_dim=3, activations=2048, row_block=10)
    assert blocked.terms["reverse-mode cotangents"] == 10 * 3 * 2048 * 4  # 10 rows, each through itself
    ntvp = M.autodiff_ntk_memory(100, 50, n_params=p, out_dim=3, activations=2048, implementation="ntvp")
    assert ntvp.total < jac.total
    model = M.attack_memory(1000, 784, width=4096, out_dim=10)
    kernel = M.attack_memory(1000, 784, width=4096, out_dim=10, target="kernel")
    assert "kernel, solve and their cotangents" in kernel.terms and kernel.total > model.total
    one = M.sweep_cell_memory(500, 200, 64, width_chunk=1024)
    four = M.sweep_cell_memory(500, 200, 64, width_chunk=1024, seeds=4)
    assert four.total > one.total and one.host > 10 * 500 * 500 * 8
    # The sweep's two quick checks: exact byte counts, no runtime overhead.
    assert M.sweep_group_memory(500, 200).total == 6 * 8 * 700 * 500
    assert M.seed_batch_memory(500, 200, width_chunk=64, seeds=3, dtype="float64").total == \
        3 * 8 * (3 * 700 * 500 + 4 * 700 * 64)


# --------------------------------------------------------------------------- planners


def test_plan_width_chunk_returns_the_largest_fitting_power_of_two():
    args = (2000, None, 784, 2**20)
    budget = 400 * 2**20
    chunk = M.plan_width_chunk(*args, dtype="float32", budget=budget)
    assert chunk & (chunk - 1) == 0  # a power of two
    assert M.head_ntk_memory(*args, width_chunk=chunk).total <= budget
    assert M.head_ntk_memory(*args, width_chunk=2 * chunk).total > budget
    # Capped by the width (one chunk for the whole layer) and by max_chunk.
    assert M.plan_width_chunk(100, None, 8, 1000, budget=2**40) == 1000
    assert M.plan_width_chunk(100, None, 8, 2**20, budget=2**40) == M.DEFAULT_MAX_CHUNK
    assert M.plan_width_chunk(100, None, 8, 2**20, budget=2**40, max_chunk=512) == 512
    # multiple_of: candidates are multiple_of · 2^k.
    assert M.plan_width_chunk(2000, None, 784, 2**20, budget=budget, multiple_of=256) % 256 == 0


def test_plan_width_chunk_refuses_when_even_chunk_one_does_not_fit():
    budget = 10 * 2**20
    with pytest.raises(MemoryPlanError) as info:
        M.plan_width_chunk(5000, None, 784, 4096, dtype="float64", budget=budget)
    error = info.value
    assert isinstance(error, MemoryError) and not isinstance(error, ValueError)
    message = str(error)
    assert "width_chunk=1" in message and "10.00 MiB" in message  # the budget
    assert format_total(error.estimate) in message  # the estimate
    for option in ("smaller n", "float32 instead of float64", "shard the rows over devices", "budget="):
        assert option in message, option
    assert error.budget == budget
    assert error.estimate.total > budget


def format_total(estimate) -> str:
    return M.format_bytes(estimate.total)


def test_plan_seed_batch():
    kwargs = dict(width_chunk=1024, dtype="float32")
    for seeds_fitting in (1, 3, 5):
        budget = M.sweep_cell_memory(800, 200, 64, seeds=seeds_fitting, **kwargs).total
        assert M.plan_seed_batch(800, 200, 64, seeds=5, budget=budget, **kwargs) == seeds_fitting
    assert M.plan_seed_batch(800, 200, 64, seeds=5, budget=2**40, **kwargs) == 5
    with pytest.raises(MemoryPlanError, match="fewer training/test points"):
        M.plan_seed_batch(800, 200, 64, seeds=5, budget=2**20, **kwargs)


def test_ensure_fits():
    est = M.head_ntk_memory(100, None, 8, 64, width_chunk=64)
    M.ensure_fits(est, budget=est.total)
    assert M.fits(est, est.total) and not M.fits(est, est.total - 1)
    with pytest.raises(MemoryPlanError, match="refusing before allocating") as info:
        M.ensure_fits(est, budget=est.total - 1)
    assert "budget=" not in str(info.value)  # offered only where a caller takes one
    with pytest.raises(MemoryPlanError, match=r"Options: first way out; .*budget= \(bytes\) to some_function"):
        M.ensure_fits(est, budget=est.total - 1, options=["first way out"], budget_of="some_function")
    M.ensure_fits(est)  # default budget: a fraction of what is free (a few MB surely are)


# ------------------------------------------------------------- public kernels take the budget they name


def _refusal(call) -> MemoryPlanError:
    with pytest.raises(MemoryPlanError) as info:
        call()
    return info.value


def test_kernel_functions_take_the_budget_their_refusal_names():
    """A refusal offers "a larger budget= to f" only for functions f that accept budget=."""
    import jax.numpy as jnp

    from kernelattn.kernels.empirical import empirical_ntk, streaming_head_ntk, structured_head_ntk
    from kernelattn.models import HeadConfig

    x = jnp.ones((6, 3))
    head = HeadConfig(8)
    variables = {"W": jnp.ones((3, 8)), "a": jnp.ones((8, 1))}
    params = {"W": jnp.ones((3, 2))}
    calls = {
        "empirical_ntk": lambda budget: empirical_ntk(lambda p, z: z @ p["W"], params, x, budget=budget),
        "structured_head_ntk": lambda budget: structured_head_ntk(variables, head, x, budget=budget),
        "streaming_head_ntk": lambda budget: streaming_head_ntk(jax.random.PRNGKey(0), head, x, budget=budget),
    }
    for name, call in calls.items():
        error = _refusal(lambda: call(1000))
        assert f"pass a larger budget= (bytes) to {name}" in str(error) and error.budget == 1000, name
        assert call(2**40).shape == (6, 6), name
    with pytest.raises(ValueError, match="budget: expected"):
        calls["empirical_ntk"](-1)


def test_a_refused_jacobian_ntk_names_the_factored_implementation_that_fits():
    import jax.numpy as jnp

    from kernelattn.kernels.empirical import empirical_ntk

    d, m, n = 32, 8192, 64
    params = {"W1": jnp.ones((d, m)) / d, "W2": jnp.ones((m, 1)) / m}

    def mlp(p, z):
        return jnp.tanh(z @ p["W1"]) @ p["W2"]

    x = jnp.ones((n, d))
    factored = _refusal(lambda: empirical_ntk(mlp, params, x, implementation="factored", budget=1)).estimate.total
    jacobian = _refusal(lambda: empirical_ntk(mlp, params, x, budget=1)).estimate.total
    assert factored < jacobian
    message = str(_refusal(lambda: empirical_ntk(mlp, params, x, budget=factored)))
    assert f"implementation='factored' (needs ≈{M.format_bytes(factored)} here, which fits;" in message
    assert message.index("implementation='factored'") < message.index("row_block=b")  # the first option
    assert "pass a larger budget= (bytes) to empirical_ntk" in message
    assert empirical_ntk(mlp, params, x, implementation="factored", budget=factored).shape == (n, n)
    tight = str(_refusal(lambda: empirical_ntk(mlp, params, x, budget=factored - 1)))
    assert f"implementation='factored' (needs ≈{M.format_bytes(factored)} here; for models" in tight


# --------------------------------------------------------------------------- budgets


def test_cgroup_v2_and_v1_limits(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1073741824\n")
    (v2 / "memory.current").write_text(str(600 * 2**20))
    (v2 / "memory.stat").write_text("anon 1\ninactive_file 104857600\n")
    assert M.cgroup_memory(v2) == {"limit": 2**30, "used": 500 * 2**20, "available": 524 * 2**20}
    (v2 / "memory.max").write_text("max\n")
    assert M.cgroup_memory(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(2**31))
    (v1 / "memory.usage_in_bytes").write_text(str(2**30))
    assert M.cgroup_memory(tmp_path / "v1")["available"] == 2**30
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "unlimited"
    assert M.cgroup_memory(tmp_path / "v1") is None
    # available_memory respects a cgroup limit below the machine's free memory.
    (v2 / "memory.max").write_text(str(2**30))
    assert M.available_memory(cgroup_root=v2) == min(psutil.virtual_memory().available, 524 * 2**20)


def test_available_memory_and_default_budget():
    free = M.available_memory()
    assert 0 < free <= psutil.virtual_memory().total
    budget = M.default_budget(0.5)
    if jax.default_backend() == "cpu":
        assert budget["device"] is None  # device arrays live in host memory
    else:
        assert budget["device"] > 0
    assert 0 < budget["host"] <= free and "50%" in budget["source"]
    with pytest.raises(ValueError, match="fraction"):
        M.default_budget(0.0)


# --------------------------------------------------------------------------- device memory (stub devices)


class StubDevice:
    """What the memory plan reads of a JAX device: ``platform``, ``device_kind`` and ``memory_stats()``."""

    def __init__(self, platform="gpu", stats=None):
        self.platform = platform
        self.device_kind = "Stub Accelerator"
        self._stats = stats

    def memory_stats(self):
        return self._stats


def test_an_accelerator_budget_comes_from_its_memory_stats():
    gpu = StubDevice(stats={"bytes_limit": 8 * 2**30, "bytes_in_use": 2 * 2**30})
    assert M.device_free_memory(gpu) == 6 * 2**30
    budget = M.default_budget(0.5, device=gpu)
    assert budget["memory"] == "device" and budget["device"] == 3 * 2**30
    assert "6.00 GiB free device memory (memory_stats of gpu device Stub Accelerator" in budget["source"]
    cpu = M.default_budget(0.5, device=StubDevice("cpu"))
    assert cpu["memory"] == "host" and cpu["device"] is None
    silent = M.default_budget(0.5, device=StubDevice(stats=None))  # an accelerator without memory_stats
    assert silent["memory"] == "host" and "reports no memory_stats, so host memory is used" in silent["source"]


def test_the_refusal_names_the_memory_it_compared_with(monkeypatch):
    est = M.head_ntk_memory(2000, None, 64, 4096, width_chunk=1024)  # ≈ 60 MB of device buffers
    small_gpu = StubDevice(stats={"bytes_limit": 2**24, "bytes_in_use": 0})
    with pytest.raises(MemoryPlanError, match=r"of device memory for its device buffers .*memory_stats") as info:
        M.ensure_fits(est, device=small_gpu)
    assert info.value.source == "device" and info.value.budget == 2**23
    big_gpu = StubDevice(stats={"bytes_limit": 2**40, "bytes_in_use": 0})
    M.ensure_fits(est, device=big_gpu)  # host RAM is not what limits device buffers
    monkeypatch.setattr(M.budgets, "available_memory", lambda **_: 2**20)
    with pytest.raises(MemoryPlanError, match="of host memory") as info:
        M.ensure_fits(est, device=StubDevice("cpu"))
    assert info.value.source == "host"
    with pytest.raises(MemoryPlanError) as info:
        M.ensure_fits(est, budget=10)
    assert info.value.source == "budget"


def test_kernels_plan_against_the_default_device(monkeypatch):
    import jax.numpy as jnp

    from kernelattn.kernels.empirical import structured_head_ntk
    from kernelattn.models import HeadConfig

    monkeypatch.setattr(M.budgets, "default_device", lambda: StubDevice(stats={"bytes_limit": 2**20, "bytes_in_use": 0}))
    with pytest.raises(MemoryPlanError, match="device memory") as info:
        structured_head_ntk({"W": jnp.ones((3, 8)), "a": jnp.ones((8, 1))}, HeadConfig(8), jnp.ones((6, 3)))
    assert info.value.source == "device"
