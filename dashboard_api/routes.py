"""The operator API's endpoints (INTERFACES.md section 7): one route table of them all.

Each route declares its role (:func:`dashboard_api.auth.role`), reads through the
:class:`~timeseries.query.Reader` in ``app.state.reader`` and hands plain values to the pure
analytics. Parameters are validated at the edge: identifiers against the catalog (enums),
ids against their patterns, times and durations by :mod:`dashboard_api.parameters`.

Here: health, the catalog, ``/metrics`` and the page; the data routes live one module per
resource (readings, environment, devices, traffic, utility) and share
:mod:`dashboard_api.routes_common`.
"""

from __future__ import annotations

import asyncio
from typing import Literal, cast

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from citysense import __version__
from citysense.catalog import catalog_document
from citysense.errors import RetryableError
from dashboard_api import models
from dashboard_api.auth import role
from dashboard_api.routes_common import (
    STATIC,
    STATIC_FILES,
    STORAGE_RETRY_AFTER,
    Context,
    ResourceRouter,
)
from dashboard_api.routes_devices import router as devices_router
from dashboard_api.routes_environment import router as environment_router
from dashboard_api.routes_readings import router as readings_router
from dashboard_api.routes_traffic import router as traffic_router
from dashboard_api.routes_utility import router as utility_router

basics = ResourceRouter()


@basics.get(
    "/api/v1/health",
    response_model=models.Health,
    openapi_extra=role("public"),
    responses={503: {"model": models.Health, "description": "storage unreachable"}},
    summary="service and storage health",
)
async def health(
    request: Request, response: Response, ctx: Context
) -> models.Health | JSONResponse:
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


@basics.read(
    "/api/v1/catalog",
    models.Catalog,
    "viewer",
    "the metric catalog: domains, kinds, metrics with unit, type and range",
)
async def catalog() -> dict[str, object]:
    return catalog_document()


page = ResourceRouter()


@page.read(
    "/metrics",
    None,
    "operator",
    "Prometheus exposition of the service's own counters and latencies",
    response_class=PlainTextResponse,
)
async def metrics(request: Request, ctx: Context) -> PlainTextResponse:
    text = cast(str, request.app.state.metrics.exposition())
    if ctx.latest is not None:
        text += "\n".join(ctx.latest.exposition()) + "\n"
    if ctx.quality is not None:
        text += ctx.quality.exposition()
    if request.app.state.quality_process is not None:  # set by the lifespan, None in-process
        text += request.app.state.quality_process.exposition()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@page.get("/", response_class=HTMLResponse, openapi_extra=role("public"), include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(await asyncio.to_thread((STATIC / "index.html").read_text, "utf-8"))


@page.get("/static/{name}", openapi_extra=role("public"), include_in_schema=False)
async def static(name: str) -> Response:
    media = STATIC_FILES.get(name)
    if media is None:
        raise HTTPException(404, "no such file")
    body = await asyncio.to_thread((STATIC / name).read_bytes)
    return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})


#: every route of the API's own table, in the order they are matched
router = APIRouter()
for _table in (
    basics,
    readings_router,
    environment_router,
    devices_router,
    traffic_router,
    utility_router,
    page,
):
    router.routes.extend(_table.routes)  # the same routes, flat (not a nested table)
