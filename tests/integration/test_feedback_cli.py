"""`ukr-hw feedback list` / `reject` on the local folder backend and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.integration.test_feedback import letter_png
from ukr_hw import cli
from ukr_hw.feedback import FeedbackStore, source_id, source_salt
from ukr_hw.settings import get_settings


@pytest.fixture(params=["local", "s3"])
def env(request, tmp_path, monkeypatch):
    """The environment the command sees; returns a function building the same store."""
    monkeypatch.setenv("UKR_HW_ROOT", str(tmp_path))
    monkeypatch.setenv("UKR_HW_FEEDBACK_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("UKR_HW_UI_SOURCE_SALT_FILE", str(tmp_path / "salt"))
    if request.param == "local":
        monkeypatch.setenv("UKR_HW_FEEDBACK_URI", "feedback")
    else:
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        monkeypatch.setenv("UKR_HW_FEEDBACK_URI", f"s3://{bucket}/fb")
        monkeypatch.setenv("UKR_HW_S3_ENDPOINT_URL", s3.endpoint_url)
        monkeypatch.setenv("UKR_HW_S3_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("UKR_HW_S3_SECRET_ACCESS_KEY", s3.secret_key)
    return lambda: FeedbackStore.from_settings(get_settings())


def _run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = cli.main(["feedback", *argv])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines() if line.strip()], out.err


def test_list_prints_recent_samples_and_writes_a_grid(env, capsys, tmp_path):
    store = env()
    src = source_id("198.51.100.9", source_salt(get_settings()))
    a = store.save(letter_png(), "г", True, predicted_symbol="т", client_id="c1", source=src, mode="letters")
    b = store.save(letter_png(), "7", None, client_id="c2")
    code, rows, _ = _run(capsys, "list")
    assert code == 0
    assert [r["id"] for r in rows] == [b, a]  # newest first
    assert rows[1] == {
        "id": a,
        "symbol": "г",
        "case": "upper",
        "mode": "letters",
        "client": "c1",
        "source": src,
        "created_at": rows[1]["created_at"],
        "predicted": "т",
        "rejected": None,
    }
    assert rows[0]["case"] is None and rows[0]["source"] is None
    assert [r["id"] for r in _run(capsys, "list", "--client", "c1")[1]] == [a]
    assert [r["id"] for r in _run(capsys, "list", "--source", src)[1]] == [a]
    assert [r["id"] for r in _run(capsys, "list", "--source", "198.51.100.9")[1]] == [a]  # a raw address, hashed
    assert [r["id"] for r in _run(capsys, "list", "--limit", "1")[1]] == [b]
    assert _run(capsys, "list", "--since", "2099-01-01")[1] == []
    assert len(_run(capsys, "list", "--since", "1h")[1]) == 2

    grid = tmp_path / "out" / "grid.png"
    code, rows, err = _run(capsys, "list", "--grid", str(grid))
    assert code == 0 and len(rows) == 2 and str(grid) in err
    img = Image.open(grid)
    assert img.mode == "RGB" and img.width >= 2 * 100 and img.height >= 100
    assert min(img.convert("L").getdata()) < 50  # the strokes are drawn


def test_reject_by_id_by_client_and_by_source(env, capsys):
    store = env()
    a = store.save(letter_png(), "г", True, client_id="spam", source="src-aaaa")
    b = store.save(letter_png(), "т", True, client_id="spam", source="src-aaaa")
    c = store.save(letter_png(), "7", None, client_id="ok", source="src-bbbb")
    d = store.save(letter_png(), "ж", False, client_id="ok2", source="src-aaaa")

    code, (out,), _ = _run(capsys, "reject", c, "--reason", "a 7 labelled wrong", "--by", "ops")
    assert code == 0 and out == {"rejected": [c], "count": 1, "reason": "a 7 labelled wrong"}
    assert store.rejection(c)["by"] == "ops"
    code, (out,), _ = _run(capsys, "reject", "--client", "spam", "--reason", "script")
    assert code == 0 and out["rejected"] == [a, b]
    code, (out,), _ = _run(capsys, "reject", "--source", "src-aaaa", "--reason", "same address")
    assert code == 0 and out["rejected"] == [d]  # a and b were rejected already
    assert store.rejected_ids() == {a: "script", b: "script", c: "a 7 labelled wrong", d: "same address"}
    # kept in the store, shown as rejected
    rows = _run(capsys, "list")[1]
    assert {r["id"]: r["rejected"] for r in rows} == store.rejected_ids()
    assert len(store.list_since(None)) == 4

    code, _, err = _run(capsys, "reject", "20990101T000000000000Z-00000000", "--reason", "x")
    assert code == 2 and "no feedback sample" in err
    code, _, err = _run(capsys, "reject", "--client", "nobody", "--reason", "x")
    assert code == 2 and "no samples of client nobody" in err
    code, _, err = _run(capsys, "reject", a, "--client", "spam", "--reason", "x")
    assert code == 2 and "SAMPLE_ID" in err
    with pytest.raises(SystemExit):
        cli.main(["feedback", "reject", a])  # --reason is required
