"""The infinite-width composer (kernelattn.kernels.stax): closed forms, the transform, Monte-Carlo, bad inputs.

neural-tangents' stax is the oracle of Dense, Relu, Erf, Identity and a stack
(tests/oracle/test_stax.py); LinearAttention has no counterpart there and is
checked here against ``kernelattn.transforms``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernelattn as ka
from kernelattn.kernels.empirical import empirical_ntk_fn, model_apply_fn
from kernelattn.transforms import AttentionConfig, attend
from support import unit_rows

RNG = np.random.default_rng(7)
X = RNG.normal(size=(7, 5))
X_TEST = RNG.normal(size=(3, 5))
D = X.shape[1]
ATTENTIONS = [AttentionConfig(), AttentionConfig(2, 3, True, False), AttentionConfig(3, None, True, True),
              AttentionConfig(1, 2, False, False)]


def _layer(config: AttentionConfig) -> ka.LinearAttention:
    return ka.LinearAttention(config.depth, config.rank, config.constant_term, config.normalize)


def _rel(actual, expected) -> float:
    expected = np.asarray(expected)
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


# ------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("sigma_b", [0.0, 0.4])
def test_dense_relu_dense_is_the_two_layer_head(sigma_b):
    head = ka.HeadConfig(1, sigma_w=1.3, sigma_b=sigma_b, sigma_a=0.7, train_readout=True)
    net = ka.serial(ka.Dense(64, 1.3, sigma_b or None), ka.Relu(), ka.Dense(1, 0.7))
    for x2 in (None, X_TEST):
        ours, ref = net.kernel_fn(X, x2), ka.head_kernels(X, x2, head)
        assert _rel(ours.nngp, ref.nngp) < 1e-14 and _rel(ours.ntk, ref.ntk) < 1e-14


def test_mlp_attn_is_attention_then_the_head_with_sigma_w_over_sqrt_d():
    """LinearAttention's rows have norm √d (per-channel variance 1), so MLP-Attn's σ_w becomes σ_w/√d."""
    head = ka.HeadConfig(1, sigma_w=1.3, sigma_b=0.2, sigma_a=0.9, train_readout=True)
    net = ka.serial(ka.LinearAttention(), ka.Dense(8, 1.3 / math.sqrt(D), 0.2), ka.Relu(), ka.Dense(1, 0.9))
    ours = net.kernel_fn(X, X_TEST)
    ref = ka.head_kernels(ka.linear_attention(X), ka.linear_attention(X, X_TEST), head)
    assert _rel(ours.nngp, ref.nngp) < 1e-13 and _rel(ours.ntk, ref.ntk) < 1e-13


@pytest.mark.parametrize("config", ATTENTIONS, ids=str)
def test_attention_nngp_is_the_gram_of_the_transform(config):
    """NNGP of [LinearAttention] = Gram of attend(X/√d); train × test with the test rows attending over X."""
    layer = _layer(config)
    xb, xb_test = X / math.sqrt(D), X_TEST / math.sqrt(D)
    train, test = attend(xb, xb, config), attend(xb_test, xb, config)
    kernel = layer.kernel_fn(X)
    assert _rel(kernel.nngp, train @ train.T) < 1e-12
    assert np.all(np.asarray(kernel.ntk) == 0)  # parameter-free on the inputs
    assert _rel(layer.kernel_fn(X, X_TEST).nngp, train @ test.T) < 1e-12
    other = RNG.normal(size=(4, D))
    assert _rel(layer.kernel_fn(X_TEST, other, context=X).nngp,
                test @ attend(other / math.sqrt(D), xb, config).T) < 1e-12
    assert _rel(layer.apply_fn({}, X), math.sqrt(D) * train) < 1e-12
    assert _rel(layer.apply_fn({}, X_TEST, X), math.sqrt(D) * test) < 1e-12


@pytest.mark.parametrize("depth", [1, 2])
def test_attention_nngp_is_the_gram_of_linear_attention(depth):
    """Unit rows, no constant term: the scale drops out, Z Zᵀ of linear_attention itself (G^{2k+1} normalized)."""
    z = np.asarray(ka.linear_attention(X, depth=depth))
    assert _rel(ka.LinearAttention(depth).kernel_fn(X).nngp, z @ z.T) < 1e-12
    gram = X @ X.T / D
    power = np.linalg.matrix_power(gram, 2 * depth + 1)
    unnormalized = ka.LinearAttention(depth, normalize=False).kernel_fn(X).nngp
    assert _rel(unnormalized, power) < 1e-12


def test_dense_and_nonlinearities_on_known_values():
    """Diagonal and antipodal points: Relu K = Σ/2 and K' = 1/2 on the diagonal, 0 at θ = π; Erf's arcsin."""
    x = np.array([[0.6, 0.8], [-0.6, -0.8]])
    relu = ka.serial(ka.Dense(3, 2.0), ka.Relu()).kernel_fn(x)
    sigma = 4.0 / 2
    np.testing.assert_allclose(np.diag(relu.nngp), sigma / 2, rtol=1e-15)
    np.testing.assert_allclose(np.diag(relu.ntk), sigma / 2, rtol=1e-15)
    assert abs(float(relu.nngp[0, 1])) < 1e-15
    erf = ka.serial(ka.Dense(3), ka.Erf()).kernel_fn(x)
    s = 1.0 / 2
    signs = np.array([[1, -1], [-1, 1]])
    np.testing.assert_allclose(np.asarray(erf.nngp), (2 / np.pi) * np.arcsin(2 * s * signs / (1 + 2 * s)), rtol=1e-15)
    identity = ka.serial(ka.Dense(3, 1.5, 0.5), ka.Identity()).kernel_fn(x)
    np.testing.assert_allclose(np.asarray(identity.nngp), 2.25 * x @ x.T / 2 + 0.25, rtol=1e-15)


def test_standard_parameterization_keeps_the_widths():
    """Θ = w_in K + σ_w² Θ_in (+ 1): the NTK of a standard Dense grows with the width before it."""
    gram = X @ X.T / D
    first = ka.Dense(7, 1.5, 0.3, parameterization="standard")
    np.testing.assert_allclose(np.asarray(first.kernel_fn(X).ntk), D * gram + 1.0, rtol=1e-14)
    for width in (4, 16):
        net = ka.serial(ka.Dense(width, 1.5), ka.Dense(2, 0.8, parameterization="standard"))
        expected = width * 2.25 * gram + 0.64 * 2.25 * gram  # w_in K + σ_w² Θ with Θ = K = 2.25 K₀
        np.testing.assert_allclose(np.asarray(net.kernel_fn(X).ntk), expected, rtol=1e-14)


# ------------------------------------------------------------------------------ structure


STACK = ka.serial(ka.Dense(16, 1.2, 0.1), ka.Erf(), ka.LinearAttention(2, 4, True), ka.Dense(8, 0.9),
                  ka.Relu(), ka.Dense(2, 1.1, parameterization="standard"))


def test_kernels_are_symmetric_psd_and_blocks_of_one_union():
    x = np.concatenate([X, X_TEST])
    kernel = STACK.kernel_fn(x)
    for matrix in (np.asarray(kernel.nngp), np.asarray(kernel.ntk)):
        assert np.max(np.abs(matrix - matrix.T)) <= 1e-14 * np.max(np.abs(matrix))
        assert np.linalg.eigvalsh(matrix).min() >= -1e-12 * np.max(np.abs(matrix))
    # x1 × x2 over a context is the block of the union's self-kernel over the same context
    union = STACK.kernel_fn(x, context=X)
    cross = STACK.kernel_fn(X, X_TEST, context=X)
    assert _rel(cross.ntk, np.asarray(union.ntk)[:7, 7:]) < 1e-12
    assert _rel(cross.nngp, np.asarray(union.nngp)[:7, 7:]) < 1e-12
    # x2 rows attend over x1 when no context is given
    assert _rel(STACK.kernel_fn(X, X_TEST).ntk, cross.ntk) < 1e-12


def test_get_dtype_and_unpacking():
    both = STACK.kernel_fn(X)
    assert STACK.kernel_fn(X, get="nngp").ntk is None
    only = STACK.kernel_fn(X, get=("ntk",))
    assert only.nngp is None and _rel(only.ntk, both.ntk) == 0.0
    assert _rel(STACK.kernel_fn(X, precision="fast").ntk, both.ntk) < 1e-12  # float64 matmuls are never reduced
    single = STACK.kernel_fn(X, dtype="float32")
    assert single.ntk.dtype == jnp.float32 and _rel(single.ntk, both.ntk) < 1e-5
    init_fn, apply_fn, kernel_fn = STACK
    shape, params = init_fn(jax.random.PRNGKey(0), (-1, D))
    assert shape == (-1, 2) and sorted(params) == ["W0", "W3", "W5", "b0"]
    assert apply_fn(params, X).shape == (7, 2)
    assert ka.serial(ka.serial(ka.Dense(3), ka.Relu()), ka.Identity()).layers() == (ka.Dense(3), ka.Relu(),
                                                                                    ka.Identity())


def test_apply_follows_the_parameterization():
    shape, params = ka.Dense(3, 1.5, 0.5).init_fn(jax.random.PRNGKey(1), (7, D))
    np.testing.assert_allclose(ka.Dense(3, 1.5, 0.5).apply_fn(params, X),
                               1.5 * X @ params["W0"] / math.sqrt(D) + 0.5 * params["b0"], rtol=1e-5)
    standard = ka.Dense(4096, 1.5, 0.5, parameterization="standard")
    _, params = standard.init_fn(jax.random.PRNGKey(2), (7, D))
    assert abs(float(np.std(params["W0"])) - 1.5 / math.sqrt(D)) < 0.03
    assert abs(float(np.std(params["b0"])) - 0.5) < 0.03
    np.testing.assert_allclose(standard.apply_fn(params, X), X @ params["W0"] + params["b0"], rtol=1e-5)


# ------------------------------------------------------------------------------ Monte-Carlo

SEEDS = 8
WIDTHS = (2**8, 2**11, 2**14)
X_MC = unit_rows(np.random.default_rng(0).normal(size=(6, 4)))


def _stack(width: int, kind: str):
    if kind == "relu":
        return ka.serial(ka.Dense(width, 1.2, 0.3), ka.Relu(), ka.LinearAttention(), ka.Dense(1, 0.8))
    return ka.serial(ka.Dense(width, 1.5, 0.2), ka.Erf(), ka.LinearAttention(2, 3, True, False), ka.Dense(1, 0.8))


def _draws(width: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``SEEDS`` empirical NTKs of ``model_from_layers`` (float64, context = the inputs) and Θ_∞."""
    net = _stack(width, kind)
    model = ka.model_from_layers(net, param_dtype=jnp.float64)
    x = jnp.asarray(X_MC)
    keys = [jax.random.PRNGKey(seed) for seed in range(SEEDS)]
    apply_fn, _ = model_apply_fn(model, {"params": {}}, x)  # one function for every draw: compiled once
    # eager: compiling the whole draw at each width costs more than running it
    ntk_fn = empirical_ntk_fn(apply_fn, vmap_axes=None, implementation="jacobian")
    init = jax.jit(model.init)
    draws = [np.asarray(ntk_fn(x, None, init(key, x)["params"])) for key in keys]
    return np.stack(draws), np.asarray(net.kernel_fn(X_MC).ntk)


@pytest.fixture(scope="module")
def relu_draws():
    return {width: _draws(width, "relu") for width in WIDTHS}


@pytest.mark.parametrize("kind", ["relu", "erf-rank-constant"])
def test_empirical_ntk_converges_to_the_composer(kind, relu_draws):
    """Same description: the mean empirical NTK at width 2^14 is within 4 standard errors of kernel_fn's."""
    draws, analytic = relu_draws[2**14] if kind == "relu" else _draws(2**14, kind)
    standard_error = np.sqrt(np.sum(draws.var(axis=0, ddof=1)) / len(draws))
    assert np.linalg.norm(draws.mean(axis=0) - analytic) <= 4 * standard_error
    assert np.mean([np.linalg.norm(d - analytic) for d in draws]) < 0.05 * np.linalg.norm(analytic)


def test_error_decays_like_inverse_square_root_of_width(relu_draws):
    errors = [np.mean([np.linalg.norm(d - analytic) for d in draws]) for draws, analytic in relu_draws.values()]
    slope = np.polyfit(np.log2(WIDTHS), np.log2(errors), 1)[0]
    assert -0.75 < slope < -0.3


# ------------------------------------------------------------------------------ bad inputs


def _zero_row():
    x = X.copy()
    x[2] = 0.0
    return x


BAD = [
    ("out_dim", lambda: ka.Dense(0)),
    ("W_std", lambda: ka.Dense(3, W_std=-1.0)),
    ("b_std", lambda: ka.Dense(3, b_std=float("nan"))),
    ("parameterization", lambda: ka.Dense(3, parameterization="mup")),
    ("depth", lambda: ka.LinearAttention(depth=0)),
    ("rank", lambda: ka.LinearAttention(rank=0)),
    ("rank", lambda: ka.LinearAttention(rank=8).kernel_fn(X)),
    ("layers\\[1\\]", lambda: ka.serial(ka.Dense(3), "relu")),
    ("get", lambda: STACK.kernel_fn(X, get="cov1")),
    ("layers\\[0\\]: expected a Dense before Relu", lambda: ka.Relu().kernel_fn(X)),
    ("layers\\[3\\]: expected a Dense before Erf",
     lambda: ka.serial(ka.Dense(3), ka.Relu(), ka.LinearAttention(), ka.Erf()).kernel_fn(X)),
    ("x1", lambda: STACK.kernel_fn(np.full((3, D), np.nan))),
    ("x2", lambda: STACK.kernel_fn(X, np.ones((2, D + 1)))),
    ("context", lambda: STACK.kernel_fn(X, context=np.ones((2, D + 1)))),
    ("x1: row 2", lambda: ka.serial(ka.Dense(3), ka.Relu()).kernel_fn(_zero_row())),
    ("x1: row 2", lambda: ka.LinearAttention().kernel_fn(_zero_row(), X_TEST, context=X)),
    ("input_shape", lambda: ka.Dense(3).init_fn(jax.random.PRNGKey(0), (D,))),
]


@pytest.mark.parametrize("name, call", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_inputs_name_the_argument(name, call):
    with pytest.raises((ka.InputValueError, ka.InputTypeError), match=name):
        call()


def test_zero_rows_are_fine_with_a_bias_first():
    kernel = ka.serial(ka.Dense(3, 1.0, 0.5), ka.Relu(), ka.LinearAttention()).kernel_fn(_zero_row())
    assert np.all(np.isfinite(kernel.nngp)) and np.all(np.isfinite(kernel.ntk))


def test_readme_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = re.findall(r"## Infinite-width composer.*?```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["theta_inf"].shape == namespace["theta_m"].shape == (50, 50)
