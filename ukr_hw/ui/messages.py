"""Every text the sketchpad shows: the result panel (HTML), the top-3 labels, the session's count, and the refusals
(:class:`UserError`, which the Gradio app raises as ``gr.Error``)."""

from __future__ import annotations

import html
from typing import Any

from ukr_hw import labels
from ukr_hw.ui.ratelimit import Refusal, describe_span, describe_wait

LOWER, UPPER, UNSURE = "lower", "upper", "unsure"  #: the case choice's values (UNSURE: "can't tell")
#: The case choice: (shown, value). "Can't tell" saves the letter without a case: it teaches the symbol only.
CASE_CHOICES = [("lowercase", LOWER), ("UPPERCASE", UPPER), ("can't tell", UNSURE)]
#: The restriction choice: (shown, value); the values are ukr_hw.inference.MODES, the default is Any.
MODE_CHOICES = [("Letters", "letters"), ("Digits", "digits"), ("Any", "any")]
MODE_NOTE = {"letters": "letters only", "digits": "digits only"}
EMPTY_CANVAS = "Draw a letter first: the canvas is empty."
HEAD_TEXT = (
    "# ✍️ Рукопис — Ukrainian handwriting\n"
    "Draw **one** Ukrainian letter or digit on the canvas, press **Recognise**, then tell the model whether it was "
    "right. Every confirmed drawing helps the next model read handwriting better."
)


class UserError(Exception):
    """Something the user can fix, said to them: ``message`` under ``title``; nothing was done or counted."""

    def __init__(self, message: str, title: str) -> None:
        super().__init__(message)
        self.message = message
        self.title = title


def result_html(result: dict[str, Any] | None, note: str = "") -> str:
    """The result panel: the symbol as read (with its case or "digit", the mode, confidence and model version),
    or, without a result, ``note`` (or the opening hint)."""
    if not result:
        hint = note or "Your symbol will appear here."
        return f'<div class="ukr-result"><div class="hint">{html.escape(hint)}</div></div>'
    label, upper = result["label"], result.get("is_uppercase")
    shown = labels.display(label, upper)
    top = result.get("top") or [{"label": label, "probability": None}]
    prob = top[0].get("probability")
    if labels.is_digit(label):
        case = '<div class="case">digit</div>'
    else:
        cp = result.get("case_probability")
        sure = f" · {max(cp, 1 - cp):.0%}" if isinstance(cp, int | float) else ""
        case = f'<div class="case">{"UPPERCASE" if upper else "lowercase"}{sure}</div>'
    meta = f"{MODE_NOTE[result['mode']]} · " if result.get("mode") in MODE_NOTE else ""
    meta += f"confidence {prob:.0%} · " if isinstance(prob, int | float) else ""
    meta += f"model v{html.escape(str(result.get('model_version', '?')))}"
    return (
        f'<div class="ukr-result"><div class="glyph">{html.escape(shown)}</div>{case}'
        f'<div class="meta">{meta}</div></div>'
    )


def top3(result: dict[str, Any] | None) -> dict[str, float] | None:
    """The three best candidates, shown in the case the model read: ``{"Г": 0.9, …}``."""
    if not result:
        return None
    upper = result.get("is_uppercase")
    return {labels.display(t["label"], upper): float(t["probability"]) for t in (result.get("top") or [])[:3]}


def count_text(count: int) -> str:
    """The session's contribution line."""
    if count == 0:
        return "No drawings saved from this session yet."
    return f"You have contributed **{count}** drawing{'s' if count != 1 else ''} this session. Дякуємо! 💙💛"


def case_choice(is_uppercase: bool | None) -> str | None:
    """The case radio's value for a reading (None: no case, e.g. a digit)."""
    return None if is_uppercase is None else (UPPER if is_uppercase else LOWER)


def refusal_text(refused: Refusal, what: str, verb: str) -> str:
    """Why a rate limit said no, and how long to wait: "You've saved 2 drawings in the last 10 minutes (the limit
    for this session); please wait about 40 seconds and try again." ``refused.key`` is ``"session:…"`` or an
    address key."""
    lim = refused.limit
    whose = "this session" if refused.key.partition(":")[0] == "session" else "your address"
    things = what[:-1] if lim.count == 1 else what
    return (
        f"You've {verb} {lim.count} {things} in the last {describe_span(lim.window_s)} (the limit for {whose}); "
        f"please wait {describe_wait(refused.retry_after_s)} and try again."
    )


def unreachable_text(api_url: str) -> str:
    """The recognition service does not answer."""
    return (
        f"The recognition service is not reachable at {api_url}. Start it with `ukr-hw serve` "
        "(or `ukr-hw up`) and try again; your drawing is still on the canvas."
    )
