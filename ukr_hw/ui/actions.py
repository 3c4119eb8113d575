"""What the sketchpad's buttons do, without Gradio: Recognise reads the drawing through the BentoML API, confirm
saves it with the reading, correct saves it with the symbol and case the user picked; all under the rate limits
(:mod:`ukr_hw.ui.limits`).

:class:`Actions` answers in plain values (:class:`Reading`, :class:`Saved`) and refuses with
:class:`~ukr_hw.ui.messages.UserError`; ``services/ui/app.py`` turns those into Gradio outputs and ``gr.Error``. A
session is the dict Gradio keeps per browser tab (:func:`session`): ``client_id``, ``count`` (drawings saved) and
``last`` (the reading that confirm would save). Saves go to :class:`ukr_hw.feedback.FeedbackStore`; samples spooled
while it is down are uploaded by a :class:`ukr_hw.feedback.SpoolFlusher`, which :func:`health` reports on.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from ukr_hw import labels
from ukr_hw.api_client import ApiClient, ApiError, ApiUnreachableError
from ukr_hw.feedback import FeedbackStore, InvalidSample, SpoolFlusher, StoreUnavailable, sketch_to_png
from ukr_hw.inference import DEFAULT_MODE, InvalidModeError, parse_mode
from ukr_hw.model.abstain import MESSAGE as NOT_ONE_SYMBOL
from ukr_hw.settings import Settings
from ukr_hw.ui.limits import Limits
from ukr_hw.ui.messages import (
    EMPTY_CANVAS,
    LOWER,
    UNSURE,
    UPPER,
    UserError,
    case_choice,
    count_text,
    result_html,
    top3,
    unreachable_text,
)

log = logging.getLogger(__name__)


def new_session() -> dict[str, Any]:
    return {"client_id": uuid.uuid4().hex, "count": 0, "last": None}


def session(state: dict[str, Any] | None) -> dict[str, Any]:
    """The tab's session: ``state`` itself once it has a ``client_id``, else a new one."""
    if not state or not state.get("client_id"):
        return new_session()
    return state


def read_mode(mode: str | None) -> str:
    """The restriction (any, letters, digits) as the API names it; an unknown one is a :class:`UserError`."""
    try:
        return parse_mode(mode)
    except InvalidModeError as exc:
        raise UserError(str(exc), "Letters, digits or any?") from exc


def drawing(sketch: dict[str, Any] | None, title: str = "Nothing to save") -> bytes:
    """The strokes as PNG; an empty canvas is a :class:`UserError` under ``title``."""
    try:
        return sketch_to_png(sketch)
    except InvalidSample as exc:
        raise UserError(EMPTY_CANVAS, title) from exc


def case_shown(symbol: str | None, case: str | None) -> tuple[bool, str | None]:
    """After the user picks ``symbol`` in the grid: whether the case choice shows, and its value (kept for a
    letter with two cases, cleared for a digit; shown again when nothing is picked)."""
    show = bool(symbol) and labels.has_case(symbol)
    return show or not symbol, case if show else None


@dataclass(frozen=True)
class Reading:
    """What a recognition shows: the result panel, the top 3, and the symbol and case it pre-selects."""

    html: str
    top3: dict[str, float] | None
    symbol: str | None
    case: str | None
    case_visible: bool

    @classmethod
    def of(cls, result: dict[str, Any]) -> Reading:
        label = result["label"]
        return cls(
            result_html(result), top3(result), label, case_choice(result.get("is_uppercase")), labels.has_case(label)
        )

    @classmethod
    def abstained(cls) -> Reading:
        """Not one symbol: say so instead of a guess; the grid stays, so a user who did draw one can say which."""
        return cls(result_html(None, NOT_ONE_SYMBOL), None, None, None, True)


@dataclass(frozen=True)
class Saved:
    """What a save shows: the result panel's note, the session's count and a thank-you (``info``)."""

    symbol: str
    is_uppercase: bool | None
    html: str
    count_text: str
    info: str


def health(flusher: SpoolFlusher, store: FeedbackStore) -> dict[str, Any]:
    """What ``GET /healthz`` answers: the feedback store and its spool (size, age of the oldest sample, the
    background upload's last attempt and error). ``status`` is ``degraded`` while samples wait in the spool."""
    spool = flusher.status()
    return {"status": "degraded" if spool["pending"] else "ok", "feedback_store": store.description, "spool": spool}


class Actions:
    """The sketchpad's actions against one API (``api_url``) and one feedback store, under ``limits``.
    ``address`` is the sender's (:func:`ukr_hw.ui.limits.request_address`; None counts under no address limit)."""

    def __init__(self, api_url: str, store: FeedbackStore, limits: Limits, flusher: SpoolFlusher | None = None) -> None:
        self.api_url = api_url
        self.store = store
        self.limits = limits
        self.flusher = flusher or SpoolFlusher(store)

    @classmethod
    def from_settings(
        cls, settings: Settings, api_url: str | None = None, store: FeedbackStore | None = None
    ) -> Actions:
        """The process's actions: the store (:meth:`FeedbackStore.from_settings` by default), its spool uploaded
        once now if it can be (the flusher, not started, does the rest), the limits of ``settings``."""
        store = store or FeedbackStore.from_settings(settings)
        try:
            flushed = store.flush_spool()
            if flushed:
                log.info("uploaded %d spooled feedback samples to %s", flushed, store.description)
        except StoreUnavailable as exc:
            log.warning("feedback store not reachable at start (%s); samples are spooled until it is back", exc)
        flusher = SpoolFlusher(store, settings.ui_spool_flush_interval_s, settings.ui_spool_flush_max_backoff_s)
        return cls(api_url or settings.api_url, store, Limits.from_settings(settings), flusher)

    def health(self) -> dict[str, Any]:
        return health(self.flusher, self.store)

    def classify(self, sketch: dict[str, Any] | None, mode: str) -> tuple[bytes, dict[str, Any]]:
        """The drawing as PNG and the API's answer; ``{"abstained": True, "abstain_reason": …}`` when the model
        says it is not one symbol. An empty canvas, an unreachable or refusing API: :class:`UserError`."""
        png = drawing(sketch, "Nothing to read")
        try:
            with ApiClient(self.api_url, timeout=20) as client:
                # the field only when it restricts: "any" is the API's default (and an older API knows no field)
                return png, client.classify(png, mode=None if mode == DEFAULT_MODE else mode)
        except ApiUnreachableError as exc:
            raise UserError(unreachable_text(self.api_url), "Service unavailable") from exc
        except ApiError as exc:
            if exc.status == 422 and NOT_ONE_SYMBOL in exc.message:  # the model abstained: not an error to fix
                return png, {"abstained": True, "abstain_reason": exc.message}
            raise UserError(f"The recognition service refused the drawing: {exc.message}", "Not recognised") from exc

    def recognise(
        self, sketch: dict[str, Any] | None, mode: str | None, state: dict[str, Any], address: str | None
    ) -> Reading:
        """Read the drawing among the symbols ``mode`` allows; the reading becomes the session's ``last``."""
        mode = read_mode(mode)
        self.limits.take_recognition(address)
        _, result = self.classify(sketch, mode)
        if result.get("abstained"):
            log.info("not one symbol: %s", result.get("abstain_reason"))
            state["last"] = None
            return Reading.abstained()
        result.setdefault("mode", mode)  # an older API, asked nothing, answers without it
        state["last"] = result
        return Reading.of(result)

    def confirm(
        self, sketch: dict[str, Any] | None, mode: str | None, state: dict[str, Any], address: str | None
    ) -> Saved:
        """The reading was right: save the drawing with the read symbol and case (and the mode it was read under)."""
        mode = read_mode(mode)
        png = drawing(sketch)
        last = state.get("last")
        if not last:
            raise UserError("Press Recognise first, then confirm or correct the answer.", "Nothing to confirm")
        upper = last.get("is_uppercase") if labels.has_case(last["label"]) else None
        return self._save(png, last["label"], upper, mode, state, "Saved", address)

    def correct(
        self,
        sketch: dict[str, Any] | None,
        symbol: str | None,
        case: str | None,
        mode: str | None,
        state: dict[str, Any],
        address: str | None,
    ) -> Saved:
        """The reading was wrong: save the drawing with the symbol (and ``case``, LOWER, UPPER or UNSURE, for a
        letter) the user picked (and the mode the reading was made under). UNSURE ("can't tell") saves a letter
        without a case: it trains the symbol head only."""
        mode = read_mode(mode)
        png = drawing(sketch)
        if not symbol:
            raise UserError("Pick the symbol you drew from the grid.", "Which symbol?")
        try:
            symbol = labels.normalize_symbol(symbol)
        except labels.UnknownSymbolError as exc:
            raise UserError(str(exc), "Unknown symbol") from exc
        case_known = True
        if labels.is_digit(symbol):
            upper = None
        elif case in (UPPER, LOWER):
            upper = case == UPPER
        elif case == UNSURE:
            upper, case_known = None, False
        else:
            raise UserError(
                f"Say whether your “{symbol}” is UPPERCASE or lowercase (or that you can't tell).", "Which case?"
            )
        return self._save(png, symbol, upper, mode, state, "Saved the correction", address, case_known)

    def _save(
        self,
        png: bytes,
        symbol: str,
        is_uppercase: bool | None,
        mode: str,
        state: dict[str, Any],
        verb: str,
        address: str | None,
        case_known: bool = True,
    ) -> Saved:
        last = state.get("last") or {}
        checks = self.limits.take_save(state["client_id"], address)
        try:
            self.store.save(
                png,
                symbol,
                is_uppercase,
                predicted_symbol=last.get("label"),
                predicted_is_uppercase=last.get("is_uppercase"),
                model_version=last.get("model_version"),
                client_id=state["client_id"],
                # the restriction the prediction was read under; the chosen one when nothing was recognised
                mode=last.get("mode") or mode,
                source=self.limits.source(address),
                case_known=case_known,
            )
        except InvalidSample as exc:
            self.limits.release(checks)  # nothing was stored: it does not count
            raise UserError(f"This drawing cannot be saved: {exc}", "Not saved") from exc
        except BaseException:
            self.limits.release(checks)
            raise
        state["count"] += 1
        state["last"] = None
        shown = labels.display(symbol, is_uppercase) + ("" if case_known else " (case not said)")
        spooled = self.store.pending()
        if spooled:
            self.flusher.wake()
        extra = f" ({spooled} waiting for the storage to come back)" if spooled else ""
        return Saved(
            symbol,
            is_uppercase,
            result_html(None, f"Saved “{shown}”. Draw the next one!"),
            count_text(state["count"]),
            f"{verb} “{shown}” — thank you!{extra}",
        )
