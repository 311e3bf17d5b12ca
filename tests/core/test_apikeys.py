"""The route-role and Retry-After pieces both HTTP services build their refusals from (pure)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

import pytest

from citysense.apikeys import required_role, retry_after, role


@pytest.mark.parametrize("needed", ["public", "viewer", "operator"])
def test_a_declared_role_is_read_back(needed: Literal["public", "viewer", "operator"]) -> None:
    assert required_role(SimpleNamespace(openapi_extra=role(needed))) == needed


@pytest.mark.parametrize(
    "route",
    [
        None,  # no route matched
        SimpleNamespace(),  # a route without openapi_extra
        SimpleNamespace(openapi_extra=None),
        SimpleNamespace(openapi_extra={"summary": "no role here"}),
        SimpleNamespace(openapi_extra={"x-role": "admin"}),  # not a role we know
    ],
)
def test_a_route_without_a_known_role_is_closed(route: object) -> None:
    assert required_role(route) is None


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_and_at_least_one(seconds: float, header: str) -> None:
    assert retry_after(seconds) == {"Retry-After": header}
