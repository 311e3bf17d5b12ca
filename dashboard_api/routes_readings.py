"""Readings: the latest value of each metric per device and time-bucketed series.

Series buckets start at ``start`` (``start``, ``start + every``, ...; the last may be
partial), each labelled by its start.

Limits: a series query is first sized from its bucket count times its group count; if that
bound is over the point limit the exact count is asked for, and a query still over it is
refused with 400 and that count -- never truncated. Every query is bounded in time.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Path as PathParam
from fastapi import Query
from fastapi.responses import Response

from citysense.catalog import METRICS, Domain
from dashboard_api import models, viewer
from dashboard_api.auth import CurrentPrincipal
from dashboard_api.parameters import (
    ParameterError,
    format_duration,
    parse_duration,
    parse_time,
    rfc3339,
)
from dashboard_api.routes_common import (
    DAY,
    HOUR,
    MAX_RANGE_MS,
    AggName,
    ApiContext,
    AtQ,
    Context,
    DeviceQ,
    DistrictQ,
    GroupName,
    JSONParts,
    KindQ,
    MetricName,
    PointLimitError,
    ResourceRouter,
    SiteQ,
    TimeQ,
    _filters,
)
from timeseries.query import LatestValue, SeriesGroup, SeriesQuery

router = ResourceRouter()


@router.read(
    "/api/v1/{domain}/latest",
    models.LatestResponse,
    "viewer",
    "latest value of each metric per device",
)
async def latest(
    ctx: Context,
    at: AtQ,
    principal: CurrentPrincipal,
    domain: Annotated[Domain, PathParam()],
    district: DistrictQ = None,
    kind: KindQ = None,
    metric: Annotated[MetricName | None, Query(description="one metric of the domain")] = None,
    device: DeviceQ = None,
    site: SiteQ = None,
    window: Annotated[
        str, Query(max_length=20, description="how far back to look (at most 7d)")
    ] = "24h",
) -> Response:
    viewer.check_filters(principal, device=device, site=site)
    end = at.ms
    span = parse_duration(window, "window", min_ms=1000, max_ms=7 * DAY)
    if metric is not None and METRICS[metric].domain != domain:
        raise ParameterError("metric", f"{metric} is not a metric of {domain}")
    metrics = (
        (metric,)
        if metric is not None
        else tuple(m for m, spec in METRICS.items() if spec.domain == domain)
    )
    filters = _filters(district=district, kind=kind, device=device, site=site)
    start = end - span
    operator = principal.role == "operator"  # else district-level data only
    render = _devices_json if operator else _districts_json
    live = ctx.live(at)
    if live is not None:
        label = "devices" if operator else "districts"
        body, count = live.answer(label, metrics, filters, start, end, render)
    else:
        rows = await ctx.reader.latest(metrics, filters, start, end)
        body, count = render(rows), len(rows)
    if count > ctx.point_limit:
        raise PointLimitError(count, ctx.point_limit)
    # Built as plain data (thousands of values): the shape is LatestResponse, checked by
    # the OpenAPI conformance tests.
    head = orjson.dumps({"domain": domain, "start": rfc3339(start), "end": rfc3339(end)})
    key = b',"devices":' if operator else b',"devices":[],"districts":'
    return JSONParts((head[:-1], key, body, b"}"))


def _devices_json(rows: list[LatestValue]) -> bytes:
    """An operator's ``latest``: every device with its newest values (rows come sorted by
    device)."""
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
    return orjson.dumps([devices[k] for k in sorted(devices)])


def _districts_json(rows: list[LatestValue]) -> bytes:
    """A viewer's ``latest``: the districts' aggregates (:func:`viewer.latest`)."""
    return orjson.dumps(viewer.latest(rows))


_AUTO_EVERY = (60_000, 300_000, 900_000, HOUR, 6 * HOUR, DAY, 7 * DAY)


async def run_series(ctx: ApiContext, q: SeriesQuery) -> tuple[list[SeriesGroup], str]:
    """Size the query, refuse it over the point limit, else run it (from rollups where they
    fit); the answer and its source."""
    groups = 1
    if q.group_by is not None:
        groups = await ctx.group_count(q.group_by, q.metric, q.filters)
    if groups * q.bucket_count > ctx.point_limit:
        exact = await ctx.reader.count_series(q)
        if exact > ctx.point_limit:
            raise PointLimitError(exact, ctx.point_limit)
    if ctx.rollups is not None:
        answer, source = await ctx.rollups.series(q)
    else:
        answer, source = await ctx.reader.series(q), "raw"
    points = sum(len(g.points) for g in answer)
    if points > ctx.point_limit:  # the group count was a recent one; this one is exact
        raise PointLimitError(points, ctx.point_limit)
    return answer, source


@router.read(
    "/api/v1/{domain}/series",
    models.SeriesResponse,
    "viewer",
    "time buckets of one metric, aggregated and optionally grouped",
)
async def series(
    ctx: Context,
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
) -> Response:
    viewer.check_filters(principal, device=device, site=site, group_by=group_by)
    if METRICS[metric].domain != domain:
        raise ParameterError("metric", f"{metric} is not a metric of {domain}")
    end_ms = ctx.time(end, "end")
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
    body = orjson.dumps(  # plain data (up to the point limit): the shape is SeriesResponse
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
    return Response(body, media_type="application/json")
