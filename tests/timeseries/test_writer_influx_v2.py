"""InfluxV2Writer's wire contract, against a local HTTP endpoint.

The endpoint below STANDS IN FOR AN InfluxDB 2.x SERVER: no 2.x server installs on these
machines. It checks what a 2.x server checks on ``POST /api/v2/write`` -- path, ``org``,
``bucket`` and ``precision`` parameters, the ``Authorization: Token`` header, the body's line
protocol -- and answers with the statuses a 2.x server uses, so that the writer's handling of
204, 400 (isolation), 429 with Retry-After and 503 is exercised over real HTTP.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from citysense.config import Settings
from citysense.errors import ConfigError, RetryableError
from timeseries.connection import InfluxTarget, storage_target
from timeseries.factory import open_writer
from timeseries.influx_v2 import InfluxV2Writer
from timeseries.schema import Point

TOKEN = "s3cr3t-token"


class StandInInflux2:
    """A 2.x write endpoint that records accepted lines and can be told to fail."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.requests: list[dict[str, object]] = []
        self.fail_with: tuple[int, dict[str, str]] | None = None
        self.bad_marker = "BAD"
        self.buckets = {"citysense"}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # /ping and the bucket lookup, as 2.x answers them
                url = urlsplit(self.path)
                if url.path == "/api/v2/buckets":
                    name = parse_qs(url.query).get("name", [""])[0]
                    found = [{"name": name}] if name in outer.buckets else []
                    data = json.dumps({"buckets": found}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(204)
                self.send_header("X-Influxdb-Version", "v2.7.11")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = raw.decode()
                outer.requests.append(
                    {"path": url.path, "query": query, "auth": self.headers.get("Authorization")}
                )
                status, headers, text = 204, {}, ""
                if url.path != "/api/v2/write":
                    status, text = 404, '{"code":"not found"}'
                elif self.headers.get("Authorization") != f"Token {TOKEN}":
                    status, text = 401, '{"code":"unauthorized"}'
                elif query.get("precision") != "ms" or not query.get("bucket"):
                    status, text = 400, '{"code":"invalid","message":"precision"}'
                elif outer.fail_with is not None:
                    status, headers = outer.fail_with
                    outer.fail_with = None
                    text = '{"code":"unavailable"}'
                elif outer.bad_marker in body:
                    status = 400
                    text = '{"code":"invalid","message":"partial write: field type conflict"}'
                else:
                    outer.lines.extend(body.splitlines())
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                data = text.encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandInInflux2:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def influx2() -> Iterator[StandInInflux2]:
    with StandInInflux2() as server:
        yield server


def _settings(server: StandInInflux2, **kw: object) -> Settings:
    values: dict[str, object] = {
        "influx": server.url,
        "influx_token": TOKEN,
        "influx_org": "city",
        "influx_bucket": "citysense",
    }
    return Settings(**{**values, **kw})  # type: ignore[arg-type]


def _points(n: int, device: str = "dev") -> list[Point]:
    return [
        Point("traffic", (f"{device}-{i}", "traffic_counter", "jinshui", "s", "gw"),
              {"vehicle_count": float(i)}, 1764000000000 + i)
        for i in range(n)
    ]  # fmt: skip


def test_writes_line_protocol_with_token_org_bucket_ms(influx2: StandInInflux2) -> None:
    async def main() -> None:
        async with open_writer(_settings(influx2)) as writer:  # API detected from /ping
            assert isinstance(writer, InfluxV2Writer)
            assert (await writer.write(_points(3))).written == 3

    asyncio.run(main())
    assert influx2.requests[0] == {
        "path": "/api/v2/write",
        "query": {"org": "city", "bucket": "citysense", "precision": "ms"},
        "auth": f"Token {TOKEN}",
    }
    assert influx2.lines == [
        f"traffic,device=dev-{i},district=jinshui,gateway=gw,kind=traffic_counter,site=s "
        f"vehicle_count={float(i)} {1764000000000 + i}"
        for i in range(3)
    ]


def test_gzip_body(influx2: StandInInflux2) -> None:
    async def main() -> None:
        async with open_writer(_settings(influx2, influx_gzip=True, influx_api="2")) as writer:
            await writer.write(_points(50))

    asyncio.run(main())
    assert len(influx2.lines) == 50


def test_400_isolates_bad_points(influx2: StandInInflux2) -> None:
    points = _points(6) + _points(1, device="BAD") + _points(3, device="more")

    async def main() -> None:
        async with open_writer(_settings(influx2, influx_api="2")) as writer:
            return await writer.write(points)

    result = asyncio.run(main())
    assert result.written == 9
    assert [r.point.tags[0] for r in result.rejected] == ["BAD-0"]
    assert result.rejected[0].reason == "field_type_conflict"
    assert len(influx2.lines) == 9


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [(429, {"Retry-After": "3"}, 3.0), (503, {}, None), (401, {}, None)],
)
def test_retryable_answers(
    influx2: StandInInflux2, status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    async def main() -> None:
        token = "wrong" if status == 401 else TOKEN
        async with open_writer(_settings(influx2, influx_api="2", influx_token=token)) as writer:
            influx2.fail_with = (status, headers) if status != 401 else None
            with pytest.raises(RetryableError) as info:
                await writer.write(_points(2))
            assert info.value.retry_after == retry_after
            if status != 401:
                assert (await writer.write(_points(2))).written == 2  # then it recovers

    asyncio.run(main())


def test_unreachable_server_is_retryable() -> None:
    with StandInInflux2() as server:
        url = server.url
    settings = Settings(influx=url, influx_api="2", influx_token=TOKEN, influx_timeout=2.0)
    target = storage_target(settings)
    assert isinstance(target, InfluxTarget)

    async def main() -> None:
        writer = InfluxV2Writer(target)
        try:
            with pytest.raises(RetryableError):
                await writer.write(_points(1))
        finally:
            await writer.close()

    asyncio.run(main())


def test_a_missing_bucket_is_refused_with_the_command_that_creates_it(
    influx2: StandInInflux2,
) -> None:
    async def main() -> None:
        async with open_writer(_settings(influx2, influx_bucket="nosuch")):
            pass

    with pytest.raises(ConfigError, match="influx bucket create --name nosuch --org city"):
        asyncio.run(main())
    assert not influx2.lines
