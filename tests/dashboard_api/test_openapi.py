"""schemathesis against ``/openapi.json``, in process: generated requests (valid and invalid)
to every operation never get a 5xx, and every response matches its documented schema,
status code and content type."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from citysense.config import Settings
from dashboard_api.app import create_app
from tests.dashboard_api.citydata import registry_csv, write_sqlite
from tests.dashboard_api.conftest import END, SAMPLES


@pytest.fixture
def api_schema(tmp_path: Path) -> schemathesis.BaseSchema:
    write_sqlite(tmp_path / "timeseries.sqlite3", SAMPLES)
    app = create_app(
        Settings(
            state_dir=str(tmp_path),
            registry=str(registry_csv(tmp_path / "registry.csv")),
            rate_limit=1_000_000,
        ),
        clock=lambda: END / 1000,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_conformance(api_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 13
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            # /health says 503 (documented, with Retry-After) while the latest-value table is
            # primed at start; every other operation must never answer 5xx
            health = case.operation.path == "/api/v1/health"
            case.call_and_validate(checks=CHECKS[1:] if health else CHECKS)

        check()


def test_openapi_document_lists_every_endpoint(api_schema: schemathesis.BaseSchema) -> None:
    paths = set(api_schema.raw_schema["paths"])
    assert paths == {
        "/api/v1/health",
        "/api/v1/catalog",
        "/api/v1/districts",
        "/api/v1/devices",
        "/api/v1/{domain}/latest",
        "/api/v1/{domain}/series",
        "/api/v1/environment/aqi",
        "/api/v1/traffic/congestion",
        "/api/v1/utility/leaks",
        "/api/v1/alarms",
        "/api/v1/quality",
        "/api/v1/environment/forecast",
        "/metrics",
    }
    series = api_schema.raw_schema["paths"]["/api/v1/{domain}/series"]["get"]
    assert {"400", "401", "403", "422", "429", "503"} <= set(series["responses"])
    names = {p["name"] for p in series["parameters"]}
    assert {"metric", "start", "end", "every", "agg", "group_by", "district", "device"} <= names
