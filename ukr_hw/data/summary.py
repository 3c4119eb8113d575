"""What the prepared data holds: ``manifest.json`` (counts per split, source, class) and ``preview.png``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ukr_hw import labels
from ukr_hw.data.arrays import Samples

MANIFEST_FILE = "manifest.json"
PREVIEW_FILE = "preview.png"


def counts(samples: Samples) -> dict[str, Any]:
    """Counts of one split: total, per source, per class (symbol as written, e.g. ``Ї``, ``ї``, ``7``)."""
    per_class = Counter(
        labels.display(labels.symbol_of(int(y)), bool(c == labels.CASE_UPPER))
        for y, c in zip(samples.y, samples.case, strict=True)
    )
    return {
        "n": len(samples),
        "per_source": dict(sorted(Counter(samples.source.tolist()).items())),
        "per_case": {
            name: int((samples.case == v).sum())
            for name, v in (
                ("upper", labels.CASE_UPPER),
                ("lower", labels.CASE_LOWER),
                ("none", labels.CASE_NONE),
                ("unknown", labels.CASE_UNKNOWN),
            )
        },
        "per_class": dict(sorted(per_class.items())),
        "digest": samples.digest(),
    }


def write_manifest(splits: dict[str, Samples], path: Path, **extra: Any) -> dict[str, Any]:
    manifest = {**extra, "splits": {name: counts(s) for name, s in splits.items()}}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return manifest


def preview(samples: Samples, path: Path, per_class: int = 4, seed: int = 0) -> Path:
    """A grid: for every symbol up to ``per_class`` samples (upper- and lowercase mixed), titled with the label."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, safe in workers and notebooks

    rng = np.random.default_rng(seed)
    cols = 6
    rows = -(-labels.NUM_CLASSES // cols)
    fig = Figure(figsize=(cols * 2.2, rows * 0.9))
    axes = fig.subplots(rows, cols)
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k >= labels.NUM_CLASSES:
            continue
        idx = np.flatnonzero(samples.y == k)
        if len(idx) == 0:
            ax.set_title(f"{labels.symbol_of(k)}: none", fontsize=8)
            continue
        upper, lower = idx[samples.case[idx] == labels.CASE_UPPER], idx[samples.case[idx] != labels.CASE_UPPER]
        pick = list(rng.permutation(upper)[: per_class // 2]) if len(upper) else []
        pick += list(rng.permutation(lower)[: per_class - len(pick)])
        strip = np.concatenate([samples.x[i] for i in pick], axis=1)
        ax.imshow(strip, cmap="gray_r", vmin=0, vmax=255)
        names = " ".join(labels.display(labels.symbol_of(k), samples.case[i] == labels.CASE_UPPER) for i in pick)
        ax.set_title(f"{names}  (n={len(idx)})", fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)
    return Path(path)
