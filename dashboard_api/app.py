"""The FastAPI application: :func:`create_app` wires settings, storage, auth and routes.

Configuration is read once and passed in; the lifespan owns the storage reader (opened from
the settings unless one is given, closed on shutdown). Errors are answered as
``{"detail": "..."}``: input errors 400/422 naming the parameter, storage outages 503 with
``Retry-After``, never a 500 for anything a caller can send.

Every response carries :data:`SECURITY_HEADERS`; every GET route answers HEAD too. A
non-loopback ``--bind`` with no API keys is refused (exit 2) unless ``--insecure-open``.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citysense import __version__
from citysense.apikeys import SECURITY_HEADERS, load_keys_file
from citysense.config import Settings, parse_api_keys, parse_hostport
from citysense.errors import (
    ConfigError,
    InputError,
    PermanentError,
    RetryableError,
)
from citysense.registry import Registry, load_registry_option
from dashboard_api.alarms import router as alarms_router
from dashboard_api.auth import FAILED_AUTH_PER_MINUTE, KeyStore, RateLimiter, authorize
from dashboard_api.latest_cache import (
    LatestCache,
    RollupBackedReader,
    keep_latest,
    open_rollup_reads,
)
from dashboard_api.metrics import MetricsMiddleware, RequestMetrics
from dashboard_api.quality import ForecastService, QualityMonitor, start_background
from dashboard_api.quality_process import QualityProcess
from dashboard_api.quality_routes import router as quality_router
from dashboard_api.routes import router
from dashboard_api.routes_common import STORAGE_RETRY_AFTER, ApiContext, PointLimitError
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


#: :data:`citysense.apikeys.SECURITY_HEADERS` as ASGI header pairs.
_HEADER_PAIRS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
)


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in _HEADER_PAIRS if n not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadMiddleware:
    """HEAD on every GET route: routed as GET, answered with the headers alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {
                    "type": "http.response.body",
                    "body": b"",
                    "more_body": message.get("more_body", False),
                }
            await send(message)

        await self.app(dict(scope, method="GET"), receive, send_headers_only)


def load_keys(settings: Settings) -> KeyStore:
    """The API keys of ``--api-keys`` and ``--api-keys-file``; ConfigError when bad."""
    stored = load_keys_file(settings.api_keys_file) if settings.api_keys_file else []
    return KeyStore(parse_api_keys(settings.api_keys), stored)


def reload_keys(app: FastAPI, settings: Settings) -> bool:
    """Read the keys again (SIGHUP); a bad file keeps the keys in use. True if reloaded."""
    try:
        keys = load_keys(settings)
    except ConfigError as exc:
        log.error("API keys not reloaded, the previous ones stay in use: %s", exc)
        return False
    if keys.open and not app.state.keys.open:
        log.error("API keys not reloaded: the new set is empty and would open the API")
        return False
    app.state.keys = keys
    log.info("API keys reloaded: %d keys", len(keys))
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    keys = load_keys(settings)
    host, _ = parse_hostport(settings.bind, "--bind")
    if keys.open and not is_loopback(host) and not settings.insecure_open:
        raise ConfigError(
            f"--bind {settings.bind} is reachable from other machines and no API keys are "
            "configured: give --api-keys-file (or --insecure-open to serve it open)"
        )
    if registry is None and settings.registry:
        registry = load_registry_option(settings.registry)
    app = FastAPI(
        title="citysense operator API",
        version=__version__,
        description="City sensor readings, analytics and device health (INTERFACES.md 7).",
        lifespan=_lifespan(settings, reader, registry, clock, open_keys=keys.open),
        dependencies=[Depends(authorize)],
        # Swagger UI and ReDoc load their scripts from a CDN: not served, the document is.
        docs_url=None,
        redoc_url=None,
    )
    app.state.keys = keys
    app.state.limiter = RateLimiter(settings.rate_limit)
    app.state.auth_failures = RateLimiter(FAILED_AUTH_PER_MINUTE)
    app.state.metrics = RequestMetrics(r for t in ROUTERS for r in t.routes)
    app.state.alerts_url = settings.alerts
    _wire(app)
    return app


def _lifespan(
    settings: Settings,
    reader: Reader | None,
    registry: Registry | None,
    clock: Callable[[], float],
    *,
    open_keys: bool,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the reader, the latest-value table, quality and forecast."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            used = reader
            if used is None:
                used = await stack.enter_async_context(open_reader(settings))
            rollups = open_rollup_reads(settings, used, clock)
            latest = await stack.enter_async_context(keep_latest(LatestCache(used, clock, rollups)))
            # the background readers ask days of hourly means: from the rollups where kept
            hourly = used if rollups is None else RollupBackedReader(used, rollups)
            # opened here from the settings, the checks' reading and arithmetic can run in a
            # process of their own (seconds of CPU at a city's size: not on the request path)
            source = app.state.quality_process = None
            if reader is None:
                source = app.state.quality_process = QualityProcess(settings)
                stack.callback(source.close)
            app.state.quality = QualityMonitor(
                hourly, clock, settings.quality_interval or 300.0, source
            )
            app.state.forecast = ForecastService(
                hourly, clock, settings.forecast_refresh, settings.timezone
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
            if open_keys:
                log.warning("no API keys configured: the operator API is open to anyone")
            log.info("operator API reading %s", used.description)
            yield

    return lifespan


def _wire(app: FastAPI) -> None:
    """Routers, error handlers and middleware (outermost last)."""
    app.include_router(router)
    app.include_router(alarms_router)
    app.include_router(quality_router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PointLimitError, _limit_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RetryableError, _storage_down)
    app.add_exception_handler(PermanentError, _storage_refused)
    app.add_middleware(HeadMiddleware)  # innermost: the metrics still see HEAD
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
