"""City models and backfill: determinism, ranges, and the structure that makes them useful
(diurnal cycles, rush hours, haze episodes moving neighbouring stations together, leaks),
each checked statistically over simulated days."""

from __future__ import annotations

import numpy as np
import pytest

from citysense.catalog import KINDS, METRICS
from citysense.registry import Device
from citysense.validation import check_values
from simulators.backfill import ColumnBatch, backfill, backfill_columns
from simulators.city import generate_fleet
from simulators.models import (
    DAY_MS,
    HOUR_MS,
    CityModel,
    HazeEpisode,
    local_hour,
    weekday,
)

#: 2026-03-02 00:00 China Standard Time, a Monday
MONDAY = 1772380800000
assert int(weekday(np.array([MONDAY]))[0]) == 0
assert float(local_hour(np.array([MONDAY]))[0]) == 0.0

FLEET = generate_fleet(400, seed=11)


def merged(batches: list[ColumnBatch], metric: str) -> dict[tuple[int, int], object]:
    """{(fleet index, t): value} for one metric over columnar batches."""
    out: dict[tuple[int, int], object] = {}
    for b in batches:
        if metric not in b.values:
            continue
        rows, cols = np.nonzero(b.valid)
        idx = b.idx[cols]
        for i, t, v in zip(
            idx.tolist(),
            b.t[rows, cols].tolist(),
            b.values[metric][rows, cols].tolist(),
            strict=True,
        ):
            out[(i, t)] = v
    return out


def kind_series(
    model: CityModel, kind: str, days: float, step_ms: int = 300_000
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(times (T,), values by metric (T, D)) for every device of ``kind`` on a common grid."""
    t = np.arange(MONDAY, MONDAY + int(days * DAY_MS), step_ms, dtype=np.int64)
    idx = model.kind_index[kind]
    return t, model.sample(kind, idx, t[:, None])


def test_same_seed_same_series_other_seed_other_series() -> None:
    a = list(backfill_columns(CityModel(FLEET, 3), MONDAY, MONDAY + DAY_MS))
    b = list(backfill_columns(CityModel(FLEET, 3), MONDAY, MONDAY + DAY_MS))
    c = list(backfill_columns(CityModel(FLEET, 4), MONDAY, MONDAY + DAY_MS))
    for metric in ("pm25", "vehicle_count", "water_volume", "occupied", "rsrp"):
        assert merged(a, metric) == merged(b, metric)
        assert merged(a, metric) != merged(c, metric)


def test_series_do_not_depend_on_chunking_or_on_the_rest_of_the_fleet() -> None:
    model = CityModel(FLEET, 3)
    small = list(backfill_columns(model, MONDAY, MONDAY + DAY_MS, chunk=2000))
    large = list(backfill_columns(model, MONDAY, MONDAY + DAY_MS, chunk=1 << 20))
    assert merged(small, "no2") == merged(large, "no2")
    # one device alone, sampled live at one of its backfill times, sees the same values
    first = next(b for b in large if b.kind == "traffic_counter")
    i, t = int(first.idx[0]), int(first.t[0, 0])
    alone = CityModel([FLEET[i]], 3).sample("traffic_counter", np.array([0]), np.array([t]))
    for metric, column in first.values.items():
        assert alone[metric][0] == column[0, 0], metric


def test_backfill_covers_each_device_on_its_own_schedule_once() -> None:
    devices = FLEET[:60]
    start, end = MONDAY + 123_457, MONDAY + 6 * HOUR_MS + 99
    readings = [
        r for batch in backfill(devices, start, end, seed=2, batch_readings=500) for r in batch
    ]
    keys = [(r.device, r.t) for r in readings]
    assert len(keys) == len(set(keys))
    assert all(start <= r.t < end for r in readings)
    for d in devices:
        times = sorted(r.t for r in readings if r.device == d.device)
        interval = KINDS[d.kind].report_interval_s * 1000
        assert set(np.diff(times).tolist()) <= {interval}
        assert len(times) in ((end - start) // interval, (end - start) // interval + 1)


def test_every_value_is_valid_for_the_catalog() -> None:
    model = CityModel(FLEET, 5)
    # three days of history, including weekend days and any seeded episode
    start = MONDAY + 4 * DAY_MS
    checked = 0
    for batch in backfill(FLEET, start, start + 3 * DAY_MS, seed=5, model=model):
        for r in batch:
            problems = check_values(r.kind, r.values)
            assert not problems, (r, problems)
            assert set(r.values) == set(KINDS[r.kind].metrics) | {
                m for m in METRICS if METRICS[m].domain == "device_health"
            }
            checked += 1
    assert checked > 20_000


def test_weekday_rush_hours_and_quieter_weekends() -> None:
    model = CityModel(FLEET, 1)
    t, v = kind_series(model, "traffic_counter", 7)
    h = local_hour(t)
    wd = weekday(t)
    count = v["vehicle_count"].mean(axis=1)
    speed = v["avg_speed"].mean(axis=1)
    occupancy = v["occupancy"].mean(axis=1)
    weekdays = wd < 5

    def mean(values: np.ndarray, mask: np.ndarray) -> float:
        return float(values[mask].mean())

    rush = weekdays & (((h >= 7.5) & (h < 8.5)) | ((h >= 17.5) & (h < 18.5)))
    night = (h >= 2) & (h < 4)
    assert mean(count, rush) > 3 * mean(count, weekdays & night)
    assert mean(speed, rush) < 0.85 * mean(speed, weekdays & night)
    assert mean(occupancy, rush) > 3 * mean(occupancy, weekdays & night)
    morning = (h >= 7.5) & (h < 8.5)
    assert mean(count, weekdays & morning) > 1.5 * mean(count, ~weekdays & morning)
    # the busiest weekday hour is a rush hour
    hourly = np.array([count[weekdays & (np.floor(h) == k)].mean() for k in range(24)])
    assert int(np.argmax(hourly)) in (7, 8, 17, 18)


def test_incidents_lower_speed_and_raise_occupancy() -> None:
    model = CityModel(FLEET, 1)
    t, v = kind_series(model, "traffic_counter", 14)
    idx = model.kind_index["traffic_counter"]
    incident = model.incident_active(idx[None, :], t[:, None])
    assert 0 < incident.sum() < 0.1 * incident.size
    # compare with the same devices at the same hour of other days without an incident
    h = np.floor(local_hour(t))[:, None].repeat(idx.size, axis=1)
    cols = np.arange(idx.size)[None, :].repeat(t.size, axis=0)
    speed_ratio, occupancy_diff = [], []
    for r, c in zip(*np.nonzero(incident), strict=True):
        same = (h == h[r, c]) & (cols == c) & ~incident
        if same.any():
            speed_ratio.append(v["avg_speed"][r, c] / v["avg_speed"][same].mean())
            occupancy_diff.append(v["occupancy"][r, c] - v["occupancy"][same].mean())
    assert np.mean(speed_ratio) < 0.6
    assert np.mean(occupancy_diff) > 20


def test_air_quality_cycles_o3_afternoon_no2_with_traffic() -> None:
    model = CityModel(FLEET, 1, random_episodes=False)
    t, v = kind_series(model, "air_station", 14)
    h = np.floor(local_hour(t))
    o3 = v["o3"].mean(axis=1)
    hourly_o3 = np.array([o3[h == k].mean() for k in range(24)])
    assert 12 <= int(np.argmax(hourly_o3)) <= 17
    assert hourly_o3.max() > 2 * hourly_o3.min()
    _, tv = kind_series(model, "traffic_counter", 14)
    traffic = tv["vehicle_count"].mean(axis=1)
    no2 = v["no2"].mean(axis=1)
    assert np.corrcoef(no2, traffic)[0, 1] > 0.7
    # temperature: warmest in the afternoon, coolest before dawn
    temp = v["temperature"].mean(axis=1)
    hourly_t = np.array([temp[h == k].mean() for k in range(24)])
    assert 12 <= int(np.argmax(hourly_t)) <= 17
    assert 2 <= int(np.argmin(hourly_t)) <= 7


def _stations(points: list[tuple[float, float]]) -> list[Device]:
    return [
        Device(f"urn:imei:{i:015d}", "air_station", "zhengdong", "cbd", lat, lon, "gw-01")
        for i, (lat, lon) in enumerate(points)
    ]


def test_a_haze_episode_raises_neighbouring_stations_together() -> None:
    centre = (34.77, 113.73)
    near = [(34.770, 113.730), (34.775, 113.735), (34.765, 113.722), (34.780, 113.728)]
    far = [(34.75, 113.56), (34.90, 113.60)]  # 16-20 km away
    episode = HazeEpisode(MONDAY + 2 * DAY_MS, MONDAY + 4 * DAY_MS, *centre, 6.0, 220.0)
    with_haze = CityModel(_stations(near + far), 9, episodes=[episode], random_episodes=False)
    without = CityModel(_stations(near + far), 9, random_episodes=False)
    idx = np.arange(len(near) + len(far))
    t = np.arange(MONDAY, MONDAY + 6 * DAY_MS, 600_000, dtype=np.int64)
    pm = with_haze.sample("air_station", idx, t[:, None])["pm25"]
    base = without.sample("air_station", idx, t[:, None])["pm25"]
    inside = (t > episode.start_ms + 12 * HOUR_MS) & (t < episode.end_ms - 12 * HOUR_MS)
    before = t < episode.start_ms
    n = len(near)
    # the episode lifts the near stations several-fold, and the far ones hardly at all
    assert pm[inside, :n].mean() > 2.5 * pm[before, :n].mean()
    lift_far = (pm[inside, n:] - base[inside, n:]).mean()
    lift_near = (pm[inside, :n] - base[inside, :n]).mean()
    assert lift_near > 10 * max(lift_far, 1.0)
    # neighbouring stations move together during the episode (spatially correlated), more
    # than their own variation outside it
    during = np.corrcoef(pm[inside | ((t >= episode.start_ms) & (t < episode.end_ms)), :n].T)
    assert during[np.triu_indices(n, 1)].min() > 0.9
    # PM10, CO and humidity follow the haze
    values = with_haze.sample("air_station", idx, t[:, None])
    assert values["pm10"][inside, :n].mean() > 2 * values["pm10"][before, :n].mean()
    assert values["humidity"][inside, :n].mean() > values["humidity"][before, :n].mean() + 5


def test_seeded_episodes_happen_and_neighbours_correlate_citywide() -> None:
    model = CityModel(FLEET, 1)
    start, end = MONDAY, MONDAY + 30 * DAY_MS
    episodes = model.episodes(start, end)
    assert 2 <= len(episodes) <= 8
    _, v = kind_series(model, "air_station", 30, step_ms=HOUR_MS)
    pm = v["pm25"]
    idx = model.kind_index["air_station"]
    districts = np.array([FLEET[i].district for i in idx.tolist()])
    # stations of one district share regional variation: their hourly series correlate
    same = []
    for d in set(districts.tolist()):
        cols = np.nonzero(districts == d)[0]
        if cols.size >= 2:
            same.append(np.corrcoef(pm[:, cols[0]], pm[:, cols[1]])[0, 1])
    assert same and min(same) > 0.6


def test_water_meters_cumulative_night_flow_and_leaks() -> None:
    model = CityModel(FLEET, 1)
    idx = model.kind_index["water_meter"]
    t = np.arange(MONDAY, MONDAY + 21 * DAY_MS, 15 * 60_000, dtype=np.int64)
    v = model.sample("water_meter", idx, t[:, None])
    volume = v["water_volume"]
    assert (np.diff(volume, axis=0) >= 0).all()
    h = local_hour(t)
    flow = v["water_flow"]
    leaking = model.leak_active(idx[None, :], t[:, None])
    night = (h >= 1) & (h < 4)
    morning = (h >= 7) & (h < 9)
    quiet = ~leaking
    assert flow[morning[:, None] & quiet].mean() > 4 * flow[night[:, None] & quiet].mean()
    # some meters leak some of the time; a leaking meter's night flow stays up
    assert 0 < leaking.any(axis=0).sum() < idx.size // 3
    assert flow[night[:, None] & leaking].mean() > 3 * flow[night[:, None] & quiet].mean()
    # the meter's leak alarm is raised only during leaks
    alarm = np.asarray(v["leak"], dtype=np.bool_)
    assert not (alarm & ~leaking).any()
    assert (alarm & leaking).any()
    # the total is the integral of the flow (within the flow's noise) for quiet meters
    steady = ~leaking.any(axis=0)
    used = volume[-1, steady] - volume[0, steady]
    integrated = flow[:-1, steady].sum(axis=0) * 0.25
    assert np.median(used / integrated) == pytest.approx(1.0, abs=0.1)


def test_energy_and_gas_totals_never_go_back() -> None:
    model = CityModel(FLEET, 1)
    t = np.arange(MONDAY, MONDAY + 10 * DAY_MS, 15 * 60_000, dtype=np.int64)
    for kind, metric in (("electricity_meter", "energy"), ("gas_meter", "gas_volume")):
        v = model.sample(kind, model.kind_index[kind], t[:, None])
        steps = np.diff(v[metric], axis=0)
        assert (steps >= 0).all()
        assert (steps.sum(axis=0) > 0).all()


def test_parking_busier_by_day_at_commercial_sites() -> None:
    model = CityModel(FLEET, 1)
    t, v = kind_series(model, "parking_sensor", 7, step_ms=30 * 60_000)
    h = local_hour(t)
    occupied = v["occupied"].astype(float)
    day = (h >= 11) & (h < 17)
    night = (h >= 1) & (h < 5)
    by_device_day = occupied[day].mean(axis=0)
    by_device_night = occupied[night].mean(axis=0)
    # commercial spaces fill by day, residential ones by night: both patterns are present
    assert (by_device_day > by_device_night + 0.3).sum() > 0
    assert (by_device_night > by_device_day + 0.3).sum() > 0


def test_health_ecl_follows_rsrp_and_batteries_drain_faster_at_high_ecl() -> None:
    model = CityModel(FLEET, 1)
    for kind in KINDS:
        t, v = kind_series(model, kind, 1, step_ms=HOUR_MS)
        rsrp, ecl = v["rsrp"], v["ecl"]
        assert (ecl[rsrp >= -105] == 0).all()
        assert (ecl[rsrp < -115] == 2).all()
        assert np.corrcoef(rsrp.ravel(), v["snr"].ravel())[0, 1] > 0.8
        assert (np.diff(v["uplinks"], axis=0) >= 0).all()
    idx = model.kind_index["water_meter"]
    t = np.array([MONDAY, MONDAY + 60 * DAY_MS], dtype=np.int64)
    v = model.sample("water_meter", idx, t[:, None])
    drop = v["battery"][0] - v["battery"][1]
    uplinks = v["uplinks"][1] - v["uplinks"][0]
    median_ecl = np.round(
        model.sample("water_meter", idx, np.arange(MONDAY, MONDAY + DAY_MS, HOUR_MS)[:, None])[
            "ecl"
        ].mean(axis=0)
    )
    kept = drop > 0  # not a battery change in between
    per_uplink = drop[kept] / uplinks[kept]
    ecl = median_ecl[kept]
    assert (per_uplink > 0).all()
    if (ecl == 0).any() and (ecl == 2).any():
        assert np.median(per_uplink[ecl == 2]) > 2 * np.median(per_uplink[ecl == 0])
