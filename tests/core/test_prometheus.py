"""The one Prometheus renderer and /metrics server, on real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.error
import urllib.request

import pytest

from citysense import prometheus


def test_render_counters_gauges_histograms() -> None:
    h = prometheus.Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    text = prometheus.render(
        [
            prometheus.counter("a_total", "things\nseen", {(("k", 'v"\\'),): 1234567}),
            prometheus.gauge("b", "a gauge", 0.25),
            prometheus.histogram("c_seconds", "latency", h),
        ]
    )
    assert text.splitlines() == [
        "# HELP a_total things\\nseen",
        "# TYPE a_total counter",
        'a_total{k="v\\"\\\\"} 1234567',
        "# HELP b a gauge",
        "# TYPE b gauge",
        "b 0.25",
        "# HELP c_seconds latency",
        "# TYPE c_seconds histogram",
        'c_seconds_bucket{le="0.1"} 1',
        'c_seconds_bucket{le="1"} 2',
        'c_seconds_bucket{le="+Inf"} 3',
        "c_seconds_sum 5.55",
        "c_seconds_count 3",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (3.0, "3"), (1e20, "1e+20"), (0.1, "0.1"), (float("inf"), "+Inf"), (True, "1")],
)
def test_numbers(value: float, text: str) -> None:
    assert prometheus.render([prometheus.gauge("x", "x", value)]).splitlines()[-1] == f"x {text}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_routes_and_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        port = _free_port()

        async def text() -> str:
            return prometheus.render([prometheus.counter("up_total", "up", 1)])

        async def health() -> tuple[int, str, bytes]:
            return 200, "application/json", b'{"status":"ok"}'

        routes = {"/metrics": prometheus.metrics_route(text), "/health": health}
        server = await prometheus.serve_http(routes, "127.0.0.1", port)
        assert server is not None

        def get(path: str) -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.headers["Content-Type"], r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, "", b""

        status, ctype, body = await asyncio.to_thread(get, "/metrics?x=1")
        assert (status, ctype) == (200, prometheus.CONTENT_TYPE)
        assert b"up_total 1" in body
        assert await asyncio.to_thread(get, "/health") == (
            200,
            "application/json",
            b'{"status":"ok"}',
        )
        assert (await asyncio.to_thread(get, "/nope"))[0] == 404
        # the same port again: logged, None, no exception -- the service goes on
        caplog.set_level(logging.ERROR, logger="citysense.prometheus")
        assert await prometheus.serve_http(routes, "127.0.0.1", port) is None
        assert "cannot serve /metrics" in caplog.text
        await prometheus.close_server(server)

    asyncio.run(main())
