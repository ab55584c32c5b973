"""The infinite-width composer (kernelattn.kernels.stax) against neural-tangents' stax, layer by layer.

Every layer with an nt counterpart — Dense (NTK and standard parameterization,
with and without a bias), Relu, Erf, Identity — alone and after a Dense, and
a 5-layer stack mixing both parameterizations: NNGP and NTK in float64,
self- and cross-kernels, to 1e-10 relative. NT's ``kernel_fn`` runs with
``diagonal_batch=False`` (variances from the same product as the
covariances, as ours). The finite networks agree too: ``apply_fn`` with the
same parameters. LinearAttention has no nt counterpart (tests/test_stax.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernelattn as ka
from oracle_utils import inputs, rel_err

pytestmark = pytest.mark.oracle

TOL = 1e-10


def _pair(nt, kind: str, args=()):
    """``(ours, theirs)`` of one layer kind."""
    if kind == "Dense":
        out_dim, w_std, b_std, parameterization = args
        return (ka.Dense(out_dim, w_std, b_std, parameterization),
                nt.stax.Dense(out_dim, W_std=w_std, b_std=b_std, parameterization=parameterization))
    return getattr(ka, kind)(), getattr(nt.stax, kind)()


DENSES = [(5, 1.3, None, "ntk"), (5, 0.7, 0.4, "ntk"), (6, 1.3, None, "standard"), (6, 0.9, 0.5, "standard")]
SINGLE = [("Dense", args) for args in DENSES] + [(kind, ()) for kind in ("Relu", "Erf", "Identity")]


def _stack(nt, entries):
    ours, theirs = zip(*(_pair(nt, kind, args) for kind, args in entries))
    return ka.serial(*ours), nt.stax.serial(*theirs)


def _check(ours, theirs, x1, x2):
    kernel = ours.kernel_fn(x1, x2)
    ref = theirs[2](jnp.asarray(x1), None if x2 is None else jnp.asarray(x2), ("nngp", "ntk"), diagonal_batch=False)
    assert kernel.nngp.shape == ref.nngp.shape
    assert rel_err(kernel.nngp, ref.nngp) < TOL
    if np.max(np.abs(np.asarray(ref.ntk))) == 0:  # a parameter-free layer on the inputs
        assert np.max(np.abs(np.asarray(kernel.ntk))) == 0
    else:
        assert rel_err(kernel.ntk, ref.ntk) < TOL


@pytest.mark.parametrize("kind, args", SINGLE, ids=[f"{k}{a}" for k, a in SINGLE])
@pytest.mark.parametrize("after_dense", [False, True])
def test_every_layer(nt, kind, args, after_dense):
    entries = ([("Dense", (4, 1.1, 0.3, "ntk"))] if after_dense else []) + [(kind, args)]
    ours, theirs = _stack(nt, entries)
    x, x_test = inputs(3, 9, 4, 6, unit=False)
    if kind in ("Relu", "Erf") and not after_dense:  # both refuse a nonlinearity of non-Gaussian inputs
        with pytest.raises(ValueError, match="Gaussian"):
            theirs[2](jnp.asarray(x), None, "nngp")
        with pytest.raises(ka.InputValueError, match="Gaussian"):
            ours.kernel_fn(x)
        return
    _check(ours, theirs, x, None)
    _check(ours, theirs, x, x_test)


STACK = [("Dense", (16, 1.4, 0.2, "ntk")), ("Relu", ()), ("Dense", (12, 1.2, 0.3, "standard")), ("Erf", ()),
         ("Dense", (3, 0.8, None, "ntk"))]


@pytest.mark.parametrize("unit", [True, False])
def test_stack(nt, unit):
    ours, theirs = _stack(nt, STACK)
    x, x_test = inputs(5, 11, 5, 7, unit=unit)
    _check(ours, theirs, x, None)
    _check(ours, theirs, x, x_test)
    _check(ours, theirs, x_test, x)


def test_apply_matches_with_the_same_parameters(nt):
    """The finite networks: ours (Flax) and NT's apply_fn on the same draws, float64."""
    ours, theirs = _stack(nt, STACK)
    x, _ = inputs(6, 8, 1, 7, unit=True)
    _, params = ours.init_fn(jax.random.PRNGKey(0), x.shape)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
    nt_params = []
    for i, layer in enumerate(ours.layers()):
        if isinstance(layer, ka.Dense):
            bias = params.get(f"b{i}")
            nt_params.append((params[f"W{i}"], None if bias is None else bias.reshape(1, -1)))
        else:
            nt_params.append(())
    model = ka.model_from_layers(ours, param_dtype=jnp.float64)
    mine = model.apply({"params": params}, jnp.asarray(x))
    assert rel_err(mine, theirs[1](nt_params, jnp.asarray(x))) < 1e-13
