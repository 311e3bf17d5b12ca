"""Rollups: 1-minute and 1-hour aggregates kept beside the raw data, exact for late data.

Per series (device and tags) and metric, a rollup window holds ``count, sum, min, max, last``
and the time of that last value, so any ``mean`` is ``sum(sum) / sum(count)`` (never a mean
of means) and ``last`` across series picks the newest value.

Which windows need work -- *dirty marks*: every write also records, in the same store and
before the write is acknowledged, a mark per (measurement, minute) it touched, carrying a
fresh token. The embedded store writes the marks in the data's own transaction; InfluxDB gets
them as extra points in the data's own ``/write`` request (measurement ``_rollup_dirty``, at
the minute's start). A minute is *clean* when its recorded ``done`` token equals its mark's
token; an hour when all its minutes are. :class:`RollupWorker` (run by the ingestor) takes the
dirty minutes hour by hour, recomputes their minute windows from the raw readings and the
hour window from the hour's minute windows, stores them, and then records the tokens it saw
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
import math
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from citysense.catalog import METRICS
from citysense.config import Settings, parse_retention
from citysense.durable import connect_versioned
from citysense.errors import PermanentError, RetryableError
from timeseries.connection import InfluxTarget, SqliteTarget, storage_target
from timeseries.influxql import _num
from timeseries.lineprotocol import LineSerializer
from timeseries.schema import TAG_KEYS, Point
from timeseries.writer import Writer, WriteResult

log = logging.getLogger(__name__)

MINUTE = 60_000
HOUR = 3_600_000
#: rollup name -> window width in ms, finest first
WIDTHS: dict[str, int] = {"1m": MINUTE, "1h": HOUR}
ROLLUP_RP = "rollup"
DIRTY = "_rollup_dirty"
DONE = "_rollup_done"
#: Marks are only looked for this far back: readings older than the ingestor's max age
#: (7 days by default) are never written, so no older window can turn dirty.
DIRTY_LOOKBACK_MS = 8 * 24 * HOUR
SETTLE_MS = 2_000
COMPONENTS = ("count", "sum", "min", "max", "last", "last_t")


def new_token() -> int:
    """A fresh mark token: microseconds with random low digits (unique across writers)."""
    return time.time_ns() // 1000 * 1000 + random.randrange(1000)


def token_age_ms(token: int, now_ms: int) -> int:
    return now_ms - token // 1_000_000


@dataclass(slots=True)
class Window:
    """A rollup window of one series and metric, being accumulated."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    last: float = 0.0
    last_t: int = -1

    def add(self, t: int, value: float) -> None:
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if t >= self.last_t:
            self.last, self.last_t = value, t


#: (series tags, metric, window start) -> Window
Rolled = dict[tuple[tuple[str, ...], str, int], Window]


def aggregate(rows: Iterable[tuple[tuple[str, ...], str, int, float]], width: int) -> Rolled:
    """Rollup windows of ``width`` ms from raw ``(tags, metric, t, value)`` rows in time
    order per series (sums are then added in the order the raw data is aggregated)."""
    out: Rolled = {}
    for tags, metric, t, value in rows:
        key = (tags, metric, t - t % width)
        w = out.get(key)
        if w is None:
            w = out[key] = Window()
        w.add(t, value)
    return out


def combine(
    windows: Iterable[tuple[tuple[str, ...], str, int, Window]], width: int = HOUR
) -> Rolled:
    """Windows of ``width`` from finer windows (in time order): exact for every component."""
    out: Rolled = {}
    for tags, metric, t, w in windows:
        key = (tags, metric, t - t % width)
        acc = out.get(key)
        if acc is None:
            out[key] = Window(w.count, w.sum, w.min, w.max, w.last, w.last_t)
            continue
        acc.count += w.count
        acc.sum += w.sum
        acc.min = min(acc.min, w.min)
        acc.max = max(acc.max, w.max)
        if w.last_t >= acc.last_t:
            acc.last, acc.last_t = w.last, w.last_t
    return out


@dataclass(frozen=True, slots=True)
class Dirty:
    measurement: str
    window: int  #: the minute's start, epoch ms
    token: int


@dataclass(slots=True)
class RollupStats:
    """What ``/metrics`` shows of rollup maintenance."""

    windows_recomputed: int = 0
    values_rolled: int = 0
    dirty_windows: int = 0
    oldest_dirty_ms: int | None = None  #: start of the oldest window awaiting recompute
    errors: int = 0
    cpu_seconds: float = 0.0  #: process CPU spent recomputing
    retention_deleted: int = 0
    last_pass_ms: int | None = None


class RollupStore(Protocol):
    async def ensure(self) -> None: ...
    async def dirty(self, now_ms: int) -> list[Dirty]: ...
    async def recompute(self, measurement: str, hour: int, dirty: list[Dirty]) -> int: ...
    async def retain(self, now_ms: int) -> int: ...
    async def mark(self, measurement: str, windows: Iterable[int]) -> None: ...
    async def close(self) -> None: ...


# --------------------------------------------------------------------------- embedded store

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


def point_marks(points: Sequence[Point]) -> set[tuple[str, int]]:
    return {(p.measurement, p.t - p.t % MINUTE) for p in points}


def line_marks(lines: Sequence[str]) -> set[tuple[str, int]]:
    """(measurement, hour) of each line of line protocol (``m,tags fields t``)."""
    out = set()
    for line in lines:
        t = int(line[line.rindex(" ") + 1 :])
        out.add((line[: line.index(",")], t - t % MINUTE))
    return out


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
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM rollup_meta WHERE key = 'backfilled'").fetchone():
                    db.execute("ROLLBACK")
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
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await asyncio.to_thread(run)

    async def mark(self, measurement: str, windows: Iterable[int]) -> None:
        def run() -> None:
            with self._db:
                self._db.executemany(SQLITE_MARK, [(measurement, w, new_token()) for w in windows])

        await asyncio.to_thread(run)

    async def dirty(self, now_ms: int) -> list[Dirty]:
        def run() -> list[Dirty]:
            rows = self._db.execute(
                "SELECT measurement, window, token FROM rollup_dirty ORDER BY window"
            ).fetchall()
            return [Dirty(m, w, t) for m, w, t in rows]

        return await asyncio.to_thread(run)

    async def recompute(self, measurement: str, hour: int, dirty: list[Dirty]) -> int:
        return await asyncio.to_thread(self._recompute, measurement, hour, dirty)

    def _recompute(self, measurement: str, hour: int, dirty: list[Dirty]) -> int:
        db = self._db
        first, last = dirty[0].window, dirty[-1].window + MINUTE
        metrics = [m for m, spec in METRICS.items() if spec.domain == measurement]
        marks = ", ".join("?" for _ in metrics)
        insert = (
            "(metric, device, t, count, sum, min, max, last, last_t, kind, district, site) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        try:
            db.execute("BEGIN IMMEDIATE")  # the raw read and the rollup write in one snapshot
            try:
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
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise RetryableError(f"embedded store {self.path}: {exc}") from exc
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


# --------------------------------------------------------------------------- InfluxDB 1.x


def influx_duration(ms: int) -> str:
    """A retention policy's duration and shard group duration (InfluxDB's own advice: 1 h
    shards under 2 days, 1 d up to 6 months, 7 d beyond)."""
    shard = "1h" if ms < 48 * HOUR else "1d" if ms <= 183 * 24 * HOUR else "7d"
    return f"{ms // HOUR}h REPLICATION 1 SHARD DURATION {shard}"


def rollup_fields(metric: str, w: Window) -> str:
    return (
        f"{metric}_count={w.count},{metric}_sum={w.sum!r},{metric}_min={w.min!r},"
        f"{metric}_max={w.max!r},{metric}_last={w.last!r},{metric}_last_t={w.last_t}"
    )


def _esc_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


class InfluxRollupStore:
    """Rollups in the ``rollup`` retention policy of an InfluxDB 1.x database."""

    def __init__(self, target: InfluxTarget, raw_ms: int, rollup_ms: int) -> None:
        auth = httpx.BasicAuth(target.username, target.password or "") if target.username else None
        self._client = httpx.AsyncClient(base_url=target.url, auth=auth, timeout=60.0)
        self.db = target.database
        self.raw_ms, self.rollup_ms = raw_ms, rollup_ms
        self._view = MarkView()

    async def _q(self, q: str, *, post: bool = False) -> list[dict[str, Any]]:
        params = {"db": self.db, "q": q, "epoch": "ms"}
        try:
            if post:
                r = await self._client.post("/query", params=params)
            else:
                r = await self._client.get("/query", params=params)
        except httpx.HTTPError as exc:
            raise RetryableError(f"InfluxDB unreachable: {exc!r}") from exc
        if r.status_code >= 500 or r.status_code == 429:
            raise RetryableError(f"InfluxDB answered {r.status_code}")
        body = r.json()
        if r.status_code >= 400 or "error" in body:
            raise PermanentError(f"InfluxDB refused {q[:80]!r}: {body.get('error', body)}")
        results: list[dict[str, Any]] = body.get("results", [])
        for res in results:
            if "error" in res:
                raise PermanentError(f"InfluxDB refused {q[:80]!r}: {res['error']}")
        return results

    async def _write(self, lines: list[str], rp: str | None = None) -> None:
        params = {"db": self.db, "precision": "ms"}
        if rp:
            params["rp"] = rp
        try:
            r = await self._client.post("/write", params=params, content="\n".join(lines).encode())
        except httpx.HTTPError as exc:
            raise RetryableError(f"InfluxDB unreachable: {exc!r}") from exc
        if r.status_code >= 300:
            raise RetryableError(f"InfluxDB /write answered {r.status_code}: {r.text[:200]}")

    async def ensure(self) -> None:
        """The retention policies, created or altered (idempotent)."""
        raw, roll = influx_duration(self.raw_ms), influx_duration(self.rollup_ms)
        db = f'"{self.db}"'
        res = await self._q(f"SHOW RETENTION POLICIES ON {db}")
        names = {row[0] for series in res[0].get("series", []) for row in series.get("values", [])}
        if ROLLUP_RP not in names:
            await self._mark_existing()
        try:
            await self._q(
                f'CREATE RETENTION POLICY "{ROLLUP_RP}" ON {db} DURATION {roll}',
                post=True,
            )
        except PermanentError as exc:
            if "already exists" not in str(exc):
                raise
            await self._q(
                f'ALTER RETENTION POLICY "{ROLLUP_RP}" ON {db} DURATION {roll}', post=True
            )
        res = await self._q(f"SHOW RETENTION POLICIES ON {db}")
        for series in res[0].get("series", []):
            cols = series["columns"]
            for row in series.get("values", []):
                rec = dict(zip(cols, row, strict=False))
                if rec.get("default"):
                    await self._q(
                        f'ALTER RETENTION POLICY "{rec["name"]}" ON {db} DURATION {raw}',
                        post=True,
                    )

    async def _mark_existing(self) -> None:
        """First start over an existing database: every hour holding raw data is marked
        (before the rollup policy exists, so that a crash here repeats it)."""
        now = int(time.time() * 1000)
        span = f"time >= {now - self.raw_ms}ms AND time < {now + DIRTY_LOOKBACK_MS}ms"
        domains = sorted({spec.domain for spec in METRICS.values()})
        for domain in domains:
            res = await self._q(
                f'SELECT count(*) FROM "{domain}" WHERE {span} GROUP BY time(1m) fill(none)'
            )
            hours = [int(r[0]) for s in res[0].get("series", []) for r in s.get("values", [])]
            for i in range(0, len(hours), 5000):
                await self.mark(domain, hours[i : i + 5000])

    async def mark(self, measurement: str, windows: Iterable[int]) -> None:
        await self._write([mark_line(DIRTY, measurement, w, new_token()) for w in windows])

    async def dirty(self, now_ms: int) -> list[Dirty]:
        res = await self._q(";".join(self._view.statements(now_ms)))
        marks = self._view.update(res, now_ms)
        return sorted(
            (Dirty(m, w, tok) for (m, w), tok in marks.items() if tok > 0),
            key=lambda d: d.window,
        )

    async def _rows(
        self, measurement: str, start: int, end: int, rp: str = ""
    ) -> list[tuple[tuple[str, ...], str, int, list[Any], list[str]]]:
        source = f'"{rp}"."{measurement}"' if rp else f'"{measurement}"'
        res = await self._q(
            f"SELECT * FROM {source} WHERE time >= {start}ms AND time < {end}ms GROUP BY *"
        )
        out = []
        for series in res[0].get("series", []):
            tags = series.get("tags", {})
            key = tuple(tags.get(k, "") for k in TAG_KEYS)
            cols = series["columns"]
            for row in series.get("values", []):
                out.append((key, "", int(row[0]), row[1:], cols[1:]))
        return out

    async def recompute(self, measurement: str, hour: int, dirty: list[Dirty]) -> int:
        first, last = dirty[0].window, dirty[-1].window + MINUTE
        if last - first >= HOUR // 2:  # read the whole hour: its minutes then give the hour
            first, last = hour, hour + HOUR
        rows: list[tuple[tuple[str, ...], str, int, float]] = []
        for key, _, t, values, cols in await self._rows(measurement, first, last):
            for name, value in zip(cols, values, strict=False):
                v = _num(value)
                if v is not None and name in METRICS:
                    rows.append((key, name, t, v))
        rows.sort(key=lambda r: r[2])
        minutes = aggregate(rows, MINUTE)
        await self._write_rollups(measurement, "1m", minutes)
        # the hour from its minutes: when the whole hour was read, those just computed; else
        # those just written and the others already stored
        windows: list[tuple[tuple[str, ...], str, int, Window]] = []
        whole = first == hour and last == hour + HOUR
        stored = (
            [] if whole else await self._rows(f"{measurement}_1m", hour, hour + HOUR, ROLLUP_RP)
        )
        if whole:
            windows = [(tags, metric, t, w) for (tags, metric, t), w in minutes.items()]
        for key, _, t, values, cols in stored:
            rec = dict(zip(cols, values, strict=False))
            for metric, spec in METRICS.items():
                if spec.domain == measurement and rec.get(f"{metric}_count") is not None:
                    windows.append(
                        (key, metric, t, Window(*(rec[f"{metric}_{c}"] for c in COMPONENTS)))
                    )
        windows.sort(key=lambda w: w[2])
        await self._write_rollups(measurement, "1h", combine(windows))
        await self._write(
            [mark_line(DONE, d.measurement, d.window, d.token) for d in dirty], ROLLUP_RP
        )
        return len(rows)

    async def _write_rollups(self, measurement: str, name: str, windows: Rolled) -> None:
        by_point: dict[tuple[tuple[str, ...], int], list[str]] = {}
        for (tags, metric, t), w in windows.items():
            by_point.setdefault((tags, t), []).append(rollup_fields(metric, w))
        lines = []
        for (tags, t), fields in by_point.items():
            tagtext = ",".join(
                f"{k}={_esc_tag(v)}" for k, v in zip(TAG_KEYS, tags, strict=True) if v
            )
            lines.append(f"{measurement}_{name},{tagtext} {','.join(fields)} {t}")
        for i in range(0, len(lines), 5000):
            await self._write(lines[i : i + 5000], ROLLUP_RP)

    async def retain(self, now_ms: int) -> int:
        return 0  # InfluxDB's retention policies drop old shards

    async def close(self) -> None:
        await self._client.aclose()


def mark_line(name: str, measurement: str, window: int, token: int) -> str:
    """A dirty mark (``token`` ≈ when written, in ns) or a done mark (``at``: when written)."""
    at = f",at={time.time_ns()}i" if name == DONE else ""
    return f"{name},measurement={measurement} token={token}i{at} {window}"


#: Marks written up to this long before the last read are read again (clock skew between
#: the hosts writing marks and the reader, in ns).
MARK_MARGIN_NS = 600 * 10**9


class MarkView:
    """InfluxDB's dirty and done marks, kept current by reading only the marks written since
    the last read (plus :data:`MARK_MARGIN_NS`): a refresh costs what changed, not every
    mark of the last 8 days."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, int], int] = {}
        self.done: dict[tuple[str, int], int] = {}
        self.since: int | None = None
        self._asked = 0

    def statements(self, now_ms: int) -> list[str]:
        self._asked = time.time_ns()
        span = f"time >= {now_ms - DIRTY_LOOKBACK_MS}ms AND time < {now_ms + DIRTY_LOOKBACK_MS}ms"
        new_marks = f' AND "token" > {self.since}' if self.since is not None else ""
        new_done = f' AND "at" > {self.since}' if self.since is not None else ""
        return [
            f'SELECT "token" FROM "{DIRTY}" WHERE {span}{new_marks} GROUP BY "measurement"',
            f'SELECT "token" FROM "{ROLLUP_RP}"."{DONE}" WHERE {span}{new_done} '
            'GROUP BY "measurement"',
        ]

    def update(self, results: list[dict[str, Any]], now_ms: int) -> dict[tuple[str, int], int]:
        """Fold in the answers to :meth:`statements`; every mark with its token, negative
        when the window is clean."""
        self.marks.update(_tokens(results[0]))
        self.done.update(_tokens(results[1]))
        oldest = now_ms - DIRTY_LOOKBACK_MS
        for table in (self.marks, self.done):
            for key in [k for k in table if k[1] < oldest]:
                del table[key]
        self.since = self._asked - MARK_MARGIN_NS
        return {k: tok if self.done.get(k) != tok else -tok for k, tok in self.marks.items()}


def _tokens(result: dict[str, Any]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for series in result.get("series", []):
        m = series.get("tags", {}).get("measurement", "")
        for t, tok in series.get("values", []):
            out[(m, int(t))] = int(tok)
    return out


# --------------------------------------------------------------------------- the writer seam


class MarkingLineWriter:
    """An InfluxDB writer whose every request also carries the dirty marks of its points."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._serializer = LineSerializer()

    def _marks(self, marks: set[tuple[str, int]]) -> list[str]:
        token = new_token()
        return [mark_line(DIRTY, m, w, token) for m, w in sorted(marks)]

    async def write(self, points: Sequence[Point]) -> WriteResult:
        if not points:
            return WriteResult(0)
        lines = [self._serializer.line(p) for p in points]
        result: WriteResult = await self.write_lines(lines)
        return result

    async def write_lines(self, lines: Sequence[str]) -> WriteResult:
        if not lines:
            return WriteResult(0)
        marks = self._marks(line_marks(lines))
        result: WriteResult = await self.inner.write_lines([*lines, *marks])
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


def open_rollup_store(settings: Settings, api: str = "1") -> RollupStore | None:
    raw_ms = parse_retention(settings.retention_raw, "--retention-raw")
    rollup_ms = parse_retention(settings.retention_rollup, "--retention-rollup")
    target = storage_target(settings)
    if isinstance(target, SqliteTarget):
        return SqliteRollupStore(target.path, raw_ms, rollup_ms)
    if api != "1":
        return None
    return InfluxRollupStore(target, raw_ms, rollup_ms)


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
            if token_age_ms(d.token, now_ms) >= self.settle_ms:
                by_hour.setdefault((d.measurement, d.window - d.window % HOUR), []).append(d)
        for (measurement, hour), marks in sorted(by_hour.items(), key=lambda kv: kv[0][1]):
            marks.sort(key=lambda d: d.window)
            self.stats.values_rolled += await self.store.recompute(measurement, hour, marks)
            self.stats.windows_recomputed += len(marks)
            done += len(marks)
        self.stats.cpu_seconds += time.process_time() - cpu0
        self.stats.last_pass_ms = now_ms
        waiting = [d.window for d in dirty if token_age_ms(d.token, now_ms) < self.settle_ms]
        self.stats.dirty_windows = len(waiting)  # what this pass left for the next
        self.stats.oldest_dirty_ms = min(waiting) if waiting else None
        return done

    async def drain(self, limit_s: float = 60.0) -> None:
        """Passes until no window is dirty (for tests and backfills)."""
        deadline = time.monotonic() + limit_s
        while True:
            await self.run_once()
            if not await self.store.dirty(int(time.time() * 1000)):
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
            "# HELP citysense_rollup_errors_total Failed maintenance passes.",
            "# TYPE citysense_rollup_errors_total counter",
            f"citysense_rollup_errors_total {s.errors}",
            "# HELP citysense_retention_deleted_total Rows deleted by retention (embedded store).",
            "# TYPE citysense_retention_deleted_total counter",
            f"citysense_retention_deleted_total {s.retention_deleted}",
        ]


@asynccontextmanager
async def maintain_rollups(
    settings: Settings, writer: Writer
) -> AsyncIterator[RollupWorker | None]:
    """Run a :class:`RollupWorker` beside the ingestor's writer (none when rollups are off
    or the store keeps none); stopped on exit."""
    store: RollupStore | None = None
    if settings.rollups and isinstance(writer, MarkingLineWriter):
        store = open_rollup_store(settings, "1")
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
