"""Training glyphs rendered from handwriting-like fonts: other "writers" for a model that saw only a few.

Rukopys comes from a handful of writers and has no uppercase samples for 17 letters; fonts add many more hands
(handwriting fonts first, italic/cursive text faces second). Each font × symbol × case is drawn in several variants
(size, slight rotation and shear, thicker or thinner strokes, position) on canvases that look like the real inputs
— paper-like scans (dark ink on off-white, noise, uneven light) and browser strokes (RGBA on a transparent canvas,
black or white) — and every canvas goes through THE preprocessing function :func:`ukr_hw.preprocess.preprocess`.

Glyphs keep a realistic size on a fixed-size canvas (the font size is drawn per variant from the same range for
both cases, never scaled to fill), so the relative ink box carries the case signal as in real drawings.

Fonts are discovered under ``settings.font_dirs`` and filtered by ``settings.font_include`` /
``settings.font_exclude`` (file-stem globs); a font must actually *draw* (not just map) at least
``settings.font_min_coverage`` of the 76 glyphs; the glyphs it lacks are skipped. With no fonts installed the
renderer logs a warning and returns empty :class:`Samples`. The Debian packages are listed in ``deploy/fonts.txt``.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import multiprocessing as mp
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ukr_hw.data.arrays import Samples
from ukr_hw.labels import CASE_LOWER, CASE_NONE, CASE_UPPER, DIGITS, LETTERS, SYMBOLS, index_of
from ukr_hw.preprocess import PreprocessError, preprocess
from ukr_hw.settings import Settings, get_settings

log = logging.getLogger(__name__)

FONT_SUFFIXES = (".ttf", ".otf")
#: (symbol, case) pairs a full font draws: digits (no case), every letter upper and lower.
GLYPH_KEYS: tuple[tuple[str, int], ...] = tuple((d, CASE_NONE) for d in DIGITS) + tuple(
    (letter, case) for letter in LETTERS for case in (CASE_UPPER, CASE_LOWER)
)
CASE_TAG = {CASE_UPPER: "U", CASE_LOWER: "L", CASE_NONE: "D"}
_PROBE_SIZE = 64


def glyph_char(symbol: str, case: int) -> str:
    """The character to draw for a (symbol, case) key."""
    return symbol.upper() if case == CASE_UPPER else symbol


# --------------------------------------------------------------------------------------------------------------
# Discovery and coverage


@functools.lru_cache(maxsize=512)
def _coverage(path: str, mtime: float) -> frozenset[tuple[str, int]]:
    """(symbol, case) keys the font really draws: mapped in the cmap AND rendering visible ink."""
    try:
        from fontTools.ttLib import TTFont

        with TTFont(path, lazy=True, fontNumber=0) as tt:
            cmap = tt.getBestCmap() or {}
        font = ImageFont.truetype(path, _PROBE_SIZE)
    except Exception as exc:  # broken or unsupported font files are skipped, not fatal
        log.debug("font %s unreadable: %s", path, exc)
        return frozenset()
    keys = set()
    for key in GLYPH_KEYS:
        ch = glyph_char(*key)
        if ord(ch) not in cmap:
            continue
        try:
            box = font.getmask(ch).getbbox()
        except Exception:
            continue
        if box is not None and (box[2] - box[0]) * (box[3] - box[1]) > 4:
            keys.add(key)
    # Some fonts map Ґ/ґ onto a plain Г/г outline (or nothing): then ґ would be a mislabelled г.
    for a, b in (("ґ", "г"), ("ї", "і")):
        for case in (CASE_UPPER, CASE_LOWER):
            if (a, case) in keys and (b, case) in keys and _same_glyph(font, glyph_char(a, case), glyph_char(b, case)):
                keys.discard((a, case))
    return frozenset(keys)


def _same_glyph(font: ImageFont.FreeTypeFont, a: str, b: str) -> bool:
    ma, mb = np.asarray(font.getmask(a)), np.asarray(font.getmask(b))
    return ma.shape == mb.shape and bool(np.array_equal(ma, mb))


def font_coverage(path: Path) -> frozenset[tuple[str, int]]:
    """The (symbol, case) keys a font file draws (see :data:`GLYPH_KEYS`); empty for unreadable files."""
    path = Path(path)
    return _coverage(str(path), path.stat().st_mtime)


def _matches(stem: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(stem, p) for p in patterns)


def _candidates(settings: Settings) -> list[Path]:
    """Font files under font_dirs whose stem passes include/exclude; one file per stem (first in sort order)."""
    by_stem: dict[str, Path] = {}
    for d in settings.font_dirs:
        d = settings.path(d)
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() not in FONT_SUFFIXES or not p.is_file():
                continue
            if not _matches(p.stem, settings.font_include) or _matches(p.stem, settings.font_exclude):
                continue
            # prefer .ttf over .otf for the same stem (same outlines; FreeType renders both)
            if p.stem not in by_stem or (p.suffix.lower() == ".ttf" and by_stem[p.stem].suffix.lower() != ".ttf"):
                by_stem[p.stem] = p
    return sorted(by_stem.values(), key=lambda p: (p.stem, str(p)))


def list_fonts(settings: Settings | None = None, *, full_only: bool = False) -> list[Path]:
    """Usable fonts (sorted by file stem): selected by settings and drawing enough of the alphabet.

    ``full_only=True`` keeps only fonts that draw all 76 glyphs (digits, every letter in both cases).
    """
    settings = settings or get_settings()
    need = len(GLYPH_KEYS) if full_only else int(np.ceil(settings.font_min_coverage * len(GLYPH_KEYS)))
    fonts = [p for p in _candidates(settings) if len(font_coverage(p)) >= need]
    if not fonts:
        log.warning(
            "no usable fonts in %s (include=%s, exclude=%s): install the packages in deploy/fonts.txt "
            "(apt-get install $(cat deploy/fonts.txt)); font-rendered glyphs are skipped.",
            [str(d) for d in settings.font_dirs],
            settings.font_include,
            settings.font_exclude,
        )
    return fonts


# --------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _Job:
    font: str
    keys: tuple[tuple[str, int], ...]
    variants: int
    seed: int


def _rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator that depends only on the seed and the parts (stable across processes and runs)."""
    words = [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *words])


def _cap_height(font_path: str) -> float:
    """Height of a capital (Н) per pixel of font size."""
    return _cap_height_cached(font_path)


@functools.lru_cache(maxsize=256)
def _cap_height_cached(font_path: str) -> float:
    font = ImageFont.truetype(font_path, 100)
    box = font.getmask("Н").getbbox() or font.getmask("H").getbbox()
    return max(20.0, float(box[3] - box[1])) / 100.0 if box else 0.7


@functools.lru_cache(maxsize=64)
def _font(font_path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path, size)


def _glyph_mask(font_path: str, ch: str, size: int, stroke: int) -> Image.Image:
    """The glyph as an 'L' mask (ink 255), cropped to its ink with a margin for the later transforms."""
    font = _font(font_path, size)
    ascent, descent = font.getmetrics()
    side = int(3 * (ascent + descent)) + 4 * stroke + 8
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    draw.text((side // 3, side // 3), ch, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    box = img.getbbox()
    if box is None:
        return img.crop((0, 0, 8, 8))
    pad = int(0.35 * max(box[2] - box[0], box[3] - box[1])) + 4  # room for rotation, shear and thickening
    return img.crop((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad))


def _affine(mask: Image.Image, angle: float, shear: float) -> Image.Image:
    """Rotate by ``angle`` degrees and shear horizontally about the centre."""
    w, h = mask.size
    a = np.deg2rad(angle)
    c, s = np.cos(a), np.sin(a)
    # forward: x' = R @ S @ (x - ctr) + ctr with S = [[1, shear], [0, 1]]; PIL wants the inverse map
    fwd = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inv = np.linalg.inv(fwd)
    cx, cy = w / 2, h / 2
    off = np.array([cx, cy]) - inv @ np.array([cx, cy])
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    return mask.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)


def _paper(rng: np.random.Generator, ink: np.ndarray) -> Image.Image:
    """Dark ink on off-white paper: uneven light, grain, a little blur (like a scan or photo)."""
    h, w = ink.shape
    base = rng.uniform(200, 255)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = base + rng.uniform(-25, 25) * (xx - 0.5) + rng.uniform(-25, 25) * (yy - 0.5)
    paper = np.clip(light + rng.normal(0, rng.uniform(0, 6), (h, w)), 0, 255)
    ink_level = rng.uniform(0, min(90.0, base - 110))
    grey = paper * (1 - ink) + ink_level * ink
    img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L")
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img.convert("RGB") if rng.random() < 0.5 else img


def _strokes(rng: np.random.Generator, ink: np.ndarray) -> Image.Image:
    """Browser strokes: RGBA on a transparent canvas, black (light theme) or white (dark theme) ink."""
    h, w = ink.shape
    colour = (0, 0, 0) if rng.random() < 0.6 else (255, 255, 255)
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.clip(ink * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(rgba, mode="RGBA")


def render_variant(font_path: str, symbol: str, case: int, rng: np.random.Generator) -> Image.Image:
    """One canvas with one glyph drawn realistically (see module doc); deterministic for a generator state."""
    side = int(rng.choice([160, 200, 240]))
    cap_fraction = rng.uniform(0.38, 0.78)  # capital height / canvas: the same range for both cases
    size = max(12, round(cap_fraction * side / _cap_height(font_path)))
    if case == CASE_LOWER:  # people write lowercase a bit larger relative to capitals than fonts do
        size = round(size * rng.uniform(0.95, 1.1))
    stroke = int(rng.choice([0, 0, 0, 1, 1, 2])) * max(1, size // 60)
    mask = _glyph_mask(font_path, glyph_char(symbol, case), size, stroke)
    mask = _affine(mask, rng.normal(0, 4), rng.normal(0, 0.12))
    thin = rng.random()
    if thin < 0.15 and size >= 40:
        mask = mask.filter(ImageFilter.MinFilter(3))
    elif thin > 0.85:
        mask = mask.filter(ImageFilter.MaxFilter(3))
    box = mask.getbbox()
    if box is None:
        raise PreprocessError(f"{Path(font_path).stem} drew nothing for {glyph_char(symbol, case)!r}")
    glyph = np.asarray(mask.crop(box), dtype=np.float32) / 255.0
    gh, gw = glyph.shape
    if gh >= side or gw >= side:  # too big for the canvas: shrink to fit (rare, very wide glyphs like Ж Щ)
        scale = 0.95 * side / max(gh, gw)
        glyph = (
            np.asarray(
                Image.fromarray((glyph * 255).astype(np.uint8)).resize(
                    (max(1, int(gw * scale)), max(1, int(gh * scale))), Image.Resampling.LANCZOS
                ),
                dtype=np.float32,
            )
            / 255.0
        )
        gh, gw = glyph.shape
    canvas = np.zeros((side, side), dtype=np.float32)
    # position jitter around the centre, staying on the canvas
    y0 = int(np.clip(round((side - gh) / 2 + rng.normal(0, 0.12) * (side - gh)), 0, side - gh))
    x0 = int(np.clip(round((side - gw) / 2 + rng.normal(0, 0.12) * (side - gw)), 0, side - gw))
    canvas[y0 : y0 + gh, x0 : x0 + gw] = glyph
    return _paper(rng, canvas) if rng.random() < 0.5 else _strokes(rng, canvas)


def _render_job(job: _Job) -> tuple[list[np.ndarray], list[int], list[int], list[np.ndarray], list[str]]:
    xs, ys, cases, inks, ids = [], [], [], [], []
    stem = Path(job.font).stem
    for symbol, case in job.keys:
        for k in range(job.variants):
            rng = _rng(job.seed, stem, symbol, case, k)
            try:
                glyph = preprocess(render_variant(job.font, symbol, case, rng))
            except (PreprocessError, OSError, ValueError) as exc:
                log.debug("skip %s %s %s #%d: %s", stem, symbol, case, k, exc)
                continue
            xs.append(glyph.to_uint8())
            ys.append(index_of(symbol))
            cases.append(case)
            inks.append(glyph.features)
            ids.append(f"font/{stem}/{symbol}/{CASE_TAG[case]}/{k}")
    return xs, ys, cases, inks, ids


def _run_jobs(jobs: Sequence[_Job], workers: int) -> list[tuple]:
    if workers <= 1 or len(jobs) < 2:
        return [_render_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        return list(ex.map(_render_job, jobs))


def render_font_glyphs(
    settings: Settings | None = None,
    *,
    fonts: Sequence[Path] | None = None,
    per_symbol: int | None = None,
    seed: int | None = None,
    symbols: Sequence[str] | None = None,
    workers: int | None = None,
) -> Samples:
    """Font glyphs → preprocessed :class:`Samples` (source ``"font"``, ids ``font/<stem>/<symbol>/<U|L|D>/<k>``).

    ``fonts`` defaults to :func:`list_fonts`; ``per_symbol`` (variants per font × symbol × case) to
    ``settings.font_variants``; ``seed`` to ``settings.seed``; ``symbols`` to all 43; ``workers`` to
    ``settings.prep_workers`` (spawned processes, one job per font). Same inputs and seed → identical samples.
    """
    settings = settings or get_settings()
    fonts = list_fonts(settings) if fonts is None else [Path(f) for f in fonts]
    variants = settings.font_variants if per_symbol is None else int(per_symbol)
    seed = settings.seed if seed is None else int(seed)
    wanted = set(SYMBOLS if symbols is None else (s.lower() for s in symbols))
    workers = getattr(settings, "prep_workers", 2) if workers is None else workers
    jobs = []
    for f in fonts:
        keys = tuple(k for k in GLYPH_KEYS if k[0] in wanted and k in font_coverage(f))
        if keys:
            jobs.append(_Job(str(f), keys, variants, seed))
    if not jobs or variants <= 0:
        if not fonts:
            log.warning("render_font_glyphs: no fonts, no samples (see deploy/fonts.txt)")
        return Samples.empty()
    t0 = time.perf_counter()
    parts = _run_jobs(jobs, min(workers, len(jobs)))
    xs, ys, cases, inks, ids = ([v for part in parts for v in part[i]] for i in range(5))
    if not xs:
        return Samples.empty()
    samples = Samples(np.stack(xs), ys, cases, np.stack(inks), ["font"] * len(ys), ids)
    log.info("rendered %d font glyphs from %d fonts in %.1f s", len(samples), len(jobs), time.perf_counter() - t0)
    return samples
