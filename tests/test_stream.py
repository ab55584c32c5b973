"""The width stream of the sweeps: every prefix width of one draw is the exact structured head NTK."""

import jax
import jax.numpy as jnp
import numpy as np

from support import unit_rows
from kernelattn.kernels.empirical import draw_head_units, streaming_head_ntk, structured_head_ntk
from kernelattn.kernels.stream import head_kernel_stream
from kernelattn.models import HeadConfig


def test_streamed_head_kernel_is_the_exact_empirical_ntk(rng):
    x = unit_rows(rng.normal(size=(11, 5)))
    n2, block, out_dim = 7, 8, 2
    head = HeadConfig(1, out_dim, sigma_w=1.3, sigma_b=0.4, sigma_a=0.8, train_readout=True)  # every term
    key = jax.random.PRNGKey(5)
    widths = [3, 16, 20]
    stream = dict(head_kernel_stream(key, head, x, n2, widths, width_chunk=block, dtype="float64"))
    draw = jax.jit(lambda j, m: draw_head_units(key, j, 5, block, m, head, jnp.float64))
    for m in (3, 20):  # a partial first block; two whole blocks and a partial one
        w, b, a = (jnp.concatenate(parts, axis=0 if parts[0].ndim == 1 or parts[0].shape[0] == block else 1)
                   for parts in zip(*[draw(j, m) for j in range(3)]))
        variables = {"W": w[:, :m], "b": b[:m], "a": a[:m]}
        width_head = HeadConfig(m, out_dim, 1.3, 0.4, 0.8, True, True)
        exact = structured_head_ntk(variables, width_head, x, x[:n2], dtype="float64")
        np.testing.assert_allclose(stream[m], exact, rtol=1e-12, atol=1e-14)
    # Whole blocks are the very draw of streaming_head_ntk with the same width_chunk.
    reference = streaming_head_ntk(key, HeadConfig(16, out_dim, 1.3, 0.4, 0.8, True, True), x, x[:n2],
                                   width_chunk=block, dtype="float64")
    np.testing.assert_allclose(stream[16], reference, rtol=1e-12, atol=1e-14)
    # A width's value does not depend on the other widths requested, nor on batching seeds.
    alone = dict(head_kernel_stream(key, head, x, n2, [20], width_chunk=block, dtype="float64"))
    assert np.array_equal(alone[20], stream[20])
    keys = jnp.stack([jax.random.PRNGKey(9), key])
    batched = dict(head_kernel_stream(keys, head, x, n2, [20], width_chunk=block, dtype="float64"))
    np.testing.assert_allclose(batched[20][1], stream[20], rtol=1e-14, atol=1e-16)
