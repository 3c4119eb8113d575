"""Fixes to BentoML 1.4.39's serving, applied when the service loads.

:func:`apply` fixes its client between services (``bentoml.depends``); both problems turned into HTTP 500s for
our clients under load (the serving benchmark at 32 clients: 26 of 1,600 requests):

1. **Session refresh closes requests in flight.** ``proxy2.SessionManager`` replaces its aiohttp session every 100
   requests (or 5 minutes) and *awaits* ``close()`` on the old one at once, while other coroutines are still
   writing to or reading from it: "Cannot write to closing transport" / "Server disconnected" (BentoML issues
   #5540, #5544). Here the old session is closed only after a grace period longer than any request may take.
2. **Stale keep-alive connections.** Its connectors keep idle connections for aiohttp's default 15 s, but the
   uvicorn server on the other end drops them after 5 s; a request that picks such a connection fails (BentoML
   #4971, PR #5698). Here idle connections are dropped after 4 s, before the server does.

Delete it when BentoML ships the fixes (check: ``benchmarks/serving.py`` reports 0 errors without it).

:func:`balance_accepts` spreads keep-alive connections over the API worker processes. The workers share one
listening socket and run plain asyncio, whose accept loop takes up to ``backlog`` (2048) waiting connections per
wake-up: a burst of new connections (32 benchmark clients, a proxy's pool) all landed in the worker that woke first
and stayed there, leaving the other worker idle (measured: 0.01 ms CPU per request in one, 6 ms in the other, and
~185 instead of ~285 req/s). Taking one connection per wake-up lets every idle worker take its share.
No supported mechanism replaces it: BentoML 1.4 passes its HTTP workers one circus socket by file descriptor and
offers ``SO_REUSEPORT`` only for gRPC. Re-measured on December 4 (``benchmarks/serving.py --concurrency 1 32``, 2-core
machine, alternating runs): 188-225 req/s at 32 clients with it, 140-182 without (3.6x against 2.2-3.0x the naive
server).

:func:`cache_mime_types` memoises the media type of each API's output model. BentoML recomputes it for every
response by generating the model's whole JSON schema (py-spy: a fifth of the model service's busy time at one
client); it is a constant of the class.

The hostile-traffic fixes (:func:`limit_connections`, :func:`close_url_fetch`, :func:`quiet_client_errors`) and
:func:`hashable_file_schema` are explained where they are defined.

**Every patch here is pinned.** :data:`PATCHES` names, for each one, the package it patches, the versions it was
read against and tested with, and the upstream report. On any other installed version the patch raises
:class:`UncheckedVersionError` when it is applied (so the service does not start) instead of silently patching code
that may have changed: re-read the patched function in the new version, run ``tests/unit/test_bentoml_fixes.py``
and ``tests/integration/test_hostile.py``, then add the version to the patch's entry, or delete the patch if upstream
fixed it.
``UKR_HW_UNCHECKED_PATCHES=warn`` starts anyway with a warning (for trying an upgrade, not for production).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger("ukr_hw.serve")


@dataclass(frozen=True)
class Patch:
    package: str  #: the distribution patched ("python" for the standard library)
    versions: tuple[str, ...]  #: versions the patch was read against and tested with
    upstream: str  #: where the problem is reported upstream


PATCHES: dict[str, Patch] = {
    "apply": Patch(
        "bentoml",
        ("1.4.39",),
        "bentoml/BentoML#5540, #5544 (session refresh closes requests in flight); #4971, PR #5698 (stale keep-alive)",
    ),
    "balance_accepts": Patch(
        "python",
        ("3.11",),
        "python/cpython#77992 (bpo-33811, asyncio accepts up to `backlog` connections per wake-up); "
        "the same fix in tornado: tornadoweb/tornado#698",
    ),
    "cache_mime_types": Patch("bentoml", ("1.4.39",), "none filed: IOMixin.mime_type builds a JSON schema per call"),
    "limit_connections": Patch(
        "uvicorn", ("0.54.0",), "Kludex/uvicorn#157 (no timeout for request headers; no per-address limit)"
    ),
    "close_url_fetch": Patch(
        "bentoml", ("1.4.39",), "none filed: _bentoml_impl.serde downloads a file field given as a URL (SSRF)"
    ),
    "quiet_client_errors": Patch(
        "bentoml", ("1.4.39",), "none filed: ServiceAppFactory logs every 4xx at ERROR with a traceback"
    ),
    "hashable_file_schema": Patch(
        "bentoml", ("1.4.39",), "none filed: _bentoml_sdk.validators.FileSchema is unhashable inside Optional[...]"
    ),
}


class UncheckedVersionError(RuntimeError):
    """A patch would be applied to a version of its package it was not checked against."""


def installed_version(package: str) -> str:
    if package == "python":
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    return importlib.metadata.version(package)


def check_version(name: str) -> bool:
    """Whether patch ``name`` may be applied: True on a checked version; on another, raise (or warn and return True
    with ``UKR_HW_UNCHECKED_PATCHES=warn``)."""
    patch = PATCHES[name]
    installed = installed_version(patch.package)
    if installed in patch.versions:
        return True
    message = (
        f"services/bento/bentoml_fixes.py: the patch `{name}` was checked against {patch.package} "
        f"{', '.join(patch.versions)}, but {patch.package} {installed} is installed. Re-read the patched code in "
        f"{installed} (upstream: {patch.upstream}), run tests/unit/test_bentoml_fixes.py and "
        "tests/integration/test_hostile.py, then "
        f"add {installed!r} to PATCHES[{name!r}] or delete the patch. UKR_HW_UNCHECKED_PATCHES=warn starts anyway."
    )
    if os.environ.get("UKR_HW_UNCHECKED_PATCHES") == "warn":
        log.warning(message)
        return True
    raise UncheckedVersionError(message)


#: seconds an old session stays open after a refresh: longer than the services' request timeout (60 s)
CLOSE_GRACE_S = 90.0
#: idle keep-alive of connections between services; below uvicorn's 5 s
KEEPALIVE_S = 4.0


def apply() -> None:
    check_version("apply")
    from _bentoml_impl.client import proxy2

    manager = proxy2.SessionManager
    if getattr(manager, "_ukr_hw_patched", False):
        return
    original_make_client = manager._make_client

    def _make_client(self: Any) -> aiohttp.ClientSession:
        if self._app is not None:  # in-process ASGI connector: no sockets, nothing to fix
            return original_make_client(self)
        if self._parsed_url.scheme == "file":
            from bentoml._internal.utils.uri import uri_to_path

            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(
                path=uri_to_path(self._parsed_url.geturl()), keepalive_timeout=KEEPALIVE_S
            )
            base_url = "http://127.0.0.1:3000"
        else:
            connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
            netloc = self._parsed_url.netloc
            base_url = f"http://{netloc}" if self._parsed_url.scheme == "tcp" else self._parsed_url.geturl()
        return aiohttp.ClientSession(
            base_url=base_url, headers=self._headers, timeout=self._timeout, connector=connector
        )

    async def get_session(self: Any) -> aiohttp.ClientSession:
        if self._session is None or self._should_refresh():
            old = self._session
            self._session = self._make_client()
            self._created_at = time.monotonic()
            self._request_count = 0
            if old is not None:  # requests may still use it: close it later, not now
                loop = asyncio.get_running_loop()
                loop.call_later(CLOSE_GRACE_S, lambda: loop.create_task(old.close()))
        self._request_count += 1
        return self._session

    manager._make_client = _make_client
    manager.get_session = get_session
    manager._ukr_hw_patched = True


#: pause of a worker's accepting after each new connection, so that the other workers get the next ones
ACCEPT_PAUSE_S = 0.0005


def balance_accepts() -> None:
    """Accept one connection per wake-up, then pause accepting briefly (see the module docstring)."""
    check_version("balance_accepts")
    from asyncio import selector_events

    loop_class = selector_events.BaseSelectorEventLoop
    if getattr(loop_class, "_ukr_hw_balanced", False):
        return
    original = loop_class._accept_connection

    def _accept_connection(
        self: Any,
        protocol_factory: Any,
        sock: Any,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *rest: Any,
    ) -> None:
        original(self, protocol_factory, sock, sslcontext, server, 1, *rest)
        if sock.fileno() < 0 or not self._remove_reader(sock.fileno()):
            return  # closed, or asyncio itself paused accepting (e.g. out of file descriptors)

        def resume() -> None:
            if sock.fileno() >= 0 and not self.is_closed():
                self._add_reader(
                    sock.fileno(), self._accept_connection, protocol_factory, sock, sslcontext, server, backlog, *rest
                )

        self.call_later(ACCEPT_PAUSE_S, resume)

    loop_class._accept_connection = _accept_connection
    loop_class._ukr_hw_balanced = True


def cache_mime_types() -> None:
    """Compute each IO model's media type once instead of once per response (see the module docstring)."""
    check_version("cache_mime_types")
    from _bentoml_sdk.io_models import IOMixin

    if getattr(IOMixin, "_ukr_hw_cached", False):
        return
    original = IOMixin.mime_type.__func__  # type: ignore[attr-defined]
    cache: dict[type, str] = {}

    def mime_type(cls: type) -> str:
        try:
            return cache[cls]
        except KeyError:
            cache[cls] = value = original(cls)
            return value

    IOMixin.mime_type = classmethod(mime_type)  # type: ignore[method-assign, assignment]
    IOMixin._ukr_hw_cached = True  # type: ignore[attr-defined]


# --- hostile traffic ------------------------------------------------------------------------------------------------

#: seconds a connection may take to send a request's headers (from connecting, or from the first byte of the next
#: request on a kept-alive connection); then 408 and closed. uvicorn has no such limit: a silent or slow-header
#: connection was held forever (slowloris)
HEADER_TIMEOUT_S = float(os.environ.get("UKR_HW_SERVE_HEADER_TIMEOUT_S", "10"))
#: idle seconds after a response before a kept-alive connection is closed (uvicorn's own timer, set explicitly)
KEEPALIVE_TIMEOUT_S = float(os.environ.get("UKR_HW_SERVE_KEEPALIVE_TIMEOUT_S", "5"))
#: open connections one source address may hold per API worker process; more are answered 429 and closed
MAX_CONNECTIONS_PER_ADDRESS = int(os.environ.get("UKR_HW_SERVE_MAX_CONNECTIONS_PER_ADDRESS", "64"))

_open_per_address: dict[str, int] = {}


def _raw_response(status: int, reason: str, error: str) -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _is_entry_service() -> bool:
    from bentoml._internal.context import server_context

    return server_context.service_type == "entry_service"


def limit_connections() -> None:
    """Header timeout, explicit keep-alive timeout and a per-address connection cap in uvicorn's HTTP protocol.

    Only the public (entry) service counts connections per address: the internal hop between services comes from
    the API workers themselves."""
    check_version("limit_connections")
    from uvicorn.protocols.http import h11_impl

    protocol = h11_impl.H11Protocol
    if getattr(protocol, "_ukr_hw_limited", False):
        return
    made, lost, received = protocol.connection_made, protocol.connection_lost, protocol.data_received

    def _arm(self: Any) -> None:
        self._ukr_header_timer = self.loop.call_later(HEADER_TIMEOUT_S, _header_timeout, self)

    def _disarm(self: Any) -> None:
        timer = getattr(self, "_ukr_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._ukr_header_timer = None

    def _header_timeout(self: Any) -> None:
        self._ukr_header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        log.info("408: request headers not received within %.0f s from %s", HEADER_TIMEOUT_S, self.client)
        self.transport.write(
            _raw_response(408, "Request Timeout", f"request headers not complete within {HEADER_TIMEOUT_S:.0f} s.")
        )
        self.transport.close()

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        self.timeout_keep_alive = KEEPALIVE_TIMEOUT_S
        self._ukr_cycle, self._ukr_address = None, None
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and _is_entry_service():
            address = str(peer[0])
            count = _open_per_address.get(address, 0) + 1
            _open_per_address[address] = count
            self._ukr_address = address
            if count > MAX_CONNECTIONS_PER_ADDRESS:
                log.info("429: %s holds over %d connections; refused one", address, MAX_CONNECTIONS_PER_ADDRESS)
                transport.write(
                    _raw_response(
                        429,
                        "Too Many Requests",
                        f"over {MAX_CONNECTIONS_PER_ADDRESS} open connections from {address}; reuse fewer.",
                    )
                )
                transport.close()
                self._ukr_header_timer = None
                return
        _arm(self)

    def data_received(self: Any, data: bytes) -> None:
        received(self, data)
        cycle = self.cycle
        if cycle is not None and cycle is not self._ukr_cycle:  # a new request's headers are complete
            self._ukr_cycle = cycle
            _disarm(self)
        elif (
            getattr(self, "_ukr_header_timer", None) is None
            and (cycle is None or cycle.response_complete)
            and not self.transport.is_closing()
        ):
            _arm(self)  # the next request on a kept-alive connection has started

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        address = getattr(self, "_ukr_address", None)
        if address is not None:
            self._ukr_address = None
            left = _open_per_address.get(address, 1) - 1
            if left > 0:
                _open_per_address[address] = left
            else:
                _open_per_address.pop(address, None)
        lost(self, exc)

    import uvicorn

    original_init = uvicorn.Config.__init__

    def config_init(self: Any, *args: Any, **kwargs: Any) -> None:
        # h11 (the protocol patched here) and plain asyncio (what balance_accepts patches), even where uvloop or
        # httptools are installed: uvicorn's "auto" would pick them and skip these limits
        kwargs.update(loop="asyncio", http="h11", timeout_keep_alive=KEEPALIVE_TIMEOUT_S)
        original_init(self, *args, **kwargs)

    uvicorn.Config.__init__ = config_init
    protocol.connection_made = connection_made
    protocol.connection_lost = connection_lost
    protocol.data_received = data_received
    protocol._ukr_hw_limited = True


def close_url_fetch() -> None:
    """BentoML downloads a file field given as a URL (a text form value, or a JSON body that is a URL): a server-side
    request forgery path. Here such a value is a client error and nothing is fetched."""
    check_version("close_url_fetch")
    from _bentoml_impl import serde
    from bentoml.exceptions import BadInput

    if getattr(serde, "_ukr_hw_no_fetch", False):
        return

    async def ensure_file(obj: Any) -> Any:
        from starlette.datastructures import UploadFile

        if isinstance(obj, UploadFile):
            return obj
        raise BadInput("a file field must be a file upload (multipart/form-data part with a filename), not text.")

    async def parse_request(self: Any, request: Any, cls: type) -> Any:
        body = await request.body()  # never treated as a URL to download
        return self.deserialize_model(serde.Payload((body,), metadata=request.headers), cls)

    serde.MultipartSerde.ensure_file = staticmethod(ensure_file)
    serde.JSONSerde.parse_request = parse_request
    serde._ukr_hw_no_fetch = True


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors(include_context=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def quiet_client_errors() -> None:
    """BentoML logs every client error (a validation error, a 4xx BentoMLException) at ERROR with a traceback, and
    answers a 4xx BentoMLException with a JSON *list*. Here: one INFO line with the reason, ``{"error": "..."}``."""
    check_version("quiet_client_errors")
    from _bentoml_impl.server import app as app_module
    from pydantic import ValidationError

    factory = app_module.ServiceAppFactory
    if getattr(factory, "_ukr_hw_quiet", False):
        return
    from bentoml.exceptions import BentoMLException
    from starlette.responses import JSONResponse

    async def api_endpoint_wrapper(self: Any, name: str, request: Any) -> Any:
        try:
            resp = await self.api_endpoint(name, request)
        except ValidationError as exc:
            message = _validation_message(exc)
            log.info("400 %s %s: %s", request.method, request.url.path, message)
            resp = JSONResponse({"error": message}, status_code=400)
        except BentoMLException as exc:
            status = exc.error_code.value
            if status >= 500:
                app_module.log_exception(request)
                message = "An unexpected error has occurred, please check the server log."
            else:
                message = str(exc)
                log.info("%d %s %s: %s", status, request.method, request.url.path, message)
            resp = JSONResponse({"error": message}, status_code=status)
        except Exception:
            app_module.log_exception(request)
            resp = JSONResponse(
                {"error": "An unexpected error has occurred, please check the server log."}, status_code=500
            )
        self._add_response_headers(resp)
        ctx = self.service.context
        if resp.background is not None:
            ctx.response.background.tasks.append(resp.background)
        ctx.response.background.add_task(request.close)
        resp.background = ctx.response.background
        del ctx.response.background
        return resp

    factory.api_endpoint_wrapper = api_endpoint_wrapper
    factory._ukr_hw_quiet = True


def hashable_file_schema() -> None:
    """BentoML turns a ``Path`` field into a file part by annotating it with its (unhashable) ``FileSchema``; inside
    ``Optional`` typing must hash it, so a service with an optional file field does not even import. Hashable by
    identity: a missing field then reaches the service's own clear message."""
    check_version("hashable_file_schema")
    from _bentoml_sdk.validators import FileSchema

    FileSchema.__hash__ = object.__hash__  # type: ignore[method-assign]
