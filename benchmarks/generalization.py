"""Generalisation benchmark: how a model does on "other writers", and how often it calls letters digits.

    .venv/bin/python benchmarks/generalization.py [--model-uri models:/ukr-hw@champion | runs:/<id>/model]
        [--model-dir DIR] [--holdout-fonts STEM ...] [--per-symbol 2] [--seed 1000] [--json out.json]

Builds held-out evaluation sets that no training set contains, and prints per set: symbol accuracy, case accuracy
(letters only), the share of letters predicted as a digit (the failure mode of a model trained on one small
dataset plus MNIST), the share of digits predicted as a letter, and the worst classes:

* ``fonts-heldout``   glyphs from fonts that are NOT in training (``--holdout-fonts``; default: the fonts in
  ``UKR_HW_FONT_EXCLUDE`` if set, else installed italic/oblique text faces outside the training font list).
  For a strict leave-fonts-out test, train with ``UKR_HW_FONT_EXCLUDE='["SteveHand","kiloji_d"]'`` and run this
  with the same stems.
* ``strokes-light``   sketchpad drawings (light theme, thin pens) by writer seeds never used in training;
* ``strokes-dark``    sketchpad drawings (dark theme, thick brushes, stronger wobble), unseen seeds;
* ``paper-plain``     drawings by unseen writers on tinted, unevenly lit paper, photographed (blur, JPEG);
* ``paper-squared``   the same on a school notebook's squared paper (grid lines are not ink);
* ``finetune-test``   the frozen Rukopys + MNIST test split, when prepared (for comparison).

Fine-tuning also sees drawings from the same stroke generator (``strokes_train.npz``, writer seed
``settings.seed``), so the two stroke sets measure unseen *writers* of that generator: a proxy for browser
drawings that flatters the model, not a verdict on real people's handwriting.

The model comes from the registry (``--model-uri``, default the champion) or an MLflow model folder
(``--model-dir``), through ``ukr_hw.inference.Predictor``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ukr_hw.data import fonts, split, strokes  # noqa: E402
from ukr_hw.data.arrays import Samples, load_samples  # noqa: E402
from ukr_hw.labels import CASE_NONE, NUM_CLASSES, SYMBOLS  # noqa: E402
from ukr_hw.settings import Settings, get_settings  # noqa: E402

#: Installed text faces outside the training font list, used as held-out "writers" by default.
DEFAULT_HOLDOUT = (
    "DejaVuSansCondensed-Oblique",
    "DejaVuSerifCondensed-Italic",
    "LiberationSansNarrow-Italic",
    "GentiumBookPlus-Italic",
    "NimbusSans-Italic",
    "C059-Italic",
    "P052-Italic",
    "URWGothic-BookOblique",
    "URWBookman-DemiItalic",
    "PTF76F",
    "FreeSerifItalic",
    "FreeSansOblique",
    "OpenSans-Italic",
    "Roboto-RegularItalic",
)
N_DIGITS = 10


def holdout_fonts(settings: Settings, stems: list[str] | None) -> list[Path]:
    stems = stems or list(settings.font_exclude) or list(DEFAULT_HOLDOUT)
    probe = settings.model_copy(update={"font_include": stems, "font_exclude": []})
    return fonts.list_fonts(probe)


SETS = (
    "fonts-heldout",
    "strokes-light",
    "strokes-dark",
    "strokes-cursive",
    "paper-plain",
    "paper-squared",
    "paper-cursive",
    "finetune-test",
)


def build_sets(
    settings: Settings, holdout: list[str] | None, per_symbol: int, seed: int, only: tuple[str, ...] = SETS
) -> dict[str, Samples]:
    """The held-out evaluation sets named in ``only`` (all of :data:`SETS` by default; deterministic for a seed)."""
    sets: dict[str, Samples] = {}
    held = holdout_fonts(settings, holdout) if "fonts-heldout" in only else []
    if held:
        print(f"held-out fonts: {', '.join(p.stem for p in held)}", file=sys.stderr)
        sets["fonts-heldout"] = fonts.render_font_glyphs(settings, fonts=held, per_symbol=per_symbol, seed=seed)
    elif "fonts-heldout" in only:
        print("no held-out fonts installed: fonts-heldout skipped (see deploy/fonts.txt)", file=sys.stderr)
    if "strokes-light" in only:
        sets["strokes-light"] = strokes.render_stroke_glyphs(
            settings, per_symbol=per_symbol, seed=seed + 1, themes=("light",), widths=(0.01, 0.025), sizes=(300, 500)
        )
    if "strokes-dark" in only:
        sets["strokes-dark"] = strokes.render_stroke_glyphs(
            settings,
            per_symbol=per_symbol,
            seed=seed + 2,
            themes=("dark",),
            widths=(0.06, 0.09),
            sizes=(256, 640),
            variation=1.5,
        )
    if "strokes-cursive" in only:  # the cursive forms (strokes.CURSIVE_FORMS) by unseen writers, both themes
        sets["strokes-cursive"] = strokes.render_stroke_glyphs(
            settings, per_symbol=0, cursive=3 * per_symbol, seed=seed + 5, widths=(0.015, 0.06), sizes=(300, 500)
        )
    for k, medium in enumerate(("paper", "squared")):
        name = f"paper-{'plain' if medium == 'paper' else medium}"
        if name in only:
            sets[name] = strokes.render_stroke_glyphs(
                settings,
                per_symbol=per_symbol,
                seed=seed + 3 + k,
                widths=(0.012, 0.035),
                sizes=(480, 800, 1200),
                variation=1.2,
                medium=medium,
                source="paper",
            )
    if "paper-cursive" in only:  # the cursive forms written on paper and photographed: how most people write
        sets["paper-cursive"] = strokes.render_stroke_glyphs(
            settings,
            per_symbol=0,
            cursive=3 * per_symbol,
            seed=seed + 6,
            widths=(0.012, 0.035),
            sizes=(480, 800, 1200),
            variation=1.2,
            medium="paper",
            source="paper",
        )
    test_path = settings.processed_dir / split.TEST_FILE
    if "finetune-test" in only and test_path.exists():
        sets["finetune-test"] = load_samples(test_path)
    return sets


def score(probs: np.ndarray, case_prob: np.ndarray, samples: Samples, case_threshold: float = 0.5) -> dict[str, object]:
    """Symbol and case accuracy, letters↔digits shares, worst classes and top confusions of one set's predictions;
    a letter counts as uppercase at ``case_prob >= case_threshold``."""
    pred = probs.argmax(1)
    y, case = samples.y, samples.case
    letters = y >= N_DIGITS
    has_case = case != CASE_NONE
    out: dict[str, object] = {
        "n": len(y),
        "symbol_accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "case_accuracy": float(((case_prob[has_case] >= case_threshold).astype(int) == case[has_case]).mean())
        if has_case.any()
        else float("nan"),
        "letters_as_digits": float((pred[letters] < N_DIGITS).mean()) if letters.any() else float("nan"),
        "digits_as_letters": float((pred[~letters] >= N_DIGITS).mean()) if (~letters).any() else float("nan"),
    }
    per_class = [(SYMBOLS[c], float((pred[y == c] == c).mean())) for c in range(NUM_CLASSES) if (y == c).any()]
    out["worst"] = sorted(per_class, key=lambda t: t[1])[:5]
    confusions: dict[str, int] = {}
    for t, p in zip(y[pred != y], pred[pred != y], strict=True):
        key = f"{SYMBOLS[t]}→{SYMBOLS[p]}"
        confusions[key] = confusions.get(key, 0) + 1
    out["top_confusions"] = sorted(confusions.items(), key=lambda kv: -kv[1])[:5]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-uri", default=None, help="MLflow model URI (default: the champion)")
    ap.add_argument("--model-dir", default=None, help="a local MLflow model folder instead of a URI")
    ap.add_argument("--holdout-fonts", nargs="*", default=None, help="font file stems held out of training")
    ap.add_argument("--per-symbol", type=int, default=2, help="variants per symbol × case per set")
    ap.add_argument("--seed", type=int, default=1000, help="writer seeds (keep away from the training seed)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from ukr_hw.inference import Predictor  # lazy: heavy (torch, mlflow)

    settings = get_settings()
    predictor = Predictor.from_dir(args.model_dir) if args.model_dir else Predictor.from_uri(args.model_uri, settings)
    t0 = time.perf_counter()
    sets = build_sets(settings, args.holdout_fonts, args.per_symbol, args.seed)
    print(f"built {sum(len(s) for s in sets.values())} samples in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    results = {}
    print(f"model version {predictor.model_version}")
    print(
        f"{'set':16} {'n':>6} {'symbol':>8} {'case':>8} {'let→dig':>8} {'dig→let':>8}  worst classes / top confusions"
    )
    for name, samples in sets.items():
        if not len(samples):
            continue
        probs, case_prob = predictor.predict_arrays(samples.x, samples.ink)
        r = score(probs, case_prob, samples)
        results[name] = r
        worst = " ".join(f"{s}:{a:.2f}" for s, a in r["worst"])  # type: ignore[union-attr]
        conf = " ".join(f"{k}×{v}" for k, v in r["top_confusions"])  # type: ignore[union-attr]
        print(
            f"{name:16} {r['n']:>6} {r['symbol_accuracy']:>8.3f} {r['case_accuracy']:>8.3f} "
            f"{r['letters_as_digits']:>8.3f} {r['digits_as_letters']:>8.3f}  {worst} | {conf}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"model_version": predictor.model_version, "sets": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
