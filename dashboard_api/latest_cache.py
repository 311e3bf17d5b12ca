"""The live latest-value table: device × metric -> (time, value), kept current without
reading history.

* **Prime** at start: one query for the newest value of every metric per device over the last
  7 days (the window ``/devices`` looks at). ``/health`` answers 503 until it is done, so a
  restarted API gives correct answers as soon as it reports healthy.
* **Refresh** every :data:`REFRESH_S` (longer after a slow refresh: :func:`refresh_pause`).
  Where the store keeps rollups, the table follows the ingestor's dirty marks
  (:mod:`timeseries.rollup`: every write marks each minute it touched): it reads the newest
  values of just the minutes written since the last refresh, one range per hour -- the
  current minute in a live city, older hours when an outbox delivers a backlog -- and nothing
  when nothing was written. Without rollups it reads the
  last :data:`OVERLAP_MS` (readings arriving up to 10 minutes after their time) and, every
  :data:`WIDE_EVERY_S`, the last 2 hours. A value replaces the table's only when it is newer.
* The same loop refreshes the rollup view's marks (:class:`RollupReads`).

Answers for a past ``at`` still go to storage; this table serves "now".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from citysense.catalog import DEFAULT_MAX_AGE_MS, MAX_FUTURE_SKEW_MS, METRICS
from citysense.config import Settings, parse_retention
from citysense.errors import PermanentError, RetryableError
from timeseries.query import LatestValue, Reader, SeriesGroup, SeriesQuery
from timeseries.rollup import HOUR, MINUTE, running
from timeseries.rollup_query import RollupReads, open_partials

log = logging.getLogger(__name__)

REFRESH_S = 1.0
#: the pause after a slow refresh, in multiples of its duration (see :func:`refresh_pause`)
REFRESH_SHARE = 4.0
OVERLAP_MS = 10 * 60_000
WIDE_EVERY_S = 60.0
WIDE_MS = 2 * HOUR
ALL_METRICS: tuple[str, ...] = tuple(METRICS)
BY_DOMAIN: dict[str, tuple[str, ...]] = {
    d: tuple(m for m, spec in METRICS.items() if spec.domain == d)
    for d in sorted({spec.domain for spec in METRICS.values()})
}


async def latest_of_all(
    reader: Reader, filters: Mapping[str, str], start: int, end: int
) -> list[LatestValue]:
    """The newest value of every metric per device: one question per measurement, so a
    device is asked only for its own measurement's metrics."""
    answers = await asyncio.gather(
        *(reader.latest(ms, filters, start, end) for ms in BY_DOMAIN.values())
    )
    return [row for rows in answers for row in rows]


def written_ranges(fresh: Mapping[str, set[int]]) -> list[tuple[str, int, int]]:
    """(measurement, start, end) covering the written minutes, one range per hour touched:
    a live city writes the current minute; an outbox delivering a backlog, a few hours."""
    out = []
    for measurement, minutes in fresh.items():
        if measurement not in BY_DOMAIN:
            continue
        hours: dict[int, list[int]] = {}
        for w in minutes:
            hours.setdefault(w - w % HOUR, []).append(w)
        for ws in hours.values():
            out.append((measurement, min(ws), max(ws) + MINUTE))
    return out


def refresh_pause(took_s: float) -> float:
    """Seconds to wait before the next refresh: :data:`REFRESH_S`, or :data:`REFRESH_SHARE`
    times what the last one took when that is longer. Following the rollup marks a refresh
    reads a minute or two and takes milliseconds; without them it reads the last 10 minutes
    of the whole fleet (a second of work at 10,000 devices), and the table then spends at
    most a fifth of the API's time refreshing itself instead of all of it."""
    return max(REFRESH_S, REFRESH_SHARE * took_s)


T = TypeVar("T")
#: a time after every other (no value)
NEVER = 2**63
#: rendered answers kept (per label, metrics, filters and window)
MEMO_SIZE = 64


@dataclass(slots=True)
class _Memo:
    version: int
    end: int
    lo: int
    hi: int
    count: int
    body: object


@dataclass(slots=True)
class DeviceEntry:
    kind: str
    district: str
    site: str
    last_seen: int
    values: dict[str, tuple[int, float]] = field(default_factory=dict)


class LatestCache:
    """The table and the loop that keeps it current (see the module doc)."""

    def __init__(
        self,
        reader: Reader,
        clock: Callable[[], float],
        rollups: RollupReads | None = None,
    ) -> None:
        self.reader = reader
        self.clock = clock
        self.rollups = rollups
        self.devices: dict[str, DeviceEntry] = {}
        self.ready = False
        self.refreshed_ms: int | None = None
        self.refreshes = 0
        self.errors = 0
        self._wide_at = 0.0
        self._again: list[tuple[str, int, int]] = []
        self.version = 0  #: bumped by every merge: answers rendered before are redone
        self.memo_hits = 0
        self._memo: OrderedDict[tuple[Any, ...], _Memo] = OrderedDict()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def merge(self, rows: Iterable[LatestValue]) -> int:
        """Fold in newest values; how many entries changed (a value, a device's last_seen
        or its tags). Any change bumps :attr:`version`, so answers rendered before are
        redone; rows the table already holds (a range read again) change nothing."""
        changed = 0
        for r in rows:
            e = self.devices.get(r.device)
            if e is None:
                e = self.devices[r.device] = DeviceEntry(r.kind, r.district, r.site, r.t)
                changed += 1
            old = e.values.get(r.metric)
            if old is None or (old[0] <= r.t and old != (r.t, r.value)):
                e.values[r.metric] = (r.t, r.value)
                changed += 1
            if r.t >= e.last_seen and (r.t, r.kind, r.district, r.site) != (
                e.last_seen,
                e.kind,
                e.district,
                e.site,
            ):
                e.last_seen = r.t
                e.kind, e.district, e.site = r.kind, r.district, r.site
                changed += 1
        if changed:
            self.version += 1
        return changed

    async def _read(self, start: int, end: int) -> None:
        self.merge(await latest_of_all(self.reader, {}, start, end))

    async def prime(self) -> None:
        now = self.now_ms()
        if self.rollups is not None:  # marks first: what is written during the prime is
            await self.rollups.refresh()  # fresh at the next refresh, read again then
        await self._read(now - DEFAULT_MAX_AGE_MS, now + MAX_FUTURE_SKEW_MS)
        self.refreshed_ms = now
        self._wide_at = time.monotonic()
        self.ready = True
        log.info("latest-value table primed: %d devices", len(self.devices))

    async def refresh(self) -> None:
        """Follow the rollup marks where the store keeps them: read the minutes written since
        the last refresh (and those of the refresh before: a write's points and its marks
        land together, this reads them once more after); else read the recent window."""
        now = self.now_ms()
        if self.rollups is not None:
            await self.rollups.refresh()
        if self.rollups is not None and self.rollups.ready:
            ranges = written_ranges(self.rollups.fresh)
            for measurement, start, end in sorted(set(ranges) | set(self._again)):
                self.merge(await self.reader.latest(BY_DOMAIN[measurement], {}, start, end))
            self._again = ranges
        else:
            wide = time.monotonic() - self._wide_at >= WIDE_EVERY_S
            since = now - (WIDE_MS if wide else OVERLAP_MS)
            await self._read(since, now + MAX_FUTURE_SKEW_MS)
            if wide:
                self._wide_at = time.monotonic()
        self.refreshed_ms = now
        self.refreshes += 1

    async def run(self) -> None:
        """Prime (retrying until storage answers), then refresh until cancelled."""
        delay = 0.5
        while not self.ready:
            try:
                await self.prime()
            except (RetryableError, PermanentError) as exc:
                self.errors += 1
                log.warning("latest-value table: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        took = 0.0
        while True:
            await asyncio.sleep(refresh_pause(took))
            started = time.monotonic()
            try:
                await self.refresh()
            except (RetryableError, PermanentError) as exc:
                self.errors += 1
                log.warning("latest-value table refresh: %s", exc)
            took = time.monotonic() - started

    def rows(
        self, metrics: tuple[str, ...], filters: Mapping[str, str], start: int, end: int
    ) -> list[LatestValue]:
        """As :meth:`Reader.latest`, from the table."""
        return self._select(metrics, filters, start, end)[0]

    def _select(
        self, metrics: tuple[str, ...], filters: Mapping[str, str], start: int, end: int
    ) -> tuple[list[LatestValue], int, int]:
        """:meth:`rows`, the oldest time among them and the oldest time at or after ``end``
        among the values left out (both :data:`NEVER` when there is none)."""
        wanted = set(metrics)
        device = filters.get("device")
        items = (
            [(device, self.devices[device])]
            if device in self.devices
            else []
            if device is not None
            else sorted(self.devices.items())
        )
        out = []
        lo = hi = NEVER
        for dev, e in items:
            if (
                ("district" in filters and e.district != filters["district"])
                or ("kind" in filters and e.kind != filters["kind"])
                or ("site" in filters and e.site != filters["site"])
            ):
                continue
            for metric, (t, v) in sorted(e.values.items()):
                if metric not in wanted:
                    continue
                if start <= t < end:
                    out.append(LatestValue(dev, e.kind, e.district, e.site, metric, t, v))
                    lo = min(lo, t)
                elif t >= end:
                    hi = min(hi, t)
        return out, lo, hi

    def answer(
        self,
        label: str,
        metrics: tuple[str, ...],
        filters: Mapping[str, str],
        start: int,
        end: int,
        render: Callable[[list[LatestValue]], T],
    ) -> tuple[T, int]:
        """``render`` of :meth:`rows` and how many rows, reused while it cannot differ: the
        table unchanged since, no value gone out of the window at its start, none come in
        at its end. A city's whole ``latest`` is thousands of values: rendered once per
        change of the table, not once per request (the caller must not change what it
        gets)."""
        key = (label, metrics, tuple(sorted(filters.items())), end - start)
        m = self._memo.get(key)
        if (
            m is not None
            and m.version == self.version
            and m.end <= end
            and start <= m.lo
            and end <= m.hi
        ):
            self._memo.move_to_end(key)
            self.memo_hits += 1
            return cast(T, m.body), m.count
        rows, lo, hi = self._select(metrics, filters, start, end)
        body = render(rows)
        self._memo[key] = _Memo(self.version, end, lo, hi, len(rows), body)
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        return body, len(rows)

    def exposition(self) -> list[str]:
        age = (self.now_ms() - self.refreshed_ms) / 1000 if self.refreshed_ms else -1.0
        out = [
            "# HELP citysense_api_latest_cache_age_seconds Time since the latest-value table "
            "was last refreshed (-1: not primed).",
            "# TYPE citysense_api_latest_cache_age_seconds gauge",
            f"citysense_api_latest_cache_age_seconds {age:.3f}",
            "# HELP citysense_api_latest_cache_devices Devices in the latest-value table.",
            "# TYPE citysense_api_latest_cache_devices gauge",
            f"citysense_api_latest_cache_devices {len(self.devices)}",
            "# HELP citysense_api_latest_cache_errors_total Failed refreshes.",
            "# TYPE citysense_api_latest_cache_errors_total counter",
            f"citysense_api_latest_cache_errors_total {self.errors}",
        ]
        r = self.rollups
        if r is not None:
            dirty = [w for ws in r.dirty.values() for w in ws]
            lag = (self.now_ms() - min(dirty)) / 1000 if dirty else 0.0
            out += [
                "# HELP citysense_api_rollup_lag_seconds Age of the oldest hour awaiting "
                "recompute, as the API sees it (its buckets come from raw data meanwhile).",
                "# TYPE citysense_api_rollup_lag_seconds gauge",
                f"citysense_api_rollup_lag_seconds {lag:.3f}",
                "# HELP citysense_api_rollup_dirty_windows Hour windows awaiting recompute.",
                "# TYPE citysense_api_rollup_dirty_windows gauge",
                f"citysense_api_rollup_dirty_windows {len(dirty)}",
                "# HELP citysense_api_rollups_available 1 when the store keeps rollups.",
                "# TYPE citysense_api_rollups_available gauge",
                f"citysense_api_rollups_available {int(r.ready)}",
            ]
        return out


class RollupBackedReader:
    """A :class:`~timeseries.query.Reader` whose series come from the rollups where they fit
    (:class:`RollupReads`); everything else is the store's reader. For the API's own
    background readers (quality checks, forecast history, flagged-reading exclusion): they
    ask days of hourly means, which the 1-hour rollup answers without reading raw data."""

    def __init__(self, reader: Reader, rollups: RollupReads) -> None:
        self.reader = reader
        self.rollups = rollups

    @property
    def description(self) -> str:
        return self.reader.description

    async def ping(self) -> None:
        await self.reader.ping()

    async def latest(
        self, metrics: tuple[str, ...], filters: Mapping[str, str], start_ms: int, end_ms: int
    ) -> list[LatestValue]:
        return await self.reader.latest(metrics, filters, start_ms, end_ms)

    async def series(self, query: SeriesQuery) -> list[SeriesGroup]:
        return (await self.rollups.series(query))[0]

    async def series_many(self, queries: list[SeriesQuery]) -> list[list[SeriesGroup]]:
        return [groups for groups, _ in await self.rollups.series_many(queries)]

    async def count_series(self, query: SeriesQuery) -> int:
        return await self.reader.count_series(query)

    async def tag_values(self, key: str, metric: str, filters: Mapping[str, str]) -> list[str]:
        return await self.reader.tag_values(key, metric, filters)

    async def aclose(self) -> None:
        return None  # the reader belongs to the lifespan that opened it


def open_rollup_reads(
    settings: Settings, reader: Reader, clock: Callable[[], float]
) -> RollupReads | None:
    """Series from rollups when they are on and the store keeps them."""
    if not settings.rollups:
        return None
    partial = open_partials(reader)
    if partial is None:
        return None
    raw_ms = parse_retention(settings.retention_raw, "--retention-raw")
    return RollupReads(reader, partial, raw_ms, clock)


@contextlib.asynccontextmanager
async def keep_latest(cache: LatestCache) -> AsyncIterator[LatestCache]:
    """Run the cache's loop for the lifetime of the context."""
    try:
        async with running(cache.run(), "latest-cache"):
            yield cache
    finally:
        if cache.rollups is not None:
            await cache.rollups.partial.aclose()
