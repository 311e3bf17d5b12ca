"""The embedded store's rollups: schema, dirty marks in the data's transaction, recompute."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from citysense.catalog import METRICS
from citysense.durable import connect_versioned, store_transaction, write_transaction
from timeseries.rollup_core import (
    HOUR,
    MINUTE,
    WIDTHS,
    Dirty,
    Window,
    aggregate,
    combine,
    new_token,
)

log = logging.getLogger(__name__)

SQLITE_ROLLUP_SCHEMA = (
    "".join(
        f"""
CREATE TABLE IF NOT EXISTS rollup_{name} (
    metric   TEXT    NOT NULL,
    device   TEXT    NOT NULL,
    t        INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    sum      REAL    NOT NULL,
    min      REAL    NOT NULL,
    max      REAL    NOT NULL,
    last     REAL    NOT NULL,
    last_t   INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    district TEXT    NOT NULL,
    site     TEXT    NOT NULL,
    PRIMARY KEY (metric, device, t)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollup_{name}_by_time ON rollup_{name} (t);
CREATE INDEX IF NOT EXISTS rollup_{name}_by_district ON rollup_{name} (metric, district, t);
"""
        for name in WIDTHS
    )
    + """
CREATE TABLE IF NOT EXISTS rollup_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollup_dirty (
    measurement TEXT    NOT NULL,
    window      INTEGER NOT NULL,
    token       INTEGER NOT NULL,
    PRIMARY KEY (measurement, window)
) WITHOUT ROWID;
"""
)

SQLITE_MARK = """
INSERT INTO rollup_dirty (measurement, window, token) VALUES (?, ?, ?)
ON CONFLICT (measurement, window) DO UPDATE SET token = excluded.token
"""


def _sqlite_rows(
    db: sqlite3.Connection, measurement: str, start: int, end: int
) -> list[tuple[tuple[str, ...], str, int, float]]:
    rows = db.execute(
        "SELECT device, kind, district, site, metric, t, value FROM samples "
        "WHERE t >= ? AND t < ? AND measurement = ? ORDER BY t",
        (start, end, measurement),
    ).fetchall()
    return [((d, k, di, s), m, t, v) for d, k, di, s, m, t, v in rows]


def _sqlite_row(metric: str, tags: tuple[str, ...], t: int, w: Window) -> tuple[object, ...]:
    device, kind, district, site = tags[:4]
    return (metric, device, t, w.count, w.sum, w.min, w.max, w.last, w.last_t, kind, district, site)


class SqliteRollupStore:
    """Rollup tables and dirty marks in the embedded store (marks come from the writer)."""

    def __init__(self, path: Path, raw_ms: int, rollup_ms: int) -> None:
        from timeseries.sqlite_store import MIGRATIONS

        self.path = path
        self.raw_ms, self.rollup_ms = raw_ms, rollup_ms
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect_versioned(path, "embedded store", MIGRATIONS)

    async def ensure(self) -> None:
        """First start over an existing store: every hour holding raw data is marked."""

        def run() -> None:
            with write_transaction(self._db) as db:
                if db.execute("SELECT 1 FROM rollup_meta WHERE key = 'backfilled'").fetchone():
                    return
                db.executemany(
                    SQLITE_MARK,
                    [
                        (m, w, new_token())
                        for m, w in db.execute(
                            "SELECT DISTINCT measurement, t - t % 60000 FROM samples"
                        ).fetchall()
                    ],
                )
                db.execute("INSERT INTO rollup_meta VALUES ('backfilled', 1)")

        await asyncio.to_thread(run)

    async def mark(self, measurement: str, windows: Iterable[int]) -> None:
        def run() -> None:
            with self._db:
                self._db.executemany(SQLITE_MARK, [(measurement, w, new_token()) for w in windows])

        await asyncio.to_thread(run)

    async def dirty(self, now_ms: int, whole: bool = False) -> list[Dirty]:
        def run() -> list[Dirty]:
            rows = self._db.execute(
                "SELECT measurement, window, token FROM rollup_dirty ORDER BY window"
            ).fetchall()
            return [Dirty(m, w, t) for m, w, t in rows]

        return await asyncio.to_thread(run)

    async def recompute(self, measurement: str, hour: int, dirty: list[Dirty]) -> int:
        return await asyncio.to_thread(self._recompute, measurement, hour, dirty)

    def _recompute(self, measurement: str, hour: int, dirty: list[Dirty]) -> int:
        first, last = dirty[0].window, dirty[-1].window + MINUTE
        metrics = [m for m, spec in METRICS.items() if spec.domain == measurement]
        marks = ", ".join("?" for _ in metrics)
        insert = (
            "(metric, device, t, count, sum, min, max, last, last_t, kind, district, site) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        # the raw read and the rollup write in one snapshot
        with store_transaction(self._db, "embedded store", self.path) as db:
            rows = _sqlite_rows(db, measurement, first, last)
            for table, start, end in (
                ("rollup_1m", first, last),
                ("rollup_1h", hour, hour + 1),
            ):
                db.execute(
                    f"DELETE FROM {table} WHERE t >= ? AND t < ? AND metric IN ({marks})",
                    (start, end, *metrics),
                )
            db.executemany(
                f"INSERT INTO rollup_1m {insert}",
                [
                    _sqlite_row(metric, tags, t, w)
                    for (tags, metric, t), w in aggregate(rows, MINUTE).items()
                ],
            )
            minutes = db.execute(
                "SELECT device, kind, district, site, metric, t, count, sum, min, max, last, "
                f"last_t FROM rollup_1m WHERE t >= ? AND t < ? AND metric IN ({marks}) "
                "ORDER BY t",
                (hour, hour + HOUR, *metrics),
            ).fetchall()
            db.executemany(
                f"INSERT INTO rollup_1h {insert}",
                [
                    _sqlite_row(metric, tags, t, w)
                    for (tags, metric, t), w in combine(
                        ((r[0], r[1], r[2], r[3]), r[4], r[5], Window(*r[6:])) for r in minutes
                    ).items()
                ],
            )
            db.executemany(
                "DELETE FROM rollup_dirty WHERE measurement = ? AND window = ? AND token = ?",
                [(d.measurement, d.window, d.token) for d in dirty],
            )
        return len(rows)

    async def retain(self, now_ms: int) -> int:
        def run() -> int:
            with self._db:
                n = self._db.execute(
                    "DELETE FROM samples WHERE t < ?", (now_ms - self.raw_ms,)
                ).rowcount
                for name in WIDTHS:
                    n += self._db.execute(
                        f"DELETE FROM rollup_{name} WHERE t < ?", (now_ms - self.rollup_ms,)
                    ).rowcount
                self._db.execute(
                    "DELETE FROM rollup_dirty WHERE window < ?", (now_ms - self.raw_ms - HOUR,)
                )
            return n

        return await asyncio.to_thread(run)

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)
