"""Training: the configuration, MNIST pretraining (cached), fine-tuning, and the Optuna study over it.

* :mod:`ukr_hw.training.config` — :class:`TrainConfig` (``configs/train.yaml``) and :class:`TuneConfig`
  (``configs/tune.yaml``), pydantic models; ``--set key.sub=value`` overrides; :func:`flat_params` (MLflow names).
* :mod:`ukr_hw.training.pretrain` — :func:`pretrain`: the whole network on full MNIST, cached by data + config.
* :mod:`ukr_hw.training.finetune` — :func:`finetune`: from the pretrained body (or a champion) on the glyphs,
  members, memories, operating points; scored on the frozen test split.
* :mod:`ukr_hw.training.tune` — the Optuna study's pieces (search space, pruning, best params), used by
  ``flows/tune.py``.
* :mod:`ukr_hw.training.trainer` — what both trainings share (torch threads, seeding, the Lightning Trainer).

The flows (``flows/train.py``, ``flows/tune.py``, ``flows/retrain.py``) call these; the names below are the
package's public ones (``from ukr_hw.training import finetune``).
"""

from ukr_hw.training.config import (
    ConfigError,
    TrainConfig,
    TuneConfig,
    apply_overrides,
    deep_merge,
    flat_params,
    load_config,
    read_yaml,
)
from ukr_hw.training.finetune import MemberFit, finetune, finetune_datamodule, save_reports
from ukr_hw.training.pretrain import PretrainResult, pretrain, pretrain_key
from ukr_hw.training.trainer import make_trainer, setup_torch

__all__ = [
    "ConfigError",
    "MemberFit",
    "PretrainResult",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "deep_merge",
    "finetune",
    "finetune_datamodule",
    "flat_params",
    "load_config",
    "make_trainer",
    "pretrain",
    "pretrain_key",
    "read_yaml",
    "save_reports",
    "setup_torch",
]
