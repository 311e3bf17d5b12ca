"""The embedded store: same facts as InfluxDB, long form, idempotent, usable concurrently."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from citysense.config import Settings
from timeseries.factory import open_writer
from timeseries.schema import SQLITE_FILENAME, Point
from timeseries.sqlite_store import SqliteWriter

T0 = 1764000000000


def test_points_become_rows_and_rewrites_overwrite(tmp_path: Path) -> None:
    p = Point(
        "environment",
        ("urn:imei:1", "air_station", "zhengdong", "ruyi", "gw-1"),
        {"pm25": 35.2, "pm10": 61.0},
        T0,
    )
    flag = Point("traffic", ("urn:imei:2", "parking_sensor", "jinshui", "p", "gw-1"),
                 {"occupied": True}, T0)  # fmt: skip

    async def main() -> None:
        async with open_writer(Settings(state_dir=str(tmp_path))) as writer:
            assert isinstance(writer, SqliteWriter)
            assert (await writer.write([p, flag])).written == 2
            assert (await writer.write([p])).written == 1  # redelivery: one row still

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / SQLITE_FILENAME)
    try:
        rows = db.execute(
            "SELECT metric, device, t, value, measurement, kind, district, site, gateway "
            "FROM samples ORDER BY metric"
        ).fetchall()
    finally:
        db.close()
    assert rows == [
        ("occupied", "urn:imei:2", T0, 1.0, "traffic", "parking_sensor", "jinshui", "p", "gw-1"),
        ("pm10", "urn:imei:1", T0, 61.0, "environment", "air_station", "zhengdong", "ruyi", "gw-1"),
        ("pm25", "urn:imei:1", T0, 35.2, "environment", "air_station", "zhengdong", "ruyi", "gw-1"),
    ]


def test_a_reader_sees_committed_batches_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "ts.sqlite3"
    writer = SqliteWriter(path)
    reader = sqlite3.connect(path, timeout=10)
    try:
        for batch in range(5):
            points = [
                Point("traffic", (f"d{i}", "traffic_counter", "x", "y", "g"),
                      {"vehicle_count": 1.0, "occupancy": 2.0}, T0 + batch * 1000 + i)
                for i in range(1000)
            ]  # fmt: skip
            writer.write_blocking(points)
            (n,) = reader.execute("SELECT COUNT(*) FROM samples").fetchone()
            assert n == (batch + 1) * 2000
    finally:
        reader.close()
        asyncio.run(writer.close())
