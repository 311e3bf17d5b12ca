"""Choosing a reader from the settings, and the InfluxDB 2.x/3.x compatibility wire contract.

No InfluxDB 2.x or 3.x server can be installed here: the 2.x path is checked against a
stand-in transport (httpx.MockTransport) that records what the reader sends to the 1.x
compatibility ``/query`` endpoint -- token auth, the bucket as database, bound parameters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from citysense.config import Settings
from tests.servers import InfluxServer
from timeseries.connection import InfluxTarget
from timeseries.influxql import InfluxQLReader
from timeseries.query import open_reader
from timeseries.sqlite_query import SqliteReader


def test_open_reader_picks_sqlite_without_influx(tmp_path: Path) -> None:
    async def main() -> str:
        async with open_reader(Settings(state_dir=str(tmp_path))) as reader:
            assert isinstance(reader, SqliteReader)
            return reader.description

    assert str(tmp_path) in asyncio.run(main())


def test_open_reader_detects_influx_1x(influx_db: InfluxServer) -> None:
    settings = Settings(influx=influx_db.url, influx_db=influx_db.db)

    async def main() -> None:
        async with open_reader(settings) as reader:
            assert isinstance(reader, InfluxQLReader)
            await reader.ping()
            assert await reader.latest(("pm25",), {}, 0, 1) == []

    asyncio.run(main())


def test_influx_2x_compatibility_query_uses_token_bucket_and_params() -> None:
    sent: list[httpx.Request] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"results": [{"statement_id": 0}]})

    target = InfluxTarget(
        url="http://influx2.invalid:8086",
        api="2",
        database="citysense",
        bucket="city-bucket",
        org="city",
        token="s3cret-token",
        username=None,
        password=None,
        gzip=False,
        timeout=5.0,
    )
    reader = InfluxQLReader.from_target(target, "2", transport=httpx.MockTransport(endpoint))

    async def main() -> None:
        try:
            await reader.latest(("pm25",), {"district": "jinshui"}, 0, 1000)
        finally:
            await reader.aclose()

    asyncio.run(main())
    (request,) = sent
    assert request.method == "GET" and request.url.path == "/query"
    assert request.headers["Authorization"] == "Token s3cret-token"
    assert request.url.params["db"] == "city-bucket"
    assert json.loads(request.url.params["params"]) == {"district": "jinshui"}
    assert "jinshui" not in request.url.params["q"]
    assert "s3cret" not in reader.description


def test_a_chunked_answer_reads_as_the_unchunked_one() -> None:
    """Series continued over chunks while ``partial``, several statements, statement errors."""
    from timeseries.influxql import read_chunks

    chunks = [
        {"results": [{"statement_id": 0, "series": [
            {"name": "m", "tags": {"d": "a"}, "columns": ["time", "v"],
             "values": [[1, 1.0], [2, 2.0]], "partial": True}], "partial": True}]},
        {"results": [{"statement_id": 0, "series": [
            {"name": "m", "tags": {"d": "a"}, "columns": ["time", "v"], "values": [[3, 3.0]]},
            {"name": "m", "tags": {"d": "b"}, "columns": ["time", "v"], "values": [[1, 9.0]]}]}]},
        {"results": [{"statement_id": 1}]},
        {"results": [{"statement_id": 2, "error": "database not found: x"}]},
    ]  # fmt: skip

    async def lines() -> AsyncIterator[str]:
        for c in chunks:
            yield json.dumps(c)
            yield ""

    body = asyncio.run(read_chunks(lines()))
    assert body == {
        "results": [
            {"statement_id": 0, "series": [
                {"name": "m", "tags": {"d": "a"}, "columns": ["time", "v"],
                 "values": [[1, 1.0], [2, 2.0], [3, 3.0]]},
                {"name": "m", "tags": {"d": "b"}, "columns": ["time", "v"], "values": [[1, 9.0]]},
            ]},
            {"statement_id": 1},
            {"statement_id": 2, "error": "database not found: x"},
        ]
    }  # fmt: skip


def test_chunked_and_unchunked_answers_agree_on_influxd(influx_db: InfluxServer) -> None:
    """Past several chunk boundaries of real influxd: the same series either way."""
    from timeseries.influxql import CHUNK_POINTS
    from timeseries.query import SeriesQuery

    start = 1_700_000_000_000
    n = 2 * CHUNK_POINTS + 321
    lines = "\n".join(
        "environment,device=aq-1,kind=air_station,district=north,site=s1,gateway=g "
        f"pm25={i % 97}.5 {start + i * 1000}"
        for i in range(n)
    )
    httpx.post(
        f"{influx_db.url}/write", params={"db": influx_db.db, "precision": "ms"}, content=lines
    ).raise_for_status()
    q = SeriesQuery("pm25", start, start + n * 1000, 1000, "max", {}, "device")

    async def read(chunked: bool) -> list[object]:
        reader = InfluxQLReader(influx_db.url, influx_db.db, chunked=chunked)
        try:
            return [(g.group, g.points) for g in await reader.series(q)]
        finally:
            await reader.aclose()

    chunked, whole = asyncio.run(read(True)), asyncio.run(read(False))
    assert chunked == whole
    assert sum(len(points) for _, points in whole) == n  # type: ignore[misc]
