"""Input digests and output stamps: skip a prep step when its outputs exist and its inputs did not change.

A step computes a digest of everything its outputs depend on (input file contents, the settings that matter, the
source of the code that does the work). After writing its outputs it stores that digest in a small JSON stamp next
to them. On the next run, if every output still exists and the stamp holds the same digest, the step is skipped.
This works the same with or without an orchestrator and survives deleted caches: a missing output is rebuilt.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file's bytes (streamed)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(*parts: Any) -> str:
    """A stable SHA-256 over JSON-able parts, files (their MD5), and modules (their source)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(f"file:{part.name}:{file_md5(part)}".encode())
        elif isinstance(part, ModuleType):
            h.update(f"module:{part.__name__}:".encode() + inspect.getsource(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str, ensure_ascii=False).encode())
        h.update(b"\x00")
    return h.hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """Digest over many files (names + contents), order-independent."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(f"{p.name}:{file_md5(p)}\n".encode())
    return h.hexdigest()


def _stamp_path(stamp_dir: Path, name: str) -> Path:
    return Path(stamp_dir) / f".{name}.stamp.json"


def is_fresh(stamp_dir: Path, name: str, key: str, outputs: Iterable[Path]) -> bool:
    """True when every output exists and the stamp ``name`` records ``key``."""
    stamp = _stamp_path(stamp_dir, name)
    if not stamp.exists() or not all(Path(o).exists() for o in outputs):
        return False
    try:
        return json.loads(stamp.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def write_stamp(stamp_dir: Path, name: str, key: str, **info: Any) -> None:
    """Record that the outputs of step ``name`` were built from inputs with digest ``key`` (atomic)."""
    stamp = _stamp_path(stamp_dir, name)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, **info}, sort_keys=True, default=str))
    os.replace(tmp, stamp)


def read_stamp(stamp_dir: Path, name: str) -> dict[str, Any]:
    stamp = _stamp_path(stamp_dir, name)
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}
