"""Validation of readings: a reason for every refusal, nothing clipped."""

from __future__ import annotations

from citysense.catalog import DEFAULT_MAX_AGE_MS, MAX_FUTURE_SKEW_MS
from citysense.model import Reading
from citysense.validation import check_values, typed_values, validate_reading

NOW = 1_764_000_000_000


def reading(kind: str = "air_station", t: int = NOW, **values: float | bool) -> Reading:
    return Reading("urn:imei:490154203237518", kind, "zhengdong", "ruyi-lake", t, dict(values))


def reasons(r: Reading) -> list[str]:
    return [p.reason for p in validate_reading(r, NOW)]


def test_valid_reading_has_no_rejection() -> None:
    assert reasons(reading(pm25=35.2, pm10=61, battery=80, rsrp=-95.5)) == []


def test_each_reason() -> None:
    assert reasons(reading(kind="toaster", pm25=1)) == ["unknown_kind"]
    assert reasons(reading(pm26=1)) == ["unknown_metric"]
    assert reasons(reading(occupied=True)) == ["metric_not_for_kind"]
    assert reasons(reading(pm25=True)) == ["wrong_type"]
    assert reasons(reading(kind="parking_sensor", occupied=1)) == ["wrong_type"]
    assert reasons(reading(pm25=float("nan"))) == ["not_finite"]
    assert reasons(reading(pm25=10**400)) == ["not_finite"]
    assert reasons(reading(pm25=-0.1)) == ["out_of_range"]
    assert reasons(reading(ecl=1.5)) == ["not_integer"]
    assert reasons(reading()) == ["no_values"]
    assert reasons(reading(t=NOW + MAX_FUTURE_SKEW_MS + 1, pm25=1)) == ["time_in_future"]
    assert reasons(reading(t=NOW - DEFAULT_MAX_AGE_MS - 1, pm25=1)) == ["time_too_old"]


def test_time_bounds_are_inclusive() -> None:
    assert reasons(reading(t=NOW + MAX_FUTURE_SKEW_MS, pm25=1)) == []
    assert reasons(reading(t=NOW - DEFAULT_MAX_AGE_MS, pm25=1)) == []


def test_every_bad_value_is_reported_and_names_its_metric() -> None:
    problems = check_values("air_station", {"pm25": -1, "pm10": 5000, "no2": 10})
    assert sorted(p.metric or "" for p in problems) == ["pm10", "pm25"]
    assert "pm10" in str(problems[0]) or "pm10" in str(problems[1])


def test_typed_values_makes_numbers_float() -> None:
    assert typed_values({"pm25": 35, "leak": False}) == {"pm25": 35.0, "leak": False}
    assert type(typed_values({"pm25": 35})["pm25"]) is float
