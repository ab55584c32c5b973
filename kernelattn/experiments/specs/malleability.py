"""Malleability specs (``"kind": "malleability"``): the declared schema and its validator.

The format is documented at ``kernelattn.experiments.malleability.run_malleability_spec``.
``MALLEABILITY_SCHEMA`` declares every top-level key (:class:`KeySpec`: its
check, default and meaning); :func:`parse_malleability_spec` takes its checks
and defaults from there, and the docs' spec page lists it, so the two cannot
drift apart. The checks are the sweep specs' (``checks``, ``entries``): types
checked (``"retrain": "false"`` is refused, not read as true), unknown keys and
values refused with a did-you-mean, also nested (``kernel.sigma_ww``). The
parsed form keeps the values as written (only canonicalized: model aliases,
attack names in lower case, numbers as floats), because they make up the cells'
keys in existing stores.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kernelattn.experiments.specs.checks import (
    SpecError,
    check_bool,
    check_cell_count,
    check_choice,
    check_int,
    check_keys,
    check_mapping,
    check_real,
    check_str,
    join_path,
    naming_source,
    nullable,
    show,
)
from kernelattn.experiments.specs.entries import parse_dataset
from kernelattn.experiments.specs.files import check_store_name, read_spec_file
from kernelattn.experiments.specs.malleability_schema import (
    MALLEABILITY_HEAD_KEYS,
    MALLEABILITY_KEYS,
    MALLEABILITY_KEYSPECS,
    MALLEABILITY_MODEL_OPTIONS,
    MAX_MALLEABILITY_SEED_COUNT,
    MODEL_OPTION_CHECKS,
    PLURAL_KEYS,
    SINGULAR_KEYS,
    VARIANT_FIXED_KEYS,
    malleability_choices,
)
from kernelattn.experiments.specs.sweep import KERNEL_CHECKS
from kernelattn.registry import MODEL_ALIASES, REQUIRED

__all__ = ["MalleabilitySpec", "malleability_cells", "malleability_variants", "parse_malleability_spec"]


@dataclasses.dataclass(frozen=True)
class MalleabilitySpec:
    """A validated malleability spec.

    Attributes:
      name: the store name (``None`` when the spec has none: the caller names the store).
      description: free text.
      plans: ``(label, parsed)`` per variant, "default" first; ``parsed`` is
        the plain dict ``kernelattn.experiments.malleability`` runs (lists of datasets,
        models, widths, seeds, modes, kernels, attacks, epsilons,
        interventions, attack targets, nulls and the shared settings).
      n_cells: the number of cells over all variants (cells shared by
        variants counted once per variant: an upper bound).
      source: the file it was read from, if any.
    """

    name: str | None
    description: str
    plans: tuple[tuple[str, dict], ...]
    n_cells: int
    source: str | None = None


def _config_section(
    value: Any, path: str, checks: Mapping[str, Callable[[Any, str], Any]], build: Callable, what: str
) -> dict[str, Any]:
    """A ``{field: value}`` section (``training``, ``attack_config``, ``kernel``): keys and values checked,
    then ``build(**section)`` run as a final check; the section as written is returned."""
    if value is None:
        return {}
    section = check_mapping(value, path, what)
    check_keys(section, path, tuple(checks))
    for key, item in section.items():
        checks[key](item, join_path(path, key))
    try:
        build(**section)
    except ValueError as err:  # a combination only the class judges (e.g. bounds lo < hi)
        raise SpecError(path, str(err)) from None
    return dict(section)


def _bounds(value: Any, path: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SpecError(path, f"expected [lo, hi], got {show(value)}")
    lo, hi = (check_real(v, join_path(path, i)) for i, v in enumerate(value))
    if not lo < hi:
        raise SpecError(path, f"expected lo < hi, got {show(list(value))}")
    return lo, hi


def _malleability_model(value: Any, path: str, choices: Sequence[str]) -> Any:
    """A model name (aliases resolved) or ``{"name": ..., options}`` with the name resolved."""
    aliases = {alias: name for alias, name in MODEL_ALIASES.items() if name in choices}
    if isinstance(value, str):
        return check_choice(value, path, choices, aliases)
    entry = check_mapping(value, path, "a model name or entry")
    if "name" not in entry:
        raise SpecError(join_path(path, "name"), "required key is missing")
    name = check_choice(entry["name"], join_path(path, "name"), choices, aliases)
    check_keys(entry, path, MALLEABILITY_MODEL_OPTIONS[name], context=f"for model {name!r}")
    for key, item in entry.items():
        if key != "name":
            MODEL_OPTION_CHECKS[key](item, join_path(path, key))
    return {**dict(entry), "name": name}


def _malleability_dataset(value: Any, path: str) -> tuple[dict[str, Any], str]:
    """(``kernelattn.data.load`` keyword arguments, table label) of one dataset entry."""
    parsed = parse_dataset(value, path)  # the sweep's checks: keys, types, source options
    entry = dict(value)
    label = (
        str(entry["label"])
        if entry.get("label")
        else (
            parsed.name + ("" if entry.get("classes") is None else " " + "-vs-".join(str(c) for c in entry["classes"]))
        )
    )
    kwargs = {"normalize": False, **{k: v for k, v in entry.items() if k not in ("label", "target")}}
    return kwargs, label


def _one_or_many(
    top: Mapping[str, Any], plural: str, default: Any, where: Callable[[str], str], allow_empty: bool = False
) -> tuple[list, Callable[[int], str]]:
    """The values of ``plural`` (or its singular spelling), and the path of the i-th."""
    singular = PLURAL_KEYS.get(plural)
    if singular is not None and plural in top and singular in top:
        raise SpecError(where(plural), f"give either {plural!r} or {singular!r}, not both")
    key = plural if plural in top else singular if singular is not None and singular in top else None
    if key is None:
        return list(default), (lambda i: where(plural))
    value = top[key]
    if isinstance(value, (list, tuple)):
        if not value and not allow_empty:
            raise SpecError(where(key), "expected a non-empty list, got []")
        return list(value), (lambda i: join_path(where(key), i))
    if plural == "null_baselines":  # no one-value spelling: a string here is a mistake, not a list of letters
        raise SpecError(where(key), f'expected a list (e.g. ["seed", "order"], or [] for none), got {show(value)}')
    return [value], (lambda i: where(key))


def _parse_malleability_body(top: Mapping[str, Any], where: Callable[[str], str], choices: Mapping[str, Any]) -> dict:
    """One variant's spec (base merged with its overrides) → the parsed dict; ``where(key)`` is the path
    of a top-level key in the user's file (``variants[i].key`` for an override)."""
    for key in top:
        if key not in MALLEABILITY_KEYS:
            hint = difflib.get_close_matches(key, list(MALLEABILITY_KEYS), n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise SpecError(
                where(key), f"unknown key of a malleability spec{suggestion} (allowed: {', '.join(MALLEABILITY_KEYS)})"
            )

    schema = MALLEABILITY_KEYSPECS  # defaults and checks of the keys

    def many(plural, check=None, default=None):
        """The checked values of a list key (``check``, ``default``: the schema's unless given)."""
        key = schema[plural]
        default = key.default if default is None else default
        values, path_of = _one_or_many(top, plural, () if default is REQUIRED else default, where, key.allow_empty)
        check = check or (lambda v, p: key.check(v, p, choices))
        return [check(v, path_of(i)) for i, v in enumerate(values)]

    def one(name):
        key = schema[name]
        return key.check(top[name], where(name), choices) if name in top else key.default

    entries = many("datasets", _malleability_dataset)
    if not entries:
        raise SpecError(where("datasets"), 'required key is missing (e.g. "datasets": [{"name": "digits"}])')
    attack_config = _config_section(
        top.get("attack_config"),
        where("attack_config"),
        {
            "steps": lambda v, p: check_int(v, p, minimum=1),
            "step_size": nullable(lambda v, p: check_real(v, p, minimum=0.0, strict=True)),
            "random_start": check_bool,
            "momentum": lambda v, p: check_real(v, p, minimum=0.0),
            "target": lambda v, p: check_choice(v, p, choices["attack_targets"]),
            "bounds": _bounds,
        },
        _attack_config_class(),
        "an attack_config object",
    )
    training = _config_section(
        top.get("training"),
        where("training"),
        {
            "learning_rate": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
            "batch_size": lambda v, p: check_int(v, p, minimum=1),
            "epochs": lambda v, p: check_int(v, p, minimum=0),
            "weight_decay": lambda v, p: check_real(v, p, minimum=0.0),
            "loss": lambda v, p: check_choice(v, p, choices["losses"]),
            "weight_decay_mode": lambda v, p: check_choice(v, p, choices["decay_modes"]),
            "binary_output": lambda v, p: check_choice(v, p, choices["binary_outputs"]),
        },
        _train_config_class(),
        "a training object",
    )
    head = _config_section(
        top.get("kernel"),
        where("kernel"),
        {k: KERNEL_CHECKS[k] for k in MALLEABILITY_HEAD_KEYS},
        lambda **_: None,
        "a kernel object (the head: readout, sigma_w, sigma_b, sigma_a)",
    )
    seeds_value = top.get("seeds", top.get("seed"))
    if "seeds" in top and "seed" in top:
        raise SpecError(where("seeds"), "give either 'seeds' or 'seed', not both")
    if isinstance(seeds_value, (list, tuple)):
        seeds = many("seeds")
        if len(set(seeds)) != len(seeds):
            raise SpecError(where("seeds" if "seeds" in top else "seed"), f"expected distinct seeds, got {seeds}")
    elif "seeds" in top:
        seeds = list(range(check_int(seeds_value, where("seeds"), minimum=1, maximum=MAX_MALLEABILITY_SEED_COUNT)))
    elif "seed" in top:
        seeds = [schema["seeds"].check(seeds_value, where("seed"))]
    else:
        seeds = list(schema["seeds"].default)
    parsed = {
        "datasets": [kwargs for kwargs, _ in entries],
        "dataset_labels": [label for _, label in entries],
        "tau": one("tau"),
        "ridge": one("ridge"),
        "influence": one("influence"),
        "targets": one("targets"),
        "retrain": one("retrain"),
        "dtype": one("dtype"),
        "precision": one("precision"),
        "head": head,
        "training": training,
        "attack_config": {k: v for k, v in attack_config.items() if k != "target"},
        "at_epsilon": one("at_epsilon"),
        "seeds": seeds,
        "models": many("models", lambda v, p: _malleability_model(v, p, schema["models"].allowed(choices))),
        "widths": many("widths"),
        "modes": many("training_modes"),
        "kernels": many("influence_kernels"),
        "attacks": many("attacks"),
        "epsilons": many("epsilons"),
        "interventions": many("interventions"),
        # attack_config's target, when given, is the default target
        "attack_targets": many(
            "attack_targets", default=[attack_config.get("target", *schema["attack_targets"].default)]
        ),
        "nulls": many("null_baselines"),
    }
    if "kernel" in parsed["attack_targets"] and not set(parsed["kernels"]) <= set(choices["ridge_kernels"]):
        raise SpecError(
            where("attack_targets"),
            f"'kernel' needs every influence kernel in "
            f"{list(choices['ridge_kernels'])}, got influence_kernels "
            f"{parsed['kernels']}",
        )
    for i, model in enumerate(parsed["models"]):
        rank = model.get("rank") if isinstance(model, Mapping) else None
        for j, dataset in enumerate(parsed["datasets"]):
            n_train = dataset.get("n_train")
            if rank is not None and n_train is not None and rank > n_train:
                raise SpecError(
                    f"{where('models')}[{i}].rank", f"expected <= n_train of datasets[{j}] ({n_train}), got {rank}"
                )
    return parsed


def _train_config_class():
    from kernelattn.learning.training import TrainConfig  # deferred: it loads JAX and optax

    return TrainConfig


def _attack_config_class():
    from kernelattn.learning.attacks import AttackConfig  # deferred: it loads JAX

    return AttackConfig


def malleability_cells(parsed: Mapping[str, Any]) -> int:
    """The number of cells of one parsed variant (see ``kernelattn.experiments.malleability``)."""
    per_group = sum(
        1 if i == "curated" else len(parsed["attack_targets"]) * len(parsed["attacks"]) * len(parsed["epsilons"])
        for i in parsed["interventions"]
    ) + len(parsed["nulls"])
    groups = (
        len(parsed["datasets"])
        * len(parsed["seeds"])
        * len(parsed["models"])
        * len(parsed["widths"])
        * len(parsed["modes"])
        * len(parsed["kernels"])
    )
    return groups * per_group


def malleability_variants(spec: Mapping[str, Any]) -> list[tuple[str, dict, dict]]:
    """The spec itself ("default") and each of its ``"variants"``: (label, merged spec, overrides).

    A variant is a mapping with a unique non-empty ``"label"`` and overrides
    of any spec key but ``name``/``kind``/``description``/``variants``;
    ``"n_train"`` sets every dataset's training-set size. An override of a
    plural key replaces its singular spelling too, and vice versa.
    """
    top = check_mapping(spec, "", "a malleability spec object")
    base = {k: v for k, v in top.items() if k != "variants"}
    out: list[tuple[str, dict, dict]] = [("default", base, {})]
    variants = top.get("variants")
    if variants is None:
        return out
    if not isinstance(variants, (list, tuple)):
        raise SpecError("variants", f'expected a list of {{"label": ..., overrides}} objects, got {show(variants)}')
    allowed = (*tuple(k for k in MALLEABILITY_KEYS if k not in VARIANT_FIXED_KEYS), "label", "n_train")
    for i, variant in enumerate(variants):
        path = f"variants[{i}]"
        entry = check_mapping(variant, path, "a variant object")
        label = entry.get("label")
        if not isinstance(label, str) or not label.strip():
            raise SpecError(join_path(path, "label"), f"expected a non-empty string, got {show(label)}")
        if any(label == other for other, _, _ in out):
            raise SpecError(join_path(path, "label"), f"expected a unique label, got {label!r} twice")
        fixed = sorted(set(entry) & set(VARIANT_FIXED_KEYS))
        if fixed:
            raise SpecError(path, f"a variant cannot override {fixed} (they name the spec)")
        check_keys(entry, path, allowed, context="of a variant")
        overrides = {k: v for k, v in entry.items() if k != "label"}
        n_train = overrides.pop("n_train", None)
        merged = {
            k: v
            for k, v in base.items()
            if k not in overrides and PLURAL_KEYS.get(k) not in overrides and SINGULAR_KEYS.get(k) not in overrides
        }
        merged.update(overrides)
        if n_train is not None:
            n_train = check_int(n_train, join_path(path, "n_train"), minimum=2)
            datasets = merged.pop("datasets", merged.pop("dataset", None))
            datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
            merged["datasets"] = [{**d, "n_train": n_train} if isinstance(d, Mapping) else d for d in datasets]
            overrides["datasets"] = merged["datasets"]
        out.append((label, merged, overrides))
    return out


def parse_malleability_spec(
    spec: Mapping[str, Any] | str | os.PathLike[str], *, source: str | None = None, max_cells: int | None = None
) -> MalleabilitySpec:
    """Validate a malleability spec (a dict, or the path of its JSON file) and every variant.

    Args:
      spec: the spec (format: ``kernelattn.experiments.malleability.run_malleability_spec``).
      source: the file it came from, for messages.
      max_cells: largest number of cells accepted (default
        ``$KERNELATTN_MAX_CELLS`` or ``DEFAULT_MAX_CELLS`` = 100,000).

    Returns:
      A :class:`MalleabilitySpec`.

    Raises:
      SpecError: the first problem, naming its key path (``variants[1].epsilons[0]``).
    """
    if isinstance(spec, (str, os.PathLike)):
        source = os.fspath(spec)
        spec = read_spec_file(spec)
    return naming_source(_parse_malleability, spec, source, max_cells)


def _parse_malleability(spec: Any, source: str | None, max_cells: int) -> MalleabilitySpec:
    top = check_mapping(spec, "", "a malleability spec object")
    name = check_store_name(top["name"]) if "name" in top else None
    if "kind" in top and top["kind"] != "malleability":
        raise SpecError("kind", f"expected 'malleability' (or no kind), got {show(top['kind'])}")
    description = check_str(top.get("description", MALLEABILITY_KEYSPECS["description"].default), "description")
    choices = malleability_choices()
    plans = []
    for i, (label, merged, overrides) in enumerate(malleability_variants(top)):
        where = (
            (lambda key: key)
            if i == 0
            else (lambda key, i=i, overrides=overrides: f"variants[{i - 1}].{key}" if key in overrides else key)
        )
        plans.append((label, _parse_malleability_body(merged, where, choices)))
    counts = [malleability_cells(parsed) for _, parsed in plans]
    breakdown = (
        " + ".join(f"{n:,} ({label})" for (label, _), n in zip(plans, counts))
        if len(plans) > 1
        else "datasets × seeds × models × widths × training modes × influence kernels × (attack cells + nulls)"
    )
    check_cell_count(sum(counts), max_cells, breakdown)
    return MalleabilitySpec(name, description, tuple(plans), sum(counts), source)
