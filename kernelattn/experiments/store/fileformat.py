"""The on-disk format: directory layout, manifest, and record files with checksums and HMACs.

Layout of a store directory::

    <root>/
      kernelattn-store.json     manifest: {"format": "kernelattn-results-store", "version": 1, ...}
      records/<key>.json        one finished cell per file, never rewritten
      records/.tmp-*            in-flight (or crash-orphaned) temp files, never read as records
      claims/<key>.claim        "someone is computing this cell" (host, pid, time, token)
      quarantine/               corrupt files moved aside by ``repair()``

Records
-------
Each record is a JSON object::

    {"format": 1, "key": cell_key(cell), "kind": "sweep" | "malleability" | ...,
     "cell": {...}, "spec": {...}, "seed": ..., "metrics": {...},
     "environment": provenance.environment(),
     "timing": {"seconds": ..., "started": ISO-8601, "finished": ISO-8601},
     "checksum": sha256(canonical JSON of every field except "checksum")}

``format``, ``key`` and ``checksum`` are owned by the store (set by
:func:`finalize_record`, called by ``ResultStore.put``); ``environment`` is
filled in if absent. Numbers are stored as JSON of Python floats/ints; ``repr``
round-trips doubles exactly, so a record read back is bitwise equal to what was
stored. **NaN and ±inf** are written as the bare tokens ``NaN``, ``Infinity``
and ``-Infinity`` (Python's ``json`` reads and writes them; strict JSON parsers
such as ``jq`` do not). Rerunning a cell deterministically gives a record equal
in every field except ``environment``, ``timing`` and hence ``checksum``;
:func:`record_fingerprint` hashes only ``cell`` and ``metrics`` for determinism
checks.

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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac as _hmac
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.experiments import provenance
from kernelattn.experiments.store.disk import publish, read_regular, store_error
from kernelattn.experiments.store.errors import Problem, StoreCorruptError, StoreError, StoreVersionError

__all__ = [
    "CLAIMS_DIR",
    "CLAIM_SUFFIX",
    "FORMAT_VERSION",
    "HMAC_ENV_VAR",
    "HMAC_FIELD",
    "KEY_RE",
    "MANIFEST_NAME",
    "QUARANTINE_DIR",
    "RECORDS_DIR",
    "RECORD_SUFFIX",
    "REQUIRED_FIELDS",
    "STORE_FIELDS",
    "STORE_FORMAT_NAME",
    "TEMP_PREFIX",
    "check_key",
    "create_manifest",
    "decode_record",
    "encode_record",
    "finalize_record",
    "is_record_name",
    "make_record",
    "read_manifest",
    "record_checksum",
    "record_fingerprint",
    "record_hmac",
    "record_problems",
    "resolve_hmac_key",
    "store_exists",
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
#: Environment variable holding the secret key of record HMACs (tamper evidence); unset: none.
HMAC_ENV_VAR = "KERNELATTN_STORE_KEY"
#: Fields a caller must supply to ``put``.
REQUIRED_FIELDS: tuple[str, ...] = ("kind", "cell", "spec", "seed", "metrics", "timing")
#: Fields ``put`` computes itself (caller values are replaced).
STORE_FIELDS: tuple[str, ...] = ("format", "key", "checksum")
#: Optional store-owned field: HMAC-SHA256 of the body under the store's key (only with a key).
HMAC_FIELD = "hmac"
#: A cell key: 64 lowercase hex characters (``provenance.cell_key``).
KEY_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- keys and names


def check_key(key: Any, name: str = "key") -> str:
    """Validate a cell key: 64 lowercase hex characters (see ``provenance.cell_key``)."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise InputValueError(
            f"{name}: expected a cell key (64 lowercase hex characters from "
            f"kernelattn.experiments.provenance.cell_key), got {type(key).__name__} {key!r}"
        )
    return key


def is_record_name(name: str) -> bool:
    """Whether ``name`` is ``<64-hex key>.json``."""
    return name.endswith(RECORD_SUFFIX) and KEY_RE.fullmatch(name[: -len(RECORD_SUFFIX)]) is not None


def store_exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a result store (its manifest): callers validate everything, data
    included, before they create a new one, so that a refused spec leaves nothing behind."""
    return os.path.lexists(os.path.join(os.fspath(path), MANIFEST_NAME))


def utc_now() -> str:
    """The current UTC time as ISO-8601 with microseconds, e.g. ``2026-01-02T03:04:05.000006+00:00``."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- hashes


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


def resolve_hmac_key(value: Any) -> bytes | None:
    """The HMAC key: ``value`` (bytes or text), else ``$KERNELATTN_STORE_KEY``, else None."""
    if value is None:
        value = os.environ.get(HMAC_ENV_VAR) or None
        if value is None:
            return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise InputValueError(
            f"hmac_key: expected non-empty bytes or text (or ${HMAC_ENV_VAR}), got {type(value).__name__}"
        )
    return bytes(value)


def record_fingerprint(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``{"cell": ..., "metrics": ...}`` only.

    Equal for two runs of the same cell that produced bitwise-equal metrics,
    whatever their environment, timing or checksum.
    """
    return _sha256(provenance.canonical_json({"cell": record["cell"], "metrics": record["metrics"]}))


# --------------------------------------------------------------------------- records


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


def finalize_record(
    key: str, record: Mapping[str, Any], environment: Mapping[str, Any], *, hmac_key: bytes | None = None
) -> dict[str, Any]:
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


def decode_record(
    data: bytes, path: str | os.PathLike[str], expected_key: str, *, hmac_key: bytes | None = None
) -> dict[str, Any]:
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
            raise StoreCorruptError(
                path,
                f"no HMAC, but this store is read with a key (${HMAC_ENV_VAR} or "
                "hmac_key=): written without the key, or the field was removed",
            )
        if not _hmac.compare_digest(stored, record_hmac(record, hmac_key)):
            raise StoreCorruptError(
                path, "HMAC mismatch: the record was changed by someone without the key, or written under another key"
            )
    return record


def record_problems(path: str, name: str, hmac_key: bytes | None) -> list[Problem]:
    """What is wrong with the file ``path`` (named ``name``) in ``records/``: [] if it is a good record."""
    if not is_record_name(name):
        return [Problem(path, "corrupt", "unexpected file in records/ (not '<64-hex key>.json')")]
    try:
        data, _ = read_regular(path)
        decode_record(data, path, name[: -len(RECORD_SUFFIX)], hmac_key=hmac_key)
    except StoreCorruptError as err:
        return [Problem(path, "corrupt", err.problem)]
    except StoreVersionError as err:
        return [Problem(path, "corrupt", str(err))]
    except FileNotFoundError:
        return []
    except OSError as err:
        return [Problem(path, "corrupt", f"unreadable: {err}")]
    return []


# --------------------------------------------------------------------------- the manifest


def read_manifest(path: str, root: str) -> dict[str, Any] | None:
    """The checked manifest at ``path`` of the store ``root``, or None if there is none.

    Raises:
      StoreVersionError: written by a newer format version.
      StoreCorruptError: not valid JSON, or an invalid version.
      StoreError: unreadable, ``root`` is not a directory, or not a kernelattn manifest.
    """
    try:
        data, _ = read_regular(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise StoreError(f"{root} exists and is not a directory") from None
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
            f"result store {root} has format version {version}, written by a newer kernelattn "
            f"(this one reads up to version {FORMAT_VERSION}); upgrade kernelattn to read it. "
            "Nothing was modified."
        )
    return manifest


def create_manifest(root: str, temp_name: str) -> dict[str, Any]:
    """Publish a new manifest in ``root`` (via the temp file ``temp_name``); return the manifest in force.

    Two processes may create the same store at once: the loser reads and returns the winner's manifest.

    Raises:
      StoreError: not writable / disk full (nothing left behind).
    """
    path = os.path.join(root, MANIFEST_NAME)
    manifest = {
        "format": STORE_FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created": utc_now(),
        "created_by": provenance.package_versions(("kernelattn",))["kernelattn"],
    }
    data = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode("ascii")
    try:
        created = publish(root, MANIFEST_NAME, data, temp_name)
    except OSError as err:
        raise store_error(err, "writing the manifest", path) from err
    if created:
        return manifest
    existing = read_manifest(path, root)  # lost a creation race: use the winner's
    assert existing is not None
    return existing
