"""The network: a small CNN body with two heads (43-way symbol, upper/lower case).

Input ``x`` is ``(B, 1, 28, 28)`` float in [0, 1] (ink = 1) and ``ink`` is ``(B, 2)``: the ink box's height and
width relative to the canvas (see ``ukr_hw.preprocess.Glyph.features``), which the case head sees next to the
image features because uppercase letters are drawn bigger. Outputs are logits: ``(B, 43)`` and ``(B,)``.
In eval mode the case logit is shifted by the model's ``case_threshold`` (its operating point, set after
fine-tuning), so ``sigmoid(case) > 0.5`` is the model's answer wherever it is read.

When the network carries a memory of its training glyphs (:meth:`UkrHwNet.remember`), eval mode also blends the
symbol probabilities with a vote of the ``knn_k`` nearest of them in the embedding space (``knn_weight``), and the
raw P(upper), before the threshold, with the uppercase share of the nearest remembered letters of the predicted
symbol (``knn_case_weight``): rare handwriting styles that the linear head under-weights are still recalled, and
retraining adds users' corrected drawings to the memory. The symbol output is then the log of the blended
probabilities, so softmax of it gives them, as before.
Built from a plain dict so a logged model is rebuilt from ``config.json`` + ``state_dict`` without pickles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ukr_hw.labels import NUM_CLASSES


@dataclass(frozen=True)
class NetConfig:
    width: int = 16  #: channels of the first block; doubled in each of the three blocks
    hidden: int = 128  #: size of the shared embedding
    dropout: float = 0.2
    use_ink_features: bool = True  #: feed the ink-box geometry to the case head
    ink_to_symbol: bool = False  #: feed it to the symbol head as well (з vs 3, о vs 0: the same shape, other sizes)
    #: P(upper) of the trained case head above which a letter is uppercase. Fine-tuning sets it
    #: (``finetune.case_threshold``) after training; in eval mode ``forward`` subtracts its logit from the case
    #: logit, so the reported probability and every ``> 0.5`` decision follow it. Training sees the raw logit.
    case_threshold: float = 0.5
    #: share of the nearest-neighbour vote in the symbol probabilities (eval mode, with a memory; 0: none)
    knn_weight: float = 0.0
    knn_k: int = 5  #: neighbours that vote
    knn_temperature: float = 0.1  #: a neighbour's vote is exp((cosine similarity - 1) / temperature)
    #: share of a case vote in P(upper): the ``knn_k`` remembered letters of the predicted symbol nearest in
    #: style and size (cosine similarity − ``knn_ink_scale`` × L1 distance of the ink boxes) (0: none)
    knn_case_weight: float = 0.0
    knn_ink_scale: float = 2.0
    #: the model abstains ("not one symbol") when its largest symbol probability is below this (0: never). Fitted
    #: after fine-tuning on the members' held-out real glyphs (``ukr_hw.model.abstain.fit_threshold``); models logged
    #: before it existed load with 0. Only read by ``ukr_hw.inference``: the network's outputs do not depend on it.
    #: The fallback for callers that do not pass the energy (see ``abstain_energy``).
    abstain_threshold: float = 0.0
    #: the model abstains when the energy of its symbol logits (``energy`` of :meth:`UkrHwNet.forward_scored`,
    #: the members' mean) is above this: the score that refuses more non-symbols at the same share of real glyphs
    #: (``benchmarks/abstention.py``). Fitted with ``abstain_threshold``; None (models logged before it): no
    #: energy check, the probability threshold applies. Only read by ``ukr_hw.inference``.
    abstain_energy: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.case_threshold < 1.0:
            raise ValueError(f"case_threshold must lie strictly between 0 and 1, got {self.case_threshold}")
        if not 0.0 <= self.knn_weight < 1.0 or not 0.0 <= self.knn_case_weight < 1.0:
            raise ValueError(
                f"knn_weight and knn_case_weight must lie in [0, 1), got {self.knn_weight}, {self.knn_case_weight}"
            )
        if self.knn_ink_scale < 0:
            raise ValueError(f"knn_ink_scale must be >= 0, got {self.knn_ink_scale}")
        if not 0.0 <= self.abstain_threshold < 1.0:
            raise ValueError(f"abstain_threshold must lie in [0, 1), got {self.abstain_threshold}")
        if self.abstain_energy is not None and not math.isfinite(self.abstain_energy):
            raise ValueError(f"abstain_energy must be a finite number or null (none), got {self.abstain_energy}")
        if int(self.knn_k) < 1 or not self.knn_temperature > 0:
            raise ValueError(f"need knn_k >= 1 and knn_temperature > 0, got {self.knn_k}, {self.knn_temperature}")

    @property
    def case_shift(self) -> float:
        """The logit of :attr:`case_threshold`: what eval mode subtracts from the case logit."""
        return math.log(self.case_threshold / (1.0 - self.case_threshold))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UkrHwNet(nn.Module):
    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetConfig()
        w = self.config.width
        self.body = nn.Sequential(
            _block(1, w),
            nn.MaxPool2d(2),  # 14×14
            _block(w, 2 * w),
            nn.MaxPool2d(2),  # 7×7
            _block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(3),  # 3×3
            nn.Flatten(),
            nn.Dropout(self.config.dropout),
            nn.Linear(4 * w * 9, self.config.hidden),
            nn.BatchNorm1d(self.config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(self.config.dropout),
        )
        n_geo = 2 if self.config.use_ink_features else 0
        self.symbol_head = nn.Linear(self.config.hidden + (n_geo if self.config.ink_to_symbol else 0), NUM_CLASSES)
        self.case_head = nn.Sequential(
            nn.Linear(self.config.hidden + n_geo, 64), nn.ReLU(inplace=True), nn.Linear(64, 1)
        )
        # the memory: unit-length embeddings of training glyphs, their classes, cases (-1: digit) and ink boxes
        # (empty until `remember`)
        self.register_buffer("knn_keys", torch.zeros(0, self.config.hidden))
        self.register_buffer("knn_labels", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("knn_case", torch.zeros(0, dtype=torch.int8))
        self.register_buffer("knn_ink", torch.zeros(0, 2))
        self.set_memory_format(torch.channels_last)

    def set_memory_format(self, memory_format: torch.memory_format) -> UkrHwNet:
        """Lay out the convolutions' weights and inputs as ``channels_last`` (NHWC, the default) or NCHW.

        NHWC is faster on a CPU: see ``benchmarks/network_speed.py``. The weights keep their layout through
        ``load_state_dict`` and the results are the same either way; this only exists to be measured.
        """
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, x: torch.Tensor, ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        symbol, case, _ = self.forward_scored(x, ink)
        return symbol, case

    def forward_scored(self, x: torch.Tensor, ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s outputs and, from the same pass, the ``(B,)`` energy of the symbol head's raw logits,
        ``-logsumexp`` before the memory's vote: low for what the network was trained on, high for what it has never
        seen (the abstention's score; the softmax hides how small all the logits are)."""
        z = self.body(x.contiguous(memory_format=self.memory_format))
        zc = torch.cat([z, ink], dim=1) if self.config.use_ink_features else z
        case = self.case_head(zc).squeeze(1)
        symbol = self.symbol_head(zc if self.config.ink_to_symbol else z)
        energy = -torch.logsumexp(symbol.float(), dim=1)
        if not self.training and len(self.knn_labels):
            sim = nn.functional.normalize(z, dim=1) @ self.knn_keys.T  # cosine similarity to every remembered glyph
            if self.config.knn_weight > 0:
                symbol = self._recall(symbol, sim)
            if self.config.knn_case_weight > 0 and len(self.knn_case) == len(self.knn_labels):
                case = self._recall_case(case, sim, ink, symbol.argmax(1))
        return symbol, case - case_shift(self), energy  # the threshold applies to the (voted) P(upper)

    def _recall(self, logits: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        """log((1 - w) · softmax(logits) + w · the nearest training glyphs' weighted class vote)."""
        c = self.config
        top, idx = sim.topk(min(int(c.knn_k), sim.shape[1]), dim=1)
        votes = torch.zeros_like(logits).scatter_add_(1, self.knn_labels[idx], torch.exp((top - 1) / c.knn_temperature))
        vote = votes / votes.sum(1, keepdim=True)
        return torch.log(((1 - c.knn_weight) * torch.softmax(logits, dim=1) + c.knn_weight * vote).clamp_min(1e-30))

    def _recall_case(
        self, case: torch.Tensor, sim: torch.Tensor, ink: torch.Tensor, pred: torch.Tensor
    ) -> torch.Tensor:
        """logit((1 - w) · raw P(upper) + w · the uppercase share of the remembered letters of the predicted symbol
        nearest in style and size), before the threshold. Whether a letter is a capital is mostly its size next to
        letters drawn alike, so the neighbours are chosen by embedding similarity less the ink boxes' distance; no
        such letter (a digit): P(upper) alone."""
        c = self.config
        score = sim - c.knn_ink_scale * torch.cdist(ink, self.knn_ink, p=1)
        same = (self.knn_labels[None, :] == pred[:, None]) & (self.knn_case >= 0)[None, :]
        top, idx = score.masked_fill(~same, -torch.inf).topk(min(int(c.knn_k), score.shape[1]), dim=1)
        found = torch.isfinite(top)
        n = found.sum(1)
        upper = ((self.knn_case[idx] == 1) & found).sum(1) / n.clamp_min(1)
        p = torch.sigmoid(case)
        p = torch.where(n > 0, (1 - c.knn_case_weight) * p + c.knn_case_weight * upper, p)
        return torch.logit(p, eps=1e-6)

    @torch.inference_mode()
    def remember(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        case: torch.Tensor | None = None,
        ink: torch.Tensor | None = None,
        batch_size: int = 1024,
    ) -> UkrHwNet:
        """Keep these glyphs as the memory: ``x`` (N,1,28,28) in [0, 1], classes ``y``, and, for the case vote,
        their ``case`` (1 upper, 0 lower, -1 digit) and ``ink`` boxes (N,2)."""
        was_training = self.training
        self.eval()
        try:
            keys = [
                nn.functional.normalize(self.body(x[i : i + batch_size].contiguous(memory_format=self.memory_format)))
                for i in range(0, len(x), batch_size)
            ]
        finally:
            self.train(was_training)
        self.knn_keys = torch.cat(keys) if keys else torch.zeros(0, self.config.hidden)
        self.knn_labels = y.to(torch.int64).clone()
        self.knn_case = case.to(torch.int8).clone() if case is not None else torch.zeros(0, dtype=torch.int8)
        self.knn_ink = ink.float().clone() if ink is not None else torch.zeros(0, 2)
        return self

    def forget(self) -> UkrHwNet:
        """Drop the memory (its embeddings belong to the weights it was built with)."""
        return self.remember(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the memory's size is the data's, not the architecture's: take the stored one (none in older models)
        for name in ("knn_keys", "knn_labels", "knn_case", "knn_ink"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
            else:
                state_dict[prefix + name] = getattr(self, name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class EnsembleNet(nn.Module):
    """Several :class:`UkrHwNet` fine-tuned from one body with different seeds, answering as one network.

    The outputs keep the single network's contract (logits): the symbol "logits" are the log of the members'
    averaged probabilities and the case logit is the logit of their averaged raw P(upper), shifted once by the
    members' ``case_threshold`` (eval mode), so softmax/sigmoid of them give the averaged probabilities.
    Averaging members is the cheapest robust gain measured on other writers' drawings (README, Measured); each
    member costs one more forward pass (~1.4 ms on a CPU).
    """

    def __init__(self, members: list[UkrHwNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> NetConfig:
        """The members' architecture and case threshold (they share them)."""
        return self.members[0].config

    def forward(self, x: torch.Tensor, ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        symbol, case, _ = self.forward_scored(x, ink)
        return symbol, case

    def forward_scored(self, x: torch.Tensor, ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s outputs and the members' mean energy (:meth:`UkrHwNet.forward_scored`), in one pass."""
        outs = [m.forward_scored(x, ink) for m in self.members]
        log_probs = torch.stack([torch.log_softmax(s, dim=1) for s, _, _ in outs]).logsumexp(0) - math.log(len(outs))
        # the members' raw P(upper) averaged, then the threshold applied once
        raw = [torch.sigmoid(c + case_shift(m)) for m, (_, c, _) in zip(self.members, outs, strict=True)]
        upper = torch.stack(raw).mean(0)
        energy = torch.stack([e for _, _, e in outs]).mean(0)
        return log_probs, torch.logit(upper, eps=1e-6) - case_shift(self), energy


Network = UkrHwNet | EnsembleNet


def case_shift(net: nn.Module) -> float:
    """What ``net`` subtracts from its case logit now: the logit of its ``case_threshold`` in eval mode, else 0."""
    return 0.0 if net.training else net.config.case_shift


def member_nets(net: Network) -> list[UkrHwNet]:
    """The single networks inside ``net`` (itself when it is one)."""
    return list(net.members) if isinstance(net, EnsembleNet) else [net]  # type: ignore[arg-type]


def network_config(net: Network) -> dict:
    """What :func:`build_network` needs to rebuild ``net``: the architecture, plus ``members`` for an ensemble."""
    config = net.config.to_dict()
    if isinstance(net, EnsembleNet):
        config["members"] = len(net.members)
    return config


def build_network(config: NetConfig | dict | None = None) -> Network:
    """A fresh network; a dict with ``members`` > 1 (see :func:`network_config`) gives an :class:`EnsembleNet`."""
    members = 1
    if isinstance(config, dict):
        members = int(config.get("members") or 1)
        config = NetConfig.from_dict(config)
    if members > 1:
        return EnsembleNet([UkrHwNet(config) for _ in range(members)])
    return UkrHwNet(config)


def predict_arrays(
    net: nn.Module, x: np.ndarray, ink: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (N,28,28) float in [0,1] (uint8 0-255 accepted), ``ink`` (N,2) → ``(probs (N,43), P(upper) (N,))``, in
    batches of ``batch_size`` with ``net`` as it is (callers put it in eval mode). Shared by
    :class:`ukr_hw.inference.Predictor` and the portable MLflow model, which ships this module."""
    probs, case, _ = predict_outputs(net, x, ink, batch_size)
    return probs, case


def predict_outputs(
    net: nn.Module, x: np.ndarray, ink: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`predict_arrays`'s ``(probs, P(upper))`` and the energy (N,) of the same pass (``forward_scored``; NaN
    for a network without it)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = np.asarray(x, dtype=np.float32).reshape(-1, 28, 28)
    ink = np.asarray(ink, dtype=np.float32).reshape(-1, 2)
    if len(x) != len(ink):
        raise ValueError(f"{len(x)} images but {len(ink)} ink rows; pass one [height, width] pair per image")
    probs = np.empty((len(x), NUM_CLASSES), dtype=np.float32)
    case = np.empty((len(x),), dtype=np.float32)
    energy = np.full((len(x),), np.nan, dtype=np.float32)
    scored = getattr(net, "forward_scored", None)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).unsqueeze(1)
            ib = torch.from_numpy(ink[start : start + batch_size])
            if scored is not None:
                logits, case_logit, e = scored(xb, ib)
                energy[start : start + len(xb)] = e.float().numpy()
            else:
                logits, case_logit = net(xb, ib)
            probs[start : start + len(xb)] = torch.softmax(logits.float(), dim=1).numpy()
            case[start : start + len(xb)] = torch.sigmoid(case_logit.float()).numpy()
    return probs, case, energy
