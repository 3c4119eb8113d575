"""Evaluate a network on prepared samples: metrics, per-class table, confusion matrices, misclassified grid.

``evaluate(net, samples)`` returns an :class:`EvalReport`:

* ``metrics`` — ``symbol_accuracy``; ``case_accuracy`` over letters with a case label; ``digit_accuracy``/
  ``letter_accuracy``; ``letters_only_accuracy`` / ``digits_only_accuracy`` (letters read with the digits excluded,
  digits with the letters excluded: the ``letters`` and ``digits`` modes);
  ``letters_as_digits`` (share of letters predicted as a digit: the classic failure when digits dominate); the same
  per population of writers, keyed by sample source (``rukopys_symbol_accuracy``, ``comnist_letters_only_accuracy``,
  ``feedback_case_accuracy``, ``<source>_n`` …);
  ``pair_<a>_<b>_accuracy`` for each look-alike pair of ``ukr_hw.labels.LOOKALIKE_PAIRS`` (accuracy over samples
  of either symbol) and ``pair_<a>_<b>_confusions`` (how many were taken for the other one); ``n``/``n_letters``.
* ``per_class`` — a DataFrame: symbol, n, correct, accuracy, case_n, case_accuracy, top confusion.
* ``figures()`` — symbol confusion matrix (43×43), case confusion (2×2), a grid of misclassified samples.
* ``outcomes()`` — per sample: its id and population, symbol right or wrong, case right, wrong or unlabelled
  (:class:`Outcomes`): what a paired test of two models on the same glyphs needs (the promotion gate).

:func:`write_reports` writes ``metrics.json`` and ``per_class.csv`` (and ``confusion.csv``) for ``dvc.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ukr_hw.data.arrays import Samples
from ukr_hw.labels import DIGITS, LOOKALIKE_PAIRS, NUM_CLASSES, SYMBOLS, display, index_of
from ukr_hw.model.network import Network


@torch.inference_mode()
def predict_samples(net: Network, samples: Samples, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, 43)`` and uppercase probabilities ``(N,)`` for every sample."""
    was_training = net.training
    net.eval()
    probs, case_probs = [], []
    try:
        for start in range(0, len(samples), batch_size):
            x = torch.from_numpy(samples.x[start : start + batch_size]).float().div_(255.0).unsqueeze(1)
            ink = torch.from_numpy(samples.ink[start : start + batch_size])
            sym_logits, case_logit = net(x, ink)
            probs.append(torch.softmax(sym_logits, dim=1).numpy())
            case_probs.append(torch.sigmoid(case_logit).numpy())
    finally:
        net.train(was_training)
    if not probs:
        return np.zeros((0, NUM_CLASSES), np.float32), np.zeros(0, np.float32)
    return np.concatenate(probs), np.concatenate(case_probs)


def _pair_key(a: str, b: str) -> str:
    return f"pair_{a}_{b}"


@dataclass(frozen=True)
class Outcomes:
    """Which samples one model reads right: the per-sample evidence a paired comparison of two models scored on the
    very same glyphs needs (``ukr_hw.registry.decide_promotion``); accuracies alone cannot tell three glyphs of noise
    from a regression."""

    id: np.ndarray  #: (N,) sample ids: the key that pairs two models' outcomes
    source: np.ndarray  #: (N,) population of each sample (its source: ``rukopys``, ``mnist``, ``comnist``, …)
    symbol: np.ndarray  #: (N,) bool: the symbol was read right
    case: np.ndarray  #: (N,) int8: 1 case read right, 0 wrong, -1 no case label (digits, CoMNIST), not counted

    def __post_init__(self) -> None:
        n = len(self.id)
        if not (len(self.source) == len(self.symbol) == len(self.case) == n):
            raise ValueError(
                f"outcome columns differ in length: id {n}, source {len(self.source)}, symbol {len(self.symbol)}, "
                f"case {len(self.case)}; build them with Outcomes.of(samples, pred, case_pred)"
            )

    @classmethod
    def of(cls, samples: Samples, pred: np.ndarray, case_pred: np.ndarray) -> Outcomes:
        """Outcomes of the predictions ``pred`` (symbol indices) and ``case_pred`` (1 = upper) on ``samples``."""
        pred, case_pred = np.asarray(pred).reshape(-1), np.asarray(case_pred).reshape(-1)
        if len(pred) != len(samples) or len(case_pred) != len(samples):
            raise ValueError(f"{len(pred)} symbol and {len(case_pred)} case predictions for {len(samples)} samples")
        cased = samples.case >= 0
        case = np.where(cased, (case_pred == samples.case).astype(np.int8), np.int8(-1)).astype(np.int8)
        return cls(samples.id.copy(), samples.source.copy(), pred == samples.y, case)

    def __len__(self) -> int:
        return len(self.id)

    def subset(self, index: np.ndarray | slice) -> Outcomes:
        return Outcomes(self.id[index], self.source[index], self.symbol[index], self.case[index])

    def populations(self) -> list[str]:
        return sorted(set(self.source.tolist()))

    def as_population(self, name: str) -> Outcomes:
        """The same outcomes, every sample counted in the population ``name`` (users' held-out drawings are one
        population, whatever their sources)."""
        return Outcomes(self.id, np.full(len(self), name), self.symbol, self.case)


@dataclass
class EvalReport:
    metrics: dict[str, float]
    per_class: pd.DataFrame
    confusion: np.ndarray  #: (43, 43) counts, rows = true, columns = predicted
    case_confusion: np.ndarray  #: (2, 2) counts over letters, rows = true (lower, upper)
    samples: Samples = field(repr=False)
    pred: np.ndarray = field(repr=False)
    case_pred: np.ndarray = field(repr=False)
    probs: np.ndarray = field(repr=False)

    def figures(self, max_errors: int = 64) -> dict[str, object]:
        """Matplotlib figures (Agg): ``confusion_symbol``, ``confusion_case``, ``misclassified``."""
        return {
            "confusion_symbol": _confusion_figure(self.confusion, [*SYMBOLS], "symbol confusion (true × predicted)"),
            "confusion_case": _confusion_figure(self.case_confusion, ["lower", "upper"], "case confusion (letters)"),
            "misclassified": _error_grid(self, max_errors),
        }

    def outcomes(self) -> Outcomes:
        """Per-sample right/wrong of this evaluation (the paired promotion gate's evidence)."""
        return Outcomes.of(self.samples, self.pred, self.case_pred)

    def summary(self) -> str:
        m = self.metrics
        pairs = ", ".join(f"{a}/{b} {m[_pair_key(a, b) + '_accuracy']:.3f}" for a, b in LOOKALIKE_PAIRS)
        names = sorted(k[: -len("_n")] for k in m if k.endswith("_n") and f"{k[:-2]}_symbol_accuracy" in m)
        populations = "  ".join(
            f"{p} {m[p + '_symbol_accuracy']:.3f}" + (f"/{m[c]:.3f}" if (c := p + "_case_accuracy") in m else "")
            for p in names
        )
        return (
            f"symbol {m['symbol_accuracy']:.4f}  case {m['case_accuracy']:.4f}  letters→digits "
            f"{m['letters_as_digits']:.4f}  (n={int(m['n'])})  by population (symbol/case): {populations}  "
            f"pairs: {pairs}"
        )


def evaluate(net: Network, samples: Samples, batch_size: int = 1024) -> EvalReport:
    """Score ``net`` on ``samples`` (raises ``ValueError`` on an empty set)."""
    if len(samples) == 0:
        raise ValueError("cannot evaluate on an empty sample set; check that the prepared split exists and has rows")
    probs, case_prob = predict_samples(net, samples, batch_size)
    pred = probs.argmax(1)
    case_pred = (case_prob >= 0.5).astype(np.int8)
    y, case = samples.y, samples.case
    correct = pred == y
    letters = y >= len(DIGITS)  # by the symbol: a CoMNIST letter has no case label but is a letter
    cased = case >= 0  # letters whose case is labelled: the only ones case metrics count
    case_ok = case_pred == case
    letters_only = probs[:, len(DIGITS) :].argmax(1) + len(DIGITS) == y  # the reading restricted to letters
    digits_only = probs[:, : len(DIGITS)].argmax(1) == y  # … and to digits

    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(conf, (y, pred), 1)
    case_conf = np.zeros((2, 2), np.int64)
    np.add.at(case_conf, (case[cased].astype(np.int64), case_pred[cased].astype(np.int64)), 1)

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if a.size else float("nan")

    metrics: dict[str, float] = {
        "n": float(len(y)),
        "n_letters": float(letters.sum()),
        "n_cased": float(cased.sum()),
        "symbol_accuracy": mean(correct),
        "case_accuracy": mean(case_ok[cased]),
        "digit_accuracy": mean(correct[~letters]),
        "letter_accuracy": mean(correct[letters]),
        "letters_only_accuracy": mean(letters_only[letters]),
        "digits_only_accuracy": mean(digits_only[~letters]),
        "letters_as_digits": mean(pred[letters] < len(DIGITS)),
        "symbol_and_case_accuracy": mean(np.where(cased, correct & case_ok, correct)),
    }
    for population in sorted(set(samples.source.tolist())):  # each population of writers on its own
        sel = samples.source == population
        metrics[f"{population}_n"] = float(sel.sum())
        metrics[f"{population}_symbol_accuracy"] = mean(correct[sel])
        if (sel & cased).any():
            metrics[f"{population}_case_accuracy"] = mean(case_ok[sel & cased])
        if (sel & letters).any():
            metrics[f"{population}_letters_only_accuracy"] = mean(letters_only[sel & letters])
            metrics[f"{population}_letters_as_digits"] = mean(pred[sel & letters] < len(DIGITS))
        if (sel & ~letters).any():
            metrics[f"{population}_digits_only_accuracy"] = mean(digits_only[sel & ~letters])
    for a, b in LOOKALIKE_PAIRS:
        ia, ib = index_of(a), index_of(b)
        sel = (y == ia) | (y == ib)
        metrics[_pair_key(a, b) + "_accuracy"] = mean(correct[sel])
        metrics[_pair_key(a, b) + "_confusions"] = float(conf[ia, ib] + conf[ib, ia])

    rows = []
    for i, s in enumerate(SYMBOLS):
        sel = y == i
        n = int(sel.sum())
        off = conf[i].copy()
        off[i] = 0
        top = int(off.argmax())
        rows.append(
            {
                "symbol": s,
                "n": n,
                "correct": int(correct[sel].sum()),
                "accuracy": mean(correct[sel]),
                "case_n": int((sel & cased).sum()),
                "case_accuracy": mean(case_ok[sel & cased]),
                "top_confusion": SYMBOLS[top] if off[top] > 0 else "",
                "top_confusion_n": int(off[top]),
            }
        )
    per_class = pd.DataFrame(rows)
    return EvalReport(metrics, per_class, conf, case_conf, samples, pred, case_pred, probs)


def write_reports(report: EvalReport, out_dir: Path, prefix: str = "") -> dict[str, Path]:
    """Write ``<prefix>metrics.json``, ``<prefix>per_class.csv`` and ``<prefix>confusion.csv`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out_dir / f"{prefix}metrics.json",
        "per_class": out_dir / f"{prefix}per_class.csv",
        "confusion": out_dir / f"{prefix}confusion.csv",
    }
    clean = {k: (None if v != v else round(v, 6)) for k, v in report.metrics.items()}  # NaN → null
    paths["metrics"].write_text(json.dumps(clean, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report.per_class.to_csv(paths["per_class"], index=False)
    # long format (actual, predicted) per sample, the shape `dvc plots` expects for a confusion template
    pd.DataFrame(
        {"actual": [SYMBOLS[i] for i in report.samples.y], "predicted": [SYMBOLS[i] for i in report.pred]}
    ).to_csv(paths["confusion"], index=False)
    return paths


# --- figures ---------------------------------------------------------------------------------------------------


def _confusion_figure(conf: np.ndarray, labels: list[str], title: str):
    from matplotlib.figure import Figure

    k = len(labels)
    size = 3.2 if k <= 4 else 11
    fig = Figure(figsize=(size + 0.8, size))
    ax = fig.add_subplot(111)
    rows = conf.sum(1, keepdims=True).clip(min=1)
    im = ax.imshow(conf / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, fontsize=7 if k > 4 else 9)
    ax.set_yticks(range(k), labels, fontsize=7 if k > 4 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            if conf[i, j] and (k <= 4 or i != j):
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=6 if k > 4 else 10, color="crimson")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def _error_grid(report: EvalReport, max_errors: int):
    from matplotlib.figure import Figure

    s = report.samples
    cased = s.case >= 0
    wrong = (report.pred != s.y) | (cased & (report.case_pred != s.case))
    idx = np.flatnonzero(wrong)[:max_errors]
    cols = 8
    rows = max(1, int(np.ceil(len(idx) / cols)))
    fig = Figure(figsize=(cols * 1.3, rows * 1.5 + 0.4))
    fig.suptitle(f"misclassified: {int(wrong.sum())} of {len(s)} (true → predicted)", fontsize=10)
    if not len(idx):
        ax = fig.add_subplot(111)
        ax.axis("off")
        ax.text(0.5, 0.5, "no errors", ha="center", va="center")
        return fig
    for k, i in enumerate(idx):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(s.x[i], cmap="gray_r", vmin=0, vmax=255)
        true = display(SYMBOLS[s.y[i]], bool(s.case[i] == 1) if s.case[i] >= 0 else None)
        p = int(report.pred[i])
        pred = display(SYMBOLS[p], bool(report.case_pred[i]) if p >= 10 else None)
        ax.set_title(f"{true} → {pred} {report.probs[i, p]:.2f}", fontsize=8, color="crimson")
        ax.axis("off")
    fig.tight_layout()
    return fig
