"""Traffic: the congestion index per district and site."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import Query

from analytics.congestion import CounterWindow, district_congestion, site_congestion
from dashboard_api import models, viewer
from dashboard_api.auth import CurrentPrincipal
from dashboard_api.parameters import format_duration, parse_duration, rfc3339
from dashboard_api.routes_common import (
    DAY,
    HOUR,
    AtQ,
    Context,
    DistrictQ,
    ResourceRouter,
    _filters,
)
from timeseries.query import SeriesGroup, SeriesQuery

router = ResourceRouter()


def _congestion_queries(
    at_ms: int, win: int, f: dict[str, str], with_history: bool
) -> list[SeriesQuery]:
    """The recent speed, occupancy and vehicle count per device, and (``with_history``) a
    week of hourly speeds to learn the free-flow speed from."""

    def recent(metric: str, agg: Literal["mean", "sum"]) -> SeriesQuery:
        return SeriesQuery(metric, at_ms - win, at_ms, win, agg, f, "device", at_ms % win)

    history = SeriesQuery(
        "avg_speed", at_ms - 7 * DAY, at_ms, HOUR, "mean", f, "device", at_ms % HOUR
    )
    queries = [recent("avg_speed", "mean"), recent("occupancy", "mean")]
    queries += [recent("vehicle_count", "sum")]
    if with_history:
        queries.append(history)
    return queries


def _last_of(groups: list[SeriesGroup]) -> dict[str, float]:
    return {g.group["device"]: g.points[-1][1] for g in groups if g.points}


@router.read(
    "/api/v1/traffic/congestion",
    models.CongestionResponse,
    "viewer",
    "congestion index (0-10) per district and site from speed and occupancy",
    viewers=viewer.congestion,
)
async def congestion(
    ctx: Context,
    at: AtQ,
    principal: CurrentPrincipal,
    district: DistrictQ = None,
    window: Annotated[str, Query(max_length=20, description="recent window (1m to 1d)")] = "30m",
    free_flow: Annotated[
        float | None,
        Query(gt=0, le=250, description="free-flow speed km/h (default: from the past week)"),
    ] = None,
) -> models.CongestionResponse:
    at_ms = at.ms
    win = parse_duration(window, "window", min_ms=60_000, max_ms=DAY)
    f = _filters(district=district)
    answers, tags = await asyncio.gather(
        ctx.reader.series_many(_congestion_queries(at_ms, win, f, free_flow is None)),
        ctx.reader.latest(("avg_speed", "occupancy"), f, at_ms - win, at_ms),
    )
    speed, occ, veh = answers[:3]
    hist = answers[3] if free_flow is None else []
    speeds, occs, vehs = _last_of(speed), _last_of(occ), _last_of(veh)
    hist_by = {g.group["device"]: tuple(v for _, v in g.points) for g in hist}
    places = {r.device: (r.district, r.site) for r in tags}
    left_out = ctx.flagged(("avg_speed", "occupancy", "vehicle_count"), at_ms - win, at_ms)
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
