"""The result stores under a results directory, read (read-only) into data frames: one row per record.

Reading computes nothing. Every row names its record: ``key`` (``provenance.cell_key``) and ``short_key``
(its first :data:`SHORT_KEY` hex digits, unique in practice; ``ResultStore.keys()`` lists the full ones).

Frames (:func:`load_frames`), one row per record, with the columns shared by
all kinds: ``store`` (directory name = spec name), ``key``, ``short_key``,
``dataset`` (label), ``dataset_name``, ``classes``, ``n_classes``, ``task``
("binary"/"10-class"/...), ``kappa_data`` (prescribed κ of synthetic data,
else NaN), ``model`` (label: "2L-ReLU", "MLP-Attn", "MLP-Attn (r=10)",
"MLP-Attn (k=2)", ...), ``model_name``, ``depth``, ``rank``, ``variant``
(True for a modified attention: the remedies), then the kind's own columns:

- ``kernel`` (records "kernel_sweep") and ``training`` ("training_sweep"):
  ``width``, ``seed`` and the record's metrics (``rel_fro``, ``cert``,
  ``kappa_d_G``, ``log10_m_theory``, ``lambda_min_inf``, ... /
  ``ntk_distance``, ``lin_distance``, ``acc_m``, ...);
- ``malleability``: ``width``, ``seed``, ``training_mode``, ``influence_kernel``,
  ``intervention``, ``attack``, ``epsilon``, ``tau``, ``flip_rate`` (mean over
  test points), ``flip_rate_std`` (std over test points), ``spearman``,
  ``topk_overlap`` (and their std), ``n_train``, ``n_test``, ``top_k``,
  ``linf``, ``loss_clean``, ``loss_adv``, ``final_train_loss``;
- ``conditions``: ``n``, ``d``, ``rank_G``, ``kappa_G``, ``kappa_d_G``,
  ``power``, ``kappa_d_G_power``, ``kappa_attention``, ``kappa_d_attention``,
  ``kappa_d_features``, ``log10_m_theory``, and the spectra
  ``eigenvalues_G``, ``eigenvalues_attention`` (lists);
- ``attribution``: one row per record, ground truth and estimator: ``width``, ``seed``, ``damping``,
  ``reference`` ("kernel LOO" or "retraining"), ``estimator``, ``spearman``, ``pearson``,
  ``topk_overlap``, ``sign_agreement``, ``spearman_std`` (over test points), ``n_train``, ``n_test``,
  ``trained`` and ``health_loss_ratio`` (of the network's fit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernelattn.analysis.labels import classes_text, dataset_label, model_info
from kernelattn.experiments.provenance import canonical_json
from kernelattn.experiments.store import ResultStore

__all__ = [
    "ATTRIBUTION_REFERENCES",
    "MANIFEST",
    "SHORT_KEY",
    "Frames",
    "find_stores",
    "is_kappa_sweep",
    "load_frames",
    "setting_of",
]

MANIFEST = "kernelattn-store.json"
SHORT_KEY = 12
_COSMETIC = ("label", "data_dir", "download", "base_url", "system_dirs", "timeout", "max_bytes")


@dataclasses.dataclass
class Frames:
    """The records of every store under a results directory, as data frames (see the module docstring).

    Attributes:
      out: the results directory.
      stores: store directory names, sorted.
      kernel, training, malleability, conditions: one row per record of that kind (attribution: per
        record, ground truth and estimator). Their ``store``
        column is the store's name, or ``<name>~<setting>`` when one store holds records of several
        settings (see :func:`setting_of`), so that they are never merged; ``store_path`` is the name.
      info: per store: ``kinds`` (record counts by kind), ``description`` (of its spec),
        ``environment`` (packages, devices of its latest record), ``finished`` (latest finish time).
    """

    out: Path
    stores: tuple[str, ...]
    kernel: pd.DataFrame
    training: pd.DataFrame
    malleability: pd.DataFrame
    conditions: pd.DataFrame
    info: dict[str, dict[str, Any]]
    attribution: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def find_stores(out: str | Path) -> list[Path]:
    """Store directories directly under ``out`` (holding ``kernelattn-store.json``), sorted by name."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _dataset_label(ds: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[str, int]:
    """The spec's label of a stored dataset and its position in the spec (for ordering)."""
    entries = spec.get("datasets", spec.get("dataset", []))
    if isinstance(entries, Mapping):
        entries = [entries]
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, Mapping) or entry.get("name") != ds.get("name"):
            continue
        keys = (set(entry) | set(ds)) - set(_COSMETIC) - {"target", "normalize"}
        if all(_same(entry.get(k), ds.get(k)) for k in keys):
            return (str(entry["label"]) if entry.get("label") else dataset_label(ds)), i
    return dataset_label(ds), 10**6


def _model_index(model: Any, spec: Mapping[str, Any]) -> int:
    entries = spec.get("models", spec.get("model", []))
    if not isinstance(entries, list):
        entries = [entries]
    label = model_info(model)["model"]
    for i, entry in enumerate(entries):
        try:
            if model_info(entry)["model"] == label:
                return i
        except (TypeError, ValueError):
            continue
    return 10**6


def _n_classes(ds: Mapping[str, Any]) -> int:
    classes = ds.get("classes")
    if isinstance(classes, str):
        return len(classes.split("-vs-"))
    if isinstance(classes, (list, tuple)):
        return len(classes)
    if ds.get("name") == "synthetic":
        return int(ds.get("n_classes", 2)) if ds.get("task", "classification") == "classification" else 0
    return 10


def _dataset_columns(ds: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    n_classes = _n_classes(ds)
    label, index = _dataset_label(ds, spec)
    return {
        "dataset": label,
        "dataset_index": index,
        "dataset_name": ds.get("name"),
        "classes": classes_text(ds.get("classes")),
        "n_classes": n_classes,
        "task": "regression" if n_classes == 0 else ("binary" if n_classes == 2 else f"{n_classes}-class"),
        "n_train_data": ds.get("n_train"),
        "kappa_data": float(ds["kappa"]) if "kappa" in ds else np.nan,
    }


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (bool, int, float, str))}


def _base(store: str, record: Mapping[str, Any]) -> dict[str, Any]:
    return {"store": store, "key": record["key"], "short_key": record["key"][:SHORT_KEY], "kind": record["kind"]}


def _kernel_row(store: str, record: Mapping[str, Any]) -> dict[str, Any]:
    cell = record["cell"]
    row = _base(store, record)
    row.update(_dataset_columns(cell.get("dataset", {}), record.get("spec", {})))
    row.update(
        model_info(cell.get("model", "?")), model_index=_model_index(cell.get("model", "?"), record.get("spec", {}))
    )
    row.update(width=int(cell["width"]), seed=int(cell["seed"]), dtype=cell.get("dtype"), ridge=cell.get("ridge"))
    row.update(_scalars(record["metrics"]))
    return row


def _malleability_row(store: str, record: Mapping[str, Any]) -> dict[str, Any]:
    cell, metrics = record["cell"], record["metrics"]
    row = _base(store, record)
    row.update(_dataset_columns(cell.get("dataset", {}), record.get("spec", {})))
    row.update(
        model_info(cell.get("model", "?")), model_index=_model_index(cell.get("model", "?"), record.get("spec", {}))
    )
    row.update(
        width=int(cell.get("width", 0)),
        seed=int(cell.get("seed", 0)),
        training_mode=cell.get("training_mode", "standard"),
        influence_kernel=cell.get("kernel"),
        intervention=cell.get("intervention"),
        attack=cell.get("attack"),
        epsilon=float(cell.get("epsilon", math.nan)),
        tau=cell.get("tau"),
        at_epsilon=cell.get("at_epsilon"),
        influence=cell.get("influence"),
        epochs=(cell.get("training") or {}).get("epochs"),
    )
    row.update(_scalars(metrics))
    if metrics.get("dataset_label"):
        row["dataset"] = metrics["dataset_label"]
    row["attack_target"] = cell.get("attack_target", (cell.get("attack_config") or {}).get("target", "model"))
    perturbation = metrics.get("perturbation") or {}
    for key in ("linf", "loss_clean", "loss_adv", "mean_l2", "loss_gain"):
        row[key] = perturbation.get(key, math.nan)
    health = metrics.get("health") or {}
    row["trained"] = health.get("trained", True)
    for key in ("loss_ratio", "train_accuracy", "test_accuracy", "feature_cosine", "weight_change", "varying_units"):
        row[f"health_{key}"] = health.get(key, math.nan)
    row["health_collapsed"] = health.get("collapsed", False)
    row["flip_rates"] = metrics.get("flip_rates")
    row["variants"] = tuple(metrics.get("variants") or ("default",))
    return row


def _conditions_row(store: str, record: Mapping[str, Any]) -> dict[str, Any]:
    cell, metrics = record["cell"], record["metrics"]
    row = _base(store, record)
    row.update(_dataset_columns(cell.get("dataset", {}), record.get("spec", {})))
    row.update(_scalars(metrics))
    row["depth"] = cell.get("depth", 1)
    row["eigenvalues_G"] = metrics.get("eigenvalues_G")
    row["eigenvalues_attention"] = metrics.get("eigenvalues_attention")
    row["energy"] = metrics.get("energy")
    return row


#: The ground truths of an attribution record: its metrics entry → the ``reference`` column.
ATTRIBUTION_REFERENCES = {"vs_loo": "kernel LOO", "vs_retrained": "retraining"}


def _attribution_rows(store: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    cell, metrics = record["cell"], record["metrics"]
    row = _base(store, record)
    row.update(_dataset_columns(cell.get("dataset", {}), record.get("spec", {})))
    row.update(model_info(cell["model"]), model_index=_model_index(cell["model"], record.get("spec", {})))
    row.update(width=int(cell["width"]), seed=int(cell["seed"]), damping=float(cell["damping"]))
    health = metrics.get("health") or {}
    row.update(n_train=metrics.get("n_train"), n_test=metrics.get("n_test"), trained=health.get("trained", True))
    row["health_loss_ratio"] = health.get("loss_ratio", math.nan)
    return [
        {**row, "reference": reference, "estimator": estimator, **values}
        for entry, reference in ATTRIBUTION_REFERENCES.items()
        for estimator in cell.get("estimators", [])  # the spec's order (stored metrics are key-sorted)
        for values in [(metrics.get(entry) or {}).get(estimator)]
        if values is not None
    ]


#: Cell entries that tables and figures show as columns (or that vary within one setting); the rest of a
#: cell is its "setting": records of one store whose settings differ (the spec was edited between runs)
#: are reported apart, never averaged together.
_SHOWN = {
    "kernel": ("seed", "width", "model", "dataset"),
    "training": ("seed", "width", "model", "dataset"),
    "malleability": (
        "seed",
        "width",
        "model",
        "dataset",
        "attack",
        "epsilon",
        "training_mode",
        "intervention",
        "kernel",
        "at_epsilon",
        "attack_target",
    ),
    "conditions": ("dataset",),
    "attribution": ("seed", "width", "model", "dataset", "damping"),
}


def setting_of(kind: str, cell: Mapping[str, Any]) -> str:
    """Short hash (8 hex) of a cell without its displayed entries (see ``_SHOWN``)."""
    rest = {k: v for k, v in cell.items() if k not in _SHOWN.get(kind, ())}
    return hashlib.sha256(canonical_json(rest).encode("ascii")).hexdigest()[:8]


#: Record kind → (frame, its rows: one row, or a list of rows).
_BUILDERS: dict[str, tuple[str, Callable[[str, Mapping[str, Any]], dict | list[dict]]]] = {
    "kernel_sweep": ("kernel", _kernel_row),
    "training_sweep": ("training", _kernel_row),
    "malleability": ("malleability", _malleability_row),
    "conditions": ("conditions", _conditions_row),
    "attribution": ("attribution", _attribution_rows),
}


def _environment(record: Mapping[str, Any]) -> dict[str, Any]:
    env = record.get("environment") or {}
    packages = env.get("packages") or {}
    return {
        "packages": {k: v for k, v in packages.items() if v},
        "backend": env.get("jax_backend"),
        "devices": env.get("device_kinds"),
        "python": env.get("python"),
        "x64": env.get("x64"),
        "precision": (env.get("precision") or {}).get("policy"),
    }


def load_frames(out: str | Path) -> Frames:
    """Read every store under ``out`` (read-only) into :class:`Frames`. Computes nothing."""
    out = Path(out)
    rows: dict[str, list[dict]] = {
        "kernel": [],
        "training": [],
        "malleability": [],
        "conditions": [],
        "attribution": [],
    }
    info: dict[str, dict[str, Any]] = {}
    stores = []
    for path in find_stores(out):
        store = ResultStore.open(path, create=False, readonly=True)
        name = path.name
        stores.append(name)
        kinds: dict[str, int] = {}
        latest: dict[str, Any] | None = None
        description = ""
        mine: dict[str, list[dict]] = {}
        for record in store.records():
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
            builder = _BUILDERS.get(record["kind"])
            if builder is not None:
                built = builder[1](name, record)
                for row in built if isinstance(built, list) else [built]:
                    row["store_path"] = name
                    row["setting"] = setting_of(builder[0], record["cell"])
                    mine.setdefault(builder[0], []).append(row)
            finished = (record.get("timing") or {}).get("finished") or ""
            if latest is None or finished > ((latest.get("timing") or {}).get("finished") or ""):
                latest = record
            description = description or str((record.get("spec") or {}).get("description", ""))
        info[name] = {
            "kinds": kinds,
            "description": description,
            "environment": _environment(latest) if latest else {},
            "finished": (latest.get("timing") or {}).get("finished") if latest else None,
        }
        for kind, kind_rows in mine.items():
            settings = {r["setting"] for r in kind_rows}
            if len(settings) > 1:
                for r in kind_rows:
                    r["store"] = f"{name}~{r['setting']}"
                for setting in sorted(settings):
                    info[f"{name}~{setting}"] = {**info[name], "setting": setting, "physical": name}
            rows[kind] += kind_rows
    frames = {}
    for kind, kind_rows in rows.items():
        frame = pd.DataFrame(kind_rows)
        order = [
            c for c in ("store", "dataset_index", "model_index", "width", "seed", "epsilon", "damping") if c in frame
        ]
        frames[kind] = frame.sort_values(order, kind="stable").reset_index(drop=True) if order else frame
    return Frames(
        out,
        tuple(stores),
        frames["kernel"],
        frames["training"],
        frames["malleability"],
        frames["conditions"],
        info,
        frames["attribution"],
    )


def is_kappa_sweep(frame: pd.DataFrame) -> bool:
    """True when the records of ``frame`` are a synthetic κ sweep: synthetic data only, at two κ or more."""
    return (
        not frame.empty
        and bool((frame["dataset_name"] == "synthetic").all())
        and frame["kappa_data"].nunique(dropna=True) >= 2
    )
