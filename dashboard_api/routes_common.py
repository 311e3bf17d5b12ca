"""What every route table of the operator API shares (INTERFACES.md section 7).

The context the routes read through (:class:`ApiContext`, built once by
:func:`dashboard_api.app.create_app`, a route parameter as :data:`Context`), the way a route is
declared (:meth:`ResourceRouter.read`: its role, answer model and the common error responses),
the common parameter types validated at the edge (identifiers against the catalog, ids against
their patterns) and the point limit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from citysense.catalog import KINDS, METRICS
from citysense.model import DEVICE_ID_RE, PLACE_ID_RE
from citysense.registry import Registry
from dashboard_api import models
from dashboard_api.auth import Principal, role
from dashboard_api.latest_cache import LatestCache, RollupBackedReader
from dashboard_api.parameters import parse_time
from dashboard_api.quality import QualityMonitor, excluded_out
from dashboard_api.viewer import for_viewers
from timeseries.query import Reader
from timeseries.rollup_query import RollupReads

HOUR = 3_600_000
DAY = 24 * HOUR
MAX_RANGE_MS = 366 * DAY
HEALTH_SHOWN = ("battery", "rsrp", "snr", "ecl")
#: Retry-After of a 503 when storage is unreachable (health and every data route), seconds.
STORAGE_RETRY_AFTER = 5
#: seconds a group count (tag values of a metric) is reused to size series queries
GROUP_COUNT_TTL_S = 60.0
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
    _group_counts: dict[tuple[Any, ...], tuple[float, int]] = field(
        default_factory=dict, repr=False
    )

    def live(self, at: When) -> LatestCache | None:
        """The latest-value table, when it can answer a question about now."""
        if at.now and self.latest is not None and self.latest.ready:
            return self.latest
        return None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def group_count(self, key: str, metric: str, filters: Mapping[str, str]) -> int:
        """How many values tag ``key`` has among ``metric``'s points (to size a query before
        it runs), asked of storage at most every :data:`GROUP_COUNT_TTL_S` per question."""
        ask = (key, metric, tuple(sorted(filters.items())))
        now = time.monotonic()
        hit = self._group_counts.get(ask)
        if hit is not None and now - hit[0] < GROUP_COUNT_TTL_S:
            return hit[1]
        count = len(await self.reader.tag_values(key, metric, filters))
        if len(self._group_counts) > 1024:
            self._group_counts.clear()
        self._group_counts[ask] = (now, count)
        return count

    def series_reader(self) -> Reader:
        """The reader whose series come from the rollups where they fit."""
        return (
            self.reader if self.rollups is None else RollupBackedReader(self.reader, self.rollups)
        )

    def time(self, at: str | None, name: str = "at") -> int:
        """The time a request asks about (its parameter ``name``), or now."""
        return self.now_ms() if at is None else parse_time(at, name)

    def flagged(
        self, metrics: tuple[str, ...], start_ms: int, end_ms: int
    ) -> dict[str, list[models.ExcludedOut]]:
        """Devices with a flag on ``metrics`` meeting the window: left out, with the evidence."""
        out: dict[str, list[models.ExcludedOut]] = defaultdict(list)
        for f in self.quality.affecting(metrics, start_ms, end_ms) if self.quality else []:
            out[f.device].append(excluded_out(f))
        return out


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


#: The context as a route parameter (a dependency: no trace in the OpenAPI document).
Context = Annotated[ApiContext, Depends(context)]


@dataclass(frozen=True, slots=True)
class When:
    """The time a request asks about: its ``at``, or now (then the live tables may answer)."""

    ms: int
    now: bool


def when(ctx: Context, at: TimeQ = None) -> When:
    return When(ctx.time(at), at is None)


#: the ``at`` parameter of a route, as :class:`When`
AtQ = Annotated[When, Depends(when)]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[Any]])


class ResourceRouter(APIRouter):
    """One resource's route table; :meth:`read` declares a route the way every data route is
    declared."""

    def read(
        self,
        path: str,
        model: Any,
        needs: Literal["public", "viewer", "operator"],
        summary: str,
        *,
        responses: Mapping[int | str, dict[str, Any]] | None = None,
        viewers: Callable[[Principal, Any], Any] | None = None,
        **options: Any,
    ) -> Callable[[Endpoint], Endpoint]:
        """GET ``path`` answering ``model``, for the role ``needs`` and above, with the common
        error answers (:data:`ERRORS`, then ``responses``). ``viewers`` is the route's function
        of :mod:`dashboard_api.viewer`, which a viewer's answer goes through."""
        add = self.get(
            path,
            response_model=model,
            openapi_extra=role(needs),
            responses={**ERRORS, **(responses or {})},
            summary=summary,
            **options,
        )

        def declare(endpoint: Endpoint) -> Endpoint:
            if viewers is not None:
                endpoint = cast(Endpoint, for_viewers(viewers)(endpoint))
            return add(endpoint)

        return declare


class JSONParts(Response):
    """A JSON answer sent as the pieces it was built from, in order: a city's ``latest`` and
    ``/devices`` are megabytes around a few bytes that change per request (the time asked),
    and the megabytes are a rendered answer reused across requests -- not copied into one
    body on every request."""

    media_type = "application/json"

    def __init__(self, parts: Iterable[bytes]) -> None:
        self.parts = [p for p in parts if p]
        super().__init__(b"")
        self.headers["content-length"] = str(sum(len(p) for p in self.parts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.parts) - 1
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})
        if not self.parts:
            await send({"type": "http.response.body", "body": b""})


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
