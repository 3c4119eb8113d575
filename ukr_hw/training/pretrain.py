"""MNIST pretraining, cached.

:func:`pretrain` trains the whole network on the full MNIST training set and scores it on MNIST test. The weights
are stored under ``settings.cache_dir`` keyed by the MNIST digest + the pretrain-relevant config
(:func:`pretrain_key`) and re-used instead of retrained while neither changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ukr_hw.data import steps
from ukr_hw.data.arrays import load_samples
from ukr_hw.model.evaluate import evaluate
from ukr_hw.model.network import UkrHwNet, build_network
from ukr_hw.settings import Settings, get_settings
from ukr_hw.training.config import TrainConfig
from ukr_hw.training.trainer import make_trainer, optim_settings, resolve_precision, seed_everything, setup_torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainResult:
    """How pretraining went. ``result["cached"]`` reads like the dict it replaces."""

    mnist_test_accuracy: float
    seconds: float  #: of the training (for a cache hit: of the run that filled the cache)
    cached: bool  #: the weights came from the cache
    cache_key: str
    cache_path: str
    epochs: int | None = None  #: epochs trained (None: a cache written before it was recorded)

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.__dataclass_fields__

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pretrain_key(config: TrainConfig | Mapping[str, Any], mnist_digest: str) -> str:
    """The cache key: the MNIST digest, ``net``, ``pretrain``, ``seed`` and the training precision (resolved)."""
    cfg = TrainConfig.coerce(config)
    relevant = {
        "net": cfg.net.model_dump(),
        "pretrain": cfg.pretrain.model_dump(),
        "seed": cfg.seed,
        "mnist": mnist_digest,
    }
    precision = resolve_precision(cfg.trainer.precision)
    if precision != "32-true":  # float32 bodies keep the keys they were cached under
        relevant["precision"] = precision
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:20]


def pretrain(
    config: TrainConfig | Mapping[str, Any],
    settings: Settings | None = None,
    *,
    logger: Any = None,
    use_cache: bool = True,
) -> tuple[UkrHwNet, PretrainResult]:
    """Train on full MNIST (or load the cached weights for the same data + config); score on MNIST test."""
    from ukr_hw.model.datamodule import MnistDataModule
    from ukr_hw.model.lit import LitUkrHw

    cfg = TrainConfig.coerce(config)
    s = settings or get_settings()
    setup_torch(s)
    t0 = time.perf_counter()
    train = load_samples(s.processed_dir / steps.MNIST_TRAIN)
    test = load_samples(s.processed_dir / steps.MNIST_TEST)
    key = pretrain_key(cfg, train.digest())
    cache = s.path(s.cache_dir) / f"pretrain-{key}.pt"
    where = {"cache_key": key, "cache_path": str(cache)}
    if use_cache and cache.exists():
        try:
            blob = torch.load(cache, map_location="cpu", weights_only=True)
            net = build_network(blob["net_config"])
            net.load_state_dict(blob["state_dict"])
            stored = {k: v for k, v in blob["metrics"].items() if k in PretrainResult.__dataclass_fields__}
            result = PretrainResult(**{**stored, "cached": True, **where})
            log.info("pretrain: cache hit %s (MNIST test accuracy %.4f)", cache, result.mnist_test_accuracy)
            return net, result
        except Exception as exc:  # a corrupt cache file is retrained, never fatal
            log.warning("pretrain: ignoring unreadable cache %s (%s); retraining", cache, exc)

    p = cfg.pretrain
    seed_everything(cfg.seed)
    net = build_network(cfg.net.model_dump())
    lit = LitUkrHw(net, optim=optim_settings(p), augment=p.augment.model_dump())
    dm = MnistDataModule(train, None, batch_size=p.batch_size, epoch_size=p.epoch_size)
    trainer = make_trainer(cfg, p.epochs, logger=logger)
    trainer.fit(lit, datamodule=dm)
    net = lit.net.eval()
    report = evaluate(net, test)
    metrics = {  # what the cache file keeps (plain types: torch.load(weights_only=True) reads them)
        "mnist_test_accuracy": report.metrics["symbol_accuracy"],
        "seconds": round(time.perf_counter() - t0, 1),
        "epochs": int(trainer.current_epoch),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"state_dict": net.state_dict(), "net_config": net.config.to_dict(), "metrics": metrics}, tmp)
    tmp.replace(cache)
    log.info("pretrain: MNIST test accuracy %.4f in %.0f s", metrics["mnist_test_accuracy"], metrics["seconds"])
    return net, PretrainResult(**metrics, cached=False, **where)
