"""The generic empirical NTK of any model ``f(params, x) -> (n, C)``, by JAX autodiff (docs/math.md §7).

Θ_m(x, x') = Σ_p ∂f(x)/∂p · ∂f(x')/∂p, by one of three routes:

- "jacobian": contract the two Jacobians (optionally built row by row);
- "ntvp": NTK-vector products J₁(J₂ᵀ v) over the output basis, which never
  stores a Jacobian;
- "factored": structured derivatives read off the model's jaxpr
  (``kernels/factored.py``): every weight used once in a matmul h = u W
  contributes (u·u')(∂f/∂h·∂f'/∂h') without its Jacobian, the fastest route
  for models that act row by row.

:func:`empirical_ntk` checks its inputs and refuses (``MemoryPlanError``,
``kernels.memory``) before allocating a kernel that would not fit;
:func:`autodiff_ntk_fn` is its pure, jit-able core on ``(n, d)`` inputs and
``(n, C)`` outputs, the building block of the neural-tangents-style
``empirical_ntk_fn`` (``ntk_fn.py``); :func:`autodiff_memory` its memory plan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kernelattn._precision import kernel_inputs, precision_policy, resolve_precision
from kernelattn._validation import check_choice, check_int
from kernelattn.kernels import factored, memory

__all__ = [
    "IMPLEMENTATIONS",
    "ApplyFn",
    "ModelApply",
    "autodiff_memory",
    "autodiff_ntk_fn",
    "empirical_ntk",
    "model_apply_fn",
]

ApplyFn = Callable[[dict, jax.Array], jax.Array]
IMPLEMENTATIONS = ("jacobian", "ntvp", "factored")


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
    return jax.tree_util.tree_map(lambda j: j.reshape((n_blocks * row_block, *j.shape[2:]))[:n], blocks)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _jacobian_ntk(apply_fn, params, x1, x2, trace_output, row_block, precision="highest"):
    """``x2 is None`` means x2 = x1: one Jacobian is computed and contracted with itself.

    Traced inside ``precision_policy(precision)``: the model's matmuls that
    name no precision take the policy's, and so do their transposes.
    """
    with precision_policy(precision):
        j1 = _jacobian(apply_fn, params, x1, row_block)
        j2 = j1 if x2 is None else _jacobian(apply_fn, params, x2, row_block)
        leaves = jax.tree_util.tree_map(lambda a, b: factored.contract_jacobians(a, b, trace_output, precision), j1, j2)
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
    _ensure_autodiff_fits(
        apply_fn, params, x1, x2, bool(trace_output), implementation, row_block, dtype, budget, precision
    )
    return autodiff_ntk_fn(
        apply_fn, trace_output=trace_output, implementation=implementation, row_block=row_block, precision=precision
    )(params, x1, x2)


def autodiff_ntk_fn(
    apply_fn: ApplyFn,
    *,
    trace_output: bool = True,
    implementation: str = "jacobian",
    row_block: int | None = None,
    precision=None,
) -> Callable:
    """Pure, jit-able form of :func:`empirical_ntk` (``empirical_ntk_fn`` up to 0.1.0).

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


def _ensure_autodiff_fits(
    apply_fn, params, x1, x2, trace_output, implementation, row_block, dtype, budget, precision="highest"
) -> None:
    """Refuse (``MemoryPlanError``) before allocating when the kernel would not fit in ``budget``.

    A refused "jacobian" or "ntvp" kernel names what ``implementation="factored"``
    would need instead (it stores no Jacobian and no n²·C·A cotangents).
    """
    n1, n2, d = x1.shape[0], None if x2 is None else x2.shape[0], x1.shape[1]
    estimate = functools.partial(autodiff_memory, apply_fn, params, n1, n2, d, trace_output=trace_output,
                                 row_block=row_block, dtype=dtype, precision=precision)  # fmt: skip
    if implementation == "factored":
        memory.ensure_fits(estimate(implementation="factored"), budget, budget_of="empirical_ntk")
        return
    options: tuple[str, ...] = ()
    if not memory.fits(estimate(implementation=implementation), budget):
        factored_estimate = estimate(implementation="factored")
        verdict = ", which fits" if memory.fits(factored_estimate, budget) else ""
        options = (
            f"implementation='factored' (needs ≈{memory.format_bytes(factored_estimate.total)} here{verdict}; "
            "for models that act on each row alone, as every kernelattn model does for a fixed context)",
        )
    memory.ensure_fits(estimate(implementation=implementation), budget, options=options, budget_of="empirical_ntk")


def autodiff_memory(
    apply_fn: ApplyFn,
    params,
    n1: int,
    n2: int | None,
    d: int,
    *,
    implementation: str,
    trace_output: bool = True,
    row_block: int | None = None,
    dtype="float32",
    precision="highest",
) -> memory.MemoryEstimate:
    """Peak-memory estimate of :func:`autodiff_ntk_fn` on ``(n1, d)`` and ``(n2, d)`` inputs (n2 None: x2 = x1).

    From shapes alone: "jacobian" and "ntvp" by ``memory.autodiff_ntk_memory``,
    "factored" by ``memory.factored_ntk_memory`` from the model's plan.
    """
    dtype = jnp.dtype(dtype)
    leaves = jax.tree_util.tree_leaves(params)
    if implementation != "factored":
        row = jax.ShapeDtypeStruct((1, d), dtype)
        return memory.autodiff_ntk_memory(
            n1,
            n2,
            n_params=sum(p.size for p in leaves),
            out_dim=jax.eval_shape(apply_fn, params, row).shape[-1],
            implementation=implementation,
            trace_output=trace_output,
            row_block=row_block,
            dtype=dtype.name,
        )
    plan = factored.make_plan(apply_fn, params, d, dtype, precision)
    return memory.factored_ntk_memory(
        n1,
        n2,
        factor_size=plan.factor_size(),
        pair_size=plan.pair_size(),
        rest_params=sum(leaves[i].size for i in plan.rest),
        out_dim=plan.out_dim,
        activations=plan.activations,
        trace_output=trace_output,
        dtype=dtype.name,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class ModelApply:
    """``f(params, x) -> (n, C)`` of a kernelattn Flax model, its constants and context closed over.

    Compared and hashed by identity, as a function is (it is a static argument
    of the jitted kernels). It keeps the model, so ``empirical_ntk_fn``'s
    "structured" route can recognise the two-layer head models.

    Attributes:
      model: the Flax module.
      constants: its variables other than ``"params"`` (e.g. the fixed readout).
      context: ``(n, d)`` training set the attention attends over, or None.
    """

    model: object
    constants: dict
    context: jax.Array | None = None

    def __call__(self, params, x: jax.Array) -> jax.Array:
        return self.model.apply({"params": params, **self.constants}, x, self.context)  # type: ignore[attr-defined]


def model_apply_fn(model, variables: dict, context: jax.Array | None = None) -> tuple[ApplyFn, dict]:
    """``(apply_fn, params)`` for a kernelattn Flax model, constants and context closed over.

    Args:
      model: a kernelattn model (``TwoLayerReLU``, ``AttentionMLP``, ``QKVAttentionMLP``).
      variables: its Flax variables (``"params"`` and optional ``"constants"``).
      context: ``(n, d)`` training set the attention attends over (``None``:
        each call attends over its own inputs).

    Returns:
      ``(ModelApply, params)``: ``apply_fn(params, x) -> (n, C)`` and the trainable parameters.
    """
    variables = dict(variables)
    params = variables.pop("params")
    return ModelApply(model, variables, context), params
