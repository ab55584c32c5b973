"""Width × seed × dataset × model sweeps into a resumable result store (docs/math.md §8).

``run_sweep(spec, out)`` computes every cell (dataset, model, width, seed) of
an experiment spec (``kernelattn.experiments.specs``) that the store ``<out>/<spec name>``
does not hold yet, writes one record per finished cell, and returns the
tables: one row per cell, mean ± std over seeds per width, and per
(dataset, model) log-log fits.

Kernel sweeps (``kind: "kernel"``)
----------------------------------
Per (dataset, model), once: the limit kernel Θ_∞ on train × train and
test × train in float64, its spectrum, its kernel-ridge predictions, and the
condition numbers κ(G), κ_d(G) and m_theory = κ_d^6 n ln n of the training
inputs (``kernelattn.kernels.gram.condition_report``).

Models come from ``kernelattn.registry`` (the built-in ones, or a user's
"module:attr"); the sweep orchestrates, the kernels are computed in
``kernelattn.kernels``.

- Feature models ("relu", "mlp-attn"): Θ_∞ is the closed-form head NTK
  (``kernelattn.kernels.analytic.head_kernels``) on the model's features —
  the unit-norm inputs, or the parameter-free attention output. Θ_m is the
  exact structured empirical NTK of the MLP head (docs/math.md §7), streamed
  over the hidden units (``kernelattn.kernels.stream.head_kernel_stream``):
  unit block j (``kernel.width_chunk`` units) is drawn from
  ``fold_in(PRNGKey(seed), j)`` exactly as ``streaming_head_ntk`` with the
  same ``width_chunk`` draws it, and a width-m network is the first m units.
  One pass per seed therefore yields every width of the sweep at the cost of
  the largest; memory is O(n² + n·width_chunk) whatever the width (2^20 at
  n = 500 runs in a few hundred MB). A cell's value depends on (seed, width,
  width_chunk) only, never on which other cells were computed in the same
  run: resuming reproduces it bit for bit. Widths share their first units
  (common random numbers), so the error curves of one seed are smooth in m;
  seeds are independent.
- Network models ("qkv-attn", a user's): Θ_m is the empirical NTK of the
  whole network — for "qkv-attn" from its structure
  (``kernelattn.kernels.qkv.qkv_empirical_ntk``: the head's structured NTK on
  the attention output plus the attention weights' terms, O(n²(C + h + m))
  time), for a user's model by autodiff unless its registry entry gives a
  kernel. Θ_∞ is a Monte-Carlo estimate, the mean Θ_m of
  ``kernel.limit_seeds`` networks of width ``kernel.limit_width`` (records
  say ``"limit": "monte-carlo"``); its own sampling error floors the measured
  convergence. neural-tangents' backend (``kernelattn.kernels.nt_backend``)
  is the exact alternative for the tied, linearly scaled QKV variant.

Per cell: ``kernelattn.kernels.metrics.kernel_convergence`` (rel_fro, cert,
spectrum of Θ_m, kernel-ridge predictor error with ridge λ on the test
points). Seeds are run one after another on CPU (measured: batching them
with ``jax.vmap`` is slower there); on accelerators they are vmapped when
seeds × n_all × n fits ``kernel.memory_gb`` (``kernel.batch_seeds``).

Training sweeps (``kind: "training"``, paper Table 1)
-----------------------------------------------------
Per cell: the network is trained with ``kernelattn.learning.training.train`` (paper
defaults; for "relu"/"mlp-attn" the parameter-free features are computed
once and the head is trained on them), its linearization
(``kernelattn.learning.training.linearize``) is trained the same way from the same
initialization and minibatch order, and both are compared on the test points
with the infinite-width NTK predictor (``kernelattn.learning.training.ntk_predictor``,
MSE gradient flow, t → ∞ = kernel ridge with the spec's ridge unless
``training.ntk_time`` is set): ``ntk_distance`` = ‖f_m − f_NTK‖/‖f_NTK‖,
``lin_distance`` = ‖f_m − f_lin‖/‖f_lin‖, and the test accuracy of each.

Store, resume, several processes
--------------------------------
One record per finished cell (``kernelattn.experiments.store.ResultStore``), keyed by
``provenance.cell_key`` of the cell definition: sweep name and kind,
dataset and model options, width, seed, dtype, ridge, head options, metric
groups (and the training settings) — so editing any of these in the spec
recomputes exactly the affected cells, while labels and performance
settings do not. A rerun skips finished cells; a SIGKILL loses at most the
cell in flight (a vmapped seed batch on accelerators: its cells in flight).
Cells are claimed before they are computed (``ResultStore.claim``), so
several processes can work on one store; a claim of a dead process on the
same host is taken over. Every record holds the spec, the seed, package
versions and devices (``provenance.environment``) and its timing.

Several devices and hosts: ``kernel.devices`` (or ``run_sweep(...,
devices=)``, CLI ``--devices N|all``) shards the streamed Θ_m of
"relu"/"mlp-attn" width-wise over that many local devices — each
accumulation step deals its blocks out over a 1-D mesh and adds the partial
kernels with one ``psum`` (the ``kernelattn.kernels.distributed`` pattern). The draws
are unchanged, so the numbers equal the 1-device ones up to float summation
order; the count is not in the cell key and is recorded as the metric
``n_devices`` (network models' cells are computed on one device). Across
processes (``initialize_distributed``; the CLI calls it), each process claims
cells in the shared store, process p starting p positions into each work list.

``run_sweep`` turns on JAX's 64-bit mode if it is off (Θ_∞ and the metrics
are float64), as the CLI does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh
from tqdm.auto import tqdm

from kernelattn.experiments import provenance
from kernelattn.kernels import guards, memory
from kernelattn.kernels import metrics as M
from kernelattn._precision import enable_x64, precision_policy, resolve_dtype, resolve_precision, x64_enabled
from kernelattn.analysis.fits import width_fits
from kernelattn.analysis.formatting import fmt, fmt_log, fmt_pm, text_table
from kernelattn.analysis.statistics import seed_summary
from kernelattn.data import load
from kernelattn.data.dataset import encode_targets
from kernelattn.kernels.distributed import device_mesh
from kernelattn.errors import InputValueError
from kernelattn.kernels.analytic import head_kernels
from kernelattn.kernels.empirical import model_apply_fn
from kernelattn.kernels.gram import condition_report
from kernelattn.kernels.stream import head_kernel_stream
from kernelattn.models import HeadConfig, MLPHead, head_preactivations
from kernelattn.registry import model_entry
from kernelattn.experiments.specs import DatasetSpec, ModelSpec, Spec, load_spec, parse_devices
from kernelattn.experiments.store import ResultStore, make_record, store_exists, utc_now
from kernelattn.learning.training import linearize, loss_value, ntk_predictor, predicted_labels, train, training_health

__all__ = [
    "Cell",
    "SweepResults",
    "cell_definition",
    "format_summary",
    "load_results",
    "plan_cells",
    "run_sweep",
    "sweep_mesh",
]

KIND_RECORD = {"kernel": "kernel_sweep", "training": "training_sweep"}
#: Per-cell metric columns summarized over seeds, by spec kind (in table order).
CELL_METRICS = {
    "kernel": ("rel_fro", "rel_fro_test", "spec_err", "cert", "lambda_min", "lambda_max", "kappa", "krr_err",
               "krr_acc_m", "krr_acc_inf"),
    "training": ("ntk_distance", "lin_distance", "lin_ntk_distance", "acc_m", "acc_lin", "acc_ntk", "loss_m",
                 "loss_lin", "f_ntk_norm"),
}
#: Per (dataset, model) columns (identical in every cell record of the pair).
GROUP_COLUMNS = ("lambda_min_inf", "lambda_max_inf", "kappa_inf", "kappa_G", "kappa_d_G", "rank_G", "log10_m_theory",
                 "kappa_d_features", "rank_features", "log10_m_theory_features", "limit", "limit_width", "limit_seeds")
_LIMIT_FOLD = 0x6C696D  # "lim": the Monte-Carlo limit networks use fold_in(PRNGKey(i), _LIMIT_FOLD)
WAIT_POLL_S = 1.0  # seconds between looks at the store while other processes finish their cells
_SMALL_N_BLAS = 1000  # below this n, dense eigenproblems run single-threaded (see _blas_single_thread)


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (dataset, model, width, seed) cell of a spec.

    Attributes:
      dataset, model: indices into ``spec.datasets`` / ``spec.models``.
      width, seed: the network width m and PRNG seed.
      key: ``provenance.cell_key(definition)``.
      definition: the JSON-ready dict that identifies the computation.
    """

    dataset: int
    model: int
    width: int
    seed: int
    key: str
    definition: dict


def cell_definition(spec: Spec, dataset: DatasetSpec, model: ModelSpec, width: int, seed: int) -> dict[str, Any]:
    """The parameters that determine one cell's numbers (its store key is their ``cell_key``).

    Cosmetic and performance settings (labels, data paths, ``batch_seeds``,
    ``memory_gb``) are left out: changing them reuses the stored cells.
    ``width_chunk`` is in for the streamed kernels of feature models ("relu",
    "mlp-attn": it is their PRNG block size, so it changes the draws) and out
    elsewhere; network models ("qkv-attn", a user's) add their Monte-Carlo
    limit's settings. ``"precision": "fast"`` is in when the spec's precision
    (None: the policy in force) is "fast"; "highest", the default, is left
    out, so cells keep the keys they had before the precision policy existed
    (on CPUs the two are the same numbers).
    """
    feature_model = model_entry(model.name).is_feature_model
    head = spec.kernel.head_identity()
    if spec.kind != "kernel" or not feature_model:
        head.pop("width_chunk")
    definition: dict[str, Any] = {
        "sweep": spec.name,
        "kind": spec.kind,
        "dataset": dataset.identity(),
        "model": model.identity(),
        "width": int(width),
        "seed": int(seed),
        "dtype": spec.dtype,
        "ridge": spec.ridge,
        "head": head,
        "metrics": list(spec.metrics),
    }
    if not feature_model:
        definition["limit"] = {"width": spec.kernel.limit_width, "seeds": spec.kernel.limit_seeds}
    if resolve_precision(spec.precision, "precision") == "fast":
        definition["precision"] = "fast"
    if spec.training is not None:
        definition["training"] = spec.training.to_dict()
    return definition


def plan_cells(spec: Spec) -> list[Cell]:
    """Every cell of ``spec`` in run order (dataset, model, seed, width)."""
    cells = []
    for i, dataset in enumerate(spec.datasets):
        for j, model in enumerate(spec.models):
            for seed in spec.seeds:
                for width in spec.widths:
                    definition = cell_definition(spec, dataset, model, width, seed)
                    cells.append(Cell(i, j, width, seed, provenance.cell_key(definition), definition))
    return cells


# --------------------------------------------------------------------------- data and features


@dataclasses.dataclass(frozen=True)
class _Data:
    x_train: np.ndarray  # (n, d) float64
    x_test: np.ndarray  # (n*, d) float64
    y: np.ndarray  # (n,) or (n, C) float64 training targets
    labels_test: np.ndarray | None  # (n*,) int, None for regression
    out_dim: int
    target: str
    metadata: dict


def _load_data(dataset: DatasetSpec, index: int = 0) -> _Data:
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
    return _Data(np.asarray(ds.X_train, np.float64), np.asarray(ds.X_test, np.float64), y, labels_test, out_dim,
                 target, dict(ds.metadata))


def _features(model: ModelSpec, data: _Data) -> np.ndarray | None:
    """``(n + n*, d)`` float64 head inputs (train rows first) of a feature model; None for a network model
    (its features are trained)."""
    entry = model_entry(model.name)
    if not entry.is_feature_model:
        return None
    x_all = np.concatenate([data.x_train, data.x_test])
    return np.asarray(entry.feature_map()(data.x_train, x_all, **model.model_options()), np.float64)


def _head_config(spec: Spec, width: int, out_dim: int) -> HeadConfig:
    return HeadConfig(int(width), int(out_dim), **spec.head_kwargs())


# --------------------------------------------------------------------------- devices


def sweep_mesh(devices: Any = 1):
    """The 1-D width mesh of a sweep's ``kernel.devices``, or None for one device.

    Args:
      devices: an integer ≥ 1 (the first that many of ``jax.local_devices()``),
        "all", or a ``jax.sharding.Mesh`` (returned as is).

    Raises:
      ValueError: more devices than this process has (naming ``kernel.devices``).
    """
    if devices is None or isinstance(devices, Mesh):
        return devices
    local = jax.local_devices()
    if devices == "all":
        count = len(local)
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool) and devices >= 1:
        count = int(devices)
    else:
        raise InputValueError(f"kernel.devices: expected an integer >= 1 or \"all\", got {devices!r}")
    if count > len(local):
        raise InputValueError(f"kernel.devices: {count} requested but this process has {len(local)} "
                              f"{jax.default_backend()} device(s) (on CPU, XLA_FLAGS="
                              f"--xla_force_host_platform_device_count={count} simulates more)")
    if count == 1:
        return None
    return device_mesh(local[:count])


# --------------------------------------------------------------------------- network models


def _network(spec: Spec, model: ModelSpec, width: int, out_dim: int):
    """The Flax module of a network model ("qkv-attn", a user's) of width ``width`` (registry constructor)."""
    k = spec.kernel
    return model_entry(model.name).network(width, out_dim, sigma_w=k.sigma_w, sigma_b=k.sigma_b, sigma_a=k.sigma_a,
                                           train_readout=k.train_readout, param_dtype=jnp.dtype(spec.dtype),
                                           **model.model_options())


def _network_kernel(spec: Spec, model: ModelSpec, data: _Data, width: int, key) -> np.ndarray:
    """Θ_m ``(n + n*, n)`` float64 of a freshly drawn network model (the registry's kernel of it)."""
    module = _network(spec, model, width, data.out_dim)
    x_all = np.concatenate([data.x_train, data.x_test])
    ctx = jnp.asarray(data.x_train, spec.dtype)
    variables = module.init(key, ctx, ctx)
    return model_entry(model.name).kernel(module, variables, x_all, data.x_train.shape[0])


# --------------------------------------------------------------------------- per (dataset, model)


@dataclasses.dataclass
class _Group:
    dataset: DatasetSpec
    model: ModelSpec
    data: _Data
    features: np.ndarray | None
    reference: M.LimitReference
    info: dict
    seconds: float


def _condition_info(data: _Data, features: np.ndarray | None) -> dict[str, Any]:
    n = data.x_train.shape[0]
    report = condition_report(data.x_train, warn_rank_deficient=False)
    info = {"kappa_G": report.kappa, "kappa_d_G": report.kappa_d, "rank_G": report.rank,
            "log10_m_theory": report.log10_m_theory}
    if features is not None:
        feat = condition_report(features[:n], warn_rank_deficient=False)
        info.update(kappa_d_features=feat.kappa_d, rank_features=feat.rank,
                    log10_m_theory_features=feat.log10_m_theory)
    else:
        info.update(kappa_d_features=math.nan, rank_features=-1, log10_m_theory_features=math.nan)
    return info


def _limit_kernel(spec: Spec, model: ModelSpec, data: _Data, features: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Θ_∞ ``(n + n*, n)`` float64 and how it was obtained."""
    n = data.x_train.shape[0]
    if features is not None:
        head = _head_config(spec, 1, data.out_dim)
        theta = head_kernels(features, features[:n], head, dtype="float64").ntk
        return np.asarray(theta, np.float64), {"limit": "closed-form", "limit_width": 0, "limit_seeds": 0}
    k = spec.kernel
    total = None
    for i in range(k.limit_seeds):
        key = jax.random.fold_in(jax.random.PRNGKey(i), _LIMIT_FOLD)
        theta = _network_kernel(spec, model, data, k.limit_width, key)
        total = theta if total is None else total + theta
    return total / k.limit_seeds, {"limit": "monte-carlo", "limit_width": k.limit_width, "limit_seeds": k.limit_seeds}


def _check_memory(spec: Spec, dataset: DatasetSpec, data: _Data) -> None:
    """Refuse, before any work, a kernel matrix that cannot fit in memory."""
    n, n_all = data.x_train.shape[0], data.x_train.shape[0] + data.x_test.shape[0]
    need = 6 * 8 * n_all * n  # a few float64 (n + n*) × n matrices: Θ_∞, Θ_m, differences, factors
    try:
        import psutil  # optional: deferred, and without it there is no guard

        available = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - psutil missing or unusable: no guard
        return
    if need > available:
        raise memory.MemoryPlanError(
            f"dataset {dataset.label!r}: n_train = {n}, n_test = {n_all - n} needs about {need / 2**30:.1f} GiB for "
            f"its (n + n*) × n kernel matrices, more than the {available / 2**30:.1f} GiB available; set n_train / "
            "n_test in the spec's dataset entry"
        )


def _prepare_group(spec: Spec, dataset: DatasetSpec, model: ModelSpec, data: _Data) -> _Group:
    start = time.perf_counter()
    _check_memory(spec, dataset, data)
    features = _features(model, data)
    n = data.x_train.shape[0]
    theta, limit = _limit_kernel(spec, model, data, features)
    with _blas_single_thread(n):
        reference = M.limit_reference(theta[:n], theta[n:], data.y, spec.ridge, labels_test=data.labels_test,
                                      predict=spec.kind == "training" or "krr" in spec.metrics)
    # Guard-rails on Θ_∞ (its eigenvalues are already computed): warn with the remedy, and record.
    diagnostics = guards.check_kernel(theta[:n], name=f"Θ_∞ {dataset.label}/{model.label}", dtype="float64",
                                      requested="spectrum", eigenvalues=reference.eigenvalues)
    info = {"lambda_min_inf": reference.spectrum.lambda_min, "lambda_max_inf": reference.spectrum.lambda_max,
            "kappa_inf": reference.spectrum.kappa, "guard_limit": " ".join(diagnostics.kinds) or "ok",
            **_condition_info(data, features), **limit}
    return _Group(dataset, model, data, features, reference, info, time.perf_counter() - start)


@contextlib.contextmanager
def _blas_single_thread(n: int):
    """Run small dense linear algebra single-threaded.

    For n ≤ 1000 the eigen-decompositions gain little from threads, and next
    to XLA's own thread pool a multi-threaded BLAS can be many times slower
    (measured 15× on a 2-core machine); one thread also makes them bitwise
    reproducible. No effect when threadpoolctl is absent.
    """
    if n > _SMALL_N_BLAS:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits  # optional: deferred, and without it no effect
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class SweepResults:
    """What a sweep produced (read back from the store).

    Attributes:
      spec: the ``Spec``.
      store_path: the store directory (``<out>/<spec.name>``).
      cells: one row per stored cell: dataset, model, width, seed, the
        metrics, the per-(dataset, model) columns, seconds, key.
      summary: mean and (sample) std over seeds per dataset × model × width:
        ``<metric>_mean``, ``<metric>_std`` and ``n_seeds``.
      fits: per (dataset, model): log-log slopes against width (least squares
        on log10 of the seed means), for kernel sweeps the extrapolated width
        where cert = 1/2 beside m_theory, κ(G), κ_d(G), and the Θ_∞ spectrum.
      n_cells: cells in the spec.
      n_computed: cells computed by this call.
      n_skipped: cells already in the store when this call started.
      n_missing: cells still absent (claimed by another process, or failed).
      seconds: wall time of this call.
    """

    spec: Spec
    store_path: Path
    cells: Any
    summary: Any
    fits: Any
    n_cells: int
    n_computed: int = 0
    n_skipped: int = 0
    n_missing: int = 0
    seconds: float = 0.0

    def __repr__(self) -> str:
        return (f"SweepResults({self.spec.name!r}, kind={self.spec.kind!r}, cells={self.n_cells - self.n_missing}/"
                f"{self.n_cells}, computed={self.n_computed}, store_path={str(self.store_path)!r})")


def _frames(spec: Spec, store: ResultStore, plan: list[Cell]):
    rows = []
    for cell in plan:
        if not store.has(cell.key):
            continue
        record = store.get(cell.key)
        row = {"dataset": spec.datasets[cell.dataset].label, "model": spec.models[cell.model].label,
               "width": cell.width, "seed": cell.seed}
        row.update(record["metrics"])
        row["seconds"] = record["timing"]["seconds"]
        row["key"] = cell.key
        rows.append(row)
    cell_metrics = CELL_METRICS[spec.kind]
    if not rows:
        columns = ["dataset", "model", "width", "seed", *cell_metrics, "seconds", "key"]
        empty = pd.DataFrame(columns=columns)
        return empty, pd.DataFrame(columns=["dataset", "model", "width", "n_seeds"]), pd.DataFrame(
            columns=["dataset", "model"])
    cells = pd.DataFrame(rows)
    ds_order = {d.label: i for i, d in enumerate(spec.datasets)}
    model_order = {m.label: i for i, m in enumerate(spec.models)}
    cells = cells.sort_values(["dataset", "model", "width", "seed"],
                              key=lambda col: col.map(ds_order) if col.name == "dataset" else
                              col.map(model_order) if col.name == "model" else col).reset_index(drop=True)
    summary = seed_summary(cells, ["dataset", "model", "width"], cell_metrics)
    fits = pd.DataFrame([_fit_row(spec, ds, model, group, cells) for (ds, model), group in
                         summary.groupby(["dataset", "model"], sort=False)])
    return cells, summary, fits


#: Metrics fitted against width, by spec kind; cert's fit is extrapolated to cert = 1/2.
FIT_METRICS = {"kernel": ("rel_fro", "cert", "krr_err"), "training": ("ntk_distance", "lin_distance")}


def _fit_row(spec: Spec, ds: str, model: str, summary: pd.DataFrame, cells: pd.DataFrame) -> dict[str, Any]:
    widths = summary["width"].to_numpy(np.float64)
    row: dict[str, Any] = {"dataset": ds, "model": model, "n_widths": int(len(widths)),
                           "n_cells": int(summary["n_seeds"].sum())}
    means = {m: summary[f"{m}_mean"].to_numpy(np.float64) for m in FIT_METRICS[spec.kind]
             if f"{m}_mean" in summary.columns}
    row.update(width_fits(widths, means, crossings={"cert": 0.5}))
    first = cells[(cells["dataset"] == ds) & (cells["model"] == model)].iloc[0]
    for column in GROUP_COLUMNS:
        if column in first.index:
            row[column] = first[column]
    return row


def load_results(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, out: str | os.PathLike[str] = "results"
                 ) -> SweepResults:
    """The tables of a sweep from its store, computing nothing.

    Args:
      spec: the sweep's spec (path, dict or ``Spec``).
      out: the results directory given to ``run_sweep``.
    """
    spec = load_spec(spec)
    path = Path(out) / spec.name
    store = ResultStore.open(path, create=False, readonly=True)
    plan = plan_cells(spec)
    cells, summary, fits = _frames(spec, store, plan)
    missing = sum(not store.has(c.key) for c in plan)
    return SweepResults(spec, path, cells, summary, fits, len(plan), 0, len(plan) - missing, missing, 0.0)


# --------------------------------------------------------------------------- the runner


def _rotate(items: list, offset: int) -> list:
    """``items`` starting at position ``offset`` (mod its length), wrapping around."""
    if not items:
        return items
    k = offset % len(items)
    return items[k:] + items[:k]


class _Runner:
    def __init__(self, spec: Spec, store, bar, *, mesh=None, offset: int = 0) -> None:
        self.spec = spec
        self.store = store
        self.bar = bar
        self.computed = 0
        self.mesh = mesh  # 1-D width mesh for the streamed Θ_m, or None
        self.offset = offset  # this process's index: it starts its work that far into each list
        self._data: dict[int, _Data] = {}
        self._spec_dict = spec.to_dict()

    def data(self, index: int) -> _Data:
        if index not in self._data:
            self._data[index] = _load_data(self.spec.datasets[index], index)
        return self._data[index]

    def put(self, cell: Cell, metrics: dict[str, Any], seconds: float, started: str) -> None:
        record = make_record(KIND_RECORD[self.spec.kind], cell.definition, metrics, spec=self._spec_dict,
                             seed=cell.seed, seconds=seconds, started=started, finished=utc_now())
        self.store.put(cell.key, record, exist_ok=True)
        self.computed += 1
        self.bar.update(1)

    def claim(self, cells: Sequence[Cell]) -> list[Cell]:
        return [c for c in cells if self.store.claim(c.key)]

    def release(self, cells: Sequence[Cell]) -> None:
        for c in cells:
            if c.key in self.store.held_claims():
                self.store.release(c.key)

    # -- kernel sweeps ---------------------------------------------------------------

    def kernel_group(self, group: _Group, cells: list[Cell]) -> None:
        spec = self.spec
        by_seed: dict[int, list[Cell]] = {}
        for cell in cells:
            by_seed.setdefault(cell.seed, []).append(cell)
        if group.features is None:  # a network model: one kernel per cell
            for seed, seed_cells in _rotate(list(by_seed.items()), self.offset):
                claimed = self.claim(seed_cells)
                try:
                    for cell in claimed:
                        started, t0 = utc_now(), time.perf_counter()
                        theta = _network_kernel(spec, group.model, group.data, cell.width, jax.random.PRNGKey(cell.seed))
                        self._kernel_record(group, cell, theta, time.perf_counter() - t0, started, devices=1)
                finally:
                    self.release(claimed)
            return
        n = group.data.x_train.shape[0]
        head = _head_config(spec, 1, group.data.out_dim)
        k = spec.kernel
        batched = self._batch_seeds(group)
        # Batches have a fixed composition (all seeds, or one), so a cell's value never
        # depends on which cells were pending.
        batches = [list(spec.seeds)] if batched else [[seed] for seed in spec.seeds]
        n_devices = 1 if self.mesh is None else int(self.mesh.devices.size)
        memory.ensure_fits(memory.sweep_cell_memory(
            n, group.features.shape[0] - n, group.features.shape[1], width_chunk=k.width_chunk,
            seeds=max(len(b) for b in batches), out_dim=head.out_dim, train_readout=head.train_readout,
            use_bias=head.use_bias, dtype=spec.dtype,
        ))
        for batch in _rotate(batches, self.offset):
            pending = [c for s in batch for c in by_seed.get(s, [])]
            claimed = self.claim(pending)
            if not claimed:
                continue
            try:
                index = {(c.seed, c.width): c for c in claimed}
                keys = jnp.stack([jax.random.PRNGKey(s) for s in batch]) if batched else jax.random.PRNGKey(batch[0])
                widths = sorted({c.width for c in claimed})
                started, t0 = utc_now(), time.perf_counter()
                for m, theta in head_kernel_stream(keys, head, group.features, n, widths, width_chunk=k.width_chunk,
                                                   dtype=spec.dtype, mesh=self.mesh, precision=spec.precision):
                    thetas = theta if theta.ndim == 3 else theta[None]
                    elapsed = time.perf_counter() - t0
                    done = [(i, index[(s, m)]) for i, s in enumerate(batch) if (s, m) in index]
                    for i, cell in done:
                        self._kernel_record(group, cell, thetas[i], elapsed / len(done), started, devices=n_devices)
                    started, t0 = utc_now(), time.perf_counter()
            finally:
                self.release(claimed)

    def _batch_seeds(self, group: _Group) -> bool:
        k = self.spec.kernel
        if k.batch_seeds is False or len(self.spec.seeds) == 1:
            return False
        n = group.data.x_train.shape[0]
        n_all = group.features.shape[0]
        itemsize = np.dtype(self.spec.dtype).itemsize
        estimate = len(self.spec.seeds) * itemsize * (3 * n_all * n + 4 * n_all * k.width_chunk)  # bytes
        fits = estimate <= k.memory_gb * 2**30
        if k.batch_seeds is True:
            return fits
        return fits and jax.default_backend() != "cpu"

    def _kernel_record(self, group: _Group, cell: Cell, theta: np.ndarray, seconds: float, started: str, *,
                       devices: int = 1) -> None:
        n = group.data.x_train.shape[0]
        t0 = time.perf_counter()
        with _blas_single_thread(n):
            metrics = M.kernel_convergence(theta[:n], theta[n:], group.reference, self.spec.metrics)
        metrics.update(group.info)
        metrics["n_devices"] = int(devices)  # provenance only: not in the cell key
        self.put(cell, metrics, seconds + time.perf_counter() - t0, started)

    # -- training sweeps -------------------------------------------------------------

    def training_group(self, group: _Group, cells: list[Cell]) -> None:
        spec = self.spec
        n = group.data.x_train.shape[0]
        ref = group.reference
        with _blas_single_thread(n):
            if spec.training.ntk_time is None:
                f_ntk = ref.predictions
            else:
                f_ntk = ntk_predictor(ref.theta_train, ref.theta_test, ref.y, time=spec.training.ntk_time,
                                      ridge=spec.ridge)
        f_ntk = np.asarray(f_ntk, np.float64).reshape(group.data.x_test.shape[0], -1)
        for cell in _rotate(list(cells), self.offset):
            if not self.store.claim(cell.key):
                continue
            try:
                started, t0 = utc_now(), time.perf_counter()
                metrics = _train_cell(spec, group, cell, f_ntk)
                metrics.update(group.info)
                self.put(cell, metrics, time.perf_counter() - t0, started)
            finally:
                self.release([cell])


def _train_cell(spec: Spec, group: _Group, cell: Cell, f_ntk: np.ndarray) -> dict[str, Any]:
    data = group.data
    n = data.x_train.shape[0]
    config = spec.training.train_config()
    dtype = jnp.dtype(spec.dtype)
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(cell.seed))
    if group.features is None:  # a network model ("qkv-attn", a user's): the whole network is trained
        module = _network(spec, group.model, cell.width, data.out_dim)
        ctx = jnp.asarray(data.x_train, dtype)
        variables = module.init(init_key, ctx, ctx)
        apply_fn, params = model_apply_fn(module, variables, ctx)
        x_train, x_test = data.x_train, data.x_test
    else:  # parameter-free features computed once; only the head is trained
        module = MLPHead(_head_config(spec, cell.width, data.out_dim), dtype)
        x_train, x_test = group.features[:n], group.features[n:]
        variables = dict(module.init(init_key, jnp.asarray(x_train, dtype)))
        params = variables.pop("params")
        rest = variables

        def apply_fn(p, x, _module=module, _rest=rest):
            return _module.apply({"params": p, **_rest}, x)

    y = data.y if data.y.ndim == 2 else data.y[:, None]
    loss = config.resolved_loss(y.shape[1])

    def final_loss(fn, p) -> float:
        out = fn(p, jnp.asarray(x_train, dtype))
        value = loss_value(out, jnp.asarray(y, dtype), jnp.ones(n, dtype), loss)
        return float(value)

    result = train(apply_fn, params, x_train, y, key=shuffle_key, config=config)
    f_m = np.asarray(apply_fn(result.params, jnp.asarray(x_test, dtype)), np.float64)
    out: dict[str, Any] = {"loss": loss, "epochs": config.epochs, "loss_m": final_loss(apply_fn, result.params),
                           "f_ntk_norm": float(np.linalg.norm(f_ntk))}
    if data.labels_test is not None:
        out.update(_fit_health(apply_fn, params, result.params, rest if group.features is not None else None,
                               module, x_train, y, f_m, data.labels_test, loss, dtype))
    metrics = spec.metrics
    if "ntk_distance" in metrics:
        out["ntk_distance"] = M.relative_error(f_m, f_ntk)
    f_lin = None
    if "lin_distance" in metrics:
        apply_lin = linearize(apply_fn, params)
        result_lin = train(apply_lin, params, x_train, y, key=shuffle_key, config=config)
        f_lin = np.asarray(apply_lin(result_lin.params, jnp.asarray(x_test, dtype)), np.float64)
        out["lin_distance"] = M.relative_error(f_m, f_lin)
        out["lin_ntk_distance"] = M.relative_error(f_lin, f_ntk)
        out["loss_lin"] = final_loss(apply_lin, result_lin.params)
    if "accuracy" in metrics and data.labels_test is not None:
        out["acc_m"] = M.accuracy(f_m, data.labels_test)
        out["acc_ntk"] = M.accuracy(f_ntk, data.labels_test)
        if f_lin is not None:
            out["acc_lin"] = M.accuracy(f_lin, data.labels_test)
    return out


def _fit_health(apply_fn, params0, params, rest, module, x_train, y, f_test, labels_test, loss, dtype) -> dict:
    """Training health (``kernelattn.learning.training.training_health``) of a sweep fit, as ``health_*`` metrics;
    the ReLU-pattern diagnostics need the head's variables (``rest`` not None)."""
    x = jnp.asarray(x_train, dtype)
    hidden = hidden0 = None
    if rest is not None:
        hidden = np.asarray(head_preactivations(module.config, {**params, **rest.get("constants", {})}, x))
        hidden0 = np.asarray(head_preactivations(module.config, {**params0, **rest.get("constants", {})}, x))
    health = training_health(
        loss=loss, targets=y, labels=predicted_labels(y), outputs=np.asarray(apply_fn(params, x)), params=params,
        initial_params=params0, hidden=hidden, hidden_initial=hidden0, features=np.asarray(x_train),
        labels_test=labels_test, outputs_test=f_test,
    )
    return {f"health_{k}": v for k, v in health.to_dict().items()} | {"trained": health.trained}


def _progress_enabled(progress: bool) -> bool:
    if not progress:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _work_through(spec: Spec, store, runner: _Runner, bar, cells: list[Cell], offset: int) -> None:
    """Compute every cell of ``cells`` that is neither stored nor claimed by another process."""
    groups: dict[tuple[int, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.dataset, cell.model), []).append(cell)
    for (i, j), group_cells in _rotate(list(groups.items()), offset):
        group_cells = [c for c in group_cells if not store.has(c.key)]
        if not group_cells:
            continue
        bar.set_postfix_str(f"{spec.datasets[i].label} / {spec.models[j].label}", refresh=False)
        group = _prepare_group(spec, spec.datasets[i], spec.models[j], runner.data(i))
        if spec.kind == "kernel":
            runner.kernel_group(group, group_cells)
        else:
            runner.training_group(group, group_cells)


def _wait_for_others(store, plan: list[Cell], bar, poll_s: float = WAIT_POLL_S) -> list[Cell]:
    """Block while other live processes hold claims on missing cells.

    Returns:
      The cells still missing once no live claim is left (given up by a
      process that failed or died): the caller computes them.
    """
    while True:
        missing = [c for c in plan if not store.has(c.key)]
        bar.n = len(plan) - len(missing)
        # Another host's claim cannot be checked for liveness: wait for it only within one multi-process
        # run (its processes share the work); otherwise report those cells missing instead of hanging.
        waiting = sum(store.claimed_elsewhere(c.key, include_foreign=jax.process_count() > 1) for c in missing)
        if not waiting:
            bar.refresh()
            return missing
        bar.set_postfix_str(f"waiting for {waiting} cells of other processes", refresh=True)
        time.sleep(poll_s)


def run_sweep(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, out: str | os.PathLike[str] = "results", *,
              progress: bool = True, devices: Any = None, wait: bool = True) -> SweepResults:
    """Run (or resume) a sweep and return its tables.

    Args:
      spec: a spec file path, a dict in the spec format, or a ``Spec``
        (validated by ``kernelattn.experiments.specs.load_spec``).
      out: results directory; the store is ``<out>/<spec name>``.
      progress: show a tqdm progress bar (cells done, ETA) on stderr; it is
        also off when stderr is not a terminal.
      devices: overrides the spec's ``kernel.devices`` (an integer ≥ 1 or
        "all"): local devices the streamed Θ_m is sharded over, width-wise.
        Not part of any cell's key (results agree to float rounding).
      wait: when the cells left are being computed by other processes
        (live claims on the same store), wait for them, and compute those a
        failed process gave up, so that every process returns the whole
        table; ``False`` returns at once with them counted as ``n_missing``.
        Claims of another host are waited for only in a multi-process run
        (``jax.process_count() > 1``): their liveness cannot be checked, so a
        single process counts those cells missing instead of waiting up to
        the claim timeout (``kernelattn store PATH`` lists such claims).

    In a multi-process JAX run (``kernelattn.kernels.distributed.initialize_distributed``
    called first, as the CLI does), every process runs the same call on the
    same store: cells are claimed before they are computed, and process p
    starts p positions into each work list, so the processes spread out
    instead of contending for the same cells.

    Returns:
      ``SweepResults`` with ``.cells``, ``.summary``, ``.fits`` DataFrames
      and ``.store_path``.

    Raises:
      kernelattn.experiments.specs.SpecError: an invalid spec (naming the key path).
      kernelattn.experiments.store.StoreError: the store cannot be opened or written.

    The whole run is inside ``kernelattn.precision_policy(spec.precision)``
    (None: the policy in force, else "highest"): every matmul of it,
    the sweep's own included, runs at that precision.
    """
    t_start = time.perf_counter()
    spec = load_spec(spec)
    # A spec without "precision" runs at the policy in force (the CLI's --precision); records name the one used.
    spec = dataclasses.replace(spec, precision=resolve_precision(spec.precision, "precision"))
    with precision_policy(spec.precision):
        return _run_sweep(spec, out, progress=progress, devices=devices, wait=wait, t_start=t_start)


def _run_sweep(spec: Spec, out, *, progress: bool, devices: Any, wait: bool, t_start: float) -> SweepResults:
    if devices is not None:
        spec = dataclasses.replace(spec, kernel=dataclasses.replace(spec.kernel, devices=parse_devices(devices,
                                                                                                       "devices")))
    if not x64_enabled():
        enable_x64()
    resolve_dtype(spec.dtype, "dtype")  # refuses float64 without 64-bit mode, naming "dtype"
    mesh = sweep_mesh(spec.kernel.devices)
    offset = jax.process_index()
    path = Path(out) / spec.name
    # A new store is created only once every dataset has loaded: a spec refused at data-load time leaves nothing.
    preloaded = {} if store_exists(path) else {i: _load_data(d, i) for i, d in enumerate(spec.datasets)}
    store = ResultStore.open(path)
    store.clear_finished_claims()  # left by an owner killed between its record and its release
    plan = plan_cells(spec)
    pending = [c for c in plan if not store.has(c.key)]
    skipped = len(plan) - len(pending)
    bar = tqdm(total=len(plan), initial=skipped, desc=spec.name, unit="cell", dynamic_ncols=True,
               disable=not _progress_enabled(progress), smoothing=0.1)
    runner = _Runner(spec, store, bar, mesh=mesh, offset=offset)
    runner._data.update(preloaded)
    try:
        while pending:
            computed_before = runner.computed
            _work_through(spec, store, runner, bar, pending, offset)
            left = _wait_for_others(store, plan, bar) if wait else []
            if left == pending and runner.computed == computed_before:
                break  # no progress on the same cells: report them missing instead of looping
            pending = left
    finally:
        bar.close()
    cells_df, summary, fits = _frames(spec, store, plan)
    missing = sum(not store.has(c.key) for c in plan)
    return SweepResults(spec, path, cells_df, summary, fits, len(plan), runner.computed, skipped, missing,
                        time.perf_counter() - t_start)


# --------------------------------------------------------------------------- text report


def format_summary(results: SweepResults) -> str:
    """Plain-text report of a sweep: counts, per-width means ± std, and the fits table."""
    spec = results.spec
    lines = [
        f"sweep {spec.name!r} ({spec.kind}): {results.n_cells - results.n_missing}/{results.n_cells} cells in "
        f"{results.store_path}",
        f"  computed {results.n_computed}, already stored {results.n_skipped}, missing {results.n_missing}"
        + (f", {results.seconds:.1f} s" if results.seconds else ""),
    ]
    if results.n_missing:
        lines.append("  (missing cells are being computed by another process, or failed: rerun to complete)")
    summary = results.summary
    if summary is None or len(summary) == 0:
        lines.append("no cells stored yet")
        return "\n".join(lines)
    if spec.kind == "kernel":
        shown = [("rel_fro", "rel_fro"), ("cert", "cert"), ("kappa", "kappa(Θ_m)"), ("krr_err", "krr_err")]
    else:
        shown = [("ntk_distance", "|f_m-f_ntk|"), ("lin_distance", "|f_m-f_lin|"), ("acc_m", "acc_m"),
                 ("acc_lin", "acc_lin"), ("acc_ntk", "acc_ntk")]
    shown = [(k, label) for k, label in shown if f"{k}_mean" in summary.columns]
    columns = ["dataset", "model", "width", "seeds"] + [label for _, label in shown]
    rows = [[str(r["dataset"]), str(r["model"]), fmt(int(r["width"])), fmt(int(r["n_seeds"]))]
            + [fmt_pm(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in shown] for _, r in summary.iterrows()]
    lines += ["", "mean ± std over seeds:", text_table(columns, rows, ["l", "l"] + ["r"] * (len(columns) - 2))]
    fits = results.fits
    if fits is not None and len(fits):
        if spec.kind == "kernel":
            fit_cols = [("slope_rel_fro", "slope rel_fro"), ("slope_cert", "slope cert"),
                        ("log10_m_cert_half", "log10 m(cert=1/2)"), ("log10_m_theory", "log10 m_theory"),
                        ("kappa_G", "κ(G)"), ("kappa_d_G", "κ_d(G)"), ("rank_G", "rank"),
                        ("lambda_min_inf", "λ_min(Θ∞)"), ("kappa_inf", "κ(Θ∞)"), ("limit", "Θ∞")]
        else:
            fit_cols = [("slope_ntk_distance", "slope |f_m-f_ntk|"), ("slope_lin_distance", "slope |f_m-f_lin|"),
                        ("kappa_d_G", "κ_d(G)"), ("log10_m_theory", "log10 m_theory"), ("kappa_inf", "κ(Θ∞)"),
                        ("limit", "Θ∞")]
        fit_cols = [(k, label) for k, label in fit_cols if k in fits.columns]
        rows = [[str(r["dataset"]), str(r["model"])] + [fmt_log(r[k]) if k.startswith("log10") else fmt(r[k])
                                                        for k, _ in fit_cols] for _, r in fits.iterrows()]
        header = ["dataset", "model"] + [label for _, label in fit_cols]
        lines += ["", "fits vs width (log-log least squares on seed means; m(cert=1/2) extrapolated, "
                      "m_theory = κ_d(G)^6 n ln n with constant 1):" if spec.kind == "kernel" else
                  "fits vs width (log-log least squares on seed means):",
                  text_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))]
    return "\n".join(lines)
