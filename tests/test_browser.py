"""A person at the sketchpad: headless Chromium draws a letter with mouse strokes, reads the prediction, submits,
and the sample is found in the (real S3) feedback store. Screenshots are saved as test artifacts (and to
``$UKR_HW_SCREENSHOT_DIR`` when set)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from ukr_hw import stack
from ukr_hw.feedback import FeedbackStore
from ukr_hw.settings import get_settings

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
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


def save_shot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=False)
    extra = os.environ.get("UKR_HW_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


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
                    draw(page, letter_paths(symbol, upper))
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
                        records = [store.read(r)[1] for r in store.list_since(None)]
                        if any((r["symbol"], r["is_uppercase"]) == expected for r in records):
                            break
                        time.sleep(0.3)
                    else:
                        pytest.fail(f"sample {expected} not found in the store: {records}")
                    page.close()
            finally:
                browser.close()
    finally:
        app.close()
    assert len(store.list_since(None)) == 2
    assert (tmp_path / "ui-light.png").stat().st_size > 10_000
