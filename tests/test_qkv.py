"""The structured QKV-attention NTK equals autodiff's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernelattn.kernels.empirical import empirical_ntk, model_apply_fn
from kernelattn.kernels.qkv import qkv_empirical_ntk
from kernelattn.models import make_model


@pytest.mark.parametrize("scaling, normalize, train_readout, sigma_b",
                         [("linear", True, True, 0.3), ("sqrt", False, False, 0.0)])
def test_qkv_structured_ntk_equals_autodiff(rng, scaling, normalize, train_readout, sigma_b):
    model = make_model("qkv-attn", 7, 3, head_width=5, scaling=scaling, normalize=normalize,
                       train_readout=train_readout, sigma_b=sigma_b, sigma_w=1.1, sigma_a=0.9,
                       param_dtype=jnp.float64)
    x = rng.normal(size=(9, 4))
    context = x[:6]
    variables = model.init(jax.random.PRNGKey(2), context, context)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(context))
    exact = empirical_ntk(apply_fn, params, x, context, dtype="float64")
    np.testing.assert_allclose(qkv_empirical_ntk(model, variables, x, 6), exact, rtol=1e-11, atol=1e-13)
