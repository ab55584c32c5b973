"""Memory planning: estimate peak bytes from shapes and refuse before allocating.

A kernel sweep that outgrows memory must fail with a message, not be killed
by the OS. Three modules, each building on the one before:

- ``budgets``: a :class:`MemoryEstimate` (named byte terms plus a fixed
  runtime overhead), the budget it is compared with — by default a fraction
  of what is free where the arrays live, device or host — and
  :func:`ensure_fits`, which raises :class:`MemoryPlanError` before anything
  is allocated, with the estimate, the budget and the options;
- ``estimators``: every estimate from shapes alone — the structured/streamed
  head NTK, the autodiff and factored NTKs, a kernel-sweep cell (and the
  sweep's two quick checks), attacks, training — and how they were
  calibrated against measured peaks;
- ``plans``: :func:`plan_width_chunk` and :func:`plan_seed_batch` pick the
  largest width chunk / seed batch that fits.

Every name is importable from ``kernelattn.kernels.memory`` itself.
"""

from kernelattn.kernels.memory.budgets import (
    DEFAULT_FRACTION,
    RUNTIME_OVERHEAD,
    MemoryEstimate,
    MemoryPlanError,
    available_memory,
    budget_verdict,
    cgroup_memory,
    default_budget,
    default_device,
    device_free_memory,
    ensure_fits,
    fits,
    format_bytes,
    refusal_message,
)
from kernelattn.kernels.memory.estimators import (
    attack_memory,
    autodiff_ntk_memory,
    factored_ntk_memory,
    head_ntk_memory,
    head_param_count,
    seed_batch_memory,
    sweep_cell_memory,
    sweep_group_memory,
    training_memory,
)
from kernelattn.kernels.memory.plans import DEFAULT_MAX_CHUNK, plan_seed_batch, plan_width_chunk

__all__ = [
    "DEFAULT_FRACTION",
    "DEFAULT_MAX_CHUNK",
    "RUNTIME_OVERHEAD",
    "MemoryEstimate",
    "MemoryPlanError",
    "attack_memory",
    "autodiff_ntk_memory",
    "available_memory",
    "budget_verdict",
    "cgroup_memory",
    "default_budget",
    "default_device",
    "device_free_memory",
    "ensure_fits",
    "factored_ntk_memory",
    "fits",
    "format_bytes",
    "head_ntk_memory",
    "head_param_count",
    "plan_seed_batch",
    "plan_width_chunk",
    "refusal_message",
    "seed_batch_memory",
    "sweep_cell_memory",
    "sweep_group_memory",
    "training_memory",
]
