"""The sketchpad's logic without Gradio (``ukr_hw.ui``): the texts, the limits, and what Recognise, confirm and
correct do against a stand-in recognition service (a tiny HTTP server on loopback) and a local feedback store."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from types import SimpleNamespace

import pytest

from ukr_hw.data.strokes import draw_canvas
from ukr_hw.feedback import FeedbackStore, SpoolFlusher, source_id
from ukr_hw.model.abstain import MESSAGE as NOT_ONE_SYMBOL
from ukr_hw.settings import get_settings
from ukr_hw.ui import about, messages
from ukr_hw.ui.actions import Actions, Reading, case_shown, health, session
from ukr_hw.ui.limits import Limits, forwarded_allow, request_address
from ukr_hw.ui.messages import LOWER, UNSURE, UPPER, UserError
from ukr_hw.ui.ratelimit import Limit, RateLimiter
from ukr_hw.ui.sheet import CANVAS, PAPER, blank_canvas, guide_lines

READING = {
    "label": "г",
    "is_uppercase": True,
    "case_probability": 0.9,
    "top": [
        {"label": "г", "probability": 0.8},
        {"label": "ґ", "probability": 0.15},
        {"label": "т", "probability": 0.05},
    ],
    "model_version": "7",
    "mode": "letters",
}


# --- texts -----------------------------------------------------------------------------------------------------


def test_result_panel_top3_count_and_case_texts():
    shown = messages.result_html(READING)
    assert '<div class="glyph">Г</div>' in shown and "UPPERCASE · 90%" in shown
    assert "letters only · confidence 80% · model v7" in shown
    digit = messages.result_html({"label": "3", "is_uppercase": None, "top": [], "model_version": "<b>"})
    assert '<div class="case">digit</div>' in digit and "model v&lt;b&gt;" in digit and "confidence" not in digit
    assert (
        messages.result_html(None)
        == '<div class="ukr-result"><div class="hint">Your symbol will appear here.</div></div>'
    )
    assert "a &lt; b" in messages.result_html(None, "a < b")
    assert messages.top3(READING) == {"Г": 0.8, "Ґ": 0.15, "Т": 0.05} and messages.top3(None) is None
    assert messages.count_text(0) == "No drawings saved from this session yet."
    assert "**1** drawing this" in messages.count_text(1) and "**2** drawings this" in messages.count_text(2)
    assert (messages.case_choice(True), messages.case_choice(False), messages.case_choice(None)) == (UPPER, LOWER, None)


def test_refusal_text_names_the_limit_and_the_wait():
    rl = RateLimiter(clock=lambda: 100.0)
    assert rl.acquire([("session:x", Limit(1, 600))]) is None
    refused = rl.acquire([("session:x", Limit(1, 600))])
    assert messages.refusal_text(refused, "drawings", "saved") == (
        "You've saved 1 drawing in the last 10 minutes (the limit for this session); "
        "please wait about 10 minutes and try again."
    )
    assert rl.acquire([("addr-predict:1.2.3.4", Limit(2, 60))] * 2) is None
    refused = rl.acquire([("addr-predict:1.2.3.4", Limit(2, 60))])
    assert "asked for 2 recognitions in the last minute (the limit for your address)" in messages.refusal_text(
        refused, "recognitions", "asked for"
    )


def test_about_names_the_missing_capitals_from_the_prepared_data(tmp_path):
    settings = get_settings(root=tmp_path)
    assert about.missing_uppercase(settings) == list(about.MISSING_UPPERCASE_FALLBACK)  # nothing prepared
    settings.processed_dir.mkdir(parents=True)
    (settings.processed_dir / "manifest.json").write_text(json.dumps({"missing_uppercase": ["Ґ", "ї"]}))
    assert about.missing_uppercase(settings) == ["ґ", "ї"]
    text = about.about_text(["ґ", "ї"], "file:///fb", "http://api")
    assert "**Ґ** **Ї**" in text and "`http://api`" in text and "`file:///fb`" in text
    assert "none — every letter has both cases" in about.about_text([], "s", "a")


def test_the_sheet_is_paper_with_guides_and_the_blank_canvas_has_no_strokes():
    sheet = guide_lines()
    assert sheet.size == CANVAS and sheet.getpixel((2, 2)) == PAPER
    value = blank_canvas()
    assert value["background"] is sheet and value["layers"] == [] and value["composite"] is None


# --- limits ----------------------------------------------------------------------------------------------------


def _limits(**kw) -> Limits:
    base = {"per_address": Limit(3, 600), "per_session": Limit(2, 600), "predicts": Limit(1, 60), "salt": "pepper"}
    return Limits(**{**base, **kw}, limiter=RateLimiter(clock=lambda: 0.0))


def test_save_limits_per_session_and_address_all_or_nothing():
    limits = _limits()
    limits.take_save("s1", "10.0.0.1")
    limits.take_save("s1", "10.0.0.1")
    with pytest.raises(UserError, match=r"saved 2 drawings .*this session") as err:
        limits.take_save("s1", "10.0.0.1")
    assert err.value.title == "Slow down, please"
    assert limits.limiter.count("addr-save:10.0.0.1", 600) == 2  # the refused save counted nowhere
    limits.take_save("s2", "10.0.0.1")  # a fresh session, the same address: 3 of 3
    with pytest.raises(UserError, match="your address"):
        limits.take_save("s3", "10.0.0.1")
    checks = limits.take_save("s4", None)  # no address: only the session counts
    assert [key for key, _ in checks] == ["session:s4"]
    limits.release(checks)
    assert limits.limiter.count("session:s4", 600) == 0
    assert limits.source("10.0.0.1") == source_id("10.0.0.1", "pepper") and limits.source(None) is None


def test_recognitions_are_limited_per_address_only():
    limits = _limits()
    limits.take_recognition("10.0.0.1")
    with pytest.raises(UserError, match="asked for 1 recognition in the last minute"):
        limits.take_recognition("10.0.0.1")
    for _ in range(5):
        limits.take_recognition(None)  # an unknown sender is not limited
    limits.take_recognition("10.0.0.2")


def test_limits_from_settings_and_the_sender_address(tmp_path):
    settings = get_settings(
        root=tmp_path, ui_saves_per_address=5, ui_saves_per_session=4, ui_saves_window_s=30, ui_predicts_per_address=0
    )
    limits = Limits.from_settings(settings)
    assert (limits.per_address, limits.per_session) == (Limit(5, 30), Limit(4, 30))
    assert limits.predicts.unlimited and limits.salt == settings.path(settings.ui_source_salt_file).read_text().strip()
    assert request_address(SimpleNamespace(client=SimpleNamespace(host="2001:db8::1"))) == "2001:db8::/64"
    assert request_address(SimpleNamespace(client=SimpleNamespace(host="192.0.2.7"))) == "192.0.2.7"
    assert request_address(None) is None and request_address(SimpleNamespace(client=None)) is None


def test_forwarded_allow_is_set_only_while_the_server_starts(monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    with forwarded_allow(["10.0.0.1", "10.0.0.2"]):
        assert os.environ["FORWARDED_ALLOW_IPS"] == "10.0.0.1,10.0.0.2"
    assert os.environ["FORWARDED_ALLOW_IPS"] == "*"
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")
    with forwarded_allow([]):
        assert os.environ["FORWARDED_ALLOW_IPS"] == ""
    assert "FORWARDED_ALLOW_IPS" not in os.environ


# --- actions against a stand-in API ----------------------------------------------------------------------------


class _Api(http.server.BaseHTTPRequestHandler):
    """Answers ``POST /classify`` with ``server.answer`` (status, body); keeps each request's body."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, body))
        status, answer = self.server.answer
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.answer, server.requests = (200, READING), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(tmp_path):
    return FeedbackStore.from_settings(get_settings(root=tmp_path, feedback_uri="feedback"))


def _actions(url, store, **limits) -> Actions:
    return Actions(url, store, _limits(**limits))


def _sketch(symbol="г", upper=True) -> dict:
    return {"background": guide_lines(), "layers": [draw_canvas(symbol, upper, CANVAS, seed=5)], "composite": None}


def _records(store):
    return [store.read(ref)[1] for ref in store.list_since(None)]


def test_recognise_then_confirm_saves_the_reading(api, store):
    actions, state = _actions(api.url, store), session(None)
    reading = actions.recognise(_sketch(), "letters", state, "10.0.0.1")
    assert reading == Reading(messages.result_html(READING), messages.top3(READING), "г", UPPER, True)
    assert state["last"]["label"] == "г"
    path, body = api.requests[-1]
    assert path == "/classify" and b'name="mode"' in body and b"letters" in body and b"\x89PNG" in body
    saved = actions.confirm(_sketch(), "letters", state, "10.0.0.1")
    assert saved.info == "Saved “Г” — thank you!" and "Saved “Г”. Draw the next one!" in saved.html
    assert saved.count_text == messages.count_text(1) and state["count"] == 1 and state["last"] is None
    (record,) = _records(store)
    assert (record["symbol"], record["is_uppercase"], record["predicted_symbol"]) == ("г", True, "г")
    assert record["model_version"] == "7" and record["mode"] == "letters" and record["client_id"] == state["client_id"]
    assert record["source"] == source_id("10.0.0.1", "pepper")
    with pytest.raises(UserError, match="Press Recognise first") as err:  # the reading was used up
        actions.confirm(_sketch(), "letters", state, "10.0.0.1")
    assert err.value.title == "Nothing to confirm"


def test_any_sends_no_mode_and_an_older_api_gets_the_mode_filled_in(api, store):
    api.answer = (200, {k: v for k, v in READING.items() if k != "mode"})
    actions, state = _actions(api.url, store), session(None)
    actions.recognise(_sketch(), None, state, None)
    assert b'name="mode"' not in api.requests[-1][1]
    assert state["last"]["mode"] == "any"
    actions.recognise(_sketch(), "digits", state, None)
    assert state["last"]["mode"] == "digits"
    with pytest.raises(UserError) as err:
        actions.recognise(_sketch(), "vowels", state, None)
    assert err.value.title == "Letters, digits or any?"


def test_correct_needs_a_symbol_and_a_case_for_a_letter(api, store):
    actions, state = _actions(api.url, store), session(None)
    with pytest.raises(UserError, match="Pick the symbol"):
        actions.correct(_sketch(), None, None, "any", state, None)
    with pytest.raises(UserError, match="UPPERCASE or lowercase") as err:
        actions.correct(_sketch(), "д", None, "any", state, None)
    assert err.value.title == "Which case?"
    with pytest.raises(UserError) as err:
        actions.correct(_sketch(), "q", LOWER, "any", state, None)
    assert err.value.title == "Unknown symbol"
    assert _records(store) == [] and actions.limits.limiter.count(f"session:{state['client_id']}", 600) == 0
    saved = actions.correct(_sketch(), "Д", LOWER, "any", state, None)
    assert (saved.symbol, saved.is_uppercase, saved.info) == ("д", False, "Saved the correction “д” — thank you!")
    actions.correct(_sketch("7", None), "7", UPPER, "digits", state, None)  # a digit: the case is ignored
    records = sorted(_records(store), key=lambda r: r["symbol"])
    assert [(r["symbol"], r["is_uppercase"], r["mode"], r["predicted_symbol"]) for r in records] == [
        ("7", None, "digits", None),
        ("д", False, "any", None),
    ]
    assert state["count"] == 2


def test_cant_tell_saves_a_letter_without_a_case(api, store):
    """The "can't tell" choice stores the letter with no case (case_known false): it trains the symbol head only."""
    from ukr_hw import labels
    from ukr_hw.data.feedback_raw import labels_of

    actions, state = _actions(api.url, store), session(None)
    saved = actions.correct(_sketch("о", False), "о", UNSURE, "letters", state, None)
    assert (saved.symbol, saved.is_uppercase) == ("о", None)
    assert saved.info == "Saved the correction “о (case not said)” — thank you!"
    actions.correct(_sketch("7", None), "7", UNSURE, "digits", state, None)  # a digit: nothing to tell
    records = {r["symbol"]: r for r in _records(store)}
    assert (records["о"]["is_uppercase"], records["о"]["case_known"]) == (None, False)
    assert (records["7"]["is_uppercase"], records["7"]["case_known"]) == (None, True)
    assert labels_of(records["о"]) == (labels.index_of("о"), labels.CASE_UNKNOWN)
    assert labels_of(records["7"]) == (labels.index_of("7"), labels.CASE_NONE)
    assert UNSURE in [value for _, value in messages.CASE_CHOICES]


def test_a_refused_save_stores_nothing_and_empty_canvases_are_refused(api, store):
    actions, state = _actions(api.url, store, per_session=Limit(1, 600)), session(None)
    actions.correct(_sketch(), "г", UPPER, "any", state, "10.0.0.9")
    with pytest.raises(UserError, match="saved 1 drawing in the last 10 minutes"):
        actions.correct(_sketch(), "г", UPPER, "any", state, "10.0.0.9")
    assert len(_records(store)) == 1 and state["count"] == 1
    for empty in (None, blank_canvas()):
        with pytest.raises(UserError, match="the canvas is empty") as err:
            actions.correct(empty, "г", UPPER, "any", session(None), None)
        assert err.value.title == "Nothing to save"
        with pytest.raises(UserError, match="the canvas is empty") as err:
            actions.recognise(empty, "any", session(None), None)
        assert err.value.title == "Nothing to read"
    assert len(api.requests) == 0  # an empty canvas never reaches the API


def test_an_abstention_is_a_reading_without_a_guess(api, store):
    api.answer = (422, {"error": f"{NOT_ONE_SYMBOL} (2 ink blobs)"})
    actions, state = _actions(api.url, store), session({"client_id": "c", "count": 3, "last": READING})
    reading = actions.recognise(_sketch(), "any", state, None)
    assert reading == Reading.abstained() and state["last"] is None and state["count"] == 3
    assert reading.symbol is None and reading.case_visible and "model v" not in reading.html


def test_api_errors_are_explained(api, store):
    api.answer = (500, {"error": "boom"})
    with pytest.raises(UserError, match="refused the drawing: boom") as err:
        _actions(api.url, store).recognise(_sketch(), "any", session(None), None)
    assert err.value.title == "Not recognised"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: nothing answers
        with pytest.raises(UserError, match=f"not reachable at {dead}") as err:
            _actions(dead, store).recognise(_sketch(), "any", session(None), None)
    assert err.value.title == "Service unavailable"


def test_sessions_case_choice_and_health(store):
    fresh = session(None)
    assert fresh["count"] == 0 and fresh["last"] is None and len(fresh["client_id"]) == 32
    assert session({})["client_id"] != fresh["client_id"] and session(fresh) is fresh
    assert case_shown("г", UPPER) == (True, UPPER)
    assert case_shown("5", UPPER) == (False, None)
    assert case_shown(None, LOWER) == (True, None)
    report = health(SpoolFlusher(store), store)
    assert report["status"] == "ok" and report["spool"]["pending"] == 0
    assert report["feedback_store"] == store.description
    assert Actions("http://x", store, _limits()).health() == report


def test_actions_from_settings(tmp_path):
    settings = get_settings(root=tmp_path, feedback_uri="feedback", api_url="http://api:3000", ui_saves_per_session=9)
    actions = Actions.from_settings(settings)
    assert actions.api_url == "http://api:3000" and actions.limits.per_session.count == 9
    assert actions.flusher.store is actions.store and actions.flusher.interval_s == settings.ui_spool_flush_interval_s
    assert actions.store.description == FeedbackStore.from_settings(settings).description
    assert Actions.from_settings(settings, api_url="http://other").api_url == "http://other"
