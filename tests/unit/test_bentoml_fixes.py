"""The fixes in services/bento/bentoml_fixes.py that can be checked without a BentoML server.

Each test runs the patched code in a fresh process with and without the patch, so it shows the patch is what makes
the difference (a test that passes without its patch guards nothing). The hostile-traffic patches
(``limit_connections``, ``close_url_fetch``, ``quiet_client_errors``) are tested against the real server in
tests/integration/test_hostile.py.

``balance_accepts``: two real processes serve one shared listening socket, as BentoML's API workers do; a burst of
keep-alive connections must reach both. Without the fix asyncio's accept loop hands the whole burst to the process
that wakes first.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import asyncio, os, socket, sys
from services.bento import bentoml_fixes
if sys.argv[2] == "fixed":
    bentoml_fixes.balance_accepts()
sock = socket.socket(fileno=int(sys.argv[1]))

async def handle(reader, writer):
    await reader.readline()
    writer.write(f"{os.getpid()}\\n".encode())
    await writer.drain()
    await reader.read()  # keep the connection, as a keep-alive client does, until it closes
    writer.close()

async def main():
    server = await asyncio.start_server(handle, sock=sock)
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def _burst(port: int, n: int) -> list[int]:
    """Open ``n`` connections at once, then ask each which process accepted it."""

    async def run() -> list[int]:
        conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n)))
        pids = []
        for _reader, writer in conns:
            writer.write(b"who\n")
        for reader, _writer in conns:
            pids.append(int(await reader.readline()))
        for _reader, writer in conns:
            writer.close()
        return pids

    return asyncio.run(run())


def _workers_seen(mode: str, n: int = 16) -> set[int]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.set_inheritable(True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(listener.fileno()), mode],
            cwd=REPO,
            pass_fds=[listener.fileno()],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return set(_burst(listener.getsockname()[1], n))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        listener.close()


def test_balance_accepts_spreads_a_burst_of_connections_over_processes():
    assert len(_workers_seen("fixed")) == 2


def _run(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


MIME = """
import sys
from pydantic import BaseModel
from _bentoml_sdk.io_models import IORootModel
from services.bento import bentoml_fixes
if sys.argv[1] == "fixed":
    bentoml_fixes.cache_mime_types()

class Out(IORootModel):
    root: str

calls = 0
original = Out.model_json_schema.__func__

def counting(cls, *a, **k):
    global calls
    calls += 1
    return original(cls, *a, **k)

Out.model_json_schema = classmethod(counting)
for _ in range(5):
    assert Out.mime_type() == "text/plain"
print(calls)
"""


def test_cache_mime_types_builds_the_schema_once_not_per_response():
    assert _run(MIME, "plain") == "5"  # BentoML: one JSON schema per response
    assert _run(MIME, "fixed") == "1"


FILE_SCHEMA = """
import sys
from pathlib import Path
from typing import Annotated, Optional
from _bentoml_sdk.validators import FileSchema
from services.bento import bentoml_fixes
if sys.argv[1] == "fixed":
    bentoml_fixes.hashable_file_schema()
try:
    Optional[Annotated[Path, FileSchema()]]
    print("ok")
except TypeError as exc:
    print(f"TypeError: {exc}")
"""


def test_hashable_file_schema_lets_a_file_field_be_optional():
    assert "unhashable" in _run(FILE_SCHEMA, "plain")
    assert _run(FILE_SCHEMA, "fixed") == "ok"


SESSION = """
import asyncio, sys
from _bentoml_impl.client import proxy2
from services.bento import bentoml_fixes
if sys.argv[1] == "fixed":
    bentoml_fixes.apply()

async def main():
    manager = proxy2.SessionManager("http://127.0.0.1:9", timeout=5, headers={}, max_requests=1)
    first = await manager.get_session()
    await manager.get_session()
    await manager.get_session()  # over max_requests: a refresh, while a request may still use `first`
    second = await manager.get_session()
    assert second is not first
    print(f"{first.closed} {first.connector._keepalive_timeout if first.connector else None}")
    await second.close()
    if not first.closed:
        await first.close()

asyncio.run(main())
"""


def test_session_refresh_keeps_the_old_session_open_and_idle_connections_short():
    closed, keepalive = _run(SESSION, "plain").split()
    assert closed == "True"  # BentoML closes the old session at once, under requests in flight
    closed, keepalive = _run(SESSION, "fixed").split()
    assert closed == "False"
    assert float(keepalive) < 5.0  # below uvicorn's own 5 s keep-alive


def test_every_patch_is_pinned_to_the_versions_it_was_checked_against(monkeypatch):
    from services.bento import bentoml_fixes

    for name in bentoml_fixes.PATCHES:
        assert bentoml_fixes.check_version(name)  # today's environment is what the patches were checked against
        assert hasattr(bentoml_fixes, name), name
    monkeypatch.setitem(
        bentoml_fixes.PATCHES, "apply", bentoml_fixes.Patch("bentoml", ("0.0.1",), "bentoml/BentoML#5540")
    )
    monkeypatch.delenv("UKR_HW_UNCHECKED_PATCHES", raising=False)
    try:
        bentoml_fixes.check_version("apply")
    except bentoml_fixes.UncheckedVersionError as exc:
        assert "0.0.1" in str(exc) and "#5540" in str(exc) and "PATCHES['apply']" in str(exc)
    else:
        raise AssertionError("an unchecked version must stop the patch")
    monkeypatch.setenv("UKR_HW_UNCHECKED_PATCHES", "warn")
    assert bentoml_fixes.check_version("apply")
