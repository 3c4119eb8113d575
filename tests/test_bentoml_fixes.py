"""The fixes in services/bento/bentoml_fixes.py that can be checked without a BentoML server.

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

REPO = Path(__file__).resolve().parents[1]

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
