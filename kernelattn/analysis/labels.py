"""Display labels of models and datasets: one style for specs, sweep tables, the report and figures.

Stores keep the canonical machine names and options ("mlp-attn", depth 2);
tables show the model's registry label with the options that set it apart
from the default model ("MLP-Attn (k=2)", "MLP-Attn (r=10)", "2L-ReLU"), and
datasets by their title and class selection ("MNIST 3-vs-8", "synthetic κ=100
d=256") unless a spec gives an explicit ``label``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kernelattn.analysis.formatting import fmt
from kernelattn.registry import MODELS, canonical_model_name, dataset_title, is_user_model

__all__ = ["classes_text", "dataset_label", "display_order", "model_info", "model_label"]

#: Options shown for any model when given (the head's, as some stores record them with the model).
_HEAD_KEYS = ("sigma_w", "sigma_b", "sigma_a", "train_readout", "readout")


def _canonical(name: str) -> str:
    try:
        return canonical_model_name(name)
    except ValueError:  # a name no registry knows (an old store): shown as stored
        return str(name).lower()


def model_info(model: Any) -> dict[str, Any]:
    """Label and options of a model as stored in a cell or spec entry (a name, or a dict of options).

    Returns:
      ``model`` (the display label), ``model_name`` (canonical), ``depth``,
      ``rank`` (NaN if none), ``variant`` (True when an option departs from the
      default model, i.e. the label has a parenthesis).
    """
    if isinstance(model, Mapping):
        options = dict(model)
        name = str(options.pop("name", "?"))
    else:
        options, name = {}, str(model)
    options.pop("label", None)
    name = _canonical(name)
    depth = int(options.get("depth") or 1)
    rank = options.get("rank")
    extras = []
    if name == "mlp-attn":
        if rank is not None:
            extras.append(f"r={rank}")
        if depth != 1:
            extras.append(f"k={depth}")
        if options.get("constant_term"):
            extras.append("+1")
        if options.get("normalize") is False:
            extras.append("no norm")
    elif name == "qkv-attn":
        if options.get("scaling", "linear") != "linear":
            extras.append(f"s={options['scaling']}")
        if options.get("head_width", "width") != "width":
            extras.append(f"h={options['head_width']}")
        if options.get("normalize") is True:
            extras.append("norm")
    elif is_user_model(name):
        extras += [f"{k}={v}" for k, v in sorted(options.items()) if k not in _HEAD_KEYS]
    elif name in MODELS:  # options the registry always shows ("ReLU MLP (L=2)")
        defaults = MODELS[name].defaults()
        extras += [f"{symbol}={options.get(key, defaults.get(key))}" for key, symbol in MODELS[name].shown]
    for key in _HEAD_KEYS:
        if key in options:
            extras.append(f"{key}={options[key]}")
    if name in MODELS:
        base = MODELS[name].label
    else:
        base = name.rpartition(":")[2] if is_user_model(name) else name
    return {
        "model": base + (f" ({', '.join(extras)})" if extras else ""),
        "model_name": name,
        "depth": depth,
        "rank": np.nan if rank is None else float(rank),
        "variant": bool(extras),
    }


def model_label(model: Any) -> str:
    """The display label of a model ("2L-ReLU", "MLP-Attn (r=10)", ...): see :func:`model_info`."""
    return model_info(model)["model"]


def classes_text(classes: Any) -> str | None:
    """A class selection as text: "3-vs-8" (None for all classes)."""
    if classes is None:
        return None
    if isinstance(classes, str):
        return classes
    return "-vs-".join(str(c) for c in classes)


def dataset_label(entry: Mapping[str, Any]) -> str:
    """The display label of a dataset entry (a spec entry or a stored cell's dataset options).

    Its explicit ``label`` if it has one; else the dataset's title ("MNIST",
    "Fashion-MNIST", an ``.npz`` file's stem), the class selection
    ("MNIST 3-vs-8") and, for synthetic data, κ and d ("synthetic κ=100 d=256").
    """
    if entry.get("label"):
        return str(entry["label"])
    name = str(entry.get("name", "?"))
    label = dataset_title(name)
    classes = classes_text(entry.get("classes"))
    if classes:
        label += f" {classes}"
    if name == "synthetic":
        if "kappa" in entry:
            label += f" κ={fmt(entry['kappa'], 3)}"
        if "d" in entry:
            label += f" d={entry['d']}"
    return label


def display_order(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The rows of ``frame`` in table order, column by column of ``by``.

    Models: 2L-ReLU, then MLP-Attn, then the others (variants) in the order
    of their spec entries (``model_index``); attacks: none, FGSM, PGD, MIM;
    datasets in spec order (``dataset_index``); other text columns in order of
    first appearance; numbers increasing. Stable.
    """
    if frame.empty:
        return frame
    keys = []
    for column in by:
        values = frame[column]
        if column == "model":
            index = frame["model_index"] if "model_index" in frame else pd.Series(0, index=frame.index)
            ranks = {
                m: (0 if m == "2L-ReLU" else 1 if m == "MLP-Attn" else 2, int(index[values == m].min()), m)
                for m in values.unique()
            }
            order = {m: i for i, m in enumerate(sorted(ranks, key=lambda m: ranks[m]))}
            keys.append(values.map(order))
        elif column == "attack":
            order = {a: i for i, a in enumerate(("none", "fgsm", "pgd", "mim"))}
            keys.append(values.map(lambda a, order=order: order.get(a, len(order))))
        elif column == "dataset" and "dataset_index" in frame:
            keys.append(frame["dataset_index"])
        elif values.dtype == object:
            order = {v: i for i, v in enumerate(dict.fromkeys(values))}
            keys.append(values.map(order))
        else:
            keys.append(values)
    index = np.lexsort([k.to_numpy() for k in reversed(keys)])
    return frame.iloc[index]
