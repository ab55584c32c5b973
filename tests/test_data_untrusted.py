"""Hostile files (issue 10.1): pickles that would run code, archives that
would write outside the cache, compression bombs, lying IDX headers, and
oversized downloads are all refused — and nothing is executed or written."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kernelattn.data import (
    ChecksumError,
    DatasetFormatError,
    DatasetNotFoundError,
    FileSpec,
    UnsafeFileError,
    load,
)
from kernelattn.data.cifar10 import safe_unpickle
from kernelattn.data.files import gunzip_capped, iter_tar_files
from kernelattn.data.mnist import parse_idx

CIFAR = "cifar-10-python.tar.gz"
IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunsShell:
    """Unpickling this would run ``touch <marker>`` through os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def tar_gz(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def batch(n: int = 2) -> bytes:
    return pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}, protocol=2)


def cifar_members(replace: dict[str, bytes] | None = None) -> list[tuple[str, bytes]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members = {f"cifar-10-batches-py/{n}": batch() for n in names}
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]})
    members.update(replace or {})
    return list(members.items())


def load_cifar_bytes(directory: Path, data: bytes, **kwargs):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CIFAR).write_bytes(data)
    return load("cifar10", data_dir=directory, checksums={CIFAR: sha(data)}, system_dirs=(), download=False,
                normalize=False, **kwargs)


# ------------------------------------------------------------------ pickles
def test_pickle_that_would_run_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(RunsShell(marker), protocol=2)
    with pytest.raises(UnsafeFileError, match=r"global (posix|os)\.system"):
        safe_unpickle(evil, name="evil")
    assert not marker.exists()


def test_evil_pickle_inside_a_cifar_archive_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": RunsShell(marker), b"labels": [0]}, protocol=2)
    data = tar_gz(cifar_members({"cifar-10-batches-py/data_batch_3": evil}))
    with pytest.raises(UnsafeFileError, match="data_batch_3"):
        load_cifar_bytes(tmp_path / "c", data)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_other_globals_are_refused_at_every_protocol(protocol):
    with pytest.raises(UnsafeFileError, match=r"(__builtin__|builtins)\.eval"):
        safe_unpickle(pickle.dumps(CallsEval(), protocol=protocol), name="x")
    with pytest.raises(UnsafeFileError):  # an allowed module, a disallowed name
        safe_unpickle(pickle.dumps(np.load, protocol=protocol), name="x")


def test_codecs_encode_only_for_latin1():
    class Rot13:
        def __reduce__(self):
            import _codecs

            return (_codecs.encode, ("abc", "rot13"))

    with pytest.raises(UnsafeFileError, match="rot13"):
        safe_unpickle(pickle.dumps(Rot13(), protocol=2), name="x")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_numpy_batches_still_load(protocol):
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [1, 2], b"name": b"x"}
    out = safe_unpickle(pickle.dumps(obj, protocol=protocol), name="ok")
    np.testing.assert_array_equal(out[b"data"], obj[b"data"])
    assert out[b"labels"] == [1, 2] and out[b"name"] == b"x"


@pytest.mark.filterwarnings("error")
def test_python2_era_module_name_loads_without_deprecation_warnings():
    obj = {b"data": np.arange(6, dtype=np.uint8).reshape(1, 6), b"labels": [3]}
    data = pickle.dumps(obj, protocol=2)
    for spelling in (b"numpy._core.multiarray", b"numpy.core.multiarray"):  # numpy 2 / the 2009 CIFAR files
        legacy = data.replace(b"numpy._core.multiarray", spelling).replace(b"numpy.core.multiarray", spelling)
        assert spelling in legacy
        np.testing.assert_array_equal(safe_unpickle(legacy, name="old")[b"data"], obj[b"data"])


def test_malformed_pickle_is_a_format_error():
    with pytest.raises(DatasetFormatError, match="not a readable pickle"):
        safe_unpickle(b"\x80\x02}q\x00(", name="cut")


def test_batch_with_object_array_is_refused(tmp_path):
    bad = pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.float64), b"labels": [0, 0]}, protocol=2)
    data = tar_gz(cifar_members({"cifar-10-batches-py/data_batch_1": bad}))
    with pytest.raises(DatasetFormatError, match="uint8"):
        load_cifar_bytes(tmp_path / "c", data)


# ----------------------------------------------------------------- archives
def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "hostile,reason",
    [
        (("../evil", b"x"), "'..' in path"),
        (("cifar-10-batches-py/../../evil", b"x"), "'..' in path"),
        (("/tmp/evil-absolute", b"x"), "absolute path"),
        (_link("cifar-10-batches-py/data_batch_1", "/etc/passwd", tarfile.SYMTYPE), "link"),
        (_link("cifar-10-batches-py/test_batch", "../../etc/passwd", tarfile.LNKTYPE), "link"),
        (_link("cifar-10-batches-py/dev", "", tarfile.CHRTYPE), "device"),
        (_link("cifar-10-batches-py/fifo", "", tarfile.FIFOTYPE), "device, fifo"),
    ],
)
def test_unsafe_archive_members_are_refused_and_nothing_written(tmp_path, hostile, reason):
    cache = tmp_path / "cache" / "cifar10"
    data = tar_gz([hostile, *cifar_members()])
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeFileError, match=reason):
        load_cifar_bytes(cache, data)
    assert sorted(p.name for p in cache.iterdir()) == [CIFAR]
    assert sorted(p for p in tmp_path.rglob("*")) == sorted({*before, cache, cache / CIFAR, cache.parent})
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-absolute").exists()


def test_tar_member_larger_than_cap_is_refused():
    data = tar_gz([("big", b"\0" * 5000)])
    with pytest.raises(UnsafeFileError, match="exceeds the cap"):
        list(iter_tar_files(data, max_bytes=4096, name="t"))


def test_valid_archive_lists_members_in_memory():
    data = tar_gz([("a/x", b"1"), ("a/y", b"22")])
    assert list(iter_tar_files(data, max_bytes=1 << 20, name="t")) == [("a/x", b"1"), ("a/y", b"22")]
    with pytest.raises(DatasetFormatError, match="not a readable tar"):
        list(iter_tar_files(b"garbage" * 100, max_bytes=1 << 20, name="t"))


# ---------------------------------------------------------- compression bombs
@pytest.fixture(scope="module")
def bomb() -> bytes:
    """gzip of 200 MB of zeros (~200 KB compressed)."""
    buffer = io.BytesIO()
    zeros = bytes(1 << 20)
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as out:
        for _ in range(200):
            out.write(zeros)
    return buffer.getvalue()


def test_gzip_bomb_stops_at_the_cap(bomb):
    assert len(bomb) < 2 << 20
    with pytest.raises(UnsafeFileError, match="exceeds the cap of 1048576 bytes"):
        gunzip_capped(bomb, max_bytes=1 << 20, name="bomb")


def test_gzip_bomb_as_an_idx_file_is_refused_even_if_its_hash_is_trusted(tmp_path, bomb):
    directory = tmp_path / "m"
    directory.mkdir()
    table = {}
    for name in IDX_NAMES:
        (directory / name).write_bytes(bomb)
        table[name] = sha(bomb)
    with pytest.raises(UnsafeFileError, match="compression bomb"):
        load("mnist", data_dir=directory, checksums=table, system_dirs=(), download=False, max_bytes=8 << 20)


def test_gzip_bomb_with_only_a_payload_hash_is_refused(tmp_path, bomb):
    directory = tmp_path / "m"
    directory.mkdir()
    for name in IDX_NAMES:
        (directory / name).write_bytes(bomb)
    specs = {n: FileSpec(n, None, payload_sha256="0" * 64) for n in IDX_NAMES}
    with pytest.raises(UnsafeFileError):
        load("mnist", data_dir=directory, checksums=specs, system_dirs=(), download=False, max_bytes=1 << 20)


def test_tar_gz_bomb_is_refused(tmp_path, bomb):
    with pytest.raises(UnsafeFileError, match="exceeds the cap"):
        load_cifar_bytes(tmp_path / "c", bomb, max_bytes=4 << 20)


def test_untrusted_file_is_never_decompressed_without_a_payload_hash(tmp_path, bomb):
    directory = tmp_path / "m"
    directory.mkdir()
    for name in IDX_NAMES:
        (directory / name).write_bytes(bomb)
    with pytest.raises(ChecksumError, match="checksum mismatch"):  # hash first: no decompression at all
        load("mnist", data_dir=directory, system_dirs=(), download=False)


def test_oversized_download_is_refused_and_not_cached(tmp_path, monkeypatch):
    import urllib.request

    class Endless(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    def fake_urlopen(url, timeout=None):
        return io.BufferedReader(Endless())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    target = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError, match="response exceeds the cap"):
        load("mnist", data_dir=target, system_dirs=(), base_url="http://127.0.0.1:9/", max_bytes=1 << 20)
    assert list(target.iterdir()) == []


# ---------------------------------------------------------------- IDX headers
def idx(dims: tuple[int, ...], payload: bytes) -> bytes:
    return b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize(
    "data,match",
    [
        (idx((100, 28, 28), bytes(50 * 784)), r"dimensions \(100, 28, 28\) need 78400 payload bytes, got 39200"),
        (idx((4294967295, 28, 28), bytes(784)), "need 3367254359280 payload bytes"),
        (idx((2, 2), bytes(4) + b"extra"), "need 4 payload bytes, got 9"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + bytes(4), "type 0x08"),
        (b"PK\x03\x04", "bad magic"),
        (b"\x00\x00\x08\x03\x00", "truncated IDX header"),
    ],
)
def test_idx_header_must_match_payload(data, match):
    with pytest.raises(DatasetFormatError, match=match):
        parse_idx(data, name="f")


def test_idx_with_lying_header_is_refused_through_load(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    payloads = [idx((10, 28, 28), bytes(5 * 784)), idx((10,), bytes(10)), idx((2, 28, 28), bytes(2 * 784)),
                idx((2,), bytes(2))]
    table = {}
    for name, payload in zip(IDX_NAMES, payloads, strict=True):
        data = gzip.compress(payload)
        (directory / name).write_bytes(data)
        table[name] = sha(data)
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz: IDX header"):
        load("mnist", data_dir=directory, checksums=table, system_dirs=(), download=False)


def test_images_and_labels_must_agree(tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    payloads = [idx((3, 28, 28), bytes(3 * 784)), idx((2,), bytes(2)), idx((2, 28, 28), bytes(2 * 784)),
                idx((2,), bytes([0, 11]))]
    table = {}
    for name, payload in zip(IDX_NAMES, payloads, strict=True):
        data = gzip.compress(payload)
        (directory / name).write_bytes(data)
        table[name] = sha(data)
    with pytest.raises(DatasetFormatError, match="3 images but 2 labels"):
        load("mnist", data_dir=directory, checksums=table, system_dirs=(), download=False)
