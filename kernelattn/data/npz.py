"""A user's own dataset as one ``.npz`` file: arrays ``X`` (inputs) and ``y`` (class labels).

``X`` is ``(N, ...)`` numbers (features, or pixels), ``y`` is ``(N,)`` class
labels (integers or strings); the classes are the sorted distinct labels. The
train/test split is a seeded stratified one, as for ``digits``
(``test_fraction``, ``split_seed``), unless the file carries its own split as
``X_test`` and ``y_test`` (then ``X``, ``y`` are the training set). The file is
read with ``allow_pickle=False`` and its SHA-256 is recorded, so a changed file
is a different dataset.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from kernelattn.data.dataset import RawData
from kernelattn.data.digits import DEFAULT_TEST_FRACTION, check_split_options, stratified_split
from kernelattn.data.errors import ChecksumError, DatasetFormatError, DatasetNotFoundError

__all__ = ["SUFFIX", "file_sha256", "is_npz_name", "load_npz", "npz_class_names"]

SUFFIX = ".npz"


def is_npz_name(name: object) -> bool:
    """Whether a dataset name is the path of an ``.npz`` file (rather than a built-in dataset)."""
    return isinstance(name, (str, os.PathLike)) and str(name).lower().endswith(SUFFIX)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetNotFoundError(f"name: no such .npz file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise DatasetFormatError(f"{path}: not a readable .npz file without pickles ({err})") from None
    for key in ("X", "y"):
        if key not in arrays:
            raise DatasetFormatError(f"{path}: expected arrays 'X' and 'y', got {sorted(arrays)}")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DatasetFormatError(f"{path}: 'X_test' and 'y_test' go together, got {sorted(arrays)}")
    return arrays


def _labels(y: np.ndarray, what: str, path: Path) -> np.ndarray:
    if y.ndim != 1:
        raise DatasetFormatError(f"{path}: '{what}' must be (N,) class labels, got shape {y.shape}")
    if y.dtype.kind not in "iuUS":
        raise DatasetFormatError(f"{path}: '{what}' must hold integer or string class labels, got dtype {y.dtype}")
    return y


def npz_class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The class names of an ``.npz`` dataset (its sorted distinct labels, as text)."""
    arrays = _read(Path(path))
    labels = [_labels(arrays["y"], "y", Path(path))] + ([arrays["y_test"]] if "y_test" in arrays else [])
    return tuple(str(c) for c in np.unique(np.concatenate(labels)))


def load_npz(
    path: str | os.PathLike[str],
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
    sha256: str | None = None,
) -> RawData:
    """An ``.npz`` file as ``RawData`` (see the module docstring).

    Args:
      path: the file.
      test_fraction: share of each class sent to the test set (ignored when the
        file has ``X_test``/``y_test``).
      split_seed: seed of the stratified split.
      sha256: the file's expected SHA-256 (hex), e.g. the one a spec recorded; None: not checked.

    Raises:
      DatasetNotFoundError: no such file.
      ChecksumError: the file's SHA-256 is not ``sha256``.
      DatasetFormatError: missing arrays, mismatched lengths, labels that are not classes.
    """
    path = Path(path)
    test_fraction, split_seed = check_split_options(test_fraction, split_seed)
    arrays = _read(path)
    x, y = np.asarray(arrays["X"]), _labels(np.asarray(arrays["y"]), "y", path)
    if x.ndim < 2 or x.shape[0] != y.shape[0] or x.dtype.kind not in "iuf":
        raise DatasetFormatError(
            f"{path}: expected numeric X of shape (N, ...) with N = len(y) = {y.shape[0]}, got {x.dtype} {x.shape}"
        )
    names = npz_class_names(path)
    index = {name: i for i, name in enumerate(names)}

    def encode(labels: np.ndarray) -> np.ndarray:
        return np.asarray([index[str(v)] for v in labels], dtype=np.int64)

    digest = file_sha256(path)
    if sha256 is not None and str(sha256).lower() != digest:
        raise ChecksumError(f"{path}: SHA-256 {digest}, expected {sha256} (the file changed)")
    source: dict[str, Any] = {"loader": "npz", "path": str(path), "sha256": digest}
    if "X_test" in arrays:
        x_test = np.asarray(arrays["X_test"])
        y_test = _labels(np.asarray(arrays["y_test"]), "y_test", path)
        if x_test.shape[1:] != x.shape[1:] or x_test.shape[0] != y_test.shape[0]:
            raise DatasetFormatError(f"{path}: X_test {x_test.shape} does not match X {x.shape} and y_test")
        return RawData(
            x_train=x.astype(np.float64),
            labels_train=encode(y),
            x_test=x_test.astype(np.float64),
            labels_test=encode(y_test),
            class_names=names,
            pixel_max=None,
            source=source,
        )
    labels = encode(y)
    train_idx, test_idx = stratified_split(labels, test_fraction, np.random.default_rng(split_seed))
    source.update(test_fraction=test_fraction, split_seed=split_seed)
    return RawData(
        x_train=x[train_idx].astype(np.float64),
        labels_train=labels[train_idx],
        x_test=x[test_idx].astype(np.float64),
        labels_test=labels[test_idx],
        class_names=names,
        pixel_max=None,
        source=source,
    )
