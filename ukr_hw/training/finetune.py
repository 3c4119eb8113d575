"""Fine-tuning from the pretrained body (or a champion) on real + synthetic (+ feedback) glyphs.

:func:`finetune` trains ``finetune.members`` networks (best-validation weights, early stopping, seeded), gives each
its nearest-neighbour memory, sets the case and "not one symbol" operating points on their held-out glyphs, and
scores the model on the frozen ``finetune_test`` split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ukr_hw.data import split
from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.model import abstain, case_threshold
from ukr_hw.model.evaluate import EvalReport, evaluate, write_reports
from ukr_hw.model.network import EnsembleNet, NetConfig, Network, UkrHwNet, member_nets
from ukr_hw.settings import Settings, get_settings
from ukr_hw.training.config import ConfigError, NetSection, TrainConfig
from ukr_hw.training.trainer import make_trainer, optim_settings, seed_everything, setup_torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberFit:
    """How one member's training went."""

    val_score: float  #: its best validation score (nan: never validated)
    best_epoch: float  #: the epoch of it (-1: none)
    epochs_run: float


def finetune_datamodule(
    config: TrainConfig | Mapping[str, Any], settings: Settings | None = None, extra: Samples | None = None
):
    """The :class:`~ukr_hw.model.datamodule.GlyphDataModule` of ``config`` (its seed carves the validation slice)."""
    from ukr_hw.model.datamodule import GlyphDataModule

    cfg = TrainConfig.coerce(config)
    s = settings or get_settings()
    f = cfg.finetune
    return GlyphDataModule.from_dir(
        s.processed_dir,
        val_fraction=f.val_fraction,
        seed=cfg.seed,
        use_synthetic=f.use_synthetic,
        synthetic_limit=f.synthetic_limit,
        mnist_limit=int(f.mnist_limit or 0),
        use_strokes=f.use_strokes,
        extra=extra,
        batch_size=f.batch_size,
        balance_power=f.balance_power,
        source_weights=f.source_weights,
        epoch_size=f.epoch_size,
    )


def finetune(
    config: TrainConfig | Mapping[str, Any],
    settings: Settings | None = None,
    init: Network | None = None,
    *,
    extra: Samples | None = None,
    callbacks: Sequence[Any] = (),
    make_logger: Callable[[str], Any] | None = None,
    test: Samples | None = None,
) -> tuple[Network, EvalReport]:
    """Fine-tune (from ``init``'s weights when given) and score on the frozen test split.

    With ``finetune.members`` = K > 1 this fine-tunes K members with seeds ``seed``, ``seed + 1``, … (each with its
    own validation slice, so together they learn from every training glyph) and returns their
    :class:`~ukr_hw.model.network.EnsembleNet`. Member k starts from ``init``'s member k (an ensemble champion
    when retraining) or from ``init`` itself (the pretrained body).

    ``config`` is a :class:`TrainConfig` or its dict (:func:`~ukr_hw.training.config.load_config`); a dict's
    ``net`` may also hold the further :class:`NetConfig` fields of the model it starts from (``ukr_hw.retraining``
    puts the champion's whole ``NetConfig`` there, so that its weights fit): they go into each member's network.

    ``extra`` joins the training data (feedback samples); ``callbacks`` go to the Lightning Trainer (e.g. an
    Optuna pruning callback: single models only); ``make_logger(prefix)`` gives each member's Lightning logger
    (``tracking.logger_factory``; prefix ``""`` for a single model, ``"member0"``, ``"member1"``, … in an
    ensemble). The weights of each member's best validation epoch are kept. ``report.metrics`` also gets
    ``val_score``, ``best_epoch`` (means over members), ``train_seconds``, the ``case_threshold`` the model got
    (``finetune.case_threshold``, or re-fitted on users' held-out letters: :mod:`ukr_hw.model.case_threshold`) with
    the evidence for it, and, for an ensemble, each member's ``member<k>_symbol_accuracy`` /
    ``member<k>_case_accuracy`` on the test split. With ``finetune.knn_weight`` or ``knn_case_weight`` > 0 each
    member remembers its training glyphs (``GlyphDataModule.memory_samples``) after training: nearest-neighbour
    votes in its symbol and case probabilities (:meth:`~ukr_hw.model.network.UkrHwNet.remember`).
    """
    cfg, init_net_fields = _split_net(config)
    s = settings or get_settings()
    setup_torch(s)
    t0 = time.perf_counter()
    k_members = 1 if cfg.finetune.members is None else int(cfg.finetune.members)
    if k_members < 1:
        raise ConfigError(f"finetune.members must be 1 (one network) or more, got {k_members}")
    if k_members > 1 and callbacks:
        raise ConfigError("finetune.members > 1 cannot take training callbacks (Optuna pruning): set it to 1")
    configured, fit_settings = _case_threshold(cfg)
    knn = _knn_settings(cfg)
    try:
        abstain_settings = abstain.check(cfg.finetune.abstain.model_dump())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"finetune.abstain: {e}") from e
    inits = member_nets(init) if init is not None else [None]
    members, fits, val_slices, memories = [], [], [], []
    for k in range(k_members):
        member_cfg = cfg.model_copy(update={"seed": cfg.seed + k})
        prefix = f"member{k}" if k_members > 1 else ""
        if k_members > 1:
            log.info("fine-tune: member %d of %d (seed %d)", k + 1, k_members, member_cfg.seed)
        net, fit, dm = _finetune_one(
            member_cfg,
            init_net_fields,
            s,
            inits[k % len(inits)],
            extra=extra,
            callbacks=callbacks,
            logger=make_logger(prefix) if make_logger else None,
        )
        members.append(net)
        fits.append(fit)
        val_slices.append(dm.val_samples)
        memories.append(dm.memory_samples)
    for member, glyphs in zip(members, memories, strict=True):
        member.config = replace(member.config, **knn)
        if knn["knn_weight"] > 0 or knn["knn_case_weight"] > 0:  # the memory: its training glyphs, by its final weights
            member.remember(
                torch.from_numpy(glyphs.x).float().div_(255.0).unsqueeze(1),
                torch.from_numpy(glyphs.y),
                torch.from_numpy(glyphs.case.astype("int64")),
                torch.from_numpy(glyphs.ink),
            )
    # the operating point, set last, on the members' (voted) P(upper) of their own validation letters: neither their
    # training nor their memories hold those; re-fitted on users' held-out letters when they say so
    p_upper, is_upper = case_threshold.out_of_fold(members, val_slices, fit_settings["sources"])
    guard = case_threshold.out_of_fold(members, val_slices, fit_settings["guard_sources"])
    threshold = case_threshold.fit(p_upper, is_upper, configured, fit_settings, guard)
    log.info("fine-tune: case threshold %.2f (%s)", threshold.threshold, threshold.reason)
    for member in members:
        member.config = replace(member.config, case_threshold=threshold.threshold)
    # "not one symbol": the confidence below which the model abstains, on real glyphs no member trained on
    oof_scores, oof_energies = abstain.out_of_fold(members, val_slices, abstain_settings["sources"])
    abstention = abstain.fit_threshold(oof_scores, abstain_settings, oof_energies)
    log.info(
        "fine-tune: abstain threshold %.4f, energy %s (%d held-out real glyphs)",
        abstention.threshold,
        abstention.energy,
        abstention.glyphs,
    )
    for member in members:
        member.config = replace(member.config, abstain_threshold=abstention.threshold, abstain_energy=abstention.energy)
    net = members[0] if k_members == 1 else EnsembleNet(members).eval()
    test = test if test is not None else load_samples(s.processed_dir / split.TEST_FILE)
    report = evaluate(net, test)
    report.metrics.update(
        {
            "val_score": sum(f.val_score for f in fits) / len(fits),
            "best_epoch": sum(f.best_epoch for f in fits) / len(fits),
            "epochs_run": float(sum(f.epochs_run for f in fits)),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "memory_glyphs": sum(len(m.knn_labels) for m in members) / len(members),  #: per member
            **threshold.metrics(),
            **abstention.metrics(),
        }
    )
    if k_members > 1:
        for k, member in enumerate(members):
            m = evaluate(member, test).metrics
            report.metrics[f"member{k}_symbol_accuracy"] = m["symbol_accuracy"]
            report.metrics[f"member{k}_case_accuracy"] = m["case_accuracy"]
    return net, report


def _split_net(config: TrainConfig | Mapping[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The validated config, and the :class:`NetConfig` fields beyond the ``net`` section a dict's ``net`` holds."""
    if isinstance(config, TrainConfig):
        return config, {}
    net = dict(config.get("net") or {})
    beyond = {k: v for k, v in net.items() if k not in NetSection.model_fields and k in NetConfig.__dataclass_fields__}
    section = {k: v for k, v in net.items() if k not in beyond}
    return TrainConfig.coerce({**config, "net": section}), beyond


def _case_threshold(config: TrainConfig) -> tuple[float, dict[str, Any]]:
    """``finetune.case_threshold`` (checked on loading, by :class:`NetConfig`'s rule) and the checked
    ``finetune.case_threshold_fit``, both before any training starts."""
    value = config.finetune.case_threshold
    threshold = float(0.5 if value is None else value)
    try:
        fit_settings = case_threshold.check(config.finetune.case_threshold_fit.model_dump())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"finetune.case_threshold_fit: {e}") from e
    return threshold, fit_settings


def _knn_settings(config: TrainConfig) -> dict[str, Any]:
    """``finetune.knn_*``, checked by :class:`NetConfig` before any training starts."""
    f = config.finetune
    try:
        checked = NetConfig(
            knn_weight=float(f.knn_weight),
            knn_k=int(f.knn_k),
            knn_temperature=float(f.knn_temperature),
            knn_case_weight=float(f.knn_case_weight),
            knn_ink_scale=float(f.knn_ink_scale),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"finetune.knn_*: {e}") from e
    return {k: v for k, v in checked.to_dict().items() if k.startswith("knn_")}


def _finetune_one(
    config: TrainConfig,
    init_net_fields: Mapping[str, Any],
    settings: Settings,
    init: UkrHwNet | None,
    *,
    extra: Samples | None,
    callbacks: Sequence[Any],
    logger: Any,
) -> tuple[UkrHwNet, MemberFit, Any]:
    """One network fine-tuned with ``config.seed``: its best-validation weights, how the fit went, its data."""
    from lightning.pytorch.callbacks import EarlyStopping

    from ukr_hw.model.lit import BestWeights, LitUkrHw

    f = config.finetune
    seed_everything(config.seed)
    net_cfg = {**config.net.model_dump(), **init_net_fields}
    if f.dropout is not None:
        net_cfg["dropout"] = float(f.dropout)
    net = UkrHwNet(NetConfig.from_dict(net_cfg))
    if init is not None:
        net.load_state_dict(init.state_dict())
        net.forget()  # a trained model's memory belongs to its weights: validation judges the network alone
    dm = finetune_datamodule(config, settings, extra)
    lit = LitUkrHw(net, optim=optim_settings(f), augment=config.augment.model_dump())
    best = BestWeights("val/score", "max")
    cbs: list[Any] = [best, *callbacks]
    if f.patience:
        cbs.append(EarlyStopping("val/score", mode="max", patience=int(f.patience)))
    trainer = make_trainer(config, f.epochs, callbacks=cbs, logger=logger)
    trainer.fit(lit, datamodule=dm)
    fit = MemberFit(
        val_score=float(best.best) if best.best is not None else float("nan"),
        best_epoch=float(best.best_epoch if best.best_epoch is not None else -1),
        epochs_run=float(trainer.current_epoch),
    )
    return lit.net.eval(), fit, dm


def save_reports(report: EvalReport, settings: Settings | None = None) -> dict[str, Path]:
    """Write ``metrics.json`` / ``per_class.csv`` / ``confusion.csv`` into ``settings.reports_dir`` (dvc.yaml)."""
    s = settings or get_settings()
    return write_reports(report, s.path(s.reports_dir))
