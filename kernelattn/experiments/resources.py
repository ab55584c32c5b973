"""Process resources a long run must watch: the memory mappings JAX's compiled programs hold, and the
threads of dense linear algebra.

Every program XLA compiles for the CPU is loaded into memory mappings of its own, and JAX keeps every
program it compiled for reuse. A tier that compiles thousands of them can reach the kernel's limit on
mappings per process (Linux ``vm.max_map_count``, 65,530 by default), and LLVM then aborts the process.
Dropping the programs costs recompilation, so it is done only when the process gets near the limit.

Beside XLA's own thread pool, a multi-threaded BLAS (numpy's and scipy's OpenBLAS) is many times slower
on small matrices than one thread: on the 2-core CPU with JAX loaded, a Cholesky factorization of a
200 × 200 matrix took 21 ms with 2 threads and 1.5 ms with one, 1000 × 1000 174 ms against 85 ms; from
n = 2000 on, threads pay. :func:`blas_single_thread` runs the small ones on one thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import jax
from threadpoolctl import threadpool_limits

__all__ = ["MAP_FRACTION", "SMALL_N_BLAS", "blas_single_thread", "memory_maps", "release_compiled_programs_if_crowded"]

#: Fraction of the per-process mapping limit above which compiled programs are dropped.
MAP_FRACTION = 0.5
#: Matrices of at most this order are factored single-threaded (:func:`blas_single_thread`).
SMALL_N_BLAS = 1000


@contextlib.contextmanager
def blas_single_thread(n: int) -> Iterator[None]:
    """Run numpy's and scipy's dense linear algebra on one thread while the matrices are ``n × n``
    with n ≤ :data:`SMALL_N_BLAS` (bitwise reproducible as well); larger ones keep their threads."""
    if n > SMALL_N_BLAS:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def memory_maps() -> tuple[int, int] | None:
    """``(mappings held, limit)`` of this process, or ``None`` where the system does not say (not Linux)."""
    try:
        held = Path("/proc/self/maps").read_text().count("\n")
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None
    return held, limit


def release_compiled_programs_if_crowded(fraction: float = MAP_FRACTION) -> bool:
    """Drop JAX's compiled programs (``jax.clear_caches``) when this process holds more than ``fraction``
    of its memory-mapping limit; whether it did. Programs are recompiled on their next use."""
    maps = memory_maps()
    if maps is None or maps[0] <= fraction * maps[1]:
        return False
    jax.clear_caches()
    return True
