"""``citysense alerts`` as a foreground process: SIGTERM/SIGINT stop it (exit 0); a bad rules
file or option is a :class:`~citysense.errors.ConfigError` (exit 2, ``file:line: reason``)."""

from __future__ import annotations

import asyncio
import logging
import signal

from alerts.service import AlertService
from citysense.config import Settings

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    service = AlertService(settings)  # configuration errors surface before anything starts

    async def main() -> None:
        task = asyncio.create_task(service.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("alerts stopped")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
