"""The service's own counters and latencies, exposed as Prometheus text on ``/metrics``.

An ASGI middleware records every HTTP request by its route template (``/api/v1/{domain}/
latest``, never the raw path), its method (one of :data:`METHODS`, anything else ``OTHER``)
and status code: every label value comes from a fixed set, so nothing a caller sends grows
``/metrics``. It also writes the access log: one line per request (method, route template,
status, key id -- never the key -- and duration), refused ones included.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("dashboard_api.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: int = 0
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1


class RequestMetrics:
    """Request counts per (method, route, status) and latency histograms per route."""

    def __init__(self, routes: Iterable[BaseRoute] = ()) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seed(routes)
        self.latency: dict[tuple[str, str], _Histogram] = defaultdict(_Histogram)
        self.rate_limited = 0
        self.storage_errors = 0
        self.auth_failed = 0
        self.auth_limited = 0

    def seed(self, routes: Iterable[BaseRoute]) -> None:
        """Every route's success series exists from the start, at 0 (Prometheus users expect
        known series before the first request)."""
        for route in routes:
            if isinstance(route, APIRoute):
                for method in sorted(route.methods or ()):
                    self.requests[(method, route.path, 200)] = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        self.latency[(method, route)].observe(seconds)

    def exposition(self) -> str:
        out = [
            "# HELP citysense_api_requests_total HTTP requests by route and status.",
            "# TYPE citysense_api_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(
                f'citysense_api_requests_total{{method="{method}",route="{_esc(route)}",'
                f'status="{status}"}} {n}'
            )
        out += [
            "# HELP citysense_api_request_seconds HTTP request latency by route.",
            "# TYPE citysense_api_request_seconds histogram",
        ]
        for (method, route), h in sorted(self.latency.items()):
            labels = f'method="{method}",route="{_esc(route)}"'
            for bound, count in zip(BUCKETS, h.counts, strict=True):
                out.append(f'citysense_api_request_seconds_bucket{{{labels},le="{bound}"}} {count}')
            out.append(f'citysense_api_request_seconds_bucket{{{labels},le="+Inf"}} {h.total}')
            out.append(f"citysense_api_request_seconds_sum{{{labels}}} {h.sum:.6f}")
            out.append(f"citysense_api_request_seconds_count{{{labels}}} {h.total}")
        out += [
            "# HELP citysense_api_rate_limited_total Requests refused with 429.",
            "# TYPE citysense_api_rate_limited_total counter",
            f"citysense_api_rate_limited_total {self.rate_limited}",
            "# HELP citysense_api_auth_failed_total Requests refused 401 (no or unknown key).",
            "# TYPE citysense_api_auth_failed_total counter",
            f"citysense_api_auth_failed_total {self.auth_failed}",
            "# HELP citysense_api_auth_limited_total Requests refused 429 after failed auth.",
            "# TYPE citysense_api_auth_limited_total counter",
            f"citysense_api_auth_limited_total {self.auth_limited}",
            "# HELP citysense_api_storage_errors_total Requests that failed on storage.",
            "# TYPE citysense_api_storage_errors_total counter",
            f"citysense_api_storage_errors_total {self.storage_errors}",
        ]
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsMiddleware:
    """Times each HTTP request and records it under its matched route template."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            if method not in METHODS:
                method = "OTHER"
            seconds = time.perf_counter() - started
            self.metrics.observe(method, name, status, seconds)
            principal = scope.get("state", {}).get("principal")
            access_log.info(
                "%s %s %d key=%s %.1fms",
                method,
                name,
                status,
                getattr(principal, "key_id", "-"),
                seconds * 1000,
            )
