"""The Gradio UI end to end: ``ukr-hw up`` runs the real BentoML API (tiny champion) and the UI; ``gradio_client``
drives predict / confirm / correct; samples land in a real S3 server (SeaweedFS) with the right JSON records."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_feedback import letter_png
from ukr_hw import stack
from ukr_hw.api_client import ApiClient
from ukr_hw.feedback import FeedbackStore
from ukr_hw.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path
    api_url: str
    ui_url: str
    settings: Settings  # what the UI process sees (feedback store on S3)

    def store(self) -> FeedbackStore:
        return FeedbackStore.from_settings(self.settings)


def _env(tmp: Path, s3, bucket: str, api_port: int, ui_port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "UKR_HW_API_HOST": "127.0.0.1",
        "UKR_HW_API_PORT": str(api_port),
        "UKR_HW_UI_HOST": "127.0.0.1",
        "UKR_HW_UI_PORT": str(ui_port),
        "UKR_HW_FEEDBACK_URI": f"s3://{bucket}/ui",
        "UKR_HW_FEEDBACK_SPOOL_DIR": str(tmp / "spool"),
        "UKR_HW_S3_ENDPOINT_URL": s3.endpoint_url,
        "UKR_HW_S3_ACCESS_KEY_ID": s3.access_key,
        "UKR_HW_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TORCH_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _start_up(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "ukr_hw.cli", "up"],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def running(champion_model, s3_server, tmp_path_factory) -> Running:
    """``ukr-hw up`` with a champion present (no training), feedback to a fresh S3 bucket."""
    tmp = tmp_path_factory.mktemp("ui")
    s3_server.start()
    bucket = s3_server.create_bucket("ui")
    api_port, ui_port = stack.free_ports(2)
    env = _env(tmp, s3_server, bucket, api_port, ui_port)
    log = tmp / "up.log"
    proc = _start_up(env, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "UI ready" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stack.kill_group(proc.pid, timeout=20, wait=proc.wait)
            pytest.fail(f"`ukr-hw up` did not get ready (code {proc.returncode}):\n{stack.log_tail(log, 60)}")
        time.sleep(0.5)
    settings = get_settings(
        feedback_uri=f"s3://{bucket}/ui",
        feedback_spool_dir=tmp / "spool",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
    )
    running = Running(proc, log, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}", settings)
    yield running
    if proc.poll() is None:
        stack.kill_group(proc.pid, timeout=30, wait=proc.wait)


def _sketch(path: Path) -> dict:
    from gradio_client import handle_file

    return {"background": None, "layers": [handle_file(str(path))], "composite": handle_file(str(path)), "id": None}


def _value(out):
    """A plain value from an output (gradio_client hands ``gr.update(...)`` outputs over as dicts)."""
    return out.get("value") if isinstance(out, dict) and out.get("__type__") == "update" else out


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def test_up_prints_both_urls(running: Running, champion_model):
    text = running.log.read_text()
    assert f"API ready: {running.api_url}" in text and f"UI ready:  {running.ui_url}" in text
    assert f"v{champion_model.version}" in text
    assert ApiClient(running.api_url).ready()


def test_predict_confirm_and_correct_store_samples_in_s3(running: Running, champion_model, tmp_path):
    png = tmp_path / "g.png"
    png.write_bytes(letter_png())
    expected = ApiClient(running.api_url).classify(png.read_bytes())
    client = _client(running.ui_url)
    assert {"/predict", "/confirm", "/correct"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )

    # predict: the big symbol, top-3 bars, and the correction controls preset to the prediction
    html, top3, symbol, case = (_value(o) for o in client.predict(_sketch(png), api_name="/predict"))
    assert symbol == expected["label"]
    assert case == (None if expected["is_uppercase"] is None else ("upper" if expected["is_uppercase"] else "lower"))
    assert len(top3["confidences"]) == 3
    probs = [c["confidence"] for c in top3["confidences"]]
    assert probs == sorted(probs, reverse=True) and abs(probs[0] - expected["top"][0]["probability"]) < 1e-6
    assert f"model v{champion_model.version}" in html

    # confirm: stored with the predicted symbol and case; canvas cleared to the guides; the session count shows 1
    out = client.predict(_sketch(png), api_name="/confirm")
    sketch_after, count_text = _value(out[0]), _value(out[-1])
    assert sketch_after["layers"] == [] and sketch_after["composite"] is None
    assert sketch_after["background"]["path"]  # the lined sheet
    assert "**1** drawing " in count_text
    store = running.store()
    (first,) = store.list_since(None)
    data, record = store.read(first)
    assert data == png.read_bytes()  # the raw drawing, exactly as drawn (strokes on transparent)
    assert record["symbol"] == expected["label"]
    assert record["is_uppercase"] == expected["is_uppercase"]
    assert record["predicted_symbol"] == expected["label"]
    assert record["model_version"] == str(champion_model.version)
    assert record["client_id"] and len(record["client_id"]) >= 16
    assert record["mode"] == "any"  # the default choice: every symbol

    # correct: the user says it is an uppercase Ї
    client.predict(_sketch(png), api_name="/predict")
    out = client.predict(_sketch(png), "ї", "upper", api_name="/correct")
    assert "**2** drawings" in _value(out[-1])
    refs = store.list_since(None)
    assert len(refs) == 2
    _, fixed = store.read(refs[-1])
    assert (fixed["symbol"], fixed["is_uppercase"]) == ("ї", True)
    assert fixed["predicted_symbol"] == expected["label"]
    assert fixed["client_id"] == record["client_id"]  # one session, one random id

    # a digit correction drops the case, whatever the case control says
    client.predict(_sketch(png), api_name="/predict")
    client.predict(_sketch(png), "7", "upper", api_name="/correct")
    _, digit = store.read(store.list_since(None)[-1])
    assert (digit["symbol"], digit["is_uppercase"]) == ("7", None)

    # another browser session gets another client id and its own count
    other = _client(running.ui_url)
    other.predict(_sketch(png), api_name="/predict")
    out = other.predict(_sketch(png), api_name="/confirm")
    assert "**1** drawing " in _value(out[-1])
    ids = {store.read(r)[1]["client_id"] for r in store.list_since(None)}
    assert len(ids) == 2


def test_the_letters_digits_choice_is_applied_and_stored(running: Running, tmp_path):
    """The "Letters / Digits / Any" choice goes to the API with the drawing, shows on the answer, and is stored with
    the sample: the mode the prediction was read under (the choice itself when nothing was recognised)."""
    from ukr_hw.labels import DIGITS, LETTERS

    png = tmp_path / "g.png"
    png.write_bytes(letter_png())
    store = running.store()
    before = {r.sample_id for r in store.list_since(None)}

    def new_records() -> list[dict]:
        refs = [r for r in store.list_since(None) if r.sample_id not in before]
        before.update(r.sample_id for r in refs)
        return [store.read(r)[1] for r in refs]

    client = _client(running.ui_url)
    expected = ApiClient(running.api_url).classify(png.read_bytes(), mode="digits")
    html, top3, symbol, case = (_value(o) for o in client.predict(_sketch(png), "digits", api_name="/predict"))
    assert symbol == expected["label"] and symbol in DIGITS and case is None  # a digit has no case
    assert all(c["label"] in DIGITS for c in top3["confidences"])
    assert "digits only" in html
    client.predict(_sketch(png), "digits", api_name="/confirm")
    (record,) = new_records()
    assert (record["symbol"], record["is_uppercase"], record["mode"]) == (symbol, None, "digits")
    assert record["predicted_symbol"] == symbol

    # letters: the correction records the mode the prediction was read under
    html, top3, symbol, _ = (_value(o) for o in client.predict(_sketch(png), mode="letters", api_name="/predict"))
    assert symbol in LETTERS and all(c["label"].lower() in LETTERS for c in top3["confidences"])
    assert "letters only" in html
    client.predict(_sketch(png), "г", "upper", "letters", api_name="/correct")
    (record,) = new_records()
    assert (record["symbol"], record["is_uppercase"], record["mode"]) == ("г", True, "letters")
    assert record["predicted_symbol"] == symbol

    # a correction with nothing recognised first: the choice on screen is what is stored
    client.predict(_sketch(png), "7", None, "digits", api_name="/correct")
    (record,) = new_records()
    assert (record["symbol"], record["mode"], record["predicted_symbol"]) == ("7", "digits", None)

    # "can't tell": a letter saved without a case (it trains the symbol head only)
    client.predict(_sketch(png), "г", "unsure", "letters", api_name="/correct")
    (record,) = new_records()
    assert (record["symbol"], record["is_uppercase"], record["case_known"]) == ("г", None, False)


def test_clear_messages_for_bad_requests(running: Running, tmp_path):
    from gradio_client.exceptions import AppError

    client = _client(running.ui_url)
    empty = {"background": None, "layers": [], "composite": None, "id": None}
    with pytest.raises(AppError, match="Draw a letter first"):
        client.predict(empty, api_name="/predict")
    png = tmp_path / "g.png"
    png.write_bytes(letter_png())
    with pytest.raises(AppError, match="Press Recognise first"):
        client.predict(_sketch(png), api_name="/confirm")
    with pytest.raises(AppError, match="Pick the symbol"):
        client.predict(_sketch(png), None, None, api_name="/correct")
    with pytest.raises(AppError, match="UPPERCASE or lowercase"):
        client.predict(_sketch(png), "г", None, api_name="/correct")


def test_not_one_symbol_is_said_in_the_sketchpad(running: Running, tmp_path):
    """Scribbled noise over the canvas: the API abstains (422), and the sketchpad says so in the answer panel, with
    no guess, no top-3 and nothing to confirm; the symbol grid stays for a user who did draw one symbol."""
    import html

    import numpy as np
    from gradio_client.exceptions import AppError
    from PIL import Image

    from ukr_hw.model.abstain import MESSAGE

    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (400, 400, 4), dtype=np.uint8), "RGBA").save(noise)
    client = _client(running.ui_url)
    shown, top3, symbol, case = (_value(o) for o in client.predict(_sketch(noise), api_name="/predict"))
    assert html.escape(MESSAGE) in shown and "model v" not in shown
    assert not top3 or not top3.get("confidences")
    assert symbol is None and case is None
    with pytest.raises(AppError, match="Press Recognise first"):  # no guess was kept to confirm
        client.predict(_sketch(noise), api_name="/confirm")


def test_api_down_is_explained(tmp_path):
    """The UI in-process, pointed at a port where nothing listens."""
    from gradio_client.exceptions import AppError

    from services.ui.app import launch

    settings = get_settings(root=tmp_path, feedback_uri="feedback")
    dead = f"http://127.0.0.1:{stack.free_port()}"
    port = stack.free_port()
    app = launch(port=port, host="127.0.0.1", api_url=dead, block=False, settings=settings)
    try:
        png = tmp_path / "g.png"
        png.write_bytes(letter_png())
        with pytest.raises(AppError, match="recognition service is not reachable"):
            _client(f"http://127.0.0.1:{port}").predict(_sketch(png), api_name="/predict")
    finally:
        app.close()


def test_up_stops_both_on_ctrl_c(running: Running):
    api_port, ui_port = int(running.api_url.rsplit(":", 1)[1]), int(running.ui_url.rsplit(":", 1)[1])
    running.proc.send_signal(signal.SIGINT)
    assert running.proc.wait(timeout=60) == 0, stack.log_tail(running.log, 40)
    assert not stack.port_in_use(api_port) and not stack.port_in_use(ui_port)
    assert "stopped" in running.log.read_text()


def test_up_exits_nonzero_when_a_service_dies(champion_model, s3_server, tmp_path):
    """The UI dies at start (a feedback URI without a bucket): `up` stops the API and exits non-zero."""
    api_port, ui_port = stack.free_ports(2)
    env = _env(tmp_path, s3_server, "unused", api_port, ui_port, UKR_HW_FEEDBACK_URI="s3://")
    log = tmp_path / "up.log"
    proc = _start_up(env, log)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            stack.kill_group(proc.pid, timeout=20, wait=proc.wait)
    assert code == 1, stack.log_tail(log, 40)
    assert "UI exited" in log.read_text()
    assert not stack.port_in_use(api_port)


def test_canvas_guides_stand_on_the_training_frame_and_never_count_as_ink():
    import numpy as np
    from PIL import Image

    from services.ui.app import CANVAS, blank_canvas, guide_lines
    from ukr_hw.data.strokes import BASELINE, CAP_HEIGHT, X_HEIGHT, draw_canvas
    from ukr_hw.feedback import InvalidSample, sketch_to_png
    from ukr_hw.preprocess import preprocess

    sheet = np.asarray(guide_lines().convert("L"), dtype=np.int16)
    assert sheet.shape == (CANVAS[1], CANVAS[0])
    ruled = np.flatnonzero((sheet[:, CANVAS[0] // 4 : 3 * CANVAS[0] // 4] < 240).mean(axis=1) > 0.3) / CANVAS[1]
    frame = np.array([BASELINE, BASELINE - X_HEIGHT, BASELINE - CAP_HEIGHT])  # baseline, dashed x-line, cap line
    distance = np.abs(ruled[:, None] - frame[None, :])
    assert (distance.min(axis=0) < 0.01).all(), ruled  # each guide is drawn ...
    assert (distance.min(axis=1) < 0.01).all(), ruled  # ... and nothing else is ruled

    value = blank_canvas()
    with pytest.raises(InvalidSample, match="empty"):  # guides alone are an empty canvas
        sketch_to_png(value)
    layer = draw_canvas("о", False, CANVAS, seed=3)
    value["layers"] = [layer]
    png = sketch_to_png(value)
    stored = np.asarray(Image.open(io.BytesIO(png)))[..., 3]
    np.testing.assert_array_equal(stored, np.asarray(layer)[..., 3])  # the strokes, nothing of the sheet
    glyph, alone = preprocess(value), preprocess({"background": None, "layers": [layer], "composite": None})
    np.testing.assert_array_equal(glyph.pixels, alone.pixels)
    assert glyph.ink_height == alone.ink_height < 0.45  # a lowercase о at x-height


# --- hostile traffic: limits, upload cap, bounded queue, spool health (issues 23.2, 23.3, 26.6) ---------------


@pytest.fixture
def ui(tmp_path):
    """The UI in-process (no recognition service: /correct saves without one), started with given settings."""
    from services.ui.app import launch

    apps = []

    def start(**overrides):
        kw = dict(root=tmp_path, feedback_uri="feedback", ui_source_salt_file=tmp_path / "salt")
        settings = get_settings(**{**kw, **overrides})
        port = stack.free_port()
        dead = f"http://127.0.0.1:{stack.free_port()}"
        apps.append(launch(port=port, host="127.0.0.1", api_url=dead, block=False, settings=settings))
        return f"http://127.0.0.1:{port}", FeedbackStore.from_settings(settings), apps[-1]

    yield start
    for app in apps:
        app.close()


def _correct(url: str, png: Path, headers: dict | None = None, client=None):
    from gradio_client import Client

    client = client or Client(url, verbose=False, download_files=False, headers=headers)
    return client, client.predict(_sketch(png), "г", "upper", api_name="/correct")


def test_saves_are_limited_per_session_and_per_address(ui, tmp_path):
    from gradio_client.exceptions import AppError

    png = tmp_path / "g.png"
    png.write_bytes(letter_png())
    url, store, _ = ui(ui_saves_per_session=2, ui_saves_per_address=3, ui_saves_window_s=600)
    client, _ = _correct(url, png)
    _correct(url, png, client=client)
    with pytest.raises(AppError, match=r"You've saved 2 drawings in the last 10 minutes .*this session.*please wait"):
        _correct(url, png, client=client)
    assert len(store.list_since(None)) == 2  # nothing stored beyond the limit
    _correct(url, png)  # a fresh session: its own count, but the same address (3 of 3)
    with pytest.raises(AppError, match=r"You've saved 3 drawings in the last 10 minutes .*your address"):
        _correct(url, png)  # a new session per request stops nobody: the address limit does
    # X-Forwarded-For from an untrusted peer is ignored: still the same address
    with pytest.raises(AppError, match="your address"):
        _correct(url, png, headers={"X-Forwarded-For": "198.51.100.1"})
    records = [store.read(r)[1] for r in store.list_since(None)]
    assert len(records) == 3 and len({r["client_id"] for r in records}) == 2
    assert len({r["source"] for r in records}) == 1 and records[0]["source"].startswith("src-")
    # an invalid save does not count (nor is it stored)
    url2, store2, _ = ui(root=tmp_path / "b", ui_saves_per_session=1, ui_source_salt_file=tmp_path / "salt")
    from gradio_client import Client

    c = Client(url2, verbose=False, download_files=False)
    with pytest.raises(AppError, match="UPPERCASE or lowercase"):
        c.predict(_sketch(png), "г", None, api_name="/correct")
    _correct(url2, png, client=c)
    assert len(store2.list_since(None)) == 1


def test_a_trusted_proxy_forwards_the_address(ui, tmp_path):
    from gradio_client.exceptions import AppError

    png = tmp_path / "g.png"
    png.write_bytes(letter_png())
    url, store, _ = ui(ui_trusted_proxies=["127.0.0.1"], ui_saves_per_address=1, ui_saves_per_session=0)
    _correct(url, png, headers={"X-Forwarded-For": "198.51.100.1"})
    _correct(url, png, headers={"X-Forwarded-For": "198.51.100.2"})  # another user behind the proxy
    with pytest.raises(AppError, match=r"You've saved 1 drawing in the last 10 minutes"):
        _correct(url, png, headers={"X-Forwarded-For": "198.51.100.1"})
    sources = [store.read(r)[1]["source"] for r in store.list_since(None)]
    salt = (tmp_path / "salt").read_text().strip()
    from ukr_hw.feedback import source_id

    assert sources == [source_id("198.51.100.1", salt), source_id("198.51.100.2", salt)]


def test_recognitions_are_limited_per_address(ui, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    png = tmp_path / "g.png"
    png.write_bytes(letter_png())
    url, _, _ = ui(ui_predicts_per_address=2, ui_predicts_window_s=60)
    for _ in range(2):  # counted even though the (absent) service cannot answer
        with pytest.raises(AppError, match="not reachable"):
            Client(url, verbose=False, download_files=False).predict(_sketch(png), api_name="/predict")
    with pytest.raises(AppError, match=r"You've asked for 2 recognitions in the last minute.*please wait about"):
        Client(url, verbose=False, download_files=False).predict(_sketch(png), api_name="/predict")


def test_upload_size_is_capped_queue_bounded_and_health_shows_the_spool(ui, tmp_path):
    import httpx

    url, store, app = ui(ui_max_file_bytes=1024 * 1024, ui_queue_max_size=5, ui_concurrency_limit=3)
    assert app._queue.max_size == 5
    assert app.max_file_size == 1024 * 1024
    big = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", b"\0" * (2 * 1024 * 1024))})
    assert big.status_code == 413, big.text
    small = httpx.post(f"{url}/gradio_api/upload", files={"files": ("g.png", letter_png())})
    assert small.status_code == 200
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["spool"]["pending"] == 0  # a local folder never spools
    assert health["spool"]["oldest_age_s"] is None and health["feedback_store"] == store.description


def test_the_ui_flushes_its_spool_in_the_background(ui, s3_server, s3_bucket, tmp_path):
    import httpx

    png = tmp_path / "g.png"
    png.write_bytes(letter_png())
    url, store, _ = ui(
        feedback_uri=f"s3://{s3_bucket}/ui",
        feedback_spool_dir=tmp_path / "spool",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
        ui_spool_flush_interval_s=0.5,
        ui_spool_flush_max_backoff_s=1.0,
    )
    s3_server.stop()
    try:
        _correct(url, png)  # spooled
        health = httpx.get(f"{url}/healthz").json()
        assert health["status"] == "degraded" and health["spool"]["pending"] == 1
        assert health["spool"]["oldest_age_s"] >= 0 and health["spool"]["oldest_sample"]
        sid = health["spool"]["oldest_sample"]
    finally:
        s3_server.start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/healthz").json()["spool"]["pending"] and time.monotonic() < deadline:
        time.sleep(0.3)  # no save, no restart: the background flusher uploads it
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["spool"]["uploaded"] == 1, health
    assert [r.sample_id for r in store.list_since(None)] == [sid]


def test_rate_limiter_all_or_nothing_release_and_window():
    from ukr_hw.ui.ratelimit import Limit, RateLimiter, describe_span, describe_wait

    now = [0.0]
    rl = RateLimiter(clock=lambda: now[0])
    a, b = ("a", Limit(2, 10)), ("b", Limit(1, 10))
    assert rl.acquire([a, b]) is None
    refused = rl.acquire([a, b])
    assert refused.key == "b" and refused.retry_after_s == 10
    assert rl.count("a", 10) == 1  # refused: counted nowhere
    rl.release([a, b])
    assert rl.count("a", 10) == 0 and rl.acquire([b]) is None
    now[0] = 10.5
    assert rl.acquire([b]) is None  # the window slid
    assert rl.acquire([("c", Limit(0, 10))] * 100) is None  # 0 = no limit
    assert (describe_span(600), describe_span(60), describe_span(45)) == ("10 minutes", "minute", "45 seconds")
    assert describe_wait(1) == "about 1 second" and describe_wait(300) == "about 5 minutes"
