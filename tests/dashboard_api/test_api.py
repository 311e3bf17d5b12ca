"""Every endpoint over HTTP against a known city, on the embedded store and on real influxd.

Expected numbers are computed here from the sample list (means over windows, AQI from the
breakpoint table typed in test_analytics), never through the code under test.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import pytest

from citysense.catalog import catalog_document
from tests.dashboard_api.citydata import DEVICES, HOUR, MINUTE
from tests.dashboard_api.conftest import END, SAMPLES, ApiServer, MakeApi
from tests.dashboard_api.test_analytics import TABLE_2012, reference_iaqi


def rfc(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mean_of(metric: str, start: int, end: int, **tags: str) -> float | None:
    values = [
        s.value
        for s in SAMPLES
        if s.metric == metric
        and start <= s.t < end
        and all(getattr(s, k) == v for k, v in tags.items())
    ]
    return sum(values) / len(values) if values else None


def get(api: ApiServer, path: str, **params: Any) -> Any:
    with api.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def test_health_and_catalog(api: ApiServer) -> None:
    """Healthy once the latest-value table is primed (503 "being primed" until then)."""
    deadline = time.monotonic() + 20
    with api.client() as c:
        while (r := c.get("/api/v1/health")).status_code == 503:
            assert "primed" in r.json()["detail"] and time.monotonic() < deadline, r.text
            time.sleep(0.05)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok" and body["version"]
    assert get(api, "/api/v1/catalog") == catalog_document()


def test_latest(api: ApiServer) -> None:
    body = get(api, "/api/v1/environment/latest", district="jinshui")
    assert body["end"] == rfc(END) and body["start"] == rfc(END - 24 * HOUR)
    devices = {d["device"]: d for d in body["devices"]}
    assert set(devices) == {"aq-j1", "aq-j2"}
    for dev, entry in devices.items():
        for metric in ("pm25", "no2", "co"):
            last = max(
                (s for s in SAMPLES if s.device == dev and s.metric == metric), key=lambda s: s.t
            )
            assert entry["values"][metric] == {"time": rfc(last.t), "value": last.value}
    one = get(api, "/api/v1/utility/latest", metric="leak", device="wm-j1")
    assert [d["device"] for d in one["devices"]] == ["wm-j1"]
    assert one["devices"][0]["values"]["leak"]["value"] == 0.0


@pytest.mark.parametrize("group_by", [None, "district", "site"])
def test_series_means_over_windows(api: ApiServer, group_by: str | None) -> None:
    start, end = END - 12 * HOUR, END
    params: dict[str, Any] = {"metric": "pm25", "start": rfc(start), "end": str(end), "every": "3h"}
    if group_by:
        params["group_by"] = group_by
    body = get(api, "/api/v1/environment/series", **params)
    assert body["metric"] == "pm25" and body["agg"] == "mean" and body["every"] == "3h"
    assert body["unit"] == "µg/m³"
    groups = {tuple(g["group"].values()): g["points"] for g in body["series"]}
    keys = (
        [()]
        if group_by is None
        else sorted({(getattr(d, group_by),) for d in DEVICES if d.kind == "air_station"})
    )
    assert sorted(groups) == keys
    for key, points in groups.items():
        tags = {group_by: key[0]} if group_by else {}
        assert [p[0] for p in points] == [rfc(start + i * 3 * HOUR) for i in range(4)]
        for t_text, value in points:
            t = next(start + i * 3 * HOUR for i in range(4) if rfc(start + i * 3 * HOUR) == t_text)
            expected = mean_of("pm25", t, t + 3 * HOUR, **tags)
            assert expected is not None and math.isclose(value, expected, rel_tol=1e-9)


def test_series_aggregates_and_filters(api: ApiServer) -> None:
    body = get(
        api,
        "/api/v1/traffic/series",
        metric="vehicle_count",
        agg="sum",
        every="1d",
        start=rfc(END - 24 * HOUR),
        end=rfc(END),
        district="jinshui",
    )
    total = sum(v for _, v in body["series"][0]["points"])
    assert total == sum(
        s.value for s in SAMPLES if s.metric == "vehicle_count" and s.district == "jinshui"
    )
    body = get(
        api, "/api/v1/utility/series", metric="leak", agg="max", every="1d", group_by="device"
    )
    assert {g["group"]["device"]: max(v for _, v in g["points"]) for g in body["series"]} == {
        "wm-j1": 1.0,
        "wm-j2": 0.0,
        "wm-z1": 0.0,
    }


def expected_aqi(district: str) -> int:
    """HJ 633-2012 hourly AQI of ``district`` for the hour before END, from the samples."""
    subs = []
    tables = {
        "pm25": ("pm25", "24h"),
        "pm10": ("pm10", "24h"),
        "no2": ("no2", "1h"),
        "co": ("co", "1h"),
        "so2": ("so2", "1h"),
        "o3": ("o3", "1h"),
    }
    for pollutant, table in tables.items():
        c = mean_of(pollutant, END - HOUR, END, district=district)
        assert c is not None
        subs.append(reference_iaqi(TABLE_2012[table], c))
    hourly = [
        mean_of("o3", END - (k + 1) * HOUR, END - k * HOUR, district=district) for k in range(8)
    ]
    o3_8h = sum(v for v in hourly if v is not None) / 8
    subs.append(reference_iaqi(TABLE_2012[("o3", "8h")], o3_8h))
    return max(subs)


def test_aqi_matches_the_breakpoint_table(api: ApiServer) -> None:
    body = get(api, "/api/v1/environment/aqi")
    assert body["standard"] == "hj633-2012" and body["at"] == rfc(END)
    by_name = {d["district"]: d for d in body["districts"]}
    assert set(by_name) == {"jinshui", "zhengdong"}
    for name, d in by_name.items():
        assert d["aqi"] == expected_aqi(name), d
        pm25 = next(i for i in d["iaqi"] if i["pollutant"] == "pm25")
        assert math.isclose(
            pm25["concentration"], mean_of("pm25", END - HOUR, END, district=name) or 0
        )
        assert pm25["c_lo"] <= pm25["concentration"] <= pm25["c_hi"]
        assert d["hours"]["pm25"] == 24
    jinshui = by_name["jinshui"]
    assert jinshui["aqi"] > 50 and jinshui["primary_pollutants"] and jinshui["colour"] == "#ffff00"
    assert by_name["zhengdong"]["primary_pollutants"] == []
    one = get(api, "/api/v1/environment/aqi", district="zhengdong", standard="us-epa")
    assert [d["district"] for d in one["districts"]] == ["zhengdong"]
    assert one["standard"] == "us-epa" and one["districts"][0]["aqi"] is not None
    revised = get(api, "/api/v1/environment/aqi", standard="hj633-2026", at=str(END))
    assert revised["districts"][0]["aqi"] >= jinshui["aqi"]


def test_districts(api: ApiServer) -> None:
    body = get(api, "/api/v1/districts")
    by_name = {d["district"]: d for d in body["districts"]}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for d in DEVICES:
        counts[d.district][d.kind] += 1
    counts["jinshui"]["air_station"] += 1  # aq-new, registered only
    for name, entry in by_name.items():
        assert entry["devices"] == counts[name]
        assert entry["aqi"]["aqi"] == expected_aqi(name)
        assert entry["lat"] is not None
    assert by_name["zhengdong"]["device_count"] == 3


def test_devices_status_offline_first(api: ApiServer) -> None:
    """last_seen is a device's newest reading of any metric (every device here reports until
    the end); battery/rsrp/snr/ecl come from its newest health readings, however old."""
    body = get(api, "/api/v1/devices")
    status = {d["device"]: d["status"] for d in body["devices"]}
    assert status == {d.device: "online" for d in DEVICES} | {"aq-new": "offline"}
    order = [d["status"] for d in body["devices"]]
    assert order == sorted(order, key=["offline", "stale", "online"].index)
    assert body["counts"] == {"offline": 1, "stale": 0, "online": 8}
    for dev in DEVICES:
        entry = next(d for d in body["devices"] if d["device"] == dev.device)
        assert entry["last_seen"] == rfc(max(s.t for s in SAMPLES if s.device == dev.device))
    tc = next(d for d in body["devices"] if d["device"] == "tc-z1")
    last = max(
        (s for s in SAMPLES if s.device == "tc-z1" and s.metric == "battery"), key=lambda s: s.t
    )
    assert tc["battery"] == last.value and tc["last_seen"] != rfc(last.t)
    assert next(d for d in body["devices"] if d["device"] == "aq-new")["last_seen"] is None
    online = get(api, "/api/v1/devices", status="online", district="jinshui")
    assert [d["device"] for d in online["devices"]] == ["aq-j1", "aq-j2", "tc-j1", "wm-j1", "wm-j2"]


def test_congestion(api: ApiServer) -> None:
    body = get(api, "/api/v1/traffic/congestion")
    districts = {d["district"]: d for d in body["districts"]}
    assert districts["jinshui"]["level"] == "severe" and districts["jinshui"]["index"] == 10.0
    sites = {s["site"]: s for s in body["sites"]}
    s1 = sites["s1"]
    assert math.isclose(s1["speed"], mean_of("avg_speed", END - 30 * MINUTE, END, site="s1") or 0)
    assert s1["occupancy"] == 35.0 and s1["occupancy_index"] == 1.0
    # zhengdong: hourly means alternate 50/60 -> p85 60; the last half hour ran at 60
    assert sites["s3"]["free_flow"] == 60.0 and sites["s3"]["index"] == 0.0
    given = get(api, "/api/v1/traffic/congestion", free_flow="120", district="zhengdong")
    assert [s["site"] for s in given["sites"]] == ["s3"]
    assert given["sites"][0]["index"] == 5.0 and given["sites"][0]["free_flow_source"] == "given"


def test_leaks(api: ApiServer) -> None:
    body = get(api, "/api/v1/utility/leaks")
    leaks = {m["device"]: m for m in body["leaks"]}
    assert set(leaks) == {"wm-j1", "wm-j2"}
    assert leaks["wm-j1"]["leak_flags"] == 1
    night_start = END - ((END - 2 * HOUR) % (24 * HOUR))
    if night_start + 2 * HOUR > END:
        night_start -= 24 * HOUR
    assert body["night_start"] == rfc(night_start)
    expected_min = min(
        s.value
        for s in SAMPLES
        if s.device == "wm-j2"
        and s.metric == "water_flow"
        and night_start <= s.t < night_start + 2 * HOUR
    )
    assert leaks["wm-j2"]["min_night_flow"] == expected_min
    assert body["meters_checked"] == 3
    strict = get(api, "/api/v1/utility/leaks", threshold="0.5", district="jinshui")
    assert [m["device"] for m in strict["leaks"]] == ["wm-j1"]


def test_leak_night_window_follows_the_city_time_zone(make_api: MakeApi) -> None:
    utc = get(make_api("sqlite"), "/api/v1/utility/leaks")
    local = get(make_api("sqlite", timezone="Asia/Shanghai"), "/api/v1/utility/leaks")
    start_utc = datetime.fromisoformat(utc["night_start"].replace("Z", "+00:00"))
    start_local = datetime.fromisoformat(local["night_start"].replace("Z", "+00:00"))
    assert start_utc.hour == 2
    assert start_local.hour == 18  # 02:00 in UTC+8
    explicit = get(make_api("sqlite", timezone="Asia/Shanghai"), "/api/v1/utility/leaks", tz="UTC")
    assert explicit["night_start"] == utc["night_start"]


def test_metrics_count_requests_per_route(api: ApiServer) -> None:
    get(api, "/api/v1/health")
    get(api, "/api/v1/environment/latest")
    with api.client() as c:
        text = c.get("/metrics").text
    assert 'route="/api/v1/{domain}/latest",status="200"} 1' in text
    assert 'citysense_api_request_seconds_count{method="GET",route="/api/v1/health"}' in text


# --------------------------------------------------------------------------- errors


def status_and_detail(api: ApiServer, path: str, **params: Any) -> tuple[int, str]:
    with api.client() as c:
        r = c.get(path, params=params)
    body = r.json()
    assert isinstance(body["detail"], str)
    return r.status_code, body["detail"]


HOSTILE: list[tuple[str, dict[str, str], int, str]] = [
    (
        "/api/v1/environment/series",
        {"metric": "pm25", "district": "x' OR district='y"},
        422,
        "district",
    ),
    (
        "/api/v1/environment/series",
        {"metric": "pm25", "device": "; DROP DATABASE citysense"},
        422,
        "device",
    ),
    ("/api/v1/environment/latest", {"district": "jinshui' OR 1=1 --"}, 422, "district"),
    ("/api/v1/environment/series", {"metric": "pm25; DROP DATABASE citysense"}, 422, "metric"),
    ("/api/v1/environment/series", {"metric": "pm25", "every": "1ns"}, 400, "every"),
    ("/api/v1/environment/series", {"metric": "pm25", "every": "soon"}, 400, "every"),
    (
        "/api/v1/environment/series",
        {"metric": "pm25", "start": "0", "end": "7258118399999"},
        400,
        "start",
    ),
    (
        "/api/v1/environment/series",
        {"metric": "pm25", "start": rfc(END), "end": rfc(END - HOUR)},
        400,
        "start",
    ),
    ("/api/v1/environment/series", {"metric": "pm25", "start": "yesterday"}, 400, "start"),
    ("/api/v1/environment/series", {"metric": "pm25", "end": "2026-01-01T00:00:00"}, 400, "end"),
    ("/api/v1/environment/series", {"metric": "pm25", "end": "99999999999999999"}, 400, "end"),
    ("/api/v1/environment/series", {"metric": "avg_speed"}, 400, "metric"),
    ("/api/v1/environment/series", {"metric": "pm25", "agg": "median"}, 422, "agg"),
    ("/api/v1/environment/series", {"metric": "pm25", "group_by": "gateway"}, 422, "group_by"),
    ("/api/v1/environment/series", {}, 422, "metric"),
    ("/api/v1/weather/series", {"metric": "pm25"}, 422, "domain"),
    ("/api/v1/environment/aqi", {"standard": "who"}, 422, "standard"),
    ("/api/v1/environment/aqi", {"at": "; DROP DATABASE citysense"}, 400, "at"),
    ("/api/v1/environment/latest", {"window": "30d"}, 400, "window"),
    ("/api/v1/utility/leaks", {"tz": "Mars/Olympus"}, 400, "tz"),
    ("/api/v1/utility/leaks", {"threshold": "-1"}, 422, "threshold"),
    ("/api/v1/traffic/congestion", {"window": "1ns"}, 400, "window"),
    ("/api/v1/devices", {"status": "dead"}, 422, "status"),
]


def storage_counts(api: ApiServer) -> list[int]:
    body = get(
        api,
        "/api/v1/environment/series",
        metric="pm25",
        agg="count",
        every="1d",
        start=str(END - 300 * 24 * HOUR),
        end=str(END),
    )
    return [int(v) for g in body["series"] for _, v in g["points"]]


def test_hostile_parameters_get_4xx_naming_the_parameter_and_change_nothing(api: ApiServer) -> None:
    before = storage_counts(api)
    assert sum(before) == sum(1 for s in SAMPLES if s.metric == "pm25")
    for path, params, code, name in HOSTILE:
        status, detail = status_and_detail(api, path, **params)
        assert status == code, (path, params, status, detail)
        assert name in detail, (path, params, detail)
    assert get(api, "/api/v1/health")["status"] == "ok"
    assert storage_counts(api) == before


def test_point_limit_refuses_with_the_count(make_api: MakeApi) -> None:
    api = make_api("sqlite", point_limit=30)
    with api.client() as c:
        r = c.get(
            "/api/v1/environment/series",
            params={
                "metric": "pm25",
                "every": "10m",
                "group_by": "device",
                "start": rfc(END - 2 * HOUR),
                "end": rfc(END),
            },
        )
        assert r.status_code == 400
        body = r.json()
        assert body["points"] == 3 * 12 and body["limit"] == 30 and "36 points" in body["detail"]
        # sparse data under a big bucket bound is not refused: 1 s buckets, 12 points per device
        r = c.get(
            "/api/v1/environment/series",
            params={
                "metric": "pm25",
                "every": "1s",
                "device": "aq-j1",
                "start": rfc(END - 2 * HOUR),
                "end": rfc(END),
            },
        )
        assert r.status_code == 200 and len(r.json()["series"][0]["points"]) == 12
        r = c.get("/api/v1/device_health/latest")
        assert r.status_code == 400 and r.json()["points"] > 30


def test_storage_down_is_503_and_health_degraded(make_api: MakeApi) -> None:
    from tests.servers import free_port

    api = make_api(
        "sqlite", influx=f"http://127.0.0.1:{free_port()}", influx_api="1", influx_timeout=2.0
    )
    with api.client() as c:
        r = c.get("/api/v1/health")
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        r = c.get("/api/v1/environment/latest")
        assert r.status_code == 503 and r.headers["Retry-After"]
