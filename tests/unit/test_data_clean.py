"""Rukopys cleaning (bad rows reported, never dropped silently), glyph prep, and the frozen split logic."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from ukr_hw import labels
from ukr_hw.data import rukopys, split
from ukr_hw.data.arrays import Samples, load_samples, save_samples
from ukr_hw.settings import get_settings

HEADER = "label,transliter_kmu2010,name,is_uppercase,type,is_alternate,top,bottom,left,right,height,width,filename\n"


@pytest.fixture
def table(mirror, tmp_path):
    """A Rukopys folder with good rows and every kind of bad row."""
    d = tmp_path / "rukopys"
    (d / "glyphs").mkdir(parents=True)
    for name in ("a-0.png", "a-1.png", "b-1.png"):
        shutil.copy2(mirror / "rukopys" / "glyphs" / name, d / "glyphs" / name)
    Image.new("RGB", (200, 200), "white").save(d / "glyphs" / "blank.png")
    (d / "glyphs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [
        "а,a,a,False,italic,False,1,2,3,4,5,6,glyphs/a-0.png",  # good (box columns are nonsense: ignored)
        "а,a,a,True,italic,False,69,130,67,132,61,65,glyphs/a-1.png",  # good, uppercase
        "q,q,q,False,italic,False,0,0,0,0,0,0,glyphs/b-1.png",  # unknown label
        "i,i,i,False,italic,False,0,0,0,0,0,0,glyphs/b-1.png",  # Latin look-alike
        "б,b,b,maybe,italic,False,0,0,0,0,0,0,glyphs/b-1.png",  # bad is_uppercase
        "б,b,b,False,italic,False,0,0,0,0,0,0,glyphs/missing.png",  # file missing
        "б,b,b,False,italic,False,0,0,0,0,0,0,glyphs/b-1.png",  # good
        "б,b,b,True,italic,False,0,0,0,0,0,0,glyphs/b-1.png",  # duplicate file
        "в,v,v,False,italic,False,0,0,0,0,0,0,glyphs/blank.png",  # no ink: rejected at glyph prep
        "в,v,v,True,italic,False,0,0,0,0,0,0,glyphs/broken.png",  # unreadable: rejected at glyph prep
    ]
    (d / "glyphs.csv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return d


def test_clean_reports_bad_rows_with_reasons(table, tmp_path):
    result = rukopys.clean(table)
    assert [(r.symbol, r.case, r.file.name) for r in result.rows] == [
        ("а", 0, "a-0.png"),
        ("а", 1, "a-1.png"),
        ("б", 0, "b-1.png"),
        ("в", 0, "blank.png"),
        ("в", 1, "broken.png"),
    ]
    reasons = {b.line: b.reason for b in result.bad}
    assert set(reasons) == {4, 5, 6, 7, 9}
    assert reasons[4].startswith("unknown label") and "'q'" in reasons[4]
    assert "Latin look-alikes" in reasons[5]
    assert reasons[6].startswith("bad is_uppercase") and "'maybe'" in reasons[6]
    assert reasons[7].startswith("image file not found") and "missing.png" in reasons[7]
    assert reasons[9] == "duplicate file: already listed on line 8"
    out = rukopys.write_bad_rows(result.bad, tmp_path / "bad_rows.csv")
    written = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [int(r["line"]) for r in written] == [4, 5, 6, 7, 9] and written[2]["is_uppercase"] == "maybe"


def test_glyph_prep_rejects_blank_and_broken_images_by_name(table):
    result = rukopys.clean(table)
    samples, bad = rukopys.prep_glyphs(result.rows, workers=2)
    assert samples.id.tolist() == ["rukopys/a-0.png", "rukopys/a-1.png", "rukopys/b-1.png"]
    assert samples.case.tolist() == [0, 1, 0] and samples.y.tolist() == [labels.index_of("а")] * 2 + [11]
    assert set(samples.source) == {"rukopys"} and samples.x.max() == 255
    assert {b.file.rsplit("/", 1)[-1]: b.reason.split(":")[0] for b in bad} == {
        "blank.png": "EmptyImageError",
        "broken.png": "ImageDecodeError",
    }


def test_clean_whole_table_problems(tmp_path):
    with pytest.raises(rukopys.RukopysError, match=r"glyphs\.csv is missing"):
        rukopys.clean(tmp_path)
    (tmp_path / "glyphs.csv").write_text("name,filename\nx,y\n", encoding="utf-8")
    with pytest.raises(rukopys.RukopysError, match=r"lacks the column\(s\) label, is_uppercase"):
        rukopys.clean(tmp_path)
    (tmp_path / "glyphs.csv").write_text("label,is_uppercase,filename\nq,False,x.png\n", encoding="utf-8")
    with pytest.raises(rukopys.RukopysError, match="no usable rows"):
        rukopys.clean(tmp_path)


# --- split -----------------------------------------------------------------------------------------------------


def _pool(n_per_group: int = 10, prefix: str = "s") -> Samples:
    ys, cases = [], []
    for y in (0, 1, 12):
        for c in [-1] if y < 10 else [0, 1]:
            ys += [y] * n_per_group
            cases += [c] * n_per_group
    n = len(ys)
    rng = np.random.default_rng(0)
    return Samples(
        x=rng.integers(0, 255, (n, 28, 28)),
        y=ys,
        case=cases,
        ink=np.ones((n, 2)),
        source=["test"] * n,
        id=[f"{prefix}/{i}" for i in range(n)],
    )


def test_split_is_stratified_frozen_and_new_samples_only_join_train(tmp_path):
    settings = get_settings(root=tmp_path, test_fraction=0.2, seed=3)
    pool = _pool()
    train, test = split.split(pool, settings)
    assert len(test) == 8 and len(train) == 32
    assert sorted(np.unique(test.y, return_counts=True)[1].tolist()) == [2, 2, 4]  # 2 per (symbol, case) group
    frozen = (tmp_path / "configs" / "frozen_test_ids.txt").read_text().split()
    assert frozen == test.id.tolist() == (settings.processed_dir / "test_ids.txt").read_text().split()
    # a later data version with more samples: the same test ids, the new ones all in train
    bigger = Samples.concat([pool, _pool(prefix="new")])
    train2, test2 = split.split(bigger.subset(np.random.default_rng(1).permutation(len(bigger))), settings)
    assert test2.id.tolist() == frozen and test2.digest() == test.digest()
    assert len(train2) == 72 and {i for i in train2.id if i.startswith("new/")} == {f"new/{i}" for i in range(40)}
    # a seed change does not move the frozen split either
    assert split.split(pool, get_settings(root=tmp_path, seed=99))[1].id.tolist() == frozen


def test_frozen_test_sample_missing_is_an_error(tmp_path):
    settings = get_settings(root=tmp_path)
    pool = _pool()
    _, test = split.split(pool, settings)
    gone = test.id[0]
    with pytest.raises(split.SplitError, match=rf"1 frozen test sample\(s\) are not in the data \(e\.g\. {gone}\)"):
        split.split(pool.subset(pool.id != gone), settings)
    with pytest.raises(split.SplitError, match="duplicate sample ids"):
        split.split(Samples.concat([pool, pool.subset(np.array([0]))]), settings)


def test_save_split_keeps_test_file_bytes_and_append_to_train(tmp_path):
    settings = get_settings(root=tmp_path)
    train, test = split.split(_pool(), settings)
    _, test_path = split.save_split(train, test, settings)
    mtime = test_path.stat().st_mtime_ns
    split.save_split(train, test, settings)
    assert test_path.stat().st_mtime_ns == mtime  # unchanged content: not rewritten
    new = _pool(2, prefix="fb")
    merged = split.append_to_train(Samples.concat([new, test.subset(np.array([0, 1])), new]), settings)
    assert len(merged) == len(train) + len(new)
    assert load_samples(settings.processed_dir / "finetune_train.npz").digest() == merged.digest()
    assert load_samples(test_path).digest() == test.digest()
    save_samples(merged, tmp_path / "x.npz")
