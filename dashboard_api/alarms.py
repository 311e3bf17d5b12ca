"""Active alarms on the dashboard: ``GET /api/v1/alarms`` asks ``citysense alerts``
(``--alerts URL``) server side, with the caller's own key, so the page loads only from this
origin and the alerts service applies the same roles. 404 when no alerts service is
configured, 503 when it cannot be reached."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request

from dashboard_api.auth import CurrentPrincipal, role

router = APIRouter()
TIMEOUT_S = 5.0


@router.get(
    "/api/v1/alarms",
    openapi_extra=role("viewer"),
    summary="active alarms from citysense alerts (most severe first)",
)
async def active_alarms(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    base: str | None = getattr(request.app.state, "alerts_url", None)
    if not base:
        raise HTTPException(404, "no alerts service configured (--alerts URL)")
    headers = {}
    auth = request.headers.get("authorization")
    if auth:
        headers["Authorization"] = auth
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            resp = await client.get(
                base.rstrip("/") + "/api/v1/alarms", params={"state": "active"}, headers=headers
            )
    except httpx.HTTPError:
        raise HTTPException(
            503, "the alerts service is unavailable", {"Retry-After": "5"}
        ) from None
    if resp.status_code in (401, 403):
        raise HTTPException(resp.status_code, "the alerts service refused this key")
    if resp.status_code != 200:
        raise HTTPException(502, f"the alerts service answered {resp.status_code}")
    alarms = resp.json().get("alarms", [])
    return {"alarms": alarms}
