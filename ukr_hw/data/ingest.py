"""Ingest: bring the raw datasets into ``settings.raw_dir`` from a local mirror or their public upstreams.

Layout produced (and expected of a mirror)::

    raw_dir/rukopys/glyphs.csv         the Rukopys label table
    raw_dir/rukopys/glyphs/*.png       200×200 scans, black ink on white
    raw_dir/mnist/<4 IDX .gz files>    the canonical MNIST files

Every MNIST file is checked against its known MD5 whether it was copied or downloaded. Files whose size and
modification time already match the source are not copied again, so a warm run costs only the checks.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ukr_hw.data.stamps import file_md5
from ukr_hw.settings import Settings

log = logging.getLogger(__name__)

#: The canonical MNIST files and their MD5 sums.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
RUKOPYS_CSV = "glyphs.csv"
RUKOPYS_GLYPHS = "glyphs"
DOWNLOAD_TIMEOUT_S = 60.0


class IngestError(RuntimeError):
    """Raw data is missing, corrupt or cannot be fetched; the message names the file and what to do."""


@dataclass(frozen=True)
class RawData:
    rukopys: Path  #: folder with glyphs.csv and glyphs/
    mnist: Path  #: folder with the four IDX .gz files
    copied: int = 0  #: files copied or downloaded in this run (0 on a warm run)


# --------------------------------------------------------------------------------------------------------------
# helpers


def _same_file(src: Path, dst: Path) -> bool:
    if not dst.exists():
        return False
    a, b = src.stat(), dst.stat()
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` (atomically, keeping mtime) unless it already matches; True when copied."""
    if _same_file(src, dst):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return True


def check_mnist_file(path: Path) -> None:
    """Raise :class:`IngestError` unless ``path`` exists and has the canonical MD5."""
    name = path.name
    if not path.exists():
        raise IngestError(
            f"MNIST file {path} is missing; put the canonical {name} there (or set UKR_HW_DATA_MIRROR to a folder "
            "with mnist/, or unset it to download) and run `ukr-hw prepare` again."
        )
    actual = file_md5(path)
    if actual != MNIST_MD5[name]:
        raise IngestError(
            f"MNIST file {path} is corrupt or not the canonical file (md5 {actual}, expected {MNIST_MD5[name]}); "
            f"delete it and fetch {name} again from the MNIST distribution or the mirror."
        )


def _download(url: str, dst: Path, what: str) -> None:
    """Stream ``url`` into ``dst`` with a progress bar; a clear error when the URL cannot be fetched."""
    import httpx
    from tqdm.auto import tqdm

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        with (
            httpx.stream("GET", url, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_S) as resp,
            open(tmp, "wb") as fh,
        ):
            resp.raise_for_status()
            total = int(resp.headers.get("content-length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {what}") as bar:
                for chunk in resp.iter_bytes(1 << 16):
                    fh.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dst)
    except (httpx.HTTPError, OSError) as exc:
        raise IngestError(
            f"could not download {what} from {url} ({exc.__class__.__name__}: {exc}); check the network or set "
            "UKR_HW_DATA_MIRROR to a local folder laid out like shared/datasets (rukopys/, mnist/)."
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------------------------------
# Rukopys


def ingest_rukopys(settings: Settings) -> tuple[Path, int]:
    """Raw Rukopys into ``raw_dir/rukopys``: copied from the mirror, or the pinned upstream commit downloaded."""
    dst = settings.raw_dir / "rukopys"
    mirror = settings.data_mirror
    if mirror is not None:
        src = Path(mirror).expanduser() / "rukopys"
        csv = src / RUKOPYS_CSV
        if not csv.exists():
            raise IngestError(
                f"{csv} is missing: the mirror {mirror} must hold rukopys/glyphs.csv and rukopys/glyphs/*.png "
                "(like shared/datasets); fix UKR_HW_DATA_MIRROR or unset it to download from GitHub."
            )
        copied = _copy_if_changed(csv, dst / RUKOPYS_CSV)
        for png in sorted((src / RUKOPYS_GLYPHS).glob("*.png")):
            copied += _copy_if_changed(png, dst / RUKOPYS_GLYPHS / png.name)
        return dst, int(copied)
    if (dst / RUKOPYS_CSV).exists() and (dst / RUKOPYS_GLYPHS).is_dir():
        return dst, 0  # already downloaded (the commit is pinned, so it cannot have changed upstream)
    url = settings.rukopys_archive_url.format(repo=settings.rukopys_repo, commit=settings.rukopys_commit)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "rukopys.tar.gz"
        _download(url, archive, f"Rukopys @ {settings.rukopys_commit}")
        return dst, _extract_rukopys(archive, dst, url)


def _extract_rukopys(archive: Path, dst: Path, url: str) -> int:
    """Pull glyphs.csv and the glyph PNGs it sits next to out of the upstream tarball."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            csvs = [m for m in members if m.isfile() and Path(m.name).name == RUKOPYS_CSV]
            if not csvs:
                raise IngestError(f"the archive from {url} holds no {RUKOPYS_CSV}; check settings.rukopys_commit.")
            base = Path(min(csvs, key=lambda m: len(m.name)).name).parent
            count = 0
            for m in members:
                rel = Path(m.name)
                if not m.isfile() or base not in rel.parents:
                    continue
                rel = rel.relative_to(base)
                if rel.as_posix() == RUKOPYS_CSV or (rel.parts[0] == RUKOPYS_GLYPHS and rel.suffix == ".png"):
                    out = dst / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    fh = tar.extractfile(m)
                    assert fh is not None
                    out.write_bytes(fh.read())
                    count += 1
            return count
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise IngestError(f"the Rukopys archive from {url} is corrupt ({exc}); run `ukr-hw prepare` again.") from exc


# --------------------------------------------------------------------------------------------------------------
# MNIST


def ingest_mnist(settings: Settings) -> tuple[Path, int]:
    """The four MNIST IDX files into ``raw_dir/mnist``, each checked against its MD5."""
    dst = settings.raw_dir / "mnist"
    copied = 0
    for name in MNIST_MD5:
        target = dst / name
        if settings.data_mirror is not None:
            src = Path(settings.data_mirror).expanduser() / "mnist" / name
            if not src.exists():
                raise IngestError(
                    f"MNIST file {src} is missing from the mirror; put the canonical {name} there "
                    "(or unset UKR_HW_DATA_MIRROR to download it)."
                )
            if not _same_file(src, target):
                check_mnist_file(src)  # never copy a corrupt file over a good one
            copied += _copy_if_changed(src, target)
        elif not (target.exists() and file_md5(target) == MNIST_MD5[name]):
            _download(settings.mnist_base_url.rstrip("/") + "/" + name, target, f"MNIST {name}")
            copied += 1
        check_mnist_file(target)
    return dst, copied


def ingest(settings: Settings) -> RawData:
    """Both datasets (Rukopys, MNIST) into ``settings.raw_dir``."""
    rukopys, a = ingest_rukopys(settings)
    mnist, b = ingest_mnist(settings)
    log.info("ingest: %d files copied/downloaded into %s", a + b, settings.raw_dir)
    return RawData(rukopys=rukopys, mnist=mnist, copied=a + b)
