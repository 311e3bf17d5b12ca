"""What an operator's tools read from the API: a 503 always carries Retry-After, health and the
data routes agree when there is no store, and /metrics has its known series from the start."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from citysense.config import Settings
from dashboard_api.app import create_app
from tests.dashboard_api.conftest import KEYS, OPERATOR_KEY, ApiServer, MakeApi
from tests.servers import free_port


def test_health_503_carries_retry_after(make_api: MakeApi) -> None:
    api = make_api(
        "sqlite", influx=f"http://127.0.0.1:{free_port()}", influx_api="1", influx_timeout=2.0
    )
    with api.client() as c:
        r = c.get("/api/v1/health")
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) > 0


def test_no_store_answers_503_everywhere_health_does(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path / "nowhere"), api_keys=KEYS)
    api = ApiServer(settings, create_app(settings))
    api.start()
    try:
        with api.client(OPERATOR_KEY) as c:
            assert c.get("/api/v1/health").status_code == 503
            for path in (
                "/api/v1/districts",
                "/api/v1/devices",
                "/api/v1/environment/latest",
                "/api/v1/environment/aqi",
                "/api/v1/utility/leaks",
            ):
                r = c.get(path)
                assert r.status_code == 503, (path, r.status_code, r.text[:200])
                assert int(r.headers["Retry-After"]) > 0
    finally:
        api.stop()
    # a store folder whose store the ingestor has not written yet is an empty store: 200
    (tmp_path / "empty").mkdir()
    settings = replace(settings, state_dir=str(tmp_path / "empty"))
    api = ApiServer(settings, create_app(settings))
    api.start()
    try:
        with api.client(OPERATOR_KEY) as c:
            assert c.get("/api/v1/health").status_code == 200
            assert c.get("/api/v1/districts").status_code == 200
    finally:
        api.stop()


def test_metrics_has_every_routes_series_at_0_from_the_start(make_api: MakeApi) -> None:
    api = make_api("sqlite")
    with api.client() as c:
        text = c.get("/metrics").text
    assert (
        'citysense_api_requests_total{method="GET",route="/api/v1/districts",status="200"} 0'
        in (text)
    )
    assert "citysense_api_storage_errors_total 0" in text
