"""The analysis layer: seed statistics, log-log fits and extrapolations, labels, number and table formatting."""

import math

import numpy as np
import pandas as pd
import pytest

from kernelattn.analysis.fits import (
    convergence_fits,
    crossing_width,
    group_fits,
    log10_width,
    loglog_fit,
    width_fits,
)
from kernelattn.analysis.formatting import (
    fits_table,
    fmt,
    fmt_log,
    fmt_pm,
    fmt_range,
    markdown_table,
    seed_summary_table,
    text_table,
)
from kernelattn.analysis.labels import dataset_label, display_order, model_info, model_label
from kernelattn.analysis.statistics import seed_stats, seed_summary, width_summary

# ----------------------------------------------------------------------------- fits


def test_loglog_fit_and_crossing_width():
    widths = np.array([4.0, 16.0, 64.0, 256.0])
    fit = loglog_fit(widths, 3.0 * widths**-0.5)
    assert fit.slope == pytest.approx(-0.5, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log10(3.0), abs=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.n_points == 4
    # 3 m^{-1/2} = 1/2  ⇔  m = 36
    assert crossing_width(fit, 0.5) == pytest.approx(36.0, rel=1e-10)
    assert fit.predict(36.0) == pytest.approx(0.5, rel=1e-10)
    # non-finite and non-positive points are skipped; too few points: no fit
    skipped = loglog_fit([1.0, 2.0, 4.0, 8.0], [math.inf, 0.0, 1.0, 0.5])
    assert skipped.n_points == 2 and skipped.slope == pytest.approx(-1.0)
    assert math.isnan(loglog_fit([1.0], [1.0]).slope)
    assert math.isnan(crossing_width(loglog_fit([1.0], [1.0]), 0.5))
    assert crossing_width(loglog_fit([1.0, 10.0], [1.0, 10.0]), 0.5) == math.inf  # not decreasing


def test_crossing_width_needs_a_positive_target():
    with pytest.raises(ValueError, match="target"):
        crossing_width(loglog_fit([1.0, 2.0], [1.0, 0.5]), 0.0)


def test_width_fits_extrapolate_cert_to_one_half():
    widths = np.array([4.0, 16.0, 64.0])
    row = width_fits(widths, {"rel_fro": widths**-0.5, "cert": 3.0 * widths**-0.5}, crossings={"cert": 0.5})
    assert list(row) == ["slope_rel_fro", "r2_rel_fro", "slope_cert", "r2_cert", "m_cert_half", "log10_m_cert_half"]
    assert row["slope_cert"] == pytest.approx(-0.5) and row["m_cert_half"] == pytest.approx(36.0)
    assert row["log10_m_cert_half"] == pytest.approx(math.log10(36.0))
    assert log10_width(math.inf) == math.inf and math.isnan(log10_width(math.nan)) and math.isnan(log10_width(0.0))


# ----------------------------------------------------------------------------- statistics


def test_seed_stats_leave_out_nan_and_give_no_spread_for_inf_or_one_value():
    stats = seed_stats([1.0, 3.0, math.nan])
    assert (stats.mean, stats.min, stats.max, stats.n) == (2.0, 1.0, 3.0, 2)
    assert stats.std == pytest.approx(math.sqrt(2.0))
    assert math.isnan(seed_stats([2.0]).std) and seed_stats([2.0]).mean == 2.0
    with_inf = seed_stats([1.0, math.inf])
    assert with_inf.mean == math.inf and math.isnan(with_inf.std)
    empty = seed_stats([math.nan, None, "x"])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.std)


def _kernel_rows():
    rows = []
    for model in ("MLP-Attn", "2L-ReLU"):
        for width in (4, 16, 64):
            for seed in (0, 1):
                cert = (3.0 if model == "MLP-Attn" else 1.0) * width**-0.5 * (1 + 0.01 * seed)
                rows.append({"store": "s", "dataset": "d", "model": model, "model_name": model.lower(),
                             "variant": False, "depth": 1, "rank": math.nan, "kappa_data": math.nan,
                             "model_index": int(model == "MLP-Attn"), "width": width, "seed": seed,
                             "rel_fro": cert / 10, "cert": cert, "key": f"{model}{width}{seed}",
                             "log10_m_theory": 9.0, "kappa_d_G": 10.0})
    return pd.DataFrame(rows)


def test_seed_and_width_summaries():
    kernel = _kernel_rows()
    summary = seed_summary(kernel, ["model", "width"], ["cert", "absent"])
    assert list(summary.columns) == ["model", "width", "n_seeds", "cert_mean", "cert_std"]
    assert summary["cert_mean"].iloc[0] == pytest.approx(kernel["cert"].iloc[:2].mean())
    assert summary["cert_std"].iloc[0] == pytest.approx(kernel["cert"].iloc[:2].std())
    table = width_summary(kernel, ("cert",))
    assert list(table["model"][:3]) == ["2L-ReLU"] * 3  # the baseline first
    assert {"cert_min", "cert_max", "keys"} <= set(table.columns) and len(table["keys"].iloc[0]) == 2


def test_convergence_fits_of_stored_rows():
    fits = convergence_fits(_kernel_rows())
    attn = fits[fits["model"] == "MLP-Attn"].iloc[0]
    assert attn["slope_cert"] == pytest.approx(-0.5, abs=1e-6)
    assert attn["width_max"] == 64 and attn["n_widths"] == 3 and attn["n_seeds"] == 2
    assert attn["cert_at_max"] == pytest.approx(3.0 / 8 * 1.005)
    assert attn["log10_m_cert_half"] == pytest.approx(math.log10(36.0 * 1.005**2), abs=1e-9)
    assert attn["log10_m_theory"] == 9.0 and len(attn["keys"]) == 6


def test_group_fits_fit_each_group_and_carry_its_constants():
    kernel = _kernel_rows()
    summary = seed_summary(kernel, ["dataset", "model", "width"], ["rel_fro", "cert"])
    fits = group_fits(summary, kernel, ("rel_fro", "cert", "absent"), crossings={"cert": 0.5},
                      carry=("kappa_d_G", "not_a_column"))
    assert list(fits["model"]) == ["MLP-Attn", "2L-ReLU"]  # in order of appearance
    assert list(fits.columns) == ["dataset", "model", "n_widths", "n_cells", "slope_rel_fro", "r2_rel_fro",
                                  "slope_cert", "r2_cert", "m_cert_half", "log10_m_cert_half", "kappa_d_G"]
    attn = fits.iloc[0]
    assert attn["n_widths"] == 3 and attn["n_cells"] == 6 and attn["kappa_d_G"] == 10.0
    assert attn["slope_cert"] == pytest.approx(-0.5, abs=1e-6)
    assert attn["m_cert_half"] == pytest.approx(36.0 * 1.005**2)


# ----------------------------------------------------------------------------- labels


def test_one_label_style_for_models_and_datasets():
    assert model_label("relu") == "2L-ReLU" and model_label("2l-relu") == "2L-ReLU"
    assert model_label({"name": "mlp-attn", "depth": 2}) == "MLP-Attn (k=2)"
    assert model_label({"name": "mlp_attn", "rank": 10, "depth": 1}) == "MLP-Attn (r=10)"
    assert model_label("qkv_attn") == "QKV-Attn"
    info = model_info({"name": "mlp-attn", "rank": 5, "label": "ignored"})
    assert info["model_name"] == "mlp-attn" and info["rank"] == 5.0 and info["variant"]
    assert model_label({"name": "my.models:tiny", "hidden": 3}) == "tiny (hidden=3)"
    assert dataset_label({"name": "mnist", "classes": [3, 8]}) == "MNIST 3-vs-8"
    assert dataset_label({"name": "fashion_mnist"}) == "Fashion-MNIST"
    assert dataset_label({"name": "synthetic", "kappa": 100.0, "d": 256}) == "synthetic κ=100 d=256"
    assert dataset_label({"name": "digits", "label": "mine"}) == "mine"
    assert dataset_label({"name": "data/blobs.npz", "classes": "a-vs-b"}) == "blobs a-vs-b"


def test_display_order_puts_baselines_first():
    frame = pd.DataFrame({"model": ["MLP-Attn (k=2)", "MLP-Attn", "2L-ReLU"], "model_index": [2, 1, 0],
                          "attack": ["pgd", "none", "fgsm"], "width": [3, 2, 1]})
    assert list(display_order(frame, ["model"])["model"]) == ["2L-ReLU", "MLP-Attn", "MLP-Attn (k=2)"]
    assert list(display_order(frame, ["attack"])["attack"]) == ["none", "fgsm", "pgd"]
    assert list(display_order(frame, ["width"])["width"]) == [1, 2, 3]


# ----------------------------------------------------------------------------- formatting


def test_fmt_is_parseable():
    for value in (0.123456, 1.5e-7, 3.2e21, 12345.0, 7, math.inf, float("nan"), 0.0):
        text = fmt(value)
        assert text in ("inf", "nan", "0") or float(text) == pytest.approx(value, rel=5e-4)
    assert fmt_log(42.7961) == "42.80"
    assert fmt_pm(0.5, float("nan")) == "0.5"


def test_tables_and_ranges():
    assert fmt(True) == "true" and fmt(np.int64(7)) == "7" and fmt(None) == "nan" and fmt("x") == "x"
    assert fmt_log(math.inf) == "inf" and fmt_log("?") == "nan"
    assert fmt_pm(0.123456, 0.0123) == "0.1235 ± 0.012"
    assert fmt_range([2.0, None, math.nan, 1.0]) == "1 – 2" and fmt_range([3.0]) == "3" and fmt_range([]) == "nan"
    assert markdown_table(["a", "b"], [["x|y", "1"]]) == "| a | b |\n|:---|---:|\n| x\\|y | 1 |"
    text = text_table(["name", "value"], [["a", "1"], ["bb", "22"]])
    assert text.splitlines() == ["name  value", "----  -----", "a         1", "bb       22"]
    assert text_table(["a"], []) == "(no rows)"


def test_seed_summary_and_fits_tables():
    summary = pd.DataFrame([{"dataset": "d", "model": "m", "width": 4, "n_seeds": 2, "cert_mean": 0.5,
                             "cert_std": 0.05}])
    header, _, row = seed_summary_table(summary, [("cert", "cert")]).splitlines()
    assert header.split() == ["dataset", "model", "width", "seeds", "cert"]
    assert row.split() == ["d", "m", "4", "2", "0.5", "±", "0.05"]
    fits = pd.DataFrame([{"dataset": "d", "model": "m", "slope_cert": -0.5, "log10_m_cert_half": 2.345678}])
    text = fits_table(fits, [("slope_cert", "slope"), ("log10_m_cert_half", "log10 m")])
    assert text.splitlines()[-1].split() == ["d", "m", "-0.5", "2.35"]


def test_flip_ratio_with_a_relu_that_flipped_nothing_is_inconclusive_without_warnings():
    import warnings

    from kernelattn.analysis.flip_summary import direction, ratio_interval

    attn = {0: np.array([0.2, 0.4]), 1: np.array([0.3, 0.1])}
    relu = {0: np.zeros(2), 1: np.zeros(2)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = ratio_interval(attn, relu)
    assert not np.isfinite(interval.estimate) and direction(interval) == "inconclusive"
