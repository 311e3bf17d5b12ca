"""``citysense api``: the operator API and dashboard as a foreground process.

SIGTERM and SIGINT cancel the server task, which finishes in-flight requests and exits 0;
SIGHUP reads the API keys again.
A :class:`~citysense.errors.ConfigError` propagates to the CLI (exit 2).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from citysense.config import Settings
from dashboard_api.app import create_app, reload_keys
from dashboard_api.service import refuse_writable_reader, serve

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    app = create_app(settings)  # configuration errors surface before anything starts

    async def main() -> None:
        await refuse_writable_reader(settings)  # the API reads: it must not hold a writer
        task = asyncio.create_task(serve(settings, app=app))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        loop.add_signal_handler(signal.SIGHUP, reload_keys, app, settings)
        try:
            await task
        except asyncio.CancelledError:
            log.info("operator API stopped")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
