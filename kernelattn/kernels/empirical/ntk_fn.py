"""``empirical_ntk_fn``: the empirical NTK of any model with neural-tangents' conventions (docs/math.md §7).

``ntk = empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=0,
implementation="auto")`` and ``ntk(x1, x2, params)``, as
``nt.empirical_ntk_fn``: ``f(params, x)``, x an array ``(n, ...)`` or a pytree
of them, the output one array ``(n, *O)``; traced output axes averaged,
diagonal ones kept once, the layout neural-tangents'. The differences:

- ``implementation`` names a route (``auto.py``): "jacobian", "ntvp",
  "factored", "structured", or "auto", the cheapest by a cost model, which
  ``ntk.explain(x1, x2, params)`` reports;
- ``batch_size`` splits both x1 and x2 (the last block ragged); None lets the
  memory plan choose (the whole kernel when it fits); ``budget`` bounds it;
- ``vmap_axes`` is 0 or None only; the batch axis 0 is neither traced nor
  diagonalized; ``f`` takes no keyword arguments at call time;
- ``precision`` sets the matmul precision (``kernelattn.precision_policy``).

The form up to 0.1.0, ``empirical_ntk_fn(apply_fn, trace_output=…, row_block=…)``
returning ``ntk_fn(params, x1, x2=None)``, still works for one release with a
``DeprecationWarning`` (:class:`NtkFn` recognises the old argument order);
its pure core is ``autodiff.autodiff_ntk_fn``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernelattn._precision import resolve_precision
from kernelattn._validation import check_choice, check_int
from kernelattn.errors import InputValueError
from kernelattn.kernels.empirical import auto, layout
from kernelattn.kernels.empirical.autodiff import IMPLEMENTATIONS, autodiff_ntk_fn

__all__ = ["NT_IMPLEMENTATIONS", "NtkFn", "empirical_ntk_fn"]

NT_IMPLEMENTATIONS = ("auto", *auto.ROUTES)
_OLD = object()  # marks the keywords of the form up to 0.1.0 as not given
_DEPRECATED = (
    "empirical_ntk_fn: {what} is deprecated and will be removed after one release; use "
    "empirical_ntk_fn(f, trace_axes=(-1,), ...) and call ntk(x1, x2, params)"
)


def _same_rows(a, b) -> bool:
    """Whether ``a`` and ``b`` are inputs of one model: the same pytree, leaves equal but for axis 0."""
    if a is None or b is None:
        return a is b
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    shapes_a, shapes_b = [jnp.shape(x) for x in leaves_a], [jnp.shape(x) for x in leaves_b]
    return (
        str(jax.tree_util.tree_structure(a)) == str(jax.tree_util.tree_structure(b))
        and all(len(s) >= 1 for s in shapes_a + shapes_b)
        and [s[1:] for s in shapes_a] == [s[1:] for s in shapes_b]
    )


def _old_order(x1, x2, params) -> bool:
    """Whether a call is ``ntk_fn(params, x1[, x2])`` (up to 0.1.0) rather than ``ntk(x1, x2, params)``.

    Old: two arguments; or a third that is None or shaped like the second
    (the old x2) while the first two are not alike (the new x1, x2).
    """
    if params is None:
        return True
    return _same_rows(x2, params) and not _same_rows(x1, x2) and x2 is not None


class _Setup(NamedTuple):
    """What one call works with: the input structure, rows, the flat model, output shape and axes."""

    spec: layout.InputSpec
    n1: int
    n2: int | None
    g: Callable
    out_shape: tuple[int, ...]
    traced: tuple[int, ...]
    diagonal: tuple[int, ...]

    @property
    def trace(self) -> bool:
        """Every output axis traced: the routes' own output mean gives the kernel."""
        return len(self.traced) == len(self.out_shape) - 1


class NtkFn:
    """``ntk(x1, x2, params)``: the empirical NTK of ``f`` (see :func:`empirical_ntk_fn`).

    Call it with ``x1`` ``(n1, ...)`` (or a pytree), ``x2`` ``(n2, ...)`` or None
    (x1), and the parameters; jit-able. ``explain(x1, x2, params)`` returns the
    :class:`~kernelattn.kernels.empirical.auto.Choice` a call would run.
    """

    def __init__(
        self, f: Callable, trace_axes, diagonal_axes, vmap_axes, implementation, batch_size, budget, precision
    ):
        self.f = f
        self.trace_axes, self.diagonal_axes = tuple(trace_axes), tuple(diagonal_axes)
        self.vmap_axes, self.implementation = vmap_axes, implementation
        self.batch_size, self.budget, self.precision = batch_size, budget, precision
        self._flat: dict = {}  # one wrapped model per input structure: jit caches key on it
        self._choices: dict = {}

    def _setup(self, x1, x2, params) -> _Setup:
        spec, n1 = layout.input_spec(x1, "x1")
        n2 = None
        if x2 is not None:
            spec2, n2 = layout.input_spec(x2, "x2")
            if spec2 != spec:
                raise InputValueError(f"x2: expected rows like x1's {spec.shapes} {spec.dtypes}, got {spec2.shapes}")
        out_shape = tuple(jax.eval_shape(self.f, params, x1).shape)
        if out_shape[0] != n1:
            raise InputValueError(f"f: expected outputs (n, ...) with the batch axis first, got shape {out_shape}")
        traced, diagonal = layout.output_axes(self.trace_axes, self.diagonal_axes, out_shape)
        key = (spec, len(out_shape))
        if key not in self._flat:
            self._flat[key] = layout.flat_model(self.f, spec, len(out_shape))
        g = self._flat[key]
        return _Setup(spec, n1, n2, g, out_shape, traced, diagonal)

    def _choice(self, setup: _Setup, params, precision: str) -> auto.Choice:
        """The planned route, made once per input structure, rows, parameter shapes and precision."""
        shapes = tuple((jnp.shape(p), jnp.result_type(p).name) for p in jax.tree_util.tree_leaves(params))
        key = (setup.spec, setup.n1, setup.n2, str(jax.tree_util.tree_structure(params)), shapes, precision)
        if key not in self._choices:
            self._choices[key] = self._plan(setup, params, precision)
        return self._choices[key]

    def _plan(self, setup: _Setup, params, precision: str) -> auto.Choice:
        plan = functools.partial(
            auto.plan_route, f=self.f, g=setup.g, params=params, spec=setup.spec, n1=setup.n1, n2=setup.n2,
            trace=setup.trace, vmap_axes=self.vmap_axes, batch_size=self.batch_size, budget=self.budget,
            precision=precision,
        )  # fmt: skip
        return auto.choose(
            [plan(name) for name in (auto.ROUTES if self.implementation == "auto" else (self.implementation,))]
        )

    def explain(self, x1, x2, params) -> auto.Choice:
        """The route and block size a call with these inputs runs, and every route's estimated cost."""
        return self._choice(self._setup(x1, x2, params), params, resolve_precision(self.precision))

    def __call__(self, x1, x2=None, params=None) -> jax.Array:
        if _old_order(x1, x2, params):
            warnings.warn(_DEPRECATED.format(what="ntk_fn(params, x1, x2)"), DeprecationWarning, stacklevel=2)
            old = "jacobian" if self.implementation == "auto" else self.implementation
            return autodiff_ntk_fn(self.f, implementation=old, precision=self.precision)(x1, x2, params)
        precision = resolve_precision(self.precision)
        setup = self._setup(x1, x2, params)
        choice = self._choice(setup, params, precision)
        matrix = setup.spec.is_matrix
        z1 = x1 if matrix else layout.ravel_rows(x1, setup.spec)
        z2 = z1 if x2 is None else (x2 if matrix else layout.ravel_rows(x2, setup.spec))
        kernel = functools.partial(auto.route_kernel, choice.implementation, setup.g, params, trace=setup.trace,
                                   vmap0=self.vmap_axes == 0, precision=precision)  # fmt: skip
        rows1 = layout.blocks(setup.n1, choice.batch_size)
        rows2 = rows1 if x2 is None else layout.blocks(z2.shape[0], choice.batch_size)
        # A diagonal block of a self-kernel passes x2 = None: what is shared is computed once.
        theta = layout.assemble(
            [[kernel(z1[i], None if x2 is None and i == j else z2[j]) for j in rows2] for i in rows1]
        )
        if setup.trace or (not setup.diagonal and len(setup.out_shape) == 2):
            return theta
        return layout.nt_layout(theta, setup.out_shape, setup.traced, setup.diagonal)


def _old_form(f, trace_output, row_block, implementation, precision) -> Callable:
    warnings.warn(_DEPRECATED.format(what="trace_output= / row_block="), DeprecationWarning, stacklevel=3)
    implementation = "jacobian" if implementation == "auto" else implementation
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    trace_output = True if trace_output is _OLD else trace_output
    row_block = None if row_block is _OLD else row_block
    return autodiff_ntk_fn(f, trace_output=trace_output, implementation=implementation, row_block=row_block,
                           precision=precision)  # fmt: skip


def empirical_ntk_fn(
    f: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=0,
    implementation: str = "auto",
    batch_size: int | None = None,
    *,
    budget: int | None = None,
    precision=None,
    trace_output=_OLD,
    row_block=_OLD,
) -> Callable:
    """The empirical NTK of ``f`` as ``ntk(x1, x2, params)``, with neural-tangents' conventions.

    Θ(x, x') = Σ_p ∂f(x)/∂p ⊗ ∂f(x')/∂p, in the inputs' dtype (no casts, no
    input checks beyond shapes: a pure function, jit-able).

    Args:
      f: ``f(params, x) -> (n, *O)``; x an array ``(n, ...)`` or a pytree of
        arrays sharing the batch axis 0 (e.g. ``(n, 28, 28, 1)`` images).
      trace_axes: output axes averaged over (Σ_a Θ_aa / |a|, as neural-tangents
        does); ``(-1,)`` for ``(n, C)`` outputs gives ``(n1, n2)``.
      diagonal_axes: output axes of which only Θ_aa is kept (once).
      vmap_axes: 0 (the model acts on each row alone: row-wise routes and
        splitting into blocks are allowed) or None (rows interact, e.g. an
        attention over its own batch: the rows are never split).
      implementation: "auto" (the cheapest applicable route by the cost model
        of ``kernels/empirical/auto.py``; ``ntk.explain(...)`` says which),
        "jacobian", "ntvp", "factored" (needs ``vmap_axes=0``) or "structured"
        (``f`` from ``model_apply_fn`` of a ``TwoLayerReLU`` / ``AttentionMLP``).
      batch_size: rows per block of both x1 and x2, any size ≥ 1 (the last
        block is ragged); None → the memory plan's choice, the whole kernel
        when it fits. Only with ``vmap_axes=0``.
      budget: bytes the memory plan may use (None → half the free memory).
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force when ``ntk`` is called.
      trace_output, row_block: the form up to 0.1.0 (deprecated): returns
        ``ntk_fn(params, x1, x2=None)`` with a ``DeprecationWarning``.

    Returns:
      :class:`NtkFn` ``ntk(x1, x2, params)``: ``(n1, n2)`` then, for each output
      axis in order, two axes if kept, one if diagonal, none if traced.
    """
    if trace_output is not _OLD or row_block is not _OLD:
        return _old_form(f, trace_output, row_block, implementation, precision)
    check_choice(implementation, "implementation", NT_IMPLEMENTATIONS)
    if vmap_axes not in (0, None) or isinstance(vmap_axes, bool):
        raise InputValueError(f"vmap_axes: expected 0 (rows independent) or None (rows interact), got {vmap_axes!r}")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        if vmap_axes is None:
            raise InputValueError("batch_size: rows interact under vmap_axes=None, so they cannot be split; use None")
    if precision is not None:
        precision = resolve_precision(precision)
    return NtkFn(f, trace_axes, diagonal_axes, vmap_axes, implementation, batch_size, budget, precision)
