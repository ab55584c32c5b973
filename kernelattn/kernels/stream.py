"""Every width of a streamed head NTK in one pass: the finite-width kernel of a width sweep (docs/math.md §7–8).

A width-m network is the first m hidden units of one draw (chunk j of units
from ``fold_in(key, j)``, ``kernels.empirical.draw_head_units``), so the
structured head NTK of every width of a sweep is a running sum over chunks:
one pass yields them all at the cost of the largest. The chunks are summed one
after another in one compiled loop whatever the widths requested, so Θ_m
depends on (key, m, width_chunk) only, bit for bit. On a 1-D width mesh each
accumulation step deals its chunks out over the devices
(``distributed.sharded_head_ntk_blocks``) and adds the partials with one
``psum``: the draws are unchanged, so Θ_m equals the one-device value up to
summation order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jax.typing import ArrayLike

from kernelattn._precision import resolve_dtype, resolve_precision
from kernelattn._validation import check_int, check_matrix
from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.kernels.distributed import shard_map, sharded_head_ntk_blocks
from kernelattn.kernels.empirical import head_linear_part, head_ntk_blocks
from kernelattn.models import HeadConfig

__all__ = ["head_kernel_stream"]

_STATIC = ("head", "n2", "chunk", "precision")


def _accumulate(key, x, lin, total, first, n_blocks, n_units, *, head, n2, chunk, precision):
    """``total`` + the chunks [first, first + n_blocks) of the width-``n_units`` network of ``key``."""
    return head_ntk_blocks(
        key,
        x,
        None,
        lin,
        head,
        chunk=chunk,
        first=first,
        steps=n_blocks,
        n_units=n_units,
        n2=n2,
        total=total,
        precision=precision,
    )


_accumulate_single = jax.jit(_accumulate, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _accumulate_batched(keys, x, lin, totals, first, n_blocks, n_units, **static):
    return jax.vmap(lambda k, t: _accumulate(k, x, lin, t, first, n_blocks, n_units, **static))(keys, totals)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "mesh", "batched"))
def _accumulate_sharded(keys, x, lin, total, first, n_blocks, n_units, *, mesh, batched, head, n2, chunk, precision):
    """``_accumulate`` (or its vmap over keys) with the chunks dealt out over a 1-D device mesh.

    Inputs are replicated; each device sums its share of the range
    (``sharded_head_ntk_blocks``) and one ``psum`` adds the D partials to ``total``.
    """
    axis = mesh.axis_names[0]
    shards = mesh.shape[axis]

    def local(keys, x, lin, first, n_blocks, n_units):
        def one(key):
            return sharded_head_ntk_blocks(
                key,
                x,
                None,
                lin,
                head,
                chunk=chunk,
                first=first,
                n_blocks=n_blocks,
                axis_name=axis,
                shards=shards,
                n_units=n_units,
                n2=n2,
                precision=precision,
            )

        part = jax.vmap(one)(keys) if batched else one(keys)
        return jax.lax.psum(part, axis)

    rep = PartitionSpec()
    return total + shard_map(local, mesh, (rep,) * 6, rep)(keys, x, lin, first, n_blocks, n_units)


def head_kernel_stream(
    keys: jax.Array,
    head: HeadConfig,
    x: ArrayLike,
    n2: int,
    widths: Sequence[int],
    *,
    width_chunk: int = 1024,
    dtype="float32",
    mesh: Mesh | None = None,
    precision=None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Empirical head NTKs of the width-m prefixes of one network per key, for increasing m.

    The exact structured NTK of ``MLPHead`` (docs/math.md §7), traced over outputs:
    Θ_m = (σ_a²/m) Σ_{r<m} [mean_c a_rc² s_r s_rᵀ ⊙ (σ_w² X X₂ᵀ/d + σ_b² [b]) + r_r r_rᵀ [a trained]].
    Hidden units are drawn ``width_chunk`` at a time (block j from
    ``fold_in(key, j)``, as ``streaming_head_ntk(..., width_chunk)`` does), and
    the width-m network is the first m units, so one pass yields every width.
    Blocks are accumulated one after another in one compiled loop whatever
    the widths requested: Θ_m depends on (key, m, width_chunk) only, bit for
    bit, and one compilation serves every width.

    Args:
      keys: ``(2,)`` PRNG key of one network, or ``(S, 2)`` for S networks
        computed together with ``jax.vmap``.
      head: ``HeadConfig`` (σ's, readout mode, bias, out_dim; its width is ignored).
      x: ``(n1, d)`` inputs; the kernel is taken against its first ``n2`` rows.
      n2: number of leading rows of ``x`` forming the second argument.
      widths: the widths m to produce (any order; yielded increasing).
      width_chunk: hidden units per PRNG block and contraction step; memory
        O(n1·n2 + n1·width_chunk) at any width. A width below it costs one block.
      dtype: "float32" or "float64" for the computation.
      mesh: None (one device), or a 1-D ``jax.sharding.Mesh``
        (``distributed.device_mesh``) over which each accumulation step's blocks
        are dealt out width-wise and combined with one ``psum``; the draws are
        unchanged, so Θ_m equals the 1-device value up to summation order
        (bit for bit reproducible for a fixed mesh size).
      precision: matmul precision, "highest" or "fast"; None → the policy in
        force when the stream is created (``kernelattn.precision_policy``,
        default "highest"); it holds for every width yielded.

    Yields:
      ``(m, Θ_m)`` with Θ_m float64 ``(n1, n2)`` (or ``(S, n1, n2)``).
    """
    dtype = resolve_dtype(dtype)
    precision = resolve_precision(precision)
    block = check_int(width_chunk, "width_chunk", minimum=1)
    x = check_matrix(x, "x")
    n2 = check_int(n2, "n2", minimum=1, maximum=x.shape[0])
    widths = [check_int(w, "widths", minimum=1) for w in widths]
    if mesh is not None and not isinstance(mesh, Mesh):
        raise InputTypeError(
            f"mesh: expected None or a jax.sharding.Mesh (see distributed.device_mesh), got {type(mesh).__name__}"
        )
    if mesh is not None and len(mesh.axis_names) != 1:
        raise InputValueError(f"mesh: expected a 1-D mesh (width,), got axes {tuple(mesh.axis_names)}")
    batched = jnp.ndim(keys) == 2
    x = jnp.asarray(x, dtype)
    lin = head_linear_part(x, x[:n2], head, precision=precision)
    static = {"head": head, "n2": int(n2), "chunk": block, "precision": precision}
    step: Callable[..., jax.Array]
    if mesh is not None:
        step = functools.partial(_accumulate_sharded, mesh=mesh, batched=batched)
    else:
        step = _accumulate_batched if batched else _accumulate_single
    shape = ((keys.shape[0],) if batched else ()) + (x.shape[0], n2)
    total = jnp.zeros(shape, dtype)
    done = 0  # blocks accumulated into total
    previous = None
    for m in sorted({int(w) for w in widths}):
        full = m // block
        if full > done:
            total = step(
                keys, x, lin, total, jnp.int32(done), jnp.int32(full - done), jnp.int32(full * block), **static
            )
            done = full
        snapshot = total
        if m % block:
            snapshot = step(keys, x, lin, total, jnp.int32(full), jnp.int32(1), jnp.int32(m), **static)
        # One-step lookahead: width m is dispatched (asynchronously) before the previous
        # width is handed out, so the caller's float64 metrics overlap with it.
        if previous is not None:
            yield previous[0], np.asarray(previous[1], np.float64) * (head.sigma_a**2 / previous[0])
        previous = (m, snapshot)
    if previous is not None:
        yield previous[0], np.asarray(previous[1], np.float64) * (head.sigma_a**2 / previous[0])
