"""Uploads the spool in the background while the UI runs, backing off while S3 stays down.

A save while S3 is unreachable lands in the local spool (:meth:`FeedbackStore.save`); :class:`SpoolFlusher` tries
:meth:`FeedbackStore.flush_spool` every few seconds in a daemon thread, doubling the wait while the store is
unreachable, so samples reach S3 soon after it is back without the next user's save having to carry them.
Its :meth:`SpoolFlusher.status` is what the UI's health output shows.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ukr_hw.feedback.record import StoreUnavailable

if TYPE_CHECKING:
    from ukr_hw.feedback.store import FeedbackStore

log = logging.getLogger("ukr_hw.feedback")  # the package's logger, as before the package was split


class SpoolFlusher:
    """Uploads the spool in a daemon thread while the UI runs: every ``interval_s`` while the store is reachable,
    backing off (doubling, up to ``max_backoff_s``) while it is not. Each attempt with samples waiting logs how
    many and the age of the oldest; :meth:`status` is what the UI's health output shows."""

    def __init__(self, store: FeedbackStore, interval_s: float = 10.0, max_backoff_s: float = 300.0) -> None:
        self.store = store
        self.interval_s = max(0.05, float(interval_s))
        self.max_backoff_s = max(self.interval_s, float(max_backoff_s))
        self.delay_s = self.interval_s
        self.last_error: str | None = None
        self.last_attempt: datetime | None = None
        self.last_success: datetime | None = None
        self.uploaded = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SpoolFlusher:
        if self.store.spool is not None and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="feedback-spool-flusher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Try now (e.g. a save just spooled a sample), without waiting out the back-off."""
        self._wake.set()

    def flush_once(self) -> int:
        """One attempt; returns how many samples were uploaded (0 on failure, with :attr:`last_error` set)."""
        status = self.store.spool_status()
        if not status["pending"]:
            self.delay_s = self.interval_s
            return 0
        self.last_attempt = datetime.now(UTC)
        try:
            done = self.store.flush_spool()
        except StoreUnavailable as exc:
            self.last_error = str(exc)
            self.delay_s = min(self.max_backoff_s, self.delay_s * 2)
            log.warning(
                "feedback spool: %d samples waiting, the oldest %s old; %s is unreachable (%s); next try in %.0f s",
                status["pending"],
                _age(status["oldest_age_s"]),
                self.store.description,
                exc,
                self.delay_s,
            )
            return 0
        except Exception as exc:  # never let the thread die; the spool keeps the samples
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.delay_s = min(self.max_backoff_s, self.delay_s * 2)
            log.exception("feedback spool: upload failed; next try in %.0f s", self.delay_s)
            return 0
        self.last_error = None
        self.last_success = datetime.now(UTC)
        self.uploaded += done
        self.delay_s = self.interval_s
        left = self.store.spool_status()
        log.info(
            "feedback spool: uploaded %d samples to %s (the oldest was %s old); %d waiting",
            done,
            self.store.description,
            _age(status["oldest_age_s"]),
            left["pending"],
        )
        return done

    def status(self) -> dict[str, Any]:
        """The spool (``pending``, ``oldest_sample``, ``oldest_age_s``) and the flusher's last attempt."""

        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat(timespec="seconds").replace("+00:00", "Z")

        return {
            **self.store.spool_status(),
            "uploaded": self.uploaded,
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "next_try_in_s": round(self.delay_s, 1),
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.flush_once()
            self._wake.wait(self.delay_s)
            self._wake.clear()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
