"""The store's reading half: list committed samples by date, read one (checked against its sha256), and move a
broken one aside under ``quarantine/``.

Only the date prefixes a question needs are listed (``YYYY/MM/DD/`` from ``since`` to today), and only ``.json``
records count, so a sample whose record is not written yet is never seen half-done. Spooled samples uploaded late
are found through ``arrivals/`` (:meth:`Reading.late_arrivals`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ukr_hw import labels
from ukr_hw.feedback.record import (
    _NOT_SAMPLES,
    ARRIVALS,
    OPTIONAL_FIELDS,
    QUARANTINE,
    REQUIRED_FIELDS,
    CorruptSample,
    SampleRef,
    as_ref,
    ref_for_id,
)
from ukr_hw.feedback.storage import Backend


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


class Reading:
    """List, read and quarantine; ``backend`` is set by :class:`FeedbackStore`."""

    backend: Backend

    def _prefixes(self, since: datetime | None) -> list[str]:
        if since is None:
            return [""]
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        start, end = since.astimezone(UTC).date(), datetime.now(UTC).date() + timedelta(days=1)
        if start > end:
            return []
        days = _days(start, end)
        if len(days) <= 62:
            return [f"{d:%Y/%m/%d}/" for d in days]
        months = sorted({f"{d:%Y/%m}/" for d in days})
        return months if len(months) <= 36 else [""]

    def list_since(self, since: datetime | None = None) -> list[SampleRef]:
        """Committed samples (those with a JSON record) created after ``since`` (all when None), oldest first.

        Only the date prefixes from ``since`` to today are listed. Quarantined samples are not included; rejected ones
        are (they stay in the store): leave out :meth:`rejected_ids` where they must not count.
        """
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        refs: set[SampleRef] = set()
        for prefix in self._prefixes(since):
            for key in self.backend.list(prefix):
                if not key.endswith(".json") or key.startswith(_NOT_SAMPLES):
                    continue
                ref = SampleRef(key[: -len(".json")])
                created = ref.created_at
                if since is not None and created is not None and created <= since:
                    continue
                refs.add(ref)
        return sorted(refs, key=lambda r: (r.sample_id, r.key))

    def late_arrivals(self, since: datetime | None = None) -> list[SampleRef]:
        """Samples uploaded from the spool (``arrivals/``) on the days since ``since`` (all when None), whatever
        day they were drawn: with :meth:`list_since` from a high-water mark, no late upload is ever skipped."""
        refs: set[SampleRef] = set()
        for prefix in self._prefixes(since):
            for key in self.backend.list(f"{ARRIVALS}/{prefix}"):
                if key.endswith(".json"):
                    with contextlib.suppress(ValueError):
                        refs.add(ref_for_id(key.rsplit("/", 1)[-1][: -len(".json")]))
        return sorted(refs, key=lambda r: (r.sample_id, r.key))

    def read(self, ref: SampleRef | str) -> tuple[bytes, dict[str, Any]]:
        """``(png_bytes, record)``; raises :class:`CorruptSample` if the sample is broken.

        Fields of :data:`OPTIONAL_FIELDS` that an older record lacks are filled in with their defaults."""
        ref = as_ref(ref)
        try:
            raw = self.backend.get(ref.json_key)
        except KeyError as exc:
            raise CorruptSample(ref, "the JSON record is missing") from exc
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptSample(ref, f"the JSON record is not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise CorruptSample(ref, "the JSON record is not an object")
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise CorruptSample(ref, f"the JSON record lacks {', '.join(missing)}")
        try:
            labels.normalize_symbol(record["symbol"])
        except labels.UnknownSymbolError as exc:
            raise CorruptSample(ref, f"bad symbol: {exc}") from exc
        try:
            png = self.backend.get(ref.png_key)
        except KeyError as exc:
            raise CorruptSample(ref, "the PNG is missing") from exc
        if hashlib.sha256(png).hexdigest() != record["image_sha256"]:
            raise CorruptSample(ref, "the PNG does not match the record's sha256")
        for field, default in OPTIONAL_FIELDS.items():
            record.setdefault(field, default)
        return png, record

    def quarantine(self, ref: SampleRef | str, reason: str) -> str:
        """Move a sample (whatever parts exist) under ``quarantine/`` with a reason file; returns the new key."""
        ref = as_ref(ref)
        target = SampleRef(f"{QUARANTINE}/{ref.key}")
        note = {"sample": ref.key, "reason": reason, "quarantined_at": datetime.now(UTC).isoformat()}
        self.backend.put(target.key + ".reason.txt", json.dumps(note, ensure_ascii=False).encode(), "text/plain")
        for old, new in ((ref.png_key, target.png_key), (ref.json_key, target.json_key)):
            try:
                data = self.backend.get(old)
            except KeyError:
                continue
            self.backend.put(new, data, "application/octet-stream")
        # Remove the record first: the sample disappears from listings at once, the PNG follows.
        self.backend.delete(ref.json_key)
        self.backend.delete(ref.png_key)
        return target.key

    def quarantined(self) -> list[SampleRef]:
        """Samples under ``quarantine/`` (keys relative to the store root, with the quarantine prefix)."""
        return sorted(
            {
                SampleRef(k[: -len(".reason.txt")])
                for k in self.backend.list(QUARANTINE + "/")
                if k.endswith(".reason.txt")
            }
        )
