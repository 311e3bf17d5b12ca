"""Sensor faults of the simulated city: seeded, with truth that matches the values."""

from __future__ import annotations

import numpy as np
import pytest

from citysense.errors import ConfigError
from simulators.backfill import backfill_columns
from simulators.city import generate_fleet
from simulators.models import DAY_MS, HOUR_MS, CityModel
from simulators.sensor_faults import (
    DEFAULT_SENSOR_RATES,
    FaultEpisode,
    SensorFaults,
    parse_sensor_faults,
)

START = 1_780_000_000_000 // DAY_MS * DAY_MS


def test_parse() -> None:
    assert parse_sensor_faults(["stuck=0.1", "covered-inlet"]) == {
        "stuck": 0.1,
        "covered_inlet": DEFAULT_SENSOR_RATES["covered_inlet"],
    }
    with pytest.raises(ConfigError, match="unknown fault"):
        parse_sensor_faults(["melted"])
    with pytest.raises(ConfigError, match="between 0 and 1"):
        parse_sensor_faults(["spike=2"])


def fleet_model(rates: dict[str, float], seed: int = 7) -> CityModel:
    devices = generate_fleet(1500, seed=seed)
    return CityModel(devices, seed, sensor_faults=SensorFaults(rates, seed))


def columns(
    model: CityModel, kind: str, start: int, end: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ts, vals = [], {}
    for b in backfill_columns(model, start, end):
        if b.kind != kind:
            continue
        ts.append(b.t)
        for m, v in b.values.items():
            vals.setdefault(m, []).append(v)
    return np.concatenate(ts), {m: np.concatenate(v) for m, v in vals.items()}


def test_stuck_truth_matches_frozen_values_and_is_deterministic() -> None:
    model = fleet_model({"stuck": 0.5})
    end = START + 20 * DAY_MS
    episodes = [e for e in model.sensor_faults.episodes(model, START, end) if e.fault == "stuck"]  # type: ignore[union-attr]
    assert episodes
    again = fleet_model({"stuck": 0.5}).sensor_faults.episodes(model, START, end)  # type: ignore[union-attr]
    assert [e for e in again if e.fault == "stuck"] == episodes
    e = episodes[0]
    i = next(k for k, d in enumerate(model.devices) if d.device == e.device)
    t = np.arange(e.start_ms, e.end_ms, 300_000, dtype=np.int64)
    v = model.sample("air_station", np.full(t.size, i), t)[e.metric]
    assert np.all(v == v[0])
    before = model.sample("air_station", np.full(12, i), t[0] - 300_000 * np.arange(1, 13))
    assert not np.all(before[e.metric] == v[0])


def test_reversal_runs_a_meter_backwards_and_covered_inlet_reads_clean_air() -> None:
    model = fleet_model({"reversal": 0.5})
    end = START + 10 * DAY_MS
    rev = [e for e in model.sensor_faults.episodes(model, START, end) if e.fault == "reversal"]  # type: ignore[union-attr]
    e = rev[0]
    i = next(k for k, d in enumerate(model.devices) if d.device == e.device)
    kind = model.devices[i].kind
    t = np.linspace(e.start_ms, e.end_ms - 1, 6).astype(np.int64)
    v = model.sample(kind, np.full(t.size, i), t)[e.metric]
    assert np.all(np.diff(v) <= 0) and v[-1] < v[0]

    devices = generate_fleet(600, seed=3)
    station = next(d for d in devices if d.kind == "air_station")
    i = devices.index(station)
    faults = SensorFaults(
        {}, 3, [FaultEpisode(station.device, "covered_inlet", "pm25", START, START + DAY_MS)]
    )
    covered = CityModel(devices, 3, sensor_faults=faults)
    clean = CityModel(devices, 3)
    t = START + np.arange(0, DAY_MS, HOUR_MS, dtype=np.int64)
    a = covered.sample("air_station", np.full(t.size, i), t)["pm25"]
    b = clean.sample("air_station", np.full(t.size, i), t)["pm25"]
    assert np.allclose(a, np.round(6.0 + 0.08 * b, 1), atol=0.11)
    after = START + DAY_MS + HOUR_MS
    assert (
        covered.sample("air_station", np.array([i]), np.array([after]))["pm25"][0]
        == (clean.sample("air_station", np.array([i]), np.array([after]))["pm25"][0])
    )


def test_spikes_are_where_the_mask_says() -> None:
    model = fleet_model({"spike": 0.01})
    clean = CityModel(model.devices, 7)
    idx = model.kind_index["air_station"]
    t = (
        START
        + np.arange(288, dtype=np.int64)[:, None] * 300_000
        + np.zeros((1, idx.size), np.int64)
    )
    faulty = model.sample("air_station", idx, t)
    ok = clean.sample("air_station", idx, t)
    mask = model.sensor_faults.spike_mask(  # type: ignore[union-attr]
        np.broadcast_to(model._static.salt[idx], t.shape), t
    )
    changed = np.zeros(t.shape, dtype=bool)
    for m in ("pm25", "pm10", "no2", "co"):
        changed |= faulty[m] != ok[m]
    assert mask.any() and np.array_equal(changed, mask)


def test_no_faults_leaves_the_city_as_it_was() -> None:
    devices = generate_fleet(300, seed=2)
    a = CityModel(devices, 2, sensor_faults=SensorFaults({}, 2))
    b = CityModel(devices, 2)
    for kind, idx in a.kind_index.items():
        if idx.size:
            va, vb = (
                a.sample(kind, idx, np.full(idx.size, START)),
                b.sample(kind, idx, np.full(idx.size, START)),
            )
            for m in va:
                assert np.array_equal(va[m], vb[m])
