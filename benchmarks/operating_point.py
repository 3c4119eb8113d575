"""The model's two operating points, swept on the frozen split and on other writers' held-out sets.

    .venv/bin/python benchmarks/operating_point.py [--model-uri models:/ukr-hw@champion]
        [--bias -0.5 0 0.5 1 2] [--threshold 0.4 0.5 0.55 0.6 0.7] [--seed 2000 --per-symbol 3]

* **Case threshold**: the P(upper) of the trained case head above which a letter is called uppercase
  (``finetune.case_threshold``, stored with the model). Printed: case accuracy (letters) per set. The model's own
  threshold is undone first, so the sweep reads the P(upper) before it.
* **Digit prior**: a bias added to the digits' log-probabilities. The look-alike pairs о/0, з/3 (and ч/4 in MNIST's
  open-top style) have no shape difference, so which side wins is a prior. Printed: symbol accuracy and the shares
  of letters read as digits / digits read as letters. A bias that only helps the frozen split's MNIST digits while
  raising letters→digits elsewhere is fitting the split, not generalising.

The held-out sets are those of ``benchmarks/generalization.py``; by default writer seed 1000, 2 per symbol, built
once and cached under ``data/cache/recipe-sets`` like ``benchmarks/recipe.py``; ``--seed`` builds fresh ones with
other writers (not cached), to check a choice made on the default sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ukr_hw.inference import Predictor
from ukr_hw.labels import NUM_CLASSES
from ukr_hw.model.case_threshold import raw_case
from ukr_hw.model.heldout import N_DIGITS, build_sets, cached_sets, score
from ukr_hw.model.network import member_nets
from ukr_hw.settings import get_settings

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default=None, help="default: the configured champion")
    ap.add_argument("--bias", type=float, nargs="+", default=[-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0])
    ap.add_argument("--threshold", type=float, nargs="+", default=[0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7])
    ap.add_argument("--seed", type=int, default=None, help="build held-out sets with these writer seeds instead")
    ap.add_argument("--per-symbol", type=int, default=3, help="samples per symbol and case with --seed")
    ap.add_argument("--sets-cache", type=Path, default=REPO / "data/cache/recipe-sets")
    args = ap.parse_args(argv)

    settings = get_settings()
    if args.seed is None:
        sets = cached_sets(settings, args.sets_cache)
    else:
        sets = build_sets(settings, None, per_symbol=args.per_symbol, seed=args.seed)  # + the frozen split
    predictor = Predictor.from_uri(args.model_uri)
    own = member_nets(predictor.net)[0].config.case_threshold
    with raw_case(predictor.net):  # read the P(upper) before the model's own threshold
        predictions = {n: predictor.predict_arrays(s.x.astype(np.float32) / 255.0, s.ink) for n, s in sets.items()}
    print(f"model version {predictor.model_version} (its case threshold: {own})")
    head = "  ".join(f"{n:>22}" for n in sets)

    print("\ncase accuracy (letters) by case threshold\nthreshold " + head)
    for t in args.threshold:
        cells = [f"{score(*predictions[n], s, case_threshold=t)['case_accuracy']:.3f}" for n, s in sets.items()]
        print(f"{t:9.2f} " + "  ".join(f"{c:>22}" for c in cells))

    is_digit = np.arange(NUM_CLASSES) < N_DIGITS
    print("\nsymbol accuracy  letters→digits / digits→letters, by digit log-prior bias\n     bias " + head)
    for bias in args.bias:
        cells = []
        for name, s in sets.items():
            probs, upper = predictions[name]
            r = score(probs * np.where(is_digit, np.exp(bias), 1.0), upper, s)
            cells.append(f"{r['symbol_accuracy']:.3f} {r['letters_as_digits']:5.1%}/{r['digits_as_letters']:5.1%}")
        print(f"{bias:9.2f} " + "  ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
