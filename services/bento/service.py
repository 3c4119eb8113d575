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

This module is only the BentoML wiring (the services, their endpoints, the fixes to BentoML applied first): the
logic lives in :mod:`ukr_hw.serving`, one module per job (input checks, the upload guard, schemas and the OpenAPI
document, the coalescer, the hot-reloading model holder, metrics, process set-up); its docstring lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import bentoml
import numpy as np
import pandas  # noqa: F401  # BentoML's batch dispatcher imports pandas lazily; concurrent first batches raced

from services.bento import bentoml_fixes
from ukr_hw.inference import Mode  # light: no torch, no mlflow
from ukr_hw.serving import SETTINGS, process, upload_guard
from ukr_hw.serving.batching import Coalescer
from ukr_hw.serving.inputs import (
    BadInput,
    admin_refusal,
    check_batch,
    error_response,
    not_one_symbol,
    prepare,
    request_mode,
)
from ukr_hw.serving.model import BENTO_MODEL_TAG, ModelHolder
from ukr_hw.serving.schemas import ClassifyResult, ModeField, ModelInfo, ReloadResult, UploadedFile

bentoml_fixes.apply()  # BentoML 1.4.39's inter-service client fails requests in flight under load (see the module)
bentoml_fixes.balance_accepts()  # keep-alive connections spread over the API workers instead of piling on one
bentoml_fixes.cache_mime_types()  # BentoML generates a JSON schema per response just to find its media type
bentoml_fixes.limit_connections()  # header timeout, keep-alive timeout, connections per source address
bentoml_fixes.close_url_fetch()  # BentoML would download a file field given as a URL (SSRF)
bentoml_fixes.quiet_client_errors()  # 4xx: one INFO line and {"error": ...}, not an ERROR traceback
bentoml_fixes.hashable_file_schema()  # a file field inside Optional[...] (BentoML's FileSchema)
process.configure()  # decompression-bomb guard; an unreachable registry fails fast


# no access log for the internal hop: one call per coalesced batch, and the API's own line records each request
@bentoml.service(
    name="ukr-hw-model", workers=1, threads=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}}
)
class UkrHwModel:
    """Holds the Predictor (:class:`~ukr_hw.serving.model.ModelHolder`); batched ``predict``; follows the
    registry's champion alias."""

    bento_model = bentoml.models.BentoModel(BENTO_MODEL_TAG)

    def __init__(self) -> None:
        try:
            stored = self.bento_model
        except Exception as exc:
            raise RuntimeError(
                f"BentoML model {BENTO_MODEL_TAG} not found in the BentoML store ({exc}); start the API with "
                "`ukr-hw serve` (it imports the registry's champion) or run `ukr-hw train` first."
            ) from exc
        self.holder = ModelHolder(stored)  # loaded, one forward pass done
        process.freeze_heap()
        self.holder.start_polling()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.holder.stop()

    # ---- APIs (internal: called by UkrHwApi) -----------------------------------------------------------------

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.serve_max_batch_size,
        max_latency_ms=SETTINGS.serve_max_latency_ms,
    )
    def predict(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """``rows`` (N, 787) float32: 28×28 pixels, ink [height, width], then the mode's index in ``MODES`` → one
        result dict per row, its probabilities restricted to what the row's mode allows (rows of any modes mix)."""
        return self.holder.predict(rows)

    @bentoml.api
    def info(self) -> dict[str, Any]:
        return self.holder.info()

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        return self.holder.check_registry()


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
        upload_guard.report_model_info(lambda: self.model.to_async.info())  # /readyz's details
        process.warm_up_preprocessing()
        process.freeze_heap()

    async def _rows(self, paths: list[tuple[Path | None, str]], mode: Mode) -> tuple[np.ndarray, list[str | None]]:
        """The model input rows of these uploads and each one's ink-rule reason (None: may be one symbol)."""
        import anyio

        prepared = [await anyio.to_thread.run_sync(prepare, p, n, mode, limiter=self._limiter) for p, n in paths]
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
            rows, reasons = await self._rows([(image, "image")], request_mode(mode))
            if reasons[0] is not None:  # the ink alone says it: no forward pass
                raise not_one_symbol("image", reasons[0])
            results = await self._predict(rows)
            if results[0].get("abstained"):
                raise not_one_symbol("image", results[0].get("abstain_reason"))
        except BadInput as exc:
            return error_response(ctx, exc)  # type: ignore[return-value]
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
            applied = request_mode(mode)
            images = check_batch(images)
            rows, reasons = await self._rows([(p, f"image {i}") for i, p in enumerate(images)], applied)
        except BadInput as exc:
            return error_response(ctx, exc)  # type: ignore[return-value]
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
        refusal = admin_refusal(ctx.request.headers.get("authorization", ""))
        if refusal is not None:
            return error_response(ctx, refusal)  # type: ignore[return-value]
        result = await self.model.to_async.reload()
        if not result.get("ok"):
            return error_response(
                ctx,
                BadInput(
                    503,
                    f"reload failed, still serving version {result.get('model_version')}: {result.get('error')}",
                    "reload",
                ),
            )  # type: ignore[return-value]
        return ReloadResult.model_validate(result)


UkrHwApi.add_asgi_middleware(upload_guard.UploadGuard)
