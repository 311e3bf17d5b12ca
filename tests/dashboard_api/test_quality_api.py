"""End to end over the real pieces: the simulated city (with a covered inlet during a haze)
written by the real writer into the embedded store, and the API served by uvicorn on loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import httpx
import pytest

from citysense.config import Settings
from citysense.registry import Device
from dashboard_api.app import create_app
from simulators.backfill import backfill_columns, readings_of
from simulators.city import ZHENGZHOU
from simulators.models import CityModel, HazeEpisode
from simulators.sensor_faults import FaultEpisode, SensorFaults
from tests.dashboard_api.conftest import OPERATOR_KEY, ApiServer, MakeApi
from tests.dashboard_api.test_dashboard_page import CHROMIUM, Browser
from timeseries.factory import open_writer
from timeseries.schema import reading_to_points

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_780_000_000_000 // DAY * DAY


def stations(per_district: int, districts: tuple[str, ...]) -> list[Device]:
    out = []
    for d in ZHENGZHOU:
        if d.name not in districts:
            continue
        for i in range(per_district):
            site = d.sites[i % len(d.sites)]
            out.append(
                Device(
                    f"urn:imei:86772603{len(out):06d}{i % 10}",
                    "air_station",
                    d.name,
                    site.name,
                    site.lat + 0.002 * i,
                    site.lon,
                    "gw-01",
                )
            )
    return out


async def write_history(
    settings: Settings, model: CityModel, start: int, end: int, interval_s: float = 300.0
) -> int:
    n = 0
    async with open_writer(settings) as writer:
        for batch in backfill_columns(model, start, end, intervals_s={"air_station": interval_s}):
            points = [p for r in readings_of(model, batch) for p in reading_to_points(r, "gw-01")]
            await writer.write(points)
            n += batch.count
    return n


class Clock:
    def __init__(self, t_ms: int) -> None:
        self.t_ms = t_ms

    def __call__(self) -> float:
        return self.t_ms / 1000


def serve(settings: Settings, clock: Clock) -> ApiServer:
    server = ApiServer(settings, create_app(settings, clock=clock))
    server.start()
    return server


def client(server: ApiServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=60
    )


def covered_city(tmp_path: Path, **changes: object) -> tuple[Settings, list[Device]]:
    """Four stations in zhengdong through a haze; the first one's inlet covered 30-55 h in."""
    devices = stations(4, ("zhengdong",))
    covered = devices[0]
    haze = HazeEpisode(T0 + DAY, T0 + 3 * DAY, 34.775, 113.735, 12.0, 250.0)
    fault = FaultEpisode(covered.device, "covered_inlet", "pm25", T0 + 30 * HOUR, T0 + 55 * HOUR)
    faults = SensorFaults({}, seed=1, explicit=[fault])
    model = CityModel(devices, seed=1, episodes=[haze], random_episodes=False, sensor_faults=faults)
    settings = Settings(
        state_dir=str(tmp_path / "state"),
        api_keys=(f"{OPERATOR_KEY}:operator",),
        rate_limit=100_000,
        quality_interval=0.0,
    )
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    assert asyncio.run(write_history(settings, model, T0, T0 + 4 * DAY)) > 0
    return settings, devices


def test_covered_inlet_during_haze_is_flagged_left_out_and_cleared(tmp_path: Path) -> None:
    settings, devices = covered_city(tmp_path)
    covered = devices[0]
    clock = Clock(T0 + 52 * HOUR)  # in the haze, the inlet covered for 22 h
    server = serve(settings, clock)
    try:
        with client(server) as c:
            r = c.get("/api/v1/quality", params={"kind": "tamper_suspect"})
            assert r.status_code == 200, r.text
            flags = r.json()["flags"]
            assert {f["device"] for f in flags} == {covered.device}
            flag = next(f for f in flags if f["metric"] == "pm25")
            assert flag["open"] is True and flag["until"] is None
            ev = flag["evidence"]
            assert ev["station"] < 0.35 * ev["neighbours_median"]
            assert ev["neighbours"] == 3 and ev["neighbours_rise_48h"] >= 40
            assert "window" in ev and ev["window"]["reason_threshold"]

            # its readings leave the district AQI, which says so
            aqi = c.get("/api/v1/environment/aqi", params={"district": "zhengdong"}).json()
            district = aqi["districts"][0]
            left = [x for x in district["excluded"] if x["metric"] == "pm25"]
            assert left and left[0]["device"] == covered.device
            assert left[0]["reason"] == "tamper_suspect" and left[0]["readings"] > 0
            pm25 = next(i for i in district["iaqi"] if i["pollutant"] == "pm25")
            series = c.get(
                "/api/v1/environment/series",
                params={
                    "metric": "pm25",
                    "start": str(clock.t_ms - HOUR),
                    "end": str(clock.t_ms),
                    "every": "1h",
                    "group_by": "device",
                    "district": "zhengdong",
                },
            ).json()["series"]
            others = [g["points"][0][1] for g in series if g["group"]["device"] != covered.device]
            assert pm25["concentration"] == pytest.approx(sum(others) / len(others), rel=0.02)

            # /devices shows the open flag
            devs = c.get("/api/v1/devices", params={"district": "zhengdong"}).json()["devices"]
            shown = {d["device"]: d["flags"] for d in devs}
            assert any(f["reason"] == "tamper_suspect" for f in shown[covered.device])
            assert all(not shown[d.device] for d in devices[1:])

            # the fault ends at T0 + 55 h: the flag clears itself, data untouched
            clock.t_ms = T0 + 62 * HOUR
            r = c.get("/api/v1/quality", params={"kind": "tamper_suspect"}).json()["flags"]
            assert r and all(not f["open"] and f["until"] is not None for f in r)
            aqi = c.get("/api/v1/environment/aqi", params={"district": "zhengdong"}).json()
            # the flagged hours are still left out of the 24 h window, as recent flags
            assert all(x["until"] is not None for x in aqi["districts"][0]["excluded"])

            # two evaluations, in one process of their own, none failed, nothing open now
            metrics = c.get("/metrics").text
            for line in (
                "citysense_api_quality_evaluations_total 2",
                "citysense_api_quality_evaluation_failures_total 0",
                "citysense_api_quality_flags_open 0",
                "citysense_api_quality_process_starts_total 1",
            ):
                assert line + "\n" in metrics, line
            assert "citysense_api_quality_evaluation_seconds " in metrics
    finally:
        server.stop()


def test_forecast_answers_every_district_with_intervals_or_409(tmp_path: Path) -> None:
    names = tuple(d.name for d in ZHENGZHOU)
    devices = stations(2, names)
    model = CityModel(devices, seed=2)
    settings = Settings(
        state_dir=str(tmp_path / "state"),
        api_keys=(f"{OPERATOR_KEY}:operator",),
        rate_limit=100_000,
        quality_interval=0.0,
    )
    end = T0 + 10 * DAY
    asyncio.run(write_history(settings, model, end - 2 * DAY, end, 3600.0))
    clock = Clock(end)
    server = serve(settings, clock)
    try:
        with client(server) as c:
            r = c.get("/api/v1/environment/forecast")
            assert r.status_code == 409
            assert "history" in r.json()["detail"]
    finally:
        server.stop()
    asyncio.run(write_history(settings, model, end - 10 * DAY, end - 2 * DAY, 3600.0))
    server = serve(settings, clock)
    try:
        with client(server) as c:
            r = c.get("/api/v1/environment/forecast", params={"hours": 12})
            assert r.status_code == 200, r.text
            body = r.json()
            assert sorted(d["district"] for d in body["districts"]) == sorted(names)
            for d in body["districts"]:
                assert len(d["points"]) == 12
                assert set(d["skill"]) == {"1", "6", "24"}
                for p in d["points"]:
                    assert 0 <= p["pm25_low"] <= p["pm25"] <= p["pm25_high"]
                    assert p["aqi"] is not None and p["level"]
                assert d["points"][0]["time"] == _rfc(end)
            one = c.get("/api/v1/environment/forecast", params={"district": "huiji", "hours": 1})
            assert [d["district"] for d in one.json()["districts"]] == ["huiji"]
            assert c.get("/api/v1/environment/forecast", params={"hours": 25}).status_code == 422
    finally:
        server.stop()


def _rfc(t_ms: int) -> str:
    from dashboard_api.parameters import rfc3339

    return rfc3339(t_ms)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")
def test_dashboard_marks_the_flagged_station(tmp_path: Path) -> None:
    settings, devices = covered_city(tmp_path, api_keys=())
    server = serve(settings, Clock(T0 + 52 * HOUR))
    browser = Browser()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/api/v1/quality").status_code == 200  # evaluated now
        browser.open_page()
        browser.call("Page.navigate", url=server.url + "/")
        browser.wait_for("document.body && document.body.dataset.loaded === '1'", timeout=60)
        marked = browser.evaluate(
            "[...document.querySelectorAll('#device-table td.flagged')]"
            ".map(t => [t.textContent, t.title])"
        )
        assert len(marked) == 1
        text, title = marked[0]
        assert text == "⚑ " + devices[0].device and "tamper_suspect (pm25)" in title
        assert browser.errors() == []
    finally:
        browser.close()
        server.stop()


def test_flagged_counters_leave_congestion_and_say_so(make_api: MakeApi) -> None:
    """The known city's traffic counters report a constant occupancy: stuck."""
    api = make_api("sqlite")
    with api.client() as c:
        flags = c.get("/api/v1/quality", params={"kind": "stuck"}).json()["flags"]
        stuck = {(f["device"], f["metric"]) for f in flags}
        assert stuck == {("tc-j1", "occupancy"), ("tc-z1", "occupancy")}
        body = c.get("/api/v1/traffic/congestion").json()
        assert {(x["device"], x["reason"]) for x in body["excluded"]} == {
            ("tc-j1", "stuck"),
            ("tc-z1", "stuck"),
        }
        assert body["sites"] == [] and body["districts"] == []
        # a silent channel has no readings to leave out: leaks judge every meter
        leaks = c.get("/api/v1/utility/leaks").json()
        assert leaks["excluded"] == [] and leaks["meters_checked"] == 3
