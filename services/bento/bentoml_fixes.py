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

:func:`cache_mime_types` memoises the media type of each API's output model. BentoML recomputes it for every
response by generating the model's whole JSON schema (py-spy: a fifth of the model service's busy time at one
client); it is a constant of the class.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

#: seconds an old session stays open after a refresh: longer than the services' request timeout (60 s)
CLOSE_GRACE_S = 90.0
#: idle keep-alive of connections between services; below uvicorn's 5 s
KEEPALIVE_S = 4.0


def apply() -> None:
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
