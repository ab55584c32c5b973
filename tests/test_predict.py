"""Gradient-flow prediction (kernelattn.learning.predict, docs/math.md §12): closed forms and bad inputs.

neural-tangents' numbers are checked in tests/oracle/test_predict.py; here
every identity is checked against an independent dense computation
(scipy.linalg.expm, np.linalg.solve) in float64.
"""

import warnings

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelattn as ka
from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.kernels.analytic import Kernel
from kernelattn.kernels.guards import KernelWarning
from kernelattn.learning.predict import (
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
)
from kernelattn.learning.training import ntk_predictor

N, M, C, D = 12, 5, 3, 6


def _gram(z1, z2):
    """A PSD kernel: linear plus Gaussian."""
    return z1 @ z2.T / z1.shape[1] + np.exp(-np.sum((z1[:, None] - z2[None]) ** 2, -1) / 4)


def _problem(seed=0, n=N, m=M, c=C):
    """``(Θ, Θ*, y, f_0, f*_0)`` on random points, float64."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n + m, D))
    full = _gram(z, z)
    y = rng.normal(size=(n, c)) if c else rng.normal(size=n)
    f0 = rng.normal(size=y.shape)
    f_test0 = rng.normal(size=(m,) + y.shape[1:])
    return full[:n, :n], full[n:, :n], y, f0, f_test0


def _kernel_fn(scale_ntk=2.0):
    """kernel_fn(x1, x2, get) → Kernel: NNGP = the Gram above, NTK = a different PSD kernel."""
    def kernel_fn(x1, x2, get):
        x2 = x1 if x2 is None else x2
        nngp = _gram(x1, x2)
        return Kernel(nngp, scale_ntk * nngp + (x1 @ x2.T) ** 2 / D)
    return kernel_fn


def _close(a, b, tol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


# ----------------------------------------------------------------------------- one network


def test_time_zero_returns_the_initial_outputs():
    k, k_td, y, f0, f_test0 = _problem()
    train, test = gradient_descent_mse(k, y, learning_rate=0.3, diag_reg=0.1)(0.0, f0, f_test0, k_td)
    _close(train, f0, 1e-14)
    _close(test, f_test0, 1e-14)


@pytest.mark.parametrize("diag_reg, absolute", [(0.0, False), (1e-2, False), (0.3, True)])
def test_infinite_time_is_kernel_ridge_regression(diag_reg, absolute):
    """t = None and t = inf: f*_0 + Θ*(Θ + λI)⁻¹(y − f_0), λ = diag_reg·tr(Θ)/n unless absolute; train: y."""
    k, k_td, y, f0, f_test0 = _problem()
    ridge = diag_reg if absolute else diag_reg * np.trace(k) / N
    expected = f_test0 + k_td @ np.linalg.solve(k + ridge * np.eye(N), y - f0)
    predict = gradient_descent_mse(k, y, 0.5, diag_reg, absolute)
    for t in (None, np.inf):
        train, test = predict(t, f0, f_test0, k_td)
        _close(test, expected, 1e-9)
        _close(train, y, 1e-9)
    # no initial outputs: interpolation from f = 0
    _close(predict(None, None, 0.0, k_td), k_td @ np.linalg.solve(k + ridge * np.eye(N), y), 1e-9)


@pytest.mark.parametrize("diag_reg", [0.0, 0.05])
def test_finite_time_matches_the_dense_matrix_exponential(diag_reg):
    k, k_td, y, f0, f_test0 = _problem(1)
    lr, t = 0.7, 4.0
    theta = k + diag_reg * np.trace(k) / N * np.eye(N)
    decay = scipy.linalg.expm(-lr * t * theta / y.size)
    train, test = gradient_descent_mse(k, y, lr, diag_reg)(t, f0, f_test0, k_td)
    _close(train, y + decay @ (f0 - y))
    _close(test, f_test0 + k_td @ np.linalg.solve(theta, (np.eye(N) - decay) @ (y - f0)))


def test_outputs_solve_the_gradient_flow_ode():
    """df/dt = −(η/N) Θ (f − y) on the training set, df*/dt = −(η/N) Θ* (f − y) on the test set."""
    k, k_td, y, f0, f_test0 = _problem(2)
    lr, t, h = 0.9, 3.0, 1e-4
    predict = gradient_descent_mse(k, y, lr)
    (train_p, test_p), (train_m, test_m) = (predict(t + s, f0, f_test0, k_td) for s in (h, -h))
    train, _ = predict(t, f0, f_test0, k_td)
    rate = -lr / y.size
    _close((train_p - train_m) / (2 * h), rate * k @ (train - y), 1e-7)
    _close((test_p - test_m) / (2 * h), rate * k_td @ (train - y), 1e-7)


def test_training_loss_decreases_monotonically():
    k, _, y, f0, _ = _problem(3)
    times = np.geomspace(1e-2, 1e4, 40)
    train = gradient_descent_mse(k, y, 1.0)(times, f0)
    loss = 0.5 * np.sum((train - y) ** 2, axis=(1, 2))
    assert np.all(np.diff(loss) <= 0)
    assert np.all(np.diff(loss)[loss[:-1] > 1e-12 * loss[0]] < 0)  # strictly, above the round-off floor
    assert loss[-1] < 1e-20 * loss[0]


def test_array_times_keep_their_shape_and_agree_with_scalars():
    k, k_td, y, f0, f_test0 = _problem(4)
    predict = gradient_descent_mse(k, y, 0.5)
    times = np.array([[0.0, 1.0, 2.5], [10.0, 100.0, np.inf]])
    train, test = predict(times, f0, f_test0, k_td)
    assert train.shape == (2, 3, N, C) and test.shape == (2, 3, M, C)
    assert train.dtype == test.dtype == np.float64
    for index in np.ndindex(times.shape):
        one_train, one_test = predict(times[index], f0, f_test0, k_td)
        assert one_train.shape == (N, C)
        _close(train[index], one_train, 1e-13)
        _close(test[index], one_test, 1e-13)


def test_which_outputs_are_returned_and_one_dimensional_targets():
    k, k_td, y, _, _ = _problem(5, c=0)
    predict = gradient_descent_mse(k, y)
    assert predict(1.0).shape == (N,)  # fx_train_0 = 0 broadcasts
    assert predict(1.0, None, 0.0, k_td).shape == (M,)
    train, test = predict(np.array([1.0, 2.0]), 0.0, 0.0, k_td)
    assert train.shape == (2, N) and test.shape == (2, M)
    _close(predict(None), y, 0)
    _close(predict(1.0, np.float64(0.0)), predict(1.0, np.zeros(1)), 0)  # numpy scalars and broadcasting
    _close(predict(1.0, np.array(2.0)), predict(1.0, np.full(N, 2.0)), 0)


def test_agrees_with_ntk_predictor_up_to_its_normalization():
    """``ntk_predictor`` divides ηt by n, neural-tangents by n·C: the same flow at learning rate η·C."""
    k, k_td, y, _, _ = _problem(6)
    for time in (0.5, 20.0):
        expected = ntk_predictor(k, k_td, y, time=time, learning_rate=0.4)
        _close(gradient_descent_mse(k, y, 0.4 * C)(time, None, 0.0, k_td), expected, 1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t1=st.floats(0.0, 50.0), t2=st.floats(0.0, 50.0),
       diag_reg=st.sampled_from([0.0, 1e-3, 0.1]))
def test_the_flow_composes_in_time(seed, t1, t2, diag_reg):
    """Restarting the flow from f_{t1} for t2 gives f_{t1 + t2} (the solution of an autonomous ODE)."""
    k, k_td, y, f0, f_test0 = _problem(seed, n=8, m=3, c=2)
    predict = gradient_descent_mse(k, y, 0.6, diag_reg)
    train1, test1 = predict(t1, f0, f_test0, k_td)
    train, test = predict(t1 + t2, f0, f_test0, k_td)
    again_train, again_test = predict(t2, train1, test1, k_td)
    _close(again_train, train, 1e-9)
    _close(again_test, test, 1e-9)


def test_kernel_guards_report_a_broken_kernel():
    k, _, y, _, _ = _problem(7)
    asymmetric = k.copy()
    asymmetric[0, 1] += 0.1
    with pytest.warns(KernelWarning, match="asymmetric|symmetric"):
        gradient_descent_mse(asymmetric, y)(1.0)
    with pytest.warns(KernelWarning, match="positive semi-definite"):
        gradient_descent_mse(k - 0.5 * np.eye(N) * np.max(np.linalg.eigvalsh(k)), y)(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradient_descent_mse(k, y)(np.array([1.0, np.inf]))


# ----------------------------------------------------------------------------- infinite ensemble


def _ensemble_problem(seed=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, D)), rng.normal(size=(M, D)), rng.normal(size=(N, C))


@pytest.mark.parametrize("t", [None, 0.0, 3.0, np.array([1.0, 50.0])])
def test_ensemble_mean_is_the_kernel_predictor_from_zero(t):
    x, x_test, y = _ensemble_problem()
    kernel_fn = _kernel_fn()
    ensemble = gradient_descent_mse_ensemble(kernel_fn, x, y, 0.8, 1e-3)
    means = ensemble(t, x_test)
    assert type(means).__name__ == "Gaussians" and means._fields == ("nngp", "ntk")
    train, test = kernel_fn(x, None, None), kernel_fn(x_test, x, None)
    for g in ("nngp", "ntk"):
        single = gradient_descent_mse(getattr(train, g), y, 0.8, 1e-3)(t, 0.0, 0.0, getattr(test, g))[1]
        _close(getattr(means, g), single, 1e-12)
        _close(ensemble(t, x_test, g), single, 1e-12)
        # on the training inputs
        _close(ensemble(t, None, g), gradient_descent_mse(getattr(train, g), y, 0.8, 1e-3)(t, 0.0), 1e-12)


@pytest.mark.parametrize("t", [0.0, 2.0, 40.0, np.inf, None])
def test_ensemble_covariance_is_that_of_the_linear_map_of_the_prior(t):
    """f_t(X*) = f_0(X*) − Θ* G_t f_0(X) + Θ* G_t y, f_0 ~ GP(0, K): cov = M K_joint Mᵀ, M = [−Θ* G_t, I]."""
    x, x_test, y = _ensemble_problem(9)
    kernel_fn = _kernel_fn()
    lr = 0.8
    both = np.concatenate([x, x_test])
    joint = kernel_fn(both, None, None)
    for g, diag_reg in (("ntk", 1e-2), ("nngp", 0.0)):
        theta = getattr(joint, g)[:N, :N]
        theta = theta + diag_reg * np.trace(theta) / N * np.eye(N)
        if t is None or np.isinf(t):
            gain = np.linalg.inv(theta)
        else:
            gain = np.linalg.solve(theta, np.eye(N) - scipy.linalg.expm(-lr * t * theta / y.size))
        m = np.concatenate([-getattr(joint, g)[N:, :N] @ gain, np.eye(M)], axis=1)
        expected = m @ joint.nngp @ m.T
        result = gradient_descent_mse_ensemble(kernel_fn, x, y, lr, diag_reg)(t, x_test, g, compute_cov=True)
        assert isinstance(result, ka.Gaussian)
        _close(result.covariance, expected, 1e-9)
        cov = result.covariance
        _close(cov, cov.T, 1e-12)
        assert np.min(np.linalg.eigvalsh(cov)) >= -1e-10 * np.max(np.abs(cov))


def test_ensemble_covariance_on_the_training_inputs():
    """cov f_t(X) = E K E with E = e^{−ηΘt/N}; N(y, 0) at t = None."""
    x, _, y = _ensemble_problem(10)
    kernel_fn = _kernel_fn()
    train = kernel_fn(x, None, None)
    ensemble = gradient_descent_mse_ensemble(kernel_fn, x, y, 0.5)
    times = np.array([0.0, 3.0, 30.0])
    out = ensemble(times, None, compute_cov=True)
    for g in ("nngp", "ntk"):
        covariance = getattr(out, g).covariance
        assert covariance.shape == (3, N, N)
        for i, t in enumerate(times):
            decay = scipy.linalg.expm(-0.5 * t * getattr(train, g) / y.size)
            _close(covariance[i], decay @ train.nngp @ decay, 1e-9)
    at_inf = ensemble(None, None, "ntk", compute_cov=True)
    _close(at_inf.mean, y, 0)
    _close(at_inf.covariance, np.zeros((N, N)), 0)


def test_ensemble_posterior_at_infinity():
    """NNGP at t = None: the GP posterior mean K*K⁻¹y and covariance K** − K*K⁻¹K*ᵀ."""
    x, x_test, y = _ensemble_problem(11)
    kernel_fn = _kernel_fn()
    k, k_td, k_tt = (kernel_fn(a, b, None).nngp for a, b in ((x, None), (x_test, x), (x_test, None)))
    posterior = gradient_descent_mse_ensemble(kernel_fn, x, y)(None, x_test, "nngp", True)
    _close(posterior.mean, k_td @ np.linalg.solve(k, y), 1e-9)
    _close(posterior.covariance, k_tt - k_td @ np.linalg.solve(k, k_td.T), 1e-9)


def test_ensemble_with_head_kernels_and_single_kernel_functions():
    """A kernelattn Kernel from head_kernels, and a kernel_fn returning the one matrix asked for."""
    x, x_test, y = _ensemble_problem(12)
    head = ka.HeadConfig(width=1, sigma_b=0.5, train_readout=True)
    ensemble = gradient_descent_mse_ensemble(lambda x1, x2, get: ka.head_kernels(x1, x2, head), x, y, diag_reg=1e-4)
    ntk = ka.head_kernels(x, None, head).ntk
    expected = gradient_descent_mse(ntk, y, diag_reg=1e-4)(2.0, None, 0.0, ka.head_kernels(x_test, x, head).ntk)
    _close(ensemble(2.0, x_test, "ntk"), expected, 1e-12)
    calls = []

    def ntk_only(x1, x2, get):
        calls.append(get)
        return ka.head_kernels(x1, x2, head).ntk

    _close(gradient_descent_mse_ensemble(ntk_only, x, y, diag_reg=1e-4)(2.0, x_test, "ntk"), expected, 1e-12)
    assert calls == ["ntk", "ntk"]  # one string per call; the train kernel computed once


def test_ensemble_computes_each_train_kernel_once():
    x, x_test, y = _ensemble_problem(13)
    calls = []
    kernel_fn = _kernel_fn()

    def counted(x1, x2, get):
        calls.append((x1 is x, x2 is None, get))
        return kernel_fn(x1, x2, get)

    ensemble = gradient_descent_mse_ensemble(counted, x, y)
    ensemble(1.0, x_test, "ntk")
    ensemble(np.array([1.0, 2.0]), x_test, ("ntk", "nngp"), True)
    ensemble(None, x_test)
    assert [c for c in calls if c[0] and c[1]] == [(True, True, "ntk"), (True, True, "nngp")]


# ----------------------------------------------------------------------------- bad inputs


def _one_line(excinfo, name):
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(name), message


@pytest.mark.parametrize("kwargs, name", [
    ({"k_train_train": np.ones((3, 4))}, "k_train_train"),
    ({"k_train_train": np.full((N, N), np.nan)}, "k_train_train"),
    ({"y_train": np.ones(N + 1)}, "y_train"),
    ({"y_train": np.ones((N, 2, 2))}, "y_train"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"diag_reg": -1.0}, "diag_reg"),
    ({"diag_reg_absolute_scale": "yes"}, "diag_reg_absolute_scale"),
    ({"trace_axes": ()}, "trace_axes"),
])
def test_bad_arguments_of_gradient_descent_mse(kwargs, name):
    k, _, y, _, _ = _problem()
    arguments = {"k_train_train": k, "y_train": y, **kwargs}
    with pytest.raises(InputValueError) as excinfo:
        gradient_descent_mse(**arguments)
    _one_line(excinfo, name)


@pytest.mark.parametrize("call, name", [
    (lambda p, k_td: p(-1.0), "t"),
    (lambda p, k_td: p(np.array([1.0, np.nan])), "t"),
    (lambda p, k_td: p(np.linspace(-50.0, 50.0, 1000)), "t"),
    (lambda p, k_td: p(np.array([])), "t"),
    (lambda p, k_td: p("soon"), "t"),
    (lambda p, k_td: p(1.0, None, None), "fx_train_0, fx_test_0"),
    (lambda p, k_td: p(1.0, 0.0, 0.0), "k_test_train"),
    (lambda p, k_td: p(1.0, 0.0, 0.0, k_td[:, :-1]), "k_test_train"),
    (lambda p, k_td: p(1.0, np.ones((N, C + 1))), "fx_train_0"),
    (lambda p, k_td: p(1.0, 0.0, np.ones((M + 1, C)), k_td), "fx_test_0"),
])
def test_bad_arguments_of_predict_fn(call, name):
    k, k_td, y, _, _ = _problem()
    with pytest.raises(InputValueError) as excinfo:
        call(gradient_descent_mse(k, y), k_td)
    _one_line(excinfo, name)


def test_bad_arguments_of_the_ensemble():
    x, x_test, y = _ensemble_problem()
    with pytest.raises(InputTypeError) as excinfo:
        gradient_descent_mse_ensemble("ntk", x, y)
    _one_line(excinfo, "kernel_fn")
    ensemble = gradient_descent_mse_ensemble(_kernel_fn(), x, y)
    for kwargs, name in (({"get": "ntkgp"}, "get"), ({"get": ()}, "get"), ({"get": ("ntk", "ntk")}, "get"),
                         ({"compute_cov": 1}, "compute_cov"), ({"t": -2.0}, "t")):
        with pytest.raises(InputValueError) as excinfo:
            ensemble(**{"t": 1.0, "x_test": x_test, **kwargs})
        _one_line(excinfo, name)
    with pytest.raises(InputValueError) as excinfo:
        gradient_descent_mse_ensemble(lambda x1, x2, get: {"ntk": 1}, x, y)(1.0, x_test, "ntk")
    _one_line(excinfo, "kernel_fn")
    with pytest.raises(InputValueError) as excinfo:
        gradient_descent_mse_ensemble(_kernel_fn(), x, y[:-1])(1.0, x_test, "ntk")
    _one_line(excinfo, "kernel_fn (x_train, None).ntk")
