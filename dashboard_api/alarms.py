"""Active alarms on the dashboard: ``GET /api/v1/alarms`` asks ``citysense alerts``
(``--alerts URL``) server side, with the caller's own key, so the page loads only from this
origin and the alerts service applies the same roles. Without an alerts service the answer
is an empty list with ``"configured": false`` (the page then hides its panel); 503 when it
cannot be reached."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from dashboard_api.auth import CurrentPrincipal, role
from dashboard_api.models import ErrorBody

router = APIRouter()
TIMEOUT_S = 5.0
_ERR: dict[str, Any] = {"model": ErrorBody}
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "no or unknown API key"},
    403: {**_ERR, "description": "the role does not allow this"},
    429: {**_ERR, "description": "rate limit exceeded (see Retry-After)"},
    502: {**_ERR, "description": "the alerts service answered with an error"},
    503: {**_ERR, "description": "the alerts service is unreachable"},
}


class ActiveAlarms(BaseModel):
    alarms: list[dict[str, Any]] = Field(
        description="raised and acknowledged alarms, most severe first (INTERFACES.md 10.6)"
    )
    configured: bool = Field(description="whether this API was given an alerts service")


@router.get(
    "/api/v1/alarms",
    openapi_extra=role("viewer"),
    response_model=ActiveAlarms,
    responses=RESPONSES,
    summary="active alarms from citysense alerts (most severe first)",
)
async def active_alarms(request: Request, principal: CurrentPrincipal) -> ActiveAlarms:
    base: str | None = getattr(request.app.state, "alerts_url", None)
    if not base:
        return ActiveAlarms(alarms=[], configured=False)
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
    try:
        alarms = resp.json()["alarms"]
    except (ValueError, KeyError, TypeError):
        raise HTTPException(502, "the alerts service answered something else") from None
    return ActiveAlarms(alarms=alarms, configured=True)
