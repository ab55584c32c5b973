"""Process resources a long run must watch: the memory mappings JAX's compiled programs hold.

Every program XLA compiles for the CPU is loaded into memory mappings of its own, and JAX keeps every
program it compiled for reuse. A tier that compiles thousands of them can reach the kernel's limit on
mappings per process (Linux ``vm.max_map_count``, 65,530 by default), and LLVM then aborts the process.
Dropping the programs costs recompilation, so it is done only when the process gets near the limit.
"""

from __future__ import annotations

from pathlib import Path

import jax

__all__ = ["MAP_FRACTION", "memory_maps", "release_compiled_programs_if_crowded"]

#: Fraction of the per-process mapping limit above which compiled programs are dropped.
MAP_FRACTION = 0.5


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
