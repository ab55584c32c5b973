"""One bounded run on a GPU machine: accuracy, throughput against a measured roofline, reproduce --quick.

    python benchmarks/gpu.py [--out gpu.jsonl] [--budget-s 200] [--skip-reproduce]
    python benchmarks/gpu.py --smoke          # tiny sizes: runs on a CPU in about a minute

Prints one JSON object per line (and appends them to ``--out``), flushed as
soon as each is measured, so a run cut short still leaves its lines:

1. ``"versions"``: Python, jax/jaxlib/flax/optax/numpy/kernelattn, the
   device (kind, platform, count, memory), x64, the effective eps of float32
   at "fast" here (TF32's 2^-10 on a recent GPU).
2. ``"roofline"``: an N×N×N matmul (N = 8192) measured in this run: float32 at
   ``Precision.HIGHEST``, float32 at the device default ("fast": TF32),
   bfloat16 with float32 accumulation, and int8 with int32 accumulation.
3. ``"accuracy"``: relative Frobenius error against a float64 numpy reference
   (n = 500, d = 784, m = 4096, the fixed ±1 readout) of the structured head
   NTK (float and exact methods), the infinite-width NTK (closed form) and the
   linearized attention, each in float32 at "highest" and at "fast" and in
   float64; ``highest_within_1e-6`` says whether float32 at "highest" is
   within 1e-6 of float64.
4. ``"end_to_end"``: ``streaming_head_ntk`` at n = 10,000, d = 784, m = 2^20:
   the exact head NTK (``method="auto"``: int8 on a GPU, popcount on a CPU)
   against the float32 one at "highest" (``method="float"``), and their ratio.
5. ``"throughput"``: the structured / streaming float paths (at "highest" and
   "fast") and the streaming exact path at n ∈ {500, 2000, 10000},
   m ∈ {2^12, 2^16, 2^20} (d = 784), cheapest first, as seconds and
   float-equivalent TFLOP/s (2nmd + 2n²m + 2n²d) with the fraction of the
   roofline of their precision. A size is skipped — with a ``"skipped"``
   line saying why — when its predicted time does not fit the time left
   (``--budget-s``, keeping ~100 s for step 6) or its memory plan does not fit;
   ``--budget-s 600 --skip-reproduce`` gives the grid more room. Sizes
   already timed in step 4 are not timed again.
6. ``"reproduce"``: wall time of ``kernelattn reproduce --quick`` into a
   temporary directory, with a cold compilation cache (a fresh XDG_CACHE_HOME).

``--smoke`` shrinks every size (N = 128, n ≤ 48, m ≤ 2^8, d = 16) and
skips step 6 unless ``--reproduce`` is given; it is what the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # reproduce --quick runs beside this process

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE_RESERVE_S = 100.0  # measured 87 s on an H200 (jax 0.11.2), and some margin

FULL = {"roofline_n": 8192, "accuracy": (500, 784, 4096), "end_to_end": (10_000, 784, 2**20),
        "grid_n": (500, 2000, 10_000), "grid_log2_m": (12, 16, 20), "d": 784}
SMOKE = {"roofline_n": 128, "accuracy": (48, 16, 128), "end_to_end": (32, 16, 2**8),
         "grid_n": (32,), "grid_log2_m": (6, 8), "d": 16}


class Emitter:
    """Print JSON lines (and append them to a file), flushed one by one."""

    def __init__(self, path: str | None):
        self.path = path
        self.lines: list[dict] = []

    def __call__(self, kind: str, **fields) -> dict:
        line = {"kind": kind, **fields}
        text = json.dumps(line, default=str)
        print(text, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text + "\n")
        self.lines.append(line)
        return line


def timed(fn, repeats: int = 1) -> tuple[float, float]:
    """(seconds of the first call, compilation included; best of ``repeats`` timed calls after it)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first, best


# --------------------------------------------------------------------------- 1. versions


def versions(emit: Emitter) -> None:
    from kernelattn import __version__
    from kernelattn._precision import effective_eps
    from kernelattn.experiments.provenance import package_versions

    device = jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPUs and some backends have none
        pass
    emit("versions", python=platform.python_version(), packages={**package_versions(), "kernelattn": __version__},
         backend=jax.default_backend(), device_kind=device.device_kind, device_count=jax.device_count(),
         compute_capability=getattr(device, "compute_capability", None),
         bytes_limit=(stats or {}).get("bytes_limit"), x64=bool(jax.config.jax_enable_x64),
         float32_eps_fast=effective_eps("float32", "fast"), float32_eps_highest=effective_eps("float32", "highest"),
         host=platform.node(), cpus=os.cpu_count())


# --------------------------------------------------------------------------- 2. roofline


def roofline(emit: Emitter, n: int) -> dict:
    """TFLOP/s (TOPS for int8) of an n×n×n matmul per precision, measured now."""
    key = jax.random.PRNGKey(0)
    a32 = jax.random.normal(key, (n, n), jnp.float32)
    b32 = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
    a8, b8 = (jnp.sign(a32) * (jnp.abs(a32) > 0.5)).astype(jnp.int8), (b32 > 0).astype(jnp.int8)
    dims = (((1,), (0,)), ((), ()))
    cases = {
        "float32_highest": jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)),
        "float32_fast": jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.DEFAULT)),
        "bfloat16_f32acc": jax.jit(lambda a, b: jax.lax.dot_general(
            a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), dims, preferred_element_type=jnp.float32)),
        "int8_i32acc": jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.int32)),
    }
    rates = {}
    for name, fn in cases.items():
        args = (a8, b8) if name.startswith("int8") else (a32, b32)
        _, seconds = timed(lambda fn=fn, args=args: fn(*args), repeats=3)
        rates[name] = 2 * n**3 / seconds / 1e12
        emit("roofline", what=name, n=n, seconds=seconds, tflops=rates[name])
    return rates


# --------------------------------------------------------------------------- 3. accuracy


def _rel(a, b) -> float:
    a = np.asarray(a, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _arccos_ntk(x: np.ndarray) -> np.ndarray:
    """Infinite-width first-layer NTK of the head (σ's 1, σ_b 0, fixed readout), float64 numpy."""
    d = x.shape[1]
    sigma = x @ x.T / d
    diag = np.sqrt(np.diag(sigma))
    cosine = np.clip(sigma / np.outer(diag, diag), -1.0, 1.0)
    np.fill_diagonal(cosine, 1.0)
    return sigma * (np.pi - np.arccos(cosine)) / (2 * np.pi)


def accuracy(emit: Emitter, n: int, d: int, m: int) -> None:
    from kernelattn.kernels.analytic import head_kernels
    from kernelattn.kernels.empirical import structured_head_ntk
    from kernelattn.models import HeadConfig
    from kernelattn.transforms import linear_attention

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=(d, m))
    a = np.where(rng.random((m, 1)) < 0.5, 1.0, -1.0)
    head = HeadConfig(m)
    s = (x @ w > 0).astype(np.float64)
    references = {
        "head_ntk": (s @ s.T) * (x @ x.T / d) / m,
        "analytic_ntk": _arccos_ntk(x),
        "attention": None,
    }
    z = (x @ x.T) @ x
    references["attention"] = z / np.linalg.norm(z, axis=1, keepdims=True)
    params = {"W": w, "a": a}
    computations = {
        "head_ntk_float": lambda dtype, p: structured_head_ntk(params, head, x, dtype=dtype, method="float", precision=p),
        "head_ntk_exact": lambda dtype, p: structured_head_ntk(params, head, x, dtype=dtype, method="auto",
                                                               precision=p),  # int8 on a GPU, popcount on a CPU
        "analytic_ntk": lambda dtype, p: head_kernels(x, head=head, dtype=dtype, precision=p).ntk,
        "attention": lambda dtype, p: linear_attention(np.asarray(x, dtype), precision=p),
    }
    for name, compute in computations.items():
        reference = references["head_ntk" if name.startswith("head_ntk") else name]
        errors = {f"{dtype}_{p}": _rel(compute(dtype, p), reference)
                  for dtype, p in (("float32", "highest"), ("float32", "fast"), ("float64", "highest"))}
        emit("accuracy", what=name, n=n, d=d, m=m, rel_fro=errors,
             **{"highest_within_1e-6": errors["float32_highest"] <= 1e-6})


# --------------------------------------------------------------------------- 4./5. throughput


def _flops(n: int, d: int, m: int) -> float:
    """Float-equivalent work of one head NTK: X W (2nmd), S Sᵀ (2n²m), X Xᵀ (2n²d)."""
    return 2.0 * n * m * d + 2.0 * n * n * m + 2.0 * n * n * d


def _predicted(path: str, n: int, d: int, m: int, rates: dict) -> float:
    """Seconds one run should take at the roofline of its precision (a lower bound)."""
    highest, fast, int8 = (rates[k] * 1e12 for k in ("float32_highest", "float32_fast", "int8_i32acc"))
    if path.endswith("exact"):
        return (2.0 * n * m * d + 2.0 * n * n * d) / highest + 2.0 * n * n * m / int8
    return _flops(n, d, m) / (fast if path.endswith("fast") else highest)


def _fits_memory(n: int, d: int, m: int, structured: bool) -> bool:
    from kernelattn.kernels import memory
    from kernelattn.kernels.empirical import DEFAULT_WIDTH_CHUNK

    estimate = memory.head_ntk_memory(n, None, d, m, width_chunk=min(DEFAULT_WIDTH_CHUNK, m), params_given=structured)
    return memory.fits(estimate)


def head_ntk_run(path: str, n: int, d: int, m: int):
    """A zero-argument function computing one head NTK by ``path``."""
    from kernelattn.kernels.empirical import resolve_method, streaming_head_ntk, structured_head_ntk
    from kernelattn.models import HeadConfig

    head = HeadConfig(m)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, d), jnp.float32)
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    method = resolve_method("auto", head) if path.endswith("exact") else "float"  # int8 on a GPU, popcount on a CPU
    precision = "fast" if path.endswith("fast") else "highest"
    if path.startswith("structured"):
        params = {"W": jax.random.normal(jax.random.fold_in(key, 2), (d, m), jnp.float32),
                  "a": jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 3), 0.5, (m, 1)), 1.0, -1.0)}
        return lambda: structured_head_ntk(params, head, x, method=method, precision=precision)
    return lambda: streaming_head_ntk(key, head, x, method=method, precision=precision)


_MEASURED: dict = {}  # (path, n, d, m) → the fields of its line: a size is timed once per run


def measure_path(emit: Emitter, kind: str, path: str, n: int, d: int, m: int, rates: dict) -> float:
    key = (path, n, d, m)
    if key not in _MEASURED:
        first, seconds = timed(head_ntk_run(path, n, d, m), repeats=1)
        rate = "float32_fast" if path.endswith("fast") else "float32_highest"
        tflops = _flops(n, d, m) / seconds / 1e12
        from kernelattn.kernels.empirical import resolve_method
        from kernelattn.models import HeadConfig

        method = resolve_method("auto", HeadConfig(m)) if path.endswith("exact") else "float"
        _MEASURED[key] = dict(path=path, method=method, n=n, d=d, m=m, log2_m=int(math.log2(m)), seconds=seconds,
                              first_call_seconds=first, tflops_float_equivalent=tflops, roofline=rate,
                              fraction_of_roofline=tflops / rates[rate])
    emit(kind, **_MEASURED[key])
    return _MEASURED[key]["seconds"]


def end_to_end(emit: Emitter, n: int, d: int, m: int, rates: dict, deadline: float) -> None:
    seconds = {}
    for path in ("streaming_exact", "streaming_float_highest"):
        need = 3 * _predicted(path, n, d, m, rates) + 20
        if time.perf_counter() + need > deadline:
            emit("skipped", what="end_to_end", path=path, n=n, m=m, reason=f"predicted {need:.0f} s exceeds the time left")
            return
        seconds[path] = measure_path(emit, "end_to_end", path, n, d, m, rates)
    emit("end_to_end_ratio", n=n, d=d, m=m, exact_seconds=seconds["streaming_exact"],
         exact_method=_MEASURED[("streaming_exact", n, d, m)]["method"],
         float32_highest_seconds=seconds["streaming_float_highest"],
         speedup=seconds["streaming_float_highest"] / seconds["streaming_exact"])


GRID_PATHS = ("streaming_exact", "streaming_float_highest", "streaming_float_fast", "structured_float_highest")


def throughput(emit: Emitter, sizes: dict, rates: dict, deadline: float) -> None:
    d = sizes["d"]
    points = [(path, n, 2**k) for n in sizes["grid_n"] for k in sizes["grid_log2_m"] for path in GRID_PATHS]
    points.sort(key=lambda p: _predicted(p[0], p[1], d, p[2], rates))
    for path, n, m in points:
        need = 0 if (path, n, d, m) in _MEASURED else 2 * _predicted(path, n, d, m, rates) + 5  # + compilation
        if not _fits_memory(n, d, m, path.startswith("structured")):
            emit("skipped", what="throughput", path=path, n=n, m=m, reason="its memory plan does not fit this device")
        elif time.perf_counter() + need > deadline:
            emit("skipped", what="throughput", path=path, n=n, m=m,
                 reason=f"predicted ≥ {need:.0f} s does not fit the {max(deadline - time.perf_counter(), 0):.0f} s left")
        else:
            measure_path(emit, "throughput", path, n, d, m, rates)


# --------------------------------------------------------------------------- 6. reproduce --quick


def reproduce_quick(emit: Emitter, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="kernelattn-gpu-") as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache"), "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "kernelattn", "reproduce", "--quick", "--out", str(Path(tmp) / "results"),
                   "--no-progress"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            emit("reproduce", ok=False, wall_seconds=time.perf_counter() - start, reason=f"timed out after {timeout:.0f} s")
            return
        emit("reproduce", ok=proc.returncode == 0, wall_seconds=time.perf_counter() - start, precision="highest",
             compile_cache="cold", stderr_tail=proc.stderr[-600:] if proc.returncode else "")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--budget-s", type=float, default=200.0,
                        help="wall-time budget of the whole run (s); sizes that would not fit are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (runs on a CPU)")
    parser.add_argument("--skip-reproduce", action="store_true", help="do not time kernelattn reproduce --quick")
    parser.add_argument("--reproduce", action="store_true", help="time reproduce --quick even with --smoke")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget_s
    sizes = SMOKE if args.smoke else FULL
    run_reproduce = not args.skip_reproduce and (args.reproduce or not args.smoke)
    reserve = REPRODUCE_RESERVE_S if run_reproduce else 0.0
    emit = Emitter(args.out)
    versions(emit)
    rates = roofline(emit, sizes["roofline_n"])
    accuracy(emit, *sizes["accuracy"])
    end_to_end(emit, *sizes["end_to_end"], rates, deadline - reserve)
    throughput(emit, sizes, rates, deadline - reserve)
    if run_reproduce:
        reproduce_quick(emit, deadline - time.perf_counter())
    emit("done", wall_seconds=time.perf_counter() - start, budget_s=args.budget_s)
    return emit.lines


if __name__ == "__main__":
    main()
