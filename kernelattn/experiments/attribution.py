"""The ground-truth comparison of attribution estimators (docs/math.md §14): an ``"attribution"`` spec run
into a store.

Per cell (dataset, model, width m, seed, damping λ): the network is trained once; every estimator's
``(n*, n)`` scores (:func:`kernelattn.learning.model_influence.fitted_influence`) are scored against two
ground truths with :func:`kernelattn.learning.attribution_truth.compare_to_ground_truth`: exact
leave-one-out of kernel ridge on the trained network's empirical NTK at damping λ (the kernel's truth),
and the network retrained without each training point from the same keys
(:func:`kernelattn.learning.attribution_truth.retrained_loo`, the network's truth; n + 1 fits, shared by
the dampings of a (dataset, model, width, seed)).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kernelattn._precision import enable_x64, x64_enabled
from kernelattn.data import load
from kernelattn.errors import InputValueError
from kernelattn.experiments import provenance
from kernelattn.experiments.specs import SpecError, spec_and_source
from kernelattn.experiments.specs.checks import check_bool, check_choice, check_int, check_keys, check_real, check_str
from kernelattn.experiments.specs.entries import assign_labels, parse_dataset
from kernelattn.experiments.store import ResultStore, make_record, store_exists, utc_now
from kernelattn.learning.attribution import ATTRIBUTION_METHODS
from kernelattn.learning.attribution_truth import compare_to_ground_truth, retrained_loo
from kernelattn.learning.fitting import assess_fit, fit_label, fit_model, resolve_data
from kernelattn.learning.model_influence import FitOptions, fitted_influence
from kernelattn.learning.training import TrainConfig, class_targets

__all__ = ["ATTRIBUTION_KEYS", "ATTRIBUTION_MODELS", "attribution_cell", "parse_attribution", "run_attribution"]

#: Keys of an "attribution" spec.
ATTRIBUTION_KEYS = (
    "name",
    "kind",
    "description",
    "datasets",
    "models",
    "widths",
    "seeds",
    "dampings",
    "estimators",
    "training",
    "tau",
    "retrain",
    "projection_dim",
    "checkpoints",
)
#: The models an attribution spec compares (kernelattn's own; retraining needs their fit).
ATTRIBUTION_MODELS = ("relu", "mlp-attn")
_TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _list(data: Mapping[str, Any], key: str) -> list:
    """``data[key]``: a non-empty list without repeats."""
    value = data[key]
    if not isinstance(value, list) or not value:
        raise SpecError(key, f"expected a non-empty list, got {value!r}")
    if len({repr(v) for v in value}) != len(value):
        raise SpecError(key, f"duplicate entries in {value!r}")
    return value


def _checked(data: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's entries checked and normalized (datasets as ``DatasetSpec``)."""
    required = ("name", "datasets", "models", "widths", "seeds", "dampings")
    check_keys(data, "", ATTRIBUTION_KEYS, required, context="for kind 'attribution'")
    datasets = assign_labels(
        tuple(parse_dataset(d, f"datasets[{i}]") for i, d in enumerate(_list(data, "datasets"))), "datasets"
    )
    training = data.get("training", {})
    if not isinstance(training, Mapping):
        raise SpecError("training", f"expected an object, got {training!r}")
    check_keys(training, "training", _TRAINING_KEYS)
    try:
        config = TrainConfig(**training)
    except (TypeError, ValueError) as err:
        raise SpecError("training", str(err)) from None
    return {
        "name": check_str(data["name"], "name"),
        "kind": "attribution",
        "description": check_str(data.get("description", ""), "description"),
        "datasets": datasets,
        "models": [check_choice(m, f"models[{i}]", ATTRIBUTION_MODELS) for i, m in enumerate(_list(data, "models"))],
        "widths": [check_int(w, f"widths[{i}]", 1, 2**16) for i, w in enumerate(_list(data, "widths"))],
        "seeds": [check_int(s, f"seeds[{i}]", 0) for i, s in enumerate(_list(data, "seeds"))],
        "dampings": [check_real(d, f"dampings[{i}]", 0.0, strict=True) for i, d in enumerate(_list(data, "dampings"))],
        "estimators": [
            check_choice(e, f"estimators[{i}]", ATTRIBUTION_METHODS)
            for i, e in enumerate(_list({"estimators": list(ATTRIBUTION_METHODS), **data}, "estimators"))
        ],
        "training": dataclasses.asdict(config),
        "tau": check_real(data.get("tau", 0.1), "tau", 0.0, True, 1.0),
        "retrain": check_bool(data.get("retrain", True), "retrain"),
        "projection_dim": check_int(data.get("projection_dim", 64), "projection_dim", 1),
        "checkpoints": check_int(data.get("checkpoints", 5), "checkpoints", 1),
    }


def parse_attribution(data: Mapping[str, Any], source: str | None) -> tuple[tuple, dict[str, Any]]:
    """Validate an "attribution" spec: ``(datasets, normalized spec)``.

    Raises:
      SpecError: naming the key path and ``source``; datasets as in ``kernelattn.experiments.specs``.
    """
    if not isinstance(data, Mapping):
        raise SpecError("", f"expected a JSON object, got {type(data).__name__}", source)
    try:
        checked = _checked(data)
    except SpecError as err:
        raise SpecError(err.path, err.problem, source) from None
    datasets = checked["datasets"]
    return datasets, {**checked, "datasets": [d.to_dict() for d in datasets]}


def attribution_cell(spec: Mapping[str, Any], dataset, model: str, width: int, seed: int, damping: float) -> dict:
    """The cell definition (store key = its ``cell_key``) of one (dataset, model, width, seed, damping)."""
    shared = ("estimators", "training", "tau", "retrain", "projection_dim", "checkpoints")
    return {
        "sweep": spec["name"],
        "kind": "attribution",
        "dataset": dataset.identity(),
        "model": model,
        "width": int(width),
        "seed": int(seed),
        "damping": float(damping),
        **{key: spec[key] for key in shared},
    }


def _truth_table(scores: Mapping[str, np.ndarray], reference: np.ndarray, tau: float) -> dict[str, dict]:
    """estimator → its :data:`~kernelattn.learning.attribution_truth.TRUTH_METRICS` (and ``spearman_std``)."""
    table = compare_to_ground_truth(scores, reference, tau=tau)
    return {row.pop("method"): row for row in table.to_dict("records")}


def _cell_metrics(spec, data, model: str, width: int, seed: int, dampings, retrained) -> dict[float, dict]:
    """damping → the metrics of one cell; ``retrained`` is the network's ``(n*, n)`` truth or None."""
    config = TrainConfig(**spec["training"])
    base = FitOptions(
        model=model,
        width=width,
        seed=seed,
        train_config=config,
        projection_dim=spec["projection_dim"],
        checkpoints=spec["checkpoints"],
        method="tracin" if "tracin" in spec["estimators"] else "loo",
    )
    keys, n_classes = base.keys(), data.n_classes
    head = base.head_model(n_classes)
    fitted = fit_model(
        head,
        data.X_train,
        class_targets(data.labels_train, n_classes, config.out_dim(n_classes)),
        key_init=keys["init"],
        key_train=keys["train"],
        config=config,
        checkpoints=base.fit_checkpoints,
    )
    fitted = assess_fit(fitted, resolve_data(data), config, what=fit_label(head, seed))
    split = (data.X_train, data.labels_train, data.X_test, data.labels_test)
    out = {}
    for damping in dampings:
        scores = {
            method: fitted_influence(
                fitted, *split, n_classes=n_classes, options=dataclasses.replace(base, method=method, ridge=damping)
            ).scores
            for method in spec["estimators"]
        }
        loo = fitted_influence(
            fitted, *split, n_classes=n_classes, options=dataclasses.replace(base, method="loo", ridge=damping)
        )
        metrics: dict[str, Any] = {
            "vs_loo": _truth_table(scores, loo.scores, spec["tau"]),
            "n_train": int(data.X_train.shape[0]),
            "n_test": int(data.X_test.shape[0]),
            "health": fitted.health.to_dict() if fitted.health is not None else None,
        }
        if retrained is not None:
            metrics["vs_retrained"] = _truth_table(scores, retrained, spec["tau"])
        out[damping] = metrics
    return out


def run_attribution(
    spec: Mapping[str, Any] | str | os.PathLike[str],
    out: str | os.PathLike[str] = "results",
    *,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Score attribution estimators against exact kernel LOO and retraining into ``<out>/<name>``, resumably.

    One record (kind ``"attribution"``) per (dataset, model, width, seed, damping), keyed by
    ``provenance.cell_key`` of :func:`attribution_cell`. Metrics: ``vs_loo`` and (with ``retrain``)
    ``vs_retrained``, each estimator → ``spearman``, ``pearson``, ``topk_overlap``, ``sign_agreement``,
    ``spearman_std`` (over test points; :func:`kernelattn.learning.attribution_truth.compare_to_ground_truth`);
    ``n_train``, ``n_test`` and ``health`` (the trained network's ``TrainingHealth``, as a dict).
    The spec (JSON; defaults of the optional keys shown)::

        {"name": "quick_attribution", "kind": "attribution", "description": "...",
         "datasets": [...],            # kernelattn.experiments.specs dataset entries (load options + "label")
         "models": ["relu", "mlp-attn"], "widths": [64, 512], "seeds": [0, 1],
         "dampings": [1e-3, 1e-1],     # λ of kernel ridge, IF and TRAK (and of the kernel LOO truth)
         "estimators": ["loo", "if", "tracin", "grad-dot", "grad-cos", "representer", "trak"],
         "training": {},               # TrainConfig fields (default: the paper's optimizer, 500 epochs)
         "tau": 0.1,                   # top fraction of top-k overlap and sign agreement
         "retrain": true,              # also the network's truth (n + 1 fits per model, width, seed)
         "projection_dim": 64, "checkpoints": 5}   # TRAK's k, TracIn's checkpoints

    Returns:
      The keys of the records written by this call.
    """
    data, source = spec_and_source(spec)
    datasets, normalized = parse_attribution(data, source)
    if not x64_enabled():
        enable_x64()
    path = Path(out) / normalized["name"]
    loaded = {}
    for dataset in datasets:  # every dataset loads before a new store is made: a refused spec leaves nothing
        loaded[dataset.label] = load(dataset.name, **dataset.load_kwargs())
    if not store_exists(path) and not loaded:
        raise InputValueError("datasets: nothing to load")
    store = ResultStore.open(path)
    written = []
    for dataset in datasets:
        data = loaded[dataset.label]
        for model in normalized["models"]:
            for width in normalized["widths"]:
                for seed in normalized["seeds"]:
                    written += _run_group(store, normalized, dataset, data, model, width, seed, progress)
    return written


def _run_group(store: ResultStore, spec, dataset, data, model, width, seed, progress) -> list[str]:
    """The cells of one (dataset, model, width, seed), one per damping, sharing the fit and the retraining."""
    cells = {d: attribution_cell(spec, dataset, model, width, seed, d) for d in spec["dampings"]}
    keys = {d: provenance.cell_key(cell) for d, cell in cells.items()}
    written: list[str] = []
    with store.claiming(key for key in keys.values() if not store.has(key)) as held:
        todo = [d for d, key in keys.items() if key in held]
        if not todo:
            return []
        started, t0 = utc_now(), time.perf_counter()
        config = TrainConfig(**spec["training"])
        retrained = None
        if spec["retrain"]:
            head = FitOptions(model=model, width=width, train_config=config).head_model(data.n_classes)
            retrained = retrained_loo(
                head,
                data.X_train,
                data.labels_train,
                data.X_test,
                data.labels_test,
                n_classes=data.n_classes,
                config=config,
                seeds=(seed,),
            )
        metrics = _cell_metrics(spec, data, model, width, seed, todo, retrained)
        seconds = (time.perf_counter() - t0) / len(todo)
        for damping in todo:
            record = make_record(
                "attribution",
                cells[damping],
                metrics[damping],
                spec=spec,
                seed=seed,
                seconds=seconds,
                started=started,
                finished=utc_now(),
            )
            store.put(keys[damping], record, exist_ok=True)
            written.append(keys[damping])
            if progress is not None:
                vs = metrics[damping].get("vs_retrained", metrics[damping]["vs_loo"])
                progress(
                    f"{dataset.label} {model} m={width} seed {seed} λ={damping:g}: Spearman vs "
                    f"{'retraining' if retrained is not None else 'kernel LOO'} "
                    + ", ".join(f"{k} {v['spearman']:.2f}" for k, v in vs.items())
                )
    return written
