"""Network speed on this CPU: a training step and inference, NHWC (``channels_last``, the default) against NCHW.

    .venv/bin/python benchmarks/network_speed.py [--rounds 5] [--threads 2]

Times one AdamW training step (forward, symbol + case loss, backward, update) at the fine-tune (64) and
pretrain (256) batch sizes, and inference at 1, 64 and 256 images, for the configured network
(``configs/train.yaml`` ``net``). The two layouts are measured in alternating rounds and each figure is the median
over rounds, so a noisy machine shifts both alike; compare the ratio column. It first checks that both layouts
give the same outputs (to 1e-4) and stops if they do not.

Then a training step in float32 against bfloat16 autocast (``trainer.precision``: ``bf16-mixed``), and inference
with and without the nearest-neighbour memory (``finetune.knn_weight`` and ``knn_case_weight``:
the symbol and the case vote; ``--memory`` glyphs, the size of one member's memory in the pipeline), in the same
alternating way.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ukr_hw.model.network import UkrHwNet, build_network
from ukr_hw.training import load_config

REPO = Path(__file__).resolve().parents[1]

LAYOUTS = {"NHWC": torch.channels_last, "NCHW": torch.contiguous_format}


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000.0


def train_step_ms(net: UkrHwNet, batch: int, repeats: int, bf16: bool = False) -> float:
    """One AdamW step; ``bf16``: the forward pass and loss under bfloat16 autocast, as ``bf16-mixed`` trains."""
    net.train()
    x, ink = torch.rand(batch, 1, 28, 28), torch.rand(batch, 2)
    y, case = torch.randint(0, 43, (batch,)), torch.randint(0, 2, (batch,)).float()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            sym, case_logit = net(x, ink)
            loss = F.cross_entropy(sym, y) + F.binary_cross_entropy_with_logits(case_logit, case)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _timed(step, repeats)


@torch.inference_mode()
def infer_ms(net: UkrHwNet, batch: int, repeats: int) -> float:
    net.eval()
    x, ink = torch.rand(batch, 1, 28, 28), torch.rand(batch, 2)
    return _timed(lambda: net(x, ink), repeats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per layout (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", type=int, default=2600, help="glyphs in the memory compared (0: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = build_network(load_config(REPO / "configs" / "train.yaml")["net"]).eval()
    nets = {name: copy.deepcopy(base).set_memory_format(fmt) for name, fmt in LAYOUTS.items()}
    x, ink = torch.rand(64, 1, 28, 28), torch.rand(64, 2)
    with torch.inference_mode():
        a, b = (nets[name](x, ink)[0] for name in LAYOUTS)
    diff = float((a - b).abs().max())
    if diff > 1e-4:
        raise SystemExit(f"the layouts disagree: max |diff| = {diff:.2e}; the timings would compare different nets")
    print(f"same outputs in both layouts: max |diff| = {diff:.2e}")

    cases = [
        ("train step", 64, 20),
        ("train step", 256, 8),
        ("inference", 1, 200),
        ("inference", 64, 50),
        ("inference", 256, 20),
    ]
    times: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(args.rounds):
        for what, batch, repeats in cases:
            fn = train_step_ms if what == "train step" else infer_ms
            for name in LAYOUTS:
                net = copy.deepcopy(nets[name])  # the same starting weights every round (training changes them)
                times.setdefault((what, batch, name), []).append(fn(net, batch, repeats))

    print(f"{'':12s} {'batch':>5s} {'NHWC ms':>9s} {'NCHW ms':>9s} {'NCHW/NHWC':>9s}  {'NHWC img/s':>10s}")
    for what, batch, _ in cases:
        nhwc = statistics.median(times[(what, batch, "NHWC")])
        nchw = statistics.median(times[(what, batch, "NCHW")])
        print(f"{what:12s} {batch:5d} {nhwc:9.2f} {nchw:9.2f} {nchw / nhwc:8.2f}x  {batch / nhwc * 1000:10.0f}")
    precision_speed(nets["NHWC"], args.rounds)
    if args.memory:
        memory_speed(nets["NHWC"], args.memory, args.rounds)
    return 0


def precision_speed(net: UkrHwNet, rounds: int) -> None:
    """A training step (NHWC) in float32 and under bfloat16 autocast (``trainer.precision``), alternating."""
    times: dict[tuple[int, bool], list[float]] = {}
    for _ in range(rounds):
        for batch, repeats in ((64, 20), (256, 8)):
            for bf16 in (False, True):
                times.setdefault((batch, bf16), []).append(train_step_ms(copy.deepcopy(net), batch, repeats, bf16))
    print(f"\ntrain step {'batch':>5s} {'fp32 ms':>9s} {'bf16 ms':>9s} {'fp32/bf16':>9s}")
    for batch in (64, 256):
        fp32, bf16 = (statistics.median(times[(batch, b)]) for b in (False, True))
        print(f"{'':10s} {batch:5d} {fp32:9.2f} {bf16:9.2f} {fp32 / bf16:8.2f}x")


def memory_speed(net: UkrHwNet, size: int, rounds: int) -> None:
    """Inference (NHWC) without and with a memory of ``size`` glyphs (random ones: only the cost is measured)."""
    with_memory = copy.deepcopy(net)
    with_memory.config = replace(with_memory.config, knn_weight=0.2, knn_case_weight=0.3)
    y = torch.randint(0, 43, (size,))
    with_memory.remember(torch.rand(size, 1, 28, 28), y, torch.where(y < 10, -1, y % 2), torch.rand(size, 2))
    nets = {"plain": net, "memory": with_memory}
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(rounds):
        for batch, repeats in ((1, 200), (64, 50), (256, 20)):
            for name, n in nets.items():
                times.setdefault((batch, name), []).append(infer_ms(n, batch, repeats))
    print(f"\ninference {'batch':>5s} {'plain ms':>9s} {f'memory {size}':>12s} {'memory/plain':>12s}")
    for batch in (1, 64, 256):
        plain, mem = (statistics.median(times[(batch, name)]) for name in nets)
        print(f"{'':9s} {batch:5d} {plain:9.2f} {mem:12.2f} {mem / plain:11.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
