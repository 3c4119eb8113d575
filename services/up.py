"""``ukr-hw up``: the one command for the embedded default.

1. If the registry (``settings.mlflow_tracking_uri``, a local SQLite file by default) has no champion, run the
   training pipeline first (``flows.pipeline.pipeline``: prepare → train → register/promote).
2. Start the BentoML API (``ukr-hw serve``) and the Gradio UI (``ukr-hw ui``) as child processes, each in its own
   process group; wait until both answer; print both URLs.
3. Ctrl-C (SIGINT) or SIGTERM stops both cleanly (exit 0). If either dies on its own, the other is stopped and
   ``up`` exits non-zero.

Feedback goes where ``settings.feedback_uri`` says (a local folder by default).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from ukr_hw.api_client import ApiClient
from ukr_hw.ops import StackError
from ukr_hw.ops.ports import require_free_port
from ukr_hw.ops.processes import ManagedProcess, ProcessExited
from ukr_hw.ops.wait import NotReady, http_ok, wait_until
from ukr_hw.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600.0


class _Stop(BaseException):
    """Raised by the signal handler to leave the wait loops (like KeyboardInterrupt, not an error to retry)."""


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _say(msg: str) -> None:
    print(f"[ukr-hw up] {msg}", flush=True)


def ensure_champion(settings: Settings) -> str:
    """The champion's version, training one first (the full pipeline) when the registry has none."""
    from ukr_hw import registry

    version = registry.champion_version(settings)
    if version is not None:
        return version
    _say(f"no champion model in {settings.resolved_tracking_uri()}: training one first (prepare → train) …")
    from flows.pipeline import pipeline

    pipeline(config_path=REPO / "configs" / "train.yaml")
    version = registry.champion_version(get_settings())
    if version is None:
        raise RuntimeError("the training pipeline finished without a champion model; see its log above")
    return version


def _start(name: str, args: list[str]) -> ManagedProcess:
    # log_path None: the API's and the UI's output goes where `ukr-hw up`'s goes
    proc = ManagedProcess(name, args, log_path=None, cwd=REPO)
    proc.start()
    _say(f"started {name} (pid {proc.pid}): {' '.join(args[1:])}")
    return proc


def _stop(procs: dict[str, ManagedProcess]) -> None:
    for name, proc in procs.items():
        if proc.alive():
            _say(f"stopping {name} …")
        proc.stop(timeout=20.0)


def _wait_ready(procs: dict[str, ManagedProcess], client: ApiClient, ui_url: str) -> None:
    """Until the API and the UI both answer; :class:`ProcessExited` when one dies first, :class:`NotReady` after
    :data:`READY_TIMEOUT_S`. Says every 15 s what it still waits for."""
    ready = {"API": False, "UI": False}
    last_note = [0.0]

    def both_ready() -> bool:
        for name, proc in procs.items():
            if not proc.alive():
                raise ProcessExited(f"{name} exited with code {proc.returncode} before it was ready")
        ready["API"] = ready["API"] or client.ready()
        ready["UI"] = ready["UI"] or http_ok(ui_url + "/config")
        return all(ready.values())

    def note(waited: float) -> None:
        if waited - last_note[0] > 15:
            _say("waiting for " + ", ".join(n for n, ok in ready.items() if not ok) + " …")
            last_note[0] = waited

    try:
        wait_until(both_ready, timeout=READY_TIMEOUT_S, what="API and UI", fatal=(ProcessExited,), on_retry=note)
    except NotReady:
        waiting = ", ".join(n for n, ok in ready.items() if not ok)
        raise NotReady(f"{waiting} not ready after {READY_TIMEOUT_S:.0f} s; giving up") from None


def _wait_exit(procs: dict[str, ManagedProcess]) -> str:
    """Until one of ``procs`` exits (no time limit; Ctrl-C and SIGTERM end the wait): its name."""

    def exited() -> str | None:
        return next((name for name, proc in procs.items() if not proc.alive()), None)

    return wait_until(exited, timeout=None, what="a child's exit", interval=0.5, fatal=(Exception,))


def up(settings: Settings | None = None) -> int:
    """Train if needed, run API + UI until Ctrl-C; see the module docstring. Returns the exit code."""
    s = settings or get_settings()
    api_host, ui_host = s.api_host, s.ui_host
    api_url = f"http://{_loopback(api_host)}:{s.api_port}"
    ui_url = f"http://{_loopback(ui_host)}:{s.ui_port}"
    try:
        require_free_port(s.api_port, "API", _loopback(api_host), setting="api_port")
        require_free_port(s.ui_port, "UI", _loopback(ui_host), setting="ui_port")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs: dict[str, ManagedProcess] = {}
    try:
        try:
            version = ensure_champion(s)
        except Exception as exc:  # a signal (_Stop) is no Exception: it goes on to the handler below
            _say(f"error: no champion model to serve ({exc.__class__.__name__}: {exc})")
            return 1
        _say(f"champion model: {s.model_name} v{version}; feedback goes to {s.feedback_uri}")
        cli = [sys.executable, "-m", "ukr_hw.cli"]
        procs["API"] = _start("API", [*cli, "serve", "--port", str(s.api_port), "--host", api_host])
        procs["UI"] = _start("UI", [*cli, "ui", "--port", str(s.ui_port), "--host", ui_host, "--api-url", api_url])

        client = ApiClient(api_url)
        try:
            _wait_ready(procs, client, ui_url)
        except (ProcessExited, NotReady) as exc:
            _say(str(exc))
            return 1
        client.close()
        _say(f"API ready: {api_url}   (model v{version}; docs at {api_url}/docs)")
        _say(f"UI ready:  {ui_url}   ← open this in a browser and draw")
        _say("press Ctrl-C to stop both")
        name = _wait_exit(procs)
        _say(f"{name} exited unexpectedly with code {procs[name].returncode}; stopping the rest")
        return 1
    except (_Stop, KeyboardInterrupt):
        _say("stop requested")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # once we are stopping, further Ctrl-C must not interrupt the clean-up half-way
        with _ignoring_signals():
            _stop(procs)
        if procs:
            _say("stopped")


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(up())
