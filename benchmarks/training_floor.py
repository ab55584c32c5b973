"""A reproduction tier's wall time beside the least time its network training can take on this machine.

    python benchmarks/training_floor.py [--tier quick] [--cache DIR] [--out DIR]

Runs ``kernelattn.reproduce`` in this process with a ``FitCache`` it keeps,
then reads every network the tier trained from that cache (each is trained
once per run) and counts the floating-point work of its training: the two
matmuls of each minibatch step, X_b W forward and X_bᵀ ∂H backward, 2·b·d·m
flops each, over every padded batch of every epoch; for PGD adversarial
training also the PGD steps on the whole training set, a forward and an input
gradient each. The readout, the attention and the optimizer are left out, so
the count is a lower bound.

It then measures the machine's matmul rate at the same shapes and dtype —
one loop of forward and backward products per CPU, run at once in threads,
as the tier trains its networks — and prints the training floor (work /
rate) beside the tier's wall time, in one run. The floor holds for any
implementation that trains the same networks to the same bits: only fewer
networks, fewer epochs or a cheaper dtype lower it. Never asserted in tests.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path


def training_flops(key: dict, d: int, m: int) -> float:
    """Matmul flops of training one network, from its ``FitCache`` key and its first layer ``(d, m)``."""
    n = key["dataset"]["n_train"]
    epochs, batch = key["training"]["epochs"], min(key["training"]["batch_size"], n)
    per_epoch = math.ceil(n / batch) * 4 * batch * d * m
    if key["training_mode"] == "pgd-at":
        per_epoch += key["attack_config"]["steps"] * 4 * n * d * m
    return float(epochs * per_epoch)


def matmul_rate(shape: tuple[int, int, int], dtype: str, threads: int, seconds: float = 1.0) -> float:
    """FLOP/s of the forward and backward products ``(b, d) @ (d, m)`` and ``(d, b) @ (b, m)`` of a
    ``shape = (b, d, m)`` step, ``threads`` loops at once, each a chain of dependent products."""
    import jax
    import jax.numpy as jnp

    def chain(x, w, steps):
        def body(_, w):
            h = jnp.matmul(x, w, precision="highest")
            return w - 1e-12 * jnp.matmul(x.T, h, precision="highest")

        return jax.lax.fori_loop(0, steps, body, w)

    run = jax.jit(chain, static_argnums=2)
    b, d, m = shape
    x, w = jnp.ones((b, d), dtype), jnp.ones((d, m), dtype)
    steps = 8
    while True:  # about ``seconds`` per loop
        jax.block_until_ready(run(x, w, steps))
        start = time.perf_counter()
        jax.block_until_ready(run(x, w, steps))
        if time.perf_counter() - start > seconds / 4 or steps > 1 << 20:
            break
        steps *= 4
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        for result in [pool.submit(run, x, w, steps) for _ in range(threads)]:
            jax.block_until_ready(result.result())
        elapsed = time.perf_counter() - start
    return threads * steps * 4 * b * d * m / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="quick")
    parser.add_argument("--cache", default=None, help="persistent compile cache directory (default: the user's)")
    parser.add_argument("--out", default=None, help="results directory (default: a temporary one)")
    args = parser.parse_args(argv)

    from kernelattn.experiments.malleability.runner import FitCache
    from kernelattn.reproduce import reproduce

    fits = FitCache(max_bytes=1 << 62)  # keep every network, to count them all
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp, "results"))
        start = time.perf_counter()
        reproduce(args.tier, out=out, progress=False, fits=fits, compile_cache=args.cache or True)
        wall = time.perf_counter() - start

    networks: collections.Counter[tuple] = collections.Counter()
    flops: collections.Counter[tuple] = collections.Counter()
    for key_json, fitted in fits.items():
        key = json.loads(key_json)
        w = fitted.variables["params"]["W"]
        batch = min(key["training"]["batch_size"], key["dataset"]["n_train"])
        kind = (key["training_mode"], batch, *w.shape, str(w.dtype))
        networks[kind] += 1
        flops[kind] += training_flops(key, *w.shape)
    threads = os.cpu_count() or 1
    rates = {kind[1:]: matmul_rate(kind[1:4], kind[4], threads) for kind in networks}
    print(
        f"tier {args.tier}: {len(fits)} networks trained; CPUs {threads}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"{'mode':8s} {'batch':>5s} {'d':>5s} {'m':>6s} {'dtype':8s} {'networks':>8s} {'TFLOP':>7s} "
        f"{'GFLOP/s':>8s} {'floor s':>8s}"
    )
    floor = 0.0
    for kind, count in sorted(networks.items(), key=lambda item: -flops[item[0]]):
        seconds = flops[kind] / rates[kind[1:]]
        floor += seconds
        mode, b, d, m, dtype = kind
        print(
            f"{mode:8s} {b:5d} {d:5d} {m:6d} {dtype:8s} {count:8d} {flops[kind] / 1e12:7.3f} "
            f"{rates[kind[1:]] / 1e9:8.1f} {seconds:8.1f}"
        )
    print(
        f"training matmuls {sum(flops.values()) / 1e12:.2f} TFLOP, at this machine's rate for each shape "
        f"({threads} loops at once): floor {floor:.1f} s"
    )
    print(f"reproduce --tier {args.tier}: {wall:.1f} s (floor / wall {floor / wall:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
