"""Drawing a results directory's figures: one by one in this process against worker processes, side by side.

    python benchmarks/figures.py [RESULTS] [--workers N] [--repeats 3]

RESULTS is a finished results directory (default ``results``; the quick tier
draws 16 figures, 32 files). The stores are read once; then every figure is
drawn and written as PNG and PDF (``kernelattn.viz.figures.save_figures``)
into a temporary directory, alternately with ``workers=1`` (in this process,
as ``kernelattn figures`` did before workers) and with ``--workers`` processes
(default: one per CPU, at most one per figure). Prints per mode the best and
median wall time over ``--repeats`` runs and the CPU seconds spent (this
process and its workers), their ratio, and whether the two wrote
byte-identical files.

Wall time on a shared machine says little (the load average is printed), so
it also prints what the measured CPU seconds give on an idle machine: each
figure's CPU time drawn here, a worker's start-up (its imports), and the
wall time of the same queue — this process at once, each worker after its
start-up, each taking the next figure when free — for 1 to 12 CPUs.
Never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernelattn.viz.figures import figure_jobs, save_figures
from kernelattn.viz.frames import load_frames
from kernelattn.viz.workers import default_workers


def cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have finished."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(jobs, directory: Path, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``save_figures``."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    save_figures(jobs, directory, workers=workers)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def worker_start() -> float:
    """CPU seconds a worker spends before its first figure: a fresh interpreter importing the figure modules."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import kernelattn.viz.figures"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def queue_time(costs: list[float], start: float, cpus: int) -> float:
    """Wall time of the drawing queue on ``cpus`` idle CPUs: this process free at once, ``cpus − 1``
    workers after ``start`` s, each taking the next figure (its CPU seconds in ``costs``) when free."""
    free = [0.0] + [start] * (min(cpus, len(costs)) - 1)
    for cost in costs:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += cost
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", help="a finished results directory")
    parser.add_argument("--workers", type=int, default=None, help="processes drawing (default: one per CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    frames = load_frames(args.results)
    jobs = figure_jobs(frames)
    print(f"{args.results}: {len(frames.stores)} stores, {len(jobs)} figures ({2 * len(jobs)} files); "
          f"stores read in {time.perf_counter() - start:.2f} s")
    workers = default_workers(len(jobs)) if args.workers is None else args.workers
    print(f"CPUs {os.cpu_count()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    times: dict[str, list[tuple[float, float]]] = {"serial": [], "workers": []}
    with tempfile.TemporaryDirectory() as tmp:
        serial_dir, pool_dir = Path(tmp, "serial"), Path(tmp, "workers")
        for repeat in range(args.repeats):  # alternate the order, so that neither always runs second
            order = [("serial", serial_dir, 1), ("workers", pool_dir, workers)]
            for name, directory, n in order if repeat % 2 == 0 else order[::-1]:
                times[name].append(run(jobs, directory, n))
        files = sorted(p.name for p in serial_dir.iterdir())
        same = sum((serial_dir / f).read_bytes() == (pool_dir / f).read_bytes() for f in files)
        costs = [run([job], Path(tmp, "each"), 1)[1] for job in jobs]
    start_cost = worker_start()
    for name, label in (("serial", "one by one, in this process"), ("workers", f"{workers} processes")):
        walls, cpus = [t[0] for t in times[name]], [t[1] for t in times[name]]
        print(f"{name:8s} ({label}): wall best {min(walls):.2f} s, median {statistics.median(walls):.2f} s; "
              f"CPU median {statistics.median(cpus):.2f} s")
    best = {name: min(t[0] for t in runs) for name, runs in times.items()}
    print(f"ratio serial / workers (best wall): {best['serial'] / best['workers']:.2f}×")
    print(f"byte-identical files: {same} of {len(files)}")
    print(f"CPU seconds drawing each figure here: {sum(costs):.2f} in all (largest {max(costs):.2f}); "
          f"a worker's start-up: {start_cost:.2f}")
    print("wall time on idle CPUs: " + ", ".join(f"{n} → {queue_time(costs, start_cost, n):.2f} s"
                                                 for n in (1, 2, 3, 4, 8, 12)))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
