"""Malleability experiment specs run into a result store, resumably (the CLI's ``kernelattn malleability``).

A spec (``kernelattn.experiments.specs.parse_malleability_spec``) expands into
cells; the cells sharing one clean fit form a group, prepared once
(:func:`~kernelattn.experiments.malleability.experiment.prepare`) and measured
cell by cell into records of kind "malleability". A :class:`FitCache` shares the clean fits
and null refits between groups that train the same network on the same data (the variants of a
protocol matrix, the specs of a tier): training is deterministic, so a shared fit is the very fit.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from tqdm.auto import tqdm

from kernelattn._precision import precision_policy, resolve_precision
from kernelattn._validation import check_int
from kernelattn.data import api as data_api
from kernelattn.errors import InputValueError
from kernelattn.experiments import provenance, specs
from kernelattn.experiments.malleability.experiment import (
    Experiment,
    measure,
    measure_null,
    null_refit,
    plan_memory,
    prepare,
    train_network,
)
from kernelattn.experiments.resources import blas_single_thread, release_compiled_programs_if_crowded
from kernelattn.experiments.store import make_record, utc_now
from kernelattn.kernels import memory
from kernelattn.learning.attacks import as_attack_config
from kernelattn.learning.fitting import FittedModel, as_train_config, resolve_model
from kernelattn.models import make_model

#: The keys of a malleability spec; the schema and its validator live in ``kernelattn.experiments.specs``.
SPEC_KEYS = specs.MALLEABILITY_KEYS
#: The null baselines of a spec that names none.
DEFAULT_NULLS = next(key.default for key in specs.MALLEABILITY_SCHEMA if key.name == "null_baselines")
_HEAD_KEYS = {"readout": "train_readout", "sigma_w": "sigma_w", "sigma_b": "sigma_b", "sigma_a": "sigma_a"}


class FitCache:
    """Trained networks by what determines them, least recently used dropped past ``max_bytes``
    (None: an eighth of the memory available when the cache is made).

    A key names everything a fit depends on (dataset entry, model, width, head, seed, training mode
    and settings, PGD-AT radius and attack, dtype, precision, and the null kind of a refit), so a
    hit returns the fit that training would produce again, bit for bit on the same machine.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = memory.available_memory() // 8 if max_bytes is None else max_bytes
        self._fits: collections.OrderedDict[str, tuple[FittedModel, int]] = collections.OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> FittedModel | None:
        """The fit stored under ``key`` (now the most recently used), or None."""
        if key not in self._fits:
            return None
        self._fits.move_to_end(key)
        return self._fits[key][0]

    def items(self) -> list[tuple[str, FittedModel]]:
        """``(key, fit)`` pairs, least recently used first; a key is the canonical JSON of :func:`fit_key`."""
        return [(key, fitted) for key, (fitted, _) in self._fits.items()]

    def __len__(self) -> int:
        return len(self._fits)

    def put(self, key: str, fitted: FittedModel) -> FittedModel:
        """Store ``fitted`` under ``key``; returns it."""
        if key in self._fits:
            self._bytes -= self._fits.pop(key)[1]
        size = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves((fitted.variables, fitted.initial)))
        self._fits[key] = (fitted, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._fits) > 1:
            _, (_, dropped) = self._fits.popitem(last=False)
            self._bytes -= dropped
        return fitted


def fit_key(parsed: Mapping, dataset: Mapping, group: tuple, null: str | None = None) -> str:
    """The :class:`FitCache` key of a group's clean fit (``null=None``) or of its null refit of that kind."""
    seed, model, width, mode, _ = group
    pgd_at = mode == "pgd-at"
    return provenance.canonical_json(
        {
            "dataset": dataset,
            "model": model,
            "width": width,
            "head": parsed["head"],
            "seed": seed,
            "training_mode": mode,
            "training": dataclasses.asdict(as_train_config(parsed["training"] or None)),
            "at_epsilon": parsed["at_epsilon"] if pgd_at else None,
            "attack_config": dataclasses.asdict(as_attack_config(parsed["attack_config"] or None)) if pgd_at else None,
            "dtype": parsed["dtype"],
            "precision": parsed["precision"],
            "null": null,
        }
    )


def _spec_model(entry, width: int, out_dim: int, head_options: Mapping):
    """A model name, or a ``make_model`` instance for a mapping ``{"name": ..., options}``."""
    options = {}
    for key, value in dict(head_options).items():
        if key not in _HEAD_KEYS:
            continue
        options[_HEAD_KEYS[key]] = (value == "trained") if key == "readout" else value
    if isinstance(entry, Mapping):
        entry = dict(entry)
        name = entry.pop("name")
        options.update(entry)
    else:
        name = entry
    if not options:
        return name
    return make_model(name, width, out_dim, **options)


def spec_variants(spec: Mapping) -> list[tuple[str, dict]]:
    """The spec itself ("default") and each of its ``"variants"``, as (label, full spec) pairs.

    A variant is a mapping with a unique ``"label"`` and overrides of any spec key but
    ``name``/``kind``/``description``/``variants``; ``"n_train"`` sets every dataset's training-set
    size. One-factor-at-a-time designs list one override per variant; a factorial block lists the
    factors' plural keys (``"influence_kernels": [...]``, ``"interventions": [...]`` …) in one variant.
    Cells are keyed by content, so a cell shared by several variants is computed once.

    Raises:
      kernelattn.experiments.specs.SpecError: a malformed variant (see
        ``kernelattn.experiments.specs.malleability_variants``).
    """
    return [(label, merged) for label, merged, _ in specs.malleability_variants(spec)]


def validate_spec(spec: Mapping, *, max_cells: int | None = None) -> specs.MalleabilitySpec:
    """Check a malleability spec and its variants without running it (``kernelattn.experiments.specs.SpecError``
    naming the key path); see ``kernelattn.experiments.specs.parse_malleability_spec``."""
    return specs.parse_malleability_spec(spec, max_cells=max_cells)


def _load_dataset(dataset: Mapping, label: str, index: int):
    """``kernelattn.data.load`` of one parsed dataset entry, errors prefixed with the entry."""
    try:
        return data_api.load(**dataset, target="labels")
    except ValueError as err:  # a bad option only the loader can judge (sizes, class names)
        raise InputValueError(f"datasets[{index}] ({label!r}): {err}") from err


def check_malleability_spec(spec: Mapping, *, max_cells: int | None = None, budget: int | None = None) -> dict:
    """Everything that can be checked before any work: the spec, its data and the memory of every fit.

    Validates the spec (:func:`validate_spec`), loads every dataset, and
    plans the memory of the training, the influence kernel and the attacks
    of every (dataset, model, width, training mode, kernel) group
    (:func:`~kernelattn.experiments.malleability.experiment.plan_memory`).
    The CLI runs it before it creates the store, so a spec refused here
    leaves nothing behind.

    Returns:
      The loaded datasets, for ``run_malleability_spec(..., loaded=...)``.

    Raises:
      kernelattn.experiments.specs.SpecError, InputValueError: an invalid spec or data option.
      kernelattn.data.DatasetError: missing or bad data files.
      kernelattn.kernels.memory.MemoryPlanError: a group that would not fit in memory (naming it).
    """
    parsed_spec = validate_spec(spec, max_cells=max_cells)
    loaded: dict[str, Any] = {}
    for _, parsed in parsed_spec.plans:
        for index, (dataset, label) in enumerate(zip(parsed["datasets"], parsed["dataset_labels"])):
            data_key = provenance.canonical_json(dataset)
            if data_key not in loaded:
                loaded[data_key] = _load_dataset(dataset, label, index)
            data = loaded[data_key]
            config = as_train_config(parsed["training"] or None)
            out_dim = config.out_dim(data.n_classes)
            attacked = any(i != "curated" for i in parsed["interventions"])
            for _, model, width, mode, kernel in _spec_groups(parsed):
                head = resolve_model(_spec_model(model, width, out_dim, parsed["head"]), width, out_dim, "float32").head
                try:
                    plan_memory(
                        data.X_train.shape[0],
                        data.X_test.shape[0],
                        data.X_train.shape[1],
                        head,
                        config=config,
                        kernel=kernel,
                        training=mode,
                        dtype=parsed["dtype"],
                        attack_targets=parsed["attack_targets"] if attacked else (),
                        budget=budget,
                    )
                except memory.MemoryPlanError as err:
                    model_name = model if isinstance(model, str) else model["name"]
                    raise memory.MemoryPlanError(
                        f"datasets[{index}] ({label!r}), model {model_name}, width {width}: {err}",
                        err.estimate,
                        err.budget,
                    ) from None
    return loaded


def run_malleability_spec(
    spec: Mapping,
    store,
    *,
    progress=None,
    loaded: Mapping | None = None,
    max_cells: int | None = None,
    fits: FitCache | None = None,
    workers: int | None = None,
) -> list[str]:
    """Run a malleability experiment spec into a ``ResultStore``, resumably.

    The spec is a plain dict (e.g. parsed from ``experiments/*.json``); key
    names follow ``kernelattn.experiments.specs`` where they overlap::

        {"datasets": [{"name": "digits", "n_train": 1000, "n_test": 200, "seed": 0, "label": "digits"}],
                                            # or "dataset": {...}; kernelattn.data.load options
         "models": ["relu", "mlp-attn"],    # names, or {"name": "mlp-attn", "depth": 2, ...}
         "width": 1024,                     # or "widths": [256, 1024]
         "seeds": 3,                        # a count n (0..n-1), or a list
         "kernel": {"readout": "fixed", "sigma_w": 1.0, "sigma_b": 0.0, "sigma_a": 1.0},
         "training": {"epochs": 500, ...},  # TrainConfig fields
         "training_modes": ["standard"],    # and/or "pgd-at"
         "at_epsilon": 0.3,                 # radius of PGD adversarial training
         "influence_kernels": ["empirical"],# and/or "empirical-init", "infinite", "tracin"
         "influence": "loo", "targets": "pm1", "ridge": 1e-3, "tau": 0.1, "retrain": false,
         "attacks": ["fgsm", "pgd", "mim"], "epsilons": [0.1, 0.2, 0.3, 0.5],
         "interventions": ["adversarial"],  # and/or "transformed", "test", "curated"
         "attack_targets": ["model"],       # and/or "kernel" (the loss attacked)
         "attack_config": {"steps": 10, ...},  # AttackConfig fields
         "null_baselines": ["seed", "order"],  # no perturbation, refit with other keys
         "variants": [{"label": "n=100", "n_train": 100}, ...],  # see spec_variants
         "dtype": "float64",
         "precision": null}                 # "highest" | "fast" | null: the policy in force (CLI --precision)

    Singular keys ("model", "attack", "epsilon", "seed", …) are accepted for
    one value. Datasets are loaded with ``normalize=False`` (raw [0, 1]
    pixels; the models normalize rows themselves) unless the spec says
    otherwise; ``label``/``target`` entries of a dataset are not part of the
    cell. Each cell — (dataset, model, width, seed, training mode, influence
    kernel, intervention, attack target, attack, ε), plus one null-baseline
    cell per null kind with ``intervention = "null-<kind>"`` — is one record
    of kind "malleability" keyed by ``provenance.cell_key(cell)``; finished
    cells are skipped (resume) and claimed cells left to their owner. One
    clean fit serves all cells of a (dataset, model, width, seed, training
    mode, kernel), and is skipped when they are all done. Metrics are
    ``MalleabilityReport.to_dict()`` plus the per-test-point arrays
    (``flip_rates``, ``spearmans``, ``topk_overlaps``), the fit's training
    health (``health``), the dataset's label and the labels of the variants
    the cell belongs to (``variants``). Each variant runs inside
    ``precision_policy(its precision)``; a cell computed at "fast" carries
    ``"precision": "fast"`` (the default "highest" keeps the keys cells had
    before the precision policy existed).

    The spec is validated by ``kernelattn.experiments.specs.parse_malleability_spec``
    (types checked, unknown keys and values refused with a did-you-mean,
    nested ones too; at most ``max_cells`` cells), and every fit's memory is
    planned before it trains (:func:`~kernelattn.experiments.malleability.experiment.plan_memory`).

    Args:
      spec: the experiment spec (a ``kernelattn.experiments.specs.SpecError`` names any bad key).
      store: a ``kernelattn.experiments.store.ResultStore`` (``has``, ``claiming``, ``put``).
      progress: optional callable ``progress(cell, report)`` after each stored cell.
      loaded: datasets already loaded by :func:`check_malleability_spec`.
      max_cells: the cell limit (see ``kernelattn.experiments.specs.parse_malleability_spec``).
      fits: a :class:`FitCache` to share fits with other specs (a tier passes one to all its
        specs); None → one for this call, shared by the spec's variants.
      workers: networks trained at once, in threads (:func:`training_ahead`); None →
        :func:`default_workers`. The records are the same for any number.

    Returns:
      The keys of the records written by this call.
    """
    # None: the policy in force (CLI --precision); resolved now, since "fast" is part of a cell's key.
    plans = [
        (label, {**parsed, "precision": resolve_precision(parsed.get("precision"))})
        for label, parsed in validate_spec(spec, max_cells=max_cells).plans
    ]
    membership: dict[str, list[str]] = {}
    for label, parsed in plans:
        for dataset in parsed["datasets"]:
            for group in _spec_groups(parsed):
                for cell in _group_cells(parsed, dataset, group):
                    membership.setdefault(provenance.cell_key(cell), []).append(label)
    written: list[str] = []
    loaded = dict(loaded or {})
    fits = FitCache() if fits is None else fits  # one clean fit serves every influence kernel and variant
    for _, parsed in plans:
        with precision_policy(parsed["precision"]):
            for index, (dataset, dataset_label) in enumerate(zip(parsed["datasets"], parsed["dataset_labels"])):
                release_compiled_programs_if_crowded()
                pending = []
                for group in _spec_groups(parsed):
                    cells = [(provenance.cell_key(cell), cell) for cell in _group_cells(parsed, dataset, group)]
                    cells = [(key, cell) for key, cell in cells if key not in written and not store.has(key)]
                    if cells:
                        context = {
                            "spec": spec,
                            "parsed": parsed,
                            "dataset": dataset,
                            "dataset_label": dataset_label,
                            "group": group,
                            "fits": fits,
                        }
                        pending.append((context, cells))
                if not pending:
                    continue
                data_key = provenance.canonical_json(dataset)
                if data_key not in loaded:
                    loaded[data_key] = _load_dataset(dataset, dataset_label, index)
                data = loaded[data_key]
                with (
                    blas_single_thread(data.X_train.shape[0]),
                    training_ahead(data, pending, fits, workers=workers, progress=progress is not None) as trained,
                ):
                    for context, cells in pending:
                        trained(context, cells)
                        experiment = _prepare_group(data, context)
                        for key, cell in cells:
                            report = _run_cell(store, key, cell, experiment, context, membership.get(key, []))
                            if report is not None:
                                written.append(key)
                                if progress is not None:
                                    progress(cell, report)
    return written


def _prepare_arguments(data, context: dict) -> dict:
    """The keyword arguments of ``prepare`` (and ``train_network``) for one group (``context``: its
    parsed spec, dataset entry and group)."""
    parsed = context["parsed"]
    seed, model, width, mode, kernel = context["group"]
    config = as_train_config(parsed["training"] or None)
    return {
        "model": _spec_model(model, width, config.out_dim(data.n_classes), parsed["head"]),
        "width": width,
        "ridge": parsed["ridge"],
        "seed": seed,
        "kernel": kernel,
        "influence": parsed["influence"],
        "targets": parsed["targets"],
        "training": mode,
        "at_epsilon": parsed["at_epsilon"],
        "train_config": config,
        "attack_config": parsed["attack_config"] or None,
        "dtype": parsed["dtype"],
        "attack_targets": parsed["attack_targets"] if any(i != "curated" for i in parsed["interventions"]) else (),
    }


def _prepare_group(data, context: dict) -> Experiment:
    """The experiment of one group, its clean fit taken from the :class:`FitCache` when there."""
    fits, clean_key = context["fits"], fit_key(context["parsed"], context["dataset"], context["group"])
    cached = fits.get(clean_key)
    experiment = prepare(data, fitted=cached, **_prepare_arguments(data, context))
    if cached is None:
        fits.put(clean_key, experiment.fitted)
    return experiment


def default_workers() -> int:
    """Threads that train networks at once: one per CPU core, at most 4 (each fit keeps about one core busy)."""
    return max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def training_ahead(
    data, pending: Sequence[tuple[dict, list]], fits: FitCache, *, workers: int | None = None, progress: bool = False
):
    """Train the clean fits and null refits the ``pending`` groups (``(context, cells)`` pairs) need and
    ``fits`` lacks, ``workers`` at a time in threads, in the order of the groups, while the caller works.

    Yields ``trained(context, cells)``, which waits until that group's networks are in ``fits``: the caller
    measures a group's cells while the later groups' networks train, so both kinds of work share the
    cores. Each network is the one the group would train by itself (``train_network``, bit for bit: the
    same program on the same inputs), so the records do not depend on ``workers``. Each thread runs in
    a copy of the caller's context (precision policy, guard policy). On leaving, networks not started
    are cancelled and those running are awaited. ``progress``: a tqdm bar of the networks trained.
    """
    workers = default_workers() if workers is None else check_int(workers, "workers", minimum=1)
    jobs: dict[str, tuple[dict, str | None]] = {}
    for context, cells in pending:
        for null in _group_nulls(cells):
            key = fit_key(context["parsed"], context["dataset"], context["group"], null)
            if key not in jobs and fits.get(key) is None:
                jobs[key] = (context, null)
    if workers == 1 or len(jobs) < 2:
        yield lambda context, cells: None
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        futures = {
            key: pool.submit(
                contextvars.copy_context().run,
                functools.partial(train_network, data, null=null, **_prepare_arguments(data, context)),
            )
            for key, (context, null) in jobs.items()
        }
        with tqdm(total=len(futures), desc="training networks", unit="fit", disable=not progress, leave=False) as bar:

            def trained(context: dict, cells: list) -> None:
                for null in _group_nulls(cells):
                    key = fit_key(context["parsed"], context["dataset"], context["group"], null)
                    if key in futures:
                        fits.put(key, futures.pop(key).result())
                        bar.update(1)

            yield trained
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _group_nulls(cells: list) -> tuple[str | None, ...]:
    """``None`` (the clean fit) and the null kinds of a group's ``(key, cell)`` pairs, sorted."""
    kinds = {cell["intervention"][len("null-") :] for _, cell in cells if cell["intervention"].startswith("null-")}
    return (None, *sorted(kinds))


def _spec_groups(parsed: dict):
    """(seed, model, width, training mode, kernel): the cells sharing one clean fit."""
    for seed in parsed["seeds"]:
        for model in parsed["models"]:
            for width in parsed["widths"]:
                for mode in parsed["modes"]:
                    for kernel in parsed["kernels"]:
                        yield seed, model, width, mode, kernel


def _group_cells(parsed: dict, dataset: dict, group: tuple) -> list[dict]:
    """The cells of one group: interventions × attack targets × (attacks × ε, or once for "curated"),
    then one null-baseline cell per null kind."""
    seed, model, width, mode, kernel = group
    grid = []
    for intervention in parsed["interventions"]:
        if intervention == "curated":
            grid.append((intervention, "none", "none", 0.0))
            continue
        grid += [
            (intervention, target, attack, epsilon)
            for target in parsed["attack_targets"]
            for attack in parsed["attacks"]
            for epsilon in parsed["epsilons"]
        ]
    grid += [(f"null-{kind}", "none", "none", 0.0) for kind in parsed["nulls"]]
    precision = {"precision": "fast"} if parsed["precision"] == "fast" else {}  # "highest" keeps earlier keys
    return [
        {
            "dataset": dataset,
            "model": model,
            "width": width,
            "seed": seed,
            "training_mode": mode,
            "kernel": kernel,
            "head": parsed["head"],
            "training": parsed["training"],
            "attack_config": parsed["attack_config"],
            "at_epsilon": parsed["at_epsilon"] if mode == "pgd-at" else None,
            "intervention": intervention,
            "attack_target": target,
            "attack": attack,
            "epsilon": epsilon,
            **{k: parsed[k] for k in ("tau", "ridge", "influence", "targets", "retrain", "dtype")},
            **precision,
        }
        for intervention, target, attack, epsilon in grid
    ]


def _run_cell(store, key: str, cell: dict, experiment: Experiment, context: dict, variants: list[str]):
    """Claim, measure and store one cell; its report, or None when another process holds it."""
    with store.claiming([key]) as held:
        if not held:
            return None
        started = utc_now()
        parsed = context["parsed"]
        if cell["intervention"].startswith("null-"):
            kind = cell["intervention"][len("null-") :]
            refit_key, fits = fit_key(parsed, context["dataset"], context["group"], kind), context["fits"]
            refit = fits.get(refit_key) or fits.put(refit_key, null_refit(experiment, kind))
            report = measure_null(experiment, kind=kind, tau=parsed["tau"], refit=refit)
        else:
            config = dataclasses.replace(
                experiment.attack_config, target="model" if cell["attack_target"] == "none" else cell["attack_target"]
            )
            report = measure(
                experiment,
                attack="pgd" if cell["attack"] == "none" else cell["attack"],
                epsilon=cell["epsilon"],
                tau=parsed["tau"],
                intervention=cell["intervention"],
                retrain=parsed["retrain"],
                attack_config=config,
            )
        # Settings live in the cell; metrics keep the results (no clashing to_frame columns).
        metrics = {k: v for k, v in report.to_dict().items() if k not in cell and k not in ("training", "seconds")}
        metrics.update(
            flip_rates=report.flip_rates.tolist(),
            spearmans=report.spearmans.tolist(),
            topk_overlaps=report.topk_overlaps_per_test.tolist(),
            final_train_loss=float(experiment.fitted.losses[-1]) if experiment.fitted.losses.size else None,
            dataset_label=context["dataset_label"],
            variants=list(variants),
        )
        record = make_record(
            "malleability",
            cell,
            metrics,
            spec=dict(context["spec"]),
            seed=cell["seed"],
            seconds=report.seconds,
            started=started,
            finished=utc_now(),
        )
        store.put(key, record)
        return report


SUMMARY_KEYS = ("dataset.name", "model", "width", "training_mode", "kernel", "intervention", "attack", "epsilon")
SUMMARY_METRICS = ("flip_rate", "spearman", "topk_overlap")


def summary_frame(store):
    """Stored malleability cells averaged over seeds: one row per (dataset, model, …, attack, ε).

    Args:
      store: a ``kernelattn.experiments.store.ResultStore``.

    Returns:
      pandas DataFrame with the ``SUMMARY_KEYS`` columns present, ``seeds`` and
      the mean of each ``SUMMARY_METRICS`` column.
    """
    frame = store.to_frame("malleability")
    if frame.empty:
        return frame
    if "model.name" in frame and "model" not in frame:
        frame = frame.rename(columns={"model.name": "model"})
    keys = [k for k in SUMMARY_KEYS if k in frame]
    metrics = [m for m in SUMMARY_METRICS if m in frame]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    summary = grouped[metrics].mean()
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()
