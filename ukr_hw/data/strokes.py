"""Hand-drawn-looking symbols from vector strokes: what a browser sketchpad gives, without a person.

Every one of the 43 symbols has single-stroke polylines (print handwriting as a person draws it with a mouse),
uppercase and lowercase for letters (lowercase mostly the small form of the capital, as in Ukrainian print
handwriting, with its own shapes for а б е р у ф і ї). :func:`stroke_paths` gives the clean paths in unit
coordinates (x right, y down, canvas = [0, 1]²; capitals on a cap-height line, lowercase on an x-height, so a
lowercase letter is drawn smaller on the same canvas, as people do). :func:`draw_canvas` draws them with a round
brush, per-writer variation (size, slant, rotation, position, wobble) and jitter on a transparent RGBA layer like
Gradio's sketchpad; :func:`sketchpad_value` wraps it as the Gradio 6 Sketchpad value; :func:`paper_photo` puts it
on paper as a phone would photograph it; :func:`render_stroke_glyphs` turns many such drawings into
:class:`Samples` through THE preprocessing function.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from ukr_hw.data.arrays import Samples
from ukr_hw.labels import CASE_LOWER, CASE_NONE, CASE_UPPER, DIGITS, LETTERS, index_of, is_digit, normalize_symbol
from ukr_hw.preprocess import PreprocessError, preprocess
from ukr_hw.settings import Settings, get_settings

Point = tuple[float, float]
Path_ = list[Point]
Theme = Literal["light", "dark"]
Medium = Literal["sketchpad", "paper", "squared"]

#: Theme colours: (background RGBA, default brush RGB) as in Gradio's light and dark themes.
THEMES: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    "light": ((255, 255, 255, 255), (0, 0, 0)),
    "dark": ((11, 15, 25, 255), (255, 255, 255)),
}

# Frame on the unit canvas: capitals span CAP_TOP..BASELINE, lowercase X_TOP..BASELINE.
BASELINE = 0.8
CAP_HEIGHT = 0.62
X_HEIGHT = 0.36


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int | None = None) -> Path_:
    """Points on an ellipse from angle a0 to a1 (degrees; 0 = right, 90 = down, since y points down)."""
    n = n or max(6, int(abs(a1 - a0) / 12))
    return [
        (
            cx + rx * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
            cy + ry * math.sin(math.radians(a0 + (a1 - a0) * i / n)),
        )
        for i in range(n + 1)
    ]


def _dot(x: float, y: float) -> Path_:
    return [(x, y), (x + 0.02, y + 0.02)]


# Glyph definitions in a local box: y = 0 at the top of the cap/x-height, 1 on the baseline (ascenders < 0,
# descenders > 1); x in the same units, any origin (glyphs are centred horizontally).
def _shapes() -> dict[str, list[Path_]]:
    s: dict[str, list[Path_]] = {}
    # digits
    s["0"] = [_arc(0.3, 0.5, 0.3, 0.5, 270, -90)]
    s["1"] = [[(0.08, 0.25), (0.35, 0.0), (0.35, 1.0)]]
    s["2"] = [[*_arc(0.3, 0.28, 0.28, 0.28, 190, 385), (0.0, 1.0), (0.62, 1.0)]]
    s["3"] = [_arc(0.3, 0.25, 0.27, 0.25, 200, 450) + _arc(0.3, 0.74, 0.3, 0.26, 270, 520)]
    s["4"] = [[(0.48, 1.0), (0.48, 0.0), (0.0, 0.7), (0.68, 0.7)]]
    s["5"] = [[(0.58, 0.0), (0.1, 0.0), (0.06, 0.45), *_arc(0.3, 0.68, 0.3, 0.32, 220, 520)]]
    s["6"] = [[(0.52, 0.0), (0.25, 0.25), (0.06, 0.6), *_arc(0.3, 0.72, 0.25, 0.28, 180, 540)]]
    s["7"] = [[(0.0, 0.0), (0.62, 0.0), (0.2, 1.0)]]
    s["8"] = [_arc(0.3, 0.25, 0.23, 0.25, 90, 450), _arc(0.3, 0.73, 0.3, 0.27, 270, 630)]
    s["9"] = [[*_arc(0.3, 0.28, 0.27, 0.28, 0, 360), (0.57, 0.28), (0.5, 0.7), (0.3, 1.0)]]
    # capitals (also the lowercase form of most letters)
    s["А"] = [[(0.0, 1.0), (0.35, 0.0), (0.7, 1.0)], [(0.15, 0.6), (0.55, 0.6)]]
    s["Б"] = [
        [(0.6, 0.0), (0.05, 0.0), (0.05, 1.0)],
        [(0.05, 0.45), (0.33, 0.45), *_arc(0.33, 0.725, 0.27, 0.275, 270, 450), (0.05, 1.0)],
    ]
    s["В"] = [
        [(0.05, 0.0), (0.05, 1.0)],
        [
            (0.05, 0.0),
            (0.33, 0.0),
            *_arc(0.33, 0.23, 0.22, 0.23, 270, 450),
            (0.05, 0.46),
            (0.36, 0.46),
            *_arc(0.36, 0.73, 0.26, 0.27, 270, 450),
            (0.05, 1.0),
        ],
    ]
    s["Г"] = [[(0.6, 0.0), (0.05, 0.0), (0.05, 1.0)]]
    s["Ґ"] = [[(0.05, 1.0), (0.05, 0.12), (0.55, 0.12), (0.55, -0.14)]]
    s["Д"] = [
        [(0.05, 1.22), (0.05, 1.0), (0.85, 1.0), (0.85, 1.22)],
        [(0.14, 1.0), (0.3, 0.3), (0.35, 0.0), (0.7, 0.0), (0.7, 1.0)],
    ]
    s["Е"] = [[(0.6, 0.0), (0.05, 0.0), (0.05, 1.0), (0.6, 1.0)], [(0.05, 0.5), (0.5, 0.5)]]
    s["Є"] = [_arc(0.45, 0.5, 0.45, 0.5, 320, 40), [(0.02, 0.5), (0.45, 0.5)]]
    s["Ж"] = [[(0.02, 0.0), (0.5, 0.5), (0.02, 1.0)], [(0.5, 0.0), (0.5, 1.0)], [(0.98, 0.0), (0.5, 0.5), (0.98, 1.0)]]
    s["З"] = [_arc(0.3, 0.25, 0.27, 0.25, 215, 450) + _arc(0.3, 0.74, 0.3, 0.26, 270, 505)]
    s["И"] = [[(0.05, 0.0), (0.05, 1.0), (0.65, 0.0), (0.65, 1.0)]]
    s["Й"] = s["И"] + [_arc(0.35, -0.24, 0.16, 0.1, 180, 0)]
    s["І"] = [[(0.15, 0.0), (0.15, 1.0)]]
    s["Ї"] = s["І"] + [_dot(0.0, -0.16), _dot(0.3, -0.16)]
    s["К"] = [[(0.05, 0.0), (0.05, 1.0)], [(0.6, 0.0), (0.05, 0.55)], [(0.22, 0.42), (0.62, 1.0)]]
    s["Л"] = [[(0.0, 1.0), (0.15, 0.9), (0.3, 0.0), (0.65, 0.0), (0.65, 1.0)]]
    s["М"] = [[(0.0, 1.0), (0.08, 0.0), (0.42, 0.7), (0.76, 0.0), (0.84, 1.0)]]
    s["Н"] = [[(0.05, 0.0), (0.05, 1.0)], [(0.65, 0.0), (0.65, 1.0)], [(0.05, 0.5), (0.65, 0.5)]]
    s["О"] = [_arc(0.35, 0.5, 0.35, 0.5, 270, -90)]
    s["П"] = [[(0.05, 1.0), (0.05, 0.0), (0.65, 0.0), (0.65, 1.0)]]
    s["Р"] = [[(0.05, 1.0), (0.05, 0.0), (0.33, 0.0), *_arc(0.33, 0.26, 0.25, 0.26, 270, 450), (0.05, 0.52)]]
    s["С"] = [_arc(0.4, 0.5, 0.4, 0.5, 320, 40)]
    s["Т"] = [[(0.0, 0.0), (0.7, 0.0)], [(0.35, 0.0), (0.35, 1.0)]]
    s["У"] = [[(0.0, 0.0), (0.35, 0.6)], [(0.7, 0.0), (0.35, 0.6), (0.12, 1.0)]]
    s["Ф"] = [[(0.42, 0.0), (0.42, 1.0)], _arc(0.42, 0.45, 0.4, 0.26, 270, -90)]
    s["Х"] = [[(0.0, 0.0), (0.7, 1.0)], [(0.7, 0.0), (0.0, 1.0)]]
    s["Ц"] = [[(0.05, 0.0), (0.05, 1.0), (0.65, 1.0), (0.65, 0.0)], [(0.65, 1.0), (0.78, 1.0), (0.78, 1.22)]]
    s["Ч"] = [[(0.05, 0.0), (0.05, 0.38), (0.17, 0.5), (0.6, 0.5)], [(0.6, 0.0), (0.6, 1.0)]]
    s["Ш"] = [[(0.05, 0.0), (0.05, 1.0), (0.89, 1.0), (0.89, 0.0)], [(0.47, 0.0), (0.47, 1.0)]]
    s["Щ"] = [s["Ш"][0], s["Ш"][1], [(0.89, 1.0), (1.0, 1.0), (1.0, 1.22)]]
    s["Ь"] = [[(0.05, 0.0), (0.05, 1.0), (0.33, 1.0), *_arc(0.33, 0.73, 0.27, 0.27, 90, -90), (0.05, 0.46)]]
    s["Ю"] = [[(0.05, 0.0), (0.05, 1.0)], [(0.05, 0.5), (0.36, 0.5)], _arc(0.68, 0.5, 0.32, 0.5, 270, -90)]
    s["Я"] = [
        [(0.6, 1.0), (0.6, 0.0), (0.3, 0.0), *_arc(0.3, 0.26, 0.26, 0.26, 270, 90), (0.6, 0.52)],
        [(0.36, 0.52), (0.05, 1.0)],
    ]
    # lowercase: small capitals unless the shape differs
    for upper in s.copy():
        if not upper.isdigit():
            s[upper.lower()] = s[upper]
    s["а"] = [_arc(0.3, 0.5, 0.3, 0.5, 330, -30), [(0.6, 0.05), (0.6, 1.0)]]
    s["б"] = [[(0.62, -0.85), (0.3, -0.6), (0.08, 0.1), *_arc(0.32, 0.55, 0.28, 0.45, 200, 560)]]
    s["е"] = [[(0.03, 0.5), (0.6, 0.5), *_arc(0.32, 0.5, 0.3, 0.5, 0, -320)]]
    s["і"] = [[(0.1, 0.0), (0.1, 1.0)], _dot(0.1, -0.45)]
    s["ї"] = [[(0.12, 0.0), (0.12, 1.0)], _dot(-0.06, -0.45), _dot(0.3, -0.45)]
    s["р"] = [[(0.05, 1.55), (0.05, 0.0)], [(0.05, 0.3), *_arc(0.32, 0.5, 0.28, 0.5, 220, 520)]]
    s["у"] = [[(0.0, 0.0), (0.36, 0.95)], [(0.72, 0.0), (0.3, 1.25), (0.12, 1.55)]]
    s["ф"] = [[(0.42, -0.8), (0.42, 1.55)], _arc(0.42, 0.5, 0.42, 0.5, 270, -90)]
    s["д"] = [
        [(0.05, 1.35), (0.05, 1.0), (0.85, 1.0), (0.85, 1.35)],
        [(0.14, 1.0), (0.3, 0.3), (0.35, 0.0), (0.7, 0.0), (0.7, 1.0)],
    ]
    s["ц"] = [s["ц"][0], [(0.65, 1.0), (0.78, 1.0), (0.78, 1.35)]]
    s["щ"] = [s["ш"][0], s["ш"][1], [(0.89, 1.0), (1.0, 1.0), (1.0, 1.35)]]
    return s


_SHAPES = _shapes()

#: Forms that real people write and the generator's writers never draw, in the same unit box as the built-in
#: shapes: a stand-in for users teaching the model their own hand (``benchmarks/loop.py``,
#: ``benchmarks/retrain_recipe.py``). Each is (symbol, uppercase, strokes); pass the strokes as ``shape=``.
UNSEEN_FORMS: dict[str, tuple[str, bool | None, list[Path_]]] = {
    # «4» with an open top, as many people write it (close to «ч»)
    "4-open": ("4", None, [[(0.0, 0.0), (0.0, 0.6), (0.7, 0.6)], [(0.55, 0.0), (0.55, 1.0)]]),
}


#: Cursive forms (Ukrainian school handwriting, «пропис»), keyed like the built-in shapes («т» lowercase, «Е»
#: uppercase): most Ukrainians write these rather than print on paper, and Rukopys is written in them. Each key has
#: one or more alternatives in the same unit box; :func:`render_stroke_glyphs` draws ``cursive`` extra drawings
#: per symbol × case in them, cycling through the key's forms. A capital written as a large lowercase form (И, Й,
#: Ц, Ш, Щ, Ж, Х) has that form too, so that size, not shape, tells the case.
def _cursive() -> dict[str, list[list[Path_]]]:
    u = [(0.0, 0.0), (0.0, 0.7), *_arc(0.27, 0.7, 0.27, 0.3, 180, 0), (0.54, 0.0)]  # the «u» of и, й, ц, у
    stem = [(0.54, 0.0), (0.54, 1.0)]
    hump = _arc(0.2, 0.75, 0.2, 0.25, 180, 0)
    sha = [[(0.0, 0.0), (0.0, 0.75), *hump, (0.4, 0.0)], [(0.4, 0.75), *[(x + 0.4, y) for x, y in hump], (0.8, 0.0)]]
    m = [  # «т» written like a Latin «m»
        [(0.0, 1.0), (0.0, 0.2)],
        [*_arc(0.17, 0.35, 0.17, 0.35, 180, 360), (0.34, 1.0)],
        [*_arc(0.51, 0.35, 0.17, 0.35, 180, 360), (0.68, 1.0)],
    ]
    x = [_arc(0.0, 0.5, 0.3, 0.5, -65, 65), _arc(0.62, 0.5, 0.3, 0.5, 245, 115)]  # «)(»
    zhe = [_arc(-0.05, 0.5, 0.3, 0.5, -65, 65), [(0.35, 0.0), (0.35, 1.0)], _arc(0.75, 0.5, 0.3, 0.5, 245, 115)]
    forms: dict[str, list[list[Path_]]] = {
        "т": [m, [*m, [(0.0, -0.22), (0.68, -0.22)]]],  # with or without the bar above
        "и": [[u, stem]],
        "й": [[u, stem, _arc(0.27, -0.24, 0.16, 0.1, 180, 0)]],
        "ц": [[u, [*stem, (0.66, 1.0), (0.66, 1.32)]]],
        "у": [[u, [(0.54, 0.0), (0.54, 1.3), *_arc(0.34, 1.3, 0.2, 0.24, 0, 180)]]],
        "п": [[[(0.0, 1.0), (0.0, 0.3), *_arc(0.27, 0.3, 0.27, 0.3, 180, 360), (0.54, 1.0)]]],
        "д": [  # «g» and «∂»
            [_arc(0.28, 0.5, 0.28, 0.5, 330, -30), [(0.56, 0.05), (0.56, 1.3), *_arc(0.36, 1.3, 0.2, 0.24, 0, 180)]],
            [
                _arc(0.28, 0.55, 0.28, 0.45, 330, -30),
                [(0.56, 1.0), (0.56, -0.25), *_arc(0.34, -0.25, 0.22, 0.3, 0, -150)],
            ],
        ],
        "ш": [[sha[0], [*sha[1], (0.8, 1.0)]]],
        "щ": [[sha[0], [*sha[1], (0.8, 1.0), (0.92, 1.0), (0.92, 1.32)]]],
        "з": [[_arc(0.3, 0.25, 0.27, 0.25, 215, 450) + _arc(0.28, 0.85, 0.3, 0.35, 270, 500)]],  # with a descender
        "х": [x],
        "ж": [zhe],
        "Е": [[_arc(0.32, 0.26, 0.28, 0.26, -30, -270) + _arc(0.32, 0.74, 0.3, 0.26, -90, -330)]],  # «Ɛ»
        "7": [[[(0.0, 0.0), (0.62, 0.0), (0.2, 1.0)], [(0.16, 0.52), (0.6, 0.48)]]],  # crossed, as in Europe
    }
    for lower in ("и", "й", "ц", "ш", "щ", "х", "ж"):
        forms[lower.upper()] = forms[lower]
    return forms


CURSIVE_FORMS = _cursive()


def _key(symbol: str, uppercase: bool | None) -> str:
    s = normalize_symbol(symbol)
    if is_digit(s):
        return s
    return s.upper() if uppercase else s


def stroke_paths(
    symbol: str, uppercase: bool | None = False, shape: Sequence[Sequence[Point]] | None = None
) -> list[list[tuple[float, float]]]:
    """Clean polylines for a symbol in unit canvas coordinates (x right, y down, all inside [0, 1]²).

    Capitals (and digits) stand on a cap height of ``CAP_HEIGHT`` above ``BASELINE``; lowercase letters on
    ``X_HEIGHT``, so ``stroke_paths("к", False)`` is drawn smaller than ``stroke_paths("к", True)``.
    ``uppercase`` is ignored for digits. ``shape`` (strokes in the unit box of the built-in shapes, e.g. one of
    :data:`UNSEEN_FORMS`) is placed instead of the symbol's own. Raises :class:`~ukr_hw.labels.UnknownSymbolError`
    for other symbols.
    """
    key = _key(symbol, uppercase)
    paths = _SHAPES[key] if shape is None else shape
    height = X_HEIGHT if (key.islower() and not key.isdigit()) else CAP_HEIGHT
    xs = [x for p in paths for x, _ in p]
    mid = (min(xs) + max(xs)) / 2
    top = BASELINE - height
    return [[(0.5 + (x - mid) * height, top + y * height) for x, y in p] for p in paths]


# --------------------------------------------------------------------------------------------------------------
# Drawing


def _rng(seed: int | None, *parts: object) -> np.random.Generator:
    words = [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng([0 if seed is None else int(seed) & 0xFFFFFFFF, *words])


def _resample(path: Path_, step: float) -> np.ndarray:
    """Points every ``step`` along a polyline (so wobble and brush look like a continuous mouse stroke)."""
    pts = np.asarray(path, dtype=np.float64)
    if len(pts) < 2:
        return pts
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    dist = np.concatenate([[0], np.cumsum(seg)])
    if dist[-1] <= 0:
        return pts[:1]
    t = np.linspace(0, dist[-1], max(2, int(dist[-1] / step) + 1))
    return np.stack([np.interp(t, dist, pts[:, 0]), np.interp(t, dist, pts[:, 1])], axis=1)


def writer_paths(
    symbol: str,
    uppercase: bool | None,
    rng: np.random.Generator,
    *,
    variation: float = 1.0,
    shape: Sequence[Sequence[Point]] | None = None,
) -> list[np.ndarray]:
    """The symbol's paths as one writer draws it: scaled, slanted, rotated, shifted and wobbly (unit coords)."""
    paths = [np.asarray(p, dtype=np.float64) for p in stroke_paths(symbol, uppercase, shape)]
    v = variation
    scale = rng.uniform(0.75, 1.25) if v else 1.0
    sx = scale * (1 + rng.normal(0, 0.1 * v))
    shear = rng.normal(0, 0.15 * v)
    angle = math.radians(rng.normal(0, 5 * v))
    c, s = math.cos(angle), math.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.array([[sx, -shear * scale], [0, scale]])
    centre = np.array([0.5, 0.5])
    allp = np.concatenate(paths)
    lo, hi = allp.min(0), allp.max(0)
    out = [(p - centre) @ m.T + centre for p in paths]
    # shift so the whole glyph stays on the canvas, with random placement
    allo = np.concatenate(out)
    lo, hi = allo.min(0), allo.max(0)
    span = hi - lo
    if (span > 0.92).any():  # too big after scaling: shrink about the centre
        k = 0.92 / span.max()
        out = [(p - centre) * k + centre for p in out]
        allo = np.concatenate(out)
        lo, hi = allo.min(0), allo.max(0)
    shift = rng.normal(0, 0.06 * v, 2)
    shift = np.clip(shift, 0.04 - lo, 0.96 - hi)
    result = []
    for p in out:
        p = _resample(p + shift, 0.01)
        if v and len(p) > 2:  # low-frequency wobble of the hand
            n = len(p)
            k = np.arange(n)[:, None] / max(n - 1, 1)
            phase = rng.uniform(0, 2 * np.pi, (1, 2))
            freq = rng.uniform(0.5, 2.0, (1, 2))
            p = p + 0.008 * v * np.sin(2 * np.pi * freq * k + phase) + rng.normal(0, 0.0015 * v, p.shape)
        result.append(p)
    return result


def draw_canvas(
    symbol: str,
    uppercase: bool | None = False,
    size: tuple[int, int] = (400, 400),
    width: float | None = None,
    theme: Theme = "light",
    seed: int | None = 0,
    *,
    color: tuple[int, int, int] | None = None,
    variation: float = 1.0,
    shape: Sequence[Sequence[Point]] | None = None,
) -> Image.Image:
    """The symbol drawn with a round brush on a transparent RGBA canvas (like Gradio's sketchpad layer).

    ``width`` is the brush diameter in pixels (default: random 2–6 % of the shorter side for the seed);
    ``theme`` picks the default brush colour (black on light, white on dark); ``seed`` fixes the writer
    (size, slant, placement, wobble); ``variation=0`` draws the clean :func:`stroke_paths`; ``shape`` draws other
    strokes for the symbol (see :func:`stroke_paths`).
    """
    if theme not in THEMES:
        raise ValueError(f"theme must be 'light' or 'dark', not {theme!r}")
    rng = _rng(seed, "canvas", _key(symbol, uppercase))
    w_px, h_px = int(size[0]), int(size[1])
    if width is None:
        width = rng.uniform(0.02, 0.06) * min(w_px, h_px)
    colour = color or THEMES[theme][1]
    ss = 2  # supersampling for anti-aliased edges like a browser canvas
    big = Image.new("L", (w_px * ss, h_px * ss), 0)
    draw = ImageDraw.Draw(big)
    side = min(w_px, h_px)
    ox, oy = (w_px - side) / 2, (h_px - side) / 2
    r = max(1.0, width * ss / 2)
    for p in writer_paths(symbol, uppercase, rng, variation=variation, shape=shape):
        pts = [((ox + x * side) * ss, (oy + y * side) * ss) for x, y in p]
        if len(pts) > 1:
            draw.line(pts, fill=255, width=round(2 * r), joint="curve")
        for x, y in (pts[0], pts[-1]) if len(pts) > 1 else pts:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    alpha = big.resize((w_px, h_px), Image.Resampling.BOX)
    layer = Image.new("RGBA", (w_px, h_px), (*colour, 0))
    layer.putalpha(alpha)
    return layer


def sketchpad_value(
    symbol: str,
    uppercase: bool | None = False,
    size: tuple[int, int] = (400, 400),
    width: float | None = None,
    theme: Theme = "light",
    seed: int | None = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """The Gradio 6 Sketchpad value for a drawn symbol: ``{"background", "layers": [RGBA], "composite"}``.

    Arrays are uint8 H×W×4 (``type="numpy"``); the background is the theme's opaque canvas colour.
    """
    layer = draw_canvas(symbol, uppercase, size, width, theme, seed, **kwargs)
    background = Image.new("RGBA", layer.size, THEMES[theme][0])
    composite = Image.alpha_composite(background, layer)
    return {
        "background": np.asarray(background).copy(),
        "layers": [np.asarray(layer).copy()],
        "composite": np.asarray(composite).copy(),
    }


def paper_photo(layer: Image.Image, rng: np.random.Generator, *, squared: bool = False) -> bytes:
    """A JPEG of the drawing in ``layer`` (RGBA, ink in alpha) as if written on paper and photographed by a phone.

    Tinted paper under uneven light (a brightness ramp of up to ±35 % across the page), sensor noise, pen ink
    (blue or black, dimmed by the same light), optionally a school notebook's squared grid ("в клітинку") in
    light blue, then a slight blur and JPEG at quality 55–85.
    """
    import io

    from PIL import ImageFilter

    w, h = layer.size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    light = np.clip(0.85 + gx * (xx - 0.5) + gy * (yy - 0.5), 0.5, 1.0)[..., None]
    paper = np.array([(238, 234, 222), (245, 245, 240), (225, 220, 200)][rng.integers(3)], float)
    img = paper * light + rng.normal(0, 5, (h, w, 1))
    if squared:
        step = max(4, int(w / rng.uniform(6, 10)))
        grid = np.zeros((h, w, 1), bool)
        ox, oy = rng.integers(0, step, 2)
        for k in range(2):  # 2-px lines
            grid[:, ox + k :: step] = True
            grid[oy + k :: step, :] = True
        img = np.where(grid, 0.5 * img + 0.5 * np.array((150, 170, 210), float) * light, img)
    alpha = np.asarray(layer)[..., 3:4] / 255.0
    ink = np.array([(25, 35, 110), (30, 30, 30), (40, 60, 160)][rng.integers(3)], float) * light
    out = np.clip(img * (1 - alpha) + ink * alpha, 0, 255).astype(np.uint8)
    photo = Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=int(rng.integers(55, 86)))
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """PNG-encode an image (e.g. a :func:`draw_canvas` result to send to the API)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Training / evaluation samples

_KEYS: tuple[tuple[str, int], ...] = tuple((d, CASE_NONE) for d in DIGITS) + tuple(
    (letter, case) for letter in LETTERS for case in (CASE_UPPER, CASE_LOWER)
)
_TAG = {CASE_UPPER: "U", CASE_LOWER: "L", CASE_NONE: "D"}


def render_stroke_glyphs(
    settings: Settings | None = None,
    per_symbol: int = 4,
    seed: int | None = None,
    *,
    symbols: Sequence[str] | None = None,
    themes: Sequence[Theme] = ("light", "dark"),
    widths: tuple[float, float] = (0.02, 0.06),
    sizes: Sequence[int] = (280, 400),
    variation: float = 1.0,
    medium: Medium = "sketchpad",
    source: str = "strokes",
    form: str | None = None,
    cursive: int = 0,
) -> Samples:
    """Drawings of every symbol × case, preprocessed: :class:`Samples` with source ``source``.

    Each variant is a new "writer" (seeded), brush width a random fraction in ``widths`` of the canvas side,
    canvas side from ``sizes``; ids ``<source>/<symbol>/<U|L|D>/<k>``. ``medium="sketchpad"`` gives the Gradio
    Sketchpad value with the theme alternating over ``themes``; ``"paper"`` / ``"squared"`` a phone photo of the
    drawing on plain / squared paper (:func:`paper_photo`; themes do not apply). ``form`` (a key of
    :data:`UNSEEN_FORMS`) draws only that symbol and case, in that form. ``cursive`` adds that many drawings per
    symbol × case that has :data:`CURSIVE_FORMS`, in those forms (ids ``<source>/<symbol>/<U|L|D>/c<k>``).
    """
    if medium not in ("sketchpad", "paper", "squared"):
        raise ValueError(f"medium must be 'sketchpad', 'paper' or 'squared', not {medium!r}")
    if form is not None and form not in UNSEEN_FORMS:
        raise ValueError(f"unknown form {form!r}; known forms: {sorted(UNSEEN_FORMS)}")
    settings = settings or get_settings()
    seed = settings.seed if seed is None else int(seed)
    wanted = None if symbols is None else {normalize_symbol(s) for s in symbols}
    keys, shape = _KEYS, None
    if form is not None:
        symbol, upper, shape = UNSEEN_FORMS[form]
        keys = ((symbol, CASE_NONE if is_digit(symbol) else CASE_UPPER if upper else CASE_LOWER),)
    xs, ys, cases, inks, ids = [], [], [], [], []
    for symbol, case in keys:
        if wanted is not None and symbol not in wanted:
            continue
        key = _key(symbol, case == CASE_UPPER)
        extra = CURSIVE_FORMS.get(key, []) if form is None else []
        plan: list[tuple[str, Sequence[Sequence[Point]] | None]] = [(str(k), shape) for k in range(per_symbol)]
        plan += [(f"c{k}", extra[k % len(extra)]) for k in range(cursive if extra else 0)]
        for n, (k, drawn) in enumerate(plan):
            rng = _rng(seed, "sample", symbol, case, k)  # seeds hash str(part): "3" draws as 3 did
            side = int(rng.choice(list(sizes)))
            theme = themes[n % len(themes)]
            args = (symbol, case == CASE_UPPER, (side, side), rng.uniform(*widths) * side, theme)
            writer = int(rng.integers(2**31))
            if medium == "sketchpad":
                value: Any = sketchpad_value(*args, seed=writer, variation=variation, shape=drawn)
            else:
                value = paper_photo(
                    draw_canvas(*args, seed=writer, variation=variation, shape=drawn),
                    rng,
                    squared=medium == "squared",
                )
            try:
                glyph = preprocess(value)
            except PreprocessError:
                continue
            xs.append(glyph.to_uint8())
            ys.append(index_of(symbol))
            cases.append(case)
            inks.append(glyph.features)
            ids.append(f"{source}/{symbol}/{_TAG[case]}/{k}" if form is None else f"{source}/{form}/{k}")
    if not xs:
        return Samples.empty()
    return Samples(np.stack(xs), ys, cases, np.stack(inks), [source] * len(ys), ids)
