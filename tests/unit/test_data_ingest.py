"""Ingest and MNIST decoding: mirror copy (and warm skip), download over real HTTP, checksums, corrupt files."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from ukr_hw.data import ingest, mnist
from ukr_hw.settings import get_settings


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on loopback serving a temp folder; yields (folder, base_url)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_mirror(mirror: Path, dst: Path, n_glyphs: int = 5) -> Path:
    """A mirror with the real MNIST files and the first few Rukopys rows."""
    (dst / "rukopys" / "glyphs").mkdir(parents=True)
    lines = (mirror / "rukopys" / "glyphs.csv").read_text(encoding="utf-8").splitlines()[: n_glyphs + 1]
    (dst / "rukopys" / "glyphs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for line in lines[1:]:
        name = line.split(",")[-1]
        shutil.copy2(mirror / "rukopys" / name, dst / "rukopys" / name)
    shutil.copytree(mirror / "mnist", dst / "mnist")
    return dst


def test_mirror_copy_then_warm_skip(mirror, tmp_path):
    small = _small_mirror(mirror, tmp_path / "mirror")
    settings = get_settings(root=tmp_path / "root", data_mirror=small)
    raw = ingest.ingest(settings)
    assert raw.copied == 1 + 5 + 4
    assert len(list((raw.rukopys / "glyphs").glob("*.png"))) == 5
    assert {p.name for p in raw.mnist.iterdir()} == set(ingest.MNIST_MD5)
    assert ingest.ingest(settings).copied == 0  # warm: nothing copied again
    # a changed source file is copied again
    csv = small / "rukopys" / "glyphs.csv"
    csv.write_text(csv.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert ingest.ingest(settings).copied == 1


def test_corrupt_or_missing_mnist_in_mirror_names_the_file(mirror, tmp_path):
    small = _small_mirror(mirror, tmp_path / "mirror")
    settings = get_settings(root=tmp_path / "root", data_mirror=small)
    bad = small / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated
    with pytest.raises(ingest.IngestError, match=r"t10k-labels-idx1-ubyte\.gz is corrupt.*expected ec29112d"):
        ingest.ingest(settings)
    assert not (settings.raw_dir / "mnist" / bad.name).exists()  # never copied over
    bad.unlink()
    with pytest.raises(ingest.IngestError, match=r"t10k-labels-idx1-ubyte\.gz is missing"):
        ingest.ingest(settings)


def test_mirror_without_rukopys_table(tmp_path):
    settings = get_settings(root=tmp_path / "root", data_mirror=tmp_path / "empty")
    with pytest.raises(ingest.IngestError, match=r"glyphs\.csv is missing.*UKR_HW_DATA_MIRROR"):
        ingest.ingest_rukopys(settings)


def test_download_over_http_with_checksums(mirror, tmp_path, http_folder):
    folder, base = http_folder
    for name in ingest.MNIST_MD5:
        shutil.copy2(mirror / "mnist" / name, folder / name)
    # the Rukopys tarball as GitHub's codeload lays it out: <repo>-<commit>/glyphs.csv, glyphs/*.png
    small = _small_mirror(mirror, tmp_path / "mirror", n_glyphs=3)
    with tarfile.open(folder / "rukopys.tar.gz", "w:gz") as tar:
        tar.add(small / "rukopys", arcname="rukopys-dataset-d02f11f")
    settings = get_settings(
        root=tmp_path / "root",
        data_mirror=None,
        mnist_base_url=base + "/",
        rukopys_archive_url=base + "/rukopys.tar.gz",
    )
    raw = ingest.ingest(settings)
    assert raw.copied == 4 + 1 + 3
    assert (raw.rukopys / "glyphs.csv").exists() and len(list((raw.rukopys / "glyphs").glob("*.png"))) == 3
    assert ingest.ingest(settings).copied == 0  # warm: checksums match, nothing downloaded


def test_download_corrupt_mnist_is_refused(mirror, tmp_path, http_folder):
    folder, base = http_folder
    for name in ingest.MNIST_MD5:
        (folder / name).write_bytes(b"not mnist")
    settings = get_settings(root=tmp_path / "root", data_mirror=None, mnist_base_url=base)
    with pytest.raises(ingest.IngestError, match=r"train-images-idx3-ubyte\.gz is corrupt"):
        ingest.ingest_mnist(settings)


def test_unreachable_upstream_gives_clear_error(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    settings = get_settings(root=tmp_path / "root", data_mirror=None, mnist_base_url=url, rukopys_archive_url=url)
    with pytest.raises(ingest.IngestError, match=r"could not download MNIST train-images.*UKR_HW_DATA_MIRROR"):
        ingest.ingest_mnist(settings)
    with pytest.raises(ingest.IngestError, match=r"could not download Rukopys.*UKR_HW_DATA_MIRROR"):
        ingest.ingest_rukopys(settings)


# --- IDX decoding ----------------------------------------------------------------------------------------------


def _idx_gz(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    path.write_bytes(gzip.compress(struct.pack(f">I{len(dims)}I", magic, *dims) + payload))
    return path


def test_read_idx_real_files(mirror):
    train = mnist.load_split(mirror / "mnist", "test")
    assert train.images.shape == (10000, 28, 28) and train.labels.shape == (10000,)
    assert set(np.unique(train.labels)) == set(range(10))


def test_read_idx_corrupt_files_name_the_file(tmp_path):
    good = np.arange(2 * 28 * 28, dtype=np.uint8).tobytes()
    f = _idx_gz(tmp_path / "images.gz", 0x803, (2, 28, 28), good)
    assert mnist.read_idx(f, "images").shape == (2, 28, 28)
    wrong_magic = _idx_gz(tmp_path / "wrong-magic.gz", 0x801, (2, 28, 28), good)
    with pytest.raises(mnist.MnistFormatError, match=r"wrong-magic\.gz is not an IDX images file \(magic 0x00000801"):
        mnist.read_idx(wrong_magic, "images")
    short = _idx_gz(tmp_path / "short-payload.gz", 0x803, (2, 28, 28), good[:-10])
    with pytest.raises(mnist.MnistFormatError, match=r"short-payload\.gz is truncated"):
        mnist.read_idx(short, "images")
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(f.read_bytes()[:40])
    with pytest.raises(mnist.MnistFormatError, match=r"truncated\.gz is not a complete gzip file"):
        mnist.read_idx(truncated, "images")
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"hello")
    with pytest.raises(mnist.MnistFormatError, match=r"plain\.gz is not a complete gzip file"):
        mnist.read_idx(not_gzip, "labels")
    bad_labels = _idx_gz(tmp_path / "labels.gz", 0x801, (3,), bytes([1, 2, 11]))
    with pytest.raises(mnist.MnistFormatError, match=r"labels\.gz is holding labels outside 0-9"):
        mnist.read_idx(bad_labels, "labels")
    with pytest.raises(mnist.MnistFormatError, match=r"missing\.gz is missing"):
        mnist.read_idx(tmp_path / "missing.gz", "labels")


def test_images_labels_count_mismatch(tmp_path):
    _idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(2 * 784))
    _idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (3,), bytes(3))
    with pytest.raises(mnist.MnistFormatError, match=r"2 images but t10k-labels-idx1-ubyte\.gz has 3 labels"):
        mnist.load_split(tmp_path, "test")


def test_select_per_class_is_deterministic_and_balanced(mirror):
    labels = mnist.load_split(mirror / "mnist", "test").labels
    a = mnist.select_per_class(labels, 7, seed=1)
    assert np.array_equal(a, mnist.select_per_class(labels, 7, seed=1))
    assert not np.array_equal(a, mnist.select_per_class(labels, 7, seed=2))
    assert np.bincount(labels[a], minlength=10).tolist() == [7] * 10


def test_preprocess_digits_ids_and_case(mirror):
    split = mnist.load_split(mirror / "mnist", "test")
    s = mnist.preprocess_digits(split, np.array([0, 5, 9]), "mnist-test", workers=1)
    assert s.id.tolist() == ["mnist-test/0", "mnist-test/5", "mnist-test/9"]
    assert (s.case == -1).all() and s.y.tolist() == split.labels[[0, 5, 9]].tolist()
    assert s.x.shape == (3, 28, 28) and s.x.max() > 200
