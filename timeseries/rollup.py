"""Rollups: 1-minute and 1-hour aggregates kept beside the raw data, exact for late data.

Per series (device and tags) and metric, a rollup window holds ``count, sum, min, max, last``
and the time of that last value, so any ``mean`` is ``sum(sum) / sum(count)`` (never a mean
of means) and ``last`` across series picks the newest value.

Which windows need work -- *dirty marks*: every write also records, in the same store and
before the write is acknowledged, a mark per (measurement, minute) it touched, carrying a
fresh token. The embedded store writes the marks in the data's own transaction; InfluxDB gets
them as extra points in the data's own ``/write`` request (measurement ``_rollup_dirty``, at
the minute's start, tagged with the writing process's name: a minute's mark is its writers'
newest tokens combined). A minute is *clean* when its recorded ``done`` token equals its mark's
token; an hour when all its minutes are. :class:`RollupWorker` (run by the ingestor) takes the
dirty minutes hour by hour, recomputes their minute windows from the raw readings (on
InfluxDB from the lines its own ingestor stored, where they are all of the minute:
:mod:`timeseries.rollup_live`) and the hour window from the hour's minute windows, stores them, and then records the tokens it saw
as done. A write that lands meanwhile replaces a token, so that minute stays dirty and is done
again: nothing late is missed, whatever the order of events. A mark is only taken once it is
:data:`SETTLE_MS` old: a minute being written is done once its writes stop, and on InfluxDB
the data of the mark's request, applied by the server with the mark, is readable by then.

Retention: InfluxDB keeps raw data in the database's default retention policy, altered to
``--retention-raw``, and rollups in the ``rollup`` policy (``--retention-rollup``), both
created or altered at start, idempotently. The embedded store deletes old rows itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from citysense.config import Settings, parse_retention
from citysense.errors import PermanentError, RetryableError
from timeseries.connection import SqliteTarget, storage_target
from timeseries.lineprotocol import LineSerializer
from timeseries.rollup_core import (  # re-exported: the rollup vocabulary
    COMPONENTS as COMPONENTS,
)
from timeseries.rollup_core import (
    DIRTY as DIRTY,
)
from timeseries.rollup_core import (
    DIRTY_LOOKBACK_MS as DIRTY_LOOKBACK_MS,
)
from timeseries.rollup_core import (
    DONE as DONE,
)
from timeseries.rollup_core import (
    HOUR as HOUR,
)
from timeseries.rollup_core import (
    MINUTE as MINUTE,
)
from timeseries.rollup_core import (
    ROLLUP_RP as ROLLUP_RP,
)
from timeseries.rollup_core import (
    SETTLE_MS as SETTLE_MS,
)
from timeseries.rollup_core import (
    WIDTHS as WIDTHS,
)
from timeseries.rollup_core import (
    Dirty as Dirty,
)
from timeseries.rollup_core import (
    RollupStats as RollupStats,
)
from timeseries.rollup_core import (
    RollupStore as RollupStore,
)
from timeseries.rollup_core import (
    Window as Window,
)
from timeseries.rollup_core import (
    aggregate as aggregate,
)
from timeseries.rollup_core import (
    combine as combine,
)
from timeseries.rollup_core import (
    new_token as new_token,
)
from timeseries.rollup_core import (
    token_age_ms as token_age_ms,
)
from timeseries.rollup_influx import InfluxRollupStore as InfluxRollupStore
from timeseries.rollup_influx import MarkView as MarkView
from timeseries.rollup_influx import mark_line as mark_line
from timeseries.rollup_live import LiveMinutes, split_by_minute
from timeseries.rollup_sqlite import SQLITE_MARK as SQLITE_MARK
from timeseries.rollup_sqlite import SQLITE_ROLLUP_SCHEMA as SQLITE_ROLLUP_SCHEMA
from timeseries.rollup_sqlite import SqliteRollupStore as SqliteRollupStore
from timeseries.schema import Point
from timeseries.writer import Writer, WriteResult

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the writer seam


class MarkingLineWriter:
    """An InfluxDB writer whose every request also carries the dirty marks of its points,
    tagged with this writer's name, and which keeps what it stored for the rollup worker
    (:class:`~timeseries.rollup_live.LiveMinutes`)."""

    def __init__(self, inner: Any, writer: str | None = None) -> None:
        self.inner = inner
        self._serializer = LineSerializer()
        self.writer = writer or secrets.token_hex(6)
        self.live = LiveMinutes(self.writer)

    async def write(self, points: Sequence[Point]) -> WriteResult:
        if not points:
            return WriteResult(0)
        lines = [self._serializer.line(p) for p in points]
        result: WriteResult = await self.write_lines(lines)
        return result

    async def write_lines(self, lines: Sequence[str]) -> WriteResult:
        if not lines:
            return WriteResult(0)
        groups = split_by_minute(lines)
        token = new_token()
        marks = [mark_line(DIRTY, m, w, token, self.writer) for m, w in sorted(groups)]
        self.live.begin(groups)
        stored = False
        try:
            result: WriteResult = await self.inner.write_lines([*lines, *marks])
            stored = not result.rejected
        finally:
            self.live.end(groups, token, stored)
        rejected = tuple(r for r in result.rejected if not str(r.point).startswith(DIRTY))
        return WriteResult(len(lines) - len(rejected), rejected)

    async def close(self) -> None:
        await self.inner.close()


def with_rollup_marks(writer: Writer, settings: Settings) -> Writer:
    """The ingestor's writer, recording which rollup windows its writes touch (when rollups
    are on and the store keeps them: the embedded store and InfluxDB 1.x)."""
    if not settings.rollups:
        return writer
    from timeseries.influx_v1 import InfluxV1Writer
    from timeseries.sqlite_store import SqliteWriter

    if isinstance(writer, SqliteWriter):
        writer.enable_marks(SQLITE_ROLLUP_SCHEMA, SQLITE_MARK, new_token)
        return writer
    if isinstance(writer, InfluxV1Writer):
        return MarkingLineWriter(writer)
    log.warning("rollups are kept on the embedded store and InfluxDB 1.x only: off here")
    return writer


# --------------------------------------------------------------------------- the worker


def open_rollup_store(
    settings: Settings, api: str = "1", live: LiveMinutes | None = None
) -> RollupStore | None:
    """The store's rollups (None where it keeps none); ``live``: the lines the ingestor's
    writer kept, recomputed from instead of the raw data where they are all of a minute."""
    raw_ms = parse_retention(settings.retention_raw, "--retention-raw")
    rollup_ms = parse_retention(settings.retention_rollup, "--retention-rollup")
    target = storage_target(settings)
    if isinstance(target, SqliteTarget):
        return SqliteRollupStore(target.path, raw_ms, rollup_ms)
    if api != "1":
        return None
    return InfluxRollupStore(target, raw_ms, rollup_ms, live)


@dataclass
class RollupWorker:
    """Recomputes dirty windows, oldest first, and applies retention (see the module doc)."""

    store: RollupStore
    interval: float = 1.0
    retention_interval: float = 600.0
    settle_ms: int = SETTLE_MS
    stats: RollupStats = field(default_factory=RollupStats)
    _ensured: bool = False

    async def run_once(self, now_ms: int | None = None) -> int:
        """One pass over the dirty windows; how many were recomputed."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if not self._ensured:
            await self.store.ensure()
            self._ensured = True
        dirty = await self.store.dirty(now_ms)
        self.stats.dirty_windows = len(dirty)
        self.stats.oldest_dirty_ms = dirty[0].window if dirty else None
        done = 0
        cpu0 = time.process_time()
        by_hour: dict[tuple[str, int], list[Dirty]] = {}
        for d in dirty:
            if token_age_ms(d.newest, now_ms) >= self.settle_ms:
                by_hour.setdefault((d.measurement, d.window - d.window % HOUR), []).append(d)
        for (measurement, hour), marks in sorted(by_hour.items(), key=lambda kv: kv[0][1]):
            marks.sort(key=lambda d: d.window)
            self.stats.values_rolled += await self.store.recompute(measurement, hour, marks)
            self.stats.windows_recomputed += len(marks)
            done += len(marks)
        self.stats.cpu_seconds += time.process_time() - cpu0
        self.stats.last_pass_ms = now_ms
        waiting = [d.window for d in dirty if token_age_ms(d.newest, now_ms) < self.settle_ms]
        self.stats.dirty_windows = len(waiting)  # what this pass left for the next
        self.stats.oldest_dirty_ms = min(waiting) if waiting else None
        return done

    async def drain(self, limit_s: float = 60.0) -> None:
        """Passes until no window is dirty (for tests and backfills)."""
        deadline = time.monotonic() + limit_s
        while True:
            await self.run_once()
            if not await self.store.dirty(int(time.time() * 1000), whole=True):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("rollups still dirty")
            await asyncio.sleep(self.settle_ms / 1000 / 4)

    async def run(self) -> None:
        last_retention = 0.0
        while True:
            try:
                if time.monotonic() - last_retention > self.retention_interval:
                    self.stats.retention_deleted += await self.store.retain(int(time.time() * 1000))
                    last_retention = time.monotonic()
                await self.run_once()
            except (RetryableError, PermanentError) as exc:
                self.stats.errors += 1
                log.warning("rollup maintenance: %s; trying again", exc)
                await asyncio.sleep(self.interval * 5)
            await asyncio.sleep(self.interval)

    def exposition(self) -> list[str]:
        s = self.stats
        now = int(time.time() * 1000)
        lag = (now - s.oldest_dirty_ms) / 1000 if s.oldest_dirty_ms is not None else 0.0
        return [
            "# HELP citysense_rollup_lag_seconds Age of the oldest window awaiting recompute.",
            "# TYPE citysense_rollup_lag_seconds gauge",
            f"citysense_rollup_lag_seconds {lag:.3f}",
            "# HELP citysense_rollup_dirty_windows Hour windows awaiting recompute.",
            "# TYPE citysense_rollup_dirty_windows gauge",
            f"citysense_rollup_dirty_windows {s.dirty_windows}",
            "# HELP citysense_rollup_windows_recomputed_total Hour windows recomputed.",
            "# TYPE citysense_rollup_windows_recomputed_total counter",
            f"citysense_rollup_windows_recomputed_total {s.windows_recomputed}",
            "# HELP citysense_rollup_values_total Raw values read to recompute windows.",
            "# TYPE citysense_rollup_values_total counter",
            f"citysense_rollup_values_total {s.values_rolled}",
            "# HELP citysense_rollup_cpu_seconds_total Process CPU spent recomputing.",
            "# TYPE citysense_rollup_cpu_seconds_total counter",
            f"citysense_rollup_cpu_seconds_total {s.cpu_seconds:.6f}",
            *_live_exposition(getattr(self.store, "live", None)),
            "# HELP citysense_rollup_errors_total Failed maintenance passes.",
            "# TYPE citysense_rollup_errors_total counter",
            f"citysense_rollup_errors_total {s.errors}",
            "# HELP citysense_retention_deleted_total Rows deleted by retention (embedded store).",
            "# TYPE citysense_retention_deleted_total counter",
            f"citysense_retention_deleted_total {s.retention_deleted}",
        ]


def _live_exposition(live: LiveMinutes | None) -> list[str]:
    if live is None:
        return []
    return [
        "# HELP citysense_rollup_minutes_from_writes_total Minutes recomputed from the lines "
        "this ingestor wrote.",
        "# TYPE citysense_rollup_minutes_from_writes_total counter",
        f"citysense_rollup_minutes_from_writes_total {live.used}",
        "# HELP citysense_rollup_minutes_read_back_total Minutes recomputed from raw data read "
        "back (other writers, a restart, a failed write, lines forgotten).",
        "# TYPE citysense_rollup_minutes_read_back_total counter",
        f"citysense_rollup_minutes_read_back_total {live.refused}",
        "# HELP citysense_rollup_kept_lines Lines kept for recomputing minutes.",
        "# TYPE citysense_rollup_kept_lines gauge",
        f"citysense_rollup_kept_lines {live.lines}",
    ]


@asynccontextmanager
async def maintain_rollups(
    settings: Settings, writer: Writer
) -> AsyncIterator[RollupWorker | None]:
    """Run a :class:`RollupWorker` beside the ingestor's writer (none when rollups are off
    or the store keeps none); stopped on exit."""
    store: RollupStore | None = None
    if settings.rollups and isinstance(writer, MarkingLineWriter):
        store = open_rollup_store(settings, "1", writer.live)
    elif settings.rollups and getattr(writer, "_mark", None) is not None:
        store = open_rollup_store(settings, "1")
    if store is None:
        yield None
        return
    worker = RollupWorker(store)
    try:
        async with running(worker.run(), "rollups"):
            yield worker
    finally:
        await store.close()


@asynccontextmanager
async def running(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run ``coro`` as a task for the lifetime of the context; cancelled on exit."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
