"""The forecast model on a synthetic city: beats persistence, intervals hold their share,
and says so when history is too short."""

from __future__ import annotations

import numpy as np
import pytest

from analytics import forecast as fc

HOUR = 3_600_000
T0 = 1_780_000_000_000 // HOUR * HOUR


def city(hours: int, districts: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    diurnal = 1.0 + 0.3 * np.cos(2 * np.pi * (t % 24 - 2) / 24)
    regional = np.exp(0.3 * np.convolve(rng.normal(0, 1, hours + 48), np.ones(24) / 5, "same"))[
        :hours
    ]
    y = np.stack(
        [
            40.0 * (1 + 0.1 * d) * diurnal * regional * np.exp(rng.normal(0, 0.08, hours))
            for d in range(districts)
        ]
    )
    return T0 + t.astype(np.int64) * HOUR, y


def test_too_little_history_is_refused() -> None:
    hours, y = city(100)
    with pytest.raises(fc.HistoryTooShortError, match="at least 168"):
        fc.fit(hours, y)


def test_forecast_has_every_hour_with_an_interval_and_skill() -> None:
    hours, y = city(24 * 40)
    model = fc.fit(hours, y)
    assert set(model.skill) == {1, 6, 24}
    s6 = model.skill[6]
    assert s6["rmse"] < s6["rmse_persistence"]
    out = fc.forecast(model, hours, y)
    assert len(out) == 3
    for f in out:
        assert f.times[0] == hours[-1] + HOUR and f.times.size == fc.HORIZONS
        assert np.all(f.low <= f.mean) and np.all(f.mean <= f.high)


def test_interval_coverage_on_held_out_hours() -> None:
    hours, y = city(24 * 80, seed=3)
    train = 24 * 60
    model = fc.fit(hours[:train], y[:, :train])
    origins = np.arange(train, hours.size - fc.HORIZONS - 1)
    _, low, high = fc.predict_at(model, hours, y, origins)
    truth = np.stack([y[:, origins + h] for h in range(1, fc.HORIZONS + 1)], axis=-1)
    inside = (truth >= low) & (truth <= high)
    assert 0.65 <= inside.mean() <= 0.92  # the bench measures it on a simulated year
