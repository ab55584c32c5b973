import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import unit_rows
from kernelattn.kernels.empirical import (
    autodiff_ntk_fn,
    draw_head_units,
    empirical_ntk,
    empirical_ntk_fn,
    head_variables,
    model_apply_fn,
    streaming_head_ntk,
    structured_head_ntk,
)
from kernelattn.models import HeadConfig, head_config, make_model


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("model_name", ["relu", "mlp-attn"])
@pytest.mark.parametrize("train_readout", [False, True])
@pytest.mark.parametrize("sigma_b", [0.0, 0.4])
@pytest.mark.parametrize("out_dim", [1, 10])
def test_structured_equals_autodiff(rng, model_name, train_readout, sigma_b, out_dim):
    x = unit_rows(rng.normal(size=(9, 6)))
    x_test = unit_rows(rng.normal(size=(4, 6)))
    model = make_model(model_name, 33, out_dim, train_readout=train_readout, sigma_b=sigma_b,
                       sigma_w=1.2, sigma_a=0.7, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(1), x)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(x))
    if model_name == "mlp-attn":
        features, features_test = model.attention and None, None
        from kernelattn.transforms import attend

        features, features_test = attend(x, x, model.attention), attend(x_test, x, model.attention)
    else:
        features, features_test = x, x_test
    for trace in (True, False):
        generic = empirical_ntk(apply_fn, params, x_test, x, trace_output=trace, dtype="float64")
        structured = structured_head_ntk(head_variables(variables), head_config(model), features_test,
                                         features, trace_output=trace, width_chunk=8, dtype="float64")
        assert generic.shape == structured.shape
        assert _rel(structured, generic) < 1e-10


def test_ntvp_equals_jacobian_contraction(rng):
    x = rng.normal(size=(5, 3))
    model = make_model("qkv-attn", 16, 2, head_width=8, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(x))
    for trace in (True, False):
        a = empirical_ntk(apply_fn, params, x, trace_output=trace, dtype="float64")
        b = empirical_ntk(apply_fn, params, x, trace_output=trace, implementation="ntvp", dtype="float64")
        assert _rel(b, a) < 1e-12


def test_chunking_does_not_change_the_kernel(rng):
    x = unit_rows(rng.normal(size=(6, 4)))
    model = make_model("relu", 100, 1, train_readout=True, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x)
    whole = structured_head_ntk(head_variables(variables), head_config(model), x, dtype="float64", width_chunk=100)
    for chunk in (1, 7, 33, 4096):
        part = structured_head_ntk(head_variables(variables), head_config(model), x, dtype="float64", width_chunk=chunk)
        assert _rel(part, whole) < 1e-13


def test_streaming_equals_structured_on_the_same_draw(rng):
    x = unit_rows(rng.normal(size=(5, 4)))
    head = HeadConfig(width=50, out_dim=2, sigma_b=0.3, train_readout=True)
    key, chunk = jax.random.PRNGKey(3), 16
    pieces = [draw_head_units(key, i, 4, chunk, head.width, head, jnp.float64) for i in range(4)]
    variables = {
        "W": jnp.concatenate([p[0] for p in pieces], axis=1)[:, :50],
        "b": jnp.concatenate([p[1] for p in pieces])[:50],
        "a": jnp.concatenate([p[2] for p in pieces])[:50],
    }
    streamed = streaming_head_ntk(key, head, x, width_chunk=chunk, dtype="float64")
    assert _rel(streamed, structured_head_ntk(variables, head, x, dtype="float64")) < 1e-13


def test_kernels_are_symmetric_psd(rng):
    x = unit_rows(rng.normal(size=(12, 5)))
    theta = np.asarray(streaming_head_ntk(jax.random.PRNGKey(0), HeadConfig(256), x, dtype="float64"))
    np.testing.assert_allclose(theta, theta.T, atol=1e-14)
    assert np.linalg.eigvalsh(theta).min() > -1e-12


def test_float32_path(rng):
    x = unit_rows(rng.normal(size=(6, 4))).astype(np.float32)
    theta = streaming_head_ntk(jax.random.PRNGKey(0), HeadConfig(64), x)
    assert theta.dtype == np.float32


def test_bad_arguments(rng):
    x = rng.normal(size=(4, 3))
    model = make_model("relu", 8)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = model_apply_fn(model, variables)
    with pytest.raises(ValueError, match="implementation: expected one of"):
        empirical_ntk(apply_fn, params, x, implementation="magic")
    with pytest.raises(ValueError, match="width_chunk: expected an integer >= 1"):
        streaming_head_ntk(jax.random.PRNGKey(0), HeadConfig(8), x, width_chunk=0)
    with pytest.raises(ValueError, match=r"head_variables\['W'\]: expected shape \(5, 8\)"):
        structured_head_ntk(head_variables(variables), head_config(model), rng.normal(size=(4, 5)))


def test_row_blocks_do_not_change_the_kernel(rng):
    x = unit_rows(rng.normal(size=(11, 4)))
    model = make_model("mlp-attn", 16, 3, train_readout=True, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(x))
    whole = empirical_ntk(apply_fn, params, x, trace_output=False, dtype="float64")
    for block in (1, 4, 11, 50):
        blocked = empirical_ntk(apply_fn, params, x, trace_output=False, row_block=block, dtype="float64")
        assert _rel(blocked, whole) < 1e-13


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp", "factored"])
def test_empirical_ntk_fn_is_the_same_kernel_under_jit(rng, implementation):
    x, x_test = unit_rows(rng.normal(size=(6, 5))), rng.normal(size=(3, 5))
    model = make_model("qkv-attn", 12, 2, head_width=8, param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(x))
    ntk_fn = jax.jit(autodiff_ntk_fn(apply_fn, trace_output=False, implementation=implementation))
    checked = empirical_ntk(apply_fn, params, x_test, x, trace_output=False, implementation=implementation,
                            dtype="float64")
    assert _rel(ntk_fn(params, jnp.asarray(x_test), jnp.asarray(x)), checked) < 1e-13
    assert _rel(ntk_fn(params, jnp.asarray(x)), empirical_ntk(apply_fn, params, x, trace_output=False,
                                                              dtype="float64")) < 1e-12


def test_empirical_ntk_fn_names_a_bad_implementation():
    with pytest.raises(ValueError, match="implementation"):
        empirical_ntk_fn(lambda p, x: x, implementation="fast")
    with pytest.raises(ValueError, match="implementation"):
        autodiff_ntk_fn(lambda p, x: x, implementation="fast")
