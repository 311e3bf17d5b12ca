"""Data-quality flags and the district forecast (INTERFACES.md 10.7).

``GET /api/v1/quality`` lists open and recent flags from the :class:`QualityMonitor` (it
evaluates first when its table is older than ``--quality-interval``); ``GET
/api/v1/environment/forecast`` answers from the :class:`ForecastService`, or 409 with a
``detail`` when the store holds too little history. :func:`exclude_flagged` is how the AQI
leaves flagged readings out: it corrects district hourly means by the flagged devices' own
sums and counts, and returns the exclusions for the answer's evidence.
"""

from __future__ import annotations

import math
from typing import Annotated, cast

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse

from analytics import forecast as fc
from analytics.aqi import DEFAULT_STANDARD, Standard, compute_aqi
from analytics.quality import Reason
from dashboard_api import models
from dashboard_api.parameters import parse_time, rfc3339
from dashboard_api.quality import Flag, ForecastService, QualityMonitor
from dashboard_api.routes_common import Context, DeviceQ, DistrictQ, ResourceRouter, TimeQ

router = ResourceRouter()


def monitor_of(request: Request) -> QualityMonitor:
    return cast(QualityMonitor, request.app.state.quality)


def forecaster_of(request: Request) -> ForecastService:
    return cast(ForecastService, request.app.state.forecast)


Monitor = Annotated[QualityMonitor, Depends(monitor_of)]
Forecaster = Annotated[ForecastService, Depends(forecaster_of)]


def flag_out(f: Flag) -> models.QualityFlag:
    evidence = {
        k: (rfc3339(v) if isinstance(v, int) and k in _TIME_KEYS else v)
        for k, v in f.evidence.items()
    }
    window = evidence.get("window")
    if isinstance(window, dict):
        evidence["window"] = {
            k: (rfc3339(v) if isinstance(v, int) and k in _TIME_KEYS else v)
            for k, v in window.items()
        }
    return models.QualityFlag(
        device=f.device,
        kind=f.kind,
        district=f.district,
        site=f.site,
        metric=f.metric,
        reason=f.reason,  # type: ignore[arg-type]
        since=rfc3339(f.since),
        until=rfc3339(f.until) if f.until is not None else None,
        open=f.open,
        evidence=evidence,
    )


_TIME_KEYS = frozenset(
    {"first", "last", "window_start", "window_end", "checked_at", "last_seen", "device_last_seen"}
)


@router.read(
    "/api/v1/quality",
    models.QualityResponse,
    "operator",
    "open and recent data-quality flags with their reason and evidence",
)
async def quality(
    ctx: Context,
    monitor: Monitor,
    district: DistrictQ = None,
    kind: Annotated[Reason | None, Query(description="flag reason")] = None,
    device: DeviceQ = None,
    since: TimeQ = None,
) -> models.QualityResponse:
    await monitor.refresh(ctx.now_ms())
    since_ms = parse_time(since, "since") if since is not None else None
    flags = monitor.listing(district=district, reason=kind, device=device, since_ms=since_ms)
    return models.QualityResponse(
        evaluated_at=rfc3339(monitor.evaluated_at) if monitor.evaluated_at is not None else None,
        flags=[flag_out(f) for f in flags],
    )


@router.read(
    "/api/v1/environment/forecast",
    models.ForecastResponse,
    "viewer",
    "hourly PM2.5 forecast per district for the next 1-24 h with an 80% interval",
    responses={409: {"model": models.ErrorBody, "description": "too little history"}},
)
async def forecast(
    ctx: Context,
    forecaster: Forecaster,
    district: DistrictQ = None,
    hours: Annotated[int, Query(ge=1, le=24, description="hours ahead")] = 24,
    standard: Annotated[Standard, Query(description="AQI standard")] = DEFAULT_STANDARD,
) -> JSONResponse | models.ForecastResponse:
    try:
        answers = await forecaster.current(ctx.now_ms())
    except fc.HistoryTooShortError as exc:
        return JSONResponse({"detail": f"too little history to forecast: {exc}"}, 409)
    out = []
    for a in answers:
        if district is not None and a.district != district:
            continue
        points = []
        f = a.forecast
        for k in range(min(hours, f.times.size)):
            value = float(f.mean[k])
            if math.isnan(value):
                continue
            r = compute_aqi({"pm25": {"1h": value}}, standard)
            points.append(
                models.ForecastPoint(
                    time=rfc3339(int(f.times[k])),
                    pm25=round(value, 1),
                    pm25_low=round(float(f.low[k]), 1),
                    pm25_high=round(float(f.high[k]), 1),
                    aqi=r.aqi,
                    level=r.category,
                )
            )
        out.append(
            models.DistrictForecastOut(
                district=a.district,
                trained_until=rfc3339(a.trained_until),
                skill={str(h): {k: round(v, 2) for k, v in s.items()} for h, s in a.skill.items()},
                points=points,
            )
        )
    return models.ForecastResponse(
        issued_at=rfc3339(ctx.now_ms()), standard=standard, districts=out
    )
