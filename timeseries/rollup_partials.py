"""Partial aggregates read from a store: raw data and rollup windows as the sums, counts and
extremes that :mod:`timeseries.rollup_query` merges, and the rollup marks it plans around.

:class:`InfluxPartials` reads InfluxQL (raw measurements and ``rollup``.``{domain}_{w}``);
:class:`SqlitePartials` the embedded store's ``samples`` and ``rollup_*`` tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from citysense.errors import PermanentError, RetryableError
from timeseries.influxql import InfluxQLReader, _num, quote_ident, time_clause, where_filters
from timeseries.query import SeriesQuery, check_filters
from timeseries.rollup import ROLLUP_RP, MarkView
from timeseries.sqlite_query import SqliteReader

#: group value -> bucket start -> partial aggregate
Partials = dict[str, dict[int, tuple[float, ...]]]
#: (measurement, minute) -> token (negative: clean), and the keys changed since the last read
MarkUpdate = tuple[Mapping[tuple[str, int], int], set[tuple[str, int]]]


class PartialReader(Protocol):
    #: every write's marks are kept over the look-back: an unmarked minute holds no data
    marks_complete: bool

    async def partials(self, items: list[tuple[SeriesQuery, str]]) -> list[Partials]: ...
    async def dirty_marks(self, now_ms: int, whole: bool = False) -> MarkUpdate | None:
        """Every marked (measurement, minute) with its token, negative when the minute is
        clean, and the keys whose token changed since the previous call; None while the
        store keeps no rollups. ``whole``: marks of old minutes (late data) read now too,
        else they may be read up to 10 s later."""
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

    marks_complete = True  # marks are points kept for the look-back, done or not

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

    async def dirty_marks(self, now_ms: int, whole: bool = False) -> MarkUpdate | None:
        if not self._has_policy:
            try:
                res = await self.reader._query(["SHOW RETENTION POLICIES"], {})
            except PermanentError:  # e.g. a 2.x compatibility endpoint: no rollups there
                return None
            policies = {r[0] for s in res[0].get("series", []) for r in s.get("values", [])}
            if ROLLUP_RP not in policies:
                return None  # no rollups kept (yet)
            self._has_policy = True
        res = await self.reader._query(self._view.statements(now_ms, whole), {})
        return self._view.signed, self._view.update(res, now_ms)

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

    marks_complete = False  # a mark is deleted once its window is recomputed

    def __init__(self, reader: SqliteReader) -> None:
        self.reader = reader
        self._last: dict[tuple[str, int], int] = {}

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

    async def dirty_marks(self, now_ms: int, whole: bool = False) -> MarkUpdate | None:
        def run() -> dict[tuple[str, int], int] | None:
            if not self._run("SELECT 1 FROM rollup_meta WHERE key = 'backfilled'", []):
                return None
            rows = self._run("SELECT measurement, window, token FROM rollup_dirty", [])
            return {(str(m), int(w)): int(tok) for m, w, tok in rows}

        marks = await asyncio.to_thread(run)
        if marks is None:
            return None
        old, self._last = self._last, marks
        changed = {k for k, tok in marks.items() if old.get(k) != tok}
        return marks, changed | (old.keys() - marks.keys())

    async def aclose(self) -> None:
        return None  # the reader's connection is the reader's
