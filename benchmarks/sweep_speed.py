"""Wall time and peak memory of the quick kernel sweep and of one width-2^20 cell.

    python benchmarks/sweep_speed.py [--skip-big] [--keep DIR]

Each part runs in a fresh Python process (so that its peak RSS,
``resource.getrusage(...).ru_maxrss``, is its own and JAX compiles from
scratch, as a user's first run would) into a temporary result directory:

1. ``experiments/quick_width_sweep.json``: digits, n = 500 train / 100 test,
   2L-ReLU and MLP-Attn, widths 2^2 … 2^16, 5 seeds = 150 cells
   (target: ≤ 2 minutes on a 2-core CPU);
2. one cell of width 2^20 (MLP-Attn, same data; target: within 4 GB).

Reported per part: wall time (including interpreter start, imports, data
loading and compilation), CPU time (user + system, all threads), peak RSS.
The load average is printed too: on a shared machine wall time grows with
other processes' load while CPU time does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "quick_width_sweep.json"


def big_spec() -> dict:
    """One width-2^20 MLP-Attn cell on the quick sweep's data."""
    quick = json.loads(QUICK.read_text())
    return {
        "name": "big_width_cell",
        "kind": "kernel",
        "datasets": quick["datasets"],
        "models": [{"name": "mlp-attn"}],
        "widths": [2**20],
        "seeds": [0],
        "dtype": quick.get("dtype", "float32"),
        "ridge": quick.get("ridge", 1e-3),
        "kernel": quick.get("kernel", {}),
    }


def child(part: str, out: str) -> None:
    """Run one part in this process and print a JSON line with its figures."""
    start = time.perf_counter()
    from kernelattn.experiments.sweeps import format_summary, run_sweep

    spec = str(QUICK) if part == "quick" else big_spec()
    results = run_sweep(spec, out, progress=False)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = format_summary(results)
    print(report, file=sys.stderr)
    print(json.dumps({
        "part": part,
        "cells": int(results.n_computed),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,  # Linux: kilobytes
    }))


def run_part(part: str, out: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", part, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{part}: child failed with exit code {proc.returncode}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["process_wall_s"] = time.perf_counter() - started
    figures["report"] = proc.stderr
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-big", action="store_true", help="skip the width-2^20 cell")
    parser.add_argument("--keep", metavar="DIR", help="write the stores to DIR instead of a temporary directory")
    parser.add_argument("--child", choices=("quick", "big"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out)
        return
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="kernelattn-bench-") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp)
        parts = ["quick"] + ([] if args.skip_big else ["big"])
        for part in parts:
            figures = run_part(part, out)
            if part == "quick":
                print(figures["report"].rstrip())
            what = "quick sweep (150 cells)" if part == "quick" else "one width-2^20 cell"
            print(f"{what}: wall {figures['wall_s']:.1f} s in process ({figures['process_wall_s']:.1f} s with "
                  f"interpreter start), CPU {figures['cpu_s']:.1f} s, peak RSS {figures['peak_rss_mb']:.0f} MB, "
                  f"{figures['cells']} cells computed")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
