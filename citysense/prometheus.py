"""Prometheus text exposition (version 0.0.4) and the small HTTP server that serves it.

One renderer and one server for every service:

* :class:`Family` is one metric (name, type, help and its samples); :func:`render` writes
  families as exposition text. :func:`counter`, :func:`gauge` and :func:`histogram` build them
  from label -> value tables; :class:`Histogram` accumulates observations.
* :func:`serve_http` serves a small route table (``{"/metrics": handler}``; a service may add
  ``/health`` or others) on one address. One rule for a taken or unusable address: it is
  logged and ``None`` returned -- the service goes on doing its real job without the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
Kind = Literal["counter", "gauge", "histogram"]

#: Default upper bounds (seconds) of latency histograms.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass(frozen=True, slots=True)
class Sample:
    suffix: str  #: appended to the family name (``_bucket``, ``_sum``...), usually empty
    labels: Labels
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: Kind
    help: str
    samples: Sequence[Sample] = ()


@dataclass(slots=True)
class Histogram:
    """Cumulative bucket counts, sum and count of observations."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1

    def samples(self, labels: Labels = ()) -> list[Sample]:
        out = [
            Sample("_bucket", (*labels, ("le", _number(bound))), n)
            for bound, n in zip(self.bounds, self.counts, strict=True)
        ]
        out.append(Sample("_bucket", (*labels, ("le", "+Inf")), self.count))
        out.append(Sample("_sum", labels, self.sum))
        out.append(Sample("_count", labels, self.count))
        return out


def counter(name: str, help: str, series: Mapping[Labels, float] | float) -> Family:
    return Family(name, "counter", help, _samples(series))


def gauge(name: str, help: str, series: Mapping[Labels, float] | float) -> Family:
    return Family(name, "gauge", help, _samples(series))


def histogram(name: str, help: str, series: Mapping[Labels, Histogram] | Histogram) -> Family:
    table = {(): series} if isinstance(series, Histogram) else series
    samples = [s for labels, h in sorted(table.items()) for s in h.samples(labels)]
    return Family(name, "histogram", help, samples)


def _samples(series: Mapping[Labels, float] | float) -> list[Sample]:
    if isinstance(series, int | float):
        return [Sample("", (), series)]
    return [Sample("", labels, value) for labels, value in sorted(series.items())]


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families`` (in the order given)."""
    lines: list[str] = []
    for f in families:
        lines.append(f"# HELP {f.name} {_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for s in f.samples:
            lines.append(f"{f.name}{s.suffix}{_labels(s.labels)} {_number(s.value)}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Integers exactly (a counter of 1234567 is not ``1.23457e+06``), floats round-trip."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if value == value and value not in (float("inf"), float("-inf")) and value.is_integer():
        return str(int(value)) if abs(value) < 2**53 else repr(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(
        '{}="{}"'.format(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in labels
    )
    return "{" + inner + "}"


# ---------------------------------------------------------------------------- the server

#: A route: returns (status, content type, body).
Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
#: How long a client may take to send its request head, seconds.
REQUEST_TIMEOUT = 10.0


def metrics_route(text: Callable[[], Awaitable[str]]) -> Handler:
    """A ``/metrics`` handler from a coroutine that renders the exposition text."""

    async def handle() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, (await text()).encode()

    return handle


async def serve_http(
    routes: Mapping[str, Handler], host: str, port: int, *, what: str = "/metrics"
) -> asyncio.Server | None:
    """Serve ``GET`` on the paths of ``routes`` at ``host:port``.

    When the address is taken or unusable the error is logged and ``None`` returned: the
    service keeps serving its real job without this endpoint. The caller closes the server
    (:func:`close_server`).
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            method = parts[0] if parts else ""
            route = routes.get(parts[1].split("?")[0]) if len(parts) >= 2 else None
            if route is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            else:
                status, ctype, body = await route()
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:
            log.exception("%s request failed", what)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.start_server(handle, host, port, reuse_address=True)
    except OSError as exc:
        log.error(
            "cannot serve %s on %s:%s (%s); going on without it", what, host, port, exc.strerror
        )
        return None


async def close_server(server: asyncio.Server | None, grace: float = 2.0) -> None:
    if server is None:
        return
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), grace)
