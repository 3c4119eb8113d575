"""The one preprocessing path on every kind of input: scans, MNIST digits, canvases, sketchpad values, photos.

The core property: the SAME glyph given as a Rukopys scan, as RGBA strokes on a transparent or coloured canvas,
as a Gradio sketchpad value in a light or a dark theme, as a phone-like photo or as a huge image gives (nearly)
the same 28×28 input.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ukr_hw.preprocess import BOX, SIZE, EmptyImageError, ImageDecodeError, PreprocessError, preprocess

GLYPHS = ("a-0.png", "zh-3.png", "yi-3.png")  # а, ж, ї (a letter with separate dots)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _corr_up_to_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over ±1 px shifts (centring by mass rounds to whole pixels)."""
    return max(_corr(a, np.roll(b, (dy, dx), axis=(0, 1))) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@pytest.fixture(scope="module", params=GLYPHS)
def scan(request, mirror) -> np.ndarray:
    """A Rukopys scan (200×200 grey, black ink on white) as float32 0-255."""
    path = mirror / "rukopys" / "glyphs" / request.param
    if not path.exists():
        pytest.skip(f"{path} not in the mirror")
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def _ink(scan: np.ndarray) -> np.ndarray:
    return 1.0 - scan / 255.0


def _strokes(ink: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """The glyph as strokes (alpha = ink) on a fully transparent canvas."""
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.round(ink * 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def _check_mnist_style(pixels: np.ndarray) -> None:
    assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.max() > 0.9
    rows, cols = np.flatnonzero(pixels.max(1) > 0.05), np.flatnonzero(pixels.max(0) > 0.05)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= BOX  # fitted into 20×20
    cy, cx = ndimage.center_of_mass(pixels)
    assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0  # centred by mass


def test_rukopys_scan(scan):
    g = preprocess(Image.fromarray(scan.astype(np.uint8)))
    _check_mnist_style(g.pixels)
    assert 0.1 < g.ink_height <= 1 and 0.1 < g.ink_width <= 1
    assert g.features.dtype == np.float32 and g.features.tolist() == pytest.approx([g.ink_height, g.ink_width])
    assert g.to_uint8().dtype == np.uint8 and g.to_uint8().max() == 255
    # path, bytes, PIL image and array inputs all agree
    buf = io.BytesIO()
    Image.fromarray(scan.astype(np.uint8)).save(buf, format="PNG")
    assert np.array_equal(preprocess(buf.getvalue()).pixels, g.pixels)
    assert np.array_equal(preprocess(scan.astype(np.uint8)).pixels, g.pixels)


def test_strokes_on_transparent_and_coloured_canvases_match_the_scan(scan):
    ref = preprocess(Image.fromarray(scan.astype(np.uint8))).pixels
    ink = _ink(scan)
    transparent = preprocess(_strokes(ink, (20, 20, 120))).pixels
    assert _corr(ref, transparent) > 0.9
    background, pen = np.array([250, 240, 200], np.float32), np.array([20, 20, 120], np.float32)
    coloured = (background * (1 - ink[..., None]) + pen * ink[..., None]).astype(np.uint8)
    assert _corr(ref, preprocess(Image.fromarray(coloured, "RGB")).pixels) > 0.9
    light_on_dark = (30 + 200 * ink).astype(np.uint8)  # dark theme canvas flattened: light strokes on dark
    assert _corr(ref, preprocess(light_on_dark).pixels) > 0.9


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_sketchpad_value_reads_strokes_from_layers(scan, theme):
    ref = preprocess(Image.fromarray(scan.astype(np.uint8))).pixels
    pen, canvas = ((0, 0, 0), (255, 255, 255, 255)) if theme == "light" else ((255, 255, 255), (24, 24, 27, 255))
    layer = _strokes(_ink(scan), pen)
    background = Image.new("RGBA", layer.size, canvas)
    value = {"background": background, "layers": [layer], "composite": Image.alpha_composite(background, layer)}
    g = preprocess(value)
    _check_mnist_style(g.pixels)
    assert _corr(ref, g.pixels) > 0.9
    # layers as numpy arrays (Gradio's type="numpy") give the same
    as_arrays = {k: ([np.asarray(v) for v in val] if k == "layers" else np.asarray(val)) for k, val in value.items()}
    assert np.allclose(preprocess(as_arrays).pixels, g.pixels, atol=1e-6)


def test_phone_photo_with_uneven_light_and_noise(scan):
    ref = preprocess(Image.fromarray(scan.astype(np.uint8))).pixels
    h, w = 600, 450
    glyph = np.asarray(Image.fromarray(np.uint8(_ink(scan) * 255)).resize((400, 400), Image.BILINEAR)) / 255.0
    ink = np.zeros((h, w))
    ink[100:500, 25:425] = glyph
    yy, xx = np.mgrid[0:h, 0:w]
    light = 110 + 110 * xx / w + 30 * yy / h  # a lamp on one side
    noise = np.random.default_rng(0).normal(0, 8, (h, w))
    photo = np.clip(light * (1 - 0.75 * ink) + noise, 0, 255).astype(np.uint8)
    g = preprocess(Image.fromarray(photo).convert("RGB"))
    _check_mnist_style(g.pixels)
    assert _corr_up_to_shift(ref, g.pixels) > 0.9


def test_huge_image(scan):
    ref = preprocess(Image.fromarray(scan.astype(np.uint8)))
    big = Image.fromarray(scan.astype(np.uint8)).resize((3000, 3000), Image.BILINEAR)
    g = preprocess(big)
    _check_mnist_style(g.pixels)
    assert _corr_up_to_shift(ref.pixels, g.pixels) > 0.9
    assert g.ink_height == pytest.approx(ref.ink_height, abs=0.02)


def test_mnist_digits(mirror):
    from ukr_hw.data.mnist import load_split

    split = load_split(mirror / "mnist", "test")
    corrs = []
    for img in split.images[:30]:
        g = preprocess(img)
        _check_mnist_style(g.pixels)
        corrs.append(_corr_up_to_shift(img / 255.0, g.pixels))
    # MNIST is already MNIST-style: preprocessing changes stroke width a little, not the picture
    assert min(corrs) > 0.4 and np.mean(corrs) > 0.65


def test_ink_box_size_is_kept_for_case(scan):
    """The same glyph drawn smaller on the same canvas keeps its shape but reports a smaller ink box."""
    ink = _ink(scan)
    small = np.zeros_like(ink)
    small[60:160, 60:160] = np.asarray(Image.fromarray(np.uint8(ink * 255)).resize((100, 100), Image.BILINEAR)) / 255
    big_g, small_g = preprocess(_strokes(ink, (0, 0, 0))), preprocess(_strokes(small, (0, 0, 0)))
    assert small_g.ink_height == pytest.approx(big_g.ink_height / 2, rel=0.15)
    assert _corr_up_to_shift(big_g.pixels, small_g.pixels) > 0.85


@pytest.mark.parametrize("where", ["right", "left", "bottom"])
def test_a_ruled_line_beside_the_symbol_is_dropped(scan, where):
    """A form's cell border or a page's margin line across the canvas, beside the symbol, is not part of it
    (three Rukopys scans carry one: k-40, l-40, o-39)."""
    ref = preprocess(Image.fromarray(scan.astype(np.uint8)))
    page = scan.copy()
    if where == "right":
        page[1:199, 186:192] = 0
    elif where == "left":
        page[0:200, 4:9] = 0
    else:
        page[190:194, 2:198] = 0
    g = preprocess(Image.fromarray(page.astype(np.uint8)))
    assert np.array_equal(g.pixels, ref.pixels)
    assert (g.ink_height, g.ink_width) == (ref.ink_height, ref.ink_width)


@pytest.mark.parametrize("x", [20, 100])
def test_a_symbol_spanning_the_canvas_is_not_a_ruled_line(x):
    """A «1» or «І» drawn from edge to edge is the symbol, wherever it stands, and so is the stem of an «і» whose
    dot is the rest of the ink."""
    page = np.full((200, 200), 255, np.uint8)
    page[2:198, x : x + 8] = 0
    alone = preprocess(page)
    assert alone.ink_height > 0.95 and alone.pixels.sum() > 20
    page[4:14, x - 20 : x - 10] = 0  # a dot beside it: far less ink than the stem
    with_dot = preprocess(page)
    assert with_dot.ink_height > 0.95 and with_dot.ink_width == pytest.approx(0.14)  # stem and dot both kept


@pytest.mark.parametrize(
    "blank",
    [
        Image.new("RGBA", (300, 300), (0, 0, 0, 0)),
        Image.new("RGB", (300, 300), "white"),
        Image.new("L", (28, 28), 0),
        {"background": Image.new("RGBA", (300, 300), "white"), "layers": [Image.new("RGBA", (300, 300))]},
        {"background": None, "layers": [], "composite": None},
    ],
    ids=["transparent", "white-page", "black-mnist", "sketchpad-no-strokes", "sketchpad-nothing"],
)
def test_empty_canvas_is_an_empty_image_error(blank):
    with pytest.raises(EmptyImageError, match="draw"):
        preprocess(blank)


def test_faint_noise_alone_is_empty():
    page = np.clip(235 + np.random.default_rng(1).normal(0, 3, (400, 300)), 0, 255).astype(np.uint8)
    with pytest.raises(EmptyImageError):
        preprocess(page)


def test_unreadable_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        preprocess(b"")
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        preprocess(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageDecodeError, match=r"missing\.png"):
        preprocess(tmp_path / "missing.png")
    with pytest.raises(PreprocessError, match="not an image"):
        preprocess(np.zeros((4, 4, 7)))
    with pytest.raises(PreprocessError, match="cannot preprocess a int"):
        preprocess(42)  # type: ignore[arg-type]


def test_size_cue_present_on_a_sheet_absent_in_a_crop() -> None:
    """One rule decides whether a glyph's case may be trained on: a letter drawn on a sheet shows its size, the same
    letter cut to a square around its ink does not (its longer side fills the frame)."""
    from PIL import ImageDraw

    from ukr_hw.preprocess import has_size_cue

    sheet = Image.new("L", (400, 400), "white")
    ImageDraw.Draw(sheet).line([(150, 120), (150, 300), (260, 300)], fill="black", width=14)  # an «L»-like stroke
    drawn = preprocess(np.asarray(sheet))
    assert has_size_cue(drawn.features)

    ink = np.asarray(sheet) < 128
    rows, cols = np.nonzero(ink)
    crop = np.asarray(sheet)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(crop.shape)
    square = np.full((side, side), 255, np.uint8)
    square[: crop.shape[0], : crop.shape[1]] = crop
    cropped = preprocess(square)
    assert not has_size_cue(cropped.features)
    assert _corr_up_to_shift(cropped.pixels, drawn.pixels) > 0.9  # same shape: only the size cue is gone
