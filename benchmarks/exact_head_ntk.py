"""The exact integer head NTK against the float32 structured one, side by side in one run.

    python benchmarks/exact_head_ntk.py [--n 2000] [--d 784] [--log2-m 16] [--chunk 4096] [--repeats 2]

Both compute Θ_W = (σ_a²/m) ((S diag a)(S diag a)ᵀ) ⊙ (σ_w² X Xᵀ/d) of one
two-layer head with the paper's fixed ±1 readout at given parameters
(``structured_head_ntk``), float32 inputs, X W and X Xᵀ at
``Precision.HIGHEST``; they differ in the n²m activation-pattern Gram S Sᵀ:

- ``float``: S Sᵀ as a float32 matmul per chunk of width (the structured path);
- ``popcount``: S bit-packed into 64-bit words, popcount(AND) Gram, exact
  int32 counts (``method="auto"`` on a CPU);
- ``int8``: S in int8 with int32 accumulation (``method="auto"`` on a GPU;
  shown here for reference).

Prints one line per method (best of ``--repeats`` runs after a warm-up
that compiles), then the ratios, and the relative Frobenius difference of
each to a float64 run of the float path (the exact paths differ from it by
the float32 rounding of X W and X Xᵀ only). Never asserted in tests: wall time
on a shared machine is noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kernelattn.kernels.empirical import structured_head_ntk  # noqa: E402
from kernelattn.models import HeadConfig  # noqa: E402

METHODS = ("float", "popcount", "int8")


def best_time(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--log2-m", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=4096, help="width_chunk (default: the library's)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n, d, m = args.n, args.d, 2**args.log2_m
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = HeadConfig(m)
    w = rng.normal(size=(d, m))
    a = np.where(rng.random((m, 1)) < 0.5, 1.0, -1.0)
    params32 = {"W": jnp.asarray(w, jnp.float32), "a": jnp.asarray(a, jnp.float32)}
    x32 = jnp.asarray(x, jnp.float32)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}); n = {n}, d = {d}, m = 2^{args.log2_m}, "
          f"width_chunk = {args.chunk}, float32, precision highest")
    reference = np.asarray(structured_head_ntk({"W": w, "a": a}, head, x, width_chunk=args.chunk, dtype="float64",
                                               method="float"))
    seconds, errors = {}, {}
    for method in METHODS:
        def run(method=method):
            return structured_head_ntk(params32, head, x32, width_chunk=args.chunk, method=method).block_until_ready()

        seconds[method] = best_time(run, args.repeats)
        errors[method] = float(np.linalg.norm(np.asarray(run(), np.float64) - reference) / np.linalg.norm(reference))
        print(f"  {method:<9} {seconds[method]:8.3f} s   rel. Frobenius difference to float64: {errors[method]:.2e}",
              flush=True)
    print(f"popcount / float speed-up: {seconds['float'] / seconds['popcount']:.2f}x   "
          f"int8 / float speed-up: {seconds['float'] / seconds['int8']:.2f}x")


if __name__ == "__main__":
    main()
