"""Inference: load a registered model without pickles and classify glyphs, arrays or image files.

The one place that turns network outputs into the public result shape used by the CLI, the API and the UI::

    {"label": "ї", "is_uppercase": true, "case_probability": 0.93,
     "top": [{"label": "ї", "probability": 0.91}, … 5 entries], "model_version": "3", "mode": "any"}

``label`` is the lowercase symbol; ``is_uppercase`` / ``case_probability`` are ``null`` for digits.

``abstained`` / ``abstain_reason``: the model's answer when what it was given is not one symbol (noise, a photo, a
scribble, two letters side by side; :mod:`ukr_hw.model.abstain`): ``true`` and why, from the ink statistics of the
image or from the model's energy above its stored ``abstain_energy`` (its confidence below ``abstain_threshold``
where only probabilities are passed); ``false`` / ``null`` otherwise. The
label and top 5 are still given (the best guess); the API answers ``/classify`` with 422 instead, the sketchpad says
"I can't read one symbol there — draw one letter or digit".

``mode`` is the restriction the answer was read under (:func:`restrict`): ``"any"`` (all 43 symbols, the default),
``"letters"`` or ``"digits"``. «З»/«3», «О»/«0» and «Ь»/«6» are one drawing, so a caller that knows which kind of
symbol it expects says so; the excluded classes are zeroed and the rest renormalised, so ``label``, ``top`` and the
probabilities are over the allowed symbols only. It is post-processing of the model's probabilities (no other
model); the case output is as without it.

A model is loaded from the registry (``models:/ukr-hw@champion`` by default) by downloading its two artifacts,
``config.json`` (the :class:`~ukr_hw.model.network.NetConfig`) and ``state_dict.pt`` (weights only), and
rebuilding the network with :func:`~ukr_hw.model.network.build_network` — no pickled classes, no pyfunc layer.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from ukr_hw.labels import NUM_CLASSES, has_case, is_digit, symbol_of
from ukr_hw.preprocess import VERSION as PREPROCESS_VERSION
from ukr_hw.settings import Settings, get_settings

if TYPE_CHECKING:  # torch and the network are imported where used: the modes below need neither (UI, feedback)
    import torch

    from ukr_hw.model.network import Network

log = logging.getLogger(__name__)

TOP_K = 5
DECIMALS = 5
STATE_DICT_FILE = "state_dict.pt"
CONFIG_FILE = "config.json"


class ModelNotFoundError(RuntimeError):
    """No model under the requested URI (e.g. nothing registered as champion yet)."""


# --------------------------------------------------------------------------------------------------------------
# Restriction: letters only, digits only, or any symbol

#: Which symbols an answer may name: every one, the 33 letters, or the 10 digits.
Mode = Literal["any", "letters", "digits"]
MODES: tuple[Mode, ...] = get_args(Mode)
DEFAULT_MODE: Mode = "any"
_ALLOWED: dict[str, np.ndarray] = {
    "any": np.ones(NUM_CLASSES, dtype=bool),
    "letters": np.array([not is_digit(i) for i in range(NUM_CLASSES)]),
    "digits": np.array([is_digit(i) for i in range(NUM_CLASSES)]),
}


class RegistryUnavailableError(RuntimeError):
    """The model registry (MLflow tracking server or its database) could not be reached: an outage, not a
    missing champion (:class:`ModelNotFoundError`)."""


#: MLflow error codes that mean "no such model/version/alias", not "the registry is down"
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


class InvalidModeError(ValueError):
    """A restriction other than the allowed :data:`MODES`; the message names them."""


def parse_mode(mode: str | None) -> Mode:
    """The canonical :data:`Mode` for ``mode``: ``None`` or ``""`` is ``"any"``; case and spaces do not matter.

    Raises :class:`InvalidModeError` (a ``ValueError``) naming the allowed values for anything else.
    """
    if mode is None:
        return DEFAULT_MODE
    text = mode.strip().lower() if isinstance(mode, str) else None
    if text == "":
        return DEFAULT_MODE
    if text not in MODES:
        shown = repr(mode) if len(repr(mode)) <= 40 else repr(mode)[:37] + "..."
        raise InvalidModeError(
            f"unknown mode {shown}: use one of {', '.join(MODES)} "
            "(letters: only the 33 letters, digits: only 0-9, any: every symbol)"
        )
    return text  # type: ignore[return-value]


def restrict(probs: np.ndarray, mode: str | None = DEFAULT_MODE) -> np.ndarray:
    """Symbol probabilities (43,) or (N, 43) restricted to what ``mode`` allows: the excluded classes are set to
    0 and each row is renormalised to sum to 1 over the allowed ones (uniform over them when the model gave them
    all 0). ``"any"`` returns the probabilities unchanged. Raises :class:`InvalidModeError` for an unknown mode.

    The one place the restriction is made: :func:`format_result` applies it, so the Predictor, ``ukr-hw predict``,
    the API's model service and (through the API) the UI all go through it.
    """
    mode = parse_mode(mode)
    p = np.asarray(probs)
    if p.shape[-1:] != (NUM_CLASSES,):
        raise ValueError(f"expected {NUM_CLASSES} symbol probabilities per row, got shape {p.shape}")
    if mode == "any":
        return p
    dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64
    mask = _ALLOWED[mode]
    kept = np.where(mask, p.astype(np.float64), 0.0)
    total = kept.sum(axis=-1, keepdims=True)
    uniform = np.broadcast_to(mask / mask.sum(), kept.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, kept / np.where(total > 0, total, 1.0), uniform)
    return out.astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------------------------
# Loading


def champion_uri(settings: Settings | None = None) -> str:
    s = settings or get_settings()
    return f"models:/{s.model_name}@{s.champion_alias}"


def resolve_model_uri(model_uri: str | None = None, settings: Settings | None = None) -> tuple[str, str | None]:
    """``(uri with a numeric version, version)``: ``models:/name@alias`` is resolved to ``models:/name/N`` so that
    what is loaded and the version it reports cannot drift apart when the alias moves meanwhile."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    s = settings or get_settings()
    uri = model_uri or champion_uri(s)
    if not uri.startswith("models:/"):
        return uri, None
    name_ref = uri[len("models:/") :].strip("/")
    tracking_uri = s.resolved_tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if "@" in name_ref:
            name, alias = name_ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, _, ref = name_ref.partition("/")
            if ref.isdigit():
                version = ref
            else:  # "latest" or a stage name
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise ModelNotFoundError(f"no versions of model {name!r} in {tracking_uri}")
                version = str(max(int(v.version) for v in versions))
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND_CODES:
            raise RegistryUnavailableError(f"model registry {tracking_uri} unreachable: {exc.message}") from exc
        if model_uri is None or uri == champion_uri(s):
            raise ModelNotFoundError(
                f"no model registered as {s.model_name}@{s.champion_alias} in {tracking_uri}: run `ukr-hw train` first"
            ) from exc
        raise ModelNotFoundError(f"model {uri} not found in {tracking_uri}: {exc.message}") from exc
    except ModelNotFoundError:
        raise
    except Exception as exc:  # requests' connection errors, SQLAlchemy's OperationalError (a database backend)
        raise RegistryUnavailableError(
            f"model registry {tracking_uri} unreachable: {exc.__class__.__name__}: {exc}"
        ) from exc
    return f"models:/{name}/{version}", str(version)


def _find(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    if not hits:
        raise ModelNotFoundError(f"the model at {root} has no {name}; was it logged with ukr_hw.registry?")
    return hits[0]


def load_net_from_files(config_path: Path | str, state_path: Path | str) -> Network:
    """Rebuild the network from a logged model's ``config.json`` and ``state_dict.pt``, in eval mode.

    Warns when the model was trained on another preprocessing version than this code makes.
    """
    import torch

    from ukr_hw.model.network import build_network

    config = json.loads(Path(config_path).read_text())
    trained_on = int(config.get("preprocess_version", 1))  # models logged before the version was recorded: 1
    if trained_on != PREPROCESS_VERSION:
        log.warning(
            "the model at %s was trained on preprocessing version %d, this code makes version %d: its inputs are "
            "skewed and accuracy may drop; retrain it with this code (`ukr-hw train`)",
            Path(config_path).parent,
            trained_on,
            PREPROCESS_VERSION,
        )
    net = build_network(config)
    net.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    return net.eval()


def load_net_from_dir(model_dir: Path | str) -> Network:
    """Rebuild the network from a logged model's folder (``config.json`` + ``state_dict.pt`` anywhere below)."""
    root = Path(model_dir)
    return load_net_from_files(_find(root, CONFIG_FILE), _find(root, STATE_DICT_FILE))


def load_net(model_uri: str | None = None, settings: Settings | None = None) -> tuple[Network, str | None]:
    """``(net, version)`` for a model URI (default: the champion). Accepts ``models:/…``, ``runs:/…`` and paths."""
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    s = settings or get_settings()
    uri, version = resolve_model_uri(model_uri, s)
    if os.path.isdir(uri):
        return load_net_from_dir(uri), version
    tracking_uri = s.resolved_tracking_uri()
    if uri.startswith("models:/"):  # the version's storage location, asked of this store (no process-wide URI)
        from mlflow import MlflowClient

        model_name, _, number = uri[len("models:/") :].partition("/")
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        uri = client.get_model_version_download_uri(model_name, number)
    with tempfile.TemporaryDirectory(prefix="ukr-hw-model-") as tmp:
        try:
            for name in (CONFIG_FILE, STATE_DICT_FILE):  # only the two files we need, not the whole model folder
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{uri}/artifacts/{name}", dst_path=tmp, tracking_uri=tracking_uri
                )
        except Exception:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri)
            return load_net_from_dir(local), version
        return load_net_from_dir(tmp), version


# --------------------------------------------------------------------------------------------------------------
# Results


def _r(p: float) -> float:
    return round(float(p), DECIMALS)


def format_result(
    probs: np.ndarray,
    case_prob: float,
    model_version: str | None,
    mode: str | None = DEFAULT_MODE,
    abstain_threshold: float = 0.0,
    ink_reason: str | None = None,
    energy: float | None = None,
    abstain_energy: float | None = None,
) -> dict[str, Any]:
    """The public result for one glyph from its symbol probabilities (43,) and P(uppercase), read under ``mode``
    (:func:`restrict`: label, top-k and probabilities over the allowed symbols only; the mode is reported).

    It abstains (``abstained: true``) for ``ink_reason`` (the image's ink is not one symbol:
    :func:`ukr_hw.model.abstain.ink_reason`) or when the model does not know it: its ``energy`` (from
    :meth:`Predictor.predict_outputs`) above ``abstain_energy`` (the model's own, :attr:`Predictor.abstain_energy`)
    when both are given, else the largest of the 43 probabilities, before the restriction, below
    ``abstain_threshold`` (:attr:`Predictor.abstain_threshold`; 0: never)."""
    from ukr_hw.model.abstain import model_reason

    mode = parse_mode(mode)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape[0] != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} symbol probabilities, got {probs.shape[0]}")
    # over every symbol, before the restriction: a restriction must not make noise look like a letter
    reason = ink_reason or model_reason(
        probs, abstain_threshold, None if energy is None else float(energy), abstain_energy
    )
    probs = restrict(probs, mode)
    order = np.argsort(-probs, kind="stable")[:TOP_K]
    best = int(order[0])
    label = symbol_of(best)
    cased = has_case(best)
    return {
        "label": label,
        "is_uppercase": bool(case_prob >= 0.5) if cased else None,
        "case_probability": _r(case_prob) if cased else None,
        "top": [{"label": symbol_of(int(i)), "probability": _r(probs[i])} for i in order],
        "model_version": None if model_version is None else str(model_version),
        "mode": mode,
        "abstained": reason is not None,
        "abstain_reason": reason,
    }


# --------------------------------------------------------------------------------------------------------------
# Predictor


class Predictor:
    """A network in eval mode plus the version it came from; thread-safe for inference."""

    def __init__(self, net: torch.nn.Module, model_version: str | None = None, batch_size: int = 256) -> None:
        self.net = net.eval()
        self.model_version = None if model_version is None else str(model_version)
        self.batch_size = batch_size

    @classmethod
    def from_uri(cls, model_uri: str | None = None, settings: Settings | None = None) -> Predictor:
        """Load ``model_uri`` (default ``models:/<model_name>@champion``), resolving aliases to a version."""
        net, version = load_net(model_uri, settings)
        return cls(net, version)

    @classmethod
    def from_dir(cls, model_dir: Path | str, model_version: str | None = None) -> Predictor:
        return cls(load_net_from_dir(model_dir), model_version)

    @property
    def abstain_threshold(self) -> float:
        """The model's stored confidence threshold for abstaining (0 for models logged without one: never)."""
        return float(getattr(self.net.config, "abstain_threshold", 0.0) or 0.0)

    @property
    def abstain_energy(self) -> float | None:
        """The model's stored energy threshold for abstaining (None for models logged without one)."""
        value = getattr(self.net.config, "abstain_energy", None)
        return None if value is None else float(value)

    def predict_arrays(self, x: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (N,28,28) float in [0,1] (uint8 0-255 accepted), ``ink`` (N,2) → ``(probs (N,43), P(upper) (N,))``."""
        from ukr_hw.model.network import predict_arrays

        return predict_arrays(self.net, x, ink, self.batch_size)

    def predict_outputs(self, x: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict_arrays`'s ``(probs, P(upper))`` and each glyph's energy (N,), from the same forward pass:
        pass it to :func:`format_result` with :attr:`abstain_energy`."""
        from ukr_hw.model.network import predict_outputs

        return predict_outputs(self.net, x, ink, self.batch_size)

    def predict_glyphs(
        self, glyphs: Sequence[Any], mode: str | None = DEFAULT_MODE, ink_reasons: Sequence[str | None] | None = None
    ) -> list[dict[str, Any]]:
        """Results for preprocessed :class:`~ukr_hw.preprocess.Glyph` objects, read under ``mode``; ``ink_reasons``
        (one per glyph, from :func:`ukr_hw.model.abstain.ink_reason`) make those results abstain."""
        mode = parse_mode(mode)
        if not glyphs:
            return []
        reasons = list(ink_reasons) if ink_reasons is not None else [None] * len(glyphs)
        if len(reasons) != len(glyphs):
            raise ValueError(f"{len(glyphs)} glyphs but {len(reasons)} ink reasons; pass one (or None) per glyph")
        x = np.stack([g.pixels for g in glyphs]).astype(np.float32)
        ink = np.stack([g.features for g in glyphs]).astype(np.float32)
        probs, case, energy = self.predict_outputs(x, ink)
        t, te = self.abstain_threshold, self.abstain_energy
        return [
            format_result(p, float(c), self.model_version, mode, t, r, float(e), te)
            for p, c, r, e in zip(probs, case, reasons, energy, strict=True)
        ]

    def predict_sources(self, sources: Sequence[Any], mode: str | None = DEFAULT_MODE) -> list[dict[str, Any]]:
        """Preprocess (the one path, with the ink statistics: :func:`ukr_hw.model.abstain.analyse`) and predict
        images given as paths, bytes, PIL images, arrays or dicts."""
        from ukr_hw.model.abstain import analyse, ink_reason

        mode = parse_mode(mode)
        analysed = [analyse(s) for s in sources]
        return self.predict_glyphs([g for g, _ in analysed], mode, [ink_reason(s) for _, s in analysed])


# --------------------------------------------------------------------------------------------------------------
# Files


def _preprocess_one(path: str) -> tuple[np.ndarray, np.ndarray, str | None] | str:
    """(pixels, ink features, ink-rule reason or None) or the error message; runs in worker processes."""
    from ukr_hw.model.abstain import analyse, ink_reason
    from ukr_hw.preprocess import PreprocessError

    try:
        g, stats = analyse(Path(path))
    except PreprocessError as exc:
        return str(exc)
    except Exception as exc:
        return f"cannot process {path}: {exc.__class__.__name__}: {exc}"
    return g.pixels.astype(np.float32), g.features, ink_reason(stats)


def _preprocess_chunk(paths: list[str]) -> list[tuple[np.ndarray, np.ndarray, str | None] | str]:
    return [_preprocess_one(p) for p in paths]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_paths(
    paths: Iterable[str | Path],
    model_uri: str | None = None,
    batch_size: int = 256,
    *,
    predictor: Predictor | None = None,
    workers: int | None = None,
    settings: Settings | None = None,
    mode: str | None = DEFAULT_MODE,
) -> Iterator[dict[str, Any]]:
    """Classify image files in input order: ``{"path", **result}`` or ``{"path", "error"}`` for a bad file.

    ``mode`` restricts the answers (:func:`restrict`); an unknown one raises :class:`InvalidModeError` before any
    work (when the iteration starts). The model is loaded once; files are preprocessed in chunks (in a process pool
    when there are many) and predicted in batches of ``batch_size``.
    """
    mode = parse_mode(mode)
    items = [str(p) for p in paths]
    if not items:
        return
    pred = predictor or Predictor.from_uri(model_uri, settings)
    pred.batch_size = batch_size
    chunk = max(16, min(batch_size, 256))
    n_workers = workers if workers is not None else (min(os.cpu_count() or 1, 4) if len(items) >= 512 else 0)

    def emit(
        batch: list[str], prepped: list[tuple[np.ndarray, np.ndarray, str | None] | str]
    ) -> Iterator[dict[str, Any]]:
        good = [i for i, r in enumerate(prepped) if not isinstance(r, str)]
        results: dict[int, dict[str, Any]] = {}
        if good:
            x = np.stack([prepped[i][0] for i in good])  # type: ignore[index]
            ink = np.stack([prepped[i][1] for i in good])  # type: ignore[index]
            probs, case, energy = pred.predict_outputs(x, ink)
            for j, i in enumerate(good):
                reason = prepped[i][2]  # type: ignore[index]
                results[i] = format_result(
                    probs[j],
                    float(case[j]),
                    pred.model_version,
                    mode,
                    pred.abstain_threshold,
                    reason,
                    float(energy[j]),
                    pred.abstain_energy,
                )
        for i, path in enumerate(batch):
            r = prepped[i]
            yield {"path": path, "error": r} if isinstance(r, str) else {"path": path, **results[i]}

    if n_workers > 1:
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            batches = list(_chunks(items, chunk))
            for batch, prepped in zip(batches, pool.map(_preprocess_chunk, batches), strict=True):
                yield from emit(batch, prepped)
    else:
        for batch in _chunks(items, chunk):
            yield from emit(batch, [_preprocess_one(p) for p in batch])
