"""Atomic, append-only results store for sweeps and malleability runs.

Layout of a store directory::

    <root>/
      kernelattn-store.json     manifest: {"format": "kernelattn-results-store", "version": 1, ...}
      records/<key>.json        one finished cell per file, never rewritten
      records/.tmp-*            in-flight (or crash-orphaned) temp files, never read as records
      claims/<key>.claim        "someone is computing this cell" (host, pid, time, token)
      quarantine/               corrupt files moved aside by ``repair()``

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

Integrity, not authenticity
---------------------------
The SHA-256 ``checksum`` detects *corruption* — bit rot, truncation, an
accidental edit — but not *tampering*: it is a plain hash that anyone who
edits a record can recompute. For tamper evidence, give the store a secret
key: ``ResultStore.open(path, hmac_key=...)`` or the environment variable
``KERNELATTN_STORE_KEY`` (:data:`HMAC_ENV_VAR`). Records written with a key
carry an ``hmac`` field, HMAC-SHA256 under that key of the same canonical body;
a handle opened with a key refuses (:class:`StoreCorruptError`) any record
whose HMAC is missing or wrong, so an edit by someone without the key is
detected. A handle without a key ignores the field (reads as before).
* **O(1) resume.** ``has(key)`` is one ``stat``.

The cost — one small file per cell — is fine at the scale of width × seed ×
dataset grids (up to ~10⁵ cells). On a filesystem without hard links
(``link`` fails with ``EPERM``/``ENOTSUP``) the store falls back to
check-then-``rename``; that is still atomic per record, but two writers of
the *same* key (which claims prevent) could then both succeed, last one wins.

Records
-------
Each record is a JSON object::

    {"format": 1, "key": cell_key(cell), "kind": "sweep" | "malleability" | ...,
     "cell": {...}, "spec": {...}, "seed": ..., "metrics": {...},
     "environment": provenance.environment(),
     "timing": {"seconds": ..., "started": ISO-8601, "finished": ISO-8601},
     "checksum": sha256(canonical JSON of every field except "checksum")}

``format``, ``key`` and ``checksum`` are owned by the store (set by
:meth:`ResultStore.put`); ``environment`` is filled in if absent. Numbers are
stored as JSON of Python floats/ints; ``repr`` round-trips doubles exactly, so
a record read back is bitwise equal to what was stored. **NaN and ±inf** are
written as the bare tokens ``NaN``, ``Infinity`` and ``-Infinity`` (Python's
``json`` reads and writes them; strict JSON parsers such as ``jq`` do not).
Rerunning a cell deterministically gives a record equal in every field except
``environment``, ``timing`` and hence ``checksum``; :func:`record_fingerprint`
hashes only ``cell`` and ``metrics`` for determinism checks.

Writing an existing key raises :class:`RecordExistsError` (or, with
``put(..., exist_ok=True)``, is a no-op returning ``False``); the stored
record is never touched.

Claims
------
``claim(key)`` publishes ``claims/<key>.claim`` exclusively (same
write-temp-then-``link`` scheme, i.e. ``O_CREAT|O_EXCL`` semantics with the
content complete on creation) holding host id, pid, process start time, wall
time and a random token. Exactly one caller gets ``True``. A claim is *stale*
— and the next ``claim`` takes it over — when its owner ran on this host (same
hostname and boot id) and that pid is gone (or is a zombie, or was reused by a
younger process), or when it is older than ``claim_timeout`` seconds (for
owners on other hosts). Claims are an efficiency device: even if a
timed-out-but-alive owner and a taker both compute a cell, ``link`` lets only
one record in. ``put`` releases the writer's own claim; ``release`` does so
explicitly (e.g. when a computation fails).

A claim of another host cannot be checked for liveness: it is honoured until
``claim_timeout``. :meth:`ResultStore.claims` lists every claim with its
state (``"live"``, ``"foreign"``, ``"stale"``, ``"finished"``,
``"unreadable"``) — ``kernelattn store PATH`` prints them — and
:meth:`ResultStore.release_claims` removes every claim whose owner is not a
provably live process on this host (``kernelattn store PATH --repair
--release-claims``), for when that other host is known to be gone.

Errors
------
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

import datetime as _dt
import errno
import hashlib
import hmac as _hmac
import json
import math
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kernelattn.experiments import provenance
from kernelattn.errors import InputTypeError, InputValueError, KernelattnError

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "FORMAT_VERSION",
    "HMAC_ENV_VAR",
    "ClaimInfo",
    "NotARegularFileError",
    "Problem",
    "RecordExistsError",
    "RecordNotFoundError",
    "ResultStore",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreVersionError",
    "check_key",
    "decode_record",
    "encode_record",
    "finalize_record",
    "frame_row",
    "make_record",
    "record_checksum",
    "record_hmac",
    "store_exists",
    "record_fingerprint",
    "utc_now",
]

#: Version of the on-disk format written by this code (manifest and records).
FORMAT_VERSION = 1
#: Identifies a kernelattn store in the manifest.
STORE_FORMAT_NAME = "kernelattn-results-store"
MANIFEST_NAME = "kernelattn-store.json"
RECORDS_DIR = "records"
CLAIMS_DIR = "claims"
QUARANTINE_DIR = "quarantine"
RECORD_SUFFIX = ".json"
CLAIM_SUFFIX = ".claim"
TEMP_PREFIX = ".tmp-"
#: Seconds after which any claim (or orphaned temp file) is stale: 24 h.
DEFAULT_CLAIM_TIMEOUT: float = 24 * 3600.0
#: Environment variable holding the secret key of record HMACs (tamper evidence); unset: none.
HMAC_ENV_VAR = "KERNELATTN_STORE_KEY"
#: Claim states (see :meth:`ResultStore.claims`).
CLAIM_STATES = ("live", "foreign", "stale", "finished", "unreadable")
#: Fields a caller must supply to ``put``.
REQUIRED_FIELDS: tuple[str, ...] = ("kind", "cell", "spec", "seed", "metrics", "timing")
#: Fields ``put`` computes itself (caller values are replaced).
STORE_FIELDS: tuple[str, ...] = ("format", "key", "checksum")
#: Optional store-owned field: HMAC-SHA256 of the body under the store's key (only with a key).
HMAC_FIELD = "hmac"
#: ``to_frame`` columns that precede the cell and metric columns.
FRAME_COLUMNS: tuple[str, ...] = ("key", "kind", "seed", "seconds")

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_TEMP_RE = re.compile(r"\.tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]{32}")
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


# --------------------------------------------------------------------------- errors


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


@dataclass(frozen=True)
class ClaimInfo:
    """One claim file, as listed by :meth:`ResultStore.claims`.

    Attributes:
      key: the claimed cell key ("" for a file that is not ``<key>.claim``).
      path: the claim file.
      state: "live" (a running process on this host), "foreign" (another
        host, younger than the timeout: cannot be checked), "stale" (owner
        gone or timed out), "finished" (the cell has a record) or
        "unreadable" (not a claim written by kernelattn, younger than the
        timeout).
      host, pid: the owner, when readable.
      age: seconds since the claim was taken.
    """

    key: str
    path: str
    state: str
    host: str | None
    pid: int | None
    age: float

    def describe(self) -> str:
        """One line: who holds it, for how long, and what that means."""
        owner = f" by host {self.host} pid {self.pid}" if self.host is not None else ""
        meaning = {
            "live": "a running process on this host",
            "foreign": "on another host: cannot tell whether it still runs; honoured until the claim timeout",
            "stale": "its owner is gone or timed out; the next claim takes it over",
            "finished": "the cell is finished; the claim is left over",
            "unreadable": "not a kernelattn claim; honoured until the claim timeout",
        }[self.state]
        return f"{self.state} claim{owner}, {_age(self.age)} old ({meaning})"


def _age(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


# --------------------------------------------------------------------------- pure helpers


def utc_now() -> str:
    """The current UTC time as ISO-8601 with microseconds, e.g. ``2026-01-02T03:04:05.000006+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def record_checksum(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``record`` without its ``checksum`` field."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return _sha256(provenance.canonical_json(body))


def record_hmac(record: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 hex, under ``key``, of the canonical JSON of ``record`` without ``checksum`` and ``hmac``."""
    body = {k: v for k, v in record.items() if k not in ("checksum", HMAC_FIELD)}
    return _hmac.new(key, provenance.canonical_json(body).encode("ascii"), hashlib.sha256).hexdigest()


def _hmac_key(value: Any) -> bytes | None:
    """The HMAC key: ``value`` (bytes or text), else ``$KERNELATTN_STORE_KEY``, else None."""
    if value is None:
        value = os.environ.get(HMAC_ENV_VAR) or None
        if value is None:
            return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise InputValueError(f"hmac_key: expected non-empty bytes or text (or ${HMAC_ENV_VAR}), got "
                              f"{type(value).__name__}")
    return bytes(value)


def record_fingerprint(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``{"cell": ..., "metrics": ...}`` only.

    Equal for two runs of the same cell that produced bitwise-equal metrics,
    whatever their environment, timing or checksum.
    """
    return _sha256(provenance.canonical_json({"cell": record["cell"], "metrics": record["metrics"]}))


def make_record(
    kind: str,
    cell: Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    spec: Mapping[str, Any],
    seed: Any,
    seconds: float,
    started: str | None = None,
    finished: str | None = None,
    environment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a record for :meth:`ResultStore.put` (store fields are added there).

    Args:
      kind: what produced it, e.g. ``"sweep"`` or ``"malleability"``.
      cell: the defining parameters; the record's key is ``cell_key(cell)``.
      metrics: the results (floats may be NaN/inf; arrays become lists).
      spec: the full experiment spec dict the cell came from.
      seed: the PRNG seed (usually an ``int``).
      seconds: wall-clock duration of the computation.
      started, finished: ISO-8601 times (see :func:`utc_now`).
      environment: provenance; ``None`` lets ``put`` fill in
        :func:`kernelattn.experiments.provenance.environment`.
    """
    record: dict[str, Any] = {
        "kind": kind,
        "cell": dict(cell),
        "spec": dict(spec),
        "seed": seed,
        "metrics": dict(metrics),
        "timing": {"seconds": seconds, "started": started, "finished": finished},
    }
    if environment is not None:
        record["environment"] = dict(environment)
    return record


def store_exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a result store (its manifest): callers validate everything, data
    included, before they create a new one, so that a refused spec leaves nothing behind."""
    return os.path.lexists(os.path.join(os.fspath(path), MANIFEST_NAME))


def check_key(key: Any, name: str = "key") -> str:
    """Validate a cell key: 64 lowercase hex characters (see ``provenance.cell_key``)."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise InputValueError(
            f"{name}: expected a cell key (64 lowercase hex characters from "
            f"kernelattn.experiments.provenance.cell_key), got {type(key).__name__} {key!r}"
        )
    return key


def finalize_record(key: str, record: Mapping[str, Any], environment: Mapping[str, Any], *,
                    hmac_key: bytes | None = None) -> dict[str, Any]:
    """Validate ``record`` and return the exact dict that will be stored.

    Adds ``format``, ``key`` and ``checksum`` (and ``hmac`` when ``hmac_key``
    is given); fills ``environment`` when absent; converts numpy/JAX values
    to plain JSON types.

    Raises:
      ValueError: a required field is missing or malformed, or ``key`` is not
        ``cell_key(record["cell"])``.
      TypeError: a value cannot be stored as JSON.
    """
    check_key(key)
    if not isinstance(record, Mapping):
        raise InputTypeError(f"record: expected a mapping, got {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise InputValueError(f"record: missing field(s) {missing}; required are {list(REQUIRED_FIELDS)}")
    kind = record["kind"]
    if not isinstance(kind, str) or not kind:
        raise InputValueError(f"record['kind']: expected a non-empty str, got {kind!r}")
    for field in ("cell", "spec", "metrics", "timing"):
        if not isinstance(record[field], Mapping):
            raise InputValueError(f"record[{field!r}]: expected a mapping, got {type(record[field]).__name__}")
    seconds = record["timing"].get("seconds")
    try:
        if isinstance(seconds, (bool, str)):
            raise TypeError
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise InputValueError(f"record['timing']['seconds']: expected a number, got {seconds!r}") from None
    expected = provenance.cell_key(record["cell"])
    if key != expected:
        raise InputValueError(
            f"key: {key} is not cell_key(record['cell']) = {expected}; "
            "compute keys with kernelattn.experiments.provenance.cell_key(cell)"
        )
    if "key" in record and record["key"] != key:
        raise InputValueError(f"record['key']: {record['key']!r} differs from key {key}")
    out = {k: v for k, v in record.items() if k not in STORE_FIELDS and k != HMAC_FIELD}
    timing = {"started": None, "finished": None, **dict(record["timing"])}
    timing["seconds"] = seconds
    out["timing"] = timing
    if out.get("environment") is None:
        out["environment"] = dict(environment)
    out = provenance.to_jsonable(out, "record")
    out["format"] = FORMAT_VERSION
    out["key"] = key
    if hmac_key is not None:
        out[HMAC_FIELD] = record_hmac(out, hmac_key)
    out["checksum"] = record_checksum(out)
    return out


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Serialise a finalized record: sorted-key, indented JSON (NaN/Infinity tokens), ASCII."""
    text = json.dumps(record, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=True)
    return (text + "\n").encode("ascii")


def decode_record(data: bytes, path: str | os.PathLike[str], expected_key: str, *,
                  hmac_key: bytes | None = None) -> dict[str, Any]:
    """Parse and verify one record file's bytes.

    Args:
      data, path, expected_key: the file's bytes, its path, the key its name gives.
      hmac_key: when given, the record must carry a valid HMAC under it.

    Raises:
      StoreCorruptError: bad JSON/encoding, not an object, missing fields,
        checksum mismatch, a key that differs from ``expected_key``, or (with
        ``hmac_key``) a missing or wrong HMAC.
      StoreVersionError: the record's format is newer than :data:`FORMAT_VERSION`.
    """
    try:
        record = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as err:
        size = len(data)
        hint = " (empty file)" if size == 0 else f" ({size} bytes; truncated or garbled?)"
        raise StoreCorruptError(path, f"not valid JSON: {err}{hint}") from None
    if not isinstance(record, dict):
        raise StoreCorruptError(path, f"expected a JSON object, got {type(record).__name__}")
    missing = [f for f in (*STORE_FIELDS, *REQUIRED_FIELDS, "environment") if f not in record]
    if missing:
        raise StoreCorruptError(path, f"missing field(s) {missing}")
    fmt = record["format"]
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise StoreCorruptError(path, f"invalid format version {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise StoreVersionError(
            f"record {os.fspath(path)} has format version {fmt}, newer than the {FORMAT_VERSION} "
            "this kernelattn reads; upgrade kernelattn"
        )
    for field in ("cell", "spec", "metrics", "timing"):
        if not isinstance(record[field], dict):
            raise StoreCorruptError(path, f"field {field!r} is not a JSON object")
    if "seconds" not in record["timing"]:
        raise StoreCorruptError(path, "timing has no 'seconds'")
    checksum = record_checksum(record)
    if record["checksum"] != checksum:
        raise StoreCorruptError(
            path, f"checksum mismatch: stored {record['checksum']!r}, content hashes to {checksum!r}"
        )
    if record["key"] != expected_key:
        raise StoreCorruptError(path, f"key mismatch: file is named for {expected_key} but holds {record['key']!r}")
    if hmac_key is not None:
        stored = record.get(HMAC_FIELD)
        if not isinstance(stored, str):
            raise StoreCorruptError(path, f"no HMAC, but this store is read with a key (${HMAC_ENV_VAR} or "
                                          "hmac_key=): written without the key, or the field was removed")
        if not _hmac.compare_digest(stored, record_hmac(record, hmac_key)):
            raise StoreCorruptError(path, "HMAC mismatch: the record was changed by someone without the key, "
                                          "or written under another key")
    return record


def _is_record_name(name: str) -> bool:
    """Whether ``name`` is ``<64-hex key>.json``."""
    return name.endswith(RECORD_SUFFIX) and _KEY_RE.fullmatch(name[: -len(RECORD_SUFFIX)]) is not None


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b": value}``; lists stay as values."""
    flat: dict[str, Any] = {}
    for name, value in mapping.items():
        column = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, prefix=f"{column}."))
        else:
            flat[column] = value
    return flat


def _same_value(a: Any, b: Any) -> bool:
    """Equality for merging columns: NaN equals NaN, ``True`` does not equal ``1``."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def frame_row(record: Mapping[str, Any], *, prefix: bool = False) -> dict[str, Any]:
    """One ``to_frame`` row: key, kind, seed, seconds, then cell and metric columns.

    With ``prefix=False`` columns are the bare (dot-flattened) names; equal
    values merge, e.g. a cell parameter ``seed``. The cell may name a fixed
    column in its own terms (a kernel sweep's cell has ``kind`` "kernel", its
    record ``kind`` "kernel_sweep"): such a cell value goes to ``cell.<name>``.
    Any other name given two *different* values (by the cell and the metrics,
    or by the metrics and a fixed column) is a ``ValueError`` (use
    ``prefix=True`` for ``cell.``/``metrics.`` prefixed names).
    """
    row: dict[str, Any] = {
        "key": record["key"],
        "kind": record["kind"],
        "seed": record["seed"],
        "seconds": record["timing"]["seconds"],
    }
    sources = (
        ("cell", _flatten(record["cell"], "cell." if prefix else "")),
        ("metrics", _flatten(record["metrics"], "metrics." if prefix else "")),
    )
    for source, flat in sources:
        for column, value in flat.items():
            if source == "cell" and column in FRAME_COLUMNS and not _same_value(row[column], value):
                column = f"cell.{column}"
            if column in row and not _same_value(row[column], value):
                raise InputValueError(
                    f"record {record['key']}: column {column!r} from {source} ({value!r}) clashes with "
                    f"an earlier value ({row[column]!r}); use to_frame(prefix=True)"
                )
            row[column] = value
    return row


# --------------------------------------------------------------------------- low-level I/O


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _read_regular(path: str) -> tuple[bytes, os.stat_result]:
    """The bytes and stat of the regular file ``path``, never opening anything else.

    ``lstat`` first (a FIFO would block ``open`` forever), then open
    non-blocking without following links and check again on the descriptor.

    Raises:
      FileNotFoundError: no such file.
      NotARegularFileError: a FIFO, device, socket, directory or link.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(path, f"{_file_kind(st.st_mode)}, not a regular file; kernelattn never opens "
                                         "it (kernelattn store --repair moves it to quarantine/)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between lstat and open
            raise NotARegularFileError(path, f"{_file_kind(st.st_mode)}, not a regular file; never read")
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


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(directory: str) -> None:
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


def _publish(directory: str, name: str, data: bytes, temp_name: str) -> bool:
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
        _fsync_dir(directory)
        return True
    finally:
        _unlink_quiet(temp)


def _store_error(err: OSError, action: str, path: str) -> StoreError:
    """Translate an ``OSError`` into a ``StoreError`` with an actionable message."""
    if err.errno == errno.ENOSPC:
        return StoreError(f"disk full (ENOSPC) while {action} {path}; the partial file was removed, store unchanged")
    if err.errno == getattr(errno, "EDQUOT", -1):
        return StoreError(f"disk quota exceeded (EDQUOT) while {action} {path}; the partial file was removed, store unchanged")
    if isinstance(err, PermissionError) or err.errno in _NOT_WRITABLE:
        return StoreError(
            f"{path} is not writable ({err.strerror or err}) while {action}; fix the permissions, "
            "choose another output directory, or open the store with readonly=True to only read it"
        )
    return StoreError(f"{action} {path} failed: {err}")


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start_time)`` of ``pid`` from ``/proc`` (Linux), None if unavailable/gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def _process_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _pid_alive(pid: int, start: str | None) -> bool:
    """Whether the process ``pid`` (started at ``start``, if known) still runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust kill(0)
    state, now_start = stat
    if state in ("Z", "X"):
        return False  # zombie: dead but not yet reaped
    return start is None or now_start == start


def _host_tag(host: str) -> str:
    return hashlib.sha256(host.encode("utf-8")).hexdigest()[:8]


# --------------------------------------------------------------------------- the store


class ResultStore:
    """A directory of atomic, append-only, checksummed result records.

    Args:
      path: the store directory.
      create: create the store (directory and manifest) if it does not exist.
      readonly: never write (no writability probe, ``put``/``claim`` raise);
        use it to read a store on a read-only mount.
      claim_timeout: seconds after which a claim (or orphaned temp file) is
        stale whoever owns it; ``None`` disables the age rule (claims of dead
        processes on this host are still taken over).
      hmac_key: secret key (bytes or text) for tamper-evident records: ``put``
        adds an HMAC-SHA256 under it, reads refuse records whose HMAC is
        missing or wrong. ``None``: ``$KERNELATTN_STORE_KEY`` if set, else no
        HMAC (the SHA-256 checksum still detects corruption, not tampering).

    Raises:
      StoreVersionError: the store was written by a newer format version.
      StoreCorruptError: the manifest is unreadable.
      StoreError: no store at ``path`` and ``create`` is false, ``path`` is
        not a directory, or (unless ``readonly``) it is not writable.

    Example::

        store = ResultStore.open("runs/widths")
        key = cell_key(cell)
        if store.claim(key):
            try:
                metrics = compute(cell)
                store.put(key, make_record("sweep", cell, metrics, spec=spec, seed=seed, seconds=dt))
            finally:
                store.release(key)
        df = store.to_frame(kind="sweep")
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT,
        hmac_key: bytes | str | None = None,
    ) -> None:
        self._hmac_key = _hmac_key(hmac_key)
        if claim_timeout is not None and (
            isinstance(claim_timeout, bool) or not isinstance(claim_timeout, (int, float)) or claim_timeout < 0
        ):
            raise InputValueError(f"claim_timeout: expected a number of seconds >= 0 or None, got {claim_timeout!r}")
        self._root = os.path.abspath(os.fspath(path))
        self._readonly = bool(readonly)
        self._claim_timeout = None if claim_timeout is None else float(claim_timeout)
        self._held: dict[str, str] = {}
        self._env: dict[str, Any] | None = None
        self._host: str | None = None
        self.manifest = self._open(create=create)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        create: bool = True,
        *,
        readonly: bool = False,
        claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT,
        hmac_key: bytes | str | None = None,
    ) -> ResultStore:
        """Open (and by default create) the store at ``path``; see the class docstring."""
        return cls(path, create=create, readonly=readonly, claim_timeout=claim_timeout, hmac_key=hmac_key)

    # -- paths and identity ------------------------------------------------------------

    @property
    def path(self) -> str:
        """Absolute path of the store directory."""
        return self._root

    @property
    def readonly(self) -> bool:
        """Whether this handle refuses writes."""
        return self._readonly

    @property
    def claim_timeout(self) -> float | None:
        """Age in seconds after which a claim is stale (None: never by age)."""
        return self._claim_timeout

    def __repr__(self) -> str:
        mode = "readonly" if self._readonly else "writable"
        return f"ResultStore({self._root!r}, {mode})"

    def _dir(self, name: str) -> str:
        return os.path.join(self._root, name)

    def _record_path(self, key: str) -> str:
        return os.path.join(self._root, RECORDS_DIR, key + RECORD_SUFFIX)

    def _claim_path(self, key: str) -> str:
        return os.path.join(self._root, CLAIMS_DIR, key + CLAIM_SUFFIX)

    def _host_id(self) -> str:
        if self._host is None:
            self._host = provenance.host_id()
        return self._host

    def _temp_name(self) -> str:
        return f"{TEMP_PREFIX}{_host_tag(self._host_id())}-{os.getpid()}-{uuid.uuid4().hex}"

    def _environment(self) -> dict[str, Any]:
        if self._env is None:
            self._env = provenance.environment()
        # The precision policy is per computation, not per store: read it at each put.
        return {**self._env, "precision": provenance.precision_info()}

    # -- opening -----------------------------------------------------------------------

    def _open(self, *, create: bool) -> dict[str, Any]:
        manifest_path = self._dir(MANIFEST_NAME)
        manifest = self._read_manifest(manifest_path)
        if manifest is None:
            if not create or self._readonly:
                why = "opened read-only" if self._readonly else "create=False"
                raise StoreNotFoundError(f"no result store at {self._root} (no {MANIFEST_NAME}; {why})")
            if os.path.exists(self._root) and not os.path.isdir(self._root):
                raise StoreError(f"{self._root} exists and is not a directory")
            made_root = not os.path.exists(self._root)
            try:
                os.makedirs(self._root, exist_ok=True)
            except OSError as err:
                raise _store_error(err, "creating the store directory", self._root) from err
            try:
                self._probe_writable()
                manifest = self._create_manifest(manifest_path)
            except StoreError:
                if made_root:  # leave nothing behind
                    try:
                        os.rmdir(self._root)
                    except OSError:
                        pass
                raise
        elif not self._readonly:
            self._probe_writable()
        if not self._readonly:
            for sub in (RECORDS_DIR, CLAIMS_DIR):
                try:
                    os.makedirs(self._dir(sub), exist_ok=True)
                except OSError as err:
                    raise _store_error(err, "creating", self._dir(sub)) from err
        return manifest

    def _read_manifest(self, path: str) -> dict[str, Any] | None:
        """The checked manifest, or None if there is none."""
        try:
            data, _ = _read_regular(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise StoreError(f"{self._root} exists and is not a directory") from None
        except OSError as err:
            raise StoreError(f"cannot read {path}: {err}") from err
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise StoreCorruptError(path, f"manifest is not valid JSON: {err}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT_NAME:
            raise StoreError(f"{path} is not a kernelattn results-store manifest (format != {STORE_FORMAT_NAME!r})")
        version = manifest.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreCorruptError(path, f"invalid format version {version!r}")
        if version > FORMAT_VERSION:
            raise StoreVersionError(
                f"result store {self._root} has format version {version}, written by a newer kernelattn "
                f"(this one reads up to version {FORMAT_VERSION}); upgrade kernelattn to read it. "
                "Nothing was modified."
            )
        return manifest

    def _create_manifest(self, path: str) -> dict[str, Any]:
        manifest = {
            "format": STORE_FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created": utc_now(),
            "created_by": provenance.package_versions(("kernelattn",))["kernelattn"],
        }
        data = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode("ascii")
        try:
            created = _publish(self._root, MANIFEST_NAME, data, self._temp_name())
        except OSError as err:
            raise _store_error(err, "writing the manifest", path) from err
        if created:
            return manifest
        existing = self._read_manifest(path)  # lost a creation race: use the winner's
        assert existing is not None
        return existing

    def _probe_writable(self) -> None:
        """Create and delete a probe file, so an unwritable store fails before any work."""
        probe = os.path.join(self._root, self._temp_name())
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            raise _store_error(err, "probing the store directory", self._root) from err
        os.close(fd)
        _unlink_quiet(probe)

    def _require_writable(self) -> None:
        if self._readonly:
            raise StoreError(f"result store {self._root} was opened read-only")

    # -- records -----------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """Whether a record file exists for ``key`` (not checked for corruption)."""
        return os.path.lexists(self._record_path(check_key(key)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None and self.has(key)

    def keys(self) -> list[str]:
        """Sorted keys of all record files (contents not verified; see ``records``)."""
        return [name[: -len(RECORD_SUFFIX)] for name in self._record_names() if _is_record_name(name)]

    def __len__(self) -> int:
        return len(self.keys())

    def _record_names(self) -> list[str]:
        """Sorted names in ``records/`` other than temp files."""
        try:
            names = os.listdir(self._dir(RECORDS_DIR))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    def _load(self, key: str) -> dict[str, Any]:
        path = self._record_path(key)
        data, _ = _read_regular(path)
        return decode_record(data, path, key, hmac_key=self._hmac_key)

    def get(self, key: str) -> dict[str, Any]:
        """The verified record stored under ``key``.

        Raises:
          RecordNotFoundError (a KeyError): no record for ``key``.
          StoreCorruptError: the record file is corrupt.
        """
        check_key(key)
        try:
            return self._load(key)
        except FileNotFoundError:
            raise RecordNotFoundError(f"no record for key {key} in {self._root}") from None

    def records(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Iterate over every verified record (of ``kind``, if given), sorted by key.

        Raises:
          StoreCorruptError: at the first corrupt record or unexpected file
            in ``records/`` — nothing is skipped silently.
        """
        if kind is not None and not isinstance(kind, str):
            raise InputValueError(f"kind: expected a str or None, got {kind!r}")
        for name in self._record_names():
            path = os.path.join(self._dir(RECORDS_DIR), name)
            if not _is_record_name(name):
                raise StoreCorruptError(path, "unexpected file in records/ (not '<64-hex key>.json')")
            key = name[: -len(RECORD_SUFFIX)]
            try:
                record = self._load(key)
            except FileNotFoundError:
                raise StoreError(f"record {path} vanished while reading (concurrent repair?)") from None
            if kind is None or record["kind"] == kind:
                yield record

    def to_frame(self, kind: str | None = None, *, prefix: bool = False) -> pd.DataFrame:
        """All records (of ``kind``) as a DataFrame, one row per record, sorted by key.

        Columns: ``key, kind, seed, seconds``, then the cell parameters, then
        the metrics; nested mappings are flattened to ``"outer.inner"``; list
        values stay lists. See :func:`frame_row` for name clashes and ``prefix``.
        """
        rows = [frame_row(r, prefix=prefix) for r in self.records(kind)]
        columns: dict[str, None] = dict.fromkeys(FRAME_COLUMNS)
        for row in rows:
            columns.update(dict.fromkeys(row))
        return pd.DataFrame(rows, columns=list(columns))

    def put(self, key: str, record: Mapping[str, Any], *, exist_ok: bool = False) -> bool:
        """Atomically store ``record`` under ``key`` (append-only).

        Args:
          key: ``provenance.cell_key(record["cell"])``.
          record: see :func:`make_record`; ``format``/``key``/``checksum`` are
            set here, ``environment`` filled in when absent.
          exist_ok: if True, an existing record for ``key`` makes this a no-op
            returning False; otherwise it raises :class:`RecordExistsError`.

        Returns:
          True when written. On success the caller's claim on ``key`` (if any,
          taken through this handle) is released.

        Raises:
          RecordExistsError: ``key`` already has a record (stored one untouched).
          StoreError: not writable / disk full / other I/O error — the temp
            file is removed and the store is as before.
          ValueError, TypeError: malformed record.
        """
        self._require_writable()
        if not isinstance(record, Mapping):
            raise InputTypeError(f"record: expected a mapping, got {type(record).__name__}")
        environment = self._environment() if record.get("environment") is None else {}
        final = finalize_record(key, record, environment, hmac_key=self._hmac_key)
        path = self._record_path(key)
        if not os.path.lexists(path):
            data = encode_record(final)
            try:
                written = _publish(self._dir(RECORDS_DIR), key + RECORD_SUFFIX, data, self._temp_name())
            except OSError as err:
                raise _store_error(err, "writing record", path) from err
            if written:
                try:
                    self.release(key)
                except StoreError:
                    pass  # a leftover claim of a finished cell is harmless (claim() checks has())
                return True
        if exist_ok:
            return False
        raise RecordExistsError(f"record {path} already exists; records are append-only (use exist_ok=True to skip)")

    # -- claims ------------------------------------------------------------------------

    def _new_claim(self) -> dict[str, Any]:
        pid = os.getpid()
        now = time.time()
        return {
            "host": self._host_id(),
            "pid": pid,
            "pid_start": _process_start(pid),
            "time": now,
            "iso": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="microseconds"),
            "token": uuid.uuid4().hex,
        }

    def _read_claim(self, path: str) -> tuple[dict[str, Any] | None, os.stat_result]:
        """``(content or None if unreadable or not a regular file, stat)``; FileNotFoundError if absent."""
        try:
            data, st = _read_regular(path)
        except NotARegularFileError:
            return None, os.lstat(path)
        try:
            info = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None, st
        return (info if isinstance(info, dict) else None), st

    def claim_is_stale(self, info: Mapping[str, Any] | None, mtime: float, now: float | None = None) -> bool:
        """Whether a claim (its content, or None if unreadable, and file mtime) is stale.

        Stale: its owner ran on this host and is gone (pid missing, zombie, or
        reused by a younger process), or it is older than ``claim_timeout``.
        An unreadable claim is judged by its file age only.
        """
        now = time.time() if now is None else now
        born = mtime
        if info is not None and isinstance(info.get("time"), (int, float)):
            born = float(info["time"])
        if self._claim_timeout is not None and now - born > self._claim_timeout:
            return True
        if info is None or info.get("host") != self._host_id():
            return False
        pid = info.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int):
            return False
        start = info.get("pid_start")
        return not _pid_alive(pid, start if isinstance(start, str) else None)

    def _owner_alive(self, info: dict[str, Any] | None) -> bool:
        """Whether a claim's owner is a running process on this host."""
        if info is None or info.get("host") != self._host_id():
            return False
        pid, start = info.get("pid"), info.get("pid_start")
        if isinstance(pid, bool) or not isinstance(pid, int):
            return False
        return _pid_alive(pid, start if isinstance(start, str) else None)

    def _break_claim(self, path: str, judged: dict[str, Any] | None, judged_stat: os.stat_result) -> bool:
        """Remove the claim at ``path`` if it is still the one judged stale.

        Renames it to a unique name first (only one process can move a given
        file), then checks it moved the judged claim; if another process had
        already replaced it, the fresh claim is linked back.

        Returns:
          True if the judged claim is gone (removed by us or someone else).
        """
        grave = f"{path}.broken-{uuid.uuid4().hex}"
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return True
        try:
            moved, st = self._read_claim(grave)
            if judged is not None and moved is not None:
                same = moved.get("token") == judged.get("token")
            else:
                same = (st.st_ino, st.st_size, st.st_mtime_ns) == (
                    judged_stat.st_ino,
                    judged_stat.st_size,
                    judged_stat.st_mtime_ns,
                )
            if not same:
                try:
                    os.link(grave, path)  # put the fresh claim back
                except FileExistsError:
                    pass
            return same
        finally:
            _unlink_quiet(grave)

    def claim(self, key: str) -> bool:
        """Exclusively claim ``key`` for computation.

        Returns:
          True if this handle now holds the claim (also if it already did);
          False if the cell is finished or another live owner holds it. A
          stale claim (see :meth:`claim_is_stale`) is taken over.

        Raises:
          StoreError: not writable / disk full (nothing left behind).
        """
        self._require_writable()
        check_key(key)
        if self.has(key):
            return False
        path = self._claim_path(key)
        for _ in range(5):
            info = self._new_claim()
            data = (json.dumps(info, sort_keys=True) + "\n").encode("ascii")
            try:
                created = _publish(self._dir(CLAIMS_DIR), key + CLAIM_SUFFIX, data, self._temp_name())
            except OSError as err:
                raise _store_error(err, "writing claim", path) from err
            if created:
                self._held[key] = info["token"]
                if self.has(key):  # finished between our check and our claim
                    self.release(key)
                    return False
                return True
            try:
                current, st = self._read_claim(path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if current is not None and current.get("token") == self._held.get(key):
                return True
            if not self.claim_is_stale(current, st.st_mtime):
                return False
            try:
                if not self._break_claim(path, current, st):
                    return False
            except OSError as err:
                raise _store_error(err, "taking over stale claim", path) from err
        return False

    def release(self, key: str) -> bool:
        """Drop this handle's claim on ``key``.

        Returns:
          True if the claim was removed; False if this handle held none or it
          had meanwhile been taken over as stale by another process.
        """
        check_key(key)
        token = self._held.pop(key, None)
        if token is None:
            return False
        path = self._claim_path(key)
        try:
            current, st = self._read_claim(path)
        except FileNotFoundError:
            return False
        if current is None or current.get("token") != token:
            return False
        try:
            return self._break_claim(path, current, st)
        except OSError as err:
            raise _store_error(err, "releasing claim", path) from err

    def _remove_stale_claim(self, path: str) -> None:
        """Remove a claim file if it is (still) stale, of a finished cell, or not a claim."""
        name = os.path.basename(path)
        key = name[: -len(CLAIM_SUFFIX)] if name.endswith(CLAIM_SUFFIX) else ""
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except FileNotFoundError:
            return
        if not _KEY_RE.fullmatch(key) or not regular:
            _unlink_quiet(path)
            return
        try:
            current, st = self._read_claim(path)
        except FileNotFoundError:
            return
        if self.has(key) or self.claim_is_stale(current, st.st_mtime):
            self._break_claim(path, current, st)

    def claimed_elsewhere(self, key: str, *, include_foreign: bool = True) -> bool:
        """Whether another live owner is computing ``key``: absent, claimed, not by us, not stale.

        With ``include_foreign=False`` only owners on this host count (their
        liveness is checked); a claim of another host, which cannot be
        checked, then does not.
        """
        check_key(key)
        if key in self._held or self.has(key):
            return False
        try:
            current, st = self._read_claim(self._claim_path(key))
        except FileNotFoundError:
            return False
        if self.claim_is_stale(current, st.st_mtime):
            return False
        return include_foreign or (current is not None and current.get("host") == self._host_id())

    def _claim_info(self, path: str, now: float) -> ClaimInfo | None:
        """The :class:`ClaimInfo` of one claim file (None if it vanished)."""
        name = os.path.basename(path)
        key = name[: -len(CLAIM_SUFFIX)] if name.endswith(CLAIM_SUFFIX) else ""
        key = key if _KEY_RE.fullmatch(key) else ""
        try:
            info, st = self._read_claim(path)
        except FileNotFoundError:
            return None
        born = float(info["time"]) if info is not None and isinstance(info.get("time"), (int, float)) \
            and not isinstance(info.get("time"), bool) else st.st_mtime
        host = info.get("host") if info is not None and isinstance(info.get("host"), str) else None
        pid = info.get("pid") if info is not None and isinstance(info.get("pid"), int) \
            and not isinstance(info.get("pid"), bool) else None
        if key and self.has(key):
            state = "finished"
        elif self.claim_is_stale(info, st.st_mtime, now):
            state = "stale"
        elif host is None or pid is None:
            state = "unreadable"
        elif host == self._host_id():
            state = "live"
        else:
            state = "foreign"
        return ClaimInfo(key, path, state, host, pid, now - born)

    def claims(self) -> list[ClaimInfo]:
        """Every file in ``claims/`` (temp files aside), sorted by name, with its state (see :class:`ClaimInfo`)."""
        directory = self._dir(CLAIMS_DIR)
        try:
            names = sorted(n for n in os.listdir(directory) if not n.startswith(TEMP_PREFIX))
        except FileNotFoundError:
            return []
        now = time.time()
        found = (self._claim_info(os.path.join(directory, name), now) for name in names)
        return [c for c in found if c is not None]

    def release_claims(self) -> list[ClaimInfo]:
        """Remove every claim not held by a live process on this host; return those removed.

        For when the owners are known to be gone: a claim of another host is
        otherwise honoured until ``claim_timeout`` (24 h by default). A cell
        whose owner does still run may then be computed twice; the store
        keeps the first record (``link`` lets only one in).
        """
        return self._remove_claims(lambda info, owner: info.state != "live")

    def clear_finished_claims(self) -> list[ClaimInfo]:
        """Remove the claims of cells that already have a record and whose owner is not running here.

        Such a claim is moot (``claim`` refuses a finished cell): it is what an owner killed between
        writing the record and releasing its claim leaves behind. A resuming run calls this so that the
        store it leaves verifies clean. Returns the claims removed.
        """
        return self._remove_claims(
            lambda info, owner: info.state == "finished" and bool(info.key) and not self._owner_alive(owner))

    def _remove_claims(self, remove) -> list[ClaimInfo]:
        """Break each claim file for which ``remove(info, owner record)`` holds; return those removed."""
        self._require_writable()
        removed = []
        for info in self.claims():
            try:
                st = os.lstat(info.path)
                if stat.S_ISDIR(st.st_mode):
                    continue  # reported by verify(); repair(quarantine=True) moves it
                current, _ = self._read_claim(info.path)
                if remove(info, current) and self._break_claim(info.path, current, st):
                    removed.append(info)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise _store_error(err, "releasing claim", info.path) from err
        return removed

    def held_claims(self) -> list[str]:
        """Keys claimed through this handle and not yet released."""
        return sorted(self._held)

    # -- verification ------------------------------------------------------------------

    def _temp_is_stale(self, name: str, mtime: float, now: float) -> bool:
        if self._claim_timeout is not None and now - mtime > self._claim_timeout:
            return True
        match = _TEMP_RE.fullmatch(name)
        if match is None or match.group(1) != _host_tag(self._host_id()):
            return False
        return not _pid_alive(int(match.group(2)), None)

    def verify(self) -> list[Problem]:
        """Check every file; return the problems found (never raises for corruption).

        Reports corrupt records and unexpected files in ``records/``
        (``"corrupt"``), temp files orphaned by dead writers (``"temp"``), and
        stale claims or claims of finished cells (``"claim"``). Read-only.
        """
        problems: list[Problem] = []
        now = time.time()
        try:
            top = sorted(n for n in os.listdir(self._root) if n.startswith(TEMP_PREFIX))
        except OSError:
            top = []
        for name in top:
            path = os.path.join(self._root, name)
            try:
                if self._temp_is_stale(name, os.lstat(path).st_mtime, now):
                    problems.append(Problem(path, "temp", "temp file orphaned by a dead or timed-out writer"))
            except FileNotFoundError:
                continue
        for sub in (RECORDS_DIR, CLAIMS_DIR):
            directory = self._dir(sub)
            try:
                names = sorted(os.listdir(directory))
            except FileNotFoundError:
                continue
            for name in names:
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if name.startswith(TEMP_PREFIX):
                    if self._temp_is_stale(name, st.st_mtime, now):
                        problems.append(Problem(path, "temp", "temp file orphaned by a dead or timed-out writer"))
                elif sub == RECORDS_DIR:
                    problems.extend(self._verify_record(path, name))
                else:
                    problems.extend(self._verify_claim(path, name))
        return problems

    def _verify_record(self, path: str, name: str) -> list[Problem]:
        if not _is_record_name(name):
            return [Problem(path, "corrupt", "unexpected file in records/ (not '<64-hex key>.json')")]
        try:
            data, _ = _read_regular(path)
            decode_record(data, path, name[: -len(RECORD_SUFFIX)], hmac_key=self._hmac_key)
        except StoreCorruptError as err:
            return [Problem(path, "corrupt", err.problem)]
        except StoreVersionError as err:
            return [Problem(path, "corrupt", str(err))]
        except FileNotFoundError:
            return []
        except OSError as err:
            return [Problem(path, "corrupt", f"unreadable: {err}")]
        return []

    def _verify_claim(self, path: str, name: str) -> list[Problem]:
        key = name[: -len(CLAIM_SUFFIX)] if name.endswith(CLAIM_SUFFIX) else None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return []
        if not stat.S_ISREG(st.st_mode):
            kind = "corrupt" if stat.S_ISDIR(st.st_mode) else "claim"
            return [Problem(path, kind, f"{_file_kind(st.st_mode)} in claims/, not a claim file")]
        if key is None or not _KEY_RE.fullmatch(key):
            return [Problem(path, "claim", "unexpected file in claims/")]
        try:
            info, st = self._read_claim(path)
        except FileNotFoundError:
            return []
        if self.has(key):
            return [Problem(path, "claim", "claim of a finished cell (owner crashed after writing?)")]
        if self.claim_is_stale(info, st.st_mtime):
            return [Problem(path, "claim", f"stale claim (owner gone or timed out): {info}")]
        return []

    def repair(self, quarantine: bool = True) -> list[Problem]:
        """Fix what :meth:`verify` finds, so that loading works and resume redoes the cells.

        Corrupt files are moved to ``quarantine/<name>.<UTC time>`` (or deleted
        when ``quarantine=False``); orphaned temp files and stale claims are
        deleted. Returns the problems acted on.
        """
        self._require_writable()
        problems = self.verify()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        for problem in problems:
            try:
                if problem.kind == "corrupt" and quarantine:
                    target_dir = self._dir(QUARANTINE_DIR)
                    os.makedirs(target_dir, exist_ok=True)
                    target = os.path.join(target_dir, f"{os.path.basename(problem.path)}.{stamp}")
                    if os.path.lexists(target):
                        target += f".{uuid.uuid4().hex[:8]}"
                    os.rename(problem.path, target)
                elif problem.kind == "claim":
                    self._remove_stale_claim(problem.path)
                elif os.path.isdir(problem.path) and not os.path.islink(problem.path):
                    raise StoreError(f"{problem.path} is a directory; remove it by hand or use quarantine=True")
                else:
                    _unlink_quiet(problem.path)
            except OSError as err:
                raise _store_error(err, "repairing", problem.path) from err
        if problems:
            _fsync_dir(self._dir(RECORDS_DIR))
        return problems

