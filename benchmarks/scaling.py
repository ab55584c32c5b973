"""Width-sharded empirical NTK: speed-up from 1 to N devices, and what fits in memory.

1. Speed: ``sharded_streaming_head_ntk`` at n = 500, d = 784, m = 2^16 (float32,
   chunk 4096 → 16 chunks) on N = 1, 2, 4 forced host (CPU) devices, each N in
   its own subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
   (the flag only acts before JAX starts). The single-device
   ``streaming_head_ntk`` is timed in the N = 1 run as the baseline, and every run
   checks its kernel against it. Forced CPU devices share the machine's cores:
   with c cores no N can beat ~c× (and one XLA CPU device already uses every core
   for its matmuls), so the core count and load are printed beside the numbers.
2. Memory per device, from ``streaming_memory_model`` (the n² accumulators and the
   chunk buffers), next to the measured peak RSS of each run (forced devices all
   live in one process, so RSS ≈ runtime + N × per-device).
3. Capacity in a per-device budget (default 24 GB): the largest n and m, with and
   without sharding, from the same memory model.

``--one-thread-per-device`` gives each forced device a single thread so that
the device-level parallelism is measured on its own (1 device = 1 core).

Usage: python benchmarks/scaling.py [--quick] [--devices 1 2 4] [--budget-gb 24]
                                    [--one-thread-per-device]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process (Linux /proc; empty elsewhere)."""
    tick, out = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, {}
    try:
        names = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in names:
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def child(n: int, d: int, m: int, chunk: int, repeats: int) -> None:
    """Runs under the forced-device flag: times the kernel(s), prints one JSON line."""
    import resource

    import jax
    import numpy as np
    import psutil

    from kernelattn.kernels.distributed import sharded_streaming_head_ntk
    from kernelattn.kernels.empirical import streaming_head_ntk
    from kernelattn.models import HeadConfig

    x = np.random.default_rng(0).random((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head, key = HeadConfig(m), jax.random.PRNGKey(0)
    baseline_rss = psutil.Process().memory_info().rss

    def best(fn):
        """(wall s, process CPU s) of the fastest of ``repeats`` calls after a compiling call."""
        jax.block_until_ready(fn())
        times = []
        for _ in range(repeats):
            before = thread_cpu()
            start, cpu = time.perf_counter(), time.process_time()
            out = jax.block_until_ready(fn())
            times.append((time.perf_counter() - start, time.process_time() - cpu))
            after = thread_cpu()
        split = sorted((after[k] - before.get(k, 0.0) for k in after), reverse=True)
        return min(times), out, split

    (t_sharded, cpu_sharded), sharded, split = best(
        lambda: sharded_streaming_head_ntk(key, head, x, width_chunk=chunk))
    single = streaming_head_ntk(key, head, x, width_chunk=chunk)
    t_single = None
    if jax.device_count() == 1:
        t_single = best(lambda: streaming_head_ntk(key, head, x, width_chunk=chunk))[0][0]
    sharded, single = np.asarray(sharded, np.float64), np.asarray(single, np.float64)
    print(json.dumps({
        "devices": jax.device_count(),
        "sharded_s": t_sharded,
        "sharded_cpu_s": cpu_sharded,
        "thread_cpu_s": split[:8],
        "single_s": t_single,
        "max_rel_diff": float(np.max(np.abs(sharded - single)) / np.max(np.abs(single))),
        "baseline_rss_mb": baseline_rss / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jax": jax.__version__,
    }))


# One XLA CPU device normally runs its matmuls on every core (Eigen thread
# pool); these flags give each device one thread, so device-level parallelism
# is what gets measured.
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def run_child(devices: int, n: int, d: int, m: int, chunk: int, repeats: int, one_thread: bool) -> dict:
    env = dict(os.environ)
    flags = f"--xla_force_host_platform_device_count={devices}" + (" " + ONE_THREAD if one_thread else "")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    env["JAX_PLATFORMS"] = "cpu"
    args = [sys.executable, __file__, "--child", str(n), str(d), str(m), str(chunk), str(repeats)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"child with {devices} device(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def largest_n(budget: float, fits) -> int:
    """Largest n ≥ 0 with fits(n) (fits is monotone decreasing in n)."""
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def capacity(budget: float, d: int, chunk: int, device_counts, n_fixed: int) -> list[dict]:
    """Largest n and m per device budget under the memory model, per device count D."""
    from kernelattn.kernels.distributed import materialized_parameter_bytes, streaming_memory_model

    def stream(n, shards=1):
        return streaming_memory_model(n, d, width_chunk=chunk, sample_shards=shards)["total"]

    rows = []
    for count in device_counts:
        n_stream = largest_n(budget, lambda n: stream(n) <= budget)
        n_samples = largest_n(budget, lambda n, c=count: stream(n, c) <= budget)
        # Materialized parameters (structured path): W, b, a per device; the
        # chunked scan makes a padded/reshaped copy, hence ×2.
        per_unit = 2 * materialized_parameter_bytes(d, 1)

        def m_max(n, c=count):
            return max(0, int((budget - stream(n)) // per_unit)) * c

        n_half = 10_000
        rows.append({
            "D": count,
            "stream_n_max": n_stream,
            "stream_samples_n_max": n_samples,
            "materialized_m_max_at_n": m_max(n_fixed),
            "materialized_m_max_at_10k": m_max(n_half),
            "n_half": n_half,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="m = 2^13 (smoke run)")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--budget-gb", type=float, default=24.0, help="per-device memory budget (1 GB = 1e9 B)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one-thread-per-device", action="store_true",
                        help="one CPU thread per forced device (measures device parallelism alone)")
    parser.add_argument("--child", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    import jax

    from kernelattn.kernels.distributed import streaming_memory_model

    n, d, chunk = 500, 784, 4096
    m = 2**13 if args.quick else 2**16
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"sharded streaming empirical NTK, n={n}, d={d}, m={m} (2^{int(math.log2(m))}), chunk={chunk} "
          f"({-(-m // chunk)} chunks), float32, jax {jax.__version__}")
    print(f"machine: {cores()} usable CPU cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"(forced host devices share these cores: speed-up is capped near {cores()}x)")
    est = streaming_memory_model(n, d, width_chunk=chunk)
    print(f"memory model per device: accumulators {est['accumulator'] / 2**20:.1f} MiB, "
          f"chunk buffers {est['chunk'] / 2**20:.1f} MiB, inputs {est['inputs'] / 2**20:.1f} MiB, "
          f"total {est['total'] / 2**20:.1f} MiB (independent of m)")
    print()
    threads = "one thread per device" if args.one_thread_per_device else "XLA's default threading"
    print(f"({threads}; 'CPU s' = process CPU time of the timed call: the total work, whatever the load; "
          "'cores busy' = CPU s / wall s; last column: CPU s of the busiest threads in the last timed call — "
          "the work split over device threads, load-independent)")
    print(f"{'devices':>7} {'cores':>5} {'wall s':>8} {'speed-up':>9} {'vs 1-dev streaming':>18} {'CPU s':>7} "
          f"{'cores busy':>10} {'max rel diff':>12} {'est/device MiB':>14} {'peak RSS MiB':>12} {'RSS-start MiB':>13}  busiest threads CPU s")
    base = single = None
    for count in args.devices:
        r = run_child(count, n, d, m, chunk, args.repeats, args.one_thread_per_device)
        if base is None:
            base = r["sharded_s"]
        if r["single_s"] is not None:
            single = r["single_s"]
        vs_single = f"{single / r['sharded_s']:.2f}x" if single else "n/a"
        print(f"{r['devices']:>7} {cores():>5} {r['sharded_s']:>8.3f} {base / r['sharded_s']:>8.2f}x "
              f"{vs_single:>18} {r['sharded_cpu_s']:>7.2f} {r['sharded_cpu_s'] / r['sharded_s']:>10.2f} "
              f"{r['max_rel_diff']:>12.1e} {est['total'] / 2**20:>14.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] - r['baseline_rss_mb']:>13.0f}  "
              + " ".join(f"{v:.2f}" for v in r["thread_cpu_s"] if v >= 0.02))
    if single:
        print(f"(single-device streaming_head_ntk at N=1: {single:.3f} s)")
    flops = 2 * n * d * m + 2 * n * n * m
    print(f"work: {flops / 1e9:.0f} GFLOP per kernel; at N=1 {flops / base / 1e9:.1f} GFLOP/s")

    budget = args.budget_gb * 1e9
    print()
    print(f"capacity in {args.budget_gb:g} GB per device (memory model; runtime overhead not included), "
          f"d={d}, C=1, traced, float32, chunk={chunk}")
    print("  streamed parameters: memory does not depend on m — the width is unbounded in memory and "
          "limited only by time, O(n·m·(d + n))/D.")
    print("  width sharding speeds up but does NOT raise n: every device holds a full n×n accumulator;")
    print("  sample sharding (2-D mesh, rows of x1 over S devices) shrinks it to (n/S)×n.")
    print("  materialized parameters (W given, structured path): 2·(d+1+C)·m/D bytes·4 per device "
          "(W plus the chunked scan's copy) on top of the n² terms.")
    print(f"  {'D':>3} {'stream n_max':>12} {'+samples n_max':>14} {'stream m_max':>12} "
          f"{'materialized m_max @ n=' + str(n):>26} {'@ n=10000':>12}")
    for row in capacity(budget, d, chunk, sorted(set([1, *args.devices, 8])), n):
        print(f"  {row['D']:>3} {row['stream_n_max']:>12,} {row['stream_samples_n_max']:>14,} {'unbounded':>12} "
              f"{row['materialized_m_max_at_n']:>26,} {row['materialized_m_max_at_10k']:>12,}")


if __name__ == "__main__":
    main()
