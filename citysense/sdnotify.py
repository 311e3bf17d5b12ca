"""systemd's service notification protocol (``sd_notify``), for ``Type=notify`` units.

A service started by systemd finds ``NOTIFY_SOCKET`` (a Unix datagram socket; ``@name`` is
in the abstract namespace) in its environment. :func:`supervise` sends ``READY=1`` once the
service's ``ready`` event is set -- set by the service only when it really serves (its socket
answers) -- and then ``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` *from the event loop*: a
loop that is blocked or hung sends nothing, and systemd restarts the service. On the way out
it sends ``STOPPING=1``. Without ``NOTIFY_SOCKET`` every call does nothing.

This is the one I/O module of the shared package besides configuration files: a service
(which may import only :mod:`citysense` and its own layers) needs it, and it is a few lines
of standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; a no-op when it is not set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=VALUE``) as one datagram; False when not sent."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def supervise(ready: asyncio.Event, what: str, notifier: Notifier | None = None) -> None:
    """READY=1 once ``ready`` is set, then WATCHDOG=1 from the loop until cancelled, then
    STOPPING=1. Run it as a task beside the service."""
    n = notifier or Notifier()
    if not n.enabled:
        return
    try:
        await ready.wait()
        n.notify("READY=1", f"STATUS={what} serving", f"MAINPID={os.getpid()}")
        interval = n.watchdog_interval
        if interval is None:
            await asyncio.Event().wait()  # nothing more to say until stopped
            return
        while True:
            await asyncio.sleep(interval)  # the heartbeat of the loop itself
            n.notify("WATCHDOG=1")
    finally:
        with contextlib.suppress(OSError):
            n.notify("STOPPING=1")
        n.close()


@contextlib.asynccontextmanager
async def supervised(what: str) -> AsyncIterator[asyncio.Event]:
    """``async with supervised("citysense edge") as ready:`` -- set ``ready`` once serving;
    notifications run beside the body and stop with it."""
    ready = asyncio.Event()
    task = asyncio.create_task(supervise(ready, what))
    try:
        yield ready
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
