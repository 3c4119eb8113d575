"""MNIST: decode the IDX files (validated) and put every digit through the one preprocess function.

IDX format: big-endian; magic ``0x00000803`` for images (then count, rows, cols) and ``0x00000801`` for labels
(then count); payload of unsigned bytes. A truncated or foreign file is a clear :class:`MnistFormatError` that
names it.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ukr_hw import labels
from ukr_hw.data.arrays import Samples
from ukr_hw.data.parallel import chunks, pool_map

log = logging.getLogger(__name__)

SOURCE = "mnist"
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CHUNK = 500


class MnistFormatError(ValueError):
    """An IDX file is missing, truncated or not what its name says; the message names it and what to do."""


def _fail(path: Path, what: str) -> MnistFormatError:
    return MnistFormatError(
        f"MNIST file {path} is {what}; delete it and run `ukr-hw prepare` again to fetch the canonical file."
    )


def read_idx(path: Path, expect: str) -> np.ndarray:
    """Decode one gzipped IDX file: ``expect`` is ``"images"`` (→ (N,28,28) uint8) or ``"labels"`` (→ (N,))."""
    path = Path(path)
    if not path.exists():
        raise MnistFormatError(f"MNIST file {path} is missing; run `ukr-hw prepare` (ingest) to fetch it.")
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _fail(path, f"not a complete gzip file ({exc.__class__.__name__}: {exc})") from exc
    magic_expected, ndim = (IMAGES_MAGIC, 3) if expect == "images" else (LABELS_MAGIC, 1)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _fail(path, f"too short for an IDX header ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != magic_expected:
        raise _fail(path, f"not an IDX {expect} file (magic 0x{magic:08x}, expected 0x{magic_expected:08x})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if expect == "images" and dims[1:] != (28, 28):
        raise _fail(path, f"not 28×28 images (dims {dims})")
    n_bytes = int(np.prod(dims))
    if len(data) - header != n_bytes:
        raise _fail(path, f"truncated or padded: {len(data) - header} payload bytes for shape {dims}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    if expect == "labels" and arr.size and arr.max() > 9:
        raise _fail(path, f"holding labels outside 0-9 (max {arr.max()})")
    return arr


@dataclass(frozen=True)
class MnistSplit:
    images: np.ndarray  #: (N,28,28) uint8, white on black
    labels: np.ndarray  #: (N,) uint8 digits


def load_split(mnist_dir: Path, split: str) -> MnistSplit:
    """The ``train`` or ``test`` split, images and labels checked to agree in count."""
    img_name, lab_name = FILES[split]
    images = read_idx(Path(mnist_dir) / img_name, "images")
    labs = read_idx(Path(mnist_dir) / lab_name, "labels")
    if len(images) != len(labs):
        raise MnistFormatError(
            f"MNIST {split}: {img_name} has {len(images)} images but {lab_name} has {len(labs)} labels; "
            "one of them is not the canonical file: delete both and run `ukr-hw prepare` again."
        )
    return MnistSplit(images, labs)


def select_per_class(digits: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of each digit 0-9, chosen deterministically from ``seed`` (sorted)."""
    rng = np.random.default_rng(seed)
    picked = []
    for d in range(10):
        pool = np.flatnonzero(digits == d)
        picked.append(rng.permutation(pool)[: min(per_class, len(pool))])
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


def _prep_block(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Worker: a block of raw digits through the one preprocess function."""
    from ukr_hw.preprocess import preprocess

    glyphs = [preprocess(img) for img in block]
    return np.stack([g.to_uint8() for g in glyphs]), np.stack([g.features for g in glyphs])


def preprocess_digits(split: MnistSplit, index: np.ndarray, id_prefix: str, workers: int = 2) -> Samples:
    """The digits at ``index`` as :class:`Samples` (case -1, source ``mnist``, id ``<id_prefix>/<index>``)."""
    index = np.asarray(index, dtype=np.int64)
    if len(index) == 0:
        return Samples.empty()
    parts = pool_map(_prep_block, chunks(split.images[index], CHUNK), workers, min_per_worker=1)
    return Samples(
        x=np.concatenate([p[0] for p in parts]),
        y=[labels.index_of(str(int(d))) for d in split.labels[index]],
        case=np.full(len(index), labels.CASE_NONE),
        ink=np.concatenate([p[1] for p in parts]),
        source=[SOURCE] * len(index),
        id=[f"{id_prefix}/{i}" for i in index],
    )


def ids_to_index(ids: list[str], prefix: str) -> np.ndarray:
    """Indices named by ids like ``mnist-train/123`` (ids with another prefix are ignored)."""
    head = prefix + "/"
    return np.array(sorted(int(i[len(head) :]) for i in ids if i.startswith(head)), dtype=np.int64)
