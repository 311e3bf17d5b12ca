"""Rollups on real storage (the embedded store and a real influxd 1.6.7): every answer from
rollups equals the answer from raw data; late data changes exactly its windows; retention;
restarts in the middle of rollup work leave no window wrong.

Values are multiples of 1/4 of moderate size, so every sum is exact in any order: results
are compared to the last bit. Timestamps are distinct, so ``last`` has one answer.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citysense.config import Settings
from tests.servers import InfluxServer
from timeseries.factory import create_writer
from timeseries.query import Reader, SeriesQuery, open_reader
from timeseries.rollup import (
    HOUR,
    MINUTE,
    ROLLUP_RP,
    RollupWorker,
    open_rollup_store,
    with_rollup_marks,
)
from timeseries.rollup_query import HorizonError, RollupReads, Segment, open_partials, plan
from timeseries.schema import Point
from timeseries.writer import Writer

DEVICES = (
    ("aq-1", "air_station", "north", "s1"),
    ("aq-2", "air_station", "north", "s2"),
    ("aq-3", "air_station", "south", "s3"),
    ("wm-1", "water_meter", "south", "s3"),
)


def now_hour() -> int:
    import time

    t = int(time.time() * 1000)
    return t - t % HOUR


@dataclass
class Rig:
    settings: Settings
    writer: Writer
    reader: Reader
    worker: RollupWorker
    reads: RollupReads

    async def write(
        self, readings: list[tuple[int, str, int, float]], writer: Writer | None = None
    ) -> None:
        """(device index, metric, t, value) readings, through ``writer`` (else the rig's)."""
        points = []
        for dev, metric, t, value in readings:
            device, kind, district, site = DEVICES[dev]
            v: Any = bool(value) if metric == "leak" else value
            domain = "utility" if metric in ("leak", "water_flow") else "environment"
            points.append(Point(domain, (device, kind, district, site, "gw-1"), {metric: v}, t))
        result = await (writer or self.writer).write(points)
        assert not result.rejected

    async def settle(self) -> None:
        await self.worker.drain(60)
        await self.reads.refresh(whole=True)

    async def both(self, q: SeriesQuery) -> tuple[list[Any], list[Any], str]:
        rolled, source = await self.reads.series(q)
        raw = await self.reader.series(q)
        norm = lambda gs: [(g.group, g.points) for g in gs if g.points]  # noqa: E731
        return norm(rolled), norm(raw), source


@asynccontextmanager
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    writer = with_rollup_marks(await create_writer(settings), settings)
    # the ingestor's wiring: the worker recomputes from what this writer stored where it can
    store = open_rollup_store(settings, "1", getattr(writer, "live", None))
    assert store is not None
    worker = RollupWorker(store, settle_ms=0)
    await worker.run_once()  # policies / backfill marker
    async with open_reader(settings) as reader:
        partial = open_partials(reader)
        assert partial is not None
        reads = RollupReads(reader, partial, 90 * 24 * HOUR)
        try:
            yield Rig(settings, writer, reader, worker, reads)
        finally:
            await partial.aclose()
            await store.close()
            await writer.close()


@pytest.fixture(params=["sqlite", "influx"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    base = Settings(state_dir=str(tmp_path / "state"))
    if request.param == "sqlite":
        yield base
    else:
        db: InfluxServer = request.getfixturevalue("influx_db")
        yield replace(base, influx=db.url, influx_db=db.db, influx_api="1")


def random_readings(rng: random.Random, start: int, hours: int, n: int) -> list[Any]:
    times = rng.sample(range(start, start + hours * HOUR, 1000), n)  # distinct, whole seconds
    out = []
    for t in times:
        dev = rng.randrange(len(DEVICES))
        if DEVICES[dev][1] == "water_meter":
            metric = rng.choice(("leak", "water_flow"))
            value = float(rng.random() < 0.3) if metric == "leak" else rng.randint(0, 400) / 4
        else:
            metric = rng.choice(("pm25", "pm10"))
            value = rng.randint(-40, 2000) / 4
        out.append((dev, metric, t, value))
    return out


EVERY = (MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, 2 * HOUR, 24 * HOUR)


@st.composite
def queries(draw: st.DrawFn, start: int, hours: int) -> SeriesQuery:
    metric = draw(st.sampled_from(("pm25", "pm10", "leak", "water_flow")))
    every = draw(st.sampled_from(EVERY))
    # starts on the hour, the minute, or anywhere (then the answer comes from raw data)
    grain = draw(st.sampled_from((HOUR, MINUTE, 1000)))
    lo = start - HOUR
    a = lo + draw(st.integers(0, (hours + 1) * HOUR // grain)) * grain
    b = a + draw(st.integers(1, (hours + 2) * HOUR // 1000)) * 1000
    return SeriesQuery(
        metric,
        a,
        b,
        every,
        draw(st.sampled_from(("mean", "min", "max", "sum", "count", "last"))),
        draw(st.sampled_from(({}, {"district": "north"}, {"device": "aq-3"}))),
        draw(st.sampled_from((None, "district", "device"))),
        a % every,
    )


def test_rollup_answers_equal_raw_answers(store_settings: Settings) -> None:
    """Random readings over 5 hours; random queries: every rollup answer equals raw."""
    start = now_hour() - 5 * HOUR
    readings = random_readings(random.Random(5), start, 5, 600)
    loop = asyncio.new_event_loop()
    cm = rig(store_settings)
    r = loop.run_until_complete(cm.__aenter__())
    sources: set[str] = set()
    try:
        loop.run_until_complete(r.write(readings))
        loop.run_until_complete(r.settle())
        # every metric, agg, width and grouping once, with a tail that is not whole minutes
        end = start + 5 * HOUR + 17 * MINUTE + 3000
        for metric in ("pm25", "leak", "water_flow"):
            for every in EVERY:
                for agg in ("mean", "min", "max", "sum", "count", "last"):
                    for group_by in (None, "district"):
                        q = SeriesQuery(metric, start - HOUR, end, every, agg, {}, group_by)
                        rolled, raw, source = loop.run_until_complete(r.both(q))
                        assert rolled == raw and source != "raw", (q, source)

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(queries(start, 5))
        def check(q: SeriesQuery) -> None:
            rolled, raw, source = loop.run_until_complete(r.both(q))
            assert rolled == raw, (q, source)
            sources.add(source)

        check()
        assert sources - {"raw"}  # rollups did answer
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.integers(20, 200))
def test_rollups_equal_raw_for_random_data_embedded(
    tmp_path_factory: Any, seed: int, n: int
) -> None:
    """Random data sets too (the embedded store: fast enough for many examples)."""
    path = tmp_path_factory.mktemp("roll")
    start = now_hour() - 3 * HOUR
    rng = random.Random(seed)
    readings = random_readings(rng, start, 3, n)

    async def main() -> None:
        async with rig(Settings(state_dir=str(path))) as r:
            await r.write(readings)
            await r.settle()
            for every in (MINUTE, 10 * MINUTE, HOUR):
                for agg in ("mean", "min", "max", "sum", "count", "last"):
                    for metric in ("pm25", "leak"):
                        q = SeriesQuery(
                            metric, start - HOUR, start + 4 * HOUR, every, agg, {}, "district"
                        )
                        rolled, raw, source = await r.both(q)
                        assert rolled == raw and source != "raw", (q, source)

    asyncio.run(main())


def test_late_data_changes_its_hour_and_empty_windows_have_no_bucket(
    store_settings: Settings,
) -> None:
    hour = now_hour() - 72 * HOUR  # three days ago
    q = SeriesQuery("pm25", hour - 2 * HOUR, hour + 2 * HOUR, HOUR, "mean", {}, None)

    async def main() -> None:
        async with rig(store_settings) as r:
            await r.write([(0, "pm25", hour + 10 * MINUTE, 10.0), (1, "pm25", hour - HOUR, 4.0)])
            await r.settle()
            rolled, raw, source = await r.both(q)
            assert source == "1h" and rolled == raw
            # the empty hours around have no bucket
            assert rolled == [({}, [(hour - HOUR, 4.0), (hour, 10.0)])]
            # delivered 3 days late, into that hour
            await r.write([(2, "pm25", hour + 50 * MINUTE, 20.0)])
            await r.reads.refresh(whole=True)
            assert r.reads.dirty["environment"] == {hour + 50 * MINUTE}  # marked when stored
            await r.settle()
            rolled, raw, source = await r.both(q)
            assert source == "1h" and rolled == raw
            assert rolled == [({}, [(hour - HOUR, 4.0), (hour, 15.0)])]
            text = "\n".join(r.worker.exposition())
            assert "citysense_rollup_windows_recomputed_total 3" in text  # 3 minute windows
            assert "citysense_rollup_dirty_windows 0" in text
            assert "citysense_rollup_lag_seconds 0.000" in text
            minute = replace(q, every_ms=MINUTE, agg="last", offset_ms=0)
            rolled, raw, source = await r.both(minute)
            assert source == "1m" and rolled == raw

    asyncio.run(main())


def test_dirty_minutes_answer_from_raw_until_recomputed(tmp_path: Path) -> None:
    hour = now_hour() - 2 * HOUR
    q = SeriesQuery("pm25", hour, hour + HOUR, HOUR, "sum", {}, None)

    async def main() -> None:
        async with rig(Settings(state_dir=str(tmp_path))) as r:
            await r.write([(0, "pm25", hour + MINUTE, 1.0)])
            await r.settle()
            await r.write([(0, "pm25", hour + 2 * MINUTE, 2.0)])
            await r.reads.refresh(whole=True)
            rolled, raw, source = await r.both(q)
            # the hour is read from its clean minutes' rollups and the dirty minute's raw data
            assert rolled == raw == [({}, [(hour, 3.0)])] and source == "1m"
            segments = plan(q, r.reads.dirty["environment"])
            assert Segment(hour + 2 * MINUTE, hour + 3 * MINUTE, "raw") in segments

    asyncio.run(main())


def test_retention_embedded(tmp_path: Path) -> None:
    """Raw data older than the raw horizon is deleted, its rollups stay; a query that needs
    raw data there is refused naming the horizon."""
    settings_ = Settings(state_dir=str(tmp_path), retention_raw="2h", retention_rollup="30d")
    old = now_hour() - 5 * HOUR

    async def main() -> None:
        async with rig(settings_) as r:
            r.reads.raw_horizon_ms = 2 * HOUR
            await r.write([(0, "pm25", old + 90_000, 8.0), (0, "pm25", old + 150_000, 4.0)])
            await r.settle()
            deleted = await r.worker.store.retain(now_hour() + HOUR // 2)
            assert deleted == 2
            raw = await r.reader.series(SeriesQuery("pm25", old, old + HOUR, HOUR, "sum", {}))
            assert raw == []  # gone from raw
            rolled, source = await r.reads.series(
                SeriesQuery("pm25", old, old + HOUR, HOUR, "sum", {})
            )
            assert source == "1h" and rolled[0].points == [(old, 12.0)]
            rolled, source = await r.reads.series(
                SeriesQuery("pm25", old, old + HOUR, MINUTE, "max", {})
            )
            assert source == "1m" and rolled[0].points == [
                (old + MINUTE, 8.0),
                (old + 2 * MINUTE, 4.0),
            ]
            with pytest.raises(HorizonError, match="raw-data horizon"):
                await r.reads.series(SeriesQuery("pm25", old, old + HOUR, 10_000, "max", {}))

    asyncio.run(main())


def test_retention_policies_on_influxdb(influx_db: InfluxServer, tmp_path: Path) -> None:
    """At start the raw (default) policy is set to --retention-raw and a ``rollup`` policy of
    --retention-rollup exists; starting again changes nothing."""
    s = Settings(
        state_dir=str(tmp_path),
        influx=influx_db.url,
        influx_db=influx_db.db,
        influx_api="1",
        retention_raw="30d",
        retention_rollup="400d",
    )

    async def start_twice() -> None:
        for _ in range(2):
            store = open_rollup_store(s)
            assert store is not None
            await RollupWorker(store).run_once()
            await store.close()

    asyncio.run(start_twice())
    rows = influx_db.rows(f'SHOW RETENTION POLICIES ON "{influx_db.db}"')
    policies = {row[0]: (row[1], row[4]) for row in rows}
    assert policies[ROLLUP_RP][0] == "9600h0m0s" and not policies[ROLLUP_RP][1]
    default = next(name for name, (_, d) in policies.items() if d)
    assert policies[default][0] == "720h0m0s"


def expected_windows(
    readings: list[Any], width: int
) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    """Rollup windows computed here from the readings (not by the code under test)."""
    groups: dict[tuple[str, str, int], list[tuple[int, float]]] = defaultdict(list)
    latest = {(dev, metric, t): value for dev, metric, t, value in readings}  # rewrites win
    for (dev, metric, t), value in latest.items():
        groups[(DEVICES[dev][0], metric, t - t % width)].append((t, value))
    out = {}
    for key, vals in groups.items():
        vals.sort()
        vs = [v for _, v in vals]
        out[key] = (len(vs), sum(vs), min(vs), max(vs), vals[-1][1], vals[-1][0])
    return out


async def stored_windows(r: Rig, name: str) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    out: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    if r.settings.influx is None:
        import sqlite3

        db = sqlite3.connect(Path(r.settings.state_dir) / "timeseries.sqlite3")
        for row in db.execute(
            f"SELECT device, metric, t, count, sum, min, max, last, last_t FROM rollup_{name}"
        ):
            out[(row[0], row[1], row[2])] = tuple(row[3:])
        db.close()
        return out
    from timeseries.influxql import InfluxQLReader

    assert isinstance(r.reader, InfluxQLReader)
    for domain, metrics in (("environment", ("pm25", "pm10")), ("utility", ("leak", "water_flow"))):
        res = await r.reader._query(
            [f'SELECT * FROM "{ROLLUP_RP}"."{domain}_{name}" WHERE time >= 0 GROUP BY "device"'],
            {},
        )
        for series in res[0].get("series", []):
            device = series["tags"]["device"]
            cols = series["columns"]
            for row in series["values"]:
                rec = dict(zip(cols, row, strict=True))
                for m in metrics:
                    if rec.get(f"{m}_count") is not None:
                        out[(device, m, int(rec["time"]))] = tuple(
                            rec[f"{m}_{c}"]
                            for c in ("count", "sum", "min", "max", "last", "last_t")
                        )
    return out


def test_restarts_in_the_middle_of_rollup_work_leave_no_window_wrong(
    store_settings: Settings,
) -> None:
    """Rollup work is cut off at random points (the worker cancelled mid-pass, as a killed
    ingestor; the API's view rebuilt, as a restarted API) while more data, some of it late,
    keeps arriving; afterwards every stored window equals the one computed from the raw
    readings here, and the API answers equal raw answers."""
    start = now_hour() - 30 * HOUR
    rng = random.Random(11)
    batches = [random_readings(rng, start, 30, 150) for _ in range(4)]
    written: list[Any] = []

    async def main() -> None:
        for i, batch in enumerate(batches):
            async with rig(store_settings) as r:  # a fresh ingestor, worker and API view
                task = asyncio.create_task(r.worker.run())
                await r.write(batch)
                written.extend(batch)
                await asyncio.sleep(rng.uniform(0.0, 0.3) * (i + 1))
                task.cancel()  # killed in the middle of its work
                await asyncio.gather(task, return_exceptions=True)
        async with rig(store_settings) as r:
            await r.settle()
            for name, width in (("1m", MINUTE), ("1h", HOUR)):
                stored = await stored_windows(r, name)
                expected = expected_windows(written, width)
                assert set(stored) == set(expected)
                wrong = {k for k in expected if tuple(map(float, stored[k])) != expected[k]}
                assert not wrong
            q = SeriesQuery("pm25", start, start + 30 * HOUR, HOUR, "mean", {}, "district")
            rolled, raw, source = await r.both(q)
            assert rolled == raw and source == "1h"

    asyncio.run(main())


def test_plan_leaves_out_minutes_known_empty() -> None:
    """Unmarked minutes cost no read: minute-grain segments span them, 1-hour ones never."""
    h = now_hour() - 5 * HOUR
    written = {h + 2 * HOUR + 5 * MINUTE, h + 2 * HOUR + 9 * MINUTE, h + 3 * HOUR + 30 * MINUTE}

    def empty(w: int) -> bool:
        return w not in written

    q = SeriesQuery("pm25", h, h + 3 * HOUR + 40 * MINUTE + 500, HOUR, "mean", {}, None)
    dirty = {h + 2 * HOUR + 9 * MINUTE}  # hour h+2 is being recomputed
    assert plan(q, dirty, empty) == [
        Segment(h, h + 2 * HOUR, "1h"),  # clean hours: their rollup, written or not
        Segment(h + 2 * HOUR + 5 * MINUTE, h + 2 * HOUR + 6 * MINUTE, "1m"),
        Segment(h + 2 * HOUR + 9 * MINUTE, h + 2 * HOUR + 10 * MINUTE, "raw"),
        # the last hour is partial: minute grain, one read for its one written minute,
        # nothing for the empty tail
        Segment(h + 3 * HOUR + 30 * MINUTE, h + 3 * HOUR + 31 * MINUTE, "1m"),
    ]
    # minutes between written ones are spanned, not read one by one
    written.add(h + 2 * HOUR + 7 * MINUTE)
    assert plan(q, set(), empty)[0] == Segment(h, h + 3 * HOUR, "1h")
    segs = plan(replace(q, every_ms=MINUTE, offset_ms=0), set(), empty)
    assert segs == [
        Segment(h + 2 * HOUR + 5 * MINUTE, h + 3 * HOUR + 31 * MINUTE, "1m"),
    ]
    # without knowledge of empty minutes every minute is read
    assert plan(q, dirty)[-2:] == [
        Segment(h + 2 * HOUR + 10 * MINUTE, h + 3 * HOUR + 40 * MINUTE, "1m"),
        Segment(h + 3 * HOUR + 40 * MINUTE, q.end_ms, "raw"),
    ]


def test_minutes_come_from_the_writes_unless_another_writer_wrote_them(
    influx_db: InfluxServer, tmp_path: Path
) -> None:
    """The worker recomputes a minute from the lines its own ingestor stored only when no
    other writer marked it; every stored window equals the one computed here either way."""
    s = Settings(
        state_dir=str(tmp_path), influx=influx_db.url, influx_db=influx_db.db, influx_api="1"
    )
    hour = now_hour() - 3 * HOUR
    m1, m2, m3 = hour + 5 * MINUTE, hour + 6 * MINUTE, hour + 7 * MINUTE
    mine = [(0, "pm25", m1 + 1000, 3.25), (1, "pm25", m1 + 2000, 4.5), (0, "pm25", m2, 1.0)]
    theirs = [(2, "pm25", m2 + 5000, 7.0), (2, "pm10", m3 + 1000, 9.75)]

    def counts(r: Rig) -> tuple[int, int]:
        text = "\n".join(r.worker.exposition())
        got = [
            int(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("citysense_rollup_minutes_")
        ]
        return got[0], got[1]  # from the writes, read back

    async def main() -> None:
        async with rig(s) as r:
            other = with_rollup_marks(await create_writer(s), s)  # a second ingestor
            try:
                await r.write(mine)
                await r.write(theirs, other)
            finally:
                await other.close()
            await r.settle()
            assert counts(r) == (1, 2)  # m1 from the writes; m2 (both) and m3 (theirs) read
            # a rewrite of a point (same series and time, another value) replaces it
            await r.write([(0, "pm25", m1 + 1000, 5.0)])
            await r.settle()
            assert counts(r) == (2, 2)
            written = [*mine, *theirs, (0, "pm25", m1 + 1000, 5.0)]
            for name, width in (("1m", MINUTE), ("1h", HOUR)):
                stored = await stored_windows(r, name)
                assert {k: tuple(map(float, v)) for k, v in stored.items()} == expected_windows(
                    written, width
                )

    asyncio.run(main())


def test_a_worker_overtaken_by_another_does_its_minutes_again(
    influx_db: InfluxServer, tmp_path: Path
) -> None:
    """Two ingestors' workers recompute minutes of one hour at once: A reads the stored
    window of minute Y, B then recomputes Y (new data) and its hour before A writes X's
    hour. Either hour window may lack the other's minute; A sees Y done meanwhile and does X
    again, so in the end every window is right (without that check the hour keeps Y's old
    value)."""
    from timeseries.rollup_influx import InfluxRollupStore

    s = Settings(
        state_dir=str(tmp_path), influx=influx_db.url, influx_db=influx_db.db, influx_api="1"
    )
    hour = now_hour() - 2 * HOUR
    x, y = hour + 10 * MINUTE, hour + 20 * MINUTE
    first = [(0, "pm25", x + 1000, 2.0), (0, "pm25", y + 1000, 4.0)]
    later = [(0, "pm25", x + 2000, 8.0), (0, "pm25", y + 2000, 16.0)]

    async def main() -> None:
        async with rig(s) as a, rig(s) as b:
            await a.write(first)
            await a.settle()
            await a.write(later[:1])  # X dirty
            store = a.worker.store
            assert isinstance(store, InfluxRollupStore)
            dirty = await store.dirty(now_hour())
            assert [d.window for d in dirty] == [x]
            await b.write(later[1:])  # Y dirty, written by another ingestor
            read_stored = store._hour_minutes

            async def then_b_runs(*args: Any) -> Any:
                out = await read_stored(*args)  # Y's old window read by A
                await b.worker.drain(60)  # B: Y and its hour, with X's old window
                return out

            store._hour_minutes = then_b_runs  # type: ignore[method-assign]
            await store.recompute("environment", hour, dirty)
            store._hour_minutes = read_stored  # type: ignore[method-assign]
            await a.settle()
            for name, width in (("1m", MINUTE), ("1h", HOUR)):
                stored = await stored_windows(a, name)
                assert {k: tuple(map(float, v)) for k, v in stored.items()} == expected_windows(
                    first + later, width
                )

    asyncio.run(main())


def test_marks_of_old_minutes_are_read_every_whole_refresh(influx_db: InfluxServer) -> None:
    """A refresh reads new marks of the last 26 hours every time and of the whole look-back
    every 10 s (or when asked): a late reading's old minute is found by the next whole read,
    however many recent reads came between."""
    from timeseries.rollup_core import new_token
    from timeseries.rollup_influx import WHOLE_EVERY_MS, MarkView, combined_token, mark_line

    now = int(__import__("time").time() * 1000)
    old, recent = now - 72 * HOUR, now - 5 * MINUTE
    old, recent = old - old % MINUTE, recent - recent % MINUTE
    view = MarkView()

    def refresh(at: int, whole: bool = False) -> set[tuple[str, int]]:
        body = influx_db.query(";".join(view.statements(at, whole)), db=influx_db.db)
        return view.update(body["results"], at)

    assert refresh(now) == set()  # the first read is whole
    t1, t2 = new_token(), new_token()
    influx_db.write(mark_line("_rollup_dirty", "environment", old, t1, "w1"), precision="ms")
    influx_db.write(mark_line("_rollup_dirty", "environment", recent, t2, "w1"), precision="ms")
    assert refresh(now + 1000) == {("environment", recent)}  # recent minutes only
    assert refresh(now + 2000) == set()
    assert refresh(now + WHOLE_EVERY_MS + 1) == {("environment", old)}  # the whole look-back
    t3 = new_token()
    influx_db.write(mark_line("_rollup_dirty", "environment", old, t3, "w2"), precision="ms")
    assert refresh(now + WHOLE_EVERY_MS + 1000) == set()
    assert refresh(now + WHOLE_EVERY_MS + 2000, whole=True) == {("environment", old)}
    assert view.writers[("environment", old)] == {"w1": t1, "w2": t3}
    assert view.signed[("environment", old)] == combined_token([t1, t3])  # both writers'


def test_an_old_minute_once_recomputed_is_not_recomputed_again(
    influx_db: InfluxServer, tmp_path: Path
) -> None:
    """The worker knows its own done marks at once: an old minute's (beyond the marks read
    every second) would otherwise look dirty until the next read of the whole look-back,
    and be recomputed every pass meanwhile."""
    import time

    s = Settings(
        state_dir=str(tmp_path), influx=influx_db.url, influx_db=influx_db.db, influx_api="1"
    )
    old = now_hour() - 72 * HOUR

    async def main() -> None:
        async with rig(s) as r:
            await r.write([(0, "pm25", old + 5 * MINUTE, 1.0)])
            await r.worker.store.dirty(int(time.time() * 1000), whole=True)  # its mark read
            assert await r.worker.run_once() == 1
            assert await r.worker.run_once() == 0
            assert await r.worker.run_once() == 0

    asyncio.run(main())


def test_the_partials_cache_is_bounded_by_buckets(tmp_path: Path) -> None:
    """An answer is kept for reuse within the cache's bucket budget; one over an eighth of it
    is not kept at all, and the least recently used go first when the budget is full."""
    start = now_hour() - 6 * HOUR

    def q(metric: str, agg: str, group_by: str | None = None) -> SeriesQuery:
        return SeriesQuery(metric, start, start + 6 * HOUR, HOUR, agg, {}, group_by)

    async def main() -> None:
        async with rig(Settings(state_dir=str(tmp_path))) as r:
            await r.write(
                [(d, m, start + h * HOUR + MINUTE, float(h)) for d in (0, 1, 2) for h in range(6)
                 for m in ("pm25", "no2")]
            )  # fmt: skip
            await r.settle()
            reads = r.reads
            reads.cache_buckets = 48  # at most 6 buckets an answer, 8 such answers in all
            await reads.series(q("pm25", "mean", "device"))  # 3 devices x 6 hours: not kept
            await reads.series(q("pm25", "mean", "device"))
            assert reads.cache_hits == 0 and not reads.cache
            await reads.series(q("pm25", "mean"))  # 6 buckets: kept
            await reads.series(q("pm25", "mean"))
            assert reads.cache_hits == 1 and reads.cached_buckets == 6
            others = [q(m, agg) for m in ("pm25", "no2") for agg in ("min", "max", "sum", "count")]
            for other in others:
                await reads.series(other)
            # 9 answers asked, 8 fit: the least recently used (pm25 mean) went
            assert reads.cached_buckets == 48 and len(reads.cache) == 8
            await reads.series(q("pm25", "mean"))
            assert reads.cache_hits == 1
            await reads.series(others[-1])
            assert reads.cache_hits == 2

    asyncio.run(main())
