"""The spec-format page, read from the validators at build time.

Two spec formats exist, and both tables are generated from the code:

- sweep specs (``kernelattn sweep``, ``kernelattn.run_sweep``, ``kernelattn.load_spec``): the key
  names come from the validator's public tables, which the package ``kernelattn.experiments.specs``
  re-exports (``SWEEP_KEYS``, ``KERNEL_CHECKS``, ``TRAINING_CHECKS``, ``DATASET_KEYS``, ``MODEL_OPTIONS``,
  ``source_options``); what each key accepts is the validator's own words, obtained by giving
  it a value no check accepts; defaults are what ``parse_spec`` fills in (``Spec.to_dict()`` of
  a minimal spec); meanings are the ``Attributes:`` of the dataclasses the keys land in; the
  annotated example is the docstring of the module defining ``parse_spec``.
- malleability specs (``kernelattn malleability``, ``kernelattn.run_malleability_spec``): the
  keys, defaults, checks and meanings are the same package's ``MALLEABILITY_SCHEMA`` (``KeySpec``
  entries), the declaration ``parse_malleability_spec`` takes its checks and defaults from, with
  the allowed values of ``malleability_choices()``; the generator checks it against the validator
  (the declared keys are the allowed ones, a minimal spec parses to the declared defaults, each
  declared check's words are the validator's message). The ``training`` / ``attack_config``
  sub-keys are the fields of ``kernelattn.TrainConfig`` / ``kernelattn.AttackConfig``.

Only public names are read (no private tables, no source code).

Anything the generator cannot find raises ``DocsGenError``, which fails the build.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import importlib
from typing import Any

from gen_common import DocsGenError, attributes_section, cell, code, kernelattn, literal_block, module_of, require


class _Probe:
    """A value that no check accepts (not a number, string, bool, list or mapping)."""

    def __repr__(self) -> str:
        return "<probe>"


PROBE = _Probe()
#: A JSON list whose one item no scalar check accepts (to see whether a key also takes a list).
LIST_PROBE = [{"probe": None}]
SWEEP_MINIMAL: dict[str, Any] = {"name": "example", "kind": "kernel", "datasets": [{"name": "digits"}],
                                 "models": [{"name": "relu"}], "widths": [4]}
MALLEABILITY_MINIMAL: dict[str, Any] = {"datasets": [{"name": "digits"}]}
#: A string that no choice allows and no number check accepts.
PROBE_TEXT = "<probe>"
#: The package whose public names declare every spec format (it re-exports those of its modules).
SPECS = "kernelattn.experiments.specs"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def specs_package():
    """The package ``SPECS`` (its names are what the tables below are read from)."""
    try:
        return importlib.import_module(SPECS)
    except ImportError as err:
        raise DocsGenError(f"cannot import {SPECS}, the spec schemas ({err}); update docs/_gen/spec_page.py") from None


def _expected(problem: str) -> str:
    """The validator's message without the echo of the bad value."""
    return problem.rsplit(", got ", 1)[0] if ", got " in problem else problem


# ============================================================================ sweep specs


class _SweepSchema:
    def __init__(self, ka) -> None:
        self.ka = ka
        self.specs = specs_package()
        what = "the sweep-spec validator's key table"
        self.parse = require(self.specs, "parse_spec", "the sweep-spec validator")
        self.format_module = module_of(self.parse, f"{SPECS}.parse_spec")
        self.top = tuple(require(self.specs, "SWEEP_KEYS", what))
        self.kernel = tuple(require(self.specs, "KERNEL_CHECKS", what))
        self.training = tuple(require(self.specs, "TRAINING_CHECKS", what))
        self.dataset_common = tuple(require(self.specs, "DATASET_KEYS", what))
        self.model_options = dict(require(self.specs, "MODEL_OPTIONS", what))
        self.source_options = require(self.specs, "source_options", what)
        self.dataset_names = tuple(require(self.specs, "DATASET_NAMES", "the dataset names"))
        self.model_names = tuple(require(self.specs, "MODEL_NAMES", "the model names"))
        self.metrics = dict(require(self.specs, "METRICS", "the metric groups"))
        self.kinds = tuple(require(self.specs, "KINDS", "the spec kinds"))
        for name in ("Spec", "DatasetSpec", "ModelSpec", "KernelOptions", "TrainingOptions"):
            cls = require(self.specs, name, "the parsed spec's dataclasses")
            if not dataclasses.is_dataclass(cls):
                raise DocsGenError(f"{self.specs.__name__}.{name} is no longer a dataclass")
        if not self.top or not self.kernel or not self.training or not self.dataset_common:
            raise DocsGenError(f"an empty key table in {self.specs.__name__}")
        self.normalized = {kind: self._parse(self._spec(kind=kind)).to_dict() for kind in self.kinds}

    # --- probing
    def _spec(self, **changes) -> dict:
        spec = json.loads(json.dumps(SWEEP_MINIMAL))
        spec.update(changes)
        return spec

    def _parse(self, spec: dict):
        try:
            return self.parse(spec)
        except self.ka.SpecError as err:
            raise DocsGenError(f"the sweep-spec validator rejects the generator's example {spec}: {err}") from None

    def _error(self, spec: dict) -> Any:
        try:
            self.parse(spec)
        except self.ka.SpecError as err:
            return err
        return None

    def accepts(self, spec: dict, path: str, replace) -> str:
        """What the validator says the key at ``path`` accepts (replace(spec, value) puts a value there)."""
        err = self._error(replace(spec, PROBE))
        if err is None:
            raise DocsGenError(f"the sweep-spec validator accepts any value at {path}; "
                               "the spec page cannot say what it expects")
        if err.path != path:
            raise DocsGenError(f"probing {path}, the sweep-spec validator complained about {err.path!r}: {err}")
        text = _expected(err.problem)
        item = self._error(replace(spec, LIST_PROBE))
        if item is not None and item.path == f"{path}[0]" and "list" not in text:
            text += f"; or a list, each {_expected(item.problem).removeprefix('expected ')}"
        if "null" not in text and self._error(replace(spec, None)) is None:
            text += "; or null"
        return text

    def required(self, spec: dict, remove, path: str) -> bool:
        err = self._error(remove(spec))
        return err is not None and err.path == path and "missing" in err.problem

    # --- tables
    def doc(self, cls_name: str) -> dict[str, str]:
        return attributes_section(inspect.getdoc(getattr(self.specs, cls_name)) or "")

    def top_rows(self) -> list[str]:
        doc = self.doc("Spec")
        rows = []
        for key in self.top:
            kind = "training" if key == "training" else "kernel"
            base = self._spec(kind=kind)

            def put(spec, value, key=key):
                return {**spec, key: value}

            def drop(spec, key=key):
                return {k: v for k, v in spec.items() if k != key}

            accepted = self.accepts(base, key, put)
            if self.required(base, drop, key):
                default = "**required**"
            elif key in ("kernel", "training"):
                default = f"[see below](#{key})"
            else:
                value = self.normalized[kind][key]
                default = ("all groups of the kind ([below](#metrics))" if key == "metrics"
                           and value == list(self.metrics[kind]) else code(_json(value)))
            note = " (kind `\"training\"` only)" if key == "training" else ""
            rows.append(f"| {code(key)} | {default} | {cell(accepted)}{note} | {cell(doc.get(key, ''))} |")
        return rows

    def section_rows(self, section: str, keys: tuple[str, ...], cls_name: str, fallback=None) -> list[str]:
        """Rows of the ``kernel`` / ``training`` section; ``fallback``: a class whose docs an "as in" entry cites."""
        doc = self.doc(cls_name)
        cited = attributes_section(inspect.getdoc(fallback) or "") if fallback is not None else {}
        kind = "training" if section == "training" else "kernel"
        rows = []
        for key in keys:
            def put(spec, value, key=key):
                return {**spec, section: {key: value}}

            accepted = self.accepts(self._spec(kind=kind), f"{section}.{key}", put)
            default = code(_json(self.normalized[kind][section][key]))
            meaning = doc.get(key, "")
            if fallback is not None and meaning.startswith("as in") and cited.get(key):
                meaning = cited[key]
            rows.append(f"| {code(key)} | {default} | {cell(accepted)} | {cell(meaning)} |")
        return rows

    def dataset_rows(self) -> tuple[list[str], list[str]]:
        doc = self.doc("DatasetSpec")
        defaults = self.normalized["kernel"]["datasets"][0]
        common = []
        for key in self.dataset_common:
            def put(spec, value, key=key):
                return {**spec, "datasets": [{"name": "digits", key: value}]}

            def drop(spec, key=key):
                return {**spec, "datasets": [{k: v for k, v in {"name": "digits"}.items() if k != key}]}

            path = f"datasets[0].{key}"
            accepted = self.accepts(self._spec(), path, put)
            if self.required(self._spec(), drop, path):
                default = "**required**"
            elif key == "label":
                default = "derived from `name`"
            else:
                default = code(_json(defaults[key]))
            common.append(f"| {code(key)} | {default} | {cell(accepted)} | {cell(doc.get(key, ''))} |")
        owners: dict[str, list[str]] = {}
        for name in self.dataset_names:
            for option in self.source_options(name):
                if option not in self.dataset_common:
                    owners.setdefault(option, []).append(name)
        if not owners:
            raise DocsGenError("no dataset-specific loader options found (source_options)")
        source = []
        for option, names in owners.items():
            def put(spec, value, option=option, name=names[0]):
                return {**spec, "datasets": [{"name": name, option: value}]}

            accepted = self.accepts(self._spec(), f"datasets[0].{option}", put)
            source.append(f"| {code(option)} | {', '.join(code(n) for n in names)} | {cell(accepted)} |")
        return common, source

    def model_rows(self) -> list[str]:
        doc = self.doc("ModelSpec")
        keys: list[str] = []
        for options in self.model_options.values():
            keys += [k for k in options if k not in keys]
        rows = []
        for key in keys:
            owners = [m for m in self.model_names if key in self.model_options.get(m, ())]
            if not owners:
                raise DocsGenError(f"model option {key!r} belongs to no model of MODEL_NAMES")

            def put(spec, value, key=key, model=owners[0]):
                return {**spec, "models": [{"name": model, key: value}]}

            def drop(spec, key=key, model=owners[0]):
                return {**spec, "models": [{k: v for k, v in {"name": model}.items() if k != key}]}

            path = f"models[0].{key}"
            accepted = self.accepts(self._spec(), path, put)
            if self.required(self._spec(), drop, path):
                default = "**required**"
            elif key == "label":
                default = "derived from `name`"
            else:
                per_model = {}
                for model in owners:
                    entry = self._parse(self._spec(models=[{"name": model}])).to_dict()["models"][0]
                    per_model[model] = entry[key]
                values = set(map(_json, per_model.values()))
                default = (code(values.pop()) if len(values) == 1 else
                           "; ".join(f"{m}: {code(_json(v))}" for m, v in per_model.items()))
            models = "all" if len(owners) == len(self.model_names) else ", ".join(code(m) for m in owners)
            rows.append(f"| {code(key)} | {models} | {default} | {cell(accepted)} | {cell(doc.get(key, ''))} |")
        return rows


def sweep_section(ka) -> list[str]:
    schema = _SweepSchema(ka)
    _, example = literal_block(inspect.getdoc(schema.format_module) or "",
                               f"{schema.format_module.__name__} (module docstring)", starts="{")
    header = "| key | default | accepts (the validator's words) | meaning |\n|---|---|---|---|"
    common, source = schema.dataset_rows()
    metric_rows = [f"| {code(kind)} | {', '.join(code(m) for m in groups)} |" for kind, groups in schema.metrics.items()]
    return [
        "## Sweep specs",
        "",
        "Read by `kernelattn sweep SPEC`, [`kernelattn.run_sweep`][kernelattn.run_sweep] and "
        "[`kernelattn.load_spec`][kernelattn.load_spec]; the files under `experiments/` are examples. "
        "A spec is validated completely when it is loaded, and an error names the key path, e.g. "
        "`models[1].depth: expected an integer >= 1, got 0`; unknown keys are errors too "
        "(with a did-you-mean).",
        "",
        "### Annotated example",
        "",
        "From the validator's module docstring (`#` comments are annotations, not JSON):",
        "",
        "```text",
        example,
        "```",
        "",
        *_prose_after_block(inspect.getdoc(schema.format_module) or ""),
        "### Top-level keys",
        "",
        header,
        *schema.top_rows(),
        "",
        "### `datasets`",
        "",
        "A list of entries (a single object is taken as a one-entry list). Keys of every entry "
        "(the options of [`kernelattn.data.load`][kernelattn.data.load]):",
        "",
        header,
        *common,
        "",
        "Dataset-specific loader options (their meaning and defaults: "
        "[`kernelattn.data.load`][kernelattn.data.load]); not listed means the loader's default:",
        "",
        "| key | datasets | accepts (the validator's words) |",
        "|---|---|---|",
        *source,
        "",
        "### `models`",
        "",
        "A list of entries, each with a `name` (aliases such as `\"2l-relu\"`, `\"attn\"`, `\"qkv\"` "
        "are accepted) and the options of that model:",
        "",
        "| key | models | default | accepts (the validator's words) | meaning |",
        "|---|---|---|---|---|",
        *schema.model_rows(),
        "",
        "### `kernel`",
        "",
        header,
        *schema.section_rows("kernel", schema.kernel, "KernelOptions"),
        "",
        "### `training`",
        "",
        "Only with `\"kind\": \"training\"` (paper Table 1): the fields of "
        "[`kernelattn.TrainConfig`][kernelattn.TrainConfig] (meanings from there) and the NTK predictor's time.",
        "",
        header,
        *schema.section_rows("training", schema.training, "TrainingOptions", fallback=ka.TrainConfig),
        "",
        "### `metrics`",
        "",
        "The metric groups computed per cell, by kind (`null` selects all of them):",
        "",
        "| kind | metric groups |",
        "|---|---|",
        *metric_rows,
        "",
    ]


def _prose_after_block(doc: str) -> list[str]:
    """The module docstring's paragraphs after the annotated example (notes on the format)."""
    lines = doc.splitlines()
    blocks = [i for i, line in enumerate(lines) if line.rstrip().endswith("::")
              and next((f.strip() for f in lines[i + 1:] if f.strip()), "").startswith("{")]
    if not blocks:
        return []
    start = blocks[0]
    i = start + 1
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
        i += 1
    text = "\n".join(lines[i:]).strip()
    return [_rst_to_md(text), ""] if text else []


def _rst_to_md(text: str) -> str:
    return text.replace("``", "`")


# ============================================================================ malleability specs


class _MalleabilitySchema:
    """The malleability spec's declaration (``MALLEABILITY_SCHEMA``), checked against its validator."""

    def __init__(self, ka) -> None:
        self.ka = ka
        self.specs = specs_package()
        what = "the malleability spec's schema"
        self.schema = tuple(require(self.specs, "MALLEABILITY_SCHEMA", what))
        self.keys = tuple(require(self.specs, "MALLEABILITY_KEYS", what))
        self.parse = require(self.specs, "parse_malleability_spec", "the malleability-spec validator")
        self.choices = require(self.specs, "malleability_choices", what)()
        self.required_marker = require(self.specs, "REQUIRED", "the marker of a required key")
        self.head_keys = tuple(require(self.specs, "MALLEABILITY_HEAD_KEYS", "the head options of its kernel section"))
        self.fixed = tuple(require(self.specs, "VARIANT_FIXED_KEYS", "the keys a variant may not override"))
        runner = module_of(ka.run_malleability_spec, "kernelattn.run_malleability_spec")
        variants = inspect.getdoc(require(runner, "spec_variants", "the variants' expansion")) or ""
        self.variants_doc = variants.split("\nRaises:", 1)[0].split("\nArgs:", 1)[0].strip()
        if not self.variants_doc:
            raise DocsGenError(f"{runner.__name__}.spec_variants has no docstring (the spec page's variants)")
        if not self.schema:
            raise DocsGenError(f"{self.specs.__name__}.MALLEABILITY_SCHEMA is empty")
        for key in self.schema:
            for attr in ("name", "type", "default", "doc", "singular", "parsed", "text", "type_text"):
                if not hasattr(key, attr):
                    raise DocsGenError(f"{self.specs.__name__}.MALLEABILITY_SCHEMA entries have no {attr!r} "
                                       "any more; update docs/_gen/spec_page.py")
        declared = [k for key in self.schema for k in (key.name, key.singular) if k]
        if sorted(declared) != sorted(self.keys):
            raise DocsGenError(f"MALLEABILITY_SCHEMA declares {declared}, the validator allows {list(self.keys)}")
        self.plan = self._parse(MALLEABILITY_MINIMAL)
        self._check_defaults()
        self._check_texts()

    # --- the declaration checked against the validator's behaviour
    def _parse(self, spec: dict) -> dict:
        try:
            return self.parse(spec).plans[0][1]
        except self.ka.SpecError as err:
            raise DocsGenError(f"the malleability-spec validator rejects {spec}: {err}") from None

    def _error(self, spec: dict):
        try:
            self.parse(spec)
        except self.ka.SpecError as err:
            return err
        return None

    def is_list(self, key) -> bool:
        return key.singular is not None or isinstance(key.default, tuple)

    def _check_defaults(self) -> None:
        """The plan of a minimal spec holds every declared ``parsed`` key, with the declared default."""
        parsed = {key.parsed: key for key in self.schema if key.parsed}
        extra = set(self.plan) - set(parsed) - {"dataset_labels"}
        if extra or set(parsed) - set(self.plan):
            raise DocsGenError(f"the parsed malleability spec has keys {sorted(self.plan)}; MALLEABILITY_SCHEMA "
                               f"declares {sorted(parsed)}")
        for name, key in parsed.items():
            if key.default is self.required_marker:
                err = self._error({})
                if err is None or err.path != key.name or "missing" not in err.problem:
                    raise DocsGenError(f"malleability spec key {key.name!r} is declared required; "
                                       f"the validator says {err}")
                continue
            default = list(key.default) if isinstance(key.default, tuple) else key.default
            if _json(self.plan[name]) != _json(default):
                raise DocsGenError(f"malleability spec key {key.name!r}: declared default {_json(default)}, "
                                   f"the validator fills in {_json(self.plan[name])}")

    def _check_texts(self) -> None:
        """Each declared check's text is the validator's message for a value it refuses."""
        for key in self.schema:
            if not key.type:
                if not key.type_text:
                    raise DocsGenError(f"malleability spec key {key.name!r} says neither its type nor type_text")
                continue
            value, path = ([PROBE_TEXT], f"{key.name}[0]") if self.is_list(key) else (PROBE_TEXT, key.name)
            err = self._error({**MALLEABILITY_MINIMAL, key.name: value})
            words = key.text(self.choices)
            if err is None or err.path != path or _expected(err.problem) != f"expected {words}":
                raise DocsGenError(f"malleability spec key {key.name!r} is declared as {words!r}; the validator "
                                   f"says {err}")
            if key.nullable and self._error({**MALLEABILITY_MINIMAL, key.name: None}) is not None:
                raise DocsGenError(f"malleability spec key {key.name!r} is declared nullable; the validator "
                                   "refuses null")

    # --- tables
    def rows(self) -> list[str]:
        rows = []
        for key in self.schema:
            names = " / ".join(code(k) for k in (key.name, key.singular) if k)
            if key.default is self.required_marker:
                default = "**required**"
            elif key.default is None and not key.nullable:
                default = "—"
            else:
                default = code(_json(list(key.default) if isinstance(key.default, tuple) else key.default))
            words = key.text(self.choices)
            if self.is_list(key):
                words = f"a list{'' if not key.allow_empty else ' (may be empty)'}, each {words}"
                if key.singular:
                    words += f"; or one value as {code(key.singular)}"
            if key.nullable:
                words += "; or null"
            rows.append(f"| {names} | {default} | {cell(words)} | {cell(key.doc)} |")
        return rows

    def sub_fields(self, key: str, cls) -> list[str]:
        """Rows for a sub-mapping whose keys are a config dataclass's fields, checked by probing."""
        names = [f.name for f in dataclasses.fields(cls)]
        err = self._error({**MALLEABILITY_MINIMAL, key: {"__probe__": 1}})
        if err is None:
            raise DocsGenError(f"malleability spec {key!r} accepts unknown keys; it is no longer {cls.__name__}")
        missing = [n for n in names if n not in str(err)]
        if missing:
            raise DocsGenError(f"malleability spec {key!r}: the validator's allowed keys differ from "
                               f"{cls.__name__}'s fields ({missing} not listed): {err}")
        doc = attributes_section(inspect.getdoc(cls) or "")
        instance = cls()
        rows = []
        for field in dataclasses.fields(cls):
            value = getattr(instance, field.name)
            value = list(value) if isinstance(value, tuple) else value
            rows.append(f"| {code(field.name)} | {code(_json(value))} | {cell(doc.get(field.name, ''))} |")
        return rows


def malleability_section(ka) -> list[str]:
    schema = _MalleabilitySchema(ka)
    doc = inspect.getdoc(ka.run_malleability_spec) or ""
    _, example = literal_block(doc, "kernelattn.run_malleability_spec")
    after = doc.split(example.splitlines()[-1].strip(), 1)[-1]
    notes = after.split("Args:", 1)[0].strip()
    return [
        "## Malleability specs",
        "",
        "Read by `kernelattn malleability SPEC` and "
        "[`kernelattn.run_malleability_spec`][kernelattn.run_malleability_spec], validated first by "
        "`kernelattn.experiments.specs.parse_malleability_spec` (a `SpecError` naming the key path, e.g. "
        "`variants[1].epsilons[0]`; unknown keys are errors too, with a did-you-mean); "
        "`experiments/quick/quick_malleability.json` is an example. The CLI takes `name` "
        "(default: the file's stem) as the store's name.",
        "",
        "### Annotated example",
        "",
        "From the docstring of `kernelattn.run_malleability_spec`:",
        "",
        "```text",
        example,
        "```",
        "",
        _rst_to_md(notes),
        "",
        "### Keys",
        "",
        "A list key takes a list (the cells are its product with the other lists); its singular "
        "form takes one value. The rows are `kernelattn.experiments.specs.MALLEABILITY_SCHEMA`, the declaration "
        "the validator takes its checks and defaults from.",
        "",
        "| key | default | accepts | meaning |",
        "|---|---|---|---|",
        *schema.rows(),
        "",
        "### `kernel`",
        "",
        "The head's options, as in a sweep spec's [`kernel`](#kernel) section; only "
        f"{', '.join(code(k) for k in schema.head_keys)} are allowed here.",
        "",
        "### `training`",
        "",
        "The fields of [`kernelattn.TrainConfig`][kernelattn.TrainConfig] (unknown keys are an error):",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
        *schema.sub_fields("training", ka.TrainConfig),
        "",
        "### `attack_config`",
        "",
        "The fields of [`kernelattn.AttackConfig`][kernelattn.AttackConfig] (unknown keys are an error):",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
        *schema.sub_fields("attack_config", ka.AttackConfig),
        "",
        "### `variants`",
        "",
        _rst_to_md(schema.variants_doc),
        "",
        f"Keys a variant may not override: {', '.join(code(k) for k in schema.fixed)}.",
        "",
    ]


def render() -> str:
    ka = kernelattn()
    return "\n".join([
        "# Spec formats",
        "",
        "Experiments are described by JSON specs. This page is generated when the site is built, "
        "from the validators themselves: the key names, what each key accepts (in the validator's "
        "own words), the defaults and the allowed values cannot drift from the code.",
        "",
        *sweep_section(ka),
        *malleability_section(ka),
    ])


if __name__ == "__main__":
    print(render())
