"""The Gradio sketchpad: draw a symbol, see what the model reads, confirm or correct it, and the drawing joins the
feedback store that the weekly retrain learns from.

Only the page and its wiring: what the buttons do is :class:`ukr_hw.ui.actions.Actions` (recognition through the
BentoML API, saving into :class:`ukr_hw.feedback.FeedbackStore`, the rate limits of :mod:`ukr_hw.ui.limits`), the
texts are :mod:`ukr_hw.ui.messages`, the lined sheet :mod:`ukr_hw.ui.sheet`. Named API endpoints (``/predict``,
``/confirm``, ``/correct``) let ``gradio_client`` drive the app exactly like a person does.

Under hostile traffic: saves are limited per source address and per session, recognitions per source address
(``ui_*`` settings); uploads are capped (``ui_max_file_bytes``) and the queue is bounded. Samples spooled while S3
is down are uploaded in the background (:class:`ukr_hw.feedback.SpoolFlusher`); ``GET /healthz`` shows the spool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gradio as gr

from ukr_hw import labels
from ukr_hw.feedback import FeedbackStore
from ukr_hw.inference import DEFAULT_MODE
from ukr_hw.settings import Settings, get_settings
from ukr_hw.ui import actions as act
from ukr_hw.ui.about import about_text, missing_uppercase
from ukr_hw.ui.assets import CSS, SELECT_BRUSH_JS, SYSTEM_FONTS
from ukr_hw.ui.limits import forwarded_allow, request_address
from ukr_hw.ui.messages import CASE_CHOICES, HEAD_TEXT, MODE_CHOICES, UserError, count_text, result_html
from ukr_hw.ui.sheet import CANVAS, blank_canvas, guide_lines

__all__ = ["CANVAS", "blank_canvas", "build_app", "guide_lines", "health", "launch", "missing_uppercase"]


@contextlib.contextmanager
def _said() -> Iterator[None]:
    """A :class:`UserError` of the actions, shown as Gradio shows errors (a toast with its title)."""
    try:
        yield
    except UserError as exc:
        raise gr.Error(exc.message, title=exc.title) from exc


def build_app(api_url: str | None = None, store: FeedbackStore | None = None, settings: Settings | None = None):
    """The Blocks app (not launched). ``store`` defaults to :meth:`FeedbackStore.from_settings`."""
    settings = settings or get_settings()
    actions = act.Actions.from_settings(settings, api_url=api_url, store=store)

    def predict(
        sketch: dict[str, Any] | None,
        mode: str | None = DEFAULT_MODE,
        state: dict[str, Any] | None = None,
        request: gr.Request = None,
    ):
        """Recognise the drawing: the symbol, its case and the top-3 candidates, among the symbols ``mode`` allows
        (any, letters or digits)."""
        state = act.session(state)
        with _said():
            r = actions.recognise(sketch, mode, state, request_address(request))
        case = gr.update(value=r.case, visible=r.case_visible)
        return r.html, r.top3, gr.update(value=r.symbol), case, gr.update(visible=True), state

    def _saved(saved: act.Saved, state: dict[str, Any]):
        gr.Info(saved.info)
        cleared = (None, gr.update(value=None), gr.update(value=None, visible=True), gr.update(visible=False))
        return blank_canvas(), saved.html, *cleared, saved.count_text, state

    def confirm(
        sketch: dict[str, Any] | None,
        mode: str | None = DEFAULT_MODE,
        state: dict[str, Any] | None = None,
        request: gr.Request = None,
    ):
        """The prediction was right: store the drawing with the predicted symbol and case (and the mode it was
        recognised under)."""
        state = act.session(state)
        with _said():
            return _saved(actions.confirm(sketch, mode, state, request_address(request)), state)

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
        state = act.session(state)
        with _said():
            return _saved(actions.correct(sketch, symbol, case, mode, state, request_address(request)), state)

    def on_mode(
        sketch: dict[str, Any] | None, mode: str | None, state: dict[str, Any] | None, request: gr.Request = None
    ):
        """Another restriction picked after a recognition: read the same drawing again under it."""
        state = act.session(state)
        if not state.get("last"):  # nothing recognised yet (or just saved): the choice applies to the next one
            return (*(gr.skip() for _ in range(5)), state)
        return predict(sketch, mode, state, request)

    def on_symbol(symbol: str | None, case: str | None):
        visible, value = act.case_shown(symbol, case)
        return gr.update(visible=visible, value=value)

    def on_clear(state: dict[str, Any] | None):
        state = act.session(state)
        state["last"] = None
        return result_html(None), None, gr.update(visible=False), state

    def on_reset(state: dict[str, Any] | None):
        return (blank_canvas(), *on_clear(state))

    def on_load(state: dict[str, Any] | None):
        state = act.session(state)
        return count_text(state["count"]), state

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
                    result = gr.HTML(result_html(None), elem_id="ukr-result")
                    top3 = gr.Label(
                        label="Top 3", num_top_classes=3, show_label=True, show_heading=False, elem_id="ukr-top3"
                    )
                    with gr.Group(visible=False, elem_id="ukr-feedback") as feedback:
                        yes = gr.Button("✔ Yes, that's right — save it", variant="primary", elem_id="ukr-confirm")
                        gr.Markdown("**Not right?** Pick what you drew:", padding=True)
                        symbol = gr.Radio(
                            choices, label="Symbol", show_label=False, elem_id="ukr-symbols", container=True
                        )
                        case = gr.Radio(CASE_CHOICES, label="Case", elem_id="ukr-case")
                        fix = gr.Button("Save the correction", elem_id="ukr-correct")
                    count = gr.Markdown(count_text(0), elem_id="ukr-count")
            with gr.Tab("About", id="about"):
                gr.Markdown(about_text(missing_uppercase(settings), actions.store.description, actions.api_url))

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
    app.ukr_actions = actions
    app.ukr_flusher = actions.flusher  # started by launch(); its status is on /healthz
    app.ukr_store = actions.store
    return app


def health(app) -> dict[str, Any]:
    """What ``GET /healthz`` answers (:func:`ukr_hw.ui.actions.health`): the feedback store and its spool."""
    return act.health(app.ukr_flusher, app.ukr_store)


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
    with forwarded_allow(settings.ui_trusted_proxies):
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
