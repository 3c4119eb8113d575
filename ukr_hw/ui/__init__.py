"""The sketchpad's logic, without Gradio; ``services/ui/app.py`` only lays it out and wires its events.

- :mod:`ukr_hw.ui.actions`: what Recognise, confirm and correct do (the API call, the feedback store, the session),
  answering in plain values and refusing with :class:`ukr_hw.ui.messages.UserError`; the ``/healthz`` report.
- :mod:`ukr_hw.ui.limits`: the rate limits per source address and per session, and the sender's address.
- :mod:`ukr_hw.ui.ratelimit`: the sliding-window counter behind them.
- :mod:`ukr_hw.ui.messages`: every text the user sees (the result panel, the count, refusals).
- :mod:`ukr_hw.ui.about`: the About tab and the letters that lack uppercase training data.
- :mod:`ukr_hw.ui.sheet`: the lined sheet under the strokes.
- :mod:`ukr_hw.ui.assets`: the page's CSS, its one script and fonts.
"""
