"""The store's review half: records with their ``source`` and rejection, and an operator's rejections.

A rejection never deletes: ``rejected/<sample_id>.json`` records the reason, who and when, the sample stays in the
store (and can be taken back), and :meth:`Review.rejected_ids` tells training what to leave out. ``ukr-hw feedback
list`` / ``reject`` are the command-line face of this.
"""

from __future__ import annotations

import getpass
import json
import logging
from datetime import UTC, datetime
from typing import Any

from ukr_hw.feedback.reading import Reading
from ukr_hw.feedback.record import (
    OPTIONAL_FIELDS,
    REJECTED,
    REQUIRED_FIELDS,
    CorruptSample,
    SampleRef,
    as_ref,
    ref_for_id,
)
from ukr_hw.feedback.storage import LocalBackend

log = logging.getLogger("ukr_hw.feedback")


class Review(Reading):
    """Records for review and rejections; ``backend`` and ``spool`` are set by :class:`FeedbackStore`."""

    spool: LocalBackend | None

    def read_record(self, ref: SampleRef | str) -> dict[str, Any]:
        """The JSON record only (no PNG read, no checksum), with :data:`OPTIONAL_FIELDS` defaults filled in.

        Raises :class:`CorruptSample` when it is missing, not JSON or lacks a required field."""
        ref = as_ref(ref)
        try:
            record = json.loads(self.backend.get(ref.json_key))
        except KeyError as exc:
            raise CorruptSample(ref, "the JSON record is missing") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptSample(ref, f"the JSON record is not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or any(f not in record for f in REQUIRED_FIELDS):
            raise CorruptSample(ref, "the JSON record is not a complete feedback record")
        for field, default in OPTIONAL_FIELDS.items():
            record.setdefault(field, default)
        return record

    def records(
        self,
        since: datetime | None = None,
        *,
        client_id: str | None = None,
        source: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[tuple[SampleRef, dict[str, Any]]]:
        """``(ref, record)`` of committed samples created after ``since`` (all when None), each record with its
        ``source`` (None when unknown) and ``rejected`` (the reason, or None), optionally only one client's or one
        source's, oldest first (or newest first), at most ``limit``. Records that cannot be read are skipped (and
        logged); :meth:`read` tells why."""
        refs = self.list_since(since)
        if newest_first:
            refs.reverse()
        rejected = self.rejected_ids()
        out: list[tuple[SampleRef, dict[str, Any]]] = []
        for ref in refs:
            if limit is not None and len(out) >= limit:
                break
            try:
                record = self.read_record(ref)
            except CorruptSample as exc:
                log.warning("skipping %s", exc)
                continue
            if client_id is not None and record.get("client_id") != client_id:
                continue
            if source is not None and record.get("source") != source:
                continue
            record["rejected"] = rejected.get(ref.sample_id)
            out.append((ref, record))
        return out

    def reject(self, sample_id: str, reason: str, by: str | None = None) -> dict[str, Any]:
        """Mark a sample rejected: it stays in the store, ``rejected/<sample_id>.json`` records why, who and when,
        and :meth:`rejected_ids` lists it so training leaves it out. Rejecting again replaces the note. Raises
        :class:`KeyError` for a sample that is not in the store (a spooled one is not, until it is uploaded)."""
        if not reason or not reason.strip():
            raise ValueError("a rejection needs a reason")
        ref = ref_for_id(sample_id)
        if not self.backend.exists(ref.json_key):
            spooled = self.spool is not None and self.spool.exists(ref.json_key)
            where = " (it is still in the spool: reject it once it is uploaded)" if spooled else ""
            raise KeyError(f"no feedback sample {sample_id} in {self.backend.description}{where}")
        note = {
            "sample_id": sample_id,
            "key": ref.key,
            "reason": reason.strip(),
            "by": by or _whoami(),
            "rejected_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        self.backend.put(
            f"{REJECTED}/{sample_id}.json", json.dumps(note, ensure_ascii=False).encode(), "application/json"
        )
        return note

    def reject_where(
        self,
        reason: str,
        *,
        client_id: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        by: str | None = None,
    ) -> list[str]:
        """Reject every sample of one client (``client_id``) or one ``source`` (created after ``since``); returns
        the ids newly rejected (ones already rejected keep their first note)."""
        if (client_id is None) == (source is None):
            raise ValueError("reject_where needs exactly one of client_id or source")
        done = []
        for ref, record in self.records(since, client_id=client_id, source=source):
            if record["rejected"] is None:
                self.reject(ref.sample_id, reason, by)
                done.append(ref.sample_id)
        return done

    def rejection(self, sample_id: str) -> dict[str, Any] | None:
        """The note of a rejected sample (``sample_id``, ``key``, ``reason``, ``by``, ``rejected_at``), else None."""
        try:
            return json.loads(self.backend.get(f"{REJECTED}/{sample_id}.json"))
        except KeyError:
            return None

    def unreject(self, sample_id: str) -> bool:
        """Take a rejection back; True when there was one."""
        key = f"{REJECTED}/{sample_id}.json"
        if not self.backend.exists(key):
            return False
        self.backend.delete(key)
        return True

    def rejected_ids(self) -> dict[str, str]:
        """``{sample_id: reason}`` of every rejected sample: what training must leave out. One listing of the
        ``rejected/`` prefix plus one small read per rejection; a note that cannot be read still rejects."""
        out: dict[str, str] = {}
        for key in self.backend.list(REJECTED + "/"):
            if not key.endswith(".json"):
                continue
            sample_id = key[len(REJECTED) + 1 : -len(".json")]
            try:
                out[sample_id] = str(json.loads(self.backend.get(key)).get("reason") or "rejected")
            except (KeyError, ValueError, AttributeError):
                out[sample_id] = "rejected (the note cannot be read)"
        return out


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
