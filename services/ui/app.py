"""The Gradio sketchpad: draw a symbol, see what the model reads, confirm or correct it, and the drawing joins the
feedback store that the weekly retrain learns from.

Thin over ``ukr_hw``: recognition is the BentoML API (:class:`ukr_hw.api_client.ApiClient`), storage is
:class:`ukr_hw.feedback.FeedbackStore`, the alphabet is :mod:`ukr_hw.labels`. Named API endpoints (``/predict``,
``/confirm``, ``/correct``) let ``gradio_client`` drive the app exactly like a person does.

Under hostile traffic: saves (confirmations and corrections) are limited per source address and per session, and
recognitions per source address (``ui_*`` settings; the address is the connecting one, or the one a trusted proxy
in ``ui_trusted_proxies`` forwards); uploads are capped (``ui_max_file_bytes``) and the queue is bounded. Each
sample records a salted hash of its source address (``source``), so that the retrain can cap one source's share.
Samples spooled while S3 is down are uploaded in the background (:class:`ukr_hw.feedback.SpoolFlusher`); ``GET
/healthz`` shows the spool (size, age of the oldest sample) and the flusher's last attempt.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import logging
import os
import uuid
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from ukr_hw import labels
from ukr_hw.api_client import ApiClient, ApiError, ApiUnreachableError
from ukr_hw.data.strokes import BASELINE, CAP_HEIGHT, X_HEIGHT
from ukr_hw.feedback import (
    FeedbackStore,
    InvalidSample,
    SpoolFlusher,
    StoreUnavailable,
    sketch_to_png,
    source_address,
    source_id,
    source_salt,
)
from ukr_hw.inference import DEFAULT_MODE, InvalidModeError, parse_mode
from ukr_hw.model.abstain import MESSAGE as NOT_ONE_SYMBOL
from ukr_hw.ratelimit import Limit, RateLimiter, describe_span, describe_wait
from ukr_hw.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Letters with no uppercase sample in the training data (Rukopys); used when the prepared data is not at hand.
MISSING_UPPERCASE_FALLBACK = tuple("импрстуфхцчшщьюяґ")
CANVAS = (560, 560)
PAPER = (253, 253, 250)  #: the sheet under the strokes, in both themes (the brush is a fixed dark blue)
#: Local fonts with clear Cyrillic (no web-font download; print-style т/д/и, not the cursive forms).
SYSTEM_FONTS = ["system-ui", "Noto Sans", "DejaVu Sans", "Liberation Sans", "Arial", "sans-serif"]
LOWER, UPPER = "lower", "upper"
#: The restriction choice: (shown, value); the values are ukr_hw.inference.MODES, the default is Any.
MODE_CHOICES = [("Letters", "letters"), ("Digits", "digits"), ("Any", "any")]
MODE_NOTE = {"letters": "letters only", "digits": "digits only"}
EMPTY_CANVAS = "Draw a letter first: the canvas is empty."

CSS = """
.ukr-result { text-align: center; padding: 0.5rem 0 0.25rem; }
.ukr-result .glyph { font-size: 7.5rem; line-height: 1.05; font-weight: 600; color: var(--body-text-color); }
.ukr-result .case { display: inline-block; margin-top: 0.35rem; padding: 0.15rem 0.7rem; border-radius: 999px;
  font-size: 0.95rem; background: var(--color-accent-soft); color: var(--body-text-color); }
.ukr-result .meta { margin-top: 0.4rem; font-size: 0.8rem; color: var(--body-text-color-subdued); }
.ukr-result .hint { font-size: 1.05rem; color: var(--body-text-color-subdued); padding: 3.2rem 0; }
#ukr-symbols .wrap { display: grid !important; grid-template-columns: repeat(auto-fill, minmax(2.9rem, 1fr));
  gap: 0.3rem; }
#ukr-symbols label { justify-content: center; padding: 0.3rem 0.2rem !important; font-size: 1.15rem; min-width: 0; }
#ukr-symbols label input { display: none; }
#ukr-count { text-align: right; color: var(--body-text-color-subdued); }
#ukr-canvas { touch-action: none; }
"""

#: Start with the brush selected (Gradio's editor otherwise waits for a click on its draw tool); re-run after the
#: canvas is cleared. Clicking only when the brush is not active yet avoids opening its options pop-up.
SELECT_BRUSH_JS = """
() => {
  let tries = 0;
  const timer = setInterval(() => {
    const brush = document.querySelector('#ukr-canvas button[aria-label="Brush"]');
    tries += 1;
    if (brush) {
      if (!brush.classList.contains('highlight')) brush.click();
      clearInterval(timer);
    } else if (tries > 100) {
      clearInterval(timer);
    }
  }, 150);
}
"""

HEAD_TEXT = (
    "# ✍️ Рукопис — Ukrainian handwriting\n"
    "Draw **one** Ukrainian letter or digit on the canvas, press **Recognise**, then tell the model whether it was "
    "right. Every confirmed drawing helps the next model read handwriting better."
)


# --------------------------------------------------------------------------------------------------------------
# Helpers (pure; tested through the app)


@functools.cache
def guide_lines(size: tuple[int, int] = CANVAS) -> Image.Image:
    """The canvas background: a sheet of lined paper with writing guides where the training drawings stand.

    A solid baseline, a dashed x-height line and a faint cap line (:mod:`ukr_hw.data.strokes` draws its sketchpad
    samples on the same frame): capitals fill baseline to cap line, lowercase stops at the dashed line. With the
    guides people size the two cases as the model learned them, which is what tells о from О and с from С. The
    guides are the background, not a layer: the model and the feedback store read only the strokes (the layers'
    alpha), so the lines never count as ink. Cached: one sheet serves every reset of every session.
    """
    w, h = size
    img = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(img)
    margin = round(0.06 * w)
    y_base, y_x, y_cap = (round(h * f) for f in (BASELINE, BASELINE - X_HEIGHT, BASELINE - CAP_HEIGHT))
    draw.line([(margin, y_base), (w - margin, y_base)], fill=(150, 156, 168), width=3)
    draw.line([(margin, y_cap), (w - margin, y_cap)], fill=(205, 209, 216), width=2)
    dash = max(6, w // 40)
    for x in range(margin, w - margin, 2 * dash):
        draw.line([(x, y_x), (min(x + dash, w - margin), y_x)], fill=(185, 190, 200), width=2)
    return img


def blank_canvas() -> dict[str, Any]:
    """A fresh Sketchpad value: the guides and no strokes."""
    return {"background": guide_lines(), "layers": [], "composite": None}


def _new_session() -> dict[str, Any]:
    return {"client_id": uuid.uuid4().hex, "count": 0, "last": None}


def _session(state: dict[str, Any] | None) -> dict[str, Any]:
    if not state or not state.get("client_id"):
        return _new_session()
    return state


def missing_uppercase(settings: Settings | None = None) -> list[str]:
    """Letters without uppercase training data: from the prepared data when present, else the known list."""
    settings = settings or get_settings()
    manifest = settings.processed_dir / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        for key in ("missing_uppercase", "letters_without_uppercase", "no_uppercase"):
            if isinstance(data.get(key), list):
                return [labels.normalize_symbol(s) for s in data[key]]
    except (OSError, ValueError, labels.UnknownSymbolError):
        pass
    train = settings.processed_dir / "finetune_train.npz"
    if train.exists():
        try:
            from ukr_hw.data.arrays import load_samples

            samples = load_samples(train)
            upper = {labels.symbol_of(int(y)) for y, c in zip(samples.y, samples.case, strict=True) if c == 1}
            return [s for s in labels.LETTERS if s not in upper]
        except Exception as exc:  # a broken file must not stop the UI
            log.warning("could not read %s: %s", train, exc)
    return list(MISSING_UPPERCASE_FALLBACK)


def _result_html(result: dict[str, Any] | None, note: str = "") -> str:
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


def _top3(result: dict[str, Any] | None) -> dict[str, float] | None:
    if not result:
        return None
    upper = result.get("is_uppercase")
    return {labels.display(t["label"], upper): float(t["probability"]) for t in (result.get("top") or [])[:3]}


def _count_text(count: int) -> str:
    if count == 0:
        return "No drawings saved from this session yet."
    return f"You have contributed **{count}** drawing{'s' if count != 1 else ''} this session. Дякуємо! 💙💛"


def _case_choice(is_uppercase: bool | None) -> str | None:
    return None if is_uppercase is None else (UPPER if is_uppercase else LOWER)


def _address(request: gr.Request | None) -> str | None:
    """The sender's address as the limits count it: the connecting address, which uvicorn has already replaced by
    the forwarded one when (and only when) the connection came from a trusted proxy (see :func:`launch`)."""
    client = getattr(request, "client", None) if request is not None else None
    return source_address(getattr(client, "host", None))


@contextlib.contextmanager
def _forwarded_allow(proxies: list[str]):
    """uvicorn believes X-Forwarded-For from the hosts in ``FORWARDED_ALLOW_IPS`` (default: loopback, which would
    let any local client pick its address): only ``ui_trusted_proxies`` while the server is created."""
    old = os.environ.get("FORWARDED_ALLOW_IPS")
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FORWARDED_ALLOW_IPS", None)
        else:
            os.environ["FORWARDED_ALLOW_IPS"] = old


# --------------------------------------------------------------------------------------------------------------
# The app


def build_app(api_url: str | None = None, store: FeedbackStore | None = None, settings: Settings | None = None):
    """The Blocks app (not launched). ``store`` defaults to :meth:`FeedbackStore.from_settings`."""
    settings = settings or get_settings()
    api_url = api_url or settings.api_url
    store = store or FeedbackStore.from_settings(settings)
    try:
        flushed = store.flush_spool()
        if flushed:
            log.info("uploaded %d spooled feedback samples to %s", flushed, store.description)
    except StoreUnavailable as exc:
        log.warning("feedback store not reachable at start (%s); samples are spooled until it is back", exc)
    no_upper = missing_uppercase(settings)
    flusher = SpoolFlusher(store, settings.ui_spool_flush_interval_s, settings.ui_spool_flush_max_backoff_s)
    limiter = RateLimiter()
    salt = source_salt(settings)
    save_window = settings.ui_saves_window_s
    per_address = Limit(settings.ui_saves_per_address, save_window)
    per_session = Limit(settings.ui_saves_per_session, save_window)
    predicts = Limit(settings.ui_predicts_per_address, settings.ui_predicts_window_s)

    def _take(checks: list[tuple[str, Limit]], what: str, verb: str) -> None:
        """A slot under every limit, or a clear refusal (nothing done, nothing counted)."""
        refused = limiter.acquire(checks)
        if refused is None:
            return
        lim = refused.limit
        kind, _, who = refused.key.partition(":")
        whose = "this session" if kind == "session" else "your address"
        log.info(
            "rate limit: %s %s reached %d %s in %.0f s; refused",
            kind,
            who if kind == "session" else source_id(who, salt),
            lim.count,
            what,
            lim.window_s,
        )
        things = what[:-1] if lim.count == 1 else what
        raise gr.Error(
            f"You've {verb} {lim.count} {things} in the last {describe_span(lim.window_s)} (the limit for {whose}); "
            f"please wait {describe_wait(refused.retry_after_s)} and try again.",
            title="Slow down, please",
        )

    def _mode(mode: str | None) -> str:
        try:
            return parse_mode(mode)
        except InvalidModeError as exc:
            raise gr.Error(str(exc), title="Letters, digits or any?") from exc

    def classify(sketch: dict[str, Any] | None, mode: str) -> tuple[bytes, dict[str, Any]]:
        try:
            png = sketch_to_png(sketch)
        except InvalidSample as exc:
            raise gr.Error(EMPTY_CANVAS, title="Nothing to read") from exc
        try:
            with ApiClient(api_url, timeout=20) as client:
                # the field only when it restricts: "any" is the API's default (and an older API knows no field)
                return png, client.classify(png, mode=None if mode == DEFAULT_MODE else mode)
        except ApiUnreachableError as exc:
            raise gr.Error(
                f"The recognition service is not reachable at {api_url}. Start it with `ukr-hw serve` "
                "(or `ukr-hw up`) and try again; your drawing is still on the canvas.",
                title="Service unavailable",
            ) from exc
        except ApiError as exc:
            if exc.status == 422 and NOT_ONE_SYMBOL in exc.message:  # the model abstained: not an error to fix
                return png, {"abstained": True, "abstain_reason": exc.message}
            raise gr.Error(
                f"The recognition service refused the drawing: {exc.message}", title="Not recognised"
            ) from exc

    def predict(
        sketch: dict[str, Any] | None,
        mode: str | None = DEFAULT_MODE,
        state: dict[str, Any] | None = None,
        request: gr.Request = None,
    ):
        """Recognise the drawing: the symbol, its case and the top-3 candidates, among the symbols ``mode`` allows
        (any, letters or digits)."""
        state = _session(state)
        mode = _mode(mode)
        address = _address(request)
        if address is not None:
            _take([(f"addr-predict:{address}", predicts)], "recognitions", "asked for")
        _, result = classify(sketch, mode)
        if result.get("abstained"):
            # noise, a scribble, two letters: say so instead of a guess; the symbol grid stays, so a user who did
            # draw one symbol can still say which
            log.info("not one symbol: %s", result.get("abstain_reason"))
            state["last"] = None
            return (
                _result_html(None, NOT_ONE_SYMBOL),
                None,
                gr.update(value=None),
                gr.update(value=None, visible=True),
                gr.update(visible=True),
                state,
            )
        result.setdefault("mode", mode)  # an older API, asked nothing, answers without it
        state["last"] = result
        upper = result.get("is_uppercase")
        return (
            _result_html(result),
            _top3(result),
            gr.update(value=result["label"]),
            gr.update(value=_case_choice(upper), visible=labels.has_case(result["label"])),
            gr.update(visible=True),
            state,
        )

    def _drawing(sketch: dict[str, Any] | None) -> bytes:
        """The strokes as PNG, once per save; an empty canvas is a clear error."""
        try:
            return sketch_to_png(sketch)
        except InvalidSample as exc:
            raise gr.Error(EMPTY_CANVAS, title="Nothing to save") from exc

    def _store(
        png: bytes,
        symbol: str,
        is_uppercase: bool | None,
        mode: str,
        state: dict[str, Any],
        verb: str,
        request: gr.Request | None,
    ):
        last = state.get("last") or {}
        address = _address(request)
        checks = [(f"session:{state['client_id']}", per_session)]
        if address is not None:
            checks.append((f"addr-save:{address}", per_address))
        _take(checks, "drawings", "saved")
        try:
            store.save(
                png,
                symbol,
                is_uppercase,
                predicted_symbol=last.get("label"),
                predicted_is_uppercase=last.get("is_uppercase"),
                model_version=last.get("model_version"),
                client_id=state["client_id"],
                # the restriction the prediction was read under; the chosen one when nothing was recognised
                mode=last.get("mode") or mode,
                source=source_id(address, salt),
            )
        except InvalidSample as exc:
            limiter.release(checks)  # nothing was stored: it does not count
            raise gr.Error(f"This drawing cannot be saved: {exc}", title="Not saved") from exc
        except BaseException:
            limiter.release(checks)
            raise
        state["count"] += 1
        state["last"] = None
        shown = labels.display(symbol, is_uppercase)
        spooled = store.pending()
        if spooled:
            flusher.wake()
        extra = f" ({spooled} waiting for the storage to come back)" if spooled else ""
        gr.Info(f"{verb} “{shown}” — thank you!{extra}")
        return (
            blank_canvas(),
            _result_html(None, f"Saved “{shown}”. Draw the next one!"),
            None,
            gr.update(value=None),
            gr.update(value=None, visible=True),
            gr.update(visible=False),
            _count_text(state["count"]),
            state,
        )

    def confirm(
        sketch: dict[str, Any] | None,
        mode: str | None = DEFAULT_MODE,
        state: dict[str, Any] | None = None,
        request: gr.Request = None,
    ):
        """The prediction was right: store the drawing with the predicted symbol and case (and the mode it was
        recognised under)."""
        state = _session(state)
        mode = _mode(mode)
        png = _drawing(sketch)
        last = state.get("last")
        if not last:
            raise gr.Error("Press Recognise first, then confirm or correct the answer.", title="Nothing to confirm")
        upper = last.get("is_uppercase") if labels.has_case(last["label"]) else None
        return _store(png, last["label"], upper, mode, state, "Saved", request)

    def correct(
        sketch: dict[str, Any] | None,
        symbol: str | None,
        case: str | None,
        mode: str | None = DEFAULT_MODE,
        state: dict[str, Any] | None = None,
        request: gr.Request = None,
    ):
        """The prediction was wrong: store the drawing with the symbol (and case) the user picked (and the mode the
        prediction was made under)."""
        state = _session(state)
        mode = _mode(mode)
        png = _drawing(sketch)
        if not symbol:
            raise gr.Error("Pick the symbol you drew from the grid.", title="Which symbol?")
        try:
            symbol = labels.normalize_symbol(symbol)
        except labels.UnknownSymbolError as exc:
            raise gr.Error(str(exc), title="Unknown symbol") from exc
        if labels.is_digit(symbol):
            upper = None
        elif case in (UPPER, LOWER):
            upper = case == UPPER
        else:
            raise gr.Error(f"Say whether your “{symbol}” is UPPERCASE or lowercase.", title="Which case?")
        return _store(png, symbol, upper, mode, state, "Saved the correction", request)

    def on_mode(
        sketch: dict[str, Any] | None, mode: str | None, state: dict[str, Any] | None, request: gr.Request = None
    ):
        """Another restriction picked after a recognition: read the same drawing again under it."""
        state = _session(state)
        if not state.get("last"):  # nothing recognised yet (or just saved): the choice applies to the next one
            return (*(gr.skip() for _ in range(5)), state)
        return predict(sketch, mode, state, request)

    def on_symbol(symbol: str | None, case: str | None):
        show = bool(symbol) and labels.has_case(symbol)
        return gr.update(visible=show or not symbol, value=case if show else None)

    def on_clear(state: dict[str, Any] | None):
        state = _session(state)
        state["last"] = None
        return _result_html(None), None, gr.update(visible=False), state

    def on_reset(state: dict[str, Any] | None):
        return (blank_canvas(), *on_clear(state))

    def on_load(state: dict[str, Any] | None):
        state = _session(state)
        return _count_text(state["count"]), state

    choices = [(s, s) for s in labels.SYMBOLS]
    with gr.Blocks(title="ukr-hw · Ukrainian handwriting") as app:
        state = gr.State(None)
        gr.Markdown(HEAD_TEXT)
        with gr.Tabs():
            with gr.Tab("Draw", id="draw"), gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=320):
                    sketch = gr.Sketchpad(
                        label="Write one symbol on the baseline",
                        type="pil",
                        image_mode="RGBA",
                        value=blank_canvas(),
                        canvas_size=CANVAS,
                        fixed_canvas=True,
                        brush=gr.Brush(default_size=14, colors=["#2b59c3"], color_mode="fixed"),
                        eraser=gr.Eraser(default_size=24),
                        layers=False,
                        transforms=(),
                        format="png",
                        elem_id="ukr-canvas",
                        height=600,
                    )
                    mode = gr.Radio(
                        MODE_CHOICES,
                        value=DEFAULT_MODE,
                        label="Read it as",
                        info="З and 3, О and 0, Ь and 6 are one drawing: say which kind you mean.",
                        elem_id="ukr-mode",
                    )
                    with gr.Row():
                        recognise = gr.Button("🔍 Recognise", variant="primary", size="lg", elem_id="ukr-recognise")
                        clear = gr.Button("Clear", size="lg", elem_id="ukr-clear")
                    gr.Markdown(
                        "Tips: stand the symbol on the solid line · capitals and digits reach the top line, "
                        "lowercase the dashed one · the dots of **ї** and **й**'s breve count."
                    )
                with gr.Column(scale=4, min_width=300):
                    result = gr.HTML(_result_html(None), elem_id="ukr-result")
                    top3 = gr.Label(
                        label="Top 3", num_top_classes=3, show_label=True, show_heading=False, elem_id="ukr-top3"
                    )
                    with gr.Group(visible=False, elem_id="ukr-feedback") as feedback:
                        yes = gr.Button("✔ Yes, that's right — save it", variant="primary", elem_id="ukr-confirm")
                        gr.Markdown("**Not right?** Pick what you drew:", padding=True)
                        symbol = gr.Radio(
                            choices, label="Symbol", show_label=False, elem_id="ukr-symbols", container=True
                        )
                        case = gr.Radio([("lowercase", LOWER), ("UPPERCASE", UPPER)], label="Case", elem_id="ukr-case")
                        fix = gr.Button("Save the correction", elem_id="ukr-correct")
                    count = gr.Markdown(_count_text(0), elem_id="ukr-count")
            with gr.Tab("About", id="about"):
                gr.Markdown(_about_text(no_upper, store.description, api_url))

        # The canvas is an output of the saving and clearing events, but it must never carry their progress
        # overlay: Gradio leaves an ImageEditor's overlay up after the event ends, and strokes drawn under it are
        # lost (the next drawing reads as an empty canvas). The progress shows on the result panel instead.
        saved_outputs = [sketch, result, top3, symbol, case, feedback, count, state]
        predicted_outputs = [result, top3, symbol, case, feedback, state]
        recognise.click(predict, [sketch, mode, state], predicted_outputs, api_name="predict")
        mode.input(on_mode, [sketch, mode, state], predicted_outputs, api_visibility="private")
        for button, handler, inputs, name in (
            (yes, confirm, [sketch, mode, state], "confirm"),
            (fix, correct, [sketch, symbol, case, mode, state], "correct"),
        ):
            button.click(handler, inputs, saved_outputs, api_name=name, show_progress_on=[result]).success(
                None, js=SELECT_BRUSH_JS, api_visibility="private"
            )
        symbol.input(on_symbol, [symbol, case], [case], api_visibility="private", show_progress="hidden")
        reset_outputs = [sketch, result, top3, feedback, state]
        clear.click(on_reset, [state], reset_outputs, api_visibility="private", show_progress="hidden").then(
            None, js=SELECT_BRUSH_JS, api_visibility="private"
        )
        # the editor's own bin empties the whole value, the guides too: put them back
        sketch.clear(on_reset, [state], reset_outputs, api_visibility="private", show_progress="hidden")
        app.load(on_load, [state], [count, state], api_visibility="private")
        app.load(None, js=SELECT_BRUSH_JS, api_visibility="private")
    app.ukr_flusher = flusher  # started by launch(); its status is on /healthz
    app.ukr_store = store
    return app


def health(app) -> dict[str, Any]:
    """What ``GET /healthz`` answers: the feedback store and its spool (size, age of the oldest sample, the
    background upload's last attempt and error). ``status`` is ``degraded`` while samples wait in the spool."""
    spool = app.ukr_flusher.status()
    return {
        "status": "degraded" if spool["pending"] else "ok",
        "feedback_store": app.ukr_store.description,
        "spool": spool,
    }


def _about_text(no_upper: list[str], store: str, api_url: str) -> str:
    letters = " ".join(f"**{s.upper()}**" for s in no_upper) or "none — every letter has both cases"
    return f"""
## About ukr-hw

**ukr-hw** is an open-source MLOps platform that recognises hand-drawn Ukrainian letters and digits:
43 symbols (0–9 and the 33 letters а–я) and whether a letter is UPPERCASE or lowercase.

* A small convolutional network with two heads (symbol and case) is trained with **Lightning** on the
  [Rukopys](https://github.com/lynnporu/rukopys-dataset) dataset, MNIST digits and font-rendered glyphs;
  **Prefect** runs the data and training flows, **MLflow** tracks the runs and keeps the registry (the
  `champion` alias is what you are talking to), **BentoML** serves it.
* Every drawing you confirm or correct here is stored as a PNG with a small JSON record (the symbol, the case,
  what the model said and whether you asked for letters or digits, the model version, a random per-session id —
  **no personal data**), and the weekly retrain flow learns from them. A new model replaces the champion only if
  it reads better.

### Please draw these capitals
The training data has **no uppercase** samples for: {letters}.
The model has to guess their capitals from the lowercase shapes — every capital you draw and confirm teaches it.

### Good to know
* Draw one symbol per canvas, standing on the solid line. Capitals and digits reach the top line, lowercase the
  dashed one: for letters whose two cases have one shape (о/О, с/С, к/К …) size is all the model can go by.
* Look-alikes are hard: **г/ґ**, **і/ї**, **е/є**, **и/й**, **ш/щ**, **о/0**, **з/3** — draw the marks clearly.
* **З** and **3**, **О** and **0**, **Ь** and **6** are the same drawing: choose *Letters* or *Digits* under the
  canvas and the model picks among those only (*Any*, the default, reads all 43). Your choice is saved with
  the drawing.

<sub>Recognition service: `{api_url}` · feedback store: `{store}`</sub>
"""


def launch(
    port: int | None = None,
    host: str | None = None,
    api_url: str | None = None,
    *,
    block: bool = True,
    settings: Settings | None = None,
    store: FeedbackStore | None = None,
):
    """Start the UI (``ukr-hw ui``). With ``block=False`` returns the running app (call ``.close()``)."""
    settings = settings or get_settings()
    app = build_app(api_url=api_url, store=store, settings=settings)
    app.queue(max_size=settings.ui_queue_max_size, default_concurrency_limit=settings.ui_concurrency_limit)
    with _forwarded_allow(settings.ui_trusted_proxies):
        app.launch(
            server_name=host or settings.ui_host,
            server_port=port or settings.ui_port,
            prevent_thread_lock=True,
            show_error=True,
            quiet=not block,
            theme=gr.themes.Soft(primary_hue="blue", secondary_hue="yellow", font=SYSTEM_FONTS),
            css=CSS,
            footer_links=["api", "settings"],
            ssr_mode=False,
            max_file_size=settings.ui_max_file_bytes,
        )
    routes = app.app.router.routes
    app.app.add_api_route("/healthz", lambda: health(app), methods=["GET"], include_in_schema=False)
    routes.insert(0, routes.pop())  # ahead of Gradio's own routes
    flusher = app.ukr_flusher.start()
    close = app.close

    def _close(*args: Any, **kwargs: Any) -> Any:
        flusher.stop()
        return close(*args, **kwargs)

    app.close = _close
    if block:
        try:
            app.block_thread()
        finally:
            flusher.stop()
    return app
