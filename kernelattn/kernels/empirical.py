"""Finite-width (empirical) NTK: Θ_m(x, x') = Σ_p ∂f(x)/∂p · ∂f(x')/∂p (docs/math.md §7).

Two routes to the same matrix:

- **generic**, for any model given as ``f(params, x) -> (n, C)``: JAX
  autodiff, either by contracting the two Jacobians ("jacobian"), by
  NTK-vector products J₁(J₂ᵀ v) over the output basis ("ntvp"), which never
  stores a Jacobian, or by structured derivatives read off the model's jaxpr
  ("factored", ``kernels/factored.py``): every weight used once in a matmul
  h = u W contributes (u·u')(∂f/∂h·∂f'/∂h') without its Jacobian, the fastest
  route for models that act row by row.
- **structured**, exact for the two-layer head, from its closed form
  (Novak et al. 2022, "Fast finite width NTK", structured derivatives):

      H = X̃ W σ_w/√d + σ_b b,  S = 1[H > 0],  R = relu(H)
      Θ_W = (σ_a²/m) ((S diag a)(S diag a)ᵀ) ⊙ (σ_w² X̃X̃ᵀ/d + σ_b² [b trained])
      Θ_a = (σ_a²/m) R Rᵀ                       (only if the readout is trained)

  at cost O(n m d + n² m) instead of O(n² m d), accumulated over chunks of
  width so memory stays O(n² + n·chunk); with ``streaming_head_ntk`` the
  parameters are drawn chunk by chunk as well, so widths of 2^20 and beyond run
  in a few hundred MB.

Output axes are traced (averaged over the C outputs, like neural-tangents'
``trace_axes=(-1,)``) by default, giving ``(n1, n2)``; ``trace_output=False``
gives the full ``(n1, n2, C, C)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn import memory
from kernelattn.errors import InputValueError
from kernelattn.kernels import exact, factored
from kernelattn._precision import kernel_inputs, lax_precision, precision_policy, resolve_precision
from kernelattn._validation import check_choice, check_int
from kernelattn.models import HeadConfig, random_signs

ApplyFn = Callable[[dict, jax.Array], jax.Array]
IMPLEMENTATIONS = ("jacobian", "ntvp", "factored")
#: How the structured head NTK computes its activation-pattern Gram (``resolve_method``).
METHODS = ("auto", "float", "int8", "popcount")
DEFAULT_WIDTH_CHUNK = 4096


# --------------------------------------------------------------------------- generic


def _jacobian(apply_fn, params, x, row_block):
    """Jacobian leaves ``(n, C, *p)``; with ``row_block``, row by row, ``row_block`` rows at a time.

    Row by row (vmap over rows of the one-row Jacobian, neural-tangents'
    ``vmap_axes=0``) costs n·C one-row backward passes instead of n·C
    passes through the whole batch, and holds the cotangents of
    ``row_block`` rows at a time; it requires ``apply_fn`` to act row by row.
    """
    if row_block is None:
        return jax.jacrev(apply_fn)(params, x)
    n = x.shape[0]
    row_block = min(row_block, n)
    n_blocks = -(-n // row_block)
    # Pad with copies of a real row: zero rows can make NaN partials (0 · NaN = NaN in reverse mode).
    padded = jnp.pad(x, ((0, n_blocks * row_block - n), (0, 0)), mode="edge").reshape(n_blocks, row_block, -1)
    one_row = jax.jacrev(lambda p, row: apply_fn(p, row[None])[0])
    blocks = jax.lax.map(lambda xb: jax.vmap(one_row, in_axes=(None, 0))(params, xb), padded)
    return jax.tree_util.tree_map(lambda j: j.reshape((n_blocks * row_block,) + j.shape[2:])[:n], blocks)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _jacobian_ntk(apply_fn, params, x1, x2, trace_output, row_block, precision="highest"):
    """``x2 is None`` means x2 = x1: one Jacobian is computed and contracted with itself.

    Traced inside ``precision_policy(precision)``: the model's matmuls that
    name no precision take the policy's, and so do their transposes.
    """
    with precision_policy(precision):
        j1 = _jacobian(apply_fn, params, x1, row_block)
        j2 = j1 if x2 is None else _jacobian(apply_fn, params, x2, row_block)
        leaves = jax.tree_util.tree_map(lambda a, b: factored.contract_jacobians(a, b, trace_output, precision),
                                        j1, j2)
        return sum(jax.tree_util.tree_leaves(leaves))


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _ntvp_ntk(apply_fn, params, x1, x2, trace_output, row_block=None, precision="highest"):
    with precision_policy(precision):
        return _ntvp_core(apply_fn, params, x1, x2, trace_output)


def _ntvp_core(apply_fn, params, x1, x2, trace_output):
    f1 = lambda p: apply_fn(p, x1)  # noqa: E731
    out2, vjp2 = jax.vjp(lambda p: apply_fn(p, x1 if x2 is None else x2), params)
    n2, c = out2.shape

    def column(cotangent):  # Θ e_{j,d} = J₁ J₂ᵀ e_{j,d}, shape (n1, C)
        (tangent,) = vjp2(cotangent)
        return jax.jvp(f1, (params,), (tangent,))[1]

    basis = jnp.eye(n2 * c, dtype=out2.dtype).reshape(n2 * c, n2, c)
    columns = jax.lax.map(column, basis).reshape(n2, c, -1, c)  # (n2, d, n1, c)
    full = jnp.transpose(columns, (2, 0, 3, 1))  # (n1, n2, c, d)
    if trace_output:
        return jnp.trace(full, axis1=2, axis2=3) / c
    return full


def empirical_ntk(
    apply_fn: ApplyFn,
    params,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    trace_output: bool = True,
    implementation: str = "jacobian",
    row_block: int | None = None,
    dtype="float32",
    budget: int | None = None,
    precision=None,
) -> jax.Array:
    """Empirical NTK of any model by autodiff.

    Args:
      apply_fn: ``f(params, x) -> (n, C)``, a pure function (close over Flax
        constants and the attention context, e.g.
        ``lambda p, x: model.apply({"params": p, **rest}, x, context)``).
      params: pytree of the trainable parameters at which Θ is taken.
      x1: ``(n1, d)`` inputs.
      x2: ``(n2, d)`` inputs; defaults to ``x1``.
      trace_output: average over the C outputs → ``(n1, n2)``; else ``(n1, n2, C, C)``.
      implementation: "jacobian" (contract Jacobians), "ntvp" (NTK-vector
        products) or "factored" (structured derivatives; applies the model to
        each row alone, like neural-tangents' ``vmap_axes=0``, so only for
        models that act row by row: every kernelattn model given a context).
      row_block: "jacobian" only: build the Jacobian row by row (each row
        alone, like neural-tangents' ``vmap_axes=0``: n·C one-row backward
        passes instead of n·C through the batch), this many rows at a time
        (memory O(row_block·C·A) for the cotangents, O(n·C·P) for J itself).
        Needs ``apply_fn`` to act row by row, as every kernelattn model does
        for a fixed context. ``None``: the whole batch at once (any model).
      dtype: "float32" (default) or "float64"; inputs and params are cast.
      budget: bytes the computation may take, checked against the memory
        plan before anything is allocated (``kernelattn.memory``); None → half
        of the free memory. Too small: ``MemoryPlanError`` with the options.
      precision: matmul precision, "highest" (``Precision.HIGHEST``) or "fast"
        (the device's default: TF32 on recent GPUs); None → the policy in
        force (``kernelattn.precision_policy``, default "highest"). The model
        is traced inside that policy, so its matmuls that name no precision
        follow it.

    Returns:
      The kernel matrix in ``dtype``.
    """
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    precision = resolve_precision(precision)
    dtype, x1, x2 = kernel_inputs(x1, x2, dtype)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
    if row_block is not None:
        row_block = check_int(row_block, "row_block", minimum=1)
    _ensure_autodiff_fits(apply_fn, params, x1, x2, bool(trace_output), implementation, row_block, dtype, budget,
                          precision)
    return empirical_ntk_fn(apply_fn, trace_output=trace_output, implementation=implementation,
                            row_block=row_block, precision=precision)(params, x1, x2)


def empirical_ntk_fn(
    apply_fn: ApplyFn,
    *,
    trace_output: bool = True,
    implementation: str = "jacobian",
    row_block: int | None = None,
    precision=None,
) -> Callable:
    """Pure, jit-able form of :func:`empirical_ntk` (like neural-tangents' ``empirical_ntk_fn``).

    No input checks, casts or memory planning: for calls inside ``jax.jit``
    or in tight loops, where :func:`empirical_ntk`'s per-call validation
    (about 2 ms) would dominate small kernels.

    Args:
      apply_fn, trace_output, implementation, row_block, precision: as in
        :func:`empirical_ntk` (``precision=None`` is resolved when ``ntk_fn``
        is called, i.e. traced).

    Returns:
      ``ntk_fn(params, x1, x2=None) -> Θ`` in the inputs' dtype.
    """
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    trace_output = bool(trace_output)
    if precision is not None:
        precision = resolve_precision(precision)
    if implementation == "factored":
        def ntk_fn(params, x1, x2=None):
            resolved = resolve_precision(precision)
            plan = factored.make_plan(apply_fn, params, x1.shape[1], x1.dtype, resolved)
            return factored.factored_ntk(plan, params, x1, x2, trace_output=trace_output, precision=resolved)
    else:
        core = _jacobian_ntk if implementation == "jacobian" else _ntvp_ntk

        def ntk_fn(params, x1, x2=None):
            return core(apply_fn, params, x1, x2, trace_output, row_block, resolve_precision(precision))
    return ntk_fn


def _ensure_autodiff_fits(apply_fn, params, x1, x2, trace_output, implementation, row_block, dtype, budget,
                          precision="highest") -> None:
    """Refuse (``MemoryPlanError``) before allocating when the kernel would not fit in ``budget``.

    A refused "jacobian" or "ntvp" kernel names what ``implementation="factored"``
    would need instead (it stores no Jacobian and no n²·C·A cotangents).
    """
    args = (apply_fn, params, x1, x2, trace_output, implementation, row_block, dtype, precision)
    if implementation == "factored":
        memory.ensure_fits(_factored_memory(*args), budget, budget_of="empirical_ntk")
        return
    estimate = _autodiff_memory(*args)
    options = ()
    if not memory.fits(estimate, budget):
        factored_estimate = _factored_memory(*args)
        verdict = ", which fits" if memory.fits(factored_estimate, budget) else ""
        options = (f"implementation='factored' (needs ≈{memory.format_bytes(factored_estimate.total)} here{verdict}; "
                   "for models that act on each row alone, as every kernelattn model does for a fixed context)",)
    memory.ensure_fits(estimate, budget, options=options, budget_of="empirical_ntk")


def _autodiff_memory(apply_fn, params, x1, x2, trace_output, implementation, row_block, dtype, precision):
    return memory.autodiff_ntk_memory(
        x1.shape[0], None if x2 is None else x2.shape[0],
        n_params=sum(p.size for p in jax.tree_util.tree_leaves(params)),
        out_dim=jax.eval_shape(apply_fn, params, x1[:1]).shape[-1],
        implementation=implementation, trace_output=trace_output, row_block=row_block, dtype=dtype.name,
    )


def _factored_memory(apply_fn, params, x1, x2, trace_output, implementation, row_block, dtype, precision):
    plan = factored.make_plan(apply_fn, params, x1.shape[1], dtype, precision)
    leaves = jax.tree_util.tree_leaves(params)
    return memory.factored_ntk_memory(
        x1.shape[0], None if x2 is None else x2.shape[0], factor_size=plan.factor_size(),
        pair_size=plan.pair_size(), rest_params=sum(leaves[i].size for i in plan.rest), out_dim=plan.out_dim,
        activations=plan.activations, trace_output=trace_output, dtype=dtype.name,
    )


def model_apply_fn(model, variables: dict, context: jax.Array | None = None) -> tuple[ApplyFn, dict]:
    """``(apply_fn, params)`` for a kernelattn Flax model, constants and context closed over.

    Args:
      model: a kernelattn model (``TwoLayerReLU``, ``AttentionMLP``, ``QKVAttentionMLP``).
      variables: its Flax variables (``"params"`` and optional ``"constants"``).
      context: ``(n, d)`` training set the attention attends over (``None``:
        each call attends over its own inputs).
    """
    variables = dict(variables)
    params = variables.pop("params")

    def apply_fn(p, x):
        return model.apply({"params": p, **variables}, x, context)

    return apply_fn, params


# ------------------------------------------------------------------------ structured


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
        raise InputValueError(f"method: {method!r} is exact only for the fixed ±1 readout (train_readout=False), got a "
                         "trained readout; use 'float' or 'auto'")
    return method


def _preactivation(x, w, b, sigma_w, sigma_b, precision):
    h = sigma_w * jnp.matmul(x, w, precision=lax_precision(precision)) / math.sqrt(x.shape[-1])
    return h if b is None else h + sigma_b * b


def _head_chunk(x1, x2, lin, w, b, a, sigma_w, sigma_b, trace_output, train_readout, precision=None):
    """Unnormalized Θ contribution of one chunk of hidden units (sum over the chunk), in floating point.

    ``x2 is None`` means x2 = x1 (the pre-activations are then computed once).
    """
    hi = lax_precision(precision)
    h1 = _preactivation(x1, w, b, sigma_w, sigma_b, precision)
    h2 = h1 if x2 is None else _preactivation(x2, w, b, sigma_w, sigma_b, precision)
    s1, s2 = (h1 > 0).astype(x1.dtype), (h2 > 0).astype(x1.dtype)
    if trace_output:
        theta = jnp.matmul(s1 * jnp.mean(a * a, axis=1), s2.T, precision=hi) * lin
        if train_readout:
            theta = theta + jnp.matmul(jax.nn.relu(h1), jax.nn.relu(h2).T, precision=hi)
        return theta
    sa1 = s1[:, :, None] * a  # (n1, chunk, C)
    sa2 = s2[:, :, None] * a
    theta = jnp.einsum("irc,jrd->ijcd", sa1, sa2, precision=hi) * lin[:, :, None, None]
    if train_readout:
        rr = jnp.matmul(jax.nn.relu(h1), jax.nn.relu(h2).T, precision=hi)
        theta = theta + rr[:, :, None, None] * jnp.eye(a.shape[1], dtype=x1.dtype)
    return theta


def _count_chunk(x1, x2, w, b, a, sigma_w, sigma_b, trace_output, method, precision):
    """Exact int32 activation-pattern counts of one chunk (``kernels.exact.pattern_counts``)."""
    h1 = _preactivation(x1, w, b, sigma_w, sigma_b, precision)
    s2 = None if x2 is None else _preactivation(x2, w, b, sigma_w, sigma_b, precision) > 0
    return exact.pattern_counts(h1 > 0, s2, a, trace_output=trace_output, method=method)


def _chunk_term(x1, x2, lin, w, b, a, head: HeadConfig, trace_output, method, precision):
    """What one chunk adds to the accumulator: float Θ ("float") or int32 counts (exact methods)."""
    if method == "float":
        return _head_chunk(x1, x2, lin, w, b, a, head.sigma_w, head.sigma_b, trace_output, head.train_readout,
                           precision)
    return _count_chunk(x1, x2, w, b, a, head.sigma_w, head.sigma_b, trace_output, method, precision)


def _accumulator(x1, x2, head: HeadConfig, trace_output, method):
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    shape = (x1.shape[0], n2) + (() if trace_output else (head.out_dim, head.out_dim))
    return jnp.zeros(shape, x1.dtype if method == "float" else jnp.int32)


def _finish(total, lin, head: HeadConfig, trace_output, method):
    """Θ = σ_a² total / m ("float"), or (σ_a²/m) P ⊙ lin from the exact counts P."""
    if method == "float":
        return head.sigma_a**2 * total / head.width
    factor = lin if trace_output else lin[:, :, None, None]
    return (head.sigma_a**2 / head.width) * total.astype(lin.dtype) * factor


def _ensure_head_fits(x1, x2, head: HeadConfig, chunk: int, trace_output: bool, params_given: bool, dtype,
                      budget, caller: str) -> None:
    """Refuse (``MemoryPlanError``) before allocating when the kernel would not fit in ``budget``.

    The float method's estimate serves the exact ones too (their int32 counts
    and int8 / bit-packed patterns are no larger than its float buffers).
    """
    memory.ensure_fits(memory.head_ntk_memory(
        x1.shape[0], None if x2 is None else x2.shape[0], x1.shape[1], head.width,
        width_chunk=chunk, out_dim=head.out_dim, trace_output=trace_output,
        train_readout=head.train_readout, use_bias=head.use_bias, params_given=params_given, dtype=dtype.name,
    ), budget, budget_of=caller)


def _linear_part(x1, x2, head: HeadConfig, precision=None):
    """σ_w² X₁X₂ᵀ/d (+ σ_b² if b trained), ``(n1, n2)``, at the policy ``precision``."""
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
    shape = array.shape[:axis] + (n_chunks, chunk) + array.shape[axis + 1 :]
    return jnp.moveaxis(array.reshape(shape), axis, 0)


@functools.partial(jax.jit, static_argnames=("head", "trace_output", "chunk", "method", "precision"))
def _structured(x1, x2, w, b, a, *, head: HeadConfig, trace_output: bool, chunk: int, method: str = "float",
                precision: str = "highest"):
    lin = _linear_part(x1, x2, head, precision)
    # Padded units have w = 0 and a = 0: H = σ_b b·0-pad = 0 → S = 0, relu = 0.
    ws = _chunked(w, 1, chunk)
    bs = None if b is None else _chunked(b, 0, chunk)
    as_ = _chunked(a, 0, chunk)

    def body(total, xs):
        w_c, b_c, a_c = xs
        return total + _chunk_term(x1, x2, lin, w_c, b_c, a_c, head, trace_output, method, precision), None

    total, _ = jax.lax.scan(body, _accumulator(x1, x2, head, trace_output, method), (ws, bs, as_))
    return _finish(total, lin, head, trace_output, method)


def head_ntk_fn(head_variables: dict, head: HeadConfig, x1: jax.Array, x2: jax.Array | None = None, *,
                method: str = "auto", precision=None) -> jax.Array:
    """Pure, jit-able core of :func:`structured_head_ntk`, output-traced ``(n1, n2)``.

    No checks and no memory planning; differentiable in the inputs (the ReLU
    pattern S = 1[H > 0] has zero derivative, so the exact integer methods
    differentiate too), as attacks on the kernel need. ``method`` and
    ``precision``: as in :func:`structured_head_ntk` (an exact method takes
    the readout to be ±1, as ``MLPHead`` draws it when ``train_readout`` is off).
    """
    b = head_variables["b"] if head.use_bias else None
    return _structured(x1, x2, head_variables["W"], b, head_variables["a"], head=head, trace_output=True,
                       chunk=min(DEFAULT_WIDTH_CHUNK, head.width), method=resolve_method(method, head),
                       precision=resolve_precision(precision))


def _check_signs(a, method: str) -> None:
    """An exact method needs the readout's entries to be ±1 (checked on concrete arrays; skipped while traced)."""
    try:
        values = np.asarray(a)
    except jax.errors.TracerArrayConversionError:
        return
    if not np.all(np.abs(values) == 1):
        raise InputValueError(f"head_variables['a']: expected entries ±1 (the fixed readout) for method={method!r}, "
                         f"got values in [{values.min():.3g}, {values.max():.3g}]; use method='float'")


def structured_head_ntk(
    head_variables: dict,
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
        plan before anything is allocated (``kernelattn.memory``); None → half
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
    return _structured(x1, x2, w, b, a, head=head, trace_output=bool(trace_output), chunk=chunk, method=method,
                       precision=precision)


def _draw_chunk(key, index, d, chunk, width, head: HeadConfig, dtype):
    """Parameters of hidden units [index·chunk, (index+1)·chunk), units ≥ width zeroed."""
    k_w, k_b, k_a = jax.random.split(jax.random.fold_in(key, index), 3)
    alive = (index * chunk + jnp.arange(chunk)) < width
    w = jax.random.normal(k_w, (d, chunk), dtype) * alive
    b = jax.random.normal(k_b, (chunk,), dtype) * alive if head.use_bias else None
    shape = (chunk, head.out_dim)
    a = jax.random.normal(k_a, shape, dtype) if head.train_readout else random_signs(k_a, shape, dtype)
    return w, b, a * alive[:, None]


@functools.partial(jax.jit, static_argnames=("head", "trace_output", "chunk", "method", "precision"))
def _streaming(key, x1, x2, *, head: HeadConfig, trace_output: bool, chunk: int, method: str = "float",
               precision: str = "highest"):
    lin = _linear_part(x1, x2, head, precision)
    n_chunks = -(-head.width // chunk)

    def body(index, total):
        w, b, a = _draw_chunk(key, index, x1.shape[1], chunk, head.width, head, x1.dtype)
        return total + _chunk_term(x1, x2, lin, w, b, a, head, trace_output, method, precision)

    total = jax.lax.fori_loop(0, n_chunks, body, _accumulator(x1, x2, head, trace_output, method))
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
    return _streaming(key, x1, x2, head=head, trace_output=bool(trace_output), chunk=chunk, method=method,
                      precision=precision)


def head_variables(variables: dict) -> dict:
    """Flatten a kernelattn model's head variables (params + constants) into one dict."""
    merged = dict(variables["params"]["head"])
    merged.update(variables.get("constants", {}).get("head", {}))
    return merged


def as_numpy(kernel: jax.Array) -> np.ndarray:
    """Host copy of a kernel matrix."""
    return np.asarray(kernel)
