"""The operations helpers without servers: the one readiness wait (tenacity) and the process tree (psutil), on real
processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ukr_hw.ops import StackError
from ukr_hw.ops.processes import ManagedProcess, group_alive, kill_group, same_process, start_time, tree
from ukr_hw.ops.wait import NotReady, wait_until


def test_wait_until_retries_through_errors_until_the_check_holds() -> None:
    calls = []

    def check() -> bool:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ConnectionRefusedError("not listening yet")  # a server still binding its port
        return len(calls) >= 3

    wait_until(check, timeout=30, what="thing", interval=0.01)
    assert len(calls) == 3


def test_wait_until_gives_up_naming_what_and_the_last_error() -> None:
    def check() -> bool:
        raise ConnectionRefusedError("nobody home")

    started = time.monotonic()
    with pytest.raises(NotReady, match=r"the widget not ready after 0s") as info:
        wait_until(check, timeout=0.3, what="the widget", interval=0.05)
    assert time.monotonic() - started < 10
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_wait_until_ends_at_once_on_a_fatal_error_or_an_interrupt() -> None:
    tries = []

    def died() -> bool:
        tries.append(1)
        raise StackError("the server exited")

    with pytest.raises(StackError, match="the server exited"):
        wait_until(died, timeout=30, what="x", interval=0.01, fatal=(StackError,))
    assert len(tries) == 1

    def interrupted() -> bool:
        tries.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is never "not ready yet"
        wait_until(interrupted, timeout=30, what="x", interval=0.01)
    assert len(tries) == 2


def test_wait_until_reports_progress_between_tries() -> None:
    waited: list[float] = []
    results = iter([False, False, True])
    wait_until(lambda: next(results), timeout=30, what="x", interval=0.01, on_retry=waited.append)
    assert len(waited) == 2 and waited == sorted(waited) and all(w >= 0 for w in waited)


def test_wait_until_returns_what_the_check_found_and_can_wait_without_a_limit() -> None:
    results = iter([None, "", "v3"])
    assert wait_until(lambda: next(results), timeout=None, what="x", interval=0.01) == "v3"

    def broken() -> bool:
        raise ValueError("not a readiness problem")

    with pytest.raises(ValueError):  # fatal=(Exception,): any error ends the wait at once
        wait_until(broken, timeout=30, what="x", interval=0.01, fatal=(Exception,))


_SPAWNER = """
import subprocess, sys, time
# a child in the group, and a grandchild that left it (its own session): both belong to the tree
kids = [subprocess.Popen(["sleep", "300"]), subprocess.Popen(["sleep", "300"], start_new_session=True)]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(300)
"""


def test_kill_group_stops_the_whole_tree_also_what_left_the_group(tmp_path: Path) -> None:
    out = tmp_path / "pids"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", _SPAWNER], stdout=fh, start_new_session=True)
    deadline = time.monotonic() + 60
    while not out.read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    kids = [int(p) for p in out.read_text().split()]
    assert {p.pid for p in tree(proc.pid)} >= {proc.pid, *kids}
    assert os.getpgid(kids[1]) != proc.pid  # really outside the group: killpg alone would miss it

    kill_group(proc.pid, timeout=20, wait=proc.wait)
    assert proc.returncode is not None and proc.returncode < 0  # the Popen kept the code (a signal)
    deadline = time.monotonic() + 20
    while any(same_process(k, None) for k in kids):  # re-parented to init: reaped there, not by us
        assert time.monotonic() < deadline, [psutil.Process(k).status() for k in kids if psutil.pid_exists(k)]
        time.sleep(0.1)
    assert not group_alive(proc.pid)


def test_same_process_tells_a_reused_pid_and_reads_old_state_files() -> None:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        started = start_time(proc.pid)
        assert started is not None and same_process(proc.pid, started)
        assert not same_process(proc.pid, started - 3600)  # another process that had this pid an hour ago
        # state.json of earlier versions: the kernel's start time in clock ticks since boot, as a string
        ticks = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        assert same_process(proc.pid, json.loads(json.dumps(ticks)))
    finally:
        kill_group(proc.pid, timeout=10, wait=proc.wait)
    assert not same_process(proc.pid, started)


def test_managed_process_that_dies_fails_the_wait_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "x.log"
    proc = ManagedProcess("flaky", [sys.executable, "-c", "print('bad config: port'); raise SystemExit(4)"], log)
    proc.start()
    with pytest.raises(StackError, match=r"(?s)flaky exited \(code 4\) before the API was ready.*bad config: port"):
        proc.wait_ready(lambda: False, timeout=60, what="the API")


def test_managed_process_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    proc = ManagedProcess("slow", ["sleep", "300"], tmp_path / "slow.log")
    proc.start()
    pid = proc.pid
    assert pid is not None
    with pytest.raises(StackError, match=r"slow: the UI not ready after 1s\. Log .*slow\.log"):
        proc.wait_ready(lambda: False, timeout=1.0, what="the UI")
    assert proc.popen is None and not group_alive(pid)
