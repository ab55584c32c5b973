"""CIFAR-10 from the standard python tarball ``cifar-10-python.tar.gz``.

The tarball holds ``cifar-10-batches-py/data_batch_1`` … ``data_batch_5``,
``test_batch`` and ``batches.meta``: Python pickles (written by Python 2 with
numpy). Pickles can run arbitrary code, so they are loaded with
:class:`RestrictedUnpickler`, whose ``find_class`` resolves only the numpy
array reconstructors the format needs and refuses every other global. The
tarball is verified against its published SHA-256 before it is opened, then
read member by member in memory (``files.iter_tar_files``): nothing is
extracted to disk.

Images are returned as ``(N, 32, 32, 3)`` uint8 (height, width, RGB); with
``flatten=True`` a sample is that array flattened in C order.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kernelattn.data.dataset import RawData
from kernelattn.data.errors import DatasetFormatError, UnsafeFileError
from kernelattn.data.files import (
    DOWNLOAD_TIMEOUT_S,
    MAX_DECOMPRESSED_BYTES,
    FileSource,
    FileSpec,
    acquire,
    iter_tar_files,
)

__all__ = ["CIFAR10", "CIFAR10_CLASSES", "RestrictedUnpickler", "load_cifar10", "parse_cifar10_tar", "safe_unpickle"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR10 = FileSource(
    name="cifar10",
    files=(
        FileSpec(
            "cifar-10-python.tar.gz",
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            None,
            170498071,
        ),
    ),
    urls=("https://www.cs.toronto.edu/~kriz/",),
    system_names=("cifar-10", "cifar10"),
)

_PREFIX = "cifar-10-batches-py/"
_TRAIN_BATCHES = tuple(f"{_PREFIX}data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = f"{_PREFIX}test_batch"
_META = f"{_PREFIX}batches.meta"
_PIXELS = 3 * 32 * 32


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFileError(f"pickle calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return text.encode("latin-1")


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    """The only globals a numpy-array pickle needs, under both module spellings."""
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        from numpy._core import multiarray, numeric
    else:
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]  # pickle helper, not in the stubs
    return allowed


def _declared_bytes(shape: Any, dtype: Any) -> int:
    """Bytes an array of ``shape`` and ``dtype`` would take, refusing shapes and dtypes no data file has."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise UnsafeFileError(f"pickle declares an array of shape {shape!r}; expected a tuple of sizes >= 0")
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsafeFileError(
            f"pickle declares an array of dtype {dtype} (Python objects); only plain numeric arrays are allowed"
        )
    count = 1
    for n in shape:
        count *= int(n)
    return count * dtype.itemsize


class _CappedArrays:
    """What the unpickler hands out for ``numpy.ndarray`` and ``_reconstruct``: each checks the array's
    declared size against the cap *before* numpy allocates it (a 2 KB pickle can otherwise declare a
    2 GiB array: ``ndarray((2**31,), "u1")``, or a ``__setstate__`` with a huge shape)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        cap = self

        class GuardedArray(np.ndarray):
            """An ndarray built only through checked paths; turned back into a plain ndarray after loading."""

            def __new__(cls, shape, dtype=float, *args, **kwargs):
                cap.check(shape, dtype)
                return np.ndarray.__new__(cls, shape, dtype, *args, **kwargs)

            def __setstate__(self, state):
                if not isinstance(state, tuple) or len(state) not in (4, 5):
                    raise UnsafeFileError(f"pickle gives an array state of type {type(state).__name__}; refused")
                shape, dtype, raw = state[-4], state[-3], state[-1]
                if not isinstance(dtype, np.dtype):
                    raise UnsafeFileError("pickle gives an array state without a dtype; refused")
                size = cap.check(shape, dtype)
                if not isinstance(raw, (bytes, bytearray)) or len(raw) != size:
                    raise UnsafeFileError(
                        f"pickle gives {len(raw) if isinstance(raw, (bytes, bytearray)) else 'no'} "
                        f"data bytes for an array of {size} bytes; refused"
                    )
                return np.ndarray.__setstate__(self, state)

        self.array_type = GuardedArray

    def check(self, shape: Any, dtype: Any) -> int:
        size = _declared_bytes(shape, dtype)
        if size > self.max_bytes:
            dims = tuple(int(n) for n in np.atleast_1d(shape))
            raise UnsafeFileError(
                f"pickle declares an array of {size} bytes (shape {dims}, "
                f"{np.dtype(dtype)}), more than the cap of {self.max_bytes} bytes; refused before "
                "allocating"
            )
        return size

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not self.array_type:
            raise UnsafeFileError(f"pickle asks _reconstruct for {subtype!r}, not numpy.ndarray; refused")
        self.check(shape, dtype)
        return np.ndarray.__new__(self.array_type, shape, dtype)

    def frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        _declared_bytes(shape, dtype)  # refuses object dtypes; the data itself is already in memory
        return _numpy_reconstructors()[("numpy._core.numeric", "_frombuffer")](buffer, dtype, shape, order)


def _plain(value: Any) -> Any:
    """The unpickled value with every guarded array turned back into a plain ``np.ndarray`` (a view)."""
    if isinstance(value, np.ndarray):
        return value.view(np.ndarray) if type(value) is not np.ndarray else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array reconstructors, and caps what they allocate.

    Plain containers (dict, list, tuple, bytes, str, int, float) are pickle
    opcodes and need no global; numpy arrays need ``_reconstruct`` (or
    ``_frombuffer`` for protocol 5), ``ndarray`` and ``dtype``; bytes written
    by Python 3 at protocol 2 need ``_codecs.encode`` (allowed for latin-1
    only, the encoding pickle itself uses). Any other
    ``module.name`` — ``os.system``, ``builtins.eval``, ``subprocess.Popen`` —
    raises ``UnsafeFileError`` before anything is called.

    Every array's declared size (shape × itemsize, from the constructor call
    or the state) is checked against ``max_bytes`` before numpy allocates it,
    and object dtypes are refused, so a small pickle cannot build a huge
    array (a compression bomb in disguise). ``load()`` returns plain arrays.
    """

    def __init__(self, file: Any, *, max_bytes: int = MAX_DECOMPRESSED_BYTES, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._arrays = _CappedArrays(max_bytes)

    def find_class(self, module: str, name: str) -> Any:
        allowed = _numpy_reconstructors()
        if (module, name) in allowed:
            if name == "ndarray":
                return self._arrays.array_type
            if name == "_reconstruct":
                return self._arrays.reconstruct
            if name == "_frombuffer":
                return self._arrays.frombuffer
            return allowed[(module, name)]
        raise UnsafeFileError(f"pickle asks for the global {module}.{name}, which is not allowed; refused")

    def load(self) -> Any:
        return _plain(super().load())

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError("pickle uses persistent ids, which are not allowed; refused")


def safe_unpickle(data: bytes, *, name: str, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding="bytes"``).

    Args:
      data: the pickle.
      name: file name for messages.
      max_bytes: largest array (declared shape × itemsize) it may build.

    Raises:
      UnsafeFileError: a disallowed global, an object array, or an array
        declared larger than ``max_bytes`` (refused before allocating).
      DatasetFormatError: a malformed pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes", max_bytes=max_bytes).load()
    except UnsafeFileError as err:
        raise UnsafeFileError(f"{name}: {err}") from None
    except Exception as err:  # malformed stream: UnpicklingError, EOFError, ValueError, ...
        raise DatasetFormatError(f"{name}: not a readable pickle ({type(err).__name__}: {err})") from err


def _get(mapping: Any, key: str, *, name: str) -> Any:
    if not isinstance(mapping, dict):
        raise DatasetFormatError(f"{name}: expected a pickled dict, got {type(mapping).__name__}")
    for k in (key.encode(), key):
        if k in mapping:
            return mapping[k]
    raise DatasetFormatError(f"{name}: missing key {key!r}")


def _batch(obj: Any, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 32, 32, 3)`` uint8 images and ``(N,)`` int64 labels of one batch."""
    data = _get(obj, "data", name=name)
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, _PIXELS) if len(data) % _PIXELS == 0 else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{name}: expected data as uint8 (N, {_PIXELS}), got {described}")
    labels_obj = _get(obj, "labels", name=name)
    if not isinstance(labels_obj, (list, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels_obj
    ):
        raise DatasetFormatError(f"{name}: expected labels as a list of ints")
    labels = np.asarray(labels_obj, dtype=np.int64).reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise DatasetFormatError(f"{name}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DatasetFormatError(f"{name}: labels outside 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _class_names(obj: Any, *, name: str) -> tuple[str, ...]:
    names = _get(obj, "label_names", name=name)
    if (
        not isinstance(names, list)
        or len(names) != len(CIFAR10_CLASSES)
        or not all(isinstance(n, (bytes, str)) and 0 < len(n) <= 64 for n in names)
    ):
        raise DatasetFormatError(f"{name}: expected label_names as a list of 10 short strings")
    return tuple(n.decode("ascii", "replace") if isinstance(n, bytes) else n for n in names)


def parse_cifar10_tar(data: bytes, *, name: str, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> RawData:
    """Parse the (verified) ``cifar-10-python.tar.gz`` bytes.

    Returns:
      ``RawData`` with ``(50000, 32, 32, 3)`` / ``(10000, 32, 32, 3)`` uint8
      images (whatever the batches hold), int64 labels, class names from
      ``batches.meta``, ``pixel_max = 255``.
    """
    wanted = {*_TRAIN_BATCHES, _TEST_BATCH, _META}
    members: dict[str, bytes] = {}
    for member, content in iter_tar_files(data, max_bytes=max_bytes, name=name):
        if member in wanted:
            members[member] = content
    missing = sorted(wanted - members.keys())
    if missing:
        raise DatasetFormatError(f"{name}: missing archive members {missing}")
    train = [_batch(safe_unpickle(members[m], name=m, max_bytes=max_bytes), name=m) for m in _TRAIN_BATCHES]
    x_test, labels_test = _batch(
        safe_unpickle(members[_TEST_BATCH], name=_TEST_BATCH, max_bytes=max_bytes), name=_TEST_BATCH
    )
    class_names = _class_names(safe_unpickle(members[_META], name=_META, max_bytes=max_bytes), name=_META)
    return RawData(
        x_train=np.concatenate([x for x, _ in train]),
        labels_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        labels_test=labels_test,
        class_names=class_names,
        pixel_max=255.0,
        source={},
    )


def load_cifar10(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    checksums: Mapping[str, Any] | None = None,
    base_url: str | Sequence[str] | None = None,
    system_dirs: Sequence[str | os.PathLike[str]] | None = None,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> RawData:
    """Locate, verify and parse CIFAR-10 (see the module docstring)."""
    (archive,) = acquire(
        CIFAR10,
        data_dir=data_dir,
        download_missing=download,
        checksums=checksums,
        base_url=base_url,
        system_dirs=system_dirs,
        max_bytes=max_bytes,
        timeout=timeout,
    )
    raw = parse_cifar10_tar(archive.payload, name=str(archive.path), max_bytes=max_bytes)
    source = {"directory": str(archive.path.parent), "files": [archive.describe()]}
    return dataclasses.replace(raw, source=source)
