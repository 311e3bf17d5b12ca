"""Reader over the embedded SQLite store (table ``samples``, see :mod:`timeseries.schema`).

Invariants:

* the database is opened read-only (``mode=ro``): this reader cannot write;
* SQL text holds only column names from :data:`~timeseries.schema.TAG_KEYS`, aggregate
  names from a fixed table and ``?`` placeholders; every value is bound;
* buckets are ``(t - offset) // every * every + offset`` -- as InfluxQL's ``time(every, offset)``;
* a store that does not exist yet reads as empty (the ingestor creates it on first write);
* queries run in a worker thread, one at a time per reader, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from citysense.errors import PermanentError, RetryableError
from timeseries.query import (
    LatestValue,
    SeriesGroup,
    SeriesQuery,
    check_filters,
    check_metric,
    check_range,
)
from timeseries.schema import TAG_KEYS

_AGG_SQL = {"mean": "AVG", "min": "MIN", "max": "MAX", "sum": "SUM", "count": "COUNT"}

Row = tuple[object, ...]


def _where(filters: Mapping[str, str]) -> tuple[str, list[object]]:
    checked = check_filters(filters)
    return "".join(f" AND {k} = ?" for k in checked), list(checked.values())


def build_series_sql(q: SeriesQuery) -> tuple[str, list[object]]:
    """SQL and parameters answering ``q``: rows ``(group, bucket, value)``."""
    where, args = _where(q.filters)
    group = q.group_by if q.group_by is not None else "''"
    bucket = "((t - ?) / ?) * ? + ?"
    if q.agg == "last":
        # SQLite's bare-column rule: with MAX(t), ``value`` comes from the newest row.
        select = f"SELECT {group} AS g, {bucket} AS b, value, MAX(t)"
    else:
        select = f"SELECT {group} AS g, {bucket} AS b, {_AGG_SQL[q.agg]}(value)"
    sql = (
        f"{select} FROM samples WHERE metric = ? AND t >= ? AND t < ?{where} "
        "GROUP BY g, b ORDER BY g, b"
    )
    e, o = q.every_ms, q.offset_ms
    return sql, [o, e, e, o, q.metric, q.start_ms, q.end_ms, *args]


class SqliteReader:
    """:class:`~timeseries.query.Reader` over the embedded store's ``samples`` table."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"sqlite {self._path}"

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None:
            if not self._path.exists():
                return None
            try:
                conn = sqlite3.connect(
                    f"file:{self._path}?mode=ro", uri=True, check_same_thread=False
                )
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("SELECT 1 FROM samples LIMIT 1").fetchall()
            except sqlite3.Error:
                return None  # not created yet by the writer
            self._conn = conn
        return self._conn

    def _run(self, sql: str, args: Sequence[object]) -> list[Row]:
        with self._lock:
            conn = self._connect()
            if conn is None:
                # the same answer as ping: no store folder is storage unreachable; a folder
                # whose store the writer has not created yet is an empty store
                self._check_folder()
                return []
            try:
                return conn.execute(sql, list(args)).fetchall()
            except sqlite3.OperationalError as exc:
                raise RetryableError(f"embedded store: {exc}") from exc
            except sqlite3.Error as exc:
                raise PermanentError(f"embedded store: {exc}") from exc

    async def _fetch(self, sql: str, args: Sequence[object]) -> list[Row]:
        return await asyncio.to_thread(self._run, sql, args)

    def _check_folder(self) -> None:
        if not self._path.parent.is_dir():
            raise RetryableError(f"embedded store folder {self._path.parent} is missing")

    async def ping(self) -> None:
        await asyncio.to_thread(self._check_folder)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)

    async def latest(
        self,
        metrics: tuple[str, ...],
        filters: Mapping[str, str],
        start_ms: int,
        end_ms: int,
    ) -> list[LatestValue]:
        check_range(start_ms, end_ms)
        for m in metrics:
            check_metric(m)
        if not metrics:
            return []
        where, args = _where(filters)
        marks = ", ".join("?" for _ in metrics)
        sql = (
            "SELECT device, metric, MAX(t), value, kind, district, site FROM samples "
            f"WHERE metric IN ({marks}) AND t >= ? AND t < ?{where} "
            "GROUP BY device, metric ORDER BY device, metric"
        )
        rows = await self._fetch(sql, [*metrics, start_ms, end_ms, *args])
        return [
            LatestValue(
                str(device),
                str(kind),
                str(district),
                str(site),
                str(metric),
                int(t),  # type: ignore[call-overload]
                float(value),  # type: ignore[arg-type]
            )
            for device, metric, t, value, kind, district, site in rows
        ]

    async def series(self, query: SeriesQuery) -> list[SeriesGroup]:
        sql, args = build_series_sql(query)
        rows = await self._fetch(sql, args)
        groups: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            g, b, value = row[0], row[1], row[2]
            groups.setdefault(str(g), []).append((int(b), float(value)))  # type: ignore[call-overload, arg-type]
        key = query.group_by
        return [SeriesGroup({key: g} if key else {}, points) for g, points in groups.items()]

    async def series_many(self, queries: list[SeriesQuery]) -> list[list[SeriesGroup]]:
        return [await self.series(q) for q in queries]

    async def count_series(self, query: SeriesQuery) -> int:
        sql, args = build_series_sql(query)
        rows = await self._fetch(f"SELECT COUNT(*) FROM ({sql})", args)
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    async def tag_values(self, key: str, metric: str, filters: Mapping[str, str]) -> list[str]:
        if key not in TAG_KEYS:
            raise PermanentError(f"unknown tag key {key!r}")
        check_metric(metric)
        where, args = _where(filters)
        sql = f"SELECT DISTINCT {key} FROM samples WHERE metric = ?{where} ORDER BY {key}"
        rows = await self._fetch(sql, [metric, *args])
        return [str(r[0]) for r in rows]
