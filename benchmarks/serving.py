"""Serving benchmark: latency and throughput of the BentoML API vs a naive server vs the in-process limit.

    .venv/bin/python benchmarks/serving.py [--url http://127.0.0.1:3000] [--requests 400] [--concurrency 1 8 32]

Starts ``ukr-hw serve`` (unless ``--url``) and the naive server (``benchmarks/naive_server.py``: FastAPI +
``mlflow.pyfunc.load_model``, one image per request) on free ports, against the registry in the settings
(``UKR_HW_MLFLOW_TRACKING_URI``; a champion must exist). Clients send real 200×200 Rukopys PNGs from the mirror
(``UKR_HW_DATA_MIRROR`` or ../shared/datasets) as multipart uploads. The in-process limit is the same model called
directly on full batches (preprocess + ``predict_arrays``, one process). Prints a table and the ratios; compare
ratios within one run (other processes share the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from ukr_hw.ops import StackError
from ukr_hw.ops.ports import free_port
from ukr_hw.ops.processes import ManagedProcess
from ukr_hw.ops.wait import http_ok

REPO = Path(__file__).resolve().parents[1]


def _images(n: int) -> list[bytes]:
    from ukr_hw.settings import get_settings

    mirror = get_settings().data_mirror or REPO.parent / "shared" / "datasets"
    files = sorted((Path(mirror) / "rukopys" / "glyphs").glob("*.png"))
    if not files:
        sys.exit(f"no Rukopys glyphs under {mirror}/rukopys/glyphs; set UKR_HW_DATA_MIRROR")
    return [f.read_bytes() for f in files[:: max(1, len(files) // n)][:n]]


def _start(name: str, cmd: list[str], url: str, log: Path, timeout: float = 300) -> ManagedProcess:
    """Start a server in its own process group, logging to ``log``; exit the benchmark if it is not ready in time."""
    proc = ManagedProcess(name, cmd, log, cwd=REPO)
    proc.start()
    try:
        proc.wait_ready(lambda: http_ok(f"{url}/readyz"), timeout=timeout, what=url)
    except StackError as exc:  # it exited, or was not ready in time (then it is stopped)
        proc.stop(timeout=20)
        sys.exit(str(exc))
    return proc


def _request(url: str, image: bytes) -> bytes:
    """One complete ``POST /classify`` as raw HTTP/1.1 bytes: a multipart upload in field ``image``."""
    host = url.split("://", 1)[1].rstrip("/")
    boundary = b"ukrhwbench7d1c0f"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="g.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--" + boundary + b"--\r\n"
    )
    head = (
        f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary="
        f"{boundary.decode()}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams, to keep the load generator's own CPU cost low.

    It shares the two cores with the servers under test: httpx spends ~1.5 ms of CPU per request, as much as the
    preprocessing, so with it the benchmark measured its own client as much as the servers. Requests are
    prebuilt bytes; the answer is read by Content-Length (or chunks) and only its status is kept."""

    def __init__(self, url: str) -> None:
        host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
        self.host, self.port = host, int(port or 80)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        status = int((await self.reader.readline()).split()[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size + 2))
            await self.reader.readline()
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _load(url: str, images: list[bytes], concurrency: int, total: int) -> dict[str, float]:
    """``concurrency`` clients, each on its own keep-alive connection, sending one image at a time until ``total``
    requests are done. Every answer must be a 200 with a label, or the API's 422 "not one symbol" (a real answer:
    a few scans the ink rule refuses, counted apart), or it counts as an error."""
    requests = [_request(url, data) for data in images]
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    connections = [Connection(url) for _ in range(concurrency)]

    async def send(conn: Connection, i: int) -> bool:
        status, body = await conn.post(requests[i % len(requests)])
        return (status == 200 and b'"label"' in body) or (status == 422 and b"one symbol" in body)

    async def one_client(conn: Connection) -> None:
        nonlocal errors
        for i in counter:
            t0 = time.perf_counter()
            ok = await send(conn, i)
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    try:
        # warm-up at this concurrency: connections, lazy imports, and BentoML's batching optimizer, which learns
        # its latency model from the first requests it sees (those first ~20 are slow by design)
        for start in range(0, 64, concurrency):
            await asyncio.gather(*(send(connections[i - start], i) for i in range(start, min(start + concurrency, 64))))
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(conn) for conn in connections))
        wall = time.perf_counter() - t0
    finally:
        for conn in connections:
            await conn.close()
    lat = np.array(latencies) * 1e3
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rps": len(lat) / wall,
        "errors": errors,
    }


def in_process_limit(images: list[bytes], batch: int = 64, repeats: int = 3) -> float:
    """Images/s for preprocess + predict_arrays on full batches in this process (the upper limit)."""
    import torch

    from ukr_hw.inference import Predictor
    from ukr_hw.preprocess import preprocess

    torch.set_num_threads(1)
    predictor = Predictor.from_uri()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(images), batch):
            glyphs = [preprocess(d) for d in images[start : start + batch]]
            predictor.predict_arrays(np.stack([g.pixels for g in glyphs]), np.stack([g.features for g in glyphs]))
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running `ukr-hw serve` (default: start one)")
    ap.add_argument("--naive-url", help="an already running naive server (default: start one)")
    ap.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    args = ap.parse_args()

    images = _images(args.images)
    print(f"{len(images)} Rukopys PNGs, {np.mean([len(d) for d in images]):.0f} bytes on average", flush=True)
    procs: list[ManagedProcess] = []
    try:
        url = args.url
        if not url:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            print(f"starting ukr-hw serve on {url} …", flush=True)
            cmd = [sys.executable, "-m", "ukr_hw.cli", "serve", "--port", str(port), "--host", "127.0.0.1"]
            procs.append(_start("ukr-hw serve", cmd, url, args.log_dir / "bench-bento.log"))
        naive = args.naive_url
        if not naive:
            port = free_port()
            naive = f"http://127.0.0.1:{port}"
            print(f"starting the naive server on {naive} …", flush=True)
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.naive_server:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            procs.append(_start("the naive server", cmd, naive, args.log_dir / "bench-naive.log"))

        rows: dict[tuple[str, int], dict[str, float]] = {}
        for c in args.concurrency:
            for name, target in (("bentoml", url), ("naive", naive)):
                rows[(name, c)] = asyncio.run(_load(target, images, c, args.requests))
                r = rows[(name, c)]
                print(
                    f"  {name:8s} c={c:<3d} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                    f"{r['rps']:7.1f} req/s  errors {r['errors']}",
                    flush=True,
                )
        for p in procs:  # free the CPU for the in-process measurement
            p.stop(timeout=20)
        limit = in_process_limit(images)
    finally:
        for p in procs:
            p.stop(timeout=20)

    print("\n| server | clients | p50 ms | p99 ms | req/s | errors |\n| --- | --- | --- | --- | --- | --- |")
    for (name, c), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {name} | {c} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {r['errors']:.0f} |")
    print(f"| in-process (preprocess + predict_arrays, batches of 64) | - | - | - | {limit:.1f} | 0 |")
    top = max(args.concurrency)
    b, n = rows[("bentoml", top)]["rps"], rows[("naive", top)]["rps"]
    print(
        f"\nthroughput at {top} clients: bentoml/naive = {b / n:.2f}× (target ≥ 3), "
        f"bentoml/in-process = {b / limit:.0%} (target ≥ 50%)"
    )
    if 1 in args.concurrency:
        print(f"p99 at 1 client: {rows[('bentoml', 1)]['p99_ms']:.1f} ms (target ≤ 20 ms)")


if __name__ == "__main__":
    main()
