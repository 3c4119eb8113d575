"""Retraining on users' drawings: does the new model learn users' own forms, and does it pass the promotion gate?

    nice .venv/bin/python benchmarks/retrain_recipe.py [--form 4-open --samples 40 --probes 40] [--seeds 42 1 2]
    nice .venv/bin/python benchmarks/retrain_recipe.py --population comnist [--samples 1000 --writers-seed 23]

1. The users (``--population``):
   - *form* (the default): users teach a form that the generator's writers never draw (``strokes.UNSEEN_FORMS``;
     by default a «4» with an open top, which the champion reads as «ч» two times in three): ``--samples``
     sketchpad drawings by unseen writers, confirmed as feedback.
   - *comnist*: real other writers, as ``benchmarks/loop.py --population comnist`` chooses them (the same
     sessions for the same ``--samples``, ``--probe-sessions``, ``--per-writer`` and ``--writers-seed``): the
     submitting sessions' drawings, case not said, are the feedback (less the share a retrain holds out as users'
     drawings, by the same hash of the id), and the probe sessions are scored. The loop without the servers: a
     quick way to compare retrain recipes on real writers. Needs a champion that never saw CoMNIST (prepare and
     train with ``UKR_HW_COMNIST=false``) and ``UKR_HW_DATA_MIRROR``.
2. The retrain flow's fine-tune (``ukr_hw.retraining.finetune_with_feedback``: from the pretrained body, the config's
   ``retrain`` keys over ``finetune``), in a copy of the prepared data with the feedback among the training glyphs,
   once per seed and recipe: *retrain* is what ``ukr-hw retrain`` runs; ``--variant`` adds others.
3. Every model is scored on ``--probes`` drawings of the form by other writers, on the frozen split (the promotion
   gate: a paired test per population, ``registry.decide_promotion``) and on the held-out sets of
   ``benchmarks/recipe.py``.

Prints one row per model and, per recipe, the mean and how many models the gate would promote.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from ukr_hw import registry
from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.data.split import TEST_FILE
from ukr_hw.data.strokes import UNSEEN_FORMS, render_stroke_glyphs
from ukr_hw.model.evaluate import Outcomes, predict_samples
from ukr_hw.model.heldout import cached_sets, data_with_feedback, real_sets, score
from ukr_hw.retraining import FEEDBACK_SOURCE, finetune_with_feedback, role_of
from ukr_hw.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]

RECIPES = {"retrain": {}}


def form_drawings(settings: Settings, form: str, n: int, seed: int, source: str) -> Samples:
    """``n`` sketchpad drawings of ``form`` by writers of ``seed`` (light and dark themes, thin to thick brushes),
    ids ``<source>/<form>/<k>``."""
    return render_stroke_glyphs(settings, per_symbol=n, seed=seed, form=form, widths=(0.015, 0.07), source=source)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--population", choices=["form", "comnist"], default="form", help="who the users are")
    ap.add_argument("--form", default="4-open", choices=sorted(UNSEEN_FORMS))
    ap.add_argument(
        "--samples", type=int, default=None, help="drawings confirmed as feedback (default 40 form, 1000 comnist)"
    )
    ap.add_argument("--probes", type=int, default=40, help="drawings of the form by other writers, scored")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="retrain seeds")
    ap.add_argument("--probe-sessions", type=int, default=20, help="comnist: sessions held out as probes")
    ap.add_argument("--per-writer", type=int, default=40, help="comnist: most drawings one session gives")
    ap.add_argument("--writers-seed", type=int, default=23, help="comnist: chooses the sessions (loop.py's --seed)")
    ap.add_argument("--sets-cache", type=Path, default=REPO / "data/cache/recipe-sets")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="another recipe to compare (config overrides, e.g. 'feedback 6:retrain.source_weights.feedback=6'); "
        "repeatable",
    )
    ap.add_argument("--only-variants", action="store_true", help="skip the default recipe")
    args = ap.parse_args(argv)
    recipes = {} if args.only_variants else dict(RECIPES)
    for v in args.variant:
        name, _, sets_ = v.partition(":")
        recipes[name] = dict(kv.split("=", 1) for kv in sets_.split(",") if kv)

    settings = get_settings()
    champion = registry.load_champion_net(settings)
    users = None
    if args.population == "comnist":
        samples = args.samples or 1000
        feedback, probes, users = comnist_users(
            settings, samples, args.probe_sessions, args.per_writer, args.writers_seed
        )
        what = f"{len(feedback)} CoMNIST drawings ({samples} submitted, {len(users)} held out as users')"
        sets = {"probe writers": probes, "users-heldout": users, **real_sets(settings)}
    else:
        samples = args.samples or 40
        feedback = form_drawings(settings, args.form, samples, 3000, FEEDBACK_SOURCE)
        probes = form_drawings(settings, args.form, args.probes, 5000, "probe")
        what = f"{samples} drawings of the form «{args.form}»"
        sets = {"new form": probes, **cached_sets(settings, args.sets_cache)}
    if "finetune-test" not in sets:
        sets["finetune-test"] = load_samples(settings.processed_dir / TEST_FILE)
    names = [n for n in sets if n != "finetune-test"]

    def scores(net) -> dict[str, dict]:
        out = {}
        for n, s in sets.items():
            probs, case_prob = predict_samples(net, s)
            right = Outcomes.of(s, probs.argmax(1), (case_prob >= 0.5).astype(np.int8))
            out[n] = {**score(probs, case_prob, s), "right": probs.argmax(1) == s.y, "outcomes": right}
        return out

    def line(r: dict[str, dict]) -> str:
        return "  ".join(f"{n} {_figures(r[n])}" for n in names)

    base = scores(champion)
    print(f"champion v{registry.champion_version(settings)}: {line(base)}\n", flush=True)

    rows: dict[str, list[dict]] = {r: [] for r in recipes}
    with tempfile.TemporaryDirectory(prefix="retrain-recipe-") as tmp:
        for seed in args.seeds:
            for name, overrides in recipes.items():
                t = time.perf_counter()
                data = data_with_feedback(settings, feedback, Path(tmp) / f"{name}-{seed}".replace(" ", "-"))
                trained = finetune_with_feedback(
                    overrides={**overrides, "seed": str(seed), "trainer.progress": "false"}, settings=data
                )
                r = scores(trained["net"])
                gate = registry.decide_promotion(
                    r["finetune-test"]["outcomes"],
                    base["finetune-test"]["outcomes"],
                    settings.promotion_alpha,
                    users=(r["users-heldout"]["outcomes"], base["users-heldout"]["outcomes"]) if users else None,
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

    print(f"\n{what} as feedback, mean over seeds {args.seeds}:")
    for name, rs in rows.items():
        mean = {n: {k: float(np.mean([r[n][k] for r in rs])) for k in FIGURES} for n in names}
        fixed, broken = sum(r["fixed"] for r in rs), sum(r["broken"] for r in rs)
        print(
            f"  {name:16} promoted {sum(r['promote'] for r in rs)} of {len(rs)}, frozen glyphs fixed {fixed}, "
            f"broken {broken}:  {line(mean)}"
        )
    return 0


FIGURES = ("symbol_accuracy", "letters_only_accuracy", "case_accuracy")


def _figures(r: dict) -> str:
    """symbol accuracy, letters-only beside it where it differs, / case where the set has case labels."""
    out = f"{r['symbol_accuracy']:.3f}"
    if np.isfinite(r["letters_only_accuracy"]) and r["letters_only_accuracy"] != r["symbol_accuracy"]:
        out += f" (letters-only {r['letters_only_accuracy']:.3f})"
    if np.isfinite(r["case_accuracy"]):
        out += f"/{r['case_accuracy']:.3f}"
    return out


def comnist_users(
    settings: Settings, samples: int, probe_sessions: int, per_writer: int, seed: int
) -> tuple[Samples, Samples, Samples]:
    """(feedback, probes, users' held-out drawings): the sessions ``benchmarks/loop.py`` would choose, each drawing
    through the ingest's ``preprocess`` path; the submitted ones as feedback (case unknown), split by
    :func:`ukr_hw.retraining.role_of` as a retrain splits them."""
    from loop import choose_writers, load_comnist

    from ukr_hw.data import comnist

    writers = choose_writers(load_comnist(settings), probe_sessions, samples, per_writer, seed)
    submitted, _ = comnist.prep([d for ds in writers.submitters.values() for d in ds])
    submitted = dataclasses.replace(submitted, source=np.full(len(submitted), FEEDBACK_SOURCE))
    probes, _ = comnist.prep(writers.probe_drawings)
    held = np.array([role_of(str(i), settings.user_test_fraction) == "user_test" for i in submitted.id], bool)
    return submitted.subset(np.flatnonzero(~held)), probes, submitted.subset(np.flatnonzero(held))


if __name__ == "__main__":
    raise SystemExit(main())
