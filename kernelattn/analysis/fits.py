"""Log-log fits of a metric against width, and the widths they extrapolate to (docs/math.md §8).

The convergence tables fit log10 of the seed mean of a metric (rel_fro, cert,
a function-space distance) against log10 m by least squares; the fitted power
law's width where cert = 1/2 is an extrapolation, not a bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kernelattn.analysis.statistics import width_summary
from kernelattn.errors import InputValueError

__all__ = ["LogLogFit", "convergence_fits", "crossing_width", "group_fits", "log10_width", "loglog_fit", "width_fits"]


@dataclasses.dataclass(frozen=True)
class LogLogFit:
    """Least-squares fit log10 y = intercept + slope · log10 m.

    Attributes:
      slope, intercept: the fitted line (NaN with fewer than 2 usable points).
      r2: coefficient of determination (NaN when undefined).
      n_points: points used (finite and positive x and y).
    """

    slope: float
    intercept: float
    r2: float
    n_points: int

    def predict(self, m: float) -> float:
        """The fitted y at width m."""
        return 10.0 ** (self.intercept + self.slope * math.log10(m))


def loglog_fit(widths: Iterable[float], values: Iterable[float]) -> LogLogFit:
    """Fit log10(values) = a + b·log10(widths) by least squares.

    Non-finite and non-positive points are skipped (they have no logarithm).
    Pass means over seeds (the fits table uses log10 of the seed mean).
    """
    x = np.asarray(list(widths), dtype=np.float64)
    y = np.asarray(list(values), dtype=np.float64)
    if x.shape != y.shape:
        raise InputValueError(f"values: expected {x.shape[0]} entries like widths, got {y.shape[0]}")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log10(x[keep]), np.log10(y[keep])
    n = int(x.size)
    if n < 2 or np.ptp(x) == 0:
        return LogLogFit(math.nan, math.nan, math.nan, n)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else math.nan
    return LogLogFit(float(slope), float(intercept), r2, n)


def crossing_width(fit: LogLogFit, target: float) -> float:
    """Width m* where the fitted power law equals ``target``: 10^((log10 target − a)/b).

    Returns inf when the fit does not decrease (slope ≥ 0) and NaN when there
    is no fit. The value is an extrapolation of the fitted line, not a bound.
    """
    if not (target > 0):
        raise InputValueError(f"target: expected a positive number, got {target}")
    if not (math.isfinite(fit.slope) and math.isfinite(fit.intercept)):
        return math.nan
    if fit.slope >= 0:
        return math.inf
    exponent = (math.log10(target) - fit.intercept) / fit.slope
    return 10.0**exponent if exponent < 308 else math.inf


def log10_width(m: float) -> float:
    """log10 of an extrapolated width: inf for inf, NaN for NaN or a non-positive width."""
    if 0 < m < math.inf:
        return math.log10(m)
    return math.inf if m == math.inf else math.nan


def width_fits(
    widths: Sequence[float], means: Mapping[str, Sequence[float]], *, crossings: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Slope and r² of each metric's seed means against width, and the widths where fits cross a target.

    Args:
      widths: the widths m.
      means: metric name → seed mean at each width.
      crossings: metric name → target: adds ``m_<metric>_half`` style columns —
        ``m_cert_half`` and ``log10_m_cert_half`` for ``{"cert": 0.5}``.

    Returns:
      ``slope_<metric>``, ``r2_<metric>`` per metric (in the order given), and
      per crossing ``m_<metric>_<name>``, ``log10_m_<metric>_<name>`` where
      name is "half" for 0.5 and the target otherwise.
    """
    crossings = dict(crossings or {})
    row: dict[str, Any] = {}
    for metric, values in means.items():
        fit = loglog_fit(widths, values)
        row[f"slope_{metric}"] = fit.slope
        row[f"r2_{metric}"] = fit.r2
        if metric in crossings:
            target = crossings[metric]
            name = "half" if target == 0.5 else f"{target:g}"
            m = crossing_width(fit, target)
            row[f"m_{metric}_{name}"] = m
            row[f"log10_m_{metric}_{name}"] = log10_width(m)
    return row


def group_fits(
    summary: pd.DataFrame,
    cells: pd.DataFrame,
    metrics: Sequence[str],
    *,
    by: Sequence[str] = ("dataset", "model"),
    crossings: Mapping[str, float] | None = None,
    carry: Sequence[str] = (),
) -> pd.DataFrame:
    """Per group of ``by`` of a seed summary over widths: the log-log fits of the metrics' seed means.

    Args:
      summary: ``statistics.seed_summary`` of ``cells`` by ``(*by, "width")``.
      cells: the per-cell rows summarized (where ``carry`` is read).
      metrics: the metrics fitted (:func:`width_fits`); those without a
        ``<metric>_mean`` column are skipped.
      by: the grouping columns.
      crossings: as in :func:`width_fits`.
      carry: columns copied from each group's first cell (constants of the
        group, e.g. κ(G)); absent ones are skipped.

    Returns:
      One row per group, in order of appearance: ``by``, ``n_widths``,
      ``n_cells`` (the seeds summed over widths), the fits, then ``carry``.
    """
    rows = []
    for values, group in summary.groupby(list(by), sort=False):
        values = values if isinstance(values, tuple) else (values,)
        widths = group["width"].to_numpy(np.float64)
        row: dict[str, Any] = dict(zip(by, values))
        row.update(n_widths=len(widths), n_cells=int(group["n_seeds"].sum()))
        means = {m: group[f"{m}_mean"].to_numpy(np.float64) for m in metrics if f"{m}_mean" in group.columns}
        row.update(width_fits(widths, means, crossings=crossings))
        in_group = np.ones(len(cells), dtype=bool)
        for column, value in zip(by, values):
            in_group &= (cells[column] == value).to_numpy()
        first = cells[in_group].iloc[0]
        row.update({column: first[column] for column in carry if column in first.index})
        rows.append(row)
    return pd.DataFrame(rows)


def convergence_fits(kernel: pd.DataFrame) -> pd.DataFrame:
    """Per (store, dataset, model) of stored kernel rows: log-log fits against width of the seed means.

    Columns: ``slope_rel_fro``, ``r2_rel_fro``, ``slope_cert``, ``r2_cert``,
    ``m_cert_half`` / ``log10_m_cert_half`` (the fitted power law's width
    where cert = 1/2: an extrapolation), ``cert_at_max`` (mean, ``_min``,
    ``_max`` over seeds at the largest width), ``rel_fro_at_max``,
    ``width_max``, ``n_widths``, ``n_seeds``, the per-(dataset, model)
    columns of the records (``log10_m_theory``, ``kappa_G``, ``kappa_d_G``,
    ``rank_G``, ``kappa_d_features``, ``lambda_min_inf``, ``kappa_inf``),
    ``kappa_data`` and ``keys``.
    """
    if kernel.empty:
        return pd.DataFrame()
    summary = width_summary(kernel, ("rel_fro", "cert"))
    rows = []
    for (store, dataset, model), g in summary.groupby(["store", "dataset", "model"], sort=False):
        cells = kernel[(kernel["store"] == store) & (kernel["dataset"] == dataset) & (kernel["model"] == model)]
        first = cells.iloc[0]
        widths = g["width"].to_numpy(np.float64)
        row: dict[str, Any] = {
            "store": store,
            "dataset": dataset,
            "model": model,
            "model_name": first["model_name"],
            "variant": bool(first["variant"]),
            "depth": first["depth"],
            "rank": first["rank"],
            "kappa_data": first["kappa_data"],
            "n_widths": len(g),
            "n_seeds": int(g["n_seeds"].max()),
            "width_max": int(widths.max()),
            "keys": list(cells["key"]),
        }
        present = [m for m in ("rel_fro", "cert") if f"{m}_mean" in g]
        row.update(
            width_fits(widths, {m: g[f"{m}_mean"].to_numpy(np.float64) for m in present}, crossings={"cert": 0.5})
        )
        last = g.iloc[int(np.argmax(widths))]
        for metric in present:
            for suffix in ("", "_min", "_max"):
                row[f"{metric}_at_max{suffix}"] = last[f"{metric}_mean" if not suffix else f"{metric}{suffix}"]
        for column in (
            "log10_m_theory",
            "kappa_G",
            "kappa_d_G",
            "rank_G",
            "kappa_d_features",
            "lambda_min_inf",
            "kappa_inf",
            "limit",
        ):
            row[column] = first[column] if column in first.index else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
