"""The query layer on real storage: the embedded SQLite store and a real influxd 1.6.7.

Expected answers are computed here from the sample list, never through the readers.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dashboard_api.citydata import HOUR, MINUTE, Sample, city_samples, line_protocol
from tests.dashboard_api.citydata import write_sqlite as write_city_sqlite
from tests.servers import InfluxServer
from timeseries.influxql import (
    InfluxQLReader,
    build_latest,
    build_newest_rows,
    build_series,
    quote_string,
    where_filters,
)
from timeseries.query import LatestValue, QueryError, Reader, SeriesGroup, SeriesQuery
from timeseries.sqlite_query import SqliteReader

T = TypeVar("T")
END = 1_780_000_000_000 // HOUR * HOUR
START = END - 24 * HOUR
DAY = 24 * HOUR
SAMPLES = city_samples(END)


@pytest.fixture(params=["sqlite", "influxql"])
def reader_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Reader]]:
    if request.param == "sqlite":
        path = tmp_path / "timeseries.sqlite3"
        write_city_sqlite(path, SAMPLES)
        yield lambda: SqliteReader(path)
    else:
        db: InfluxServer = request.getfixturevalue("influx_db")
        db.write(line_protocol(SAMPLES))
        yield lambda: InfluxQLReader(db.url, db.db)


def with_reader(factory: Callable[[], Reader], fn: Callable[[Reader], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        reader = factory()
        try:
            return await fn(reader)
        finally:
            await reader.aclose()

    return asyncio.run(main())


def expected_buckets(samples: list[Sample], q: SeriesQuery) -> dict[str, list[tuple[int, float]]]:
    groups: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s.metric != q.metric or not q.start_ms <= s.t < q.end_ms:
            continue
        if any(getattr(s, k) != v for k, v in q.filters.items()):
            continue
        key = getattr(s, q.group_by) if q.group_by else ""
        o = q.offset_ms
        groups[key][(s.t - o) // q.every_ms * q.every_ms + o].append((s.t, s.value))
    out: dict[str, list[tuple[int, float]]] = {}
    for key, buckets in groups.items():
        points = []
        for b, vals in sorted(buckets.items()):
            values = [v for _, v in vals]
            agg = {
                "mean": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
                "sum": sum(values),
                "count": float(len(values)),
                "last": max(vals)[1],
            }[q.agg]
            points.append((b, agg))
        out[key] = points
    return out


def test_latest_is_the_newest_value_per_device(reader_factory: Callable[[], Reader]) -> None:
    rows = with_reader(
        reader_factory,
        lambda r: r.latest(("pm25", "battery"), {"district": "jinshui"}, START, END),
    )
    expected: dict[tuple[str, str], tuple[int, float]] = {}
    for s in SAMPLES:
        if s.metric in ("pm25", "battery") and s.district == "jinshui":
            key = (s.device, s.metric)
            if key not in expected or expected[key][0] < s.t:
                expected[key] = (s.t, s.value)
    got = {(r.device, r.metric): (r.t, r.value) for r in rows}
    assert got == expected
    assert {r.district for r in rows} == {"jinshui"}
    assert {r.kind for r in rows if r.device.startswith("aq")} == {"air_station"}


@pytest.mark.parametrize("agg", ["mean", "min", "max", "sum", "count", "last"])
def test_series_matches_independent_buckets(reader_factory: Callable[[], Reader], agg: str) -> None:
    q = SeriesQuery("pm25", START + 30 * MINUTE, END, HOUR, agg, {}, "district")  # type: ignore[arg-type]
    groups = with_reader(reader_factory, lambda r: r.series(q))
    expected = expected_buckets(SAMPLES, q)
    assert [g.group["district"] for g in groups] == sorted(expected)
    for g in groups:
        want = expected[g.group["district"]]
        assert [t for t, _ in g.points] == [t for t, _ in want]
        for (_, v), (_, w) in zip(g.points, want, strict=True):
            assert math.isclose(v, w, rel_tol=1e-9), (agg, v, w)
    count = with_reader(reader_factory, lambda r: r.count_series(q))
    assert count == sum(len(p) for p in expected.values())


def test_series_filters_and_groups_by_device(reader_factory: Callable[[], Reader]) -> None:
    q = SeriesQuery("water_flow", START, END, 6 * HOUR, "min", {"district": "jinshui"}, "device")
    groups = with_reader(reader_factory, lambda r: r.series(q))
    expected = expected_buckets(SAMPLES, q)
    assert {g.group["device"]: g.points for g in groups} == expected


@pytest.mark.parametrize("agg", ["sum", "max", "mean", "min", "count", "last"])
def test_boolean_metrics_aggregate_as_zero_one(
    reader_factory: Callable[[], Reader], agg: str
) -> None:
    q = SeriesQuery("leak", START, END, 6 * HOUR, agg, {}, "device")  # type: ignore[arg-type]
    groups = with_reader(reader_factory, lambda r: r.series(q))
    expected = expected_buckets(SAMPLES, q)
    got = {g.group["device"]: g.points for g in groups}
    assert got.keys() == expected.keys()
    for key, points in got.items():
        for (t, v), (u, w) in zip(points, expected[key], strict=True):
            assert t == u and math.isclose(v, w), (agg, key, t, v, w)


def test_ungrouped_series_has_one_group(reader_factory: Callable[[], Reader]) -> None:
    q = SeriesQuery("avg_speed", START, END, 12 * HOUR, "mean", {"site": "s3"})
    groups = with_reader(reader_factory, lambda r: r.series(q))
    assert len(groups) == 1 and groups[0].group == {}
    assert groups[0].points == expected_buckets(SAMPLES, q)[""]


def test_offset_buckets_end_at_any_time(reader_factory: Callable[[], Reader]) -> None:
    end = END - 17 * MINUTE
    q = SeriesQuery(
        "occupancy", end - 3 * HOUR, end, HOUR, "mean", {}, "site", offset_ms=end % HOUR
    )
    groups = with_reader(reader_factory, lambda r: r.series(q))
    expected = expected_buckets(SAMPLES, q)
    assert {g.group["site"]: g.points for g in groups} == expected
    assert all(len(p) == 3 and p[-1][0] == end - HOUR for p in expected.values())
    one = SeriesQuery(
        "vehicle_count",
        end - 30 * MINUTE,
        end,
        30 * MINUTE,
        "sum",
        {"device": "tc-j1"},
        offset_ms=end % (30 * MINUTE),
    )
    (g,) = with_reader(reader_factory, lambda r: r.series(one))
    assert g.points == [(end - 30 * MINUTE, 40.0 * 3)]


def test_tag_values(reader_factory: Callable[[], Reader]) -> None:
    devices = with_reader(reader_factory, lambda r: r.tag_values("device", "pm25", {}))
    assert devices == ["aq-j1", "aq-j2", "aq-z1"]
    districts = with_reader(
        reader_factory, lambda r: r.tag_values("district", "water_flow", {"site": "s3"})
    )
    assert districts == ["zhengdong"]


def test_empty_range_and_unknown_values_return_nothing(
    reader_factory: Callable[[], Reader],
) -> None:
    q = SeriesQuery("pm25", END + HOUR, END + 2 * HOUR, HOUR, "mean", {"district": "nowhere"})
    assert with_reader(reader_factory, lambda r: r.series(q)) == []
    assert with_reader(reader_factory, lambda r: r.count_series(q)) == 0
    assert with_reader(reader_factory, lambda r: r.latest(("pm25",), {}, END, END + HOUR)) == []


HOSTILE = [
    "x' OR district='y",
    "jinshui' OR district='zhengdong",
    "; DROP DATABASE citysense",
    'jinshui"; DROP DATABASE "citysense',
    "jinshui\\' OR 1=1",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_filter_values_are_refused_before_any_query(
    reader_factory: Callable[[], Reader], value: str
) -> None:
    with pytest.raises(QueryError) as info:
        with_reader(reader_factory, lambda r: r.latest(("pm25",), {"district": value}, START, END))
    assert info.value.parameter == "district"
    with pytest.raises(QueryError):
        SeriesQuery("pm25", START, END, HOUR, "mean", {"device": value})
    with pytest.raises(QueryError):
        SeriesQuery("pm25; DROP DATABASE citysense", START, END, HOUR, "mean")
    with pytest.raises(QueryError):
        SeriesQuery("pm25", START, END, HOUR, "mean", {"gateway' OR 1=1": "x"})
    # the data is all still there
    rows = with_reader(reader_factory, lambda r: r.latest(("pm25",), {}, START, END))
    assert len(rows) == 3


def test_query_text_never_contains_values() -> None:
    q = SeriesQuery("pm25", START, END, HOUR, "mean", {"district": "jinshui", "site": "s1"})
    for text in [
        *build_series(q),
        build_latest("pm25", {"device": "aq-j1"}, START, END),
        build_newest_rows(["pm25", "no2"], {"district": "jinshui"}, START, END),
    ]:
        assert "jinshui" not in text and "aq-j1" not in text and "s1" not in text
        assert ";" not in text
        assert f"time >= {START}ms AND time < {END}ms" in text
    where, params = where_filters({"district": "jinshui"})
    assert where == ' AND "district" = $district' and params == {"district": "jinshui"}


def test_influx_binds_values_so_quotes_and_semicolons_are_inert(influx_db: InfluxServer) -> None:
    """Below the syntax check: even a hostile value sent as a bound parameter leaks no rows
    and runs no second statement on real influxd 1.6.7 (which would run both if pasted)."""
    influx_db.write(line_protocol(SAMPLES))
    statement = (
        'SELECT count("pm25") FROM "environment" '
        f'WHERE time >= {START}ms AND time < {END}ms AND "district" = $district'
    )

    async def main() -> list[list[dict[str, Any]]]:
        reader = InfluxQLReader(influx_db.url, influx_db.db)
        try:
            return [
                await reader._query([statement], {"district": value})
                for value in (
                    "x' OR district='jinshui",
                    f"; DROP DATABASE {influx_db.db}",
                    "jinshui",
                )
            ]
        finally:
            await reader.aclose()

    leak, drop, fair = asyncio.run(main())
    assert "series" not in leak[0] and "series" not in drop[0]
    assert fair[0]["series"][0]["values"][0][1] == sum(
        1 for s in SAMPLES if s.metric == "pm25" and s.district == "jinshui"
    )
    names = [row[0] for row in influx_db.rows("SHOW DATABASES")]
    assert influx_db.db in names
    assert influx_db.rows('SELECT count("pm25") FROM "environment"')[0][1] == sum(
        1 for s in SAMPLES if s.metric == "pm25"
    )


def test_influx_reader_reports_an_unreachable_server() -> None:
    from citysense.errors import RetryableError
    from tests.servers import free_port

    async def main() -> None:
        reader = InfluxQLReader(f"http://127.0.0.1:{free_port()}", "citysense", timeout=2)
        try:
            with pytest.raises(RetryableError):
                await reader.ping()
            with pytest.raises(RetryableError):
                await reader.latest(("pm25",), {}, START, END)
        finally:
            await reader.aclose()

    asyncio.run(main())


def test_sqlite_reader_on_a_missing_store_reads_empty(tmp_path: Path) -> None:
    async def main() -> None:
        reader = SqliteReader(tmp_path / "none.sqlite3")
        try:
            assert await reader.latest(("pm25",), {}, START, END) == []
            assert await reader.tag_values("device", "pm25", {}) == []
        finally:
            await reader.aclose()

    asyncio.run(main())
    assert not (tmp_path / "none.sqlite3").exists()


def test_series_many_answers_each_query_as_series_would(
    reader_factory: Callable[[], Reader],
) -> None:
    queries = [
        SeriesQuery("pm25", START, END, 6 * HOUR, "mean", {"district": "jinshui"}, "site"),
        SeriesQuery("leak", START, END, DAY, "sum", {"district": "jinshui"}, "device"),
        SeriesQuery("o3", START, END, HOUR, "max", {}, "district"),
        SeriesQuery("water_flow", START, END, 12 * HOUR, "min", {"site": "s3"}),
    ]

    async def both(r: Reader) -> tuple[list[list[SeriesGroup]], list[list[SeriesGroup]]]:
        return await r.series_many(queries), [await r.series(q) for q in queries]

    many, one_by_one = with_reader(reader_factory, both)
    assert many == one_by_one
    for q, groups in zip(queries, many, strict=True):
        key = q.group_by
        got = {g.group[key] if key else "": g.points for g in groups}
        want = expected_buckets(SAMPLES, q)
        assert got.keys() == want.keys()
        for k, points in got.items():
            assert [t for t, _ in points] == [t for t, _ in want[k]]
            assert all(math.isclose(v, w) for (_, v), (_, w) in zip(points, want[k], strict=True))


def test_latest_sees_past_a_newest_reading_that_lacks_the_metric(
    reader_factory: Callable[[], Reader], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """aq-j1's newest point carries only a temperature: its pm25 is the one before."""
    partial = Sample("temperature", "aq-j1", END - MINUTE, 21.5, "air_station", "jinshui", "s1")
    if request.node.callspec.params["reader_factory"] == "influxql":
        db: InfluxServer = request.getfixturevalue("influx_db")
        db.write(line_protocol([partial]))
    else:
        write_city_sqlite(tmp_path / "timeseries.sqlite3", [partial])
    rows = with_reader(
        reader_factory,
        lambda r: r.latest(("pm25", "temperature"), {"device": "aq-j1"}, START, END),
    )
    got = {r.metric: (r.t, r.value) for r in rows}
    last_pm25 = max(
        (s for s in SAMPLES if s.device == "aq-j1" and s.metric == "pm25"), key=lambda s: s.t
    )
    assert got == {"pm25": (last_pm25.t, last_pm25.value), "temperature": (END - MINUTE, 21.5)}


@pytest.fixture(scope="module")
def escape_db(influxd: InfluxServer) -> Iterator[str]:
    """A database of this module's own on the session influxd, holding the known city."""
    name = "t_escape_" + uuid.uuid4().hex[:8]
    influxd.query(f'CREATE DATABASE "{name}"', method="POST")
    influxd.write(line_protocol(SAMPLES), db=name)
    yield name
    influxd.query(f'DROP DATABASE "{name}"', method="POST")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.text(min_size=1, max_size=30))
def test_escaped_literals_never_leak_rows_on_real_influxd(
    influxd: InfluxServer, escape_db: str, value: str
) -> None:
    """The escaping path (for text that cannot be bound): any string compared as a quoted
    literal matches only itself -- no quote or backslash breaks out of it."""
    db = escape_db
    if "\x00" in value or "\r" in value:
        with pytest.raises(QueryError):
            quote_string(value)
        return
    statement = (
        f'SELECT count("pm25") FROM "environment" WHERE time >= {START}ms AND time < {END}ms '
        f'AND "district" = {quote_string(value)}'
    )
    result = influxd.query(statement, db=db)["results"][0]
    assert "error" not in result, (value, result)
    assert "series" not in result or value in ("jinshui", "zhengdong")


def test_latest_asks_again_only_for_metrics_a_device_of_their_measurement_lacks(
    influx_db: InfluxServer,
) -> None:
    """Full rows of two measurements: one statement round, though a traffic counter never
    carries pm25; a station whose newest row lacks no2: a second round, for no2 only."""
    tags = "kind=air_station,district=jinshui,site=s1"
    influx_db.write(
        f"environment,device=aq-1,{tags} pm25=10,no2=20 {END - 2 * MINUTE}\n"
        f"environment,device=aq-2,{tags} pm25=11,no2=21 {END - 2 * MINUTE}\n"
        "traffic,device=tc-1,kind=traffic_counter,district=jinshui,site=s1 "
        f"vehicle_count=5,avg_speed=30 {END - MINUTE}"
    )
    asked: list[list[str]] = []

    async def main() -> list[list[LatestValue]]:
        reader = InfluxQLReader(influx_db.url, influx_db.db)
        real = reader._query

        async def counting(statements: list[str], params: Any) -> list[dict[str, Any]]:
            asked.append(statements)
            return await real(statements, params)

        reader._query = counting  # type: ignore[method-assign]  # a spy on real influxd
        metrics = ("pm25", "no2", "vehicle_count", "avg_speed")
        try:
            first = await reader.latest(metrics, {}, START, END)
            influx_db.write(f"environment,device=aq-1,{tags} pm25=12 {END - MINUTE}")
            second = await reader.latest(metrics, {}, START, END)
            return [first, second]
        finally:
            await reader.aclose()

    first, second = asyncio.run(main())
    # a round of one statement per measurement each call; then no2 alone for aq-1
    assert [len(a) for a in asked] == [2, 2, 1], asked
    assert len(first) == 6 and len(second) == 6
    got = {(r.device, r.metric): (r.t, r.value) for r in second}
    assert got[("aq-1", "pm25")] == (END - MINUTE, 12.0)
    assert got[("aq-1", "no2")] == (END - 2 * MINUTE, 20.0)  # from the second round
    assert '"no2"' in asked[2][0], asked
