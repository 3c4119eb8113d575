"""The feedback store against a real S3 server (SeaweedFS) and the local-folder backend."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ukr_hw.feedback import (
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    CorruptSample,
    FeedbackStore,
    InvalidSample,
    SampleRef,
    sketch_to_png,
)
from ukr_hw.settings import get_settings

#: "Г": a vertical stroke and a top bar, as fractions of the canvas.
LETTER_G = [[(0.3, 0.85), (0.3, 0.15), (0.72, 0.15)]]


def letter_png(strokes=LETTER_G, size: int = 400, width: int = 16, mode: str = "RGBA") -> bytes:
    """Black strokes on a transparent canvas, like the sketchpad's layer."""
    img = Image.new(mode, (size, size), (0, 0, 0, 0) if mode == "RGBA" else "white")
    draw = ImageDraw.Draw(img)
    for stroke in strokes:
        draw.line([(x * size, y * size) for x, y in stroke], fill="black", width=width, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def blank_png(size: int = 400) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _settings(tmp_path: Path, uri: str, s3=None, **extra):
    kw = dict(root=tmp_path, feedback_uri=uri, feedback_spool_dir=tmp_path / "spool", **extra)
    if s3 is not None:
        kw.update(s3_endpoint_url=s3.endpoint_url, s3_access_key_id=s3.access_key, s3_secret_access_key=s3.secret_key)
    return get_settings(**kw)


@pytest.fixture(params=["local", "s3"])
def store_factory(request, tmp_path):
    """Builds stores (with optional setting overrides) on one backend: a local folder or a fresh S3 bucket."""
    if request.param == "local":
        return lambda **extra: FeedbackStore.from_settings(_settings(tmp_path, "feedback", **extra))
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return lambda **extra: FeedbackStore.from_settings(_settings(tmp_path, f"s3://{bucket}/fb", s3, **extra))


@pytest.fixture
def store(store_factory) -> FeedbackStore:
    return store_factory()


def test_round_trip_record_and_png(store: FeedbackStore):
    png = letter_png()
    before = datetime.now(UTC)
    sid = store.save(
        png, "Г", True, predicted_symbol="т", predicted_is_uppercase=False, model_version=3, client_id="c1"
    )
    refs = store.list_since(None)
    assert [r.sample_id for r in refs] == [sid]
    assert refs[0].key == f"{before:%Y/%m/%d}/{sid}" or refs[0].key.endswith(sid)
    data, record = store.read(refs[0])
    assert data == png
    assert set(REQUIRED_FIELDS) <= set(record)
    assert record["sample_id"] == sid
    assert record["symbol"] == "г" and record["is_uppercase"] is True
    assert record["predicted_symbol"] == "т" and record["predicted_is_uppercase"] is False
    assert record["model_version"] == "3" and record["client_id"] == "c1"
    assert record["mode"] == "any"  # no restriction asked for: the default
    assert (record["image_width"], record["image_height"]) == (400, 400)
    created = datetime.fromisoformat(record["created_at"].replace("Z", "+00:00"))
    assert before <= created <= datetime.now(UTC)
    import hashlib

    assert record["image_sha256"] == hashlib.sha256(png).hexdigest()


def test_digit_has_null_case_and_jpeg_is_stored_as_png(store: FeedbackStore):
    img = Image.open(io.BytesIO(letter_png(mode="RGB")))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    sid = store.save(buf.getvalue(), "7", None, predicted_symbol="1", predicted_is_uppercase=True)
    (ref,) = store.list_since(None)
    data, record = store.read(ref)
    assert ref.sample_id == sid
    assert data.startswith(b"\x89PNG")
    assert record["symbol"] == "7" and record["is_uppercase"] is None
    assert record["predicted_is_uppercase"] is None  # digits never carry a case


@pytest.mark.parametrize(
    ("image", "symbol", "upper", "message"),
    [
        (b"this is not an image", "г", True, "not a readable image"),
        (b"", "г", True, "no image"),
        ("blank", "г", True, "empty"),
        ("letter", "q", True, "not one of the 43 symbols"),
        ("letter", "Γ", True, "not one of the 43 symbols"),  # Greek gamma looks like Г
        ("letter", "7", True, "has no upper- or lowercase"),
        ("letter", "г", None, "needs is_uppercase"),
    ],
)
def test_invalid_submissions_are_refused_with_a_message(store: FeedbackStore, image, symbol, upper, message):
    data = {"blank": blank_png(), "letter": letter_png()}.get(image, image)
    with pytest.raises(InvalidSample, match=message):
        store.save(data, symbol, upper)
    assert store.list_since(None) == []


def test_a_letter_whose_case_is_not_known(store: FeedbackStore):
    """A letter saved with case_known false has no case (is_uppercase null, stored so); a case sent with it is
    refused, and an old record (no case_known field) reads as case known."""
    sid = store.save(letter_png(), "г", None, case_known=False)
    ((ref, record),) = [(r, store.read(r)[1]) for r in store.list_since(None)]
    assert ref.sample_id == sid and record["is_uppercase"] is None and record["case_known"] is False
    assert json.loads(store.backend.get(ref.json_key))["case_known"] is False
    with pytest.raises(InvalidSample, match="case_known false"):
        store.save(letter_png(), "г", True, case_known=False)
    old = json.loads(store.backend.get(ref.json_key))
    del old["case_known"]
    store.backend.put(ref.json_key, json.dumps(old).encode(), "application/json")
    assert store.read(ref)[1]["case_known"] is True


def test_the_mode_is_recorded_and_old_records_read_as_any(store: FeedbackStore):
    """The letters-only / digits-only choice the prediction was made under travels with the sample; a record
    written before the field existed reads as "any"."""
    first = store.save(letter_png(), "з", False, predicted_symbol="з", mode="letters")
    second = store.save(letter_png(), "3", None, predicted_symbol="3", mode=" Digits ")
    records = {r.sample_id: store.read(r)[1] for r in store.list_since(None)}
    assert records[first]["mode"] == "letters" and records[second]["mode"] == "digits"
    raw = json.loads(store.backend.get(store.list_since(None)[0].json_key))
    assert raw["mode"] == "letters"  # stored in the JSON itself, not only filled in on reading

    # an old record: the same JSON without the field, rewritten in place
    ref = store.list_since(None)[1]
    old = json.loads(store.backend.get(ref.json_key))
    del old["mode"]
    store.backend.put(ref.json_key, json.dumps(old).encode(), "application/json")
    _, record = store.read(ref)
    assert record["mode"] == "any" == OPTIONAL_FIELDS["mode"]
    assert "mode" not in REQUIRED_FIELDS

    with pytest.raises(InvalidSample, match="use one of any, letters, digits"):
        store.save(letter_png(), "г", True, mode="cyrillic")
    assert len(store.list_since(None)) == 2


def test_huge_images_are_refused(store_factory):
    store = store_factory(max_upload_bytes=20_000, max_image_side=300)
    with pytest.raises(InvalidSample, match="over the limit of 300 per side"):
        store.save(letter_png(size=400), "г", False)
    noise = (np.random.default_rng(0).random((280, 280, 4)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "RGBA").save(buf, format="PNG")
    with pytest.raises(InvalidSample, match="bytes, over the limit of 20,000"):
        store.save(buf.getvalue(), "г", False)
    assert store.list_since(None) == []


def test_a_png_without_its_record_is_not_listed(store: FeedbackStore):
    ref = SampleRef(f"{datetime.now(UTC):%Y/%m/%d}/20200101T000000000000Z-deadbeef")
    store.backend.put(ref.png_key, letter_png(), "image/png")  # a save that died before its JSON record
    assert store.list_since(None) == []
    sid = store.save(letter_png(), "г", False)
    assert [r.sample_id for r in store.list_since(None)] == [sid]


def test_list_since_returns_only_newer_samples(store: FeedbackStore):
    first = store.save(letter_png(), "г", False)
    cut = datetime.now(UTC)
    second = store.save(letter_png(), "т", True)
    assert [r.sample_id for r in store.list_since(None)] == [first, second]
    assert [r.sample_id for r in store.list_since(cut)] == [second]
    assert [r.sample_id for r in store.list_since(cut - timedelta(days=400))] == [first, second]  # month prefixes
    assert [r.sample_id for r in store.list_since(cut.replace(tzinfo=None))] == [second]  # naive = UTC
    assert store.list_since(datetime.now(UTC) + timedelta(seconds=1)) == []


def test_corrupt_records_raise_and_can_be_quarantined(store: FeedbackStore):
    good = store.save(letter_png(), "г", True)
    day = f"{datetime.now(UTC):%Y/%m/%d}"
    bad_json = SampleRef(f"{day}/20200101T000000000001Z-0badc0de")
    store.backend.put(bad_json.png_key, letter_png(), "image/png")
    store.backend.put(bad_json.json_key, b"{not json", "application/json")
    no_png = SampleRef(f"{day}/20200101T000000000002Z-0badc0d2")
    store.backend.put(no_png.json_key, json.dumps({f: None for f in REQUIRED_FIELDS} | {"symbol": "г"}).encode(), "")

    listed = {r.sample_id for r in store.list_since(None)}
    assert listed == {good, bad_json.sample_id, no_png.sample_id}  # listed, never silently dropped
    with pytest.raises(CorruptSample, match="not valid JSON"):
        store.read(bad_json)
    with pytest.raises(CorruptSample, match="PNG is missing"):
        store.read(no_png)

    for ref in (bad_json, no_png):
        store.quarantine(ref, "unreadable")
    assert [r.sample_id for r in store.list_since(None)] == [good]
    quarantined = store.quarantined()
    assert {r.sample_id for r in quarantined} == {bad_json.sample_id, no_png.sample_id}
    note = json.loads(store.backend.get(f"quarantine/{bad_json.key}.reason.txt"))
    assert note["reason"] == "unreadable" and note["sample"] == bad_json.key
    assert store.backend.get(f"quarantine/{bad_json.key}.png") == letter_png()


def test_quarantine_moves_a_valid_sample(store: FeedbackStore):
    sid = store.save(letter_png(), "г", True)
    (ref,) = store.list_since(None)
    target = store.quarantine(ref, "label disagrees with the picture")
    assert target == f"quarantine/{ref.key}"
    assert store.list_since(None) == []
    assert [r.sample_id for r in store.quarantined()] == [sid]


def test_s3_outage_spools_and_flush_uploads(s3_server, s3_bucket, tmp_path):
    settings = _settings(tmp_path, f"s3://{s3_bucket}/fb", s3_server)
    store = FeedbackStore.from_settings(settings)
    before = store.save(letter_png(), "г", True)
    s3_server.stop()
    try:
        t0 = datetime.now(UTC)
        spooled = store.save(letter_png(), "т", False, client_id="offline")
        elapsed = (datetime.now(UTC) - t0).total_seconds()
        assert elapsed < 15, f"an S3 outage must not hang the UI ({elapsed:.1f} s)"
        assert store.pending() == 1
        assert list((tmp_path / "spool").rglob(f"{spooled}.json")), "sample not in the spool"
    finally:
        s3_server.start()
    assert [r.sample_id for r in store.list_since(None)] == [before]  # not uploaded yet
    assert store.flush_spool() == 1
    assert store.pending() == 0
    assert [r.sample_id for r in store.list_since(None)] == [before, spooled]
    data, record = store.read(store.list_since(None)[1])
    assert data == letter_png() and record["symbol"] == "т" and record["client_id"] == "offline"
    # a fresh store (a UI restart) with an empty spool has nothing to flush
    assert FeedbackStore.from_settings(settings).flush_spool() == 0


def test_next_successful_save_flushes_the_spool(s3_server, s3_bucket, tmp_path):
    settings = _settings(tmp_path, f"s3://{s3_bucket}", s3_server)  # bucket root, no prefix
    s3_server.stop()
    try:
        spooled = FeedbackStore.from_settings(settings).save(letter_png(), "г", True)
    finally:
        s3_server.start()
    store = FeedbackStore.from_settings(settings)
    assert store.pending() == 1
    later = store.save(letter_png(), "т", True)
    assert store.pending() == 0
    assert [r.sample_id for r in store.list_since(None)] == [spooled, later]


def test_missing_bucket_is_created(s3_server, tmp_path):
    bucket = f"fresh-{datetime.now(UTC):%H%M%S%f}"
    store = FeedbackStore.from_settings(_settings(tmp_path, f"s3://{bucket}/x/y", s3_server))
    sid = store.save(letter_png(), "ї", False)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == sorted(f"x/y/{datetime.now(UTC):%Y/%m/%d}/{sid}{ext}" for ext in (".png", ".json"))


def test_sketch_value_becomes_strokes_on_transparent(tmp_path):
    layer = Image.open(io.BytesIO(letter_png())).convert("RGBA")
    coloured = Image.new("RGBA", layer.size, (43, 89, 195, 0))
    coloured.putalpha(layer.getchannel("A"))
    white = Image.new("RGBA", layer.size, "white")
    png = sketch_to_png({"background": white, "layers": [coloured], "composite": white})
    img = Image.open(io.BytesIO(png))
    assert img.mode == "RGBA" and img.size == layer.size
    assert np.array_equal(np.asarray(img)[..., 3], np.asarray(layer)[..., 3])
    assert np.asarray(img)[..., :3].max() == 0  # black strokes, whatever pen colour the theme used
    for empty in (None, {"background": white, "layers": [], "composite": white}):
        with pytest.raises(InvalidSample, match="empty"):
            sketch_to_png(empty)


# --- sources, review and rejection (issue 23.3) --------------------------------------------------------------


def test_source_is_recorded_and_records_filter_by_client_and_source(store: FeedbackStore):
    from ukr_hw.feedback import source_address, source_id

    src = source_id("203.0.113.7", "salt")
    assert src == source_id("203.0.113.7", "salt") != source_id("203.0.113.7", "other salt")
    assert src.startswith("src-") and "203" not in src
    # one IPv6 host (a /64) is one source; an IPv4-mapped address is its IPv4 address
    assert source_address("2001:db8::1") == source_address("2001:db8::ffff") == "2001:db8::/64"
    assert source_address("::ffff:203.0.113.7") == "203.0.113.7"
    a = store.save(letter_png(), "г", True, client_id="c1", source=src)
    b = store.save(letter_png(), "т", False, client_id="c2", source=src)
    c = store.save(letter_png(), "7", None, client_id="c3")
    assert store.read(store.list_since(None)[0])[1]["source"] == src
    assert [r["sample_id"] for _, r in store.records()] == [a, b, c]
    assert [r["sample_id"] for _, r in store.records(newest_first=True, limit=2)] == [c, b]
    assert [r["sample_id"] for _, r in store.records(source=src)] == [a, b]
    assert [r["sample_id"] for _, r in store.records(client_id="c3")] == [c]
    assert store.records(client_id="c3")[0][1]["source"] is None
    assert all(r["rejected"] is None for _, r in store.records())


def test_rejected_samples_are_kept_marked_and_listed_with_their_reason(store: FeedbackStore):
    a = store.save(letter_png(), "г", True, client_id="bad")
    b = store.save(letter_png(), "т", False, client_id="bad", source="src-1")
    c = store.save(letter_png(), "7", None, client_id="good", source="src-2")
    assert store.rejected_ids() == {}
    note = store.reject(c, "a 7 drawn as Г", by="tester")
    assert (note["reason"], note["by"], note["sample_id"]) == ("a 7 drawn as Г", "tester", c)
    assert store.backend.exists(f"rejected/{c}.json")
    assert store.reject_where("one client wrote nonsense", client_id="bad") == [a, b]
    assert store.reject_where("again", client_id="bad") == []  # the first reason stays
    assert store.rejected_ids() == {a: "one client wrote nonsense", b: "one client wrote nonsense", c: "a 7 drawn as Г"}
    # kept: still listed and readable, the markers are not samples
    assert [r.sample_id for r in store.list_since(None)] == [a, b, c]
    assert store.read(store.list_since(None)[0])[0] == letter_png()
    assert {r["sample_id"]: r["rejected"] for _, r in store.records()}[c] == "a 7 drawn as Г"
    assert store.unreject(c) and not store.unreject(c)
    assert set(store.rejected_ids()) == {a, b}
    assert store.reject_where("by source", source="src-2") == [c]
    with pytest.raises(KeyError, match="no feedback sample"):
        store.reject("20990101T000000000000Z-00000000", "missing")
    with pytest.raises(ValueError, match="not a feedback sample id"):
        store.reject("../../etc/passwd", "bad id")
    with pytest.raises(ValueError, match="reason"):
        store.reject(a, " ")


# --- the spool flushed in the background (issue 23.2) ---------------------------------------------------------


def test_background_flusher_uploads_the_spool_once_s3_is_back(s3_server, s3_bucket, tmp_path):
    import time

    from ukr_hw.feedback import SpoolFlusher

    settings = _settings(tmp_path, f"s3://{s3_bucket}/fb", s3_server)
    store = FeedbackStore.from_settings(settings)
    flusher = SpoolFlusher(store, interval_s=0.2, max_backoff_s=0.8)
    s3_server.stop()
    try:
        spooled = [store.save(letter_png(), s, False, client_id="offline") for s in ("т", "г")]
        status = store.spool_status()
        assert status["pending"] == 2 and status["oldest_sample"] == spooled[0] and status["oldest_age_s"] >= 0
        assert flusher.flush_once() == 0 and "not reachable" in flusher.last_error
        assert flusher.delay_s == 0.4  # backing off
        flusher.flush_once()
        flusher.flush_once()
        assert flusher.delay_s == 0.8  # at most max_backoff_s
        flusher.start()
    finally:
        s3_server.start()
    try:
        deadline = time.monotonic() + 60
        while store.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.pending() == 0, flusher.status()
    finally:
        flusher.stop()
    assert [r.sample_id for r in store.list_since(None)] == spooled  # each once, under its own id
    status = flusher.status()
    assert status["pending"] == 0 and status["oldest_age_s"] is None and status["uploaded"] == 2
    assert status["last_error"] is None and status["last_success"]


def test_a_flush_cut_short_and_repeated_duplicates_nothing(s3_server, s3_bucket, tmp_path):
    """Uploaded but not yet removed from the spool (a crash between the two): the next flush uploads the same
    sample under the same keys, so the store still holds it once."""
    import shutil

    settings = _settings(tmp_path, f"s3://{s3_bucket}/fb", s3_server)
    store = FeedbackStore.from_settings(settings)
    s3_server.stop()
    try:
        sid = store.save(letter_png(), "ж", True)
    finally:
        s3_server.start()
    shutil.copytree(tmp_path / "spool", tmp_path / "spool-copy")
    assert store.flush_spool() == 1
    shutil.rmtree(tmp_path / "spool")
    shutil.copytree(tmp_path / "spool-copy", tmp_path / "spool")  # as if the removal never happened
    assert store.pending() == 1 and store.flush_spool() == 1 and store.pending() == 0
    assert [r.sample_id for r in store.list_since(None)] == [sid]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    arrivals = [k for k in keys if k.startswith("fb/arrivals/")]  # the late-upload index, one marker per day
    assert len(keys) - len(arrivals) == 2 and arrivals and all(k.endswith(f"/{sid}.json") for k in arrivals)
    assert [r.sample_id for r in store.late_arrivals()] == [sid]
    assert store.read(store.list_since(None)[0])[1]["symbol"] == "ж"
