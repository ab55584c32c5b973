"""empirical_ntk_fn with neural-tangents' conventions: every route against brute-force Jacobians (float64)."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import unit_rows
from kernelattn.errors import InputValueError
from kernelattn.kernels.empirical import autodiff_ntk_fn, empirical_ntk_fn, model_apply_fn
from kernelattn.kernels.memory import MemoryPlanError
from kernelattn.models import AttentionMLP, HeadConfig, TwoLayerReLU

ROUTES = ("jacobian", "ntvp", "factored", "auto")


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _full(f, params, x1, x2):
    """Brute force: Σ_p J1 ⊗ J2 from the whole-batch Jacobians ``(n, *O, *p)``, as ``(n1, n2, *O, *O)``."""
    (n1, *out), n2 = jax.eval_shape(f, params, x1).shape, jax.eval_shape(f, params, x2).shape[0]
    j1, j2 = jax.jacobian(f)(params, x1), jax.jacobian(f)(params, x2)
    total = sum(np.einsum("icp,jdp->ijcd", np.asarray(a).reshape(n1, math.prod(out), -1),
                          np.asarray(b).reshape(n2, math.prod(out), -1))
                for a, b in zip(jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2)))  # fmt: skip
    return total.reshape(n1, n2, *out, *out)


def _mlp(params, x):
    return jnp.tanh(x @ params["W1"] / 2.0) @ params["W2"]


def _image_model(params, x):  # (n, 4, 4, 1) images → (n, 3)
    pooled = jnp.tanh(jnp.einsum("nhwc,ck->nhwk", x, params["K"])).mean(axis=(1, 2))
    return pooled @ params["V"]


def _pytree_model(params, x):  # {"a": (n, 3), "b": (n, 2, 2)} → (n, 2)
    h = jnp.tanh(x["a"] @ params["A"] + x["b"].reshape(x["b"].shape[0], -1) @ params["B"])
    return h @ params["V"]


def _grid_model(params, x):  # (n, 3) → (n, 2, 4): two output axes
    return jnp.tanh(x @ params["W"]).reshape(x.shape[0], 2, 4) * params["s"]


def _params(key, shapes):
    keys = jax.random.split(jax.random.PRNGKey(key), len(shapes))
    return {name: jax.random.normal(k, shape, jnp.float64) for k, (name, shape) in zip(keys, shapes.items())}


def _cases(rng):
    mlp = (_mlp, _params(0, {"W1": (5, 7), "W2": (7, 3)}), rng.normal(size=(6, 5)), rng.normal(size=(4, 5)))
    image = (_image_model, _params(1, {"K": (1, 6), "V": (6, 3)}), rng.normal(size=(5, 4, 4, 1)),
             rng.normal(size=(3, 4, 4, 1)))  # fmt: skip
    tree = (_pytree_model, _params(2, {"A": (3, 5), "B": (4, 5), "V": (5, 2)}),
            {"a": rng.normal(size=(5, 3)), "b": rng.normal(size=(5, 2, 2))},
            {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=(2, 2, 2))})  # fmt: skip
    x = unit_rows(rng.normal(size=(6, 5)))
    model = AttentionMLP(HeadConfig(width=9, out_dim=2, sigma_b=0.5), param_dtype=jnp.float64)
    attn = (*model_apply_fn(model, model.init(jax.random.PRNGKey(3), x, x), jnp.asarray(x)), x,
            unit_rows(rng.normal(size=(3, 5))))  # fmt: skip
    return {"mlp": mlp, "image": image, "pytree": tree, "attention": attn}


@pytest.mark.parametrize("case", ["mlp", "image", "pytree", "attention"])
def test_every_route_is_the_brute_force_kernel(rng, case):
    f, params, x1, x2 = _cases(rng)[case]
    full = _full(f, params, x1, x2)
    routes = ROUTES + (("structured",) if case == "attention" else ())
    for implementation in routes:
        ntk = empirical_ntk_fn(f, trace_axes=(), implementation=implementation)
        assert _rel(ntk(x1, x2, params), full) < 1e-12, implementation
        traced = empirical_ntk_fn(f, implementation=implementation)(x1, None, params)
        assert _rel(traced, np.einsum("ijcc->ij", _full(f, params, x1, x1)) / full.shape[-1]) < 1e-12, implementation


def test_trace_and_diagonal_axes_follow_neural_tangents_layout(rng):
    params, x1, x2 = _params(4, {"W": (3, 8), "s": (4,)}), rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    full = _full(_grid_model, params, x1, x2)  # (4, 3, 2, 4, 2, 4): i j a c a' c'
    expected = {
        ((-1,), ()): np.einsum("ijacbc->ijab", full) / 4,
        ((), ()): np.einsum("ijacbd->ijabcd", full),
        ((), (-1,)): np.einsum("ijacbc->ijabc", full),
        ((1, 2), ()): np.einsum("ijacac->ij", full) / 8,
        ((-1,), (1,)): np.einsum("ijacac->ija", full) / 4,
        ((1,), (2,)): np.einsum("ijacac->ijc", full) / 2,
    }
    for (trace_axes, diagonal_axes), want in expected.items():
        for implementation in ROUTES:
            ntk = empirical_ntk_fn(_grid_model, trace_axes, diagonal_axes, implementation=implementation)
            assert _rel(ntk(x1, x2, params), want) < 1e-12, (trace_axes, diagonal_axes, implementation)


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_ragged_blocks_are_the_unbatched_kernel(rng, batch_size):
    f, params, x1, x2 = _cases(rng)["image"]  # n1 = 5, n2 = 3: ragged for 2 and 4
    for implementation in ROUTES:
        whole = empirical_ntk_fn(f, trace_axes=(), implementation=implementation)
        blocked = empirical_ntk_fn(f, trace_axes=(), implementation=implementation, batch_size=batch_size)
        assert _rel(blocked(x1, x2, params), whole(x1, x2, params)) < 1e-13
        assert _rel(blocked(x1, None, params), whole(x1, None, params)) < 1e-13


def test_structured_and_auto_on_the_two_layer_head(rng):
    x, x2 = unit_rows(rng.normal(size=(7, 6))), unit_rows(rng.normal(size=(3, 6)))
    model = TwoLayerReLU(HeadConfig(width=16, out_dim=3), param_dtype=jnp.float64)
    f, params = model_apply_fn(model, model.init(jax.random.PRNGKey(0), x))
    ntk = empirical_ntk_fn(f)
    assert ntk.explain(x, x2, params).implementation == "structured"
    reference = empirical_ntk_fn(f, implementation="jacobian")(x, x2, params)
    assert _rel(ntk(x, x2, params), reference) < 1e-12
    assert _rel(jax.jit(ntk)(x, x2, params), reference) < 1e-12


def test_auto_reports_its_choice_and_the_memory_plan_splits(rng):
    f, params, x1, _ = _cases(rng)["mlp"]
    choice = empirical_ntk_fn(f).explain(x1, None, params)
    assert choice.implementation in ROUTES and {r.implementation for r in choice.routes} >= {"jacobian", "ntvp"}
    assert "implementation=" in str(choice) and "structured" in str(choice)  # why structured was refused
    whole = empirical_ntk_fn(f, implementation="jacobian").explain(x1, None, params).routes[0].peak
    tight = empirical_ntk_fn(f, implementation="jacobian", budget=whole - 1)
    small = tight.explain(x1, None, params)
    assert small.batch_size is not None and small.batch_size < 6
    assert _rel(tight(x1, None, params), empirical_ntk_fn(f, implementation="jacobian")(x1, None, params)) < 1e-13
    with pytest.raises(MemoryPlanError, match="batch_size"):
        empirical_ntk_fn(f, implementation="jacobian", budget=1)(x1, None, params)


def test_rows_that_interact_take_the_whole_batch(rng):
    x = unit_rows(rng.normal(size=(5, 4)))
    model = AttentionMLP(HeadConfig(width=6, out_dim=2), param_dtype=jnp.float64)
    f, params = model_apply_fn(model, model.init(jax.random.PRNGKey(0), x, x), None)  # attends over its own batch
    whole = np.einsum("ijcc->ij", _full(f, params, x, x)) / 2
    for implementation in ("jacobian", "ntvp", "structured", "auto"):
        assert _rel(empirical_ntk_fn(f, vmap_axes=None, implementation=implementation)(x, None, params), whole) < 1e-12
    with pytest.raises(InputValueError, match="^implementation: 'factored'.*vmap_axes=0"):
        empirical_ntk_fn(f, vmap_axes=None, implementation="factored")(x, None, params)


def test_old_usage_warns_and_keeps_its_numbers(rng):
    f, params, x1, x2 = _cases(rng)["mlp"]
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    old = autodiff_ntk_fn(f)(params, x1, x2)
    with pytest.warns(DeprecationWarning, match="trace_output"):
        by_keyword = empirical_ntk_fn(f, trace_output=True)
    assert _rel(by_keyword(params, x1, x2), old) == 0.0
    with pytest.warns(DeprecationWarning, match=r"ntk_fn\(params, x1, x2\)"):
        assert _rel(empirical_ntk_fn(f)(params, x1, x2), old) == 0.0
    with pytest.warns(DeprecationWarning):
        assert _rel(empirical_ntk_fn(f)(params, x1), autodiff_ntk_fn(f)(params, x1)) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _rel(empirical_ntk_fn(f, vmap_axes=None, implementation="jacobian")(x1, x2, params), old) == 0.0


@pytest.mark.parametrize(("call", "message"), [
    (lambda f, p, x: empirical_ntk_fn(f, implementation="fast"), "^implementation: expected one of"),
    (lambda f, p, x: empirical_ntk_fn(f, vmap_axes=1), "^vmap_axes: expected 0"),
    (lambda f, p, x: empirical_ntk_fn(f, batch_size=0), "^batch_size"),
    (lambda f, p, x: empirical_ntk_fn(f, vmap_axes=None, batch_size=2), "^batch_size: rows interact"),
    (lambda f, p, x: empirical_ntk_fn(f, trace_axes=(0,))(x, None, p), "^trace_axes: the batch axis 0"),
    (lambda f, p, x: empirical_ntk_fn(f, trace_axes=(3,))(x, None, p), "^trace_axes: axes \\[3\\] out of range"),
    (lambda f, p, x: empirical_ntk_fn(f, (-1,), (-1,))(x, None, p), "^diagonal_axes: axes \\[1\\] are also"),
    (lambda f, p, x: empirical_ntk_fn(f, implementation="structured")(x, None, p), "^implementation: 'structured'"),
    (lambda f, p, x: empirical_ntk_fn(f)(x, x[:, :2], p), "^x2: expected rows like x1's"),
    (lambda f, p, x: empirical_ntk_fn(lambda q, z: f(q, z)[0])(x, None, p), "^f: expected outputs"),
])  # fmt: skip
def test_bad_inputs_name_the_argument_in_one_line(rng, call, message):
    f, params, x, _ = _cases(rng)["mlp"]
    with pytest.raises(ValueError, match=message) as info:
        call(f, params, x)
    assert "\n" not in str(info.value)
