"""Experiment specs: JSON files under ``experiments/``, validated once into frozen dataclasses.

A spec describes a grid of cells (dataset × model × width × seed) and how to
compute each one. It is plain JSON (read with the standard library), checked
completely when loaded, and every error names the offending key path::

    models[1].depth: expected an integer >= 1, got 0
    kernel.sigma_ww: unknown key; did you mean 'sigma_w'? (allowed: ...)

Format (every key except ``name``, ``kind``, ``datasets``, ``models`` and
``widths`` is optional; defaults shown)::

    {
      "name": "quick_width_sweep",          # [A-Za-z0-9_.-]+, names the store directory
      "kind": "kernel",                     # "kernel" (Θ_m vs Θ_∞) or "training" (paper Table 1)
      "description": "",
      "datasets": [                         # kernelattn.data.load options
        {"name": "digits", "n_train": 500, "n_test": 100, "seed": 0,
         "classes": null,                   # null | [3, 8] | ["cat", "dog"] | "3-vs-8"
         "normalize": true, "scale": true,
         "target": "auto",                  # "auto" | "onehot" | "pm1"
         "label": "digits",                 # table label (default: the name, plus the options that
                                            #   tell same-named entries apart, e.g. "mlp-attn[depth=2]")
         "data_dir": null, "download": true,
         ...source options: digits: test_fraction, split_seed;
            synthetic: d, kappa, singular_values, n_classes, task, teacher_width;
            mnist/fashion_mnist/cifar10: base_url, checksums, max_bytes, system_dirs, timeout}
      ],
      "models": [
        {"name": "relu"},
        {"name": "mlp-attn", "depth": 1, "rank": null, "constant_term": false, "normalize": true},
        {"name": "qkv-attn", "head_width": "width", "scaling": "linear", "normalize": false}
      ],
      "widths": {"log2": [2, 16], "step": 1}, # or an explicit list [4, 16, 64]; 1 <= m <= 2^20
      "seeds": 5,                           # a count (0..4) or an explicit list [0, 7]
      "dtype": "float32",                   # dtype of the finite-width kernels / networks
      "precision": null,                    # matmul precision: "highest" | "fast" | null (the policy in
                                            #   force: kernelattn --precision, else "highest")
      "metrics": null,                      # subset of METRICS[kind]; null = all
      "ridge": 1e-3,                        # λ of every kernel-ridge predictor (absolute)
      "kernel": {"readout": "fixed", "sigma_w": 1.0, "sigma_b": 0.0, "sigma_a": 1.0,
                 "width_chunk": 1024, "batch_seeds": "auto",
                 "memory_gb": 2.0, "limit_width": 4096, "limit_seeds": 8,
                 "devices": 1},                 # int >= 1 or "all": shard Θ_m's width over local devices
      "training": {"learning_rate": 1e-3, "batch_size": 128, "epochs": 500,
                   "weight_decay": 1e-3, "loss": "auto", "ntk_time": null}
    }

``"target": "auto"`` means ±1 targets with one output for two classes (MSE,
as in the paper's binary tasks), one-hot for more (cross-entropy), and the
raw values for a regression task. The ``kernel`` section's head options
(readout, σ's) define the network in both kinds; ``training`` is only
allowed (and then optional) when ``kind`` is ``"training"``.

The model name also accepts kernelattn's aliases ("2l-relu", "attn", "qkv").
For "qkv-attn", ``head_width`` is the QKV width h: an integer, or "width"
(default) for h = m so that both widths grow together, which the infinite-
width limit requires. Its Θ_∞ has no closed form here and is estimated by
Monte Carlo: the mean empirical NTK over ``kernel.limit_seeds`` networks of
width ``kernel.limit_width`` (neural-tangents' backend is the exact
alternative for the tied, linearly scaled variant).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DATASET_NAMES",
    "KINDS",
    "METRICS",
    "MODEL_NAMES",
    "MAX_WIDTH",
    "DatasetSpec",
    "KernelOptions",
    "ModelSpec",
    "Spec",
    "SpecError",
    "TrainingOptions",
    "load_spec",
    "parse_spec",
]

KINDS = ("kernel", "training")
DATASET_NAMES = ("cifar10", "digits", "fashion_mnist", "mnist", "synthetic")
MODEL_NAMES = ("relu", "mlp-attn", "qkv-attn")
_MODEL_ALIASES = {"2l-relu": "relu", "mlp_attn": "mlp-attn", "attn": "mlp-attn", "qkv": "qkv-attn",
                  "qkv_attn": "qkv-attn"}
#: Metric groups computed per cell, by spec kind. ``null`` in a spec selects all.
METRICS: dict[str, tuple[str, ...]] = {
    # rel_fro: ‖Θ_m − Θ_∞‖_F/‖Θ_∞‖_F; cert: ‖Θ_m − Θ_∞‖₂/λ_min(Θ_∞);
    # spectrum: λ_min, λ_max, κ of Θ_m; krr: kernel-ridge predictor error and accuracies.
    "kernel": ("rel_fro", "cert", "spectrum", "krr"),
    # ntk_distance: ‖f_m − f_NTK‖/‖f_NTK‖; lin_distance: trains the linearized model too;
    # accuracy: test accuracy of every predictor computed.
    "training": ("ntk_distance", "lin_distance", "accuracy"),
}
#: Largest width a spec may ask for (the streaming kernels run it in O(n² + n·chunk) memory).
MAX_WIDTH = 2**20
TARGETS = ("auto", "onehot", "pm1")
READOUTS = ("fixed", "trained")
DTYPES = ("float32", "float64")
PRECISIONS = ("highest", "fast")
LOSSES = ("auto", "mse", "xent")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Loader options per dataset besides the common ones (kernelattn.data.load's **source_kwargs).
_FILE_OPTIONS = ("base_url", "checksums", "max_bytes", "system_dirs", "timeout")
_SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "mnist": _FILE_OPTIONS,
    "fashion_mnist": _FILE_OPTIONS,
    "cifar10": _FILE_OPTIONS,
    "digits": ("split_seed", "test_fraction"),
    "synthetic": ("d", "kappa", "n_classes", "singular_values", "task", "teacher_width"),
}


class SpecError(ValueError):
    """An invalid experiment spec.

    Attributes:
      path: the offending key path, e.g. ``"models[1].depth"`` (``""`` for the
        spec as a whole).
      problem: what is wrong with it.
      source: the file the spec came from, if any.
    """

    def __init__(self, path: str, problem: str, source: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {problem}" if path else f"{where}{problem}")


# --------------------------------------------------------------------------- value checks
# Each check takes (value, path) and returns the normalized value or raises SpecError.


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value)


def _int(value: Any, path: str, minimum: int | None = None, maximum: int | None = None) -> int:
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    want = "an integer" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected {want}, got {_show(value)}")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise SpecError(path, f"expected {want}, got {_show(value)}")
        value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise SpecError(path, f"expected {want}, got {value}")
    return value


def _real(value: Any, path: str, minimum: float | None = None, strict: bool = False,
          maximum: float | None = None, strict_max: bool = False) -> float:
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if strict else '>='} {minimum:g}")
    if maximum is not None:
        bounds.append(f"{'<' if strict_max else '<='} {maximum:g}")
    want = "a number" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected {want}, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(path, f"expected a finite number, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise SpecError(path, f"expected {want}, got {value:g}")
    if maximum is not None and (value > maximum or (strict_max and value == maximum)):
        raise SpecError(path, f"expected {want}, got {value:g}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"expected true or false, got {_show(value)}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"expected a string, got {_show(value)}")
    return value


def _choice(value: Any, path: str, choices: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    if isinstance(value, str):
        canonical = (aliases or {}).get(value.lower(), value.lower() if aliases else value)
        if canonical in choices:
            return canonical
        hint = difflib.get_close_matches(value, list(choices) + list(aliases or {}), n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise SpecError(path, f"expected one of {list(choices)}, got {_show(value)}{suggestion}")
    raise SpecError(path, f"expected one of {list(choices)}, got {_show(value)}")


def _optional(check: Callable[..., Any]) -> Callable[..., Any]:
    def optional(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    return optional


def _mapping(value: Any, path: str, what: str = "an object") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected {what} ({{...}}), got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(path, f"expected string keys, got {_show(key)}")
    return value


def _check_keys(mapping: Mapping[str, Any], path: str, allowed: Sequence[str], required: Sequence[str] = (),
                context: str = "") -> None:
    """Unknown keys are errors (with a did-you-mean); missing required keys too."""
    for key in mapping:
        if key not in allowed:
            hint = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            where = f" {context}" if context else ""
            raise SpecError(_join(path, key), f"unknown key{where}{suggestion} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in mapping:
            raise SpecError(_join(path, key), "required key is missing")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _json_value(value: Any, path: str) -> Any:
    """Any JSON value (no NaN/inf), returned with lists turned into tuples for hashing."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(path, f"expected a finite number, got {value}")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_json_value(v, _join(path, i)) for i, v in enumerate(value))
    if isinstance(value, Mapping):
        return _freeze_mapping(value, path)
    raise SpecError(path, f"expected a JSON value, got {type(value).__name__}")


def _thaw(value: Any) -> Any:
    """Frozen option value (tuples, ``_FrozenMapping``) back to JSON lists and dicts."""
    if isinstance(value, _FrozenMapping):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class _FrozenMapping(tuple):
    """A sorted tuple of (key, value) pairs that thaws back into a dict."""


def _freeze_mapping(value: Mapping[str, Any], path: str) -> _FrozenMapping:
    _mapping(value, path)
    return _FrozenMapping(sorted((k, _freeze(v, _join(path, k))) for k, v in value.items()))


def _freeze(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return _freeze_mapping(value, path)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, _join(path, i)) for i, v in enumerate(value))
    return _json_value(value, path)


# --------------------------------------------------------------------------- datasets


def _classes(value: Any, path: str) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise SpecError(path, "expected a non-empty class selection, got ''")
        return value
    if isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise SpecError(_join(path, i), f"expected a class index (integer) or name (string), got {_show(item)}")
            items.append(item)
        if len(items) < 2:
            raise SpecError(path, f"expected at least 2 classes, got {_show(list(value))}")
        if len(set(items)) != len(items):
            raise SpecError(path, f"expected distinct classes, got {_show(list(value))}")
        return tuple(items)
    raise SpecError(path, f"expected null, a list of class indices/names or 'a-vs-b', got {_show(value)}")


def _number_list(value: Any, path: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(path, f"expected a non-empty list of numbers, got {_show(value)}")
    return tuple(_real(v, _join(path, i), minimum=0.0, strict=True) for i, v in enumerate(value))


def _string_or_strings(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_str(v, _join(path, i)) for i, v in enumerate(value))
    raise SpecError(path, f"expected a string or a list of strings, got {_show(value)}")


_SOURCE_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "split_seed": lambda v, p: _int(v, p, minimum=0),
    "test_fraction": lambda v, p: _real(v, p, minimum=0.0, strict=True, maximum=1.0, strict_max=True),
    "d": lambda v, p: _int(v, p, minimum=1),
    "kappa": lambda v, p: _real(v, p, minimum=1.0),
    "n_classes": lambda v, p: _int(v, p, minimum=2),
    "singular_values": _number_list,
    "task": lambda v, p: _choice(v, p, ("classification", "regression")),
    "teacher_width": lambda v, p: _int(v, p, minimum=1),
    "base_url": _string_or_strings,
    "checksums": lambda v, p: _freeze_mapping(v, p),
    "max_bytes": lambda v, p: _int(v, p, minimum=1),
    "system_dirs": lambda v, p: tuple(_str(x, _join(p, i)) for i, x in enumerate(v))
    if isinstance(v, (list, tuple)) else _str(v, p),
    "timeout": lambda v, p: _real(v, p, minimum=0.0, strict=True),
}

def _source_options(name: str) -> tuple[str, ...]:
    """Loader options of dataset ``name``: kernelattn.data's list (``dataset_info``), else the table above."""
    try:
        from kernelattn.data import dataset_info

        listed = tuple(dataset_info(name)["options"])
    except Exception:  # noqa: BLE001 - the data layer unavailable: fall back to the known options
        listed = ()
    return tuple(dict.fromkeys(_SOURCE_OPTIONS.get(name, ()) + listed))


# Dataset keys with no effect on the numbers (excluded from cell identity).
_DATASET_COSMETIC = ("label", "data_dir", "download", "base_url", "system_dirs", "timeout", "max_bytes")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset entry: ``kernelattn.data.load`` options plus a table label.

    Attributes:
      name: dataset name (``DATASET_NAMES``).
      label: the name used in tables.
      classes, n_train, n_test, seed, scale, normalize, data_dir, download:
        as in ``kernelattn.data.load``.
      target: "auto" (±1 single output for two classes, one-hot for more,
        values for regression), "onehot" or "pm1".
      options: dataset-specific loader options as sorted (key, value) pairs.
    """

    name: str
    label: str
    classes: Any = None
    n_train: int | None = None
    n_test: int | None = None
    seed: int = 0
    scale: bool = True
    normalize: bool = True
    target: str = "auto"
    data_dir: str | None = None
    download: bool = True
    options: tuple = ()

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``kernelattn.data.load(self.name, **kwargs)`` (target excluded)."""
        kwargs: dict[str, Any] = {
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seed": self.seed,
            "scale": self.scale,
            "normalize": self.normalize,
            "data_dir": self.data_dir,
            "download": self.download,
        }
        if self.classes is not None:
            kwargs["classes"] = list(self.classes) if isinstance(self.classes, tuple) else self.classes
        kwargs.update({k: _thaw(v) for k, v in self.options})
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """The normalized JSON form (every key, defaults filled in)."""
        out: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "classes": list(self.classes) if isinstance(self.classes, tuple) else self.classes,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seed": self.seed,
            "scale": self.scale,
            "normalize": self.normalize,
            "target": self.target,
            "data_dir": self.data_dir,
            "download": self.download,
        }
        out.update({k: _thaw(v) for k, v in self.options})
        return out

    def identity(self) -> dict[str, Any]:
        """The options that determine the data (label, paths and download settings excluded)."""
        return {k: v for k, v in self.to_dict().items() if k not in _DATASET_COSMETIC}


_DATASET_COMMON = ("name", "label", "classes", "n_train", "n_test", "seed", "scale", "normalize", "target",
                   "data_dir", "download")


def _label(entry: Mapping[str, Any], path: str) -> str:
    """The explicit label, or "" (filled in by ``_assign_labels``)."""
    if "label" not in entry:
        return ""
    label = _str(entry["label"], _join(path, "label"))
    if not label.strip():
        raise SpecError(_join(path, "label"), f"expected a non-empty string, got {_show(label)}")
    return label


def _label_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_label_value(v) for v in value)
    if isinstance(value, Mapping):
        return "{...}"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _assign_labels(entries: tuple, key: str) -> tuple:
    """Default label: the name, plus the options that tell same-named entries apart."""
    out = []
    for i, entry in enumerate(entries):
        if entry.label:
            out.append(entry)
            continue
        same = [e.identity() for e in entries if e.name == entry.name]
        mine = entry.identity()
        differing = [k for k in mine if k != "name" and any(other.get(k) != mine[k] for other in same)]
        label = entry.name + (f"[{','.join(f'{k}={_label_value(mine[k])}' for k in differing)}]" if differing else "")
        out.append(dataclasses.replace(entry, label=label))
    labels = [e.label for e in out]
    for i, label in enumerate(labels):
        first = labels.index(label)
        if first != i:
            raise SpecError(f"{key}[{i}].label", f"duplicate label {label!r} (also {key}[{first}]); give each entry a "
                                                 "distinct \"label\"")
    return tuple(out)


def _parse_dataset(value: Any, path: str) -> DatasetSpec:
    entry = _mapping(value, path, "a dataset entry")
    if "name" not in entry:
        raise SpecError(_join(path, "name"), "required key is missing")
    name = _choice(entry["name"], _join(path, "name"), DATASET_NAMES)
    source_options = _source_options(name)
    allowed = _DATASET_COMMON + source_options
    _check_keys(entry, path, allowed, context=f"for dataset {name!r}")
    p = lambda key: _join(path, key)  # noqa: E731
    fields: dict[str, Any] = {"name": name}
    if "classes" in entry:
        fields["classes"] = _classes(entry["classes"], p("classes"))
        if name == "synthetic" and fields["classes"] is not None:
            raise SpecError(p("classes"), "expected null for 'synthetic' (use n_classes)")
    for key in ("n_train", "n_test"):
        if key in entry:
            fields[key] = _optional(lambda v, q: _int(v, q, minimum=2 if key == "n_train" else 1))(entry[key], p(key))
    if "seed" in entry:
        fields["seed"] = _int(entry["seed"], p("seed"), minimum=0)
    for key in ("scale", "normalize", "download"):
        if key in entry:
            fields[key] = _bool(entry[key], p(key))
    if "target" in entry:
        fields["target"] = _choice(entry["target"], p("target"), TARGETS)
    if "data_dir" in entry:
        fields["data_dir"] = _optional(_str)(entry["data_dir"], p("data_dir"))
    options = []
    for key in source_options:
        if key in entry:
            check = _SOURCE_CHECKS.get(key, _freeze)  # options unknown here: any JSON value, checked by the loader
            options.append((key, check(entry[key], p(key))))
    if name == "synthetic":
        given = dict(options)
        if "kappa" in given and "singular_values" in given:
            raise SpecError(p("kappa"), "expected kappa or singular_values, not both")
        if given.get("task") == "regression" and fields.get("target", "auto") != "auto":
            raise SpecError(p("target"), "expected 'auto' for a regression task (targets are the teacher's values)")
    fields["options"] = tuple(sorted(options))
    fields["label"] = _label(entry, path)
    return DatasetSpec(**fields)


# --------------------------------------------------------------------------- models

_MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "relu": ("name", "label"),
    "mlp-attn": ("name", "label", "depth", "rank", "constant_term", "normalize"),
    "qkv-attn": ("name", "label", "head_width", "scaling", "normalize"),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model entry.

    Attributes:
      name: "relu" (2L-ReLU), "mlp-attn" (head on parameter-free linearized
        attention) or "qkv-attn" (head on trainable QKV linear attention).
      label: the name used in tables.
      depth, rank, constant_term: attention options ("mlp-attn").
      normalize: unit-norm attention output rows ("mlp-attn": default true;
        "qkv-attn": default false, the variant neural-tangents computes).
      head_width: QKV width h ("qkv-attn"): an integer or "width" (h = m).
      scaling: "linear" (s = h, W_K = W_Q tied) or "sqrt" ("qkv-attn").
    """

    name: str
    label: str
    depth: int = 1
    rank: int | None = None
    constant_term: bool = False
    normalize: bool = True
    head_width: int | str = "width"
    scaling: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        """The normalized JSON form: only the options that apply to this model."""
        full = {
            "name": self.name,
            "label": self.label,
            "depth": self.depth,
            "rank": self.rank,
            "constant_term": self.constant_term,
            "normalize": self.normalize,
            "head_width": self.head_width,
            "scaling": self.scaling,
        }
        return {k: full[k] for k in _MODEL_OPTIONS[self.name]}

    def identity(self) -> dict[str, Any]:
        """The options that determine the model (label excluded)."""
        return {k: v for k, v in self.to_dict().items() if k != "label"}

    def qkv_head_width(self, width: int) -> int:
        """h for network width m (qkv-attn)."""
        return width if self.head_width == "width" else int(self.head_width)


def _parse_model(value: Any, path: str) -> ModelSpec:
    entry = _mapping(value, path, "a model entry")
    if "name" not in entry:
        raise SpecError(_join(path, "name"), "required key is missing")
    name = _choice(entry["name"], _join(path, "name"), MODEL_NAMES, _MODEL_ALIASES)
    allowed = _MODEL_OPTIONS[name]
    for key in entry:
        if key not in allowed and any(key in opts for opts in _MODEL_OPTIONS.values()):
            owners = [m for m, opts in _MODEL_OPTIONS.items() if key in opts]
            raise SpecError(_join(path, key), f"not an option of model {name!r} (it applies to {', '.join(owners)}; "
                                              f"allowed here: {', '.join(allowed)})")
    _check_keys(entry, path, allowed, context=f"for model {name!r}")
    p = lambda key: _join(path, key)  # noqa: E731
    fields: dict[str, Any] = {"name": name}
    if "depth" in entry:
        fields["depth"] = _int(entry["depth"], p("depth"), minimum=1)
    if "rank" in entry:
        fields["rank"] = _optional(lambda v, q: _int(v, q, minimum=1))(entry["rank"], p("rank"))
    if "constant_term" in entry:
        fields["constant_term"] = _bool(entry["constant_term"], p("constant_term"))
    fields["normalize"] = _bool(entry["normalize"], p("normalize")) if "normalize" in entry else name != "qkv-attn"
    if "head_width" in entry:
        hw = entry["head_width"]
        if isinstance(hw, str):
            if hw != "width":
                raise SpecError(p("head_width"), f"expected an integer >= 1 or \"width\", got {_show(hw)}")
            fields["head_width"] = hw
        else:
            fields["head_width"] = _int(hw, p("head_width"), minimum=1, maximum=MAX_WIDTH)
    if "scaling" in entry:
        fields["scaling"] = _choice(entry["scaling"], p("scaling"), ("linear", "sqrt"))
    fields["label"] = _label(entry, path)
    return ModelSpec(**fields)


# --------------------------------------------------------------------------- widths and seeds


def _widths(value: Any, path: str) -> tuple[int, ...]:
    if isinstance(value, Mapping):
        _check_keys(value, path, ("log2", "step"), required=("log2",))
        grid = value["log2"]
        gpath = _join(path, "log2")
        if not isinstance(grid, (list, tuple)) or len(grid) != 2:
            raise SpecError(gpath, f"expected [low, high] exponents, got {_show(grid)}")
        low = _int(grid[0], _join(gpath, 0), minimum=0, maximum=20)
        high = _int(grid[1], _join(gpath, 1), minimum=0, maximum=20)
        if high < low:
            raise SpecError(gpath, f"expected low <= high, got [{low}, {high}]")
        step = _int(value.get("step", 1), _join(path, "step"), minimum=1)
        return tuple(2**e for e in range(low, high + 1, step))
    if isinstance(value, (list, tuple)):
        if not value:
            raise SpecError(path, "expected at least one width, got []")
        widths = tuple(_int(v, _join(path, i), minimum=1, maximum=MAX_WIDTH) for i, v in enumerate(value))
        if len(set(widths)) != len(widths):
            dup = next(w for w in widths if widths.count(w) > 1)
            raise SpecError(path, f"expected distinct widths, got {dup} twice")
        return tuple(sorted(widths))
    raise SpecError(path, f"expected a list of widths or {{\"log2\": [low, high]}}, got {_show(value)}")


def _seeds(value: Any, path: str) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SpecError(path, "expected at least one seed, got []")
        seeds = tuple(_int(v, _join(path, i), minimum=0, maximum=2**31 - 1) for i, v in enumerate(value))
        if len(set(seeds)) != len(seeds):
            raise SpecError(path, f"expected distinct seeds, got {_show(list(value))}")
        return seeds
    count = _int(value, path, minimum=1, maximum=100_000)
    return tuple(range(count))


# --------------------------------------------------------------------------- kernel / training sections


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """The MLP head's initialization and how the finite-width kernels are computed.

    Attributes:
      readout: "fixed" (the paper's ±1 readout, only W trained, first-layer
        NTK) or "trained" (a ~ N(0, 1) trained too).
      sigma_w, sigma_b, sigma_a: head scales (docs/math.md §5).
      width_chunk: hidden units per PRNG block and accumulation step (memory
        O(n² + n·width_chunk) at any width). Block j is drawn from
        fold_in(PRNGKey(seed), j), exactly as ``streaming_head_ntk`` with the
        same ``width_chunk`` draws it, and a width-m network is the first m
        units; so it changes the draws and is part of a cell's identity.
      batch_seeds: vmap the seeds of a (dataset, model) together: "auto"
        (on accelerators, when memory allows; sequential on CPU, where
        batching was measured not to help), true or false.
      memory_gb: budget for batched seeds (the estimate of n²·seeds memory).
      limit_width, limit_seeds: width and number of networks of the Monte-Carlo
        estimate of Θ_∞ for "qkv-attn".
      devices: local devices the streamed Θ_m ("relu", "mlp-attn") is sharded
        over, width-wise: an integer ≥ 1 or "all" (``jax.local_devices()``).
        A performance setting: results equal the 1-device ones up to float
        summation order, so it is not part of a cell's identity (records note
        the count used in their metrics as ``n_devices``).
    """

    readout: str = "fixed"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    sigma_a: float = 1.0
    width_chunk: int = 1024
    batch_seeds: Any = "auto"
    memory_gb: float = 2.0
    limit_width: int = 4096
    limit_seeds: int = 8
    devices: Any = 1

    @property
    def train_readout(self) -> bool:
        return self.readout == "trained"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def head_identity(self) -> dict[str, Any]:
        """Options that change the network or its draws (cell identity)."""
        return {"readout": self.readout, "sigma_w": self.sigma_w, "sigma_b": self.sigma_b,
                "sigma_a": self.sigma_a, "width_chunk": self.width_chunk}


def parse_devices(value: Any, path: str = "kernel.devices") -> Any:
    """A device count: an integer >= 1 or "all" (SpecError naming ``path`` otherwise)."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return "all"
        try:
            value = int(value.strip())
        except ValueError:
            raise SpecError(path, f"expected an integer >= 1 or \"all\", got {_show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected an integer >= 1 or \"all\", got {_show(value)}")
    try:
        return _int(value, path, minimum=1, maximum=1_000_000)
    except SpecError:
        raise SpecError(path, f"expected an integer >= 1 or \"all\", got {_show(value)}") from None


def _auto_or_bool(value: Any, path: str) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise SpecError(path, f"expected \"auto\", true or false, got {_show(value)}")


_KERNEL_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "readout": lambda v, p: _choice(v, p, READOUTS),
    "sigma_w": lambda v, p: _real(v, p, minimum=0.0, strict=True),
    "sigma_b": lambda v, p: _real(v, p, minimum=0.0),
    "sigma_a": lambda v, p: _real(v, p, minimum=0.0, strict=True),
    "width_chunk": lambda v, p: _int(v, p, minimum=1, maximum=MAX_WIDTH),
    "batch_seeds": lambda v, p: _auto_or_bool(v, p),
    "memory_gb": lambda v, p: _real(v, p, minimum=0.0, strict=True),
    "limit_width": lambda v, p: _int(v, p, minimum=1, maximum=MAX_WIDTH),
    "limit_seeds": lambda v, p: _int(v, p, minimum=1, maximum=10_000),
    "devices": parse_devices,
}


def _parse_kernel(value: Any, path: str) -> KernelOptions:
    entry = _mapping(value, path)
    _check_keys(entry, path, tuple(_KERNEL_CHECKS))
    fields = {k: _KERNEL_CHECKS[k](entry[k], _join(path, k)) for k in entry}
    return KernelOptions(**fields)


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """``kernelattn.training.TrainConfig`` fields plus the NTK predictor's time.

    Attributes:
      learning_rate, batch_size, epochs, weight_decay, loss,
        weight_decay_mode: as in TrainConfig (paper defaults; 500 epochs;
        decoupled weight decay).
      ntk_time: gradient-flow time t of the NTK predictor (in steps of η = 1),
        or None for t → ∞ (kernel ridge regression with the spec's ridge).
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 500
    weight_decay: float = 1e-3
    loss: str = "auto"
    ntk_time: float | None = None
    weight_decay_mode: str = "decoupled"

    def train_config(self):
        """The ``kernelattn.training.TrainConfig``."""
        from kernelattn.training import TrainConfig

        return TrainConfig(self.learning_rate, self.batch_size, self.epochs, self.weight_decay, self.loss,
                           self.weight_decay_mode)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TRAINING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "learning_rate": lambda v, p: _real(v, p, minimum=0.0, strict=True),
    "batch_size": lambda v, p: _int(v, p, minimum=1),
    "epochs": lambda v, p: _int(v, p, minimum=0),
    "weight_decay": lambda v, p: _real(v, p, minimum=0.0),
    "loss": lambda v, p: _choice(v, p, LOSSES),
    "ntk_time": _optional(lambda v, p: _real(v, p, minimum=0.0)),
    "weight_decay_mode": lambda v, p: _choice(v, p, ("decoupled", "coupled")),
}


def _parse_training(value: Any, path: str) -> TrainingOptions:
    entry = _mapping(value, path)
    _check_keys(entry, path, tuple(_TRAINING_CHECKS))
    return TrainingOptions(**{k: _TRAINING_CHECKS[k](entry[k], _join(path, k)) for k in entry})


# --------------------------------------------------------------------------- the spec

_TOP_KEYS = ("name", "kind", "description", "datasets", "models", "widths", "seeds", "dtype", "precision", "metrics",
             "ridge", "kernel", "training")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated experiment spec (see the module docstring for the JSON format).

    Attributes:
      name: identifier; the sweep's store is ``<out>/<name>``.
      kind: "kernel" or "training".
      description: free text.
      datasets, models: tuples of ``DatasetSpec`` / ``ModelSpec`` (labels unique).
      widths: sorted distinct widths.
      seeds: network seeds (PRNGKey(seed) draws the network).
      dtype: "float32" or "float64" for the finite-width kernels/networks
        (Θ_∞ and every metric are float64 regardless).
      precision: matmul precision, "highest" (``Precision.HIGHEST``: true
        float32 products), "fast" (the device's default: TF32 on recent GPUs)
        or None (the policy in force when the sweep runs: the CLI's
        ``--precision``, else "highest"). "fast" is part of a cell's identity.
      metrics: the metric groups computed (``METRICS[kind]`` subset).
      ridge: λ ≥ 0 of the kernel-ridge predictors.
      kernel: ``KernelOptions``.
      training: ``TrainingOptions`` (kind "training") or None.
      source: the file it was read from, if any.
    """

    name: str
    kind: str
    datasets: tuple[DatasetSpec, ...]
    models: tuple[ModelSpec, ...]
    widths: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    dtype: str = "float32"
    precision: str | None = None
    metrics: tuple[str, ...] = ()
    ridge: float = 1e-3
    kernel: KernelOptions = KernelOptions()
    training: TrainingOptions | None = None
    description: str = ""
    source: str | None = dataclasses.field(default=None, compare=False)

    @property
    def n_cells(self) -> int:
        """Number of (dataset, model, width, seed) cells."""
        return len(self.datasets) * len(self.models) * len(self.widths) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """Normalized JSON form (defaults filled in, widths expanded); ``parse_spec`` round-trips it."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "datasets": [d.to_dict() for d in self.datasets],
            "models": [m.to_dict() for m in self.models],
            "widths": list(self.widths),
            "seeds": list(self.seeds),
            "dtype": self.dtype,
            "precision": self.precision,
            "metrics": list(self.metrics),
            "ridge": self.ridge,
            "kernel": self.kernel.to_dict(),
        }
        if self.training is not None:
            out["training"] = self.training.to_dict()
        return out

    def to_json(self, indent: int = 2) -> str:
        """``to_dict`` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def head_kwargs(self) -> dict[str, Any]:
        """σ's and readout mode for ``kernelattn.models.HeadConfig``."""
        k = self.kernel
        return {"sigma_w": k.sigma_w, "sigma_b": k.sigma_b, "sigma_a": k.sigma_a,
                "use_bias": k.sigma_b > 0, "train_readout": k.train_readout}


def parse_spec(data: Mapping[str, Any], *, source: str | None = None) -> Spec:
    """Validate a spec given as a (JSON-like) dict.

    Raises:
      SpecError: naming the key path of the first problem found.
    """
    try:
        return _parse(data, source)
    except SpecError as err:
        if source and err.source is None:
            raise SpecError(err.path, err.problem, source) from None
        raise


def _parse(data: Any, source: str | None) -> Spec:
    top = _mapping(data, "", "a spec object")
    _check_keys(top, "", _TOP_KEYS, required=("name", "kind", "datasets", "models", "widths"))
    name = _str(top["name"], "name")
    if not _NAME_RE.fullmatch(name):
        raise SpecError("name", f"expected letters, digits, '_', '.', '-' (a directory name), got {_show(name)}")
    kind = _choice(top["kind"], "kind", KINDS)
    description = _str(top.get("description", ""), "description")

    def entries(key: str, parse: Callable[[Any, str], Any]) -> tuple:
        value = top[key]
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise SpecError(key, f"expected a non-empty list of entries, got {_show(value)}")
        parsed = tuple(parse(v, _join(key, i)) for i, v in enumerate(value))
        return _assign_labels(parsed, key)

    datasets = entries("datasets", _parse_dataset)
    models = entries("models", _parse_model)
    widths = _widths(top["widths"], "widths")
    seeds = _seeds(top.get("seeds", [0]), "seeds")
    dtype = _choice(top.get("dtype", "float32"), "dtype", DTYPES)
    precision = _optional(lambda v, p: _choice(v, p, PRECISIONS))(top.get("precision"), "precision")
    metrics_value = top.get("metrics")
    if metrics_value is None:
        metrics = METRICS[kind]
    else:
        if not isinstance(metrics_value, (list, tuple)) or not metrics_value:
            raise SpecError("metrics", f"expected null or a non-empty list of {list(METRICS[kind])}, "
                                       f"got {_show(metrics_value)}")
        chosen = [_choice(v, _join("metrics", i), METRICS[kind]) for i, v in enumerate(metrics_value)]
        metrics = tuple(m for m in METRICS[kind] if m in chosen)
    ridge = _real(top.get("ridge", 1e-3), "ridge", minimum=0.0)
    kernel = _parse_kernel(top.get("kernel", {}), "kernel")
    if "training" in top and kind != "training":
        raise SpecError("training", f"only allowed when kind is 'training', got kind {kind!r}")
    training = _parse_training(top.get("training", {}), "training") if kind == "training" else None
    for i, model in enumerate(models):
        for j, dataset in enumerate(datasets):
            if model.rank is not None and dataset.n_train is not None and model.rank > dataset.n_train:
                raise SpecError(f"models[{i}].rank", f"expected <= n_train of datasets[{j}] ({dataset.n_train}), "
                                                     f"got {model.rank}")
    return Spec(name=name, kind=kind, datasets=datasets, models=models, widths=widths, seeds=seeds, dtype=dtype,
                precision=precision, metrics=metrics, ridge=ridge, kernel=kernel, training=training, description=description,
                source=source)


def load_spec(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec) -> Spec:
    """Load and validate a spec from a JSON file (or pass a dict / ``Spec`` through validation).

    Args:
      spec: path of a ``.json`` file, a dict in the same format, or a ``Spec``.

    Returns:
      The validated ``Spec``.

    Raises:
      SpecError: invalid content (the message names the key path and the file)
        or invalid JSON (line and column).
      FileNotFoundError: no such file.
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        return parse_spec(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec: expected a path, a dict or a Spec, got {type(spec).__name__}")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"spec: no such file {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise SpecError("", f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}", str(path)) from None
    except ValueError as err:
        raise SpecError("", f"invalid JSON: {err}", str(path)) from None
    return parse_spec(data, source=str(path))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
