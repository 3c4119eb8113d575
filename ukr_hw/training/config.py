"""The training and tuning configuration: pydantic models of ``configs/train.yaml`` and ``configs/tune.yaml``.

One model per YAML section (:class:`NetSection`, :class:`TrainerSection`, :class:`PretrainSection`,
:class:`FinetuneSection`, …), all with ``extra="forbid"``: an unknown key or a value of the wrong type is a
:class:`ConfigError` that names the dotted key (``finetune.lrr``). Defaults live on the fields.

* :meth:`TrainConfig.load` — a YAML file (+ the files it lists under ``merge:``, e.g. ``best_params.yaml``) +
  dotted overrides (``{"finetune.epochs": "3"}``, what ``--set`` gives), validated into a :class:`TrainConfig`.
* :func:`load_config` — the same, as the plain nested ``dict`` older callers index (``config["finetune"]["lr"]``).
* :func:`flat_params` — ``{"finetune.lr": 0.003, …}``: the MLflow param names.
* :class:`TuneConfig` — ``configs/tune.yaml``: the search space and how trials run.

Two kinds of section hold only the keys they are given (:class:`PartialSection`): ``augment`` (fine-tune
augmentation; :class:`~ukr_hw.model.augment.AugmentConfig` fills in the rest) and ``retrain`` (finetune keys that
``ukr-hw retrain`` puts over ``finetune``). Numbers keep the type they were written
with (``lr: 1`` stays ``1``), so MLflow params and the pretrain cache key read as written.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_serializer

from ukr_hw.model import abstain, case_threshold
from ukr_hw.model.augment import AugmentConfig
from ukr_hw.model.network import NetConfig


class ConfigError(ValueError):
    """A training config file or override is malformed; the message says which key and what to do."""


#: a number as written: an int stays an int (``int | float``, not ``float``, which would turn 1 into 1.0)
Number: TypeAlias = int | float


def _probability(value: Any) -> Any:
    """``finetune.case_threshold``: a probability strictly between 0 and 1 (the rule of :class:`NetConfig`)."""
    if value is None:
        return None
    try:
        return NetConfig(case_threshold=float(value)).case_threshold
    except (TypeError, ValueError):
        raise ValueError(f"case_threshold must be a probability strictly between 0 and 1, got {value!r}") from None


def _mapping_of_finetune_keys(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError(f"retrain must be a mapping of finetune keys, got {value!r}")
    return value


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class PartialSection(Section):
    """A section that holds (and dumps) only the keys it was given; whoever reads it supplies the defaults."""

    @model_serializer(mode="wrap")
    def _only_given(self, handler: Any) -> Any:
        data = handler(self)
        if not isinstance(self, BaseModel):  # an unset nested section (None) of a partial section
            return data
        return {k: v for k, v in data.items() if k in self.model_fields_set}


def partial(model: type[BaseModel], name: str) -> type[PartialSection]:
    """``model`` with every key optional and left out unless given (nested sections partial too).

    An explicit ``null`` is still checked against the field's type: unset and null are not the same.
    """
    fields: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = partial(annotation, f"Partial{annotation.__name__}")
        fields[key] = (Annotated[annotation, *field.metadata] if field.metadata else annotation, None)
    return create_model(name, __base__=PartialSection, __doc__=model.__doc__, **fields)


def _augment_section() -> type[PartialSection]:
    """The keys of :class:`~ukr_hw.model.augment.AugmentConfig`, each optional (its own default when left out)."""
    hints = typing.get_type_hints(AugmentConfig)
    fields = {k: (Number if hints[k] is float else hints[k], None) for k in AugmentConfig.__dataclass_fields__}
    return create_model("AugmentSection", __base__=PartialSection, **fields)


#: ``augment`` and ``pretrain.augment``: :class:`~ukr_hw.model.augment.AugmentConfig` keys, only those given
AugmentSection = _augment_section()


class NetSection(Section):
    """``net``: the architecture (:class:`~ukr_hw.model.network.NetConfig`'s first keys)."""

    width: int = 16  #: channels of the first block; doubled in each of the three blocks
    hidden: int = 128  #: size of the shared embedding
    dropout: Number = 0.2
    use_ink_features: bool = True  #: feed the ink-box geometry to the case head
    ink_to_symbol: bool = False  #: feed it to the symbol head as well


class TrainerSection(Section):
    """``trainer``: the Lightning Trainer."""

    accelerator: str = "cpu"
    progress: bool = True
    max_time_s: Number | None = None  #: stop a fit after this many seconds (None: no limit)
    #: Lightning's ``precision`` for training (evaluation and serving stay float32). ``auto``: ``bf16-mixed``
    #: where the CPU computes bfloat16 natively (AVX512-BF16 or AMX), else ``32-true``
    #: (:func:`ukr_hw.training.trainer.resolve_precision`)
    precision: Literal["auto", "32-true", "bf16-mixed"] = "auto"


#: ``pretrain.augment`` defaults: gentler than fine-tuning's (MNIST digits)
PRETRAIN_AUGMENT: dict[str, Any] = {
    "rotation_deg": 8.0,
    "shift": 0.06,
    "scale_min": 0.92,
    "scale_max": 1.08,
    "shear_deg": 6.0,
    "elastic_alpha": 0.0,
    "thickness_prob": 0.3,
    "noise_std": 0.0,
}


def _over_pretrain_augment(value: Any) -> Any:
    return {**PRETRAIN_AUGMENT, **value} if isinstance(value, Mapping) else value


class PretrainSection(Section):
    """``pretrain``: the whole network on full MNIST (cached by this section, ``net`` and ``seed``)."""

    epochs: int = 5
    batch_size: int = 128
    lr: Number = 0.006
    weight_decay: Number = 5e-4
    schedule: str = "onecycle"
    pct_start: Number = 0.2
    label_smoothing: Number = 0.05
    epoch_size: int | None = None  #: samples per epoch (None: all 60 000)
    #: :data:`PRETRAIN_AUGMENT` with the keys given over it
    augment: Annotated[AugmentSection, BeforeValidator(_over_pretrain_augment)] = Field(
        default_factory=lambda: AugmentSection(**PRETRAIN_AUGMENT)
    )


class CaseThresholdFit(Section):
    """``finetune.case_threshold_fit``: re-fit the case threshold on the members' held-out letters of these sources
    (feedback), given enough (:mod:`ukr_hw.model.case_threshold`, whose ``DEFAULTS`` these are)."""

    sources: list[str] = Field(default_factory=lambda: list(case_threshold.DEFAULTS["sources"]))
    min_letters: int = case_threshold.DEFAULTS["min_letters"]
    min_gain: Number = case_threshold.DEFAULTS["min_gain"]
    low: Number = case_threshold.DEFAULTS["low"]
    high: Number = case_threshold.DEFAULTS["high"]
    guard_sources: list[str] = Field(default_factory=lambda: list(case_threshold.DEFAULTS["guard_sources"]))
    guard_tolerance: Number = case_threshold.DEFAULTS["guard_tolerance"]


class AbstainSettings(Section):
    """``finetune.abstain``: the "not one symbol" threshold, fitted on the members' held-out real glyphs
    (:mod:`ukr_hw.model.abstain`, whose ``DEFAULTS`` these are)."""

    refuse: Number = abstain.DEFAULTS["refuse"]  #: share of those glyphs the confidence may refuse
    sources: list[str] = Field(default_factory=lambda: list(abstain.DEFAULTS["sources"]))
    min_glyphs: int = abstain.DEFAULTS["min_glyphs"]  #: fewer: no confidence check
    max_threshold: Number = abstain.DEFAULTS["max_threshold"]


class FinetuneSection(Section):
    """``finetune``: from the pretrained body on real + synthetic (+ feedback) glyphs."""

    epochs: int = 30
    patience: int | None = 8  #: early stopping on val/score (0 or None: off)
    batch_size: int = 64
    epoch_size: int | None = 4096  #: samples drawn (class-balanced) per epoch
    lr: Number = 0.003
    body_lr_mult: Number = 0.5
    weight_decay: Number = 1e-4
    schedule: str = "onecycle"
    pct_start: Number = 0.2
    label_smoothing: Number = 0.05
    case_weight: Number = 1.0
    dropout: Number | None = None  #: overrides net.dropout for fine-tuning when set
    balance_power: Number = 1.0
    #: draw weight per sample source within a class, e.g. {"rukopys": 3} (default 1)
    source_weights: dict[str, Number] = Field(default_factory=dict)
    val_fraction: Number = 0.15
    use_synthetic: bool = True
    synthetic_limit: int | None = None
    mnist_limit: int | None = 0  #: MNIST training digits mixed into fine-tuning
    use_strokes: bool = True  #: the rendered sketchpad drawings (strokes_train.npz) join fine-tuning
    #: K > 1: fine-tune K networks (seeds seed..seed+K-1) and serve their averaged probabilities; checked by
    #: :func:`~ukr_hw.training.finetune.finetune` (a config may hold a count it refuses)
    members: int | None = 1
    #: P(upper) above which a letter is uppercase, stored with the model (NetConfig)
    case_threshold: Annotated[Number | None, BeforeValidator(_probability)] = 0.5
    case_threshold_fit: CaseThresholdFit = Field(default_factory=CaseThresholdFit)
    abstain: AbstainSettings = Field(default_factory=AbstainSettings)
    #: share of a nearest-neighbour vote over each member's training glyphs in its symbol probabilities (0: off)
    knn_weight: Number = 0.0
    knn_k: int = 5
    knn_temperature: Number = 0.1
    #: share of a case vote of the remembered letters of the predicted symbol nearest in style and size (0: off)
    knn_case_weight: Number = 0.0
    knn_ink_scale: Number = 2.0  #: how much the ink boxes' L1 distance counts against embedding similarity


#: ``retrain``: finetune keys, only those given
RetrainSection = partial(FinetuneSection, "RetrainSection")


class TrainConfig(Section):
    """``configs/train.yaml``: every key a training config may set, with its default."""

    seed: int = 42
    net: NetSection = Field(default_factory=NetSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    #: fine-tune augmentation, see :class:`ukr_hw.model.augment.AugmentConfig` (its defaults for keys left out)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    #: finetune keys that replace those above when retraining (ukr-hw retrain)
    retrain: Annotated[RetrainSection, BeforeValidator(_mapping_of_finetune_keys)] = Field(
        default_factory=RetrainSection
    )

    @classmethod
    def load(cls, path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """The YAML file ← the files it lists under ``merge:`` (relative to it; skipped if absent) ← overrides."""
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            data = read_yaml(path)
            merged = data.pop("merge", None) or []
            for m in merged:
                mp = (path.parent / m) if not Path(m).is_absolute() else Path(m)
                if mp.exists():
                    data = deep_merge(data, read_yaml(mp))
        return cls.from_dict(apply_overrides(data, overrides))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Validate a nested mapping; :class:`ConfigError` names each wrong key."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise config_error(exc, cls) from None

    @classmethod
    def coerce(cls, config: TrainConfig | Mapping[str, Any]) -> TrainConfig:
        """``config`` itself, or the mapping validated (what :func:`load_config` returns, or a changed copy)."""
        return config if isinstance(config, TrainConfig) else cls.from_dict(config)

    def override(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """A validated copy with dotted keys set (``{"finetune.members": 1, "seed": 43}``)."""
        return self.from_dict(apply_overrides(self.to_dict(), overrides))

    def to_dict(self) -> dict[str, Any]:
        """The nested plain dict (what YAML holds); partial sections hold only their given keys."""
        return self.model_dump()


class SearchDimension(Section):
    """One dotted key of a tune search space and its distribution."""

    type: Literal["float", "int", "categorical"] = "float"
    low: Number | None = None
    high: Number | None = None
    log: bool = False
    choices: list[Any] | None = None


class TuneConfig(Section):
    """``configs/tune.yaml``: an Optuna study over the fine-tune config (:mod:`ukr_hw.training.tune`)."""

    base: str | None = None  #: the training config the trials start from (relative to the tune file)
    overrides: dict[str, Any] = Field(default_factory=dict)  #: dotted keys applied to every trial
    metric: str = "val/score"  #: validation metric to maximise (never the frozen test split)
    repeats: int = 1  #: fine-tunes per trial (seeds seed, seed+1, …: other validation slices), scored by their mean
    sampler: dict[str, Any] = Field(default_factory=dict)  #: TPESampler arguments
    pruner: dict[str, Any] | None = None  #: ``type`` (median, threshold, none) + the pruner's arguments
    best_params_path: str = "best_params.yaml"
    space: dict[str, SearchDimension]
    base_path: str | None = None  #: ``base`` resolved against the tune file (set by :meth:`load`)

    @classmethod
    def load(cls, path: Path | str) -> TuneConfig:
        path = Path(path)
        data = read_yaml(path)
        if not isinstance(data.get("space"), Mapping) or not data["space"]:
            raise ConfigError(f"{path}: needs a non-empty `space:` mapping of dotted config keys to distributions")
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, cls, f"{path}: ") from None
        base, best = cfg.base, cfg.best_params_path
        return cfg.model_copy(
            update={
                "base_path": str(path.parent / base if not Path(base).is_absolute() else base) if base else None,
                "best_params_path": str(best if Path(best).is_absolute() else path.parent / best),
            }
        )


# --- reading and merging ---------------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found; pass --config with an existing YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` over ``base``, mappings merged key by key (copies: neither input changes)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


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


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:meth:`TrainConfig.load` as the plain nested dict (``config["finetune"]["lr"]``)."""
    return TrainConfig.load(path, overrides).to_dict()


def flat_params(config: TrainConfig | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"finetune.lr": 0.003, …}`` for logging as MLflow params."""
    if isinstance(config, BaseModel):
        config = config.model_dump()
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- errors ----------------------------------------------------------------------------------------------------


def config_error(exc: ValidationError, model: type[BaseModel], where: str = "") -> ConfigError:
    """One :class:`ConfigError` for every problem pydantic found, each naming its dotted key."""
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            known = _keys_at(model, loc[:-1])
            problems.append(f"unknown config key {key!r}" + (f"; known keys here: {known}" if known else ""))
        else:
            if err["type"] == "value_error":  # our own checks' messages say what they got
                problems.append(f"config key {key!r}: {err['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"config key {key!r}: {err['msg']} (got {err['input']!r})")
    return ConfigError(where + "; ".join(problems))


def _keys_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The keys the section at ``loc`` knows (empty when ``loc`` is not a section)."""
    node: Any = model
    for part in loc:
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            return []
        node = _section_type(node.model_fields[part].annotation)
    return sorted(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):  # Annotated[...], X | None
        found = _section_type(arg)
        if found is not None:
            return found
    return None
