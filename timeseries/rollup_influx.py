"""InfluxDB 1.x rollups: retention policies, mark points, the worker's queries."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import httpx

from citysense.catalog import METRICS
from citysense.errors import PermanentError, RetryableError
from timeseries.connection import InfluxTarget
from timeseries.influxql import _num
from timeseries.rollup_core import (
    COMPONENTS,
    DIRTY,
    DIRTY_LOOKBACK_MS,
    DONE,
    HOUR,
    MINUTE,
    ROLLUP_RP,
    Dirty,
    Rolled,
    Window,
    aggregate,
    combine_hour,
    new_token,
)
from timeseries.rollup_live import LiveMinutes
from timeseries.schema import TAG_KEYS

log = logging.getLogger(__name__)
DAY = 24 * HOUR
#: (measurement, hour)s whose minute windows are kept, to compute an hour without reading its
#: minutes back (the current and the previous hour of each measurement)
HOURS_KEPT = 8


def influx_duration(ms: int) -> str:
    """A retention policy's duration and shard group duration (InfluxDB's own advice: 1 h
    shards under 2 days, 1 d up to 6 months, 7 d beyond)."""
    shard = "1h" if ms < 48 * HOUR else "1d" if ms <= 183 * 24 * HOUR else "7d"
    return f"{ms // HOUR}h REPLICATION 1 SHARD DURATION {shard}"


def rollup_fields(metric: str, w: Window) -> str:
    last = repr(w.last)  # a window of one value holds it thrice: written once as text
    low = last if w.min is w.last else repr(w.min)
    high = last if w.max is w.last else repr(w.max)
    return (
        f"{metric}_count={w.count},{metric}_sum={w.sum!r},{metric}_min={low},"
        f"{metric}_max={high},{metric}_last={last},{metric}_last_t={w.last_t}"
    )


def _esc_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


class InfluxRollupStore:
    """Rollups in the ``rollup`` retention policy of an InfluxDB 1.x database."""

    def __init__(
        self, target: InfluxTarget, raw_ms: int, rollup_ms: int, live: LiveMinutes | None = None
    ) -> None:
        auth = httpx.BasicAuth(target.username, target.password or "") if target.username else None
        self._client = httpx.AsyncClient(base_url=target.url, auth=auth, timeout=60.0)
        self.db = target.database
        self.raw_ms, self.rollup_ms = raw_ms, rollup_ms
        self._view = MarkView()
        self.live = live
        self._tagtexts: dict[tuple[str, ...], str] = {}
        #: (measurement, hour) -> minute -> (its mark when computed, its windows), newest last
        self._hours: OrderedDict[tuple[str, int], dict[int, tuple[int, Rolled]]] = OrderedDict()

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
        domains = sorted({spec.domain for spec in METRICS.values()})
        # a day at a time: one question over a city's whole history outlasts any timeout
        start, end = now - self.raw_ms, now + DIRTY_LOOKBACK_MS
        for domain in domains:
            for day in range(start - start % DAY, end, DAY):
                span = f"time >= {max(day, start)}ms AND time < {min(day + DAY, end)}ms"
                res = await self._q(
                    f'SELECT count(*) FROM "{domain}" WHERE {span} GROUP BY time(1m) fill(none)'
                )
                minutes = [int(r[0]) for s in res[0].get("series", []) for r in s.get("values", [])]
                for i in range(0, len(minutes), 5000):
                    await self.mark(domain, minutes[i : i + 5000])

    async def mark(self, measurement: str, windows: Iterable[int]) -> None:
        await self._write([mark_line(DIRTY, measurement, w, new_token()) for w in windows])

    async def dirty(self, now_ms: int, whole: bool = False) -> list[Dirty]:
        if self.live is not None:
            self.live.done(now_ms)
        res = await self._q(";".join(self._view.statements(now_ms, whole)))
        self._view.update(res, now_ms)
        signed = self._view.signed
        writers = self._view.writers
        return sorted(
            (
                Dirty(m, w, signed[(m, w)], tuple(sorted(writers.get((m, w), {}).items())))
                for m, w in self._view.dirty
            ),
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
        """Recompute ``dirty`` minutes of ``hour`` -- from the lines this ingestor wrote
        where they are all of a minute, else from the raw data -- then the hour's windows of
        the series those minutes hold, and record the marks done; raw values read."""
        signed = self._view.signed
        before = {m: signed.get((measurement, m)) for m in range(hour, hour + HOUR, MINUTE)}
        fresh: dict[int, Rolled] = {}  # minute -> its windows, recomputed now
        back: list[Dirty] = []
        for d in dirty:
            got = self.live.windows((measurement, d.window), d.writers) if self.live else None
            if got is None:
                back.append(d)
            else:
                fresh[d.window] = got
        read = 0
        whole = False  # every minute of the hour read from the raw data
        if back:
            first, last = back[0].window, back[-1].window + MINUTE
            if last - first >= HOUR // 2:  # read the whole hour: its minutes then give the hour
                first, last, whole = hour, hour + HOUR, True
            rows: list[tuple[tuple[str, ...], str, int, float]] = []
            for key, _, t, values, cols in await self._rows(measurement, first, last):
                for name, value in zip(cols, values, strict=False):
                    v = _num(value)
                    if v is not None and name in METRICS:
                        rows.append((key, name, t, v))
            rows.sort(key=lambda r: r[2])
            read = len(rows)
            by_minute = _by_minute(aggregate(rows, MINUTE))
            for m in range(first, last, MINUTE) if whole else (d.window for d in back):
                fresh[m] = by_minute.get(m, {})
        minutes = dict(fresh) if whole else await self._hour_minutes(measurement, hour, fresh)
        # a whole hour read gives every series' hour; the minute windows written are the dirty
        # ones (another worker may be writing a newer window of another minute meanwhile)
        touched = {tags for windows in fresh.values() for tags, _, _ in windows}
        ours = {d.window for d in dirty}
        await self._write_rollups(
            measurement,
            "1m",
            {k: w for m, r in fresh.items() if m in ours for k, w in r.items()},
        )
        await self._write_rollups(measurement, "1h", combine_hour(minutes, hour, touched))
        await self._write(
            [mark_line(DONE, d.measurement, d.window, d.token) for d in dirty], ROLLUP_RP
        )
        self._view.done_here([((d.measurement, d.window), d.token) for d in dirty])
        if await self._overtaken(measurement, hour, ours, before):
            # another worker finished a minute of this hour meanwhile: either hour window
            # written may lack the other's minute, so these minutes are done again
            log.info("rollups: %s hour %d overtaken by another worker: again", measurement, hour)
            await self.mark(measurement, sorted(ours))
        cache = self._hour_cache(measurement, hour)
        for d in dirty:
            cache[d.window] = (d.token, fresh[d.window])
        return read

    async def _overtaken(
        self, measurement: str, hour: int, ours: set[int], before: dict[int, int | None]
    ) -> bool:
        """Whether a minute of ``hour`` other than ``ours`` was recomputed since this worker
        read the marks (by another worker: one worker recomputes one hour at a time)."""
        name = measurement.replace("'", "\\'")
        span = f"time >= {hour}ms AND time < {hour + HOUR}ms AND \"measurement\" = '{name}'"
        res = await self._q(
            f'SELECT "token" FROM "{DIRTY}" WHERE {span} GROUP BY "measurement", "writer";'
            f'SELECT "token" FROM "{ROLLUP_RP}"."{DONE}" WHERE {span} GROUP BY "measurement"'
        )
        done = _tokens(res[1])
        for (_, m), writers in _writer_tokens(res[0]).items():
            if m in ours:
                continue
            tok = combined_token(writers.values())
            if done.get((measurement, m)) == tok and before.get(m) != -tok:
                return True
        return False

    def _hour_cache(self, measurement: str, hour: int) -> dict[int, tuple[int, Rolled]]:
        key = (measurement, hour)
        cache = self._hours.pop(key, None)
        if cache is None:
            cache = {}
            while len(self._hours) >= HOURS_KEPT:
                self._hours.popitem(last=False)
        self._hours[key] = cache
        return cache

    async def _hour_minutes(
        self, measurement: str, hour: int, fresh: dict[int, Rolled]
    ) -> dict[int, Rolled]:
        """Every marked minute of ``hour``: those recomputed now, the others as computed here
        before while their marks are unchanged and done, else as stored."""
        signed = self._view.signed
        cache = self._hour_cache(measurement, hour)
        out: dict[int, Rolled] = {}
        missing = False
        for m in range(hour, hour + HOUR, MINUTE):
            if m in fresh:
                out[m] = fresh[m]
                continue
            tok = signed.get((measurement, m))
            if tok is None:
                continue  # no mark: no data
            kept = cache.get(m)
            if kept is not None and kept[0] == -tok:
                out[m] = kept[1]
            else:
                missing = True
        if missing:
            stored: dict[int, Rolled] = {}
            for key, _, t, values, cols in await self._rows(
                f"{measurement}_1m", hour, hour + HOUR, ROLLUP_RP
            ):
                rec = dict(zip(cols, values, strict=False))
                for metric, spec in METRICS.items():
                    if spec.domain == measurement and rec.get(f"{metric}_count") is not None:
                        w = Window(*(rec[f"{metric}_{c}"] for c in COMPONENTS))
                        stored.setdefault(t, {})[(key, metric, t)] = w
            for m, windows in stored.items():
                if m in fresh:
                    continue
                out[m] = windows
                tok = signed.get((measurement, m))
                if tok is not None and tok < 0:
                    cache[m] = (-tok, windows)
        return out

    async def _write_rollups(self, measurement: str, name: str, windows: Rolled) -> None:
        by_point: dict[tuple[tuple[str, ...], int], list[str]] = {}
        for (tags, metric, t), w in windows.items():
            by_point.setdefault((tags, t), []).append(rollup_fields(metric, w))
        lines = []
        tagtexts = self._tagtexts
        for (tags, t), fields in by_point.items():
            tagtext = tagtexts.get(tags)
            if tagtext is None:
                if len(tagtexts) >= 100_000:
                    tagtexts.clear()
                tagtext = tagtexts[tags] = ",".join(
                    f"{k}={_esc_tag(v)}" for k, v in zip(TAG_KEYS, tags, strict=True) if v
                )
            lines.append(f"{measurement}_{name},{tagtext} {','.join(fields)} {t}")
        for i in range(0, len(lines), 5000):
            await self._write(lines[i : i + 5000], ROLLUP_RP)

    async def retain(self, now_ms: int) -> int:
        return 0  # InfluxDB's retention policies drop old shards

    async def close(self) -> None:
        await self._client.aclose()


def _by_minute(windows: Rolled) -> dict[int, Rolled]:
    out: dict[int, Rolled] = {}
    for key, w in windows.items():
        out.setdefault(key[2], {})[key] = w
    return out


def mark_line(name: str, measurement: str, window: int, token: int, writer: str = "") -> str:
    """A dirty mark (``token`` ≈ when written, in ns; ``writer``: whose) or a done mark
    (``at``: when written)."""
    at = f",at={time.time_ns()}i" if name == DONE else ""
    tag = f",writer={writer}" if writer else ""
    return f"{name},measurement={measurement}{tag} token={token}i{at} {window}"


#: Marks written up to this long before the last read are read again, in ns: a mark's token
#: is taken just before its write request (bounded by ``--influx-timeout``) and on the
#: writer's clock, so this covers a slow write plus clock skew between the hosts. Every
#: read re-reads what was written within it: 2 minutes keeps that small after a backfill.
MARK_MARGIN_NS = 120 * 10**9
#: Minutes this recent have their new marks read at every refresh (the latest-value window,
#: 24 h, and some); older minutes' -- late data -- every WHOLE_EVERY_MS.
RECENT_MS = 26 * HOUR
WHOLE_EVERY_MS = 10_000


class MarkView:
    """InfluxDB's dirty and done marks, kept current by reading only the marks written since
    the last read (plus :data:`MARK_MARGIN_NS`): a refresh costs what changed, not every
    mark of the last 8 days. :attr:`signed` holds every mark's token, negative when its
    window is clean, and :attr:`dirty` the windows awaiting recompute, both kept up to date
    key by key."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, int], int] = {}
        self.done: dict[tuple[str, int], int] = {}
        self.signed: dict[tuple[str, int], int] = {}
        #: each writer's newest mark of a minute (marks written before writers were named:
        #: writer "")
        self.writers: dict[tuple[str, int], dict[str, int]] = {}
        self.dirty: set[tuple[str, int]] = set()
        self.since: int | None = None  #: every mark written before this was read (ns)
        self.since_recent: int | None = None  #: every mark of a recent minute, likewise
        self._asked = 0
        self._whole = True  #: whether the statements asked span the whole look-back
        self._whole_ms = 0
        self._expired_ms = 0

    def statements(self, now_ms: int, whole: bool = False) -> list[str]:
        """The marks written since the last read: of the whole look-back every
        :data:`WHOLE_EVERY_MS`, else of recent minutes only. Tokens are no index, so a read
        scans every mark of its span: recent minutes are an eighth of the look-back, and
        what lands there -- new readings -- is read every time."""
        self._asked = time.time_ns()
        self._whole = whole or self.since is None or now_ms - self._whole_ms >= WHOLE_EVERY_MS
        if self._whole:
            self._whole_ms = now_ms
            since, oldest = self.since, now_ms - DIRTY_LOOKBACK_MS
        else:
            since, oldest = self.since_recent, now_ms - RECENT_MS
        span = f"time >= {oldest}ms AND time < {now_ms + DIRTY_LOOKBACK_MS}ms"
        new_marks = f' AND "token" > {since}' if since is not None else ""
        new_done = f' AND "at" > {since}' if since is not None else ""
        return [
            f'SELECT "token" FROM "{DIRTY}" WHERE {span}{new_marks} GROUP BY "measurement", '
            '"writer"',
            f'SELECT "token" FROM "{ROLLUP_RP}"."{DONE}" WHERE {span}{new_done} '
            'GROUP BY "measurement"',
        ]

    def done_here(self, done: Iterable[tuple[tuple[str, int], int]]) -> None:
        """Done marks this process just wrote, known at once: a read of recent minutes
        would bring an old minute's only with the next whole read, and until then the
        minute would look dirty (recomputed again, or another minute of its hour taken for
        overtaken)."""
        for key, tok in done:
            self.done[key] = tok
            if self.marks.get(key) == tok:
                self.signed[key] = -tok
                self.dirty.discard(key)

    def update(self, results: list[dict[str, Any]], now_ms: int) -> set[tuple[str, int]]:
        """Fold in the answers to :meth:`statements`; the windows whose signed token changed
        (written, recomputed, or aged out of the look-back)."""
        new_marks, new_done = {}, _tokens(results[1])
        for key, by_writer in _writer_tokens(results[0]).items():
            writers = self.writers.setdefault(key, {})
            writers.update(by_writer)
            new_marks[key] = combined_token(writers.values())
        self.marks.update(new_marks)
        self.done.update(new_done)
        changed: set[tuple[str, int]] = set()
        for key in new_marks.keys() | new_done.keys():
            tok = self.marks.get(key)
            if tok is None:
                continue  # done, but its mark is older than the look-back
            signed = tok if self.done.get(key) != tok else -tok
            if self.signed.get(key) != signed:
                self.signed[key] = signed
                changed.add(key)
                if signed > 0:
                    self.dirty.add(key)
                else:
                    self.dirty.discard(key)
        if now_ms - self._expired_ms >= 60_000:  # the look-back moves: once a minute
            self._expired_ms = now_ms
            oldest = now_ms - DIRTY_LOOKBACK_MS
            for table in (self.marks, self.done, self.signed, self.writers):
                for key in [k for k in table if k[1] < oldest]:
                    del table[key]
                    changed.add(key)
                    self.dirty.discard(key)
        self.since_recent = self._asked - MARK_MARGIN_NS
        if self._whole:
            self.since = self.since_recent
        return changed


def combined_token(tokens: Iterable[int]) -> int:
    """One minute's mark from its writers' newest marks: changed by a change of any; a single
    writer's token itself."""
    return sum(tokens) % (1 << 62)


def _writer_tokens(result: dict[str, Any]) -> dict[tuple[str, int], dict[str, int]]:
    out: dict[tuple[str, int], dict[str, int]] = {}
    for series in result.get("series", []):
        tags = series.get("tags", {})
        m, writer = tags.get("measurement", ""), tags.get("writer", "")
        for t, tok in series.get("values", []):
            out.setdefault((m, int(t)), {})[writer] = int(tok)
    return out


def _tokens(result: dict[str, Any]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for series in result.get("series", []):
        m = series.get("tags", {}).get("measurement", "")
        for t, tok in series.get("values", []):
            out[(m, int(t))] = int(tok)
    return out
