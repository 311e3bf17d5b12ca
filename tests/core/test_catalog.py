"""The metric catalog holds exactly the contract of INTERFACES.md section 2."""

from __future__ import annotations

import math

import pytest

from citysense.catalog import (
    DOMAINS,
    HEALTH_METRICS,
    KINDS,
    METRICS,
    catalog_document,
    metrics_of_kind,
)
from citysense.validation import check_value

# (kind, domain, {metric: (senml unit, type)}) as INTERFACES.md section 2 lists them.
CONTRACT = {
    "air_station": (
        "environment",
        {
            "pm25": ("ug/m3", "float"),
            "pm10": ("ug/m3", "float"),
            "no2": ("ug/m3", "float"),
            "so2": ("ug/m3", "float"),
            "o3": ("ug/m3", "float"),
            "co": ("mg/m3", "float"),
            "temperature": ("Cel", "float"),
            "humidity": ("%RH", "float"),
            "noise": ("dB", "float"),
        },
    ),
    "traffic_counter": (
        "traffic",
        {
            "vehicle_count": ("1", "float"),
            "avg_speed": ("km/h", "float"),
            "occupancy": ("%", "float"),
        },
    ),
    "parking_sensor": ("traffic", {"occupied": (None, "bool")}),
    "water_meter": (
        "utility",
        {
            "water_volume": ("m3", "float"),
            "water_flow": ("m3/h", "float"),
            "water_pressure": ("kPa", "float"),
            "leak": (None, "bool"),
            "reverse_flow": (None, "bool"),
        },
    ),
    "electricity_meter": (
        "utility",
        {"energy": ("kWh", "float"), "power": ("W", "float"), "voltage": ("V", "float")},
    ),
    "gas_meter": ("utility", {"gas_volume": ("m3", "float")}),
}
HEALTH = {
    "battery": "%EL",
    "battery_voltage": "V",
    "rsrp": "dBm",
    "snr": "dB",
    "ecl": None,
    "uplinks": None,
}


def test_every_kind_and_metric_of_the_contract_is_present() -> None:
    assert set(KINDS) == set(CONTRACT)
    for kind, (domain, metrics) in CONTRACT.items():
        assert KINDS[kind].domain == domain
        assert set(KINDS[kind].metrics) == set(metrics)
        for name, (unit, vtype) in metrics.items():
            assert METRICS[name].domain == domain
            assert METRICS[name].senml_unit == unit, name
            assert METRICS[name].type == vtype, name
    assert set(HEALTH_METRICS) == set(HEALTH)
    for name, unit in HEALTH.items():
        assert METRICS[name].domain == "device_health"
        assert METRICS[name].senml_unit == unit


def test_every_kind_carries_device_health() -> None:
    for kind in KINDS:
        assert set(HEALTH_METRICS) <= metrics_of_kind(kind)


def test_metric_names_are_unique_and_domains_known() -> None:
    assert len(METRICS) == sum(len(m) for _, m in CONTRACT.values()) + len(HEALTH)
    assert {m.domain for m in METRICS.values()} == set(DOMAINS)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_range_rejects_out_of_range_nan_and_inf(name: str) -> None:
    spec = METRICS[name]
    if spec.type == "bool":
        assert check_value(name, True) is None
        assert check_value(name, 1) is not None
        return
    assert spec.lo is not None and spec.hi is not None
    assert check_value(name, spec.lo) is None
    assert check_value(name, spec.hi) is None
    below = check_value(name, spec.lo - 1)
    above = check_value(name, spec.hi + 1)
    assert below is not None and below.reason == "out_of_range"
    assert above is not None and above.reason == "out_of_range"
    for bad in (math.nan, math.inf, -math.inf):
        problem = check_value(name, bad)
        assert problem is not None and problem.reason == "not_finite"
    assert check_value(name, True) is not None  # a boolean is not a number


def test_catalog_document_lists_domains_kinds_metrics() -> None:
    doc = catalog_document()
    domains = doc["domains"]
    assert isinstance(domains, dict)
    assert set(domains) == set(DOMAINS)
    env = domains["environment"]
    assert env["metrics"]["pm25"]["unit"] == "µg/m³"
    assert env["metrics"]["pm25"]["max"] == 1000
    assert "air_station" in env["kinds"]
    assert set(domains["device_health"]["kinds"]) == set(KINDS)
