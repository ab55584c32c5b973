"""The errors of the results store, and the findings of ``ResultStore.verify``.

All errors derive from :class:`StoreError`. A directory that cannot be
written is reported when the store is opened for writing (before anything is
created) and on any later write; a full disk (``ENOSPC``/``EDQUOT``) during a
write is reported after the temp file has been removed, leaving the store as
it was. :class:`StoreVersionError`: the manifest or a record has a newer
format than this code reads (nothing is modified). :class:`StoreCorruptError`:
a record or manifest is unreadable, fails its checksum, or sits under the
wrong key; its message names the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kernelattn.errors import KernelattnError

__all__ = [
    "NotARegularFileError",
    "Problem",
    "RecordExistsError",
    "RecordNotFoundError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreVersionError",
]


class StoreError(KernelattnError):
    """Any failure of the results store (I/O, permissions, misuse)."""


class StoreVersionError(StoreError):
    """The store (or a record) was written by a newer format version."""


class StoreCorruptError(StoreError):
    """A record or manifest is unreadable, fails its checksum or has the wrong key.

    Attributes:
      path: the offending file.
      problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(
            f"corrupt store file {self.path}: {problem} "
            "(ResultStore.verify() lists every problem; repair(quarantine=True) moves "
            "corrupt files to quarantine/ so the cells are recomputed on resume)"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.path, self.problem))


class NotARegularFileError(StoreCorruptError):
    """A FIFO, device, socket, directory or symbolic link where a store file belongs; never opened."""


class RecordExistsError(StoreError):
    """``put`` of a key that already has a record (records are append-only)."""


class RecordNotFoundError(StoreError, KeyError):
    """``get`` of a key that has no record (a ``KeyError``, as for a mapping)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No result store where one was expected."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`ResultStore.verify`.

    Attributes:
      path: the file concerned.
      kind: ``"corrupt"`` (bad record/unexpected file), ``"temp"`` (orphaned
        temp file of a dead writer) or ``"claim"`` (stale or finished claim).
      problem: human-readable description.
    """

    path: str
    kind: str
    problem: str
