"""The ASGI middleware in front of BentoML's request parsing: a bad request is refused here, clearly, never a 5xx.

Left to itself, BentoML routes an urlencoded form to its multipart parser (and would treat a text value as a URL to
fetch), and a malformed multipart body becomes a server error. :class:`UploadGuard` reads every POST body first:
the Content-Type each route takes (415), the body's size before it is held in memory (413), its arrival within
``BODY_TIMEOUT_S`` (408), and on the upload routes the form itself (400: malformed, or wrong, unknown or too many
fields, :func:`form_problem`); only then does BentoML see the request. It also rewrites two GET answers:
``/readyz`` with the served model's details (from the callable the API service hands to :func:`report_model_info`)
and ``/docs.json``, completed by :func:`ukr_hw.serving.schemas.complete_openapi`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse

from ukr_hw.serving import SETTINGS
from ukr_hw.serving.schemas import FILE_FIELDS, complete_openapi
from ukr_hw.serving.telemetry import REJECTED, log

TEXT_FIELDS = {b"mode"}  #: form fields that the upload routes take as text, next to the file(s)
_DISPOSITION = re.compile(rb"content-disposition:[^\r\n]*", re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"')
#: seconds the whole body of a POST may take to arrive; then 408 (a stalled or cut-short body)
BODY_TIMEOUT_S = float(os.environ.get("UKR_HW_SERVE_BODY_TIMEOUT_S", "20"))
#: body limit of the routes that take JSON (or nothing)
JSON_BODY_LIMIT = 64 * 1024
_model_info: Callable[[], Awaitable[dict[str, Any]]] | None = None  #: this worker's model details (for /readyz)


def report_model_info(info: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Let ``GET /readyz`` answer with what ``info()`` says (the model service's ``info``) once this worker is up."""
    global _model_info
    _model_info = info


class _TooSlow(Exception):
    pass


async def _respond(scope: dict, receive: Any, send: Any, status: int, message: str, reason: str) -> None:
    REJECTED.labels(reason=reason).inc()
    log.info("%d %s %s: %s", status, scope.get("method"), scope.get("path"), message)
    headers = {"connection": "close"} if status in (408, 413) else None
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


class UploadGuard:
    """ASGI middleware in front of BentoML's request parsing, on every POST:

    * the upload routes take only ``multipart/form-data`` (with a boundary), the other routes JSON or no body:
      any other Content-Type is a 415 saying what to send (BentoML routes urlencoded forms to its multipart parser
      and would treat a text value as a URL to fetch);
    * the body is read here, capped in size before it is held in memory (413) and within ``BODY_TIMEOUT_S`` (408);
    * on the upload routes: a malformed form, a text part in a file field, a file in a text field, unknown fields,
      more than one ``image`` (``/classify``) or more than ``max_batch_images`` ``images`` are 400s.

    Also: ``GET /readyz`` answers with details (model version, registry reachable, the last check's error), and the
    OpenAPI document (``/docs.json``) is completed by :func:`complete_openapi`.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope.get("method"), scope.get("path", "")
        if method == "GET" and path in ("/readyz", "/docs.json"):
            return await self._rewrite(scope, receive, send, path)
        if method != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").lower()
        media = content_type.split(b";", 1)[0].strip()
        upload = path in FILE_FIELDS
        if upload:
            field = FILE_FIELDS[path].decode()
            if media != b"multipart/form-data":
                got = media.decode("latin-1")[:80] or "no Content-Type"
                return await _respond(
                    scope,
                    receive,
                    send,
                    415,
                    f"{got} is not accepted here: send multipart/form-data with the image file(s) in field "
                    f"'{field}' (e.g. curl -F {field}=@drawing.png URL{path}).",
                    "bad_content_type",
                )
            if b"boundary=" not in content_type:
                return await _respond(
                    scope,
                    receive,
                    send,
                    400,
                    "Content-Type multipart/form-data without a boundary; let your HTTP client build the form.",
                    "bad_content_type",
                )
            limit = SETTINGS.max_batch_upload_bytes if path == "/classify_batch" else SETTINGS.max_upload_bytes
            limit += 64 * 1024  # multipart framing
        else:
            if media and media != b"application/json":
                return await _respond(
                    scope,
                    receive,
                    send,
                    415,
                    f"{media.decode('latin-1')[:80]} is not accepted here: send application/json (or no body).",
                    "bad_content_type",
                )
            limit = JSON_BODY_LIMIT
        too_big = f"request body over {limit // 1024} KiB; send smaller images (or fewer per batch)."
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _respond(scope, receive, send, 413, too_big, "too_large")
        chunks, total, more = [], 0, True
        deadline = time.monotonic() + BODY_TIMEOUT_S
        try:
            while more:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _TooSlow
                try:
                    message = await asyncio.wait_for(receive(), left)
                except TimeoutError as exc:
                    raise _TooSlow from exc
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    return await _respond(scope, receive, send, 413, too_big, "too_large")
                chunks.append(chunk)
                more = message.get("more_body", False)
        except _TooSlow:
            return await _respond(
                scope,
                receive,
                send,
                408,
                f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s; send it again.",
                "timeout",
            )
        body = b"".join(chunks)
        if upload and (problem := await multipart_problem(scope, body)):
            return await _respond(scope, receive, send, 400, problem, "bad_multipart")
        if upload and (problem := form_problem(path, body)):
            return await _respond(scope, receive, send, 400, problem[0], problem[1])
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _rewrite(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        """Run the route, then answer with its rewritten body: /readyz's details, /docs.json completed."""
        import json

        start: dict = {}
        parts: list[bytes] = []

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        status = start.get("status", 500)
        body = b"".join(parts)
        if status == 200 and path == "/docs.json":
            spec = complete_openapi(json.loads(body))
            return await JSONResponse(spec)(scope, receive, send)
        if status == 200 and path == "/readyz" and _model_info is not None:
            try:
                info = await asyncio.wait_for(_model_info(), 5)
            except Exception as exc:  # the model service is ready (BentoML said so) but did not answer in time
                info = {"error": f"model service did not report: {exc.__class__.__name__}"}
            details = {
                "ready": True,
                "model_version": info.get("model_version"),
                "registry_reachable": info.get("registry_reachable"),
                "registry_status": info.get("registry_status"),
                "last_check_error": info.get("last_check_error"),
                "source": info.get("source"),
            }
            return await JSONResponse(details)(scope, receive, send)
        raw = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*raw, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def form_problem(path: str, body: bytes) -> tuple[str, str] | None:
    """The form's fields, checked from their Content-Disposition headers: (message, reason) or None."""
    field = FILE_FIELDS[path]
    files = 0
    for m in _DISPOSITION.finditer(body):
        name = _NAME.search(m.group(0))
        if name is None:
            continue
        if name.group(1) in TEXT_FIELDS:
            if b"filename=" in m.group(0):
                got = name.group(1).decode()
                return f"field '{got}' must be a text value, not a file: e.g. -F {got}=letters.", "wrong_field"
        elif name.group(1) != field:
            got = name.group(1).decode("utf-8", "replace")[:50]
            return f"unexpected form field '{got}': send the image(s) in field '{field.decode()}'.", "wrong_field"
        elif b"filename=" not in m.group(0):
            return f"field '{field.decode()}' must be a file upload (a PNG, JPEG or WebP), not text.", "wrong_field"
        else:
            files += 1
    if path == "/classify" and files > 1:
        return (
            f"{files} files in field 'image': /classify reads exactly one image; send several to /classify_batch "
            "(field 'images').",
            "too_many",
        )
    if path == "/classify_batch" and files > SETTINGS.max_batch_images:
        return (
            f"{files} images in one request, at most {SETTINGS.max_batch_images} allowed: split them over several "
            "requests.",
            "too_many",
        )
    return None


async def multipart_problem(scope: dict, body: bytes) -> str | None:
    """Parse a buffered multipart body the way BentoML will; a malformed one is a client error, not a 500."""
    from starlette.requests import Request

    async def once() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form()
        await form.close()
    except Exception as exc:  # starlette: HTTPException(400) / MultiPartException on a broken body
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc.__class__.__name__
        return f"malformed multipart/form-data body ({detail}); let your HTTP client build the form."
    return None
