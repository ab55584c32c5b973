"""Experiment specs: JSON files under ``experiments/``, validated once into frozen dataclasses.

A spec describes a grid of cells (dataset × model × width × seed) and how to
compute each one. It is plain JSON (read with the standard library), checked
completely when loaded, and every error names the offending key path::

    models[1].depth: expected an integer >= 1, got 0
    kernel.sigma_ww: unknown key; did you mean 'sigma_w'? (allowed: ...)

This module is the one schema and validator of every spec kind: the sweep
specs below (``"kernel"``, ``"training"``), the malleability specs
(:func:`parse_malleability_spec`; format in
``kernelattn.experiments.malleability.run_malleability_spec``) and the datasets of the
``"conditions"`` specs of ``kernelattn.experiments.reproduce``. For all of them:

- files are read strictly (:func:`read_spec_file`): UTF-8, no duplicate keys,
  no NaN/Infinity, a regular file (a directory or a FIFO is refused unopened);
- ``name`` is one directory name (:func:`check_store_name`): the store is
  ``<out>/<name>``, so separators, ``..`` and absolute paths are refused;
- values are type-checked (``"retrain": "false"`` is an error, not true);
  unknown keys and values are refused with a did-you-mean, nested ones too;
- a grid of more than ``DEFAULT_MAX_CELLS`` (100,000) cells is refused with
  its count (``max_cells=``, ``$KERNELATTN_MAX_CELLS``).

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
         "label": "digits",                 # table label (default: the display label, e.g. "MNIST 3-vs-8",
                                            #   "MLP-Attn (k=2)", plus options telling equal ones apart)
         "data_dir": null, "download": true,
         ...source options: digits: test_fraction, split_seed;
            synthetic: d, kappa, singular_values, n_classes, task, teacher_width;
            mnist/fashion_mnist/cifar10: base_url, checksums, max_bytes, system_dirs, timeout;
            mnist: source ("idx", the default, or "mnist5k": then test_fraction, split_seed, max_bytes)}
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

The model name also accepts kernelattn's aliases ("2l-relu", "attn", "qkv"), and
"module:attr" names a user's own model (``kernelattn.registry``: a ``ModelEntry``
or a constructor ``build(width, out_dim, **options)``, whose keyword parameters
are the entry's allowed keys). A dataset name ending in ".npz" is the path of
a user's own data (arrays ``X``, ``y``; ``kernelattn.data.npz``), relative to
the working directory; its SHA-256 is recorded as the option ``sha256``.
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
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernelattn.analysis.labels import dataset_label, model_label
from kernelattn.data.api import MNIST_SOURCES
from kernelattn.data.npz import file_sha256, is_npz_name
from kernelattn.errors import InputTypeError, InputValueError, KernelattnError
from kernelattn.registry import (
    MODEL_ALIASES,
    REQUIRED,
    dataset_entry,
    dataset_names,
    is_user_model,
    model_entry,
    model_names,
)

__all__ = [
    "DATASET_KEYS",
    "DATASET_NAMES",
    "KERNEL_CHECKS",
    "KINDS",
    "KeySpec",
    "MALLEABILITY_HEAD_KEYS",
    "MALLEABILITY_KEYS",
    "MALLEABILITY_SCHEMA",
    "METRICS",
    "MODEL_NAMES",
    "MODEL_OPTIONS",
    "MAX_WIDTH",
    "SWEEP_KEYS",
    "TRAINING_CHECKS",
    "VARIANT_FIXED_KEYS",
    "DatasetSpec",
    "KernelOptions",
    "ModelSpec",
    "Spec",
    "SpecError",
    "SpecFileNotFoundError",
    "TrainingOptions",
    "DEFAULT_MAX_CELLS",
    "MalleabilitySpec",
    "check_store_name",
    "load_spec",
    "malleability_choices",
    "malleability_variants",
    "parse_malleability_spec",
    "parse_spec",
    "read_spec_file",
    "source_options",
]

KINDS = ("kernel", "training")
#: Built-in dataset and model names (``kernelattn.registry``); a path ending in ".npz" and a
#: "module:attr" reference name a user's dataset and model.
DATASET_NAMES = dataset_names()
MODEL_NAMES = model_names()
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


class SpecError(KernelattnError, ValueError):
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


class SpecFileNotFoundError(SpecError, FileNotFoundError):
    """A spec file that does not exist (a ``SpecError`` and a ``FileNotFoundError``)."""


#: Longest store name (one directory name; filesystems allow 255 bytes).
MAX_NAME_LENGTH = 200
#: Largest grid a spec may describe unless the limit is raised: at ~1 s a cell, 100,000 cells
#: already take more than a day, and planning alone of a 4-million-cell grid takes an hour.
DEFAULT_MAX_CELLS = 100_000
#: Environment variable overriding ``DEFAULT_MAX_CELLS`` (the ``max_cells=`` argument wins over it).
MAX_CELLS_ENV_VAR = "KERNELATTN_MAX_CELLS"
#: Largest spec file read: a spec is a few KB.
MAX_SPEC_BYTES = 16 * 2**20


def check_store_name(value: Any, path: str = "name") -> str:
    """A store name: one directory name of letters, digits, ``_ . -`` not starting with ``.``.

    The store of a spec is ``<out>/<name>``, so a name with a separator, a
    ``..`` or an absolute path would write outside ``out``: refused, for
    every kind of spec.
    """
    name = _str(value, path)
    if not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise SpecError(path, f"expected a store directory name (letters, digits, '_', '.', '-', not starting with "
                              f"'.', at most {MAX_NAME_LENGTH} characters: no path separators, no '..', not "
                              f"absolute), got {_show(name)}")
    return name


def resolve_max_cells(value: Any = None) -> int:
    """The cell limit: ``value``, else ``$KERNELATTN_MAX_CELLS``, else ``DEFAULT_MAX_CELLS``."""
    if value is None:
        env = os.environ.get(MAX_CELLS_ENV_VAR)
        if not env:
            return DEFAULT_MAX_CELLS
        try:
            value = int(env)
        except ValueError:
            raise SpecError("", f"${MAX_CELLS_ENV_VAR}: expected an integer >= 1, got {env!r}") from None
        return _int(value, f"${MAX_CELLS_ENV_VAR}", minimum=1)
    return _int(value, "max_cells", minimum=1)


def check_cell_count(n_cells: int, limit: int, breakdown: str) -> None:
    """Refuse a grid of more than ``limit`` cells, with the count and how it arises."""
    if n_cells > limit:
        raise SpecError("", f"the grid has {n_cells:,} cells ({breakdown}), more than the limit of {limit:,}; "
                            f"split the spec, or raise the limit (max_cells=, --max-cells or ${MAX_CELLS_ENV_VAR})")


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


def _int_text(minimum: int | None = None, maximum: int | None = None) -> str:
    """What :func:`_int` accepts, in the words of its message."""
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    return "an integer" + (" " + " and ".join(bounds) if bounds else "")


def _int(value: Any, path: str, minimum: int | None = None, maximum: int | None = None) -> int:
    want = _int_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected {want}, got {_show(value)}")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise SpecError(path, f"expected {want}, got {_show(value)}")
        value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise SpecError(path, f"expected {want}, got {value}")
    return value


def _real_text(minimum: float | None = None, strict: bool = False, maximum: float | None = None,
               strict_max: bool = False) -> str:
    """What :func:`_real` accepts, in the words of its message."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if strict else '>='} {minimum:g}")
    if maximum is not None:
        bounds.append(f"{'<' if strict_max else '<='} {maximum:g}")
    return "a number" + (" " + " and ".join(bounds) if bounds else "")


def _real(value: Any, path: str, minimum: float | None = None, strict: bool = False,
          maximum: float | None = None, strict_max: bool = False) -> float:
    want = _real_text(minimum, strict, maximum, strict_max)
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
    "source": lambda v, p: _choice(v, p, tuple(MNIST_SOURCES)),
}

def source_options(name: str) -> tuple[str, ...]:
    """Loader options of dataset ``name`` (``kernelattn.registry.dataset_entry``): the keys a sweep spec's
    dataset entry allows besides :data:`DATASET_KEYS`."""
    return dataset_entry(name).options


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


#: The keys of every dataset entry of a sweep spec (plus the dataset's own :func:`source_options`).
DATASET_KEYS = ("name", "label", "classes", "n_train", "n_test", "seed", "scale", "normalize", "target",
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
    """Default label: the display label (``kernelattn.analysis.labels``: "MLP-Attn (k=2)", "MNIST 3-vs-8"),
    plus the options that tell apart entries whose display labels coincide."""
    display = dataset_label if key == "datasets" else model_label
    auto = [None if e.label else display(e.identity()) for e in entries]
    out = []
    for i, entry in enumerate(entries):
        if entry.label:
            out.append(entry)
            continue
        same = [e.identity() for e, a in zip(entries, auto) if a == auto[i]]
        mine = entry.identity()
        differing = [k for k in mine if k != "name" and any(other.get(k) != mine[k] for other in same)]
        label = auto[i] + (f" ({', '.join(f'{k}={_label_value(mine[k])}' for k in differing)})" if differing else "")
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
    if is_npz_name(entry["name"]):
        name = _str(entry["name"], _join(path, "name"))
        if not Path(name).is_file():
            raise SpecError(_join(path, "name"), f"no such .npz file {name!r} (a path relative to the working "
                                                 "directory, or absolute)")
    else:
        name = _choice(entry["name"], _join(path, "name"), DATASET_NAMES)
    own_options = source_options(name)
    allowed = DATASET_KEYS + own_options
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
    for key in own_options:
        if key in entry:
            check = _SOURCE_CHECKS.get(key, _freeze)  # options unknown here: any JSON value, checked by the loader
            options.append((key, check(entry[key], p(key))))
    if is_npz_name(name):  # the file's content is part of the dataset's identity
        digest = file_sha256(name)
        given = dict(options)
        if given.get("sha256", digest) != digest:
            raise SpecError(p("sha256"), f"expected the SHA-256 of {name} ({digest}), got {_show(given['sha256'])}: "
                                         "the file changed")
        options = [(k, v) for k, v in options if k != "sha256"] + [("sha256", digest)]
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

#: Model name → the keys its entry in a sweep spec's ``models`` allows.
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    name: ("name", "label") + tuple(k for k, _ in model_entry(name).options) for name in MODEL_NAMES
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
      options: a user's model ("module:attr" name): its options as sorted (key, value) pairs.
    """

    name: str
    label: str
    depth: int = 1
    rank: int | None = None
    constant_term: bool = False
    normalize: bool = True
    head_width: int | str = "width"
    scaling: str = "linear"
    options: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        """The normalized JSON form: only the options that apply to this model."""
        if is_user_model(self.name):
            return {"name": self.name, "label": self.label, **{k: _thaw(v) for k, v in self.options}}
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
        return {k: full[k] for k in MODEL_OPTIONS[self.name]}

    def identity(self) -> dict[str, Any]:
        """The options that determine the model (label excluded)."""
        return {k: v for k, v in self.to_dict().items() if k != "label"}

    def qkv_head_width(self, width: int) -> int:
        """h for network width m (qkv-attn)."""
        return width if self.head_width == "width" else int(self.head_width)

    def model_options(self) -> dict[str, Any]:
        """The model's options for its registry entry (``kernelattn.registry.ModelEntry``): features, network."""
        return {k: v for k, v in self.to_dict().items() if k not in ("name", "label")}


def _parse_model(value: Any, path: str) -> ModelSpec:
    entry = _mapping(value, path, "a model entry")
    if "name" not in entry:
        raise SpecError(_join(path, "name"), "required key is missing")
    if is_user_model(entry["name"]):
        return _parse_user_model(entry, path)
    name = _choice(entry["name"], _join(path, "name"), MODEL_NAMES, MODEL_ALIASES)
    allowed = MODEL_OPTIONS[name]
    for key in entry:
        if key not in allowed and any(key in opts for opts in MODEL_OPTIONS.values()):
            owners = [m for m, opts in MODEL_OPTIONS.items() if key in opts]
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


def _parse_user_model(entry: Mapping[str, Any], path: str) -> ModelSpec:
    """A user's model, ``"name": "module:attr"``: its options are those of its registry entry."""
    name = _str(entry["name"], _join(path, "name"))
    try:
        model = model_entry(name)
    except ValueError as err:
        raise SpecError(_join(path, "name"), str(err)) from None
    defaults = model.defaults()
    _check_keys(entry, path, ("name", "label") + tuple(defaults), context=f"for model {name!r}",
                required=[k for k, v in defaults.items() if v is REQUIRED])
    options = tuple(sorted((k, _freeze(entry[k], _join(path, k))) for k in entry if k not in ("name", "label")))
    return ModelSpec(name=name, label=_label(entry, path), options=options)


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


#: The keys of a sweep spec's ``kernel`` section → the check of each (``check(value, path)``).
KERNEL_CHECKS: dict[str, Callable[[Any, str], Any]] = {
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
    _check_keys(entry, path, tuple(KERNEL_CHECKS))
    fields = {k: KERNEL_CHECKS[k](entry[k], _join(path, k)) for k in entry}
    return KernelOptions(**fields)


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """``kernelattn.learning.training.TrainConfig`` fields plus the NTK predictor's time.

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
        """The ``kernelattn.learning.training.TrainConfig``."""
        # Deferred: specs are read and validated without loading JAX and optax.
        from kernelattn.learning.training import TrainConfig

        return TrainConfig(self.learning_rate, self.batch_size, self.epochs, self.weight_decay, self.loss,
                           self.weight_decay_mode)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The keys of a sweep spec's ``training`` section → the check of each (``check(value, path)``).
TRAINING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
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
    _check_keys(entry, path, tuple(TRAINING_CHECKS))
    return TrainingOptions(**{k: TRAINING_CHECKS[k](entry[k], _join(path, k)) for k in entry})


# --------------------------------------------------------------------------- the spec

#: The top-level keys of a sweep spec.
SWEEP_KEYS = ("name", "kind", "description", "datasets", "models", "widths", "seeds", "dtype", "precision",
              "metrics", "ridge", "kernel", "training")


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


def parse_spec(data: Mapping[str, Any], *, source: str | None = None, max_cells: int | None = None) -> Spec:
    """Validate a spec given as a (JSON-like) dict.

    Args:
      data: the spec.
      source: the file it came from, for messages.
      max_cells: largest grid accepted (default ``$KERNELATTN_MAX_CELLS`` or
        ``DEFAULT_MAX_CELLS`` = 100,000).

    Raises:
      SpecError: naming the key path of the first problem found.
    """
    try:
        return _parse(data, source, resolve_max_cells(max_cells))
    except SpecError as err:
        if source and err.source is None:
            raise SpecError(err.path, err.problem, source) from None
        raise


def _parse(data: Any, source: str | None, max_cells: int) -> Spec:
    top = _mapping(data, "", "a spec object")
    _check_keys(top, "", SWEEP_KEYS, required=("name", "kind", "datasets", "models", "widths"))
    name = check_store_name(top["name"])
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
    check_cell_count(len(datasets) * len(models) * len(widths) * len(seeds), max_cells,
                     f"{len(datasets)} dataset(s) × {len(models)} model(s) × {len(widths)} width(s) × "
                     f"{len(seeds)} seed(s)")
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


def load_spec(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, *, max_cells: int | None = None) -> Spec:
    """Load and validate a spec from a JSON file (or pass a dict / ``Spec`` through validation).

    Args:
      spec: path of a ``.json`` file, a dict in the same format, or a ``Spec``.
      max_cells: largest grid accepted (see :func:`parse_spec`).

    Returns:
      The validated ``Spec``.

    Raises:
      SpecError: invalid content (the message names the key path and the file)
        or an unreadable file (see :func:`read_spec_file`).
      SpecFileNotFoundError: no such file (also a ``FileNotFoundError``).
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        return parse_spec(spec, max_cells=max_cells)
    if not isinstance(spec, (str, os.PathLike)):
        raise InputTypeError(f"spec: expected a path, a dict or a Spec, got {type(spec).__name__}")
    return parse_spec(read_spec_file(spec), source=os.fspath(spec), max_cells=max_cells)


class _BadJSON(ValueError):
    """Raised from inside ``json.loads`` hooks; turned into a ``SpecError`` naming the file."""


def _reject_constant(name: str) -> Any:
    raise _BadJSON(f"{name} is not a JSON number (use a finite number or null)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _BadJSON(f"duplicate key {key!r} in one JSON object (the later value would silently win)")
        seen[key] = value
    return seen


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a spec file, read strictly.

    A regular file (a directory or a FIFO is refused without being opened)
    of at most ``MAX_SPEC_BYTES``, UTF-8, valid JSON without NaN/Infinity or
    duplicate keys, holding an object.

    Raises:
      SpecFileNotFoundError: no such file.
      SpecError: anything else, naming the file (and line/column for JSON errors).
    """
    source = os.fspath(path)
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise SpecFileNotFoundError("spec", f"no such file {source!r}") from None
    except OSError as err:
        raise SpecError("", f"cannot read the spec file ({err.strerror or err})", source) from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecError("", "is a directory; expected a JSON spec file (e.g. experiments/quick_width_sweep.json)",
                        source)
    if not stat.S_ISREG(st.st_mode):
        raise SpecError("", "is not a regular file (a FIFO or a device); expected a JSON spec file", source)
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError("", f"is {st.st_size:,} bytes; a spec file has at most {MAX_SPEC_BYTES:,}", source)
    try:
        with open(source, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise SpecError("", f"cannot read the spec file ({err.strerror or err})", source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError("", f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save the "
                            "spec as UTF-8", source) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise SpecError("", f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}", source) from None
    except _BadJSON as err:
        raise SpecError("", f"invalid JSON: {err}", source) from None
    except RecursionError:
        raise SpecError("", "invalid JSON: nested too deeply", source) from None
    if not isinstance(data, dict):
        raise SpecError("", f"expected a JSON object ({{...}}) at the top, got {type(data).__name__}", source)
    return data


# --------------------------------------------------------------------------- malleability specs
#
# The schema of ``"kind": "malleability"`` specs (kernelattn.experiments.malleability.run_malleability_spec), on the
# same checks as the sweep specs above: types checked (``"retrain": "false"`` is refused, not read as
# true), unknown keys and values refused with a did-you-mean, also nested (``kernel.sigma_ww``). The
# parsed form keeps the values as written (only canonicalized: model aliases, attack names in lower case,
# numbers as floats), because they make up the cells' keys in existing stores.

#: Largest width of a malleability spec: the models' limit (kernelattn.models.MAX_WIDTH); whether it
#: fits in memory is planned before any work (kernelattn.kernels.memory).
MAX_MALLEABILITY_WIDTH = 2**31
#: Largest seed count of a malleability spec's ``"seeds": n`` (seeds 0..n-1).
MAX_MALLEABILITY_SEED_COUNT = 100_000


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One top-level key of a malleability spec: the declaration the validator checks values with and
    takes defaults from, and the docs' spec page lists (so the two cannot drift apart).

    Attributes:
      name: the key; a list key's plural spelling (``"widths"``).
      type: how one value is checked: ``"integer"`` or ``"number"`` (within ``minimum``/``maximum``),
        ``"bool"``, ``"choice"`` (one of ``choices``), ``"name"`` (a string, one of ``choices`` in any
        case); ``""``: by the validator's own code, as ``type_text`` says.
      default: the value the parsed spec gets when the key is absent (a list key: the list);
        ``REQUIRED``: the spec must give it (``name``, ``kind``, ``description`` and ``variants`` are
        not part of a plan: their default is the value when absent).
      doc: what the key means.
      singular: a list key's one-value spelling (``"width"``): a spec gives one or the other.
      parsed: the key of the parsed dict (a plan of ``MalleabilitySpec.plans``) it fills.
      choices: the allowed values: a tuple, or the name of a group of :func:`malleability_choices`
        (defined in modules that load JAX, so resolved on first use).
      minimum, maximum, strict: bounds of an ``"integer"`` or ``"number"`` (``strict``: > minimum).
      nullable: ``null`` is accepted too (and parsed as ``None``).
      allow_empty: a list key that may be ``[]``.
      type_text: what a value is, in words, for a key of ``type`` ``""``.
    """

    name: str
    type: str
    default: Any
    doc: str
    singular: str | None = None
    parsed: str | None = None
    choices: str | tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    strict: bool = False
    nullable: bool = False
    allow_empty: bool = False
    type_text: str = ""

    def allowed(self, choices: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...] | None:
        """The allowed values (``choices``: :func:`malleability_choices`, resolved when omitted)."""
        if isinstance(self.choices, str):
            return tuple((malleability_choices() if choices is None else choices)[self.choices])
        return self.choices

    def text(self, choices: Mapping[str, Sequence[str]] | None = None) -> str:
        """What one value is, in the words of the validator's message (``"an integer >= 1"``)."""
        if self.type == "integer":
            return _int_text(self.minimum, self.maximum)
        if self.type == "number":
            return _real_text(self.minimum, self.strict, self.maximum)
        if self.type == "bool":
            return "true or false"
        if self.type in ("choice", "name"):
            return f"one of {list(self.allowed(choices))}"
        return self.type_text

    def check(self, value: Any, path: str, choices: Mapping[str, Sequence[str]] | None = None) -> Any:
        """One value checked and normalized (a list key: one item), or a :class:`SpecError`."""
        if value is None and self.nullable:
            return None
        if self.type == "integer":
            return _int(value, path, minimum=self.minimum, maximum=self.maximum)
        if self.type == "number":
            return _real(value, path, minimum=self.minimum, strict=self.strict, maximum=self.maximum)
        if self.type == "bool":
            return _bool(value, path)
        if self.type == "choice":
            return _choice(value, path, self.allowed(choices))
        if self.type == "name":
            return _choice(_str(value, path).lower(), path, self.allowed(choices))
        raise InputValueError(f"malleability spec key {self.name!r} is checked by the validator's own code")


#: The top-level keys of a malleability spec (format: ``kernelattn.experiments.malleability.run_malleability_spec``),
#: in the order of the docs; :func:`parse_malleability_spec` checks them and takes their defaults from here.
MALLEABILITY_SCHEMA: tuple[KeySpec, ...] = (
    KeySpec("name", "", None, "the store's name (the CLI's default: the file's stem)",
            type_text="a store name (one directory name: [A-Za-z0-9_.-]+)"),
    KeySpec("kind", "", None, "the spec's kind (optional)", type_text='"malleability"'),
    KeySpec("description", "", "", "free text", type_text="a string"),
    KeySpec("datasets", "", REQUIRED, "the datasets: entries as in a sweep spec's datasets (a label and a "
            "target are not part of the cell; normalize defaults to false)", singular="dataset",
            parsed="datasets", type_text="a dataset entry ({\"name\": ..., options})"),
    KeySpec("models", "", ("mlp-attn",), "the models: a name (aliases accepted) or {\"name\": ..., options}",
            singular="model", parsed="models", choices="models",
            type_text="a model name or {\"name\": ..., options} entry"),
    KeySpec("widths", "integer", (1024,), "the network widths m", singular="width", parsed="widths",
            minimum=1, maximum=MAX_MALLEABILITY_WIDTH),
    KeySpec("seeds", "integer", (0,), f"the network seeds, or a count n for seeds 0..n-1 "
            f"(1 <= n <= {MAX_MALLEABILITY_SEED_COUNT:,}); distinct", singular="seed", parsed="seeds",
            minimum=0, maximum=2**31 - 1),
    KeySpec("kernel", "", {}, "the head's options (readout, sigma_w, sigma_b, sigma_a)", parsed="head",
            type_text="an object"),
    KeySpec("training", "", {}, "kernelattn.TrainConfig fields", parsed="training", type_text="an object"),
    KeySpec("training_modes", "choice", ("standard",), "how the networks are trained", singular="training_mode",
            parsed="modes", choices="modes"),
    KeySpec("at_epsilon", "number", 0.3, "the radius of PGD adversarial training (\"pgd-at\")",
            parsed="at_epsilon", minimum=0.0),
    KeySpec("influence_kernels", "choice", ("empirical",), "the kernels the influence scores are computed with",
            singular="influence_kernel", parsed="kernels", choices="kernels"),
    KeySpec("influence", "choice", "loo", "the influence method", parsed="influence", choices="influence"),
    KeySpec("targets", "choice", "pm1", "the target encoding of the kernel regression", parsed="targets",
            choices="targets"),
    KeySpec("ridge", "number", 1e-3, "the ridge of the kernel regression", parsed="ridge", minimum=0.0,
            strict=True),
    KeySpec("tau", "number", 0.1, "τ: the top-τ training points are the ⌈τ n⌉ of largest |influence| (flip "
            "rate, top-k overlap, transformed and curated interventions)", parsed="tau", minimum=0.0, strict=True,
            maximum=1.0),
    KeySpec("retrain", "bool", False, "also retrain the network on the perturbed data (from the same "
            "initialization and keys)", parsed="retrain"),
    KeySpec("attacks", "name", ("pgd",), "the attacks (any case)", singular="attack", parsed="attacks",
            choices="attacks"),
    KeySpec("epsilons", "number", (0.3,), "the attacks' radii", singular="epsilon", parsed="epsilons",
            minimum=0.0),
    KeySpec("interventions", "choice", ("adversarial",), "what is perturbed", singular="intervention",
            parsed="interventions", choices="interventions"),
    KeySpec("attack_targets", "choice", ("model",), "the loss attacked (default: attack_config's target, "
            "else \"model\")", parsed="attack_targets", choices="attack_targets"),
    KeySpec("attack_config", "", {}, "kernelattn.AttackConfig fields (its target: the default of "
            "attack_targets)", parsed="attack_config", type_text="an object"),
    KeySpec("null_baselines", "choice", ("seed", "order"), "the null baselines: no perturbation, refit with "
            "other keys ([] for none)", parsed="nulls", choices="nulls", allow_empty=True),
    KeySpec("dtype", "choice", "float64", "the dtype of the networks and kernels", parsed="dtype",
            choices=DTYPES),
    KeySpec("precision", "choice", None, "the matmul precision (null: the policy in force, CLI --precision)",
            parsed="precision", choices=PRECISIONS, nullable=True),
    KeySpec("variants", "", None, "variants of the spec, run together (see malleability_variants)",
            type_text="a list of {\"label\": ..., overrides} objects"),
)
_MALLEABILITY_KEYSPECS = {key.name: key for key in MALLEABILITY_SCHEMA}
#: Every key a malleability spec allows (a list key's plural and singular spellings).
MALLEABILITY_KEYS = tuple(k for key in MALLEABILITY_SCHEMA for k in (key.name, key.singular) if k)
#: Keys a variant may not override (they name the spec); a variant adds its "label" and may set "n_train".
VARIANT_FIXED_KEYS = ("name", "kind", "description", "variants")
#: Plural key → its singular spelling (one value); a spec gives one or the other.
_PLURALS = {key.name: key.singular for key in MALLEABILITY_SCHEMA if key.singular}
_SINGULARS = {v: k for k, v in _PLURALS.items()}
#: The head options of a malleability spec's "kernel" section (the network, not how Θ is computed).
MALLEABILITY_HEAD_KEYS = ("readout", "sigma_w", "sigma_b", "sigma_a")
_MALLEABILITY_MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "relu": ("name", "sigma_w", "sigma_b", "sigma_a", "train_readout"),
    "mlp-attn": ("name", "depth", "rank", "constant_term", "normalize", "sigma_w", "sigma_b", "sigma_a",
                 "train_readout"),
}
_MODEL_OPTION_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "depth": lambda v, p: _int(v, p, minimum=1),
    "rank": _optional(lambda v, p: _int(v, p, minimum=1)),
    "constant_term": _bool,
    "normalize": _bool,
    "sigma_w": lambda v, p: _real(v, p, minimum=0.0, strict=True),
    "sigma_b": lambda v, p: _real(v, p, minimum=0.0),
    "sigma_a": lambda v, p: _real(v, p, minimum=0.0, strict=True),
    "train_readout": _bool,
}
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


def malleability_choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of a malleability spec's keys by group (``KeySpec.choices`` names one), from the
    modules that define them (imported on first use: they load JAX)."""
    # Deferred: these modules load JAX (and the malleability runner imports this module).
    from kernelattn.experiments import malleability
    from kernelattn.learning import attacks, influence, training

    return {
        "attacks": attacks.ATTACKS, "attack_targets": attacks.ATTACK_TARGETS, "kernels": influence.KERNELS,
        "ridge_kernels": influence.RIDGE_KERNELS, "influence": influence.INFLUENCE_METHODS,
        "targets": influence.TARGET_ENCODINGS, "models": influence.SUPPORTED_MODELS,
        "interventions": malleability.INTERVENTIONS, "nulls": malleability.NULL_KINDS,
        "modes": malleability.TRAININGS,
        "losses": training.LOSSES, "decay_modes": training.WEIGHT_DECAY_MODES,
        "binary_outputs": training.BINARY_OUTPUTS,
    }


def _config_section(value: Any, path: str, checks: Mapping[str, Callable[[Any, str], Any]], build: Callable,
                    what: str) -> dict[str, Any]:
    """A ``{field: value}`` section (``training``, ``attack_config``, ``kernel``): keys and values checked,
    then ``build(**section)`` run as a final check; the section as written is returned."""
    if value is None:
        return {}
    section = _mapping(value, path, what)
    _check_keys(section, path, tuple(checks))
    for key, item in section.items():
        checks[key](item, _join(path, key))
    try:
        build(**section)
    except ValueError as err:  # a combination only the class judges (e.g. bounds lo < hi)
        raise SpecError(path, str(err)) from None
    return dict(section)


def _bounds(value: Any, path: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SpecError(path, f"expected [lo, hi], got {_show(value)}")
    lo, hi = (_real(v, _join(path, i)) for i, v in enumerate(value))
    if not lo < hi:
        raise SpecError(path, f"expected lo < hi, got {_show(list(value))}")
    return lo, hi


def _malleability_model(value: Any, path: str, choices: Sequence[str]) -> Any:
    """A model name (aliases resolved) or ``{"name": ..., options}`` with the name resolved."""
    aliases = {alias: name for alias, name in MODEL_ALIASES.items() if name in choices}
    if isinstance(value, str):
        return _choice(value, path, choices, aliases)
    entry = _mapping(value, path, "a model name or entry")
    if "name" not in entry:
        raise SpecError(_join(path, "name"), "required key is missing")
    name = _choice(entry["name"], _join(path, "name"), choices, aliases)
    _check_keys(entry, path, _MALLEABILITY_MODEL_OPTIONS[name], context=f"for model {name!r}")
    for key, item in entry.items():
        if key != "name":
            _MODEL_OPTION_CHECKS[key](item, _join(path, key))
    return {**dict(entry), "name": name}


def _malleability_dataset(value: Any, path: str) -> tuple[dict[str, Any], str]:
    """(``kernelattn.data.load`` keyword arguments, table label) of one dataset entry."""
    parsed = _parse_dataset(value, path)  # the sweep's checks: keys, types, source options
    entry = dict(value)
    label = str(entry["label"]) if entry.get("label") else (
        parsed.name + ("" if entry.get("classes") is None else
                       " " + "-vs-".join(str(c) for c in entry["classes"])))
    kwargs = {"normalize": False, **{k: v for k, v in entry.items() if k not in ("label", "target")}}
    return kwargs, label


def _one_or_many(top: Mapping[str, Any], plural: str, default: Any, where: Callable[[str], str],
                 allow_empty: bool = False) -> tuple[list, Callable[[int], str]]:
    """The values of ``plural`` (or its singular spelling), and the path of the i-th."""
    singular = _PLURALS.get(plural)
    if singular is not None and plural in top and singular in top:
        raise SpecError(where(plural), f"give either {plural!r} or {singular!r}, not both")
    key = plural if plural in top else singular if singular is not None and singular in top else None
    if key is None:
        return list(default), (lambda i: where(plural))
    value = top[key]
    if isinstance(value, (list, tuple)):
        if not value and not allow_empty:
            raise SpecError(where(key), "expected a non-empty list, got []")
        return list(value), (lambda i: _join(where(key), i))
    if plural == "null_baselines":  # no one-value spelling: a string here is a mistake, not a list of letters
        raise SpecError(where(key), f"expected a list (e.g. [\"seed\", \"order\"], or [] for none), got {_show(value)}")
    return [value], (lambda i: where(key))


def _parse_malleability_body(top: Mapping[str, Any], where: Callable[[str], str], choices: Mapping[str, Any]) -> dict:
    """One variant's spec (base merged with its overrides) → the parsed dict; ``where(key)`` is the path
    of a top-level key in the user's file (``variants[i].key`` for an override)."""
    for key in top:
        if key not in MALLEABILITY_KEYS:
            hint = difflib.get_close_matches(key, list(MALLEABILITY_KEYS), n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise SpecError(where(key), f"unknown key of a malleability spec{suggestion} "
                                        f"(allowed: {', '.join(MALLEABILITY_KEYS)})")

    schema = _MALLEABILITY_KEYSPECS  # defaults and checks of the keys

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
        raise SpecError(where("datasets"), "required key is missing (e.g. \"datasets\": [{\"name\": \"digits\"}])")
    attack_config = _config_section(top.get("attack_config"), where("attack_config"), {
        "steps": lambda v, p: _int(v, p, minimum=1),
        "step_size": _optional(lambda v, p: _real(v, p, minimum=0.0, strict=True)),
        "random_start": _bool,
        "momentum": lambda v, p: _real(v, p, minimum=0.0),
        "target": lambda v, p: _choice(v, p, choices["attack_targets"]),
        "bounds": _bounds,
    }, _attack_config_class(), "an attack_config object")
    training = _config_section(top.get("training"), where("training"), {
        "learning_rate": lambda v, p: _real(v, p, minimum=0.0, strict=True),
        "batch_size": lambda v, p: _int(v, p, minimum=1),
        "epochs": lambda v, p: _int(v, p, minimum=0),
        "weight_decay": lambda v, p: _real(v, p, minimum=0.0),
        "loss": lambda v, p: _choice(v, p, choices["losses"]),
        "weight_decay_mode": lambda v, p: _choice(v, p, choices["decay_modes"]),
        "binary_output": lambda v, p: _choice(v, p, choices["binary_outputs"]),
    }, _train_config_class(), "a training object")
    head = _config_section(top.get("kernel"), where("kernel"),
                           {k: KERNEL_CHECKS[k] for k in MALLEABILITY_HEAD_KEYS}, lambda **_: None,
                           "a kernel object (the head: readout, sigma_w, sigma_b, sigma_a)")
    seeds_value = top.get("seeds", top.get("seed"))
    if "seeds" in top and "seed" in top:
        raise SpecError(where("seeds"), "give either 'seeds' or 'seed', not both")
    if isinstance(seeds_value, (list, tuple)):
        seeds = many("seeds")
        if len(set(seeds)) != len(seeds):
            raise SpecError(where("seeds" if "seeds" in top else "seed"), f"expected distinct seeds, got {seeds}")
    elif "seeds" in top:
        seeds = list(range(_int(seeds_value, where("seeds"), minimum=1, maximum=MAX_MALLEABILITY_SEED_COUNT)))
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
        "attack_targets": many("attack_targets", default=[attack_config.get("target",
                                                                            *schema["attack_targets"].default)]),
        "nulls": many("null_baselines"),
    }
    if "kernel" in parsed["attack_targets"] and not set(parsed["kernels"]) <= set(choices["ridge_kernels"]):
        raise SpecError(where("attack_targets"), f"'kernel' needs every influence kernel in "
                                                 f"{list(choices['ridge_kernels'])}, got influence_kernels "
                                                 f"{parsed['kernels']}")
    for i, model in enumerate(parsed["models"]):
        rank = model.get("rank") if isinstance(model, Mapping) else None
        for j, dataset in enumerate(parsed["datasets"]):
            n_train = dataset.get("n_train")
            if rank is not None and n_train is not None and rank > n_train:
                raise SpecError(f"{where('models')}[{i}].rank", f"expected <= n_train of datasets[{j}] ({n_train}), "
                                                                f"got {rank}")
    return parsed


def _train_config_class():
    from kernelattn.learning.training import TrainConfig

    return TrainConfig


def _attack_config_class():
    from kernelattn.learning.attacks import AttackConfig

    return AttackConfig


def malleability_cells(parsed: Mapping[str, Any]) -> int:
    """The number of cells of one parsed variant (see ``kernelattn.experiments.malleability``)."""
    per_group = sum(1 if i == "curated" else len(parsed["attack_targets"]) * len(parsed["attacks"])
                    * len(parsed["epsilons"]) for i in parsed["interventions"]) + len(parsed["nulls"])
    groups = (len(parsed["datasets"]) * len(parsed["seeds"]) * len(parsed["models"]) * len(parsed["widths"])
              * len(parsed["modes"]) * len(parsed["kernels"]))
    return groups * per_group


def malleability_variants(spec: Mapping[str, Any]) -> list[tuple[str, dict, dict]]:
    """The spec itself ("default") and each of its ``"variants"``: (label, merged spec, overrides).

    A variant is a mapping with a unique non-empty ``"label"`` and overrides
    of any spec key but ``name``/``kind``/``description``/``variants``;
    ``"n_train"`` sets every dataset's training-set size. An override of a
    plural key replaces its singular spelling too, and vice versa.
    """
    top = _mapping(spec, "", "a malleability spec object")
    base = {k: v for k, v in top.items() if k != "variants"}
    out: list[tuple[str, dict, dict]] = [("default", base, {})]
    variants = top.get("variants")
    if variants is None:
        return out
    if not isinstance(variants, (list, tuple)):
        raise SpecError("variants", f"expected a list of {{\"label\": ..., overrides}} objects, got {_show(variants)}")
    allowed = tuple(k for k in MALLEABILITY_KEYS if k not in VARIANT_FIXED_KEYS) + ("label", "n_train")
    for i, variant in enumerate(variants):
        path = f"variants[{i}]"
        entry = _mapping(variant, path, "a variant object")
        label = entry.get("label")
        if not isinstance(label, str) or not label.strip():
            raise SpecError(_join(path, "label"), f"expected a non-empty string, got {_show(label)}")
        if any(label == other for other, _, _ in out):
            raise SpecError(_join(path, "label"), f"expected a unique label, got {label!r} twice")
        fixed = sorted(set(entry) & set(VARIANT_FIXED_KEYS))
        if fixed:
            raise SpecError(path, f"a variant cannot override {fixed} (they name the spec)")
        _check_keys(entry, path, allowed, context="of a variant")
        overrides = {k: v for k, v in entry.items() if k != "label"}
        n_train = overrides.pop("n_train", None)
        merged = {k: v for k, v in base.items()
                  if k not in overrides and _PLURALS.get(k) not in overrides and _SINGULARS.get(k) not in overrides}
        merged.update(overrides)
        if n_train is not None:
            n_train = _int(n_train, _join(path, "n_train"), minimum=2)
            datasets = merged.pop("datasets", merged.pop("dataset", None))
            datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
            merged["datasets"] = [{**d, "n_train": n_train} if isinstance(d, Mapping) else d for d in datasets]
            overrides["datasets"] = merged["datasets"]
        out.append((label, merged, overrides))
    return out


def parse_malleability_spec(spec: Mapping[str, Any] | str | os.PathLike[str], *, source: str | None = None,
                            max_cells: int | None = None) -> MalleabilitySpec:
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
    try:
        return _parse_malleability(spec, source, resolve_max_cells(max_cells))
    except SpecError as err:
        if source and err.source is None:
            raise SpecError(err.path, err.problem, source) from None
        raise


def _parse_malleability(spec: Any, source: str | None, max_cells: int) -> MalleabilitySpec:
    top = _mapping(spec, "", "a malleability spec object")
    name = check_store_name(top["name"]) if "name" in top else None
    if "kind" in top and top["kind"] != "malleability":
        raise SpecError("kind", f"expected 'malleability' (or no kind), got {_show(top['kind'])}")
    description = _str(top.get("description", _MALLEABILITY_KEYSPECS["description"].default), "description")
    choices = malleability_choices()
    plans = []
    for i, (label, merged, overrides) in enumerate(malleability_variants(top)):
        where = (lambda key: key) if i == 0 else (
            lambda key, i=i, overrides=overrides: f"variants[{i - 1}].{key}" if key in overrides else key)
        plans.append((label, _parse_malleability_body(merged, where, choices)))
    counts = [malleability_cells(parsed) for _, parsed in plans]
    breakdown = " + ".join(f"{n:,} ({label})" for (label, _), n in zip(plans, counts)) if len(plans) > 1 else \
        "datasets × seeds × models × widths × training modes × influence kernels × (attack cells + nulls)"
    check_cell_count(sum(counts), max_cells, breakdown)
    return MalleabilitySpec(name, description, tuple(plans), sum(counts), source)
