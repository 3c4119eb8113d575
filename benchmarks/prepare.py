"""Data prep speed: cold vs warm `ukr-hw prepare` on the raw-data mirror, in a fresh temporary project root.

    .venv/bin/python benchmarks/prepare.py [--mirror ../shared/datasets] [--mnist-limit N] [--no-push]

Cold = empty root (ingest, Rukopys glyph prep, full MNIST through preprocess, fonts, split, DVC add + push).
Warm = the same command again with unchanged inputs (every step finds its stamp and skips its work).
Prints both wall times, their ratio and the summary line of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(env: dict[str, str], root: Path, no_push: bool) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "ukr_hw.cli", "prepare", *(["--no-push"] if no_push else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"prepare failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--mnist-limit", type=int, default=None, help="cap the full MNIST arrays (default: all 70k)")
    ap.add_argument("--no-push", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ukr-hw-bench-") as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        env = {
            **os.environ,
            "UKR_HW_ROOT": str(root),
            "UKR_HW_DATA_MIRROR": str(args.mirror.resolve()),
            "UKR_HW_DVC_REMOTE_URL": str(Path(tmp) / "remote"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        }
        if args.mnist_limit:
            env["UKR_HW_MNIST_LIMIT"] = str(args.mnist_limit)
        cold, summary = run(env, root, args.no_push)
        print(f"cold: {cold:7.1f} s  {json.dumps(summary, ensure_ascii=False)}", flush=True)
        warm, summary2 = run(env, root, args.no_push)
        print(f"warm: {warm:7.1f} s  {json.dumps(summary2, ensure_ascii=False)}", flush=True)
        print(f"speed-up: {cold / warm:.1f}x; same data version: {summary == summary2}")


if __name__ == "__main__":
    main()
