"""Abstention: refusing what is not one symbol (noise, a photo, a scribble, two letters side by side).

Two checks, both cheap, both made wherever a result is made (the API, ``ukr-hw predict``, the sketchpad):

* **ink statistics** of the cleaned ink map, before the network (:func:`ink_stats`, :func:`ink_reason`): noise and
  textured photos cover much of the canvas and much of their own ink box; two letters side by side are a wide box
  cut by an empty column into two parts that are each as wide as a letter; specks are many separate marks; a
  scribble crosses itself into many enclosed holes, or its strokes run far longer than a letter's within its
  box. The limits (:data:`LIMITS`) are properties of the preprocessing, not of a model, and were set on real
  drawings (``benchmarks/abstention.py`` prints how many of each real set they refuse).
* **the model's energy** (``ukr_hw.model.network.UkrHwNet.forward_scored``: −logsumexp of the symbol head's raw
  logits, the members' mean, from the same forward pass): above the model's own ``abstain_energy`` (fitted after
  fine-tuning on the members' held-out real glyphs, stored in ``config.json`` with the weights, see
  :func:`fit_threshold`) the model does not know what it sees. It refuses more non-symbols than the largest
  probability at the same share of real glyphs refused (the softmax hides that every logit is small).
* **the model's confidence** (:func:`score`), the fallback where only probabilities are at hand: the largest of the
  43 symbol probabilities, read before any letters/digits restriction, below ``abstain_threshold``. A model without
  the fits (older models) has neither: only the ink rule refuses.

Which score, and where its threshold sits, was decided by ``benchmarks/abstention.py`` (README, Measured).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: What a user is told when the model abstains (the API's 422, ``ukr-hw predict``, the sketchpad).
MESSAGE = "I can't read one symbol there — draw one letter or digit"

INK = 0.2  #: an ink pixel of the cleaned map (as ``ukr_hw.preprocess`` counts ink)

#: The ink rule's limits; see :func:`ink_reason`.
LIMITS: dict[str, float] = {
    "max_fill": 0.35,  #: ink share of the whole canvas above which it is noise or a photo
    "max_box_fill": 0.6,  #: ink share of the ink box above which (with ``box_fill_canvas``) it is noise
    "box_fill_canvas": 0.12,  #: ...when the ink also covers at least this share of the canvas
    "pair_aspect": 1.2,  #: ink box width / height above which an empty column may split it into two symbols
    "pair_part": 0.25,  #: ...each part at least this wide (× the box height): two letters, not «ю»'s bar and «о»
    "max_components": 10,  #: separate ink parts above which it is specks or scattered marks, not one symbol
    "max_holes": 3,  #: enclosed holes (each ≥ ``hole_area`` of the box) above which it is a scribble («в», «ф»,
    #: «8» have 2)
    "hole_area": 0.005,
    #: ink length (ink area / mean stroke width) × (box height + width) above which it is a scribble: a pen that
    #: wandered on. Real letters reach 1.95 (Rukopys scans and CoMNIST drawings of the training sessions, the
    #: stroke-drawn «ш»: 1.89); half the generated scribbles exceed 2.2 (benchmarks/abstention.py)
    "max_length": 2.2,
}


@dataclass(frozen=True)
class InkStats:
    """The shape of the ink of one image, from its cleaned ink map (see :func:`ink_stats`)."""

    fill: float  #: ink pixels / canvas pixels
    box_fill: float  #: ink pixels / ink-box pixels
    aspect: float  #: ink box width / height
    components: int  #: 8-connected ink components
    holes: int  #: enclosed background regions of at least ``hole_area`` of the ink box
    split: float  #: the narrower side's width / box height when an empty column splits the box in two (0: none)
    length: float = 0.0  #: the strokes' length (ink pixels / mean stroke width) / (box height + width)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ink_stats(ink: np.ndarray) -> InkStats:
    """:class:`InkStats` of a cleaned ink map (float in [0, 1], ink = 1; ``ukr_hw.preprocess``'s ``_clean``)."""
    mask = np.asarray(ink) > INK
    total = int(mask.sum())
    if total == 0:
        return InkStats(0.0, 0.0, 1.0, 0, 0, 0.0, 0.0)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = box.shape
    _, components = ndimage.label(box, structure=np.ones((3, 3)))
    # holes: background regions (4-connected, as the 8-connected ink encloses them) not touching the box's edge
    background, n_bg = ndimage.label(np.pad(~box, 1, constant_values=True))
    holes = 0
    if n_bg > 1:
        sizes = np.bincount(background.ravel(), minlength=n_bg + 1)
        outside = background[0, 0]
        big = sizes >= max(2.0, LIMITS["hole_area"] * h * w)
        big[0] = big[outside] = False
        holes = int(big.sum())
    return InkStats(
        fill=total / mask.size,
        box_fill=total / box.size,
        aspect=w / h,
        components=int(components),
        holes=holes,
        split=_split(box.any(axis=0)) / h,
        length=total / max(_stroke_width(box), 1.0) / (h + w),
    )


def _stroke_width(mask: np.ndarray) -> float:
    from ukr_hw.preprocess import stroke_width

    return stroke_width(mask)


def _split(occupied: np.ndarray) -> float:
    """Width of the narrower of the two sides of the most even cut at an empty column (0 when none is empty)."""
    empty = np.flatnonzero(~occupied)
    if not len(empty):
        return 0.0
    # for each run of empty columns, the ink box's width left of it and right of it
    starts = empty[np.r_[True, np.diff(empty) > 1]]
    ends = empty[np.r_[np.diff(empty) > 1, True]] + 1
    return float(max(min(s, len(occupied) - e) for s, e in zip(starts, ends, strict=True)))


def ink_reason(stats: InkStats, limits: dict[str, float] | None = None) -> str | None:
    """Why the ink is not one symbol (a short reason), or None when it may be one."""
    lim = LIMITS if limits is None else {**LIMITS, **limits}
    if stats.fill > lim["max_fill"]:
        return f"ink covers {stats.fill:.0%} of the image: noise or a photo, not a drawn symbol"
    if stats.box_fill > lim["max_box_fill"] and stats.fill > lim["box_fill_canvas"]:
        return f"ink fills {stats.box_fill:.0%} of its box: noise or a photo, not strokes"
    if stats.aspect > lim["pair_aspect"] and stats.split >= lim["pair_part"]:
        return "two separate symbols side by side"
    if stats.components > lim["max_components"]:
        return f"{stats.components} separate marks: specks or scattered strokes, not one symbol"
    if stats.holes > lim["max_holes"]:
        return f"{stats.holes} enclosed loops: a scribble, not a symbol"
    if stats.length > lim["max_length"]:
        return f"strokes {stats.length:.1f}× as long as the ink box's sides: a scribble, not a symbol"
    return None


def analyse(source: Any) -> tuple[Any, InkStats]:
    """``(Glyph, InkStats)`` of an image: :func:`ukr_hw.preprocess.preprocess`'s glyph and the statistics of the
    same cleaned ink map, made in one pass (the API and the UI need both). Raises what ``preprocess`` raises."""
    from ukr_hw import preprocess as pp

    ink = pp._clean(pp.ink_map(source))
    stats = ink_stats(ink)
    top, bottom, left, right = pp._bbox(ink > INK)
    canvas_h, canvas_w = ink.shape
    pixels = pp._fit_and_centre(pp._normalize_stroke(ink[top:bottom, left:right]))
    glyph = pp.Glyph(pixels=pixels, ink_height=(bottom - top) / canvas_h, ink_width=(right - left) / canvas_w)
    return glyph, stats


# --------------------------------------------------------------------------------------------------------------
# The model's confidence


def score(probs: np.ndarray) -> np.ndarray:
    """The confidence score of symbol probabilities (43,) or (N, 43): the largest one (low: not a known symbol)."""
    return np.asarray(probs, dtype=np.float64).max(axis=-1)


def refuses(probs: np.ndarray, threshold: float) -> np.ndarray | bool:
    """Whether the model abstains on these probabilities at ``threshold`` (0 or less: never)."""
    return (score(probs) < threshold) & (threshold > 0)


def energy_refuses(energy: np.ndarray | float, abstain_energy: float | None) -> np.ndarray | bool:
    """Whether the model abstains on these energies (``forward_scored``'s) at ``abstain_energy`` (None: never)."""
    if abstain_energy is None:
        return np.zeros(np.shape(energy), bool) if np.ndim(energy) else False
    return np.asarray(energy, dtype=np.float64) > abstain_energy


def model_reason(
    probs: np.ndarray,
    abstain_threshold: float = 0.0,
    energy: float | None = None,
    abstain_energy: float | None = None,
) -> str | None:
    """Why the model abstains on one glyph's 43 probabilities (and its energy), or None.

    The energy check when both the energy and the model's ``abstain_energy`` are given (it refuses more
    non-symbols at the same share of real glyphs, README, Measured); else the probability check at
    ``abstain_threshold`` (0: none), which callers that only have the probabilities still make."""
    if abstain_energy is not None and energy is not None and math.isfinite(energy):
        if energy > abstain_energy:
            return f"the model knows no symbol like it (energy {energy:.2f}, above {abstain_energy:.2f})"
        return None
    confidence = float(score(probs))
    if abstain_threshold > 0 and confidence < abstain_threshold:
        return f"the model knows no symbol like it (confidence {confidence:.2f}, below {abstain_threshold:.2f})"
    return None


@dataclass(frozen=True)
class ThresholdFit:
    """The abstention thresholds a fine-tune got, and the evidence for them."""

    threshold: float  #: on the largest probability (below: refused; 0: none)
    glyphs: int  #: held-out real glyphs it was fitted on
    refused: float  #: their share below it
    target: float  #: the share of them it may refuse
    energy: float | None = None  #: on the energy (above: refused; None: none)
    energy_refused: float = 0.0  #: the held-out glyphs' share above it

    def metrics(self) -> dict[str, float]:
        out = {
            "abstain_threshold": self.threshold,
            "abstain_fit_glyphs": float(self.glyphs),
            "abstain_fit_refused": self.refused,
        }
        if self.energy is not None:
            out |= {"abstain_energy": self.energy, "abstain_fit_energy_refused": self.energy_refused}
        return out


#: ``finetune.abstain`` defaults: the share of held-out real glyphs the confidence may refuse, their sources, and the
#: fewest glyphs to fit on (fewer: 0, no confidence check)
DEFAULTS: dict[str, Any] = {
    "refuse": 0.006,
    "sources": ["comnist", "rukopys", "mnist", "feedback"],
    "min_glyphs": 200,
    "max_threshold": 0.5,
}


def check(settings: dict[str, Any]) -> dict[str, Any]:
    """``finetune.abstain`` over :data:`DEFAULTS`; :class:`ValueError` names what is wrong."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **settings}
    if not 0.0 <= float(cfg["refuse"]) < 0.5:
        raise ValueError(f"refuse is the share of real glyphs the confidence may refuse, in [0, 0.5): {cfg['refuse']}")
    if not 0.0 <= float(cfg["max_threshold"]) < 1.0:
        raise ValueError(f"max_threshold must lie in [0, 1), got {cfg['max_threshold']}")
    if int(cfg["min_glyphs"]) < 1:
        raise ValueError(f"min_glyphs must be >= 1, got {cfg['min_glyphs']}")
    if isinstance(cfg["sources"], str) or not all(isinstance(s, str) for s in cfg["sources"]):
        raise ValueError(f"sources must be a list of sample sources, got {cfg['sources']!r}")
    return cfg


def out_of_fold_scores(members: Sequence[Any], val_slices: Sequence[Any], sources: Sequence[str]) -> np.ndarray:
    """Each member's :func:`score` on its own validation slice's glyphs from ``sources`` (real writers): glyphs
    that neither its training nor its memory holds."""
    return out_of_fold(members, val_slices, sources)[0]


def out_of_fold(
    members: Sequence[Any], val_slices: Sequence[Any], sources: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, energies)``: each member's :func:`score` and energy on its own validation slice's glyphs from
    ``sources`` (real writers), from one pass (``ukr_hw.model.network.predict_outputs``)."""
    from ukr_hw.model.network import predict_outputs

    scores, energies = [np.zeros(0)], [np.zeros(0)]
    for member, val in zip(members, val_slices, strict=True):
        if val is None or not len(val):
            continue
        keep = np.flatnonzero(np.isin(val.source, list(sources)))
        if keep.size:
            was_training = member.training
            member.eval()
            try:
                probs, _, energy = predict_outputs(member, val.x[keep], val.ink[keep], 1024)
            finally:
                member.train(was_training)
            scores.append(score(probs))
            energies.append(energy.astype(np.float64))
    return np.concatenate(scores), np.concatenate(energies)


def fit_threshold(
    scores: Sequence[float] | np.ndarray,
    settings: dict[str, Any] | None = None,
    energies: Sequence[float] | np.ndarray | None = None,
) -> ThresholdFit:
    """The threshold below which ``refuse`` of these held-out real glyphs' scores fall (capped at
    ``max_threshold``; 0 with fewer than ``min_glyphs``) and, given their ``energies``, the energy above which the
    same share lie (None with fewer). The ink rule also refuses some real glyphs, so the model's share is kept well
    under the 1 % the two may refuse together."""
    cfg = {**DEFAULTS, **(settings or {})}
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) < int(cfg["min_glyphs"]):
        return ThresholdFit(0.0, len(s), 0.0, float(cfg["refuse"]))
    k = math.floor(float(cfg["refuse"]) * len(s))
    threshold = float(min(s[k], float(cfg["max_threshold"])))
    threshold = math.floor(threshold * 1e4) / 1e4  # stored rounded down, so the glyph at it is kept
    energy, energy_refused = None, 0.0
    e = np.sort(np.asarray(energies if energies is not None else [], dtype=np.float64))[::-1]
    e = e[np.isfinite(e)]
    if len(e) >= int(cfg["min_glyphs"]):
        energy = math.ceil(float(e[k]) * 1e4) / 1e4  # stored rounded up, so the glyph at it is kept
        energy_refused = float((e > energy).mean())
    return ThresholdFit(threshold, len(s), float((s < threshold).mean()), float(cfg["refuse"]), energy, energy_refused)
