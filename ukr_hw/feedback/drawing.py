"""A Gradio Sketchpad value → the PNG the store keeps: the strokes alone, black on a transparent canvas.

The value is read by :func:`ukr_hw.preprocess.sketch_image`, the one reader of sketchpad values, so the stored
picture holds exactly the ink the model is shown (never the theme's canvas colour nor the guide lines).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from ukr_hw.feedback.record import InvalidSample
from ukr_hw.preprocess import sketch_image


def sketch_to_png(value: Mapping[str, Any] | None) -> bytes:
    """A Gradio Sketchpad value → the raw drawing as PNG: black strokes on a transparent canvas.

    The strokes are read from the layers' alpha (the same rule as :mod:`ukr_hw.preprocess`), so the theme's canvas
    colour never leaks into the picture. Raises :class:`InvalidSample` for an empty canvas.
    """
    strokes = sketch_image(value)
    if strokes is None or strokes.getchannel("A").getextrema()[1] == 0:
        raise InvalidSample("the canvas is empty: draw a letter or digit first.")
    buf = io.BytesIO()
    strokes.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
