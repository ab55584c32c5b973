"""Empirical NTK of the two-layer head sharded across devices (docs/math.md §7).

The structured kernel is a sum over hidden units,

    Θ_m = (σ_a²/m) Σ_r θ_r,   θ_r = (s_r a_r)(s_r a_r)ᵀ ⊙ lin  (+ relu(h_r) relu(h_r)ᵀ),

so the width splits across devices with no communication until the end: each
device accumulates its own chunks of hidden units into an ``(n1, n2)`` (or
``(n1, n2, C, C)``) partial sum and a single ``psum`` adds the partials. The
chunk contributions are the same as those of
``kernelattn.kernels.empirical.streaming_head_ntk`` / ``structured_head_ntk``
(same helpers, same parameter draw), only the order of the final additions
differs, so the sharded and single-device kernels agree to float rounding.

What sharding buys:

- over **width** (the default, a 1-D mesh): speed, ~D× on D devices once the
  width has ≥ D chunks. It does *not* shrink the per-device memory: every
  device holds a full n1 × n2 accumulator. (With streamed parameters the width
  costs no memory anyway; with given parameters, W's columns are split, so
  ``d·m/D`` per device.)
- over **samples** too (``shard_samples=True``, a 2-D mesh
  ``("samples", "width")``): the rows of x1 are split S ways, so each device
  holds an ``(n1/S) × n2`` accumulator, the only way to fit a larger n. Every
  sample shard redraws (or holds) the same parameters, so the width part of
  the work is repeated S times.

Devices are ``jax.local_devices()`` unless a mesh or device list is given; in
a multi-process run (``initialize_distributed``) each process then computes
independently on its own devices, which is what a sweep that hands cells to
processes wants. Pass ``device_mesh(jax.devices())`` for one kernel spanning all
processes (every process must then make the same call with the same inputs).

Only public JAX API present in both jax 0.4.25 and current releases is used;
``shard_map`` moved from ``jax.experimental.shard_map`` to ``jax.shard_map``
and renamed its ``check_rep`` flag ``check_vma`` — see :func:`shard_map`.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kernelattn._precision import kernel_inputs, resolve_precision
from kernelattn._validation import check_int
from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.kernels.empirical import DEFAULT_WIDTH_CHUNK, head_linear_part, head_ntk_blocks, head_ntk_fn
from kernelattn.models import HeadConfig

WIDTH_AXIS = "width"
SAMPLE_AXIS = "samples"

__all__ = [
    "device_memory",
    "device_mesh",
    "initialize_distributed",
    "local_device_count",
    "materialized_parameter_bytes",
    "shard_map",
    "sharded_head_ntk_blocks",
    "sharded_streaming_head_ntk",
    "sharded_structured_head_ntk",
    "streaming_memory_model",
]


# ------------------------------------------------------------------- compatibility


def shard_map(fn, mesh: Mesh, in_specs, out_specs):
    """``shard_map`` across jax versions, replication checking off.

    jax ≥ 0.6 exposes ``jax.shard_map(f, *, mesh, in_specs, out_specs,
    check_vma)``; jax 0.4.25 only has ``jax.experimental.shard_map.shard_map(f,
    mesh, in_specs, out_specs, check_rep)`` (deprecated, later removed). The
    check is turned off because the loop carries start from replicated zeros and
    become device-varying in the first step, which the new varying-manual-axes
    check rejects unless the init is marked with ``jax.lax.pvary`` (absent in
    0.4.25). Every output here is made replicated by an explicit ``psum`` (or is
    sharded by its out_spec), so the check would add nothing.
    """
    new = getattr(jax, "shard_map", None)
    if new is not None:
        flag = "check_vma" if "check_vma" in inspect.signature(new).parameters else "check_rep"
        return new(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **{flag: False})
    # jax < 0.6 only: the module is deprecated (later removed), so it is imported only where it is the one route.
    from jax.experimental.shard_map import shard_map as legacy

    return legacy(fn, mesh, in_specs, out_specs, check_rep=False)


# --------------------------------------------------------------------------- devices


def local_device_count() -> int:
    """Number of devices attached to this process (``jax.local_device_count()``)."""
    return jax.local_device_count()


def device_memory(devices: Sequence[jax.Device] | None = None) -> list[dict]:
    """Per-device memory as reported by the runtime.

    Args:
      devices: devices to report on (default: ``jax.local_devices()``).

    Returns:
      One dict per device: ``id``, ``platform``, ``kind``, ``process_index`` and
      ``bytes_in_use``, ``peak_bytes_in_use``, ``bytes_limit`` (ints, or ``None``
      where the backend reports nothing — the CPU backend reports nothing; use
      ``streaming_memory_model`` for an estimate there).
    """
    devices = jax.local_devices() if devices is None else list(devices)
    report = []
    for device in devices:
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = {}
        report.append(
            {
                "id": device.id,
                "platform": device.platform,
                "kind": getattr(device, "device_kind", device.platform),
                "process_index": device.process_index,
                "bytes_in_use": stats.get("bytes_in_use"),
                "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
                "bytes_limit": stats.get("bytes_limit"),
            }
        )
    return report


def device_mesh(
    devices: Sequence[jax.Device] | None = None,
    axis_name: str = WIDTH_AXIS,
    *,
    sample_shards: int | None = None,
    sample_axis: str = SAMPLE_AXIS,
) -> Mesh:
    """A mesh over ``devices`` for the sharded kernels.

    Args:
      devices: the devices (default: ``jax.local_devices()``, all devices of this
        process); ``jax.devices()`` spans every process of a distributed run.
      axis_name: name of the width axis.
      sample_shards: ``None`` → a 1-D mesh ``(axis_name,)`` of all devices; an
        integer S dividing the device count → a 2-D mesh ``(sample_axis,
        axis_name)`` of shape ``(S, D/S)``, for ``shard_samples=True``.
      sample_axis: name of the sample axis of a 2-D mesh.

    Returns:
      A ``jax.sharding.Mesh``. The kernels read the width axis as the mesh's
      last axis and the sample axis as its first.
    """
    devices = jax.local_devices() if devices is None else list(devices)
    if not devices:
        raise InputValueError("devices: expected at least one device, got an empty sequence")
    if sample_shards is None:
        return Mesh(np.asarray(devices, dtype=object), (axis_name,))
    sample_shards = check_int(sample_shards, "sample_shards", minimum=1, maximum=len(devices))
    if len(devices) % sample_shards:
        raise InputValueError(
            f"sample_shards: expected a divisor of the device count {len(devices)}, got {sample_shards}"
        )
    if sample_axis == axis_name:
        raise InputValueError(f"sample_axis: expected a name other than axis_name {axis_name!r}")
    grid = np.asarray(devices, dtype=object).reshape(sample_shards, len(devices) // sample_shards)
    return Mesh(grid, (sample_axis, axis_name))


def _smallest_factor(n: int) -> int:
    """Smallest prime factor of n (1 for n = 1)."""
    return next((p for p in range(2, math.isqrt(n) + 1) if n % p == 0), n)


def _resolve_mesh(mesh, shard_samples: bool) -> tuple[Mesh, str, str | None]:
    """Validated mesh plus its (width axis, sample axis or None)."""
    if mesh is None:
        count = jax.local_device_count()
        mesh = device_mesh(sample_shards=_smallest_factor(count) if shard_samples else None)
    if not isinstance(mesh, Mesh):
        raise InputTypeError(f"mesh: expected a jax.sharding.Mesh (see device_mesh), got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    if shard_samples and len(names) != 2:
        raise InputValueError(
            f"mesh: shard_samples=True needs a 2-D mesh (samples, width), e.g. "
            f"device_mesh(sample_shards=2); got axes {names}"
        )
    if not shard_samples and len(names) != 1:
        raise InputValueError(
            f"mesh: expected a 1-D mesh (width,) when shard_samples=False, got axes {names}; "
            "pass shard_samples=True to shard rows over the first axis"
        )
    return mesh, names[-1], (names[0] if shard_samples else None)


# ---------------------------------------------------------------------- distributed


_DISTRIBUTED_STARTED = False


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-process JAX run (thin wrapper of ``jax.distributed.initialize``).

    Call once per process, at program start, before any JAX computation.
    Each argument left ``None`` is read from the environment:

    - ``JAX_COORDINATOR_ADDRESS`` ("host:port" of process 0; jax itself also
      reads this one),
    - ``JAX_NUM_PROCESSES``,
    - ``JAX_PROCESS_ID`` (0 … num_processes − 1),

    and what is still unknown is left to JAX's cluster auto-detection (SLURM,
    Open MPI / ``mpirun``, Kubernetes, Cloud TPU).

    It is a no-op, returning ``False``, when the run is single-process: one
    process requested, or nothing configured and no multi-task cluster variables
    (``SLURM_NTASKS``, ``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``) present; also when
    this function already initialized the run.

    Returns:
      ``True`` if ``jax.distributed.initialize`` was called.
    """
    global _DISTRIBUTED_STARTED
    is_initialized = getattr(jax.distributed, "is_initialized", None)  # absent in jax 0.4.25
    if _DISTRIBUTED_STARTED or (is_initialized is not None and is_initialized()):
        return False
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if num_processes is not None:
        num_processes = check_int(num_processes, "num_processes", minimum=1)
        if num_processes == 1:
            return False
    if process_id is not None:
        process_id = check_int(process_id, "process_id", minimum=0)
    cluster_tasks = max(int(env.get(name, "1") or 1) for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))
    if coordinator_address is None and num_processes is None and process_id is None and cluster_tasks <= 1:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    _DISTRIBUTED_STARTED = True
    return True


# -------------------------------------------------------------------- memory model


def _itemsize(dtype) -> int:
    """Bytes per element of float32 / float64 (an estimate needs no 64-bit mode)."""
    resolved = np.dtype(dtype)
    if resolved.name not in ("float32", "float64"):
        raise InputValueError(f"dtype: expected one of ['float32', 'float64'], got {resolved.name!r}")
    return resolved.itemsize


def streaming_memory_model(
    n1: int,
    d: int,
    n2: int | None = None,
    *,
    out_dim: int = 1,
    width_chunk: int = DEFAULT_WIDTH_CHUNK,
    trace_output: bool = True,
    dtype="float32",
    sample_shards: int = 1,
) -> dict:
    """Estimated peak bytes on one device of the streaming kernel (independent of m).

    Counts, for ``r = ⌈n1/S⌉`` rows per device and chunk ``c``:
    accumulator-sized buffers ``(1 + 3k)·r·n2`` (the linear part, the loop
    carry, one chunk's contribution and the reduced output; ``k = 1`` traced,
    ``C²`` untraced), chunk activations ``(3 + [untraced]·C)·(r + n2)·c`` (H,
    S, relu(H), S·a), chunk parameters ``(d + 1 + C)·c`` and inputs
    ``(r + n2)·d``. Intermediate fusion by XLA usually makes the truth a little
    smaller; the JAX runtime's own few hundred MB are not included.

    Returns:
      Dict of byte counts: ``accumulator``, ``chunk``, ``inputs``, ``total``.
    """
    item = _itemsize(dtype)
    n2 = n1 if n2 is None else n2
    rows = -(-n1 // sample_shards)
    k = 1 if trace_output else out_dim**2
    acc = (1 + 3 * k) * rows * n2 * item
    act = (3 + (0 if trace_output else out_dim)) * (rows + n2) * width_chunk * item
    par = (d + 1 + out_dim) * width_chunk * item
    inputs = (rows + n2) * d * item
    return {"accumulator": acc, "chunk": act + par, "inputs": inputs, "total": acc + act + par + inputs}


def materialized_parameter_bytes(
    d: int, width: int, *, out_dim: int = 1, use_bias: bool = False, dtype="float32", width_shards: int = 1
) -> int:
    """Bytes per device of the head's parameters W (d, m), b (m,), a (m, C) split over width."""
    item = _itemsize(dtype)
    per_device = -(-width // width_shards)
    return (d + int(use_bias) + out_dim) * per_device * item


# ----------------------------------------------------------------------- kernels


def _row_padded(x1, sample_axis, mesh):
    """Pad x1's rows to a multiple of the sample-axis size (padded rows are sliced off later)."""
    if sample_axis is None:
        return x1
    shards = mesh.shape[sample_axis]
    pad = -x1.shape[0] % shards
    return jnp.pad(x1, ((0, pad), (0, 0))) if pad else x1


def _unpad_rows(out, n_rows, mesh):
    """Drop padded rows; rows that no longer split evenly are gathered (replicated).

    An explicit constraint is needed: jax 0.4.25 would otherwise infer a row
    sharding of the sliced array that does not divide it and fail.
    """
    if out.shape[0] == n_rows:
        return out
    return jax.lax.with_sharding_constraint(out[:n_rows], NamedSharding(mesh, PartitionSpec()))


def _out_spec(sample_axis, trace_output):
    rows = PartitionSpec() if sample_axis is None else PartitionSpec(sample_axis)
    return rows if trace_output or sample_axis is None else PartitionSpec(sample_axis, None, None, None)


def sharded_head_ntk_blocks(
    key: jax.Array,
    x1: jax.Array,
    x2: jax.Array | None,
    lin: jax.Array,
    head: HeadConfig,
    *,
    chunk: int,
    first,
    n_blocks,
    axis_name: str,
    shards: int,
    n_units=None,
    n2: int | None = None,
    trace_output: bool = True,
    precision=None,
) -> jax.Array:
    """This device's share of chunks [first, first + n_blocks) of a streamed head NTK, inside ``shard_map``.

    Device j of the width axis (of size D) sums chunks first + j, first + j + D,
    … < first + n_blocks: ⌈(n_blocks − j)/D⌉ of them, none when j ≥ n_blocks (a
    device-dependent trip count, so a while loop: no device spends time on
    chunks beyond the range). The chunks are drawn as on one device
    (``kernels.empirical.draw_head_units``), so a ``psum`` of the partials is the
    one-device sum up to the order of the additions.

    Args:
      key, x1, x2, lin, head, chunk, n_units, n2, trace_output, precision: as
        in ``kernels.empirical.head_ntk_blocks`` (the float method).
      first, n_blocks: the range of chunks shared out (may be traced).
      axis_name: the mesh axis the width is sharded over.
      shards: its size D.

    Returns:
      The device's unnormalized partial sum (``psum`` it over ``axis_name``).
    """
    device = jax.lax.axis_index(axis_name)
    steps = jnp.maximum(n_blocks - device + shards - 1, 0) // shards
    return head_ntk_blocks(
        key,
        x1,
        x2,
        lin,
        head,
        chunk=chunk,
        first=first + device,
        steps=steps,
        stride=shards,
        n_units=n_units,
        n2=n2,
        trace_output=trace_output,
        precision=precision,
    )


@functools.partial(
    jax.jit,
    static_argnames=("mesh", "head", "trace_output", "chunk", "width_axis", "sample_axis", "n_rows", "precision"),
)
def _sharded_streaming(key, x1, x2, *, mesh, head, trace_output, chunk, width_axis, sample_axis, n_rows, precision):
    shards = mesh.shape[width_axis]
    n_chunks = -(-head.width // chunk)

    def local(key, x1, x2):
        lin = head_linear_part(x1, x2, head, precision=precision)
        total = sharded_head_ntk_blocks(
            key,
            x1,
            x2,
            lin,
            head,
            chunk=chunk,
            first=0,
            n_blocks=n_chunks,
            axis_name=width_axis,
            shards=shards,
            trace_output=trace_output,
            precision=precision,
        )
        return head.sigma_a**2 * jax.lax.psum(total, width_axis) / head.width

    rows = PartitionSpec() if sample_axis is None else PartitionSpec(sample_axis, None)
    if x2 is None:
        fn = shard_map(
            lambda k, x: local(k, x, None), mesh, (PartitionSpec(), rows), _out_spec(sample_axis, trace_output)
        )
        out = fn(key, x1)
    else:
        fn = shard_map(local, mesh, (PartitionSpec(), rows, PartitionSpec()), _out_spec(sample_axis, trace_output))
        out = fn(key, x1, x2)
    return _unpad_rows(out, n_rows, mesh)


def sharded_streaming_head_ntk(
    key: jax.Array,
    head: HeadConfig,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    mesh: Mesh | None = None,
    width_chunk: int = DEFAULT_WIDTH_CHUNK,
    trace_output: bool = True,
    dtype="float32",
    shard_samples: bool = False,
    precision=None,
) -> jax.Array:
    """Empirical NTK of a freshly drawn ``MLPHead``, width sharded across devices.

    The same network as ``streaming_head_ntk(key, head, x1, x2,
    width_chunk=width_chunk)``: chunk i of hidden units is drawn from
    ``fold_in(key, i)``. With D devices on the width axis, device j accumulates
    chunks j, j + D, j + 2D, …, then one ``psum`` adds the D partial kernels.
    The result equals the single-device kernel up to float rounding
    (summation order). Memory per device: ``streaming_memory_model``.

    Args:
      key: PRNG key of this network.
      head: ``HeadConfig`` (its ``width`` is m).
      x1: ``(n1, d)`` inputs.
      x2: ``(n2, d)`` inputs; defaults to ``x1``.
      mesh: from ``device_mesh`` (default: all local devices; a 1-D mesh, or
        with ``shard_samples`` a 2-D ``(S, D/S)`` mesh with S the smallest
        prime factor of the device count).
      width_chunk: hidden units per accumulation step; it fixes the draw, as in
        ``streaming_head_ntk`` (keep it equal there to get the same network).
      trace_output: average over outputs → ``(n1, n2)``; else ``(n1, n2, C, C)``.
      dtype: "float32" (default) or "float64".
      shard_samples: also split the rows of x1 over the mesh's first axis: the
        per-device accumulator shrinks to ``(⌈n1/S⌉, n2)``.
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force (``kernelattn.precision_policy``, default "highest").

    Returns:
      The kernel in ``dtype``: replicated on every mesh device; with
      ``shard_samples`` row-sharded over the sample axis when S divides n1
      (otherwise x1 is zero-padded for the computation and the final
      ``(n1, n2)`` is gathered, replicated).
    """
    if not isinstance(head, HeadConfig):
        raise InputTypeError(f"head: expected a HeadConfig, got {type(head).__name__}")
    _, x1, x2 = kernel_inputs(x1, x2, dtype)
    chunk = min(check_int(width_chunk, "width_chunk", minimum=1), head.width)
    shard_samples = bool(shard_samples)
    mesh, width_axis, sample_axis = _resolve_mesh(mesh, shard_samples)
    n_rows = x1.shape[0]
    if sample_axis is not None and x2 is None:
        x2 = x1  # every row block needs all of x2
    return _sharded_streaming(
        key,
        _row_padded(x1, sample_axis, mesh),
        x2,
        mesh=mesh,
        head=head,
        trace_output=bool(trace_output),
        chunk=chunk,
        width_axis=width_axis,
        sample_axis=sample_axis,
        n_rows=n_rows,
        precision=resolve_precision(precision),
    )


@functools.partial(
    jax.jit,
    static_argnames=("mesh", "head", "trace_output", "chunk", "width_axis", "sample_axis", "n_rows", "precision"),
)
def _sharded_structured(x1, x2, params, *, mesh, head, trace_output, chunk, width_axis, sample_axis, n_rows, precision):
    def local(x1, x2, params):
        # head_ntk_fn scales by σ_a²/m with m = head.width (the global width), so
        # the partials over local columns add up to the kernel.
        part = head_ntk_fn(
            params, head, x1, x2, trace_output=trace_output, width_chunk=chunk, method="float", precision=precision
        )
        return jax.lax.psum(part, width_axis)

    rows = PartitionSpec() if sample_axis is None else PartitionSpec(sample_axis, None)
    specs = _parameter_specs(params, width_axis)
    out_spec = _out_spec(sample_axis, trace_output)
    if x2 is None:
        out = shard_map(lambda x, p: local(x, None, p), mesh, (rows, specs), out_spec)(x1, params)
    else:
        out = shard_map(local, mesh, (rows, PartitionSpec(), specs), out_spec)(x1, x2, params)
    return _unpad_rows(out, n_rows, mesh)


def _parameter_specs(params: dict, width_axis: str) -> dict:
    spec = {"W": PartitionSpec(None, width_axis), "a": PartitionSpec(width_axis, None)}
    if "b" in params:
        spec["b"] = PartitionSpec(width_axis)
    return spec


def _shard_parameters(head_variables: dict, head: HeadConfig, d: int, dtype, mesh: Mesh, width_axis: str) -> dict:
    """Cast, zero-pad the width to a multiple of the width-axis size and place the columns.

    Zero-padded units (w = 0, b = 0, a = 0) have H = 0, so S = 0 and relu(H) = 0:
    they add exactly nothing. Host (numpy) parameters go straight to their
    shards, never whole onto one device.
    """
    expected: dict[str, tuple[int, ...]] = {"W": (d, head.width), "a": (head.width, head.out_dim)}
    if head.use_bias:
        expected["b"] = (head.width,)
    pad = -head.width % mesh.shape[width_axis]
    specs = _parameter_specs(expected, width_axis)
    placed = {}
    for name, shape in expected.items():
        if name not in head_variables:
            raise InputValueError(f"head_variables: expected key {name!r} (keys: {sorted(head_variables)})")
        value = head_variables[name]
        if tuple(np.shape(value)) != shape:
            raise InputValueError(f"head_variables[{name!r}]: expected shape {shape}, got {tuple(np.shape(value))}")
        widths = [(0, 0)] * len(shape)
        widths[1 if name == "W" else 0] = (0, pad)
        sharding = NamedSharding(mesh, specs[name])
        if isinstance(value, jax.Array):
            value = value.astype(dtype)
            if pad:
                value = jax.jit(lambda v, w=tuple(widths): jnp.pad(v, w), out_shardings=sharding)(value)
            placed[name] = jax.device_put(value, sharding)
        else:
            value = np.asarray(value, dtype)
            placed[name] = jax.device_put(np.pad(value, widths) if pad else value, sharding)
    return placed


def sharded_structured_head_ntk(
    head_variables: dict,
    head: HeadConfig,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    mesh: Mesh | None = None,
    width_chunk: int = DEFAULT_WIDTH_CHUNK,
    trace_output: bool = True,
    dtype="float32",
    shard_samples: bool = False,
    precision=None,
) -> jax.Array:
    """Exact empirical NTK of ``MLPHead`` at given parameters, W's columns sharded.

    The columns of W (and rows of b, a) are placed across the width axis with
    ``NamedSharding`` (zero-padded to a multiple of the device count; zero units
    contribute nothing), each device runs the chunked closed form of
    ``structured_head_ntk`` over its columns, and one ``psum`` adds the
    partials. Parameters per device: ``d·m/D`` — the way to hold widths whose W
    does not fit one device (pass numpy arrays or already sharded arrays so W is
    never whole on one device).

    Args:
      head_variables: ``{"W": (d, m), "b": (m,) if use_bias, "a": (m, C)}``.
      head, x1, x2, trace_output, dtype: as in ``structured_head_ntk``.
      mesh, shard_samples, precision: as in ``sharded_streaming_head_ntk``.
      width_chunk: hidden units per accumulation step on each device.

    Returns:
      The kernel in ``dtype``, placed as in ``sharded_streaming_head_ntk``.
    """
    if not isinstance(head, HeadConfig):
        raise InputTypeError(f"head: expected a HeadConfig, got {type(head).__name__}")
    dtype, x1, x2 = kernel_inputs(x1, x2, dtype)
    chunk = check_int(width_chunk, "width_chunk", minimum=1)
    shard_samples = bool(shard_samples)
    mesh, width_axis, sample_axis = _resolve_mesh(mesh, shard_samples)
    params = _shard_parameters(dict(head_variables), head, x1.shape[1], dtype, mesh, width_axis)
    n_rows = x1.shape[0]
    if sample_axis is not None and x2 is None:
        x2 = x1
    return _sharded_structured(
        _row_padded(x1, sample_axis, mesh),
        x2,
        params,
        mesh=mesh,
        head=head,
        trace_output=bool(trace_output),
        chunk=chunk,
        width_axis=width_axis,
        sample_axis=sample_axis,
        n_rows=n_rows,
        precision=resolve_precision(precision),
    )
