"""Does re-fitting the case threshold on users' drawings pay? A simulated round of feedback and retraining.

    nice .venv/bin/python benchmarks/case_refit.py [--feedback-seed 3000 --feedback-per-symbol 2]
        [--eval-seed 4000 --eval-per-symbol 2] [--set finetune.case_threshold_fit.min_letters=60 ...]

1. "Users" draw in the browser: sketchpad drawings (light and dark themes; ``--feedback-sets`` picks, e.g. only
   ``strokes-dark`` for a population of thick-brush users) by writer seeds that no training set has
   (``benchmarks/generalization.py`` sets at ``--feedback-seed``), confirmed as feedback (source ``feedback``).
2. The retrain flow's fine-tune (``ukr_hw.retraining.finetune_with_feedback``) in a copy of the prepared data with
   the feedback among the real training glyphs, as ``ukr-hw retrain`` puts it: each member holds some of it out
   for validation, and ``finetune.case_threshold_fit`` re-fits the threshold on those held-out letters.
3. The retrained network is scored on *other* unseen writers (``--eval-seed``) and on the frozen split at the
   configured threshold and at the re-fitted one: the same weights, only the operating point differs. The
   champion before the feedback is printed for comparison, with a sweep of thresholds for context.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ukr_hw import registry
from ukr_hw.data.arrays import Samples
from ukr_hw.model.case_threshold import raw_case
from ukr_hw.model.evaluate import predict_samples
from ukr_hw.model.heldout import build_sets, data_with_feedback, score
from ukr_hw.model.network import Network, member_nets
from ukr_hw.retraining import FEEDBACK_SOURCE, finetune_with_feedback
from ukr_hw.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]

DRAWN = ("strokes-light", "strokes-dark")


def feedback_samples(settings: Settings, seed: int, per_symbol: int, kinds: tuple[str, ...] = DRAWN) -> Samples:
    """Browser drawings by unseen writers (``kinds`` of ``generalization.SETS``), as confirmed feedback."""
    sets = build_sets(settings, None, per_symbol=per_symbol, seed=seed, only=kinds)
    drawn = Samples.concat([sets[n] for n in kinds])
    ids = [f"{FEEDBACK_SOURCE}/sim-{seed}-{i}" for i in range(len(drawn))]
    return replace(drawn, source=np.asarray([FEEDBACK_SOURCE] * len(drawn)), id=np.asarray(ids))


def raw_predictions(net: Network, sets: dict[str, Samples]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each set's class probabilities and raw P(upper) (the network's own threshold undone)."""
    with raw_case(net):
        return {n: predict_samples(net, s) for n, s in sets.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feedback-seed", type=int, default=3000)
    ap.add_argument("--feedback-per-symbol", type=int, default=2)
    ap.add_argument("--feedback-sets", nargs="+", default=list(DRAWN), help="which kinds of drawings users send")
    ap.add_argument("--eval-seed", type=int, default=4000)
    ap.add_argument("--eval-per-symbol", type=int, default=2)
    ap.add_argument("--threshold", type=float, nargs="+", default=[0.45, 0.5, 0.55, 0.6, 0.65, 0.7])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="retrain config override")
    args = ap.parse_args(argv)

    settings = get_settings()
    champion = registry.load_champion_net(settings)
    configured = member_nets(champion)[0].config.case_threshold
    t = time.perf_counter()
    feedback = feedback_samples(settings, args.feedback_seed, args.feedback_per_symbol, tuple(args.feedback_sets))
    sets = build_sets(settings, None, per_symbol=args.eval_per_symbol, seed=args.eval_seed)  # + the frozen split
    letters = int((feedback.case >= 0).sum())
    print(f"feedback: {len(feedback)} drawings ({letters} letters); sets built in {time.perf_counter() - t:.0f} s")

    tmp = Path(tempfile.mkdtemp(prefix="case-refit-"))
    try:
        t = time.perf_counter()
        overrides = {"trainer.progress": "false"} | dict(s.split("=", 1) for s in args.set)
        trained = finetune_with_feedback(overrides=overrides, settings=data_with_feedback(settings, feedback, tmp))
        m = trained["report"].metrics
        print(
            f"retrained in {time.perf_counter() - t:.0f} s: threshold {configured} → {m['case_threshold']:.2f} "
            f"(fitted on {m['case_threshold_fit_letters']:.0f} held-out letters: case accuracy "
            f"{m['case_threshold_fit_accuracy_configured']:.3f} → {m['case_threshold_fit_accuracy']:.3f}; "
            f"the guard's {m['case_threshold_guard_letters']:.0f} held-out Rukopys letters "
            f"{m['case_threshold_guard_accuracy_configured']:.3f} → {m['case_threshold_guard_accuracy']:.3f})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fitted = float(m["case_threshold"])

    head = "  ".join(f"{n:>14}" for n in sets)
    for title, net in (("champion, before the feedback", champion), ("retrained with the feedback", trained["net"])):
        predictions = raw_predictions(net, sets)
        print(f"\n{title}: symbol accuracy\n{'':10}" + head)
        cells = [f"{score(*predictions[n], s)['symbol_accuracy']:.3f}" for n, s in sets.items()]
        print(f"{'':10}" + "  ".join(f"{c:>14}" for c in cells))
        print("case accuracy (letters) by threshold")
        marks = {configured: " configured", fitted: " re-fitted"} if net is trained["net"] else {configured: " ours"}
        for thr in sorted({*args.threshold, configured, fitted}):
            cells = [f"{score(*predictions[n], s, case_threshold=thr)['case_accuracy']:.3f}" for n, s in sets.items()]
            print(f"{thr:9.2f} " + "  ".join(f"{c:>14}" for c in cells) + marks.get(thr, ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
