"""Inference: the result shape, loading by alias, `ukr-hw predict` on real files, bad files, no champion, and the
letters-only / digits-only restriction."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ukr_hw.inference import (
    MODES,
    InvalidModeError,
    ModelNotFoundError,
    Predictor,
    format_result,
    parse_mode,
    predict_paths,
    restrict,
)
from ukr_hw.labels import DIGITS, LETTERS, SYMBOLS, index_of, is_digit
from ukr_hw.preprocess import preprocess

KEYS = ["label", "is_uppercase", "case_probability", "top", "model_version", "mode", "abstained", "abstain_reason"]


def _rukopys_files(mirror: Path, n: int) -> list[tuple[Path, str, bool]]:
    with open(mirror / "rukopys" / "glyphs.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked = rows[:: max(1, len(rows) // n)][:n]
    return [(mirror / "rukopys" / r["filename"], r["label"].lower(), r["is_uppercase"] == "True") for r in picked]


def test_format_result_shape_for_letters_and_digits(champion_model):
    p = Predictor.from_uri()
    test = champion_model.test
    probs, case = p.predict_arrays(test.x, test.ink)
    assert probs.shape == (len(test), 43) and case.shape == (len(test),)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    seen_digit = seen_letter = False
    for i in range(len(test)):
        r = format_result(probs[i], float(case[i]), p.model_version)
        assert list(r) == KEYS
        assert r["label"] == SYMBOLS[int(probs[i].argmax())] == r["top"][0]["label"]
        assert len(r["top"]) == 5 and all(isinstance(t["probability"], float) for t in r["top"])
        assert [t["probability"] for t in r["top"]] == sorted((t["probability"] for t in r["top"]), reverse=True)
        assert r["model_version"] == champion_model.version and r["mode"] == "any"
        if r["label"].isdigit():
            seen_digit = True
            assert r["is_uppercase"] is None and r["case_probability"] is None
        else:
            seen_letter = True
            assert r["is_uppercase"] is bool(case[i] >= 0.5)
            assert r["case_probability"] == pytest.approx(float(case[i]), abs=1e-5)
        json.dumps(r)  # plain Python types only
    assert seen_digit and seen_letter


def test_predict_arrays_accepts_uint8_and_float_alike(champion_model):
    p = Predictor.from_uri(champion_model.model_uri)
    t = champion_model.test.subset(slice(0, 50))
    a = p.predict_arrays(t.x, t.ink)
    b = p.predict_arrays(t.x.astype(np.float32) / 255.0, t.ink)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    with pytest.raises(ValueError, match="ink rows"):
        p.predict_arrays(t.x, t.ink[:3])


def _assert_same_answers(a: list[dict], b: list[dict]) -> None:
    """Equal answers; probabilities may differ in the last float bits (batches of other sizes take other BLAS
    paths), so they are compared to 1e-4."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert list(x) == list(y)
        assert {k: x[k] for k in x if k not in ("top", "case_probability")} == {
            k: y[k] for k in y if k not in ("top", "case_probability")
        }
        assert (x["case_probability"] is None) == (y["case_probability"] is None)
        if x["case_probability"] is not None:
            assert x["case_probability"] == pytest.approx(y["case_probability"], abs=1e-4)
        assert [t["probability"] for t in x["top"]] == pytest.approx([t["probability"] for t in y["top"]], abs=1e-4)
        assert [t["label"] for t in x["top"][:1]] == [t["label"] for t in y["top"][:1]]


def test_predict_paths_in_order_with_a_bad_file_and_a_pool(champion_model, mirror, tmp_path):
    files = _rukopys_files(mirror, 24)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths = [str(f) for f, _, _ in files[:10]] + [str(broken)] + [str(f) for f, _, _ in files[10:]]
    serial = list(predict_paths(paths, workers=0, batch_size=7))
    pooled = list(predict_paths(paths, workers=2, batch_size=7))
    assert [r["path"] for r in serial] == paths == [r["path"] for r in pooled]
    _assert_same_answers([r for r in serial if "error" not in r], [r for r in pooled if "error" not in r])
    assert "error" in pooled[10]
    bad = serial[10]
    assert list(bad) == ["path", "error"] and "not a readable image" in bad["error"]
    good = [r for r in serial if "error" not in r]
    assert len(good) == len(files) and all(list(r) == ["path", *KEYS] for r in good)
    # the same answers as preprocessing by hand and predicting glyphs
    p = Predictor.from_uri()
    by_hand = p.predict_glyphs([preprocess(f) for f, _, _ in files])
    _assert_same_answers([{k: v for k, v in r.items() if k != "path"} for r in good], by_hand)
    # a trained model, not noise: guessing among 43 classes names about 0.6 of these 24 right, the fixture's small
    # net (width 8, 6 epochs from scratch) 11; half (12) was a coin toss on the fixture's seed, a quarter is not
    right = sum(r["label"] == label for r, (_, label, _) in zip(good, files, strict=True))
    assert right >= len(files) // 4


def test_cli_predict_loads_by_alias_and_reports_bad_files(champion_model, mirror, tmp_path):
    files = _rukopys_files(mirror, 4)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    args = [str(f) for f, _, _ in files[:2]] + [str(broken)] + [str(f) for f, _, _ in files[2:]]
    exe = shutil.which("ukr-hw", path=str(Path(sys.executable).parent)) or "ukr-hw"
    proc = subprocess.run([exe, "predict", *args], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in lines] == args
    assert "empty" in lines[2]["error"]
    for r in lines[:2] + lines[3:]:
        assert r["model_version"] == champion_model.version
        assert index_of(r["label"]) >= 0 and len(r["top"]) == 5


def test_no_champion_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from ukr_hw.cli import main

    monkeypatch.setenv("UKR_HW_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ModelNotFoundError, match=r"no model registered as ukr-hw@champion in .*run `ukr-hw train`"):
        Predictor.from_uri()
    png = tmp_path / "x.png"
    png.write_bytes(b"x")
    assert main(["predict", str(png)]) == 2  # the CLI handler: a one-line message, no traceback, no output
    out = capsys.readouterr()
    assert "run `ukr-hw train` first" in out.err and not out.out


def test_a_model_records_its_preprocessing_version_and_another_version_warns(champion_model, tmp_path, caplog):
    """Features made by other preprocessing code skew a model's inputs: loading such a model says so."""
    import logging

    from ukr_hw.inference import CONFIG_FILE, STATE_DICT_FILE, load_net_from_dir
    from ukr_hw.preprocess import VERSION

    # a model the fixture logged, read from its artifact folder (no tracking server involved), copied so the
    # fixture's registry stays as it was
    logged = next(
        p.parent for p in champion_model.artifact_root.rglob(CONFIG_FILE) if (p.parent / STATE_DICT_FILE).exists()
    )
    folder = tmp_path / "model"
    folder.mkdir()
    for name in (CONFIG_FILE, STATE_DICT_FILE):
        shutil.copy(logged / name, folder / name)
    config_path = folder / CONFIG_FILE
    assert json.loads(config_path.read_text())["preprocess_version"] == VERSION
    with caplog.at_level(logging.WARNING, logger="ukr_hw.inference"):
        load_net_from_dir(folder)
    assert "preprocessing version" not in caplog.text

    config = json.loads(config_path.read_text())
    config["preprocess_version"] = VERSION + 1  # a model trained by newer code
    config_path.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="ukr_hw.inference"):
        net = load_net_from_dir(folder)
    assert f"trained on preprocessing version {VERSION + 1}, this code makes version {VERSION}" in caplog.text
    assert "`ukr-hw train`" in caplog.text
    assert not net.training  # it still loads: a warning, not a refusal


def test_loading_by_alias_asks_the_configured_store_and_repoints_nothing(champion_model, tmp_path):
    """A library call must not move MLflow's process-wide registry: a server process that loads the champion keeps
    whatever registry it had."""
    import mlflow

    from ukr_hw.inference import load_net
    from ukr_hw.settings import get_settings

    before = mlflow.get_registry_uri()
    elsewhere = f"sqlite:///{tmp_path / 'another-registry.db'}"
    mlflow.set_registry_uri(elsewhere)
    try:
        settings = get_settings(root=tmp_path, mlflow_tracking_uri=champion_model.tracking_uri)
        net, version = load_net(None, settings)
        assert version == str(champion_model.version)
        assert mlflow.get_registry_uri() == elsewhere
        x = champion_model.test.subset(slice(0, 8))
        want = Predictor.from_uri(champion_model.model_uri).predict_arrays(x.x, x.ink)[0]
        got = Predictor(net, version).predict_arrays(x.x, x.ink)[0]
        np.testing.assert_allclose(got, want, atol=1e-6)
    finally:
        mlflow.set_registry_uri(before)


# --- letters only / digits only ----------------------------------------------------------------------------------


def _probs(n: int = 200, seed: int = 0) -> np.ndarray:
    """Random symbol distributions, a third of them dominated by a digit (the «3» that should read «з»)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(len(SYMBOLS), 0.3), size=n).astype(np.float32)
    p[::3, 3] += 5.0  # «3» far ahead
    p[1::3, index_of("з")] += 5.0  # «з» far ahead
    return p / p.sum(axis=1, keepdims=True)


def test_restrict_keeps_only_the_allowed_symbols_and_renormalises():
    probs = _probs()
    digit_cols = [index_of(d) for d in DIGITS]
    letter_cols = [index_of(letter) for letter in LETTERS]
    assert parse_mode(None) == parse_mode("") == "any" and parse_mode(" Letters ") == "letters"
    np.testing.assert_array_equal(restrict(probs, "any"), probs)  # any: unchanged

    letters = restrict(probs, "letters")
    assert letters.shape == probs.shape and letters.dtype == probs.dtype
    assert (letters[:, digit_cols] == 0).all()
    np.testing.assert_allclose(letters.sum(axis=1), 1.0, atol=1e-6)
    assert all(not is_digit(int(i)) for i in letters.argmax(axis=1))  # never a digit
    # the order among the allowed symbols is the model's own: only the scale changes
    np.testing.assert_allclose(
        letters[:, letter_cols] * probs[:, letter_cols].sum(1, keepdims=True), probs[:, letter_cols], rtol=1e-5
    )

    digits = restrict(probs, "digits")
    assert (digits[:, letter_cols] == 0).all()
    np.testing.assert_allclose(digits.sum(axis=1), 1.0, atol=1e-6)
    assert all(is_digit(int(i)) for i in digits.argmax(axis=1))  # never a letter

    one = restrict(probs[0], "letters")  # one row (43,) as well as (N, 43)
    np.testing.assert_allclose(one, letters[0], atol=1e-7)
    # the model sure of a digit down to float underflow: letters get a uniform share, not NaN
    certain = np.zeros(len(SYMBOLS), np.float32)
    certain[3] = 1.0
    spread = restrict(certain, "letters")
    assert np.isfinite(spread).all() and spread.sum() == pytest.approx(1.0)
    assert spread[letter_cols].min() == spread[letter_cols].max() > 0


@pytest.mark.parametrize("bad", ["letter", "Буквы", "all", 3, "letters,digits"])
def test_an_unknown_mode_is_a_clear_error(bad):
    for call in (lambda: restrict(_probs(3), bad), lambda: format_result(_probs(1)[0], 0.5, "1", bad)):
        with pytest.raises(InvalidModeError, match="use one of any, letters, digits") as err:
            call()
        assert isinstance(err.value, ValueError)
    assert MODES == ("any", "letters", "digits")


def test_format_result_reads_under_the_mode_and_keeps_the_case():
    probs = _probs(30)
    for row in probs:
        for case_prob in (0.2, 0.8):
            any_ = format_result(row, case_prob, "7")
            letters = format_result(row, case_prob, "7", "letters")
            digits = format_result(row, case_prob, "7", mode="digits")
            assert (any_["mode"], letters["mode"], digits["mode"]) == ("any", "letters", "digits")
            assert list(letters) == KEYS == list(digits)
            assert all(t["label"] in LETTERS for t in letters["top"]) and letters["label"] in LETTERS
            assert all(t["label"] in DIGITS for t in digits["top"]) and digits["label"] in DIGITS
            # the top-5 probabilities are over the allowed set: restricted ones never lower than unrestricted
            for r in (letters, digits):
                assert sum(t["probability"] for t in r["top"]) <= 1.0 + 1e-4
                for t in r["top"]:
                    before = row[index_of(t["label"])]
                    assert t["probability"] >= round(float(before), 5) - 1e-5
            # the best letter under "any" is the answer under "letters" whenever "any" named a letter
            if any_["label"] in LETTERS:
                assert letters["label"] == any_["label"]
                assert letters["is_uppercase"] == any_["is_uppercase"] == (case_prob >= 0.5)
            # the case head is as without the restriction; digits still have no case
            assert letters["is_uppercase"] is (case_prob >= 0.5)
            assert letters["case_probability"] == pytest.approx(case_prob)
            assert digits["is_uppercase"] is None and digits["case_probability"] is None
    # «з»/«3» in one drawing: digits-dominated row read as letters names the best letter
    row = np.full(len(SYMBOLS), 1e-4, np.float32)
    row[3], row[index_of("з")], row[index_of("в")] = 0.8, 0.15, 0.05
    assert format_result(row, 0.3, None)["label"] == "3"
    r = format_result(row, 0.3, None, "letters")
    assert r["label"] == "з" and r["is_uppercase"] is False and r["top"][0]["probability"] > 0.7


def test_predictor_and_predict_paths_take_the_mode(champion_model, mirror):
    p = Predictor.from_uri(champion_model.model_uri)
    files = [f for f, _, _ in _rukopys_files(mirror, 12)]
    glyphs = [preprocess(f) for f in files]
    plain = p.predict_glyphs(glyphs)
    letters = p.predict_glyphs(glyphs, mode="letters")
    digits = p.predict_sources(files, "digits")
    assert {r["mode"] for r in plain} == {"any"}
    assert {r["mode"] for r in letters} == {"letters"} and {r["mode"] for r in digits} == {"digits"}
    assert all(r["label"] in LETTERS and all(t["label"] in LETTERS for t in r["top"]) for r in letters)
    assert all(r["label"] in DIGITS and r["is_uppercase"] is None for r in digits)
    for a, b in zip(plain, letters, strict=True):  # whenever the model read a letter anyway, the answer stands
        if a["label"] in LETTERS:
            assert b["label"] == a["label"] and b["is_uppercase"] == a["is_uppercase"]
    via_paths = list(predict_paths(files, predictor=p, workers=0, mode="letters"))
    assert [r["label"] for r in via_paths] == [r["label"] for r in letters]
    with pytest.raises(InvalidModeError, match="any, letters, digits"):
        p.predict_glyphs(glyphs, mode="words")
    with pytest.raises(InvalidModeError, match="any, letters, digits"):
        list(predict_paths(files, predictor=p, mode="words"))


def test_cli_predict_mode_flag(champion_model, mirror, capsys):
    from ukr_hw.cli import main

    files = [str(f) for f, _, _ in _rukopys_files(mirror, 6)]
    exe = shutil.which("ukr-hw", path=str(Path(sys.executable).parent)) or "ukr-hw"
    proc = subprocess.run(
        [exe, "predict", "--mode", "letters", *files],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in lines] == files
    assert all(r["mode"] == "letters" and r["label"] in LETTERS for r in lines)
    assert all(t["label"] in LETTERS for r in lines for t in r["top"])
    # in-process: digits, and the default (any) still reports its mode
    assert main(["predict", "--mode", "digits", *files[:2]]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in out] == ["digits", "digits"] and all(r["label"] in DIGITS for r in out)
    assert main(["predict", files[0]]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "any"
    # a wrong value: exit 2, one line naming the allowed values, nothing on stdout
    assert main(["predict", "--mode", "lettres", files[0]]) == 2
    bad = capsys.readouterr()
    assert "--mode" in bad.err and "any, letters, digits" in bad.err and not bad.out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "{any,letters,digits}" in capsys.readouterr().out
