"""The metric catalog: the single source of truth for domains, kinds, metrics and ranges.

Edge validation, the storage schema, the operator API (``GET /api/v1/catalog``) and the
simulators all read this module; nothing else spells out a metric, unit or range.

Invariants:

* metric names are unique across all domains, so a metric names its measurement (domain);
* a metric's value type (``float`` or ``bool``) never changes;
* every kind also carries the ``device_health`` metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

ValueType = Literal["float", "bool"]

Domain = Literal["environment", "traffic", "utility", "device_health"]
DOMAINS: tuple[str, ...] = get_args(Domain)

#: A reading time further than this in the future is rejected.
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000
#: Default maximum age of a reading; older ones are rejected.
DEFAULT_MAX_AGE_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Metric:
    """One measured quantity, with its unit and physical range."""

    name: str
    domain: str
    type: ValueType
    unit: str  #: human unit, as shown to operators
    senml_unit: str | None  #: SenML unit a device may send (``None``: no unit applies)
    lo: float | None  #: physical minimum (inclusive); ``None`` for booleans
    hi: float | None  #: physical maximum (inclusive)
    integer: bool = False  #: only whole numbers are valid
    cumulative: bool = False  #: a counter that only grows (meter totals)
    description: str = ""


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of sensor device, the metrics it reports and how often."""

    name: str
    domain: str
    metrics: tuple[str, ...]  #: its own metrics (device_health ones are implied)
    report_interval_s: int  #: nominal interval between uplinks
    description: str = ""


def _f(
    name: str,
    domain: str,
    unit: str,
    senml: str | None,
    lo: float,
    hi: float,
    description: str,
    *,
    integer: bool = False,
    cumulative: bool = False,
) -> Metric:
    return Metric(name, domain, "float", unit, senml, lo, hi, integer, cumulative, description)


def _b(name: str, domain: str, description: str) -> Metric:
    return Metric(name, domain, "bool", "", None, None, None, False, False, description)


_METRICS: tuple[Metric, ...] = (
    # environment
    _f("pm25", "environment", "µg/m³", "ug/m3", 0, 1000, "fine particulate matter PM2.5"),
    _f("pm10", "environment", "µg/m³", "ug/m3", 0, 2000, "particulate matter PM10"),
    _f("no2", "environment", "µg/m³", "ug/m3", 0, 4000, "nitrogen dioxide"),
    _f("so2", "environment", "µg/m³", "ug/m3", 0, 3000, "sulphur dioxide"),
    _f("o3", "environment", "µg/m³", "ug/m3", 0, 1500, "ozone"),
    _f("co", "environment", "mg/m³", "mg/m3", 0, 150, "carbon monoxide"),
    _f("temperature", "environment", "°C", "Cel", -50, 70, "air temperature"),
    _f("humidity", "environment", "%RH", "%RH", 0, 100, "relative humidity"),
    _f("noise", "environment", "dB(A)", "dB", 20, 140, "noise level LAeq"),
    # traffic
    _f(
        "vehicle_count",
        "traffic",
        "vehicles",
        "1",
        0,
        10000,
        "vehicles counted in the interval",
        integer=True,
    ),
    _f("avg_speed", "traffic", "km/h", "km/h", 0, 250, "average speed"),
    _f("occupancy", "traffic", "%", "%", 0, 100, "detector occupancy"),
    _b("occupied", "traffic", "parking space occupied"),
    # utility
    _f(
        "water_volume",
        "utility",
        "m³",
        "m3",
        0,
        1e9,
        "cumulative water volume",
        cumulative=True,
    ),
    _f("water_flow", "utility", "m³/h", "m3/h", 0, 1000, "water flow rate"),
    _f("water_pressure", "utility", "kPa", "kPa", 0, 2500, "water pressure"),
    _b("leak", "utility", "meter's own leak alarm"),
    _b("reverse_flow", "utility", "reverse flow alarm"),
    _f("energy", "utility", "kWh", "kWh", 0, 1e10, "cumulative active energy", cumulative=True),
    _f("power", "utility", "W", "W", 0, 1e7, "active power"),
    _f("voltage", "utility", "V", "V", 0, 500, "supply voltage"),
    _f("gas_volume", "utility", "m³", "m3", 0, 1e9, "cumulative gas volume", cumulative=True),
    # device health, reported by every kind
    _f("battery", "device_health", "%", "%EL", 0, 100, "battery state of charge"),
    _f("battery_voltage", "device_health", "V", "V", 0, 5, "battery voltage"),
    _f("rsrp", "device_health", "dBm", "dBm", -156, -44, "reference signal received power"),
    _f("snr", "device_health", "dB", "dB", -30, 40, "signal to noise ratio"),
    _f("ecl", "device_health", "", None, 0, 2, "coverage enhancement level", integer=True),
    _f("uplinks", "device_health", "", None, 0, 4e9, "uplink counter", integer=True),
)

_KINDS: tuple[Kind, ...] = (
    Kind(
        "air_station",
        "environment",
        ("pm25", "pm10", "no2", "so2", "o3", "co", "temperature", "humidity", "noise"),
        300,
        "air-quality micro-station",
    ),
    Kind(
        "traffic_counter",
        "traffic",
        ("vehicle_count", "avg_speed", "occupancy"),
        300,
        "loop or radar traffic counter",
    ),
    Kind("parking_sensor", "traffic", ("occupied",), 3600, "parking space sensor"),
    Kind(
        "water_meter",
        "utility",
        ("water_volume", "water_flow", "water_pressure", "leak", "reverse_flow"),
        3600,
        "water meter",
    ),
    Kind("electricity_meter", "utility", ("energy", "power", "voltage"), 900, "electricity meter"),
    Kind("gas_meter", "utility", ("gas_volume",), 3600, "gas meter"),
)

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _METRICS})


@dataclass(frozen=True, slots=True)
class QualityLimits:
    """Data-quality thresholds of one metric (``analytics.quality`` reads them; one home).

    Thresholds are per report at the kind's nominal interval. ``None`` switches a check off
    for the metric (a constant night-time vehicle count or a mains battery is normal).
    """

    resolution: float  #: smallest step a device reports (values closer are equal)
    stuck_reports: int | None = None  #: this many equal reports in a row is a stuck sensor
    spike_step: float | None = None  #: a jump there and back larger than this is a spike
    drift_per_day: float | None = None  #: growth per day of the gap to the neighbours
    drift_total: float | None = None  #: ... and the gap grown at least this much in the window
    tamper_ratio: float | None = None  #: station below this share of its neighbours' median
    tamper_level: float | None = None  #: ... while that median is at least this high
    tamper_rise: float | None = None  #: ... having risen at least this much in 48 h
    silent_reports: int = 6  #: missing for this many intervals while others report
    detection_limit: float | None = None  #: readings at or below it sit at the sensor's floor


def _q(resolution: float, stuck: int | None, spike: float | None, **kw: float) -> QualityLimits:
    return QualityLimits(resolution, stuck, spike, **kw)  # type: ignore[arg-type]


_QUALITY: dict[str, QualityLimits] = {
    # optical PM counters: a wet counter jumps by hundreds for one report; a covered inlet
    # reads clean air while the district's stations rise through a haze together
    "pm25": _q(
        0.1,
        12,
        150.0,
        drift_per_day=2.0,
        drift_total=12.0,
        tamper_ratio=0.35,
        tamper_level=75.0,
        tamper_rise=40.0,
        detection_limit=2.0,
    ),
    "pm10": _q(
        0.1,
        12,
        250.0,
        drift_per_day=3.0,
        drift_total=18.0,
        tamper_ratio=0.35,
        tamper_level=120.0,
        tamper_rise=60.0,
    ),
    "no2": _q(0.1, 12, 150.0, drift_per_day=2.0, drift_total=12.0, detection_limit=2.0),
    "so2": _q(0.1, 12, 100.0, detection_limit=1.0),
    "o3": _q(0.1, 12, 150.0, drift_per_day=3.0, drift_total=18.0, detection_limit=2.0),
    "co": _q(0.01, 12, 3.0, detection_limit=0.1),
    "temperature": _q(0.1, 24, 8.0),
    "humidity": _q(0.1, 24, 30.0),
    "noise": _q(0.1, 12, 40.0),
    "avg_speed": _q(0.1, 12, None),
    "occupancy": _q(0.1, 12, None),
    "water_pressure": _q(1.0, None, 400.0),
    "voltage": _q(0.1, 12, 150.0),
    "water_volume": _q(0.001, None, None),
    "energy": _q(0.01, None, None),
    "gas_volume": _q(0.001, None, None),
}
#: Data-quality thresholds per metric (metrics without an entry are not checked).
QUALITY: Mapping[str, QualityLimits] = MappingProxyType(_QUALITY)
KINDS: Mapping[str, Kind] = MappingProxyType({k.name: k for k in _KINDS})
HEALTH_METRICS: tuple[str, ...] = tuple(m.name for m in _METRICS if m.domain == "device_health")

_KIND_METRICS: Mapping[str, frozenset[str]] = MappingProxyType(
    {k.name: frozenset(k.metrics + HEALTH_METRICS) for k in _KINDS}
)


def metrics_of_kind(kind: str) -> frozenset[str]:
    """Every metric a device of ``kind`` may report (its own and device_health)."""
    return _KIND_METRICS[kind]


def metrics_of_domain(domain: str) -> tuple[Metric, ...]:
    """The metrics stored in ``domain``'s measurement, in catalog order."""
    return tuple(m for m in _METRICS if m.domain == domain)


def kinds_of_domain(domain: str) -> tuple[Kind, ...]:
    """The kinds whose own metrics belong to ``domain`` (device_health: every kind)."""
    if domain == "device_health":
        return _KINDS
    return tuple(k for k in _KINDS if k.domain == domain)


def catalog_document() -> dict[str, object]:
    """The catalog as plain data: domains -> kinds -> metrics (for the API and docs)."""

    def metric_doc(m: Metric) -> dict[str, object]:
        return {
            "name": m.name,
            "unit": m.unit,
            "senml_unit": m.senml_unit,
            "type": m.type,
            "min": m.lo,
            "max": m.hi,
            "integer": m.integer,
            "cumulative": m.cumulative,
            "description": m.description,
        }

    domains: dict[str, object] = {}
    for domain in DOMAINS:
        domains[domain] = {
            "kinds": {
                k.name: {
                    "description": k.description,
                    "report_interval_s": k.report_interval_s,
                    "metrics": list(k.metrics if domain != "device_health" else HEALTH_METRICS),
                }
                for k in kinds_of_domain(domain)
            },
            "metrics": {m.name: metric_doc(m) for m in metrics_of_domain(domain)},
        }
    return {"domains": domains}
