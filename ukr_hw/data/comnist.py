"""CoMNIST: Cyrillic letters drawn in a web browser by many contributors (CC BY-SA 4.0, attribution required).

Upstream: the 28×28 copy in ``github.com/absoluteteam/ocr`` (pinned commit, folder ``Cyrillic/<Letter>/<id>.png``)
of Grégoire Vial's CoMNIST (``github.com/GregVial/CoMNIST``). Every file the project uses is listed with its
sha256 in ``comnist.sha256`` beside this module; ingest copies (mirror) or extracts (download) exactly those files
and checks each one, so what trains is byte-for-byte what was measured.

* **Labels**: the folder is a capital of the Russian alphabet. Ё Ъ Ы Э are not Ukrainian and are left out (counted);
  the Russian «И» and «Й» are the Ukrainian «и» and «й»; every other letter maps to itself. CoMNIST has no «ґ», «є»,
  «і», «ї».
* **Case is not labelled** (most drawings are capitals, some small letters): the samples get
  ``labels.CASE_UNKNOWN`` and train the symbol head only (the case loss and case metrics skip them).
* **Sessions**: a file name is a PHP ``uniqid`` whose first 8 hex digits are the Unix second it was drawn; drawings
  less than :data:`SESSION_GAP_S` apart belong to one drawing session, i.e. one writer at one sitting. Sample ids
  carry their session (``comnist/<session>/<Letter>/<file>``) so that every split keeps a session whole
  (:func:`session_of`, :func:`pick_sessions`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ukr_hw import labels
from ukr_hw.data.arrays import Samples
from ukr_hw.data.parallel import chunks, pool_map, preprocess_files
from ukr_hw.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "comnist"
FOLDER = "Cyrillic"
MANIFEST = Path(__file__).resolve().parent / "comnist.sha256"
SESSION_GAP_S = 600  #: drawings under 10 minutes apart are one session
ATTRIBUTION = (
    "CoMNIST (Grégoire Vial and contributors, github.com/GregVial/CoMNIST; the 28×28 copy of "
    "github.com/absoluteteam/ocr), licence CC BY-SA 4.0"
)

#: CoMNIST folder (a Russian capital) → Ukrainian symbol; None: not a Ukrainian letter, left out.
LETTER_MAP: dict[str, str | None] = {
    **{c: c.lower() for c in "АБВГДЕЖЗКЛМНОПРСТУФХЦЧШЩЬЮЯ"},
    "И": "и",  # the Russian «И» is the Ukrainian «и» (not «і»)
    "Й": "й",
    "Ё": None,
    "Ъ": None,
    "Ы": None,
    "Э": None,
}


class ComnistError(RuntimeError):
    """CoMNIST files are missing, corrupt or cannot be fetched; the message names the file and what to do."""


# --------------------------------------------------------------------------------------------------------------
# manifest and ingest


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """``{"Cyrillic/А/58a….png": sha256}`` from a ``sha256sum``-style file."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip()] = digest
    return out


def write_manifest(folder: Path, path: Path = MANIFEST) -> int:
    """Write the manifest of every PNG under ``folder/Cyrillic`` (maintainers: after a mirror changes)."""
    files = sorted(p for p in (Path(folder) / FOLDER).rglob("*.png"))
    lines = [f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check(path: Path, rel: str, expected: str, where: str) -> None:
    if not path.is_file():
        raise ComnistError(
            f"CoMNIST file {rel} is missing from {where}; the manifest {MANIFEST.name} lists it. Restore it (or set "
            "UKR_HW_DATA_MIRROR to a folder with comnist/Cyrillic/, or unset it to download the pinned commit)."
        )
    actual = _sha256(path)
    if actual != expected:
        raise ComnistError(
            f"CoMNIST file {rel} in {where} is corrupt or not the published file (sha256 {actual[:12]}…, expected "
            f"{expected[:12]}…); delete it and fetch it again from the mirror or the pinned upstream commit."
        )


def ingest(settings: Settings, manifest: dict[str, str] | None = None) -> tuple[Path, int]:
    """The manifest's files into ``raw_dir/comnist/Cyrillic``, each checked; returns (folder, files copied)."""
    from ukr_hw.data.ingest import _copy_if_changed, _download, _same_file

    manifest = manifest if manifest is not None else read_manifest()
    dst = settings.raw_dir / SOURCE
    if settings.data_mirror is not None:
        src = Path(settings.data_mirror).expanduser() / SOURCE
        if not (src / FOLDER).is_dir():
            raise ComnistError(
                f"{src / FOLDER} is missing: the mirror {settings.data_mirror} must hold comnist/Cyrillic/<Letter>/"
                "*.png (like shared/datasets); fix UKR_HW_DATA_MIRROR, unset it to download, or set "
                "UKR_HW_COMNIST=false."
            )
        copied = 0
        for rel, digest in manifest.items():
            target = dst / rel
            if not _same_file(src / rel, target):
                _check(src / rel, rel, digest, f"the mirror {src}")  # never copy a bad file over a good one
                copied += _copy_if_changed(src / rel, target)
        extra = sum(1 for _ in (src / FOLDER).rglob("*.png")) - len(manifest)
        if extra > 0:
            log.warning("comnist: %d files in the mirror are not in the manifest; left out", extra)
        return dst, copied
    if all((dst / rel).is_file() for rel in manifest):
        return dst, 0  # already extracted (the commit is pinned); the files are checked when prepared
    url = settings.comnist_archive_url.format(repo=settings.comnist_repo, commit=settings.comnist_commit)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "comnist.tar.gz"
        _download(url, archive, f"CoMNIST @ {settings.comnist_commit[:7]}")
        copied = _extract(archive, dst, manifest, url)
    for rel, digest in manifest.items():
        _check(dst / rel, rel, digest, f"the archive from {url}")
    return dst, copied


def _extract(archive: Path, dst: Path, manifest: dict[str, str], url: str) -> int:
    """The manifest's files out of the upstream tarball (``<repo>-<commit>/Cyrillic/…``); nothing else."""
    count = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                parts = Path(m.name).parts
                if not m.isfile() or FOLDER not in parts:
                    continue
                rel = Path(*parts[parts.index(FOLDER) :]).as_posix()
                if rel not in manifest:
                    continue  # the drawings kept back as an independent evaluation set
                fh = tar.extractfile(m)
                assert fh is not None
                out = dst / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(out.name + ".part")
                with open(tmp, "wb") as w:
                    shutil.copyfileobj(fh, w)
                os.replace(tmp, out)
                count += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ComnistError(f"the CoMNIST archive from {url} is corrupt ({exc}); run `ukr-hw prepare` again.") from exc
    return count


# --------------------------------------------------------------------------------------------------------------
# rows, sessions, samples


@dataclass(frozen=True)
class Drawing:
    file: Path
    letter: str  #: the CoMNIST folder name
    symbol: str  #: the Ukrainian symbol
    second: int  #: Unix second it was drawn (from the uniqid)
    session: str = ""

    @property
    def id(self) -> str:
        return f"{SOURCE}/{self.session}/{self.letter}/{self.file.name}"


@dataclass(frozen=True)
class Scan:
    drawings: list[Drawing]
    excluded: dict[str, int] = field(default_factory=dict)  #: not Ukrainian (Ё Ъ Ы Э) → count
    sessions: int = 0


def drawn_at(name: str) -> int:
    """The Unix second a uniqid file name was made (its first 8 hex digits)."""
    try:
        return int(Path(name).stem[:8], 16)
    except ValueError as exc:
        raise ComnistError(f"CoMNIST file name {name!r} is not a PHP uniqid (8+ hex digits)") from exc


def scan(folder: Path, manifest: dict[str, str] | None = None, session_limit: int | None = None) -> Scan:
    """The manifest's drawings under ``folder`` (``raw_dir/comnist``), labelled, grouped into sessions."""
    manifest = manifest if manifest is not None else read_manifest()
    every = sorted((drawn_at(Path(rel).name), rel) for rel in manifest)
    excluded: Counter[str] = Counter()
    out: list[Drawing] = []
    sessions: list[str] = []
    last = None
    for second, rel in every:  # sessions over every drawing, those of letters left out too: they are one sitting
        if last is None or second - last >= SESSION_GAP_S:
            if session_limit is not None and len(sessions) >= session_limit:
                break
            sessions.append(f"s{second:08x}")
        last = second
        letter = Path(rel).parent.name
        if letter not in LETTER_MAP:
            raise ComnistError(f"CoMNIST folder {letter!r} (file {rel}) is not a Cyrillic capital this ingest knows")
        symbol = LETTER_MAP[letter]
        if symbol is None:
            excluded[letter] += 1
        else:
            out.append(Drawing(Path(folder) / rel, letter, symbol, second, sessions[-1]))
    return Scan(out, dict(sorted(excluded.items())), len(sessions))


def session_of(sample_id: str) -> str | None:
    """The drawing session of a CoMNIST sample id (None for other sources)."""
    parts = str(sample_id).split("/")
    return parts[1] if len(parts) >= 4 and parts[0] == SOURCE else None


def pick_sessions(ids: list[str], fraction: float, seed: int, max_share: float = 0.05) -> set[str]:
    """Whole sessions holding about ``fraction`` of the drawings of ``ids``, drawn at random (seeded).

    Sessions larger than ``max_share`` of all drawings are never picked, so a held-out part is many writers, not
    the one who drew 1,700 letters in an afternoon.
    """
    sizes = Counter(s for s in map(session_of, ids) if s is not None)
    total = sum(sizes.values())
    picked: set[str] = set()
    n = 0
    for k in np.random.default_rng(seed).permutation(len(sizes)):
        if n >= fraction * total:
            break
        s = sorted(sizes)[int(k)]
        if sizes[s] <= max(1, max_share * total):
            picked.add(s)
            n += sizes[s]
    return picked


def prep(drawings: list[Drawing], workers: int = 2) -> tuple[Samples, list[tuple[str, str]]]:
    """Every drawing through the one ``preprocess`` path → Samples (case unknown); (id, reason) of the rejects."""
    files = chunks([str(d.file) for d in drawings], 256)
    results = [r for part in pool_map(preprocess_files, files, workers) for r in part]
    keep, bad, xs, inks = [], [], [], []
    for d, res in zip(drawings, results, strict=True):
        if isinstance(res, str):
            bad.append((d.id, res))
            continue
        keep.append(d)
        xs.append(res[0])
        inks.append(res[1])
    for sid, reason in bad:
        log.warning("comnist drawing %s rejected: %s", sid, reason)
    samples = Samples(
        x=np.stack(xs) if xs else np.zeros((0, 28, 28)),
        y=[labels.index_of(d.symbol) for d in keep],
        case=[labels.CASE_UNKNOWN] * len(keep),
        ink=np.stack(inks) if inks else np.zeros((0, 2)),
        source=[SOURCE] * len(keep),
        id=[d.id for d in keep],
    )
    return samples, bad
