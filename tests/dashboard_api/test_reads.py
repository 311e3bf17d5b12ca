"""The read path over HTTP, on the embedded store and a real influxd: the live latest-value
table (a new reading within 5 s), last_seen from any reading, ``source`` in series answers,
the raw-data horizon (400 naming it), and the figures on ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from citysense.config import Settings
from dashboard_api.app import create_app
from tests.dashboard_api.conftest import KEYS, OPERATOR_KEY, ApiServer
from tests.servers import InfluxServer
from timeseries.factory import create_writer
from timeseries.rollup import HOUR, MINUTE, RollupWorker, open_rollup_store, with_rollup_marks
from timeseries.schema import Point


@pytest.fixture(params=["sqlite", "influx"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    base = Settings(state_dir=str(tmp_path / "state"), api_keys=KEYS, rate_limit=100_000)
    if request.param == "sqlite":
        yield base
    else:
        db: InfluxServer = request.getfixturevalue("influx_db")
        yield replace(base, influx=db.url, influx_db=db.db, influx_api="1")


def store(settings: Settings, points: list[Point], *, roll: bool = True) -> None:
    """Write as the ingestor does (with rollup marks), then bring the rollups up to date."""

    async def main() -> None:
        writer = with_rollup_marks(await create_writer(settings), settings)
        try:
            if points:
                assert not (await writer.write(points)).rejected
        finally:
            await writer.close()
        if roll:
            rollups = open_rollup_store(settings)
            assert rollups is not None
            try:
                await RollupWorker(rollups, settle_ms=0).drain(60)
            finally:
                await rollups.close()

    asyncio.run(main())


def air(device: str, t: int, **values: Any) -> Point:
    return Point("environment", (device, "air_station", "north", "s1", "gw-1"), values, t)


def health(device: str, t: int, **values: Any) -> Point:
    return Point("device_health", (device, "air_station", "north", "s1", "gw-1"), values, t)


def client() -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=30)


def wait_healthy(c: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 30
    while c.get(f"{url}/api/v1/health").status_code != 200:
        assert time.monotonic() < deadline, "the API never became healthy"
        time.sleep(0.1)


def test_latest_sees_a_new_reading_within_5_s_and_last_seen_comes_from_any_reading(
    settings: Settings,
) -> None:
    now = int(time.time() * 1000)
    # a station with health readings, and one that only ever sends pm25
    store(
        settings,
        [
            air("aq-full", now - 60_000, pm25=12.0),
            health("aq-full", now - 60_000, battery=77.0, rsrp=-95.0, snr=8.0, ecl=1.0),
            air("aq-pm25", now - 90_000, pm25=30.0),
        ],
    )
    server = ApiServer(settings, create_app(settings))
    server.start()
    try:
        with client() as c:
            wait_healthy(c, server.url)
            devices = {
                d["device"]: d for d in c.get(f"{server.url}/api/v1/devices").json()["devices"]
            }
            only = devices["aq-pm25"]
            assert only["status"] == "online" and only["last_seen"] is not None
            assert only["battery"] is None
            full = devices["aq-full"]
            assert (full["battery"], full["rsrp"], full["snr"], full["ecl"]) == (
                77.0,
                -95.0,
                8.0,
                1.0,
            )
            # a reading stored now is in `latest` within 5 s
            t = int(time.time() * 1000)
            store(settings, [air("aq-pm25", t, pm25=55.5)], roll=False)
            stored = time.monotonic()
            while True:
                body = c.get(
                    f"{server.url}/api/v1/environment/latest", params={"device": "aq-pm25"}
                ).json()
                values = body["devices"][0]["values"] if body["devices"] else {}
                if values.get("pm25", {}).get("value") == 55.5:
                    break
                assert time.monotonic() - stored < 5.0, body
                time.sleep(0.1)
            # late data: a reading 3 hours old for a device never seen reaches the table too
            store(settings, [air("aq-late", t - 3 * HOUR, pm25=5.0)], roll=False)
            deadline = time.monotonic() + 10
            while "aq-late" not in {
                d["device"] for d in c.get(f"{server.url}/api/v1/devices").json()["devices"]
            }:
                assert time.monotonic() < deadline, "a late reading never reached /devices"
                time.sleep(0.2)
            metrics = c.get(f"{server.url}/metrics").text
            assert "citysense_api_latest_cache_age_seconds" in metrics
            assert "citysense_api_rollup_lag_seconds" in metrics
            assert "citysense_api_rollups_available 1" in metrics
    finally:
        server.stop()


def test_series_says_its_source_and_refuses_finer_than_kept_before_the_horizon(
    settings: Settings,
) -> None:
    settings = replace(settings, retention_raw="2h", retention_rollup="30d")
    hour = int(time.time() * 1000) // HOUR * HOUR - 5 * HOUR
    store(settings, [air("aq-1", hour + k * MINUTE, pm25=float(k)) for k in range(0, 60, 5)])
    server = ApiServer(settings, create_app(settings))
    server.start()
    try:
        with client() as c:
            wait_healthy(c, server.url)
            url = f"{server.url}/api/v1/environment/series"
            base = {"metric": "pm25", "start": str(hour), "end": str(hour + HOUR)}
            hourly = c.get(url, params={**base, "every": "1h", "agg": "sum"}).json()
            assert hourly["source"] == "1h"
            assert hourly["series"][0]["points"][0][1] == float(sum(range(0, 60, 5)))
            minutes = c.get(url, params={**base, "every": "5m", "agg": "max"}).json()
            assert minutes["source"] == "1m" and len(minutes["series"][0]["points"]) == 12
            recent = c.get(
                url, params={"metric": "pm25", "every": "10s", "start": str(hour + 4 * HOUR)}
            ).json()
            assert recent["source"] == "raw"
            refused = c.get(url, params={**base, "every": "10s"})
            assert refused.status_code == 400
            detail = refused.json()["detail"]
            assert detail.startswith("start:") and "horizon" in detail
    finally:
        server.stop()
