"""CoMNIST: ingest (mirror, download, checksums), labels, drawing sessions, writer-disjoint splits, case masked."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ukr_hw import labels
from ukr_hw.data import comnist, split
from ukr_hw.data.arrays import Samples
from ukr_hw.model.datamodule import writer_disjoint_split
from ukr_hw.model.lit import LitUkrHw, masked_case_loss
from ukr_hw.settings import get_settings

LETTERS = ("А", "И", "Й", "Ё", "Ъ", "Ы", "Э", "Ж")


def _small_manifest(mirror: Path, per_letter: int = 3) -> dict[str, str]:
    """The package manifest's first few files of some letters (those the mapping treats specially among them)."""
    full = comnist.read_manifest()
    out: dict[str, str] = {}
    for letter in LETTERS:
        rels = sorted(r for r in full if r.split("/")[1] == letter)[:per_letter]
        out.update({r: full[r] for r in rels})
    return out


@pytest.fixture
def small_mirror(mirror: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    manifest = _small_manifest(mirror)
    dst = tmp_path / "mirror"
    for rel in manifest:
        (dst / "comnist" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mirror / "comnist" / rel, dst / "comnist" / rel)
    return dst, manifest


def test_package_manifest_matches_the_mirror(mirror: Path) -> None:
    """The committed manifest lists every mirror file, each with its sha256 (spot-checked), and nothing else."""
    manifest = comnist.read_manifest()
    on_disk = {p.relative_to(mirror / "comnist").as_posix() for p in (mirror / "comnist").rglob("*.png")}
    assert set(manifest) == on_disk and len(manifest) == 8332
    for rel in sorted(manifest)[::997]:
        assert hashlib.sha256((mirror / "comnist" / rel).read_bytes()).hexdigest() == manifest[rel]


def test_mirror_ingest_copies_checks_and_skips_when_warm(small_mirror, tmp_path: Path) -> None:
    src, manifest = small_mirror
    settings = get_settings(root=tmp_path / "root", data_mirror=src)
    folder, copied = comnist.ingest(settings, manifest)
    assert copied == len(manifest) == 3 * len(LETTERS)
    assert all((folder / rel).is_file() for rel in manifest)
    assert comnist.ingest(settings, manifest)[1] == 0  # warm: nothing copied again


def test_broken_or_missing_file_is_named(small_mirror, tmp_path: Path) -> None:
    src, manifest = small_mirror
    settings = get_settings(root=tmp_path / "root", data_mirror=src)
    rel = sorted(manifest)[4]
    bad = src / "comnist" / rel
    bad.write_bytes(bad.read_bytes()[:-10])  # truncated
    expected = manifest[rel][:12]
    with pytest.raises(comnist.ComnistError, match=rf"{rel} in the mirror .* is corrupt .*expected {expected}"):
        comnist.ingest(settings, manifest)
    assert not (settings.raw_dir / "comnist" / rel).exists()  # never copied
    bad.unlink()
    with pytest.raises(comnist.ComnistError, match=rf"{rel} is missing from the mirror"):
        comnist.ingest(settings, manifest)
    # a manifest that disagrees with the files (an edited entry) is the same clear error
    good_rel = sorted(manifest)[0]
    edited = {**{r: d for r, d in manifest.items() if r != rel}, good_rel: "0" * 64}
    with pytest.raises(comnist.ComnistError, match=rf"{good_rel} in the mirror .* expected 000000000000"):
        comnist.ingest(get_settings(root=tmp_path / "root2", data_mirror=src), edited)


def test_download_keeps_only_the_manifest_files_and_checks_them(small_mirror, tmp_path: Path) -> None:
    """The pinned upstream tarball over real HTTP: the listed Cyrillic/ files only (the drawings kept back as an
    independent evaluation set, and everything outside Cyrillic/, are not extracted), each checked."""
    src, manifest = small_mirror
    www = tmp_path / "www"
    www.mkdir()
    archive = www / "ocr.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for rel in manifest:
            tar.add(src / "comnist" / rel, arcname=f"ocr-abc/{rel}")
        for name, data in (("ocr-abc/Cyrillic/А/5a000000held.png", b"held back"), ("ocr-abc/README.md", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ocr.tar.gz"
        settings = get_settings(root=tmp_path / "root", data_mirror=None, comnist_archive_url=url)
        folder, copied = comnist.ingest(settings, manifest)
        assert copied == len(manifest)
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == sorted(manifest)
        assert comnist.ingest(settings, manifest)[1] == 0  # already there: no download
        # a corrupt upstream file is named
        rel = sorted(manifest)[0]
        corrupt = {**manifest, rel: "f" * 64}
        with pytest.raises(comnist.ComnistError, match=rf"{rel} in the archive from {url} is corrupt"):
            comnist.ingest(get_settings(root=tmp_path / "root2", data_mirror=None, comnist_archive_url=url), corrupt)
    finally:
        server.shutdown()
        server.server_close()


def test_labels_map_to_ukrainian_and_non_ukrainian_letters_are_counted(small_mirror) -> None:
    src, manifest = small_mirror
    scanned = comnist.scan(src / "comnist", manifest)
    assert scanned.excluded == {"Ё": 3, "Ъ": 3, "Ы": 3, "Э": 3}
    assert sorted({(d.letter, d.symbol) for d in scanned.drawings}) == [("А", "а"), ("Ж", "ж"), ("И", "и"), ("Й", "й")]
    samples, bad = comnist.prep(scanned.drawings, workers=1)
    assert not bad and len(samples) == 12
    assert set(samples.case.tolist()) == {labels.CASE_UNKNOWN}  # case is never guessed
    assert {labels.symbol_of(int(y)) for y in samples.y} == {"а", "ж", "и", "й"}
    assert (samples.ink > 0).all() and (samples.ink <= 1).all()  # real ink boxes, through the one preprocess path
    assert all(comnist.session_of(i) for i in samples.id)


def test_the_mapping_covers_the_alphabet_comnist_has() -> None:
    mapped = {v for v in comnist.LETTER_MAP.values() if v}
    assert mapped == set(labels.LETTERS) - {"ґ", "є", "і", "ї"}
    assert comnist.LETTER_MAP["И"] == "и" and all(comnist.LETTER_MAP[c] is None for c in "ЁЪЫЭ")


def _fake_manifest(times: list[int]) -> dict[str, str]:
    return {f"Cyrillic/{'АБВ'[i % 3]}/{t:08x}{i:05x}.png": "0" * 64 for i, t in enumerate(times)}


def test_sessions_split_at_ten_minute_gaps() -> None:
    t0 = 0x58A9CEA0
    times = [t0, t0 + 30, t0 + 599, t0 + 1300, t0 + 1310, t0 + 5000]
    scanned = comnist.scan(Path("/nowhere"), _fake_manifest(times))
    sessions = [d.session for d in sorted(scanned.drawings, key=lambda d: d.second)]
    assert scanned.sessions == 3
    assert sessions == [f"s{t0:08x}"] * 3 + [f"s{t0 + 1300:08x}"] * 2 + [f"s{t0 + 5000:08x}"]
    assert comnist.scan(Path("/nowhere"), _fake_manifest(times), session_limit=2).sessions == 2


def _drawn_pool(n_sessions: int = 40, per_session: int = 10) -> Samples:
    rng = np.random.default_rng(0)
    n = n_sessions * per_session
    ids = [f"comnist/s{k:08x}/А/{k:08x}{j:05x}.png" for k in range(n_sessions) for j in range(per_session)]
    return Samples(
        rng.integers(0, 255, (n, 28, 28)),
        rng.integers(10, 43, n),
        [labels.CASE_UNKNOWN] * n,
        rng.random((n, 2)),
        ["comnist"] * n,
        ids,
    )


def test_frozen_test_and_validation_keep_sessions_whole(tmp_path: Path) -> None:
    from tests.tiny_data import make_samples

    settings = get_settings(root=tmp_path, test_fraction=0.2)
    pool = Samples.concat([make_samples(4, 1), _drawn_pool()])
    train, test = split.split(pool, settings)
    frozen = settings.path(settings.comnist_frozen_test_ids)
    assert frozen.exists()  # the CoMNIST part of the frozen split, for git
    in_test = {comnist.session_of(i) for i in test.id if i.startswith("comnist/")}
    in_train = {comnist.session_of(i) for i in train.id if i.startswith("comnist/")}
    assert in_test and in_train and not in_test & in_train
    assert 0.15 <= len([i for i in test.id if i.startswith("comnist/")]) / 400 <= 0.3
    # the frozen list is reused: the same split again, and a second run never moves a session
    again_train, again_test = split.split(pool, settings)
    assert again_test.id.tolist() == test.id.tolist() and again_train.digest() == train.digest()
    # validation slices: whole sessions, for every seed
    for seed in (1, 2, 3):
        tr, val = writer_disjoint_split(train, 0.15, seed)
        v = {comnist.session_of(i) for i in val.id if i.startswith("comnist/")}
        t = {comnist.session_of(i) for i in tr.id if i.startswith("comnist/")}
        assert v and not v & t and len(tr) + len(val) == len(train)
        assert (val.source == "rukopys").any()  # the other sources still get their stratified share


def test_a_missing_frozen_comnist_drawing_is_a_clear_error(tmp_path: Path) -> None:
    settings = get_settings(root=tmp_path)
    pool = _drawn_pool()
    _, test = split.split(pool, settings)
    gone = test.id[0]
    keep = np.flatnonzero(pool.id != gone)
    with pytest.raises(split.SplitError, match=rf"frozen test sample\(s\) are not in the data \(e.g. {gone}\)"):
        split.split(pool.subset(keep), settings)


def test_case_loss_never_sees_a_sample_without_a_case_label() -> None:
    """Drawings with CASE_UNKNOWN (and digits) add nothing to the case loss or its gradient, whatever the logit."""
    logits = torch.tensor([3.0, -2.0, 40.0, -40.0], requires_grad=True)
    case = torch.tensor([1, 0, labels.CASE_UNKNOWN, labels.CASE_NONE])
    loss = masked_case_loss(logits, case)
    loss.backward()
    assert logits.grad is not None and logits.grad[2] == 0 and logits.grad[3] == 0
    assert loss.item() == pytest.approx(masked_case_loss(logits[:2].detach(), case[:2]).item())
    # and through the LightningModule's own loss: a batch of CoMNIST letters only has no case loss at all
    lit = LitUkrHw(net_config={"width": 4, "hidden": 8})
    x = torch.rand(4, 1, 28, 28)
    ink = torch.rand(4, 2)
    sym, case_logit = lit(x, ink)
    _, _, case_loss = lit._losses(sym, case_logit, torch.tensor([10, 11, 12, 13]), torch.full((4,), -2))
    assert case_loss.item() == 0.0
