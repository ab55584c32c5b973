"""Atomic, append-only results store for sweeps and malleability runs.

A store is a directory: a manifest, one JSON file per finished cell under
``records/``, one claim file per cell being computed under ``claims/``, and
``quarantine/`` for corrupt files moved aside by ``repair()``. Read in this order:

- ``errors``: :class:`StoreError` and its family; :class:`Problem`, a finding of ``verify``;
- ``disk``: atomic publication of a complete file with ``link(2)``, reading only regular files
  (why one file per record, and what that guarantees);
- ``fileformat``: the directory layout, the manifest, and the record format with its SHA-256
  checksum and optional HMAC (integrity, and tamper evidence with a key);
- ``claims``: "someone is computing this cell", and when its owner (or a temp file's writer) is gone;
- ``frames``: records as a pandas table, and tables as Parquet files;
- ``result_store``: :class:`ResultStore`, which ties them to one directory and one process.

Every name below is public here; import from ``kernelattn.experiments.store``.
"""

from __future__ import annotations

from kernelattn.experiments.store.claims import DEFAULT_CLAIM_TIMEOUT, ClaimInfo
from kernelattn.experiments.store.errors import (
    NotARegularFileError,
    Problem,
    RecordExistsError,
    RecordNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    StoreVersionError,
)
from kernelattn.experiments.store.fileformat import (
    FORMAT_VERSION,
    HMAC_ENV_VAR,
    MANIFEST_NAME,
    STORE_FORMAT_NAME,
    check_key,
    decode_record,
    encode_record,
    finalize_record,
    make_record,
    record_checksum,
    record_fingerprint,
    record_hmac,
    store_exists,
    utc_now,
)
from kernelattn.experiments.store.frames import frame_row, read_parquet, write_parquet
from kernelattn.experiments.store.result_store import ResultStore

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "FORMAT_VERSION",
    "HMAC_ENV_VAR",
    "MANIFEST_NAME",
    "STORE_FORMAT_NAME",
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
    "read_parquet",
    "record_checksum",
    "record_fingerprint",
    "record_hmac",
    "store_exists",
    "utc_now",
    "write_parquet",
]
