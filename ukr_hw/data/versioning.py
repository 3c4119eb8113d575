"""DVC for data only: track ``data/raw`` and ``data/processed``, push them to the configured remote.

The remote comes from settings (``dvc_remote_url``: a local folder by default, or ``s3://bucket/prefix`` with
``dvc_remote_endpoint_url`` for MinIO/SeaweedFS). It is written to ``.dvc/config.local`` (never committed), so the
committed ``.dvc/config`` stays generic; S3 credentials come only from the environment (``AWS_ACCESS_KEY_ID`` …,
or the ``UKR_HW_S3_*`` settings passed through the environment of the DVC process).

The data version is the DVC hash of ``data/processed`` (the ``md5`` in ``data/processed.dvc``); ``data/raw``
(users' snapshotted samples in ``data/raw/feedback`` too) has its own (:func:`raw_version`), logged with a retrain's
run. The manifest and the step cache inside ``data/processed`` are excluded via ``.dvcignore`` so the version
depends on the data only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ukr_hw.settings import Settings

log = logging.getLogger(__name__)

REMOTE_NAME = "storage"
DVC_TIMEOUT_S = 900


class VersioningError(RuntimeError):
    """A DVC command failed; the message holds the command and DVC's own explanation."""


def _rel(settings: Settings, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(settings.root.resolve()).as_posix()
    except ValueError as exc:
        raise VersioningError(
            f"{path} is outside the project root {settings.root}; DVC can only track data inside the repository."
        ) from exc


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    if settings.s3_access_key_id and "AWS_ACCESS_KEY_ID" not in env:
        env["AWS_ACCESS_KEY_ID"] = settings.s3_access_key_id
    if settings.s3_secret_access_key and "AWS_SECRET_ACCESS_KEY" not in env:
        env["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def dvc(settings: Settings, *args: str) -> str:
    """Run ``dvc ARGS`` in the project root (the dvc of this interpreter); its output, or a clear error."""
    cmd = [sys.executable, "-m", "dvc", *args]
    try:
        proc = subprocess.run(
            cmd, cwd=settings.root, env=_env(settings), capture_output=True, text=True, timeout=DVC_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise VersioningError(f"`dvc {' '.join(args)}` took longer than {DVC_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise VersioningError(
            f"`dvc {' '.join(args)}` failed in {settings.root} (exit {proc.returncode}):\n"
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc.stdout


def ensure_repo(settings: Settings) -> None:
    """``dvc init`` the root if needed (``--no-scm`` outside git) and keep the manifest/cache out of the hash."""
    root = settings.root
    if not (root / ".dvc").is_dir():
        args = ["init", "-q"] if (root / ".git").exists() else ["init", "-q", "--no-scm"]
        dvc(settings, *args)
        log.info("initialised DVC in %s", root)
    processed = _rel(settings, settings.processed_dir)
    wanted = [f"/{processed}/manifest.json", f"/{processed}/.cache"]
    ignore = root / ".dvcignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [w for w in wanted if w not in lines]
    if missing:
        ignore.write_text("\n".join([*lines, *missing]) + "\n")


def configure_remote(settings: Settings) -> str:
    """Point the default remote at ``settings.dvc_remote_url`` (in ``.dvc/config.local``); returns the URL."""
    url = settings.dvc_remote_url
    if "://" not in url:
        url = str(settings.path(url))
        Path(url).mkdir(parents=True, exist_ok=True)
    dvc(settings, "remote", "add", "--local", "--force", "--default", REMOTE_NAME, url)
    if settings.dvc_remote_endpoint_url:
        dvc(settings, "remote", "modify", "--local", REMOTE_NAME, "endpointurl", settings.dvc_remote_endpoint_url)
    return url


def data_version(settings: Settings) -> str | None:
    """The DVC hash of ``data/processed`` (from ``data/processed.dvc``), or None when it is not tracked yet."""
    return _dvc_hash(settings.processed_dir)


def raw_version(settings: Settings) -> str | None:
    """The DVC hash of ``data/raw`` (users' feedback snapshot included): what the processed data was built from."""
    return _dvc_hash(settings.raw_dir)


def _dvc_hash(folder: Path) -> str | None:
    dvc_file = folder.with_name(folder.name + ".dvc")
    if not dvc_file.exists():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    md5 = str(outs[0].get("md5") or "")
    return md5.removesuffix(".dir") or None


def version_data(settings: Settings, push: bool = True) -> str:
    """``dvc add`` raw and processed data, push when asked (and ``settings.dvc_push``); returns the data version."""
    ensure_repo(settings)
    targets = [_rel(settings, p) for p in (settings.raw_dir, settings.processed_dir) if p.exists()]
    dvc(settings, "add", "-q", *targets)
    version = data_version(settings)
    if version is None:
        raise VersioningError(f"`dvc add` did not produce {settings.processed_dir}.dvc")
    if push and settings.dvc_push:
        url = configure_remote(settings)
        dvc(settings, "push", "-q", "-r", REMOTE_NAME, *(t + ".dvc" for t in targets))
        log.info("pushed data version %s to %s", version, url)
    return version
