"""``citysense api``: the operator API and dashboard as a foreground process.

SIGTERM and SIGINT cancel the server task, which finishes in-flight requests and exits 0.
A :class:`~citysense.errors.ConfigError` propagates to the CLI (exit 2).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from citysense.config import Settings
from citysense.sdnotify import supervised
from dashboard_api.app import create_app
from dashboard_api.service import serve

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    app = create_app(settings)  # configuration errors surface before anything starts

    async def main() -> None:
        async with supervised("citysense api") as ready:
            task = asyncio.create_task(serve(settings, ready, app=app))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
            try:
                await task
            except asyncio.CancelledError:
                log.info("operator API stopped")
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
