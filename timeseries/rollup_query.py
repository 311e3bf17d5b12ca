"""Series answered from rollups: the plan, the partial aggregates, their exact merge.

:func:`plan` cuts a query's range into segments, each read from the coarsest source that fits
it: the 1-hour rollup for whole clean hours, the 1-minute rollup for whole clean minutes, raw
data for the rest (the newest minutes, windows being recomputed, ranges not aligned to a
rollup window). A rollup source is used only when its window divides ``every`` and the bucket
grid (``offset``): then every bucket is a union of whole windows, and each bucket's answer is
merged from its segments' partial aggregates -- ``sum`` and ``count`` for ``mean`` (never a
mean of means), the extreme for ``min``/``max``, the newest segment's value for ``last`` --
so it equals the answer from raw data. A raw segment before the raw-data horizon cannot be
answered: :class:`HorizonError` (400, naming the horizon).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from citysense.errors import InputError
from timeseries.influxql import InfluxQLReader
from timeseries.query import Reader, SeriesGroup, SeriesQuery
from timeseries.rollup import DIRTY_LOOKBACK_MS, HOUR, MINUTE, WIDTHS
from timeseries.rollup_partials import InfluxPartials, PartialReader, Partials, SqlitePartials
from timeseries.sqlite_query import SqliteReader


class HorizonError(InputError):
    """A query needing raw data from before the raw-data horizon."""

    def __init__(self, horizon_ms: int, message: str) -> None:
        super().__init__(message, "beyond_horizon")
        self.parameter = "start"
        self.horizon_ms = horizon_ms


@dataclass(frozen=True, slots=True)
class Segment:
    start: int
    end: int
    source: str  #: "raw", "1m" or "1h"


class _AllDirty(frozenset[int]):
    """Every window is dirty (no rollups to use)."""

    def __contains__(self, item: object) -> bool:
        return True


_ALL_DIRTY = _AllDirty()


def allowed_sources(q: SeriesQuery) -> list[str]:
    """Rollups whose windows tile every bucket of ``q``, coarsest first."""
    return [
        name
        for name, width in sorted(WIDTHS.items(), key=lambda kv: -kv[1])
        if q.every_ms % width == 0 and q.offset_ms % width == 0
    ]


def plan(
    q: SeriesQuery,
    dirty_minutes: set[int] | frozenset[int],
    empty: Callable[[int], bool] | None = None,
) -> list[Segment]:
    """Segments covering ``[q.start, q.end)`` (see the module doc); ``dirty_minutes``: the
    minute windows of the metric's measurement awaiting recompute; ``empty``: whether a
    minute is known to hold no data (it has no mark), then left out -- a segment read at
    minute grain (``1m`` or raw) may span it, so the newest minutes with no data yet and the
    gaps between written minutes cost no read."""
    sources = allowed_sources(q)
    segs: list[Segment] = []
    gap = False  # minutes left out since the last segment's end

    def add(a: int, b: int, src: str) -> None:
        nonlocal gap
        last = segs[-1] if segs else None
        if last and last.source == src and (last.end == a or (gap and src != "1h")):
            segs[-1] = Segment(last.start, b, src)
        else:
            segs.append(Segment(a, b, src))
        gap = False

    pos, end = q.start_ms, q.end_ms
    if not sources:
        return [Segment(pos, end, "raw")]
    everything = isinstance(dirty_minutes, _AllDirty)
    dirty_hours = {m - m % HOUR for m in dirty_minutes} if not everything else dirty_minutes
    ordered = sorted(dirty_hours) if not everything else []
    last_hour = end - end % HOUR  # whole hours end here
    while pos < end:
        hour = pos - pos % HOUR
        if "1h" in sources and pos % HOUR == 0 and pos + HOUR <= end and hour not in dirty_hours:
            # the run of clean whole hours from here (a year is 8,760 of them)
            stop = last_hour
            if not everything:
                k = bisect.bisect_right(ordered, pos)
                if k < len(ordered):
                    stop = min(stop, ordered[k])
            add(pos, stop, "1h")
            pos = stop
            continue
        minute = pos - pos % MINUTE
        minute_end = minute + MINUTE
        if empty is not None and empty(minute):
            gap = True
        elif pos % MINUTE == 0 and minute_end <= end and pos not in dirty_minutes:
            add(pos, minute_end, "1m")
        else:
            add(pos, min(minute_end, end), "raw")
        pos = min(minute_end, end)
    return segs


def merge(agg: str, parts: Sequence[Partials]) -> Partials:
    """Merge segments' partials (in time order) per group and bucket."""
    out: Partials = {}
    for part in parts:
        for g, buckets in part.items():
            mine = out.setdefault(g, {})
            for b, p in buckets.items():
                old = mine.get(b)
                if old is None or agg == "last":
                    mine[b] = p
                elif agg == "mean":
                    mine[b] = (old[0] + p[0], old[1] + p[1])
                elif agg in ("sum", "count"):
                    mine[b] = (old[0] + p[0],)
                elif agg == "min":
                    mine[b] = (min(old[0], p[0]),)
                else:
                    mine[b] = (max(old[0], p[0]),)
    return out


def finish(q: SeriesQuery, merged: Partials) -> list[SeriesGroup]:
    key = q.group_by
    groups = []
    for g in sorted(merged):
        buckets = merged[g]
        points = []
        for b in sorted(buckets):
            p = buckets[b]
            points.append((b, p[0] / p[1] if q.agg == "mean" else p[0]))
        groups.append(SeriesGroup({key: g} if key else {}, points))
    return groups


# --------------------------------------------------------------------------- the reads


@dataclass
class RollupReads:
    """Series from rollups, with the dirty hours refreshed by :meth:`refresh`."""

    reader: Reader
    partial: PartialReader
    raw_horizon_ms: int  #: how long raw data is kept
    clock: Any = time.time
    dirty: dict[str, set[int]] = field(default_factory=dict)
    tokens: dict[tuple[str, int], int] = field(default_factory=dict)
    refreshed_ms: int | None = None
    ready: bool = False

    #: rollup segments' partials (with their size in buckets), reused while none of their
    #: hours changed
    cache: OrderedDict[tuple[Any, ...], tuple[int, Partials, int]] = field(
        default_factory=OrderedDict
    )
    #: measurement -> hour -> the refresh in which a mark of one of its minutes last changed
    changed: dict[str, dict[int, int]] = field(default_factory=dict)
    #: measurement -> every marked minute (written within the look-back)
    marked: dict[str, set[int]] = field(default_factory=dict)
    #: measurement -> minutes written since the refresh before the last one
    fresh: dict[str, set[int]] = field(default_factory=dict)
    _pruned_ms: int = 0
    version: int = 0
    cache_hits: int = 0
    cache_size: int = 512
    #: buckets the cache holds at most in all (about 200 bytes each as Python objects); an
    #: answer over an eighth of it is not kept: a city's per-device windows over days (the
    #: quality checks read 1.2 million buckets a metric at 10,000 devices) would otherwise
    #: stay in memory for good
    cache_buckets: int = 500_000
    cached_buckets: int = 0

    async def refresh(self, whole: bool = False) -> None:
        """Fold in the marks changed since the last refresh: the dirty minutes, the hours
        whose cached partials are stale, and :attr:`fresh` (minutes with new writes);
        ``whole``: of old minutes too now (see :meth:`PartialReader.dirty_marks`)."""
        now = int(self.clock() * 1000)
        got = await self.partial.dirty_marks(now, whole)
        marks, changed = got if got is not None else ({}, set(self.tokens))
        self.version += 1
        fresh: dict[str, set[int]] = {}
        for key in changed:
            m, w = key
            self.changed.setdefault(m, {})[w - w % HOUR] = self.version
            old, new = self.tokens.get(key), marks.get(key)
            dirty = self.dirty.setdefault(m, set())
            marked = self.marked.setdefault(m, set())
            if new is None:
                self.tokens.pop(key, None)
                dirty.discard(w)
                marked.discard(w)
                continue
            self.tokens[key] = new
            marked.add(w)
            if new > 0:
                dirty.add(w)
            else:
                dirty.discard(w)
            if old is None or abs(old) != abs(new):
                fresh.setdefault(m, set()).add(w)
        self.fresh = fresh
        if now - self._pruned_ms >= HOUR:  # hours out of every look-back: forget them
            self._pruned_ms = now
            oldest = now - 9 * 24 * HOUR
            for hours in self.changed.values():
                for h in [h for h in hours if h < oldest]:
                    del hours[h]
            self.cache.clear()
            self.cached_buckets = 0
        self.refreshed_ms = now
        self.ready = got is not None

    def horizon(self, now_ms: int) -> int:
        return now_ms - self.raw_horizon_ms

    def _empty(self, q: SeriesQuery, now_ms: int) -> Callable[[int], bool] | None:
        """Minutes known to hold no data of ``q``'s measurement: unmarked, where the store
        keeps every mark over the look-back (InfluxDB)."""
        if not self.partial.marks_complete:
            return None
        marked = self.marked.get(q.measurement, set())
        since = now_ms - DIRTY_LOOKBACK_MS + HOUR
        return lambda w: w >= since and w not in marked

    def _changed_after(self, q: SeriesQuery, version: int) -> bool:
        """Whether an hour of ``q``'s range changed after ``version``."""
        changed = self.changed.get(q.measurement, {})
        first = q.start_ms - q.start_ms % HOUR
        if (q.end_ms - first) // HOUR < len(changed):
            return any(changed.get(h, 0) > version for h in range(first, q.end_ms, HOUR))
        return any(v > version and first <= h < q.end_ms for h, v in changed.items())

    def _cached(self, key: tuple[Any, ...], q: SeriesQuery) -> Partials | None:
        entry = self.cache.get(key)
        if entry is None:
            return None
        version, parts, _ = entry
        if self._changed_after(q, version):
            self._uncache(key)
            return None
        self.cache.move_to_end(key)
        self.cache_hits += 1
        return parts

    def _keep(self, key: tuple[Any, ...], version: int, parts: Partials) -> None:
        """Cache ``parts`` within :attr:`cache_size` entries and :attr:`cache_buckets`
        buckets, the least recently used going first."""
        self._uncache(key)
        size = sum(len(buckets) for buckets in parts.values())
        if size > self.cache_buckets // 8:
            return
        self.cache[key] = (version, parts, size)
        self.cached_buckets += size
        while len(self.cache) > self.cache_size or self.cached_buckets > self.cache_buckets:
            _, (_, _, old) = self.cache.popitem(last=False)
            self.cached_buckets -= old

    def _uncache(self, key: tuple[Any, ...]) -> None:
        entry = self.cache.pop(key, None)
        if entry is not None:
            self.cached_buckets -= entry[2]

    async def series(self, q: SeriesQuery) -> tuple[list[SeriesGroup], str]:
        """The answer and its source (``raw``, ``1m`` or ``1h``)."""
        return (await self.series_many([q]))[0]

    def _plan(self, q: SeriesQuery) -> list[Segment]:
        if not self.ready:  # without rollups, raw data is all there is
            return plan(q, _ALL_DIRTY)
        now = int(self.clock() * 1000)
        segs = plan(q, self.dirty.get(q.measurement, set()), self._empty(q, now))
        self.check_horizon(q, segs)
        return segs

    async def series_many(self, queries: list[SeriesQuery]) -> list[tuple[list[SeriesGroup], str]]:
        """:meth:`series` of each query; the storage is asked once for what is not cached
        (InfluxDB: one request when the queries share their filters)."""
        plans = [self._plan(q) for q in queries]
        out: list[tuple[list[SeriesGroup], str] | None] = [None] * len(queries)
        asks: list[tuple[SeriesQuery, str]] = []
        slots: list[tuple[int, int, tuple[Any, ...] | None]] = []
        parts: list[list[Partials | None]] = []
        for i, (q, segs) in enumerate(zip(queries, plans, strict=True)):
            parts.append([None] * len(segs))
            if len(segs) == 1 and segs[0].source == "raw":
                continue
            for j, seg in enumerate(segs):
                sq = replace(q, start_ms=seg.start, end_ms=seg.end)
                key = None
                if seg.source != "raw":
                    key = (
                        seg.source,
                        *(sq.metric, sq.start_ms, sq.end_ms, sq.every_ms, sq.offset_ms, sq.agg),
                        tuple(sorted(sq.filters.items())),
                        sq.group_by,
                    )
                    hit = self._cached(key, sq)
                    if hit is not None:
                        parts[i][j] = hit
                        continue
                asks.append((sq, seg.source))
                slots.append((i, j, key))
        version = self.version
        by_filters: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for k, (sq, _) in enumerate(asks):
            by_filters.setdefault(tuple(sorted(sq.filters.items())), []).append(k)
        answers = await asyncio.gather(
            *(self.partial.partials([asks[k] for k in ks]) for ks in by_filters.values())
        )
        for ks, got in zip(by_filters.values(), answers, strict=True):
            for k, p in zip(ks, got, strict=True):
                i, j, key = slots[k]
                parts[i][j] = p
                if key is not None:
                    self._keep(key, version, p)
        raw_only = [i for i, segs in enumerate(plans) if len(segs) == 1 and segs[0].source == "raw"]
        if raw_only:
            raws = await self.reader.series_many([queries[i] for i in raw_only])
            for i, groups in zip(raw_only, raws, strict=True):
                out[i] = (groups, "raw")
        for i, (q, segs) in enumerate(zip(queries, plans, strict=True)):
            if out[i] is not None:
                continue
            used = {s.source for s in segs}
            source = "1h" if "1h" in used else "1m" if "1m" in used else "raw"
            got = [p for p in parts[i] if p is not None]
            out[i] = (finish(q, merge(q.agg, got)), source)
        return [o for o in out if o is not None]

    def check_horizon(self, q: SeriesQuery, segs: Sequence[Segment]) -> None:
        horizon = self.horizon(int(self.clock() * 1000))
        for s in segs:
            if s.source == "raw" and s.start < horizon:
                from datetime import UTC, datetime

                when = datetime.fromtimestamp(horizon / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                raise HorizonError(
                    horizon,
                    f"start: raw data is kept since {when} (the raw-data horizon); before it only "
                    "1-minute and 1-hour rollups exist: ask every as a multiple of 1m with "
                    "start on a whole minute, or start after the horizon",
                )


def open_partials(reader: Reader) -> PartialReader | None:
    """Partial reads for the store behind ``reader`` (None: rollups not supported)."""
    if isinstance(reader, InfluxQLReader):
        return InfluxPartials(reader)
    if isinstance(reader, SqliteReader):
        return SqlitePartials(reader)
    return None
