"""Time and duration parameters, and the /metrics exposition format (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.metrics import RequestMetrics
from dashboard_api.parameters import (
    ParameterError,
    format_duration,
    parse_duration,
    parse_time,
    rfc3339,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1773144000000", 1_773_144_000_000),
        ("2026-03-10T12:00:00Z", 1_773_144_000_000),
        ("2026-03-10T20:00:00+08:00", 1_773_144_000_000),
        ("2026-03-10T12:00:00.250Z", 1_773_144_000_250),
        (" 0 ", 0),
    ],
)
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text, "start") == ms


@pytest.mark.parametrize(
    "text",
    ["", "now", "2026-03-10T12:00:00", "-1", "99999999999999999", "2300-01-01T00:00:00Z", "1e12"],
)
def test_bad_times_name_the_parameter(text: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_time(text, "end")
    assert info.value.parameter == "end" and str(info.value).startswith("end:")


@given(st.integers(min_value=0, max_value=7_258_118_399_999))
def test_rfc3339_round_trips(ms: int) -> None:
    text = rfc3339(ms)
    assert text.endswith("Z")
    assert parse_time(text, "t") == ms
    assert datetime.fromisoformat(text).tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1s", 1000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("2w", 1_209_600_000),
        ("1500ms", 1500),
        ("1000000us", 1000),
        ("1000000000ns", 1000),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text, "every") == ms


@pytest.mark.parametrize("text", ["1ns", "999ms", "0s", "5", "m", "1.5h", "-1h", "1y", "1h30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_duration(text, "every")
    assert info.value.parameter == "every"


def test_duration_upper_bound_and_formatting() -> None:
    with pytest.raises(ParameterError, match="at most 1w"):
        parse_duration("8d", "window", max_ms=7 * 86_400_000)
    assert [format_duration(ms) for ms in (1000, 90_000, 3_600_000, 86_400_000, 1500)] == [
        "1s",
        "90s",
        "1h",
        "1d",
        "1500ms",
    ]


_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"\\]*(\\.[^"\\]*)*",?)*\})? -?[0-9.e+]+$')


def test_metrics_exposition_is_prometheus_text() -> None:
    m = RequestMetrics()
    m.observe("GET", "/api/v1/{domain}/latest", 200, 0.012)
    m.observe("GET", "/api/v1/{domain}/latest", 200, 0.3)
    m.observe("GET", 'odd"route', 404, 0.001)
    text = m.exposition()
    for line in text.splitlines():
        assert line.startswith("# ") or _SAMPLE.match(line), line
    assert (
        'citysense_api_requests_total{method="GET",route="/api/v1/{domain}/latest",status="200"} 2'
        in text
    )
    assert 'le="0.025"} 1' in text and 'le="+Inf"} 2' in text
    assert 'route="odd\\"route"' in text
