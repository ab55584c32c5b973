import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernelattn.models import HeadConfig, make_model
from kernelattn.transforms import linear_attention


def test_head_forward_is_ntk_parameterized(rng):
    x = rng.normal(size=(4, 3))
    model = make_model("relu", 16, 2, sigma_w=1.5, sigma_b=0.5, sigma_a=0.7, train_readout=True,
                       param_dtype=jnp.float64)
    variables = model.init(jax.random.PRNGKey(0), x)
    p = variables["params"]["head"]
    h = 1.5 * x @ np.asarray(p["W"]) / math.sqrt(3) + 0.5 * np.asarray(p["b"])
    expected = 0.7 * np.maximum(h, 0) @ np.asarray(p["a"]) / math.sqrt(16)
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), expected, rtol=1e-12)


def test_fixed_readout_is_random_signs_outside_params(rng):
    x = rng.normal(size=(4, 3))
    variables = make_model("relu", 256).init(jax.random.PRNGKey(0), x)
    assert set(variables["params"]["head"]) == {"W"}
    a = np.asarray(variables["constants"]["head"]["a"])
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert 0.35 < np.mean(a > 0) < 0.65


def test_mlp_attn_feeds_attention_output_to_the_head(rng):
    x = rng.normal(size=(6, 3))
    q = rng.normal(size=(2, 3))
    attn = make_model("mlp-attn", 8, param_dtype=jnp.float64)
    relu = make_model("relu", 8, param_dtype=jnp.float64)
    variables = attn.init(jax.random.PRNGKey(0), x)
    features = linear_attention(x, q)
    np.testing.assert_allclose(np.asarray(attn.apply(variables, q, x)), np.asarray(relu.apply(variables, features)),
                               rtol=1e-12)


def test_qkv_attention_ties_query_and_key_for_linear_scaling(rng):
    x = rng.normal(size=(5, 3))
    linear = make_model("qkv-attn", 8, head_width=4).init(jax.random.PRNGKey(0), x)
    sqrt = make_model("qkv-attn", 8, head_width=4, scaling="sqrt").init(jax.random.PRNGKey(0), x)
    assert "W_K" not in linear["params"]["attention"]
    assert "W_K" in sqrt["params"]["attention"]


def test_qkv_attention_tends_to_parameter_free_gram(rng):
    """Q Kᵀ / h → X Xᵀ / d when W_Q = W_K, so the layer tends to the parameter-free one."""
    x = rng.normal(size=(4, 3))
    model = make_model("qkv-attn", 8, head_width=2**14, param_dtype=jnp.float64)
    w = np.asarray(model.init(jax.random.PRNGKey(0), x)["params"]["attention"]["W_Q"])
    logits = (x @ w / math.sqrt(3)) @ (x @ w / math.sqrt(3)).T / 2**14
    np.testing.assert_allclose(logits, x @ x.T / 3, atol=5 * 3 / math.sqrt(2**14))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "relu", "width": 0}, "width: expected an integer >= 1, got 0"),
        ({"name": "relu", "width": -3}, "width: expected an integer >= 1"),
        ({"name": "relu", "width": 2.5}, "width: expected an integer"),
        ({"name": "relu", "width": 4, "sigma_w": -1.0}, "sigma_w: expected a number >= 0.0"),
        ({"name": "relu", "width": 4, "sigma_a": float("nan")}, "sigma_a: expected a finite number"),
        ({"name": "mlp-attn", "width": 4, "depth": 0}, "depth: expected an integer >= 1, got 0"),
        ({"name": "mlp-attn", "width": 4, "rank": 0}, "rank: expected an integer >= 1"),
        ({"name": "transformer", "width": 4}, "model: expected one of"),
        ({"name": "qkv-attn", "width": 4, "scaling": "cubic"}, "scaling: expected one of"),
        ({"name": "qkv-attn", "width": 4, "head_width": 0}, "head_width: expected an integer >= 1"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_model(**kwargs)


def test_out_dim_validation():
    with pytest.raises(ValueError, match="out_dim: expected an integer >= 1"):
        HeadConfig(4, out_dim=0)
