"""``ResultStore``: a directory of atomic, append-only, checksummed records, with claims for concurrent workers.

The on-disk format is in :mod:`~kernelattn.experiments.store.fileformat`, the
atomic writes in :mod:`~kernelattn.experiments.store.disk`, the claim rules in
:mod:`~kernelattn.experiments.store.claims` and the table view in
:mod:`~kernelattn.experiments.store.frames` (with Parquet files); this class ties them to one
directory and one process. Writing an existing key raises
:class:`RecordExistsError` (or, with ``put(..., exist_ok=True)``, is a no-op
returning ``False``); the stored record is never touched.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pandas as pd

from kernelattn.errors import InputTypeError, InputValueError
from kernelattn.experiments import provenance
from kernelattn.experiments.store.claims import (
    DEFAULT_CLAIM_TIMEOUT,
    ClaimInfo,
    break_claim,
    claim_info,
    claim_is_stale,
    claim_key,
    new_claim,
    owner_alive,
    read_claim,
    temp_is_stale,
    temp_name,
)
from kernelattn.experiments.store.disk import (
    file_kind,
    fsync_dir,
    move_aside,
    probe_writable,
    publish,
    read_regular,
    store_error,
    unlink_quiet,
)
from kernelattn.experiments.store.errors import (
    Problem,
    RecordExistsError,
    RecordNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
)
from kernelattn.experiments.store.fileformat import (
    CLAIM_SUFFIX,
    CLAIMS_DIR,
    KEY_RE,
    MANIFEST_NAME,
    QUARANTINE_DIR,
    RECORD_SUFFIX,
    RECORDS_DIR,
    TEMP_PREFIX,
    check_key,
    create_manifest,
    decode_record,
    encode_record,
    finalize_record,
    is_record_name,
    read_manifest,
    record_problems,
    resolve_hmac_key,
)
from kernelattn.experiments.store.frames import records_frame, write_parquet

__all__ = ["ResultStore"]


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
        self._hmac_key = resolve_hmac_key(hmac_key)
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
        return temp_name(self._host_id())

    def _environment(self) -> dict[str, Any]:
        if self._env is None:
            self._env = provenance.environment()
        # The precision policy is per computation, not per store: read it at each put.
        return {**self._env, "precision": provenance.precision_info()}

    # -- opening -----------------------------------------------------------------------

    def _open(self, *, create: bool) -> dict[str, Any]:
        manifest = read_manifest(self._dir(MANIFEST_NAME), self._root)
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
                raise store_error(err, "creating the store directory", self._root) from err
            try:
                probe_writable(self._root, self._temp_name())
                manifest = create_manifest(self._root, self._temp_name())
            except StoreError:
                if made_root:  # leave nothing behind
                    with contextlib.suppress(OSError):
                        os.rmdir(self._root)
                raise
        elif not self._readonly:
            probe_writable(self._root, self._temp_name())
        if not self._readonly:
            for sub in (RECORDS_DIR, CLAIMS_DIR):
                try:
                    os.makedirs(self._dir(sub), exist_ok=True)
                except OSError as err:
                    raise store_error(err, "creating", self._dir(sub)) from err
        return manifest

    def _require_writable(self) -> None:
        if self._readonly:
            raise StoreError(f"result store {self._root} was opened read-only")

    # -- records -----------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """Whether a record file exists for ``key`` (not checked for corruption)."""
        return os.path.lexists(self._record_path(check_key(key)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and KEY_RE.fullmatch(key) is not None and self.has(key)

    def keys(self) -> list[str]:
        """Sorted keys of all record files (contents not verified; see ``records``)."""
        return [name[: -len(RECORD_SUFFIX)] for name in self._record_names() if is_record_name(name)]

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
        data, _ = read_regular(path)
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
            if not is_record_name(name):
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
        return records_frame(self.records(kind), prefix=prefix)

    def to_parquet(self, path: str | os.PathLike[str], kind: str | None = None, *, prefix: bool = False) -> str:
        """Write :meth:`to_frame` to the Parquet file ``path`` atomically; return its absolute path.

        ``kernelattn.experiments.store.read_parquet(path)`` gives the frame back
        equal, dtypes included (see ``write_parquet`` there).
        Needs pyarrow (``pip install 'kernelattn[parquet]'``; else ``DependencyError``).
        """
        return write_parquet(self.to_frame(kind, prefix=prefix), path)

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
                written = publish(self._dir(RECORDS_DIR), key + RECORD_SUFFIX, data, self._temp_name())
            except OSError as err:
                raise store_error(err, "writing record", path) from err
            if written:
                # A leftover claim of a finished cell is harmless (claim() checks has()).
                with contextlib.suppress(StoreError):
                    self.release(key)
                return True
        if exist_ok:
            return False
        raise RecordExistsError(f"record {path} already exists; records are append-only (use exist_ok=True to skip)")

    # -- claims ------------------------------------------------------------------------

    def claim_is_stale(self, info: Mapping[str, Any] | None, mtime: float, now: float | None = None) -> bool:
        """Whether a claim (its content, or None if unreadable, and file mtime) is stale.

        Stale: its owner ran on this host and is gone (pid missing, zombie, or
        reused by a younger process), or it is older than ``claim_timeout``.
        An unreadable claim is judged by its file age only.
        """
        now = time.time() if now is None else now
        return claim_is_stale(info, mtime, now, host=self._host_id(), timeout=self._claim_timeout)

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
            info = new_claim(self._host_id())
            data = (json.dumps(info, sort_keys=True) + "\n").encode("ascii")
            try:
                created = publish(self._dir(CLAIMS_DIR), key + CLAIM_SUFFIX, data, self._temp_name())
            except OSError as err:
                raise store_error(err, "writing claim", path) from err
            if created:
                self._held[key] = info["token"]
                if self.has(key):  # finished between our check and our claim
                    self.release(key)
                    return False
                return True
            try:
                current, st = read_claim(path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if current is not None and current.get("token") == self._held.get(key):
                return True
            if not self.claim_is_stale(current, st.st_mtime):
                return False
            try:
                if not break_claim(path, current, st):
                    return False
            except OSError as err:
                raise store_error(err, "taking over stale claim", path) from err
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
            current, st = read_claim(path)
        except FileNotFoundError:
            return False
        if current is None or current.get("token") != token:
            return False
        try:
            return break_claim(path, current, st)
        except OSError as err:
            raise store_error(err, "releasing claim", path) from err

    @contextlib.contextmanager
    def claiming(self, keys: Iterable[str]) -> Iterator[list[str]]:
        """Claim ``keys`` for a block of work: ``with store.claiming(keys) as held: ...``.

        Yields the keys this handle now holds (the others are finished or held
        by a live owner). On exit every claim still held — the block ended,
        or failed, before :meth:`put` released it — is released.
        """
        held = [key for key in keys if self.claim(key)]
        try:
            yield held
        finally:
            for key in held:
                self.release(key)

    def _remove_stale_claim(self, path: str) -> None:
        """Remove a claim file if it is (still) stale, of a finished cell, or not a claim."""
        key = claim_key(os.path.basename(path))
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except FileNotFoundError:
            return
        if not key or not regular:
            unlink_quiet(path)
            return
        try:
            current, st = read_claim(path)
        except FileNotFoundError:
            return
        if self.has(key) or self.claim_is_stale(current, st.st_mtime):
            break_claim(path, current, st)

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
            current, st = read_claim(self._claim_path(key))
        except FileNotFoundError:
            return False
        if self.claim_is_stale(current, st.st_mtime):
            return False
        return include_foreign or (current is not None and current.get("host") == self._host_id())

    def _claim_info(self, path: str, now: float) -> ClaimInfo | None:
        """The :class:`ClaimInfo` of one claim file (None if it vanished)."""
        key = claim_key(os.path.basename(path))
        try:
            info, st = read_claim(path)
        except FileNotFoundError:
            return None
        finished = bool(key) and self.has(key)
        stale = not finished and self.claim_is_stale(info, st.st_mtime, now)
        return claim_info(key, path, info, st.st_mtime, now, finished=finished, stale=stale, host=self._host_id())

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
        host = self._host_id()
        return self._remove_claims(
            lambda info, owner: info.state == "finished" and bool(info.key) and not owner_alive(owner, host)
        )

    def _remove_claims(self, remove: Callable[[ClaimInfo, dict[str, Any] | None], bool]) -> list[ClaimInfo]:
        """Break each claim file for which ``remove(info, owner record)`` holds; return those removed."""
        self._require_writable()
        removed = []
        for info in self.claims():
            try:
                st = os.lstat(info.path)
                if stat.S_ISDIR(st.st_mode):
                    continue  # reported by verify(); repair(quarantine=True) moves it
                current, _ = read_claim(info.path)
                if remove(info, current) and break_claim(info.path, current, st):
                    removed.append(info)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise store_error(err, "releasing claim", info.path) from err
        return removed

    def held_claims(self) -> list[str]:
        """Keys claimed through this handle and not yet released."""
        return sorted(self._held)

    # -- verification ------------------------------------------------------------------

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
        listings = [(self._root, top)]  # at the top level, only the temp files of the probe and the manifest
        for sub in (RECORDS_DIR, CLAIMS_DIR):
            try:
                listings.append((self._dir(sub), sorted(os.listdir(self._dir(sub)))))
            except FileNotFoundError:
                continue
        for directory, names in listings:
            for name in names:
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if name.startswith(TEMP_PREFIX):
                    if temp_is_stale(name, st.st_mtime, now, host=self._host_id(), timeout=self._claim_timeout):
                        problems.append(Problem(path, "temp", "temp file orphaned by a dead or timed-out writer"))
                elif directory == self._dir(RECORDS_DIR):
                    problems.extend(record_problems(path, name, self._hmac_key))
                else:
                    problems.extend(self._verify_claim(path, name))
        return problems

    def _verify_claim(self, path: str, name: str) -> list[Problem]:
        key = claim_key(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return []
        if not stat.S_ISREG(st.st_mode):
            kind = "corrupt" if stat.S_ISDIR(st.st_mode) else "claim"
            return [Problem(path, kind, f"{file_kind(st.st_mode)} in claims/, not a claim file")]
        if not key:
            return [Problem(path, "claim", "unexpected file in claims/")]
        try:
            info, st = read_claim(path)
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
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        for problem in problems:
            try:
                if problem.kind == "corrupt" and quarantine:
                    move_aside(problem.path, self._dir(QUARANTINE_DIR), stamp)
                elif problem.kind == "claim":
                    self._remove_stale_claim(problem.path)
                elif os.path.isdir(problem.path) and not os.path.islink(problem.path):
                    raise StoreError(f"{problem.path} is a directory; remove it by hand or use quarantine=True")
                else:
                    unlink_quiet(problem.path)
            except OSError as err:
                raise store_error(err, "repairing", problem.path) from err
        if problems:
            fsync_dir(self._dir(RECORDS_DIR))
        return problems
