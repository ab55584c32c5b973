"""Structured derivatives read off the jaxpr (implementation="factored") = Jacobian contraction."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import unit_rows
from kernelattn.kernels import memory
from kernelattn.kernels import factored
from kernelattn.kernels.empirical import empirical_ntk, model_apply_fn
from kernelattn.models import make_model


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _agree(apply_fn, params, x1, x2=None, tol=1e-12):
    """factored = jacobian, traced and full, for x2 given and for x2 = x1."""
    for trace in (True, False):
        for second in (x2, None):
            ours = empirical_ntk(apply_fn, params, x1, second, trace_output=trace, implementation="factored",
                                 dtype="float64")
            reference = empirical_ntk(apply_fn, params, x1, second, trace_output=trace, dtype="float64")
            assert ours.shape == reference.shape
            assert _rel(ours, reference) < tol, (trace, second is None)


@settings(max_examples=12, deadline=None)
@given(
    model_name=st.sampled_from(["relu", "mlp-attn", "qkv-attn"]),
    train_readout=st.booleans(),
    sigma_b=st.sampled_from([0.0, 0.3]),
    out_dim=st.sampled_from([1, 4]),
    scaling=st.sampled_from(["linear", "sqrt"]),
    seed=st.integers(0, 2**16),
)
def test_factored_equals_jacobian_on_kernelattn_models(model_name, train_readout, sigma_b, out_dim, scaling, seed):
    rng = np.random.default_rng(seed)
    x = unit_rows(rng.normal(size=(6, 5)))
    x_test = rng.normal(size=(3, 5))
    extra = {"scaling": scaling, "head_width": 8} if model_name == "qkv-attn" else {}
    model = make_model(model_name, 12, out_dim, train_readout=train_readout, sigma_b=sigma_b, sigma_w=1.1,
                       param_dtype=jnp.float64, **extra)
    variables = model.init(jax.random.PRNGKey(seed), x, x)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(x))
    _agree(apply_fn, params, x_test, x)


def test_plan_factors_the_matmul_weights_only():
    """MLP head: W factored. QKV (untied): W_Q and W_O factored; W_K, W_V act on the fixed context."""
    x = unit_rows(np.random.default_rng(0).normal(size=(4, 5)))
    model = make_model("qkv-attn", 12, 2, head_width=8, scaling="sqrt", param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x, x)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(x))
    plan = factored.make_plan(apply_fn, params, 5, jnp.float64)
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert sorted(names[s.leaf].split("'")[-2] for s in plan.sites) == ["W", "W_O", "W_Q"]
    assert sorted(names[i].split("'")[-2] for i in plan.rest) == ["W_K", "W_V"]
    assert factored.make_plan(apply_fn, params, 5, jnp.float64) is plan  # cached: one compilation


def test_generic_flax_mlp_with_biases():
    """Any Flax model: three Dense layers with biases (kernels factored, biases by Jacobian)."""

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.tanh(nn.Dense(7, param_dtype=jnp.float64)(x))
            x = nn.gelu(nn.Dense(9, param_dtype=jnp.float64)(x))
            return nn.Dense(3, param_dtype=jnp.float64)(x)

    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), x1)["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    plan = factored.make_plan(apply_fn, params, 4, jnp.float64)
    assert len(plan.sites) == 3 and len(plan.rest) == 3
    _agree(apply_fn, params, x1, x2)


def test_tokens_transposed_tied_and_nested_weights():
    """Rows of r tokens (r > 1), a weight used transposed, a tied weight, a weight inside a nested jit."""
    d_tok, tokens = 8, 2

    @jax.jit
    def nested(h, v):
        return h @ v

    def apply_fn(p, x):
        z = x.reshape(x.shape[0], tokens, d_tok)          # (n, r, d_tok)
        h = jnp.tanh(z @ p["A"])                          # A: factored with r = 2 tokens
        h = jnp.sin(jnp.einsum("nrk,jk->nrj", h, p["B"]))  # B used transposed: factored
        h = nested(h, p["V"])                             # V inside a nested jit: Jacobian
        h = h @ p["T"] + jnp.tanh(h @ p["T"])             # T used twice: Jacobian
        return h.mean(axis=1) @ p["O"]                    # O: factored

    rng = np.random.default_rng(2)
    shapes = {"A": (d_tok, 16), "B": (12, 16), "V": (12, 12), "T": (12, 12), "O": (12, 2)}
    params = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes.items()}
    plan = factored.make_plan(apply_fn, params, d_tok * tokens, jnp.float64)
    leaves = sorted(shapes)  # dict leaves flatten in key order
    assert sorted(leaves[s.leaf] for s in plan.sites) == ["A", "B", "O"]
    assert {leaves[s.leaf]: s.rows for s in plan.sites} == {"A": 2, "B": 2, "O": 1}
    assert sorted(leaves[i] for i in plan.rest) == ["T", "V"]
    _agree(apply_fn, params, rng.normal(size=(4, 16)), rng.normal(size=(3, 16)))


def test_weight_on_a_small_fixed_context_is_factored():
    """u need not depend on x: a weight applied to 2 fixed context rows is factored (r = 2)."""
    rng = np.random.default_rng(7)
    context = jnp.asarray(rng.normal(size=(2, 8)))

    def apply_fn(p, x):
        keys = context @ p["K"]                                # (2, 16), the same for every row
        return jnp.tanh(x @ p["Q"] @ keys.T) @ p["O"]          # (n, 2)

    params = {k: jnp.asarray(rng.normal(size=s)) for k, s in {"K": (8, 16), "Q": (8, 16), "O": (2, 2)}.items()}
    plan = factored.make_plan(apply_fn, params, 8, jnp.float64)
    assert {s.leaf: s.rows for s in plan.sites} == {0: 2, 2: 1, 1: 1}  # K, O, Q in key order
    _agree(apply_fn, params, rng.normal(size=(4, 8)), rng.normal(size=(3, 8)))


def test_factors_larger_than_the_gradient_fall_back_to_the_jacobian():
    """r = 16 tokens into a 2×2 weight: r²(d_in + C d_out) > C d_in d_out, so W gets its Jacobian."""

    def apply_fn(p, x):
        return jnp.tanh(x.reshape(x.shape[0], 16, 2) @ p["W"]).sum(axis=1)

    params = {"W": jnp.asarray(np.random.default_rng(3).normal(size=(2, 2)))}
    plan = factored.make_plan(apply_fn, params, 32, jnp.float64)
    assert plan.sites == () and plan.rest == (0,)
    _agree(apply_fn, params, np.random.default_rng(4).normal(size=(3, 32)))


def test_rows_are_evaluated_alone():
    """A model that mixes rows (attention over its own batch) gets the NTK of its row-by-row version."""
    rng = np.random.default_rng(5)
    x = unit_rows(rng.normal(size=(5, 4)))
    model = make_model("mlp-attn", 10, 2, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = model_apply_fn(model, variables, None)
    row_by_row = lambda p, z: jax.vmap(lambda r: apply_fn(p, r[None])[0])(z)  # noqa: E731
    ours = empirical_ntk(apply_fn, params, x, implementation="factored", dtype="float64")
    assert _rel(ours, empirical_ntk(row_by_row, params, x, dtype="float64")) < 1e-12
    assert _rel(ours, empirical_ntk(apply_fn, params, x, dtype="float64")) > 1e-3


def test_float32_matches_float64():
    rng = np.random.default_rng(6)
    x = unit_rows(rng.normal(size=(20, 30)))
    model = make_model("relu", 256, 3, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = model_apply_fn(model, variables)
    single = empirical_ntk(apply_fn, params, x, implementation="factored", dtype="float32")
    assert single.dtype == jnp.float32
    assert _rel(single, empirical_ntk(apply_fn, params, x, implementation="factored", dtype="float64")) < 1e-5


def test_bad_apply_fn_output_is_named():
    params = {"W": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match=r"apply_fn: expected one \(n, C\) output"):
        empirical_ntk(lambda p, x: (x @ p["W"], x), params, np.ones((2, 3)), implementation="factored")
    with pytest.raises(ValueError, match=r"apply_fn: expected one \(n, C\) output"):
        empirical_ntk(lambda p, x: (x @ p["W"]).sum(axis=1), params, np.ones((2, 3)), implementation="factored")


def test_memory_plan_refuses_before_allocating(monkeypatch):
    x = np.ones((4, 3))
    params = {"W": jnp.ones((3, 2))}
    # Tiny host and device memory: the plan refuses on a CPU (host RAM) and on an accelerator (memory_stats) alike.
    monkeypatch.setattr(memory.budgets, "available_memory", lambda **_: 1000)
    monkeypatch.setattr(memory.budgets, "device_free_memory", lambda device=None: None if device is None or getattr(
        device, "platform", "cpu") == "cpu" else 1000)
    with pytest.raises(memory.MemoryPlanError, match="factored autodiff NTK"):
        empirical_ntk(lambda p, z: z @ p["W"], params, x, implementation="factored")


def test_memory_estimate_counts_every_term():
    est = memory.factored_ntk_memory(10, 20, factor_size=100, pair_size=4, rest_params=7, out_dim=3,
                                     activations=50, trace_output=False, dtype="float64")
    assert est.terms == {
        "kernel": 10 * 20 * 9 * 8,
        "factors (matmul inputs and output cotangents)": 30 * 100 * 8,
        "per-row Jacobians of the other parameters": 2 * 30 * 3 * 7 * 8,
        "reverse-mode cotangents": 30 * 3 * 50 * 8,
        "pairwise products": 2 * 10 * 20 * 9 * 4 * 8,
    }
