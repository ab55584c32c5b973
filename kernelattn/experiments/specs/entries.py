"""The dataset and model entries of a spec: ``"datasets": [...]``, ``"models": [...]``.

A dataset entry is ``kernelattn.data.load``'s options plus a table label; a
model entry is a registry name (``kernelattn.registry``: built-in names,
aliases, or a user's "module:attr") plus its options. Both parse into frozen
dataclasses whose ``identity()`` is what makes up a cell's key, and whose
label (given, or the display label plus the options telling equal ones apart)
names them in tables. Sweep specs use both; malleability specs use the datasets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kernelattn.analysis.labels import dataset_label, model_label
from kernelattn.data.api import MNIST_SOURCES
from kernelattn.data.npz import file_sha256, is_npz_name
from kernelattn.experiments.specs.checks import (
    MAX_WIDTH,
    SpecError,
    check_bool,
    check_choice,
    check_int,
    check_keys,
    check_mapping,
    check_real,
    check_str,
    freeze,
    freeze_mapping,
    join_path,
    nullable,
    show,
    thaw,
)
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
    "MODEL_NAMES",
    "MODEL_OPTIONS",
    "TARGETS",
    "DatasetSpec",
    "ModelSpec",
    "assign_labels",
    "parse_dataset",
    "parse_model",
    "source_options",
]

#: Built-in dataset and model names (``kernelattn.registry``); a path ending in ".npz" and a
#: "module:attr" reference name a user's dataset and model.
DATASET_NAMES = dataset_names()
MODEL_NAMES = model_names()
#: The target encodings of a dataset entry (see ``DatasetSpec.target``).
TARGETS = ("auto", "onehot", "pm1")


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
                raise SpecError(
                    join_path(path, i), f"expected a class index (integer) or name (string), got {show(item)}"
                )
            items.append(item)
        if len(items) < 2:
            raise SpecError(path, f"expected at least 2 classes, got {show(list(value))}")
        if len(set(items)) != len(items):
            raise SpecError(path, f"expected distinct classes, got {show(list(value))}")
        return tuple(items)
    raise SpecError(path, f"expected null, a list of class indices/names or 'a-vs-b', got {show(value)}")


def _number_list(value: Any, path: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(path, f"expected a non-empty list of numbers, got {show(value)}")
    return tuple(check_real(v, join_path(path, i), minimum=0.0, strict=True) for i, v in enumerate(value))


def _string_or_strings(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(check_str(v, join_path(path, i)) for i, v in enumerate(value))
    raise SpecError(path, f"expected a string or a list of strings, got {show(value)}")


_SOURCE_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "split_seed": lambda v, p: check_int(v, p, minimum=0),
    "test_fraction": lambda v, p: check_real(v, p, minimum=0.0, strict=True, maximum=1.0, strict_max=True),
    "d": lambda v, p: check_int(v, p, minimum=1),
    "kappa": lambda v, p: check_real(v, p, minimum=1.0),
    "n_classes": lambda v, p: check_int(v, p, minimum=2),
    "singular_values": _number_list,
    "task": lambda v, p: check_choice(v, p, ("classification", "regression")),
    "teacher_width": lambda v, p: check_int(v, p, minimum=1),
    "base_url": _string_or_strings,
    "checksums": lambda v, p: freeze_mapping(v, p),
    "max_bytes": lambda v, p: check_int(v, p, minimum=1),
    "system_dirs": lambda v, p: (
        tuple(check_str(x, join_path(p, i)) for i, x in enumerate(v))
        if isinstance(v, (list, tuple))
        else check_str(v, p)
    ),
    "timeout": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
    "source": lambda v, p: check_choice(v, p, tuple(MNIST_SOURCES)),
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
        kwargs.update({k: thaw(v) for k, v in self.options})
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
        out.update({k: thaw(v) for k, v in self.options})
        return out

    def identity(self) -> dict[str, Any]:
        """The options that determine the data (label, paths and download settings excluded)."""
        return {k: v for k, v in self.to_dict().items() if k not in _DATASET_COSMETIC}


#: The keys of every dataset entry of a sweep spec (plus the dataset's own :func:`source_options`).
DATASET_KEYS = (
    "name",
    "label",
    "classes",
    "n_train",
    "n_test",
    "seed",
    "scale",
    "normalize",
    "target",
    "data_dir",
    "download",
)


def _label(entry: Mapping[str, Any], path: str) -> str:
    """The explicit label, or "" (filled in by ``assign_labels``)."""
    if "label" not in entry:
        return ""
    label = check_str(entry["label"], join_path(path, "label"))
    if not label.strip():
        raise SpecError(join_path(path, "label"), f"expected a non-empty string, got {show(label)}")
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


def assign_labels(entries: tuple, key: str) -> tuple:
    """Default label: the display label (``kernelattn.analysis.labels``: "MLP-Attn (k=2)", "MNIST 3-vs-8"),
    plus the options that tell apart entries whose display labels coincide."""
    display = dataset_label if key == "datasets" else model_label
    auto = [None if e.label else display(e.identity()) for e in entries]
    out = []
    for entry, base in zip(entries, auto):
        if base is None:  # labelled by the spec
            out.append(entry)
            continue
        same = [e.identity() for e, a in zip(entries, auto) if a == base]
        mine = entry.identity()
        differing = [k for k in mine if k != "name" and any(other.get(k) != mine[k] for other in same)]
        label = base + (f" ({', '.join(f'{k}={_label_value(mine[k])}' for k in differing)})" if differing else "")
        out.append(dataclasses.replace(entry, label=label))
    labels = [e.label for e in out]
    for i, label in enumerate(labels):
        first = labels.index(label)
        if first != i:
            raise SpecError(
                f"{key}[{i}].label",
                f'duplicate label {label!r} (also {key}[{first}]); give each entry a distinct "label"',
            )
    return tuple(out)


def parse_dataset(value: Any, path: str) -> DatasetSpec:
    """One dataset entry (at key path ``path``); its label is ``""`` unless given (see :func:`assign_labels`)."""
    entry = check_mapping(value, path, "a dataset entry")
    if "name" not in entry:
        raise SpecError(join_path(path, "name"), "required key is missing")
    if is_npz_name(entry["name"]):
        name = check_str(entry["name"], join_path(path, "name"))
        if not Path(name).is_file():
            raise SpecError(
                join_path(path, "name"),
                f"no such .npz file {name!r} (a path relative to the working directory, or absolute)",
            )
    else:
        name = check_choice(entry["name"], join_path(path, "name"), DATASET_NAMES)
    own_options = source_options(name)
    allowed = DATASET_KEYS + own_options
    check_keys(entry, path, allowed, context=f"for dataset {name!r}")
    p = lambda key: join_path(path, key)  # noqa: E731
    fields: dict[str, Any] = {"name": name}
    if "classes" in entry:
        fields["classes"] = _classes(entry["classes"], p("classes"))
        if name == "synthetic" and fields["classes"] is not None:
            raise SpecError(p("classes"), "expected null for 'synthetic' (use n_classes)")
    for key in ("n_train", "n_test"):
        if key in entry:
            at_least = 2 if key == "n_train" else 1
            fields[key] = nullable(functools.partial(check_int, minimum=at_least))(entry[key], p(key))
    if "seed" in entry:
        fields["seed"] = check_int(entry["seed"], p("seed"), minimum=0)
    for key in ("scale", "normalize", "download"):
        if key in entry:
            fields[key] = check_bool(entry[key], p(key))
    if "target" in entry:
        fields["target"] = check_choice(entry["target"], p("target"), TARGETS)
    if "data_dir" in entry:
        fields["data_dir"] = nullable(check_str)(entry["data_dir"], p("data_dir"))
    options = []
    for key in own_options:
        if key in entry:
            check = _SOURCE_CHECKS.get(key, freeze)  # options unknown here: any JSON value, checked by the loader
            options.append((key, check(entry[key], p(key))))
    if is_npz_name(name):  # the file's content is part of the dataset's identity
        digest = file_sha256(name)
        given = dict(options)
        if given.get("sha256", digest) != digest:
            raise SpecError(
                p("sha256"), f"expected the SHA-256 of {name} ({digest}), got {show(given['sha256'])}: the file changed"
            )
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
    name: ("name", "label", *tuple(k for k, _ in model_entry(name).options)) for name in MODEL_NAMES
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
            return {"name": self.name, "label": self.label, **{k: thaw(v) for k, v in self.options}}
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


def parse_model(value: Any, path: str) -> ModelSpec:
    """One model entry (at key path ``path``); its label is ``""`` unless given (see :func:`assign_labels`)."""
    entry = check_mapping(value, path, "a model entry")
    if "name" not in entry:
        raise SpecError(join_path(path, "name"), "required key is missing")
    if is_user_model(entry["name"]):
        return _parse_user_model(entry, path)
    name = check_choice(entry["name"], join_path(path, "name"), MODEL_NAMES, MODEL_ALIASES)
    allowed = MODEL_OPTIONS[name]
    for key in entry:
        if key not in allowed and any(key in opts for opts in MODEL_OPTIONS.values()):
            owners = [m for m, opts in MODEL_OPTIONS.items() if key in opts]
            raise SpecError(
                join_path(path, key),
                f"not an option of model {name!r} (it applies to "
                f"{', '.join(owners)}; allowed here: {', '.join(allowed)})",
            )
    check_keys(entry, path, allowed, context=f"for model {name!r}")
    p = lambda key: join_path(path, key)  # noqa: E731
    fields: dict[str, Any] = {"name": name}
    if "depth" in entry:
        fields["depth"] = check_int(entry["depth"], p("depth"), minimum=1)
    if "rank" in entry:
        fields["rank"] = nullable(lambda v, q: check_int(v, q, minimum=1))(entry["rank"], p("rank"))
    if "constant_term" in entry:
        fields["constant_term"] = check_bool(entry["constant_term"], p("constant_term"))
    fields["normalize"] = check_bool(entry["normalize"], p("normalize")) if "normalize" in entry else name != "qkv-attn"
    if "head_width" in entry:
        hw = entry["head_width"]
        if isinstance(hw, str):
            if hw != "width":
                raise SpecError(p("head_width"), f'expected an integer >= 1 or "width", got {show(hw)}')
            fields["head_width"] = hw
        else:
            fields["head_width"] = check_int(hw, p("head_width"), minimum=1, maximum=MAX_WIDTH)
    if "scaling" in entry:
        fields["scaling"] = check_choice(entry["scaling"], p("scaling"), ("linear", "sqrt"))
    fields["label"] = _label(entry, path)
    return ModelSpec(**fields)


def _parse_user_model(entry: Mapping[str, Any], path: str) -> ModelSpec:
    """A user's model, ``"name": "module:attr"``: its options are those of its registry entry."""
    name = check_str(entry["name"], join_path(path, "name"))
    try:
        model = model_entry(name)
    except ValueError as err:
        raise SpecError(join_path(path, "name"), str(err)) from None
    defaults = model.defaults()
    check_keys(
        entry,
        path,
        ("name", "label", *tuple(defaults)),
        context=f"for model {name!r}",
        required=[k for k, v in defaults.items() if v is REQUIRED],
    )
    options = tuple(sorted((k, freeze(entry[k], join_path(path, k))) for k in entry if k not in ("name", "label")))
    return ModelSpec(name=name, label=_label(entry, path), options=options)
