"""Opening the configured writer: :func:`open_writer` is an async context manager.

``async with open_writer(settings) as writer: ...`` picks the embedded SQLite store when no
InfluxDB is configured, else the InfluxDB writer of the configured API generation, or of the
one the server's ``/ping`` reports (``--influx-api auto``). While the server cannot be reached
for detection, it retries with back-off (capped by ``--retry-max-delay``) until cancelled:
an ingestor waits for its storage instead of failing. The writer is closed on exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from citysense.config import Settings
from citysense.connectivity import Connectivity
from citysense.errors import RetryableError
from timeseries.connection import (
    InfluxTarget,
    SqliteTarget,
    detect_api,
    ensure_storage,
    storage_target,
)
from timeseries.writer import Writer

log = logging.getLogger(__name__)


async def _detect_with_retry(target: InfluxTarget, max_delay: float) -> Literal["1", "2"]:
    """The API generation, once the server answers; the database or bucket is made sure of
    (:func:`ensure_storage`; a :class:`ConfigError` when it cannot be)."""
    delay = 0.5
    state = Connectivity("store", target.url, log)
    while True:
        try:
            api = await detect_api(target)
            await ensure_storage(target, api)
        except RetryableError as exc:
            state.failed(str(exc))
            if state.summary_due():
                state.summarise("the ingestor waits for it before it subscribes")
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.5), max(max_delay, 0.5))
        else:
            state.recovered()
            return api


async def create_writer(settings: Settings) -> Writer:
    """The configured writer, opened (the caller closes it)."""
    target = storage_target(settings)
    if isinstance(target, SqliteTarget):
        from timeseries.sqlite_store import SqliteWriter

        log.info("storage: embedded store %s", target.path)
        return await asyncio.to_thread(SqliteWriter, target.path)
    api = await _detect_with_retry(target, settings.retry_max_delay)
    log.info("storage: InfluxDB %s API at %s", api, target.url)
    if api == "1":
        from timeseries.influx_v1 import InfluxV1Writer

        return InfluxV1Writer(target)
    from timeseries.influx_v2 import InfluxV2Writer

    return InfluxV2Writer(target)


@asynccontextmanager
async def open_writer(settings: Settings) -> AsyncIterator[Writer]:
    """``async with open_writer(settings) as writer``: the configured writer, closed on exit."""
    writer = await create_writer(settings)
    try:
        yield writer
    finally:
        await writer.close()
