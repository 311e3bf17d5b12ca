"""InfluxV1Writer against real influxd 1.6.7: round trip, partial writes, 413, outage."""

from __future__ import annotations

import asyncio
import urllib.error
from pathlib import Path

import pytest

from citysense.config import Settings
from citysense.errors import RetryableError
from tests.servers import InfluxServer
from timeseries.connection import InfluxTarget, storage_target
from timeseries.factory import open_writer
from timeseries.influx_v1 import InfluxV1Writer
from timeseries.lineprotocol import LineSerializer
from timeseries.schema import Point
from timeseries.writer import WriteResult

T0 = 1764000000000


def _target(server: InfluxServer, **kw: object) -> InfluxTarget:
    values: dict[str, object] = {"influx": server.url, "influx_db": server.db, "influx_api": "1"}
    settings = Settings(**{**values, **kw})  # type: ignore[arg-type]
    target = storage_target(settings)
    assert isinstance(target, InfluxTarget)
    return target


def _points(n: int, t0: int = T0) -> list[Point]:
    return [
        Point("traffic", (f"dev-{i}", "traffic_counter", "jinshui", "s", "gw"),
              {"vehicle_count": float(i), "avg_speed": 40.0}, t0 + i)
        for i in range(n)
    ]  # fmt: skip


def test_write_and_read_back_idempotently(influx_db: InfluxServer) -> None:
    async def main() -> None:
        writer = InfluxV1Writer(_target(influx_db))
        try:
            points = _points(100)
            assert (await writer.write(points)).written == 100
            assert (await writer.write(points[:50])).written == 50  # redelivery
        finally:
            await writer.close()

    asyncio.run(main())
    rows = influx_db.rows('SELECT count("vehicle_count") FROM "traffic"')
    assert rows[0][1] == 100
    assert influx_db.rows('SELECT "vehicle_count" FROM "traffic" WHERE "device" = \'dev-7\'') == [
        [T0 + 7, 7.0]
    ]


def test_gzip_writes_too(influx_db: InfluxServer) -> None:
    async def main() -> None:
        async with open_writer(
            Settings(influx=influx_db.url, influx_db=influx_db.db, influx_gzip=True)
        ) as writer:
            assert isinstance(writer, InfluxV1Writer)  # detected from /ping
            await writer.write(_points(10))

    asyncio.run(main())
    assert influx_db.rows('SELECT count("avg_speed") FROM "traffic"')[0][1] == 10


def test_partial_write_isolates_the_bad_points(influx_db: InfluxServer) -> None:
    # avg_speed already exists as a boolean in this shard: float points conflict with it.
    influx_db.write(f"traffic,device=other avg_speed=true {T0 - 1}")
    good = [
        Point("traffic", (f"g-{i}", "traffic_counter", "jinshui", "s", "gw"),
              {"vehicle_count": float(i)}, T0 + i)
        for i in range(20)
    ]  # fmt: skip
    bad = _points(2, T0 + 100)

    async def main() -> None:
        writer = InfluxV1Writer(_target(influx_db))
        try:
            return await writer.write([*good[:10], bad[0], *good[10:], bad[1]])
        finally:
            await writer.close()

    result = asyncio.run(main())
    assert result.written == 20
    assert [r.point for r in result.rejected] == bad
    assert {r.reason for r in result.rejected} == {"field_type_conflict"}
    assert influx_db.rows('SELECT count("vehicle_count") FROM "traffic"')[0][1] == 20


class SmallBodyInflux(InfluxServer):
    """Real influxd configured with a tiny ``max-body-size``, so it answers 413."""

    def _config(self) -> str:
        return super()._config().replace("max-body-size = 25000000", "max-body-size = 4000")


def test_413_splits_the_batch(tmp_path: Path) -> None:
    server = SmallBodyInflux(tmp_path / "influxd")
    assert "max-body-size = 4000" in server.conf.read_text()
    server.start()
    try:
        body = LineSerializer().lines(_points(300))
        with pytest.raises(urllib.error.HTTPError) as refused:
            server.write(body)  # the whole batch in one request is too large
        assert refused.value.code == 413

        async def main() -> None:
            writer = InfluxV1Writer(_target(server))
            try:
                result = await writer.write(_points(300))
                assert result.written == 300 and not result.rejected
            finally:
                await writer.close()

        asyncio.run(main())
        assert server.rows('SELECT count("vehicle_count") FROM "traffic"')[0][1] == 300
    finally:
        server.stop()


def test_server_down_is_retryable(influxd_private: InfluxServer) -> None:
    influxd_private.stop()

    async def main() -> None:
        writer = InfluxV1Writer(_target(influxd_private, influx_timeout=2.0))
        try:
            with pytest.raises(RetryableError):
                await writer.write(_points(5))
        finally:
            await writer.close()

    asyncio.run(main())


def test_missing_database_is_retryable_not_dropped(influx_db: InfluxServer) -> None:
    async def main() -> None:
        target = _target(influx_db, influx_db="no_such_db")
        writer = InfluxV1Writer(target)
        try:
            with pytest.raises(RetryableError):
                await writer.write(_points(1))
        finally:
            await writer.close()

    asyncio.run(main())


def test_lines_partial_write_isolates_the_bad_lines(influx_db: InfluxServer) -> None:
    influx_db.write(f"traffic,device=other avg_speed=true {T0 - 1}")
    serializer = LineSerializer()
    good = [serializer.line(p) for p in _points(30)]
    good = [line.replace(",avg_speed=40.0", "") for line in good]  # vehicle_count only
    bad = [serializer.line(p) for p in _points(1, T0 + 500)]  # avg_speed as a float: conflict

    async def main() -> WriteResult:
        writer = InfluxV1Writer(_target(influx_db))
        try:
            return await writer.write_lines([*good[:7], *bad, *good[7:]])
        finally:
            await writer.close()

    result = asyncio.run(main())
    assert result.written == 30
    assert [(r.point, r.reason) for r in result.rejected] == [(bad[0], "field_type_conflict")]
    assert influx_db.rows('SELECT count("vehicle_count") FROM "traffic"')[0][1] == 30
