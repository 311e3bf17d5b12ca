"""Water: meters suspected of a leak, with the evidence."""

from __future__ import annotations

import asyncio
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Query

from analytics.leaks import (
    DEFAULT_NIGHT_FLOW_THRESHOLD,
    LeakVerdict,
    MeterEvidence,
    last_night_window,
    suspected_leaks,
)
from dashboard_api import models, viewer
from dashboard_api.auth import CurrentPrincipal
from dashboard_api.parameters import ParameterError, rfc3339
from dashboard_api.routes_common import (
    DAY,
    ApiContext,
    AtQ,
    Context,
    DistrictQ,
    ResourceRouter,
    _filters,
)
from timeseries.query import SeriesQuery

router = ResourceRouter()


def _time_zone(ctx: ApiContext, tz: str | None) -> str:
    """``tz`` (default: the city's time zone), checked to be a known IANA time zone."""
    if tz is None:
        tz = ctx.timezone
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ParameterError("tz", f"{tz[:64]!r} is not a known IANA time zone") from None
    return tz


def _leak_out(v: LeakVerdict) -> models.LeakOut:
    return models.LeakOut(
        device=v.evidence.device,
        district=v.evidence.district,
        site=v.evidence.site,
        leak_flags=v.evidence.leak_flags,
        min_night_flow=v.evidence.min_night_flow,
        reasons=list(v.reasons),
    )


@router.read(
    "/api/v1/utility/leaks",
    models.LeaksResponse,
    "viewer",
    "water meters suspected of a leak, with the evidence",
    viewers=viewer.leaks,
)
async def leaks(
    ctx: Context,
    at: AtQ,
    principal: CurrentPrincipal,
    district: DistrictQ = None,
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
    at_ms = at.ms
    night_start, night_end = last_night_window(at_ms, _time_zone(ctx, tz))
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
    left_out = ctx.flagged(("water_volume", "water_flow"), first, at_ms)
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
        leaks=[_leak_out(v) for v in verdicts],
        excluded=[x for xs in left_out.values() for x in xs],
    )
