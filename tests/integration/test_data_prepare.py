"""The real prepare flow on the mirror: sizes, stratified frozen split, outputs, warm re-run, DVC versioning."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from tests.fixtures.data import TEST_COMNIST_SESSIONS, TEST_MNIST_LIMIT, run_prepare
from ukr_hw import labels
from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.data.comnist import session_of
from ukr_hw.data.split import append_to_train
from ukr_hw.data.strokes import CURSIVE_FORMS


def test_prepared_sizes_and_stratified_split(prepared_data):
    s = prepared_data.summary
    assert s["comnist"] == 572 and s["comnist_sessions"] == TEST_COMNIST_SESSIONS
    assert s["comnist_excluded"] and set(s["comnist_excluded"]) <= set("ЁЪЫЭ")  # not Ukrainian: counted, left out
    assert s["train"] + s["test"] == 916 + 500 + s["comnist"]
    assert 0.17 <= s["test"] / (s["train"] + s["test"]) <= 0.23
    assert s["mnist_train"] == TEST_MNIST_LIMIT and s["mnist_test"] == TEST_MNIST_LIMIT
    # no users' samples taken in yet
    assert s["feedback"] == {"train": 0, "user_test": 0, "rejected": 0, "bad": 0, "case_masked": 0}
    assert s["raw_version"] and s["raw_version"] != s["data_version"]
    assert not (prepared_data.processed / "user_test.npz").exists()
    train = load_samples(prepared_data.processed / "finetune_train.npz")
    test = load_samples(prepared_data.processed / "finetune_test.npz")
    assert (len(train), len(test)) == (s["train"], s["test"])
    assert not set(train.id) & set(test.id)
    assert (test.source == "mnist").sum() == 100  # 10 of each digit's 50
    # stratified: every (symbol, case) group with >1 sample has ~20% in test (CoMNIST: whole sessions, tested apart)
    pool = Samples.concat([train, test])
    scans = pool.subset(np.flatnonzero(pool.source != "comnist"))
    scans_test = test.subset(np.flatnonzero(test.source != "comnist"))
    for key, n in Counter(zip(scans.y.tolist(), scans.case.tolist(), strict=True)).items():
        n_test = sum(1 for k in zip(scans_test.y.tolist(), scans_test.case.tolist(), strict=True) if k == key)
        assert abs(n_test - round(n * 0.2)) <= 1, (labels.symbol_of(key[0]), key[1], n, n_test)
    # all 43 classes, digits have no case, letters have one
    assert set(pool.y.tolist()) == set(range(labels.NUM_CLASSES))
    assert (pool.case[pool.y < 10] == labels.CASE_NONE).all()
    assert (pool.case[pool.y >= 10] != labels.CASE_NONE).all()
    assert (pool.case[pool.source == "comnist"] == labels.CASE_UNKNOWN).all()  # never guessed
    drawn_test = {session_of(i) for i in test.id if i.startswith("comnist/")}
    assert drawn_test and not drawn_test & {session_of(i) for i in train.id if i.startswith("comnist/")}
    assert pool.x.dtype == np.uint8 and pool.x.shape[1:] == (28, 28)
    assert (pool.x.reshape(len(pool), -1).max(axis=1) > 200).all()  # every sample has ink
    # MNIST fine-tune digits never appear in the pretraining array
    mnist_train = load_samples(prepared_data.processed / "mnist_train.npz")
    assert not set(mnist_train.id) & set(pool.id)
    assert set(mnist_train.source) == {"mnist"} and (mnist_train.case == -1).all()


def test_outputs_manifest_preview_and_dvc(prepared_data):
    d = prepared_data.processed
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["data_version"] == prepared_data.summary["data_version"]
    assert manifest["splits"]["finetune_train"]["n"] == prepared_data.summary["train"]
    assert manifest["splits"]["finetune_test"]["per_source"]["mnist"] > 0
    assert (d / "preview.png").stat().st_size > 10_000
    assert (d / "bad_rows.csv").read_text().startswith("source,line,file")
    assert (d / "synthetic_train.npz").exists()
    drawings = load_samples(d / "strokes_train.npz")  # one per symbol × case, one more per cursive key
    n_drawings = 76 + len(CURSIVE_FORMS)
    assert len(drawings) == prepared_data.summary["strokes"] == manifest["splits"]["strokes_train"]["n"] == n_drawings
    assert set(drawings.source) == {"strokes"} and not set(drawings.id) & set(load_samples(d / "finetune_test.npz").id)
    # DVC: both folders tracked, version = hash of data/processed, pushed to the temp remote
    processed_dvc = yaml.safe_load((prepared_data.root / "data" / "processed.dvc").read_text())
    assert processed_dvc["outs"][0]["md5"] == prepared_data.summary["data_version"] + ".dir"
    assert (prepared_data.root / "data" / "raw.dvc").exists()
    remote = prepared_data.root.parent / "dvc-remote"
    assert any(p.is_file() for p in remote.rglob("*"))
    # the frozen test ids exist in both places
    ids = (d / "test_ids.txt").read_text().split()
    assert ids == (prepared_data.root / "configs" / "frozen_test_ids.txt").read_text().split()
    drawn = (d / "test_ids_comnist.txt").read_text().split()  # the CoMNIST sessions' part, frozen alike
    assert drawn == (prepared_data.root / "configs" / "frozen_test_ids_comnist.txt").read_text().split()
    assert ids + drawn == load_samples(d / "finetune_test.npz").id.tolist()


def test_warm_rerun_is_fast_and_test_split_byte_identical(prepared_data):
    test_file = prepared_data.processed / "finetune_test.npz"
    before = test_file.read_bytes()
    t0 = time.perf_counter()
    summary = run_prepare(prepared_data.env)
    warm = time.perf_counter() - t0
    assert test_file.read_bytes() == before
    assert summary == prepared_data.summary  # same data → same DVC version
    print(f"warm re-run: {warm:.1f} s")


def test_append_to_train_never_touches_test(prepared_data):
    settings = prepared_data.settings()
    d = prepared_data.processed
    test_before = (d / "finetune_test.npz").read_bytes()
    train = load_samples(d / "finetune_train.npz")
    test = load_samples(d / "finetune_test.npz")
    new = Samples.concat([train.subset(np.arange(3)), test.subset(np.arange(2))])  # known train + test ids
    fresh = train.subset(np.arange(4))
    fresh.id = np.array([f"feedback/new-{i}" for i in range(4)])
    fresh.source = np.array(["feedback"] * 4)
    dup = fresh.subset(np.array([0]))  # a duplicate inside the new batch
    merged = append_to_train(Samples.concat([new, fresh, dup]), settings)
    try:
        assert len(merged) == len(train) + 4
        assert merged.id.tolist()[-4:] == fresh.id.tolist()
        assert load_samples(d / "finetune_train.npz").digest() == merged.digest()
        assert (d / "finetune_test.npz").read_bytes() == test_before
        assert not set(merged.id) & set(test.id)
    finally:
        from ukr_hw.data.arrays import save_samples

        save_samples(train, d / "finetune_train.npz")  # leave the shared fixture as it was


def test_eda_notebook_runs_on_prepared_data(prepared_data):
    import nbformat
    from nbclient import NotebookClient

    from tests.fixtures.data import temp_env

    repo = Path(__file__).resolve().parents[2]
    nb = nbformat.read(repo / "notebooks" / "eda.ipynb", as_version=4)
    with temp_env(**prepared_data.env):
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(repo)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"data version: {prepared_data.summary['data_version']}" in text
    assert "letters without any uppercase sample:" in text
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # balance, case, grids, ink-size plots
