"""Environment: AQI per district from hourly pollutant means."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

from analytics.aqi import (
    DEFAULT_STANDARD,
    POLLUTANTS,
    AqiResult,
    Standard,
    compute_aqi,
    window_means,
)
from dashboard_api import models, viewer
from dashboard_api.auth import CurrentPrincipal
from dashboard_api.parameters import (
    rfc3339,
)
from dashboard_api.quality import exclude_flagged
from dashboard_api.routes_common import (
    DAY,
    HOUR,
    ApiContext,
    AtQ,
    Context,
    DistrictQ,
    ResourceRouter,
    _filters,
)
from timeseries.query import SeriesQuery

router = ResourceRouter()


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
    excluded = await exclude_flagged(
        ctx.series_reader(), ctx.quality, hourly, hour_end, DAY, district
    )
    out = []
    for name in sorted(hourly):
        conc = {p: window_means(v) for p, v in hourly[name].items()}
        hours = {p: sum(x is not None for x in v) for p, v in hourly[name].items()}
        out.append(_aqi_out(name, compute_aqi(conc, standard), hours))
        out[-1].excluded = excluded.get(name, [])
    return out


@router.read(
    "/api/v1/environment/aqi",
    models.AqiResponse,
    "viewer",
    "AQI per district with each pollutant's IAQI and the table band behind it",
    viewers=viewer.aqi,
)
async def aqi(
    ctx: Context,
    at: AtQ,
    principal: CurrentPrincipal,
    district: DistrictQ = None,
    standard: Standard = DEFAULT_STANDARD,
) -> models.AqiResponse:
    at_ms = at.ms
    districts = await district_aqi(ctx, at_ms, standard, district)
    return models.AqiResponse(
        standard=standard, at=rfc3339(at_ms), hour_start=rfc3339(at_ms - HOUR), districts=districts
    )
