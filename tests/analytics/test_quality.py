"""Each data-quality check on hand-made series: it fires on its fault and stays quiet on clean
data, including a haze episode's steep rise and rush-hour swings."""

from __future__ import annotations

import numpy as np
import pytest

from analytics import quality as q
from citysense.catalog import QUALITY

FIVE_MIN = 300_000
HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_780_000_000_000


def times(n: int, step: int = FIVE_MIN) -> np.ndarray:
    return T0 + np.arange(n, dtype=np.int64) * step


def noise(n: int, sd: float, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sd, n)


def haze_rise(n: int = 288) -> np.ndarray:
    """A day of PM2.5 at 5-minute reports: clean morning, then a haze front.

    Shaped on the steepest rises reported for North China haze fronts (Beijing, January
    2013: hourly means climbing by 100-200 µg/m³ per hour): 35 µg/m³ at dawn, then 200
    µg/m³ per hour for three hours to ~640, a plateau with the noise of an optical counter.
    """
    h = np.arange(n) / 12.0
    base = 35.0 + np.clip((h - 10.0) * 200.0, 0.0, 600.0)
    return np.round(base * (1.0 + noise(n, 0.04)) + noise(n, 2.5, 2), 1)


def rush_hours(n: int = 288 * 2, amplitude: float = 80.0) -> np.ndarray:
    """NO2 at a roadside: two rush hours a day on a 30 µg/m³ background."""
    h = (np.arange(n) / 12.0) % 24
    bumps = np.exp(-0.5 * ((h - 8.0) / 1.0) ** 2) + np.exp(-0.5 * ((h - 18.0) / 1.3) ** 2)
    return np.round(30.0 + amplitude * bumps + noise(n, 4.0, 3), 1)


CLEAN = {
    "pm25 haze rise": ("pm25", haze_rise()),
    "no2 rush hours": ("no2", rush_hours()),
    "pm10 haze rise": ("pm10", np.round(haze_rise() * 1.7, 1)),
    "ozone at its night floor": (
        "o3",
        np.concatenate([np.full(60, 2.0), np.round(40 + noise(60, 6.0), 1)]),
    ),
    "humidity saturated in fog": (
        "humidity",
        np.concatenate([np.full(80, 100.0), np.round(95 + noise(40, 1.5), 1)]).clip(0, 100),
    ),
}


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_raw_checks_stay_quiet_on_clean_series(name: str) -> None:
    metric, v = CLEAN[name]
    t = times(v.size)
    lim = QUALITY[metric]
    assert q.check_stuck(metric, t, v, lim) == []
    assert q.check_spike(metric, t, v, lim) == []


def test_stuck_fires_on_a_frozen_value_and_says_how_long() -> None:
    v = rush_hours()
    v[100:130] = v[100]
    found = q.check_stuck("no2", times(v.size), v, QUALITY["no2"])
    assert len(found) == 1
    f = found[0]
    assert f.reason == "stuck" and f.start_ms == T0 + 100 * FIVE_MIN
    assert f.end_ms == T0 + 129 * FIVE_MIN + 1
    assert f.evidence["reports"] == 30 and f.evidence["value"] == v[100]


def test_stuck_is_open_while_the_value_is_still_frozen_and_needs_enough_reports() -> None:
    v = haze_rise()
    v[-20:] = v[-20]
    assert q.check_stuck("pm25", times(v.size), v, QUALITY["pm25"])[0].end_ms is None
    w = haze_rise()
    w[50:60] = w[50]  # 10 equal reports: under the 12 the catalog asks for
    assert q.check_stuck("pm25", times(w.size), w, QUALITY["pm25"]) == []


def test_spike_fires_on_one_report_there_and_back_but_not_on_a_step() -> None:
    v = haze_rise()
    v[40] += 400.0  # a wet optical counter
    found = q.check_spike("pm25", times(v.size), v, QUALITY["pm25"])
    assert [f.start_ms for f in found] == [T0 + 40 * FIVE_MIN]
    assert found[0].evidence["value"] == v[40]
    step = np.concatenate([np.full(50, 40.0), np.full(50, 400.0)]) + noise(100, 2.0)
    assert q.check_spike("pm25", times(100), step, QUALITY["pm25"]) == []


def test_counter_running_backwards_and_reset() -> None:
    v = np.cumsum(np.full(48, 0.05)) + 100.0
    back = v.copy()
    back[20:26] = back[19] - np.cumsum(np.full(6, 0.05))
    found = q.check_counter("water_volume", times(48, HOUR), back, QUALITY["water_volume"])
    assert len(found) == 1 and found[0].evidence["pattern"] == "running backwards"
    assert found[0].end_ms == T0 + 26 * HOUR  # back above the highest total seen
    tail = v.copy()
    tail[40:] = tail[39] - np.cumsum(np.full(8, 0.05))
    found = q.check_counter("water_volume", times(48, HOUR), tail, QUALITY["water_volume"])
    assert found[0].end_ms is None  # still running backwards: open
    reset = v.copy()
    reset[30:] = np.cumsum(np.full(18, 0.05))
    found = q.check_counter("water_volume", times(48, HOUR), reset, QUALITY["water_volume"])
    assert found[0].evidence["pattern"] == "counter reset"
    assert q.check_counter("water_volume", times(48, HOUR), v, QUALITY["water_volume"]) == []


def district_haze(hours: int, stations: int, seed: int = 4) -> np.ndarray:
    """Hourly PM2.5 of a district's stations through a haze: they rise together."""
    h = np.arange(hours)
    envelope = np.where((h > 24) & (h < 96), np.sin(np.pi * (h - 24) / 72.0) ** 2, 0.0)
    rng = np.random.default_rng(seed)
    weight = 0.8 + 0.4 * rng.random(stations)[:, None]  # stations see the haze differently
    return 40.0 + 250.0 * weight * envelope + rng.normal(0.0, 3.0, (stations, hours))


def test_tamper_fires_on_a_covered_inlet_during_a_haze_and_clears_after() -> None:
    y = district_haze(120, 5)
    y[0, 40:80] = 6.0 + 0.08 * y[0, 40:80]
    hours = times(120, HOUR)
    found = q.check_tamper("pm25", hours, y[0], y[1:], QUALITY["pm25"])
    assert len(found) == 1
    f = found[0]
    assert T0 + 40 * HOUR <= f.start_ms < T0 + 60 * HOUR
    assert f.end_ms is not None and f.end_ms <= T0 + 81 * HOUR
    assert f.evidence["neighbours"] == 4 and f.evidence["station"] < 30


def test_tamper_stays_quiet_on_a_haze_seen_unevenly_and_in_clean_air() -> None:
    y = district_haze(120, 6)
    y[0] = 40.0 + 0.45 * (y[0] - 40.0)  # at the edge of the haze: rises, less
    hours = times(120, HOUR)
    for i in range(6):
        others = np.delete(y, i, axis=0)
        assert q.check_tamper("pm25", hours, y[i], others, QUALITY["pm25"]) == []
    clean = 40.0 + np.random.default_rng(5).normal(0, 3, (4, 120))
    clean[0] = 8.0  # reads low in clean air: not a covered inlet that can be told
    assert q.check_tamper("pm25", hours, clean[0], clean[1:], QUALITY["pm25"]) == []


def test_drift_fires_on_a_growing_gap_and_not_on_a_haze_week() -> None:
    days = times(10, DAY)
    rng = np.random.default_rng(6)
    neighbours = 50.0 + 30.0 * np.sin(np.arange(10))[None, :] + rng.normal(0, 1, (4, 10))
    station = neighbours.mean(axis=0) + 3.0 * np.arange(10) + rng.normal(0, 0.5, 10)
    found = q.check_drift("pm25", days, station, neighbours, QUALITY["pm25"])
    assert found and found[0].evidence["gap_per_day"] >= 2.0
    clean = neighbours.mean(axis=0) + rng.normal(0, 1.0, 10)
    assert q.check_drift("pm25", days, clean, neighbours, QUALITY["pm25"]) == []


def test_silent_channel_only_when_the_others_still_report() -> None:
    now = T0 + DAY
    interval = FIVE_MIN
    seen = {"pm25": now - interval, "pm10": now - interval, "no2": now - 10 * interval}
    found = q.check_silent(seen, ("pm25", "pm10", "no2"), interval, now, QUALITY)
    assert [(f.reason, f.metric) for f in found] == [("silent_channel", "no2")]
    quiet = {m: now - 10 * interval for m in seen}  # the whole device is quiet: its status
    assert q.check_silent(quiet, ("pm25", "pm10", "no2"), interval, now, QUALITY) == []


def test_hourly_means_and_daily_medians() -> None:
    t = times(24)  # two hours of 5-minute reports
    v = np.arange(24, dtype=np.float64)
    assert q.hourly_means(t, v, T0, 3).tolist()[:2] == [5.5, 17.5]
    assert np.isnan(q.hourly_means(t, v, T0, 3)[2])
    assert q.daily_medians(np.arange(48, dtype=np.float64)).tolist() == [11.5, 35.5]
