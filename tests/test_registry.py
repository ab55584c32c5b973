"""The registry of models and datasets: aliases agree everywhere, and a user's own model ("module:attr") and
own data (an .npz file) run through a sweep spec, as the README's "Adding a dataset or a model" says."""

from __future__ import annotations

import json
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernelattn import cli, registry
from kernelattn.analysis.labels import model_label
from kernelattn.kernels.empirical import empirical_ntk, model_apply_fn
from kernelattn.models import canonical_model_name, make_model
from kernelattn.experiments.specs import SpecError, parse_spec
from kernelattn.experiments.store import ResultStore
from kernelattn.experiments.sweeps import run_sweep

# ----------------------------------------------------------------------------- a user's model and data


class TinyTanhNet(nn.Module):
    """A model defined outside kernelattn: a two-layer tanh network in NTK parameterization."""

    width: int
    out_dim: int
    scale: float = 1.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        normal = nn.initializers.normal(stddev=1.0)
        w1 = self.param("W1", normal, (x.shape[-1], self.width), self.param_dtype)
        w2 = self.param("W2", normal, (self.width, self.out_dim), self.param_dtype)
        return jnp.tanh(self.scale * (x @ w1) / math.sqrt(x.shape[-1])) @ w2 / math.sqrt(self.width)


def build_tiny(width: int, out_dim: int, *, scale: float = 1.0, param_dtype=jnp.float32) -> TinyTanhNet:
    """The constructor a spec names as "test_registry:build_tiny"."""
    return TinyTanhNet(width, out_dim, scale, param_dtype)


def build_needs_depth(width: int, out_dim: int, *, depth: int) -> TinyTanhNet:
    return TinyTanhNet(width, out_dim)


TINY = f"{__name__}:build_tiny"


def power_features(x_train: np.ndarray, x_all: np.ndarray, *, power: int = 3) -> np.ndarray:
    """A user's parameter-free feature map: signed powers of the inputs, unit rows."""
    z = np.sign(x_all) * np.abs(x_all) ** power
    return z / np.linalg.norm(z, axis=1, keepdims=True)


#: A user's feature model under the MLP head: a registry entry named in a spec as "test_registry:POWER".
POWER = registry.ModelEntry("power", "Power", options=(("power", 3),), features=f"{__name__}:power_features")


@pytest.fixture
def blobs(tmp_path):
    """Three Gaussian blobs in 6 dimensions, saved as the README says: arrays X and y."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = np.repeat(np.array(["a", "b", "c"]), 20)
    x = centers[np.repeat(np.arange(3), 20)] + rng.normal(size=(60, 6))
    path = tmp_path / "blobs.npz"
    np.savez(path, X=x, y=y)
    return path


def _spec(path, **changes):
    spec = {
        "name": "own",
        "kind": "kernel",
        "datasets": [{"name": str(path), "n_train": 24, "n_test": 6, "classes": ["a", "c"]}],
        "models": [{"name": TINY, "scale": 1.5}, {"name": "relu"}],
        "widths": [8, 512],
        "seeds": 2,
        "dtype": "float64",
        "ridge": 1e-2,
        "kernel": {"limit_width": 4096, "limit_seeds": 2, "width_chunk": 64},
    }
    spec.update(changes)
    return spec


# ----------------------------------------------------------------------------- the registry


def test_one_alias_table():
    for alias, name in (("2l-relu", "relu"), ("attn", "mlp-attn"), ("mlp_attn", "mlp-attn"), ("qkv", "qkv-attn"),
                        ("qkv_attn", "qkv-attn")):
        assert canonical_model_name(alias) == name  # models (influence, malleability) ...
        assert parse_spec(_spec("x", datasets=[{"name": "digits"}], models=[{"name": alias}])).models[0].name == name
        assert model_label(alias) == registry.MODELS[name].label  # ... specs, report labels
        assert type(make_model(alias, 4)).__name__ in ("TwoLayerReLU", "AttentionMLP", "QKVAttentionMLP")
    with pytest.raises(ValueError, match="did you mean 'qkv'"):
        canonical_model_name("qvk")


def test_user_model_entry_from_a_constructor():
    entry = registry.model_entry(TINY)
    assert entry.name == TINY and entry.label == "build_tiny" and not entry.is_feature_model
    assert entry.defaults() == {"scale": 1.0}
    module = entry.network(5, 2, scale=2.0, sigma_w=1.3, param_dtype=jnp.float64)  # head options it lacks: dropped
    assert isinstance(module, TinyTanhNet) and module.scale == 2.0 and module.param_dtype == jnp.float64
    x = np.random.default_rng(1).normal(size=(7, 3))
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x[:4]), jnp.asarray(x[:4]))
    apply_fn, params = model_apply_fn(module, variables, jnp.asarray(x[:4]))
    exact = empirical_ntk(apply_fn, params, x, x[:4], dtype="float64")
    np.testing.assert_allclose(entry.kernel(module, variables, x, 4), exact, rtol=1e-12)
    with pytest.raises(ValueError, match="no attribute"):
        registry.model_entry(f"{__name__}:missing")


def test_spec_validates_a_user_model_and_an_npz_file(blobs, tmp_path):
    spec = parse_spec(_spec(blobs))
    assert spec.models[0].label == "build_tiny (scale=1.5)" and spec.models[1].label == "2L-ReLU"
    assert spec.datasets[0].label == "blobs a-vs-c"
    assert dict(spec.datasets[0].options)["sha256"] == registry.resolve("kernelattn.data.npz:file_sha256")(blobs)
    assert parse_spec(spec.to_dict()) == spec
    bad = [
        ({"models": [{"name": TINY, "scael": 2}]}, "models[0].scael", "did you mean 'scale'"),
        ({"models": [{"name": f"{__name__}:build_needs_depth"}]}, "models[0].depth", "required key is missing"),
        ({"models": [{"name": "no_such_module_xyz:f"}]}, "models[0].name", "cannot import"),
        ({"datasets": [{"name": str(tmp_path / "none.npz")}]}, "datasets[0].name", "no such .npz file"),
        ({"datasets": [{"name": str(blobs), "kappa": 3}]}, "datasets[0].kappa", "unknown key"),
        ({"datasets": [{"name": str(blobs), "sha256": "0" * 64}]}, "datasets[0].sha256", "the file changed"),
    ]
    for changes, path, fragment in bad:
        with pytest.raises(SpecError) as info:
            parse_spec(_spec(blobs, **changes))
        assert info.value.path == path and fragment in str(info.value), (path, str(info.value))


def test_user_model_and_data_run_through_a_sweep_spec(blobs, tmp_path):
    results = run_sweep(_spec(blobs), tmp_path, progress=False)
    assert results.n_computed == results.n_cells == 2 * 2 * 2 and results.n_missing == 0
    cells = results.cells
    assert set(cells["model"]) == {"build_tiny (scale=1.5)", "2L-ReLU"} and set(cells["dataset"]) == {"blobs a-vs-c"}
    tiny, relu = cells[cells["model"] == "build_tiny (scale=1.5)"], cells[cells["model"] == "2L-ReLU"]
    assert set(tiny["limit"]) == {"monte-carlo"} and set(relu["limit"]) == {"closed-form"}
    assert np.all(np.isfinite(cells["rel_fro"])) and np.all(cells["rel_fro"] > 0)
    for rows in (tiny, relu):  # both converge: the wide networks are closer to their limit
        means = rows.groupby("width")["rel_fro"].mean()
        assert means[512] < means[8]
    # The records name the model by its reference and the data by its path and content hash.
    record = ResultStore.open(results.store_path, create=False).get(tiny["key"].iloc[0])
    assert record["cell"]["model"] == {"name": TINY, "scale": 1.5}
    assert record["cell"]["dataset"]["name"] == str(blobs) and len(record["cell"]["dataset"]["sha256"]) == 64
    assert "limit" in record["cell"] and "width_chunk" not in record["cell"]["head"]
    # Another file content is another dataset: no stored cell is reused.
    np.savez(blobs, X=np.load(blobs)["X"] * 2, y=np.load(blobs)["y"])
    again = run_sweep(_spec(blobs), tmp_path, progress=False)
    assert again.n_computed == again.n_cells


def test_user_feature_model_gets_the_streamed_kernel_and_the_closed_form_limit(blobs, tmp_path):
    spec = _spec(blobs, models=[{"name": f"{__name__}:POWER", "power": 2}], seeds=1)
    results = run_sweep(spec, tmp_path, progress=False)
    cells = results.cells
    assert set(cells["model"]) == {"POWER (power=2)"} and set(cells["limit"]) == {"closed-form"}
    assert cells["rel_fro"].iloc[1] < cells["rel_fro"].iloc[0]  # width 512 closer to Θ_∞ than width 8
    record = ResultStore.open(results.store_path, create=False).get(cells["key"].iloc[0])
    assert record["cell"]["model"] == {"name": f"{__name__}:POWER", "power": 2}
    assert record["cell"]["head"]["width_chunk"] == 64  # the streamed draw's block size is in the key


def test_user_model_trains_in_a_training_sweep(blobs, tmp_path):
    spec = _spec(blobs, kind="training", models=[{"name": TINY}], widths=[16], seeds=1,
                 training={"epochs": 3, "batch_size": 8})
    results = run_sweep(spec, tmp_path, progress=False)
    row = results.cells.iloc[0]
    assert results.n_computed == 1 and np.isfinite(row["ntk_distance"]) and np.isfinite(row["lin_distance"])


def test_cli_reads_an_npz_file(blobs, capsys):
    assert cli.main(["data", "info", str(blobs), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["a", "b", "c"] and summary["n_train"] + summary["n_test"] == 60
