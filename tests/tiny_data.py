"""Tiny, learnable prepared data for the training tests (seconds, not minutes).

Each class gets a fixed random stroke template (a few thick line segments); samples are the template shifted by a
pixel or so plus noise, so a small CNN separates the 43 classes within a few epochs. Uppercase letters get a
larger ink box, as in real data. Written in the prepared layout (``finetune_train.npz`` …) of ``processed_dir``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ukr_hw.data.arrays import Samples, save_samples
from ukr_hw.labels import NUM_CLASSES


def _templates(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.zeros((NUM_CLASSES, 28, 28), np.float32)
    yy, xx = np.mgrid[0:28, 0:28]
    for k in range(NUM_CLASSES):
        for _ in range(3):
            (y0, x0), (y1, x1) = rng.integers(5, 23, size=(2, 2))
            for s in np.linspace(0, 1, 20):
                cy, cx = y0 + s * (y1 - y0), x0 + s * (x1 - x0)
                t[k] = np.maximum(t[k], ((yy - cy) ** 2 + (xx - cx) ** 2 <= 2.0).astype(np.float32))
    return t


def make_samples(
    n_per_class: int, seed: int, classes: range | list[int] | None = None, source: str = "rukopys"
) -> Samples:
    rng = np.random.default_rng(seed)
    tmpl = _templates()
    classes = list(classes if classes is not None else range(NUM_CLASSES))
    xs, ys, cases, inks, ids = [], [], [], [], []
    for k in classes:
        for j in range(n_per_class):
            img = np.roll(tmpl[k], tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
            img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
            case = -1 if k < 10 else int(j % 2)
            size = 0.75 if case == 1 else 0.45
            xs.append((img * 255).astype(np.uint8))
            ys.append(k)
            cases.append(case)
            inks.append(np.array([size, size * 0.8], np.float32) + rng.normal(0, 0.02, 2).astype(np.float32))
            ids.append(f"{source}/{seed}-{k}-{j}")
    return Samples(np.stack(xs), ys, cases, np.stack(inks), [source] * len(ys), ids)


def write_tiny_processed(processed_dir: Path, n_per_class: int = 6, mnist_per_class: int = 30) -> Path:
    processed_dir = Path(processed_dir)
    processed_dir.mkdir(parents=True, exist_ok=True)
    save_samples(make_samples(n_per_class, 1), processed_dir / "finetune_train.npz")
    save_samples(make_samples(max(2, n_per_class // 2), 2), processed_dir / "finetune_test.npz")
    save_samples(make_samples(2, 3, source="font"), processed_dir / "synthetic_train.npz")
    save_samples(make_samples(1, 6, source="strokes"), processed_dir / "strokes_train.npz")
    save_samples(make_samples(mnist_per_class, 4, range(10), "mnist"), processed_dir / "mnist_train.npz")
    save_samples(make_samples(5, 5, range(10), "mnist"), processed_dir / "mnist_test.npz")
    return processed_dir
