"""The BentoML API over real HTTP: `ukr-hw serve` as a subprocess on a free port against the fixture registry.

One server for the module (started through the real `ukr-hw serve` path: champion import into a temporary BentoML
store, then `bentoml serve`), always killed at the end. Checks: answers equal the in-process Predictor's, every
kind of bad input gets its 4xx with a message, /readyz, metrics, the letters-only / digits-only ``mode`` field, and
hot reload by admin call and by polling while a background loop of requests sees no failure.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.fixtures.servers import API_MAX_BATCH as MAX_BATCH
from tests.fixtures.servers import API_MAX_SIDE as MAX_SIDE
from tests.fixtures.servers import API_MAX_UPLOAD as MAX_UPLOAD
from tests.fixtures.servers import API_TOKEN as TOKEN
from tests.fixtures.servers import Server
from ukr_hw import stack
from ukr_hw.api_client import ApiClient, ApiError, ApiUnreachableError
from ukr_hw.labels import DIGITS, LETTERS

REPO = Path(__file__).resolve().parents[2]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(bento_api: Server) -> Server:
    """The session's BentoML server (tests/fixtures/servers.py); started with TOKEN and the limits above."""
    return bento_api


@pytest.fixture(scope="module")
def client(server) -> ApiClient:
    with ApiClient(server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def glyph_files(mirror) -> list[Path]:
    files = sorted((mirror / "rukopys" / "glyphs").glob("*.png"))
    return files[:: max(1, len(files) // 24)][:24]


def _post(server: Server, route: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", timeout=60, **kwargs)


def _assert_error(resp: httpx.Response, status: int, *words: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    for w in words:
        assert w.lower() in body["error"].lower(), body["error"]


# --- answers ------------------------------------------------------------------------------------------------------


def test_readyz_false_until_loaded_then_true(server, client):
    """/readyz never said 200 before the model answered, and says 200 now; livez and metrics are up."""
    assert server.readyz_seen[-1] == 200
    assert all(s in (0, 503) for s in server.readyz_seen[:-1]), server.readyz_seen
    assert client.ready()
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "ukr_hw_model_version" in metrics
    info = _post(server, "/info", json={}).json()
    assert info["members"] == 1 and info["source"] == "bento" and info["model_version"] == client.model_version()


def test_classify_matches_in_process_predictor(server, client, champion_model, glyph_files):
    from ukr_hw.inference import Predictor

    predictor = Predictor.from_uri(champion_model.model_uri)
    data = [f.read_bytes() for f in glyph_files]
    expected = predictor.predict_sources(data)
    got = [client.classify(d, filename=f.name) for d, f in zip(data, glyph_files, strict=True)]
    for e, g in zip(expected, got, strict=True):
        assert g["label"] == e["label"] and g["is_uppercase"] == e["is_uppercase"]
        assert g["model_version"] == e["model_version"] == champion_model.version
        assert [t["label"] for t in g["top"]] == [t["label"] for t in e["top"]]
        np.testing.assert_allclose(
            [t["probability"] for t in g["top"]], [t["probability"] for t in e["top"]], atol=2e-4
        )
        assert set(g) == {
            *("label", "is_uppercase", "case_probability", "top", "model_version", "mode"),
            *("abstained", "abstain_reason"),
        }
        assert g["abstained"] is e["abstained"] is False and g["abstain_reason"] is None
        assert g["mode"] == e["mode"] == "any"  # no mode sent: every symbol
    # the glyphs the model gets right in-process are right over HTTP too (and the tiny model gets some right)
    truth = [f.stem.split("-")[0] for f in glyph_files]
    assert sum(g["label"] == e["label"] for g, e in zip(got, expected, strict=True)) == len(got)
    assert len(set(truth)) > 1


def test_classify_batch_in_order_and_formats(client, glyph_files):
    data = [f.read_bytes() for f in glyph_files[:MAX_BATCH]]
    singles = [client.classify(d) for d in data]
    batch = client.classify_batch(data)
    assert [b["label"] for b in batch] == [s["label"] for s in singles]
    # JPEG and WebP of the same scan, and an RGBA canvas (black strokes on transparent) are accepted
    img = Image.open(io.BytesIO(data[0])).convert("RGB")
    for fmt, name in (("JPEG", "x.jpg"), ("WEBP", "x.webp")):
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=95)
        assert client.classify(buf.getvalue(), filename=name)["label"]
    canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ink = Image.new("RGBA", (300, 300), (0, 0, 0, 255))
    mask = Image.fromarray((255 - np.asarray(img.convert("L").resize((300, 300)))).astype(np.uint8))
    canvas.paste(ink, (0, 0), mask)
    assert client.classify(_png(canvas))["label"]


def test_mode_restricts_the_answer_and_is_reported(server, client, champion_model, glyph_files):
    """mode=letters never answers a digit, mode=digits never a letter; the same answers as the in-process
    Predictor under that mode; the batch route takes it too; curl's plain text and a JSON-encoded part both work."""
    from ukr_hw.inference import Predictor

    predictor = Predictor.from_uri(champion_model.model_uri)
    data = [f.read_bytes() for f in glyph_files[:8]]
    for mode, allowed in (("letters", LETTERS), ("digits", DIGITS)):
        expected = predictor.predict_sources(data, mode=mode)
        got = [client.classify(d, mode=mode) for d in data]
        for e, g in zip(expected, got, strict=True):
            assert g["mode"] == mode and g["label"] in allowed and all(t["label"] in allowed for t in g["top"])
            assert g["label"] == e["label"] and g["is_uppercase"] == e["is_uppercase"]
            np.testing.assert_allclose(
                [t["probability"] for t in g["top"]], [t["probability"] for t in e["top"]], atol=2e-4
            )
            assert sum(t["probability"] for t in g["top"]) <= 1 + 1e-4
        if mode == "digits":
            assert all(g["is_uppercase"] is None and g["case_probability"] is None for g in got)
        batch = client.classify_batch(data[:MAX_BATCH], mode=mode)
        assert [b["label"] for b in batch] == [g["label"] for g in got[:MAX_BATCH]]
        assert {b["mode"] for b in batch} == {mode}
    assert {client.classify(data[0], mode=m)["mode"] for m in ("any", "")} == {"any"}
    # the form field as curl sends it (-F mode=letters) and as a JSON-encoded part (what the OpenAPI page says)
    image = {"image": ("g.png", data[0], "image/png")}
    plain = _post(server, "/classify", files=image, data={"mode": "Letters"})
    assert plain.status_code == 200 and plain.json()["mode"] == "letters", plain.text
    encoded = _post(server, "/classify", files={**image, "mode": (None, '"digits"', "application/json")})
    assert encoded.status_code == 200 and encoded.json()["mode"] == "digits", encoded.text


def test_an_invalid_mode_is_a_400_naming_the_allowed_values(server, client, glyph_files):
    good = ("x.png", glyph_files[0].read_bytes(), "image/png")
    for value in ("letter", "LETTERS!", "1", "true", "null-ish", "числа"):
        _assert_error(
            _post(server, "/classify", files={"image": good}, data={"mode": value}), 400, "any, letters, digits"
        )
    batch = [("images", good), ("images", good)]
    _assert_error(_post(server, "/classify_batch", files=batch, data={"mode": "words"}), 400, "'words'", "letters")
    # a file in the mode field is refused before BentoML reads it
    _assert_error(
        _post(server, "/classify", files={"image": good, "mode": ("m.txt", b"letters", "text/plain")}),
        400,
        "field 'mode'",
        "text",
    )
    with pytest.raises(ApiError) as err:
        client.classify(good[1], mode="vowels")
    assert err.value.status == 400 and "use one of any, letters, digits" in err.value.message
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'reason="bad_mode"' in metrics
    assert client.classify(good[1], mode="digits")["mode"] == "digits"  # and the server is fine


# --- bad input ----------------------------------------------------------------------------------------------------


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge size (with a tiny, truncated pixel stream)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_inputs_get_4xx_with_a_message(server, glyph_files):
    good = glyph_files[0].read_bytes()
    png = ("x.png", good, "image/png")
    blank = _png(Image.new("RGBA", (200, 200), (0, 0, 0, 0)))
    white = _png(Image.new("RGB", (200, 200), "white"))
    gif = io.BytesIO()
    Image.open(io.BytesIO(good)).save(gif, format="GIF")
    cases = [
        ({"files": {"image": ("a.png", b"this is not an image", "image/png")}}, 400, "not a readable image"),
        ({"files": {"image": ("a.png", good[: len(good) // 2], "image/png")}}, 400, "image"),
        ({"files": {"image": ("a.png", b"", "image/png")}}, 400, "empty"),
        ({"files": {"image": ("blank.png", blank, "image/png")}}, 422, "draw"),
        ({"files": {"image": ("white.png", white, "image/png")}}, 422, "no ink"),
        ({"files": {"image": ("big.png", os.urandom(MAX_UPLOAD + 100_000), "image/png")}}, 413, "smaller"),
        ({"files": {"image": ("wide.png", _png(Image.new("L", (MAX_SIDE + 1, 8), 255)), "image/png")}}, 413, "pixels"),
        ({"files": {"image": ("bomb.png", _bomb_png(60_000, 60_000), "image/png")}}, 413, "pixels"),
        ({"files": {"image": ("a.gif", gif.getvalue(), "image/gif")}}, 415, "png"),
        ({"files": {"file": png}}, 400, "field 'image'"),
        ({"data": {"image": "http://example.com/a.png"}, "files": {"x": ("", b"", "text/plain")}}, 400, "image"),
        ({"json": {}}, 415, "multipart/form-data"),
        ({"content": b"", "headers": {"content-type": "application/octet-stream"}}, 415, "multipart/form-data"),
        ({"data": {"image": "hello"}}, 415, "multipart/form-data"),  # curl -d image=hello: urlencoded
    ]
    for kwargs, status, words in cases:
        _assert_error(_post(server, "/classify", **kwargs), status, words)
    batch = [("images", (f"{i}.png", good, "image/png")) for i in range(MAX_BATCH + 1)]
    _assert_error(_post(server, "/classify_batch", files=batch), 400, f"at most {MAX_BATCH}")
    _assert_error(_post(server, "/classify_batch", json={}), 415, "field 'images'")
    two = [("image", ("0.png", good, "image/png")), ("image", ("1.png", good, "image/png"))]
    _assert_error(_post(server, "/classify", files=two), 400, "exactly one image")
    mixed = [("images", ("0.png", good, "image/png")), ("images", ("1.png", b"junk", "image/png"))]
    _assert_error(_post(server, "/classify_batch", files=mixed), 400, "image 1")
    # the server is still fine afterwards
    assert _post(server, "/classify", files={"image": png}).status_code == 200


def test_client_errors_carry_the_server_message(client):
    with pytest.raises(ApiError) as err:
        client.classify(b"nope")
    assert err.value.status == 400 and "not a readable image" in err.value.message
    with pytest.raises(ApiUnreachableError, match="ukr-hw serve"):
        ApiClient(f"http://127.0.0.1:{stack.free_port()}", timeout=2).classify(b"x")


def test_not_one_symbol_gets_422_and_is_marked_in_a_batch(server, client, glyph_files):
    """Noise (the 4000×4000 JPEG of the issue, smaller here) and two letters side by side are refused with 422 and
    the message a user reads; in a batch the item says abstained and why; a real drawing still gets 200."""
    from ukr_hw.model.abstain import MESSAGE

    rng = np.random.default_rng(26)
    noise = io.BytesIO()
    # under the test server's 300 kB upload cap (API_MAX_UPLOAD)
    Image.fromarray(rng.integers(0, 256, (320, 320), dtype=np.uint8)).save(noise, format="JPEG", quality=90)
    a, b = (Image.open(f).convert("L") for f in glyph_files[:2])
    pair = Image.new("L", (a.width + b.width + 40, max(a.height, b.height)), 255)
    pair.paste(a, (0, 0))
    pair.paste(b, (a.width + 40, 0))
    for name, data, why in (("noise.jpg", noise.getvalue(), "noise"), ("pair.png", _png(pair), "two")):
        resp = _post(server, "/classify", files={"image": (name, data, "image/png")})
        _assert_error(resp, 422, MESSAGE, why)
    good = glyph_files[0].read_bytes()
    ok = client.classify(good)
    assert ok["abstained"] is False and ok["abstain_reason"] is None and ok["label"]
    batch = client.classify_batch([good, noise.getvalue()], filenames=["g.png", "n.jpg"])
    assert batch[0]["abstained"] is False and batch[0]["label"] == ok["label"]
    assert batch[1]["abstained"] is True and "noise" in batch[1]["abstain_reason"] and batch[1]["label"]
    with pytest.raises(ApiError) as err:  # the client library hands the message over
        client.classify(noise.getvalue(), filename="n.jpg")
    assert err.value.status == 422 and MESSAGE in err.value.message
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'reason="not_one_symbol"' in metrics


# --- hot reload -------------------------------------------------------------------------------------------------


def test_admin_reload_needs_the_token(server):
    _assert_error(_post(server, "/admin/reload"), 401, "bearer")
    _assert_error(_post(server, "/admin/reload", headers={"Authorization": "Bearer wrong"}), 403, "wrong")


class _Traffic:
    """Requests in a loop on a background thread; records every status and model version."""

    def __init__(self, url: str, image: bytes) -> None:
        self.url, self.image = url, image
        self.results: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                try:
                    r = http.post("/classify", files={"image": ("g.png", self.image, "image/png")})
                    self.results.append((r.status_code, r.json().get("model_version") if r.is_success else r.text))
                except httpx.HTTPError as exc:
                    self.results.append((0, repr(exc)))

    def __enter__(self) -> _Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def versions(self) -> list[str | None]:
        return [v for _, v in self.results]


def _wait_version(client: ApiClient, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.model_version() != version:
        assert time.monotonic() < deadline, f"API still serves {client.model_version()}, expected {version}"
        time.sleep(0.3)


def test_hot_reload_by_admin_call_and_by_polling(server, client, champion_model, glyph_files):
    from ukr_hw import registry

    first = client.model_version()
    assert first == champion_model.version
    with _Traffic(server.url, glyph_files[0].read_bytes()) as traffic:
        # 1) admin path: a new version registered without moving the alias, then the alias moves + POST reload
        second = champion_model.register_another(epochs=0, promote=False)
        registry.set_champion(second)
        result = client.reload(TOKEN)
        assert result["model_version"] == second  # (the poller may have switched first: changed is then False)
        assert client.classify(glyph_files[1].read_bytes())["model_version"] == second
        # 2) polling path: only move the alias, no admin call
        registry.set_champion(first)
        _wait_version(client, first, timeout=60)
        time.sleep(0.5)
    statuses = [s for s, _ in traffic.results]
    assert statuses and all(s == 200 for s in statuses), [r for r in traffic.results if r[0] != 200][:5]
    seen = traffic.versions()
    assert second in seen and seen[-1] == first
    # versions change in one direction at a time: first… second… first (no flapping between requests)
    changes = [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]]
    assert changes in ([first, second, first], [second, first]), changes
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "ukr_hw_reloads_total" in metrics and "ukr_hw_registry_reachable" in metrics
