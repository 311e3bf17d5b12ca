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
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from citysense.errors import InputError, PermanentError, RetryableError
from timeseries.influxql import InfluxQLReader, _num, quote_ident, time_clause, where_filters
from timeseries.query import Reader, SeriesGroup, SeriesQuery, check_filters
from timeseries.rollup import HOUR, MINUTE, ROLLUP_RP, WIDTHS, MarkView
from timeseries.sqlite_query import SqliteReader

#: group value -> bucket start -> partial aggregate
Partials = dict[str, dict[int, tuple[float, ...]]]


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


def plan(q: SeriesQuery, dirty_minutes: set[int] | frozenset[int]) -> list[Segment]:
    """Segments covering ``[q.start, q.end)`` (see the module doc); ``dirty_minutes``: the
    minute windows of the metric's measurement awaiting recompute."""
    sources = allowed_sources(q)
    segs: list[Segment] = []

    def add(a: int, b: int, src: str) -> None:
        if segs and segs[-1].source == src and segs[-1].end == a:
            segs[-1] = Segment(segs[-1].start, b, src)
        else:
            segs.append(Segment(a, b, src))

    pos, end = q.start_ms, q.end_ms
    if not sources:
        return [Segment(pos, end, "raw")]
    everything = isinstance(dirty_minutes, _AllDirty)
    dirty_hours = {m - m % HOUR for m in dirty_minutes} if not everything else dirty_minutes
    while pos < end:
        hour = pos - pos % HOUR
        if "1h" in sources and pos % HOUR == 0 and pos + HOUR <= end and hour not in dirty_hours:
            add(pos, pos + HOUR, "1h")
            pos += HOUR
            continue
        minute_end = pos - pos % MINUTE + MINUTE
        if pos % MINUTE == 0 and minute_end <= end and pos not in dirty_minutes:
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


class PartialReader(Protocol):
    async def partials(self, items: list[tuple[SeriesQuery, str]]) -> list[Partials]: ...
    async def dirty_marks(self, now_ms: int) -> dict[tuple[str, int], int] | None:
        """(measurement, hour) -> token of each hour awaiting recompute (InfluxDB: of every
        marked hour, with a flag in the token's sign: negative when clean); None while the
        store keeps no rollups."""
        ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- InfluxQL

_ROLLUP_FUNCS = {
    "mean": (("sum", "sum"), ("sum", "count")),
    "sum": (("sum", "sum"),),
    "count": (("sum", "count"),),
    "min": (("min", "min"),),
    "max": (("max", "max"),),
}


class InfluxPartials:
    """Partial aggregates over InfluxQL: raw measurements and ``rollup``.``{domain}_{w}``."""

    def __init__(self, reader: InfluxQLReader) -> None:
        self.reader = reader
        self._has_policy = False
        self._view = MarkView()

    def _statements(self, q: SeriesQuery, source: str) -> list[str]:
        where, _ = where_filters(q.filters)
        group = f"time({int(q.every_ms)}ms, {int(q.offset_ms)}ms)"
        if q.group_by is not None:
            group += f", {quote_ident(q.group_by)}"
        span = time_clause(q.start_ms, q.end_ms)
        tail = f"WHERE {span}{where} GROUP BY {group} fill(none)"
        f = q.metric
        if source == "raw":
            src = quote_ident(q.measurement)
            if q.agg == "last":
                return [f"SELECT last({quote_ident(f)}) FROM {src} {tail}"]
            if q.is_bool:
                true = f" AND {quote_ident(f)} = true"
                return [
                    f"SELECT count({quote_ident(f)}) FROM {src} WHERE {span}{where}{true} "
                    f"GROUP BY {group} fill(none)",
                    f"SELECT count({quote_ident(f)}) FROM {src} {tail}",
                ]
            funcs = {"mean": ("sum", "count")}.get(q.agg, (q.agg,))
            cols = ", ".join(f"{fn}({quote_ident(f)})" for fn in funcs)
            return [f"SELECT {cols} FROM {src} {tail}"]
        src = f"{quote_ident(ROLLUP_RP)}.{quote_ident(q.measurement + '_' + source)}"
        if q.agg == "last":
            return [
                f"SELECT max({quote_ident(f + '_last_t')}), {quote_ident(f + '_last')} "
                f"FROM {src} {tail}"
            ]
        cols = ", ".join(
            f"{fn}({quote_ident(f + '_' + comp)})" for fn, comp in _ROLLUP_FUNCS[q.agg]
        )
        return [f"SELECT {cols} FROM {src} {tail}"]

    def _parse(self, q: SeriesQuery, source: str, results: list[dict[str, Any]]) -> Partials:
        out: Partials = {}
        key = q.group_by
        bool_raw = source == "raw" and q.is_bool and q.agg != "last"
        e, o = q.every_ms, q.offset_ms
        for series in results[-1].get("series", []):
            g = series.get("tags", {}).get(key, "") if key else ""
            buckets = out.setdefault(g, {})
            for row in series.get("values", []):
                vals = [_num(v) for v in row[1:]]
                if any(v is None for v in vals):
                    continue
                b = (int(row[0]) - o) // e * e + o
                if source != "raw" and q.agg == "last":
                    buckets[b] = (vals[1],)  # type: ignore[assignment]
                else:
                    buckets[b] = tuple(vals)  # type: ignore[arg-type]
        if bool_raw:
            trues: dict[tuple[str, int], float] = {}
            for series in results[0].get("series", []):
                g = series.get("tags", {}).get(key, "") if key else ""
                for row in series.get("values", []):
                    trues[(g, int(row[0]))] = float(row[1] or 0)
            for g, buckets in out.items():
                for b, (total,) in list(buckets.items()):
                    t = trues.get((g, b), 0.0)
                    buckets[b] = {
                        "mean": (t, total),
                        "sum": (t,),
                        "count": (total,),
                        "min": (1.0 if t >= total else 0.0,),
                        "max": (1.0 if t > 0 else 0.0,),
                    }[q.agg]
        return out

    async def partials(self, items: list[tuple[SeriesQuery, str]]) -> list[Partials]:
        if not items:
            return []
        _, params = where_filters(items[0][0].filters)
        statements = [self._statements(q, src) for q, src in items]
        flat = [s for group in statements for s in group]
        results = await self.reader._query(flat, params)
        out = []
        k = 0
        for (q, src), group in zip(items, statements, strict=True):
            out.append(self._parse(q, src, results[k : k + len(group)]))
            k += len(group)
        return out

    async def dirty_marks(self, now_ms: int) -> dict[tuple[str, int], int] | None:
        if not self._has_policy:
            try:
                res = await self.reader._query(["SHOW RETENTION POLICIES"], {})
            except PermanentError:  # e.g. a 2.x compatibility endpoint: no rollups there
                return None
            policies = {r[0] for s in res[0].get("series", []) for r in s.get("values", [])}
            if ROLLUP_RP not in policies:
                return None  # no rollups kept (yet)
            self._has_policy = True
        res = await self.reader._query(self._view.statements(now_ms), {})
        return self._view.update(res, now_ms)

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- embedded store

_SQL_RAW = {
    "mean": "SUM(value), COUNT(*)",
    "sum": "SUM(value)",
    "count": "COUNT(*)",
    "min": "MIN(value)",
    "max": "MAX(value)",
    "last": "value, MAX(t)",
}
_SQL_ROLLUP = {
    "mean": "SUM(sum), SUM(count)",
    "sum": "SUM(sum)",
    "count": "SUM(count)",
    "min": "MIN(min)",
    "max": "MAX(max)",
    "last": "last, MAX(last_t)",
}


class SqlitePartials:
    """Partial aggregates over the embedded store's ``samples`` and ``rollup_*`` tables."""

    def __init__(self, reader: SqliteReader) -> None:
        self.reader = reader

    def _run(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            return self.reader._run(sql, args)
        except RetryableError as exc:
            if "no such table" in str(exc):
                return []  # no rollups in this store (yet)
            raise

    def _one(self, q: SeriesQuery, source: str) -> Partials:
        checked = check_filters(q.filters)
        where = "".join(f" AND {k} = ?" for k in checked)
        group = q.group_by if q.group_by is not None else "''"
        table = "samples" if source == "raw" else f"rollup_{source}"
        cols = (_SQL_RAW if source == "raw" else _SQL_ROLLUP)[q.agg]
        sql = (
            f"SELECT {group} AS g, ((t - ?) / ?) * ? + ? AS b, {cols} FROM {table} "
            f"WHERE metric = ? AND t >= ? AND t < ?{where} GROUP BY g, b"
        )
        e, o = q.every_ms, q.offset_ms
        rows = self._run(sql, [o, e, e, o, q.metric, q.start_ms, q.end_ms, *checked.values()])
        out: Partials = {}
        n = 2 if q.agg == "mean" else 1
        for row in rows:
            out.setdefault(str(row[0]), {})[int(row[1])] = tuple(float(v) for v in row[2 : 2 + n])
        return out

    async def partials(self, items: list[tuple[SeriesQuery, str]]) -> list[Partials]:
        def run() -> list[Partials]:
            return [self._one(q, src) for q, src in items]

        return await asyncio.to_thread(run)

    async def dirty_marks(self, now_ms: int) -> dict[tuple[str, int], int] | None:
        def run() -> dict[tuple[str, int], int] | None:
            if not self._run("SELECT 1 FROM rollup_meta WHERE key = 'backfilled'", []):
                return None
            rows = self._run("SELECT measurement, window, token FROM rollup_dirty", [])
            return {(str(m), int(w)): int(tok) for m, w, tok in rows}

        return await asyncio.to_thread(run)

    async def aclose(self) -> None:
        return None  # the reader's connection is the reader's


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

    #: 1-hour segments' partials, reused while none of their hours changed
    cache: OrderedDict[tuple[Any, ...], tuple[int, Partials]] = field(default_factory=OrderedDict)
    #: measurement -> hour -> the refresh in which its mark last changed
    changed: dict[str, dict[int, int]] = field(default_factory=dict)
    version: int = 0
    cache_hits: int = 0
    cache_size: int = 512

    async def refresh(self) -> None:
        now = int(self.clock() * 1000)
        marks = await self.partial.dirty_marks(now)
        dirty: dict[str, set[int]] = {}
        for (m, w), tok in (marks or {}).items():
            if tok > 0:
                dirty.setdefault(m, set()).add(w)
        new = marks or {}
        self.version += 1
        for key in set(new.items()) ^ set(self.tokens.items()):
            (m, w), _ = key
            self.changed.setdefault(m, {})[w] = self.version
        self.dirty, self.tokens = dirty, new
        self.refreshed_ms = now
        self.ready = marks is not None

    def horizon(self, now_ms: int) -> int:
        return now_ms - self.raw_horizon_ms

    def _cached(self, key: tuple[Any, ...], q: SeriesQuery) -> Partials | None:
        entry = self.cache.get(key)
        if entry is None:
            return None
        version, parts = entry
        changed = self.changed.get(q.measurement, {})
        if any(v > version and q.start_ms <= w < q.end_ms for w, v in changed.items()):
            del self.cache[key]
            return None
        self.cache.move_to_end(key)
        self.cache_hits += 1
        return parts

    async def series(self, q: SeriesQuery) -> tuple[list[SeriesGroup], str]:
        """The answer and its source (``raw``, ``1m`` or ``1h``)."""
        return (await self.series_many([q]))[0]

    async def series_many(self, queries: list[SeriesQuery]) -> list[tuple[list[SeriesGroup], str]]:
        """:meth:`series` of each query; the storage is asked once for what is not cached
        (InfluxDB: one request when the queries share their filters)."""
        plans = []
        for q in queries:
            segs = plan(q, self.dirty.get(q.measurement, set()) if self.ready else _ALL_DIRTY)
            if self.ready:  # without rollups, raw data is all there is
                self.check_horizon(q, segs)
            plans.append(segs)
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
                if seg.source == "1h":
                    key = (
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
                    self.cache[key] = (version, p)
                    while len(self.cache) > self.cache_size:
                        self.cache.popitem(last=False)
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
