"""Planners: the largest width chunk, or seed batch, whose estimate fits the budget.

:func:`plan_width_chunk` searches the power-of-two chunks of the streamed head
NTK (:func:`~kernelattn.kernels.memory.estimators.head_ntk_memory`);
:func:`plan_seed_batch` the number of seeds a kernel-sweep cell can vmap at
once (:func:`~kernelattn.kernels.memory.estimators.sweep_cell_memory`). Both
raise :class:`~kernelattn.kernels.memory.budgets.MemoryPlanError` when not
even the smallest plan fits.
"""

from __future__ import annotations

from kernelattn._validation import check_int, check_real
from kernelattn.kernels.memory.budgets import (
    DEFAULT_FRACTION,
    Budget,
    MemoryEstimate,
    MemoryPlanError,
    budget_verdict,
    default_budget,
    format_bytes,
    refusal_message,
)
from kernelattn.kernels.memory.estimators import head_ntk_memory, sweep_cell_memory

__all__ = ["DEFAULT_MAX_CHUNK", "plan_seed_batch", "plan_width_chunk"]

#: Largest width chunk ``plan_width_chunk`` proposes by default: beyond ~2^16
#: units per step the matmuls are long saturated and only the footprint grows.
DEFAULT_MAX_CHUNK = 2**16


def _candidates(width: int, multiple_of: int, max_chunk: int) -> list[int]:
    top = min(max_chunk, 1 << max(width - 1, 0).bit_length())  # next power of two ≥ width, capped
    out, c = [], multiple_of
    while c <= max(top, multiple_of):
        out.append(c)
        c *= 2
    return out


def plan_width_chunk(
    n1: int,
    n2: int | None,
    d: int,
    width: int,
    *,
    dtype="float32",
    budget: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    out_dim: int = 1,
    trace_output: bool = True,
    train_readout: bool = False,
    use_bias: bool = False,
    seeds: int = 1,
    sample_shards: int = 1,
    multiple_of: int = 1,
    max_chunk: int = DEFAULT_MAX_CHUNK,
) -> int:
    """The largest power-of-two width chunk whose :func:`head_ntk_memory` fits the budget.

    Candidates are ``multiple_of · 2^k`` up to the power of two covering
    ``width`` (and at most ``max_chunk``); the answer is capped at ``width``
    (one chunk then holds the whole layer). Note that ``streaming_head_ntk``
    draws its parameters per chunk, so there the chunk selects *which*
    network is drawn: plan it once and record it, or keep a fixed chunk and
    call :func:`ensure_fits` on it instead.

    Args:
      n1, n2, d, width: as in :func:`head_ntk_memory`.
      dtype: compute dtype.
      budget: bytes; None → ``fraction`` of the free memory.
      fraction: share of the free memory used when ``budget`` is None.
      out_dim, trace_output, train_readout, use_bias, seeds, sample_shards:
        as in :func:`head_ntk_memory`.
      multiple_of: the chunk must be a multiple of this (e.g. a PRNG block).
      max_chunk: largest chunk proposed (default 2^16).

    Returns:
      The chunk: ``width`` itself when one chunk fits (and is a multiple of
      ``multiple_of``), else a power-of-two multiple of ``multiple_of``.

    Raises:
      MemoryPlanError: not even the smallest chunk fits, with the estimate,
        the budget and the options.
    """
    width = check_int(width, "width", minimum=1)
    multiple_of = check_int(multiple_of, "multiple_of", minimum=1)
    max_chunk = check_int(max_chunk, "max_chunk", minimum=multiple_of)
    kwargs = {
        "out_dim": out_dim,
        "trace_output": trace_output,
        "train_readout": train_readout,
        "use_bias": use_bias,
        "seeds": seeds,
        "sample_shards": sample_shards,
        "dtype": dtype,
    }
    if budget is not None:
        limit = int(check_real(budget, "budget", minimum=0.0))
        plan: Budget = {"host": limit, "device": None, "source": "explicit", "memory": "host"}
    else:
        plan = default_budget(fraction)

    def fits(est: MemoryEstimate) -> bool:
        if plan["device"] is None:
            return est.total <= plan["host"]
        return est.device <= plan["device"] and est.host <= plan["host"]

    candidates = _candidates(width, multiple_of, max_chunk)
    best = None
    for chunk in candidates:
        if fits(head_ntk_memory(n1, n2, d, width, width_chunk=chunk, **kwargs)):
            best = chunk
        else:
            break  # the estimate grows with the chunk
    if best is None:
        smallest = head_ntk_memory(n1, n2, d, width, width_chunk=candidates[0], **kwargs)
        where = (
            f"the budget of {format_bytes(plan['host'])}"
            if plan["source"] == "explicit"
            else f"{format_bytes(plan['device'] if plan['device'] is not None else plan['host'])} ({plan['source']})"
        )
        raise MemoryPlanError(
            refusal_message(smallest, where + f" even with width_chunk={candidates[0]}", budget_of="plan_width_chunk"),
            smallest,
            plan["device"] if plan["device"] is not None else plan["host"],
            "budget" if plan["source"] == "explicit" else plan["memory"],
        )
    if best > width and width % multiple_of == 0:
        return width  # one chunk holds the whole layer
    return best


def plan_seed_batch(
    n: int,
    n_test: int,
    d: int,
    *,
    seeds: int,
    width_chunk: int,
    dtype="float32",
    budget: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    out_dim: int = 1,
    train_readout: bool = False,
    use_bias: bool = False,
) -> int:
    """How many seeds of a kernel-sweep cell can be vmapped at once (:func:`sweep_cell_memory`).

    Args:
      n, n_test, d, width_chunk, out_dim, train_readout, use_bias, dtype: as in
        :func:`sweep_cell_memory`.
      seeds: seeds to run (the answer is at most this).
      budget: bytes; None → ``fraction`` of the free memory.
      fraction: share of the free memory used when ``budget`` is None.

    Returns:
      S in [1, seeds]: the largest batch whose estimate fits.

    Raises:
      MemoryPlanError: not even one seed fits.
    """
    seeds = check_int(seeds, "seeds", minimum=1)
    kwargs = {
        "width_chunk": width_chunk,
        "out_dim": out_dim,
        "train_readout": train_readout,
        "use_bias": use_bias,
        "dtype": dtype,
    }
    single = sweep_cell_memory(n, n_test, d, seeds=1, **kwargs)
    ok, where, limit, source = budget_verdict(single, budget, fraction)
    if not ok:
        raise MemoryPlanError(refusal_message(single, where, budget_of="plan_seed_batch"), single, limit, source)
    lo, hi = 1, seeds  # largest S with a fitting estimate (monotone in S)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if budget_verdict(sweep_cell_memory(n, n_test, d, seeds=mid, **kwargs), budget, fraction)[0]:
            lo = mid
        else:
            hi = mid - 1
    return lo
