"""``citysense alerts`` as a foreground process: SIGTERM/SIGINT stop it (exit 0); a bad rules
file or option is a :class:`~citysense.errors.ConfigError` (exit 2, ``file:line: reason``)."""

from __future__ import annotations

import asyncio
import logging

from alerts.service import AlertService
from citysense.config import Settings
from citysense.serving import run_until_signalled

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    service = AlertService(settings)  # configuration errors surface before anything starts

    async def main(ready: asyncio.Event) -> None:
        started = asyncio.create_task(service.started.wait())  # its HTTP API answers

        def serving(task: asyncio.Task[object]) -> None:
            if not task.cancelled():
                ready.set()

        started.add_done_callback(serving)
        try:
            await service.run()
        finally:
            started.cancel()

    return run_until_signalled(main, log, "alerts stopped", "citysense alerts")
