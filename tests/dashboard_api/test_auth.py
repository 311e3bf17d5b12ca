"""Who may call what: the auth matrix over every route, deny by default, the rate limit."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from citysense.config import Settings
from dashboard_api.app import create_app
from dashboard_api.auth import ROLE_KEY, KeyStore, RateLimiter
from tests.dashboard_api.conftest import OPERATOR_KEY, VIEWER_KEY, ApiServer, MakeApi

#: a request per route that succeeds for a caller allowed to make it
SAMPLE_REQUEST: dict[str, str] = {
    "/api/v1/health": "/api/v1/health",
    "/api/v1/catalog": "/api/v1/catalog",
    "/api/v1/districts": "/api/v1/districts",
    "/api/v1/devices": "/api/v1/devices",
    "/api/v1/{domain}/latest": "/api/v1/traffic/latest",
    "/api/v1/{domain}/series": "/api/v1/environment/series?metric=pm25&every=1h",
    "/api/v1/environment/aqi": "/api/v1/environment/aqi",
    "/api/v1/traffic/congestion": "/api/v1/traffic/congestion",
    "/api/v1/utility/leaks": "/api/v1/utility/leaks",
    "/api/v1/alarms": "/api/v1/alarms",
    "/api/v1/quality": "/api/v1/quality",
    "/api/v1/environment/forecast": "/api/v1/environment/forecast",
    "/metrics": "/metrics",
    "/": "/",
    "/static/{name}": "/static/app.js",
}
EXPECTED_ROLE = {
    "/api/v1/health": "public",
    "/": "public",
    "/static/{name}": "public",
    "/api/v1/devices": "operator",
    "/api/v1/quality": "operator",
    "/metrics": "operator",
}
#: what an allowed caller gets where it is not 200: the known city holds one day, too little
#: history to forecast
ALLOWED_ANSWER = {"/api/v1/environment/forecast": 409}


def all_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Every route, descending into included routers (FastAPI keeps them nested)."""
    out: list[BaseRoute] = []
    for r in routes:
        nested = getattr(r, "original_router", None)
        if nested is not None:
            out += all_routes(nested.routes)
        else:
            out.append(r)
    return out


def api_routes(app: FastAPI) -> list[APIRoute]:
    return [r for r in all_routes(app.routes) if isinstance(r, APIRoute)]


def test_every_route_declares_a_role_and_is_in_the_matrix() -> None:
    app = create_app(Settings())
    assert len(api_routes(app)) == len(SAMPLE_REQUEST)
    for route in api_routes(app):
        declared = (route.openapi_extra or {}).get(ROLE_KEY)
        assert declared == EXPECTED_ROLE.get(route.path, "viewer"), route.path
        assert route.path in SAMPLE_REQUEST, f"{route.path} is missing from the auth matrix"
    others = [r for r in all_routes(app.routes) if not isinstance(r, APIRoute)]
    assert all(isinstance(r, Route) for r in others)
    others = [r.path for r in others if isinstance(r, Route)]
    assert set(others) == {"/openapi.json"}


def test_a_route_without_a_role_is_denied(tmp_path: object) -> None:
    app = create_app(Settings())

    @app.get("/api/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {"secret": "yes"}

    async def main() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/api/v1/forgotten")
            return r.status_code

    assert asyncio.run(main()) == 403


@pytest.fixture
def keyed_api(make_api: MakeApi) -> ApiServer:
    return make_api("sqlite")


def expected_status(role: str, caller: str) -> int:
    if role == "public":
        return 200
    if caller in ("none", "wrong"):
        return 401
    if role == "operator" and caller == "viewer":
        return 403
    return 200


def test_auth_matrix_on_every_route(keyed_api: ApiServer) -> None:
    callers = {
        "none": None,
        "wrong": "not-a-key-at-all-123",
        "viewer": VIEWER_KEY,
        "operator": OPERATOR_KEY,
    }
    app = keyed_api.app
    for route in api_routes(app):
        role = (route.openapi_extra or {})[ROLE_KEY]
        url = SAMPLE_REQUEST[route.path]
        for caller, key in callers.items():
            with keyed_api.client(key) as c:
                r = c.get(url)
            expected = expected_status(role, caller)
            if expected == 200:
                expected = ALLOWED_ANSWER.get(route.path, 200)
            assert r.status_code == expected, (url, caller, r.text[:200])
            if r.status_code == 401:
                assert r.headers["WWW-Authenticate"] == "Bearer"
    # the wrong scheme is no key at all
    with httpx.Client(base_url=keyed_api.url) as c:
        r = c.get("/api/v1/catalog", headers={"Authorization": f"Basic {OPERATOR_KEY}"})
        assert r.status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/environment/latest?device=aq-j1",
        "/api/v1/environment/series?metric=pm25&device=aq-j1",
        "/api/v1/environment/series?metric=pm25&group_by=device",
    ],
)
def test_viewers_see_district_level_data_only(keyed_api: ApiServer, url: str) -> None:
    with keyed_api.client(VIEWER_KEY) as c:
        r = c.get(url)
        assert r.status_code == 403 and "viewer" in r.json()["detail"]
    with keyed_api.client(OPERATOR_KEY) as c:
        assert c.get(url).status_code == 200


def test_open_api_without_keys_warns(make_api: MakeApi, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        api = make_api("sqlite", api_keys=())
    assert any("open to anyone" in r.getMessage() for r in caplog.records)
    with api.client(None) as c:
        assert c.get("/api/v1/devices").status_code == 200


def test_keys_are_kept_hashed() -> None:
    store = KeyStore({"secret-key-123": "operator"})
    assert "secret-key-123" not in repr(store.__dict__)
    found = store.lookup("secret-key-123")
    assert found is not None and found.role == "operator"
    assert "secret" not in found.key_id
    assert store.lookup("secret-key-124") is None


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.take("k") == 0 for _ in range(60))
    wait = limiter.take("k")
    assert 0 < wait <= 1.0
    now[0] += 1.0
    assert limiter.take("k") == 0
    assert limiter.take("other") == 0


def test_rate_limit_429_and_health_stays_up(make_api: MakeApi) -> None:
    api = make_api("sqlite", rate_limit=20)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer(_: int) -> None:
        with api.client(VIEWER_KEY) as c:
            for _ in range(20):
                r = c.get("/api/v1/catalog")
                with lock:
                    statuses.append(r.status_code)
                if r.status_code == 429:
                    assert int(r.headers["Retry-After"]) >= 1

    def health(_: int) -> int:
        with api.client(None) as c:
            return c.get("/api/v1/health").status_code

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        loads = [pool.submit(hammer, i) for i in range(3)]
        checks = list(pool.map(health, range(10)))
        for f in loads:
            f.result()
    elapsed = time.monotonic() - started
    # a burst of 20, then one more every 3 s (however slow the machine made this run)
    allowed = 20 + math.ceil(elapsed / 3) + 1
    assert statuses.count(200) <= allowed
    assert statuses.count(429) >= 60 - allowed and statuses.count(429) > 0
    assert checks == [200] * 10
    # another key has its own budget
    with api.client(OPERATOR_KEY) as c:
        assert c.get("/api/v1/catalog").status_code == 200
        assert "citysense_api_rate_limited_total" in c.get("/metrics").text
