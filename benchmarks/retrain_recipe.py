"""Retraining from the champion: does the new model learn users' own forms, and does it pass the promotion gate?

    nice .venv/bin/python benchmarks/retrain_recipe.py [--form 4-open --samples 40 --probes 40] [--seeds 42 1 2]

1. Users teach a form that the generator's writers never draw (``strokes.UNSEEN_FORMS``; by default a «4» with
   an open top, which the champion reads as «ч» two times in three): ``--samples`` sketchpad drawings by unseen
   writers, confirmed as feedback.
2. The retrain flow's fine-tune (``ukr_hw.retraining.finetune_from_champion``), in a copy of the prepared data with
   the feedback among the training glyphs, once per seed and recipe:
   - *retrain section*: the champion's weights with the config's ``retrain`` keys over ``finetune``. This is what
     ``ukr-hw retrain`` runs.
   - *training recipe*: the champion's weights with ``finetune`` as the first training had it (``retrain: {}``).
3. Every model is scored on ``--probes`` drawings of the form by other writers, on the frozen split (the promotion
   gate: a paired test per population, ``registry.decide_promotion``) and on the held-out sets of
   ``benchmarks/recipe.py``.

Prints one row per model and, per recipe, the mean and how many models the gate would promote.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ukr_hw import registry
from ukr_hw.data.arrays import Samples
from ukr_hw.data.strokes import UNSEEN_FORMS, render_stroke_glyphs
from ukr_hw.model.evaluate import Outcomes, predict_samples
from ukr_hw.model.heldout import cached_sets, data_with_feedback, score
from ukr_hw.retraining import FEEDBACK_SOURCE, finetune_from_champion
from ukr_hw.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]

RECIPES = {"retrain section": {}, "training recipe": {"retrain": "{}"}}


def form_drawings(settings: Settings, form: str, n: int, seed: int, source: str) -> Samples:
    """``n`` sketchpad drawings of ``form`` by writers of ``seed`` (light and dark themes, thin to thick brushes),
    ids ``<source>/<form>/<k>``."""
    return render_stroke_glyphs(settings, per_symbol=n, seed=seed, form=form, widths=(0.015, 0.07), source=source)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--form", default="4-open", choices=sorted(UNSEEN_FORMS))
    ap.add_argument("--samples", type=int, default=40, help="drawings of the form confirmed as feedback")
    ap.add_argument("--probes", type=int, default=40, help="drawings of the form by other writers, scored")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="retrain seeds")
    ap.add_argument("--sets-cache", type=Path, default=REPO / "data/cache/recipe-sets")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="another recipe to compare (config overrides, e.g. 'gentler:retrain.lr=0.0005'); repeatable",
    )
    ap.add_argument("--only-variants", action="store_true", help="skip the two default recipes")
    args = ap.parse_args(argv)
    recipes = {} if args.only_variants else dict(RECIPES)
    for v in args.variant:
        name, _, sets_ = v.partition(":")
        recipes[name] = dict(kv.split("=", 1) for kv in sets_.split(",") if kv)

    settings = get_settings()
    champion = registry.load_champion_net(settings)
    feedback = form_drawings(settings, args.form, args.samples, 3000, FEEDBACK_SOURCE)
    probes = form_drawings(settings, args.form, args.probes, 5000, "probe")
    sets = {"new form": probes, **cached_sets(settings, args.sets_cache)}
    names = list(sets)

    def scores(net) -> dict[str, dict]:
        out = {}
        for n, s in sets.items():
            probs, case_prob = predict_samples(net, s)
            right = Outcomes.of(s, probs.argmax(1), (case_prob >= 0.5).astype(np.int8))
            out[n] = {**score(probs, case_prob, s), "right": probs.argmax(1) == s.y, "outcomes": right}
        return out

    def line(r: dict[str, dict]) -> str:
        return "  ".join(f"{n} {r[n]['symbol_accuracy']:.3f}/{r[n]['case_accuracy']:.3f}" for n in names)

    base = scores(champion)
    print(f"champion v{registry.champion_version(settings)}: {line(base)}\n", flush=True)

    rows: dict[str, list[dict]] = {r: [] for r in recipes}
    with tempfile.TemporaryDirectory(prefix="retrain-recipe-") as tmp:
        for seed in args.seeds:
            for name, overrides in recipes.items():
                t = time.perf_counter()
                data = data_with_feedback(settings, feedback, Path(tmp) / f"{name}-{seed}".replace(" ", "-"))
                trained = finetune_from_champion(
                    overrides={**overrides, "seed": str(seed), "trainer.progress": "false"}, settings=data
                )
                r = scores(trained["net"])
                gate = registry.decide_promotion(
                    r["finetune-test"]["outcomes"], base["finetune-test"]["outcomes"], settings.promotion_alpha
                )
                promote, why = gate.promote, gate.reason
                was, now = base["finetune-test"]["right"], r["finetune-test"]["right"]
                flips = {"fixed": int((~was & now).sum()), "broken": int((was & ~now).sum())}
                rows[name].append({**r, "promote": promote, **flips})
                print(f"{name}, seed {seed} ({time.perf_counter() - t:.0f} s): {line(r)}", flush=True)
                print(
                    f"    frozen split against the champion: {flips['fixed']} fixed, {flips['broken']} broken; "
                    f"gate: {'promote' if promote else 'reject'}: {why}",
                    flush=True,
                )

    print(f"\n{args.samples} drawings of the form «{args.form}» as feedback, mean over seeds {args.seeds}:")
    for name, rs in rows.items():
        mean = {
            n: {k: float(np.mean([r[n][k] for r in rs])) for k in ("symbol_accuracy", "case_accuracy")} for n in names
        }
        fixed, broken = sum(r["fixed"] for r in rs), sum(r["broken"] for r in rs)
        print(
            f"  {name:16} promoted {sum(r['promote'] for r in rs)} of {len(rs)}, frozen glyphs fixed {fixed}, "
            f"broken {broken}:  {line(mean)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
