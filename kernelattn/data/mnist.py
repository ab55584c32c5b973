"""MNIST and Fashion-MNIST from the standard gzipped IDX files.

IDX format (LeCun et al.): two zero bytes, a type byte (0x08 = unsigned
byte, the only one these datasets use), the number of dimensions, then each
dimension as a big-endian uint32, then the row-major payload. The header's
dimensions must account for the payload exactly.

Checksums: ``sha256`` are the published hashes of the ``.gz`` files (as
listed by tensorflow-datasets and torchvision). ``payload_sha256`` are the
hashes of the decompressed IDX files, measured from the real Fashion-MNIST
(Debian's ``dataset-fashion-mnist``, whose ``.gz`` files are recompressed and
so do not match the published hashes). MNIST's payload hashes are not in the
table: they could not be measured here, so MNIST files must match the
published ``.gz`` hashes.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kernelattn.data.dataset import RawData
from kernelattn.data.errors import DatasetFormatError
from kernelattn.data.files import (
    DOWNLOAD_TIMEOUT_S,
    MAX_DECOMPRESSED_BYTES,
    FileSource,
    FileSpec,
    acquire,
)

__all__ = ["FASHION_MNIST", "FASHION_MNIST_CLASSES", "MNIST", "MNIST_CLASSES", "load_idx_source", "parse_idx"]

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

MNIST = FileSource(
    name="mnist",
    files=(
        FileSpec(
            "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            None,
            9912422,
        ),
        FileSpec(
            "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            None,
            28881,
        ),
        FileSpec(
            "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            None,
            1648877,
        ),
        FileSpec(
            "t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", None, 4542
        ),
    ),
    urls=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    system_names=("mnist",),
)

FASHION_MNIST = FileSource(
    name="fashion_mnist",
    files=(
        FileSpec(
            "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            26421880,
        ),
        FileSpec(
            "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            29515,
        ),
        FileSpec(
            "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            4422102,
        ),
        FileSpec(
            "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            5148,
        ),
    ),
    urls=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    system_names=("fashion-mnist",),
)

_IDX_UBYTE = 0x08


def parse_idx(payload: bytes, *, name: str, ndim: int | None = None) -> np.ndarray:
    """Parse a decompressed IDX file of unsigned bytes.

    Args:
      payload: the whole decompressed file.
      name: file name for error messages.
      ndim: required number of dimensions, if any.

    Returns:
      Read-only uint8 array of the header's shape (``(N, 28, 28)`` for
      images, ``(N,)`` for labels).

    Raises:
      DatasetFormatError: bad magic, unsupported type, a dimension of 0, or
        header dimensions that disagree with the payload length.
    """
    if len(payload) < 4 or payload[:2] != b"\x00\x00":
        raise DatasetFormatError(f"{name}: not an IDX file (bad magic {payload[:4]!r})")
    dtype_code, rank = payload[2], payload[3]
    if dtype_code != _IDX_UBYTE:
        raise DatasetFormatError(f"{name}: expected IDX type 0x08 (unsigned byte), got 0x{dtype_code:02x}")
    if rank == 0 or (ndim is not None and rank != ndim):
        raise DatasetFormatError(f"{name}: expected an IDX file of {ndim} dimension(s), got {rank}")
    header = 4 + 4 * rank
    if len(payload) < header:
        raise DatasetFormatError(f"{name}: truncated IDX header ({len(payload)} bytes)")
    dims = struct.unpack(f">{rank}I", payload[4:header])
    if 0 in dims:
        raise DatasetFormatError(
            f"{name}: IDX header dimensions {dims} include a 0; expected at least one item "
            "of non-zero size (an empty or damaged file)"
        )
    expected = math.prod(dims)
    if len(payload) - header != expected:
        raise DatasetFormatError(
            f"{name}: IDX header dimensions {dims} need {expected} payload bytes, got {len(payload) - header}"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


def _split(images: np.ndarray, labels: np.ndarray, *, split: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= n_classes:
        raise DatasetFormatError(f"{split}: label {int(labels.max())} outside 0..{n_classes - 1}")
    return images, labels.astype(np.int64)


def load_idx_source(
    source: FileSource,
    class_names: tuple[str, ...],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    checksums: Mapping[str, Any] | None = None,
    base_url: str | Sequence[str] | None = None,
    system_dirs: Sequence[str | os.PathLike[str]] | None = None,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> RawData:
    """Locate, verify and parse an MNIST-layout dataset (four IDX ``.gz`` files).

    Returns:
      ``RawData`` with uint8 images ``(60000, 28, 28)`` / ``(10000, 28, 28)``
      (whatever the headers say) and int64 labels; ``pixel_max = 255``.
    """
    files = acquire(
        source,
        data_dir=data_dir,
        download_missing=download,
        checksums=checksums,
        base_url=base_url,
        system_dirs=system_dirs,
        max_bytes=max_bytes,
        timeout=timeout,
    )
    train_x, train_y, test_x, test_y = (
        parse_idx(f.payload, name=f.name, ndim=3 if "images" in f.name else 1) for f in files
    )
    x_train, labels_train = _split(train_x, train_y, split="train", n_classes=len(class_names))
    x_test, labels_test = _split(test_x, test_y, split="test", n_classes=len(class_names))
    return RawData(
        x_train=x_train,
        labels_train=labels_train,
        x_test=x_test,
        labels_test=labels_test,
        class_names=class_names,
        pixel_max=255.0,
        source={"directory": str(files[0].path.parent), "files": [f.describe() for f in files]},
    )
