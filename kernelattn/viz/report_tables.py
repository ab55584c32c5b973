"""The report's markdown tables: one function per table, each row citing the records it comes from.

Rows built from one record show its short key; rows aggregating several show
``R<n> (count)`` from a :class:`RefBook`, listed with their keys at the end of
the report. Numbers are formatted by ``kernelattn.analysis.formatting``; the
malleability tables read :func:`kernelattn.analysis.flip_summary.malleability_summary`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from kernelattn.analysis.flip_summary import (
    SETTING_BY,
    direction,
    fit_health,
    flag_marks,
    is_null_baseline,
    null_keys_of,
    ratio_interval,
    relu_pairs,
)
from kernelattn.analysis.formatting import fmt, fmt_log, fmt_pm, fmt_range, markdown_table
from kernelattn.analysis.labels import display_order
from kernelattn.analysis.statistics import seed_stats
from kernelattn.viz.frames import SHORT_KEY

__all__ = [
    "FLAG_NOTE",
    "PROTOCOL_FACTORS",
    "RefBook",
    "attribution_table",
    "certificate_gap_table",
    "condition_table",
    "convergence_table",
    "malleability_gap_table",
    "malleability_table",
    "protocol_table",
    "training_table",
    "untrained_note",
    "width_table",
]

FLAG_NOTE = (
    "† a fit of this row did not train (final loss above 0.9 of chance, or accuracy within 2 points of "
    "chance: `TrainingHealth`); ‡ an attack of this row raised its objective by less than 1 % (no-op)."
)
_DIRECTION_MARK = {"more": "▲", "less": "▼", "inconclusive": "≈"}


class RefBook:
    """Record references of table rows: one key inline, several as ``R<n>`` listed at the end."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, list[str]]] = []

    def ref(self, store: str, what: str, keys: Sequence[str]) -> str:
        keys = sorted(dict.fromkeys(str(k) for k in keys))
        if not keys:
            return "-"
        if len(keys) == 1:
            return f"`{keys[0][:SHORT_KEY]}`"
        self.entries.append((store, what, keys))
        return f"R{len(self.entries)} ({len(keys)})"

    def render(self) -> str:
        if not self.entries:
            return "No aggregated rows."
        lines = []
        for i, (store, what, keys) in enumerate(self.entries, 1):
            where = ", ".join(f"`{s}`" for s in store.split(", "))
            lines.append(f"- **R{i}** — store {where}, {what}: " + ", ".join(f"`{k[:SHORT_KEY]}`" for k in keys))
        return "\n".join(lines)


def _flags(row: Mapping[str, Any]) -> str:
    return flag_marks(row.get("untrained"), row.get("no_op"))


def condition_table(conditions: pd.DataFrame, refs: RefBook) -> str:
    """Condition numbers per dataset: κ(G), κ_d(G), κ_d(G)^{2k+1}, measured κ_d(G^{2k+1}), m_theory."""
    rows = []
    for _, r in conditions.iterrows():
        rows.append(
            [
                r["dataset"],
                fmt(r["n"]),
                fmt(r["d"]),
                fmt(r["rank_G"]),
                fmt(r["kappa_G"]),
                fmt(r["kappa_d_G"]),
                fmt(r["kappa_d_G_power"]),
                fmt(r["kappa_d_attention"]),
                fmt(r["kappa_d_features"]),
                fmt_log(r["log10_m_theory"]),
                refs.ref(r["store"], r["dataset"], [r["key"]]),
            ]
        )
    power = int(conditions["power"].iloc[0]) if "power" in conditions and len(conditions) else 3
    header = [
        "Dataset",
        "n",
        "d",
        "rank r",
        "κ(G)",
        "κ_d(G)",
        f"κ_d(G)^{power}",
        f"κ_d(G^{power}) measured",
        "κ_d(attn features)",
        "log10 m_theory",
        "record",
    ]
    return markdown_table(header, rows)


def convergence_table(fits: pd.DataFrame, refs: RefBook) -> str:
    """Fits per dataset × model: slopes, cert at the largest width, m(cert = 1/2) beside m_theory."""
    rows = []
    for _, r in fits.iterrows():
        rows.append(
            [
                r["dataset"],
                r["model"],
                f"{fmt(r['n_widths'])} × {fmt(r['n_seeds'])}",
                fmt(r["width_max"]),
                fmt(r.get("slope_rel_fro"), 3),
                fmt(r.get("slope_cert"), 3),
                fmt(r.get("rel_fro_at_max")),
                fmt(r.get("cert_at_max")),
                fmt_log(r.get("log10_m_cert_half")),
                fmt_log(r.get("log10_m_theory")),
                fmt(r.get("kappa_d_G")),
                fmt(r.get("kappa_d_features")),
                fmt(r.get("lambda_min_inf")),
                refs.ref(r["store"], f"{r['dataset']}, {r['model']}", r["keys"]),
            ]
        )
    header = [
        "Dataset",
        "Model",
        "widths × seeds",
        "m_max",
        "slope rel_fro",
        "slope cert",
        "rel_fro(m_max)",
        "cert(m_max)",
        "log10 m(cert=½)",
        "log10 m_theory",
        "κ_d(G)",
        "κ_d(features)",
        "λ_min(Θ∞)",
        "records",
    ]
    return markdown_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))


def certificate_gap_table(fits: pd.DataFrame, refs: RefBook) -> str | None:
    """cert(MLP-Attn)/cert(2L-ReLU) at the largest width, per dataset (and κ for synthetic data)."""
    rows = []
    for (store, dataset), g in fits.groupby(["store", "dataset"], sort=False):
        relu = g[g["model"] == "2L-ReLU"]
        if relu.empty:
            continue
        base = relu.iloc[0]
        for _, r in g[g["model"] != "2L-ReLU"].iterrows():
            ratio = r["cert_at_max"] / base["cert_at_max"] if base["cert_at_max"] else math.nan
            rows.append(
                [
                    dataset,
                    fmt(r["kappa_d_G"]),
                    r["model"],
                    fmt(r["width_max"]),
                    fmt(base["cert_at_max"]),
                    fmt(r["cert_at_max"]),
                    fmt(ratio, 3),
                    refs.ref(store, f"{dataset}, 2L-ReLU vs {r['model']}", list(base["keys"]) + list(r["keys"])),
                ]
            )
    if not rows:
        return None
    return markdown_table(
        ["Dataset", "κ_d(G)", "Model", "m_max", "cert 2L-ReLU", "cert model", "ratio", "records"],
        rows,
        ["l", "r", "l"] + ["r"] * 5,
    )


def width_table(summary: pd.DataFrame, refs: RefBook) -> str:
    """Per width: mean ± sample std over seeds of rel_fro, cert and the KRR predictor error."""
    rows = []
    for _, r in summary.iterrows():
        rows.append(
            [
                r["dataset"],
                r["model"],
                fmt(r["width"]),
                fmt(r["n_seeds"]),
                fmt_pm(r.get("rel_fro_mean"), r.get("rel_fro_std")),
                fmt_pm(r.get("cert_mean"), r.get("cert_std")),
                fmt_pm(r.get("krr_err_mean"), r.get("krr_err_std")),
                refs.ref(r["store"], f"{r['dataset']}, {r['model']}, m = {r['width']}", r["keys"]),
            ]
        )
    return markdown_table(
        ["Dataset", "Model", "m", "seeds", "rel_fro", "cert", "KRR error", "records"], rows, ["l", "l"] + ["r"] * 6
    )


def _seed_pm(frame: pd.DataFrame, column: str) -> str:
    """``column``'s mean ± sample std over the seeds (rows) of ``frame``; ``nan`` where it is absent or empty."""
    if column not in frame:
        return "nan"
    stats = seed_stats(frame[column])
    return fmt_pm(stats.mean, stats.std) if stats.n else "nan"


_TRAINING_COLUMNS = (
    "ntk_distance",
    "lin_distance",
    "acc_m",
    "acc_ntk",
    "health_loss_ratio",
    "health_train_accuracy",
    "health_weight_change",
    "health_varying_units",
)


def training_table(training: pd.DataFrame, refs: RefBook) -> str:
    """NTK distance after training (paper Table 1) beside the fits' training health: per dataset, model,
    width, mean ± sample std over seeds."""
    rows = []
    for (store, dataset, model, width), g in training.groupby(["store", "dataset", "model", "width"], sort=False):
        untrained = fit_health(g)[0]
        rows.append(
            [
                dataset,
                model,
                fmt(width),
                fmt(len(g)),
                *(_seed_pm(g, c) for c in _TRAINING_COLUMNS),
                f"{untrained}" + (" †" if untrained else ""),
                refs.ref(store, f"{dataset}, {model}, m = {width}", list(g["key"])),
            ]
        )
    return markdown_table(
        [
            "Dataset",
            "Model",
            "m",
            "seeds",
            "‖f_m − f_NTK‖/‖f_NTK‖",
            "‖f_m − f_lin‖/‖f_lin‖",
            "acc f_m",
            "acc f_NTK",
            "loss/chance",
            "train acc",
            "‖θ−θ₀‖/‖θ₀‖",
            "varying units",
            "not trained",
            "records",
        ],
        rows,
        ["l", "l"] + ["r"] * 12,
    )


_MALL_COLUMNS = [
    ("dataset", "Dataset"),
    ("n_train", "n"),
    ("kappa_data", "κ(G)"),
    ("training_mode", "Training"),
    ("intervention", "Intervention"),
    ("attack_target", "Loss attacked"),
    ("influence_kernel", "Influence from"),
    ("width", "m"),
    ("attack", "Attack"),
    ("epsilon", "ε"),
    ("model", "Model"),
]
_TEXT_COLUMNS = ("dataset", "training_mode", "intervention", "attack_target", "influence_kernel", "attack", "model")
_FIT_BY = ["dataset", "n_train", "training_mode", "model", "width", "seed"]


def untrained_note(records: pd.DataFrame) -> str | None:
    """Why fits are flagged †: per model, how many distinct clean fits did not train, and their feature cosine.

    ``records`` are one store's malleability records (null-baseline refits excluded here: they are counted
    where their numbers appear). None when every fit trained.
    """
    if records.empty or "trained" not in records:
        return None
    clean = records[~is_null_baseline(records)]
    fits = clean.drop_duplicates([c for c in _FIT_BY if c in clean])
    parts, collapsed, others = [], [], []
    for model, g in fits.groupby("model", sort=False):
        bad = g[~g["trained"].astype(bool)]
        if bad.empty:
            continue
        parts.append(f"{len(bad)} of {len(g)} {model} fits")
        cosine = pd.to_numeric(bad.get("health_feature_cosine"), errors="coerce").dropna()
        if "health_collapsed" in bad and bad["health_collapsed"].fillna(False).astype(bool).all() and len(cosine):
            collapsed.append(f"{model} (mean pairwise cosine of the head's inputs {fmt_range(cosine)})")
        else:
            ratio = pd.to_numeric(bad.get("health_loss_ratio"), errors="coerce").dropna()
            modes = ", ".join(dict.fromkeys(bad["training_mode"].astype(str))) if "training_mode" in bad else "?"
            others.append(f"{model} ({modes} training: final loss {fmt_range(ratio)} of chance)")
    if not parts:
        return None
    why = ""
    if others:
        why += (
            " Not collapsed, but short of the threshold at these settings (epochs, learning rate, or the "
            "harder objective of adversarial training): " + "; ".join(others) + "."
        )
    if collapsed:
        why += (
            " Collapsed: their head inputs are nearly identical across samples — "
            + "; ".join(collapsed)
            + " — the attention collapse the paper describes (docs/math.md §10.1): the network's pre-activations "
            "vary by a few per cent across inputs, so at the paper's optimizer settings it stays near the chance "
            "loss."
        )
    return (
        "**Fits that did not train (†):** " + ", ".join(parts) + " (distinct clean fits over datasets, "
        "settings and seeds)." + why + " Their numbers are shown, flagged, not dropped: they measure an "
        "untrained network, and the null baselines beside them say how much of them is refitting noise."
    )


def _cell_text(row: Mapping[str, Any], column: str) -> str:
    value = row[column]
    return value if isinstance(value, str) else fmt(value)


def _split_columns(summary: pd.DataFrame, columns, always=("model", "dataset")):
    varying, fixed = [], []
    for column, title in columns:
        values = summary[column].dropna().unique() if column in summary else []
        if column == "kappa_data" and len(values) == 0:
            continue
        if len(values) > 1 or column in always:
            varying.append((column, title))
        elif len(values) == 1:
            fixed.append(f"{title} = {fmt(values[0]) if not isinstance(values[0], str) else values[0]}")
    return varying, fixed


def malleability_table(summary: pd.DataFrame, refs: RefBook, frame: pd.DataFrame | None = None) -> tuple[str, str]:
    """Flip rate with its null baselines and intervals, Spearman ρ, top-k overlap per setting.

    Columns constant over the table are stated above it. ``frame`` (the records) lets each row cite its
    null-baseline records too.

    Returns:
      (the "fixed settings" sentence, the markdown table).
    """
    summary = display_order(summary, ["dataset", "training_mode", "intervention", "attack", "epsilon", "model"])
    varying, fixed = _split_columns(summary, _MALL_COLUMNS)
    rows = []
    for _, r in summary.iterrows():
        cells = [_cell_text(r, c) for c, _ in varying]
        label = ", ".join(f"{t} {_cell_text(r, c)}" for c, t in varying)
        null_keys = null_keys_of(frame, r) if frame is not None else []
        cells += [
            fmt(r["flip_rate"]),
            f"[{fmt(r.get('flip_rate_lo'), 2)}, {fmt(r.get('flip_rate_hi'), 2)}]",
            fmt(r.get("null_seed"), 3),
            fmt(r.get("null_order"), 3),
            fmt(r.get("excess"), 3),
            f"[{fmt(r.get('excess_lo'), 2)}, {fmt(r.get('excess_hi'), 2)}]",
            fmt(r["spearman"]),
            fmt(r["topk_overlap"]),
            fmt(r.get("loss_gain"), 3),
            fmt(r.get("health_loss_ratio"), 3),
            fmt(r.get("health_test_accuracy"), 3),
            fmt(r["n_seeds"]),
            _flags(r),
            refs.ref(r["store"], f"null baselines of {label}", null_keys) if null_keys else "-",
            refs.ref(r["store"], label, r["keys"]),
        ]
        rows.append(cells)
    header = [t for _, t in varying] + [
        "flip rate",
        "flip 95 % CI",
        "null (seed)",
        "null (order)",
        "flip − null (seed)",
        "excess 95 % CI",
        "Spearman ρ",
        "top-k overlap",
        "attack gain",
        "loss/chance",
        "test acc",
        "seeds",
        "flags",
        "null records",
        "records",
    ]
    text = ("Fixed: " + ", ".join(fixed) + ". " if fixed else "") + (
        "Flip rate among the top-τ |I| points, mean over test points and seeds; the null baselines are the flip "
        "rates between two fits without any perturbation (another initialization and data order: *seed*; another "
        "data order only: *order*), so only flip − null measures the attack. Intervals: two-stage (seeds, then "
        "test points) paired bootstrap, 2,000 resamples. *attack gain*: relative rise of the attacked loss; "
        "*loss/chance*: the clean fit's final training loss over the loss of predicting 0. " + FLAG_NOTE
    )
    align = ["l" if c in _TEXT_COLUMNS else "r" for c, _ in varying] + ["r"] * 12 + ["l", "r", "r"]
    return text, markdown_table(header, rows, align)


def malleability_gap_table(summary: pd.DataFrame, refs: RefBook) -> str | None:
    """flip(model)/flip(2L-ReLU) with its paired 95 % interval, for each setting where both were measured."""
    by = [c for c in SETTING_BY if c != "model"]
    rows = []
    summary = display_order(summary, ["dataset", "training_mode", "intervention", "attack", "epsilon", "model"])
    for setting, base, r in relu_pairs(summary, by):
        ratio = ratio_interval(r["flips"], base["flips"])
        kappa = fmt(r["kappa_data"]) if not pd.isna(r["kappa_data"]) else "-"
        rows.append(
            [
                setting["dataset"],
                fmt(setting["n_train"]),
                kappa,
                setting["training_mode"],
                setting["intervention"],
                setting["attack_target"],
                setting["influence_kernel"],
                setting["attack"],
                fmt(setting["epsilon"]),
                r["model"],
                fmt(base["excess"], 3),
                fmt(r["excess"], 3),
                ratio.text(lambda v: fmt(v, 3)),
                _DIRECTION_MARK[direction(ratio)],
                _flags(base) + _flags(r),
                refs.ref(
                    setting["store"],
                    f"{setting['dataset']}, {setting['attack']} ε={fmt(setting['epsilon'])}, 2L-ReLU vs {r['model']}",
                    list(base["keys"]) + list(r["keys"]),
                ),
            ]
        )
    if not rows:
        return None
    header = [
        "Dataset",
        "n",
        "κ(G)",
        "Training",
        "Intervention",
        "Loss attacked",
        "Influence from",
        "Attack",
        "ε",
        "Model",
        "flip − null 2L-ReLU",
        "flip − null model",
        "flip ratio [95 % CI]",
        "direction",
        "flags",
        "records",
    ]
    align = ["l", "r", "r", "l", "l", "l", "l", "l", "r", "l", "r", "r", "r", "l", "l", "r"]
    keep = [
        i
        for i in range(len(header))
        if not (header[i] == "κ(G)" and all(row[i] == "-" for row in rows))
        and not (
            header[i] in ("n", "Training", "Intervention", "Loss attacked", "Influence from", "Attack", "ε")
            and len({row[i] for row in rows}) == 1
        )
    ]
    return markdown_table([header[i] for i in keep], [[row[i] for i in keep] for row in rows], [align[i] for i in keep])


#: The protocol factors a variant can change (besides the dataset, which is the matrix's column).
PROTOCOL_FACTORS = (
    ("n_train", "n"),
    ("influence_kernel", "influence from"),
    ("intervention", "perturbed"),
    ("attack_target", "loss attacked"),
    ("attack", "attack"),
    ("epsilon", "ε"),
    ("training_mode", "training"),
)


def protocol_table(summary: pd.DataFrame, refs: RefBook) -> tuple[str, str] | None:
    """The protocol matrix: flip(MLP-Attn)/flip(2L-ReLU) [95 % CI] per variant (rows) and dataset (columns).

    A variant's rows are its distinct factor settings (one for a one-factor-at-a-time variant, several for a
    factorial block). ▲: the interval lies above 1 (the paper's direction), ▼: below 1, ≈: it contains 1.

    Returns:
      (the summary sentence, the markdown table), or None without variants.
    """
    base = summary[(~summary["variant"].astype(bool))]
    labels = list(dict.fromkeys(v for vs in base.get("variants", []) for v in vs))
    if len(labels) < 2:
        return None
    labels = ["default"] + [v for v in labels if v != "default"]
    datasets = list(dict.fromkeys(display_order(base, ["dataset"])["dataset"]))
    by = [c for c in SETTING_BY if c not in ("model", "store")]
    factor_columns = [c for c, _ in PROTOCOL_FACTORS]
    defaults: dict[str, Any] = {}
    rows: list[list[str]] = []
    verdicts: dict[str, list[str]] = {"more": [], "less": [], "inconclusive": []}
    for label in labels:
        mine = base[base["variants"].apply(lambda vs, label=label: label in vs)]
        settings: dict[tuple, dict[str, tuple]] = {}
        for setting, relu, attn in relu_pairs(mine, by):
            if attn["model"] != "MLP-Attn":
                continue
            factors = tuple(setting[c] for c in factor_columns)
            settings.setdefault(factors, {})[setting["dataset"]] = (relu, attn)
        for factors, per_dataset in settings.items():
            if label == "default" and not defaults:
                defaults = dict(zip(factor_columns, factors))
            changed = [
                f"{title} = {fmt(v) if not isinstance(v, str) else v}"
                for (c, title), v in zip(PROTOCOL_FACTORS, factors)
                if defaults and defaults.get(c) != v
            ]
            name = label
            cells = [name, ", ".join(changed) or "—"]
            keys = []
            for dataset in datasets:
                if dataset not in per_dataset:
                    cells.append("—")
                    continue
                relu, attn = per_dataset[dataset]
                ratio = ratio_interval(attn["flips"], relu["flips"])
                verdict = direction(ratio)
                verdicts[verdict].append(f"{name} / {dataset}")
                if relu.get("flip_rate") == 0:
                    text = (
                        "0 / 0 (no sign flips)"
                        if attn.get("flip_rate") == 0
                        else (f"{fmt(attn.get('flip_rate'), 2)} / 0 (2L-ReLU: no sign flips)")
                    )
                else:
                    text = ratio.text(lambda v: fmt(v, 2))
                cells.append(f"{text} {_DIRECTION_MARK[verdict]}{_flags(relu)}{_flags(attn)}")
                keys += list(relu["keys"]) + list(attn["keys"])
            cells.append(refs.ref(", ".join(dict.fromkeys(base["store"])), f"protocol {name}: {cells[1]}", keys))
            rows.append(cells)
    header = ["Variant", "changes from the default", *datasets, "records"]
    total = sum(len(v) for v in verdicts.values())
    text = (
        f"flip(MLP-Attn)/flip(2L-ReLU) with its paired 95 % interval, in {total} (variant, dataset) cells: the "
        f"paper's direction (MLP-Attn more malleable, interval above 1, ▲) in {len(verdicts['more'])}, the "
        f"opposite (▼) in {len(verdicts['less'])}, inconclusive (≈) in {len(verdicts['inconclusive'])}. "
        "Default protocol: "
        + ", ".join(
            f"{title} = {defaults[c] if isinstance(defaults[c], str) else fmt(defaults[c])}"
            for c, title in PROTOCOL_FACTORS
            if c in defaults
        )
        + ". "
        + FLAG_NOTE
    )
    return text, markdown_table(header, rows, ["l", "l"] + ["r"] * len(datasets) + ["r"])


def attribution_table(attribution: pd.DataFrame, refs: RefBook) -> str:
    """Spearman ρ of each estimator against exact kernel LOO and against retraining, per model, width m and
    damping λ: mean ± sample std over seeds, [min, max] of the seeds beside it (docs/math.md §14); † a fit
    of the row did not train."""
    by = ["dataset", "model", "estimator", "width", "damping"]
    references = list(dict.fromkeys(attribution["reference"]))
    rows = []
    for values, group in attribution.groupby(by, sort=False):
        dataset, model, estimator, width, damping = values
        cells = []
        for reference in references:
            spearman = group[group["reference"] == reference]["spearman"]
            stats = seed_stats(spearman)
            cells.append(f"{fmt_pm(stats.mean, stats.std)} [{fmt_range(spearman)}]" if stats.n else "-")
        what = f"{dataset}, {model}, {estimator}, m={width}, λ={damping:g}"
        keys = list(dict.fromkeys(group["key"]))
        rows.append(
            [
                dataset,
                model + ("" if group["trained"].all() else " †"),
                estimator,
                str(width),
                fmt(damping),
                str(len(keys)),
                *cells,
                refs.ref(group["store"].iloc[0], what, keys),
            ]
        )
    header = ["Dataset", "Model", "Estimator", "m", "λ", "seeds"]
    header += [f"Spearman vs {reference}" for reference in references] + ["records"]
    return markdown_table(header, rows, ["l", "l", "l"] + ["r"] * (len(header) - 3))
