"""Synthetic data: font-rendered glyphs and stroke-drawn sketchpad canvases, both through the one preprocess."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from ukr_hw.data import fonts, strokes
from ukr_hw.labels import CASE_LOWER, CASE_NONE, CASE_UPPER, LETTERS, SYMBOLS, index_of
from ukr_hw.preprocess import preprocess
from ukr_hw.settings import get_settings

ALL_CHARS = set("0123456789") | set(LETTERS) | {c.upper() for c in LETTERS}


@pytest.fixture(scope="module")
def font_list() -> list:
    found = fonts.list_fonts(get_settings(), full_only=True)
    if not found:
        pytest.skip("no covering fonts installed: apt-get install $(cat deploy/fonts.txt)")
    return found


@pytest.fixture(scope="module")
def font_samples(font_list):
    """Two full fonts × 4 variants of a handful of symbols, rendered in-process."""
    return fonts.render_font_glyphs(
        get_settings(), fonts=font_list[:2], per_symbol=4, seed=7, symbols=["к", "ш", "ю", "ї", "3"], workers=1
    )


# ---------------------------------------------------------------------------------------------------------------
# fonts


def test_fonts_discovered_cover_the_alphabet(font_list) -> None:
    assert font_list == sorted(font_list, key=lambda p: (p.stem, str(p)))
    for path in font_list:
        cov = fonts.font_coverage(path)
        assert cov == set(fonts.GLYPH_KEYS), f"{path.name} lacks {set(fonts.GLYPH_KEYS) - cov}"
        assert {fonts.glyph_char(*k) for k in cov} == ALL_CHARS


def test_font_exclude_and_missing_dirs(tmp_path, caplog, font_list) -> None:
    held = font_list[0].stem
    kept = fonts.list_fonts(get_settings(font_exclude=[held]), full_only=True)
    assert held not in {p.stem for p in kept}
    with caplog.at_level(logging.WARNING):
        none = fonts.list_fonts(get_settings(font_dirs=[tmp_path / "nothing-here"]))
        samples = fonts.render_font_glyphs(get_settings(font_dirs=[tmp_path / "nothing-here"]), workers=1)
    assert none == [] and len(samples) == 0
    assert "deploy/fonts.txt" in caplog.text


def test_rendered_font_samples_have_labels_case_and_preprocessed_pixels(font_samples) -> None:
    s = font_samples
    # 2 fonts × (4 letters × 2 cases + 1 digit) × 4 variants
    assert len(s) == 2 * (4 * 2 + 1) * 4
    assert set(s.source) == {"font"}
    assert s.x.shape[1:] == (28, 28) and s.x.dtype == np.uint8
    for sid, y, case in zip(s.id, s.y, s.case, strict=True):
        _, _, sym, tag, _ = sid.split("/")
        assert y == index_of(sym)
        assert case == {"U": CASE_UPPER, "L": CASE_LOWER, "D": CASE_NONE}[tag]
    assert set(s.case[s.y == index_of("3")]) == {CASE_NONE}
    # MNIST-style output of preprocess: ink on black, fitted to 20×20 → border empty, sensible mean
    assert s.x[:, :2, :].max() == 0 and s.x[:, :, -2:].max() == 0
    mean = s.x.astype(np.float32).mean(axis=(1, 2)) / 255
    assert 0.05 < mean.mean() < 0.4 and mean.min() > 0.01
    assert (s.ink > 0).all() and (s.ink <= 1).all()
    assert len(set(s.id)) == len(s)


def test_lowercase_ink_box_smaller_than_uppercase(font_samples) -> None:
    s = font_samples
    for letter in ("к", "ш", "ю"):
        up = s.ink[(s.y == index_of(letter)) & (s.case == CASE_UPPER), 0].mean()
        low = s.ink[(s.y == index_of(letter)) & (s.case == CASE_LOWER), 0].mean()
        assert low < up * 0.9, (letter, low, up)


def test_font_rendering_is_deterministic(font_list, font_samples) -> None:
    again = fonts.render_font_glyphs(
        get_settings(), fonts=font_list[:2], per_symbol=4, seed=7, symbols=["к", "ш", "ю", "ї", "3"], workers=1
    )
    assert again.digest() == font_samples.digest()
    other = fonts.render_font_glyphs(
        get_settings(), fonts=font_list[:1], per_symbol=1, seed=8, symbols=["к"], workers=1
    )
    first = font_samples.subset(np.isin(font_samples.id, other.id))
    assert len(first) == len(other) and not np.array_equal(first.x, other.x)


# ---------------------------------------------------------------------------------------------------------------
# strokes


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_every_symbol_and_case_draws_ink_inside_the_canvas(symbol) -> None:
    for upper in (None,) if symbol.isdigit() else (True, False):
        paths = strokes.stroke_paths(symbol, upper)
        pts = np.array([p for path in paths for p in path])
        assert len(paths) >= 1 and pts.min() >= 0 and pts.max() <= 1
        canvas = strokes.draw_canvas(symbol, upper, (120, 120), seed=1)
        alpha = np.asarray(canvas)[..., 3]
        assert canvas.mode == "RGBA" and alpha.max() == 255 and (alpha > 0).mean() < 0.5
        assert alpha[0].max() == 0 or alpha[:, 0].max() == 0  # not smeared over the border


def test_lowercase_paths_are_smaller_and_shapes_differ() -> None:
    def height(sym, up):
        pts = np.array([p for path in strokes.stroke_paths(sym, up) for p in path])
        return pts[:, 1].max() - pts[:, 1].min()

    for letter in ("к", "м", "ю", "я", "ш"):
        assert height(letter, False) < 0.7 * height(letter, True)
    clean = {s: strokes.draw_canvas(s, True, (64, 64), width=3, variation=0) for s in ("ю", "о", "і", "ї")}
    arrays = {k: np.asarray(v)[..., 3] for k, v in clean.items()}
    assert not np.array_equal(arrays["і"], arrays["ї"]) and not np.array_equal(arrays["ю"], arrays["о"])


def test_sketchpad_value_light_and_dark_preprocess_alike() -> None:
    light = strokes.sketchpad_value("ю", True, (400, 400), width=12, theme="light", seed=5)
    dark = strokes.sketchpad_value("ю", True, (400, 400), width=12, theme="dark", seed=5)
    assert set(light) == {"background", "layers", "composite"}
    assert light["layers"][0].shape == (400, 400, 4) and light["layers"][0].dtype == np.uint8
    assert tuple(light["background"][0, 0]) == (255, 255, 255, 255)
    assert tuple(dark["background"][0, 0]) == strokes.THEMES["dark"][0]
    assert tuple(dark["composite"][0, 0][:3]) == strokes.THEMES["dark"][0][:3]
    gl, gd = preprocess(light), preprocess(dark)
    assert np.abs(gl.pixels - gd.pixels).mean() < 0.01
    # the composite alone (what a screenshot or a PNG upload gives) preprocesses nearly the same
    gc = preprocess(dark["composite"][..., :3])
    assert np.abs(gc.pixels - gl.pixels).mean() < 0.08


def test_draw_canvas_is_deterministic_and_writers_differ() -> None:
    a = np.asarray(strokes.draw_canvas("я", False, seed=11))
    b = np.asarray(strokes.draw_canvas("я", False, seed=11))
    c = np.asarray(strokes.draw_canvas("я", False, seed=12))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="theme"):
        strokes.draw_canvas("я", False, theme="blue")  # type: ignore[arg-type]


def test_render_stroke_glyphs_labels_and_determinism() -> None:
    s = strokes.render_stroke_glyphs(get_settings(), per_symbol=2, seed=9, symbols=["ю", "к", "7"])
    assert len(s) == (2 * 2 + 1) * 2 and set(s.source) == {"strokes"}
    assert set(s.case[s.y == index_of("7")]) == {CASE_NONE}
    up = s.ink[(s.y == index_of("к")) & (s.case == CASE_UPPER), 0].mean()
    low = s.ink[(s.y == index_of("к")) & (s.case == CASE_LOWER), 0].mean()
    assert low < up
    again = strokes.render_stroke_glyphs(get_settings(), per_symbol=2, seed=9, symbols=["ю", "к", "7"])
    assert again.digest() == s.digest()


@pytest.mark.parametrize("key", sorted(strokes.CURSIVE_FORMS))
def test_cursive_forms_draw_inside_the_canvas_and_differ_from_print(key) -> None:
    upper = None if key.isdigit() else key.isupper()
    for shape in strokes.CURSIVE_FORMS[key]:
        pts = np.array([p for path in strokes.stroke_paths(key, upper, shape) for p in path])
        assert pts.min() >= 0 and pts.max() <= 1
        cursive = np.asarray(strokes.draw_canvas(key, upper, (96, 96), width=4, variation=0, shape=shape))[..., 3]
        own = np.asarray(strokes.draw_canvas(key, upper, (96, 96), width=4, variation=0))[..., 3]
        assert cursive.max() == 255 and not np.array_equal(cursive, own)


def test_cursive_drawings_are_added_to_the_print_ones() -> None:
    """``cursive=k`` adds k drawings per symbol × case that has cursive forms, cycling through them, and leaves
    the print drawings exactly as they were (the same writer seeds)."""
    settings = get_settings()
    kw = {"per_symbol": 2, "seed": 9, "symbols": ["д", "о", "7"]}
    plain = strokes.render_stroke_glyphs(settings, **kw)
    mixed = strokes.render_stroke_glyphs(settings, cursive=3, **kw)
    extra = [i for i in mixed.id if i not in set(plain.id)]
    assert sorted(extra) == sorted(f"strokes/{s}/{t}/c{k}" for s, t in (("д", "L"), ("7", "D")) for k in range(3))
    at = {i: k for k, i in enumerate(mixed.id)}
    assert all(np.array_equal(plain.x[k], mixed.x[at[i]]) for k, i in enumerate(plain.id))
    # the two cursive forms of «д» («g» and «∂») both appear
    d = [mixed.x[at[f"strokes/д/L/c{k}"]] for k in range(2)]
    assert not np.array_equal(d[0], d[1])


def test_unseen_forms_draw_their_own_strokes_for_one_symbol_and_case() -> None:
    """A form the generator's writers never draw (the benchmarks' stand-in for a user's own hand): the same writer
    seed draws other ink than the symbol's built-in shape, and only that symbol and case are rendered."""
    symbol, upper, shape = strokes.UNSEEN_FORMS["4-open"]
    own = np.asarray(strokes.draw_canvas(symbol, upper, seed=5))
    form = np.asarray(strokes.draw_canvas(symbol, upper, seed=5, shape=shape))
    assert form[..., 3].any() and not np.array_equal(own, form)
    s = strokes.render_stroke_glyphs(get_settings(), per_symbol=3, seed=9, form="4-open", source="feedback", cursive=2)
    assert len(s) == 3 and set(s.y) == {index_of("4")} and set(s.case) == {CASE_NONE}
    assert list(s.id) == [f"feedback/4-open/{k}" for k in range(3)]
    with pytest.raises(ValueError, match="unknown form 'x'"):
        strokes.render_stroke_glyphs(get_settings(), per_symbol=1, form="x")


@pytest.mark.parametrize("squared", [False, True])
def test_paper_photo_preprocesses_like_the_sketchpad_drawing(squared: bool) -> None:
    """A phone photo of the drawing on tinted, unevenly lit (squared) paper, blurred and JPEG-compressed, gives
    the sketchpad's glyph: the grid, the light ramp and the noise are not ink."""
    from PIL import Image

    layer = strokes.draw_canvas("ж", False, (800, 800), width=18, seed=3)
    jpeg = strokes.paper_photo(layer, np.random.default_rng(1), squared=squared)
    photo = Image.open(io.BytesIO(jpeg))
    assert photo.format == "JPEG" and photo.size == (800, 800) and photo.mode == "RGB"
    clean = preprocess(strokes.sketchpad_value("ж", False, (800, 800), width=18, seed=3))
    g = preprocess(jpeg)
    assert np.abs(g.pixels - clean.pixels).mean() < 0.02  # measured 0.003-0.005 over 10 photos
    assert np.allclose(g.features, clean.features, atol=0.01)  # same ink box: lowercase stays small


def test_render_paper_glyphs() -> None:
    s = strokes.render_stroke_glyphs(get_settings(), per_symbol=1, seed=9, symbols=["ю", "7"], medium="squared")
    assert len(s) == 3 and s.id[0].startswith("strokes/")
    with pytest.raises(ValueError, match="medium"):
        strokes.render_stroke_glyphs(get_settings(), per_symbol=1, medium="papyrus")  # type: ignore[arg-type]
