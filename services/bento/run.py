"""``ukr-hw serve`` and ``ukr-hw bento build``: the champion into the BentoML store, then ``bentoml serve``/``build``.

The champion (``models:/<model_name>@champion`` in ``settings.resolved_tracking_uri()``) is imported with
``bentoml.mlflow.import_model`` as ``<model_name>:mlflow-v<N>`` (label/metadata ``mlflow_version=N``) unless that
tag is already in the store; the service then starts on it (env ``UKR_HW_BENTO_MODEL``) and follows the alias
at runtime (see :mod:`services.bento.service`).

Registry down at start: ``ukr-hw serve`` serves the newest ``<model_name>:*`` model already in the BentoML store
instead of exiting, prints a warning, and tells the service (env ``UKR_HW_SERVE_REGISTRY_ERROR``), which reports
``source: "store (registry unreachable)"`` on ``/info`` and ``/readyz``, ``ukr_hw_registry_reachable 0`` and
``ukr_hw_model_store_fallback 1`` in ``/metrics`` until the registry answers again.

``ukr-hw bento build`` imports the champion the same way and runs ``bentoml build -f services/bento/bentofile.yaml``
with it: the Bento packs that model, the code (``ukr_hw``, ``services/bento``) and its own runtime requirements
(``deploy/requirements-bento.txt``), so ``bentoml serve <tag>`` runs it anywhere and ``bentoml containerize <tag>``
makes the API image.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ukr_hw.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
SERVICE = "services.bento.service:UkrHwApi"
BENTOFILE = REPO / "services" / "bento" / "bentofile.yaml"
#: the service's ``source`` while it serves the store's newest model because the registry was down at start
STORE_FALLBACK = "store (registry unreachable)"


class NoChampionError(RuntimeError):
    pass


class NoModelError(RuntimeError):
    """Neither the registry (unreachable) nor the BentoML store can give a model to serve."""


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServedModel:
    """The BentoML model to start on: the registry's champion, or the store's newest one when the registry is down."""

    tag: str
    version: str | None
    source: str  #: "registry" or STORE_FALLBACK
    registry_error: str | None = None
    store: str | None = None  #: BENTOML_HOME, with the fallback


def bento_tag(settings: Settings, version: str) -> str:
    return f"{settings.model_name}:mlflow-v{version}"


def bentoml_home() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


def import_champion(settings: Settings | None = None) -> str:
    """Import the current champion into the BentoML store (once per version); return the BentoML tag.

    Raises :class:`NoChampionError` when the registry has no champion and
    :class:`ukr_hw.inference.RegistryUnavailableError` when it cannot be reached."""
    import bentoml

    from ukr_hw.inference import ModelNotFoundError, resolve_model_uri

    s = settings or get_settings()
    try:
        uri, version = resolve_model_uri(None, s)
    except ModelNotFoundError as exc:  # (RegistryUnavailableError is not this: it propagates with its own message)
        raise NoChampionError(f"no champion model in {s.resolved_tracking_uri()}; run `ukr-hw train` ({exc})") from exc
    tag = bento_tag(s, str(version))
    try:
        bentoml.models.get(tag)
        return tag
    except bentoml.exceptions.NotFound:
        pass
    import mlflow

    mlflow.set_tracking_uri(s.resolved_tracking_uri())
    mlflow.set_registry_uri(s.resolved_tracking_uri())
    bentoml.mlflow.import_model(
        tag,
        uri,
        labels={"mlflow_version": str(version), "mlflow_model": s.model_name},
        metadata={"mlflow_version": str(version), "mlflow_uri": uri, "tracking_uri": s.resolved_tracking_uri()},
    )
    return tag


def newest_stored_model(settings: Settings | None = None) -> ServedModel | None:
    """The ``<model_name>:*`` model imported last into the BentoML store (None: the store has none)."""
    import bentoml

    s = settings or get_settings()
    try:
        models = bentoml.models.list(s.model_name)
    except bentoml.exceptions.NotFound:  # BentoML's answer for a name with no model
        return None
    if not models:
        return None
    newest = max(models, key=lambda m: m.info.creation_time)
    info = newest.info
    version = info.labels.get("mlflow_version") or (info.metadata or {}).get("mlflow_version")
    return ServedModel(tag=str(newest.tag), version=version, source=STORE_FALLBACK)


def resolve_served_model(settings: Settings | None = None) -> ServedModel:
    """The champion, imported; when the registry is unreachable, the newest model already in the BentoML store."""
    from ukr_hw.inference import RegistryUnavailableError

    s = settings or get_settings()
    try:
        tag = import_champion(s)
    except RegistryUnavailableError as exc:
        stored = newest_stored_model(s)
        if stored is None:
            raise NoModelError(
                f"{exc}; and the BentoML store ({bentoml_home()}) holds no {s.model_name} model to serve meanwhile: "
                "start the registry (or point UKR_HW_MLFLOW_TRACKING_URI at it) and run `ukr-hw serve` again"
            ) from exc
        return ServedModel(stored.tag, stored.version, STORE_FALLBACK, registry_error=str(exc), store=bentoml_home())
    return ServedModel(tag=tag, version=tag.rsplit("mlflow-v", 1)[-1], source="registry")


def command(port: int, host: str) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(port), "--host", host]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # an unreachable registry must fail fast (MLflow's default retries a refused connection for about 2 minutes)
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return env


def _resolve_in_child(fallback: bool = True) -> ServedModel:
    """:func:`resolve_served_model` (``fallback``) or :func:`import_champion` in a short-lived child process:
    importing bentoml, mlflow and the model's stack would otherwise stay resident (~500 MB) in this process, which
    then only waits on the server."""
    call = "resolve_served_model()" if fallback else "ServedModel(import_champion(), None, 'registry')"
    code = (
        "import json, dataclasses; from services.bento.run import ServedModel, import_champion, resolve_served_model; "
        f"print(json.dumps(dataclasses.asdict({call})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_child_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        err = done.stderr.strip()
        for name, error in (("NoChampionError", NoChampionError), ("NoModelError", NoModelError)):
            if f"{name}: " in err:
                raise error(err.rsplit(f"{name}: ", 1)[-1])
        if "RegistryUnavailableError: " in err:
            raise RuntimeError(err.rsplit("RegistryUnavailableError: ", 1)[-1])
        raise RuntimeError(f"importing the champion failed:\n{err[-3000:]}")
    return ServedModel(**json.loads(done.stdout.strip().splitlines()[-1]))


def serve(port: int | None = None, host: str | None = None) -> int:
    """Import the champion, then run the BentoML server in the foreground; its exit code is returned."""
    s = get_settings()
    try:
        model = _resolve_in_child()
    except (NoChampionError, NoModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # a reload token even on a fresh machine: `ukr-hw retrain` / `promote` read it from settings.admin_token_file
    env = {**os.environ, "UKR_HW_BENTO_MODEL": model.tag, "UKR_HW_ADMIN_TOKEN": s.ensure_admin_token()}
    env.pop("UKR_HW_SERVE_REGISTRY_ERROR", None)
    if model.registry_error:
        env["UKR_HW_SERVE_REGISTRY_ERROR"] = model.registry_error
        follows = (
            f"it switches to the champion at the first registry check that answers (every {s.reload_interval_s:g} s)"
            if s.reload_interval_s > 0
            else "it will not follow the champion (UKR_HW_RELOAD_INTERVAL_S=0): restart it once the registry is back"
        )
        print(
            f"warning: {model.registry_error}\nwarning: serving {model.tag}, the newest model in the BentoML store "
            f"({model.store}), instead of the registry's champion; {follows}. /readyz and /info say "
            f'"source": "{STORE_FALLBACK}", /metrics ukr_hw_model_store_fallback 1.',
            file=sys.stderr,
            flush=True,
        )
    cmd = command(port or s.api_port, host or s.api_host)
    print(f"serving {model.tag} on http://{host or s.api_host}:{port or s.api_port} ({' '.join(cmd[2:])})", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)

    def forward(signum: int, _frame: object) -> None:  # a terminated `ukr-hw serve` stops its server too
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the Bento ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltBento:
    tag: str  #: the Bento's tag, e.g. ``ukr-hw-api:abc123``
    model: str  #: the BentoML model it packs, e.g. ``ukr-hw:mlflow-v3``

    @property
    def containerize(self) -> str:
        return f"bentoml containerize {self.tag}"


def build_bento(model: str | None = None, version: str | None = None) -> BuiltBento:
    """``bentoml build`` the API with the registry's champion (imported first), or ``model`` (a tag in the store).

    ``version`` sets the Bento's version (default: generated). Raises :class:`BuildError` with BentoML's message."""
    if model is None:
        model = _resolve_in_child(fallback=False).tag
    m = re.search(r"mlflow-v(\d+)$", model)
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE), "--output", "tag"]
    if m:
        cmd += ["--label", f"mlflow_version={m.group(1)}"]
    if version:
        cmd += ["--version", version]
    # the service's class attribute `bento_model` reads the model tag at import: this is what the Bento packs
    env = {**_child_env(), "UKR_HW_BENTO_MODEL": model}
    done = subprocess.run([*cmd, str(REPO)], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    tags = re.findall(r"__tag__:(\S+)", done.stdout)
    if done.returncode != 0 or not tags:
        detail = (done.stderr.strip() or done.stdout.strip())[-3000:]
        raise BuildError(f"`bentoml build` with model {model} failed (exit {done.returncode}):\n{detail}")
    return BuiltBento(tag=tags[-1], model=model)


def build(model: str | None = None, version: str | None = None) -> int:
    """``ukr-hw bento build``: build the Bento, print its tag (stdout, JSON) and what to run next (stderr)."""
    try:
        built = build_bento(model, version)
    except (NoChampionError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. the registry is unreachable: name a stored model with --model
        print(
            f"error: {exc}\n(to build from a model already in the BentoML store: --model ukr-hw:mlflow-vN)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps({**asdict(built), "containerize": built.containerize}), flush=True)
    print(
        f"built {built.tag} with {built.model}.\n  serve it:        bentoml serve {built.tag}\n"
        f"  the API image:   {built.containerize}   (needs Docker; see docs/deploy.md)",
        file=sys.stderr,
    )
    return 0
