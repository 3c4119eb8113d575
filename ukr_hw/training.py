"""Training entry points used by the flows: configuration, MNIST pretraining (cached), fine-tuning, evaluation.

* :func:`load_config` — ``configs/train.yaml`` (+ files named under ``merge:``, e.g. ``best_params.yaml``) +
  dotted overrides (``{"finetune.epochs": "3"}``) over :data:`DEFAULTS`.
* :func:`pretrain` — the whole network on the full MNIST training set, scored on MNIST test. Cached: the weights
  are stored under ``settings.cache_dir`` keyed by the MNIST digest + the pretrain-relevant config, and re-used
  instead of retrained while neither changes.
* :func:`finetune` — from the pretrained body on real + synthetic (+ feedback) glyphs, best-validation weights,
  early stopping, seeded; scored on the frozen ``finetune_test`` split.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from ukr_hw.data import split, steps
from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.model import abstain, case_threshold
from ukr_hw.model.evaluate import EvalReport, evaluate, write_reports
from ukr_hw.model.network import EnsembleNet, NetConfig, Network, UkrHwNet, build_network, member_nets
from ukr_hw.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Every key a training config may set, with its default. YAML files and overrides are merged over this.
DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "net": {"width": 16, "hidden": 128, "dropout": 0.2, "use_ink_features": True, "ink_to_symbol": False},
    "trainer": {"accelerator": "cpu", "progress": True, "max_time_s": None},
    "pretrain": {
        "epochs": 5,
        "batch_size": 128,
        "lr": 0.006,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "pct_start": 0.2,
        "label_smoothing": 0.05,
        "epoch_size": None,  #: samples per epoch (None: all 60 000)
        "augment": {
            "rotation_deg": 8.0,
            "shift": 0.06,
            "scale_min": 0.92,
            "scale_max": 1.08,
            "shear_deg": 6.0,
            "elastic_alpha": 0.0,
            "thickness_prob": 0.3,
            "noise_std": 0.0,
        },
    },
    "finetune": {
        "epochs": 30,
        "patience": 8,
        "batch_size": 64,
        "epoch_size": 4096,  #: samples drawn (class-balanced) per epoch
        "lr": 0.003,
        "body_lr_mult": 0.5,
        "weight_decay": 1e-4,
        "schedule": "onecycle",
        "pct_start": 0.2,
        "label_smoothing": 0.05,
        "case_weight": 1.0,
        "dropout": None,  #: overrides net.dropout for fine-tuning when set
        "balance_power": 1.0,
        "source_weights": {},  #: draw weight per sample source within a class, e.g. {"rukopys": 3} (default 1)
        "val_fraction": 0.15,
        "use_synthetic": True,
        "synthetic_limit": None,
        "mnist_limit": 0,  #: MNIST training digits mixed into fine-tuning (keeps digits as good as after pretraining)
        "use_strokes": True,  #: the rendered sketchpad drawings (strokes_train.npz) join fine-tuning
        "members": 1,  #: K > 1: fine-tune K networks (seeds seed..seed+K-1) and serve their averaged probabilities
        "case_threshold": 0.5,  #: P(upper) above which a letter is uppercase, stored with the model (NetConfig)
        #: re-fit case_threshold on the members' held-out letters from these sources (feedback), given enough
        "case_threshold_fit": dict(case_threshold.DEFAULTS),
        #: the "not one symbol" threshold on the model's confidence, fitted on the members' held-out real glyphs and
        #: stored with the model (NetConfig.abstain_threshold): the share of them it may refuse, their sources, ...
        "abstain": dict(abstain.DEFAULTS),
        #: share of a nearest-neighbour vote over each member's training glyphs in its symbol probabilities (0: off)
        "knn_weight": 0.0,
        "knn_k": 5,
        "knn_temperature": 0.1,
        #: share of a case vote of the remembered letters of the predicted symbol nearest in style and size (0: off)
        "knn_case_weight": 0.0,
        "knn_ink_scale": 2.0,  #: how much the ink boxes' L1 distance counts against embedding similarity
        #: distillation towards the model the fine-tune starts from, on the glyphs it gets right (0: off); meant for
        #: retraining from the champion (the retrain section), not for the first fine-tune from the MNIST body
        "anchor_weight": 0.0,
        "anchor_temperature": 2.0,
        #: a > 0: the weights end as (1 - a) × the fine-tuned ones + a × those it started from (WiSE-FT); meant, like
        #: the anchor, for retraining from the champion; needs a model to start from
        "average_with_init": 0.0,
    },
    "augment": {},  #: fine-tune augmentation, see ukr_hw.model.augment.AugmentConfig (defaults when empty)
    #: finetune keys that replace those above when retraining starts from the champion's weights (ukr-hw retrain)
    "retrain": {},
}


class ConfigError(ValueError):
    """A training config file or override is malformed; the message says which key and what to do."""


# --- configuration ---------------------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found; pass --config with an existing YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Set dotted keys (``"finetune.epochs": "3"``); string values are parsed as YAML scalars (3, 1e-3, true)."""
    out = copy.deepcopy(dict(config))
    for key, value in (overrides or {}).items():
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {key}={value!r} is not a valid value: {exc}") from exc
            value = _number(value)
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a number is what anyone typing it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_keys(config: Mapping[str, Any], defaults: Mapping[str, Any], where: str = "") -> None:
    for k, v in config.items():
        if k in ("merge",):
            continue
        if k not in defaults:
            raise ConfigError(f"unknown config key {where + k!r}; known keys here: {sorted(defaults)}")
        if k == "retrain" and not where:  # holds finetune keys
            if not isinstance(v, dict):
                raise ConfigError(f"retrain must be a mapping of finetune keys, got {v!r}")
            _check_keys(v, defaults["finetune"], "retrain.")
        elif k != "augment" and isinstance(defaults[k], dict) and defaults[k] and isinstance(v, dict):
            _check_keys(v, defaults[k], f"{where}{k}.")


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS ← YAML file ← the files it lists under ``merge:`` (relative to it; skipped if absent) ← overrides."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        data = _read_yaml(path)
        merged = [m for m in data.pop("merge", None) or []]
        config = deep_merge(config, data)
        for m in merged:
            mp = (path.parent / m) if not Path(m).is_absolute() else Path(m)
            if mp.exists():
                config = deep_merge(config, _read_yaml(mp))
    config = apply_overrides(config, overrides)
    _check_keys(config, DEFAULTS)
    return config


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"finetune.lr": 0.003, …}`` for logging as MLflow params."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- shared machinery ------------------------------------------------------------------------------------------


def setup_torch(settings: Settings | None = None) -> None:
    s = settings or get_settings()
    torch.set_num_threads(s.torch_threads)


def make_trainer(
    config: Mapping[str, Any],
    max_epochs: int,
    callbacks: Sequence[Any] = (),
    logger: Any = None,
) -> Any:
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    tcfg = config.get("trainer", {})
    cbs = list(callbacks)
    progress = bool(tcfg.get("progress", True))
    if progress:
        cbs.append(TQDMProgressBar(refresh_rate=10))
    max_time = tcfg.get("max_time_s")
    return L.Trainer(
        accelerator=tcfg.get("accelerator", "cpu"),
        devices=1,
        max_epochs=int(max_epochs),
        max_time={"seconds": int(max_time)} if max_time else None,
        logger=logger if logger is not None else False,
        callbacks=cbs,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=None,
    )


def _optim(section: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("lr", "weight_decay", "schedule", "pct_start", "body_lr_mult", "label_smoothing", "case_weight")
    keys += ("anchor_weight", "anchor_temperature")
    return {k: section[k] for k in keys if k in section}


def _seed(seed: int) -> None:
    import lightning as L

    L.seed_everything(int(seed), workers=True, verbose=False)


# --- pretraining -----------------------------------------------------------------------------------------------


def pretrain_key(config: Mapping[str, Any], mnist_digest: str) -> str:
    relevant = {"net": config["net"], "pretrain": config["pretrain"], "seed": config["seed"], "mnist": mnist_digest}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:20]


def pretrain(
    config: Mapping[str, Any], settings: Settings | None = None, *, logger: Any = None, use_cache: bool = True
) -> tuple[UkrHwNet, dict[str, Any]]:
    """Train on full MNIST (or load the cached weights for the same data + config); score on MNIST test.

    Returns the network and ``{"mnist_test_accuracy", "cached", "cache_key", "cache_path", "seconds"}``.
    """
    from ukr_hw.model.datamodule import MnistDataModule
    from ukr_hw.model.lit import LitUkrHw

    s = settings or get_settings()
    setup_torch(s)
    t0 = time.perf_counter()
    train = load_samples(s.processed_dir / steps.MNIST_TRAIN)
    test = load_samples(s.processed_dir / steps.MNIST_TEST)
    key = pretrain_key(config, train.digest())
    cache = s.path(s.cache_dir) / f"pretrain-{key}.pt"
    if use_cache and cache.exists():
        try:
            blob = torch.load(cache, map_location="cpu", weights_only=True)
            net = build_network(blob["net_config"])
            net.load_state_dict(blob["state_dict"])
            metrics = {**blob["metrics"], "cached": True, "cache_key": key, "cache_path": str(cache)}
            log.info("pretrain: cache hit %s (MNIST test accuracy %.4f)", cache, metrics["mnist_test_accuracy"])
            return net, metrics
        except Exception as exc:  # a corrupt cache file is retrained, never fatal
            log.warning("pretrain: ignoring unreadable cache %s (%s); retraining", cache, exc)

    p = config["pretrain"]
    _seed(config["seed"])
    net = build_network(config["net"])
    lit = LitUkrHw(net, optim=_optim(p), augment=p.get("augment") or {})
    dm = MnistDataModule(train, None, batch_size=p["batch_size"], epoch_size=p.get("epoch_size"))
    trainer = make_trainer(config, p["epochs"], logger=logger)
    trainer.fit(lit, datamodule=dm)
    net = lit.net.eval()
    report = evaluate(net, test)
    metrics = {
        "mnist_test_accuracy": report.metrics["symbol_accuracy"],
        "seconds": round(time.perf_counter() - t0, 1),
        "epochs": int(trainer.current_epoch),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"state_dict": net.state_dict(), "net_config": net.config.to_dict(), "metrics": metrics}, tmp)
    tmp.replace(cache)
    log.info("pretrain: MNIST test accuracy %.4f in %.0f s", metrics["mnist_test_accuracy"], metrics["seconds"])
    return net, {**metrics, "cached": False, "cache_key": key, "cache_path": str(cache)}


# --- fine-tuning -----------------------------------------------------------------------------------------------


def finetune_datamodule(config: Mapping[str, Any], settings: Settings | None = None, extra: Samples | None = None):
    from ukr_hw.model.datamodule import GlyphDataModule

    s = settings or get_settings()
    f = config["finetune"]
    return GlyphDataModule.from_dir(
        s.processed_dir,
        val_fraction=f["val_fraction"],
        seed=config["seed"],
        use_synthetic=f["use_synthetic"],
        synthetic_limit=f.get("synthetic_limit"),
        mnist_limit=int(f.get("mnist_limit") or 0),
        use_strokes=bool(f.get("use_strokes", True)),
        extra=extra,
        batch_size=f["batch_size"],
        balance_power=f["balance_power"],
        source_weights=f.get("source_weights") or {},
        epoch_size=f.get("epoch_size"),
    )


def finetune(
    config: Mapping[str, Any],
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
    s = settings or get_settings()
    setup_torch(s)
    t0 = time.perf_counter()
    members_set = config["finetune"].get("members")
    k_members = 1 if members_set is None else int(members_set)
    if k_members < 1:
        raise ConfigError(f"finetune.members must be 1 (one network) or more, got {k_members}")
    if k_members > 1 and callbacks:
        raise ConfigError("finetune.members > 1 cannot take training callbacks (Optuna pruning): set it to 1")
    configured, fit_settings = _case_threshold(config)
    knn = _knn_settings(config)
    try:
        abstain_settings = abstain.check(config["finetune"].get("abstain") or {})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"finetune.abstain: {e}") from e
    inits = member_nets(init) if init is not None else [None]
    members, fits, val_slices, memories = [], [], [], []
    for k in range(k_members):
        member_config = {**config, "seed": int(config["seed"]) + k}
        prefix = f"member{k}" if k_members > 1 else ""
        if k_members > 1:
            log.info("fine-tune: member %d of %d (seed %d)", k + 1, k_members, member_config["seed"])
        net, fit, dm = _finetune_one(
            member_config,
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
            "val_score": sum(f["val_score"] for f in fits) / len(fits),
            "best_epoch": sum(f["best_epoch"] for f in fits) / len(fits),
            "epochs_run": float(sum(f["epochs_run"] for f in fits)),
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


def _case_threshold(config: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    """``finetune.case_threshold`` (checked by :class:`NetConfig`) and ``finetune.case_threshold_fit``, both checked
    before any training starts."""
    value = config["finetune"].get("case_threshold")
    try:
        threshold = NetConfig(case_threshold=float(0.5 if value is None else value)).case_threshold
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"finetune.case_threshold must be a probability strictly between 0 and 1, got {value!r}"
        ) from e
    try:
        fit_settings = case_threshold.check(config["finetune"].get("case_threshold_fit") or {})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"finetune.case_threshold_fit: {e}") from e
    return threshold, fit_settings


def _knn_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``finetune.knn_*``, checked by :class:`NetConfig` before any training starts."""
    f = config["finetune"]
    try:
        checked = NetConfig(
            knn_weight=float(f.get("knn_weight", 0.0)),
            knn_k=int(f.get("knn_k", 5)),
            knn_temperature=float(f.get("knn_temperature", 0.1)),
            knn_case_weight=float(f.get("knn_case_weight", 0.0)),
            knn_ink_scale=float(f.get("knn_ink_scale", 2.0)),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"finetune.knn_*: {e}") from e
    return {k: v for k, v in checked.to_dict().items() if k.startswith("knn_")}


def _finetune_one(
    config: Mapping[str, Any],
    settings: Settings,
    init: UkrHwNet | None,
    *,
    extra: Samples | None,
    callbacks: Sequence[Any],
    logger: Any,
) -> tuple[UkrHwNet, dict[str, float], Any]:
    """One network fine-tuned with ``config["seed"]``: its best-validation weights, how the fit went, its data."""
    from lightning.pytorch.callbacks import EarlyStopping

    from ukr_hw.model.lit import BestWeights, LitUkrHw

    f = config["finetune"]
    _seed(config["seed"])
    net_cfg = dict(config["net"])
    if f.get("dropout") is not None:
        net_cfg["dropout"] = float(f["dropout"])
    anchored = float(f.get("anchor_weight") or 0) > 0
    keep = float(f.get("average_with_init") or 0)
    if not 0 <= keep < 1:
        raise ConfigError(f"finetune.average_with_init must be in [0, 1), got {keep}")
    if (anchored or keep) and init is None:
        raise ConfigError(
            "finetune.anchor_weight and finetune.average_with_init need a model to start from (init); set them to 0"
        )
    net = UkrHwNet(NetConfig.from_dict(net_cfg))
    teacher, start = None, None
    if init is not None:
        net.load_state_dict(init.state_dict())
        net.forget()  # a champion's memory belongs to its weights: validation judges the network alone
        teacher = copy.deepcopy(net) if anchored else None
        start = copy.deepcopy(net.state_dict()) if keep else None
    dm = finetune_datamodule(config, settings, extra)
    lit = LitUkrHw(net, optim=_optim(f), augment=config.get("augment") or {}, teacher=teacher)
    best = BestWeights("val/score", "max")
    cbs: list[Any] = [best, *callbacks]
    if f.get("patience"):
        cbs.append(EarlyStopping("val/score", mode="max", patience=int(f["patience"])))
    trainer = make_trainer(config, f["epochs"], callbacks=cbs, logger=logger)
    trainer.fit(lit, datamodule=dm)
    if start is not None:
        average_weights(lit.net, start, keep)
    return (
        lit.net.eval(),
        {
            "val_score": float(best.best) if best.best is not None else float("nan"),
            "best_epoch": float(best.best_epoch if best.best_epoch is not None else -1),
            "epochs_run": float(trainer.current_epoch),
        },
        dm,
    )


def average_weights(net: torch.nn.Module, start: Mapping[str, torch.Tensor], keep: float) -> None:
    """In place: every floating-point parameter and buffer becomes ``(1 - keep) × its value + keep × start[name]``.

    Weight-space ensembling of a fine-tune with the model it started from (WiSE-FT, Wortsman et al. 2022): the
    two lie in one basin, so the average keeps most of what each knows. Integer buffers (batch counts) stay.
    """
    with torch.no_grad():
        for name, value in net.state_dict().items():
            old = start.get(name)
            if value.is_floating_point() and old is not None and old.shape == value.shape:
                value.mul_(1 - keep).add_(old.to(value.device, value.dtype), alpha=keep)


def save_reports(report: EvalReport, settings: Settings | None = None) -> dict[str, Path]:
    """Write ``metrics.json`` / ``per_class.csv`` / ``confusion.csv`` into ``settings.reports_dir`` (dvc.yaml)."""
    s = settings or get_settings()
    return write_reports(report, s.path(s.reports_dir))
