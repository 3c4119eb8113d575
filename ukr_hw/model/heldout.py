"""Held-out evaluation sets and their scoring, shared by the benchmarks (``benchmarks/generalization.py``,
``recipe.py``, ``operating_point.py`` …).

* :func:`real_sets` — **real people the model never trained on**: CoMNIST's held-out drawing sessions, the Rukopys
  and MNIST parts of the frozen test split, users' held-out drawings. Every figure the project reports leads with
  these.
* :func:`build_sets` — **synthetic** sets this project generates, labelled as such: glyphs of fonts no training set
  has, and drawings of its own stroke generator by writer seeds that training never used (light and dark sketchpad,
  cursive forms, photographed paper). The generator also makes training drawings, so these flatter the model: a
  proxy, not a verdict on people's handwriting.
* :func:`score` — symbol (43-way and letters-only) and case accuracy, letters↔digits shares, worst classes.
* :func:`data_with_feedback` — a copy of the prepared data with simulated users' drawings among the training
  glyphs: a retrain round of the benchmarks (``benchmarks/case_refit.py``, ``retrain_recipe.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ukr_hw.data import fonts, split, strokes
from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.labels import NUM_CLASSES, SYMBOLS
from ukr_hw.settings import Settings

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


#: The real other-writer sets (:func:`real_sets`): set name → sample source in the frozen test split.
REAL_SETS = {"comnist-heldout": "comnist", "rukopys-frozen": "rukopys", "mnist-frozen": "mnist"}

#: The synthetic sets this project generates (fonts, its stroke generator), then the frozen split as a whole.
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


def real_sets(settings: Settings) -> dict[str, Samples]:
    """The sets of real people whom no model trained on: the frozen test split by population (CoMNIST's held-out
    drawing sessions, the Rukopys scans, the MNIST digits) and users' held-out drawings (``user_test.npz``, once a
    retrain has made it). Empty sets are left out."""
    from ukr_hw.retraining import USER_TEST_FILE

    out: dict[str, Samples] = {}
    test_path = settings.processed_dir / split.TEST_FILE
    if test_path.exists():
        test = load_samples(test_path)
        for name, source in REAL_SETS.items():
            part = test.subset(np.flatnonzero(test.source == source))
            if len(part):
                out[name] = part
    users = settings.processed_dir / USER_TEST_FILE
    if users.exists() and len(held := load_samples(users)):
        out["users-heldout"] = held
    return out


def score(probs: np.ndarray, case_prob: np.ndarray, samples: Samples, case_threshold: float = 0.5) -> dict[str, object]:
    """Symbol and case accuracy, letters↔digits shares, worst classes and top confusions of one set's predictions;
    a letter counts as uppercase at ``case_prob >= case_threshold``."""
    pred = probs.argmax(1)
    y, case = samples.y, samples.case
    letters = y >= N_DIGITS
    has_case = case >= 0  # digits (-1) and letters nobody labelled the case of (CoMNIST, -2) have none
    out: dict[str, object] = {
        "n": len(y),
        "symbol_accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "case_accuracy": float(((case_prob[has_case] >= case_threshold).astype(int) == case[has_case]).mean())
        if has_case.any()
        else float("nan"),
        "letters_only_accuracy": float((probs[letters, N_DIGITS:].argmax(1) + N_DIGITS == y[letters]).mean())
        if letters.any()
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


def cached_sets(settings: Settings, cache: Path) -> dict[str, Samples]:
    """The frozen split plus the synthetic sets (built once, then read from the ``cache`` folder): what the recipe
    benchmarks compare recipes on."""
    import json

    from ukr_hw.data.arrays import save_samples

    test = load_samples(settings.processed_dir / split.TEST_FILE)
    index = cache / "sets.json"
    cached = json.loads(index.read_text()) if index.exists() else []
    sets = {n: load_samples(cache / f"{n}.npz") for n in cached}
    missing = tuple(n for n in SETS if n not in sets and n != "finetune-test")
    if missing:  # a set added since the cache was built is built alone; the cached ones stay as they were
        new = build_sets(settings, None, per_symbol=2, seed=1000, only=missing)
        cache.mkdir(parents=True, exist_ok=True)
        for n, s in new.items():
            save_samples(s, cache / f"{n}.npz")
        sets |= new
        index.write_text(json.dumps(list(sets)))
    return {**real_sets(settings), "finetune-test": test, **sets}


def data_with_feedback(settings: Settings, feedback: Samples, root: Path) -> Settings:
    """A copy of the prepared data (links, except the training split) with ``feedback`` joining the training split,
    under ``root``: the settings that point at it."""
    import os

    from ukr_hw.data.arrays import save_samples

    processed = root / "processed"
    processed.mkdir(parents=True)
    for f in settings.processed_dir.iterdir():
        if f.is_file() and f.name != split.TRAIN_FILE:
            os.symlink(f, processed / f.name)
    train = load_samples(settings.processed_dir / split.TRAIN_FILE)
    save_samples(Samples.concat([train, feedback]), processed / split.TRAIN_FILE)
    return settings.model_copy(update={"data_dir": root})
