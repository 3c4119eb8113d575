"""A contact sheet of feedback drawings (``ukr-hw feedback list --grid``): many samples reviewed at a glance."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from PIL import Image


def sample_grid(
    images: list[bytes],
    captions: list[str] | None = None,
    marked: list[bool] | None = None,
    tile: int = 112,
    columns: int = 10,
) -> Image.Image:
    """Drawings (PNG bytes, strokes on transparent) as one RGB grid image, row by row: each on white in a
    ``tile``-pixel square with its caption under it; ``marked`` ones (e.g. rejected) framed in red."""
    from PIL import ImageDraw, ImageFont

    n = len(images)
    captions = captions or [""] * n
    marked = marked or [False] * n
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    cap_h = 18
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font: Any = None
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        with contextlib.suppress(OSError):
            font = ImageFont.truetype(path, 12)
            break
    if font is None:
        font = ImageFont.load_default()
    for i, data in enumerate(images):
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + cap_h)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            rgba = img.convert("RGBA")
            page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            page.alpha_composite(rgba)
            thumb = page.convert("RGB")
            thumb.thumbnail((tile - 8, tile - 8))
            sheet.paste(thumb, (x0 + (tile - thumb.width) // 2, y0 + (tile - thumb.height) // 2))
        except Exception:  # an unreadable image is shown as a cross, the grid still comes out
            draw.line([(x0 + 8, y0 + 8), (x0 + tile - 8, y0 + tile - 8)], fill="grey", width=2)
            draw.line([(x0 + tile - 8, y0 + 8), (x0 + 8, y0 + tile - 8)], fill="grey", width=2)
        draw.rectangle(
            [x0, y0, x0 + tile - 1, y0 + tile - 1],
            outline="red" if marked[i] else (220, 220, 220),
            width=3 if marked[i] else 1,
        )
        draw.text((x0 + 4, y0 + tile + 2), captions[i][:24], fill="red" if marked[i] else "black", font=font)
    return sheet
