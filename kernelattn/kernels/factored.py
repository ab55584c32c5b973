"""Structured derivatives for any model: the empirical NTK without the Jacobians of its matmul weights.

For a parameter W whose only use is the weight of a matmul h = u W inside the
model (u: ``(r, d_in)``, e.g. r tokens of one input row; W: ``(d_in, d_out)``),
the gradient of output c at input x factorizes through h:

    ∂f_c(x)/∂W = uᵀ g_c,     g_c = ∂f_c(x)/∂h   ``(r, d_out)``,

so its NTK term needs only the factors, never the ``d_in × d_out`` gradient:

    Θ_W(x, x')_{cc'} = Σ_{s,t} (u_s · u'_t)(g_{c,s} · g'_{c',t}).

This is Novak et al. (2022, "Fast finite width NTK")'s structured-derivatives
rule for matmuls, found in the model's jaxpr: per input row it costs one
forward pass and C backward passes to the matmul outputs, and the kernel
O(n² r² (d_in + C d_out)) instead of O(n² C d_in d_out). Every other parameter
(used twice, behind an explicit transpose or inside a nested ``jit``, or where the
factors would be larger than the gradient: r² (d_in + C d_out) > C d_in d_out,
e.g. a weight applied to a long fixed context) gets its per-row Jacobian,
contracted as usual.

Semantics: the model is applied to each input row alone (neural-tangents'
``vmap_axes=0``), ``f(params, x[i:i+1])[0]``; for a model that mixes rows (an
attention over its own batch, ``context=None``) that is a different function
from the batched call: use the "jacobian" or "ntvp" implementation there.

The jaxpr comes from ``jax.make_jaxpr`` and is evaluated equation by equation
with ``Primitive.bind``, as in JAX's guide to custom jaxpr interpreters, using
the types JAX exports for extensions (``jax.extend.core``); nothing in JAX is
modified. The two places where jax 0.4.25 and current jax differ are bridged
below (the ``Literal`` import and ``_bind``), and the tests run on both.

Precision: the plan is traced inside ``precision_policy(precision)``, so the
model's matmuls carry the policy's precision (``Precision.HIGHEST`` unless
"fast") and are re-bound with it; the contractions here use it too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kernelattn._precision import lax_precision, precision_policy, resolve_precision
from kernelattn.errors import InputValueError

try:  # the jaxpr types' public home in current JAX
    from jax.extend.core import ClosedJaxpr, Literal
except ImportError:  # jax 0.4.25 (the legacy neural-tangents environment) still exports them from jax.core
    from jax.core import ClosedJaxpr, Literal  # type: ignore[attr-defined, no-redef]  # typed against current JAX

ApplyFn = Callable[[dict, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class MatmulSite:
    """A weight whose NTK term is taken from factors.

    Attributes:
      leaf: its position among the flattened parameter leaves.
      eqn: index of its ``dot_general`` among the jaxpr's equations.
      rows: r, rows of the matmul's input u for one input row.
      d_in, d_out: the weight's input and output sizes.
    """

    leaf: int
    eqn: int
    rows: int
    d_in: int
    d_out: int


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """What the factored NTK of one model computes, read off its per-row jaxpr.

    Compared and hashed by identity: it is a static argument of the jitted
    kernel, and :func:`make_plan` returns the same plan for the same model.

    Attributes:
      closed_jaxpr: the jaxpr of ``(leaves, x_row (1, d)) -> (1, C)``.
      sites: the factored weights.
      rest: positions of the leaves that get per-row Jacobians.
      out_dim: C.
      activations: sizes of all intermediate values of one row (for memory planning).
    """

    closed_jaxpr: ClosedJaxpr
    sites: tuple[MatmulSite, ...]
    rest: tuple[int, ...]
    out_dim: int
    activations: int

    def factor_size(self) -> int:
        """Numbers stored per input row for the factors: Σ r (d_in + C d_out)."""
        return sum(s.rows * (s.d_in + self.out_dim * s.d_out) for s in self.sites)

    def pair_size(self) -> int:
        """Largest per-pair intermediate of the contraction: max r² (the token-pair products)."""
        return max((s.rows**2 for s in self.sites), default=1)


# ------------------------------------------------------------------ reading the jaxpr


def _is_var(atom) -> bool:
    return not isinstance(atom, Literal)


def _use_counts(jaxpr) -> dict:
    counts: dict = {}
    for atom in [v for eqn in jaxpr.eqns for v in eqn.invars] + list(jaxpr.outvars):
        if _is_var(atom):
            counts[atom] = counts.get(atom, 0) + 1
    return counts


def _as_site(eqn, index: int, leaf_of: dict, uses: dict, out_dim: int) -> MatmulSite | None:
    """The site of ``eqn`` if it is ``u W`` with W a once-used leaf and factors cheaper than ∂f/∂W."""
    if eqn.primitive.name != "dot_general" or len(eqn.invars) != 2:
        return None
    lhs, rhs = eqn.invars
    if not (_is_var(rhs) and rhs in leaf_of and uses.get(rhs) == 1 and _is_var(lhs)):
        return None
    (contract_l, contract_r), (batch_l, batch_r) = eqn.params["dimension_numbers"]
    if batch_l or batch_r or rhs.aval.ndim != 2 or tuple(contract_l) != (lhs.aval.ndim - 1,) or len(contract_r) != 1:
        return None
    d_in = rhs.aval.shape[contract_r[0]]
    d_out = rhs.aval.shape[1 - contract_r[0]]
    rows = math.prod(lhs.aval.shape[:-1])
    if rows**2 * (d_in + out_dim * d_out) > out_dim * d_in * d_out:
        return None
    return MatmulSite(leaf_of[rhs], index, rows, d_in, d_out)


def make_plan(apply_fn: ApplyFn, params, d: int, dtype, precision=None) -> Plan:
    """Trace ``apply_fn`` on one row of width ``d`` and decide which weights are factored.

    Traced inside ``precision_policy(precision)`` (None → the policy in force),
    so matmuls that name no precision take the policy's. Cached on (apply_fn,
    the parameters' structure, shapes and dtypes, d, dtype, precision).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = tuple((tuple(jnp.shape(leaf)), jnp.result_type(leaf).name) for leaf in leaves)
    return _make_plan(apply_fn, treedef, specs, int(d), jnp.dtype(dtype).name, resolve_precision(precision))


@functools.lru_cache(maxsize=16)  # a plan keeps its apply_fn (and what it closes over) alive
def _make_plan(apply_fn: ApplyFn, treedef, specs: tuple, d: int, dtype: str, precision: str = "highest") -> Plan:
    leaf_specs = [jax.ShapeDtypeStruct(shape, leaf_dtype) for shape, leaf_dtype in specs]
    row_spec = jax.ShapeDtypeStruct((1, d), dtype)
    with precision_policy(precision):
        closed = jax.make_jaxpr(lambda ls, x: apply_fn(jax.tree_util.tree_unflatten(treedef, ls), x))(
            leaf_specs, row_spec
        )
    jaxpr = closed.jaxpr
    if len(jaxpr.outvars) != 1 or jaxpr.outvars[0].aval.ndim != 2 or jaxpr.outvars[0].aval.shape[0] != 1:
        raise InputValueError(
            f"apply_fn: expected one (n, C) output array, got {[v.aval for v in jaxpr.outvars]} for n = 1"
        )
    out_dim = jaxpr.outvars[0].aval.shape[1]
    n_leaves = len(specs)
    leaf_of = {var: i for i, var in enumerate(jaxpr.invars[:n_leaves])}
    uses = _use_counts(jaxpr)
    sites = tuple(
        site
        for index, eqn in enumerate(jaxpr.eqns)
        if (site := _as_site(eqn, index, leaf_of, uses, out_dim)) is not None
    )
    factored = {site.leaf for site in sites}
    rest = tuple(i for i in range(n_leaves) if i not in factored)
    activations = sum(math.prod(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars if hasattr(v.aval, "shape"))
    return Plan(closed, sites, rest, out_dim, activations)


# ------------------------------------------------------------------ evaluating with taps


def _bind(eqn, invals: list):
    """Apply one equation's primitive, as ``jax.core.eval_jaxpr`` does."""
    params = eqn.primitive.get_bind_params(eqn.params)
    # jax 0.4.x returns (sub-functions, params); later jax returns the params alone.
    subfuns, params = params if isinstance(params, tuple) else ((), params)
    return eqn.primitive.bind(*subfuns, *invals, **params)


def _evaluate_with_taps(closed_jaxpr, args: list, sites: tuple[MatmulSite, ...], deltas: list):
    """Evaluate the jaxpr; at each site record the matmul input u and add δ to its output h.

    Returns:
      ``(output, [u per site])``; ∂output/∂δ at δ = 0 is ∂f/∂h.
    """
    jaxpr = closed_jaxpr.jaxpr
    env = dict(zip(jaxpr.constvars, closed_jaxpr.consts))
    env.update(zip(jaxpr.invars, args))
    slot = {site.eqn: k for k, site in enumerate(sites)}
    taps = [None] * len(sites)

    def read(atom):
        return env[atom] if _is_var(atom) else atom.val

    for index, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        outvals = _bind(eqn, invals)
        if index in slot:
            taps[slot[index]] = invals[0]
            outvals = outvals + deltas[slot[index]]
        env.update(zip(eqn.outvars, outvals if eqn.primitive.multiple_results else [outvals]))
    return read(jaxpr.outvars[0]), taps


def _row_factors(plan: Plan, leaves: list, x_row: jax.Array):
    """Factors of one input row ``(d,)``.

    Returns:
      ``(us, gs, rest_jacobians)``: per site u ``(r, d_in)`` and g ``(C, r, d_out)``;
      per rest leaf ∂f/∂p ``(C, *p.shape)``.
    """
    jaxpr = plan.closed_jaxpr.jaxpr
    zero_deltas = [
        jnp.zeros(jaxpr.eqns[s.eqn].outvars[0].aval.shape, jaxpr.eqns[s.eqn].outvars[0].aval.dtype) for s in plan.sites
    ]

    def output(rest_leaves, deltas):
        args = list(leaves)
        for i, leaf in zip(plan.rest, rest_leaves):
            args[i] = leaf
        out, taps = _evaluate_with_taps(plan.closed_jaxpr, [*args, x_row[None]], plan.sites, deltas)
        return out[0], taps

    rest_leaves = [leaves[i] for i in plan.rest]
    (rest_jac, gs), taps = jax.jacrev(output, argnums=(0, 1), has_aux=True)(rest_leaves, zero_deltas)
    us = [u.reshape(site.rows, site.d_in) for u, site in zip(taps, plan.sites)]
    gs = [g.reshape(plan.out_dim, site.rows, site.d_out) for g, site in zip(gs, plan.sites)]
    return us, gs, rest_jac


def _contract_site(u1, g1, u2, g2, trace_output: bool, precision=None) -> jax.Array:
    """Σ_{s,t} (u₁_s·u₂_t)(g₁_cs·g₂_dt) for u ``(n, r, d_in)``, g ``(n, C, r, d_out)``."""
    hi = lax_precision(precision)
    n1, c, rows, _ = g1.shape
    if rows == 1:  # the common case, as plain matmuls
        uu = jnp.matmul(u1[:, 0], u2[:, 0].T, precision=hi)
        if trace_output:
            return uu * jnp.matmul(g1.reshape(n1, -1), g2.reshape(g2.shape[0], -1).T, precision=hi) / c
        return uu[:, :, None, None] * jnp.einsum("icb,jdb->ijcd", g1[:, :, 0], g2[:, :, 0], precision=hi)
    uu = jnp.einsum("isa,jta->ijst", u1, u2, precision=hi)
    if trace_output:
        return jnp.einsum("ijst,ijst->ij", uu, jnp.einsum("icsb,jctb->ijst", g1, g2, precision=hi), precision=hi) / c
    return jnp.einsum("ijst,ijstcd->ijcd", uu, jnp.einsum("icsb,jdtb->ijstcd", g1, g2, precision=hi), precision=hi)


def contract_jacobians(j1, j2, trace_output: bool, precision=None) -> jax.Array:
    """Contract Jacobian leaves ``(n1, C, *p)``, ``(n2, C, *p)`` over the parameter axes.

    ``precision``: "highest", "fast" or None (the policy in force when traced).
    """
    hi = lax_precision(precision)
    j1 = j1.reshape(j1.shape[0], j1.shape[1], -1)
    j2 = j2.reshape(j2.shape[0], j2.shape[1], -1)
    if trace_output:
        return jnp.einsum("icp,jcp->ij", j1, j2, precision=hi) / j1.shape[1]
    return jnp.einsum("icp,jdp->ijcd", j1, j2, precision=hi)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _factored_ntk(plan: Plan, leaves, x1, x2, trace_output: bool, precision: str = "highest"):
    """``x2 is None`` means x2 = x1 (the factors are computed once)."""
    factors = jax.vmap(_row_factors, in_axes=(None, None, 0))
    us1, gs1, rest1 = factors(plan, leaves, x1)
    us2, gs2, rest2 = (us1, gs1, rest1) if x2 is None else factors(plan, leaves, x2)
    terms = [_contract_site(*args, trace_output, precision) for args in zip(us1, gs1, us2, gs2)]
    terms += [contract_jacobians(j1, j2, trace_output, precision) for j1, j2 in zip(rest1, rest2)]
    return sum(terms)


def factored_ntk(
    plan: Plan, params, x1: jax.Array, x2: jax.Array | None = None, *, trace_output: bool = True, precision=None
) -> jax.Array:
    """Empirical NTK by structured derivatives; no checks (see ``empirical_ntk(implementation="factored")``).

    Args:
      plan: from :func:`make_plan` for this model, ``d``, dtype and precision.
      params: the parameter pytree the plan was made for.
      x1: ``(n1, d)``; x2: ``(n2, d)`` or ``None`` for x1.
      trace_output: average over outputs → ``(n1, n2)``; else ``(n1, n2, C, C)``.
      precision: of the contractions, "highest", "fast" or None (the policy in
        force); the model's own matmuls have the plan's.
    """
    return _factored_ntk(
        plan, jax.tree_util.tree_leaves(params), x1, x2, bool(trace_output), resolve_precision(precision)
    )
