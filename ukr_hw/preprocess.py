"""ONE preprocessing path from any drawing or scan to the model's 28×28 input.

Used by data prep, training, serving, the CLI and the UI alike, so what the model sees at serving time is what it
saw in training. Accepted inputs:

* a Rukopys scan (200×200, black ink on white), an MNIST digit (28×28, white on black),
* a browser canvas (RGBA strokes on a transparent or coloured background, any size),
* the Gradio Sketchpad value ``{"background", "layers", "composite"}`` (strokes read from the layers' alpha, so
  light and dark themes give the same picture),
* a phone-photo-like grey image (uneven lighting, noise),

given as a path, bytes, a PIL image, a numpy array or that dict. The steps:

1. **ink map** in [0, 1]: alpha for strokes on a transparent canvas, otherwise the contrast against a *local*
   background estimate (handles both polarities and uneven lighting);
2. **clean**: contrast-normalise, drop faint noise, tiny specks (but keep the dots of ї/й) and ruled lines beside the
   symbol (a form's cell border, a page's margin line);
3. **crop** to the ink and remember the ink box's size relative to the canvas (a real signal for case);
4. **stroke width**: thicken thin pens / thin thick brushes towards one width relative to the glyph size;
5. **fit** into 20×20 keeping the aspect ratio and **centre by centre of mass** in 28×28 (MNIST style).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

#: Bumped whenever the pixels or the features this module makes change. Logged models record the version they were
#: trained on (``config.json``), and loading one made for another version warns: its inputs would be skewed.
VERSION = 2
SIZE = 28  #: side of the model input
BOX = 20  #: the ink is fitted into a BOX×BOX square, as in MNIST
WORK_SIDE = 512  #: larger inputs are shrunk to this before analysis (speed; ratios are kept)
STROKE_SIDE = 80  #: the crop is resampled to this longest side for stroke-width normalisation
TARGET_STROKE = 0.11  #: stroke width as a fraction of the glyph's longest side (MNIST's typical value)
MIN_CONTRAST = 0.12  #: below this the image counts as blank
SPECK_FRACTION = 0.004  #: ink components lighter than this share of all ink are dropped as specks
#: A ruled line is a straight ink component at least RULE_SPAN of the canvas long, at most RULE_WIDTH of it wide, whose
#: centre lies in the outer RULE_BAND of the canvas across it, next to a symbol holding at least RULE_REST of the ink.
RULE_SPAN, RULE_WIDTH, RULE_BAND, RULE_REST = 0.9, 0.07, 0.3, 0.3

ImageSource = str | Path | bytes | Image.Image | np.ndarray | Mapping[str, Any]


class PreprocessError(ValueError):
    """The input cannot be turned into a model input; the message says why and what to do."""


class ImageDecodeError(PreprocessError):
    """The bytes or file are not a readable image."""


class EmptyImageError(PreprocessError):
    """The image holds no ink (a blank canvas or page)."""


@dataclass(frozen=True)
class Glyph:
    """A preprocessed symbol: MNIST-style pixels and the ink box relative to its canvas."""

    pixels: np.ndarray  #: (28, 28) float32 in [0, 1], ink = 1 on a 0 background
    ink_height: float  #: ink box height / canvas height, in (0, 1]
    ink_width: float  #: ink box width / canvas width, in (0, 1]

    @property
    def features(self) -> np.ndarray:
        """The geometry features the case head may use: ``[ink_height, ink_width]`` as float32."""
        return np.array([self.ink_height, self.ink_width], dtype=np.float32)

    def to_uint8(self) -> np.ndarray:
        """Pixels as uint8 (0-255), the compact storage form."""
        return np.round(self.pixels * 255).astype(np.uint8)

    def to_image(self) -> Image.Image:
        return Image.fromarray(self.to_uint8(), mode="L")


# --------------------------------------------------------------------------------------------------------------
# Decoding


def decode(data: bytes, *, name: str = "image") -> Image.Image:
    """Decode bytes into a PIL image, with an error that names the problem instead of a PIL traceback."""
    if not data:
        raise ImageDecodeError(f"{name} is empty (0 bytes); send a PNG, JPEG or WebP file.")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(
            f"{name} is not a readable image ({exc.__class__.__name__}: {exc}); send a complete PNG, JPEG or WebP file."
        ) from exc
    return ImageOps.exif_transpose(img) or img


def sketch_image(value: Mapping[str, Any] | None) -> Image.Image | None:
    """THE reader of a Gradio Sketchpad/ImageEditor value ``{"background", "layers", "composite"}``: its strokes as
    one RGBA image, black ink whose alpha is the highest alpha of any layer at that pixel.

    Only the layers count (so the theme's canvas colour and a background of guide lines never count as ink); a
    layer may be a PIL image, an array, bytes or a path, and layers of another size than the first are left out.
    None when the value has no layers; a fully transparent image when its layers hold no ink. The model input
    (:func:`ink_map`) and the feedback store's PNG (:func:`ukr_hw.feedback.sketch_to_png`) both read it here.
    """
    layers = [] if not value else [_to_pil(layer) for layer in (value.get("layers") or []) if layer is not None]
    alphas = [a for a in (np.asarray(layer.convert("RGBA"))[..., 3] for layer in layers) if a.size]
    if not alphas:
        return None
    alpha = np.max([a for a in alphas if a.shape == alphas[0].shape], axis=0).astype(np.uint8)
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    return Image.fromarray(rgba, mode="RGBA")


def _from_sketchpad(value: Mapping[str, Any]) -> tuple[np.ndarray | None, Image.Image | None]:
    """Ink from a Gradio Sketchpad/ImageEditor value (:func:`sketch_image`), else its composite or background."""
    strokes = sketch_image(value)
    if strokes is not None:
        alpha = np.asarray(strokes.getchannel("A"), dtype=np.float32) / 255.0
        if alpha.max() > 0:
            return alpha, None
    for key in ("composite", "background"):
        if value.get(key) is not None:
            img = _to_pil(value[key])
            if strokes is not None:  # layers exist but hold nothing: the background alone is a blank canvas
                return None, img if key == "composite" and value.get("background") is None else None
            return None, img
    return None, None


def _to_pil(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
            arr = np.clip(np.nan_to_num(arr.astype(np.float32)) * scale, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise PreprocessError(f"array of shape {source.shape} is not an image; expected H×W, H×W×3 or H×W×4.")
        return Image.fromarray(arr)
    if isinstance(source, bytes | bytearray | memoryview):
        return decode(bytes(source))
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"cannot read {path}: {exc.strerror or exc}; check the path.") from exc
        return decode(data, name=str(path))
    raise PreprocessError(f"cannot preprocess a {type(source).__name__}; pass a path, bytes, PIL image or array.")


# --------------------------------------------------------------------------------------------------------------
# Ink map


def _shrink(img: Image.Image) -> Image.Image:
    if max(img.size) > WORK_SIDE:
        img = img.copy()
        img.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    return img


def _alpha_ink(img: Image.Image) -> np.ndarray | None:
    """Strokes on a (partly) transparent canvas: alpha is the ink. None when the image is opaque."""
    if img.mode not in ("RGBA", "LA", "PA") and not (img.mode == "P" and "transparency" in img.info):
        return None
    alpha = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
    if (alpha < 0.02).mean() < 0.3:  # mostly opaque: a picture with some transparency, not strokes
        return None
    return alpha


def _contrast_ink(grey: np.ndarray) -> np.ndarray:
    """Ink as contrast against a local background: dark-on-light or light-on-dark, uneven light allowed."""
    h, w = grey.shape
    ring = max(1, min(h, w) // 20)
    border = np.concatenate(
        [grey[:ring].ravel(), grey[-ring:].ravel(), grey[:, :ring].ravel(), grey[:, -ring:].ravel()]
    )
    light_background = np.median(border) >= 127
    # The background is the envelope that the (thin) strokes do not reach: a max (or min) filter wider than a
    # stroke, smoothed. For small images (MNIST) the border median is exact enough and much cheaper.
    if min(h, w) >= 64:
        k = max(3, min(h, w) // 8) | 1
        envelope = (ndimage.maximum_filter if light_background else ndimage.minimum_filter)(grey, size=k)
        background = ndimage.uniform_filter(envelope, size=k)
    else:
        background = np.full_like(grey, np.median(border))
    if light_background:
        return np.clip((background - grey) / np.maximum(background, 1.0), 0, 1)
    return np.clip((grey - background) / np.maximum(255.0 - background, 1.0), 0, 1)


def ink_map(source: ImageSource) -> np.ndarray:
    """Raw ink intensity in [0, 1] (1 = ink) at the input's own resolution (shrunk if huge)."""
    if isinstance(source, Mapping):
        ink, img = _from_sketchpad(source)
        if ink is not None:
            return ink if max(ink.shape) <= WORK_SIDE else _resize(ink, WORK_SIDE / max(ink.shape))
        if img is None:
            raise EmptyImageError("the canvas is empty: draw a letter or digit first.")
    else:
        img = _to_pil(source)
    img = _shrink(img)
    alpha = _alpha_ink(img)
    if alpha is not None:
        return alpha
    if img.mode in ("RGBA", "LA", "PA", "P"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(flat, rgba)
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    return _contrast_ink(grey)


# --------------------------------------------------------------------------------------------------------------
# Cleaning, cropping, stroke width, fitting


def _clean(ink: np.ndarray) -> np.ndarray:
    """Contrast-normalise, cut faint noise, drop specks; raise EmptyImageError if nothing is left."""
    if ink.size == 0:
        raise EmptyImageError("the image has no pixels.")
    contrast = float(np.percentile(ink, 99.8)) if ink.size > 400 else float(ink.max())
    if contrast < MIN_CONTRAST:
        raise EmptyImageError(
            "no ink found in the image (blank canvas or page): draw or write a symbol with a clearly darker "
            "(or lighter) pen than the background."
        )
    ink = np.clip((ink / contrast - 0.25) / 0.75, 0, 1)
    mask = ink > 0.2
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        mass = ndimage.sum(ink, labels, index=np.arange(1, n + 1))
        keep = np.ones(n + 1, dtype=bool)  # label 0 = faint pixels outside any stroke: kept (anti-aliasing)
        keep[1:] = mass >= SPECK_FRACTION * mass.sum()
        rules = _ruled_lines(labels, ink.shape)
        if rules.any() and mass[~rules].sum() >= RULE_REST * mass.sum():
            keep[1:] &= ~rules
        ink = ink * keep[labels]
    if not (ink > 0.2).any():
        raise EmptyImageError("no ink found in the image: draw or write a symbol first.")
    return ink.astype(np.float32)


def _ruled_lines(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which components (labels 1…n) are ruled lines: long, thin and off-centre, across the whole canvas.

    Three Rukopys scans carry the border of the form's next cell as a bar beside the letter, and a photo of a page
    can carry its margin line; either would be cropped with the symbol and squeeze it into a corner of the 28×28 input.
    A symbol's own strokes seldom match: they stand inside the canvas, and a symbol that spans it edge to edge (a «1»
    or an «І») holds most of the ink, so the caller's RULE_REST check keeps it.
    """
    h, w = shape
    out = []
    for sl in ndimage.find_objects(labels):
        rows, cols = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        cy, cx = (sl[0].start + sl[0].stop) / 2 / h, (sl[1].start + sl[1].stop) / 2 / w
        upright = rows >= RULE_SPAN * h and cols <= RULE_WIDTH * w and abs(cx - 0.5) >= 0.5 - RULE_BAND
        lying = cols >= RULE_SPAN * w and rows <= RULE_WIDTH * h and abs(cy - 0.5) >= 0.5 - RULE_BAND
        out.append(upright or lying)
    return np.array(out, dtype=bool)


def _resize(a: np.ndarray, scale: float) -> np.ndarray:
    h, w = a.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, method), dtype=np.float32)


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask, in pixels: area / (half the boundary length)."""
    area = float(mask.sum())
    if area == 0:
        return 0.0
    boundary = float((mask & ~ndimage.binary_erosion(mask)).sum())  # every pixel, for strokes of width <= 2
    return 2.0 * area / max(boundary, 1.0)


def _normalize_stroke(crop: np.ndarray) -> np.ndarray:
    """Resample to STROKE_SIDE and thicken/thin the strokes towards TARGET_STROKE × glyph size."""
    crop = _resize(crop, STROKE_SIDE / max(crop.shape))
    width = stroke_width(crop > 0.5)
    target = TARGET_STROKE * STROKE_SIDE
    if width <= 0:
        return crop
    radius = round((target - width) / 2)
    pad = abs(radius) + 1
    crop = np.pad(crop, pad)
    if radius > 0:
        crop = ndimage.grey_dilation(crop, footprint=_disk(radius))
    elif radius < 0:
        # thin thick brushes, but never more than halfway, so strokes survive
        radius = max(radius, -int(width / 4))
        if radius < 0:
            crop = ndimage.grey_erosion(crop, footprint=_disk(-radius))
    return crop


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r + r


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _fit_and_centre(crop: np.ndarray) -> np.ndarray:
    """Fit into BOX×BOX keeping aspect ratio, then centre by mass in SIZE×SIZE."""
    top, bottom, left, right = _bbox(crop > 0.05)
    crop = crop[top:bottom, left:right]
    small = np.clip(_resize(crop, BOX / max(crop.shape)), 0, 1)
    h, w = small.shape
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    total = small.sum()
    if total > 0:
        cy, cx = ndimage.center_of_mass(small)
    else:
        cy, cx = (h - 1) / 2, (w - 1) / 2
    y0 = int(np.clip(round(SIZE / 2 - 0.5 - cy), 0, SIZE - h))
    x0 = int(np.clip(round(SIZE / 2 - 0.5 - cx), 0, SIZE - w))
    out[y0 : y0 + h, x0 : x0 + w] = small
    return out


#: An ink box whose longer side spans at least this share of its frame fills it: the frame is a crop, not a sheet.
FILLS_FRAME = 0.95


def has_size_cue(ink: np.ndarray | tuple[float, float]) -> bool:
    """Whether a glyph's ink box (``[ink_height, ink_width]``) tells how big the symbol was written.

    A drawing on the sketchpad's sheet or a scan with margins leaves room around the ink, so its size says upper or
    lower case; a crop cut to the ink fills its frame and shows only the shape.
    """
    return max(float(ink[0]), float(ink[1])) < FILLS_FRAME


def preprocess(source: ImageSource) -> Glyph:
    """Any drawing or scan → :class:`Glyph` (28×28 MNIST-style pixels + relative ink box).

    Raises :class:`ImageDecodeError` for unreadable input and :class:`EmptyImageError` when there is no ink.
    """
    raw = ink_map(source)
    ink = _clean(raw)
    top, bottom, left, right = _bbox(ink > 0.2)
    canvas_h, canvas_w = ink.shape
    crop = ink[top:bottom, left:right]
    pixels = _fit_and_centre(_normalize_stroke(crop))
    return Glyph(
        pixels=pixels,
        ink_height=(bottom - top) / canvas_h,
        ink_width=(right - left) / canvas_w,
    )


def preprocess_many(sources: list[ImageSource]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess a list into stacked arrays ``(pixels (N,28,28) float32, features (N,2) float32)``."""
    glyphs = [preprocess(s) for s in sources]
    if not glyphs:
        return np.zeros((0, SIZE, SIZE), np.float32), np.zeros((0, 2), np.float32)
    return np.stack([g.pixels for g in glyphs]), np.stack([g.features for g in glyphs])
