"""The sketchpad's canvas: a lined sheet with writing guides where the training drawings stand, and the empty
Sketchpad value built on it."""

from __future__ import annotations

import functools
from typing import Any

from PIL import Image, ImageDraw

from ukr_hw.data.strokes import BASELINE, CAP_HEIGHT, X_HEIGHT

CANVAS = (560, 560)
PAPER = (253, 253, 250)  #: the sheet under the strokes, in both themes (the brush is a fixed dark blue)


@functools.cache
def guide_lines(size: tuple[int, int] = CANVAS) -> Image.Image:
    """The canvas background: a sheet of lined paper with writing guides where the training drawings stand.

    A solid baseline, a dashed x-height line and a faint cap line (:mod:`ukr_hw.data.strokes` draws its sketchpad
    samples on the same frame): capitals fill baseline to cap line, lowercase stops at the dashed line. With the
    guides people size the two cases as the model learned them, which is what tells о from О and с from С. The
    guides are the background, not a layer: the model and the feedback store read only the strokes (the layers'
    alpha), so the lines never count as ink. Cached: one sheet serves every reset of every session.
    """
    w, h = size
    img = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(img)
    margin = round(0.06 * w)
    y_base, y_x, y_cap = (round(h * f) for f in (BASELINE, BASELINE - X_HEIGHT, BASELINE - CAP_HEIGHT))
    draw.line([(margin, y_base), (w - margin, y_base)], fill=(150, 156, 168), width=3)
    draw.line([(margin, y_cap), (w - margin, y_cap)], fill=(205, 209, 216), width=2)
    dash = max(6, w // 40)
    for x in range(margin, w - margin, 2 * dash):
        draw.line([(x, y_x), (min(x + dash, w - margin), y_x)], fill=(185, 190, 200), width=2)
    return img


def blank_canvas() -> dict[str, Any]:
    """A fresh Sketchpad value: the guides and no strokes."""
    return {"background": guide_lines(), "layers": [], "composite": None}
