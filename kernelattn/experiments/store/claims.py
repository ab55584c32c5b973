"""Claims — "someone is computing this cell" — and whether the owner of a claim or temp file is gone.

``ResultStore.claim(key)`` publishes ``claims/<key>.claim`` exclusively (the
same write-temp-then-``link`` scheme as records, i.e. ``O_CREAT|O_EXCL``
semantics with the content complete on creation) holding host id, pid,
process start time, wall time and a random token (:func:`new_claim`). Exactly
one caller gets ``True``. A claim is *stale* — and the next ``claim`` takes it
over — when its owner ran on this host (same hostname and boot id) and that
pid is gone (or is a zombie, or was reused by a younger process), or when it
is older than ``claim_timeout`` seconds (for owners on other hosts). Claims
are an efficiency device: even if a timed-out-but-alive owner and a taker
both compute a cell, ``link`` lets only one record in. ``put`` releases the
writer's own claim; ``release`` does so explicitly (e.g. when a computation
fails).

A claim of another host cannot be checked for liveness: it is honoured until
``claim_timeout``. ``ResultStore.claims`` lists every claim with its state
(:data:`CLAIM_STATES`, see :class:`ClaimInfo`) — ``kernelattn store PATH``
prints them — and ``ResultStore.release_claims`` removes every claim whose
owner is not a provably live process on this host (``kernelattn store PATH
--repair --release-claims``), for when that other host is known to be gone.

A temp file names its writer the same way (:func:`temp_name`: host tag and
pid), so an orphaned one is recognised by the same liveness test
(:func:`temp_is_stale`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernelattn.experiments.store.disk import read_regular, unlink_quiet
from kernelattn.experiments.store.errors import NotARegularFileError
from kernelattn.experiments.store.fileformat import CLAIM_SUFFIX, KEY_RE, TEMP_PREFIX

__all__ = [
    "CLAIM_STATES",
    "DEFAULT_CLAIM_TIMEOUT",
    "ClaimInfo",
    "break_claim",
    "claim_info",
    "claim_is_stale",
    "claim_key",
    "host_tag",
    "new_claim",
    "owner_alive",
    "pid_alive",
    "process_start",
    "read_claim",
    "temp_is_stale",
    "temp_name",
]

#: Seconds after which any claim (or orphaned temp file) is stale: 24 h.
DEFAULT_CLAIM_TIMEOUT: float = 24 * 3600.0
#: Claim states (see :meth:`ResultStore.claims`).
CLAIM_STATES = ("live", "foreign", "stale", "finished", "unreadable")

_TEMP_RE = re.compile(r"\.tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]{32}")


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


# --------------------------------------------------------------------------- processes on this host


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


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, as text); None if unknown."""
    proc = _proc_stat(pid)
    return None if proc is None else proc[1]


def pid_alive(pid: int, start: str | None) -> bool:
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
    proc = _proc_stat(pid)
    if proc is None:
        return True  # no /proc: trust kill(0)
    state, now_start = proc
    if state in ("Z", "X"):
        return False  # zombie: dead but not yet reaped
    return start is None or now_start == start


def host_tag(host: str) -> str:
    """The 8-hex-character tag of a host id that temp file names carry."""
    return hashlib.sha256(host.encode("utf-8")).hexdigest()[:8]


# --------------------------------------------------------------------------- temp files


def temp_name(host: str) -> str:
    """A fresh temp file name of this process on ``host``: ``.tmp-<host tag>-<pid>-<32 hex>``."""
    return f"{TEMP_PREFIX}{host_tag(host)}-{os.getpid()}-{uuid.uuid4().hex}"


def temp_is_stale(name: str, mtime: float, now: float, *, host: str, timeout: float | None) -> bool:
    """Whether the temp file ``name`` is orphaned: older than ``timeout``, or its writer on ``host`` is gone."""
    if timeout is not None and now - mtime > timeout:
        return True
    match = _TEMP_RE.fullmatch(name)
    if match is None or match.group(1) != host_tag(host):
        return False
    return not pid_alive(int(match.group(2)), None)


# --------------------------------------------------------------------------- claim files


def claim_key(name: str) -> str:
    """The key a claim file's name gives: ``<64-hex key>.claim`` → key; any other name → ""."""
    key = name[: -len(CLAIM_SUFFIX)] if name.endswith(CLAIM_SUFFIX) else ""
    return key if KEY_RE.fullmatch(key) else ""


def new_claim(host: str) -> dict[str, Any]:
    """The content of a claim by this process on ``host``: host, pid, pid_start, time, iso, token."""
    pid = os.getpid()
    now = time.time()
    return {
        "host": host,
        "pid": pid,
        "pid_start": process_start(pid),
        "time": now,
        "iso": _dt.datetime.fromtimestamp(now, _dt.UTC).isoformat(timespec="microseconds"),
        "token": uuid.uuid4().hex,
    }


def read_claim(path: str) -> tuple[dict[str, Any] | None, os.stat_result]:
    """``(content or None if unreadable or not a regular file, stat)``; FileNotFoundError if absent."""
    try:
        data, st = read_regular(path)
    except NotARegularFileError:
        return None, os.lstat(path)
    try:
        info = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, st
    return (info if isinstance(info, dict) else None), st


def _local_owner(info: Mapping[str, Any] | None, host: str) -> tuple[int, str | None] | None:
    """``(pid, pid_start)`` of a claim's owner when it ran on ``host`` (this host); else None."""
    if info is None or info.get("host") != host:
        return None
    pid, start = info.get("pid"), info.get("pid_start")
    if isinstance(pid, bool) or not isinstance(pid, int):
        return None
    return pid, start if isinstance(start, str) else None


def owner_alive(info: Mapping[str, Any] | None, host: str) -> bool:
    """Whether a claim's owner is a running process on ``host`` (this host)."""
    owner = _local_owner(info, host)
    return owner is not None and pid_alive(*owner)


def claim_is_stale(
    info: Mapping[str, Any] | None, mtime: float, now: float, *, host: str, timeout: float | None
) -> bool:
    """Whether a claim (its content, or None if unreadable, and file mtime) is stale at ``now``.

    Stale: it is older than ``timeout``, or its owner ran on ``host`` (this
    host) and is gone (pid missing, zombie, or reused by a younger process).
    An unreadable claim is judged by its file age only.
    """
    born = mtime
    if info is not None and isinstance(info.get("time"), (int, float)):
        born = float(info["time"])
    if timeout is not None and now - born > timeout:
        return True
    owner = _local_owner(info, host)
    return owner is not None and not pid_alive(*owner)


def claim_info(
    key: str,
    path: str,
    info: Mapping[str, Any] | None,
    mtime: float,
    now: float,
    *,
    finished: bool,
    stale: bool,
    host: str,
) -> ClaimInfo:
    """The :class:`ClaimInfo` of the claim file ``path`` of ``key`` read as ``info`` (None: unreadable).

    ``finished``: the cell has a record; ``stale``: see :func:`claim_is_stale`; ``host``: this host.
    """
    taken = info.get("time") if info is not None else None
    born = float(taken) if isinstance(taken, (int, float)) and not isinstance(taken, bool) else mtime
    owner_host = info.get("host") if info is not None and isinstance(info.get("host"), str) else None
    pid = (
        info.get("pid")
        if info is not None and isinstance(info.get("pid"), int) and not isinstance(info.get("pid"), bool)
        else None
    )
    if finished:
        state = "finished"
    elif stale:
        state = "stale"
    elif owner_host is None or pid is None:
        state = "unreadable"
    elif owner_host == host:
        state = "live"
    else:
        state = "foreign"
    return ClaimInfo(key, path, state, owner_host, pid, now - born)


def break_claim(path: str, judged: dict[str, Any] | None, judged_stat: os.stat_result) -> bool:
    """Remove the claim at ``path`` if it is still the one judged stale.

    Renames it to a unique name first (only one process can move a given
    file), then checks it moved the judged claim; if another process had
    already replaced it, the fresh claim is linked back.

    Returns:
      True if the judged claim is gone (removed by us or someone else).

    Raises:
      OSError: from the filesystem.
    """
    grave = f"{path}.broken-{uuid.uuid4().hex}"
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return True
    try:
        moved, st = read_claim(grave)
        if judged is not None and moved is not None:
            same = moved.get("token") == judged.get("token")
        else:
            same = (st.st_ino, st.st_size, st.st_mtime_ns) == (
                judged_stat.st_ino,
                judged_stat.st_size,
                judged_stat.st_mtime_ns,
            )
        if not same:
            with contextlib.suppress(FileExistsError):
                os.link(grave, path)  # put the fresh claim back
        return same
    finally:
        unlink_quiet(grave)
