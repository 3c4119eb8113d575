"""Abstention benchmark: how much that is not one symbol the model refuses, and how many real letters it refuses.

    UKR_HW_TORCH_THREADS=1 .venv/bin/python benchmarks/abstention.py [--model-uri URI | --model-dir DIR]
        [--mirror /work/shared/datasets] [--per-kind 120] [--seed 7] [--json out.json]

**Non-symbols** are generated (seeded; no training set holds any): uniform and Gaussian noise images of many sizes,
sparse specks on white, random-walk scribbles (on a transparent sketchpad layer and on white paper), two real
CoMNIST letters (of training sessions) or two Rukopys scans pasted side by side, two stroke-drawn letters on one
sketchpad canvas, blank-ish photos (a near-uniform grey with sensor noise, a light gradient, vignetting; JPEG) and
textured photos (smoothed multi-scale noise). **Real letters** are the frozen test split from the original image
files of the raw mirror (CoMNIST's held-out sessions, the Rukopys scans, the MNIST digits), each through the API's
path (:func:`ukr_hw.model.abstain.analyse`); a blank image (``EmptyImageError``) counts as refused on both sides.

Printed per kind and per real set: the share refused by the ink rule, by the model's energy at its stored
``abstain_energy`` (the shipped check, through ``Predictor.predict_outputs``), and by both; then the same with the
largest probability at ``abstain_threshold`` (the fallback for callers passing only probabilities). A model without
stored thresholds gets what a fine-tune would fit: each member's score on its own validation slice's real glyphs
(:func:`ukr_hw.model.abstain.fit_threshold`), never the reported sets. Each refused real letter is listed with why.
Then the comparison behind the choice of score: max probability, energy (−logsumexp of the members' symbol logits)
and the memory's nearest-neighbour similarity, each thresholded at the same out-of-fold refusal share.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from ukr_hw.model import abstain
from ukr_hw.preprocess import PreprocessError

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------------------
# Non-symbols


def _png(a: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    img = a if isinstance(a, Image.Image) else Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _side(rng: np.random.Generator) -> int:
    return int(rng.choice([28, 64, 128, 200, 300, 512, 800, 1024]))


def noise_uniform(rng: np.random.Generator) -> bytes:
    h, w = _side(rng), _side(rng)
    shape = (h, w, 3) if rng.random() < 0.5 else (h, w)
    return _png(rng.uniform(0, 256, shape), "JPEG" if rng.random() < 0.3 else "PNG")


def noise_gaussian(rng: np.random.Generator) -> bytes:
    h = w = _side(rng)
    a = rng.normal(rng.uniform(60, 200), rng.uniform(15, 80), (h, w))
    return _png(a, "JPEG" if rng.random() < 0.3 else "PNG")


def specks(rng: np.random.Generator) -> bytes:
    side = int(rng.choice([200, 400, 800]))
    a = np.full((side, side), 255.0)
    n = int(rng.integers(30, 400))
    r = int(rng.integers(1, 5))
    for y, x in rng.integers(0, side, (n, 2)):
        a[max(0, y - r) : y + r, max(0, x - r) : x + r] = 0
    return _png(a)


def _walk(rng: np.random.Generator, side: int) -> list[tuple[float, float]]:
    """A smooth random walk: a turning pen with a random speed, bouncing inside the canvas."""
    n = int(rng.integers(12, 60))
    angle, speed = rng.uniform(0, 2 * np.pi), side * rng.uniform(0.04, 0.12)
    x, y = rng.uniform(0.25, 0.75, 2) * side
    pts = []
    for _ in range(n):
        angle += rng.normal(0, 0.9)
        x, y = x + speed * np.cos(angle), y + speed * np.sin(angle)
        if not 0.05 * side < x < 0.95 * side:
            angle = np.pi - angle
            x = float(np.clip(x, 0.05 * side, 0.95 * side))
        if not 0.05 * side < y < 0.95 * side:
            angle = -angle
            y = float(np.clip(y, 0.05 * side, 0.95 * side))
        pts.append((x, y))
    return pts


def scribble(rng: np.random.Generator) -> bytes | dict[str, Any]:
    side = int(rng.choice([280, 400, 600]))
    width = max(2, round(rng.uniform(0.015, 0.06) * side))
    on_layer = rng.random() < 0.5
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0)) if on_layer else Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        draw.line(_walk(rng, side), fill=(0, 0, 0, 255) if on_layer else 0, width=width, joint="curve")
    if on_layer:  # the sketchpad's value: the strokes' layer over the theme's background
        layer = np.asarray(img).copy()
        bg = np.full_like(layer, 255)
        return {
            "background": bg,
            "layers": [layer],
            "composite": np.asarray(Image.alpha_composite(Image.fromarray(bg), img)),
        }
    return _png(img)


def _comnist_files(mirror: Path, exclude: set[str]) -> list[Path]:
    root = mirror / "comnist" / "Cyrillic"
    keep = [p for p in sorted(root.glob("*/*.png")) if p.parent.name not in {"Ё", "Ъ", "Ы", "Э"}]
    return [p for p in keep if f"{p.parent.name}/{p.name}" not in exclude]


def _paste_pair(a: Image.Image, b: Image.Image, rng: np.random.Generator) -> bytes:
    a, b = a.convert("L"), b.convert("L")
    h = max(a.height, b.height)
    gap = int(rng.uniform(0.0, 0.4) * h)
    canvas = Image.new("L", (a.width + gap + b.width, h), 255)
    canvas.paste(a, (0, (h - a.height) // 2))
    canvas.paste(b, (a.width + gap, (h - b.height) // 2))
    return _png(canvas)


def pair_maker(files: list[Path]) -> Callable[[np.random.Generator], bytes]:
    def make(rng: np.random.Generator) -> bytes:
        i, j = rng.integers(0, len(files), 2)
        return _paste_pair(Image.open(files[i]), Image.open(files[j]), rng)

    return make


def pair_drawn(rng: np.random.Generator) -> dict[str, Any]:
    from ukr_hw.data import strokes
    from ukr_hw.labels import SYMBOLS

    side = int(rng.choice([300, 400]))
    halves = []
    for _ in range(2):
        symbol = str(rng.choice(SYMBOLS))
        upper = bool(rng.random() < 0.5)
        halves.append(strokes.draw_canvas(symbol, upper, (side, side), seed=int(rng.integers(1 << 30)) + 10**6))
    gap = int(rng.uniform(-0.15, 0.1) * side)  # the halves' margins leave room, so some overlap still parts them
    layer = Image.new("RGBA", (2 * side + gap, side), (0, 0, 0, 0))
    layer.alpha_composite(halves[0], (0, 0))
    layer.alpha_composite(halves[1], (side + gap, 0))
    bg = Image.new("RGBA", layer.size, (255, 255, 255, 255))
    return {
        "background": np.asarray(bg),
        "layers": [np.asarray(layer)],
        "composite": np.asarray(Image.alpha_composite(bg, layer)),
    }


def photo_blank(rng: np.random.Generator) -> bytes:
    h, w = int(rng.choice([240, 480, 960])), int(rng.choice([320, 640, 1280]))
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    g = rng.uniform(-60, 60, 2)
    base = rng.uniform(60, 220) + g[0] * (xx - 0.5) + g[1] * (yy - 0.5)
    vignette = 1 - rng.uniform(0, 0.35) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2
    a = base * vignette + rng.normal(0, rng.uniform(2, 12), (h, w))
    rgb = a[..., None] * np.array(rng.uniform(0.85, 1.1, 3))
    return _png(rgb, "JPEG")


def photo_texture(rng: np.random.Generator) -> bytes:
    h = w = int(rng.choice([256, 512, 1024]))
    a = np.zeros((h, w))
    for scale in (2, 6, 16, 40):
        a += ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), scale) * scale
    a = (a - a.mean()) / (a.std() + 1e-9) * rng.uniform(25, 70) + rng.uniform(80, 180)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB").filter(ImageFilter.GaussianBlur(0.7))
    return _png(img, "JPEG")


def nonsymbol_kinds(mirror: Path, frozen: set[str]) -> dict[str, Callable[[np.random.Generator], Any]]:
    rukopys = sorted((mirror / "rukopys" / "glyphs").glob("*.png"))
    frozen_rukopys = {f.split("/", 1)[1] for f in frozen if f.startswith("rukopys/")}
    return {
        "noise-uniform": noise_uniform,
        "noise-gaussian": noise_gaussian,
        "specks": specks,
        "scribble": scribble,
        "pair-comnist": pair_maker(_comnist_files(mirror, {"/".join(f.split("/")[2:]) for f in frozen})),
        "pair-rukopys": pair_maker([p for p in rukopys if p.name not in frozen_rukopys]),
        "pair-drawn": pair_drawn,
        "photo-blank": photo_blank,
        "photo-texture": photo_texture,
    }


# --------------------------------------------------------------------------------------------------------------
# Real letters: the frozen split from the original files


def real_sources(mirror: Path) -> dict[str, list[Any]]:
    from ukr_hw.data.mnist import load_split

    ids = (REPO / "configs" / "frozen_test_ids.txt").read_text().split()
    comnist = (REPO / "configs" / "frozen_test_ids_comnist.txt").read_text().split()
    mnist_idx = [int(i.split("/")[1]) for i in ids if i.startswith("mnist-train/")]
    images = load_split(mirror / "mnist", "train").images if mnist_idx else np.zeros((0, 28, 28), np.uint8)
    return {
        "comnist-heldout": [mirror / "comnist" / "Cyrillic" / Path(*Path(i).parts[2:]) for i in comnist],
        "rukopys-frozen": [mirror / "rukopys" / "glyphs" / i.split("/", 1)[1] for i in ids if i.startswith("rukopys/")],
        "mnist-frozen": [images[k] for k in mnist_idx],
    }


# --------------------------------------------------------------------------------------------------------------
# Scoring


def analyse_all(sources: list[Any]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Glyph pixels (N,28,28), ink (N,2) and each image's ink-rule reason ('empty' for a blank one)."""
    xs, inks, reasons = [], [], []
    for src in sources:
        try:
            glyph, stats = abstain.analyse(src)
        except PreprocessError:
            xs.append(np.zeros((28, 28), np.float32))
            inks.append(np.zeros(2, np.float32))
            reasons.append("empty")
            continue
        xs.append(glyph.pixels)
        inks.append(glyph.features)
        reasons.append(abstain.ink_reason(stats))
    return np.stack(xs), np.stack(inks), reasons


def member_scores(net: Any, x: np.ndarray, ink: np.ndarray) -> dict[str, np.ndarray]:
    """Per member: max probability (its answer, memory vote included), −energy and the memory's nearest similarity."""
    import torch

    from ukr_hw.model.network import member_nets, predict_arrays

    out: dict[str, list[np.ndarray]] = {"maxprob": [], "neg_energy": [], "knn_sim": []}
    xt = torch.from_numpy(np.asarray(x, np.float32)).unsqueeze(1)
    it = torch.from_numpy(np.asarray(ink, np.float32))
    with torch.inference_mode():
        for m in member_nets(net):
            probs, _ = predict_arrays(m, x, ink)
            z = m.body(xt.contiguous(memory_format=m.memory_format))
            logits = m.symbol_head(torch.cat([z, it], 1) if m.config.ink_to_symbol else z)
            out["maxprob"].append(probs.max(1))
            out["neg_energy"].append(torch.logsumexp(logits, 1).numpy())
            sim = torch.nn.functional.normalize(z, dim=1) @ m.knn_keys.T if len(m.knn_keys) else torch.zeros(len(z), 1)
            out["knn_sim"].append(sim.max(1).values.numpy())
    return {k: np.stack(v) for k, v in out.items()}


def oof_scores(net: Any, settings: Any) -> dict[str, np.ndarray]:
    """Each member's scores on its own validation slice's real glyphs (what a fine-tune fits the threshold on)."""
    from ukr_hw.model.network import member_nets
    from ukr_hw.training import finetune_datamodule, load_config

    config = load_config()
    parts: dict[str, list[np.ndarray]] = {"maxprob": [], "neg_energy": [], "knn_sim": []}
    for k, member in enumerate(member_nets(net)):
        dm = finetune_datamodule({**config, "seed": int(config["seed"]) + k}, settings)
        val = dm.val_samples
        val = val.subset(np.flatnonzero(np.isin(val.source, abstain.DEFAULTS["sources"])))
        s = member_scores(member, val.x.astype(np.float32) / 255.0, val.ink)
        for name in parts:
            parts[name].append(s[name][0])
    return {k: np.concatenate(v) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-uri", default=None, help="MLflow model URI (default: the champion)")
    ap.add_argument("--model-dir", default=None, help="a local MLflow model folder instead of a URI")
    ap.add_argument("--mirror", default=None, help="raw data folder (default: UKR_HW_DATA_MIRROR or data/raw)")
    ap.add_argument("--per-kind", type=int, default=120, help="generated images of each non-symbol kind")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args(argv)

    from ukr_hw.inference import Predictor
    from ukr_hw.settings import get_settings
    from ukr_hw.training import setup_torch

    settings = get_settings()
    setup_torch(settings)
    mirror = Path(args.mirror or getattr(settings, "data_mirror", None) or settings.raw_dir)
    pred = Predictor.from_dir(args.model_dir) if args.model_dir else Predictor.from_uri(args.model_uri, settings)
    stored = float(getattr(pred.net.config, "abstain_threshold", 0.0))
    stored_energy = pred.abstain_energy

    frozen = set((REPO / "configs" / "frozen_test_ids.txt").read_text().split())
    frozen |= set((REPO / "configs" / "frozen_test_ids_comnist.txt").read_text().split())
    groups: dict[str, list[Any]] = {}
    for kind, make in nonsymbol_kinds(mirror, frozen).items():
        rng = np.random.default_rng([args.seed, sum(map(ord, kind))])
        groups[kind] = [make(rng) for _ in range(args.per_kind)]
    real = real_sources(mirror)
    kinds, reals = list(groups), list(real)
    groups |= real

    analysed = {name: analyse_all(srcs) for name, srcs in groups.items()}
    print("analysed", sum(len(v) for v in groups.values()), "images", file=sys.stderr)
    scores = {name: member_scores(pred.net, x, ink) for name, (x, ink, _) in analysed.items()}
    outputs = {name: pred.predict_outputs(x, ink) for name, (x, ink, _) in analysed.items()}  # the shipped path

    # the thresholds: the model's own, else what a fine-tune fits (each member on its own validation slice's real
    # glyphs, never on the sets reported below)
    oof = oof_scores(pred.net, settings)
    fitted = abstain.fit_threshold(oof["maxprob"], energies=-oof["neg_energy"])
    threshold = stored if stored > 0 else fitted.threshold
    energy_t = stored_energy if stored_energy is not None else fitted.energy
    origin = "stored with the model" if stored_energy is not None else "fitted out of fold, as a fine-tune stores it"
    print(
        f"\nmodel {pred.model_version}: abstain_energy {energy_t:.4f}, abstain_threshold {threshold:.4f} ({origin}); "
        f"out-of-fold real glyphs {fitted.glyphs}: energy fit {fitted.energy:.4f} refusing {fitted.energy_refused:.2%}"
        f", probability fit {fitted.threshold:.4f} refusing {fitted.refused:.2%}"
    )

    report: dict[str, Any] = {
        "threshold": threshold,
        "energy_threshold": energy_t,
        "origin": origin,
        "fit": fitted.metrics(),
        "sets": {},
    }
    print(
        "\nscore: the model's energy above abstain_energy (what format_result refuses given the energy); "
        "maxprob: its largest probability below abstain_threshold (a caller passing only probabilities)"
    )
    print(
        f"\n{'set':16} {'n':>5} {'empty':>7} {'ink rule':>9} {'score':>7} {'refused':>8} {'maxprob':>8} "
        f"{'refused':>8}   ink reasons"
    )
    for name in [*kinds, *reals]:
        _, _, reasons = analysed[name]
        n = len(reasons)
        empty = np.array([r == "empty" for r in reasons])
        rule = np.array([r is not None for r in reasons])
        probs, _, energy = outputs[name]
        low = abstain.energy_refuses(energy, energy_t) & ~empty
        refused = rule | low
        low_p = (probs.max(1) < threshold) & ~empty
        refused_p = rule | low_p
        why: dict[str, int] = {}
        for r in reasons:
            if r is not None and r != "empty":
                key = r.split(":")[0] if ":" in r else r
                key = " ".join("".join(c for c in key if not c.isdigit() and c not in "%.").split())
                why[key] = why.get(key, 0) + 1
        label = "real: " if name in reals else ""
        print(
            f"{label + name:16} {n:>5} {empty.mean():>7.1%} {(rule & ~empty).mean():>9.1%} {low.mean():>7.1%} "
            f"{refused.mean():>8.1%} {low_p.mean():>8.1%} {refused_p.mean():>8.1%}   {why}"
        )
        if name in reals:  # which real letters are refused, and why: each needs a look
            for i in np.flatnonzero(refused):
                src = groups[name][i]
                ident = src.name if isinstance(src, Path) else f"#{i}"
                why_i = reasons[i] or f"energy {energy[i]:.2f} above {energy_t:.2f}"
                print(f"{'':18}refused {ident}: {why_i} (best guess p={probs[i].max():.2f})")
        report["sets"][name] = {
            "n": n,
            "real": name in reals,
            "empty": float(empty.mean()),
            "ink_rule": float((rule & ~empty).mean()),
            "score": float(low.mean()),
            "refused": float(refused.mean()),
            "maxprob": float(low_p.mean()),
            "refused_maxprob": float(refused_p.mean()),
            "reasons": why,
        }
    real_n = sum(report["sets"][k]["n"] for k in reals)
    for col, what in (("refused_maxprob", "ink rule + max probability"), ("refused", "ink rule + energy (shipped)")):
        gen = float(np.mean([report["sets"][k][col] for k in kinds]))  # every kind the same count
        real_refused = sum(report["sets"][k][col] * report["sets"][k]["n"] for k in reals) / real_n
        print(
            f"\n{what}: non-symbols refused {gen:.2%} (target >= 95 %); real letters refused "
            f"{real_refused:.2%} of {real_n} (target <= 1 %)"
        )
        report["nonsymbols_" + col], report["real_" + col] = gen, real_refused

    # which score: each at the threshold that refuses the same share of out-of-fold real glyphs
    print(
        "\nscore comparison (each thresholded to refuse 1 % of the out-of-fold real glyphs; ensemble = members' mean;"
        " on the images the ink rule passes):"
    )
    print(f"{'score':12} " + " ".join(f"{k[:13]:>13}" for k in [*kinds, *reals]))
    report["comparison"] = {}
    for name in ("maxprob", "neg_energy", "knn_sim"):
        t = float(np.quantile(oof[name], 0.01))
        cells, shares = [], {}
        for k in [*kinds, *reals]:
            _, _, reasons = analysed[k]
            passed = np.array([r is None for r in reasons])
            s = scores[k][name].mean(0)
            share = float((s[passed] < t).mean()) if passed.any() else float("nan")
            shares[k] = share
            cells.append(f"{share:>13.1%}")
        print(f"{name:12} " + " ".join(cells))
        report["comparison"][name] = {"threshold": t, "refused_of_passed": shares}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
