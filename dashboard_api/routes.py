"""The operator API's endpoints (INTERFACES.md section 7).

Each route declares its role (:func:`dashboard_api.auth.role`), reads through the
:class:`~timeseries.query.Reader` in ``app.state.reader`` and hands plain values to the pure
analytics. Parameters are validated at the edge: identifiers against the catalog (enums),
ids against their patterns, times and durations by :mod:`dashboard_api.parameters`.

Series buckets start at ``start`` (``start``, ``start + every``, ...; the last may be
partial), each labelled by its start.

Limits: a series query is first sized from its bucket count times its group count; if that
bound is over the point limit the exact count is asked for, and a query still over it is
refused with 400 and that count -- never truncated. Every query is bounded in time.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from analytics.aqi import (
    DEFAULT_STANDARD,
    POLLUTANTS,
    AqiResult,
    Standard,
    compute_aqi,
    window_means,
)
from analytics.congestion import (
    CounterWindow,
    district_congestion,
    site_congestion,
)
from analytics.leaks import (
    DEFAULT_NIGHT_FLOW_THRESHOLD,
    MeterEvidence,
    last_night_window,
    suspected_leaks,
)
from analytics.status import device_status
from citysense import __version__
from citysense.catalog import (
    DEFAULT_MAX_AGE_MS,
    KINDS,
    MAX_FUTURE_SKEW_MS,
    METRICS,
    Domain,
    catalog_document,
)
from citysense.errors import RetryableError
from citysense.model import DEVICE_ID_RE, PLACE_ID_RE
from citysense.registry import Device, Registry
from dashboard_api import models, viewer
from dashboard_api.auth import CurrentPrincipal, role
from dashboard_api.latest_cache import ALL_METRICS, LatestCache, latest_of_all
from dashboard_api.parameters import (
    ParameterError,
    format_duration,
    parse_duration,
    parse_time,
    rfc3339,
)
from dashboard_api.quality import QualityMonitor, exclude_flagged, excluded_out
from timeseries.query import LatestValue, Reader, SeriesGroup, SeriesQuery
from timeseries.rollup_query import RollupReads

HOUR = 3_600_000
DAY = 24 * HOUR
MAX_RANGE_MS = 366 * DAY
HEALTH_SHOWN = ("battery", "rsrp", "snr", "ecl")
#: Retry-After of a 503 when storage is unreachable (health and every data route), seconds.
STORAGE_RETRY_AFTER = 5
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",  # served from here: the CSP allows no data: URL
}

if TYPE_CHECKING:
    MetricName = str
    KindName = str
else:  # enums in OpenAPI, built from the catalog
    MetricName = Literal[tuple(METRICS)]
    KindName = Literal[tuple(KINDS)]
AggName = Literal["mean", "min", "max", "sum", "count", "last"]
GroupName = Literal["district", "device", "site"]
StatusName = Literal["online", "stale", "offline"]

_PLACE = f"^{PLACE_ID_RE.pattern}$"
_DEVICE = f"^{DEVICE_ID_RE.pattern}$"
DistrictQ = Annotated[str | None, Query(pattern=_PLACE, description="district id")]
SiteQ = Annotated[str | None, Query(pattern=_PLACE, description="site id")]
DeviceQ = Annotated[str | None, Query(pattern=_DEVICE, description="device id (operators only)")]
KindQ = Annotated[KindName | None, Query(description="device kind")]
TimeQ = Annotated[
    str | None,
    Query(max_length=40, description="RFC 3339 time or epoch milliseconds (default: now)"),
]

_ERR = {"model": models.ErrorBody}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": models.BadRequestBody, "description": "bad parameter or over the point limit"},
    401: {**_ERR, "description": "no or unknown API key"},
    403: {**_ERR, "description": "the role does not allow this"},
    422: {**_ERR, "description": "a parameter of the wrong form"},
    429: {**_ERR, "description": "rate limit exceeded (see Retry-After)"},
    503: {**_ERR, "description": "storage unreachable (see Retry-After)"},
}

router = APIRouter()


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the routes need, built once by :func:`dashboard_api.app.create_app`."""

    reader: Reader
    registry: Registry | None
    point_limit: int
    clock: Callable[[], float]  #: seconds since the epoch
    timezone: str = "UTC"  #: the city's time zone (local-time analytics)
    quality: QualityMonitor | None = None  #: data-quality flags (flagged readings left out)
    latest: LatestCache | None = None  #: the live latest-value table
    rollups: RollupReads | None = None  #: series from rollups

    def live(self, at: str | None) -> LatestCache | None:
        """The latest-value table, when it can answer a question about now."""
        if at is None and self.latest is not None and self.latest.ready:
            return self.latest
        return None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


class PointLimitError(Exception):
    def __init__(self, points: int, limit: int) -> None:
        super().__init__(
            f"the query would return {points} points, over the limit of {limit}: "
            "narrow the time range, widen every or filter"
        )
        self.points = points
        self.limit = limit


def _filters(**kw: str | None) -> dict[str, str]:
    return {k: v for k, v in kw.items() if v is not None}


def _at(ctx: ApiContext, at: str | None, name: str = "at") -> int:
    return ctx.now_ms() if at is None else parse_time(at, name)


# --------------------------------------------------------------------------- basics


@router.get(
    "/api/v1/health",
    response_model=models.Health,
    openapi_extra=role("public"),
    responses={503: {"model": models.Health, "description": "storage unreachable"}},
    summary="service and storage health",
)
async def health(request: Request, response: Response) -> models.Health | JSONResponse:
    ctx = context(request)
    known = getattr(request.state, "principal", None)
    detail: str | None = None
    try:
        await asyncio.wait_for(ctx.reader.ping(), timeout=5.0)
    except (RetryableError, TimeoutError) as exc:
        detail = str(exc) or "storage did not answer in time"
    else:
        if ctx.latest is not None and not ctx.latest.ready:
            detail = "the latest-value table is being primed"
    status: Literal["ok", "degraded"] = "ok" if detail is None else "degraded"
    code = 200 if detail is None else 503
    retry = {"Retry-After": str(STORAGE_RETRY_AFTER)} if code == 503 else {}
    if known is None or known.key_id == "public":  # anonymous: the status alone
        return JSONResponse({"status": status}, status_code=code, headers=retry)
    response.status_code = code
    response.headers.update(retry)
    return models.Health(
        status=status, storage=ctx.reader.description, version=__version__, detail=detail
    )


@router.get(
    "/api/v1/catalog",
    response_model=models.Catalog,
    openapi_extra=role("viewer"),
    responses=ERRORS,
    summary="the metric catalog: domains, kinds, metrics with unit, type and range",
)
async def catalog(principal: CurrentPrincipal) -> dict[str, object]:
    return catalog_document()


# --------------------------------------------------------------------------- latest / series


@router.get(
    "/api/v1/{domain}/latest",
    response_model=models.LatestResponse,
    openapi_extra=role("viewer"),
    responses=ERRORS,
    summary="latest value of each metric per device",
)
async def latest(
    request: Request,
    principal: CurrentPrincipal,
    domain: Annotated[Domain, PathParam()],
    district: DistrictQ = None,
    kind: KindQ = None,
    metric: Annotated[MetricName | None, Query(description="one metric of the domain")] = None,
    device: DeviceQ = None,
    site: SiteQ = None,
    at: TimeQ = None,
    window: Annotated[
        str, Query(max_length=20, description="how far back to look (at most 7d)")
    ] = "24h",
) -> JSONResponse:
    ctx = context(request)
    viewer.check_filters(principal, device=device, site=site)
    end = _at(ctx, at)
    span = parse_duration(window, "window", min_ms=1000, max_ms=7 * DAY)
    if metric is not None and METRICS[metric].domain != domain:
        raise ParameterError("metric", f"{metric} is not a metric of {domain}")
    metrics = (
        (metric,)
        if metric is not None
        else tuple(m for m, spec in METRICS.items() if spec.domain == domain)
    )
    filters = _filters(district=district, kind=kind, device=device, site=site)
    live = ctx.live(at)
    if live is not None:
        rows = live.rows(metrics, filters, end - span, end)
    else:
        rows = await ctx.reader.latest(metrics, filters, end - span, end)
    if len(rows) > ctx.point_limit:
        raise PointLimitError(len(rows), ctx.point_limit)
    if principal.role != "operator":  # district-level data only
        return JSONResponse(viewer.latest_answer(domain, end - span, end, rows))
    # Built as plain data (thousands of values): the shape is LatestResponse, checked by
    # the OpenAPI conformance tests.
    devices: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = devices.get(r.device)
        if entry is None:
            entry = devices[r.device] = {
                "device": r.device,
                "kind": r.kind,
                "district": r.district,
                "site": r.site,
                "values": {},
            }
        entry["values"][r.metric] = {"time": rfc3339(r.t), "value": r.value}
    return JSONResponse(
        {
            "domain": domain,
            "start": rfc3339(end - span),
            "end": rfc3339(end),
            "devices": [devices[k] for k in sorted(devices)],
        }
    )


_AUTO_EVERY = (60_000, 300_000, 900_000, HOUR, 6 * HOUR, DAY, 7 * DAY)


async def run_series(ctx: ApiContext, q: SeriesQuery) -> tuple[list[SeriesGroup], str]:
    """Size the query, refuse it over the point limit, else run it (from rollups where they
    fit); the answer and its source."""
    groups = 1
    if q.group_by is not None:
        groups = len(await ctx.reader.tag_values(q.group_by, q.metric, q.filters))
    if groups * q.bucket_count > ctx.point_limit:
        exact = await ctx.reader.count_series(q)
        if exact > ctx.point_limit:
            raise PointLimitError(exact, ctx.point_limit)
    if ctx.rollups is not None:
        return await ctx.rollups.series(q)
    return await ctx.reader.series(q), "raw"


@router.get(
    "/api/v1/{domain}/series",
    response_model=models.SeriesResponse,
    openapi_extra=role("viewer"),
    responses=ERRORS,
    summary="time buckets of one metric, aggregated and optionally grouped",
)
async def series(
    request: Request,
    principal: CurrentPrincipal,
    domain: Annotated[Domain, PathParam()],
    metric: Annotated[MetricName, Query(description="a metric of the domain")],
    start: TimeQ = None,
    end: TimeQ = None,
    every: Annotated[
        str | None, Query(max_length=20, description="bucket width like 5m, 1h, 1d (>= 1s)")
    ] = None,
    agg: AggName = "mean",
    group_by: GroupName | None = None,
    district: DistrictQ = None,
    device: DeviceQ = None,
    site: SiteQ = None,
    kind: KindQ = None,
) -> JSONResponse:
    ctx = context(request)
    viewer.check_filters(principal, device=device, site=site, group_by=group_by)
    if METRICS[metric].domain != domain:
        raise ParameterError("metric", f"{metric} is not a metric of {domain}")
    end_ms = _at(ctx, end, "end")
    start_ms = parse_time(start, "start") if start is not None else end_ms - DAY
    if start_ms >= end_ms:
        raise ParameterError("start", "must be before end")
    if end_ms - start_ms > MAX_RANGE_MS:
        raise ParameterError("start", "the range may span at most 366 days")
    if every is None:
        span = end_ms - start_ms
        every_ms = next((e for e in _AUTO_EVERY if span // e <= 500), _AUTO_EVERY[-1])
    else:
        every_ms = parse_duration(every, "every", min_ms=1000, max_ms=MAX_RANGE_MS)
    q = SeriesQuery(
        metric,
        start_ms,
        end_ms,
        every_ms,
        agg,
        _filters(district=district, device=device, site=site, kind=kind),
        group_by,
        start_ms % every_ms,  # buckets start at ``start``
    )
    groups, source = await run_series(ctx, q)
    return JSONResponse(  # plain data (up to the point limit): the shape is SeriesResponse
        {
            "metric": metric,
            "agg": agg,
            "every": format_duration(every_ms),
            "start": rfc3339(start_ms),
            "end": rfc3339(end_ms),
            "unit": METRICS[metric].unit,
            "source": source,
            "series": [
                {"group": g.group, "points": [[rfc3339(t), v] for t, v in g.points]} for g in groups
            ],
        }
    )


# --------------------------------------------------------------------------- AQI


def _aqi_out(district: str, r: AqiResult, hours: dict[str, int]) -> models.DistrictAqi:
    return models.DistrictAqi(
        district=district,
        aqi=r.aqi,
        level=r.level,
        category=r.category,
        category_zh=r.category_zh,
        colour=r.colour,
        primary_pollutants=list(r.primary_pollutants),
        iaqi=[models.IaqiOut(**asdict(i)) for i in r.iaqi],
        hours=hours,
    )


async def district_aqi(
    ctx: ApiContext, at_ms: int, standard: Standard, district: str | None
) -> list[models.DistrictAqi]:
    """AQI per district from hourly means of the 24 clock hours up to ``at`` (the newest is
    the hour holding ``at``, up to ``at``), from the hourly rollup where it is kept."""
    filters = _filters(district=district)
    hour_end = -(-at_ms // HOUR) * HOUR
    queries = [
        SeriesQuery(p, hour_end - DAY, at_ms, HOUR, "mean", filters, "district") for p in POLLUTANTS
    ]
    if ctx.rollups is not None:
        results = [g for g, _ in await ctx.rollups.series_many(queries)]
    else:
        results = await ctx.reader.series_many(queries)
    newest = hour_end - HOUR
    hourly: dict[str, dict[str, list[float | None]]] = defaultdict(dict)
    for pollutant, groups in zip(POLLUTANTS, results, strict=True):
        for g in groups:
            values: list[float | None] = [None] * 24
            for t, v in g.points:
                k = (newest - t) // HOUR
                if 0 <= k < 24:
                    values[k] = v
            hourly[g.group["district"]][pollutant] = values
    # the same 24 clock hours (its newest bucket: the hour holding ``at``)
    excluded = await exclude_flagged(ctx.reader, ctx.quality, hourly, hour_end, DAY, district)
    out = []
    for name in sorted(hourly):
        conc = {p: window_means(v) for p, v in hourly[name].items()}
        hours = {p: sum(x is not None for x in v) for p, v in hourly[name].items()}
        out.append(_aqi_out(name, compute_aqi(conc, standard), hours))
        out[-1].excluded = excluded.get(name, [])
    return out


@router.get(
    "/api/v1/environment/aqi",
    response_model=models.AqiResponse,
    openapi_extra=role("viewer"),
    responses=ERRORS,
    summary="AQI per district with each pollutant's IAQI and the table band behind it",
)
@viewer.for_viewers(viewer.aqi)
async def aqi(
    request: Request,
    principal: CurrentPrincipal,
    district: DistrictQ = None,
    at: TimeQ = None,
    standard: Standard = DEFAULT_STANDARD,
) -> models.AqiResponse:
    ctx = context(request)
    at_ms = _at(ctx, at)
    districts = await district_aqi(ctx, at_ms, standard, district)
    return models.AqiResponse(
        standard=standard, at=rfc3339(at_ms), hour_start=rfc3339(at_ms - HOUR), districts=districts
    )


# --------------------------------------------------------------------------- devices


@dataclass(slots=True)
class _Seen:
    kind: str
    district: str
    site: str
    last_seen: int
    values: dict[str, float]


async def seen_devices(
    ctx: ApiContext, filters: dict[str, str], at_ms: int, at: str | None
) -> dict[str, _Seen]:
    """Devices with a reading of any metric in the last 7 days: last seen at their newest
    reading, with their newest health figures."""
    span = (at_ms - DEFAULT_MAX_AGE_MS, at_ms + MAX_FUTURE_SKEW_MS)
    live = ctx.live(at)
    rows: list[LatestValue] = (
        live.rows(ALL_METRICS, filters, *span)
        if live is not None
        else await latest_of_all(ctx.reader, filters, *span)
    )
    seen: dict[str, _Seen] = {}
    for r in rows:
        s = seen.get(r.device)
        if s is None:
            s = seen[r.device] = _Seen(r.kind, r.district, r.site, r.t, {})
        s.last_seen = max(s.last_seen, r.t)
        if r.metric in HEALTH_SHOWN:
            s.values[r.metric] = r.value
    return seen


_STATUS_ORDER = {"offline": 0, "stale": 1, "online": 2}


@router.get(
    "/api/v1/devices",
    response_model=models.DeviceList,
    openapi_extra=role("operator"),
    responses=ERRORS,
    summary="devices with last seen time, status and radio health (offline first)",
)
async def devices(
    request: Request,
    principal: CurrentPrincipal,
    district: DistrictQ = None,
    kind: KindQ = None,
    status: StatusName | None = None,
    at: TimeQ = None,
) -> models.DeviceList:
    ctx = context(request)
    at_ms = _at(ctx, at)
    seen = await seen_devices(ctx, _filters(district=district, kind=kind), at_ms, at)
    out: list[models.Device] = []
    registry: Mapping[str, Device] = ctx.registry or {}
    flagged = ctx.quality.open_by_device() if ctx.quality is not None else {}
    for dev_id in sorted(set(seen) | set(registry)):
        reg = registry.get(dev_id)
        s = seen.get(dev_id)
        dev_kind = reg.kind if reg else s.kind if s else ""
        dev_district = reg.district if reg else s.district if s else ""
        if (kind and dev_kind != kind) or (district and dev_district != district):
            continue
        last = s.last_seen if s else None
        st = device_status(dev_kind, last, at_ms)
        if status and st != status:
            continue
        values = s.values if s else {}
        out.append(
            models.Device(
                device=dev_id,
                kind=dev_kind,
                district=dev_district,
                site=reg.site if reg else s.site if s else "",
                lat=reg.lat if reg else None,
                lon=reg.lon if reg else None,
                last_seen=rfc3339(last) if last is not None else None,
                age_s=(at_ms - last) / 1000 if last is not None else None,
                status=st,
                battery=values.get("battery"),
                rsrp=values.get("rsrp"),
                snr=values.get("snr"),
                ecl=values.get("ecl"),
                registered=reg is not None,
                flags=[
                    models.FlagBrief(metric=f.metric, reason=f.reason, since=rfc3339(f.since))
                    for f in flagged.get(dev_id, [])
                ],
            )
        )
    out.sort(key=lambda d: (_STATUS_ORDER[d.status], d.device))
    counts = {k: 0 for k in _STATUS_ORDER}
    for d in out:
        counts[d.status] += 1
    return models.DeviceList(at=rfc3339(at_ms), devices=out, counts=counts)


@router.get(
    "/api/v1/districts",
    response_model=models.DistrictList,
    openapi_extra=role("viewer"),
    responses=ERRORS,
    summary="every district with device counts by kind and its current AQI",
)
async def districts(
    request: Request,
    principal: CurrentPrincipal,
    at: TimeQ = None,
    standard: Standard = DEFAULT_STANDARD,
) -> models.DistrictList:
    ctx = context(request)
    at_ms = _at(ctx, at)
    seen, aqis = await asyncio.gather(
        seen_devices(ctx, {}, at_ms, at), district_aqi(ctx, at_ms, standard, None)
    )
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    places: dict[str, list[tuple[float, float]]] = defaultdict(list)
    registry: Mapping[str, Device] = ctx.registry or {}
    for d in registry.values():
        kinds[d.district][d.kind] += 1
        places[d.district].append((d.lat, d.lon))
    for dev_id, s in seen.items():
        if dev_id not in registry:
            kinds[s.district][s.kind] += 1
    by_name = {a.district: a for a in aqis}
    out = []
    for name in sorted(set(kinds) | set(by_name)):
        pts = places.get(name)
        a = by_name.get(name)
        out.append(
            models.District(
                district=name,
                devices=dict(sorted(kinds[name].items())),
                device_count=sum(kinds[name].values()),
                lat=sum(p[0] for p in pts) / len(pts) if pts else None,
                lon=sum(p[1] for p in pts) / len(pts) if pts else None,
                aqi=models.AqiBrief(
                    aqi=a.aqi,
                    category=a.category,
                    colour=a.colour,
                    primary_pollutants=a.primary_pollutants,
                )
                if a
                else None,
            )
        )
    return models.DistrictList(at=rfc3339(at_ms), standard=standard, districts=out)


# --------------------------------------------------------------------------- traffic, water


@router.get(
    "/api/v1/traffic/congestion",
    response_model=models.CongestionResponse,
    openapi_extra=role("viewer"),
    responses=ERRORS,
    summary="congestion index (0-10) per district and site from speed and occupancy",
)
@viewer.for_viewers(viewer.congestion)
async def congestion(
    request: Request,
    principal: CurrentPrincipal,
    district: DistrictQ = None,
    at: TimeQ = None,
    window: Annotated[str, Query(max_length=20, description="recent window (1m to 1d)")] = "30m",
    free_flow: Annotated[
        float | None,
        Query(gt=0, le=250, description="free-flow speed km/h (default: from the past week)"),
    ] = None,
) -> models.CongestionResponse:
    ctx = context(request)
    at_ms = _at(ctx, at)
    win = parse_duration(window, "window", min_ms=60_000, max_ms=DAY)
    f = _filters(district=district)

    def recent(metric: str, agg: Literal["mean", "sum"]) -> SeriesQuery:
        return SeriesQuery(metric, at_ms - win, at_ms, win, agg, f, "device", at_ms % win)

    history = SeriesQuery(
        "avg_speed", at_ms - 7 * DAY, at_ms, HOUR, "mean", f, "device", at_ms % HOUR
    )
    queries = [recent("avg_speed", "mean"), recent("occupancy", "mean")]
    queries += [recent("vehicle_count", "sum")]
    if free_flow is None:
        queries.append(history)
    answers, tags = await asyncio.gather(
        ctx.reader.series_many(queries),
        ctx.reader.latest(("avg_speed", "occupancy"), f, at_ms - win, at_ms),
    )
    speed, occ, veh = answers[:3]
    hist = answers[3] if free_flow is None else []

    def last_of(groups: list[SeriesGroup]) -> dict[str, float]:
        return {g.group["device"]: g.points[-1][1] for g in groups if g.points}

    speeds, occs, vehs = last_of(speed), last_of(occ), last_of(veh)
    hist_by = {g.group["device"]: tuple(v for _, v in g.points) for g in hist}
    places = {r.device: (r.district, r.site) for r in tags}
    left_out = _flagged(ctx, ("avg_speed", "occupancy", "vehicle_count"), at_ms - win, at_ms)
    places = {d: p for d, p in places.items() if d not in left_out}
    counters = [
        CounterWindow(
            dev,
            dist,
            site,
            speeds.get(dev),
            occs.get(dev),
            vehs.get(dev),
            hist_by.get(dev, ()),
        )
        for dev, (dist, site) in sorted(places.items())
    ]
    sites = site_congestion(counters, free_flow)
    return models.CongestionResponse(
        at=rfc3339(at_ms),
        window=format_duration(win),
        districts=[models.CongestionOut(**asdict(c)) for c in district_congestion(sites)],
        sites=[models.CongestionOut(**asdict(c)) for c in sites],
        excluded=[x for xs in left_out.values() for x in xs],
    )


@router.get(
    "/api/v1/utility/leaks",
    response_model=models.LeaksResponse,
    openapi_extra=role("viewer"),
    responses=ERRORS,
    summary="water meters suspected of a leak, with the evidence",
)
@viewer.for_viewers(viewer.leaks)
async def leaks(
    request: Request,
    principal: CurrentPrincipal,
    district: DistrictQ = None,
    at: TimeQ = None,
    tz: Annotated[
        str | None,
        Query(
            max_length=64,
            description="IANA time zone of the night window (default: the configured city time zone)",
        ),
    ] = None,
    threshold: Annotated[
        float, Query(ge=0, le=1000, description="minimum night flow that is suspicious, m³/h")
    ] = DEFAULT_NIGHT_FLOW_THRESHOLD,
) -> models.LeaksResponse:
    ctx = context(request)
    at_ms = _at(ctx, at)
    if tz is None:
        tz = ctx.timezone
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ParameterError("tz", f"{tz[:64]!r} is not a known IANA time zone") from None
    night_start, night_end = last_night_window(at_ms, tz)
    night = night_end - night_start
    f = _filters(district=district)
    flags_q = SeriesQuery("leak", at_ms - DAY, at_ms, DAY, "sum", f, "device", at_ms % DAY)
    night_q = SeriesQuery(
        "water_flow", night_start, night_end, night, "min", f, "device", night_start % night
    )
    first = min(night_start, at_ms - DAY)
    (flags, nights), tags = await asyncio.gather(
        ctx.reader.series_many([flags_q, night_q]),
        ctx.reader.latest(("water_flow", "leak"), f, first, at_ms),
    )
    flag_by = {g.group["device"]: int(sum(v for _, v in g.points)) for g in flags}
    night_by = {g.group["device"]: min(v for _, v in g.points) for g in nights if g.points}
    places = {r.device: (r.district, r.site) for r in tags}
    left_out = _flagged(ctx, ("water_volume", "water_flow"), first, at_ms)
    places = {d: p for d, p in places.items() if d not in left_out}
    meters = [
        MeterEvidence(dev, dist, site, flag_by.get(dev, 0), night_by.get(dev))
        for dev, (dist, site) in sorted(places.items())
    ]
    verdicts = suspected_leaks(meters, threshold)
    return models.LeaksResponse(
        at=rfc3339(at_ms),
        flag_window_start=rfc3339(at_ms - DAY),
        night_start=rfc3339(night_start),
        night_end=rfc3339(night_end),
        threshold=threshold,
        meters_checked=len(meters),
        leaks=[
            models.LeakOut(
                device=v.evidence.device,
                district=v.evidence.district,
                site=v.evidence.site,
                leak_flags=v.evidence.leak_flags,
                min_night_flow=v.evidence.min_night_flow,
                reasons=list(v.reasons),
            )
            for v in verdicts
        ],
        excluded=[x for xs in left_out.values() for x in xs],
    )


def _flagged(
    ctx: ApiContext, metrics: tuple[str, ...], start_ms: int, end_ms: int
) -> dict[str, list[models.ExcludedOut]]:
    """Devices with a flag on ``metrics`` meeting the window: left out, with the evidence."""
    out: dict[str, list[models.ExcludedOut]] = defaultdict(list)
    for f in ctx.quality.affecting(metrics, start_ms, end_ms) if ctx.quality else []:
        out[f.device].append(excluded_out(f))
    return out


# --------------------------------------------------------------------------- page, metrics


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    openapi_extra=role("operator"),
    responses=ERRORS,
    summary="Prometheus exposition of the service's own counters and latencies",
)
async def metrics(request: Request, principal: CurrentPrincipal) -> PlainTextResponse:
    text = cast(str, request.app.state.metrics.exposition())
    ctx = context(request)
    if ctx.latest is not None:
        text += "\n".join(ctx.latest.exposition()) + "\n"
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.get("/", response_class=HTMLResponse, openapi_extra=role("public"), include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(await asyncio.to_thread((STATIC / "index.html").read_text, "utf-8"))


@router.get("/static/{name}", openapi_extra=role("public"), include_in_schema=False)
async def static(name: str) -> Response:
    media = STATIC_FILES.get(name)
    if media is None:
        raise HTTPException(404, "no such file")
    body = await asyncio.to_thread((STATIC / name).read_bytes)
    return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})
