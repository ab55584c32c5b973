"""Finite-width (empirical) NTK: Θ_m(x, x') = Σ_p ∂f(x)/∂p · ∂f(x')/∂p (docs/math.md §7).

Two routes to the same matrix, one module each, and the neural-tangents-style
front end over both:

- ``autodiff``: **generic**, for any model given as ``f(params, x) -> (n, C)``:
  JAX autodiff, by contracting the two Jacobians ("jacobian"), by NTK-vector
  products ("ntvp"), or by structured derivatives read off the model's jaxpr
  ("factored", ``kernels/factored.py``) — :func:`empirical_ntk` (checked,
  eager), :func:`autodiff_ntk_fn` (its pure core), :func:`model_apply_fn`;
- ``head``: **structured**, exact for the two-layer head from its closed form
  at cost O(n m d + n² m), accumulated over chunks of width; with
  :func:`streaming_head_ntk` the parameters are drawn chunk by chunk as
  well, so widths of 2^20 and beyond run in a few hundred MB —
  :func:`structured_head_ntk`, :func:`streaming_head_ntk` and their building
  blocks;
- ``layout``, ``auto``, ``ntk_fn``: :func:`empirical_ntk_fn`, neural-tangents'
  ``ntk(x1, x2, params)`` with ``trace_axes``, ``diagonal_axes``,
  ``vmap_axes``, pytree and N-D inputs, blocks of ``batch_size`` rows, and
  ``implementation="auto"``, which picks among the routes above by a cost
  model (``layout``: the conventions; ``auto``: the routes and the cost model).

Output axes are traced (averaged over the C outputs, like neural-tangents'
``trace_axes=(-1,)``) by default, giving ``(n1, n2)``; ``trace_output=False``
gives the full ``(n1, n2, C, C)``.
"""

from kernelattn.kernels.empirical.auto import Choice
from kernelattn.kernels.empirical.autodiff import (
    IMPLEMENTATIONS,
    ApplyFn,
    ModelApply,
    autodiff_memory,
    autodiff_ntk_fn,
    empirical_ntk,
    model_apply_fn,
)
from kernelattn.kernels.empirical.head import (
    DEFAULT_WIDTH_CHUNK,
    METHODS,
    draw_head_units,
    head_linear_part,
    head_ntk_blocks,
    head_ntk_fn,
    head_unit_ntk,
    head_variables,
    resolve_method,
    streaming_head_ntk,
    structured_head_ntk,
)
from kernelattn.kernels.empirical.ntk_fn import NT_IMPLEMENTATIONS, NtkFn, empirical_ntk_fn

__all__ = [
    "DEFAULT_WIDTH_CHUNK",
    "IMPLEMENTATIONS",
    "METHODS",
    "NT_IMPLEMENTATIONS",
    "ApplyFn",
    "Choice",
    "ModelApply",
    "NtkFn",
    "autodiff_memory",
    "autodiff_ntk_fn",
    "draw_head_units",
    "empirical_ntk",
    "empirical_ntk_fn",
    "head_linear_part",
    "head_ntk_blocks",
    "head_ntk_fn",
    "head_unit_ntk",
    "head_variables",
    "model_apply_fn",
    "resolve_method",
    "streaming_head_ntk",
    "structured_head_ntk",
]
