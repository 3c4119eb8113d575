"""The ukr-hw BentoML service: two services composed with ``bentoml.depends``.

* :class:`UkrHwApi` (public, ``settings.serve_workers`` processes): validates uploads, decodes and preprocesses
  them with THE preprocessing path (:func:`ukr_hw.preprocess.preprocess`, CPU-bound, so it is spread over
  processes), then calls the model service. Endpoints: ``POST /classify``, ``POST /classify_batch``,
  ``POST /info``, ``POST /admin/reload``; BentoML adds ``/readyz``, ``/livez``, ``/metrics`` and the OpenAPI
  page at ``/`` (``/docs.json``).
* :class:`UkrHwModel` (internal, one process): holds the model and answers the batchable ``predict`` (adaptive
  batching: concurrent single-image requests from all API workers are merged into one forward pass of up to
  ``settings.serve_max_batch_size`` glyphs within ``settings.serve_max_latency_ms``). Each API worker first coalesces
  its own concurrent requests into one call (:class:`Coalescer`): under load one HTTP hop per batch, not per image.

Letters only / digits only: ``/classify`` and ``/classify_batch`` take an optional text form field ``mode``
(``any``, the default, ``letters`` or ``digits``). Each input row carries its request's mode in one extra column,
so rows of every mode share the same batches; the model service applies :func:`ukr_hw.inference.restrict` to each
row's probabilities right after the forward pass, and the answer says which mode it was read under.

Which model: the BentoML model ``ukr-hw:<tag>`` (env ``UKR_HW_BENTO_MODEL``, default ``ukr-hw:latest``) is a class
attribute, so ``bentoml build`` packs it into the Bento; ``ukr-hw serve`` imports the registry's champion
(``models:/ukr-hw@champion``) with ``bentoml.mlflow.import_model`` first (label ``mlflow_version``). That packed
model is the default the service starts with. At runtime the service follows the registry: a background thread
polls the ``champion`` alias every ``settings.reload_interval_s`` and ``POST /admin/reload`` (Bearer
``settings.admin_token``) checks at once; a new version is loaded straight from MLflow
(:meth:`ukr_hw.inference.Predictor.from_uri`) completely before the reference is swapped, so in-flight requests
finish on the model they started with. An unreachable registry leaves the current model serving (warning in the
log, gauge ``ukr_hw_registry_reachable`` 0, counter ``ukr_hw_reload_failures_total``).

Bad input never gives a 5xx: ``{"error": "..."}`` with 400 (not an image, truncated, wrong field, too many
images, an unknown mode), 413 (too large in bytes or pixels), 415 (unsupported format) or 422 (blank canvas: no ink;
or not one symbol, ``ukr_hw.model.abstain``: noise, a photo, a scribble, two symbols side by side).
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import bentoml
import numpy as np
import pandas  # noqa: F401  # BentoML's batch dispatcher imports pandas lazily; concurrent first batches raced
from pydantic import BaseModel, BeforeValidator, Field
from starlette.responses import JSONResponse

from services.bento import bentoml_fixes
from ukr_hw.inference import DEFAULT_MODE, MODES, InvalidModeError, Mode, parse_mode  # light: no torch, no mlflow
from ukr_hw.settings import get_settings

bentoml_fixes.apply()  # BentoML 1.4.39's inter-service client fails requests in flight under load (see the module)
bentoml_fixes.balance_accepts()  # keep-alive connections spread over the API workers instead of piling on one
bentoml_fixes.cache_mime_types()  # BentoML generates a JSON schema per response just to find its media type
bentoml_fixes.limit_connections()  # header timeout, keep-alive timeout, connections per source address
bentoml_fixes.close_url_fetch()  # BentoML would download a file field given as a URL (SSRF)
bentoml_fixes.quiet_client_errors()  # 4xx: one INFO line and {"error": ...}, not an ERROR traceback
bentoml_fixes.hashable_file_schema()  # a file field inside Optional[...] (BentoML's FileSchema)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # an unreachable registry must fail fast
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

log = logging.getLogger("ukr_hw.serve")
if not log.handlers:  # BentoML configures only its own loggers: client errors (INFO) and reload warnings to stderr
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False
SETTINGS = get_settings()


def _packed_model_tag() -> str | None:
    """Run from a Bento (``<bento>/src/services/bento/service.py``): the model its ``bento.yaml`` packs. Served from
    the Bento store, BentoML resolves models in the global store, where ``ukr-hw:latest`` may be a newer import."""
    import yaml

    manifest = Path(__file__).resolve().parents[3] / "bento.yaml"
    if not manifest.is_file():
        return None
    info = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    for svc in info.get("services") or []:
        for model in svc.get("models") or []:
            if str(model.get("tag", "")).startswith(f"{SETTINGS.model_name}:"):
                return str(model["tag"])
    return None


#: the BentoML model served at start: ``UKR_HW_BENTO_MODEL`` (``ukr-hw serve`` sets it), else the one this Bento packs
BENTO_MODEL_TAG = os.environ.get("UKR_HW_BENTO_MODEL") or _packed_model_tag() or f"{SETTINGS.model_name}:latest"
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP"}
FEATURES = 28 * 28 + 2  #: one glyph's features: 784 pixels then the ink box [height, width]
ROW = FEATURES + 1  #: one model input row: the features, then the request's mode (its index in MODES)


def _guard_pixels() -> None:
    """Decompression bombs: PIL refuses (error) images over 2× this many pixels when opening the header."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = SETTINGS.max_image_side**2


_guard_pixels()


def _freeze_heap() -> None:
    """Move everything loaded so far (torch, mlflow, bentoml, scipy: a million objects) out of the garbage
    collector's view. Otherwise every full collection walks them all and stalls whatever request is running for
    100-400 ms (py-spy: a few requests in a thousand). Call it after the warm-up, once the lazy imports are done."""
    import gc

    gc.collect()
    gc.freeze()


def _warm_up_preprocessing() -> None:
    """One glyph through the whole input path, so its lazy imports (PIL plugins, scipy) happen before the freeze."""
    from PIL import Image, ImageDraw

    from ukr_hw.preprocess import preprocess

    img = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(img).line([(16, 12), (48, 52)], fill=0, width=5)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    preprocess(buf.getvalue())


# --- metrics (exported at /metrics with BentoML's own) ------------------------------------------------------

REGISTRY_REACHABLE = bentoml.metrics.Gauge(
    name="ukr_hw_registry_reachable",
    documentation="1 if the last registry check succeeded, else 0",
    multiprocess_mode="livemax",
)
RELOAD_FAILURES = bentoml.metrics.Counter(
    name="ukr_hw_reload_failures", documentation="Failed checks or loads of the registry's champion"
)
RELOADS = bentoml.metrics.Counter(name="ukr_hw_reloads", documentation="Model swaps after the champion moved")
MODEL_VERSION = bentoml.metrics.Gauge(
    name="ukr_hw_model_version",
    documentation="1 for the model version being served (label version), 0 for earlier ones",
    labelnames=["version"],
    multiprocess_mode="livemax",
)
MODEL_STORE_FALLBACK = bentoml.metrics.Gauge(
    name="ukr_hw_model_store_fallback",
    documentation="1 while the model served is the BentoML store's newest, taken because the registry was "
    "unreachable when the API started; 0 once the registry confirmed or replaced it",
    multiprocess_mode="livemax",
)
REJECTED = bentoml.metrics.Counter(
    name="ukr_hw_rejected_requests", documentation="Requests refused as bad input", labelnames=["reason"]
)


# --- response models (documentation in the OpenAPI page) -------------------------------------------------------


class TopEntry(BaseModel):
    label: str = Field(description="lowercase symbol (digit or Ukrainian letter)")
    probability: float


class ClassifyResult(BaseModel):
    """The same object as ``ukr-hw predict`` prints."""

    label: str = Field(description="the recognised symbol, lowercase: '0'-'9' or а … я")
    is_uppercase: bool | None = Field(description="true/false for letters, null for digits")
    case_probability: float | None = Field(description="P(uppercase) for letters, null for digits")
    top: list[TopEntry] = Field(description="the 5 most likely symbols (of those the mode allows) with probabilities")
    model_version: str | None = Field(description="registry version of the model that answered")
    mode: Mode = Field(
        description="the restriction the answer was read under: any (every symbol), letters or digits only"
    )
    abstained: bool = Field(
        False,
        description="true when the image is not one symbol (noise, a photo, a scribble, two symbols): label and top "
        "are then only a guess. /classify answers such an image with 422; /classify_batch marks the item",
    )
    abstain_reason: str | None = Field(None, description="why it abstained (null when it did not)")


class ModelInfo(BaseModel):
    model_version: str | None
    members: int = Field(description="networks whose probabilities each answer averages (1: a single network)")
    source: str = Field(
        description="'bento' (the model it started with: packed in the Bento or imported by `ukr-hw serve`), "
        "'registry' (loaded after the alias moved) or 'store (registry unreachable)' (the registry was down at "
        "start: the newest model in the BentoML store, until the registry answers)"
    )
    loaded_at: float = Field(description="UNIX time the model was loaded")
    registry_reachable: bool | None = Field(description="result of the last registry check (null: none yet)")
    registry_status: Literal["ok", "unreachable", "no_champion"] | None = Field(
        None,
        description="the last registry check: ok, unreachable (an outage: the current model keeps serving) or "
        "no_champion (reachable, but no version carries the champion alias); null: none yet",
    )
    last_check_error: str | None = Field(None, description="the last registry check's error (null: none)")


class ReloadResult(BaseModel):
    model_version: str | None
    previous_version: str | None
    changed: bool


# --- the model service -------------------------------------------------------------------------------------------


def _stored_version(stored: Any) -> str | None:
    info = stored.info
    return info.labels.get("mlflow_version") or (info.metadata or {}).get("mlflow_version")


# no access log for the internal hop: one call per coalesced batch, and the API's own line records each request
@bentoml.service(
    name="ukr-hw-model", workers=1, threads=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}}
)
class UkrHwModel:
    """Holds the Predictor; batched ``predict``; follows the registry's champion alias."""

    bento_model = bentoml.models.BentoModel(BENTO_MODEL_TAG)

    def __init__(self) -> None:
        import torch

        from ukr_hw.inference import Predictor

        torch.set_num_threads(SETTINGS.serve_torch_threads)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self.registry_reachable: bool | None = None
        self.last_check_error: str | None = None
        self.registry_status: str | None = None
        try:
            stored = self.bento_model
        except Exception as exc:
            raise RuntimeError(
                f"BentoML model {BENTO_MODEL_TAG} not found in the BentoML store ({exc}); start the API with "
                "`ukr-hw serve` (it imports the registry's champion) or run `ukr-hw train` first."
            ) from exc
        self.predictor = Predictor.from_dir(stored.path, _stored_version(stored))
        self.source = "bento"
        self.loaded_at = time.time()
        MODEL_VERSION.labels(version=str(self.predictor.model_version)).set(1)
        # `ukr-hw serve` found the registry down and chose the store's newest model: say so from the first request,
        # not only after the first poll (and with UKR_HW_RELOAD_INTERVAL_S=0 there is none)
        at_start = os.environ.get("UKR_HW_SERVE_REGISTRY_ERROR")
        if at_start:
            from services.bento.run import STORE_FALLBACK

            self.source, self.registry_reachable, self.registry_status = STORE_FALLBACK, False, "unreachable"
            self.last_check_error = (
                f"registry unreachable when the API started ({at_start}); serving {stored.tag}, the newest model "
                "in the BentoML store, until the registry answers"
            )
            REGISTRY_REACHABLE.set(0)
            log.warning("%s", self.last_check_error)
        MODEL_STORE_FALLBACK.set(1 if at_start else 0)
        code = Path(__file__).resolve().parents[2]  # the repo, or the Bento's src/ when served from a Bento
        log.info("serving %s (model version %s; code in %s)", stored.tag, self.predictor.model_version, code)
        # warm up: the first forward pass and the registry client's imports (mlflow) before the heap is frozen
        self.predictor.predict_arrays(np.zeros((1, 28, 28), np.float32), np.zeros((1, 2), np.float32))
        import mlflow.tracking  # noqa: F401

        _freeze_heap()
        if SETTINGS.reload_interval_s > 0:
            threading.Thread(target=self._poll, name="ukr-hw-reload", daemon=True).start()

    # ---- hot reload ------------------------------------------------------------------------------------------

    def _poll(self) -> None:
        self._stop.wait(min(1.0, SETTINGS.reload_interval_s))  # first check soon after start
        while not self._stop.is_set():
            self.check_registry()
            self._stop.wait(SETTINGS.reload_interval_s)

    def check_registry(self) -> dict[str, Any]:
        """Load the registry's champion if it is not the one being served; keep serving on any failure."""
        from ukr_hw.inference import Predictor, resolve_model_uri

        with self._reload_lock:
            previous = self.predictor.model_version
            try:
                uri, version = resolve_model_uri(None, SETTINGS)
                self.registry_reachable, self.last_check_error, self.registry_status = True, None, "ok"
                REGISTRY_REACHABLE.set(1)
                if version == previous and self.source != "registry":  # the store's model IS the champion
                    self.source = "bento"
                    MODEL_STORE_FALLBACK.set(0)
            except Exception as exc:
                from ukr_hw.inference import ModelNotFoundError

                no_champion = isinstance(exc, ModelNotFoundError)
                self.registry_reachable, self.last_check_error = no_champion, str(exc)
                self.registry_status = "no_champion" if no_champion else "unreachable"
                REGISTRY_REACHABLE.set(1 if no_champion else 0)
                RELOAD_FAILURES.inc()
                if no_champion:
                    log.warning("registry reachable but has no champion, still serving version %s: %s", previous, exc)
                else:
                    log.warning("registry unreachable, still serving version %s: %s", previous, exc)
                return {"ok": False, "error": str(exc), "model_version": previous}
            if version == previous:
                return {"ok": True, "model_version": previous, "previous_version": previous, "changed": False}
            try:
                fresh = Predictor.from_uri(uri, SETTINGS)  # fully loaded before the swap
            except Exception as exc:
                self.last_check_error = f"loading {uri} failed: {exc}"
                RELOAD_FAILURES.inc()
                log.warning("loading %s failed, still serving version %s: %s", uri, previous, exc)
                return {"ok": False, "error": self.last_check_error, "model_version": previous}
            self.predictor = fresh  # atomic reference swap: running batches keep their own reference
            self.source, self.loaded_at = "registry", time.time()
            MODEL_STORE_FALLBACK.set(0)
            RELOADS.inc()
            MODEL_VERSION.labels(version=str(previous)).set(0)
            MODEL_VERSION.labels(version=str(fresh.model_version)).set(1)
            log.info("champion moved: now serving version %s (was %s)", fresh.model_version, previous)
            return {"ok": True, "model_version": fresh.model_version, "previous_version": previous, "changed": True}

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()

    # ---- APIs (internal: called by UkrHwApi) -----------------------------------------------------------------

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.serve_max_batch_size,
        max_latency_ms=SETTINGS.serve_max_latency_ms,
    )
    def predict(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """``rows`` (N, 787) float32: 28×28 pixels, ink [height, width], then the mode's index in ``MODES`` → one
        result dict per row, its probabilities restricted to what the row's mode allows (rows of any modes mix)."""
        from ukr_hw.inference import format_result

        predictor = self.predictor  # one model for the whole batch, even if a reload swaps meanwhile
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, ROW)
        probs, case, energy = predictor.predict_outputs(rows[:, :784].reshape(-1, 28, 28), rows[:, 784:FEATURES])
        modes = [MODES[int(m)] for m in rows[:, FEATURES]]
        version = predictor.model_version
        # the model's own "not one symbol" thresholds: energy when it stores one, else max probability (0: never)
        t, t_energy = predictor.abstain_threshold, predictor.abstain_energy
        return [
            format_result(p, float(c), version, m, t, energy=float(e), abstain_energy=t_energy)
            for p, c, e, m in zip(probs, case, energy, modes, strict=True)
        ]

    @bentoml.api
    def info(self) -> dict[str, Any]:
        from ukr_hw.model.network import member_nets

        return {
            "model_version": self.predictor.model_version,
            "members": len(member_nets(self.predictor.net)),
            "source": self.source,
            "loaded_at": self.loaded_at,
            "registry_reachable": self.registry_reachable,
            "last_check_error": self.last_check_error,
            "registry_status": self.registry_status,
        }

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        return self.check_registry()


# --- input validation -----------------------------------------------------------------------------------------


class BadInput(Exception):
    """A request the client must fix; becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


def _check_image(path: Path, name: str) -> bytes:
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


def _mode(value: str | None) -> Mode:
    """The request's ``mode`` form field, checked: a clear 400 naming the allowed values for anything else."""
    try:
        return parse_mode(value)
    except InvalidModeError as exc:
        raise BadInput(
            400, f"{exc}; send it as multipart/form-data text field 'mode' (e.g. -F mode=letters).", "bad_mode"
        ) from exc


def _prepare(path: Path | None, name: str, mode: Mode = DEFAULT_MODE) -> tuple[np.ndarray, str | None]:
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
    data = _check_image(Path(path), name)
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


def _not_one_symbol(name: str, reason: str | None) -> BadInput:
    """The 422 of an image the model abstains on, saying why and what to send."""
    from ukr_hw.model.abstain import MESSAGE

    return BadInput(422, f"{name}: {MESSAGE} ({reason or 'not one symbol'}).", "not_one_symbol")


def _error(ctx: bentoml.Context, exc: BadInput) -> JSONResponse:
    REJECTED.labels(reason=exc.reason).inc()
    log.info("%d %s: %s", exc.status, ctx.request.url.path, exc.message)  # one line, no traceback
    ctx.response.status_code = exc.status  # BentoML copies the context's status onto the response
    return JSONResponse({"error": exc.message}, status_code=exc.status)


_FILE_FIELDS = {"/classify": b"image", "/classify_batch": b"images"}
_TEXT_FIELDS = {b"mode"}  #: form fields that the upload routes take as text, next to the file(s)
_DISPOSITION = re.compile(rb"content-disposition:[^\r\n]*", re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"')


async def _multipart_problem(scope: dict, body: bytes) -> str | None:
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


#: seconds the whole body of a POST may take to arrive; then 408 (a stalled or cut-short body)
BODY_TIMEOUT_S = float(os.environ.get("UKR_HW_SERVE_BODY_TIMEOUT_S", "20"))
#: body limit of the routes that take JSON (or nothing)
JSON_BODY_LIMIT = 64 * 1024
_API: Any = None  #: this worker's UkrHwApi instance (for /readyz details)


class _TooSlow(Exception):
    pass


async def _respond(scope: dict, receive: Any, send: Any, status: int, message: str, reason: str) -> None:
    REJECTED.labels(reason=reason).inc()
    log.info("%d %s %s: %s", status, scope.get("method"), scope.get("path"), message)
    headers = {"connection": "close"} if status in (408, 413) else None
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 form of a JSON schema: ``anyOf: [X, {type: null}]`` → X with ``nullable: true``; no ``type: null``,
    ``file`` → ``string``/``binary``."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [a for a in any_of if a != {"type": "null"}]
        del node["anyOf"]
        node = {**(rest[0] if len(rest) == 1 else {"anyOf": rest}), **node, "nullable": True}
    if node.get("type") == "file":
        node["type"] = "string"
    return node


def _model_schema(model: type[BaseModel], components: dict) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = _nullable(sub)
    components[model.__name__] = _nullable(schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_ERRORS = {
    400: "bad input: not an image, truncated, wrong or missing field, more than one image, unknown mode",
    401: "missing credentials",
    403: "wrong admin token, or reload disabled",
    408: "the request (headers or body) did not arrive in time",
    413: "too large, in bytes or pixels",
    415: "wrong Content-Type or image format",
    422: "a blank canvas (no ink), or not one symbol: noise, a photo, a scribble, two symbols side by side",
    429: "too many requests or connections",
    500: "server error",
    503: "registry unreachable (reload), or the service not ready",
}
_ROUTE_ERRORS = {
    "/classify": (400, 408, 413, 415, 422, 429, 500, 503),
    "/classify_batch": (400, 408, 413, 415, 422, 429, 500, 503),
    "/info": (400, 408, 413, 415, 429, 500, 503),
    "/admin/reload": (400, 401, 403, 408, 413, 415, 429, 500, 503),
}


def _complete_openapi(spec: dict) -> dict:
    """BentoML's document, made to match the server: every status each route answers with the one error schema,
    nullable fields nullable, the uploads required, the admin token a security scheme."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in list(schemas):
        schemas[name] = _nullable(schemas[name])
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what was wrong and what to send instead"}},
    }
    schemas["ReadyDetails"] = {
        "type": "object",
        "required": ["ready"],
        "properties": {
            "ready": {"type": "boolean"},
            "model_version": {"type": "string", "nullable": True},
            "registry_reachable": {"type": "boolean", "nullable": True},
            "registry_status": {"type": "string", "nullable": True},
            "last_check_error": {"type": "string", "nullable": True},
            "source": {"type": "string", "nullable": True, "description": "where the served model came from"},
        },
    }
    components["securitySchemes"] = {"adminToken": {"type": "http", "scheme": "bearer"}}
    ok = {
        "/classify": _model_schema(ClassifyResult, schemas),
        "/classify_batch": {"type": "array", "items": _model_schema(ClassifyResult, schemas)},
        "/info": _model_schema(ModelInfo, schemas),
        "/admin/reload": _model_schema(ReloadResult, schemas),
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    paths = spec.get("paths", {})
    paths.pop("/healthz", None)  # not served
    for route, statuses in _ROUTE_ERRORS.items():
        op = paths.get(route, {}).get("post")
        if op is None:
            continue
        responses = {
            "200": {"description": "Successful Response", "content": {"application/json": {"schema": ok[route]}}}
        }
        for status in statuses:
            responses[str(status)] = {"description": _ERRORS[status], "content": error}
        op["responses"] = responses
        body = op.get("requestBody", {}).get("content", {})
        if route in _FILE_FIELDS:
            form = _nullable(body["multipart/form-data"]["schema"])
            field = _FILE_FIELDS[route].decode()
            if route == "/classify":
                form["properties"][field] = {"type": "string", "format": "binary", "description": "the image"}
            else:
                form["properties"][field] = {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "minItems": 1,
                    "maxItems": SETTINGS.max_batch_images,
                    "description": "the images",
                }
            form["required"] = [field]
            form["properties"]["mode"].pop("nullable", None)
            form["properties"]["mode"].pop("default", None)
            body["multipart/form-data"]["schema"] = form
            op["requestBody"]["required"] = True
        if route == "/admin/reload":
            op["security"] = [{"adminToken": []}]
    text = {"text/plain": {"schema": {"type": "string"}}}
    for route in ("/livez", "/metrics"):
        if route in paths:
            paths[route]["get"]["responses"] = {"200": {"description": "Successful Response", "content": text}}
    if "/readyz" in paths:
        paths["/readyz"]["get"]["responses"] = {
            "200": {
                "description": "ready, with the model version and the registry's state",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReadyDetails"}}},
            },
            "503": {"description": "not ready yet", "content": text},
        }
    return spec


class UploadGuard:
    """ASGI middleware in front of BentoML's request parsing, on every POST:

    * the upload routes take only ``multipart/form-data`` (with a boundary), the other routes JSON or no body:
      any other Content-Type is a 415 saying what to send (BentoML routes urlencoded forms to its multipart parser
      and would treat a text value as a URL to fetch);
    * the body is read here, capped in size before it is held in memory (413) and within ``BODY_TIMEOUT_S`` (408);
    * on the upload routes: a malformed form, a text part in a file field, a file in a text field, unknown fields,
      more than one ``image`` (``/classify``) or more than ``max_batch_images`` ``images`` are 400s.

    Also: ``GET /readyz`` answers with details (model version, registry reachable, the last check's error), and the
    OpenAPI document (``/docs.json``) is completed by :func:`_complete_openapi`.
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
        upload = path in _FILE_FIELDS
        if upload:
            field = _FILE_FIELDS[path].decode()
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
        if upload and (problem := await _multipart_problem(scope, body)):
            return await _respond(scope, receive, send, 400, problem, "bad_multipart")
        if upload and (problem := _form_problem(path, body)):
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
            spec = _complete_openapi(json.loads(body))
            return await JSONResponse(spec)(scope, receive, send)
        if status == 200 and path == "/readyz" and _API is not None:
            try:
                info = await asyncio.wait_for(_API.model.to_async.info(), 5)
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


def _form_problem(path: str, body: bytes) -> tuple[str, str] | None:
    """The form's fields, checked from their Content-Disposition headers: (message, reason) or None."""
    field = _FILE_FIELDS[path]
    files = 0
    for m in _DISPOSITION.finditer(body):
        name = _NAME.search(m.group(0))
        if name is None:
            continue
        if name.group(1) in _TEXT_FIELDS:
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


class Coalescer:
    """One model call at a time per API worker, carrying every request that queued up while the last one ran.

    Under load, concurrent requests in a worker become one call to the model service instead of one call each
    (its per-call HTTP cost is larger than the forward pass of a glyph); with a single client a request goes out
    at once, so nothing waits. The model service's adaptive batching then merges the calls of all workers.
    """

    def __init__(self, call: Any, max_rows: int) -> None:
        self._call, self._max_rows = call, max(1, max_rows)
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._running = False
        self._task: asyncio.Task | None = None  # referenced, so the running drain is never garbage-collected

    async def __call__(self, rows: np.ndarray) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((rows, future))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch, n = [], 0
        while self._pending and (not batch or n + len(self._pending[0][0]) <= self._max_rows):
            rows, future = self._pending.popleft()
            if not future.done():  # the client went away meanwhile
                batch.append((rows, future))
                n += len(rows)
        return batch

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                if not batch:
                    continue
                try:
                    results = await self._call(np.concatenate([rows for rows, _ in batch]))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for rows, future in batch:
                    if not future.done():
                        future.set_result(results[start : start + len(rows)])
                    start += len(rows)
        finally:
            self._running = False


# --- the public API service ---------------------------------------------------------------------------------------

UploadedFile = Optional[Path]  # noqa: UP045 - typing.Optional: BentoML patches typing.Union, not X | None


def _as_text(value: Any) -> Any:
    """BentoML JSON-decodes every text form value (``mode=1`` arrives as the int 1, ``mode=true`` as True): keep
    it text, so that the endpoint, not pydantic, answers with the allowed values."""
    return value if value is None or isinstance(value, str) else repr(value)


#: The optional restriction field of the upload routes (text next to the file; absent or empty: any).
ModeField = Annotated[
    Optional[Annotated[str, Field(json_schema_extra={"enum": list(MODES)})]],  # noqa: UP045 (as above)
    BeforeValidator(_as_text),
    Field(
        description="which symbols the answer may name: 'any' (default: all 43), 'letters' (only the 33 letters) "
        "or 'digits' (only 0-9). З/3, О/0 and Ь/6 are one drawing: say which you mean."
    ),
]


@bentoml.service(
    name="ukr-hw-api",
    workers=SETTINGS.serve_workers,
    traffic={"timeout": 60, "max_concurrency": 256},
    logging={"access": {"enabled": SETTINGS.serve_access_log}},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
)
class UkrHwApi:
    """Hand-drawn Ukrainian letters and digits: upload a drawing or scan, get the symbol and its case."""

    model = bentoml.depends(UkrHwModel)

    def __init__(self) -> None:
        import anyio

        self._limiter = anyio.CapacityLimiter(4)  # preprocessing threads per worker process
        self._predict = Coalescer(lambda rows: self.model.to_async.predict(rows), SETTINGS.serve_max_batch_size)
        global _API
        _API = self
        _warm_up_preprocessing()
        _freeze_heap()

    async def _rows(self, paths: list[tuple[Path | None, str]], mode: Mode) -> tuple[np.ndarray, list[str | None]]:
        """The model input rows of these uploads and each one's ink-rule reason (None: may be one symbol)."""
        import anyio

        prepared = [await anyio.to_thread.run_sync(_prepare, p, n, mode, limiter=self._limiter) for p, n in paths]
        return np.stack([row for row, _ in prepared]), [reason for _, reason in prepared]

    @bentoml.api(route="/classify")
    async def classify(
        self, ctx: bentoml.Context, image: UploadedFile = None, mode: ModeField = None
    ) -> ClassifyResult:
        """Classify one drawing or scan.

        Send multipart/form-data with the file in field ``image`` (PNG, JPEG or WebP; an RGBA canvas with
        transparent background or a scan with dark ink on light paper) and optionally the text field ``mode``:
        ``letters`` or ``digits`` restricts the answer to those symbols (top 5 and probabilities over them only),
        ``any`` (the default) allows all 43. Returns the symbol (lowercase), whether it is uppercase (null for
        digits), the top 5 symbols, the model version that answered and the mode applied.
        Errors: ``{"error": "..."}`` with 400 (not an image / truncated / no file / unknown mode), 413 (over
        settings.max_upload_bytes or max_image_side), 415 (other formats), 422 (blank canvas: no ink; or not one
        symbol: noise, a photo, a scribble, two symbols side by side — the model abstains).
        """
        try:
            rows, reasons = await self._rows([(image, "image")], _mode(mode))
            if reasons[0] is not None:  # the ink alone says it: no forward pass
                raise _not_one_symbol("image", reasons[0])
            results = await self._predict(rows)
            if results[0].get("abstained"):
                raise _not_one_symbol("image", results[0].get("abstain_reason"))
        except BadInput as exc:
            return _error(ctx, exc)  # type: ignore[return-value]
        return ClassifyResult.model_validate(results[0])

    @bentoml.api(route="/classify_batch")
    async def classify_batch(
        self,
        ctx: bentoml.Context,
        images: Optional[list[Path]] = None,  # noqa: UP045
        mode: ModeField = None,
    ) -> list[ClassifyResult]:
        """Classify several images in one request.

        Send multipart/form-data with every file in the repeated field ``images`` (at most
        settings.max_batch_images) and optionally the text field ``mode`` (``any``, ``letters`` or ``digits``,
        for every image; as for /classify). Returns one result per image, in the order sent. Any bad image fails
        the whole request with ``{"error": "image N: ..."}`` naming it (400/413/415/422 as for /classify); an
        image that is not one symbol does not: its result says ``abstained: true`` and why.
        """
        try:
            applied = _mode(mode)
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
            rows, reasons = await self._rows([(p, f"image {i}") for i, p in enumerate(images)], applied)
        except BadInput as exc:
            return _error(ctx, exc)  # type: ignore[return-value]
        results = await self._predict(rows)
        for result, reason in zip(results, reasons, strict=True):
            if reason is not None:  # the ink rule's verdict, next to the model's guess
                result.update(abstained=True, abstain_reason=reason)
        return [ClassifyResult.model_validate(r) for r in results]

    @bentoml.api(route="/info")
    async def info(self) -> ModelInfo:
        """The model being served: version, where it came from, and the last registry check."""
        return ModelInfo.model_validate(await self.model.to_async.info())

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context) -> ReloadResult:
        """Check the registry now and switch to the current champion if it moved (no restart, no failed requests).

        Needs ``Authorization: Bearer <settings.admin_token>``: 401 without a token, 403 with a wrong one, 403
        when the server has no admin token configured (set UKR_HW_ADMIN_TOKEN). 503 if the registry cannot be
        reached (the current model keeps serving).
        """
        import hmac

        configured = SETTINGS.admin_token.get_secret_value() if SETTINGS.admin_token else ""
        header = ctx.request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not configured:
            return _error(
                ctx,
                BadInput(
                    403,
                    "reload is disabled: the server has no admin token; start it with UKR_HW_ADMIN_TOKEN set.",
                    "auth",
                ),
            )  # type: ignore[return-value]
        if scheme.lower() != "bearer" or not token:
            return _error(
                ctx, BadInput(401, "missing credentials: send 'Authorization: Bearer <admin token>'.", "auth")
            )  # type: ignore[return-value]
        if not hmac.compare_digest(token.strip().encode(), configured.encode()):
            return _error(ctx, BadInput(403, "wrong admin token.", "auth"))  # type: ignore[return-value]
        result = await self.model.to_async.reload()
        if not result.get("ok"):
            return _error(
                ctx,
                BadInput(
                    503,
                    f"reload failed, still serving version {result.get('model_version')}: {result.get('error')}",
                    "reload",
                ),
            )  # type: ignore[return-value]
        return ReloadResult.model_validate(result)


UkrHwApi.add_asgi_middleware(UploadGuard)
