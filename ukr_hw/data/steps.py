"""The data-prep steps, one function per flow task (``flows/prepare.py`` only wires them together).

Each expensive step skips its work when its outputs exist and a stamp holds the digest of its inputs (raw file
contents, the settings that matter, the source of the code doing the work), so a warm run is fast and a changed
input or preprocessing function rebuilds exactly what depends on it. Intermediate arrays live in
``processed_dir/.cache`` (ignored by DVC).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ukr_hw import preprocess as preprocess_module
from ukr_hw.data import comnist, feedback_raw, mnist, rukopys, split, stamps, summary
from ukr_hw.data import ingest as ingest_module
from ukr_hw.data.arrays import Samples, load_samples, save_samples
from ukr_hw.settings import Settings

log = logging.getLogger(__name__)

RUKOPYS_CACHE = "rukopys.npz"
COMNIST_CACHE = "comnist.npz"
DIGITS_CACHE = "mnist_digits.npz"
MNIST_TRAIN = "mnist_train.npz"
MNIST_TEST = "mnist_test.npz"
SYNTHETIC = "synthetic_train.npz"
STROKES = "strokes_train.npz"
BAD_ROWS = "bad_rows.csv"


def cache_dir(settings: Settings) -> Path:
    return settings.processed_dir / ".cache"


def ingest_rukopys(settings: Settings) -> str:
    path, copied = ingest_module.ingest_rukopys(settings)
    log.info("rukopys: %d files copied into %s", copied, path)
    return str(path)


def ingest_mnist(settings: Settings) -> str:
    path, copied = ingest_module.ingest_mnist(settings)
    log.info("mnist: %d files copied into %s", copied, path)
    return str(path)


def ingest_comnist(settings: Settings) -> str | None:
    """CoMNIST's manifest files into ``raw_dir/comnist`` (None when ``settings.comnist`` is off)."""
    if not settings.comnist:
        return None
    path, copied = comnist.ingest(settings)
    log.info("comnist: %d files copied into %s", copied, path)
    return str(path)


def prep_comnist(comnist_dir: str | None, settings: Settings) -> dict[str, Any]:
    """CoMNIST drawings → ``.cache/comnist.npz`` (case unknown, ids carry the drawing session)."""
    out = cache_dir(settings) / COMNIST_CACHE
    if comnist_dir is None:
        save_samples(Samples.empty(), out)
        return {"path": str(out), "n": 0, "sessions": 0, "excluded": {}, "bad": 0}
    manifest = comnist.read_manifest()
    key = stamps.digest(manifest, settings.comnist_limit, preprocess_module, comnist)
    if stamps.is_fresh(cache_dir(settings), "comnist", key, [out]):
        return stamps.read_stamp(cache_dir(settings), "comnist")["info"]
    scanned = comnist.scan(Path(comnist_dir), manifest, settings.comnist_limit)
    samples, bad = comnist.prep(scanned.drawings, settings.prep_workers)
    save_samples(samples, out)
    info = {
        "path": str(out),
        "n": len(samples),
        "sessions": scanned.sessions,
        "excluded": scanned.excluded,  # Ё Ъ Ы Э: not Ukrainian letters
        "bad": len(bad),
    }
    stamps.write_stamp(cache_dir(settings), "comnist", key, info=info)
    return info


def prep_feedback(settings: Settings) -> dict[str, Any]:
    """Users' samples in ``raw_dir/feedback`` (less rejected ones) → ``.cache/feedback_{train,user_test}.npz``."""
    return feedback_raw.prep(settings)


def clean_rukopys(rukopys_dir: str) -> rukopys.CleanResult:
    return rukopys.clean(Path(rukopys_dir))


def prep_rukopys(cleaned: rukopys.CleanResult, settings: Settings) -> dict[str, Any]:
    """Clean rows → ``.cache/rukopys.npz``; all bad rows (table and images) → ``bad_rows.csv``."""
    out = cache_dir(settings) / RUKOPYS_CACHE
    key = stamps.digest(
        [(r.symbol, r.case, r.file.name) for r in cleaned.rows],
        stamps.files_digest(r.file for r in cleaned.rows),
        preprocess_module,
        rukopys,
    )
    if stamps.is_fresh(cache_dir(settings), "rukopys", key, [out]):
        image_bad = [rukopys.BadRow(**b) for b in stamps.read_stamp(cache_dir(settings), "rukopys")["bad"]]
        n = int(stamps.read_stamp(cache_dir(settings), "rukopys")["n"])
    else:
        samples, image_bad = rukopys.prep_glyphs(cleaned.rows, settings.prep_workers)
        save_samples(samples, out)
        n = len(samples)
        stamps.write_stamp(cache_dir(settings), "rukopys", key, n=n, bad=[b.__dict__ for b in image_bad])
    bad = [*cleaned.bad, *image_bad]
    rukopys.write_bad_rows(bad, settings.processed_dir / BAD_ROWS)
    return {"path": str(out), "n": n, "bad": len(bad)}


def prep_mnist(mnist_dir: str, settings: Settings) -> dict[str, Any]:
    """Full MNIST train/test (capped by ``mnist_limit``) and the fine-tune digits, all through preprocess.

    The fine-tune digits (``mnist_per_class`` per class, plus any digit in the frozen test split) are left out of
    ``mnist_train.npz``, so pretraining never sees a digit that the fine-tune test scores.
    """
    frozen = split.frozen_test_ids(settings) or []
    d = settings.processed_dir
    outs = [d / MNIST_TRAIN, d / MNIST_TEST, cache_dir(settings) / DIGITS_CACHE]
    # the chosen digits (cheap: labels only) are part of the key, so freezing a split that holds only these
    # digits does not invalidate the step
    train_labels = mnist.read_idx(Path(mnist_dir) / mnist.FILES["train"][1], "labels")
    chosen = np.union1d(
        mnist.select_per_class(train_labels, settings.mnist_per_class, settings.seed),
        mnist.ids_to_index(frozen, "mnist-train"),
    )
    key = stamps.digest(ingest_module.MNIST_MD5, chosen.tolist(), settings.mnist_limit, preprocess_module, mnist)
    if stamps.is_fresh(cache_dir(settings), "mnist", key, outs):
        return stamps.read_stamp(cache_dir(settings), "mnist")["counts"]
    train = mnist.load_split(Path(mnist_dir), "train")
    test = mnist.load_split(Path(mnist_dir), "test")
    rest = np.setdiff1d(np.arange(len(train.labels)), chosen)
    limit = settings.mnist_limit
    rest, test_index = rest[:limit], np.arange(len(test.labels))[:limit]
    # one pool call for all train digits (chosen + rest), split afterwards
    both = mnist.preprocess_digits(train, np.concatenate([chosen, rest]), "mnist-train", settings.prep_workers)
    digits, pretrain = both.subset(np.arange(len(chosen))), both.subset(np.arange(len(chosen), len(both)))
    pretest = mnist.preprocess_digits(test, test_index, "mnist-test", settings.prep_workers)
    save_samples(pretrain, outs[0])
    save_samples(pretest, outs[1])
    save_samples(digits, outs[2])
    counts = {"mnist_train": len(pretrain), "mnist_test": len(pretest), "digits": len(digits), "path": str(outs[2])}
    stamps.write_stamp(cache_dir(settings), "mnist", key, counts=counts)
    return counts


def render_fonts(settings: Settings) -> int:
    """Font-rendered training glyphs → ``synthetic_train.npz`` (empty when fonts are off or unavailable)."""
    out = settings.processed_dir / SYNTHETIC
    if not settings.font_glyphs:
        save_samples(Samples.empty(), out)
        return 0
    try:
        from ukr_hw.data import fonts
    except ImportError as exc:
        log.warning("font glyphs skipped: ukr_hw.data.fonts is not available (%s)", exc)
        save_samples(Samples.empty(), out)
        return 0
    key = stamps.digest(
        fonts,
        preprocess_module,
        settings.seed,
        {k: v for k, v in settings.model_dump(mode="json").items() if k.startswith("font")},
        _font_files(settings),
    )
    if stamps.is_fresh(cache_dir(settings), "fonts", key, [out]):
        return int(stamps.read_stamp(cache_dir(settings), "fonts")["n"])
    try:
        samples = fonts.render_font_glyphs(settings)
    except Exception:  # optional extra data: a broken renderer must not block the real data, but is loud
        log.exception("font glyphs FAILED; continuing without synthetic data (fix ukr_hw.data.fonts)")
        save_samples(Samples.empty(), out)
        return 0
    if samples is None or len(samples) == 0:
        log.warning("font glyphs: none rendered (no usable fonts in %s)", settings.font_dirs)
        samples = Samples.empty()
    save_samples(samples, out)
    stamps.write_stamp(cache_dir(settings), "fonts", key, n=len(samples))
    return len(samples)


def render_strokes(settings: Settings) -> int:
    """Sketchpad-style training drawings → ``strokes_train.npz`` (``settings.stroke_glyphs`` per symbol × case, and
    ``settings.stroke_cursive_glyphs`` more in the cursive forms of the symbols that have them).

    What the browser sends: brush strokes on a transparent canvas, both themes, thin to thick brushes, lowercase
    drawn smaller than uppercase. Without them the model reads small print-shaped lowercase (в, к, н, т …) as
    uppercase: case accuracy on unseen-writer drawings 0.65, with them 0.77-0.89 (``benchmarks/generalization.py``,
    whose writers come from other seeds).
    """
    from ukr_hw.data import strokes

    out = settings.processed_dir / STROKES
    key = stamps.digest(
        strokes, preprocess_module, settings.seed, settings.stroke_glyphs, settings.stroke_cursive_glyphs
    )
    if stamps.is_fresh(cache_dir(settings), "strokes", key, [out]):
        return int(stamps.read_stamp(cache_dir(settings), "strokes")["n"])
    samples = Samples.empty()
    if settings.stroke_glyphs:
        samples = strokes.render_stroke_glyphs(
            settings,
            per_symbol=settings.stroke_glyphs,
            seed=settings.seed,
            widths=(0.015, 0.07),
            sizes=(256, 400, 560),
            variation=1.2,
            cursive=settings.stroke_cursive_glyphs,
        )
    save_samples(samples, out)
    stamps.write_stamp(cache_dir(settings), "strokes", key, n=len(samples))
    return len(samples)


def _font_files(settings: Settings) -> list[tuple[str, int]]:
    """The installed font files (path, size): installing or removing a font re-renders."""
    found = []
    for d in settings.font_dirs:
        for p in Path(d).rglob("*") if Path(d).is_dir() else []:
            if p.suffix.lower() in {".ttf", ".otf", ".ttc", ".pfb", ".t1"} and p.is_file():
                found.append((str(p), p.stat().st_size))
    return sorted(found)


def merge_and_split(
    rukopys_info: dict[str, Any],
    mnist_info: dict[str, Any],
    settings: Settings,
    comnist_info: dict[str, Any] | None = None,
    feedback_info: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Rukopys glyphs + fine-tune digits + CoMNIST drawings → ``finetune_train.npz`` / ``finetune_test.npz`` (the
    frozen test split: stratified Rukopys and MNIST ids, whole CoMNIST sessions); users' samples (by the role fixed
    at take-in) join the end of train, and their held-out part is ``user_test.npz``.

    Users' samples never enter the split itself, so they can neither move the frozen test split nor the order of the
    other training samples: the same raw data always gives the same files.
    """
    parts = [load_samples(Path(rukopys_info["path"])), load_samples(Path(mnist_info["path"]))]
    if comnist_info and comnist_info.get("n"):
        parts.append(load_samples(Path(comnist_info["path"])))
    train, test = split.split(Samples.concat(parts), settings)
    users = Samples.empty()
    if feedback_info and feedback_info.get("train"):
        users_train = load_samples(Path(feedback_info["path_train"]))
        merged = Samples.concat([train, users_train])
        # string columns at their own width (as split does), so the bytes depend on the data only
        train = Samples(merged.x, merged.y, merged.case, merged.ink, merged.source.tolist(), merged.id.tolist())
    if feedback_info and feedback_info.get("user_test"):
        users = load_samples(Path(feedback_info["path_user_test"]))
    split.save_split(train, test, settings)
    user_test = settings.processed_dir / feedback_raw.USER_TEST_FILE
    if len(users):
        save_samples(users, user_test)
    elif user_test.exists():  # every held-out drawing was rejected: a stale file would still be scored
        user_test.unlink()
    return {"train": len(train), "test": len(test), "user_test": len(users)}


def write_preview(settings: Settings) -> str:
    train_path = settings.processed_dir / split.TRAIN_FILE
    out = settings.processed_dir / summary.PREVIEW_FILE
    key = stamps.digest(train_path, summary, settings.seed)
    if not stamps.is_fresh(cache_dir(settings), "preview", key, [out]):
        summary.preview(load_samples(train_path), out, seed=settings.seed)
        stamps.write_stamp(cache_dir(settings), "preview", key)
    return str(out)


def write_manifest(settings: Settings, data_version: str) -> dict[str, Any]:
    """``manifest.json``: counts per split/source/class and the data version (excluded from the DVC hash)."""
    d = settings.processed_dir
    names = {
        "finetune_train": split.TRAIN_FILE,
        "finetune_test": split.TEST_FILE,
        "synthetic_train": SYNTHETIC,
        "strokes_train": STROKES,
        "mnist_train": MNIST_TRAIN,
        "mnist_test": MNIST_TEST,
        "user_test": feedback_raw.USER_TEST_FILE,
    }
    splits = {name: load_samples(d / f) for name, f in names.items() if (d / f).exists()}
    bad_rows = (
        max(0, len((d / BAD_ROWS).read_text(encoding="utf-8").splitlines()) - 1) if (d / BAD_ROWS).exists() else 0
    )
    return summary.write_manifest(
        splits, d / summary.MANIFEST_FILE, data_version=data_version, bad_rows=bad_rows, seed=settings.seed
    )
