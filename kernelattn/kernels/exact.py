"""Exact integer Grams of ReLU activation patterns: the n²m part of the head NTK (docs/math.md §7.1).

With the paper's fixed readout a ∈ {±1}^{m×C}, the first-layer head NTK is

    Θ_W = (σ_a²/m) · P ⊙ (σ_w² X̃X̃ᵀ/d + σ_b²),
    P = S Sᵀ                          (output-traced: mean_c a_rc² = 1)
    P_cc' = S diag(a_c a_c') Sᵀ       (full: one block per output pair)

with S = 1[H > 0] ∈ {0, 1}^{n×m}. P is a matrix of integers of magnitude ≤ m:
every product is 0 or ±1 and every partial sum an integer, so it is computed
exactly in integer arithmetic (int32 accumulation: exact for m < 2^31), and Θ
picks up only the two roundings of the final products. Two exact kernels:

- ``"int8"``: S (and S ⊙ a_c) as int8 with ``jax.lax.dot_general(...,
  preferred_element_type=int32)``: the integer matrix units of GPUs (measured
  on an H200: 1,673 int8 TOPS against 51 TFLOP/s for float32 at HIGHEST);
- ``"popcount"``: S bit-packed into 64-bit words (32-bit without x64), and
  (S Sᵀ)_ij = Σ_w popcount(s_i,w AND s_j,w): 64 units per AND + POPCNT, the
  fastest exact form on CPUs (measured here: 2.5–3× the float32 product
  S Sᵀ at n = 2000, m = 2^14).

For the full output, a_rc a_rc' = ±1 splits the units into agreeing and
disagreeing ones: P_cc' = S Sᵀ − 2 (S ⊙ D_cc') Sᵀ with D_cc' = 1[a_c ≠ a_c'].

Nothing here is differentiable, nor needs to be: S has zero derivative, so
∂Θ/∂x flows through the float factor X̃X̃ᵀ alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernelattn._precision import x64_enabled
from kernelattn.errors import InputValueError

EXACT_METHODS = ("int8", "popcount")
#: Rows of the left operand per step of the popcount Gram (measured fastest on XLA:CPU: 2 to 4).
POPCOUNT_ROWS = 4
_CONTRACT_UNITS = (((1,), (1,)), ((), ()))


def _word_dtype():
    """uint64 words when JAX's 64-bit mode is on, else uint32."""
    return jnp.uint64 if x64_enabled() else jnp.uint32


def pack_bits(s: jax.Array) -> jax.Array:
    """Pack a ``(n, k)`` boolean matrix into ``(n, ⌈k/B⌉)`` unsigned words of B = 64 (or 32) bits.

    Bit j of word w of row i is s[i, w·B + j]; missing bits are 0.
    """
    word = _word_dtype()
    bits = jnp.iinfo(word).bits
    n, k = s.shape
    words = -(-k // bits)
    s = jnp.pad(s, ((0, 0), (0, words * bits - k)))
    shifted = s.reshape(n, words, bits).astype(word) << jnp.arange(bits, dtype=word)
    return jnp.sum(shifted, axis=2, dtype=word)  # distinct bits: the sum is the bitwise OR


def popcount_gram(p1: jax.Array, p2: jax.Array) -> jax.Array:
    """(P₁ P₂ᵀ)_ij = Σ_w popcount(p1[i, w] AND p2[j, w]) for packed ``(n1, w)``, ``(n2, w)`` words → int32
    ``(n1, n2)``."""
    n1 = p1.shape[0]
    blocks = -(-n1 // POPCOUNT_ROWS)
    p1 = jnp.pad(p1, ((0, blocks * POPCOUNT_ROWS - n1), (0, 0))).reshape(blocks, POPCOUNT_ROWS, -1)

    def rows(block):
        both = jax.lax.population_count(block[:, None, :] & p2[None, :, :])
        return jnp.sum(both.astype(jnp.int32), axis=2, dtype=jnp.int32)

    return jax.lax.map(rows, p1).reshape(blocks * POPCOUNT_ROWS, -1)[:n1]


def int8_gram(a1: jax.Array, a2: jax.Array) -> jax.Array:
    """A₁ A₂ᵀ for ``(n1, k)``, ``(n2, k)`` int8 matrices, accumulated in int32 (exact for k·max|a|² < 2^31)."""
    return jax.lax.dot_general(a1, a2, _CONTRACT_UNITS, preferred_element_type=jnp.int32)


def _disagree(a: jax.Array) -> jax.Array:
    """D ``(C, C, k)``: D[c, c', r] = 1[a_rc ≠ a_rc'] for a ``(k, C)`` readout of ±1 (0 for padded units)."""
    return (a.T[:, None, :] * a.T[None, :, :]) < 0


def pattern_counts(s1: jax.Array, s2: jax.Array | None, a: jax.Array, *, trace_output: bool, method: str) -> jax.Array:
    """Exact P of one chunk of hidden units, int32.

    Args:
      s1: ``(n1, k)`` boolean patterns 1[H > 0] of a chunk of k units.
      s2: ``(n2, k)``, or None for s1.
      a: ``(k, C)`` readout of ±1 (0 for padded units, whose patterns are 0).
      trace_output: P = S₁S₂ᵀ ``(n1, n2)``; else P_cc' = S₁ diag(a_c a_c') S₂ᵀ ``(n1, n2, C, C)``.
      method: "int8" or "popcount".
    """
    s2 = s1 if s2 is None else s2
    if method == "int8":
        i1, i2 = s1.astype(jnp.int8), s2.astype(jnp.int8)
        if trace_output:
            return int8_gram(i1, i2)
        signed = i1[:, :, None] * a.astype(jnp.int8)  # (n1, k, C): s_ir a_rc ∈ {−1, 0, 1}
        out = jax.lax.dot_general(
            signed, i2[:, :, None] * a.astype(jnp.int8), (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
        )  # (n1, C, n2, C)
        return jnp.transpose(out, (0, 2, 1, 3))
    if method != "popcount":
        raise InputValueError(f"method: expected one of {list(EXACT_METHODS)}, got {method!r}")
    p2 = pack_bits(s2)
    both = popcount_gram(pack_bits(s1), p2)
    if trace_output:
        return both
    disagree = _disagree(a)  # (C, C, k)
    c = a.shape[1]
    masked = jax.vmap(lambda mask: popcount_gram(pack_bits(s1 & mask[None, :]), p2))(disagree.reshape(c * c, -1))
    counts = both[None] - 2 * masked  # (C·C, n1, n2)
    return jnp.transpose(counts.reshape(c, c, *both.shape), (2, 3, 0, 1))
