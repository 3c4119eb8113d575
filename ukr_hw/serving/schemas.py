"""What goes in and out of the API, and the OpenAPI document that says so.

The upload routes take the image file(s) in one form field (:data:`FILE_FIELDS`) and an optional text field
``mode`` (:data:`ModeField`); every route answers with one of the pydantic models below (their field descriptions
are the documentation on the OpenAPI page) or with ``{"error": "..."}``. BentoML's own document knows neither the
error statuses nor OpenAPI 3.0's ``nullable``, and calls a file a ``file``: :func:`complete_openapi` rewrites it
(the :class:`~ukr_hw.serving.upload_guard.UploadGuard` serves the result at ``/docs.json``) so that it matches what
the server really does: every status each route answers with, the one error schema, nullable fields nullable, the
uploads required and the admin token a security scheme.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, Field

from ukr_hw.inference import MODES, Mode  # light: no torch, no mlflow
from ukr_hw.serving import SETTINGS

#: the form field that carries the file(s) of each upload route
FILE_FIELDS = {"/classify": b"image", "/classify_batch": b"images"}

# --- requests ---------------------------------------------------------------------------------------------------

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


# --- responses --------------------------------------------------------------------------------------------------


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


# --- the OpenAPI document ---------------------------------------------------------------------------------------


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


def complete_openapi(spec: dict) -> dict:
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
        if route in FILE_FIELDS:
            form = _nullable(body["multipart/form-data"]["schema"])
            field = FILE_FIELDS[route].decode()
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
