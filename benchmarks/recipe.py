"""Compare fine-tune recipes on one pretrained body, over fine-tune seeds, on the frozen split and on other writers.

    nice .venv/bin/python benchmarks/recipe.py --tag baseline
    nice .venv/bin/python benchmarks/recipe.py --tag dropout03 --set finetune.dropout=0.3
    nice .venv/bin/python benchmarks/recipe.py --tag base --ensemble      # also the seeds' averaged probabilities

Holds the pretrained body fixed (``--body``, cached by ``ukr_hw.training.pretrain``) and fine-tunes once per
``--seeds`` value, so the spread printed is the fine-tune's alone. Each model is scored on the frozen test split
and on the held-out sets of ``benchmarks/generalization.py`` (fonts no training set has, sketchpad drawings and
paper photos by unseen writer seeds). Prints one row per set, mean over seeds: symbol / case accuracy and the
shares of letters read as digits and of digits read as letters. Each seed trains one network (``finetune.members=1``);
``--ensemble`` adds the row of the seeds' averaged probabilities, i.e. what ``finetune.members`` = number of seeds
serves. ``--members K`` adds the mean (and range) over every K-seed ensemble: with ``K`` = ``finetune.members`` that
is the served model's figure with its spread, which one ensemble of all seeds does not give. Results go to
``data/reports/recipes/<tag>.json`` too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from ukr_hw import training
from ukr_hw.labels import CASE_UPPER, SYMBOLS
from ukr_hw.model.evaluate import predict_samples
from ukr_hw.model.heldout import cached_sets, score
from ukr_hw.model.network import EnsembleNet
from ukr_hw.settings import get_settings

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True, help="name of this recipe in the output")
    ap.add_argument("--config", type=Path, default=REPO / "configs/train.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fine-tune config override")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 13], help="fine-tune seeds")
    ap.add_argument("--body", type=int, default=42, help="seed of the pretrained body (cached)")
    ap.add_argument("--ensemble", action="store_true", help="also score the seeds' averaged probabilities")
    ap.add_argument("--members", type=int, default=0, help="also score every ensemble of this many seeds")
    ap.add_argument("--sets-cache", type=Path, default=REPO / "data/cache/recipe-sets")
    args = ap.parse_args(argv)

    settings = get_settings()
    overrides = {"finetune.members": "1"} | dict(s.split("=", 1) for s in args.set)  # a seed is one network
    # the body is pretrained with the recipe's network and trainer (net.*, trainer.* overrides: width, precision),
    # cached per network and precision
    body_overrides = {k: v for k, v in overrides.items() if k.startswith(("net.", "trainer."))}
    body_config = training.load_config(args.config, body_overrides | {"seed": str(args.body)})
    body, pre = training.pretrain(body_config, settings)
    print(
        f"body seed {args.body}: MNIST test accuracy {pre['mnist_test_accuracy']:.4f} ({pre['seconds']:.0f} s)",
        flush=True,
    )

    sets = cached_sets(settings, args.sets_cache)
    names = list(sets)
    nets = []
    rows: dict[str, list[dict]] = {n: [] for n in names}
    for seed in args.seeds:
        config = training.load_config(args.config, overrides | {"seed": str(seed)})
        t = time.perf_counter()
        net, report = training.finetune(config, settings, init=body)
        nets.append(net)
        # the seed's own writer-disjoint validation slice (whole CoMNIST sessions): what recipe choices are made on
        val = training.finetune_datamodule(config, settings).val_samples
        for population in VALIDATION:
            part = val.subset(np.flatnonzero(val.source == population))
            if len(part):
                rows.setdefault(f"val-{population}", []).append(score(*predict_samples(net, part), part))
        for n in names:
            probs, case_prob = predict_samples(net, sets[n])
            rows[n].append(score(probs, case_prob, sets[n]))
            if n == "finetune-test":  # which glyphs each network misreads, to find those that every recipe misreads
                rows[n][-1]["misreads"] = _misreads(probs, case_prob, sets[n])
        line = "  ".join(f"{n} {rows[n][-1]['symbol_accuracy']:.3f}/{rows[n][-1]['case_accuracy']:.3f}" for n in rows)
        print(f"seed {seed} ({time.perf_counter() - t:.0f} s, best epoch {report.metrics['best_epoch']:.0f}): {line}")

    result: dict[str, dict] = {"tag": args.tag, "overrides": overrides, "body": args.body, "seeds": args.seeds}
    print(f"\n{args.tag}: mean over seeds {args.seeds} (symbol / case accuracy; letters-only symbol)")
    for n in [k for k in rows if k.startswith("val-")] + names:
        sym = np.array([r["symbol_accuracy"] for r in rows[n]])
        case = np.array([r["case_accuracy"] for r in rows[n]])
        l2d = np.array([r["letters_as_digits"] for r in rows[n]])
        d2l = np.array([r["digits_as_letters"] for r in rows[n]])
        letters = np.array([r["letters_only_accuracy"] for r in rows[n]])
        result[n] = {
            "letters_only": letters.tolist(),
            "symbol": sym.tolist(),
            "case": case.tolist(),
            "letters_as_digits": l2d.tolist(),
            "digits_as_letters": d2l.tolist(),
        }
        if n == "finetune-test":
            result[n]["misreads"] = [r["misreads"] for r in rows[n]]
        sd = sym.std(ddof=1) if len(sym) > 1 else 0.0
        print(
            f"  {n:16} {sym.mean():.3f} / {case.mean():.3f}  ({letters.mean():.3f})   letters→digits {l2d.mean():5.1%}"
            f"  digits→letters {d2l.mean():5.1%}   (symbol sd {sd:.3f})"
        )
    if args.ensemble and len(nets) > 1:
        ensemble = EnsembleNet(nets)  # the very network `finetune.members` serves
        print(f"{args.tag}: ensemble of {len(nets)} (averaged probabilities)")
        for n in names:
            probs, case_prob = predict_samples(ensemble, sets[n])
            r = score(probs, case_prob, sets[n])
            keys = ("symbol_accuracy", "case_accuracy", "letters_as_digits", "digits_as_letters")
            result[n]["ensemble"] = [r[k] for k in keys]
            print(
                f"  {n:16} {r['symbol_accuracy']:.3f} / {r['case_accuracy']:.3f}   letters→digits "
                f"{r['letters_as_digits']:5.1%}  digits→letters {r['digits_as_letters']:5.1%}"
            )
            if n == "finetune-test":
                result[n]["ensemble_errors"] = _misreads(probs, case_prob, sets[n])
        print("  frozen split, the ensemble's misreads:", ", ".join(result["finetune-test"]["ensemble_errors"]))
    if 1 < args.members < len(nets):
        _subsets(nets, args.members, sets, result)
    out = REPO / "data/reports/recipes" / f"{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


#: populations of each seed's validation slice scored on their own (Rukopys and CoMNIST: real writers)
VALIDATION = ("comnist", "rukopys", "mnist")


def _subsets(nets: list, k: int, sets: dict, result: dict) -> None:
    """Score every ``k``-network ensemble of ``nets``: mean symbol / case per set, and the symbol range."""
    groups = list(itertools.combinations(range(len(nets)), k))
    print(f"{result['tag']}: the {len(groups)} ensembles of {k} seeds, mean (symbol min–max)")
    for n, samples in sets.items():
        rs = [score(*predict_samples(EnsembleNet([nets[i] for i in g]), samples), samples) for g in groups]
        sym = np.array([r["symbol_accuracy"] for r in rs])
        case = np.array([r["case_accuracy"] for r in rs])
        result[n][f"ensembles_of_{k}"] = {"symbol": sym.tolist(), "case": case.tolist()}
        print(f"  {n:16} {sym.mean():.3f} / {case.mean():.3f}   (symbol {sym.min():.3f}–{sym.max():.3f})")


def _misreads(probs: np.ndarray, case_prob: np.ndarray, samples) -> list[str]:
    """``id true→read`` for each symbol or case error (capitals written upper-case), to diff recipes glyph by glyph."""

    def name(symbol: int, upper: bool) -> str:
        return SYMBOLS[symbol].upper() if upper else SYMBOLS[symbol]

    out = []
    for i, (p, c) in enumerate(zip(probs.argmax(1), case_prob, strict=True)):
        y, case = int(samples.y[i]), int(samples.case[i])
        upper_read = bool(c >= 0.5) and case >= 0
        if p != y or (case >= 0 and upper_read != (case == CASE_UPPER)):
            out.append(f"{samples.id[i]} {name(y, case == CASE_UPPER)}→{name(int(p), upper_read)}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
