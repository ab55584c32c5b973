"""Memory budgets and the refusal: does an estimate fit what is free where the arrays live?

A :class:`MemoryEstimate` (named byte terms plus a fixed runtime overhead,
from the estimators of ``kernels.memory.estimators``) is compared with a
budget by :func:`fits` / :func:`ensure_fits`; the latter raises
:class:`MemoryPlanError` — before anything is allocated — with the estimate,
the budget and the options.

``budget=None`` means a fraction (default 50%) of what is free where the
arrays live: on the CPU backend the host's available memory
(:func:`available_memory`: psutil's ``available``, capped by the cgroup limit
minus usage, v2 ``/sys/fs/cgroup/memory.max`` or v1
``memory.limit_in_bytes``); on an accelerator the device's
``bytes_limit − bytes_in_use`` (``Device.memory_stats()``) for the device
terms and the host's for the host terms. The device is
:func:`default_device` (``jax.local_devices()[0]``) unless one is passed
(``device=``, any object with ``platform`` and ``memory_stats()``); an
accelerator that reports no ``memory_stats`` falls back to host memory, and
:class:`MemoryPlanError` says which memory it compared with (its ``source``:
"device", "host" or "budget"). An explicit ``budget`` (bytes) is compared
with the whole estimate.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict

import jax
import psutil

from kernelattn._validation import check_real
from kernelattn.errors import KernelattnError

__all__ = [
    "DEFAULT_FRACTION",
    "RUNTIME_OVERHEAD",
    "Budget",
    "MemoryEstimate",
    "MemoryPlanError",
    "available_memory",
    "budget_verdict",
    "cgroup_memory",
    "default_budget",
    "default_device",
    "device_free_memory",
    "ensure_fits",
    "fits",
    "format_bytes",
    "refusal_message",
]

#: Fixed allowance for XLA compilation and allocator slack, bytes.
RUNTIME_OVERHEAD = 32 * 2**20
#: Default fraction of the free memory a plan may use.
DEFAULT_FRACTION = 0.5


class MemoryPlanError(KernelattnError, MemoryError):
    """The planned computation does not fit the memory budget; raised before allocating.

    A ``MemoryError`` (not a ``ValueError``): the arguments are valid — the same
    call runs on a machine with more memory — and code that already handles
    running out of memory (``except MemoryError``) handles this too, only
    earlier and with a plan instead of a crash.

    Attributes:
      estimate: the :class:`MemoryEstimate` that did not fit.
      budget: the budget in bytes.
      source: what the budget was taken from: "device" (an accelerator's
        ``memory_stats()``), "host" (host RAM) or "budget" (given explicitly).
    """

    def __init__(
        self, message: str, estimate: MemoryEstimate | None = None, budget: int | None = None, source: str | None = None
    ):
        super().__init__(message)
        self.estimate = estimate
        self.budget = budget
        self.source = source


def format_bytes(n: float) -> str:
    """Human-readable binary size: ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one computation.

    Attributes:
      what: what is estimated (used in messages).
      terms: {term name: bytes} of the device-side buffers (XLA arrays).
      host_terms: {term name: bytes} of host-side (numpy) buffers; on the
        CPU backend device and host are the same memory.
      overhead: fixed allowance (``RUNTIME_OVERHEAD``).
      options: ways to make it smaller, for error messages.
    """

    what: str
    terms: Mapping[str, int]
    host_terms: Mapping[str, int] = dataclasses.field(default_factory=dict)
    overhead: int = RUNTIME_OVERHEAD
    options: tuple[str, ...] = ()

    @property
    def device(self) -> int:
        """Bytes of device buffers plus the overhead."""
        return int(sum(self.terms.values())) + self.overhead

    @property
    def host(self) -> int:
        """Bytes of host buffers."""
        return int(sum(self.host_terms.values()))

    @property
    def total(self) -> int:
        """All bytes (device + host + overhead)."""
        return self.device + self.host

    def __int__(self) -> int:
        return self.total

    def describe(self, limit: int = 4) -> str:
        """``'≈1.23 GiB (Θ accumulator 512.00 MiB, pre-activations …)'``, the largest terms first."""
        items = sorted(
            {**self.terms, **{f"host {k}": v for k, v in self.host_terms.items()}}.items(), key=lambda kv: -kv[1]
        )
        shown = ", ".join(f"{k} {format_bytes(v)}" for k, v in items[:limit] if v > 0)
        return f"≈{format_bytes(self.total)}" + (f" ({shown})" if shown else "")


# --------------------------------------------------------------------------- budgets


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_field(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == field:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> dict | None:
    """The memory limit of this process's cgroup, if any.

    Reads cgroup v2 (``memory.max``, ``memory.current``, ``inactive_file`` of
    ``memory.stat``) at ``root``, else cgroup v1 (``memory/memory.limit_in_bytes``,
    ``memory.usage_in_bytes``, ``total_inactive_file``). Page cache that can be
    reclaimed (inactive files) does not count as used.

    Returns:
      ``{"limit": bytes, "used": bytes, "available": bytes}``, or None when
      no finite limit is set (v1 reports "unlimited" as ~2^63).
    """
    root = Path(root)
    for limit_file, usage_file, stat_file, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        limit = _read_int(root / limit_file)
        if limit is None or limit >= 2**62:
            continue
        used = _read_int(root / usage_file) or 0
        used = max(used - _stat_field(root / stat_file, inactive), 0)
        return {"limit": limit, "used": used, "available": max(limit - used, 0)}
    return None


def available_memory(*, cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """Bytes of host memory this process can still allocate.

    ``psutil.virtual_memory().available``, capped by the cgroup's limit minus
    its usage when a limit is set (containers): psutil alone reports the
    whole machine's memory there.
    """
    free = int(psutil.virtual_memory().available)
    group = cgroup_memory(cgroup_root)
    return min(free, group["available"]) if group else free


def default_device():
    """The device the kernels' arrays live on by default: ``jax.local_devices()[0]``."""
    return jax.local_devices()[0]


def _describe_device(device) -> str:
    kind = getattr(device, "device_kind", None) or type(device).__name__
    return f"{getattr(device, 'platform', '?')} device {kind}"


def device_free_memory(device=None) -> int | None:
    """``bytes_limit − bytes_in_use`` of an accelerator's ``memory_stats()``; None on CPU or without stats.

    Args:
      device: any object with ``platform`` and ``memory_stats()`` (a JAX
        device, or a stub in tests); None → :func:`default_device`.
    """
    device = default_device() if device is None else device
    if getattr(device, "platform", "cpu") == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if "bytes_limit" not in stats:
        return None
    return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)


class Budget(TypedDict):
    """Bytes a plan may use: ``host``; ``device`` (None: the arrays live in host memory); ``source``, the
    text saying where they come from; ``memory``, "device" or "host" (what a refusal compared with)."""

    host: int
    device: int | None
    source: str
    memory: str


def default_budget(fraction: float = DEFAULT_FRACTION, *, device=None) -> Budget:
    """The budget used when none is given: ``fraction`` of the free memory.

    Args:
      fraction: share of the free memory, in (0, 1].
      device: the device the arrays live on (see :func:`device_free_memory`);
        None → :func:`default_device`.

    Returns:
      ``{"host": bytes, "device": bytes or None, "source": text, "memory": "device" | "host"}``;
      ``device`` is None on the CPU backend (device arrays live in host memory)
      and on an accelerator that reports no ``memory_stats()`` ("memory" is
      then "host" and ``source`` says so).
    """
    fraction = check_real(fraction, "fraction", minimum=0.0, maximum=1.0, strict_min=True)
    device = default_device() if device is None else device
    host = available_memory()
    free = device_free_memory(device)
    source = f"{fraction:.0%} of {format_bytes(host)} host memory available"
    if free is not None:
        source = (
            f"{fraction:.0%} of {format_bytes(free)} free device memory (memory_stats of "
            f"{_describe_device(device)}: bytes_limit − bytes_in_use) and " + source
        )
        return {"host": int(fraction * host), "device": int(fraction * free), "source": source, "memory": "device"}
    if getattr(device, "platform", "cpu") != "cpu":
        source += f" ({_describe_device(device)} reports no memory_stats, so host memory is used)"
    return {"host": int(fraction * host), "device": None, "source": source, "memory": "host"}


def budget_verdict(
    estimate: MemoryEstimate, budget: int | None, fraction: float = DEFAULT_FRACTION, device=None
) -> tuple[bool, str, int, str]:
    """Whether ``estimate`` fits, and against what: the shared core of :func:`fits` and :func:`ensure_fits`.

    Returns:
      ``(fits, the budget described for messages, the bytes compared with,
      source: "budget" | "host" | "device")``.
    """
    if budget is not None:
        budget = int(check_real(budget, "budget", minimum=0.0))
        return estimate.total <= budget, f"the budget of {format_bytes(budget)}", budget, "budget"
    plan = default_budget(fraction, device=device)
    if plan["device"] is None:
        return (
            estimate.total <= plan["host"],
            f"{format_bytes(plan['host'])} of host memory ({plan['source']})",
            plan["host"],
            "host",
        )
    if estimate.device > plan["device"]:
        return (
            False,
            f"{format_bytes(plan['device'])} of device memory for its device buffers ({plan['source']})",
            plan["device"],
            "device",
        )
    return (
        estimate.host <= plan["host"],
        f"{format_bytes(plan['host'])} of host memory for its host buffers ({plan['source']})",
        plan["host"],
        "host" if estimate.host else "device",
    )


def refusal_message(
    estimate: MemoryEstimate, where: str, extra: Sequence[str] = (), budget_of: str | None = None
) -> str:
    """The refusal message: the estimate, the budget and the options (``extra`` first).

    ``budget_of`` names the function whose ``budget=`` argument can raise the
    budget; without it no such option is offered (the caller has none).
    """
    options = list(extra) + [o for o in estimate.options if o not in extra]
    if budget_of is not None:
        options.append(f"pass a larger budget= (bytes) to {budget_of} if more memory is really free")
    return (
        f"{estimate.what} needs {estimate.describe()}, more than {where}; refusing before allocating. "
        "Options: " + "; ".join(options) + "."
    )


def fits(
    estimate: MemoryEstimate, budget: int | None = None, *, fraction: float = DEFAULT_FRACTION, device=None
) -> bool:
    """Whether ``estimate`` fits ``budget`` (bytes; None → ``fraction`` of the free memory of ``device``)."""
    return budget_verdict(estimate, budget, fraction, device)[0]


def ensure_fits(
    estimate: MemoryEstimate,
    budget: int | None = None,
    *,
    fraction: float = DEFAULT_FRACTION,
    options: Sequence[str] = (),
    budget_of: str | None = None,
    device=None,
) -> None:
    """Raise :class:`MemoryPlanError` unless ``estimate`` fits ``budget``.

    Args:
      estimate: from one of the ``*_memory`` estimators.
      budget: bytes; None → ``fraction`` of the free memory (device and host
        separately on accelerators).
      fraction: share of the free memory used when ``budget`` is None.
      options: ways out to list before the estimate's own (e.g. another
        implementation that would fit).
      budget_of: the public function whose ``budget=`` the caller passed on,
        named in the message as a way to raise the budget; None → the
        message offers no budget (the caller takes none).
      device: the device whose free memory makes the default budget
        (:func:`default_budget`); None → :func:`default_device`.
    """
    ok, where, limit, source = budget_verdict(estimate, budget, fraction, device)
    if not ok:
        raise MemoryPlanError(refusal_message(estimate, where, options, budget_of), estimate, limit, source)
