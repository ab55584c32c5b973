"""neural-tangents' conventions for an empirical NTK: inputs, output axes, blocks (docs/math.md §7).

The kernels of ``autodiff.py``, ``factored.py`` and ``head.py`` take ``(n, d)``
inputs and ``(n, C)`` outputs. ``empirical_ntk_fn`` (``ntk_fn.py``) serves any
model ``f(params, x)`` whose inputs x are an array ``(n, *shape)`` or a pytree
of such arrays sharing the batch axis 0 and whose output is one array
``(n, *O)``, by three pure steps:

- :func:`input_spec` / :func:`flat_model`: the rows of x raveled into one
  ``(n, D)`` matrix and the model wrapped to take it and return ``(n, P)``,
  P = prod(O) (the same function of the parameters, so the same kernel);
- :func:`output_axes` / :func:`nt_layout`: neural-tangents' ``trace_axes``
  (averaged, not summed) and ``diagonal_axes`` applied to the full
  ``(n1, n2, P, P)`` kernel, in its layout: ``(n1, n2)`` then, for each
  output axis in order, two axes if it is kept, one if diagonal, none if traced;
- :func:`blocks`: the rows split into blocks of ``batch_size`` (the last one
  ragged), whose kernels :func:`assemble` puts back together.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kernelattn.errors import InputValueError

__all__ = ["InputSpec", "assemble", "blocks", "flat_model", "input_spec", "nt_layout", "output_axes"]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The structure of one row of a model's inputs.

    Attributes:
      treedef: the inputs' pytree structure.
      shapes: per leaf, the shape of one row (the leaf's shape less axis 0).
      dtypes: per leaf, its dtype name.
    """

    treedef: object
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def is_matrix(self) -> bool:
        """One ``(n, d)`` array: the kernels take it as it is."""
        return self.treedef == jax.tree_util.tree_structure(0) and len(self.shapes[0]) == 1

    @property
    def width(self) -> int:
        """D, the numbers in one row of all leaves together."""
        return sum(math.prod(shape) for shape in self.shapes)


def input_spec(x, name: str = "x1") -> tuple[InputSpec, int]:
    """``(spec, n)`` of inputs ``x``: an array ``(n, ...)`` or a pytree of them sharing n.

    Raises:
      InputValueError: no leaves, a leaf without a batch axis, or leaves with different n.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if not leaves:
        raise InputValueError(f"{name}: expected an array (n, ...) or a pytree of them, got {x!r}")
    shapes = [jnp.shape(leaf) for leaf in leaves]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        raise InputValueError(f"{name}: expected leaves sharing the batch axis 0 (n, ...), got shapes {shapes}")
    dtypes = tuple(jnp.result_type(leaf).name for leaf in leaves)
    return InputSpec(treedef, tuple(shape[1:] for shape in shapes), dtypes), shapes[0][0]


def ravel_rows(x, spec: InputSpec) -> jax.Array:
    """Inputs → ``(n, D)``: each leaf's rows raveled, leaves side by side, in their common dtype."""
    leaves = jax.tree_util.tree_leaves(x)
    dtype = jnp.result_type(*spec.dtypes)
    return jnp.concatenate([jnp.reshape(leaf, (jnp.shape(leaf)[0], -1)).astype(dtype) for leaf in leaves], axis=1)


def unravel_rows(z: jax.Array, spec: InputSpec):
    """``(n, D)`` → inputs of ``spec``'s structure, each leaf back in its shape and dtype."""
    sizes = [math.prod(shape) for shape in spec.shapes]
    cuts = [sum(sizes[:i]) for i in range(1, len(sizes))]
    parts = jnp.split(z, cuts, axis=1) if cuts else [z]
    leaves = [
        part.reshape((z.shape[0], *shape)).astype(dtype) for part, shape, dtype in zip(parts, spec.shapes, spec.dtypes)
    ]
    return jax.tree_util.tree_unflatten(spec.treedef, leaves)


def flat_model(f: Callable, spec: InputSpec, out_ndim: int) -> Callable:
    """``g(params, z (n, D)) -> (n, P)``: ``f`` on the unraveled rows, its output rows raveled.

    ``f`` itself for one ``(n, d)`` input matrix and ``(n, C)`` outputs
    (``out_ndim`` 2), which the kernels take as they are.
    """
    if spec.is_matrix and out_ndim == 2:
        return f

    def g(params, z):
        out = f(params, z if spec.is_matrix else unravel_rows(z, spec))
        return out.reshape(out.shape[0], -1)

    return g


def _normalized(axes, ndim: int, name: str) -> tuple[int, ...]:
    try:
        axes = tuple(int(a) for a in axes)
    except TypeError:
        raise InputValueError(f"{name}: expected a tuple of output axes, got {axes!r}") from None
    bad = [a for a in axes if not -ndim <= a < ndim]
    if bad:
        raise InputValueError(f"{name}: axes {bad} out of range for outputs of {ndim} axes")
    normal = tuple(sorted({a % ndim for a in axes}))
    if 0 in normal:
        raise InputValueError(
            f"{name}: the batch axis 0 cannot be traced or diagonalized here (neural-tangents allows it), got {axes}"
        )
    return normal


def output_axes(trace_axes, diagonal_axes, out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(traced, diagonal)``: the axes of outputs ``(n, *O)`` as positive indices ≥ 1.

    Raises:
      InputValueError: an axis out of range, the batch axis 0, or an axis both traced and diagonal.
    """
    if len(out_shape) < 2:
        raise InputValueError(f"f: expected outputs (n, ...) with at least one output axis, got shape {out_shape}")
    traced = _normalized(trace_axes, len(out_shape), "trace_axes")
    diagonal = _normalized(diagonal_axes, len(out_shape), "diagonal_axes")
    both = sorted(set(traced) & set(diagonal))
    if both:
        raise InputValueError(f"diagonal_axes: axes {both} are also in trace_axes; an axis is one or the other")
    return traced, diagonal


def nt_layout(full: jax.Array, out_shape: tuple[int, ...], traced, diagonal) -> jax.Array:
    """The full kernel ``(n1, n2, P, P)`` in neural-tangents' layout for ``trace_axes``/``diagonal_axes``.

    A traced axis is averaged over its diagonal (Σ_a Θ_aa / |a|), a diagonal
    one keeps Θ_aa, a kept one stays as the pair (a, a') — in output-axis order.
    """
    o = out_shape[1:]
    letters = string.ascii_letters[10 : 10 + 2 * len(o)]  # k, l, …: clear of i, j
    first, second = letters[: len(o)], letters[len(o) :]
    second = "".join(a if i + 1 in traced or i + 1 in diagonal else b for i, (a, b) in enumerate(zip(first, second)))
    kept = "".join(
        a if i + 1 in diagonal else a + b for i, (a, b) in enumerate(zip(first, second)) if i + 1 not in traced
    )
    theta = full.reshape((*full.shape[:2], *o, *o))
    scale = math.prod(o[i - 1] for i in traced)
    return jnp.einsum(f"ij{first}{second}->ij{kept}", theta) / scale


def blocks(n: int, size: int | None) -> list[slice]:
    """Rows ``0..n-1`` in slices of ``size`` (the last one ragged); one slice when size is None or ≥ n."""
    size = n if size is None else min(size, n)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def assemble(rows: list[list[jax.Array]]) -> jax.Array:
    """The kernel from its blocks: ``rows[i][j]`` is the block of x1's block i and x2's block j."""
    if len(rows) == 1 and len(rows[0]) == 1:
        return rows[0][0]
    return jnp.concatenate([jnp.concatenate(row, axis=1) for row in rows], axis=0)
