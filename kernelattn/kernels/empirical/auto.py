"""The routes of ``empirical_ntk_fn`` and the cost model that picks one (docs/math.md §7).

Four routes compute the same kernel of ``g(params, z (n, D)) -> (n, C)``
(``layout.flat_model``), block by block:

- "jacobian": contract the Jacobians (``autodiff.py``), row by row under
  ``vmap_axes=0``, through the whole batch under ``vmap_axes=None``;
- "ntvp": NTK-vector products (``autodiff.py``);
- "factored": structured derivatives read off the jaxpr (``factored.py``),
  only under ``vmap_axes=0`` (it applies the model to each row alone);
- "structured": the head's closed form (``head.py``), only for a
  ``TwoLayerReLU`` or ``AttentionMLP`` given as ``model_apply_fn(model, ...)``
  (its NTK is the head's on the head inputs: the attention has no parameters).

:func:`plan_route` gives each route a block size from the memory plan
(``kernels.memory``) and a cost in floating-point operations from shapes:
with F the flops of one row's forward pass (its matmuls, 2·multiply-adds,
plus one per intermediate value), P parameters, C outputs and a block pair
of b1 × b2 rows (k = 1 traced, C untraced),

    jacobian   3·C·F·rows (·rows again through the whole batch) + 2·b1·b2·C·k·P
    ntvp       3·C·F·b2·(b1 + b2)
    factored   (1 + 2C)·F·rows + Σ_sites 2·b1·b2·r²·(d_in + C·k·d_out) + 2·b1·b2·C·k·P_rest
    structured F·rows + 2·b1·b2·(d + k·k·m)

summed over the block pairs. :func:`choose` takes the cheapest route that fits.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from kernelattn._precision import precision_policy
from kernelattn.errors import InputValueError
from kernelattn.kernels import factored, memory
from kernelattn.kernels.empirical.autodiff import ModelApply, autodiff_memory, autodiff_ntk_fn
from kernelattn.kernels.empirical.head import DEFAULT_WIDTH_CHUNK, head_ntk_fn, head_variables
from kernelattn.kernels.empirical.layout import InputSpec, blocks
from kernelattn.models import AttentionMLP, TwoLayerReLU
from kernelattn.transforms import attend

__all__ = ["ROUTES", "Choice", "Route", "choose", "not_applicable", "plan_route", "route_kernel"]

ROUTES = ("jacobian", "ntvp", "factored", "structured")


@dataclasses.dataclass(frozen=True)
class Route:
    """One route, planned for one call.

    Attributes:
      implementation: "jacobian", "ntvp", "factored" or "structured".
      batch_size: rows per block (None: no split).
      flops: estimated floating-point operations of the whole kernel.
      peak: estimated peak bytes of the largest block pair.
      refused: why the route cannot run here (None: it can).
      estimate: the memory estimate that did not fit, when that is why.
    """

    implementation: str
    batch_size: int | None = None
    flops: float = math.inf
    peak: int = 0
    refused: str | None = None
    estimate: memory.MemoryEstimate | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Choice:
    """What ``empirical_ntk_fn`` runs for given inputs (``ntk.explain(x1, x2, params)``).

    Attributes:
      implementation: the route that runs.
      batch_size: its rows per block (None: the whole kernel at once).
      routes: every route considered, with its cost or why it was refused.
    """

    implementation: str
    batch_size: int | None
    routes: tuple[Route, ...]

    def __str__(self) -> str:
        lines = [f"implementation={self.implementation!r}, batch_size={self.batch_size}"]
        for r in self.routes:
            verdict = r.refused or (
                f"≈{r.flops:.3g} flops, peak ≈{memory.format_bytes(r.peak)}, batch_size={r.batch_size}"
            )
            lines.append(f"  {r.implementation:<10} {verdict}")
        return "\n".join(lines)


def _structured_model(f) -> bool:
    return isinstance(f, ModelApply) and type(f.model) in (TwoLayerReLU, AttentionMLP)


def not_applicable(implementation: str, f, spec: InputSpec, vmap_axes) -> str | None:
    """Why ``implementation`` cannot compute the NTK of ``f`` here, in one line (None: it can)."""
    if implementation == "factored" and vmap_axes is None:
        return "implementation: 'factored' applies the model to each row alone and needs vmap_axes=0, got None"
    if implementation == "structured" and not (_structured_model(f) and spec.is_matrix):
        return (
            "implementation: 'structured' needs f = model_apply_fn(model, variables, context)[0] for a "
            f"TwoLayerReLU or AttentionMLP model and (n, d) inputs, got {type(f).__name__}"
        )
    return None


def _head_inputs(f: ModelApply, x: jax.Array) -> jax.Array:
    if isinstance(f.model, TwoLayerReLU):
        return x
    model: AttentionMLP = f.model  # type: ignore[assignment]
    return attend(x, x if f.context is None else f.context, model.attention, precision=model.precision)


def route_kernel(implementation: str, g, params, z1, z2, *, trace: bool, vmap0: bool, precision: str) -> jax.Array:
    """One block of the kernel of ``g`` by ``implementation``: ``(b1, b2)`` traced, else ``(b1, b2, C, C)``.

    ``z2 = None`` means z1 (what is shared is computed once).
    """
    if implementation == "structured":
        with precision_policy(precision):
            h1, h2 = _head_inputs(g, z1), None if z2 is None else _head_inputs(g, z2)
            variables = head_variables({"params": params, **g.constants})
            return head_ntk_fn(variables, g.model.head, h1, h2, trace_output=trace, precision=precision)
    row_block = z1.shape[0] if vmap0 and implementation == "jacobian" else None
    ntk = autodiff_ntk_fn(
        g, trace_output=trace, implementation=implementation, row_block=row_block, precision=precision
    )
    return ntk(params, z1, z2)


def _dot_flops(jaxpr) -> int:
    """2·multiply-adds of every ``dot_general`` in ``jaxpr`` and the jaxprs nested in its equations."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                total += _dot_flops(inner)
    return total


def _pair_flops(
    route: str, plan: factored.Plan, f, sizes: tuple[int, int], b1: int, b2: int | None, trace, vmap0
) -> float:
    """Estimated flops of one block pair (b2 None: x2 = x1); the formulas of the module docstring."""
    n_params, d = sizes
    c = plan.out_dim
    k = 1 if trace else c
    row = _dot_flops(plan.closed_jaxpr.jaxpr) + plan.activations
    rows = b1 if b2 is None else b1 + b2
    m = b1 if b2 is None else b2
    if route == "jacobian":
        passes = rows if vmap0 else b1 * b1 + (0 if b2 is None else b2 * b2)
        return 3 * c * row * passes + 2 * b1 * m * c * k * n_params
    if route == "ntvp":
        return 3 * c * row * m * (b1 + m)
    if route == "factored":
        sites = sum(s.rows**2 * (s.d_in + c * k * s.d_out) for s in plan.sites)
        rest = n_params - sum(s.d_in * s.d_out for s in plan.sites)
        return (1 + 2 * c) * row * rows + 2 * b1 * m * (sites + c * k * rest)
    width = f.model.head.width
    return row * rows + 2 * b1 * m * (d + k * k * width)


def _pair_memory(route, g, params, spec, b1, b2, trace, vmap0, dtype, precision) -> memory.MemoryEstimate:
    if route == "structured":
        head = g.model.head
        return memory.head_ntk_memory(
            b1, b2, spec.width, head.width, width_chunk=DEFAULT_WIDTH_CHUNK, out_dim=head.out_dim,
            trace_output=trace, train_readout=head.train_readout, use_bias=head.use_bias, params_given=True,
            dtype=dtype,
        )  # fmt: skip
    return autodiff_memory(
        g, params, b1, b2, spec.width, implementation=route, trace_output=trace,
        row_block=b1 if vmap0 and route == "jacobian" else None, dtype=dtype, precision=precision,
    )  # fmt: skip


def _pairs(n1: int, n2: int | None, size: int | None) -> list[tuple[int, int | None]]:
    """Row counts of every block pair; a diagonal block of a self-kernel (n2 None) has b2 = None."""
    rows1 = [s.stop - s.start for s in blocks(n1, size)]
    if n2 is None:
        return [(a, None if i == j else b) for i, a in enumerate(rows1) for j, b in enumerate(rows1)]
    return [(a, b) for a in rows1 for b in (s.stop - s.start for s in blocks(n2, size))]


def _sizes(n: int) -> list[int]:
    """Candidate block sizes, largest first: ⌈n/k⌉ for k = 1, 2, 4, … down to 1."""
    sizes: list[int] = []
    k = 1
    while not sizes or sizes[-1] > 1:
        sizes.append(-(-n // k))
        k *= 2
    return sizes


def plan_route(route, f, g, params, spec, n1, n2, *, trace, vmap_axes, batch_size, budget, precision) -> Route:
    """``route`` planned for ``(n1, …)`` × ``(n2, …)`` inputs (n2 None: x2 = x1): block size, flops, peak.

    ``batch_size=None`` under ``vmap_axes=0``: the largest ⌈n/k⌉ (k = 1, 2, 4, …)
    whose largest block pair fits ``budget`` (None → half the free memory);
    under ``vmap_axes=None`` rows are never split and memory is not checked
    (as in neural-tangents). A route that cannot run comes back ``refused``.
    """
    reason = not_applicable(route, f, spec, vmap_axes)
    if reason is not None:
        return Route(route, refused=reason.split(": ", 1)[1])
    dtype = jax.numpy.result_type(*spec.dtypes).name
    plan = factored.make_plan(g, params, spec.width, dtype, precision)
    sizes = (sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)), spec.width)
    vmap0 = vmap_axes == 0
    n = max(n1, n2 or 0)
    for size in [batch_size] if batch_size is not None or not vmap0 else _sizes(n):
        pairs = _pairs(n1, n2, size)
        largest = max(pairs, key=lambda p: p[0] * (p[0] if p[1] is None else p[1]))
        estimate = _pair_memory(route, g, params, spec, *largest, trace, vmap0, dtype, precision)
        flops = sum(_pair_flops(route, plan, f, sizes, b1, b2, trace, vmap0) for b1, b2 in pairs)
        planned = Route(route, None if size is None or size >= n else size, float(flops), estimate.total)
        ok, where, _, _ = memory.budget_verdict(estimate, budget)
        if ok or not vmap0:
            return planned
    refusal = memory.refusal_message(estimate, where, ("a smaller batch_size",), budget_of="empirical_ntk_fn")
    return dataclasses.replace(planned, refused=f"refused by the memory plan: {refusal}", estimate=estimate)


def choose(routes: list[Route]) -> Choice:
    """The cheapest route that can run.

    Raises:
      MemoryPlanError: every applicable route was refused by the memory plan.
      InputValueError: naming ``implementation``, when no route applies.
    """
    runnable = [r for r in routes if r.refused is None]
    if runnable:
        best = min(runnable, key=lambda r: r.flops)
        return Choice(best.implementation, best.batch_size, tuple(routes))
    too_big = [r for r in routes if r.estimate is not None]
    if too_big:
        smallest = min(too_big, key=lambda r: r.peak)
        raise memory.MemoryPlanError(smallest.refused or "", smallest.estimate)
    raise InputValueError(f"implementation: {routes[-1].refused}")
