"""``citysense api``: the operator API and dashboard as a foreground process.

SIGTERM and SIGINT cancel the server task, which finishes in-flight requests and exits 0;
SIGHUP reads the API keys again. The process keeps its large answers' memory mapped
(:func:`citysense.compat.glibc.keep_large_blocks`).
A :class:`~citysense.errors.ConfigError` propagates to the CLI (exit 2).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from citysense.compat.glibc import keep_large_blocks
from citysense.config import Settings
from citysense.serving import run_until_signalled
from dashboard_api.app import create_app, reload_keys
from dashboard_api.service import refuse_writable_reader, serve

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    app = create_app(settings)  # configuration errors surface before anything starts
    keep_large_blocks()  # megabyte answers: not faulted in again on every request

    async def main(ready: asyncio.Event) -> None:
        await refuse_writable_reader(settings)  # the API reads: it must not hold a writer
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_keys, app, settings)
        try:
            await serve(settings, ready, app=app)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    return run_until_signalled(main, log, "operator API stopped", "citysense api")
