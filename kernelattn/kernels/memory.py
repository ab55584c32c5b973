"""Memory planning: estimate peak bytes from shapes and refuse before allocating.

A kernel sweep that outgrows memory must fail with a message, not be killed
by the OS. Every estimator here returns a :class:`MemoryEstimate` (named byte
terms plus a fixed runtime overhead) computed from shapes alone;
:func:`ensure_fits` compares it with a budget and raises
:class:`MemoryPlanError` — before anything is allocated — with the estimate,
the budget and the options; :func:`plan_width_chunk` and
:func:`plan_seed_batch` pick the largest width chunk / seed batch that fits.

Budgets
-------
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

The model and its calibration
-----------------------------
Byte counts per buffer XLA keeps alive at the peak, times the itemsize, plus
``RUNTIME_OVERHEAD`` (32 MiB: compilation and allocator slack; the Python
and JAX runtime already resident are not counted, since the budget is taken
from what is still free). Coefficients were fitted to the peak-RSS increase
(``ru_maxrss`` after − before, measured in a fresh subprocess after a warm-up
call; the script is ``MEASURE_SCRIPT`` below, re-run by
``tests/test_memory.py``) on XLA:CPU (jax 0.10.2, 2-core host), float32 and float64:

- streaming/structured head NTK (:func:`head_ntk_memory`): 2·n1·n2 (traced;
  (2C² + 1)·n1·n2 untraced) + (n1 + n2)·chunk·(1 + C [untraced] + [a]) +
  4·d·chunk (the drawn W with its random bits) — estimate/peak 1.11 to 1.58
  over 13 sizes (n up to 4000, chunk up to 16384, C up to 10);
- the sweep's stream (``kernels.stream.head_kernel_stream``, S seeds vmapped):
  3·n_all·n + (n_all + 2n)·chunk + 4·d·chunk per seed, plus two float64
  host copies of each Θ_m — 1.03 to 1.14;
- sweep metrics on the host (float64): 2·n_all·n + 10·n² (symmetrized
  copies, ``eigvalsh`` and Cholesky work arrays) — 1.13;
- autodiff NTK, "jacobian" (:func:`autodiff_ntk_memory`): 2·(n1 + n2)·C·P +
  (n1² + n2²)·C·A, the reverse-mode cotangents of the A activations of
  every row — 0.89 to 1.11; "ntvp": 4·(n1 + n2)·A + 3·P + 2·n1·n2·C² — 1.03;
- attacks (:func:`attack_memory`), model target: 8·n·d + 7·n·m + 2·d² + 3·P
  + 2·n·C — 1.06 to 1.23; kernel-ridge target: 8·n·d + 6·n·m + 8·n² + 3·P
  — 1.29 to 1.46.

(``[a]``: 1 when the readout is trained; x2 = None counts as n2 = n1.) On
accelerators the same buffers live in device memory; allocator fragmentation
and library workspaces (cuBLAS, cuSOLVER) add ~10–20%, which the default 50%
budget absorbs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kernelattn._validation import check_choice, check_int, check_real
from kernelattn.errors import InputValueError, KernelattnError

__all__ = [
    "MEASURE_SCRIPT",
    "RUNTIME_OVERHEAD",
    "MemoryEstimate",
    "MemoryPlanError",
    "attack_memory",
    "autodiff_ntk_memory",
    "available_memory",
    "cgroup_memory",
    "default_budget",
    "default_device",
    "device_free_memory",
    "ensure_fits",
    "fits",
    "format_bytes",
    "head_ntk_memory",
    "head_param_count",
    "plan_seed_batch",
    "plan_width_chunk",
    "sweep_cell_memory",
    "training_memory",
]

#: Fixed allowance for XLA compilation and allocator slack, bytes.
RUNTIME_OVERHEAD = 32 * 2**20
#: Default fraction of the free memory a plan may use.
DEFAULT_FRACTION = 0.5
#: Largest width chunk ``plan_width_chunk`` proposes by default: beyond ~2^16
#: units per step the matmuls are long saturated and only the footprint grows.
DEFAULT_MAX_CHUNK = 2**16


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

    def __init__(self, message: str, estimate: MemoryEstimate | None = None, budget: int | None = None,
                 source: str | None = None):
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
        items = sorted({**self.terms, **{f"host {k}": v for k, v in self.host_terms.items()}}.items(),
                       key=lambda kv: -kv[1])
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
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
         "total_inactive_file"),
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
    import psutil

    free = int(psutil.virtual_memory().available)
    group = cgroup_memory(cgroup_root)
    return min(free, group["available"]) if group else free


def default_device():
    """The device the kernels' arrays live on by default: ``jax.local_devices()[0]``."""
    import jax

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


def default_budget(fraction: float = DEFAULT_FRACTION, *, device=None) -> dict:
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
        source = (f"{fraction:.0%} of {format_bytes(free)} free device memory (memory_stats of "
                  f"{_describe_device(device)}: bytes_limit − bytes_in_use) and " + source)
        return {"host": int(fraction * host), "device": int(fraction * free), "source": source, "memory": "device"}
    if getattr(device, "platform", "cpu") != "cpu":
        source += f" ({_describe_device(device)} reports no memory_stats, so host memory is used)"
    return {"host": int(fraction * host), "device": None, "source": source, "memory": "host"}


def _fits(estimate: MemoryEstimate, budget: int | None, fraction: float,
          device=None) -> tuple[bool, str, int, str]:
    """(fits, budget description, budget bytes compared with, source: "budget" | "host" | "device")."""
    if budget is not None:
        budget = int(check_real(budget, "budget", minimum=0.0))
        return estimate.total <= budget, f"the budget of {format_bytes(budget)}", budget, "budget"
    plan = default_budget(fraction, device=device)
    if plan["device"] is None:
        return (estimate.total <= plan["host"], f"{format_bytes(plan['host'])} of host memory ({plan['source']})",
                plan["host"], "host")
    if estimate.device > plan["device"]:
        return (False, f"{format_bytes(plan['device'])} of device memory for its device buffers "
                       f"({plan['source']})", plan["device"], "device")
    return (estimate.host <= plan["host"], f"{format_bytes(plan['host'])} of host memory for its host buffers "
                                           f"({plan['source']})", plan["host"], "host" if estimate.host else "device")


def _refusal(estimate: MemoryEstimate, where: str, extra: Sequence[str] = (), budget_of: str | None = None) -> str:
    """The refusal message: the estimate, the budget and the options (``extra`` first).

    ``budget_of`` names the function whose ``budget=`` argument can raise the
    budget; without it no such option is offered (the caller has none).
    """
    options = list(extra) + [o for o in estimate.options if o not in extra]
    if budget_of is not None:
        options.append(f"pass a larger budget= (bytes) to {budget_of} if more memory is really free")
    return (f"{estimate.what} needs {estimate.describe()}, more than {where}; refusing before allocating. "
            "Options: " + "; ".join(options) + ".")


def fits(estimate: MemoryEstimate, budget: int | None = None, *, fraction: float = DEFAULT_FRACTION,
         device=None) -> bool:
    """Whether ``estimate`` fits ``budget`` (bytes; None → ``fraction`` of the free memory of ``device``)."""
    return _fits(estimate, budget, fraction, device)[0]


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
    ok, where, limit, source = _fits(estimate, budget, fraction, device)
    if not ok:
        raise MemoryPlanError(_refusal(estimate, where, options, budget_of), estimate, limit, source)


# ------------------------------------------------------------------------ estimators


def _itemsize(dtype) -> int:
    try:
        name = np.dtype(dtype).name
    except TypeError as err:
        raise InputValueError(f"dtype: expected one of ['float32', 'float64'], got {dtype!r}") from err
    check_choice(name, "dtype", ("float32", "float64"))
    return np.dtype(name).itemsize


def head_param_count(d: int, width: int, *, out_dim: int = 1, use_bias: bool = False,
                     train_readout: bool = False) -> int:
    """Trainable parameters P of the two-layer head: d·m (+ m for b) (+ m·C for a trained readout)."""
    return width * (d + int(use_bias) + (out_dim if train_readout else 0))


def _common_options(dtype: str, seeds: int = 1) -> list[str]:
    options = []
    if np.dtype(dtype).name == "float64":
        options.append("float32 instead of float64 (halves every term; check the kernel with "
                       "kernelattn.kernels.guards.check_kernel afterwards)")
    if seeds > 1:
        options.append(f"fewer seeds batched at once (now {seeds}; see plan_seed_batch)")
    return options


def head_ntk_memory(
    n1: int,
    n2: int | None,
    d: int,
    width: int,
    *,
    width_chunk: int,
    out_dim: int = 1,
    trace_output: bool = True,
    train_readout: bool = False,
    use_bias: bool = False,
    seeds: int = 1,
    sample_shards: int = 1,
    params_given: bool = False,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of the structured / streaming empirical head NTK (``kernels.empirical``).

    ``streaming_head_ntk`` and ``structured_head_ntk`` accumulate Θ over
    chunks of hidden units; per device at the peak (calibration: module doc):

    - Θ: the accumulator and the linear part σ_w²X₁X₂ᵀ/d, 2·n1·n2 when traced;
      untraced, accumulator and one chunk's ``(n1, n2, C, C)`` contribution,
      (2C² + 1)·n1·n2;
    - pre-activations of a chunk: (n1 + n2)·chunk·(1 + C [untraced] + 1 [a
      trained]) (x2 = None counts as n2 = n1);
    - parameters of a chunk: 4·d·chunk (W and the random bits and normal
      transform of its draw) + 3·chunk·C (a) + 2·chunk (b);
    - inputs: 2·(n1 + n2)·d (host array and device copy).

    Args:
      n1, n2: rows of x1 and x2 (``n2=None``: x2 = x1).
      d: input dimension.
      width: hidden width m (only min(width_chunk, m) matters: memory does
        not grow with m).
      width_chunk: hidden units per accumulation step.
      out_dim: C.
      trace_output: output-traced ``(n1, n2)`` (default) or full ``(n1, n2, C, C)``.
      train_readout, use_bias: the head's trained parameters.
      seeds: networks computed at once (vmapped): every term but the inputs
        is per seed.
      sample_shards: rows of x1 split over this many devices
        (``kernelattn.kernels.distributed``): the estimate is per device.
      params_given: ``structured_head_ntk`` (parameters passed in, not
        drawn): adds the whole layer W, b, a and the zero-padded chunked
        copy it makes, 2·(d + [b] + C)·m.
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n1 = check_int(n1, "n1", minimum=1)
    n2 = n1 if n2 is None else check_int(n2, "n2", minimum=1)
    d = check_int(d, "d", minimum=1)
    width = check_int(width, "width", minimum=1)
    chunk = min(check_int(width_chunk, "width_chunk", minimum=1), width)
    c = check_int(out_dim, "out_dim", minimum=1)
    seeds = check_int(seeds, "seeds", minimum=1)
    rows = -(-n1 // check_int(sample_shards, "sample_shards", minimum=1))
    k = 1 if trace_output else c * c
    theta = (2 * k + (0 if k == 1 else 1)) * rows * n2
    pre = (rows + n2) * chunk * (1 + (0 if trace_output else c) + int(train_readout))
    params = 4 * d * chunk + 3 * chunk * c + 2 * chunk * int(use_bias)
    terms = {
        "Θ accumulator": seeds * theta * item,
        "pre-activations of a chunk": seeds * pre * item,
        "parameters of a chunk": seeds * params * item,
        "inputs": 2 * (rows + n2) * d * item,
    }
    if params_given:
        padded = -(-width // chunk) * chunk
        terms["parameters (given, and chunked copy)"] = (width + padded) * (d + int(use_bias) + c) * item
    shape = f"{n1}×{n2}" + ("" if trace_output else f"×{c}×{c}")
    options = [f"smaller n (the Θ accumulator alone is {format_bytes(terms['Θ accumulator'])}, "
               f"quadratic in n)"]
    if chunk > 1:
        options.append(f"a smaller width_chunk (now {chunk}; see plan_width_chunk)")
    if not trace_output and c > 1:
        options.append(f"trace_output=True (divides the accumulator by C² = {c * c})")
    options += _common_options(dtype, seeds)
    options.append("shard the rows over devices (kernelattn.kernels.distributed, shard_samples=True: "
                   "each device holds n1/D rows of Θ)")
    what = (f"the empirical head NTK ({shape}, d={d}, width={width}, width_chunk={chunk}, "
            f"{np.dtype(dtype).name}" + (f", {seeds} seeds" if seeds > 1 else "") + ")")
    return MemoryEstimate(what, terms, options=tuple(options))


def autodiff_ntk_memory(
    n1: int,
    n2: int | None,
    *,
    n_params: int,
    out_dim: int = 1,
    activations: int = 0,
    implementation: str = "jacobian",
    trace_output: bool = True,
    row_block: int | None = None,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of the generic autodiff NTK (``kernels.empirical.empirical_ntk``).

    - "jacobian": the Jacobians 2·(n1 + n2)·C·P (each, and the copy the
      contraction reshapes it into), and reverse mode through a
      batch of n rows propagates n·C cotangents of every hidden activation of
      every row: n²·C·A for A activations per row (the term that dominates
      for wide models; ``row_block=b``, row by row, bounds it to b·C·A);
    - "ntvp": one column at a time: activations and tangents 4·(n1 + n2)·A +
      3·P, and the stacked columns 2·n1·n2·C².
    Plus the kernel n1·n2 (·C² untraced). x2 = None counts as n2 = n1 (one
    Jacobian, contracted with itself).

    Args:
      n1, n2: rows of x1 and x2 (``n2=None``: x2 = x1).
      n_params: P, trainable parameters (``head_param_count`` for the head).
      out_dim: C.
      activations: A, hidden activations per row (for the 2-layer head: its
        width m; for MLP-Attn add d per attention layer).
      implementation: "jacobian" or "ntvp".
      trace_output: output-traced kernel or the full ``(n1, n2, C, C)``.
      row_block: "jacobian" with Jacobians built this many rows at a time.
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n1 = check_int(n1, "n1", minimum=1)
    same = n2 is None
    n2 = n1 if same else check_int(n2, "n2", minimum=1)
    p = check_int(n_params, "n_params", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    a = check_int(activations, "activations", minimum=0)
    check_choice(implementation, "implementation", ("jacobian", "ntvp"))
    k = 1 if trace_output else c * c
    terms = {"kernel": n1 * n2 * k * item}
    if implementation == "jacobian":
        jac_rows = n1 if same else n1 + n2
        terms["Jacobians (and their contraction layout)"] = 2 * jac_rows * c * p * item
        blocks = [n1] if same else [n1, n2]
        if row_block is None:
            cotangent_rows = sum(b * b for b in blocks)  # every output of the batch through every row
        else:  # row by row: b rows at a time, each through itself only
            cotangent_rows = sum(min(check_int(row_block, "row_block", minimum=1), b) for b in blocks)
        terms["reverse-mode cotangents"] = cotangent_rows * c * a * item
        options = [f"row_block=b (cotangents b·C·A instead of n²·C·A: now "
                   f"{format_bytes(terms['reverse-mode cotangents'])})",
                   "implementation='ntvp' (never stores a Jacobian)"]
    else:
        terms["activations and tangents"] = (4 * (n1 + n2) * a + 3 * p) * item
        terms["stacked columns"] = 2 * n1 * n2 * c * c * item
        options = []
    options.append("the structured head NTK (kernels.empirical.structured_head_ntk) for the two-layer head")
    options += _common_options(dtype)
    what = (f"the autodiff NTK ({implementation}, {n1}×{n2}, C={c}, P={p}, A={a}, {np.dtype(dtype).name})")
    return MemoryEstimate(what, terms, options=tuple(options))


def factored_ntk_memory(
    n1: int,
    n2: int | None,
    *,
    factor_size: int,
    pair_size: int,
    rest_params: int,
    out_dim: int = 1,
    activations: int = 0,
    trace_output: bool = True,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of the structured-derivatives NTK (``empirical_ntk(implementation="factored")``).

    Per input row: the factors (matmul inputs u and output cotangents g,
    ``factor_size`` numbers), the per-row Jacobians of the other parameters
    2·C·``rest_params``, and C cotangents of every activation; per pair of
    rows the token-pair products 2·``pair_size`` (·C² untraced); plus the kernel.

    Args:
      n1, n2: rows of x1 and x2 (``n2=None``: x2 = x1).
      factor_size, pair_size: ``Plan.factor_size()``, ``Plan.pair_size()``.
      rest_params: parameters that get per-row Jacobians.
      out_dim: C.
      activations: intermediate values of one row (``Plan.activations``).
      trace_output: output-traced kernel or the full ``(n1, n2, C, C)``.
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n1 = check_int(n1, "n1", minimum=1)
    same = n2 is None
    n2 = n1 if same else check_int(n2, "n2", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    rows = n1 if same else n1 + n2
    k = 1 if trace_output else c * c
    terms = {
        "kernel": n1 * n2 * k * item,
        "factors (matmul inputs and output cotangents)": rows * check_int(factor_size, "factor_size", minimum=0) * item,
        "per-row Jacobians of the other parameters": 2 * rows * c * check_int(rest_params, "rest_params", minimum=0)
        * item,
        "reverse-mode cotangents": rows * c * check_int(activations, "activations", minimum=0) * item,
        "pairwise products": 2 * n1 * n2 * k * check_int(pair_size, "pair_size", minimum=1) * item,
    }
    options = ["the structured head NTK (kernels.empirical.structured_head_ntk) for the two-layer head",
               "computing the kernel in blocks of rows of x1 and x2", *_common_options(dtype)]
    what = f"the factored autodiff NTK ({n1}×{n2}, C={c}, {np.dtype(dtype).name})"
    return MemoryEstimate(what, terms, options=tuple(options))


def sweep_cell_memory(
    n: int,
    n_test: int,
    d: int,
    *,
    width_chunk: int,
    seeds: int = 1,
    out_dim: int = 1,
    train_readout: bool = False,
    use_bias: bool = False,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of one kernel-sweep step (``kernelattn.experiments.sweeps``, "relu"/"mlp-attn" models).

    Per (dataset, model) group: Θ_∞ on (n + n*) × n in float64 (closed form:
    ~4·n_all·n while computed) and its reference spectrum and solve; per seed
    batch, the streamed head NTK of ``head_kernel_stream`` — x of n_all = n + n*
    rows against its first n — with S seeds vmapped: 3·n_all·n (linear part,
    accumulator in and out) + (n_all + 2n)·chunk (pre-activations and the
    train slice) + 4·d·chunk per seed on the device, and two float64 host
    copies of each Θ_m; then the metrics on the host in float64: Θ_∞ kept,
    and ~10·n² of symmetrized copies, eigenvalue and Cholesky work arrays.

    Args:
      n, n_test: training and test points.
      d: feature dimension.
      width_chunk: the sweep's ``kernel.width_chunk``.
      seeds: seeds vmapped together (``kernel.batch_seeds``).
      out_dim, train_readout, use_bias: the head.
      dtype: the sweep's compute dtype (Θ_∞ and metrics are float64 regardless).
    """
    item = _itemsize(dtype)
    n = check_int(n, "n", minimum=1)
    n_test = check_int(n_test, "n_test", minimum=0)
    d = check_int(d, "d", minimum=1)
    chunk = check_int(width_chunk, "width_chunk", minimum=1)
    seeds = check_int(seeds, "seeds", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    n_all = n + n_test
    per_seed_device = (3 * n_all * n + (n_all + 2 * n) * chunk * (1 + int(train_readout))
                       + 4 * d * chunk + 3 * chunk * c + 2 * chunk * int(use_bias)) * item
    terms = {
        "Θ_m accumulators and pre-activations": seeds * per_seed_device,
        "inputs": 2 * n_all * d * item,
    }
    stream_host = {
        "Θ_m float64 copies": seeds * 2 * n_all * n * 8,
        "Θ_∞ reference": n_all * n * 8,
        "metrics work arrays (float64)": 10 * n * n * 8,
    }
    limit_phase = {"Θ_∞ closed form (float64)": 4 * n_all * n * 8}
    limit_host = {"Θ_∞ reference and its spectrum (float64)": n_all * n * 8 + 10 * n * n * 8}
    # Θ_∞ is computed first and its temporaries freed before streaming: the peak is the larger phase.
    if sum(limit_phase.values()) + sum(limit_host.values()) > sum(terms.values()) + sum(stream_host.values()):
        terms, stream_host = limit_phase, limit_host
    options = [f"fewer training/test points (Θ is (n + n*) × n = {n_all}×{n}, float64 on the host)",
               f"a smaller width_chunk (now {chunk})"]
    options += _common_options(dtype, seeds)
    options.append("spread seeds over processes or devices (kernelattn.kernels.distributed)")
    what = (f"a kernel-sweep cell (n={n}, n*={n_test}, d={d}, width_chunk={chunk}, {np.dtype(dtype).name}"
            + (f", {seeds} seeds batched" if seeds > 1 else "") + ")")
    return MemoryEstimate(what, terms, stream_host, options=tuple(options))



def _head_sizes(n, d, width, out_dim, n_params) -> tuple[int, int, int, int, int]:
    """Checked (n, d, m, C, P) of the two-layer head; P defaults to d·m + m·C (its weights and readout)."""
    n = check_int(n, "n", minimum=1)
    d = check_int(d, "d", minimum=1)
    m = check_int(width, "width", minimum=1)
    c = check_int(out_dim, "out_dim", minimum=1)
    return n, d, m, c, d * m + m * c if n_params is None else check_int(n_params, "n_params", minimum=1)

def attack_memory(
    n: int,
    d: int,
    *,
    width: int,
    out_dim: int = 1,
    target: str = "model",
    n_params: int | None = None,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of an FGSM/PGD/MIM attack on the whole training set (``kernelattn.learning.attacks``).

    Every iteration differentiates the loss of all n training points at once
    through the attention (keys/values = the perturbed set, O(n·d + d²)) and
    the head: X, its perturbation, the gradient ∇_X L and MIM's momentum
    (8·n·d), the head's pre-activations and their cotangents (7·n·m) and the
    parameters (3·P). The "kernel" target differentiates through the n × n
    kernel of the perturbed set and one dense solve instead (8·n² + 6·n·m).

    Args:
      n, d: training set shape.
      width: hidden width m.
      out_dim: C.
      target: "model" or "kernel" (``AttackConfig.target``).
      n_params: P (default: d·m + m·C, the head with its readout).
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n, d, m, c, p = _head_sizes(n, d, width, out_dim, n_params)
    check_choice(target, "target", ("model", "kernel"))
    terms = {
        "inputs, perturbation and gradients": 8 * n * d * item,
        "parameters": 3 * p * item,
    }
    if target == "model":
        terms["head activations and cotangents"] = 7 * n * m * item
        terms["attention and outputs"] = (2 * d * d + 2 * n * c) * item
    else:
        terms["head activations and cotangents"] = 6 * n * m * item
        terms["kernel, solve and their cotangents"] = 8 * n * n * item
    options = ["attack fewer training points at once (a row mask still needs the whole set in the loss)"]
    if target == "kernel":
        options.append("target='model' (no n × n kernel to differentiate)")
    options += _common_options(dtype)
    what = f"the {target}-target attack (n={n}, d={d}, width={m}, C={c}, {np.dtype(dtype).name})"
    return MemoryEstimate(what, terms, options=tuple(options))


def training_memory(
    n: int,
    d: int,
    *,
    width: int,
    out_dim: int = 1,
    batch_size: int = 128,
    n_params: int | None = None,
    dtype="float32",
) -> MemoryEstimate:
    """Peak bytes of training the two-layer head with Adam (``kernelattn.learning.training.train``).

    The parameters, their gradients, Adam's two moments and the update
    (5·P), the features of the training set with their device copy (2·n·d)
    and one minibatch's pre-activations, activations and their cotangents
    (4·b·m). Not calibrated like the estimators above: a lower bound, meant
    to refuse widths that cannot fit (P grows as d·m) before training starts.

    Args:
      n, d: training set shape.
      width: hidden width m.
      out_dim: C.
      batch_size: b (at most n).
      n_params: P (default: d·m + m·C).
      dtype: compute dtype.
    """
    item = _itemsize(dtype)
    n, d, m, c, p = _head_sizes(n, d, width, out_dim, n_params)
    b = min(check_int(batch_size, "batch_size", minimum=1), n)
    terms = {
        "parameters, gradients and Adam state": 5 * p * item,
        "features": 2 * n * d * item,
        "minibatch activations and cotangents": 4 * b * m * item,
    }
    options = [f"a smaller width (the parameters alone are {format_bytes(p * item)} at width {m})"]
    options += _common_options(dtype)
    what = f"training the head (n={n}, d={d}, width={m}, C={c}, {np.dtype(dtype).name})"
    return MemoryEstimate(what, terms, options=tuple(options))


# --------------------------------------------------------------------------- planners


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
    kwargs = dict(out_dim=out_dim, trace_output=trace_output, train_readout=train_readout, use_bias=use_bias,
                  seeds=seeds, sample_shards=sample_shards, dtype=dtype)
    if budget is not None:
        limit = int(check_real(budget, "budget", minimum=0.0))
        plan = {"host": limit, "device": None, "source": "explicit"}
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
        where = (f"the budget of {format_bytes(plan['host'])}" if plan["source"] == "explicit" else
                 f"{format_bytes(plan['device'] if plan['device'] is not None else plan['host'])} "
                 f"({plan['source']})")
        raise MemoryPlanError(_refusal(smallest, where + f" even with width_chunk={candidates[0]}",
                                       budget_of="plan_width_chunk"),
                              smallest, plan["device"] if plan["device"] is not None else plan["host"],
                              "budget" if plan["source"] == "explicit" else plan.get("memory", "host"))
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
    kwargs = dict(width_chunk=width_chunk, out_dim=out_dim, train_readout=train_readout, use_bias=use_bias,
                  dtype=dtype)
    single = sweep_cell_memory(n, n_test, d, seeds=1, **kwargs)
    ok, where, limit, source = _fits(single, budget, fraction)
    if not ok:
        raise MemoryPlanError(_refusal(single, where, budget_of="plan_seed_batch"), single, limit, source)
    lo, hi = 1, seeds  # largest S with a fitting estimate (monotone in S)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(sweep_cell_memory(n, n_test, d, seeds=mid, **kwargs), budget, fraction)[0]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------- calibration

#: The measurement behind the calibration. Run in a fresh process as
#: ``python -c MEASURE_SCRIPT '<json list of sizes>'`` (keys: n1, [n2], d, width,
#: chunk, [out_dim], [trace], [readout], dtype); prints a JSON list with, per
#: size, the increase of the peak resident set size over one
#: ``streaming_head_ntk`` call. The peak is the kernel's high-water mark
#: (``VmHWM``, what ``ru_maxrss`` reports), reset between sizes through
#: ``/proc/self/clear_refs``; where that is refused, only the first size is
#: measured (``"reset": false``) and ``ru_maxrss`` is used.
MEASURE_SCRIPT = r"""
import gc, json, re, resource, sys
sizes = json.loads(sys.argv[1])
import jax
if any(s["dtype"] == "float64" for s in sizes):
    jax.config.update("jax_enable_x64", True)
import numpy as np
from kernelattn.kernels.empirical import streaming_head_ntk
from kernelattn.models import HeadConfig

def status(field):
    try:
        text = open("/proc/self/status").read()
        return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024
    except (OSError, AttributeError):
        return None

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmHWM") is not None
    except OSError:
        return False

def run(s):
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(s["n1"], s["d"])).astype(s["dtype"])
    x2 = rng.normal(size=(s["n2"], s["d"])).astype(s["dtype"]) if s.get("n2") else None
    head = HeadConfig(s["width"], s.get("out_dim", 1), train_readout=s.get("readout", False))
    k = streaming_head_ntk(jax.random.PRNGKey(0), head, x1, x2, trace_output=s.get("trace", True),
                           width_chunk=s["chunk"], dtype=s["dtype"])
    k.block_until_ready()

for s in sizes:  # warm-up: load and initialize JAX, compile the small programs
    run({**s, "n1": 4, "n2": 3 if s.get("n2") else 0, "d": 5, "width": 8, "chunk": 8})
results = []
for i, s in enumerate(sizes):
    gc.collect()
    reset = reset_peak()
    if not reset and i > 0:
        results.append({"size": s, "reset": False, "delta": None})
        continue
    before = status("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run(s)
    peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.append({"size": s, "reset": reset, "delta": peak - before})
print(json.dumps(results))
"""
