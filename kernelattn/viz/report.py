"""The markdown report: the paper's claims judged against the stores, then one section per kind of record.

Everything here reads the frames of :func:`kernelattn.viz.frames.load_frames`
and computes nothing but summaries of stored numbers (``kernelattn.analysis``:
means and spreads over seeds, log-log fits, paired bootstrap intervals, ratios
between models). Every table row names the record(s) it comes from: one record
→ its short key; several → a reference ``R<n>`` listed with their keys in the
report's last section (``report_tables.RefBook``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kernelattn.analysis.fits import convergence_fits
from kernelattn.analysis.flip_summary import (
    SETTING_BY,
    direction,
    fit_health,
    malleability_summary,
    ratio_interval,
    relu_pairs,
)
from kernelattn.analysis.formatting import fmt, fmt_range, markdown_table
from kernelattn.analysis.statistics import seed_stats_by, seed_summary, spearman, width_summary
from kernelattn.viz.frames import SHORT_KEY, Frames, is_kappa_sweep
from kernelattn.viz.report_tables import (
    FLAG_NOTE,
    RefBook,
    attribution_table,
    certificate_gap_table,
    condition_table,
    convergence_table,
    malleability_gap_table,
    malleability_table,
    protocol_table,
    training_table,
    untrained_note,
    width_table,
)

__all__ = ["FIGURE_SUFFIXES", "artifact_rank", "claims_table", "render_report", "store_order", "write_report"]

#: Figure file stems are ``<store>_<suffix>`` (see ``kernelattn.viz.figures.figure_jobs``), linked in this order.
FIGURE_SUFFIXES = (
    "spectra",
    "kappa_power",
    "convergence",
    "remedies",
    "kappa",
    "ntk_distance",
    "flip_rates",
    "epsilon",
    "adversarial_training",
    "attribution",
)
REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable here"


# =========================================================================== the paper's claims


def _condition_claims(c: pd.DataFrame, refs: RefBook) -> list[list[str]]:
    if c.empty or not {"kappa_d_attention", "kappa_d_G_power"} <= set(c.columns):
        return []
    ratio = (c["kappa_d_attention"] / c["kappa_d_G_power"] - 1).abs()
    exact = ratio[c["kappa_d_G_power"] < 1e12]
    return [
        [
            "κ_d(G^{2k+1}) = κ_d(G)^{2k+1} (Thm 4.7)",
            REPRODUCED if len(exact) and exact.max() < 1e-3 else NOT_REPRODUCED,
            f"max relative deviation of the measured value {fmt(exact.max(), 2)} over the {len(exact)} "
            f"training sets with κ_d(G)³ < 1e12 ({fmt(ratio.max(), 2)} over all {len(c)}, κ_d(G)³ up to "
            f"{fmt(c['kappa_d_G_power'].max(), 2)}; float64 round-off floors κ near 1e16)",
            refs.ref(", ".join(dict.fromkeys(c["store"])), "all condition rows", list(c["key"])),
        ]
    ]


def _kernel_claims(fits: pd.DataFrame, refs: RefBook) -> list[list[str]]:
    if fits.empty:
        return []
    rows = []
    base = fits[~fits["variant"] & (fits["kappa_data"].isna())]
    pairs, keys, half, theory, stores, attn_cert = [], [], [], [], [], []
    for (store, _dataset), g in base.groupby(["store", "dataset"], sort=False):
        relu, attn = g[g["model"] == "2L-ReLU"], g[g["model"] == "MLP-Attn"]
        if relu.empty or attn.empty:
            continue
        stores.append(store)
        pairs.append(attn["cert_at_max"].iloc[0] / relu["cert_at_max"].iloc[0])
        attn_cert.append(attn["cert_at_max"].iloc[0])
        keys += list(relu["keys"].iloc[0]) + list(attn["keys"].iloc[0])
        half.append(attn["log10_m_cert_half"].iloc[0])
        theory.append(attn["log10_m_theory"].iloc[0])
    if pairs:
        rows.append(
            [
                "MLP-Attn is farther from the kernel regime than 2L-ReLU",
                REPRODUCED if all(p > 1 for p in pairs) else NOT_REPRODUCED,
                f"cert(MLP-Attn)/cert(2L-ReLU) at the largest width: {fmt_range(pairs)} ({len(pairs)} "
                "store × dataset pair(s), non-synthetic data)",
                refs.ref(", ".join(dict.fromkeys(stores)), "cert at the largest width", keys),
            ]
        )
        rows.append(
            [
                "m = Ω(κ_d(G)^6 n log n): no practical width reaches the kernel regime",
                REPRODUCED if all(v > 1 for v in attn_cert) else NOT_REPRODUCED,
                f"MLP-Attn cert at the largest width {fmt_range(attn_cert)} (the kernel regime needs < 1); "
                f"log10 m(cert=½) extrapolated {fmt_range(half)}; log10 m_theory {fmt_range(theory)} (the bound "
                "itself is asymptotic: its consequence at the widths run is what is tested)",
                refs.ref(", ".join(dict.fromkeys(stores)), "convergence fits", keys),
            ]
        )
    kappa = fits[fits["kappa_data"].notna()]
    for store, g in kappa.groupby("store", sort=False):
        relu = g[g["model"] == "2L-ReLU"].set_index("kappa_data")["cert_at_max"]
        attn = g[g["model"] == "MLP-Attn"].set_index("kappa_data")["cert_at_max"]
        ratio = (attn / relu).dropna()
        if len(ratio) >= 3:
            rho = spearman(ratio.index, ratio)
            rows.append(
                [
                    f"the certificate gap grows with κ(G) (`{store}`)",
                    REPRODUCED if rho > 0.5 else NOT_REPRODUCED,
                    f"cert ratio {fmt_range([ratio.iloc[0]])} at κ = {fmt(ratio.index[0])} → "
                    f"{fmt_range([ratio.iloc[-1]])} at κ = {fmt(ratio.index[-1])}; Spearman ρ(κ, ratio) = "
                    f"{fmt(rho, 3)}",
                    refs.ref(store, "κ sweep fits", [k for ks in g["keys"] for k in ks]),
                ]
            )
    return rows


def _training_claims(t: pd.DataFrame, refs: RefBook) -> list[list[str]]:
    if t.empty or "ntk_distance" not in t:
        return []
    by = ["store", "dataset", "model", "width"]
    means = seed_summary(t, by, ["ntk_distance"]).set_index(by)["ntk_distance_mean"].unstack("model")
    if not {"2L-ReLU", "MLP-Attn"} <= set(means.columns):
        return []
    ratio = (means["MLP-Attn"] / means["2L-ReLU"]).dropna()
    return [
        [
            "after training, MLP-Attn is farther from its NTK predictor than 2L-ReLU (Table 1)",
            REPRODUCED if len(ratio) and (ratio > 1).all() else NOT_REPRODUCED,
            f"‖f_m − f_NTK‖ ratio MLP-Attn/2L-ReLU {fmt_range(list(ratio))} over {len(ratio)} widths; "
            f"{fit_health(t)[0]} of {len(t)} fits did not train",
            refs.ref(", ".join(dict.fromkeys(t["store"])), "NTK distance", list(t["key"])),
        ]
    ]


def _malleability_claims(summary: pd.DataFrame, refs: RefBook) -> list[list[str]]:
    if summary.empty:
        return []
    base = summary[
        (~summary["variant"])
        & (summary["training_mode"] == "standard")
        & (summary["intervention"] == "adversarial")
        & (summary["attack_target"] == "model")
        & (summary["influence_kernel"] == "empirical")
        & summary["kappa_data"].isna()
        & summary["variants"].apply(lambda vs: "default" in vs)
    ]
    rows = []
    ratios, keys, stores, counts, untrained = [], [], [], {"more": 0, "less": 0, "inconclusive": 0}, 0
    for setting, relu, attn in relu_pairs(base, [c for c in SETTING_BY if c != "model"]):
        if attn["model"] != "MLP-Attn":
            continue
        interval = ratio_interval(attn["flips"], relu["flips"])
        ratios.append(interval.estimate)
        counts[direction(interval)] += 1
        untrained += int(attn["untrained"]) + int(relu["untrained"])
        stores.append(setting["store"])
        keys += list(relu["keys"]) + list(attn["keys"])
    if ratios:
        several = counts["more"] == len(ratios) and float(np.median(ratios)) >= 2
        rows.append(
            [
                "MLP-Attn is several times more malleable than 2L-ReLU",
                REPRODUCED if several else NOT_REPRODUCED,
                f"flip(MLP-Attn)/flip(2L-ReLU): median {fmt(float(np.median(ratios)), 3)}, range "
                f"{fmt_range(ratios)} over {len(ratios)} settings (non-synthetic data, standard training, every "
                f"training point attacked, the network's loss, Θ_m at θ_T); 95 % interval above 1 in "
                f"{counts['more']}, below 1 in {counts['less']}, containing 1 in {counts['inconclusive']}; "
                f"{untrained} seed-fits behind them did not train (see the protocol matrix for the variants)",
                refs.ref(", ".join(dict.fromkeys(stores)), "base-model settings", keys),
            ]
        )
    kappa = summary[summary["kappa_data"].notna() & (summary["training_mode"] == "standard")]
    for store, g in kappa.groupby("store", sort=False):
        relu = seed_stats_by(g[g["model"] == "2L-ReLU"], "kappa_data", "flip_rate")["mean"]
        attn = seed_stats_by(g[g["model"] == "MLP-Attn"], "kappa_data", "flip_rate")["mean"]
        ratio = (attn / relu).replace([np.inf, -np.inf], np.nan).dropna()
        if len(ratio) >= 3:
            rho = spearman(ratio.index, ratio)
            rows.append(
                [
                    f"the malleability gap grows with κ(G) (`{store}`)",
                    REPRODUCED if rho > 0.5 and ratio.iloc[-1] > 1 else NOT_REPRODUCED,
                    f"flip ratio {fmt(ratio.iloc[0], 3)} at κ = {fmt(ratio.index[0])} → "
                    f"{fmt(ratio.iloc[-1], 3)} at κ = {fmt(ratio.index[-1])}; Spearman ρ(κ, ratio) = "
                    f"{fmt(rho, 3)}",
                    refs.ref(store, "κ sweep", [k for ks in g["keys"] for k in ks]),
                ]
            )
    return rows


def claims_table(
    frames: Frames, refs: RefBook, *, fits: pd.DataFrame | None = None, summary: pd.DataFrame | None = None
) -> str | None:
    """The paper's claims, each judged reproduced / not reproduced / not testable here, with its evidence.

    ``fits`` (``convergence_fits(frames.kernel)``) and ``summary``
    (``malleability_summary(frames.malleability)``) are computed when omitted.
    """
    fits = convergence_fits(frames.kernel) if fits is None else fits
    summary = malleability_summary(frames.malleability) if summary is None else summary
    rows = (
        _condition_claims(frames.conditions, refs)
        + _kernel_claims(fits, refs)
        + _training_claims(frames.training, refs)
        + _malleability_claims(summary, refs)
    )
    if not rows:
        return None
    return markdown_table(["Paper's claim", "Verdict", "Evidence", "records"], rows, ["l", "l", "l", "r"])


# =========================================================================== sections


def artifact_rank(frame: pd.DataFrame) -> int:
    """Where a store's records sit among the paper's artifacts (main comparison first, κ sweep last).

    0: the main comparison (base models, one ε, standard training); 1: ε sweep;
    2: adversarial training; 3: remedies (attention variants); 4: synthetic κ sweep.
    """
    if frame.empty:
        return 0
    if is_kappa_sweep(frame):
        return 4
    if frame["variant"].any():
        return 3
    if "training_mode" in frame and frame["training_mode"].nunique() >= 2:
        return 2
    if "epsilon" in frame and frame["epsilon"].nunique() >= 2:
        return 1
    return 0


def store_order(frame: pd.DataFrame) -> list[str]:
    """The stores of ``frame`` ordered by :func:`artifact_rank`, then name."""
    stores = list(dict.fromkeys(frame["store"]))
    return sorted(stores, key=lambda s: (artifact_rank(frame[frame["store"] == s]), s))


#: A report section: its title, its introduction, and per store the lines under the store's heading.
Section = tuple[str, str, list[tuple[str, list[str]]]]


def _conditions_section(frames: Frames, refs: RefBook) -> Section:
    stores = dict.fromkeys(frames.conditions["store"])
    return (
        "Condition numbers of the Gram matrix",
        "κ(G) = λ₁/λ_n (inf when n > rank), κ_d(G) = λ₁/λ_r at the numerical rank r (docs/math.md §2); the "
        "exact algebra gives κ_d(G³) = κ_d(G)³ for parameter-free attention, and the column *measured* "
        "is κ_d(Z Zᵀ) from the singular values of Z = G X in float64 (round-off floors it near 1e26). "
        "m_theory = κ_d(G)^6 n ln n with constant 1 (paper v2: m = Ω(κ_d(G)^6 n log n)).",
        [(s, [condition_table(frames.conditions[frames.conditions["store"] == s], refs), ""]) for s in stores],
    )


def _convergence_section(frames: Frames, fits: pd.DataFrame, refs: RefBook) -> Section:
    parts = []
    for store in store_order(frames.kernel):
        sub = fits[fits["store"] == store]
        lines = [convergence_table(sub, refs), ""]
        gap = certificate_gap_table(sub, refs)
        if gap:
            lines += ["Certificate gap at the largest width:", "", gap, ""]
        parts.append((store, lines))
    return (
        "Convergence to the kernel regime (Θ_m vs Θ_∞)",
        "rel_fro = ‖Θ_m − Θ_∞‖_F/‖Θ_∞‖_F, cert = ‖Θ_m − Θ_∞‖₂/λ_min(Θ_∞) (the kernel regime needs "
        "cert < 1). Slopes: least squares of log10(seed mean) on log10 m over all widths; m(cert=½) "
        "extrapolates that line (an extrapolation, not a bound).",
        parts,
    )


def _training_section(frames: Frames, refs: RefBook) -> Section:
    stores = dict.fromkeys(frames.training["store"])
    return (
        "Function-space distance after training (paper Table 1)",
        "The trained width-m network f_m, its linearization f_lin (trained the same way) and the "
        "infinite-width NTK predictor f_NTK on the test points (docs/math.md §8), beside each fit's "
        "training health: final training loss over the loss of predicting 0 (*loss/chance*), training "
        "accuracy, relative weight change and the fraction of hidden units whose ReLU pattern varies "
        "across training points. " + FLAG_NOTE,
        [(s, [training_table(frames.training[frames.training["store"] == s], refs), ""]) for s in stores],
    )


def _malleability_section(frames: Frames, summary: pd.DataFrame, refs: RefBook) -> Section:
    parts = []
    for store in store_order(frames.malleability):
        sub = summary[summary["store"] == store]
        records = frames.malleability[frames.malleability["store"] == store]
        lines = []
        protocol = protocol_table(sub, refs)
        if protocol:
            lines += ["**Protocol matrix.** " + protocol[0], "", protocol[1], ""]
        note, table = malleability_table(sub, refs, records)
        lines += [note, "", table, ""]
        untrained = untrained_note(records)
        if untrained:
            lines += [untrained, ""]
        gap = malleability_gap_table(sub, refs)
        if gap:
            lines += [
                "Malleability gap (flip rate relative to 2L-ReLU; ▲ interval above 1, ▼ below, ≈ containing 1):",
                "",
                gap,
                "",
            ]
        parts.append((store, lines))
    return (
        "Influence malleability",
        "Flip rate: among each test point's top-τ training points by |influence|, the fraction whose "
        "sign flips after the intervention; Spearman ρ and top-k overlap between the clean and perturbed "
        "influence rows (docs/math.md §10). Means over test points (then over seeds).",
        parts,
    )


def _attribution_section(frames: Frames, refs: RefBook) -> Section:
    stores = dict.fromkeys(frames.attribution["store"])
    return (
        "Attribution estimators against ground truth",
        "Per test point, Spearman ρ between an estimator's scores over the training points and a ground truth's, "
        "averaged over test points (docs/math.md §14): *kernel LOO* is exact leave-one-out of kernel ridge on the "
        "trained network's empirical NTK at damping λ (so the LOO row is 1 by construction), *retraining* the "
        "trained network's change on each test point's true class when that point is left out and the network "
        "retrained from the same initialization (independent of λ). Mean ± sample std over seeds, [min – max] of "
        "the seeds. † a network of this row did not train (`TrainingHealth`): its retraining differences are "
        "those of a near-chance fit.",
        [(s, [attribution_table(frames.attribution[frames.attribution["store"] == s], refs), ""]) for s in stores],
    )


# =========================================================================== the report


def _store_heading(frames: Frames, store: str) -> str:
    description = frames.info.get(store, {}).get("description", "")
    name, _, setting = store.partition("~")
    title = f"### `{name}`" + (
        f" — setting `{setting}` (this store holds records of several settings, e.g. "
        "from an edited spec; each is reported apart)"
        if setting
        else ""
    )
    return f"{title}\n\n{description}\n" if description else f"{title}\n"


def _figure_links(store_figures: Sequence[str], figures: Mapping[str, str], captions: Mapping[str, str]) -> list[str]:
    lines = []
    for stem in store_figures:
        if stem in figures:
            lines.append(
                f"![{captions.get(stem, stem)}]({figures[stem]})\n\n*{captions.get(stem, stem)}* "
                f"(`{Path(figures[stem]).with_suffix('.pdf').name}` alongside)\n"
            )
    return lines


def _stores_table(frames: Frames) -> str:
    rows = []
    for store in frames.stores:
        info = frames.info[store]
        kinds = ", ".join(f"{k} × {n}" for k, n in sorted(info["kinds"].items()))
        env = info.get("environment") or {}
        packages = env.get("packages") or {}
        versions = ", ".join(f"{k} {packages[k]}" for k in ("kernelattn", "jax", "numpy") if k in packages)
        devices = ",".join(env.get("devices") or []) or (env.get("backend") or "-")
        rows.append([f"`{store}`", kinds or "empty", versions or "-", devices, info.get("finished") or "-"])
    return markdown_table(["Store", "Records", "Packages", "Device", "Last record"], rows, ["l", "l", "l", "l", "l"])


def render_report(
    frames: Frames, figures: Mapping[str, str] | None = None, captions: Mapping[str, str] | None = None
) -> str:
    """The markdown report of every store in ``frames``.

    Args:
      frames: from :func:`kernelattn.viz.frames.load_frames`.
      figures: figure stem → path (relative to the report) of its PNG.
      captions: figure stem → caption.
    """
    figures = dict(figures or {})
    captions = dict(captions or {})
    refs = RefBook()
    fits = convergence_fits(frames.kernel)
    summary = malleability_summary(frames.malleability)
    lines = [
        "# kernelattn — reproduction report",
        "",
        "Reproduction of arXiv 2603.13085 (Miñoza, Medina, Ibañez 2026) from the result stores in "
        f"`{frames.out}`. Every number below is read from a stored record: a row built from one record shows "
        f"its key (first {SHORT_KEY} hex digits of `provenance.cell_key`), a row aggregating several shows "
        "`R<n> (count)`, listed with their keys under *Record keys* at the end. Numbers have 4 significant "
        "digits; log10 values two decimals. Regenerate with `kernelattn figures <out>` (reads the stores "
        "only).",
        "",
        "## Stores",
        "",
        _stores_table(frames),
        "",
    ]
    claims = claims_table(frames, refs, fits=fits, summary=summary)
    if claims:
        lines += [
            "## The paper's claims against these results",
            "",
            "Each claim is judged *reproduced*, *not reproduced* or *not testable here* from the stored "
            "records cited beside it; what is checked is the claim's direction, never a number tuned to "
            "agree (docs/math.md §10). Malleability ratios carry paired 95 % bootstrap intervals over seeds "
            "and test points.",
            "",
            claims,
            "",
        ]
    builders: list[tuple[pd.DataFrame, Callable[[], Section]]] = [
        (frames.conditions, lambda: _conditions_section(frames, refs)),
        (frames.kernel, lambda: _convergence_section(frames, fits, refs)),
        (frames.training, lambda: _training_section(frames, refs)),
        (frames.malleability, lambda: _malleability_section(frames, summary, refs)),
        (frames.attribution, lambda: _attribution_section(frames, refs)),
    ]
    linked: list[str] = []
    section = 1
    for records, build in builders:
        if records.empty:
            continue
        title, introduction, parts = build()
        lines += [f"## {section}. {title}", "", introduction, ""]
        for store, body in parts:
            mine = [f"{store}_{suffix}" for suffix in FIGURE_SUFFIXES if f"{store}_{suffix}" in figures]
            linked += mine
            lines += [_store_heading(frames, store), *body, *_figure_links(mine, figures, captions)]
        section += 1
    others = [s for s in figures if s not in linked]
    if others:
        lines += [f"## {section}. Other figures", "", *_figure_links(others, figures, captions)]
    if not frames.kernel.empty:
        summary = width_summary(frames.kernel)
        lines += ["## Appendix: convergence per width", "", "Mean ± sample std over seeds.", ""]
        for store in store_order(frames.kernel):
            lines += [f"### `{store}` per width", "", width_table(summary[summary["store"] == store], refs), ""]
    lines += ["## Record keys", "", refs.render(), ""]
    return "\n".join(lines)


def write_report(
    path: str | os.PathLike[str],
    frames: Frames,
    figures: Mapping[str, str] | None = None,
    captions: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`render_report` to ``path`` (through a temporary file beside it, then renamed); ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_report(frames, figures, captions), encoding="utf-8")
    os.replace(tmp, path)
    return path
