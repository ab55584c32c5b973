"""The registry's composer-defined models ("mlp-relu", "mlp-attn-deep"; kernelattn.kernels.composed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import unit_rows
from kernelattn import registry
from kernelattn.analysis.labels import model_label
from kernelattn.experiments.specs import SpecError, parse_spec
from kernelattn.experiments.sweeps import run_sweep
from kernelattn.kernels.analytic import head_kernels
from kernelattn.kernels.composed import hidden_stack
from kernelattn.models import HeadConfig
from kernelattn.transforms import linear_attention

HEAD = {"sigma_w": 1.3, "sigma_b": 0.2, "sigma_a": 0.7}

SPEC = {
    "name": "depth",
    "kind": "kernel",
    "datasets": [{"name": "synthetic", "n_train": 16, "n_test": 4, "d": 5, "kappa": 10, "n_classes": 2}],
    "models": [{"name": "mlp-relu", "depth": 2}, {"name": "mlp-attn-deep", "depth": 2}],
    "widths": [8, 32],
    "seeds": 2,
    "ridge": 1e-2,
}


@pytest.mark.parametrize("train_readout", [False, True])
def test_depth_one_is_2l_relu_and_mlp_attn(rng, train_readout):
    """At L = 1 the closed forms are the head's (2L-ReLU on the inputs, MLP-Attn on linear attention)."""
    x = unit_rows(rng.normal(size=(14, 6)))
    head = HeadConfig(1, 1, use_bias=True, train_readout=train_readout, **HEAD)
    for name, features in (("mlp-relu", x), ("mlp-attn-deep", np.asarray(linear_attention(x[:10], x)))):
        theta = registry.model_entry(name).limit_kernel(x, x[:10], depth=1, train_readout=train_readout, **HEAD)
        expected = np.asarray(head_kernels(features, None, head, dtype="float64").ntk)[:, :10]
        # arccos at c near 1 turns rounding of c into √ε: 1e-8 relative at worst (jax 0.4.25)
        np.testing.assert_allclose(theta, expected, rtol=1e-7, atol=1e-14)


def test_limit_is_kernel_fn_and_the_wide_network_approaches_it(rng):
    x = unit_rows(rng.normal(size=(12, 5)))
    entry = registry.model_entry("mlp-attn-deep")
    theta = entry.limit_kernel(x, x[:8], depth=2, **HEAD)
    k = hidden_stack(2, 1, 5, attention=True, sigma_w=1.3, sigma_b=0.2).kernel_fn(x, x[:8], context=x[:8])
    np.testing.assert_allclose(theta, HEAD["sigma_a"] ** 2 * np.asarray(k.ntk), rtol=1e-13)
    errors = []
    for width in (64, 4096):
        module = entry.network(width, 1, depth=2, param_dtype=jnp.float64, **HEAD)
        ctx = jnp.asarray(x[:8])
        variables = module.init(jax.random.PRNGKey(0), ctx, ctx)
        empirical = entry.kernel(module, variables, x, 8)
        errors.append(np.linalg.norm(empirical - theta) / np.linalg.norm(theta))
    assert errors[1] < 0.05 and errors[1] < errors[0] / 2, errors


def test_sweep_with_composer_models_end_to_end(tmp_path):
    results = run_sweep(SPEC, tmp_path, progress=False)
    cells = results.cells
    assert results.n_computed == 8 and set(cells["limit"]) == {"closed-form"}
    assert list(results.fits["model"]) == ["ReLU MLP (L=2)", "MLP-Attn (L=2)"]
    assert np.all(np.isfinite(cells["rel_fro"])) and np.all(cells["rel_fro"] > 0)


def test_labels_and_depth_validation():
    assert model_label({"name": "mlp-relu", "depth": 2}) == "ReLU MLP (L=2)"
    assert model_label("mlp-attn-deep") == "MLP-Attn (L=1)"
    spec = parse_spec({**SPEC, "models": [{"name": "deep-relu", "depth": 3}]})
    assert spec.models[0].name == "mlp-relu" and spec.models[0].depth == 3
    assert spec.models[0].label == "ReLU MLP (L=3)"
    for bad in (0, 2.5, "two", True):
        with pytest.raises(SpecError, match=r"models\[0\].depth"):
            parse_spec({**SPEC, "models": [{"name": "mlp-relu", "depth": bad}]})
    with pytest.raises(SpecError, match="did you mean 'depth'"):
        parse_spec({**SPEC, "models": [{"name": "mlp-relu", "dpeth": 2}]})
    with pytest.raises(SpecError, match="rank"):
        parse_spec({**SPEC, "models": [{"name": "mlp-relu", "rank": 2}]})
    with pytest.raises(SpecError, match="did you mean 'mlp-relu'"):
        parse_spec({**SPEC, "models": [{"name": "mlp-rleu"}]})
    with pytest.raises(ValueError, match="depth"):
        registry.model_entry("mlp-relu").network(8, 1, depth=100)
