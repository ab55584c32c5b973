"""Dataset layer: loaders on tiny real-format files, search path, checksums,
downloads from a local server, subsetting, targets, synthetic spectra, and
option validation. No network: downloads go to a server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import json
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from kernelattn.data import (
    ChecksumError,
    Dataset,
    DatasetNotFoundError,
    FileSpec,
    available_datasets,
    dataset_info,
    load,
)
from kernelattn.data import files as files_mod
from kernelattn.data.mnist import MNIST, parse_idx

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


# ----------------------------------------------------------------- fixtures
def idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed IDX (unsigned byte) encoding of ``array``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_mnist_arrays(per_class_train: int = 5, per_class_test: int = 3, seed: int = 1):
    """Images whose pixel (0, 0) encodes the label, the rest random but non-zero rows."""
    rng = np.random.default_rng(seed)
    out = []
    for per_class in (per_class_train, per_class_test):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, size=(labels.size, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels * 20 + 1
        out += [images, labels]
    return out  # train_images, train_labels, test_images, test_labels


def write_mnist(directory: Path, arrays=None) -> dict[str, str]:
    """Write the four IDX .gz files; return their SHA-256 table."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = tiny_mnist_arrays() if arrays is None else arrays
    table = {}
    for name, array in zip(IDX_NAMES, arrays, strict=True):
        data = gzip.compress(idx_bytes(array), mtime=0)
        (directory / name).write_bytes(data)
        table[name] = sha(data)
    return table


def cifar_batch(n: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> dict:
    labels = rng.integers(0, 10, size=n) if labels is None else labels
    return {
        b"batch_label": b"tiny",
        b"labels": [int(v) for v in labels],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }


def write_cifar(directory: Path, per_batch: int = 10, seed: int = 2) -> tuple[str, dict[str, dict]]:
    """Write a tiny cifar-10-python.tar.gz; return (sha256, batches by member name)."""
    rng = np.random.default_rng(seed)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = cifar_batch(per_batch, rng, labels=np.arange(per_batch) % 10)
    batches["test_batch"] = cifar_batch(per_batch, rng, labels=(np.arange(per_batch) + 3) % 10)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        dir_info = tarfile.TarInfo("cifar-10-batches-py")
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        for member, obj in [*batches.items(), ("batches.meta", meta)]:
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    return sha(buffer.getvalue()), batches


@pytest.fixture
def mnist_dir(tmp_path):
    directory = tmp_path / "mnist"
    table = write_mnist(directory)
    return directory, table


def load_tiny(mnist_dir, **kwargs):
    directory, table = mnist_dir
    kwargs = {"data_dir": directory, "checksums": table, "system_dirs": (), "download": False, **kwargs}
    return load("mnist", **kwargs)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` over HTTP on 127.0.0.1; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ------------------------------------------------------------ IDX / MNIST
def test_idx_round_trip_shapes_dtypes_and_order(mnist_dir):
    train_x, train_y, test_x, test_y = tiny_mnist_arrays()
    ds = load_tiny(mnist_dir, normalize=False, target="labels")
    assert isinstance(ds, Dataset)
    assert ds.X_train.shape == (50, 784) and ds.X_test.shape == (30, 784)
    assert ds.X_train.dtype == np.float64 and ds.labels_train.dtype == np.int64
    assert ds.y_train.dtype == np.int64 and ds.y_train.shape == (50,)
    np.testing.assert_array_equal(ds.labels_train, train_y)
    np.testing.assert_array_equal(ds.labels_test, test_y)
    np.testing.assert_allclose(ds.X_train, train_x.reshape(50, -1) / 255.0)
    assert ds.X_train.min() >= 0.0 and ds.X_train.max() <= 1.0
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert (ds.n_train, ds.n_test, ds.n_features, ds.n_classes) == (50, 30, 784, 10)


def test_flatten_false_and_scale_false(mnist_dir):
    train_x = tiny_mnist_arrays()[0]
    ds = load_tiny(mnist_dir, flatten=False, scale=False, normalize=False)
    assert ds.X_train.shape == (50, 28, 28) and ds.n_features == 784
    np.testing.assert_array_equal(ds.X_train, train_x.astype(np.float64))


def test_metadata_names_files_hashes_and_options(mnist_dir):
    directory, table = mnist_dir
    ds = load_tiny(mnist_dir, classes=(3, 8), n_train=4, seed=7)
    meta = ds.metadata
    assert meta["name"] == "mnist" and meta["seed"] == 7
    assert meta["source"]["directory"] == str(directory)
    used = {f["name"]: f for f in meta["source"]["files"]}
    assert set(used) == set(IDX_NAMES)
    for name in IDX_NAMES:
        assert used[name]["path"] == str(directory / name)
        assert used[name]["sha256"] == table[name]
        assert used[name]["verified_by"] == "sha256"
    assert meta["classes"] == [3, 8] and meta["class_names"] == ["3", "8"]
    assert meta["preprocessing"]["normalize"] is True and meta["preprocessing"]["target"] == "onehot"
    json.dumps(meta)  # serialisable


def test_dataset_arrays_are_read_only(mnist_dir):
    ds = load_tiny(mnist_dir)
    with pytest.raises(ValueError):
        ds.X_train[0, 0] = 1.0
    with pytest.raises(AttributeError):
        ds.X_train = np.zeros(1)  # type: ignore[misc]


def test_unit_norm_rows_by_default(mnist_dir):
    ds = load_tiny(mnist_dir)
    np.testing.assert_allclose(np.linalg.norm(ds.X_train, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ds.X_test, axis=1), 1.0, rtol=1e-12)


def test_zero_row_is_an_error_naming_the_row(tmp_path):
    arrays = tiny_mnist_arrays()
    arrays[0][4] = 0  # a blank training image
    table = write_mnist(tmp_path / "m", arrays)
    with pytest.raises(ValueError, match=r"X_train: row 4 \(index 4 in the source split\) has zero l2 norm"):
        load("mnist", data_dir=tmp_path / "m", checksums=table, system_dirs=(), download=False)
    ds = load("mnist", data_dir=tmp_path / "m", checksums=table, system_dirs=(), download=False, normalize=False)
    assert not ds.X_train[4].any()


def test_payload_hash_accepted_when_compressed_hash_differs(mnist_dir):
    directory, _ = mnist_dir
    arrays = tiny_mnist_arrays()
    specs = {
        name: FileSpec(name, sha256="0" * 64, payload_sha256=sha(idx_bytes(array)))
        for name, array in zip(IDX_NAMES, arrays, strict=True)
    }
    ds = load("mnist", data_dir=directory, checksums=specs, system_dirs=(), download=False)
    assert {f["verified_by"] for f in ds.metadata["source"]["files"]} == {"payload_sha256"}


def test_published_table_rejects_other_files_with_both_hashes_named(mnist_dir):
    directory, table = mnist_dir
    with pytest.raises(ChecksumError) as info:
        load("mnist", data_dir=directory, system_dirs=(), download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert MNIST.files[0].sha256 in message  # expected
    assert table["train-images-idx3-ubyte.gz"] in message  # actual


def test_truncated_file_is_a_checksum_error(mnist_dir):
    directory, table = mnist_dir
    arrays = tiny_mnist_arrays()
    specs = {
        n: FileSpec(n, sha256=table[n], payload_sha256=sha(idx_bytes(a)))
        for n, a in zip(IDX_NAMES, arrays, strict=True)
    }
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz.*expected sha256"):
        load("mnist", data_dir=directory, checksums=specs, system_dirs=(), download=False)


def test_missing_files_offline_message_lists_names_checksums_and_directory(tmp_path):
    target = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as info:
        load("mnist", data_dir=target, system_dirs=(), download=False)
    message = str(info.value)
    assert f"Put these files in {target}" in message
    for spec in MNIST.files:
        assert spec.name in message and spec.sha256 in message
    assert isinstance(info.value, FileNotFoundError)
    assert not target.exists()


def test_fashion_mnist_reads_the_same_idx_layout(tmp_path):
    directory = tmp_path / "fm"
    table = write_mnist(directory)
    ds = load("fashion_mnist", data_dir=directory, checksums=table, system_dirs=(), download=False,
              classes=("Sandal", "bag"), target="pm1")
    assert ds.class_names == ("Sandal", "Bag")
    assert ds.n_train == 10 and ds.y_train.shape == (10,)
    np.testing.assert_array_equal(ds.y_train, np.where(ds.labels_train == 1, 1.0, -1.0))


def test_parse_idx_header(mnist_dir):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(array), name="x", ndim=3), array)


# -------------------------------------------------------------- search path
def test_env_var_root_is_searched(tmp_path, monkeypatch):
    table = write_mnist(tmp_path / "root" / "mnist")
    monkeypatch.setenv("KERNELATTN_DATA", str(tmp_path / "root"))
    ds = load("mnist", checksums=table, system_dirs=(), download=False)
    assert ds.metadata["source"]["directory"] == str(tmp_path / "root" / "mnist")


def test_user_cache_dir_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("KERNELATTN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert files_mod.primary_dir("mnist", None) == tmp_path / "cache" / "kernelattn" / "mnist"
    table = write_mnist(tmp_path / "cache" / "kernelattn" / "mnist")
    ds = load("mnist", checksums=table, system_dirs=(), download=False)
    assert ds.metadata["source"]["directory"] == str(tmp_path / "cache" / "kernelattn" / "mnist")


def test_system_dir_used_when_primary_is_empty(tmp_path):
    table = write_mnist(tmp_path / "system")
    ds = load("mnist", data_dir=tmp_path / "primary", checksums=table, system_dirs=(tmp_path / "system",),
              download=False)
    assert ds.metadata["source"]["directory"] == str(tmp_path / "system")
    dirs = files_mod.search_dirs(MNIST, tmp_path / "p")
    assert dirs == (tmp_path / "p", Path("/usr/share/datasets/mnist"))


def test_dataset_info_reports_search_path_and_presence(tmp_path):
    write_mnist(tmp_path / "m")
    info = dataset_info("mnist", tmp_path / "m", system_dirs=())
    assert info["search_dirs"] == [str(tmp_path / "m")] and info["download_dir"] == str(tmp_path / "m")
    assert [f["found"] for f in info["files"]] == [str(tmp_path / "m" / n) for n in IDX_NAMES]
    verified = dataset_info("mnist", tmp_path / "m", system_dirs=(), verify=True)
    assert all(f["verified"] is False and "checksum mismatch" in f["error"] for f in verified["files"])
    assert dataset_info("digits")["options"] == ["split_seed", "test_fraction"]
    json.dumps(verified)
    assert available_datasets() == ("cifar10", "digits", "fashion_mnist", "mnist", "synthetic")


# ----------------------------------------------------------------- download
def test_download_from_local_server_then_offline(tmp_path):
    table = write_mnist(tmp_path / "served")
    target = tmp_path / "cache"
    with serve(tmp_path / "served") as url:
        ds = load("mnist", data_dir=target, checksums=table, system_dirs=(), base_url=url)
    assert ds.n_train == 50
    assert sorted(p.name for p in target.iterdir()) == sorted(IDX_NAMES)  # no temp files left
    again = load("mnist", data_dir=target, checksums=table, system_dirs=(), download=False)
    np.testing.assert_array_equal(again.X_train, ds.X_train)


def test_download_falls_back_to_the_next_mirror(tmp_path):
    table = write_mnist(tmp_path / "served" / "good")
    (tmp_path / "served" / "bad").mkdir()
    with serve(tmp_path / "served") as url:
        ds = load("mnist", data_dir=tmp_path / "cache", checksums=table, system_dirs=(),
                  base_url=(url + "bad/", url + "good/"))
    assert ds.n_train == 50


def test_download_with_wrong_checksum_caches_nothing(tmp_path):
    write_mnist(tmp_path / "served")
    target = tmp_path / "cache"
    wrong = {name: "ab" * 32 for name in IDX_NAMES}
    with serve(tmp_path / "served") as url, pytest.raises(DatasetNotFoundError) as info:
        load("mnist", data_dir=target, checksums=wrong, system_dirs=(), base_url=url)
    message = str(info.value)
    assert "checksum mismatch" in message and "ab" * 32 in message and str(target) in message
    assert list(target.iterdir()) == []


def test_download_failure_lists_files_and_directory(tmp_path):
    (tmp_path / "served").mkdir()
    target = tmp_path / "cache"
    with serve(tmp_path / "served") as url, pytest.raises(DatasetNotFoundError) as info:
        load("mnist", data_dir=target, system_dirs=(), base_url=url, timeout=5)
    message = str(info.value)
    assert "404" in message and f"Put these files in {target}" in message
    for spec in MNIST.files:
        assert spec.name in message and spec.sha256 in message
    assert list(target.iterdir()) == []


def test_download_function_is_atomic(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "f.bin").write_bytes(b"hello")
    target = tmp_path / "out" / "f.bin"
    seen = []
    with serve(tmp_path / "served") as url:
        files_mod.download(url + "f.bin", target, verify=lambda p: seen.append(p.read_bytes()))
        assert target.read_bytes() == b"hello" and seen == [b"hello"]

        def reject(_):
            raise ChecksumError("no")

        with pytest.raises(ChecksumError):
            files_mod.download(url + "f.bin", tmp_path / "out" / "g.bin", verify=reject)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.bin"]


# ------------------------------------------------------------ subsets/targets
def test_class_subset_relabelled_in_given_order(mnist_dir):
    _, train_y, _, _ = tiny_mnist_arrays()
    ds = load_tiny(mnist_dir, classes=(8, 3), normalize=False, target="labels")
    assert ds.class_names == ("8", "3") and ds.n_train == 10
    first_pixel = np.rint(ds.X_train[:, 0] * 255).astype(int)
    np.testing.assert_array_equal(np.where(ds.labels_train == 0, 8, 3) * 20 + 1, first_pixel)
    assert load_tiny(mnist_dir, classes="3-vs-8").class_names == ("3", "8")
    assert load_tiny(mnist_dir, classes=np.array([3, 8])).class_names == ("3", "8")


def test_balanced_and_seed_stable_subsets(mnist_dir):
    a = load_tiny(mnist_dir, n_train=20, n_test=10, seed=3)
    b = load_tiny(mnist_dir, n_train=20, n_test=10, seed=3)
    c = load_tiny(mnist_dir, n_train=20, n_test=10, seed=4)
    assert np.bincount(a.labels_train).tolist() == [2] * 10
    assert np.bincount(a.labels_test).tolist() == [1] * 10
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.X_train, c.X_train)
    d = load_tiny(mnist_dir, n_train=20, n_test=20, seed=3)  # n_test leaves the train subset alone
    np.testing.assert_array_equal(a.X_train, d.X_train)
    assert load_tiny(mnist_dir, n_train=25).n_train == 20  # 25 // 10 per class


def test_too_few_samples_per_class_is_an_error(mnist_dir):
    with pytest.raises(ValueError, match=r"^n_train: .*class \d+ has 5"):
        load_tiny(mnist_dir, n_train=60)
    with pytest.raises(ValueError, match=r"^n_test: "):
        load_tiny(mnist_dir, classes=(1, 2), n_test=1)


def test_target_encodings(mnist_dir):
    onehot = load_tiny(mnist_dir)
    assert onehot.y_train.shape == (50, 10) and onehot.y_train.dtype == np.float64
    np.testing.assert_array_equal(onehot.y_train.argmax(1), onehot.labels_train)
    pm1 = load_tiny(mnist_dir, target="pm1")
    assert pm1.y_train.shape == (50, 10)
    np.testing.assert_array_equal(pm1.y_train, 2 * onehot.y_train - 1)
    binary = load_tiny(mnist_dir, classes=(3, 8), target="pm1")
    assert binary.y_train.shape == (10,) and set(binary.y_train.tolist()) == {-1.0, 1.0}
    np.testing.assert_array_equal(binary.y_train == 1.0, binary.labels_train == 1)


# -------------------------------------------------------------------- CIFAR
def test_cifar_round_trip_layout_and_class_names(tmp_path):
    digest, batches = write_cifar(tmp_path / "c")
    kwargs = dict(data_dir=tmp_path / "c", checksums={"cifar-10-python.tar.gz": digest}, system_dirs=(),
                  download=False, normalize=False, scale=False)
    ds = load("cifar10", flatten=False, target="labels", **kwargs)
    assert ds.X_train.shape == (50, 32, 32, 3) and ds.X_test.shape == (10, 32, 32, 3)
    raw = batches["data_batch_2"][b"data"][3]  # sample 13: R plane, G plane, B plane, row-major
    assert ds.X_train[13, 5, 7, 0] == raw[5 * 32 + 7]
    assert ds.X_train[13, 5, 7, 1] == raw[1024 + 5 * 32 + 7]
    assert ds.X_train[13, 5, 7, 2] == raw[2048 + 5 * 32 + 7]
    np.testing.assert_array_equal(ds.labels_train, np.tile(np.arange(10), 5))
    np.testing.assert_array_equal(ds.labels_test, (np.arange(10) + 3) % 10)
    assert ds.class_names[:2] == ("airplane", "automobile")
    flat = load("cifar10", **kwargs)
    np.testing.assert_array_equal(flat.X_train, ds.X_train.reshape(50, -1))
    pair = load("cifar10", classes=("automobile", "airplane"), n_train=4, target="pm1", **kwargs)
    assert pair.class_names == ("automobile", "airplane") and pair.X_train.shape == (4, 3072)
    assert np.bincount(pair.labels_train).tolist() == [2, 2]
    assert pair.metadata["source"]["files"][0]["sha256"] == digest


# ------------------------------------------------------------------- digits
def test_digits_split_scale_and_stability():
    ds = load("digits", normalize=False, target="labels")
    assert ds.n_train + ds.n_test == 1797 and ds.n_features == 64
    assert 0.19 < ds.n_test / 1797 < 0.21
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0
    counts = np.bincount(ds.labels_test)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    same = load("digits", normalize=False, target="labels", seed=5)  # seed: subsampling only
    np.testing.assert_array_equal(same.X_test, ds.X_test)
    other = load("digits", normalize=False, split_seed=1)
    assert not np.array_equal(other.X_test, ds.X_test)
    small = load("digits", classes=(3, 8), n_train=40, n_test=20, test_fraction=0.5)
    assert small.X_train.shape == (40, 64) and np.bincount(small.labels_train).tolist() == [20, 20]
    assert load("digits", flatten=False).X_train.shape[1:] == (8, 8)


def test_digits_fast_path_equals_sklearn_load_digits():
    from sklearn.datasets import load_digits as sklearn_load_digits

    from kernelattn.data.digits import read_digits

    images, labels, loader = read_digits()
    assert loader.startswith("sklearn bundled file")
    bunch = sklearn_load_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)


# ---------------------------------------------------------------- synthetic
def kappa_d(x: np.ndarray) -> float:
    s = np.linalg.svd(x, compute_uv=False)
    return float((s[0] / s[min(x.shape) - 1]) ** 2)


@pytest.mark.parametrize("n,d", [(60, 100), (100, 100), (300, 40)])
@pytest.mark.parametrize("kappa", [1.0, 37.5, 1e6])
def test_synthetic_kappa_accurate_with_unit_rows(n, d, kappa):
    ds = load("synthetic", n_train=n, n_test=7, d=d, kappa=kappa, seed=11)
    assert ds.X_train.shape == (n, d) and ds.X_test.shape == (7, d)
    assert abs(kappa_d(ds.X_train) / kappa - 1.0) < 1e-6
    np.testing.assert_allclose(np.linalg.norm(ds.X_train, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ds.X_test, axis=1), 1.0, rtol=1e-12)


def test_synthetic_explicit_singular_values():
    s = np.array([3.0, 2.0, 1.0, 0.5])
    raw = load("synthetic", n_train=4, d=10, singular_values=s, normalize=False)
    np.testing.assert_allclose(np.linalg.svd(raw.X_train, compute_uv=False), s, rtol=1e-12)
    unit = load("synthetic", n_train=4, d=10, singular_values=s)  # same ratios, rescaled
    got = np.linalg.svd(unit.X_train, compute_uv=False)
    np.testing.assert_allclose(got / got[0], s / s[0], rtol=1e-10)
    assert unit.metadata["source"]["kappa"] == pytest.approx(36.0)


def test_synthetic_labels_seed_and_tasks():
    a = load("synthetic", n_train=50, n_test=20, d=30, kappa=10.0, seed=1, target="labels")
    b = load("synthetic", n_train=50, n_test=30, d=30, kappa=10.0, seed=1, target="labels")
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert np.bincount(a.labels_train).tolist() == [25, 25]  # median threshold: balanced
    multi = load("synthetic", n_train=90, d=30, n_classes=3, target="pm1")
    assert multi.y_train.shape == (90, 3) and multi.n_classes == 3
    reg = load("synthetic", n_train=40, n_test=10, d=20, task="regression")
    assert reg.y_train.shape == (40,) and reg.y_train.dtype == np.float64 and reg.n_classes == 0
    assert reg.metadata["preprocessing"]["target"] == "values" and np.std(reg.y_train) > 0


# ------------------------------------------------------------- bad options
BAD_OPTIONS = [
    (("nope",), {}, "name"),
    (("digits",), {"seed": -1}, "seed"),
    (("digits",), {"seed": 1.5}, "seed"),
    (("digits",), {"n_train": 0}, "n_train"),
    (("digits",), {"n_train": "10"}, "n_train"),
    (("digits",), {"n_test": -3}, "n_test"),
    (("digits",), {"flatten": "yes"}, "flatten"),
    (("digits",), {"scale": 1}, "scale"),
    (("digits",), {"normalize": None}, "normalize"),
    (("digits",), {"download": "no"}, "download"),
    (("digits",), {"target": "one-hot"}, "target"),
    (("digits",), {"target": "values"}, "target"),
    (("digits",), {"classes": (3, 3)}, "classes"),
    (("digits",), {"classes": (3,)}, "classes"),
    (("digits",), {"classes": (10, 3)}, "classes"),
    (("digits",), {"classes": ("cat", "dog")}, "classes"),
    (("digits",), {"classes": 3.5}, "classes"),
    (("digits",), {"classes": (1.0, 2.0)}, "classes"),
    (("digits",), {"data_dir": 5}, "data_dir"),
    (("digits",), {"test_fraction": 1.5}, "test_fraction"),
    (("digits",), {"split_seed": -1}, "split_seed"),
    (("digits",), {"foo": 1}, "foo"),
    (("mnist",), {"classes": ("3", "3")}, "classes"),
    (("cifar10",), {"classes": ("automobile", "plane")}, "classes"),
    (("mnist",), {"checksums": {"x.gz": "0" * 64}}, "checksums"),
    (("mnist",), {"checksums": dict.fromkeys(IDX_NAMES, "xyz")}, "checksums"),
    (("mnist",), {"base_url": "ftp://example.invalid/"}, "base_url"),
    (("mnist",), {"system_dirs": "/usr/share"}, "system_dirs"),
    (("mnist",), {"max_bytes": 0}, "max_bytes"),
    (("mnist",), {"timeout": -1}, "timeout"),
    (("mnist",), {"kappa": 3.0}, "kappa"),
    (("synthetic",), {"kappa": 0.5}, "kappa"),
    (("synthetic",), {"kappa": float("nan")}, "kappa"),
    (("synthetic",), {"d": 0}, "d"),
    (("synthetic",), {"n_classes": 1}, "n_classes"),
    (("synthetic",), {"task": "ranking"}, "task"),
    (("synthetic",), {"teacher_width": 0}, "teacher_width"),
    (("synthetic",), {"n_train": 1}, "n_train"),
    (("synthetic",), {"d": 5, "singular_values": [1.0, 2.0]}, "singular_values"),
    (("synthetic",), {"d": 2, "singular_values": [1.0, 0.0]}, "singular_values"),
    (("synthetic",), {"d": 2, "kappa": 2.0, "singular_values": [1.0, 0.5]}, "kappa"),
    (("synthetic",), {"classes": (0, 1)}, "classes"),
    (("synthetic",), {"task": "regression", "target": "onehot"}, "target"),
    (("synthetic",), {"test_fraction": 0.1}, "test_fraction"),
]


@pytest.mark.parametrize("args,kwargs,argument", BAD_OPTIONS)
def test_bad_option_is_a_value_error_naming_the_argument(tmp_path, args, kwargs, argument):
    if args[0] in ("mnist", "cifar10"):  # no files: option errors must come before any file is read
        kwargs = {"system_dirs": (), "data_dir": tmp_path, "download": False, **kwargs}
    with pytest.raises(ValueError) as info:
        load(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{argument}:"), message
    assert "expected" in message and "got" in message, message


def test_dataset_constructor_checks_shapes():
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="labels_train"):
        Dataset(x, np.ones(3), x, np.ones(3), np.zeros(2, np.int64), np.zeros(3, np.int64), ("a", "b"))
    with pytest.raises(ValueError, match="X_test"):
        Dataset(x, np.ones(3), np.ones((3, 4)), np.ones(3), np.zeros(3, np.int64), np.zeros(3, np.int64), ("a",))
