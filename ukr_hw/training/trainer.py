"""What pretraining and fine-tuning share: torch threads, seeding, the Lightning Trainer, the optimiser settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ukr_hw.settings import Settings, get_settings
from ukr_hw.training.config import FinetuneSection, PretrainSection, TrainConfig

#: the optimiser keys a pretrain / finetune section may hold (:class:`ukr_hw.model.lit.OptimConfig`)
OPTIM_KEYS = (
    "lr",
    "weight_decay",
    "schedule",
    "pct_start",
    "body_lr_mult",
    "label_smoothing",
    "case_weight",
)


def setup_torch(settings: Settings | None = None) -> None:
    s = settings or get_settings()
    torch.set_num_threads(s.torch_threads)


def seed_everything(seed: int) -> None:
    import lightning as L

    L.seed_everything(int(seed), workers=True, verbose=False)


def optim_settings(section: PretrainSection | FinetuneSection) -> dict[str, Any]:
    """The section's optimiser settings, for :class:`~ukr_hw.model.lit.LitUkrHw`."""
    values = section.model_dump()
    return {k: values[k] for k in OPTIM_KEYS if k in values}


def resolve_precision(precision: str) -> str:
    """``trainer.precision`` as Lightning takes it: ``auto`` becomes ``bf16-mixed`` where the CPU has bfloat16
    arithmetic (pretraining 1.16×, fine-tuning 1.35× faster here: docs/experiments.md, "Training in bfloat16"),
    else ``32-true`` (without it oneDNN emulates bfloat16, slower than float32)."""
    if precision != "auto":
        return precision
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        native = False
    return "bf16-mixed" if native else "32-true"


def make_trainer(config: TrainConfig, max_epochs: int, callbacks: Sequence[Any] = (), logger: Any = None) -> Any:
    """A CPU-friendly Lightning Trainer: no checkpoints, no sanity validation, ``config.trainer``'s settings."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    t = config.trainer
    cbs = list(callbacks)
    if t.progress:
        cbs.append(TQDMProgressBar(refresh_rate=10))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=1,
        precision=resolve_precision(t.precision),
        max_epochs=int(max_epochs),
        max_time={"seconds": int(t.max_time_s)} if t.max_time_s else None,
        logger=logger if logger is not None else False,
        callbacks=cbs,
        enable_checkpointing=False,
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=None,
    )
