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
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernelattn.kernels import memory
from kernelattn.errors import InputValueError
from kernelattn.kernels import exact, factored
from kernelattn._precision import kernel_inputs, lax_precision, precision_policy, resolve_precision
from kernelattn._validation import check_choice, check_int
from kernelattn.models import HeadConfig, head_preactivations, random_signs

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
        plan before anything is allocated (``kernelattn.kernels.memory``); None → half
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


def head_unit_ntk(h1: jax.Array, h2: jax.Array, lin: jax.Array, a: jax.Array, head: HeadConfig, *,
                  trace_output: bool = True, precision=None) -> jax.Array:
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
    shape = array.shape[:axis] + (n_chunks, chunk) + array.shape[axis + 1 :]
    return jnp.moveaxis(array.reshape(shape), axis, 0)


@functools.partial(jax.jit, static_argnames=("head", "trace_output", "chunk", "method", "precision"))
def _structured(x1, x2, w, b, a, *, head: HeadConfig, trace_output: bool, chunk: int, method: str = "float",
                precision: str = "highest"):
    lin = head_linear_part(x1, x2, head, precision=precision)
    # Padded units have w = 0 and a = 0: H = σ_b b·0-pad = 0 → S = 0, relu = 0.
    ws = _chunked(w, 1, chunk)
    bs = None if b is None else _chunked(b, 0, chunk)
    as_ = _chunked(a, 0, chunk)

    def body(total, xs):
        w_c, b_c, a_c = xs
        return total + _unit_term(x1, x2, None, lin, w_c, b_c, a_c, head, trace_output, method, precision), None

    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    total, _ = jax.lax.scan(body, _accumulator(x1.shape[0], n2, head, trace_output, method, x1.dtype),
                            (ws, bs, as_))
    return _finish(total, lin, head, trace_output, method)


def head_ntk_fn(head_variables: dict, head: HeadConfig, x1: jax.Array, x2: jax.Array | None = None, *,
                trace_output: bool = True, width_chunk: int = DEFAULT_WIDTH_CHUNK, method: str = "auto",
                precision=None) -> jax.Array:
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
    return _structured(x1, x2, w, b, head_variables["a"], head=head, trace_output=bool(trace_output),
                       chunk=min(int(width_chunk), w.shape[1]), method=resolve_method(method, head),
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
    return _structured(x1, x2, w, b, a, head=head, trace_output=bool(trace_output), chunk=chunk, method=method,
                       precision=precision)


def draw_head_units(key: jax.Array, index, d: int, chunk: int, n_units, head: HeadConfig, dtype
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


def head_ntk_blocks(key: jax.Array, x1: jax.Array, x2: jax.Array | None, lin: jax.Array, head: HeadConfig, *,
                    chunk: int, first, steps, stride: int = 1, n_units=None, n2: int | None = None,
                    trace_output: bool = True, total: jax.Array | None = None, method: str = "float",
                    precision=None) -> jax.Array:
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
def _streaming(key, x1, x2, *, head: HeadConfig, trace_output: bool, chunk: int, method: str = "float",
               precision: str = "highest"):
    lin = head_linear_part(x1, x2, head, precision=precision)
    total = head_ntk_blocks(key, x1, x2, lin, head, chunk=chunk, first=0, steps=-(-head.width // chunk),
                            trace_output=trace_output, method=method, precision=precision)
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
