"""Trainable QKV attention (MATH.md §4) and width convergence, against neural-tangents.

- NT's ``GlobalSelfAttention(linear_scaling=True, attention_mechanism='IDENTITY')``
  NNGP equals ``kernelattn.qkv_attention_nngp`` (σ_q⁴σ_v²σ_o² G³/d³ on the
  training set), its NTK is 2·NNGP, and the test × train block of the masked
  construction (train ∪ test, test masked as keys) equals the closed form with
  the training set as context.
- NT's QKV + head kernels equal our own closed-form composition (oracle_utils).
- kernelattn's empirical NTK of ``QKVAttentionMLP`` (head width h, attention
  out_dim h, head width m = h) approaches NT's infinite-width NTK like h^{-1/2};
  the 2L-ReLU head's fixed-readout NTK approaches NT's Θ_both − NNGP like m^{-1/2}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernelattn as ka
from kernelattn.kernels import nt_backend
from kernelattn.models import QKVAttention, QKVAttentionMLP
from oracle_utils import TOL, inputs, loglog_slope, qkv_head_closed_form, rel_err

pytestmark = pytest.mark.oracle

SIGMA_GRID = [
    dict(q=1.0, v=1.0, o=1.0),
    dict(q=1.3, v=0.7, o=1.1),
    dict(q=0.6, v=1.5, o=0.9),
]


def _attention(sigmas: dict, head_width: int = 64, out_dim: int | None = None) -> QKVAttention:
    return QKVAttention(head_width=head_width, out_dim=out_dim, sigma_q=sigmas["q"], sigma_v=sigmas["v"],
                        sigma_o=sigmas["o"])


@pytest.mark.parametrize("sigmas", SIGMA_GRID, ids=["unit", "s1", "s2"])
@pytest.mark.parametrize(("d", "unit"), [(3, True), (20, False), (784, True)])
def test_attention_nngp_equals_closed_form(d, unit, sigmas):
    """NT's attention NNGP = σ_q⁴σ_v²σ_o² (X₁Xᵀ)(XXᵀ)(XX₂ᵀ)/d³ and NTK = 2·NNGP, all three blocks."""
    x, x_test = inputs(d, 10, 6, d, unit)
    kernels = nt_backend.qkv_attention_kernels_nt(x, x_test, _attention(sigmas))
    kw = dict(sigma_q=sigmas["q"], sigma_v=sigmas["v"], sigma_o=sigmas["o"])
    blocks = {
        "train": (kernels.train, ka.qkv_attention_nngp(x, None, None, **kw)),
        "test_train": (kernels.test_train, ka.qkv_attention_nngp(x_test, x, x, **kw)),
        "test": (kernels.test, ka.qkv_attention_nngp(x_test, x_test, x, **kw)),
    }
    for name, (kernel, closed) in blocks.items():
        assert rel_err(kernel.nngp, closed) < TOL["float64"], name
        assert rel_err(kernel.ntk, 2 * np.asarray(closed)) < TOL["float64"], name
    if sigmas["q"] == sigmas["v"] == sigmas["o"] == 1.0:
        gram = x @ x.T
        np.testing.assert_allclose(kernels.train.nngp * d**3, gram @ gram @ gram, rtol=1e-12)


def test_masked_train_block_equals_public_route():
    """With test points, the train × train block equals NT's plain one-sequence kernel."""
    x, x_test = inputs(4, 9, 5, 12, unit=False)
    head = ka.HeadConfig(1, 2, sigma_w=1.2, sigma_b=0.3, sigma_a=0.9)
    attention = _attention(SIGMA_GRID[1])
    alone = nt_backend.qkv_kernels_nt(x, None, attention, head)
    joint = nt_backend.qkv_kernels_nt(x, x_test, attention, head)
    assert joint.test_train.ntk.shape == (5, 9) and joint.test.ntk.shape == (5, 5)
    assert alone.test_train is None
    assert rel_err(joint.train.ntk, alone.train.ntk) < 1e-13
    assert rel_err(joint.train.nngp, alone.train.nngp) < 1e-13


@pytest.mark.parametrize("train_readout", [False, True])
@pytest.mark.parametrize("sigmas", SIGMA_GRID[1:], ids=["s1", "s2"])
def test_qkv_head_kernels_equal_our_composition(sigmas, train_readout):
    """NT's attention + head kernels (all blocks) = our closed-form composition, float64."""
    x, x_test = inputs(8, 11, 7, 16, unit=True)
    head = ka.HeadConfig(1, 3, sigma_w=1.4, sigma_b=0.2, sigma_a=0.8, train_readout=train_readout)
    kernels = nt_backend.qkv_kernels_nt(x, x_test, _attention(sigmas), head)
    ours = qkv_head_closed_form(x, x_test, sigmas, head)
    n = x.shape[0]
    for name, kernel, rows, cols in [
        ("train", kernels.train, slice(0, n), slice(0, n)),
        ("test_train", kernels.test_train, slice(n, None), slice(0, n)),
        ("test", kernels.test, slice(n, None), slice(n, None)),
    ]:
        assert rel_err(kernel.nngp, ours["nngp"][rows, cols]) < TOL["float64"], name
        assert rel_err(kernel.ntk, ours["ntk"][rows, cols]) < TOL["float64"], name


def test_qkv_rejects_what_nt_does_not_cover():
    x, _ = inputs(0, 5, 2, 4, unit=True)
    with pytest.raises(ValueError, match="scaling='linear'"):
        nt_backend.qkv_kernels_nt(x, None, QKVAttention(8, scaling="sqrt"))
    with pytest.raises(ValueError, match="scaling='linear'"):
        nt_backend.qkv_attention_stax(QKVAttention(8, tied_qk=False), 4)


def test_qkv_empirical_converges_at_inverse_sqrt_rate():
    """‖Θ_h − Θ_∞‖_F / ‖Θ_∞‖_F (train and test × train rows) ~ h^{-1/2}, h = m = out_dim.

    kernelattn's empirical NTK (generic, "ntvp", float32) of QKVAttentionMLP
    with the readout fixed, context = the training set, 8 to 2 seeds per
    width; the slope of the RMS error over seeds must lie in [-0.7, -0.3].
    """
    x, x_test = inputs(21, 8, 4, 6, unit=True)
    head = ka.HeadConfig(1, 1)
    limit = nt_backend.qkv_kernels_nt(x, x_test, _attention(SIGMA_GRID[0]), head)
    reference = np.concatenate([limit.train.ntk, limit.test_train.ntk])
    queries = np.concatenate([x, x_test]).astype(np.float32)
    context = x.astype(np.float32)
    seeds = {64: 8, 256: 8, 1024: 4, 4096: 2}  # relative spread shrinks with h
    widths, errors = tuple(seeds), []
    for h in widths:
        model = QKVAttentionMLP(ka.HeadConfig(h, 1), QKVAttention(head_width=h, out_dim=h), normalize=False)
        # One apply_fn per width (readout signs of seed 0, fresh trained parameters per
        # seed), so kernelattn's jit compiles once per width, not once per seed.
        apply_fn, _ = ka.model_apply_fn(model, model.init(jax.random.PRNGKey(0), context), context)
        per_seed = []
        for seed in range(seeds[h]):
            params = model.init(jax.random.PRNGKey(seed), context)["params"]
            theta = ka.empirical_ntk(apply_fn, params, queries, context, implementation="ntvp")
            per_seed.append(np.linalg.norm(np.asarray(theta, np.float64) - reference) / np.linalg.norm(reference))
        errors.append(float(np.sqrt(np.mean(np.square(per_seed)))))
    slope = loglog_slope(widths, errors)
    assert -0.7 <= slope <= -0.3, (slope, errors)
    assert errors[-1] < 0.15, errors


def test_head_fixed_readout_converges_to_first_layer_ntk():
    """2L-ReLU, readout fixed ±1: streaming empirical NTK → NT's Θ_both − NNGP like m^{-1/2}."""
    x, x_test = inputs(31, 10, 6, 50, unit=True)
    head = ka.HeadConfig(1, 1, sigma_w=1.0, sigma_b=0.0, sigma_a=1.0)
    limit = nt_backend.head_kernels_nt(x_test, x, head)
    widths, errors = (2**7, 2**9, 2**11, 2**13, 2**15), []
    for m in widths:
        per_seed = []
        for seed in range(3):
            theta = ka.streaming_head_ntk(
                jax.random.PRNGKey(seed), ka.HeadConfig(m, 1), x_test, x, dtype="float64"
            )
            per_seed.append(rel_err(theta, limit.ntk))
        errors.append(float(np.sqrt(np.mean(np.square(per_seed)))))
    slope = loglog_slope(widths, errors)
    assert -0.7 <= slope <= -0.3, (slope, errors)


def test_qkv_empirical_equals_nt_empirical_with_test_queries():
    """At finite width, the QKV model with context = train: kernelattn and NT agree (float64)."""
    x, x_test = inputs(41, 6, 3, 5, unit=False)
    model = QKVAttentionMLP(ka.HeadConfig(24, 2, sigma_b=0.5, use_bias=True),
                            QKVAttention(head_width=12, out_dim=9, param_dtype=jnp.float64),
                            normalize=False, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(3), x)
    apply_fn, params = ka.model_apply_fn(model, variables, x)
    ours = ka.empirical_ntk(apply_fn, params, x_test, x, trace_output=False, dtype="float64")
    theirs = nt_backend.empirical_ntk_nt(model, variables, x_test, x, x, implementation="STRUCTURED_DERIVATIVES",
                                         trace_output=False, dtype="float64")
    assert ours.shape == (3, 6, 2, 2)
    assert rel_err(ours, theirs) < TOL["float64"]
