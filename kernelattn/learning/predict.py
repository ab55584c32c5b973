"""Gradient-flow prediction in closed form, with neural-tangents' conventions (docs/math.md §12).

Under continuous-time gradient descent on the MSE loss L = ‖f − y‖²/(2N),
N = ``y_train.size`` = n·C, a network in its linear regime moves by
df_t/dt = −(η/N) Θ (f_t − y) on the training set (Jacot et al. 2018; Lee et
al. 2019, "Wide neural networks of any depth evolve as linear models under
gradient descent", §2). With Θ = V diag(λ) Vᵀ the train-train kernel plus the
ridge, e^{−ηΘt/N} = V diag(e^{−ηλt/N}) Vᵀ and, for an array of times, one
eigen-decomposition serves them all:

    f_t(X)  = f_0(X) + (e^{−ηΘt/N} − I)(f_0(X) − y)                   train
    f_t(X*) = f_0(X*) + Θ* Θ⁻¹ (I − e^{−ηΘt/N})(y − f_0(X))           test, Θ* = Θ(X*, X)

t = ∞ (``t=None``) is kernel ridge regression f_0(X*) + Θ* Θ⁻¹ (y − f_0(X)),
solved by one Cholesky factorization (``kernelattn.kernels.linalg``). Over
the random initializations of infinitely wide networks, f_0 is the Gaussian
process with the NNGP K, and f_t(X*) is Gaussian with mean Θ* Θ⁻¹(I − e^{−ηΘt/N}) y
and the covariance of :func:`gradient_descent_mse_ensemble` (Lee et al. 2019,
§2.3); with the NNGP in place of Θ it is the GP posterior at t = ∞.

:func:`gradient_descent_mse` and :func:`gradient_descent_mse_ensemble` take
the arguments of ``neural_tangents.predict`` (0.6.5) and return its numbers
(to 1e-10 in float64, ``tests/oracle/test_predict.py``), including: times in
units of the learning rate; ``diag_reg`` scaled by tr(Θ)/n unless
``diag_reg_absolute_scale``; negative eigenvalues (round-off) clipped to 0 in
the exponent; train outputs equal to y at t = None; ``get`` a string → one
result, a tuple or None → a named tuple ``Gaussians`` with a field per kernel.
Differences from neural-tangents:

- everything is computed in float64 numpy (any float input is cast) and
  returned as float64 ``np.ndarray``: not jit-able or differentiable;
- kernels are ``(n, n)`` / ``(m, n)`` matrices and targets ``(n,)`` or
  ``(n, C)`` — ``trace_axes=(-1,)`` (the output axis) is the only one
  accepted, no ``(n, n, C, C)`` kernels; a 1-d ``y_train`` (one output, which
  neural-tangents does not accept with ``trace_axes=(-1,)``) gives 1-d outputs;
- times must be ≥ 0 (inf allowed); an eigenvalue ≤ 0 contributes 0 where
  neural-tangents divides 0 by 0 (λ = 0) or multiplies 0 by ∞ (t = inf) into NaN;
- Θ is symmetrized and checked first (``kernelattn.kernels.guards``: asymmetry,
  negative eigenvalues, and for t = None a Cholesky that fails falls back to
  clipped eigenvalues), each reported as a ``KernelWarning``;
- ``kernel_fn`` receives no extra keyword arguments (neural-tangents'
  ``**kernel_fn_train_train_kwargs``); it may return a kernelattn ``Kernel``,
  any object with ``nngp``/``ntk`` attributes (neural-tangents' ``Kernel``)
  or, for one requested kernel, the matrix itself.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from kernelattn._validation import check_matrix, check_real
from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.kernels import guards
from kernelattn.kernels.linalg import Factorization, factorize

#: The kernels an infinite ensemble can be trained with: the NNGP (only the readout trained) and the NTK.
GETS = ("nngp", "ntk")


class Gaussian(NamedTuple):
    """A Gaussian over network outputs.

    Attributes:
      mean: ``t.shape + (m, C)`` (or ``t.shape + (m,)`` for 1-d targets), float64.
      covariance: ``t.shape + (m, m)`` (shared by the C outputs), float64.
    """

    mean: np.ndarray
    covariance: np.ndarray


# ----------------------------------------------------------------------------- checks


def _kernel(value: Any, name: str, n: int | None = None) -> np.ndarray:
    """A finite ``(n, n)`` train-train kernel as given (its dtype kept for the guards)."""
    k = check_matrix(value, name)
    if k.shape[0] != k.shape[1] or (n is not None and k.shape[0] != n):
        expected = "a square (n, n) kernel" if n is None else f"a ({n}, {n}) kernel matching y_train's {n} rows"
        raise InputValueError(f"{name}: expected {expected}, got shape {k.shape}")
    return k


def _targets(value: Any, n: int | None = None) -> np.ndarray:
    """``y_train`` as given, ``(n,)`` or ``(n, C)``, float64."""
    ndim = np.ndim(value)
    if ndim not in (1, 2):
        raise InputValueError(f"y_train: expected a 1-d (n,) or 2-d (n, C) array, got {ndim}-d shape {np.shape(value)}")
    y = check_matrix(value, "y_train", ndim=ndim).astype(np.float64)
    if n is not None and y.shape[0] != n:
        raise InputValueError(f"y_train: expected {n} rows to match k_train_train, got shape {y.shape}")
    return y


def _outputs(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Initial outputs: a number or an array broadcastable to ``shape``, float64."""
    if np.ndim(value) == 0:
        return np.asarray(check_real(value.item() if hasattr(value, "shape") else value, name))
    array = check_matrix(value, name, ndim=np.ndim(value)).astype(np.float64)
    try:
        broadcast = np.broadcast_shapes(array.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != shape:
        raise InputValueError(
            f"{name}: expected a number or an array broadcastable to {shape}, got shape {array.shape}"
        )
    return array


def _times(t: Any, learning_rate: float) -> tuple[tuple[int, ...], np.ndarray]:
    """``(t.shape, η·t flattened)`` for times of any shape, each ≥ 0 (inf allowed)."""
    try:
        times = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputValueError(f"t: expected a number or an array of times >= 0, got {type(t).__name__}") from err
    bad = times[~(times >= 0)]  # also NaN
    if times.size == 0 or bad.size:
        more = f" and {bad.size - 1} more" if bad.size > 1 else ""
        got = "an empty array" if times.size == 0 else f"{float(bad[0])}{more}"
        raise InputValueError(f"t: expected times >= 0 (inf allowed), got {got}")
    return times.shape, learning_rate * times.ravel()


def _trace_axes(value: Any) -> None:
    """Only ``(-1,)``, the output axis, as in neural-tangents' default."""
    axes = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, tuple | list) else None
    if axes != (-1,):
        raise InputValueError(f"trace_axes: only (-1,) (the output axis) is supported, got {value!r}")


def _settings(learning_rate: Any, diag_reg: Any, diag_reg_absolute_scale: Any, trace_axes: Any) -> tuple[float, float]:
    """Validated ``(learning_rate, diag_reg)``."""
    learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict_min=True)
    diag_reg = check_real(diag_reg, "diag_reg", minimum=0.0)
    if not isinstance(diag_reg_absolute_scale, bool | np.bool_):
        raise InputValueError(f"diag_reg_absolute_scale: expected True or False, got {diag_reg_absolute_scale!r}")
    _trace_axes(trace_axes)
    return learning_rate, diag_reg


# ----------------------------------------------------------------------------- linear algebra


def ridge_of(k: np.ndarray, diag_reg: float, absolute: bool) -> float:
    """The ridge λ added to Θ's diagonal: ``diag_reg``, or ``diag_reg · tr(Θ)/n`` (neural-tangents' default)."""
    return float(diag_reg) if absolute else float(diag_reg) * float(np.trace(np.asarray(k, np.float64))) / k.shape[0]


def eigenbasis(k: np.ndarray, ridge: float, *, name: str, stacklevel: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of (Θ + Θᵀ)/2 + λI in float64, after the guards' checks of Θ.

    Args:
      k: ``(n, n)`` kernel, any float dtype (the dtype it was computed in sets
        the round-off the guards allow).
      ridge: λ ≥ 0.
      name: the kernel's name in warnings.
      stacklevel: of the guards' warnings, as in ``warnings.warn`` counted
        from here: 2 blames the line calling :func:`eigenbasis`.

    Returns:
      ``(values (n,), vectors (n, n))``, ascending, float64.
    """
    k64 = np.asarray(k, np.float64)
    values, vectors = np.linalg.eigh((k64 + k64.T) / 2 + ridge * np.eye(k.shape[0]))
    # Symmetry and PSD-ness only: an ill-conditioned Θ is no trouble at finite t (its small modes barely move).
    guards.check_kernel(k, name=name, requested="entries", eigenvalues=values - ridge, stacklevel=stacklevel + 1)
    return values, vectors


def decay_exponent(values: np.ndarray, times: np.ndarray, normalization: float) -> np.ndarray:
    """−max(λ, 0)·t/N, ``(T, n)`` for ``(n,)`` eigenvalues and ``(T,)`` times; 0 where λ ≤ 0, also at t = ∞."""
    positive = values > 0
    return np.where(positive, -np.outer(times, np.where(positive, values, 1.0)) / normalization, 0.0)


def flow_gain(values: np.ndarray, times: np.ndarray, normalization: float) -> np.ndarray:
    """(1 − e^{−λt/N})/λ per eigenvalue, ``(T, n)``: Θ⁻¹(I − e^{−Θt/N}) in Θ's eigenbasis; 0 where λ ≤ 0."""
    positive = values > 0
    gain = -np.expm1(decay_exponent(values, times, normalization)) / np.where(positive, values, 1.0)
    return np.where(positive, gain, 0.0)


def in_basis(vectors: np.ndarray, weights: np.ndarray, b: np.ndarray) -> np.ndarray:
    """V diag(w_t) Vᵀ b for each row w_t of ``weights`` (T, n): ``(T,) + b.shape`` for ``(n,)`` or ``(n, k)`` b."""
    projected = vectors.T @ b.reshape(b.shape[0], -1)
    return (vectors @ (weights[:, :, None] * projected)).reshape((weights.shape[0], *b.shape))


def left_multiply(a: np.ndarray, stacked: np.ndarray) -> np.ndarray:
    """A @ S_t for each S_t of ``stacked`` ``(T, n, ...)``: ``(T, m, ...)`` for ``(m, n)`` A."""
    return np.moveaxis(np.tensordot(a, stacked, axes=(1, 1)), 0, 1)


def _finish(values: np.ndarray, t_shape: tuple[int, ...]) -> np.ndarray:
    """``(T,) + s`` → ``t.shape + s`` (no time axis for a scalar t)."""
    return values.reshape(t_shape + values.shape[1:])


# ----------------------------------------------------------------------------- one network


def gradient_descent_mse(
    k_train_train: Any,
    y_train: Any,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: tuple[int, ...] = (-1,),
) -> Callable[..., Any]:
    """Outputs of MSE gradient flow with kernel Θ at any times, as ``neural_tangents.predict.gradient_descent_mse``.

    f_t(X) = f_0(X) + (e^{−ηΘt/N} − I)(f_0(X) − y) and
    f_t(X*) = f_0(X*) + Θ* Θ⁻¹(I − e^{−ηΘt/N})(y − f_0(X)), N = ``y_train.size``,
    Θ = ``k_train_train`` + λI (Lee et al. 2019, §2; see the module docstring).

    Args:
      k_train_train: ``(n, n)`` kernel Θ(X, X) (an empirical or infinite-width NTK, or an NNGP).
      y_train: ``(n,)`` or ``(n, C)`` targets.
      learning_rate: η > 0; time t means η·t (t counts steps).
      diag_reg: ≥ 0; the ridge is λ = diag_reg · tr(Θ)/n, or diag_reg itself
        with ``diag_reg_absolute_scale``.
      diag_reg_absolute_scale: see ``diag_reg``.
      trace_axes: ``(-1,)`` only: the kernel is shared by the C outputs.

    Returns:
      ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)``:
      ``t`` a number or an array of times ≥ 0 (None: t = ∞, by one Cholesky
      solve; finite t by one eigen-decomposition, made on first use and kept);
      ``fx_train_0`` the ``(n, C)`` outputs at t = 0 (a number broadcasts;
      None: no train outputs); ``fx_test_0`` ``(m, C)`` test outputs at t = 0
      (None: no test outputs), which need ``k_test_train`` ``(m, n)``. It
      returns ``fx_train_t``, ``fx_test_t`` or ``(fx_train_t, fx_test_t)``,
      float64, each with ``t.shape`` leading. At t = None the train outputs
      are y whatever the ridge (neural-tangents' convention).
    """
    learning_rate, diag_reg = _settings(learning_rate, diag_reg, diag_reg_absolute_scale, trace_axes)
    k = _kernel(k_train_train, "k_train_train")
    y = _targets(y_train, k.shape[0])
    ridge = ridge_of(k, diag_reg, bool(diag_reg_absolute_scale))

    @functools.cache
    def factorization() -> Factorization:
        return factorize(k, ridge, name="k_train_train")

    @functools.cache
    def basis() -> tuple[np.ndarray, np.ndarray]:
        return eigenbasis(k, ridge, name="k_train_train", stacklevel=4)

    def predict_fn(t: Any = None, fx_train_0: Any = 0.0, fx_test_0: Any = None, k_test_train: Any = None):
        if fx_train_0 is None and fx_test_0 is None:
            raise InputValueError("fx_train_0, fx_test_0: both are None, so there is nothing to predict")
        f_train = None if fx_train_0 is None else _outputs(fx_train_0, "fx_train_0", y.shape)
        k_td = f_test = None
        if fx_test_0 is not None:
            if k_test_train is None:
                raise InputValueError(
                    "k_test_train: expected the (m, n) test-train kernel to predict fx_test_0, got None"
                )
            k_td = check_matrix(k_test_train, "k_test_train", n_cols=k.shape[0]).astype(np.float64)
            f_test = _outputs(fx_test_0, "fx_test_0", (k_td.shape[0], *y.shape[1:]))
        residual = (0.0 if f_train is None else f_train) - y  # f_0(X) − y
        if t is None:
            train = y.copy() if f_train is not None else None
            test = None if k_td is None else f_test + k_td @ factorization().solve(-residual)
        else:
            t_shape, times = _times(t, learning_rate)
            values, vectors = basis()
            train = test = None
            if f_train is not None:
                decay = np.expm1(decay_exponent(values, times, y.size))
                train = _finish(f_train + in_basis(vectors, decay, residual), t_shape)
            if k_td is not None:
                moved = in_basis(vectors, flow_gain(values, times, y.size), -residual)
                test = _finish(f_test + left_multiply(k_td, moved), t_shape)
        if test is None:
            return train
        return test if train is None else (train, test)

    return predict_fn


# ----------------------------------------------------------------------------- infinite ensemble


def _get(get: Any) -> tuple[bool, tuple[str, ...]]:
    """``(one, kernels)``: whether ``get`` named one kernel as a string, and the kernels as a tuple."""
    if get is None:
        return False, GETS
    one = isinstance(get, str)
    names = (get,) if one else tuple(get) if isinstance(get, tuple | list) else None
    if not names or not all(isinstance(g, str) for g in names):
        raise InputValueError(f"get: expected 'nngp', 'ntk', a tuple of them or None, got {get!r}")
    names = tuple(g.lower() for g in names)
    if not set(names) <= set(GETS) or len(set(names)) < len(names):
        raise InputValueError(f"get: expected distinct kernels among {list(GETS)}, got {get!r}")
    return one, names


@functools.cache
def _gaussians_type(names: tuple[str, ...]) -> type:
    """neural-tangents' ``Gaussians`` named tuple with one field per requested kernel."""
    return collections.namedtuple("Gaussians", names)


def _kernel_matrices(kernel_fn: Callable, x1: Any, x2: Any, names: tuple[str, ...], call: str) -> dict[str, np.ndarray]:
    """``{g: float64 matrix}`` from one call ``kernel_fn(x1, x2, get)`` (get a string for one kernel)."""
    result = kernel_fn(x1, x2, names[0] if len(names) == 1 else names)
    matrices = {}
    for g in names:
        value = getattr(result, g, None)
        if value is None and len(names) == 1 and len(getattr(result, "shape", ())) == 2:
            value = result
        if value is None:
            raise InputValueError(
                f"kernel_fn: {call} returned no {g!r} kernel (expected an object with "
                f"{'/'.join(names)} attributes, e.g. a kernelattn.Kernel), "
                f"got {type(result).__name__}"
            )
        matrices[g] = check_matrix(value, f"kernel_fn {call}.{g}")
    return matrices


def gradient_descent_mse_ensemble(
    kernel_fn: Callable,
    x_train: Any,
    y_train: Any,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: tuple[int, ...] = (-1,),
) -> Callable[..., Any]:
    """Mean and covariance of an infinite ensemble of infinitely wide networks trained by MSE gradient flow.

    As ``neural_tangents.predict.gradient_descent_mse_ensemble``: f_0 ~ GP(0, K)
    (K the NNGP) and the flow of :func:`gradient_descent_mse` with Θ = NTK
    (``"ntk"``), or with Θ = K (``"nngp"``, only the readout trained). On test
    inputs, with G_t = Θ⁻¹(I − e^{−ηΘt/N}) and Θ*, K* their test-train blocks:

        mean = Θ* G_t y
        cov  = K** + Θ* G_t K G_tᵀ Θ*ᵀ − (Θ* G_t K*ᵀ + K* G_tᵀ Θ*ᵀ)     (ntk)
        cov  = K** − K* G_{2t} K*ᵀ                                      (nngp)

    (Lee et al. 2019, §2.3); t = None is the GP posterior / the NTK ensemble at
    convergence. Without ``x_test``, the train-set flow: mean (I − e^{−ηΘt/N}) y,
    cov e^{−ηΘt/N} K e^{−ηΘt/N} (ntk) or Θ e^{−2ηΘt/N} (nngp), and N(y, 0) at t = None.

    Args:
      kernel_fn: ``kernel_fn(x1, x2, get)`` (x2 None: x1 against itself) returning
        the ``(n1, n2)`` kernels as attributes ``nngp``/``ntk`` (a
        kernelattn ``Kernel``, e.g. ``lambda x1, x2, get: ka.head_kernels(x1, x2, head)``,
        or a neural-tangents ``kernel_fn``), or the matrix itself when ``get``
        names one kernel.
      x_train: training inputs, passed to ``kernel_fn`` as they are.
      y_train: ``(n,)`` or ``(n, C)`` targets.
      learning_rate, diag_reg, diag_reg_absolute_scale, trace_axes: as in
        :func:`gradient_descent_mse` (the ridge of each kernel scales with its own trace).

    Returns:
      ``predict_fn(t=None, x_test=None, get=None, compute_cov=False)``: for
      ``get`` "nngp" or "ntk", the mean ``t.shape + (m, C)`` or, with
      ``compute_cov``, a :class:`Gaussian` (mean, covariance ``t.shape + (m, m)``);
      for a tuple of them or None (both), a named tuple ``Gaussians`` of those.
      ``x_test=None`` predicts on the training inputs. Kernels are computed on
      first need and kept (the train-train ones, and one eigen-decomposition or
      Cholesky factorization per kernel); float64.
    """
    learning_rate, diag_reg = _settings(learning_rate, diag_reg, diag_reg_absolute_scale, trace_axes)
    if not callable(kernel_fn):
        raise InputTypeError(f"kernel_fn: expected a callable kernel_fn(x1, x2, get), got {type(kernel_fn).__name__}")
    y = _targets(y_train)
    n = y.shape[0]
    train_kernels: dict[str, np.ndarray] = {}

    def k_train(names: tuple[str, ...]) -> dict[str, np.ndarray]:
        missing = tuple(g for g in names if g not in train_kernels)
        if missing:
            fresh = _kernel_matrices(kernel_fn, x_train, None, missing, "(x_train, None)")
            train_kernels.update({g: _kernel(v, f"kernel_fn (x_train, None).{g}", n) for g, v in fresh.items()})
        return {g: train_kernels[g] for g in names}

    def ridge(g: str) -> float:
        return ridge_of(train_kernels[g], diag_reg, bool(diag_reg_absolute_scale))

    @functools.cache
    def factorization(g: str) -> Factorization:
        return factorize(train_kernels[g], ridge(g), name=f"{g} (x_train, x_train)")

    @functools.cache
    def basis(g: str) -> tuple[np.ndarray, np.ndarray]:
        return eigenbasis(train_kernels[g], ridge(g), name=f"{g} (x_train, x_train)", stacklevel=4)

    def predict_fn(t: Any = None, x_test: Any = None, get: Any = None, compute_cov: bool = False):
        one, names = _get(get)
        if not isinstance(compute_cov, bool | np.bool_):
            raise InputValueError(f"compute_cov: expected True or False, got {compute_cov!r}")
        needed = tuple(g for g in GETS if g in names or (g == "nngp" and compute_cov))
        kernels = k_train(needed)
        k_td = k_tt = None
        if x_test is not None:
            k_td = {
                g: value.astype(np.float64)
                for g, value in _kernel_matrices(kernel_fn, x_test, x_train, needed, "(x_test, x_train)").items()
            }
            for g, value in k_td.items():
                if value.shape[1] != n:
                    raise InputValueError(
                        f"kernel_fn (x_test, x_train).{g}: expected {n} columns to match "
                        f"y_train, got shape {value.shape}"
                    )
            if compute_cov:
                k_tt = _kernel_matrices(kernel_fn, x_test, None, ("nngp",), "(x_test, None)")["nngp"].astype(np.float64)
        out = {}
        if t is None:
            for g in names:
                out[g] = _at_infinity(g, y, kernels, k_td, k_tt, factorization, compute_cov)
        else:
            t_shape, times = _times(t, learning_rate)
            for g in names:  # a loop, not a comprehension: the guards' warnings name the caller's line
                out[g] = _at_times(g, y, times, t_shape, kernels, k_td, k_tt, basis(g), compute_cov)
        return out[names[0]] if one else _gaussians_type(names)(**out)

    return predict_fn


def _at_infinity(g, y, kernels, k_td, k_tt, factorization, compute_cov):
    """The t = ∞ mean (and covariance) of kernel ``g``: the GP posterior (nngp) or converged flow (ntk).

    ``kernels``: ``{kernel: (n, n)}`` on the training inputs; ``k_td``:
    ``{kernel: (m, n)}`` float64, or None for the training inputs; ``k_tt``:
    the ``(m, m)`` test NNGP (with ``compute_cov``); ``factorization(g)``: Θ + λI's.
    """
    if k_td is None:
        mean = y.copy()
        return Gaussian(mean, np.zeros(kernels[g].shape)) if compute_cov else mean
    solve = factorization(g).solve
    mean = k_td[g] @ solve(y)
    if not compute_cov:
        return mean
    k_dt = k_td["nngp"].T
    if g == "nngp":
        return Gaussian(mean, k_tt - k_td["nngp"] @ solve(k_dt))
    moved = solve(k_td["ntk"].T)  # Θ⁻¹ Θ*ᵀ
    cross = k_td["ntk"] @ solve(k_dt)  # Θ* Θ⁻¹ K*ᵀ
    k = np.asarray(kernels["nngp"], np.float64)
    return Gaussian(mean, moved.T @ k @ moved - cross - cross.T + k_tt)


def _at_times(g, y, times, t_shape, kernels, k_td, k_tt, basis, compute_cov):
    """The mean (and covariance) of kernel ``g`` at ``(T,)`` times η·t, reshaped to ``t.shape``.

    Arguments as in :func:`_at_infinity`; ``basis``: Θ + λI's ``(values, vectors)``.
    """
    values, vectors = basis
    normalization = y.size
    gain = flow_gain(values, times, normalization)  # (T, n): Θ⁻¹(I − e^{−Θt/N}) in the eigenbasis
    if k_td is None:
        mean = in_basis(vectors, -np.expm1(decay_exponent(values, times, normalization)), y)
    else:
        mean = left_multiply(k_td[g], in_basis(vectors, gain, y))
    if not compute_cov:
        return _finish(mean, t_shape)
    k = np.asarray(kernels["nngp"], np.float64)
    if k_td is None:
        exponent = decay_exponent(values, times, normalization)
        if g == "nngp":
            cov = in_basis(vectors, np.maximum(values, 0.0) * np.exp(2 * exponent), np.eye(values.size))
        else:
            decay = in_basis(vectors, np.exp(exponent), np.eye(values.size))  # e^{−Θt/N}
            cov = decay @ k @ decay
    elif g == "nngp":
        k_star = k_td["nngp"]
        cov = k_tt - left_multiply(k_star, in_basis(vectors, flow_gain(values, 2 * times, normalization), k_star.T))
    else:
        moved = in_basis(vectors, gain, k_td["ntk"].T)  # (T, n, m): G_t Θ*ᵀ
        cross = left_multiply(k_td["ntk"], in_basis(vectors, gain, k_td["nngp"].T))
        cov = np.swapaxes(moved, 1, 2) @ k @ moved - cross - np.swapaxes(cross, 1, 2) + k_tt
    return Gaussian(_finish(mean, t_shape), _finish(cov, t_shape))
