"""Case from crops: do tight crops with case labels unteach case from drawings and scans?

A sample whose ink fills its frame (an uploaded crop) shows a letter's shape but not its size, and size is the case
head's strongest cue. This benchmark fine-tunes the project's recipe (one member per arm, from the cached MNIST body)
on the prepared training data plus *crops*: each Rukopys training scan cut tight to its ink and put through the one
``preprocess`` path again, with its true symbol and case. Three arms, the same seeds:

* ``base``: no crops;
* ``labelled``: the crops keep their case labels (today's behaviour for feedback);
* ``masked``: :func:`ukr_hw.preprocess.has_size_cue` decides, so the crops train the symbol head only.

Each arm is scored on the Rukopys frozen split (other writers' scans: symbol, case) and on tight crops of those
frozen scans (what a crop shows: symbol, case). Run::

    UKR_HW_TORCH_THREADS=1 .venv/bin/python benchmarks/case_crops.py --seeds 42 7
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ukr_hw import labels, preprocess
from ukr_hw.data import split
from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.model.evaluate import evaluate
from ukr_hw.settings import get_settings


def tight_crops(samples: Samples, source: str = "feedback") -> Samples:
    """Each glyph cut to a square around its ink (no margin), preprocessed again: what an uploaded crop becomes."""
    xs, inks = [], []
    for x in samples.x:
        ys, cols = np.nonzero(x > 12)
        crop = x[ys.min() : ys.max() + 1, cols.min() : cols.max() + 1]
        h, w = crop.shape  # a square cut around the letter, as a 28×28 crop from a page is: its longer side fills it
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        crop = np.pad(crop, ((top, side - h - top), (left, side - w - left)))
        glyph = preprocess.preprocess(crop)  # white ink on black, like an MNIST digit
        xs.append(glyph.to_uint8())
        inks.append(glyph.features)
    return Samples(np.stack(xs), samples.y, samples.case, np.stack(inks), [source] * len(samples), samples.id)


def masked(samples: Samples) -> Samples:
    """The crops' case as the prepare step records it: unknown where the ink shows no size."""
    case = samples.case.copy()
    no_cue = np.array([not preprocess.has_size_cue(ink) for ink in samples.ink])
    case[no_cue & (case >= 0)] = labels.CASE_UNKNOWN
    return Samples(samples.x, samples.y, case, samples.ink, samples.source, samples.id)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    p.add_argument("--arms", nargs="+", default=["base", "labelled", "masked"])
    p.add_argument("--config", type=Path, default=Path("configs/train.yaml"))
    p.add_argument("--epochs", type=int, default=None, help="override finetune.epochs (default: the recipe's)")
    args = p.parse_args(argv)

    from ukr_hw.training import finetune, load_config, pretrain

    settings = get_settings()
    train = load_samples(settings.processed_dir / split.TRAIN_FILE)
    test = load_samples(settings.processed_dir / split.TEST_FILE)
    scans = train.subset(np.flatnonzero((train.source == "rukopys") & (train.case >= 0)))
    frozen = test.subset(np.flatnonzero((test.source == "rukopys") & (test.case >= 0)))
    crops = tight_crops(scans)
    frozen_crops = tight_crops(frozen, source="rukopys")
    no_cue = np.mean([not preprocess.has_size_cue(i) for i in crops.ink])
    print(f"crops: {len(crops)} from Rukopys training scans; {no_cue:.1%} have no size cue; ", end="")
    print(f"scans with none: {np.mean([not preprocess.has_size_cue(i) for i in scans.ink]):.1%}")
    extras = {"base": None, "labelled": crops, "masked": masked(crops)}
    rows = []
    for seed in args.seeds:
        overrides = {"seed": seed, "finetune.members": 1}
        if args.epochs:
            overrides["finetune.epochs"] = args.epochs
        config = load_config(args.config, overrides)
        body, _ = pretrain(config, settings)
        for arm in args.arms:
            t0 = time.perf_counter()
            net, _ = finetune(config, settings, init=body, extra=extras[arm], test=frozen)
            scan_m = evaluate(net, frozen).metrics
            crop_m = evaluate(net, frozen_crops).metrics
            row = {
                "seed": seed,
                "arm": arm,
                "scans_symbol": round(scan_m["symbol_accuracy"], 4),
                "scans_case": round(scan_m["case_accuracy"], 4),
                "crops_symbol": round(crop_m["symbol_accuracy"], 4),
                "crops_case": round(crop_m["case_accuracy"], 4),
                "seconds": round(time.perf_counter() - t0),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmeans over seeds {args.seeds} (Rukopys frozen split, {len(frozen)} letters, other writers):")
    for arm in args.arms:
        r = [x for x in rows if x["arm"] == arm]
        cols = ("scans_symbol", "scans_case", "crops_symbol", "crops_case")
        print(f"  {arm:9s}", "  ".join(f"{c} {np.mean([x[c] for x in r]):.3f}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
