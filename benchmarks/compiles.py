"""How many XLA compilations a reproduction tier triggers, and where the time goes.

    python benchmarks/compiles.py [--tier quick] [--only NAME ...] [--cache DIR] [--top 15]

Runs ``kernelattn.reproduce`` in this process with ``jax_log_compiles`` on and
counts JAX's "Finished XLA compilation of <fun> in <t> s" log records, grouped
by function. The persistent compilation cache goes to ``--cache`` (default: a
fresh temporary directory, i.e. a cold run; pass the same directory twice to
time a warm run). Prints the wall time, the number of compilations, the
seconds spent compiling and the functions compiled most often — the numbers
that issue "compile once per shape" is judged on.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINISHED = re.compile(r"Finished XLA compilation of (?P<fun>.+?) in (?P<seconds>[0-9.e+-]+) sec")


class CompileCounter(logging.Handler):
    """Collects (function, seconds) of every XLA compilation JAX logs."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.compiles: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = FINISHED.search(record.getMessage())
        if match:
            self.compiles.append((match["fun"].removeprefix("jit(").removesuffix(")"), float(match["seconds"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="quick")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--cache", default=None, help="persistent compile cache directory (default: fresh = cold)")
    parser.add_argument("--out", default=None, help="results directory (default: a temporary one)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)

    import jax

    from kernelattn.reproduce import reproduce

    counter = CompileCounter()
    for name in ("jax", "jax._src"):
        logging.getLogger(name).addHandler(counter)
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger("jax").propagate = False
    jax.config.update("jax_log_compiles", True)

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or os.path.join(tmp, "cache")
        out = args.out or os.path.join(tmp, "results")
        t0 = time.perf_counter()
        reproduce(args.tier, only=args.only, out=out, progress=False,
                                                   experiments=ROOT / "experiments", compile_cache=cache)
        wall = time.perf_counter() - t0

    by_fun = collections.Counter(fun for fun, _ in counter.compiles)
    seconds = collections.defaultdict(float)
    for fun, s in counter.compiles:
        seconds[fun] += s
    print(f"tier {args.tier} only={args.only or 'all'} jax {jax.__version__}  cache={'given' if args.cache else 'cold'}")
    print(f"wall {wall:.1f} s   XLA compilations {len(counter.compiles)}   compiling {sum(seconds.values()):.1f} s")
    print(f"{'count':>6} {'seconds':>8}  function")
    for fun, count in by_fun.most_common(args.top):
        print(f"{count:>6} {seconds[fun]:>8.2f}  {fun}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
