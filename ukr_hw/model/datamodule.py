"""Lightning data modules over prepared :class:`~ukr_hw.data.arrays.Samples` (plain in-memory tensors).

* :class:`GlyphDataModule` — fine-tuning: real handwriting (``finetune_train``: Rukopys, MNIST digits, CoMNIST) +
  font glyphs + sketchpad drawings (+ feedback), a validation slice carved (seeded; whole drawing sessions for
  CoMNIST, stratified for the rest) from the *real* training samples only — never
  from the frozen ``finetune_test`` split, which is kept for the final evaluation — and class-balanced sampling so
  the rare classes are seen as often as the common ones, tilted within each class towards real handwriting
  (``finetune.source_weights``).
* :class:`MnistDataModule` — pretraining on the full MNIST training set, MNIST test as the validation set.

Batches are ``(x uint8 (B,28,28), ink float (B,2), y int64, case int64)``; the LightningModule scales ``x`` to
[0, 1] and augments it on the tensor. ``num_workers=0``: the data are in memory, worker processes only cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, TensorDataset, WeightedRandomSampler

from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.data.split import TRAIN_FILE
from ukr_hw.data.steps import MNIST_TEST, MNIST_TRAIN, STROKES, SYNTHETIC


def to_dataset(samples: Samples) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(samples.x.copy()),
        torch.from_numpy(samples.ink.copy()),
        torch.from_numpy(samples.y.copy()),
        torch.from_numpy(samples.case.astype(np.int64)),
    )


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Split off ``fraction`` of every (symbol, case) group (at least one sample of groups with ≥ 2)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    keys = samples.y.astype(np.int64) * 4 + (samples.case.astype(np.int64) + 2)
    val_idx: list[np.ndarray] = []
    for k in np.unique(keys):
        idx = np.flatnonzero(keys == k)
        if len(idx) < 2:
            continue
        n_val = max(1, round(len(idx) * fraction))
        val_idx.append(rng.permutation(idx)[:n_val])
    val = np.sort(np.concatenate(val_idx)) if val_idx else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(samples), dtype=bool)
    mask[val] = False
    return samples.subset(np.flatnonzero(mask)), samples.subset(val)


def writer_disjoint_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Split off a validation slice: whole CoMNIST drawing sessions (about ``fraction`` of those drawings: a session,
    one writer's sitting, is never on both sides) and a stratified ``fraction`` of every other source."""
    from ukr_hw.data.comnist import pick_sessions, session_of

    is_comnist = samples.source == "comnist"
    rest_train, rest_val = stratified_split(samples.subset(np.flatnonzero(~is_comnist)), fraction, seed)
    if not is_comnist.any():
        return rest_train, rest_val
    drawn = samples.subset(np.flatnonzero(is_comnist))
    held = pick_sessions(drawn.id.tolist(), fraction, seed)
    in_val = np.array([session_of(i) in held for i in drawn.id], dtype=bool)
    return (
        Samples.concat([rest_train, drawn.subset(np.flatnonzero(~in_val))]),
        Samples.concat([rest_val, drawn.subset(np.flatnonzero(in_val))]),
    )


def balanced_weights(
    y: np.ndarray,
    power: float = 1.0,
    source: np.ndarray | None = None,
    source_weights: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """Per-sample draw weights: class ``c`` gets a share ∝ count(c)^(1-power) (1.0: every class equally often; 0:
    the natural mix), split among its samples in proportion to their source's weight (default 1).

    ``source_weights`` tilts each class towards some sources without changing how often the class is drawn: with
    ``{"rukopys": 3}`` a real handwritten «ж» is drawn 3× as often as one font-rendered «ж».
    """
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1 if len(y) else 1
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if source_weights:
        if source is None or len(source) != len(y):
            raise ValueError("source_weights needs one source name per sample")
        bad = {k: v for k, v in source_weights.items() if not float(v) > 0}
        if bad:
            raise ValueError(f"source weights must be > 0, got {bad}; leave a source out to keep its weight 1")
        names, inverse = np.unique(np.asarray(source).astype(str), return_inverse=True)
        sw = np.array([float(source_weights.get(name, 1.0)) for name in names])[inverse]
    else:
        sw = np.ones(len(y))
    class_share = np.zeros(n_classes)
    np.power(counts, 1.0 - power, out=class_share, where=counts > 0)
    w = class_share[y] * sw / np.bincount(y, weights=sw, minlength=n_classes)[y]
    return torch.as_tensor(w / w.sum(), dtype=torch.double)


def _random_subset(samples: Samples, limit: int | None, seed: int) -> Samples:
    """At most ``limit`` samples drawn without replacement (seeded), kept in their original order."""
    if limit is None or len(samples) <= limit:
        return samples
    return samples.subset(np.sort(np.random.default_rng(seed).permutation(len(samples))[:limit]))


class SamplesDataModule(L.LightningDataModule):
    """Train/validation ``Samples`` held in memory."""

    def __init__(
        self,
        train: Samples,
        val: Samples | None = None,
        *,
        batch_size: int = 64,
        balance_power: float = 0.0,
        source_weights: Mapping[str, float] | None = None,
        epoch_size: int | None = None,
        eval_batch_size: int = 1024,
    ) -> None:
        super().__init__()
        if len(train) == 0:
            raise ValueError("no training samples: run `ukr-hw prepare` first (or check the data paths)")
        self.train_samples = train
        self.val_samples = val
        self.memory_samples = train  #: what a network trained here remembers (UkrHwNet.remember)
        self.batch_size = int(batch_size)
        self.balance_power = float(balance_power)
        self.source_weights = dict(source_weights or {})
        self.epoch_size = epoch_size
        self.eval_batch_size = eval_batch_size

    def train_dataloader(self) -> DataLoader:
        ds = to_dataset(self.train_samples)
        n = int(self.epoch_size or len(ds))
        bs = min(self.batch_size, n)
        s = self.train_samples
        sampler: Sampler[int] | None = None  # None: one shuffled pass over every sample
        if self.balance_power > 0 or self.source_weights:
            sampler = WeightedRandomSampler(balanced_weights(s.y, self.balance_power, s.source, self.source_weights), n)
        elif n != len(ds):
            sampler = RandomSampler(ds, num_samples=n)
        return DataLoader(
            ds, batch_size=bs, shuffle=sampler is None, sampler=sampler, drop_last=n >= 2 * bs, num_workers=0
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_samples is None or len(self.val_samples) == 0:
            return []
        return DataLoader(to_dataset(self.val_samples), batch_size=self.eval_batch_size, num_workers=0)


class GlyphDataModule(SamplesDataModule):
    """Fine-tuning data: real + synthetic (+ extra, e.g. feedback) training, validation carved from the real part."""

    @classmethod
    def from_dir(
        cls,
        processed_dir: Path,
        *,
        val_fraction: float = 0.15,
        seed: int = 42,
        use_synthetic: bool = True,
        synthetic_limit: int | None = None,
        mnist_limit: int = 0,
        use_strokes: bool = True,
        extra: Samples | None = None,
        **kwargs,
    ) -> GlyphDataModule:
        processed_dir = Path(processed_dir)
        real = load_samples(processed_dir / TRAIN_FILE)
        train, val = writer_disjoint_split(real, val_fraction, seed)
        parts = [train]
        extra_digits = None
        syn_path = processed_dir / SYNTHETIC
        if use_synthetic and syn_path.exists():
            syn = load_samples(syn_path)
            parts.append(_random_subset(syn, synthetic_limit, seed))
        mnist_path = processed_dir / MNIST_TRAIN
        if mnist_limit > 0 and mnist_path.exists():
            # more digit writers than the ~40 per digit in the merged data; mnist_train holds none of the
            # fine-tune digits (train or frozen test), so nothing leaks into the evaluation
            extra_digits = _random_subset(load_samples(mnist_path), int(mnist_limit), seed + 1)
            parts.append(extra_digits)
        strokes_path = processed_dir / STROKES
        if use_strokes and strokes_path.exists():
            parts.append(load_samples(strokes_path))  # sketchpad drawings, like what the browser sends
        if extra is not None:
            parts.append(extra)
        dm = cls(Samples.concat(parts), val, **kwargs)
        # what the network's nearest-neighbour memory holds (UkrHwNet.remember): every training glyph but the extra
        # MNIST digits, which keep the weights' digits sharp but, remembered, pull letters towards digits
        dm.memory_samples = Samples.concat([p for p in parts if p is not extra_digits])
        return dm


class MnistDataModule(SamplesDataModule):
    """Pretraining data: the full MNIST training set; MNIST test for validation."""

    @classmethod
    def from_dir(cls, processed_dir: Path, **kwargs) -> MnistDataModule:
        processed_dir = Path(processed_dir)
        return cls(load_samples(processed_dir / MNIST_TRAIN), load_samples(processed_dir / MNIST_TEST), **kwargs)
