"""Ports on loopback: free ones for servers and tests, and a clear error when a configured one is taken."""

from __future__ import annotations

import socket

from ukr_hw.ops import LOOPBACK, StackError


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free ports (all held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something already listens on ``host:port`` (or the port cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def require_free_port(port: int, service: str, host: str = LOOPBACK, setting: str | None = None) -> None:
    """Raise a clear :class:`StackError` when ``port`` is taken."""
    if port_in_use(port, host):
        hint = f" or set UKR_HW_{setting.upper()} to another port" if setting else ""
        raise StackError(
            f"{service}: port {port} on {host} is already in use. Stop whatever listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it){hint}."
        )
