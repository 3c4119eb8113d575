"""``ukr-hw serve``: import the registry's champion into the BentoML store, then run ``bentoml serve``.

The champion (``models:/<model_name>@champion`` in ``settings.resolved_tracking_uri()``) is imported with
``bentoml.mlflow.import_model`` as ``<model_name>:mlflow-v<N>`` (label/metadata ``mlflow_version=N``) unless that
tag is already in the store; the service then starts on it (env ``UKR_HW_BENTO_MODEL``) and follows the alias
at runtime (see :mod:`services.bento.service`). ``bentoml build -f services/bento/bentofile.yaml`` afterwards packs
the imported model into a Bento.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ukr_hw.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
SERVICE = "services.bento.service:UkrHwApi"


class NoChampionError(RuntimeError):
    pass


def bento_tag(settings: Settings, version: str) -> str:
    return f"{settings.model_name}:mlflow-v{version}"


def import_champion(settings: Settings | None = None) -> str:
    """Import the current champion into the BentoML store (once per version); return the BentoML tag."""
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


def command(port: int, host: str) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(port), "--host", host]


def _import_in_child() -> str:
    """:func:`import_champion` in a short-lived child process: importing bentoml, mlflow and the model's stack would
    otherwise stay resident (~500 MB) in this process, which then only waits on the server."""
    code = "from services.bento.run import import_champion; print(import_champion())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        err = done.stderr.strip()
        if "NoChampionError" in err:
            raise NoChampionError(err.rsplit("NoChampionError: ", 1)[-1])
        raise RuntimeError(f"importing the champion failed:\n{err[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def serve(port: int | None = None, host: str | None = None) -> int:
    """Import the champion, then run the BentoML server in the foreground; its exit code is returned."""
    s = get_settings()
    try:
        tag = _import_in_child()
    except NoChampionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. the registry is unreachable
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # a reload token even on a fresh machine: `ukr-hw retrain` / `promote` read it from settings.admin_token_file
    env = {**os.environ, "UKR_HW_BENTO_MODEL": tag, "UKR_HW_ADMIN_TOKEN": s.ensure_admin_token()}
    cmd = command(port or s.api_port, host or s.api_host)
    print(f"serving {tag} on http://{host or s.api_host}:{port or s.api_port} ({' '.join(cmd[2:])})", flush=True)
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
