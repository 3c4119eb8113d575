"""The LightningModule: two-headed loss, augmentation on the batch, torchmetrics, AdamW + OneCycle.

Loss = cross-entropy over the 43 symbols + ``case_weight`` · BCE over the case logit, where the case term is
masked to letters (``case == -1`` marks digits, which have no case and never contribute). Validation logs
``val/symbol_acc``, ``val/case_acc`` (letters only), ``val/loss`` and ``val/score`` — the mean of the two
accuracies when the set has letters, else the symbol accuracy — which early stopping and Optuna pruning watch.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from ukr_hw.labels import NUM_CLASSES
from ukr_hw.model.augment import AugmentConfig, augment_batch
from ukr_hw.model.network import NetConfig, UkrHwNet, build_network


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3  #: peak learning rate (OneCycle max_lr)
    weight_decay: float = 1e-4
    schedule: str = "onecycle"  #: onecycle | cosine | constant
    pct_start: float = 0.25
    body_lr_mult: float = 1.0  #: < 1 fine-tunes the pretrained body more gently than the heads
    label_smoothing: float = 0.05
    case_weight: float = 1.0

    @classmethod
    def from_dict(cls, d: dict | None) -> OptimConfig:
        return cls(**{k: v for k, v in dict(d or {}).items() if k in cls.__dataclass_fields__})


def masked_case_loss(case_logit: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
    """Mean BCE over samples with a case (``case >= 0``); exactly 0 (with a gradient path) when there are none."""
    mask = case >= 0
    per = F.binary_cross_entropy_with_logits(case_logit, case.clamp(min=0).to(case_logit.dtype), reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1)


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B,28,28)`` (or float ``(B,1,28,28)``) → float ``(B,1,28,28)`` in [0, 1]."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return x.unsqueeze(1) if x.dim() == 3 else x


class LitUkrHw(L.LightningModule):
    def __init__(
        self,
        net: UkrHwNet | None = None,
        *,
        net_config: dict | None = None,
        optim: dict | None = None,
        augment: dict | None = None,
    ) -> None:
        super().__init__()
        self.net = net if net is not None else build_network(net_config)
        self.optim_cfg = OptimConfig.from_dict(optim)
        self.augment_cfg = AugmentConfig.from_dict(augment) if augment is not None else AugmentConfig.off()
        self.save_hyperparameters(
            {"net": self.net.config.to_dict(), "optim": asdict(self.optim_cfg), "augment": self.augment_cfg.to_dict()}
        )
        self.train_sym = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.val_sym = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.val_case = BinaryAccuracy()
        self._val_letters = 0

    @property
    def net_config(self) -> NetConfig:
        return self.net.config

    def forward(self, x: torch.Tensor, ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x, ink)

    def _losses(self, sym_logits, case_logit, y, case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sym_loss = F.cross_entropy(sym_logits, y, label_smoothing=self.optim_cfg.label_smoothing)
        case_loss = masked_case_loss(case_logit, case)
        return sym_loss + self.optim_cfg.case_weight * case_loss, sym_loss, case_loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, ink, y, case = batch
        x, ink = augment_batch(to_input(x), ink.float(), self.augment_cfg)
        sym_logits, case_logit = self.net(x, ink)
        loss, _sym_loss, case_loss = self._losses(sym_logits, case_logit, y, case)
        n = len(y)
        self.train_sym(sym_logits, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/case_loss", case_loss, batch_size=n)
        self.log("train/symbol_acc", self.train_sym, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_letters = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        x, ink, y, case = batch
        sym_logits, case_logit = self.net(to_input(x), ink.float())
        loss, _, _ = self._losses(sym_logits, case_logit, y, case)
        self.val_sym.update(sym_logits, y)
        letters = case >= 0
        if bool(letters.any()):
            self.val_case.update(case_logit[letters], case[letters])
            self._val_letters += int(letters.sum())
        self.log("val/loss", loss, prog_bar=False, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        sym = self.val_sym.compute()
        self.val_sym.reset()
        self.log("val/symbol_acc", sym, prog_bar=True)
        if self._val_letters:
            case = self.val_case.compute()
            self.val_case.reset()
            self.log("val/case_acc", case, prog_bar=True)
            self.log("val/score", (sym + case) / 2)
        else:
            self.log("val/score", sym)

    def configure_optimizers(self):
        c = self.optim_cfg
        body = list(self.net.body.parameters())
        body_ids = {id(p) for p in body}
        heads = [p for p in self.net.parameters() if id(p) not in body_ids]
        lrs = [c.lr * c.body_lr_mult, c.lr]
        opt = torch.optim.AdamW(
            [{"params": body, "lr": lrs[0]}, {"params": heads, "lr": lrs[1]}], weight_decay=c.weight_decay
        )
        if c.schedule == "constant":
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        if c.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lrs, total_steps=max(total, 1), pct_start=c.pct_start, div_factor=10, final_div_factor=100
            )
        elif c.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1), eta_min=c.lr * 1e-3)
        else:
            raise ValueError(f"unknown schedule {c.schedule!r}: use onecycle, cosine or constant")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def monitored_value(trainer: L.Trainer, monitor: str) -> float | None:
    """The value of ``monitor`` after a real validation (None during the sanity check or before it is logged).

    Callbacks read it in ``on_validation_end``, not ``on_validation_epoch_end``: callbacks run before the module's
    hook that logs ``val/score``.
    """
    if trainer.sanity_checking:
        return None
    value = trainer.callback_metrics.get(monitor)
    return None if value is None else float(value)


class BestWeights(L.Callback):
    """Keep the network weights of the best validation epoch in memory and restore them when training ends."""

    def __init__(self, monitor: str = "val/score", mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._state: dict | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        v = monitored_value(trainer, self.monitor)
        if v is None:
            return
        if self.best is None or (v > self.best if self.mode == "max" else v < self.best):
            self.best, self.best_epoch = v, trainer.current_epoch
            self._state = copy.deepcopy(pl_module.net.state_dict())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._state is not None:
            pl_module.net.load_state_dict(self._state)
