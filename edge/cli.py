"""``citysense edge``: run the gateway (blocking) until SIGTERM/SIGINT, then stop cleanly.

``run`` returns 0 after a clean stop; a :class:`~citysense.errors.ConfigError` propagates
(the command prints it and exits 2). ``probe`` is ``citysense edge probe``.
"""

from __future__ import annotations

import asyncio
import signal

from citysense.config import Settings
from citysense.sdnotify import supervised
from edge.service import serve


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean stop. Under systemd (``Type=notify``)
    READY=1 once CoAP is served, and WATCHDOG=1 from the event loop."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            async with supervised("citysense edge") as ready:
                await serve(settings, ready)
        except asyncio.CancelledError:
            return 0
        return 0

    return asyncio.run(main())


def probe(settings: Settings) -> int:
    """``citysense edge probe``: identify an attached module (see :mod:`edge.probe`)."""
    from edge.probe import probe as probe_module  # type: ignore[import-not-found,unused-ignore]

    return probe_module(settings)
