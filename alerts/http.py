"""The alarms HTTP API (INTERFACES.md 10.6): the same keys, roles and rate limit as the
operator API (:mod:`citysense.apikeys`), the same security headers, deny by default.

* ``GET /api/v1/alarms?state=&severity=&district=&since=`` (viewer): most severe and newest
  first (``state=active``: raised or acknowledged); as in the operator API, viewers see
  district-level data only (alarms about a district or a site), operators everything;
* ``GET /api/v1/alarms/{id}`` (viewer): one alarm with its events;
* ``POST /api/v1/alarms/{id}/ack`` (operator): ``{"comment": "..."}``; 409 unless raised;
* ``GET /api/v1/alarm-rules`` (viewer); ``GET /api/v1/health`` (public); ``GET /metrics``
  (operator).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from alerts.rules import SEVERITIES, SEVERITY_RANK
from alerts.store import AlarmConflict, AlarmNotFound
from citysense import __version__
from citysense.apikeys import (
    RANK,
    SECURITY_HEADERS,
    KeyMatch,
    KeyStore,
    RateLimiter,
    required_role,
    retry_after,
    role,
)
from citysense.model import PLACE_ID_RE

_bearer = HTTPBearer(auto_error=False, description="an API key (the operator API's keys)")


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> KeyMatch:
    """App-wide dependency: the caller, or 401/403/429 (as the operator API)."""
    needed = required_role(request.scope.get("route"))
    if needed is None:
        raise HTTPException(403, "no access rule for this route")
    state = request.app.state
    if needed == "public":
        return KeyMatch("viewer", "public")
    keys: KeyStore = state.keys
    if keys.open:
        found: KeyMatch | None = KeyMatch(
            "operator", f"open:{request.client.host if request.client else '?'}"
        )
    elif credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401, "Authorization: Bearer <key> required", {"WWW-Authenticate": "Bearer"}
        )
    else:
        found = keys.lookup(credentials.credentials)
    if found is None:
        raise HTTPException(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
    wait = state.limiter.take(found.key_id)
    if wait > 0:
        raise HTTPException(429, "rate limit exceeded", retry_after(wait))
    if RANK[found.role] < RANK[needed]:
        raise HTTPException(403, f"this needs the {needed} role")
    return found


Caller = Annotated[KeyMatch, Depends(authorize)]


class Ack(BaseModel):
    comment: str = Field("", max_length=2000)
    by: str | None = Field(None, max_length=100, description="who acknowledges (a name)")


def _since(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, "since: not an RFC 3339 time") from None
    if dt.tzinfo is None:
        raise HTTPException(400, "since: needs a time zone (Z or +hh:mm)")
    return int(dt.timestamp() * 1000)


def _district_level(alarm: dict[str, Any]) -> bool:
    """Alarms a viewer may see: about a district or a site, not a device or a gateway."""
    return set(alarm["subject"]) <= {"district", "site"}


@dataclass(frozen=True, slots=True)
class AlarmsBackend:
    """What the routes need from the service (all blocking calls run in a thread)."""

    list_alarms: Callable[..., list[dict[str, Any]]]
    get_alarm: Callable[[str], dict[str, Any]]
    acknowledge: Callable[[str, str, str], Awaitable[dict[str, Any]]]
    rules: Callable[[], list[dict[str, Any]]]
    metrics: Callable[[], str]


def create_app(backend: AlarmsBackend, keys: dict[str, str] | KeyStore, rate_limit: int) -> FastAPI:
    app = FastAPI(
        title="citysense alerts",
        version=__version__,
        description="Alarms: rules, lifecycle and history (INTERFACES.md 10.6).",
        dependencies=[Depends(authorize)],
        docs_url=None,
        redoc_url=None,
    )
    app.state.keys = keys if isinstance(keys, KeyStore) else KeyStore(keys)
    app.state.limiter = RateLimiter(rate_limit)

    app.middleware("http")(_security_headers)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/api/v1/health", openapi_extra=role("public"))
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    _alarm_routes(app, backend)

    @app.get("/api/v1/alarm-rules", openapi_extra=role("viewer"))
    async def rules() -> dict[str, Any]:
        return {"rules": backend.rules(), "severities": list(SEVERITIES)}

    @app.get("/metrics", openapi_extra=role("operator"), response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        text = await asyncio.to_thread(backend.metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app


async def _security_headers(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()[:5]
    ]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def _alarm_routes(app: FastAPI, backend: AlarmsBackend) -> None:
    """The alarm listing, one alarm, and its acknowledgement."""

    @app.get("/api/v1/alarms", openapi_extra=role("viewer"))
    async def alarms(
        caller: Caller,
        state: Literal["raised", "acknowledged", "cleared", "active"] | None = None,
        severity: Literal["info", "minor", "major", "critical"] | None = None,
        district: Annotated[str | None, Query(pattern=PLACE_ID_RE.pattern)] = None,
        since: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        since_ms = _since(since)
        if state == "active":
            found = []
            for s in ("raised", "acknowledged"):
                found += await asyncio.to_thread(
                    backend.list_alarms, s, severity, district, since_ms, limit
                )
        else:
            found = await asyncio.to_thread(
                backend.list_alarms, state, severity, district, since_ms, limit
            )
        if caller.role != "operator":
            found = [a for a in found if _district_level(a)]
        found.sort(key=lambda a: a["raised_at"], reverse=True)
        found.sort(key=lambda a: -SEVERITY_RANK[a["severity"]])
        return {"alarms": found[:limit]}

    @app.get("/api/v1/alarms/{alarm_id}", openapi_extra=role("viewer"))
    async def alarm(
        alarm_id: Annotated[str, Path(max_length=64)], caller: Caller
    ) -> dict[str, Any]:
        try:
            found = await asyncio.to_thread(backend.get_alarm, alarm_id)
        except AlarmNotFound:
            raise HTTPException(404, "no such alarm") from None
        if caller.role != "operator" and not _district_level(found):
            raise HTTPException(403, "viewers see district-level alarms only")
        return found

    @app.post("/api/v1/alarms/{alarm_id}/ack", openapi_extra=role("operator"))
    async def ack(alarm_id: str, body: Ack, caller: Caller) -> dict[str, Any]:
        try:
            who = f"{body.by} (key {caller.key_id})" if body.by else f"key {caller.key_id}"
            return await backend.acknowledge(alarm_id, who, body.comment)
        except AlarmNotFound:
            raise HTTPException(404, "no such alarm") from None
        except AlarmConflict as exc:
            raise HTTPException(409, f"cannot acknowledge: {exc}") from None
