"""Atomic files: publish a complete file under a new name with ``link(2)``; read only regular files.

Design: one JSON file per record, published with ``link(2)``
-------------------------------------------------------------
A record is serialised, written to a dot-prefixed temp file *in the same
directory*, flushed and ``fsync``'d, and then published under its final name
``records/<key>.json`` with ``os.link`` (followed by an ``fsync`` of the
directory and removal of the temp name). We chose this over an append-only log
because the store is shared by many processes and, later, hosts:

* **Atomic and never partial.** A reader sees either no ``<key>.json`` or a
  complete, fsync'd one: the name appears only after the bytes are durable. A
  crash or ``SIGKILL`` at any instant leaves at most a ``.tmp-*`` file, which
  loading ignores and ``repair()`` removes.
* **Append-only enforced by the filesystem.** ``link`` fails with ``EEXIST``
  if the name exists, so a finished cell can never be overwritten, even by two
  writers racing for the same key (``os.replace`` would silently overwrite).
* **No locks for concurrent writers.** Appends from several processes to one
  log need a lock (``O_APPEND`` is not atomic on NFS; large appends interleave)
  and a torn tail must be truncated by someone. Independent files need
  neither; ``link`` is atomic on local filesystems and NFS alike (it is the
  classic NFS-safe lock primitive).
* **Damage is local.** Corruption not caused by the store (disk errors, manual
  edits, half-copied directories) is confined to one file; every record
  carries a SHA-256 ``checksum`` of its canonical body, loading reports any
  mismatch as :class:`StoreCorruptError`, and ``repair()`` moves the file to
  ``quarantine/`` without rewriting anything else.
* **Only regular files are read.** Every file is ``lstat``-ed before it is
  opened (and opened non-blocking): a FIFO, device, socket, directory or
  symbolic link where a record, claim or manifest belongs is reported as
  corrupt (:class:`NotARegularFileError`) — reading a FIFO would block
  forever — and ``repair()`` moves it to ``quarantine/``.
* **O(1) resume.** ``has(key)`` is one ``stat``.

The cost — one small file per cell — is fine at the scale of width × seed ×
dataset grids (up to ~10⁵ cells). On a filesystem without hard links
(``link`` fails with ``EPERM``/``ENOTSUP``) the store falls back to
check-then-``rename``; that is still atomic per record, but two writers of
the *same* key (which claims prevent) could then both succeed, last one wins.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid

from kernelattn.experiments.store.errors import NotARegularFileError, StoreError

__all__ = [
    "file_kind",
    "fsync_dir",
    "move_aside",
    "probe_writable",
    "publish",
    "read_regular",
    "store_error",
    "unlink_quiet",
]

_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words: "a FIFO", "a directory", ..."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def read_regular(path: str) -> tuple[bytes, os.stat_result]:
    """The bytes and stat of the regular file ``path``, never opening anything else.

    ``lstat`` first (a FIFO would block ``open`` forever), then open
    non-blocking without following links and check again on the descriptor.

    Raises:
      FileNotFoundError: no such file.
      NotARegularFileError: a FIFO, device, socket, directory or link.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(
            path,
            f"{file_kind(st.st_mode)}, not a regular file; kernelattn never opens "
            "it (kernelattn store --repair moves it to quarantine/)",
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between lstat and open
            raise NotARegularFileError(path, f"{file_kind(st.st_mode)}, not a regular file; never read")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (handles short writes)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write returned no progress")
        view = view[n:]


def unlink_quiet(path: str) -> None:
    """Remove ``path``; already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fsync_dir(directory: str) -> None:
    """Best-effort ``fsync`` of a directory so a new name survives power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself is synced
    finally:
        os.close(fd)


def publish(directory: str, name: str, data: bytes, temp_name: str) -> bool:
    """Atomically create ``directory/name`` with ``data`` unless it exists.

    Writes ``directory/temp_name``, fsyncs it, ``link``s it to ``name`` and
    removes the temp name (also on any failure).

    Returns:
      True if created, False if ``name`` already existed (nothing changed).

    Raises:
      OSError: from the filesystem; the temp file has been removed.
    """
    temp = os.path.join(directory, temp_name)
    final = os.path.join(directory, name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, final)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in _NO_HARDLINKS:
                raise
            if os.path.lexists(final):  # no hard links: check-then-rename fallback
                return False
            os.rename(temp, final)
        fsync_dir(directory)
        return True
    finally:
        unlink_quiet(temp)


def probe_writable(root: str, temp_name: str) -> None:
    """Create and delete the probe file ``root/temp_name``, so an unwritable store fails before any work.

    Raises:
      StoreError: ``root`` is not writable.
    """
    probe = os.path.join(root, temp_name)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise store_error(err, "probing the store directory", root) from err
    os.close(fd)
    unlink_quiet(probe)


def move_aside(path: str, directory: str, stamp: str) -> None:
    """Rename ``path`` to ``directory/<name>.<stamp>`` (created if needed; a random suffix if taken)."""
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, f"{os.path.basename(path)}.{stamp}")
    if os.path.lexists(target):
        target += f".{uuid.uuid4().hex[:8]}"
    os.rename(path, target)


def store_error(err: OSError, action: str, path: str) -> StoreError:
    """Translate an ``OSError`` into a ``StoreError`` with an actionable message."""
    if err.errno == errno.ENOSPC:
        return StoreError(f"disk full (ENOSPC) while {action} {path}; the partial file was removed, store unchanged")
    if err.errno == getattr(errno, "EDQUOT", -1):
        return StoreError(
            f"disk quota exceeded (EDQUOT) while {action} {path}; the partial file was removed, store unchanged"
        )
    if isinstance(err, PermissionError) or err.errno in _NOT_WRITABLE:
        return StoreError(
            f"{path} is not writable ({err.strerror or err}) while {action}; fix the permissions, "
            "choose another output directory, or open the store with readonly=True to only read it"
        )
    return StoreError(f"{action} {path} failed: {err}")
