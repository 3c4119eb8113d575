"""A person at the sketchpad: headless Chromium draws a letter with mouse strokes, reads the prediction, submits,
and the sample is found in the (real S3) feedback store. Screenshots are saved as test artifacts (and to
``$UKR_HW_SCREENSHOT_DIR`` when set)."""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ukr_hw import stack
from ukr_hw.feedback import FeedbackStore
from ukr_hw.settings import get_settings

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage", "--disable-gpu"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def letter_paths(symbol: str, uppercase: bool) -> list[list[tuple[float, float]]]:
    """Pen strokes in unit canvas coordinates (the synthetic-data helper's shapes, else a hand-made Г)."""
    try:
        from ukr_hw.data.strokes import stroke_paths

        return stroke_paths(symbol, uppercase)
    except ImportError:
        return [[(0.3, 0.85), (0.3, 0.15), (0.72, 0.15)]]


def draw(page, paths: list[list[tuple[float, float]]], steps: int = 12) -> None:
    """Mouse strokes on the sketchpad canvas (square drawing area centred in the canvas element)."""
    box = page.locator("#ukr-canvas canvas").first.bounding_box()
    side = min(box["width"], box["height"]) * 0.9
    x0, y0 = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    for path in paths:
        page.mouse.move(x0 + path[0][0] * side, y0 + path[0][1] * side)
        page.mouse.down()
        for (xa, ya), (xb, yb) in itertools.pairwise(path):
            for t in range(1, steps + 1):
                page.mouse.move(x0 + (xa + (xb - xa) * t / steps) * side, y0 + (ya + (yb - ya) * t / steps) * side)
        page.mouse.up()


def ruled_rows(png: bytes) -> list[float]:
    """Heights (0 = top, 1 = bottom) of the grey lines that run across the middle of a canvas screenshot."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    mid = rgb[:, rgb.shape[1] // 5 : 4 * rgb.shape[1] // 5]
    grey = (mid.max(axis=2) - mid.min(axis=2) < 25) & (mid.mean(axis=2) < 235) & (mid.mean(axis=2) > 100)
    rows = np.flatnonzero(grey.mean(axis=1) > 0.3)
    lines = [run for run in np.split(rows, np.flatnonzero(np.diff(rows) > 2) + 1) if run.size]
    return [float(run.mean()) / rgb.shape[0] for run in lines]


def ink_fraction(png: bytes) -> float:
    """Share of the canvas' middle that the blue brush (#2b59c3) covers."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    mid = rgb[rgb.shape[0] // 10 :, rgb.shape[1] // 5 : 4 * rgb.shape[1] // 5]
    return float((np.abs(mid - np.array([43, 89, 195])).max(axis=2) < 40).mean())


def wait_for_guides(page, name: str, tmp_path: Path, timeout: float = 20.0) -> list[float]:
    """The guide rows on the canvas once it has (re)drawn its sheet: the editor repaints its background
    asynchronously after a reset, so one screenshot can catch it halfway. The last shot is kept as ``name``."""
    deadline = time.monotonic() + timeout
    while True:
        shot = page.locator("#ukr-canvas canvas").first.screenshot()
        guides = ruled_rows(shot)
        if len(guides) >= 3 or time.monotonic() > deadline:
            keep(shot, name, tmp_path)
            return guides
        time.sleep(0.5)


def keep(png: bytes, name: str, tmp_path: Path) -> Path:
    """Write a screenshot into the test's folder (and to ``$UKR_HW_SCREENSHOT_DIR`` when set)."""
    path = tmp_path / name
    path.write_bytes(png)
    extra = os.environ.get("UKR_HW_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def save_shot(page, name: str, tmp_path: Path) -> Path:
    return keep(page.screenshot(full_page=False), name, tmp_path)


@pytest.fixture(scope="module")
def api_url(bento_api) -> str:
    """The session's real BentoML server (``ukr-hw serve`` on the champion, tests/fixtures/servers.py)."""
    return bento_api.url


def test_draw_predict_submit(api_url, s3_server, tmp_path):
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("no chromium binary on PATH: install Debian's `chromium` package (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    from services.ui.app import launch

    s3_server.start()
    bucket = s3_server.create_bucket("browser")
    settings = get_settings(
        root=tmp_path,
        feedback_uri=f"s3://{bucket}/fb",
        feedback_spool_dir=tmp_path / "spool",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
    )
    store = FeedbackStore.from_settings(settings)
    port = stack.free_port()
    app = launch(port=port, host="127.0.0.1", api_url=api_url, block=False, settings=settings)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                for theme, (symbol, upper) in (("light", ("г", True)), ("dark", ("т", True))):
                    page = browser.new_page(viewport={"width": 1280, "height": 1000}, color_scheme=theme)
                    page.goto(f"http://127.0.0.1:{port}/?__theme={theme}")
                    page.wait_for_selector("#ukr-canvas canvas", timeout=60_000)
                    brush = page.locator('#ukr-canvas button[aria-label="Brush"]')
                    expect(brush).to_have_class(re.compile("highlight"), timeout=15_000)  # selected on load
                    # writing guides on the sheet: cap line, dashed x-height line, baseline
                    guides = wait_for_guides(page, f"canvas-{theme}-blank.png", tmp_path)
                    assert len(guides) >= 3, f"expected the three writing guides on the canvas, found {guides}"
                    draw(page, letter_paths(symbol, upper))
                    canvas = page.locator("#ukr-canvas canvas").first
                    assert ink_fraction(canvas.screenshot()) > 0.002, "the strokes do not show on the canvas"
                    page.click("#ukr-recognise")
                    glyph = page.locator("#ukr-result .glyph")
                    expect(glyph).to_be_visible(timeout=30_000)
                    predicted = glyph.inner_text().strip()
                    assert len(predicted) == 1
                    expect(page.locator("#ukr-top3")).to_contain_text("%", timeout=10_000)
                    save_shot(page, f"ui-{theme}.png", tmp_path)
                    if theme == "light":
                        page.click("#ukr-confirm")
                        expected = (predicted.lower(), predicted.isupper() if predicted.isalpha() else None)
                    else:  # correct the answer: pick the symbol and the case
                        page.locator("#ukr-symbols label").filter(has_text=symbol).first.click()
                        page.locator("#ukr-case label").filter(has_text="UPPERCASE").click()
                        page.click("#ukr-correct")
                        expected = (symbol, upper)
                    expect(page.locator("#ukr-count")).to_contain_text("contributed 1 drawing", timeout=30_000)
                    expect(page.locator("#ukr-result")).to_contain_text("Saved")  # and the canvas is cleared
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline:
                        samples = [store.read(r) for r in store.list_since(None)]
                        saved = [png for png, r in samples if (r["symbol"], r["is_uppercase"]) == expected]
                        if saved:
                            break
                        time.sleep(0.3)
                    else:
                        pytest.fail(f"sample {expected} not found in the store: {[r for _, r in samples]}")
                    # the stored drawing holds the strokes alone: no guide line runs across it
                    alpha = np.asarray(Image.open(io.BytesIO(saved[0])).convert("RGBA"))[..., 3]
                    assert alpha.any() and (alpha > 0).mean(axis=1).max() < 0.7
                    guides = wait_for_guides(page, f"canvas-{theme}-after-save.png", tmp_path)
                    assert len(guides) >= 3, f"the cleared canvas lost its writing guides: {guides}"
                    assert ink_fraction(canvas.screenshot()) < 0.0005, "the saved strokes are still on the canvas"
                    if theme == "light":  # the next drawing on the same sheet is read, not lost under an overlay
                        expect(page.locator("#ukr-result .glyph")).to_have_count(0)
                        draw(page, letter_paths("п", False))
                        page.click("#ukr-recognise")
                        expect(page.locator("#ukr-result .glyph")).to_be_visible(timeout=30_000)
                    page.close()
            finally:
                browser.close()
    finally:
        app.close()
    assert len(store.list_since(None)) == 2
    assert (tmp_path / "ui-light.png").stat().st_size > 10_000
