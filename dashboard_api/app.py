"""The FastAPI application: :func:`create_app` wires settings, storage, auth and routes.

Configuration is read once and passed in; the lifespan owns the storage reader (opened from
the settings unless one is given, closed on shutdown). Errors are answered as
``{"detail": "..."}``: input errors 400/422 naming the parameter, storage outages 503 with
``Retry-After``, never a 500 for anything a caller can send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from citysense import __version__
from citysense.config import Settings, parse_api_keys
from citysense.errors import (
    InputError,
    PermanentError,
    RetryableError,
)
from citysense.registry import Registry, load_registry_option
from dashboard_api.alarms import router as alarms_router
from dashboard_api.auth import KeyStore, RateLimiter, authorize
from dashboard_api.latest_cache import LatestCache, keep_latest, open_rollup_reads
from dashboard_api.metrics import MetricsMiddleware, RequestMetrics
from dashboard_api.quality import ForecastService, QualityMonitor, start_background
from dashboard_api.quality_routes import router as quality_router
from dashboard_api.routes import STORAGE_RETRY_AFTER, ApiContext, PointLimitError, router
from timeseries.query import QueryError, Reader, open_reader

log = logging.getLogger(__name__)
#: every route table of the API (their routes' series start at 0 in /metrics)
ROUTERS = (router, alarms_router, quality_router)


def _where(loc: tuple[object, ...]) -> str:
    kinds = {"query": "query parameter", "path": "path parameter", "header": "header"}
    if len(loc) >= 2 and isinstance(loc[0], str) and loc[0] in kinds:
        return f"{kinds[loc[0]]} {loc[1]!s}"
    return ".".join(str(p) for p in loc) or "request"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        parts.append(f"{_where(tuple(err.get('loc', ())))}: {err.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


async def _input_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, QueryError):
        return JSONResponse({"detail": f"{exc.parameter}: {exc}"}, status_code=400)
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def _limit_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PointLimitError)
    return JSONResponse(
        {"detail": str(exc), "points": exc.points, "limit": exc.limit}, status_code=400
    )


async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RetryableError)
    request.app.state.metrics.storage_errors += 1
    log.warning("storage unavailable: %s", exc)
    retry = str(max(1, int(exc.retry_after or STORAGE_RETRY_AFTER)))
    return JSONResponse(
        {"detail": "storage unavailable, try again later"},
        status_code=503,
        headers={"Retry-After": retry},
    )


async def _storage_refused(request: Request, exc: Exception) -> JSONResponse:
    request.app.state.metrics.storage_errors += 1
    log.error("storage refused a query: %s", exc)
    return JSONResponse({"detail": "storage refused the query"}, status_code=502)


def create_app(
    settings: Settings,
    *,
    reader: Reader | None = None,
    registry: Registry | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The operator API for ``settings``.

    ``reader`` (default: :func:`~timeseries.query.open_reader` in the lifespan) and
    ``registry`` (default: ``settings.registry`` when set) may be given by the caller, which
    then owns them; ``clock`` returns seconds since the epoch.
    """
    keys = parse_api_keys(settings.api_keys)
    if registry is None and settings.registry:
        registry = load_registry_option(settings.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            used = reader
            if used is None:
                used = await stack.enter_async_context(open_reader(settings))
            rollups = open_rollup_reads(settings, used, clock)
            latest = await stack.enter_async_context(keep_latest(LatestCache(used, clock, rollups)))
            app.state.quality = QualityMonitor(used, clock, settings.quality_interval or 300.0)
            app.state.forecast = ForecastService(
                used, clock, settings.forecast_refresh, settings.timezone
            )
            app.state.context = ApiContext(
                used,
                registry,
                settings.point_limit,
                clock,
                settings.timezone,
                app.state.quality,
                latest=latest,
                rollups=rollups,
            )
            if settings.quality_interval > 0:  # 0: evaluated only when /quality is asked
                for task in start_background(app.state.quality, app.state.forecast):
                    stack.callback(task.cancel)
            if not keys:
                log.warning("no API keys configured: the operator API is open to anyone")
            log.info("operator API reading %s", used.description)
            yield

    app = FastAPI(
        title="citysense operator API",
        version=__version__,
        description="City sensor readings, analytics and device health (INTERFACES.md 7).",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],
        # Swagger UI and ReDoc load their scripts from a CDN: not served, the document is.
        docs_url=None,
        redoc_url=None,
    )
    app.state.keys = KeyStore(keys)
    app.state.limiter = RateLimiter(settings.rate_limit)
    app.state.metrics = RequestMetrics(r for t in ROUTERS for r in t.routes)
    app.include_router(router)
    app.include_router(alarms_router)
    app.state.alerts_url = settings.alerts
    app.include_router(quality_router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PointLimitError, _limit_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RetryableError, _storage_down)
    app.add_exception_handler(PermanentError, _storage_refused)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
