"""What every long-running command shares: its listening socket and its signal handling.

:func:`listen_socket` opens a TCP listener (a taken or bad address is a
:class:`~citysense.errors.ConfigError`, exit 2); :func:`run_until_signalled` runs a service's
coroutine until SIGTERM or SIGINT cancels it (exit 0).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from citysense.errors import ConfigError
from citysense.sdnotify import supervised


def listen_socket(host: str, port: int, bind: str) -> socket.socket:
    """A listening TCP socket on ``host:port``; a taken or bad address is a ConfigError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"--bind {bind}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--bind {bind}: {exc.strerror or exc}") from exc
    return sock


def run_until_signalled(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, object]],
    log: logging.Logger,
    stopped: str,
    what: str,
) -> int:
    """Run ``main(ready)`` until it returns or SIGTERM/SIGINT cancels it (logged as
    ``stopped``). ``main`` sets ``ready`` once it serves: under systemd (``Type=notify``) that
    is READY=1, then WATCHDOG=1 from the event loop (:mod:`citysense.sdnotify`; ``what``
    names the service in its status)."""

    async def runner() -> None:
        async with supervised(what) as ready:
            task = asyncio.create_task(main(ready))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
            try:
                await task
            except asyncio.CancelledError:
                log.info(stopped)
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    asyncio.run(runner())
    return 0
