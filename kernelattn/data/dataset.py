"""The ``Dataset`` value and the preprocessing that turns raw arrays into it.

Preprocessing (docs/math.md §1), in this order, each step optional:

1. class selection — keep the requested classes and relabel them 0..C-1 in
   the order given;
2. balanced, seeded subsampling — ``n // C`` samples per class, drawn with
   ``numpy.random.default_rng`` from a seed (train and test use independent
   streams spawned from it, so changing ``n_test`` leaves the training subset
   unchanged);
3. float64, pixels scaled to [0, 1] (``x / pixel_max``);
4. flattening to ``(n, d)``;
5. unit ℓ2 rows. A row of norm 0 cannot be normalized: it is a ``ValueError``
   naming the row (never a NaN);
6. target encoding: ``"labels"`` int64 ``(n,)``, ``"onehot"`` float64
   ``(n, C)``, ``"pm1"`` float64 ±1 — ``(n,)`` for two classes (class 0 → -1,
   class 1 → +1), one-vs-rest ``(n, C)`` for more.

Every function here is pure: arrays in, new arrays out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelattn.errors import InputValueError

__all__ = [
    "TARGETS",
    "Dataset",
    "RawData",
    "balanced_indices",
    "encode_targets",
    "normalize_rows",
    "resolve_classes",
    "scale_pixels",
]

#: Target encodings accepted by ``load(target=...)`` for classification.
TARGETS = ("labels", "onehot", "pm1")


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split ready for the kernels, immutable.

    Attributes:
      X_train: ``(n_train, d)`` float64 inputs (``(n_train, *image_shape)``
        when loaded with ``flatten=False``).
      y_train: targets in the requested encoding: int64 ``(n,)`` for
        ``"labels"``, float64 ``(n, C)`` for ``"onehot"``, float64 ±1 ``(n,)``
        (two classes) or ``(n, C)`` (one-vs-rest) for ``"pm1"``; float64
        ``(n,)`` teacher outputs for a regression task.
      X_test: ``(n_test, d)`` float64 inputs.
      y_test: test targets, encoded like ``y_train``.
      labels_train: ``(n_train,)`` int64 class indices in ``0..C-1``, always
        (all 0 for a regression task).
      labels_test: ``(n_test,)`` int64 class indices.
      class_names: names of the selected classes, in label order (empty for a
        regression task).
      metadata: name, source files used (paths and SHA-256), preprocessing
        options and seed; JSON-serialisable.

    The arrays are read-only views (not copies) of the arrays passed in.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    labels_train: np.ndarray
    labels_test: np.ndarray
    class_names: tuple[str, ...]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = np.asarray(getattr(self, f"X_{split}"), dtype=np.float64)
            labels = np.asarray(getattr(self, f"labels_{split}"))
            y = np.asarray(getattr(self, f"y_{split}"))
            if x.ndim < 2:
                raise InputValueError(f"X_{split}: expected an (n, d) array, got shape {x.shape}")
            if labels.ndim != 1 or labels.shape[0] != x.shape[0] or not np.issubdtype(labels.dtype, np.integer):
                raise InputValueError(
                    f"labels_{split}: expected ({x.shape[0]},) integer class indices, "
                    f"got shape {labels.shape} and dtype {labels.dtype}"
                )
            if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
                raise InputValueError(f"y_{split}: expected ({x.shape[0]},) or ({x.shape[0]}, C), got shape {y.shape}")
            object.__setattr__(self, f"X_{split}", _readonly(x.view()))
            object.__setattr__(self, f"labels_{split}", _readonly(labels.astype(np.int64, copy=False).view()))
            object.__setattr__(self, f"y_{split}", _readonly(y.view()))
        if self.X_train.shape[1:] != self.X_test.shape[1:]:
            raise InputValueError(
                f"X_test: expected samples of shape {self.X_train.shape[1:]} like X_train, got {self.X_test.shape[1:]}"
            )
        names = tuple(self.class_names)
        if not all(isinstance(name, str) for name in names):
            raise InputValueError(f"class_names: expected a tuple of str, got {names!r}")
        object.__setattr__(self, "class_names", names)
        for labels in (self.labels_train, self.labels_test):
            if names and labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                raise InputValueError(
                    f"labels: expected class indices in [0, {len(names) - 1}], got {labels.min()}..{labels.max()}"
                )

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.X_test.shape[0])

    @property
    def n_features(self) -> int:
        """Input dimension d (the product of the sample shape)."""
        return int(math.prod(self.X_train.shape[1:]))

    @property
    def n_classes(self) -> int:
        """Number of classes C (0 for a regression task)."""
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.metadata.get('name')!r}, X_train={self.X_train.shape}, "
            f"X_test={self.X_test.shape}, y_train={self.y_train.shape}, classes={self.class_names})"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class RawData:
    """What a source returns before preprocessing.

    Attributes:
      x_train: ``(N, *sample_shape)`` uint8 pixels or float64 features.
      labels_train: ``(N,)`` int64 class indices into ``class_names``.
      x_test, labels_test: the same for the test split.
      class_names: all class names of the source, in index order.
      pixel_max: the raw value that ``scale=True`` maps to 1.0 (255 for 8-bit
        images, 16 for digits); ``None`` when the features are not pixels.
      source: JSON-serialisable description of where the data came from.
      values_train, values_test: float64 regression targets, or ``None``.
    """

    x_train: np.ndarray
    labels_train: np.ndarray
    x_test: np.ndarray
    labels_test: np.ndarray
    class_names: tuple[str, ...]
    pixel_max: float | None
    source: dict[str, Any]
    values_train: np.ndarray | None = None
    values_test: np.ndarray | None = None


def resolve_classes(classes: Any, class_names: Sequence[str]) -> tuple[int, ...]:
    """Turn a class selection into source class indices, in the given order.

    Args:
      classes: ``None`` (all classes, natural order); a sequence whose items
        are class indices (int) or class names (str, case-insensitive); or one
        string ``"a-vs-b"`` (``"3-vs-8"``, ``"automobile-vs-airplane"``).
      class_names: the source's class names, in index order.

    Returns:
      Source class indices; position i becomes label i.

    Raises:
      ValueError: naming ``classes`` for unknown names, out-of-range indices,
        duplicates or fewer than two classes.
    """
    n = len(class_names)
    if classes is None:
        return tuple(range(n))
    if isinstance(classes, str):
        items: list[Any] = classes.split("-vs-") if "-vs-" in classes else [classes]
    elif isinstance(classes, (Sequence, np.ndarray)):
        items = list(classes)
    else:
        raise InputValueError(
            "classes: expected None, a sequence of class indices/names or 'a-vs-b', "
            f"got {type(classes).__name__} {classes!r}"
        )
    lowered = [name.lower() for name in class_names]
    resolved: list[int] = []
    for item in items:
        if isinstance(item, str):
            if item in class_names:
                index = class_names.index(item)
            elif item.lower() in lowered:
                index = lowered.index(item.lower())
            else:
                raise InputValueError(
                    f"classes: expected class names from {list(class_names)}, got unknown name {item!r}"
                )
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            index = int(item)
            if not 0 <= index < n:
                raise InputValueError(f"classes: expected class indices in [0, {n - 1}], got {index}")
        else:
            raise InputValueError(
                f"classes: expected class indices (int) or names (str), got {type(item).__name__} {item!r}"
            )
        resolved.append(index)
    if len(set(resolved)) != len(resolved):
        raise InputValueError(f"classes: expected distinct classes, got {classes!r}")
    if len(resolved) < 2:
        raise InputValueError(f"classes: expected at least 2 classes, got {classes!r}")
    return tuple(resolved)


def balanced_indices(
    labels: np.ndarray, n: int | None, n_classes: int, rng: np.random.Generator, *, argument: str
) -> np.ndarray:
    """Seeded, class-balanced sample of ``n // n_classes`` indices per class.

    Args:
      labels: ``(N,)`` int64 labels in ``0..n_classes-1``.
      n: requested total; ``None`` keeps every sample (unbalanced).
      n_classes: C.
      rng: the generator to draw with (consumed).
      argument: the option's name for error messages (``"n_train"``).

    Returns:
      ``(C * (n // C),)`` int64 indices into ``labels``, ascending.

    Raises:
      ValueError: naming ``argument`` when ``n < C`` or a class has fewer
        than ``n // C`` samples.
    """
    if n is None:
        return np.arange(labels.shape[0], dtype=np.int64)
    per_class = n // n_classes
    if per_class < 1:
        raise InputValueError(f"{argument}: expected at least one sample per class (>= {n_classes}), got {n}")
    chosen = []
    for label in range(n_classes):
        pool = np.flatnonzero(labels == label)
        if pool.size < per_class:
            raise InputValueError(
                f"{argument}: expected at most {pool.size * n_classes} ({n_classes} classes x {pool.size}, "
                f"the size of the smallest class), got {n} ({per_class} per class; class {label} has {pool.size})"
            )
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def scale_pixels(x: np.ndarray, pixel_max: float | None) -> np.ndarray:
    """Float64 copy of ``x``, divided by ``pixel_max`` when it is given.

    ``(n, ...)`` uint8 in ``[0, pixel_max]`` → ``(n, ...)`` float64 in [0, 1].
    """
    out = np.asarray(x, dtype=np.float64)
    return out / pixel_max if pixel_max is not None else out.copy()


def normalize_rows(x: np.ndarray, *, name: str, source_index: np.ndarray | None = None) -> np.ndarray:
    """Scale each sample of ``(n, ...)`` float64 ``x`` to unit ℓ2 norm.

    Raises:
      ValueError: naming ``name`` and the first row of norm 0 (and its index
        in the source split when ``source_index`` is given).
    """
    flat = x.reshape(x.shape[0], -1)
    norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        row = int(zero[0])
        where = f" (index {int(source_index[row])} in the source split)" if source_index is not None else ""
        raise InputValueError(
            f"{name}: row {row}{where} has zero l2 norm and cannot be scaled to unit norm "
            f"({zero.size} such row(s)); pass normalize=False or pick another subset/seed"
        )
    return (flat / norms[:, None]).reshape(x.shape)


def encode_targets(labels: np.ndarray, n_classes: int, target: str) -> np.ndarray:
    """Encode ``(n,)`` int labels in ``0..C-1``.

    Returns:
      ``"labels"``: int64 ``(n,)``; ``"onehot"``: float64 ``(n, C)``;
      ``"pm1"``: float64 ``(n,)`` with class 0 → -1, class 1 → +1 when C = 2,
      else float64 ``(n, C)`` one-vs-rest (+1 true class, -1 elsewhere).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if target == "labels":
        return labels.copy()
    onehot = np.eye(n_classes, dtype=np.float64)[labels]
    if target == "onehot":
        return onehot
    if target == "pm1":
        return np.where(labels == 1, 1.0, -1.0) if n_classes == 2 else 2.0 * onehot - 1.0
    raise InputValueError(f"target: expected one of {sorted(TARGETS)}, got {target!r}")
