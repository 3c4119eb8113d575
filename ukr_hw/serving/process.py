"""What every service process does once, outside any request, so that requests neither crash it nor stall.

:func:`configure` runs when the service module loads: PIL refuses decompression bombs while reading an image's
header, and the MLflow client gives up on an unreachable registry after one short try (the current model keeps
serving; see :mod:`ukr_hw.serving.model`). Once a service is up, :func:`warm_up_preprocessing` sends one glyph
through the input path so its lazy imports happen now, and :func:`freeze_heap` then takes everything loaded so far
out of the garbage collector's view: otherwise each full collection walks a million objects (torch, mlflow,
bentoml, scipy) and stalls the request that is running for 100-400 ms.
"""

from __future__ import annotations

import io
import os

from ukr_hw.serving import SETTINGS


def configure() -> None:
    """The process-wide settings the service needs before its first request."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # an unreachable registry must fail fast
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    guard_pixels()


def guard_pixels() -> None:
    """Decompression bombs: PIL refuses (error) images over 2× this many pixels when opening the header."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = SETTINGS.max_image_side**2


def freeze_heap() -> None:
    """Move everything loaded so far (torch, mlflow, bentoml, scipy: a million objects) out of the garbage
    collector's view. Otherwise every full collection walks them all and stalls whatever request is running for
    100-400 ms (py-spy: a few requests in a thousand). Call it after the warm-up, once the lazy imports are done."""
    import gc

    gc.collect()
    gc.freeze()


def warm_up_preprocessing() -> None:
    """One glyph through the whole input path, so its lazy imports (PIL plugins, scipy) happen before the freeze."""
    from PIL import Image, ImageDraw

    from ukr_hw.preprocess import preprocess

    img = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(img).line([(16, 12), (48, 52)], fill=0, width=5)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    preprocess(buf.getvalue())
