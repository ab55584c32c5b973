"""Finding, verifying and downloading dataset files; reading archives safely.

Search path for a dataset ``name`` (first directory holding *all* its files
wins):

1. the primary directory — ``data_dir`` when given (the files sit directly in
   it), else ``$KERNELATTN_DATA/<name>``, else
   ``platformdirs.user_cache_dir("kernelattn")/<name>``;
2. system dataset directories, ``/usr/share/datasets/<name-with-dashes>/``
   (Debian's ``dataset-fashion-mnist`` installs
   ``/usr/share/datasets/fashion-mnist/``).

Missing files are downloaded into the primary directory (``download=True``):
to a temporary file beside the target, verified, then ``os.replace``-d into
place; on any failure the temporary file is removed.

Integrity: a file is accepted when its SHA-256 equals the published one, or
when its gzip-decompressed payload's SHA-256 equals the known payload hash (so
a recompressed copy of the same data, like Debian's, is accepted). A file
matching neither is never parsed (``ChecksumError``).

Untrusted input: decompression is capped (``MAX_DECOMPRESSED_BYTES`` or the
``max_bytes`` argument) and tar archives are read member by member from
memory — never extracted — refusing links, devices and names that are
absolute or contain ``..``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.client
import io
import os
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import platformdirs

from kernelattn.data.errors import (
    ChecksumError,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    UnsafeFileError,
)
from kernelattn.errors import InputValueError

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "ENV_VAR",
    "MAX_DECOMPRESSED_BYTES",
    "SYSTEM_DATASETS_ROOT",
    "FileSource",
    "FileSpec",
    "VerifiedFile",
    "acquire",
    "describe_file",
    "download",
    "gunzip_capped",
    "iter_tar_files",
    "primary_dir",
    "read_verified",
    "resolve_specs",
    "search_dirs",
    "sha256_hex",
]

#: Environment variable naming a root directory; a dataset lives in ``$KERNELATTN_DATA/<name>``.
ENV_VAR = "KERNELATTN_DATA"
#: Root of the system-wide dataset directories (Debian's ``dataset-*`` packages).
SYSTEM_DATASETS_ROOT = Path("/usr/share/datasets")
#: Default cap on any file read or downloaded and on any decompressed payload.
#: The largest legitimate payload, CIFAR-10's tar, is about 178 MiB.
MAX_DECOMPRESSED_BYTES = 512 * 2**20
#: Default socket timeout for downloads, in seconds.
DOWNLOAD_TIMEOUT_S = 60.0

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One distributed file and its known hashes.

    Attributes:
      name: file name, e.g. ``"train-images-idx3-ubyte.gz"``.
      sha256: published SHA-256 of the file as distributed (compressed).
      payload_sha256: SHA-256 of its gzip-decompressed content, if known.
      size: published size in bytes (informational).
    """

    name: str
    sha256: str | None
    payload_sha256: str | None = None
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class FileSource:
    """A dataset distributed as files.

    Attributes:
      name: the dataset's key (``"mnist"``), also the cache subdirectory.
      files: the files it needs.
      urls: base URLs of the canonical source and its mirrors, tried in order.
      system_names: directory names under ``SYSTEM_DATASETS_ROOT``.
    """

    name: str
    files: tuple[FileSpec, ...]
    urls: tuple[str, ...]
    system_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class VerifiedFile:
    """A file that passed its checksum, with its decompressed content.

    Attributes:
      name, path: the file and where it was read from.
      sha256: SHA-256 of the file as stored.
      payload_sha256: SHA-256 of the decompressed payload.
      verified_by: ``"sha256"`` or ``"payload_sha256"``: which hash matched.
      payload: the decompressed bytes.
    """

    name: str
    path: Path
    sha256: str
    payload_sha256: str
    verified_by: str
    payload: bytes = dataclasses.field(repr=False)

    def describe(self) -> dict[str, str]:
        """JSON-serialisable summary for ``Dataset.metadata``."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "payload_sha256": self.payload_sha256,
            "verified_by": self.verified_by,
        }


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def gunzip_capped(data: bytes, *, max_bytes: int, name: str) -> bytes:
    """Decompress gzip ``data`` (all members), refusing more than ``max_bytes``.

    Raises:
      UnsafeFileError: the payload exceeds ``max_bytes`` (a compression bomb);
        decompression stops at the cap.
      DatasetFormatError: not gzip, corrupt or truncated.
    """
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as stream:
            while chunk := stream.read(_CHUNK):
                out += chunk
                if len(out) > max_bytes:
                    raise UnsafeFileError(
                        f"{name}: decompressed size exceeds the cap of {max_bytes} bytes "
                        "(a compression bomb or the wrong file); refused"
                    )
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetFormatError(f"{name}: not a readable gzip file ({err})") from err
    return bytes(out)


def _mismatch(path: Path, spec: FileSpec, actual: str, actual_payload: str | None, note: str = "") -> ChecksumError:
    expected = [
        f"sha256 {spec.sha256}" if spec.sha256 else None,
        f"payload sha256 {spec.payload_sha256} (decompressed)" if spec.payload_sha256 else None,
    ]
    got = f"sha256 {actual}" + (f", payload sha256 {actual_payload}" if actual_payload else "")
    return ChecksumError(
        f"{path}: checksum mismatch for {spec.name}: expected {' or '.join(e for e in expected if e)}, "
        f"got {got}{note}. The file is corrupt, truncated or not the published one: delete it and "
        "download it again."
    )


def read_verified(path: Path, spec: FileSpec, *, max_bytes: int) -> VerifiedFile:
    """Read, verify and decompress one gzip file.

    The published hash is checked first; only when it does not match and a
    payload hash is known is the file decompressed (capped) and its payload
    checked. Nothing is parsed before one of them matches.

    Raises:
      ChecksumError: neither hash matches (or the file is truncated).
      UnsafeFileError: the file or its payload exceeds ``max_bytes``.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafeFileError(f"{path}: {size} bytes exceeds the cap of {max_bytes} bytes; refused")
    data = path.read_bytes()
    digest = sha256_hex(data)
    if spec.sha256 is not None and digest == spec.sha256:
        payload = gunzip_capped(data, max_bytes=max_bytes, name=str(path))
        return VerifiedFile(spec.name, path, digest, sha256_hex(payload), "sha256", payload)
    if spec.payload_sha256 is None:
        raise _mismatch(path, spec, digest, None)
    try:
        payload = gunzip_capped(data, max_bytes=max_bytes, name=str(path))
    except UnsafeFileError:
        raise
    except DatasetFormatError as err:
        raise _mismatch(path, spec, digest, None, f" ({err})") from err
    payload_digest = sha256_hex(payload)
    if payload_digest != spec.payload_sha256:
        raise _mismatch(path, spec, digest, payload_digest)
    return VerifiedFile(spec.name, path, digest, payload_digest, "payload_sha256", payload)


def describe_file(spec: FileSpec, urls: tuple[str, ...], found: Path | None, *, verify: bool) -> dict[str, Any]:
    """One file's entry of ``kernelattn data files``: its name, hashes, size, URLs and where it was found.

    Args:
      spec: the file.
      urls: base URLs it is downloaded from (``()``: none).
      found: the path of the copy found, or None.
      verify: also hash the copy found: ``"verified": true`` and ``"verified_by"``,
        or ``"verified": false`` and the ``ChecksumError`` (or other file error) message.
    """
    entry: dict[str, Any] = {
        "name": spec.name,
        "sha256": spec.sha256,
        "payload_sha256": spec.payload_sha256,
        "size": spec.size,
        "urls": [u + spec.name for u in urls],
        "found": None if found is None else str(found),
    }
    if verify and found is not None:
        try:
            verified = read_verified(found, spec, max_bytes=MAX_DECOMPRESSED_BYTES)
            entry.update(verified=True, verified_by=verified.verified_by)
        except DatasetError as err:
            entry.update(verified=False, error=str(err))
    return entry


def resolve_specs(files: tuple[FileSpec, ...], checksums: Mapping[str, Any] | None) -> tuple[FileSpec, ...]:
    """Apply a ``checksums`` override: file name → SHA-256 str or ``FileSpec``.

    Raises:
      ValueError: naming ``checksums`` when a file is missing from it, a name is
        unknown, or a value is neither a 64-hex-digit string nor a ``FileSpec``.
    """
    if checksums is None:
        return files
    if not isinstance(checksums, Mapping):
        raise InputValueError(f"checksums: expected a mapping file name -> sha256, got {type(checksums).__name__}")
    names = [spec.name for spec in files]
    unknown = sorted(set(checksums) - set(names))
    missing = [n for n in names if n not in checksums]
    if unknown or missing:
        raise InputValueError(
            f"checksums: expected exactly the files {names}, got unknown {unknown} and missing {missing}"
        )
    out = []
    for spec in files:
        value = checksums[spec.name]
        if isinstance(value, FileSpec):
            if value.sha256 is None and value.payload_sha256 is None:
                raise InputValueError(f"checksums: expected at least one hash for {spec.name}, got {value!r}")
            out.append(dataclasses.replace(value, name=spec.name))
        elif isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()):
            out.append(FileSpec(spec.name, value.lower()))
        else:
            raise InputValueError(
                f"checksums: expected a 64-hex-digit sha256 or a FileSpec for {spec.name}, got {value!r}"
            )
    return tuple(out)


def primary_dir(name: str, data_dir: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """The directory searched first and downloaded into.

    ``data_dir`` itself when given, else ``$KERNELATTN_DATA/<name>``, else the
    user cache ``platformdirs.user_cache_dir("kernelattn")/<name>``.
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
            raise InputValueError(f"data_dir: expected a directory path (str or os.PathLike), got {data_dir!r}")
        return Path(data_dir).expanduser()
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR):
        return Path(environ[ENV_VAR]).expanduser() / name
    return Path(platformdirs.user_cache_dir("kernelattn")) / name


def search_dirs(
    source: FileSource,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    system_dirs: Sequence[str | os.PathLike[str]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path, ...]:
    """The search path: the primary directory, then the system directories.

    ``system_dirs=None`` means ``SYSTEM_DATASETS_ROOT/<each system name>``;
    pass ``()`` to search the primary directory only.
    """
    if system_dirs is None:
        system = tuple(SYSTEM_DATASETS_ROOT / n for n in source.system_names)
    elif isinstance(system_dirs, (str, os.PathLike)) or not isinstance(system_dirs, Sequence):
        raise InputValueError(f"system_dirs: expected a sequence of directory paths, got {system_dirs!r}")
    else:
        system = tuple(Path(p) for p in system_dirs)
    dirs: list[Path] = []
    for d in (primary_dir(source.name, data_dir, environ), *system):
        if d not in dirs:
            dirs.append(d)
    return tuple(dirs)


def _base_urls(base_url: str | Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if base_url is None:
        urls = default
    elif isinstance(base_url, str):
        urls = (base_url,)
    elif isinstance(base_url, Sequence) and base_url and all(isinstance(u, str) for u in base_url):
        urls = tuple(base_url)
    else:
        raise InputValueError(f"base_url: expected a URL or a non-empty sequence of URLs, got {base_url!r}")
    for url in urls:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
            raise InputValueError(f"base_url: expected an http(s):// or file:// URL, got {url!r}")
    return tuple(u if u.endswith("/") else u + "/" for u in urls)


def download(
    url: str,
    target: Path,
    *,
    verify: Callable[[Path], object],
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> None:
    """Download ``url`` to ``target`` atomically, through ``urllib``.

    The body is streamed (at most ``max_bytes``) into a temporary file in
    ``target``'s directory, ``verify(temp_path)`` is called (it raises to
    reject), then the file is ``os.replace``-d onto ``target``. On any failure
    the temporary file is removed and the exception propagates; ``target`` is
    never left half-written.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = 0
            while chunk := response.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise UnsafeFileError(f"{url}: response exceeds the cap of {max_bytes} bytes; refused")
                out.write(chunk)
        verify(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _listing(specs: tuple[FileSpec, ...], urls: tuple[str, ...]) -> str:
    lines = []
    for spec in specs:
        hashes = [
            f"sha256 {spec.sha256}" if spec.sha256 else None,
            f"payload sha256 {spec.payload_sha256}" if spec.payload_sha256 else None,
        ]
        lines.append(
            f"  {spec.name}  ({', '.join(h for h in hashes if h)})  from {urls[0]}{spec.name}"
            if urls
            else f"  {spec.name}  ({', '.join(h for h in hashes if h)})"
        )
    return "\n".join(lines)


def not_found_message(
    source: FileSource, specs: tuple[FileSpec, ...], dirs: tuple[Path, ...], urls: tuple[str, ...], reason: str = ""
) -> str:
    """The ``DatasetNotFoundError`` text: file names, checksums, URLs, directory."""
    searched = ", ".join(str(d) for d in dirs)
    text = (
        f"dataset {source.name!r}: files not found (searched {searched}).\n"
        f"Put these files in {dirs[0]} (or pass data_dir=..., or set {ENV_VAR}):\n"
        f"{_listing(specs, urls)}"
    )
    return text + (f"\nDownload failed: {reason}" if reason else "")


def acquire(
    source: FileSource,
    *,
    data_dir: str | os.PathLike[str] | None,
    download_missing: bool,
    checksums: Mapping[str, Any] | None = None,
    base_url: str | Sequence[str] | None = None,
    system_dirs: Sequence[str | os.PathLike[str]] | None = None,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> tuple[VerifiedFile, ...]:
    """Locate (or download) and verify every file of ``source``.

    Returns:
      The verified files with their decompressed payloads, in ``source.files``
      order, all from one directory.

    Raises:
      DatasetNotFoundError: files absent and not downloadable; lists names,
        checksums, URLs and the directory to put them in.
      ChecksumError: a file on disk matches neither hash.
    """
    specs = resolve_specs(source.files, checksums)
    urls = _base_urls(base_url, source.urls)
    dirs = search_dirs(source, data_dir, system_dirs=system_dirs, environ=environ)
    found = next((d for d in dirs if all((d / s.name).is_file() for s in specs)), None)
    if found is None:
        if not download_missing:
            raise DatasetNotFoundError(not_found_message(source, specs, dirs, urls, "") + "\n(download=False)")
        found = dirs[0]
        for spec in specs:
            if (found / spec.name).is_file():
                continue
            errors = []
            for base in urls:
                try:
                    download(
                        base + spec.name,
                        found / spec.name,
                        verify=functools.partial(read_verified, spec=spec, max_bytes=max_bytes),
                        max_bytes=max_bytes,
                        timeout=timeout,
                    )
                    break
                except (OSError, ValueError, http.client.HTTPException, DatasetFormatError, ChecksumError) as err:
                    errors.append(f"{base}{spec.name}: {err}")
            else:
                raise DatasetNotFoundError(not_found_message(source, specs, dirs, urls, "; ".join(errors)))
    return tuple(read_verified(found / spec.name, spec, max_bytes=max_bytes) for spec in specs)


def _unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name or "\0" in name:
        return "empty or NUL in name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in parts:
        return "'..' in path"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isreg() or member.isdir()):
        return "device, fifo or other special member"
    return None


def iter_tar_files(data: bytes, *, max_bytes: int, name: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, content)`` of each regular file of a tar archive.

    ``data`` is the (gzip or plain) tar as bytes; it is decompressed in memory
    under the ``max_bytes`` cap and read member by member — nothing is written
    to disk. Any member that is a symlink, hard link, device or fifo, or whose
    name is absolute or contains ``..``, makes the whole archive refused.

    Raises:
      UnsafeFileError: an unsafe member or a size above the cap.
      DatasetFormatError: not a readable tar archive.
    """
    if data[:2] == b"\x1f\x8b":
        data = gunzip_capped(data, max_bytes=max_bytes, name=name)
    if len(data) > max_bytes:
        raise UnsafeFileError(f"{name}: {len(data)} bytes exceeds the cap of {max_bytes} bytes; refused")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                reason = _unsafe_member_reason(member)
                if reason is not None:
                    raise UnsafeFileError(f"{name}: unsafe archive member {member.name!r} ({reason}); archive refused")
                if member.isdir():
                    continue
                if member.size > max_bytes:
                    raise UnsafeFileError(f"{name}: member {member.name!r} of {member.size} bytes exceeds the cap")
                handle = archive.extractfile(member)
                if handle is None:
                    raise DatasetFormatError(f"{name}: cannot read member {member.name!r}")
                yield member.name, handle.read()
    except tarfile.TarError as err:
        raise DatasetFormatError(f"{name}: not a readable tar archive ({err})") from err
