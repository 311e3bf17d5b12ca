"""Choosing a reader from the settings, and the InfluxDB 2.x/3.x compatibility wire contract.

No InfluxDB 2.x or 3.x server can be installed here: the 2.x path is checked against a
stand-in transport (httpx.MockTransport) that records what the reader sends to the 1.x
compatibility ``/query`` endpoint -- token auth, the bucket as database, bound parameters.
"""

from __future__ import annotations

import asyncio
import json
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
