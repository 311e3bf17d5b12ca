"""The embedded store: points kept in SQLite, long form, one row per value.

Same semantics as InfluxDB: a repeated (metric, device, t) overwrites (:data:`SQLITE_UPSERT`),
so redelivery never duplicates. A write is one transaction, committed with
``synchronous=FULL`` in WAL mode before :meth:`SqliteWriter.write` returns, so an acknowledged
point survives a crash; readers (the API) see only committed batches. Booleans are stored as
0.0/1.0; their type is the catalog's. ``database is locked`` and disk errors are retryable.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from citysense.durable import connect_versioned, store_transaction
from citysense.migrate import Migration, statements
from citysense.privatefiles import private_file
from timeseries.rollup_sqlite import SQLITE_ROLLUP_SCHEMA
from timeseries.schema import SQLITE_SCHEMA, SQLITE_UPSERT, Point
from timeseries.writer import WriteResult


def _rows(points: Sequence[Point]) -> Iterator[tuple[object, ...]]:
    for p in points:
        device, kind, district, site, gateway = p.tags
        m, t = p.measurement, p.t
        for metric, value in p.fields.items():
            yield (metric, device, t, float(value), m, kind, district, site, gateway)


#: Schema versions of the embedded store (see :mod:`citysense.migrate`); append, never edit.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "citysense 0.1.0: samples, one row per value", statements(SQLITE_SCHEMA)),
    Migration(
        2,
        "1-minute and 1-hour rollups with their dirty marks",
        statements(SQLITE_ROLLUP_SCHEMA),
    ),
)


class SqliteWriter:
    """Writes points to the embedded SQLite store at ``path`` (created if missing)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        private_file(self.path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = connect_versioned(
            self.path, "embedded store", MIGRATIONS
        )
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB
        self._mark: tuple[str, Callable[[], int]] | None = None

    def enable_marks(self, schema: str, upsert: str, token: Callable[[], int]) -> None:
        """Also record, in each write's own transaction, the (measurement, hour) windows it
        touched (:mod:`timeseries.rollup`)."""
        with self._lock:
            assert self._db is not None
            self._db.executescript(schema)
            self._mark = (upsert, token)

    def write_blocking(self, points: Sequence[Point]) -> WriteResult:
        """Store ``points`` in one transaction (blocking; for threads and scripts)."""
        with self._lock, store_transaction(self._db, "embedded store", self.path) as db:
            # In key order: each batch then touches the B-tree's pages in one sweep
            # (2-3x faster once the table outgrows the page cache).
            db.executemany(SQLITE_UPSERT, sorted(_rows(points)))
            if self._mark is not None:
                upsert, token = self._mark
                tok = token()
                windows = {(p.measurement, p.t - p.t % 60_000) for p in points}
                db.executemany(upsert, [(m, w, tok) for m, w in sorted(windows)])
        return WriteResult(len(points))

    async def write(self, points: Sequence[Point]) -> WriteResult:
        if not points:
            return WriteResult(0)
        return await asyncio.to_thread(self.write_blocking, points)

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
