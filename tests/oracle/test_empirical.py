"""Finite-width (empirical) NTKs (MATH.md §7): kernelattn vs neural-tangents on identical parameters.

NT's ``empirical_ntk_fn`` runs on kernelattn's own ``model.apply`` (through
``nt_backend.empirical_ntk_nt``), so both sides differentiate the very same
function at the very same parameters: kernelattn's structured head formula and
its generic "jacobian" / "ntvp" autodiff against NT's JACOBIAN_CONTRACTION,
NTK_VECTOR_PRODUCTS and STRUCTURED_DERIVATIVES, traced ``(n1, n2)`` and full
``(n1, n2, C, C)``. Tolerances: 1e-5 (float32), 1e-9 (float64), relative to
max |reference|. A second check builds NT's own stax head from kernelattn's
variables and compares outputs and NTKs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernelattn as ka
from kernelattn.kernels import nt_backend
from kernelattn.models import AttentionMLP, QKVAttention, QKVAttentionMLP, TwoLayerReLU
from oracle_utils import TOL, head_grid, inputs, rel_err

pytestmark = pytest.mark.oracle

MODELS = ("relu", "mlp-attn", "qkv-attn")


def _cases() -> list[tuple]:
    """Nine (case, model, dtype, trace_output) combinations, a small covering design.

    Each model meets d = 3, 50 and 784, both dtypes, traced and full output
    (the full one with C = 10), bias off once, readout fixed and trained, unit
    and raw rows; n = 7 ≠ n* = 5. (Each combination compiles six kernels, ~5 s
    on 2 cores, so the suite keeps to nine.)
    """
    combos = []
    for i, case in enumerate(head_grid(9, seed=2, dims=(3, 50, 784), outs=(1, 10), sizes=(7, 5))):
        case = dataclasses.replace(case, unit=(i + i // 3) % 2 == 0)
        model_name = MODELS[(i + i // 3) % 3]
        dtype = ("float32", "float64")[(i + i // 3) % 2]
        combos.append((case, model_name, dtype, (i // 3) % 2 == 0))
    return combos


COMBOS = _cases()


def _build(case, model_name: str, dtype: str, width: int):
    head = ka.HeadConfig(
        width, case.out_dim, case.sigma_w, case.sigma_b, case.sigma_a, case.use_bias, case.train_readout
    )
    param_dtype = jnp.dtype(dtype)
    if model_name == "relu":
        return TwoLayerReLU(head, param_dtype)
    if model_name == "mlp-attn":
        return AttentionMLP(head, ka.AttentionConfig(), param_dtype)
    attention = QKVAttention(head_width=6, out_dim=5, sigma_q=1.1, sigma_v=0.9, sigma_o=1.2, param_dtype=param_dtype)
    return QKVAttentionMLP(head, attention, normalize=False, param_dtype=param_dtype)


def _structured(model, variables, x1, x2, context, dtype, trace_output):
    """kernelattn's structured path on the head's inputs (None for the QKV model)."""
    if isinstance(model, TwoLayerReLU):
        h1, h2 = x1, x2
    elif isinstance(model, AttentionMLP):
        h1, h2 = (ka.linear_attention(context, q) for q in (x1, x2))
    else:
        return None
    return ka.structured_head_ntk(
        ka.head_variables(variables), model.head, h1, h2, trace_output=trace_output, dtype=dtype
    )


@pytest.mark.parametrize(
    ("case", "model_name", "dtype", "trace_output"),
    COMBOS,
    ids=[f"{m}-{c.id}-{dt}-{'traced' if tr else 'full'}" for c, m, dt, tr in COMBOS],
)
def test_empirical_ntk(case, model_name, dtype, trace_output):
    """Every implementation (NT's three, kernelattn's generic three and structured) agrees, test × train."""
    x, x_test = (np.asarray(a, dtype) for a in inputs(case.seed, case.n, case.n_test, case.d, case.unit))
    model = _build(case, model_name, dtype, width=16 if case.d == 784 else 48)
    variables = model.init(jax.random.PRNGKey(case.seed), x, x)
    context = x  # the training set is the attention's keys and values
    reference = nt_backend.empirical_ntk_nt(
        model, variables, x_test, x, context, implementation="JACOBIAN_CONTRACTION",
        trace_output=trace_output, dtype=dtype,
    )
    shape = (case.n_test, case.n) + (() if trace_output else (case.out_dim, case.out_dim))
    assert reference.shape == shape and reference.dtype == np.dtype(dtype)
    results = {
        impl: nt_backend.empirical_ntk_nt(
            model, variables, x_test, x, context, implementation=impl, trace_output=trace_output, dtype=dtype
        )
        for impl in nt_backend.IMPLEMENTATIONS[1:]
    }
    apply_fn, params = ka.model_apply_fn(model, variables, context)
    for impl in ka.kernels.empirical.IMPLEMENTATIONS:
        results[f"kernelattn-{impl}"] = ka.empirical_ntk(
            apply_fn, params, x_test, x, trace_output=trace_output, implementation=impl, dtype=dtype
        )
    structured = _structured(model, variables, x_test, x, context, dtype, trace_output)
    if structured is not None:
        results["kernelattn-structured"] = structured
    errors = {name: rel_err(value, reference) for name, value in results.items()}
    assert max(errors.values()) < TOL[dtype], errors


@pytest.mark.parametrize(("model_name", "dtype"), [("mlp-attn", "float64"), ("qkv-attn", "float32")])
def test_self_attending_context(model_name, dtype):
    """context=None (rows interact, NT cannot vmap): K(X, X) of MLP-Attn and QKV still agree."""
    case = COMBOS[1][0]
    x, _ = (np.asarray(a, dtype) for a in inputs(3, 9, 4, 20, unit=True))
    model = _build(case, model_name, dtype, width=32)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = ka.model_apply_fn(model, variables, None)
    ours = ka.empirical_ntk(apply_fn, params, x, None, dtype=dtype)
    for impl in nt_backend.IMPLEMENTATIONS:
        theirs = nt_backend.empirical_ntk_nt(model, variables, x, None, None, implementation=impl, dtype=dtype)
        assert rel_err(ours, theirs) < TOL[dtype], impl


@pytest.mark.parametrize("train_readout", [False, True])
def test_stax_head_from_kernelattn_variables(train_readout):
    """NT's stax head with kernelattn's parameters is the same function with the same NTK (float64)."""
    x, x_test = inputs(11, 7, 5, 30, unit=False)
    head = ka.HeadConfig(40, 3, sigma_w=1.3, sigma_b=0.4, sigma_a=0.8, train_readout=train_readout)
    model = TwoLayerReLU(head, jnp.float64)
    variables = model.init(jax.random.PRNGKey(5), x)
    head_vars = ka.head_variables(variables)
    stax_params = nt_backend.head_stax_params(head_vars, head)
    _, stax_apply, _ = nt_backend.head_stax(head)
    np.testing.assert_allclose(stax_apply(stax_params, x), model.apply(variables, x), rtol=1e-13, atol=1e-13)

    def stax_trainable(p, inputs_):
        """The stax head with its readout trained or closed over (fixed)."""
        first, readout = p if train_readout else (p, stax_params[2])
        return stax_apply([first, (), readout], inputs_)

    trainable = (stax_params[0], stax_params[2]) if train_readout else stax_params[0]
    nt = nt_backend._nt()
    ours = ka.structured_head_ntk(head_vars, head, x_test, x, dtype="float64")
    for impl in nt_backend.IMPLEMENTATIONS:
        ntk_fn = nt.empirical_ntk_fn(stax_trainable, vmap_axes=0, implementation=nt.NtkImplementation[impl])
        theirs = jax.jit(ntk_fn)(jnp.asarray(x_test), jnp.asarray(x), trainable)
        assert rel_err(ours, theirs) < TOL["float64"], impl


def test_nt_trace_convention():
    """NT's trace_axes=(-1,) is the mean of the full kernel's C×C diagonal; layout (n1, n2, C, C)."""
    x, x_test = inputs(12, 6, 4, 8, unit=True)
    model = TwoLayerReLU(ka.HeadConfig(24, 4, train_readout=True), jnp.float64)
    variables = model.init(jax.random.PRNGKey(1), x)
    full = nt_backend.empirical_ntk_nt(model, variables, x, x_test, trace_output=False, dtype="float64")
    traced = nt_backend.empirical_ntk_nt(model, variables, x, x_test, trace_output=True, dtype="float64")
    assert full.shape == (6, 4, 4, 4)
    np.testing.assert_allclose(traced, np.trace(full, axis1=2, axis2=3) / 4, rtol=1e-13)
    jac = jax.jacrev(lambda p, z: model.apply({"params": p}, z))
    j1, j2 = jac(variables["params"], x), jac(variables["params"], x_test)
    leaves = zip(jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2))
    explicit = sum(np.einsum("icp,jdp->ijcd", a.reshape(6, 4, -1), b.reshape(4, 4, -1)) for a, b in leaves)
    np.testing.assert_allclose(full, explicit, rtol=1e-12, atol=1e-14)


def _images(params, x):  # (n, 4, 4, 2) images → (n, 3, 5): N-D inputs and two output axes
    h = jnp.tanh(jnp.einsum("nhwc,ck->nhk", x, params["K"]) / 4.0)  # (n, 4, 6), summed over w
    return jnp.einsum("nhk,kc->nhc", h[:, :3], params["V"])


def _pytree(params, x):  # {"a": (n, 3), "b": (n, 2, 2)} → (n, 4)
    h = jnp.tanh(x["a"] @ params["A"] + x["b"].reshape(x["b"].shape[0], -1) @ params["B"])
    return h @ params["V"]


@pytest.mark.parametrize(
    ("trace_axes", "diagonal_axes"), [((-1,), ()), ((), ()), ((), (-1,)), ((-1,), (1,)), ((1, 2), ())]
)
def test_empirical_ntk_fn_is_neural_tangents_on_images(trace_axes, diagonal_axes):
    """The same f, the same axes: ka.empirical_ntk_fn(f, ...)(x1, x2, params) == nt.empirical_ntk_fn (float64)."""
    rng = np.random.default_rng(13)
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    params = {"K": jax.random.normal(keys[0], (2, 6)), "V": jax.random.normal(keys[1], (6, 5))}
    x1, x2 = jnp.asarray(rng.normal(size=(5, 4, 4, 2))), jnp.asarray(rng.normal(size=(3, 4, 4, 2)))
    nt = nt_backend._nt()
    theirs = nt.empirical_ntk_fn(_images, trace_axes, diagonal_axes, vmap_axes=0)(x1, x2, params)
    for implementation in ("auto", "jacobian", "ntvp", "factored"):
        ntk = ka.empirical_ntk_fn(_images, trace_axes, diagonal_axes, implementation=implementation, batch_size=2)
        assert rel_err(ntk(x1, x2, params), theirs) < TOL["float64"], implementation
    self_kernel = nt.empirical_ntk_fn(_images, trace_axes, diagonal_axes, vmap_axes=0)(x1, None, params)
    assert rel_err(ka.empirical_ntk_fn(_images, trace_axes, diagonal_axes)(x1, None, params), self_kernel) < 1e-9


@pytest.mark.parametrize("vmap_axes", [0, None])
def test_empirical_ntk_fn_is_neural_tangents_on_pytree_inputs_and_models(vmap_axes):
    """Pytree inputs, and a kernelattn model whose attention is over its own batch (vmap_axes=None)."""
    rng = np.random.default_rng(14)
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    params = {"A": jax.random.normal(keys[0], (3, 5)), "B": jax.random.normal(keys[1], (4, 5)),
              "V": jax.random.normal(keys[2], (5, 4))}  # fmt: skip
    x1 = {"a": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=(5, 2, 2)))}
    x2 = {"a": jnp.asarray(rng.normal(size=(2, 3))), "b": jnp.asarray(rng.normal(size=(2, 2, 2)))}
    nt = nt_backend._nt()
    for trace_axes in [(-1,), ()]:
        theirs = nt.empirical_ntk_fn(_pytree, trace_axes, vmap_axes=vmap_axes)(x1, x2, params)
        ours = ka.empirical_ntk_fn(_pytree, trace_axes, vmap_axes=vmap_axes)(x1, x2, params)
        assert rel_err(ours, theirs) < TOL["float64"], trace_axes
    x, _ = inputs(4, 6, 2, 5, unit=True)
    model = AttentionMLP(ka.HeadConfig(12, 3, sigma_b=0.3), param_dtype=jnp.float64)
    apply_fn, params = ka.model_apply_fn(model, model.init(jax.random.PRNGKey(0), x), None if vmap_axes is None else x)
    theirs = nt.empirical_ntk_fn(apply_fn, (), vmap_axes=vmap_axes)(x, x[:4], params)
    for implementation in ("auto", "structured", "jacobian"):
        ours = ka.empirical_ntk_fn(apply_fn, (), vmap_axes=vmap_axes, implementation=implementation)(x, x[:4], params)
        assert rel_err(ours, theirs) < TOL["float64"], implementation
