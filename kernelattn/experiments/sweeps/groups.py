"""What a sweep prepares once per dataset and per (dataset, model) group, before its cells.

Per dataset: the data (:class:`SweepData`, float64 inputs, encoded targets).
Per (dataset, model) group (:func:`prepare_group`): the model's features
(feature models: the parameter-free head inputs), the limit kernel Θ_∞ on
(train + test) × train in float64 — closed form for feature models and for
network models whose registry entry has one (the composer's), else the
Monte-Carlo mean of wide networks — its spectrum and
kernel-ridge reference (``kernels.metrics.limit_reference``), its guard-rail
diagnostics, and the condition numbers of the training inputs. Every
number comes from ``kernelattn.kernels``; this module only assembles them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import psutil

from kernelattn.data import load
from kernelattn.data.dataset import encode_targets
from kernelattn.errors import InputValueError
from kernelattn.experiments.resources import blas_single_thread
from kernelattn.experiments.specs import DatasetSpec, ModelSpec, Spec
from kernelattn.kernels import guards, memory
from kernelattn.kernels.analytic import head_kernels
from kernelattn.kernels.gram import condition_report
from kernelattn.kernels.metrics import LimitReference, limit_reference
from kernelattn.models import HeadConfig
from kernelattn.registry import model_entry

__all__ = [
    "SweepData",
    "SweepGroup",
    "feature_inputs",
    "head_config",
    "load_data",
    "model_kwargs",
    "network",
    "network_kernel",
    "prepare_group",
]

LIMIT_FOLD = 0x6C696D  # "lim": the Monte-Carlo limit networks use fold_in(PRNGKey(i), LIMIT_FOLD)


# --------------------------------------------------------------------------- data and features


@dataclasses.dataclass(frozen=True)
class SweepData:
    """One dataset of a sweep, as loaded once for all its groups."""

    x_train: np.ndarray  # (n, d) float64
    x_test: np.ndarray  # (n*, d) float64
    y: np.ndarray  # (n,) or (n, C) float64 training targets
    labels_test: np.ndarray | None  # (n*,) int, None for regression
    out_dim: int
    target: str
    metadata: dict


def load_data(dataset: DatasetSpec, index: int = 0) -> SweepData:
    """Load ``spec.datasets[index]``, encoding its targets (a loader's refusal names the entry)."""
    try:
        ds = load(dataset.name, **dataset.load_kwargs())
    except ValueError as err:  # a bad option value only the loader can judge (sizes, class names)
        raise InputValueError(f"datasets[{index}] ({dataset.label!r}): {err}") from err
    regression = ds.n_classes == 0
    if regression:
        y, target, labels_test = np.asarray(ds.y_train, np.float64), "values", None
    else:
        target = dataset.target if dataset.target != "auto" else ("pm1" if ds.n_classes == 2 else "onehot")
        y = encode_targets(ds.labels_train, ds.n_classes, target)
        labels_test = np.asarray(ds.labels_test)
    out_dim = 1 if y.ndim == 1 else int(y.shape[1])
    return SweepData(
        np.asarray(ds.X_train, np.float64),
        np.asarray(ds.X_test, np.float64),
        y,
        labels_test,
        out_dim,
        target,
        dict(ds.metadata),
    )


def feature_inputs(model: ModelSpec, data: SweepData) -> np.ndarray | None:
    """``(n + n*, d)`` float64 head inputs (train rows first) of a feature model; None for a network model
    (its features are trained)."""
    entry = model_entry(model.name)
    if not entry.is_feature_model:
        return None
    x_all = np.concatenate([data.x_train, data.x_test])
    return np.asarray(entry.feature_map()(data.x_train, x_all, **model.model_options()), np.float64)


def head_config(spec: Spec, width: int, out_dim: int) -> HeadConfig:
    """The MLP head of the spec's ``kernel`` section at ``width`` with ``out_dim`` outputs."""
    return HeadConfig(int(width), int(out_dim), **spec.head_kwargs())


# --------------------------------------------------------------------------- network models


def model_kwargs(spec: Spec, model: ModelSpec) -> dict[str, Any]:
    """The model's options and the head options of the spec's ``kernel`` section and ``dtype`` (registry calls)."""
    k = spec.kernel
    return {
        "sigma_w": k.sigma_w,
        "sigma_b": k.sigma_b,
        "sigma_a": k.sigma_a,
        "train_readout": k.train_readout,
        "param_dtype": jnp.dtype(spec.dtype),
        **model.model_options(),
    }


def network(spec: Spec, model: ModelSpec, width: int, out_dim: int):
    """The Flax module of a network model ("qkv-attn", a user's) of width ``width`` (registry constructor)."""
    return model_entry(model.name).network(width, out_dim, **model_kwargs(spec, model))


def network_kernel(spec: Spec, model: ModelSpec, data: SweepData, width: int, key) -> np.ndarray:
    """Θ_m ``(n + n*, n)`` float64 of a freshly drawn network model (the registry's kernel of it)."""
    module = network(spec, model, width, data.out_dim)
    x_all = np.concatenate([data.x_train, data.x_test])
    ctx = jnp.asarray(data.x_train, spec.dtype)
    variables = module.init(key, ctx, ctx)
    return model_entry(model.name).kernel(module, variables, x_all, data.x_train.shape[0])


# --------------------------------------------------------------------------- per (dataset, model)


@dataclasses.dataclass
class SweepGroup:
    """One (dataset, model) of a sweep, prepared once for all its cells (:func:`prepare_group`)."""

    dataset: DatasetSpec
    model: ModelSpec
    data: SweepData
    features: np.ndarray | None
    reference: LimitReference
    info: dict
    seconds: float


def _condition_info(data: SweepData, features: np.ndarray | None) -> dict[str, Any]:
    n = data.x_train.shape[0]
    report = condition_report(data.x_train, warn_rank_deficient=False)
    info = {
        "kappa_G": report.kappa,
        "kappa_d_G": report.kappa_d,
        "rank_G": report.rank,
        "log10_m_theory": report.log10_m_theory,
    }
    if features is not None:
        feat = condition_report(features[:n], warn_rank_deficient=False)
        info.update(kappa_d_features=feat.kappa_d, rank_features=feat.rank, log10_m_theory_features=feat.log10_m_theory)
    else:
        info.update(kappa_d_features=math.nan, rank_features=-1, log10_m_theory_features=math.nan)
    return info


def _limit_kernel(
    spec: Spec, model: ModelSpec, data: SweepData, features: np.ndarray | None
) -> tuple[np.ndarray, dict]:
    """Θ_∞ ``(n + n*, n)`` float64 and how it was obtained."""
    n = data.x_train.shape[0]
    if features is not None:
        head = head_config(spec, 1, data.out_dim)
        ntk = head_kernels(features, features[:n], head, dtype="float64").ntk
        return np.asarray(ntk, np.float64), {"limit": "closed-form", "limit_width": 0, "limit_seeds": 0}
    entry = model_entry(model.name)
    if entry.limit is not None:  # a composer-defined network ("mlp-relu", "mlp-attn-deep"): kernel_fn's Θ_∞
        x_all = np.concatenate([data.x_train, data.x_test])
        theta = entry.limit_kernel(x_all, data.x_train, **model_kwargs(spec, model))
        return theta, {"limit": "closed-form", "limit_width": 0, "limit_seeds": 0}
    k = spec.kernel
    thetas = (
        network_kernel(spec, model, data, k.limit_width, jax.random.fold_in(jax.random.PRNGKey(i), LIMIT_FOLD))
        for i in range(k.limit_seeds)
    )
    total = functools.reduce(operator.add, thetas)  # summed in seed order, one kernel held at a time
    return total / k.limit_seeds, {"limit": "monte-carlo", "limit_width": k.limit_width, "limit_seeds": k.limit_seeds}


def _check_memory(dataset: DatasetSpec, data: SweepData) -> None:
    """Refuse, before any work, kernel matrices that cannot fit in the host's available memory."""
    n, n_all = data.x_train.shape[0], data.x_train.shape[0] + data.x_test.shape[0]
    estimate = memory.sweep_group_memory(n, n_all - n)
    need = estimate.total
    try:
        available = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - psutil unusable here: no guard
        return
    if need > available:
        raise memory.MemoryPlanError(
            f"dataset {dataset.label!r}: n_train = {n}, n_test = {n_all - n} needs about {need / 2**30:.1f} GiB for "
            f"its (n + n*) × n kernel matrices, more than the {available / 2**30:.1f} GiB available; set n_train / "
            "n_test in the spec's dataset entry",
            estimate,
            available,
            "host",
        )


def prepare_group(spec: Spec, dataset: DatasetSpec, model: ModelSpec, data: SweepData) -> SweepGroup:
    """Everything a group's cells share: features, Θ_∞ and its reference, diagnostics, condition numbers."""
    start = time.perf_counter()
    _check_memory(dataset, data)
    features = feature_inputs(model, data)
    n = data.x_train.shape[0]
    theta, limit = _limit_kernel(spec, model, data, features)
    with blas_single_thread(n):
        reference = limit_reference(
            theta[:n],
            theta[n:],
            data.y,
            spec.ridge,
            labels_test=data.labels_test,
            predict=spec.kind == "training" or "krr" in spec.metrics,
        )
    # Guard-rails on Θ_∞ (its eigenvalues are already computed): warn with the remedy, and record.
    diagnostics = guards.check_kernel(
        theta[:n],
        name=f"Θ_∞ {dataset.label}/{model.label}",
        dtype="float64",
        requested="spectrum",
        eigenvalues=reference.eigenvalues,
    )
    info = {
        "lambda_min_inf": reference.spectrum.lambda_min,
        "lambda_max_inf": reference.spectrum.lambda_max,
        "kappa_inf": reference.spectrum.kappa,
        "guard_limit": " ".join(diagnostics.kinds) or "ok",
        **_condition_info(data, features),
        **limit,
    }
    return SweepGroup(dataset, model, data, features, reference, info, time.perf_counter() - start)
