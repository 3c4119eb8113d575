"""Inference speed: model load time from the registry and `predict_paths` throughput on image files.

    .venv/bin/python benchmarks/bench_inference.py [--n 2000] [--workers N] [--tracking-uri URI]

Uses the configured registry's champion when there is one; otherwise (or with ``--temp``) a temporary SQLite
registry holding an untrained network of the default size (speed does not depend on the weights). The files are
Rukopys-size scans (200×200 PNG) copied from the raw-data mirror.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: auto)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--mirror", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--temp", action="store_true", help="always use a temporary registry with an untrained net")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", "2")))
    from ukr_hw import registry
    from ukr_hw.inference import Predictor, predict_paths
    from ukr_hw.settings import get_settings

    with tempfile.TemporaryDirectory(prefix="ukr-hw-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.temp or registry.champion_version() is None:
            from ukr_hw.model.network import build_network

            os.environ["UKR_HW_MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
            os.environ["UKR_HW_MLFLOW_ARTIFACT_ROOT"] = str(tmp_path / "mlartifacts")

            class _Report:  # an honest placeholder: no evaluation happened, metrics are NaN
                def __init__(self) -> None:
                    self.metrics = {"symbol_accuracy": float("nan"), "case_accuracy": float("nan")}
                    self.per_class = None

                def figures(self) -> dict:
                    return {}

            with registry.start_run("bench"):
                registry.log_model_and_register(build_network().eval(), report=_Report(), data_version=None)
            registry.set_champion("1")
            print("registry: temporary, untrained default-size network")
        else:
            print(f"registry: {get_settings().resolved_tracking_uri()} champion v{registry.champion_version()}")

        loads = []
        for _ in range(3):
            t = time.perf_counter()
            pred = Predictor.from_uri()
            loads.append(time.perf_counter() - t)
        print(
            f"model load from registry (alias → version → state_dict): best {min(loads):.3f} s, first {loads[0]:.3f} s"
        )

        src = sorted((args.mirror / "rukopys" / "glyphs").glob("*.png"))
        files = []
        for i in range(args.n):
            dst = tmp_path / "imgs" / f"{i:05d}.png"
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile(src[i % len(src)], dst)
            files.append(dst)
        t = time.perf_counter()
        out = list(predict_paths(files, predictor=pred, batch_size=args.batch_size, workers=args.workers))
        dt = time.perf_counter() - t
        errors = sum("error" in r for r in out)
        print(f"predict_paths: {len(out)} files in {dt:.2f} s = {len(out) / dt:.0f} images/s ({errors} errors)")
        import numpy as np

        x = np.random.default_rng(0).random((2048, 28, 28), dtype=np.float32)
        ink = np.full((2048, 2), 0.5, np.float32)
        pred.predict_arrays(x[:256], ink[:256])
        t = time.perf_counter()
        pred.predict_arrays(x, ink)
        dt = time.perf_counter() - t
        print(f"predict_arrays (network only, batch {pred.batch_size}): {2048 / dt:.0f} images/s")


if __name__ == "__main__":
    main()
