"""Response models of the operator API (INTERFACES.md section 7): pydantic at the edge only.

Times are RFC 3339 UTC strings (``2026-03-10T12:00:00Z``); values are numbers (booleans as
0/1, their catalog type says so).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from analytics.aqi import Standard
from analytics.quality import Reason


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, naming the parameter")


class BadRequestBody(ErrorBody):
    """A 400: a bad parameter, or a query over the point limit (then with the counts)."""

    points: int | None = Field(None, description="points the query would have returned")
    limit: int | None = Field(None, description="the point limit")


class ExcludedOut(BaseModel):
    """Readings left out of an answer because their device's metric was flagged."""

    device: str
    metric: str
    reason: str
    since: str
    until: str | None = Field(description="null: the flag is still open")
    readings: int | None = Field(None, description="readings left out (where counted)")


class FlagBrief(BaseModel):
    metric: str
    reason: str
    since: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    storage: str
    version: str
    detail: str | None = None


class MetricDoc(BaseModel):
    name: str
    unit: str
    senml_unit: str | None
    type: Literal["float", "bool"]
    min: float | None
    max: float | None
    integer: bool
    cumulative: bool
    description: str


class KindDoc(BaseModel):
    description: str
    report_interval_s: int
    metrics: list[str]


class DomainDoc(BaseModel):
    kinds: dict[str, KindDoc]
    metrics: dict[str, MetricDoc]


class Catalog(BaseModel):
    domains: dict[str, DomainDoc]


class IaqiOut(BaseModel):
    pollutant: str
    averaging: Literal["1h", "8h", "24h"]
    concentration: float = Field(description="measured mean, µg/m³ (CO mg/m³)")
    unit: str = Field(description="unit of table_concentration")
    table_concentration: float
    iaqi: int | None = Field(description="null: not used, see note")
    c_lo: float | None
    c_hi: float | None
    i_lo: int | None
    i_hi: int | None
    note: str


class DistrictAqi(BaseModel):
    district: str
    aqi: int | None
    level: str | None
    category: str | None
    category_zh: str | None
    colour: str | None
    primary_pollutants: list[str]
    iaqi: list[IaqiOut]
    hours: dict[str, int] = Field(description="hourly means available per pollutant (of 24)")
    excluded: list[ExcludedOut] = Field(
        default_factory=list, description="flagged readings left out of these means"
    )


class AqiResponse(BaseModel):
    standard: Standard
    at: str
    hour_start: str = Field(description="start of the newest hourly mean")
    districts: list[DistrictAqi]


class AqiBrief(BaseModel):
    aqi: int | None
    category: str | None
    colour: str | None
    primary_pollutants: list[str]


class District(BaseModel):
    district: str
    devices: dict[str, int] = Field(description="device count by kind")
    device_count: int
    lat: float | None = Field(description="centre of its devices (registry only)")
    lon: float | None
    aqi: AqiBrief | None


class DistrictList(BaseModel):
    at: str
    standard: str
    districts: list[District]


class Device(BaseModel):
    device: str
    kind: str
    district: str
    site: str
    lat: float | None
    lon: float | None
    last_seen: str | None
    age_s: float | None
    status: Literal["online", "stale", "offline"]
    battery: float | None
    rsrp: float | None
    snr: float | None
    ecl: float | None
    registered: bool
    flags: list[FlagBrief] = Field(default_factory=list, description="open data-quality flags")


class DeviceList(BaseModel):
    at: str
    devices: list[Device]
    counts: dict[str, int] = Field(description="devices per status")


class TimedValue(BaseModel):
    time: str
    value: float


class DeviceLatest(BaseModel):
    device: str
    kind: str
    district: str
    site: str
    values: dict[str, TimedValue]


class LatestResponse(BaseModel):
    domain: str
    start: str
    end: str
    devices: list[DeviceLatest]


class SeriesGroupOut(BaseModel):
    group: dict[str, str]
    points: list[tuple[str, float]]


class SeriesResponse(BaseModel):
    metric: str
    agg: str
    every: str
    start: str
    end: str
    unit: str
    source: Literal["raw", "1m", "1h"] = Field(
        description="what the buckets were computed from: raw readings or a rollup "
        "(1-minute, 1-hour); rollup answers equal raw-data answers"
    )
    series: list[SeriesGroupOut]


class CongestionOut(BaseModel):
    district: str
    site: str | None
    index: float | None = Field(description="0 (free) to 10 (severe)")
    level: str | None
    speed: float | None = Field(description="mean km/h over the window")
    free_flow: float | None
    free_flow_source: str
    occupancy: float | None
    speed_index: float | None
    occupancy_index: float | None
    vehicles: float
    devices: int


class CongestionResponse(BaseModel):
    at: str
    window: str
    districts: list[CongestionOut]
    sites: list[CongestionOut]
    excluded: list[ExcludedOut] = Field(
        default_factory=list, description="flagged counters left out of the index"
    )


class LeakOut(BaseModel):
    device: str
    district: str
    site: str
    leak_flags: int
    min_night_flow: float | None
    reasons: list[str]


class LeaksResponse(BaseModel):
    at: str
    flag_window_start: str
    night_start: str
    night_end: str
    threshold: float
    meters_checked: int
    leaks: list[LeakOut]
    excluded: list[ExcludedOut] = Field(
        default_factory=list, description="flagged meters left out of the check"
    )


# --------------------------------------------------------------------------- quality, forecast


class QualityFlag(BaseModel):
    device: str
    kind: str
    district: str
    site: str
    metric: str
    reason: Reason
    since: str
    until: str | None = Field(description="null: still open")
    open: bool
    evidence: dict[str, object] = Field(description="values, neighbours and window behind it")


class QualityResponse(BaseModel):
    evaluated_at: str | None
    flags: list[QualityFlag]


class ForecastPoint(BaseModel):
    time: str = Field(description="start of the forecast hour")
    pm25: float
    pm25_low: float = Field(description="10th percentile (80% interval)")
    pm25_high: float = Field(description="90th percentile (80% interval)")
    aqi: int | None
    level: str | None


class DistrictForecastOut(BaseModel):
    district: str
    trained_until: str
    skill: dict[str, dict[str, float]] = Field(
        description="horizon hours -> RMSE of the model, persistence and climatology "
        "on held-out history"
    )
    points: list[ForecastPoint]


class ForecastResponse(BaseModel):
    issued_at: str
    standard: str
    districts: list[DistrictForecastOut]
