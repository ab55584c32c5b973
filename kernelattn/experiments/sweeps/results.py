"""A sweep's results: its tables read back from the store, and their plain-text report.

:func:`sweep_tables` turns the stored records of a spec's cells into three
DataFrames — one row per cell, the mean ± std over seeds per width
(``analysis.statistics.seed_summary``) and the log-log fits per (dataset,
model) (``analysis.fits.group_fits``); :func:`load_results` reads them
without computing anything, and :func:`format_summary` prints them
(``analysis.formatting``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kernelattn.analysis.fits import group_fits
from kernelattn.analysis.formatting import fits_table, seed_summary_table
from kernelattn.analysis.statistics import seed_summary
from kernelattn.experiments.specs import Spec, load_spec
from kernelattn.experiments.store import ResultStore
from kernelattn.experiments.sweeps.plan import Cell, plan_cells

__all__ = [
    "CELL_METRICS",
    "FIT_METRICS",
    "GROUP_COLUMNS",
    "SweepResults",
    "format_summary",
    "load_results",
    "sweep_tables",
]

#: Per-cell metric columns summarized over seeds, by spec kind (in table order).
CELL_METRICS = {
    "kernel": (
        "rel_fro",
        "rel_fro_test",
        "spec_err",
        "cert",
        "lambda_min",
        "lambda_max",
        "kappa",
        "krr_err",
        "krr_acc_m",
        "krr_acc_inf",
    ),
    "training": (
        "ntk_distance",
        "lin_distance",
        "lin_ntk_distance",
        "acc_m",
        "acc_lin",
        "acc_ntk",
        "loss_m",
        "loss_lin",
        "f_ntk_norm",
    ),
}
#: Per (dataset, model) columns (identical in every cell record of the pair).
GROUP_COLUMNS = (
    "lambda_min_inf",
    "lambda_max_inf",
    "kappa_inf",
    "kappa_G",
    "kappa_d_G",
    "rank_G",
    "log10_m_theory",
    "kappa_d_features",
    "rank_features",
    "log10_m_theory_features",
    "limit",
    "limit_width",
    "limit_seeds",
)
#: Metrics fitted against width, by spec kind; cert's fit is extrapolated to cert = 1/2.
FIT_METRICS = {"kernel": ("rel_fro", "cert", "krr_err"), "training": ("ntk_distance", "lin_distance")}


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
        return (
            f"SweepResults({self.spec.name!r}, kind={self.spec.kind!r}, cells={self.n_cells - self.n_missing}/"
            f"{self.n_cells}, computed={self.n_computed}, store_path={str(self.store_path)!r})"
        )


def sweep_tables(spec: Spec, store: ResultStore, plan: list[Cell]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables of a sweep from its store: cells, their seed summary, and the fits per (dataset, model).

    Args:
      spec: the sweep's spec (its dataset and model order orders the rows).
      store: its store; cells it does not hold are left out.
      plan: the spec's cells (:func:`~kernelattn.experiments.sweeps.plan.plan_cells`).

    Returns:
      ``(cells, summary, fits)`` as in :class:`SweepResults`.
    """
    rows = []
    for cell in plan:
        if not store.has(cell.key):
            continue
        record = store.get(cell.key)
        row = {
            "dataset": spec.datasets[cell.dataset].label,
            "model": spec.models[cell.model].label,
            "width": cell.width,
            "seed": cell.seed,
        }
        row.update(record["metrics"])
        row["seconds"] = record["timing"]["seconds"]
        row["key"] = cell.key
        rows.append(row)
    cell_metrics = CELL_METRICS[spec.kind]
    if not rows:
        columns = ["dataset", "model", "width", "seed", *cell_metrics, "seconds", "key"]
        empty = pd.DataFrame(columns=columns)
        return (
            empty,
            pd.DataFrame(columns=["dataset", "model", "width", "n_seeds"]),
            pd.DataFrame(columns=["dataset", "model"]),
        )
    cells = pd.DataFrame(rows)
    ds_order = {d.label: i for i, d in enumerate(spec.datasets)}
    model_order = {m.label: i for i, m in enumerate(spec.models)}
    cells = cells.sort_values(
        ["dataset", "model", "width", "seed"],
        key=lambda col: (
            col.map(ds_order) if col.name == "dataset" else col.map(model_order) if col.name == "model" else col
        ),
    ).reset_index(drop=True)
    summary = seed_summary(cells, ["dataset", "model", "width"], cell_metrics)
    fits = group_fits(summary, cells, FIT_METRICS[spec.kind], crossings={"cert": 0.5}, carry=GROUP_COLUMNS)
    return cells, summary, fits


def load_results(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, out: str | os.PathLike[str] = "results"
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
    cells, summary, fits = sweep_tables(spec, store, plan)
    missing = sum(not store.has(c.key) for c in plan)
    return SweepResults(spec, path, cells, summary, fits, len(plan), 0, len(plan) - missing, missing, 0.0)


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
        shown = [
            ("ntk_distance", "|f_m-f_ntk|"),
            ("lin_distance", "|f_m-f_lin|"),
            ("acc_m", "acc_m"),
            ("acc_lin", "acc_lin"),
            ("acc_ntk", "acc_ntk"),
        ]
    shown = [(k, label) for k, label in shown if f"{k}_mean" in summary.columns]
    lines += ["", "mean ± std over seeds:", seed_summary_table(summary, shown)]
    fits = results.fits
    if fits is not None and len(fits):
        if spec.kind == "kernel":
            fit_cols = [
                ("slope_rel_fro", "slope rel_fro"),
                ("slope_cert", "slope cert"),
                ("log10_m_cert_half", "log10 m(cert=1/2)"),
                ("log10_m_theory", "log10 m_theory"),
                ("kappa_G", "κ(G)"),
                ("kappa_d_G", "κ_d(G)"),
                ("rank_G", "rank"),
                ("lambda_min_inf", "λ_min(Θ∞)"),
                ("kappa_inf", "κ(Θ∞)"),
                ("limit", "Θ∞"),
            ]
        else:
            fit_cols = [
                ("slope_ntk_distance", "slope |f_m-f_ntk|"),
                ("slope_lin_distance", "slope |f_m-f_lin|"),
                ("kappa_d_G", "κ_d(G)"),
                ("log10_m_theory", "log10 m_theory"),
                ("kappa_inf", "κ(Θ∞)"),
                ("limit", "Θ∞"),
            ]
        fit_cols = [(k, label) for k, label in fit_cols if k in fits.columns]
        lines += [
            "",
            "fits vs width (log-log least squares on seed means; m(cert=1/2) extrapolated, "
            "m_theory = κ_d(G)^6 n ln n with constant 1):"
            if spec.kind == "kernel"
            else "fits vs width (log-log least squares on seed means):",
            fits_table(fits, fit_cols),
        ]
    return "\n".join(lines)
