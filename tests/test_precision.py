"""The matmul precision policy (kernelattn._precision): HIGHEST everywhere unless "fast" is asked for.

The main check reads the jaxpr of each public kernel function (``jax.make_jaxpr``
of a call on concrete arrays, walking every sub-jaxpr: jit, scan, while, cond,
custom_jvp …) and asserts that every floating-point ``dot_general`` carries
``Precision.HIGHEST`` — or, with ``precision="fast"``, that none does. Integer
``dot_general`` s (the exact int8 path) are exact whatever the precision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import unit_rows
from kernelattn import _precision as P
from kernelattn.kernels import guards
from kernelattn.kernels.analytic import head_kernels, head_kernels_fn, qkv_attention_nngp
from kernelattn.kernels.empirical import (
    empirical_ntk,
    head_ntk_fn,
    model_apply_fn,
    streaming_head_ntk,
    structured_head_ntk,
)
from kernelattn.models import HeadConfig, make_model
from kernelattn.learning.training import TrainConfig, _run_epochs, as_traced_function, make_optimizer
from kernelattn.transforms import AttentionConfig, attend

HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- reading jaxprs


def _sub_jaxprs(value):
    """Jaxprs inside an equation parameter (ClosedJaxpr, Jaxpr, or tuples of them: scan, while, cond, pjit …)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif hasattr(value, "eqns"):
        yield value


def dot_generals(closed_jaxpr) -> list:
    """Every ``dot_general`` equation of a jaxpr and its sub-jaxprs."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn)
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    walk(sub)

    walk(closed_jaxpr.jaxpr)
    return found


def is_highest(precision) -> bool:
    """``eqn.params['precision']`` is HIGHEST: a pair of Precision (jax 0.4.25 and new), a single
    Precision, or a full-precision DotAlgorithmPreset (new jax)."""
    if precision is None:
        return False
    if isinstance(precision, (tuple, list)):
        return len(precision) > 0 and all(p == HIGHEST for p in precision)
    if precision == HIGHEST:
        return True
    return getattr(precision, "name", str(precision)) in ("F32_F32_F32", "F64_F64_F64")


def _is_float(eqn) -> bool:
    return all(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.invars)


def float_dot_precisions(fn) -> list:
    """Precisions of the floating-point dot_generals of ``fn()``; integer ones must accumulate in int32."""
    eqns = dot_generals(jax.make_jaxpr(fn)())
    for eqn in eqns:
        if not _is_float(eqn):
            assert all(jnp.issubdtype(v.aval.dtype, jnp.integer) for v in eqn.invars)
            assert eqn.params["preferred_element_type"] == jnp.int32
    precisions = [eqn.params["precision"] for eqn in eqns if _is_float(eqn)]
    assert precisions, "no floating-point dot_general found"
    return precisions


# --------------------------------------------------------------------------- the public kernels

RNG = np.random.default_rng(0)
X = unit_rows(RNG.normal(size=(6, 5)))
X2 = unit_rows(RNG.normal(size=(3, 5)))
HEAD = HeadConfig(20, 2, sigma_b=0.3)
HEAD_TRAINED = HeadConfig(20, 2, train_readout=True)
VARIABLES = {"W": RNG.normal(size=(5, 20)), "b": RNG.normal(size=20),
             "a": np.where(RNG.random((20, 2)) < 0.5, 1.0, -1.0)}


def _model_case(name, precision, implementation, **options):
    model = make_model(name, 8, 2, **options)
    variables = model.init(jax.random.PRNGKey(0), X, X)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(X, jnp.float32))
    return lambda: empirical_ntk(apply_fn, params, X2, X, implementation=implementation, precision=precision)


def _user_model(p, x):  # a model that names no precision: the policy must reach it
    return jnp.tanh(x @ p["W"]) @ p["V"]


USER_PARAMS = {"W": jnp.ones((5, 4)) / 5, "V": jnp.ones((4, 2)) / 4}


def _train_case(precision):
    model = make_model("mlp-attn", 8, 1)
    variables = model.init(jax.random.PRNGKey(0), X, X)
    apply_fn, params = model_apply_fn(model, variables, jnp.asarray(X, jnp.float32))
    optimizer = make_optimizer(TrainConfig(epochs=1, batch_size=3))
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)
    x, y = jnp.asarray(X, jnp.float32), jnp.ones((6, 1), jnp.float32)
    return lambda: _run_epochs(as_traced_function(apply_fn), optimizer, "mse", params, optimizer.init(params), x, y,
                               jax.random.split(jax.random.PRNGKey(0), 1), 3, precision)


def _model_apply_case(name, precision, **options):
    model = make_model(name, 8, 2, precision=precision, **options)
    variables = model.init(jax.random.PRNGKey(0), X, X)
    return lambda: model.apply(variables, jnp.asarray(X2, jnp.float32), jnp.asarray(X, jnp.float32))


CASES = {
    "head_kernels": lambda p: lambda: head_kernels(X, X2, HEAD, dtype="float32", precision=p).ntk,
    "head_kernels_fn": lambda p: lambda: head_kernels_fn(jnp.asarray(X, jnp.float32), None, HEAD, precision=p).ntk,
    "qkv_attention_nngp": lambda p: lambda: qkv_attention_nngp(X, X2, dtype="float32", precision=p),
    "attend": lambda p: lambda: attend(jnp.asarray(X2, jnp.float32), jnp.asarray(X, jnp.float32),
                                       AttentionConfig(depth=2, rank=3), precision=p),
    "structured float": lambda p: lambda: structured_head_ntk(VARIABLES, HEAD, X, X2, method="float", precision=p),
    "structured float trained full": lambda p: lambda: structured_head_ntk(
        {**VARIABLES, "a": RNG.normal(size=(20, 2))}, HEAD_TRAINED, X, trace_output=False, precision=p),
    "structured int8": lambda p: lambda: structured_head_ntk(VARIABLES, HEAD, X, method="int8", precision=p),
    "structured popcount full": lambda p: lambda: structured_head_ntk(VARIABLES, HEAD, X, trace_output=False,
                                                                      method="popcount", width_chunk=8, precision=p),
    "streaming": lambda p: lambda: streaming_head_ntk(jax.random.PRNGKey(0), HEAD, X, X2, width_chunk=8,
                                                      precision=p),
    "head_ntk_fn": lambda p: lambda: head_ntk_fn({k: jnp.asarray(v, jnp.float32) for k, v in VARIABLES.items()},
                                                 HEAD, jnp.asarray(X, jnp.float32), precision=p),
    "empirical jacobian mlp-attn": lambda p: _model_case("mlp-attn", p, "jacobian", depth=2),
    "empirical ntvp qkv-attn": lambda p: _model_case("qkv-attn", p, "ntvp", head_width=4),
    "empirical factored mlp-attn": lambda p: _model_case("mlp-attn", p, "factored"),
    "empirical jacobian user model": lambda p: lambda: empirical_ntk(_user_model, USER_PARAMS, X, precision=p),
    "empirical factored user model": lambda p: lambda: empirical_ntk(_user_model, USER_PARAMS, X,
                                                                     implementation="factored", precision=p),
    "model apply relu": lambda p: _model_apply_case("relu", p),
    "model apply qkv-attn": lambda p: _model_apply_case("qkv-attn", p, head_width=4),
    "training epochs": _train_case,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_float_matmul_is_highest_unless_fast_is_asked_for(name):
    for precision in (None, "highest"):
        precisions = float_dot_precisions(CASES[name](precision))
        assert all(is_highest(p) for p in precisions), (name, precision, precisions)
    fast = float_dot_precisions(CASES[name]("fast"))
    assert not any(is_highest(p) for p in fast), (name, fast)


def test_the_policy_in_force_reaches_functions_called_without_precision():
    with P.precision_policy("fast") as resolved:
        assert resolved == "fast" and P.current_precision() == "fast"
        fast = float_dot_precisions(lambda: structured_head_ntk(VARIABLES, HEAD, X))
        user = float_dot_precisions(lambda: empirical_ntk(_user_model, USER_PARAMS, X))
        with P.precision_policy("highest"):
            nested = float_dot_precisions(lambda: structured_head_ntk(VARIABLES, HEAD, X))
        explicit = float_dot_precisions(lambda: structured_head_ntk(VARIABLES, HEAD, X, precision="highest"))
    assert P.current_precision() == "highest"
    assert not any(map(is_highest, fast + user))
    assert all(map(is_highest, nested + explicit))


def test_a_jitted_model_is_retraced_when_the_policy_changes():
    model = make_model("relu", 8, 1)
    variables = model.init(jax.random.PRNGKey(0), X)
    f = jax.jit(lambda x: model.apply(variables, x))
    x = jnp.asarray(X, jnp.float32)
    with P.precision_policy("highest"):
        a = f(x)
        highest = float_dot_precisions(lambda: f(x))
    with P.precision_policy("fast"):
        fast = float_dot_precisions(lambda: f(x))
    assert all(map(is_highest, highest)) and not any(map(is_highest, fast))
    if jax.default_backend() == "cpu":  # the same products on a CPU (TF32 on a GPU differs by ~1e-3)
        np.testing.assert_allclose(np.asarray(f(x)), np.asarray(a), rtol=1e-5)


def test_precision_arguments_are_validated():
    with pytest.raises(ValueError, match=r"precision: expected one of \['highest', 'fast'\]"):
        P.resolve_precision("tf32")
    with pytest.raises(ValueError, match="precision: expected"):
        structured_head_ntk(VARIABLES, HEAD, X, precision="medium")
    with pytest.raises(ValueError, match="precision: expected"):
        make_model("relu", 4, precision=1)
    assert P.resolve_precision("FAST") == "fast" and P.lax_precision("highest") == HIGHEST


# --------------------------------------------------------------------------- effective epsilon


def test_effective_eps_of_each_platform_and_policy():
    f32, f64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)
    assert P.effective_eps("float32", "highest", "gpu") == f32
    assert P.effective_eps("float32", "fast", "gpu") == P.TF32_EPS == 2.0**-10
    assert P.effective_eps("float32", "fast", "tpu") == P.BF16_EPS == 2.0**-7
    assert P.effective_eps("float32", "fast", "cpu") == f32
    assert P.effective_eps("float64", "fast", "gpu") == f64  # no reduced-precision float64 matmuls

    class OldGPU:
        compute_capability = "7.0"  # V100: no TF32

    assert P.fast_matmul_eps("gpu", OldGPU()) is None
    with P.precision_policy("fast"):
        assert P.effective_eps("float32", platform="gpu") == P.TF32_EPS


def test_guard_rails_use_the_effective_eps(monkeypatch):
    """κ = 1e4 in float32: resolvable at "highest" (limit 0.1/eps = 8.4e5), not at TF32 (limit ≈ 1e2)."""
    monkeypatch.setattr(P, "fast_matmul_eps", lambda platform=None, device=None: P.TF32_EPS)  # as on a GPU
    q = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))[0]
    k = ((q * np.logspace(0, -4, 8)) @ q.T).astype(np.float32)
    assert guards.check_kernel(k, name="theta", requested="spectrum", policy="ignore").ok
    diag = guards.check_kernel(k, name="theta", requested="spectrum", policy="ignore", precision="fast")
    assert diag.kinds == ("ill_conditioned",) and diag.eps == P.TF32_EPS and diag.precision == "fast"
    assert diag.kappa_limit == pytest.approx(0.1 / P.TF32_EPS)
    message = diag.problems[0].message
    assert "computed in float32 at precision 'fast'" in message and "precision='highest'" in message
    with P.precision_policy("fast"):
        assert not guards.check_kernel(k, name="theta", requested="spectrum", policy="ignore").ok
        assert guards.check_condition(1e4, name="theta", dtype="float32", policy="ignore").kinds == (
            "ill_conditioned",)
    assert guards.check_condition(1e4, name="theta", dtype="float32", policy="ignore").ok


# --------------------------------------------------------------------------- records, specs, CLI


def test_provenance_records_the_policy():
    from kernelattn.experiments import provenance

    assert provenance.environment()["precision"]["policy"] == "highest"
    with P.precision_policy("fast"):
        info = provenance.precision_info()
    assert info["policy"] == "fast" and info["jax_default_matmul_precision"] == "bfloat16"


def test_store_records_carry_the_policy_of_each_put(tmp_path):
    from kernelattn.experiments.provenance import cell_key
    from kernelattn.experiments.store import ResultStore, make_record

    store = ResultStore.open(tmp_path / "s")
    for policy in ("highest", "fast"):
        cell = {"policy": policy}
        with P.precision_policy(policy):
            store.put(cell_key(cell), make_record("test", cell, {}, spec={}, seed=0, seconds=0.0))
        assert store.get(cell_key(cell))["environment"]["precision"]["policy"] == policy


def test_spec_key_cell_identity_and_cli_flag():
    from kernelattn.cli import build_parser
    from kernelattn.experiments.specs import SpecError, parse_spec
    from kernelattn.experiments.sweeps import plan_cells

    base = {"name": "p", "kind": "kernel", "datasets": [{"name": "digits", "n_train": 20}],
            "models": [{"name": "relu"}], "widths": [4]}
    default, highest, fast = (parse_spec({**base, **extra}) for extra in ({}, {"precision": "highest"},
                                                                           {"precision": "fast"}))
    assert default.precision is None and fast.precision == "fast"
    assert parse_spec(fast.to_dict()) == fast
    keys = [plan_cells(s)[0] for s in (default, highest, fast)]
    assert keys[0].key == keys[1].key != keys[2].key  # "highest" keeps the keys cells had before
    assert "precision" not in keys[0].definition and keys[2].definition["precision"] == "fast"
    with P.precision_policy("fast"):  # no key in the spec: the policy in force (the CLI's --precision)
        assert plan_cells(default)[0].key == keys[2].key
    with pytest.raises(SpecError, match=r"precision: expected one of \['highest', 'fast'\]"):
        parse_spec({**base, "precision": "tf32"})
    for command in (["sweep", "s.json"], ["malleability", "s.json"], ["reproduce", "--quick"]):
        assert build_parser().parse_args(command + ["--precision", "fast"]).precision == "fast"
        assert build_parser().parse_args(command).precision is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "s.json", "--precision", "tf32"])


def test_malleability_spec_key():
    from kernelattn.experiments.malleability.runner import _group_cells, validate_spec
    from kernelattn.experiments.specs import SpecError

    def parse(spec):
        return dict(validate_spec(spec).plans)["default"]

    spec = {"datasets": [{"name": "digits"}], "models": ["relu"], "null_baselines": []}
    default = parse(spec)
    fast = parse({**spec, "precision": "fast"})
    group = (0, "relu", 8, "standard", "empirical")
    assert "precision" not in _group_cells(default, {"name": "digits"}, group)[0]
    assert _group_cells(fast, {"name": "digits"}, group)[0]["precision"] == "fast"
    with pytest.raises(SpecError, match="precision"):
        parse({**spec, "precision": "half"})


def test_figure_metadata_names_the_precision(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kernelattn.viz.style import save_figure

    figure = plt.figure()
    figure.add_subplot().plot([0, 1])
    png, pdf = save_figure(figure, tmp_path / "f", precision="highest")
    plt.close(figure)
    assert b"kernelattn matmul precision: highest" in png.read_bytes()
    assert b"kernelattn matmul precision: highest" in pdf.read_bytes()


def test_training_takes_the_precision(monkeypatch):
    from kernelattn.learning.training import train

    calls = []
    original = _run_epochs

    def spy(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr("kernelattn.learning.training._run_epochs", spy)
    model = make_model("relu", 4, 1)
    variables = model.init(jax.random.PRNGKey(0), X)
    apply_fn, params = model_apply_fn(model, variables)
    config = TrainConfig(epochs=1, batch_size=6)
    train(apply_fn, params, X, np.ones(6), key=jax.random.PRNGKey(0), config=config)
    train(apply_fn, params, X, np.ones(6), key=jax.random.PRNGKey(0), config=config, precision="fast")
    with P.precision_policy("fast"):
        train(apply_fn, params, X, np.ones(6), key=jax.random.PRNGKey(0), config=config)
    assert calls == ["highest", "fast", "fast"]
