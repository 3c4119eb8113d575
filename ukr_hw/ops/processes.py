"""A child process tree on psutil: start one in its own process group with its own log, tell whether it still
runs (and is still the process we started), stop it and everything it spawned (TERM, then KILL), reaping what
exits."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ukr_hw.ops import StackError
from ukr_hw.ops.wait import NotReady, wait_until

#: two start times of one process read apart differ by rounding at most; a reused pid starts much later
_SAME_START_S = 1.0


class ProcessExited(StackError):
    """The process died while something waited for it; the message holds its exit code and log tail."""


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def find_executable(name: str) -> str:
    """An executable from this Python's environment first (``.venv/bin``), then from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"`{name}` not found next to {sys.executable} or on PATH: install the project's requirements.")


@dataclass
class ManagedProcess:
    """A child process in its own process group, logging to ``log_path`` (None: this process's stdout/stderr)."""

    name: str
    args: list[str]
    log_path: Path | None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        if self.log_path is None:
            self.popen = self._spawn(None, env)
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== {stamp} starting {self.name}: {' '.join(self.args)}\n".encode())
            log.flush()
            self.popen = self._spawn(log, env)

    def _spawn(self, log: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.cwd,
            start_new_session=True,  # its own group: stopping it reaches whatever it spawned
        )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (None while it runs or before it started)."""
        return self.popen.poll() if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _log_note(self) -> str:
        return f" Log {self.log_path}:\n{log_tail(self.log_path)}" if self.log_path else ""

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it is true; fail with the log tail if the process dies or time runs out (then the
        process is stopped)."""

        def ready() -> bool:
            if not self.alive():
                raise ProcessExited(
                    f"{self.name} exited (code {self.returncode}) before {what} was ready.{self._log_note()}"
                )
            return check()

        try:
            wait_until(ready, timeout=timeout, what=what, fatal=(ProcessExited,))
        except NotReady:
            note = self._log_note()
            self.stop()
            raise StackError(f"{self.name}: {what} not ready after {timeout:.0f}s.{note}") from None

    def stop(self, timeout: float = 15.0) -> None:
        """TERM to the process tree, KILL after ``timeout`` seconds; its exit code stays readable on ``popen``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            kill_group(self.popen.pid, timeout=timeout, wait=self.popen.wait)
        else:
            # the leader is gone; children in its group may still run
            kill_group(self.popen.pid, timeout=2.0)
        self.popen = None


# --- trees, groups, liveness ----------------------------------------------------------------------------------


def _reap_if_own_child(pid: int) -> None:
    # An exited child of ours stays a zombie until reaped, and a zombie still "exists"; reaping it here takes its
    # exit code from any Popen of it, so callers that want the code pass Popen.wait to kill_group instead.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _group(pgid: int) -> list[psutil.Process]:
    """The processes of process group ``pgid`` (psutil has no pgid field: ask the kernel per process)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def tree(pid: int) -> list[psutil.Process]:
    """``pid``, its descendants (also those that left its group) and whatever else still runs in its group."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(OSError, psutil.Error):  # the leader is gone: its group may still hold children
        # still the leader of its own group, as started: a pid reused by another process is left alone
        if os.getpgid(pid) == pid:
            leader = psutil.Process(pid)
            found[pid] = leader
            found.update((p.pid, p) for p in leader.children(recursive=True))
    found.update((p.pid, p) for p in _group(pid) if p.pid not in found)
    return list(found.values())


def _living(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                out.append(proc)
    return out


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies do not count; our own exited leader is reaped)."""
    _reap_if_own_child(pgid)
    return bool(_living(_group(pgid)))


def kill_group(pgid: int, timeout: float = 15.0, wait: Callable[..., Any] | None = None) -> None:
    """Stop the tree of ``pgid`` (a leader started with ``start_new_session``): TERM, then KILL what is left after
    ``timeout`` seconds. ``wait``: the leader's ``Popen.wait``, so that its ``Popen`` keeps the exit code; without
    it, a leader that is our child is reaped here all the same (no zombie waits out the timeout)."""
    procs = tree(pgid)  # before the signal: once the leader dies its children are re-parented
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    for proc in procs:  # descendants that started a session of their own are not in the group
        # (and only they: a second TERM makes uvicorn skip its graceful shutdown)
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) != pgid:
                proc.terminate()
    if wait is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            wait(timeout=timeout)
    # psutil waits on a pidfd: a zombie counts as exited, and our own children are reaped
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    if wait is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            wait(timeout=5)


def start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch): with the pid, it tells a reused pid from ours."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_zombie(pid: int) -> bool:
    """True when ``pid`` has exited but its parent has not reaped it yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _as_epoch(recorded: float | str) -> float:
    # state files of earlier versions hold the kernel's start time in clock ticks since boot (a string)
    if isinstance(recorded, str):
        return float(recorded) / os.sysconf("SC_CLK_TCK") + psutil.boot_time()
    return float(recorded)


def same_process(pid: int, started: float | str | None) -> bool:
    """``pid`` still runs and is the process that started at ``started`` (None: any process with that pid).

    A process that exited but is not yet reaped (a zombie: our own child whose ``Popen`` has not waited) is gone
    here. It is only looked at, not reaped, so the ``Popen`` that reports its exit code still can.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process with that pid: alive, and its start time cannot be compared
    return started is None or abs(created - _as_epoch(started)) < _SAME_START_S
