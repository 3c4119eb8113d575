"""Audit the training glyphs: which ones does every network misread when they are held out of its training?

    nice .venv/bin/python benchmarks/label_audit.py [--fits 12] [--body 42] [--first-seed 100]

Fine-tunes ``--fits`` single networks from one cached pretrained body, each with its own seed and so its own
validation slice (``finetune.val_fraction`` of every symbol and case of the prepared training split: Rukopys
letters and MNIST digits). Each network reads the glyphs it did not train on. A glyph that is misread every
time it is held out (at least twice) is printed with what it was read as, and drawn, from its prepared 28×28
pixels, into ``data/reports/label_audit.png``; the list goes to ``data/reports/label_audit.json``.

Such a glyph is a wrong label, a damaged scan, or a form that no other writer in the data shares. A first run found
an «О» scanned with the border of the form's next cell beside it (two more scans had one; preprocessing drops such
lines since). On the current data, 39 of 974 glyphs are misread every time: 18 MNIST digits (mostly open-top «4» read
as «ч», «3» as «з», «0» as «о») and 21 Rukopys letters, among them an «ї» with one dot, two capitals «І» written like
«Ɔ», and cursive forms that no other glyph of the class shares (a «ґ» like «5», a «ж» read as «н», a «ь» like «6»).
Nothing is changed: the list is for whoever curates the data (``ukr-hw prepare`` reports bad rows it can detect
without a model in ``bad_rows.csv``).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np

from ukr_hw import training
from ukr_hw.labels import SYMBOLS, display, is_digit
from ukr_hw.model.evaluate import predict_samples
from ukr_hw.settings import get_settings

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs/train.yaml")
    ap.add_argument("--fits", type=int, default=12, help="networks to fine-tune, each holding out its own slice")
    ap.add_argument("--body", type=int, default=42, help="seed of the pretrained body (cached)")
    ap.add_argument("--first-seed", type=int, default=100, help="fine-tune seeds are this, +1, +2, …")
    args = ap.parse_args(argv)

    settings = get_settings()
    body, pre = training.pretrain(training.load_config(args.config, {"seed": str(args.body)}), settings)
    print(f"body seed {args.body}: MNIST test accuracy {pre['mnist_test_accuracy']:.4f}", flush=True)
    held: collections.Counter[str] = collections.Counter()
    reads: dict[str, list[str]] = collections.defaultdict(list)
    glyphs: dict[str, tuple[np.ndarray, str]] = {}
    for k in range(args.fits):
        seed = args.first_seed + k
        overrides = {"seed": str(seed), "finetune.members": "1", "trainer.progress": "false"}
        t = time.perf_counter()
        config = training.load_config(args.config, overrides)
        net, _ = training.finetune(config, settings, init=body)
        val = training.finetune_datamodule(config, settings).val_samples  # the slice this network held out
        probs, case_prob = predict_samples(net, val)
        for i, p in enumerate(probs.argmax(1)):
            gid = str(val.id[i])
            held[gid] += 1
            glyphs[gid] = (val.x[i], _name(int(val.y[i]), int(val.case[i])))
            if p != val.y[i]:
                reads[gid].append(_name(int(p), -1 if is_digit(int(p)) else int(case_prob[i] >= 0.5)))
        wrong = sum(len(reads[g]) for g in held)
        print(
            f"fit {k + 1}/{args.fits} (seed {seed}, {time.perf_counter() - t:.0f} s): {len(val)} held out, "
            f"{len(held)} glyphs seen so far, {wrong} misreads",
            flush=True,
        )

    suspects = sorted((g for g in held if held[g] >= 2 and len(reads[g]) == held[g]), key=lambda g: (-held[g], g))
    print(f"\n{len(held)} training glyphs held out at least once; misread every time (held out ≥ 2×): {len(suspects)}")
    for g in suspects:
        print(f"  {g:32} {glyphs[g][1]:>2} read as {', '.join(reads[g])}")
    out = settings.path(settings.reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = [{"id": g, "label": glyphs[g][1], "held_out": held[g], "read_as": reads[g]} for g in suspects]
    (out / "label_audit.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    _grid([glyphs[g] for g in suspects], [reads[g][0] for g in suspects], out / "label_audit.png")
    print(f"written: {out / 'label_audit.json'}, {out / 'label_audit.png'}")
    return 0


def _name(symbol: int, case: int) -> str:
    return display(SYMBOLS[symbol], bool(case == 1) if case >= 0 else None)


def _grid(items: list[tuple[np.ndarray, str]], read: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cols = 8
    rows = max(1, -(-len(items) // cols))
    fig = Figure(figsize=(cols * 1.3, rows * 1.5 + 0.4))
    fig.suptitle("training glyphs misread whenever held out (label → read as)", fontsize=10)
    for k, ((x, label), r) in enumerate(zip(items, read, strict=True)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(x, cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"{label} → {r}", fontsize=8, color="crimson")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
