"""Loopback ports for the demo's services, and the check of ``--bind`` before anything starts."""

from __future__ import annotations

import random
import socket

from citysense.config import parse_hostport
from citysense.errors import ConfigError


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port(kind: int, host: str) -> int:
    """A free port below the kernel's ephemeral range: no client socket of any process can
    take it between this check and the service's bind (a port from ``bind(0)`` can be)."""
    high = max(_ephemeral_low(), 20001)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, high)
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind((host, port))
        except OSError:
            continue
        return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    return _free_port(socket.SOCK_STREAM, host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    return _free_port(socket.SOCK_DGRAM, host)


def check_bind(bind: str) -> None:
    """Refuse (:class:`ConfigError`) a ``--bind`` address that is taken, before anything starts."""
    host, port = parse_hostport(bind, "--bind")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--bind {bind}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise ConfigError(f"--bind {bind}: {exc.strerror or exc}") from exc
