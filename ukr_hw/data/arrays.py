"""The on-disk format of prepared data: one ``.npz`` per split, loaded into :class:`Samples`.

Every prepared split (``finetune_train``, ``finetune_test``, ``synthetic_train``, ``mnist_train``,
``mnist_test``, feedback sets …) has the same columns, so training, evaluation and retraining share one loader:

======== ================ ==============================================================
column   dtype / shape    meaning
======== ================ ==============================================================
x        uint8 (N,28,28)  preprocessed pixels, ink = 255 on 0 (see ``ukr_hw.preprocess``)
y        int64 (N,)       symbol index in ``ukr_hw.labels.SYMBOLS``
case     int8 (N,)        1 upper, 0 lower, -1 no case (digits)
ink      float32 (N,2)    ink box height and width relative to the canvas
source   str (N,)         where the sample came from: rukopys, mnist, font, feedback
id       str (N,)         stable sample id (e.g. ``rukopys/a-0.png``, ``mnist-train/123``)
======== ================ ==============================================================
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np


@dataclass
class Samples:
    x: np.ndarray
    y: np.ndarray
    case: np.ndarray
    ink: np.ndarray
    source: np.ndarray
    id: np.ndarray

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.uint8).reshape(-1, 28, 28)
        self.y = np.asarray(self.y, dtype=np.int64).reshape(-1)
        self.case = np.asarray(self.case, dtype=np.int8).reshape(-1)
        self.ink = np.asarray(self.ink, dtype=np.float32).reshape(-1, 2)
        self.source = np.asarray(self.source, dtype=str).reshape(-1)
        self.id = np.asarray(self.id, dtype=str).reshape(-1)
        n = len(self.x)
        for f in fields(self):
            if len(getattr(self, f.name)) != n:
                raise ValueError(f"column {f.name!r} has {len(getattr(self, f.name))} rows, x has {n}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray | slice) -> Samples:
        return Samples(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def empty(cls) -> Samples:
        return cls(np.zeros((0, 28, 28)), [], [], np.zeros((0, 2)), [], [])

    @classmethod
    def concat(cls, parts: list[Samples]) -> Samples:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def digest(self) -> str:
        """Content hash (order-sensitive): equal digests mean byte-identical data."""
        h = hashlib.sha256()
        for f in fields(self):
            a = getattr(self, f.name)
            h.update(f.name.encode())
            h.update(a.astype("U").tobytes() if a.dtype.kind == "U" else np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def save_samples(samples: Samples, path: Path) -> Path:
    """Write atomically (temp file + rename), uncompressed-deterministic so equal data gives equal bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{f.name: getattr(samples, f.name) for f in fields(samples)})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are for every user of the checkout
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_samples(path: Path) -> Samples:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `ukr-hw prepare` first to build the prepared data.")
    with np.load(path, allow_pickle=False) as z:
        return Samples(**{f.name: z[f.name] for f in fields(Samples)})
