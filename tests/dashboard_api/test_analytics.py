"""Pure analytics: AQI against the published breakpoint tables (typed here again, from
PROTOCOLS.md 8.2, not imported), congestion, leaks and device status."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.aqi import compute_aqi, window_means
from analytics.congestion import (
    CounterWindow,
    congestion_index,
    district_congestion,
    free_flow_speed,
    site_congestion,
)
from analytics.leaks import MeterEvidence, last_night_window, suspected_leaks
from analytics.status import device_status

IAQI = [0, 50, 100, 150, 200, 300, 400, 500]
# HJ 633-2012, as printed in the standard's table 1.
TABLE_2012 = {
    ("so2", "1h"): [0, 150, 500, 650, 800],
    ("so2", "24h"): [0, 50, 150, 475, 800, 1600, 2100, 2620],
    ("no2", "1h"): [0, 100, 200, 700, 1200, 2340, 3090, 3840],
    ("co", "1h"): [0, 5, 10, 35, 60, 90, 120, 150],
    ("o3", "1h"): [0, 160, 200, 300, 400, 800, 1000, 1200],
    ("o3", "8h"): [0, 100, 160, 215, 265, 800],
    ("pm10", "24h"): [0, 50, 150, 250, 350, 420, 500, 600],
    ("pm25", "24h"): [0, 35, 75, 115, 150, 250, 350, 500],
}


def reference_iaqi(bps: list[float], c: float) -> int:
    """Linear interpolation in the band holding ``c``, rounded up (PROTOCOLS.md 8.2)."""
    if c >= bps[-1]:
        return 500 if c > bps[-1] else IAQI[len(bps) - 1]
    k = next(i for i in range(1, len(bps)) if c <= bps[i])
    lo, hi = bps[k - 1], bps[k]
    return math.ceil(round((IAQI[k] - IAQI[k - 1]) / (hi - lo) * (c - lo) + IAQI[k - 1], 6))


def one(pollutant: str, averaging: str, c: float) -> dict[str, dict[str, float]]:
    return {pollutant: {averaging: c}}


@pytest.mark.parametrize(
    ("pollutant", "averaging", "table_key"),
    [
        ("pm25", "1h", ("pm25", "24h")),
        ("pm10", "1h", ("pm10", "24h")),
        ("no2", "1h", ("no2", "1h")),
        ("co", "1h", ("co", "1h")),
        ("o3", "1h", ("o3", "1h")),
        ("so2", "1h", ("so2", "1h")),
    ],
)
def test_hj633_2012_every_breakpoint_and_midpoint(
    pollutant: str, averaging: str, table_key: tuple[str, str]
) -> None:
    bps = TABLE_2012[table_key]
    for k, c in enumerate(bps):
        r = compute_aqi(one(pollutant, averaging, c), "hj633-2012")
        assert r.aqi == IAQI[k], (pollutant, c, r)
        if k:
            mid = (bps[k - 1] + bps[k]) / 2
            r = compute_aqi(one(pollutant, averaging, mid), "hj633-2012")
            assert r.aqi == reference_iaqi(bps, mid)


@given(st.floats(min_value=0, max_value=500, allow_nan=False))
def test_hj633_pm25_matches_the_reference_everywhere(c: float) -> None:
    r = compute_aqi(one("pm25", "1h", c), "hj633-2012")
    assert r.aqi == reference_iaqi(TABLE_2012[("pm25", "24h")], c)


def test_rounding_up_and_categories() -> None:
    # PM2.5 80 -> 100 + 50/40*5 = 106.25 -> 107, light pollution, orange
    r = compute_aqi(one("pm25", "1h", 80.0), "hj633-2012")
    assert r.aqi == 107
    assert (r.level, r.category, r.category_zh, r.colour) == (
        "III",
        "lightly polluted",
        "轻度污染",
        "#ff7e00",
    )
    assert r.primary_pollutants == ("pm25",)
    ev = r.iaqi[0]
    assert (ev.c_lo, ev.c_hi, ev.i_lo, ev.i_hi) == (75, 115, 100, 150)
    low = compute_aqi({"pm25": {"1h": 10.0}, "no2": {"1h": 20.0}}, "hj633-2012")
    assert low.aqi == 15 and low.primary_pollutants == () and low.colour == "#00e400"
    assert compute_aqi({}, "hj633-2012").aqi is None


def test_aqi_is_the_max_and_ties_name_every_primary_pollutant() -> None:
    conc = {"pm25": {"1h": 75.0}, "pm10": {"1h": 150.0}, "no2": {"1h": 100.0}}
    r = compute_aqi(conc, "hj633-2012")
    assert r.aqi == 100
    assert r.primary_pollutants == ("pm25", "pm10")


def test_so2_above_800_uses_the_24h_value() -> None:
    r = compute_aqi({"so2": {"1h": 900.0, "24h": 475.0}}, "hj633-2012")
    assert r.aqi == 150
    unused = [i for i in r.iaqi if i.averaging == "1h"]
    assert unused[0].iaqi is None and "800" in unused[0].note
    # without a 24 h value there is nothing to stand in for it
    assert compute_aqi({"so2": {"1h": 900.0}}, "hj633-2012").aqi is None


def test_o3_8h_above_800_is_not_used_the_1h_counts() -> None:
    r = compute_aqi({"o3": {"1h": 1000.0, "8h": 850.0}}, "hj633-2012")
    assert r.aqi == 400
    assert [i.iaqi for i in r.iaqi if i.averaging == "8h"] == [None]
    r = compute_aqi({"o3": {"1h": 150.0, "8h": 215.0}}, "hj633-2012")
    assert r.aqi == 150 and r.primary_pollutants == ("o3",)


def test_above_the_scale_is_500() -> None:
    r = compute_aqi(one("pm25", "1h", 800.0), "hj633-2012")
    assert r.aqi == 500 and r.level == "VI" and r.colour == "#7e0023"


def test_2026_revision_changes_only_pm_breakpoints() -> None:
    # PM2.5 60: 2012 -> 50 + 50/40*25 = 81.25 -> 82; 2026 -> 100
    assert compute_aqi(one("pm25", "1h", 60.0), "hj633-2012").aqi == 82
    assert compute_aqi(one("pm25", "1h", 60.0), "hj633-2026").aqi == 100
    # PM10 120: 2012 -> 50 + 50/100*70 = 85; 2026 -> 100
    assert compute_aqi(one("pm10", "1h", 120.0), "hj633-2012").aqi == 85
    assert compute_aqi(one("pm10", "1h", 120.0), "hj633-2026").aqi == 100
    for c in (20.0, 300.0):
        assert (
            compute_aqi(one("no2", "1h", c), "hj633-2012").aqi
            == compute_aqi(one("no2", "1h", c), "hj633-2026").aqi
        )


def test_us_epa() -> None:
    # PM2.5 24 h 35.4 -> 100; 35.45 truncates to 35.4 -> 100; 55.5 -> 151
    assert compute_aqi(one("pm25", "24h", 35.4), "us-epa").aqi == 100
    assert compute_aqi(one("pm25", "24h", 35.45), "us-epa").aqi == 100
    assert compute_aqi(one("pm25", "24h", 55.5), "us-epa").aqi == 151
    # 2024 revision: 12.0 is no longer "good": (100-51)/(35.4-9.1)*(12-9.1)+51 = 56.4 -> 56
    r = compute_aqi(one("pm25", "24h", 12.0), "us-epa")
    assert r.aqi == 56 and r.category == "moderate"
    # NO2 1 h: 188 µg/m³ / 1.88 = 100 ppb -> 100
    assert compute_aqi(one("no2", "1h", 188.0), "us-epa").aqi == 100
    # O3 8 h: 0.070 ppm = 70 ppb * 1.96 = 137.2 µg/m³ -> 100
    assert compute_aqi(one("o3", "8h", 137.2), "us-epa").aqi == 100
    # CO 8 h: 9.4 ppm * 1.145 = 10.763 mg/m³ -> 100
    assert compute_aqi(one("co", "8h", 10.763), "us-epa").aqi == 100
    r = compute_aqi(one("pm25", "24h", 300.0), "us-epa")
    assert r.category == "hazardous" and r.colour == "#7e0023"


def test_window_means_need_enough_hours() -> None:
    hourly: list[float | None] = [10.0, 20.0, None, 30.0, 40.0, 50.0, 60.0, 70.0]
    w = window_means(hourly)
    assert w["1h"] == 10.0
    assert w["8h"] == pytest.approx(sum([10, 20, 30, 40, 50, 60, 70]) / 7)
    assert "24h" not in w
    assert "8h" not in window_means([1.0, 2.0, 3.0, 4.0, 5.0])
    assert window_means([None, 1.0]) == {}
    assert window_means([5.0] * 24)["24h"] == 5.0


def test_congestion_index() -> None:
    assert congestion_index(50.0, 50.0, 5.0) == (0.0, 0.0, 0.0)
    index, s, o = congestion_index(20.0, 50.0, 10.0)
    assert s == pytest.approx(0.6) and o == 0.0 and index == pytest.approx(6.0)
    index, s, o = congestion_index(45.0, 50.0, 35.0)
    assert o == 1.0 and index == 10.0
    assert congestion_index(None, 50.0, None) == (None, None, None)
    assert free_flow_speed([30.0] * 3) == (50.0, "default")
    ff, source = free_flow_speed([float(v) for v in range(1, 101)])
    assert source == "p85" and ff == pytest.approx(85.15)


def test_site_and_district_congestion() -> None:
    counters = [
        CounterWindow("a", "d1", "s1", 25.0, 10.0, 30.0, tuple([50.0] * 10)),
        CounterWindow("b", "d1", "s1", 35.0, 10.0, 10.0, tuple([50.0] * 10)),
        CounterWindow("c", "d1", "s2", 50.0, 5.0, 20.0, ()),
    ]
    sites = site_congestion(counters)
    assert [(s.site, s.devices) for s in sites] == [("s1", 2), ("s2", 1)]
    assert sites[0].speed == 30.0 and sites[0].free_flow == 50.0
    assert sites[0].index == pytest.approx(4.0) and sites[0].level == "moderate"
    assert sites[1].free_flow_source == "default" and sites[1].index == 0.0
    (d1,) = district_congestion(sites)
    assert d1.index == pytest.approx((4.0 * 40 + 0.0 * 20) / 60, abs=0.01)
    assert d1.vehicles == 60 and d1.devices == 3
    given_ff = site_congestion(counters, free_flow_given=60.0)
    assert given_ff[0].free_flow_source == "given" and given_ff[0].index == pytest.approx(5.0)


def test_leaks() -> None:
    meters = [
        MeterEvidence("m1", "d", "s", 0, 0.0),
        MeterEvidence("m2", "d", "s", 2, 0.0),
        MeterEvidence("m3", "d", "s", 0, 0.3),
        MeterEvidence("m4", "d", "s", 0, None),
        MeterEvidence("m5", "d", "s", 0, 0.05),
    ]
    verdicts = suspected_leaks(meters, 0.05)
    assert [v.evidence.device for v in verdicts] == ["m2", "m3"]
    assert "leak flag" in verdicts[0].reasons[0]
    assert "night flow 0.3" in verdicts[1].reasons[0]


def test_last_night_window() -> None:
    def ms(*args: int) -> int:
        return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]

    assert last_night_window(ms(2026, 3, 10, 12, 0)) == (ms(2026, 3, 10, 2), ms(2026, 3, 10, 4))
    assert last_night_window(ms(2026, 3, 10, 3, 0)) == (ms(2026, 3, 9, 2), ms(2026, 3, 9, 4))
    # Shanghai is UTC+8: 02:00 local = 18:00 UTC the day before
    start, end = last_night_window(ms(2026, 3, 10, 12, 0), "Asia/Shanghai")
    assert (start, end) == (ms(2026, 3, 9, 18), ms(2026, 3, 9, 20))


@pytest.mark.parametrize(
    ("kind", "age_s", "status"),
    [
        ("air_station", 0, "online"),
        ("air_station", 600, "online"),
        ("air_station", 601, "stale"),
        ("air_station", 1800, "stale"),
        ("air_station", 1801, "offline"),
        ("water_meter", 7200, "online"),
        ("water_meter", 5 * 3600, "stale"),
        ("water_meter", 7 * 3600, "offline"),
        ("air_station", -60, "online"),
    ],
)
def test_device_status(kind: str, age_s: int, status: str) -> None:
    now = 1_780_000_000_000
    assert device_status(kind, now - age_s * 1000, now) == status


def test_never_seen_is_offline() -> None:
    assert device_status("gas_meter", None, 0) == "offline"
