"""Rukopys: clean the label table and turn every good row's scan into a prepared sample.

``glyphs.csv`` columns used: ``label`` (the letter), ``is_uppercase`` (True/False), ``filename``
(``glyphs/<name>.png``). The box columns (top/bottom/left/right/height/width) do not match the pixels reliably
and are ignored: boxes come from the ink, through :func:`ukr_hw.preprocess.preprocess`.

Bad rows are never dropped silently: each is returned with its reason, logged, and written to
``bad_rows.csv`` so that someone can fix the table.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ukr_hw import labels
from ukr_hw.data.arrays import Samples
from ukr_hw.data.parallel import chunks, pool_map, preprocess_files

log = logging.getLogger(__name__)

SOURCE = "rukopys"
REQUIRED_COLUMNS = ("label", "is_uppercase", "filename")
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}
BAD_ROW_FIELDS = ("source", "line", "file", "label", "is_uppercase", "reason")


class RukopysError(ValueError):
    """The Rukopys table or folder cannot be used at all (not a single bad row); the message says why."""


@dataclass(frozen=True)
class GlyphRow:
    symbol: str  #: canonical lowercase symbol
    case: int  #: 1 upper, 0 lower, -1 none
    file: Path  #: the scan

    @property
    def id(self) -> str:
        return f"{SOURCE}/{self.file.name}"


@dataclass(frozen=True)
class BadRow:
    source: str
    line: int  #: line number in the CSV (header = 1); 0 when not from a CSV line
    file: str
    label: str
    is_uppercase: str
    reason: str


@dataclass(frozen=True)
class CleanResult:
    rows: list[GlyphRow]
    bad: list[BadRow]


def parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"is_uppercase must be True or False, got {text!r}")


def clean(rukopys_dir: Path) -> CleanResult:
    """Validate every row of ``rukopys_dir/glyphs.csv``; good rows as :class:`GlyphRow`, bad ones with a reason."""
    rukopys_dir = Path(rukopys_dir)
    table = rukopys_dir / "glyphs.csv"
    if not table.exists():
        raise RukopysError(f"{table} is missing; run the ingest step (`ukr-hw prepare`) or check the data mirror.")
    rows: list[GlyphRow] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    with open(table, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise RukopysError(
                f"{table} lacks the column(s) {', '.join(missing)} (has: {', '.join(reader.fieldnames or [])}); "
                "it must be the Rukopys glyphs.csv."
            )
        for line, rec in enumerate(reader, start=2):
            label, upper, filename = (str(rec.get(c) or "").strip() for c in REQUIRED_COLUMNS)
            row, reason = _check_row(rukopys_dir, label, upper, filename, seen)
            if row is None:
                bad.append(BadRow(SOURCE, line, filename, label, upper, reason))
                continue
            seen[row.file.name] = line
            rows.append(row)
    for b in bad:
        log.warning("rukopys bad row (line %d, %s): %s", b.line, b.file, b.reason)
    if not rows:
        raise RukopysError(f"{table} has no usable rows ({len(bad)} bad); see the reasons in bad_rows.csv.")
    return CleanResult(rows, bad)


def _check_row(
    rukopys_dir: Path, label: str, upper: str, filename: str, seen: dict[str, int]
) -> tuple[GlyphRow | None, str]:
    try:
        symbol = labels.normalize_symbol(label)
    except labels.UnknownSymbolError as exc:
        return None, f"unknown label: {exc}"
    try:
        case = labels.case_target(symbol, parse_bool(upper))
    except ValueError as exc:
        return None, f"bad is_uppercase: {exc}"
    if not filename:
        return None, "empty filename"
    path = rukopys_dir / filename
    if not path.is_file():
        return None, f"image file not found: {path}"
    if path.name in seen:
        return None, f"duplicate file: already listed on line {seen[path.name]}"
    return GlyphRow(symbol, case, path), ""


def write_bad_rows(bad: list[BadRow], path: Path) -> Path:
    """Write the bad-row report (header only when there are none, so a stale report never lingers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=BAD_ROW_FIELDS)
        writer.writeheader()
        writer.writerows(asdict(b) for b in bad)
    os.replace(tmp, path)
    return path


def prep_glyphs(rows: list[GlyphRow], workers: int = 2) -> tuple[Samples, list[BadRow]]:
    """Every clean row's scan → :class:`Samples` (source ``rukopys``, id ``rukopys/<file>``).

    A scan that cannot be read or holds no ink becomes a :class:`BadRow` naming the file and the reason.
    """
    results = [r for part in pool_map(preprocess_files, chunks([str(r.file) for r in rows], 32), workers) for r in part]
    keep, bad = [], []
    xs, inks = [], []
    for row, res in zip(rows, results, strict=True):
        if isinstance(res, str):
            bad.append(BadRow(SOURCE, 0, str(row.file), row.symbol, str(row.case == labels.CASE_UPPER), res))
            log.warning("rukopys image %s rejected: %s", row.file, res)
            continue
        keep.append(row)
        xs.append(res[0])
        inks.append(res[1])
    samples = Samples(
        x=np.stack(xs) if xs else np.zeros((0, 28, 28)),
        y=[labels.index_of(r.symbol) for r in keep],
        case=[r.case for r in keep],
        ink=np.stack(inks) if inks else np.zeros((0, 2)),
        source=[SOURCE] * len(keep),
        id=[r.id for r in keep],
    )
    return samples, bad
