"""Checking an upload and turning it into one model input row, or into a :class:`BadInput` the client must fix.

Bad input never gives a 5xx. An upload is checked from its size and header before any pixel is decoded
(:func:`check_image`: 413 too large in bytes or pixels, 415 an unsupported format, 400 not an image), then goes
through THE preprocessing path and the ink statistics of :mod:`ukr_hw.model.abstain` (:func:`prepare`: 422 a blank
canvas). A row is the 28×28 pixels, the ink box [height, width] and the request's mode (its index in ``MODES``),
so rows of every mode share the model service's batches. An image that is not one symbol (noise, a photo, a
scribble, two symbols side by side) is a 422 on ``/classify`` (:func:`not_one_symbol`) and a marked item on
``/classify_batch``. :func:`error_response` turns a :class:`BadInput` into ``{"error": "..."}`` with its status.
"""

from __future__ import annotations

import io
from pathlib import Path

import bentoml
import numpy as np
from starlette.responses import JSONResponse

from ukr_hw.inference import DEFAULT_MODE, MODES, InvalidModeError, Mode, parse_mode  # light: no torch, no mlflow
from ukr_hw.serving import SETTINGS
from ukr_hw.serving.telemetry import REJECTED, log

#: image formats an upload may have (PIL's names; MPO: a JPEG with extra frames, as some cameras write)
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP"}
FEATURES = 28 * 28 + 2  #: one glyph's features: 784 pixels then the ink box [height, width]
ROW = FEATURES + 1  #: one model input row: the features, then the request's mode (its index in MODES)


class BadInput(Exception):
    """A request the client must fix; becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


def check_image(path: Path, name: str) -> bytes:
    """Size, format and pixel dimensions from the header — before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    size = path.stat().st_size
    if size > SETTINGS.max_upload_bytes:
        raise BadInput(
            413,
            f"{name} is {size / 1e6:.1f} MB, over the {SETTINGS.max_upload_bytes / 1e6:.1f} MB limit; "
            "send a smaller PNG, JPEG or WebP (a 200×200 image is plenty).",
            "too_large",
        )
    if size == 0:
        raise BadInput(400, f"{name} is empty (0 bytes); send a PNG, JPEG or WebP file.", "not_image")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
            fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError as exc:
        side = SETTINGS.max_image_side
        raise BadInput(
            413, f"{name} declares too many pixels ({exc}); send at most {side}×{side}.", "too_large"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInput(
            400,
            f"{name} is not a readable image ({exc.__class__.__name__}); send a PNG, JPEG or WebP file.",
            "not_image",
        ) from exc
    if fmt not in ACCEPTED_FORMATS:
        raise BadInput(415, f"{name} is a {fmt} image; send PNG, JPEG or WebP.", "format")
    if max(w, h) > SETTINGS.max_image_side or min(w, h) < 1:
        raise BadInput(
            413,
            f"{name} is {w}×{h} pixels; each side must be between 1 and {SETTINGS.max_image_side}: "
            "scale it down and send it again.",
            "too_large",
        )
    return data


def request_mode(value: str | None) -> Mode:
    """The request's ``mode`` form field, checked: a clear 400 naming the allowed values for anything else."""
    try:
        return parse_mode(value)
    except InvalidModeError as exc:
        raise BadInput(
            400, f"{exc}; send it as multipart/form-data text field 'mode' (e.g. -F mode=letters).", "bad_mode"
        ) from exc


def prepare(path: Path | None, name: str, mode: Mode = DEFAULT_MODE) -> tuple[np.ndarray, str | None]:
    """Validated upload → one model input row (787,) via THE preprocessing path, the mode in its last column, and
    why its ink is not one symbol (:func:`ukr_hw.model.abstain.ink_reason`; None when it may be one)."""
    from PIL import Image

    from ukr_hw.model.abstain import analyse, ink_reason
    from ukr_hw.preprocess import EmptyImageError, PreprocessError

    if path is None:
        raise BadInput(
            400,
            "no image in the request: send the file as multipart/form-data field 'image' "
            "(e.g. curl -F image=@drawing.png URL/classify).",
            "no_file",
        )
    data = check_image(Path(path), name)
    try:
        glyph, stats = analyse(data)  # preprocess's glyph and the ink statistics of the same pass
    except EmptyImageError as exc:
        raise BadInput(422, f"{name}: {exc}", "empty") from exc
    except (PreprocessError, Image.DecompressionBombError) as exc:
        raise BadInput(400, f"{name}: {exc}", "not_image") from exc
    row = np.empty((ROW,), dtype=np.float32)
    row[:784] = glyph.pixels.reshape(-1)
    row[784:FEATURES] = glyph.features
    row[FEATURES] = MODES.index(mode)
    return row, ink_reason(stats)


def not_one_symbol(name: str, reason: str | None) -> BadInput:
    """The 422 of an image the model abstains on, saying why and what to send."""
    from ukr_hw.model.abstain import MESSAGE

    return BadInput(422, f"{name}: {MESSAGE} ({reason or 'not one symbol'}).", "not_one_symbol")


def check_batch(images: list[Path] | None) -> list[Path]:
    """The files of a ``/classify_batch`` request: at least one, at most ``settings.max_batch_images``."""
    if not images:
        raise BadInput(
            400,
            "no images in the request: send the files as repeated multipart/form-data field 'images' "
            "(e.g. curl -F images=@a.png -F images=@b.png URL/classify_batch).",
            "no_file",
        )
    if len(images) > SETTINGS.max_batch_images:
        raise BadInput(
            400,
            f"{len(images)} images in one request, at most {SETTINGS.max_batch_images} allowed: "
            "split them over several requests.",
            "too_many",
        )
    return images


def admin_refusal(authorization: str) -> BadInput | None:
    """Why a request with this ``Authorization`` header may not reload the model (None: it may): 403 when the
    server has no admin token, 401 without a Bearer token, 403 with a wrong one (compared in constant time)."""
    import hmac

    configured = SETTINGS.admin_token.get_secret_value() if SETTINGS.admin_token else ""
    scheme, _, token = authorization.partition(" ")
    if not configured:
        return BadInput(
            403, "reload is disabled: the server has no admin token; start it with UKR_HW_ADMIN_TOKEN set.", "auth"
        )
    if scheme.lower() != "bearer" or not token:
        return BadInput(401, "missing credentials: send 'Authorization: Bearer <admin token>'.", "auth")
    if not hmac.compare_digest(token.strip().encode(), configured.encode()):
        return BadInput(403, "wrong admin token.", "auth")
    return None


def error_response(ctx: bentoml.Context, exc: BadInput) -> JSONResponse:
    """The answer to a :class:`BadInput`: counted (``ukr_hw_rejected_requests``), one INFO line, its status."""
    REJECTED.labels(reason=exc.reason).inc()
    log.info("%d %s: %s", exc.status, ctx.request.url.path, exc.message)  # one line, no traceback
    ctx.response.status_code = exc.status  # BentoML copies the context's status onto the response
    return JSONResponse({"error": exc.message}, status_code=exc.status)
