"""Issue 2 targets, measured side by side in one run (float32, this machine's CPU).

1. structured empirical NTK vs generic autodiff at n = 500, d = 784, m = 4096;
2. n = 500, m = 2^20 (streamed parameters) peak resident memory, in a fresh
   subprocess so that its own peak is measured;
3. the structured path's achieved GFLOP/s against a plain matmul.

Usage: python benchmarks/foundation.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def best_time(fn, repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (compilation) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def inputs(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def speed(n: int, d: int, m: int) -> dict:
    from kernelattn import empirical_ntk, head_variables, make_model, model_apply_fn, structured_head_ntk
    from kernelattn.models import head_config

    x = inputs(n, d)
    model = make_model("relu", m)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = model_apply_fn(model, variables)
    head, hv = head_config(model), head_variables(variables)
    t_structured = best_time(lambda: structured_head_ntk(hv, head, x))
    # Row blocks of 50 keep autodiff's intermediates small (the Jacobian itself is n·P floats).
    t_generic = {impl: best_time(lambda: empirical_ntk(apply_fn, params, x, implementation=impl, row_block=50), repeats=1)
                 for impl in ("jacobian", "ntvp")}
    structured = np.asarray(structured_head_ntk(hv, head, x))
    best_generic = min(t_generic.values()) if t_generic else float("nan")
    diff = float("nan")
    if t_generic:
        generic = np.asarray(empirical_ntk(apply_fn, params, x, row_block=50))
        diff = float(np.max(np.abs(structured - generic)) / np.max(np.abs(generic)))
    flops = 2 * n * d * m + 2 * n * n * m  # H = X W and (S a)(S a)ᵀ
    a = jnp.asarray(np.random.default_rng(1).random((2048, 2048), dtype=np.float32))
    t_matmul = best_time(lambda: a @ a)
    return {
        "n": n, "d": d, "m": m,
        "structured_s": t_structured,
        "generic_s": t_generic,
        "speedup_vs_best_generic": best_generic / t_structured,
        "max_rel_diff": diff,
        "structured_gflops": flops / t_structured / 1e9,
        "matmul_gflops": 2 * 2048**3 / t_matmul / 1e9,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    /proc's VmHWM belongs to the process image and restarts at exec; getrusage's
    ru_maxrss does not (Linux folds the parent's peak into a forked child's).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(n: int, d: int, m: int) -> None:
    from kernelattn import HeadConfig, streaming_head_ntk

    x = inputs(n, d)
    start = time.perf_counter()
    theta = jax.block_until_ready(streaming_head_ntk(jax.random.PRNGKey(0), HeadConfig(m), x))
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    print(json.dumps({"n": n, "d": d, "m": m, "seconds": seconds, "peak_rss_mb": peak_mb,
                      "finite": bool(np.all(np.isfinite(np.asarray(theta))))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    n, d, m = (100, 784, 512) if args.quick else (500, 784, 4096)
    result = speed(n, d, m)
    print(f"structured vs generic autodiff at n={n}, d={d}, m={m}, float32")
    print(f"  structured            {result['structured_s'] * 1e3:10.1f} ms")
    for impl, t in result["generic_s"].items():
        print(f"  generic ({impl:8s})   {t * 1e3:10.1f} ms   ratio {t / result['structured_s']:8.1f}x")
    print(f"  speed-up vs best generic: {result['speedup_vs_best_generic']:.1f}x (target >= 50x)")
    print(f"  max relative difference:  {result['max_rel_diff']:.2e}")
    print(f"  structured achieved {result['structured_gflops']:.1f} GFLOP/s; "
          f"plain 2048^3 matmul {result['matmul_gflops']:.1f} GFLOP/s "
          f"({100 * result['structured_gflops'] / result['matmul_gflops']:.0f}% of matmul)")
    big = (n, 784, 2**16 if args.quick else 2**20)
    out = subprocess.run([sys.executable, __file__, "--memory-child", *map(str, big)],
                         check=True, capture_output=True, text=True).stdout
    mem = json.loads(out.strip().splitlines()[-1])
    print(f"streamed n={mem['n']}, d={mem['d']}, m={mem['m']}: {mem['seconds']:.1f} s, "
          f"peak RSS {mem['peak_rss_mb']:.0f} MB (target < 2048 MB), finite={mem['finite']}")


if __name__ == "__main__":
    main()
