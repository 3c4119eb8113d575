"""The sketchpad's rate limits: saves (confirmations and corrections) per source address and per session,
recognitions per source address (``ui_*`` settings), and who the sender is.

The address is the connecting one, which uvicorn replaces by the forwarded one only for connections from
``ui_trusted_proxies`` (:func:`forwarded_allow`, around the server's start). A refusal is a :class:`UserError`
that says which limit and how long to wait; a refused event is counted nowhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ukr_hw.feedback import source_address, source_id, source_salt
from ukr_hw.settings import Settings
from ukr_hw.ui.messages import UserError, refusal_text
from ukr_hw.ui.ratelimit import Limit, RateLimiter

log = logging.getLogger(__name__)

Checks = list[tuple[str, Limit]]


class Limits:
    """The limits of one sketchpad process, over one :class:`RateLimiter`; ``salt`` hashes addresses into the
    records' ``source`` (:meth:`source`) and the log."""

    def __init__(
        self, per_address: Limit, per_session: Limit, predicts: Limit, salt: str, limiter: RateLimiter | None = None
    ) -> None:
        self.per_address = per_address
        self.per_session = per_session
        self.predicts = predicts
        self.salt = salt
        self.limiter = limiter or RateLimiter()

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        window = settings.ui_saves_window_s
        return cls(
            per_address=Limit(settings.ui_saves_per_address, window),
            per_session=Limit(settings.ui_saves_per_session, window),
            predicts=Limit(settings.ui_predicts_per_address, settings.ui_predicts_window_s),
            salt=source_salt(settings),
        )

    def source(self, address: str | None) -> str | None:
        """What a record from ``address`` stores as ``source`` (None without an address)."""
        return source_id(address, self.salt)

    def take_recognition(self, address: str | None) -> None:
        """One recognition for ``address`` (none counted without one), or :class:`UserError`."""
        if address is not None:
            self._take([(f"addr-predict:{address}", self.predicts)], "recognitions", "asked for")

    def take_save(self, client_id: str, address: str | None) -> Checks:
        """One save for the session and the address, or :class:`UserError`; returns what :meth:`release` gives
        back when the save does not happen."""
        checks = [(f"session:{client_id}", self.per_session)]
        if address is not None:
            checks.append((f"addr-save:{address}", self.per_address))
        self._take(checks, "drawings", "saved")
        return checks

    def release(self, checks: Sequence[tuple[str, Limit]]) -> None:
        self.limiter.release(checks)

    def _take(self, checks: Checks, what: str, verb: str) -> None:
        """A slot under every limit, or a clear refusal (nothing done, nothing counted)."""
        refused = self.limiter.acquire(checks)
        if refused is None:
            return
        lim = refused.limit
        kind, _, who = refused.key.partition(":")
        log.info(
            "rate limit: %s %s reached %d %s in %.0f s; refused",
            kind,
            who if kind == "session" else source_id(who, self.salt),
            lim.count,
            what,
            lim.window_s,
        )
        raise UserError(refusal_text(refused, what, verb), "Slow down, please")


def request_address(request: Any) -> str | None:
    """The sender's address as the limits count it (a ``gr.Request``, or anything with ``.client.host``): the
    connecting address, which uvicorn has already replaced by the forwarded one when (and only when) the connection
    came from a trusted proxy (see :func:`forwarded_allow`)."""
    client = getattr(request, "client", None) if request is not None else None
    return source_address(getattr(client, "host", None))


@contextlib.contextmanager
def forwarded_allow(proxies: list[str]) -> Iterator[None]:
    """uvicorn believes X-Forwarded-For from the hosts in ``FORWARDED_ALLOW_IPS`` (default: loopback, which would
    let any local client pick its address): only ``proxies`` (``ui_trusted_proxies``) while the server is created."""
    old = os.environ.get("FORWARDED_ALLOW_IPS")
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FORWARDED_ALLOW_IPS", None)
        else:
            os.environ["FORWARDED_ALLOW_IPS"] = old
