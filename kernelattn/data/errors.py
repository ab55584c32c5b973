"""Errors raised by the dataset layer.

Bad *options* (a wrong argument value) are plain ``ValueError``; the classes
below are for problems with *files*: missing, not matching their published
checksum, malformed, or hostile.
"""

from __future__ import annotations

from kernelattn.errors import KernelattnError

__all__ = [
    "ChecksumError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "UnsafeFileError",
]


class DatasetError(KernelattnError):
    """Base class of every file-related dataset error."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are neither on disk nor downloadable.

    The message lists the exact file names, their SHA-256 checksums, where
    they can be downloaded from and the directory to put them in.
    """


class ChecksumError(DatasetError):
    """A file matches neither its published SHA-256 nor its payload SHA-256.

    The message names the file, the expected and the actual hashes. A file
    that fails this check is never parsed.
    """


class DatasetFormatError(DatasetError):
    """A verified file does not have the layout its format prescribes
    (e.g. IDX header dimensions that disagree with the payload length)."""


class UnsafeFileError(DatasetFormatError):
    """A file was refused as hostile: a pickle asking for a global outside the
    allow-list, an archive member that is a link/device or escapes its
    directory, or a decompressed size above the cap (a compression bomb)."""
