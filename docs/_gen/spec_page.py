"""The spec-format page, read from the validators at build time.

Two spec formats exist, and both tables are generated from the code:

- sweep specs (``kernelattn sweep``, ``kernelattn.run_sweep``, ``kernelattn.load_spec``): the key
  names come from the validator's tables in the module defining ``kernelattn.load_spec``
  (``_TOP_KEYS``, ``_KERNEL_CHECKS``, ``_TRAINING_CHECKS``, ``_DATASET_COMMON``, ``_MODEL_OPTIONS``,
  ``_source_options``); what each key accepts is the validator's own words, obtained by giving
  it a value no check accepts; defaults are what ``parse_spec`` fills in (``Spec.to_dict()`` of
  a minimal spec); meanings are the ``Attributes:`` of the dataclasses the keys land in.
- malleability specs (``kernelattn malleability``, ``kernelattn.run_malleability_spec``): the
  keys are the module's ``SPEC_KEYS``; defaults and checks are read from the source of
  ``validate_spec`` and the functions it calls (``spec.get(key, default)``,
  ``helper(spec, plural, singular, default)``, ``check_*(value, "key", ...)``), choice
  constants resolved in the module; the ``training`` / ``attack_config`` sub-keys are the
  fields of ``kernelattn.TrainConfig`` / ``kernelattn.AttackConfig``.

Anything the generator cannot find raises ``DocsGenError``, which fails the build.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
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


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _expected(problem: str) -> str:
    """The validator's message without the echo of the bad value."""
    return problem.rsplit(", got ", 1)[0] if ", got " in problem else problem


# ============================================================================ sweep specs


class _SweepSchema:
    def __init__(self, ka) -> None:
        self.ka = ka
        self.specs = module_of(ka.load_spec, "kernelattn.load_spec")
        what = "the sweep-spec validator's key table"
        self.parse = require(self.specs, "parse_spec", "the sweep-spec validator")
        self.top = tuple(require(self.specs, "_TOP_KEYS", what))
        self.kernel = tuple(require(self.specs, "_KERNEL_CHECKS", what))
        self.training = tuple(require(self.specs, "_TRAINING_CHECKS", what))
        self.dataset_common = tuple(require(self.specs, "_DATASET_COMMON", what))
        self.model_options = dict(require(self.specs, "_MODEL_OPTIONS", what))
        self.source_options = require(self.specs, "_source_options", what)
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
            raise DocsGenError("no dataset-specific loader options found (_source_options)")
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
    _, example = literal_block(inspect.getdoc(schema.specs) or "", f"{schema.specs.__name__} (module docstring)",
                                   starts="{")
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
        *_prose_after_block(inspect.getdoc(schema.specs) or ""),
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


@dataclasses.dataclass
class _KeyInfo:
    key: str
    aliases: list[str] = dataclasses.field(default_factory=list)
    default: str | None = None
    checks: list[str] = dataclasses.field(default_factory=list)
    wrapper: str | None = None
    group: list[str] = dataclasses.field(default_factory=list)


class _MalleabilitySchema:
    def __init__(self, ka) -> None:
        self.ka = ka
        self.module = module_of(ka.run_malleability_spec, "kernelattn.run_malleability_spec")
        self.keys = tuple(require(self.module, "SPEC_KEYS", "the malleability spec's keys"))
        self.validate = require(self.module, "validate_spec", "the malleability-spec validator")
        if not self.keys:
            raise DocsGenError(f"{self.module.__name__}.SPEC_KEYS is empty")
        self.info = {k: _KeyInfo(k) for k in self.keys}
        self._read_source()
        self._check_example()

    # --- static reading of the validator
    def _functions(self) -> list[ast.FunctionDef]:
        """validate_spec and every function of the module it calls, transitively."""
        seen: dict[str, ast.FunctionDef] = {}
        todo = ["validate_spec"]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            obj = getattr(self.module, name, None)
            if not inspect.isfunction(obj) or obj.__module__ != self.module.__name__:
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
            node = tree.body[0]
            seen[name] = node
            todo += [n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        if len(seen) < 2:
            raise DocsGenError(f"cannot read the malleability-spec validator in {self.module.__name__}")
        return list(seen.values())

    def _value(self, node: ast.AST) -> str:
        """A default as JSON when it is a literal or a module constant, else its source text."""
        try:
            return _json(ast.literal_eval(node))
        except (ValueError, SyntaxError):
            pass
        if isinstance(node, ast.Name) and hasattr(self.module, node.id):
            value = getattr(self.module, node.id)
            if isinstance(value, (tuple, list, str, int, float, bool)) or value is None:
                return _json(list(value) if isinstance(value, tuple) else value)
        if isinstance(node, ast.Call) and self._spec_keys_of(node):  # spec.get("seeds", spec.get("seed", [0]))
            inner = node.args[-1]
            return self._value(inner)
        return ast.unparse(node)

    def _spec_keys_of(self, call: ast.Call) -> list[str]:
        """The SPEC_KEYS a call reads from the spec: spec.get(K, ...), helper(spec, K1, K2, ...)."""
        func = call.func
        reads_spec = (isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name)
                      and func.value.id == "spec") or (call.args and isinstance(call.args[0], ast.Name)
                                                        and call.args[0].id == "spec")
        if not reads_spec:
            return []
        return [a.value for a in call.args if isinstance(a, ast.Constant) and a.value in self.keys]

    def _read_source(self) -> None:
        parents: dict[ast.AST, ast.AST] = {}
        found_default = 0
        for function in self._functions():
            for node in ast.walk(function):
                for child in ast.iter_child_nodes(node):
                    parents[child] = node
            for node in ast.walk(function):
                if isinstance(node, ast.Call):
                    keys = self._spec_keys_of(node)
                    if keys:
                        last = node.args[-1]
                        has_default = not (isinstance(last, ast.Constant) and last.value in self.keys)
                        for key in keys:
                            info = self.info[key]
                            info.aliases = [k for k in keys if k != key]
                            info.group = info.group or list(keys)
                            if has_default and info.default is None:
                                info.default = self._value(last)
                                found_default += 1
                            parent = parents.get(node)
                            while isinstance(parent, ast.BoolOp):
                                parent = parents.get(parent)
                            if (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name)
                                    and parent.func.id in ("dict", "bool", "list")):
                                info.wrapper = parent.func.id
                    self._read_check(node)
                elif isinstance(node, ast.IfExp) and isinstance(node.test, ast.Compare):
                    test = node.test
                    if (isinstance(test.left, ast.Constant) and test.left.value in self.keys
                            and isinstance(test.ops[0], ast.In)):
                        info = self.info[test.left.value]
                        if info.default is None:
                            info.default = self._value(node.orelse)
                            found_default += 1
        if found_default < len(self.keys) // 2:
            raise DocsGenError(f"found defaults for only {found_default} of {len(self.keys)} malleability-spec keys "
                               f"in {self.module.__name__}.validate_spec; update docs/_gen/spec_page.py")

    def _read_check(self, call: ast.Call) -> None:
        """check_int / check_real / check_choice(value, "key" or "key[]", ...)."""
        func = call.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if not name.startswith("check_") or len(call.args) < 2 or not isinstance(call.args[1], ast.Constant):
            return
        label = str(call.args[1].value)
        key = label.removesuffix("[]")
        if key not in self.info:
            return
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        each = "each: " if label.endswith("[]") else ""
        if name == "check_choice":
            choices = self._value(call.args[2]) if len(call.args) > 2 else "?"
            text = f"{each}one of {choices}"
        elif name in ("check_int", "check_real"):
            bounds = []
            if "minimum" in kwargs:
                bounds.append(f"{'>' if kwargs.get('strict_min') else '>='} {kwargs['minimum']:g}")
            if "maximum" in kwargs:
                bounds.append(f"{'<' if kwargs.get('strict_max') else '<='} {kwargs['maximum']:g}")
            unknown = set(kwargs) - {"minimum", "maximum", "strict_min", "strict_max"}
            if unknown:
                raise DocsGenError(f"unknown arguments {sorted(unknown)} of {name} for {label!r}")
            what = "an integer" if name == "check_int" else "a number"
            text = f"{each}{what}" + (" " + " and ".join(bounds) if bounds else "")
        else:
            text = f"{name}({ast.unparse(call)})"
        if text not in self.info[key].checks:
            self.info[key].checks.append(text)

    # --- behavioural check of the static reading
    def _check_example(self) -> None:
        try:
            self.validate(MALLEABILITY_MINIMAL)
        except ValueError as err:
            raise DocsGenError(f"the malleability-spec validator rejects {MALLEABILITY_MINIMAL}: {err}") from None

    def probe(self, key: str) -> str | None:
        """The validator's message for a value no check accepts (None: accepted)."""
        spec = {k: v for k, v in MALLEABILITY_MINIMAL.items() if k not in (key, *self.info[key].aliases)}
        spec[key] = PROBE if key not in ("datasets", "dataset") else [PROBE]
        try:
            self.validate(spec)
        except (ValueError, TypeError) as err:
            text = str(err)
            return _expected(text.split(": ", 1)[1] if ": " in text else text)
        return None

    def sub_fields(self, key: str, cls) -> list[str]:
        """Rows for a sub-mapping whose keys are a config dataclass's fields, checked by probing."""
        names = [f.name for f in dataclasses.fields(cls)]
        spec = {**MALLEABILITY_MINIMAL, key: {"__probe__": 1}}
        try:
            self.validate(spec)
        except ValueError as err:
            missing = [n for n in names if n not in str(err)]
            if missing:
                raise DocsGenError(f"malleability spec {key!r}: the validator's allowed keys differ from "
                                   f"{cls.__name__}'s fields ({missing} not listed): {err}") from None
        else:
            raise DocsGenError(f"malleability spec {key!r} accepts unknown keys; it is no longer {cls.__name__}")
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
    head_keys = require(schema.module, "_HEAD_KEYS", "the head options a malleability spec's kernel section reads")
    doc = inspect.getdoc(ka.run_malleability_spec) or ""
    _, example = literal_block(doc, "kernelattn.run_malleability_spec")
    after = doc.split(example.splitlines()[-1].strip(), 1)[-1]
    notes = after.split("Args:", 1)[0].strip()
    rows = []
    listed: set[str] = set()
    for key in schema.keys:
        if key in listed:
            continue
        info = schema.info[key]
        group = [k for k in (info.group or [key]) if k not in listed]
        listed.update(group)
        checks = [c for k in group for c in schema.info[k].checks]
        default = next((schema.info[k].default for k in group if schema.info[k].default), None)
        if checks:
            accepted = "; ".join(dict.fromkeys(checks))
        elif info.wrapper == "dict":
            accepted = "an object (see below)" if key in ("training", "attack_config", "kernel") else "an object"
        elif info.wrapper == "bool":
            accepted = "true or false (any value, by truthiness)"
        else:
            accepted = schema.probe(key) or "not checked (free text)"
        if key == "variants":
            accepted = "a list of objects, each with a unique \"label\" (see below)"
        default = ("**required**" if set(group) & set(MALLEABILITY_MINIMAL) else code(default) if default else "—")
        keys = " / ".join(code(k) for k in group)
        rows.append(f"| {keys} | {default} | {cell(accepted)} |")
    fixed = require(schema.module, "_VARIANT_FIXED", "the keys a variant may not override")
    return [
        "## Malleability specs",
        "",
        "Read by `kernelattn malleability SPEC` and "
        "[`kernelattn.run_malleability_spec`][kernelattn.run_malleability_spec] (validated first by "
        "`validate_spec`, which raises a `ValueError` naming the bad key); "
        "`experiments/quick/quick_malleability.json` is an example. The CLI takes `name` "
        "(default: the file's stem) as the store's name and ignores `kind` and `description`.",
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
        "A plural key takes a list (the cells are its product with the other lists); its singular "
        "form takes one value. Defaults and checks below are read from the validator's source.",
        "",
        "| key | default | accepts |",
        "|---|---|---|",
        *rows,
        "",
        "### `kernel`",
        "",
        "The head's options, as in a sweep spec's [`kernel`](#kernel) section; only "
        f"{', '.join(code(k) for k in head_keys)} are read here.",
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
        _rst_to_md(inspect.getdoc(require(schema.module, "spec_variants", "the variants' expansion")) or ""),
        "",
        f"Keys a variant may not override: {', '.join(code(k) for k in fixed)}.",
        "",
    ]


def render() -> str:
    ka = kernelattn()
    ka.enable_x64()  # the malleability validator resolves its float64 default
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
