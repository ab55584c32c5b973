"""The one structured (and streamed) empirical NTK of the two-layer head ``MLPHead`` (docs/math.md §7).

Exact, from the head's closed form (Novak et al. 2022, "Fast finite width
NTK", structured derivatives):

    H = X̃ W σ_w/√d + σ_b b,  S = 1[H > 0],  R = relu(H)
    Θ_W = (σ_a²/m) ((S diag a)(S diag a)ᵀ) ⊙ (σ_w² X̃X̃ᵀ/d + σ_b² [b trained])
    Θ_a = (σ_a²/m) R Rᵀ                       (only if the readout is trained)

at cost O(n m d + n² m) instead of O(n² m d), accumulated over chunks of
width so memory stays O(n² + n·chunk). :func:`structured_head_ntk` takes
the parameters; :func:`streaming_head_ntk` draws them chunk by chunk
(:func:`draw_head_units`), so widths of 2^20 and beyond run in a few hundred
MB. The building blocks — :func:`head_linear_part`, :func:`head_unit_ntk`,
:func:`head_ntk_blocks` — serve the streamed width sweep
(``kernels.stream``), the sharded kernels (``kernels.distributed``) and the
QKV network's NTK (``kernels.qkv``). The activation-pattern Gram may be
computed exactly in integers for the fixed ±1 readout (``kernels.exact``,
:func:`resolve_method`).

Output axes are traced (averaged over the C outputs) by default, giving
``(n1, n2)``; ``trace_output=False`` gives the full ``(n1, n2, C, C)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kernelattn._precision import kernel_inputs, lax_precision, resolve_precision
from kernelattn._validation import check_choice, check_int
from kernelattn.errors import InputValueError
from kernelattn.kernels import exact, memory
from kernelattn.models import HeadConfig, head_preactivations, random_signs

__all__ = [
    "DEFAULT_WIDTH_CHUNK",
    "METHODS",
    "draw_head_units",
    "head_linear_part",
    "head_ntk_blocks",
    "head_ntk_fn",
    "head_unit_ntk",
    "head_variables",
    "resolve_method",
    "streaming_head_ntk",
    "structured_head_ntk",
]

#: How the structured head NTK computes its activation-pattern Gram (``resolve_method``).
METHODS = ("auto", "float", "int8", "popcount")
DEFAULT_WIDTH_CHUNK = 4096


def resolve_method(method: str, head: HeadConfig, platform: str | None = None) -> str:
    """The head-NTK method that runs: "float", "int8" or "popcount".

    "auto" picks an exact integer form (``kernels.exact``) where it is exact
    and at least as fast, i.e. for the fixed ±1 readout: "int8" on
    accelerators (integer matrix units), "popcount" on CPUs; "float" for a
    trained readout (R Rᵀ has no integer form).

    Args:
      method: "auto", "float", "int8" or "popcount".
      head: the head (its ``train_readout`` decides).
      platform: "cpu", "gpu", "tpu", …; None → ``jax.default_backend()``.

    Raises:
      ValueError: an unknown method, or an exact one for a trained readout.
    """
    check_choice(method, "method", METHODS)
    if method == "auto":
        if head.train_readout:
            return "float"
        return "popcount" if (platform or jax.default_backend()) == "cpu" else "int8"
    if method != "float" and head.train_readout:
        raise InputValueError(
            f"method: {method!r} is exact only for the fixed ±1 readout (train_readout=False), got a "
            "trained readout; use 'float' or 'auto'"
        )
    return method


def head_unit_ntk(
    h1: jax.Array,
    h2: jax.Array,
    lin: jax.Array,
    a: jax.Array,
    head: HeadConfig,
    *,
    trace_output: bool = True,
    precision=None,
) -> jax.Array:
    """Unnormalized structured NTK of a set of hidden units, summed over the units (docs/math.md §7).

    With S = 1[H > 0] and R = relu(H) per unit r,

        Σ_r (s_r a_r)(s'_r a_r)ᵀ ⊙ lin  +  [readout trained] Σ_r r_r r'_rᵀ ⊗ I_C,

    the kernel before the factor σ_a²/m; traced over the C outputs (the mean of
    a_r²), ``(n1, n2)``, or ``(n1, n2, C, C)`` with ``trace_output=False``.
    In floating point (the "float" method of :func:`structured_head_ntk`).

    Args:
      h1: ``(n1, k)`` pre-activations of the k units on the first inputs
        (``kernelattn.models.head_preactivations``).
      h2: ``(n2, k)`` pre-activations on the second inputs (``h1`` itself, or
        its first rows, when the second inputs are the first or a prefix of them).
      lin: ``(n1, n2)`` the first layer's kernel, :func:`head_linear_part`.
      a: ``(k, C)`` readout weights of the units.
      head: the head's ``HeadConfig`` (whether the readout is trained).
      trace_output: average over the outputs.
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force (``kernelattn.precision_policy``).

    Returns:
      The sum over the units, in the inputs' dtype.
    """
    hi = lax_precision(precision)
    dtype = h1.dtype
    s1, s2 = (h1 > 0).astype(dtype), (h2 > 0).astype(dtype)
    if trace_output:
        theta = jnp.matmul(s1 * jnp.mean(a * a, axis=1), s2.T, precision=hi) * lin
        if head.train_readout:
            theta = theta + jnp.matmul(jax.nn.relu(h1), jax.nn.relu(h2).T, precision=hi)
        return theta
    sa1 = s1[:, :, None] * a  # (n1, k, C)
    sa2 = s2[:, :, None] * a
    theta = jnp.einsum("irc,jrd->ijcd", sa1, sa2, precision=hi) * lin[:, :, None, None]
    if head.train_readout:
        rr = jnp.matmul(jax.nn.relu(h1), jax.nn.relu(h2).T, precision=hi)
        theta = theta + rr[:, :, None, None] * jnp.eye(a.shape[1], dtype=dtype)
    return theta


def _unit_preactivations(x1, x2, n2, w, b, head: HeadConfig, precision):
    """(H on x1, H on the second inputs): x2, else the first n2 rows of x1 (all when n2 is None)."""
    params = {"W": w, "b": b}
    h1 = head_preactivations(head, params, x1, precision=precision)
    if x2 is not None:
        return h1, head_preactivations(head, params, x2, precision=precision)
    return h1, (h1 if n2 is None else h1[:n2])


def _unit_term(x1, x2, n2, lin, w, b, a, head: HeadConfig, trace_output, method, precision):
    """What a set of units adds to the accumulator: float Θ ("float") or int32 counts (exact methods)."""
    h1, h2 = _unit_preactivations(x1, x2, n2, w, b, head, precision)
    if method == "float":
        return head_unit_ntk(h1, h2, lin, a, head, trace_output=trace_output, precision=precision)
    # Exact int32 activation-pattern counts (``kernels.exact.pattern_counts``).
    s2 = None if (x2 is None and n2 is None) else h2 > 0
    return exact.pattern_counts(h1 > 0, s2, a, trace_output=trace_output, method=method)


def _accumulator(n1, n2, head: HeadConfig, trace_output, method, dtype):
    shape = (n1, n2) + (() if trace_output else (head.out_dim, head.out_dim))
    return jnp.zeros(shape, dtype if method == "float" else jnp.int32)


def _finish(total, lin, head: HeadConfig, trace_output, method):
    """Θ = σ_a² total / m ("float"), or (σ_a²/m) P ⊙ lin from the exact counts P."""
    if method == "float":
        return head.sigma_a**2 * total / head.width
    factor = lin if trace_output else lin[:, :, None, None]
    return (head.sigma_a**2 / head.width) * total.astype(lin.dtype) * factor


def _ensure_head_fits(
    x1, x2, head: HeadConfig, chunk: int, trace_output: bool, params_given: bool, dtype, budget, caller: str
) -> None:
    """Refuse (``MemoryPlanError``) before allocating when the kernel would not fit in ``budget``.

    The float method's estimate serves the exact ones too (their int32 counts
    and int8 / bit-packed patterns are no larger than its float buffers).
    """
    memory.ensure_fits(
        memory.head_ntk_memory(
            x1.shape[0],
            None if x2 is None else x2.shape[0],
            x1.shape[1],
            head.width,
            width_chunk=chunk,
            out_dim=head.out_dim,
            trace_output=trace_output,
            train_readout=head.train_readout,
            use_bias=head.use_bias,
            params_given=params_given,
            dtype=dtype.name,
        ),
        budget,
        budget_of=caller,
    )


def head_linear_part(x1: jax.Array, x2: jax.Array | None, head: HeadConfig, *, precision=None) -> jax.Array:
    """The first layer's kernel σ_w² x1 x2ᵀ/d + σ_b² [bias] of the head, ``(n1, n2)`` (x2 = None: x1).

    ``precision``: matmul precision, "highest" or "fast"; None → the policy in force.
    """
    d = x1.shape[-1]
    x2 = x1 if x2 is None else x2
    gram = jnp.matmul(x1, x2.T, precision=lax_precision(precision))
    return head.sigma_w**2 * gram / d + (head.sigma_b**2 if head.use_bias else 0.0)


def _chunked(array: jax.Array, axis: int, chunk: int) -> jax.Array:
    """Zero-pad ``axis`` to a multiple of ``chunk`` and move the chunk index first."""
    width = array.shape[axis]
    n_chunks = -(-width // chunk)
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, n_chunks * chunk - width)
    array = jnp.pad(array, pad)
    shape = (*array.shape[:axis], n_chunks, chunk, *array.shape[axis + 1 :])
    return jnp.moveaxis(array.reshape(shape), axis, 0)


@functools.partial(jax.jit, static_argnames=("head", "trace_output", "chunk", "method", "precision"))
def _structured(
    x1,
    x2,
    w,
    b,
    a,
    *,
    head: HeadConfig,
    trace_output: bool,
    chunk: int,
    method: str = "float",
    precision: str = "highest",
):
    lin = head_linear_part(x1, x2, head, precision=precision)
    # Padded units have w = 0 and a = 0: H = σ_b b·0-pad = 0 → S = 0, relu = 0.
    ws = _chunked(w, 1, chunk)
    bs = None if b is None else _chunked(b, 0, chunk)
    as_ = _chunked(a, 0, chunk)

    def body(total, xs):
        w_c, b_c, a_c = xs
        return total + _unit_term(x1, x2, None, lin, w_c, b_c, a_c, head, trace_output, method, precision), None

    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    total, _ = jax.lax.scan(body, _accumulator(x1.shape[0], n2, head, trace_output, method, x1.dtype), (ws, bs, as_))
    return _finish(total, lin, head, trace_output, method)


def head_ntk_fn(
    head_variables: dict,
    head: HeadConfig,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    trace_output: bool = True,
    width_chunk: int = DEFAULT_WIDTH_CHUNK,
    method: str = "auto",
    precision=None,
) -> jax.Array:
    """Pure, jit-able core of :func:`structured_head_ntk`.

    No checks and no memory planning; differentiable in the inputs (the ReLU
    pattern S = 1[H > 0] has zero derivative, so the exact integer methods
    differentiate too), as attacks on the kernel need. The units given may be
    a slice of the head's (``W`` with fewer than ``head.width`` columns, as on
    one device of a width-sharded kernel): the factor is still
    σ_a²/``head.width``, so the slices' kernels add up.

    Args:
      head_variables: ``{"W": (d, k), "b": (k,) if use_bias, "a": (k, C)}``.
      head: the head's ``HeadConfig``.
      x1, x2: as in :func:`structured_head_ntk`.
      trace_output: average over outputs → ``(n1, n2)``; else ``(n1, n2, C, C)``.
      width_chunk: hidden units per accumulation step.
      method, precision: as in :func:`structured_head_ntk` (an exact method
        takes the readout to be ±1, as ``MLPHead`` draws it when
        ``train_readout`` is off).
    """
    w = head_variables["W"]
    b = head_variables["b"] if head.use_bias else None
    return _structured(
        x1,
        x2,
        w,
        b,
        head_variables["a"],
        head=head,
        trace_output=bool(trace_output),
        chunk=min(int(width_chunk), w.shape[1]),
        method=resolve_method(method, head),
        precision=resolve_precision(precision),
    )


def _check_signs(a, method: str) -> None:
    """An exact method needs the readout's entries to be ±1 (checked on concrete arrays; skipped while traced)."""
    try:
        values = np.asarray(a)
    except jax.errors.TracerArrayConversionError:
        return
    if not np.all(np.abs(values) == 1):
        raise InputValueError(
            f"head_variables['a']: expected entries ±1 (the fixed readout) for method={method!r}, "
            f"got values in [{values.min():.3g}, {values.max():.3g}]; use method='float'"
        )


def structured_head_ntk(
    head_variables: dict,
    head: HeadConfig,
    x1: ArrayLike,
    x2: ArrayLike | None = None,
    *,
    trace_output: bool = True,
    width_chunk: int = DEFAULT_WIDTH_CHUNK,
    dtype="float32",
    budget: int | None = None,
    method: str = "auto",
    precision=None,
) -> jax.Array:
    """Exact empirical NTK of ``MLPHead`` at given parameters, by its closed form.

    Θ_W = (σ_a²/m) ((S diag a)(S diag a)ᵀ) ⊙ (σ_w² X₁X₂ᵀ/d + σ_b² [b trained])
    (+ (σ_a²/m) R Rᵀ for a trained readout), accumulated over chunks of width.

    Args:
      head_variables: ``{"W": (d, m), "b": (m,) if use_bias, "a": (m, C)}``, e.g.
        ``{**variables["params"]["head"], **variables.get("constants", {}).get("head", {})}``.
      head: the head's ``HeadConfig`` (decides which parameters are trained).
      x1: ``(n1, d)`` head inputs (for MLP-Attn: the attention output).
      x2: ``(n2, d)`` head inputs; defaults to ``x1``.
      trace_output: average over outputs → ``(n1, n2)``; else ``(n1, n2, C, C)``.
      width_chunk: hidden units per accumulation step (memory O(n² + n·chunk)).
      dtype: "float32" (default) or "float64".
      budget: bytes the computation may take, checked against the memory
        plan before anything is allocated (``kernelattn.kernels.memory``); None → half
        of the free memory. Too small: ``MemoryPlanError`` with the options.
      method: how the activation-pattern Gram (S diag a)(S diag a)ᵀ, the n²m
        part, is computed: "float" (in ``dtype``, summed chunk by chunk),
        "int8" or "popcount" (exact integer counts for the fixed ±1 readout,
        ``kernels.exact``: Θ then carries only the rounding of σ_w²X₁X₂ᵀ/d
        and of two products), or "auto" (default: the exact form that is
        fastest here when the readout is fixed, "float" otherwise).
      precision: matmul precision of X W and X₁X₂ᵀ (and of the float
        method's products), "highest" (``Precision.HIGHEST``) or "fast" (the
        device's default: TF32 on recent GPUs); None → the policy in force
        (``kernelattn.precision_policy``, default "highest").

    Returns:
      The kernel matrix in ``dtype``.
    """
    dtype, x1, x2 = kernel_inputs(x1, x2, dtype)
    chunk = min(check_int(width_chunk, "width_chunk", minimum=1), head.width)
    method = resolve_method(method, head)
    precision = resolve_precision(precision)
    w = jnp.asarray(head_variables["W"], dtype)
    if w.shape != (x1.shape[1], head.width):
        raise InputValueError(f"head_variables['W']: expected shape {(x1.shape[1], head.width)}, got {w.shape}")
    b = jnp.asarray(head_variables["b"], dtype) if head.use_bias else None
    a = jnp.asarray(head_variables["a"], dtype)
    if method != "float":
        _check_signs(a, method)
    _ensure_head_fits(x1, x2, head, chunk, trace_output, True, dtype, budget, "structured_head_ntk")
    return _structured(
        x1, x2, w, b, a, head=head, trace_output=bool(trace_output), chunk=chunk, method=method, precision=precision
    )


def draw_head_units(
    key: jax.Array, index, d: int, chunk: int, n_units, head: HeadConfig, dtype
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Parameters of hidden units [index·chunk, (index+1)·chunk) of the network of ``key``.

    ``k_w, k_b, k_a = split(fold_in(key, index), 3)``; W ~ N(0, 1)^(d×chunk),
    b ~ N(0, 1)^chunk (if ``head.use_bias``), a ~ N(0, 1)^(chunk×C) if the
    readout is trained, else random ±1. Units ≥ ``n_units`` are zeroed (they
    then add exactly nothing), so the first m units of the draw are a width-m
    network whatever the chunk they fall in. The draw of every streamed
    kernel (``streaming_head_ntk``, ``head_kernel_stream``, the sharded ones).

    Args:
      key: PRNG key of the network.
      index: chunk number (may be traced).
      d: input dimension.
      chunk: units per chunk.
      n_units: the network's width m (may be traced).
      head: ``HeadConfig`` (bias, readout mode, out_dim).
      dtype: parameter dtype.

    Returns:
      ``(W (d, chunk), b (chunk,) or None, a (chunk, C))``.
    """
    k_w, k_b, k_a = jax.random.split(jax.random.fold_in(key, index), 3)
    alive = (index * chunk + jnp.arange(chunk)) < n_units
    w = jax.random.normal(k_w, (d, chunk), dtype) * alive
    b = jax.random.normal(k_b, (chunk,), dtype) * alive if head.use_bias else None
    shape = (chunk, head.out_dim)
    a = jax.random.normal(k_a, shape, dtype) if head.train_readout else random_signs(k_a, shape, dtype)
    return w, b, a * alive[:, None]


def head_ntk_blocks(
    key: jax.Array,
    x1: jax.Array,
    x2: jax.Array | None,
    lin: jax.Array,
    head: HeadConfig,
    *,
    chunk: int,
    first,
    steps,
    stride: int = 1,
    n_units=None,
    n2: int | None = None,
    trace_output: bool = True,
    total: jax.Array | None = None,
    method: str = "float",
    precision=None,
) -> jax.Array:
    """Unnormalized streamed head NTK: Σ over the chunks first, first + stride, … (``steps`` of them).

    Each chunk's units are drawn (:func:`draw_head_units`) and contracted
    (:func:`head_unit_ntk`) one after another in a ``fori_loop``, so memory is
    O(n1·n2 + (n1 + n2 + d)·chunk) whatever the width. A jit-able building
    block: ``streaming_head_ntk`` sums every chunk (``first=0, steps=⌈m/chunk⌉``);
    a device of a width mesh sums every D-th (``stride=D``); a width sweep adds
    the chunks of each next width to the previous sum (``total``).

    Args:
      key: PRNG key of the network.
      x1: ``(n1, d)`` inputs.
      x2: ``(n2, d)`` second inputs, or None: x1 itself, or its first ``n2`` rows.
      lin: :func:`head_linear_part` of the two inputs.
      head: ``HeadConfig`` (its width is m unless ``n_units`` is given).
      chunk: units per chunk.
      first, steps: the first chunk and the number of chunks (may be traced).
      stride: distance between the chunks summed.
      n_units: the network's width m (units ≥ m are zeroed; may be traced);
        default ``head.width``.
      n2: with ``x2=None``: the second inputs are x1's first ``n2`` rows.
      trace_output: average over outputs → ``(n1, n2)``; else ``(n1, n2, C, C)``.
      total: the running sum to add to (default zeros).
      method: "float" (default), or an exact "int8" / "popcount" (fixed ±1
        readout only; the sum is then the int32 activation-pattern counts P,
        and Θ = (σ_a²/m) P ⊙ lin), resolved as by :func:`resolve_method`.
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force (``kernelattn.precision_policy``).

    Returns:
      ``total`` plus the chunks' sum, before the factor σ_a²/m.
    """
    n_units = head.width if n_units is None else n_units
    if total is None:
        rows2 = x2.shape[0] if x2 is not None else (x1.shape[0] if n2 is None else n2)
        total = _accumulator(x1.shape[0], rows2, head, trace_output, method, x1.dtype)

    def body(step, acc):
        w, b, a = draw_head_units(key, first + stride * step, x1.shape[1], chunk, n_units, head, x1.dtype)
        return acc + _unit_term(x1, x2, n2, lin, w, b, a, head, trace_output, method, precision)

    return jax.lax.fori_loop(0, steps, body, total)


@functools.partial(jax.jit, static_argnames=("head", "trace_output", "chunk", "method", "precision"))
def _streaming(
    key, x1, x2, *, head: HeadConfig, trace_output: bool, chunk: int, method: str = "float", precision: str = "highest"
):
    lin = head_linear_part(x1, x2, head, precision=precision)
    total = head_ntk_blocks(
        key,
        x1,
        x2,
        lin,
        head,
        chunk=chunk,
        first=0,
        steps=-(-head.width // chunk),
        trace_output=trace_output,
        method=method,
        precision=precision,
    )
    return _finish(total, lin, head, trace_output, method)


def streaming_head_ntk(
    key: jax.Array,
    head: HeadConfig,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    trace_output: bool = True,
    width_chunk: int = DEFAULT_WIDTH_CHUNK,
    dtype="float32",
    budget: int | None = None,
    method: str = "auto",
    precision=None,
) -> jax.Array:
    """Empirical NTK of a freshly drawn ``MLPHead`` of any width, parameters drawn per chunk.

    Hidden units of chunk i are drawn from ``fold_in(key, i)`` (W, b ~ N(0, 1);
    readout ±1 or N(0, 1)), so the draw depends on ``(key, width_chunk)`` and
    memory is O(n² + (n + d)·chunk) whatever the width: m = 2^20 at n = 500
    needs ~100 MB.

    Args:
      key: PRNG key of this network.
      head: ``HeadConfig`` (its ``width`` is m).
      x1, x2, trace_output, width_chunk, dtype, budget, method, precision: as
        in ``structured_head_ntk``.
    """
    dtype, x1, x2 = kernel_inputs(x1, x2, dtype)
    chunk = min(check_int(width_chunk, "width_chunk", minimum=1), head.width)
    method = resolve_method(method, head)
    precision = resolve_precision(precision)
    _ensure_head_fits(x1, x2, head, chunk, trace_output, False, dtype, budget, "streaming_head_ntk")
    return _streaming(
        key, x1, x2, head=head, trace_output=bool(trace_output), chunk=chunk, method=method, precision=precision
    )


def head_variables(variables: dict) -> dict:
    """Flatten a kernelattn model's head variables (params + constants) into one dict."""
    merged = dict(variables["params"]["head"])
    merged.update(variables.get("constants", {}).get("head", {}))
    return merged
