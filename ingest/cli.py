"""``citysense ingest`` and ``citysense ingest dead-letters``.

:func:`run` blocks until SIGTERM or SIGINT, then shuts down cleanly (in-flight writes
finished and acknowledged, or left unacknowledged for redelivery) and returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import signal
import sys
from pathlib import Path

from citysense.config import Settings
from citysense.sdnotify import supervised
from ingest.deadletters import FILENAME, DeadLetterStore
from ingest.service import serve

PAYLOAD_SHOWN = 2000


def run(settings: Settings) -> int:
    """Run an ingestor until SIGTERM/SIGINT; 0 on a clean stop."""

    # One line per HTTP request is DEBUG-level traffic, not INFO.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with supervised("citysense ingest") as ready:
            task = asyncio.create_task(serve(settings, ready))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if task not in done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    return 0


def _time(ms: int) -> str:
    dt = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letters(settings: Settings) -> int:
    """Print the newest dead letters (reason, time, topic, raw payload), newest first."""
    path = Path(settings.state_dir) / FILENAME
    out = sys.stdout
    if not path.exists():
        print(f"no dead letters ({path} does not exist)", file=out)
        return 0
    store = DeadLetterStore(path)
    try:
        counts = store.counts()
        letters = store.recent(settings.limit)
        evictions = store.evictions()
    finally:
        store.close()
    total = sum(counts.values())
    summary = ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "none"
    print(f"{total} dead letter(s): {summary}", file=out)
    if evictions:
        causes = ", ".join(f"{cause} {n}" for cause, n in evictions.items())
        print(f"{sum(evictions.values())} evicted by the store's bounds: {causes}", file=out)
    for d in letters:
        where = d.topic
        if d.gateway:
            where += f" gateway={d.gateway}"
        if d.seq is not None:
            where += f" seq={d.seq}"
        payload = d.payload.decode("utf-8", "backslashreplace")
        if len(payload) > PAYLOAD_SHOWN or d.truncated:
            digest = f", sha256 {d.digest}" if d.digest else ""
            payload = payload[:PAYLOAD_SHOWN] + f"... ({d.size} bytes{digest})"
        print(f"\n{_time(d.at)}  {d.reason}  {where}\n  {d.message}\n  {payload}", file=out)
    return 0
