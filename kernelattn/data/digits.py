"""scikit-learn's bundled 8×8 digits: the dataset that needs no download.

1,797 images of 8×8 pixels with values 0..16 (``scale=True`` divides by 16),
10 classes. There is no official split: a stratified split is drawn with
``numpy.random.default_rng(split_seed)`` — per class, ``round(test_fraction ·
count)`` samples go to the test set. Defaults: ``test_fraction = 0.2``,
``split_seed = 0`` (a fixed split, independent of ``load``'s ``seed``, which
only drives subsampling).

Note: 3 of the 64 pixels are 0 in every image, so the data have numerical
rank 61 (docs/math.md §2).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from kernelattn._validation import check_int, check_real
from kernelattn.data.dataset import RawData

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "DIGITS_CLASSES",
    "check_split_options",
    "load_digits",
    "read_digits",
    "stratified_split",
]

DEFAULT_TEST_FRACTION = 0.2
DIGITS_CLASSES = tuple(str(i) for i in range(10))


def check_split_options(test_fraction: float, split_seed: int) -> tuple[float, int]:
    """The checked ``(test_fraction, split_seed)`` of a seeded split: a fraction in (0, 1), a seed >= 0.

    Raises:
      ValueError: naming ``test_fraction`` or ``split_seed``.
    """
    test_fraction = check_real(
        test_fraction, "test_fraction", minimum=0.0, maximum=1.0, strict_min=True, strict_max=True
    )
    return test_fraction, check_int(split_seed, "split_seed", minimum=0)


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split.

    Args:
      labels: ``(N,)`` int labels.
      test_fraction: share of each class sent to the test set.
      rng: generator to draw with (consumed).

    Returns:
      ``(train_idx, test_idx)``: ascending int64 indices partitioning ``0..N-1``.
    """
    test = []
    for label in np.unique(labels):
        pool = rng.permutation(np.flatnonzero(labels == label))
        test.append(pool[: round(test_fraction * pool.size)])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(labels.shape[0]), test_idx).astype(np.int64)
    return train_idx, test_idx


def _bundled_csv() -> Path | None:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def read_digits() -> tuple[np.ndarray, np.ndarray, str]:
    """All 1,797 digits: float64 ``(1797, 8, 8)`` images (0..16), int64 labels.

    Reads scikit-learn's bundled ``datasets/data/digits.csv.gz`` (64 pixels
    and the label per line) directly — what ``sklearn.datasets.load_digits``
    reads — because importing ``sklearn.datasets`` costs seconds; falls back
    to ``load_digits`` when the file is not where it is expected.

    Returns:
      ``(images, labels, loader)`` where ``loader`` names the path taken.
    """
    path = _bundled_csv()
    if path is not None:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
        if table.shape == (1797, 65):
            return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64), f"sklearn bundled file {path}"
    # Deferred: importing sklearn.datasets costs seconds, and only this fallback needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return (
        np.asarray(bunch.images, dtype=np.float64),
        np.asarray(bunch.target, dtype=np.int64),
        "sklearn.datasets.load_digits",
    )


def load_digits(*, test_fraction: float = DEFAULT_TEST_FRACTION, split_seed: int = 0) -> RawData:
    """The sklearn digits as ``RawData``.

    Returns:
      float64 images ``(n, 8, 8)`` with values 0..16, int64 labels,
      ``pixel_max = 16``; about 1,437 train / 360 test with the defaults.
    """
    test_fraction, split_seed = check_split_options(test_fraction, split_seed)
    images, labels, loader = read_digits()
    train_idx, test_idx = stratified_split(labels, test_fraction, np.random.default_rng(split_seed))
    return RawData(
        x_train=images[train_idx],
        labels_train=labels[train_idx],
        x_test=images[test_idx],
        labels_test=labels[test_idx],
        class_names=DIGITS_CLASSES,
        pixel_max=16.0,
        source={
            "loader": loader,
            "sklearn_version": importlib.metadata.version("scikit-learn"),
            "test_fraction": test_fraction,
            "split_seed": split_seed,
        },
    )
