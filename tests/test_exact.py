"""The exact integer head NTK (kernels/exact.py, method="int8" / "popcount") against the float64 closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import unit_rows
from kernelattn.kernels import exact
from kernelattn.kernels.empirical import (
    head_ntk_fn,
    resolve_method,
    streaming_head_ntk,
    structured_head_ntk,
)
from kernelattn.models import HeadConfig

EXACT = ("int8", "popcount")


def _signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, 1.0, -1.0)


def closed_form(x1, x2, w, b, a, head: HeadConfig, trace_output: bool) -> np.ndarray:
    """Θ_W = (σ_a²/m) ((S diag a)(S diag a)ᵀ) ⊙ (σ_w² X₁X₂ᵀ/d + σ_b²), in numpy float64 (docs/math.md §7)."""
    d = x1.shape[1]

    def patterns(x):
        h = head.sigma_w * (x @ w) / np.sqrt(d) + (head.sigma_b * b if head.use_bias else 0.0)
        return (h > 0).astype(np.float64)

    s1, s2 = patterns(x1), patterns(x2)
    lin = head.sigma_w**2 * (x1 @ x2.T) / d + (head.sigma_b**2 if head.use_bias else 0.0)
    if trace_output:
        counts = (s1 * np.mean(a * a, axis=1)) @ s2.T
        return head.sigma_a**2 / head.width * counts * lin
    counts = np.einsum("irc,jrd->ijcd", s1[:, :, None] * a, s2[:, :, None] * a)
    return head.sigma_a**2 / head.width * counts * lin[:, :, None, None]


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("trace_output", [True, False])
def test_exact_methods_equal_the_float64_closed_form(method, trace_output):
    rng = np.random.default_rng(0)
    n, d, m, c = 23, 7, 333, 3  # m: a partial 64-bit word and a partial chunk
    x = unit_rows(rng.normal(size=(n, d)))
    x2 = unit_rows(rng.normal(size=(5, d)))
    for sigma_b in (0.0, 0.4):
        head = HeadConfig(m, c, sigma_w=1.3, sigma_b=sigma_b, sigma_a=0.8)
        params = {"W": rng.normal(size=(d, m)), "b": rng.normal(size=m), "a": _signs(rng, (m, c))}
        for second in (None, x2):
            ours = structured_head_ntk(params, head, x, second, trace_output=trace_output, width_chunk=100,
                                       dtype="float64", method=method)
            reference = closed_form(x, x if second is None else second, params["W"], params["b"], params["a"], head,
                                    trace_output)
            assert ours.shape == reference.shape and ours.dtype == jnp.float64
            assert _rel(ours, reference) < 1e-12, (sigma_b, second is None)


def test_counts_are_the_integers_of_the_pattern_gram():
    rng = np.random.default_rng(1)
    s1 = rng.random((13, 200)) < 0.5
    s2 = rng.random((9, 200)) < 0.3
    a = _signs(rng, (200, 2))
    expected = s1.astype(np.int64) @ s2.T.astype(np.int64)
    full = np.einsum("irc,jrd->ijcd", s1[:, :, None] * a, s2[:, :, None] * a).astype(np.int64)
    for method in EXACT:
        traced = exact.pattern_counts(jnp.asarray(s1), jnp.asarray(s2), jnp.asarray(a), trace_output=True,
                                      method=method)
        assert traced.dtype == jnp.int32 and np.array_equal(np.asarray(traced), expected), method
        untraced = exact.pattern_counts(jnp.asarray(s1), jnp.asarray(s2), jnp.asarray(a), trace_output=False,
                                        method=method)
        assert np.array_equal(np.asarray(untraced), full), method


def test_32_bit_words_without_x64(monkeypatch):
    rng = np.random.default_rng(2)
    s = rng.random((6, 100)) < 0.5
    monkeypatch.setattr(exact, "_word_dtype", lambda: jnp.uint32)
    packed = exact.pack_bits(jnp.asarray(s))
    assert packed.dtype == jnp.uint32 and packed.shape == (6, 4)
    np.testing.assert_array_equal(np.asarray(exact.popcount_gram(packed, packed)),
                                  s.astype(np.int64) @ s.T.astype(np.int64))


def test_streaming_exact_equals_streaming_float():
    rng = np.random.default_rng(3)
    x = unit_rows(rng.normal(size=(17, 6)))
    head = HeadConfig(300, 2, sigma_b=0.2)
    key = jax.random.PRNGKey(4)
    for trace_output, method in ((False, "popcount"),):  # the full output, the most involved (the rest: above)
        reference = streaming_head_ntk(key, head, x, trace_output=trace_output, width_chunk=64, dtype="float64",
                                       method="float")
        ours = streaming_head_ntk(key, head, x, trace_output=trace_output, width_chunk=64, dtype="float64",
                                  method=method)
        assert _rel(ours, np.asarray(reference)) < 1e-12, (method, trace_output)


def test_auto_picks_an_exact_method_only_for_the_fixed_readout():
    fixed, trained = HeadConfig(8), HeadConfig(8, train_readout=True)
    assert resolve_method("auto", fixed, platform="cpu") == "popcount"
    assert resolve_method("auto", fixed, platform="gpu") == "int8"
    assert resolve_method("auto", trained, platform="gpu") == "float"
    assert resolve_method("auto", fixed) == ("popcount" if jax.default_backend() == "cpu" else "int8")
    with pytest.raises(ValueError, match=r"method: 'int8' is exact only for the fixed ±1 readout"):
        resolve_method("int8", trained)
    with pytest.raises(ValueError, match=r"method: expected one of \['auto', 'float', 'int8', 'popcount'\]"):
        resolve_method("bits", fixed)
    x = np.eye(3, 4)
    params = {"W": np.ones((4, 8)), "a": np.full((8, 1), 0.5)}
    with pytest.raises(ValueError, match=r"head_variables\['a'\]: expected entries ±1"):
        structured_head_ntk(params, fixed, x, method="popcount")
    float_result = structured_head_ntk(params, fixed, x, method="float")  # any readout is fine there
    assert float_result.shape == (3, 3)


def test_the_exact_kernel_differentiates_like_the_float_one():
    """S has zero derivative: ∂Θ/∂x flows through σ_w² X X'ᵀ/d alone, for every method."""
    rng = np.random.default_rng(5)
    head = HeadConfig(130)
    params = {"W": jnp.asarray(rng.normal(size=(4, 130))), "a": jnp.asarray(_signs(rng, (130, 1)))}
    x = jnp.asarray(unit_rows(rng.normal(size=(6, 4))))

    def loss(method):
        return jax.grad(lambda z: jnp.sum(head_ntk_fn(params, head, z, x, method=method) ** 2))(x)

    reference = loss("float")
    for method in EXACT:
        np.testing.assert_allclose(np.asarray(loss(method)), np.asarray(reference), rtol=1e-12, atol=1e-14)
