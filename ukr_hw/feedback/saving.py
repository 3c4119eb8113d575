"""The store's writing half: check a submission, write it (PNG first, JSON record last), spool it when S3 is down
and upload the spool later.

A sample's JSON record is its commit marker, so readers never see a half-written sample. A spooled sample keeps its
id and keys, so an upload repeated after a flush was cut short overwrites the same objects with the same bytes.
:class:`FeedbackStore` (:mod:`ukr_hw.feedback.store`) is built from this and the reading and review halves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from ukr_hw import labels
from ukr_hw.feedback.record import (
    ARRIVALS,
    SCHEMA_VERSION,
    InvalidSample,
    SampleRef,
    StoreUnavailable,
    new_sample_id,
    sample_key,
)
from ukr_hw.feedback.storage import Backend, LocalBackend
from ukr_hw.inference import DEFAULT_MODE, InvalidModeError, parse_mode
from ukr_hw.preprocess import EmptyImageError, PreprocessError, decode, preprocess
from ukr_hw.settings import Settings


class Saving:
    """Validate, save, spool and flush; the attributes are set by :class:`FeedbackStore`."""

    settings: Settings
    backend: Backend
    #: where samples wait while the backend is unreachable (None for a local folder backend)
    spool: LocalBackend | None
    _flush_lock: threading.Lock

    def validate(
        self,
        image_bytes: bytes,
        symbol: str,
        is_uppercase: bool | None,
        predicted_symbol: str | None = None,
        case_known: bool = True,
    ) -> tuple[bytes, Image.Image, str, bool | None, str | None]:
        """Check a submission; returns ``(png_bytes, image, symbol, is_uppercase, predicted_symbol)`` normalised.

        A letter needs its case (``is_uppercase`` true or false), unless ``case_known`` is false: then the writer
        did not say it and ``is_uppercase`` must be null."""
        s = self.settings
        if not isinstance(image_bytes, bytes | bytearray) or not image_bytes:
            raise InvalidSample("no image was sent: draw a letter or digit first.")
        if len(image_bytes) > s.max_upload_bytes:
            raise InvalidSample(
                f"the image is {len(image_bytes):,} bytes, over the limit of {s.max_upload_bytes:,}; "
                "send a smaller one."
            )
        try:
            img = decode(bytes(image_bytes), name="the drawing")
        except PreprocessError as exc:
            raise InvalidSample(str(exc)) from exc
        if max(img.size) > s.max_image_side:
            raise InvalidSample(
                f"the image is {img.width}×{img.height} pixels, over the limit of {s.max_image_side} per side; "
                "send a smaller one."
            )
        try:
            preprocess(img)
        except EmptyImageError as exc:
            raise InvalidSample("the drawing is empty (no ink found): draw a letter or digit first.") from exc
        except PreprocessError as exc:
            raise InvalidSample(str(exc)) from exc
        try:
            symbol = labels.normalize_symbol(symbol)
            predicted = None if predicted_symbol in (None, "") else labels.normalize_symbol(predicted_symbol)
        except labels.UnknownSymbolError as exc:
            raise InvalidSample(str(exc)) from exc
        if labels.is_digit(symbol):
            if is_uppercase is not None:
                raise InvalidSample(f"digit {symbol!r} has no upper- or lowercase: send is_uppercase = null.")
        elif not case_known:
            if is_uppercase is not None:
                raise InvalidSample(
                    f"letter {symbol!r} sent with is_uppercase={is_uppercase!r} and case_known false: send "
                    "is_uppercase = null when the case is not known, or case_known true with the case."
                )
        elif not isinstance(is_uppercase, bool):
            raise InvalidSample(
                f"letter {symbol!r} needs is_uppercase true or false: say which case you drew "
                "(or case_known false when you can't tell)."
            )
        if img.format == "PNG":
            png = bytes(image_bytes)
        else:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            png = buf.getvalue()
        return png, img, symbol, is_uppercase, predicted

    def save(
        self,
        image_bytes: bytes,
        symbol: str,
        is_uppercase: bool | None,
        predicted_symbol: str | None = None,
        predicted_is_uppercase: bool | None = None,
        model_version: str | None = None,
        client_id: str | None = None,
        mode: str | None = DEFAULT_MODE,
        source: str | None = None,
        case_known: bool = True,
    ) -> str:
        """Validate and store one sample; returns its ``sample_id``. Raises :class:`InvalidSample`.

        ``source`` identifies where the sample came from (the UI passes :func:`source_id` of the sender's address).
        ``case_known=False`` stores a letter whose writer did not say its case (``is_uppercase`` null): it trains
        the symbol head only.

        ``mode`` is the restriction the prediction was made under (``"any"``, ``"letters"`` or ``"digits"``, see
        :func:`ukr_hw.inference.restrict`). PNG first, JSON record last. If S3 is unreachable the sample goes to
        the spool (and is uploaded later).
        """
        try:
            mode = parse_mode(mode)
        except InvalidModeError as exc:
            raise InvalidSample(str(exc)) from exc
        png, img, symbol, is_uppercase, predicted = self.validate(
            image_bytes, symbol, is_uppercase, predicted_symbol, case_known
        )
        now = datetime.now(UTC)
        sample_id = new_sample_id(now)
        record = {
            "sample_id": sample_id,
            "symbol": symbol,
            "is_uppercase": is_uppercase,
            "predicted_symbol": predicted,
            "predicted_is_uppercase": None
            if predicted is None or labels.is_digit(predicted)
            else predicted_is_uppercase,
            "model_version": None if model_version is None else str(model_version),
            "mode": mode,
            "created_at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "client_id": client_id,
            "source": source,
            "case_known": bool(case_known) or labels.is_digit(symbol),
            "schema_version": SCHEMA_VERSION,
            "image_sha256": hashlib.sha256(png).hexdigest(),
            "image_width": img.width,
            "image_height": img.height,
            "image_bytes": len(png),
        }
        ref = SampleRef(sample_key(sample_id, now))
        data = json.dumps(record, ensure_ascii=False, indent=1).encode()
        try:
            self._write(self.backend, ref, png, data)
        except StoreUnavailable:
            if self.spool is None:
                raise
            self._write(self.spool, ref, png, data)
            return sample_id
        if self.spool is not None:
            with contextlib.suppress(StoreUnavailable):
                self.flush_spool()
        return sample_id

    @staticmethod
    def _write(backend: Backend, ref: SampleRef, png: bytes, record: bytes) -> None:
        backend.put(ref.png_key, png, "image/png")
        backend.put(ref.json_key, record, "application/json")  # the commit marker, always last

    # --- the spool -------------------------------------------------------------------------------------------

    def _spooled(self) -> list[SampleRef]:
        if self.spool is None:
            return []
        return sorted(SampleRef(k[: -len(".json")]) for k in self.spool.list("") if k.endswith(".json"))

    def pending(self) -> int:
        """Samples waiting in the spool."""
        return len(self._spooled())

    def spool_status(self) -> dict[str, Any]:
        """``{"pending": n, "oldest_sample": id or None, "oldest_age_s": seconds or None}`` of the spool."""
        refs = self._spooled()
        created = [r.created_at for r in refs if r.created_at is not None]
        oldest = min(created) if created else None
        return {
            "pending": len(refs),
            "oldest_sample": min(refs, key=lambda r: r.created_at or datetime.max.replace(tzinfo=UTC)).sample_id
            if refs
            else None,
            "oldest_age_s": None if oldest is None else round((datetime.now(UTC) - oldest).total_seconds(), 1),
        }

    def flush_spool(self) -> int:
        """Upload spooled samples (PNG then JSON), removing each from the spool once stored; returns how many.

        Idempotent: a sample keeps its id and keys, so an upload repeated after a flush was cut short (uploaded, not
        yet removed from the spool) overwrites the same objects with the same bytes: never a duplicate. One flush
        runs at a time per store (a second caller returns 0 at once). Raises :class:`StoreUnavailable` if the
        backend is still unreachable (what was uploaded stays uploaded, the rest stays spooled).
        """
        if self.spool is None:
            return 0
        if not self._flush_lock.acquire(blocking=False):
            return 0
        try:
            done = 0
            for ref in self._spooled():
                try:
                    record = self.spool.get(ref.json_key)
                except KeyError:  # removed meanwhile (flushed by another store on the same spool)
                    continue
                try:
                    png = self.spool.get(ref.png_key)
                except KeyError:  # should not happen (PNG is written first); keep the record visible as corrupt
                    png = None
                if png is not None:
                    self.backend.put(ref.png_key, png, "image/png")
                self.backend.put(ref.json_key, record, "application/json")
                # its arrival under today's date: its own date prefix may be older than a retrain's listing window
                self.backend.put(
                    f"{ARRIVALS}/{datetime.now(UTC):%Y/%m/%d}/{ref.sample_id}.json",
                    json.dumps({"key": ref.key, "uploaded_at": datetime.now(UTC).isoformat()}).encode(),
                    "application/json",
                )
                # the record first: once it is gone the sample no longer counts as pending
                self.spool.delete(ref.json_key)
                self.spool.delete(ref.png_key)
                done += 1
            return done
        finally:
            self._flush_lock.release()
