"""A viewer sees district-level data only, on every route: the test walks every route the API
serves (its own route tables, not a list kept here) with the viewer key and asserts that no
device id and no site id of the city appears in any answer. Real uvicorn over the known city."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute

from citysense.catalog import DOMAINS, METRICS
from dashboard_api.alarms import router as alarms_router
from dashboard_api.quality_routes import router as quality_router
from dashboard_api.routes import router
from dashboard_api.viewer import alarms as viewer_alarms
from tests.dashboard_api.citydata import DEVICES
from tests.dashboard_api.conftest import OPERATOR_KEY, VIEWER_KEY, MakeApi

ROUTE_TABLES = (router, alarms_router, quality_router)


def viewer_urls() -> list[str]:
    """Every GET route a viewer may call, with each path parameter filled in every way."""
    urls: list[str] = []
    for table in ROUTE_TABLES:
        for route in table.routes:
            if not isinstance(route, APIRoute) or "GET" not in route.methods:
                continue
            if (route.openapi_extra or {}).get("x-role") == "operator":
                continue
            paths = [route.path]
            if "{domain}" in route.path:
                paths = [route.path.replace("{domain}", d) for d in DOMAINS]
            if "{name}" in route.path:
                paths = [route.path.replace("{name}", n) for n in ("app.js", "style.css")]
            for path in paths:
                if path.endswith("/series"):
                    domain = path.split("/")[3]
                    metric = next(m for m, spec in METRICS.items() if spec.domain == domain)
                    urls += [f"{path}?metric={metric}", f"{path}?metric={metric}&group_by=district"]
                else:
                    urls.append(path)
    return urls


def test_the_walk_covers_the_routes_viewers_use() -> None:
    urls = viewer_urls()
    for expected in (
        "/api/v1/environment/latest",
        "/api/v1/utility/series?metric=water_volume",
        "/api/v1/traffic/congestion",
        "/api/v1/utility/leaks",
        "/api/v1/environment/aqi",
        "/api/v1/districts",
        "/api/v1/alarms",
        "/api/v1/environment/forecast",
    ):
        assert any(u.startswith(expected) for u in urls), expected


def test_a_viewer_sees_no_device_and_no_site_on_any_route(make_api: MakeApi) -> None:
    api = make_api("sqlite")
    devices = {d.device for d in DEVICES}
    sites = {d.site for d in DEVICES}
    pattern = re.compile(
        r'"('
        + "|".join(re.escape(x) for x in sorted(devices | sites, key=len, reverse=True))
        + ')"'
    )
    answered = 0
    with api.client(VIEWER_KEY) as viewer, api.client(OPERATOR_KEY) as operator:
        for url in viewer_urls():
            r = viewer.get(url)
            assert r.status_code in (200, 409), (url, r.status_code, r.text[:300])
            if url.startswith("/static/"):
                continue
            leaked = set(pattern.findall(r.text))
            assert not leaked, f"{url} shows a viewer {sorted(leaked)[:5]}"
            answered += r.status_code == 200
        # the same answers carry device-level data for an operator: the walk can fail
        latest = operator.get("/api/v1/environment/latest").text
        assert pattern.search(latest)
    assert answered >= 15


def test_the_viewers_latest_is_per_district(make_api: MakeApi) -> None:
    api = make_api("sqlite")
    with api.client(VIEWER_KEY) as c:
        body = c.get("/api/v1/environment/latest").json()
    assert body["devices"] == []
    districts = {(d["district"], d["kind"]) for d in body["districts"]}
    assert districts and all(k == "air_station" for _, k in districts)
    pm25 = body["districts"][0]["values"]["pm25"]
    assert pm25["min"] <= pm25["value"] <= pm25["max"] and pm25["devices"] >= 1


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/environment/latest?site=s1",
        "/api/v1/environment/series?metric=pm25&site=s1",
        "/api/v1/environment/series?metric=pm25&group_by=site",
    ],
)
def test_site_level_filters_are_for_operators(make_api: MakeApi, url: str) -> None:
    api = make_api("sqlite")
    with api.client(VIEWER_KEY) as c:
        r = c.get(url)
        assert r.status_code == 403 and "viewer" in r.json()["detail"]
    with api.client(OPERATOR_KEY) as c:
        assert c.get(url).status_code == 200


def test_viewers_get_alarms_about_places_without_evidence() -> None:
    alarms = [
        {"id": "1", "subject": {"district": "jinshui"}, "evidence": {"device": "aq-j1"}},
        {"id": "2", "subject": {"device": "aq-j1"}, "evidence": {}},
        {"id": "3", "subject": {"site": "s1"}},
        {"id": "4", "subject": {"gateway": "gw-01"}, "evidence": {"x": 1}},
    ]
    assert viewer_alarms(alarms) == [
        {"id": "1", "subject": {"district": "jinshui"}},
        {"id": "4", "subject": {"gateway": "gw-01"}},
    ]
