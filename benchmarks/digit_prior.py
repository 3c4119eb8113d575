"""How the letter/digit decision trades: add a bias to the digits' log-probabilities and re-score every set.

    .venv/bin/python benchmarks/digit_prior.py [--model-uri models:/ukr-hw@champion] [--bias -0.5 0 0.5 1 2]

The look-alike pairs о/0, з/3 (and ч/4 in MNIST's open-top style) have no shape difference, so which side wins is a
prior. This prints, for each bias, symbol accuracy and the shares of letters read as digits / digits read as
letters on the frozen split and on the held-out sets of ``benchmarks/generalization.py`` (built once, cached
under ``data/cache/recipe-sets`` like ``benchmarks/recipe.py``). A bias that only helps the frozen split's MNIST
digits while raising letters→digits elsewhere is fitting the split, not generalising.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from recipe import _sets  # noqa: E402

from ukr_hw.inference import Predictor  # noqa: E402
from ukr_hw.labels import DIGITS, NUM_CLASSES, index_of  # noqa: E402
from ukr_hw.settings import get_settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default=None, help="default: the configured champion")
    ap.add_argument("--bias", type=float, nargs="+", default=[-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0])
    ap.add_argument("--sets-cache", type=Path, default=REPO / "data/cache/recipe-sets")
    args = ap.parse_args(argv)

    sets = _sets(get_settings(), args.sets_cache)
    predictor = Predictor.from_uri(args.model_uri)
    is_digit = np.zeros(NUM_CLASSES, bool)
    is_digit[[index_of(d) for d in DIGITS]] = True
    logp = {}
    for name, s in sets.items():
        probs, _ = predictor.predict_arrays(s.x.astype(np.float32) / 255.0, s.ink)
        logp[name] = np.log(probs + 1e-9)

    print(f"model version {predictor.model_version}; per set: symbol accuracy  letters→digits / digits→letters")
    print("bias   " + "  ".join(f"{n:>22}" for n in sets))
    for bias in args.bias:
        cells = []
        for name, s in sets.items():
            pred = (logp[name] + bias * is_digit).argmax(1)
            letter = ~is_digit[s.y]
            l2d = (is_digit[pred] & letter).sum() / max(letter.sum(), 1)
            d2l = (~is_digit[pred] & ~letter).sum() / max((~letter).sum(), 1)
            cells.append(f"{(pred == s.y).mean():.3f} {l2d:5.1%}/{d2l:5.1%}")
        print(f"{bias:5.2f}  " + "  ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
