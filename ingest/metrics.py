"""The ingestor's own counters, and a tiny HTTP server exposing them at ``/metrics``.

Prometheus text exposition (version 0.0.4). Counters only grow; gauges are read when
scraped. Single-threaded: updated and read on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the write-latency histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class IngestMetrics:
    """Counters of one ingestor process."""

    def __init__(self) -> None:
        self.messages = 0
        self.readings_written = 0
        self.points_written = 0
        self.writes = 0
        self.retries = 0
        self.repeats_skipped = 0
        self.dead_letters: Counter[str] = Counter()
        self.latency_buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.seq_gaps: Callable[[], int] = lambda: 0
        self.seq_repeats: Callable[[], int] = lambda: 0
        self.in_flight: Callable[[], int] = lambda: 0

    def observe_write(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1

    def render(self) -> str:
        """The Prometheus text exposition of every counter."""
        out: list[str] = []

        def metric(name: str, kind: str, help: str, value: float | int) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")
            out.append(f"{name} {value}")

        metric(
            "citysense_ingest_messages_total", "counter", "MQTT messages received", self.messages
        )
        metric(
            "citysense_ingest_readings_written_total",
            "counter",
            "readings stored",
            self.readings_written,
        )
        metric(
            "citysense_ingest_points_written_total", "counter", "points stored", self.points_written
        )
        metric("citysense_ingest_writes_total", "counter", "storage writes", self.writes)
        metric(
            "citysense_ingest_write_retries_total",
            "counter",
            "storage writes retried",
            self.retries,
        )
        metric(
            "citysense_ingest_repeats_skipped_total",
            "counter",
            "re-sent batches already stored, not written again",
            self.repeats_skipped,
        )
        metric("citysense_ingest_seq_gaps_total", "counter", "missing seq", self.seq_gaps())
        metric("citysense_ingest_seq_repeats_total", "counter", "repeated seq", self.seq_repeats())
        metric(
            "citysense_ingest_in_flight_messages",
            "gauge",
            "messages received and not yet acknowledged",
            self.in_flight(),
        )
        name = "citysense_ingest_dead_letters_total"
        out.append(f"# HELP {name} dead letters kept, by reason")
        out.append(f"# TYPE {name} counter")
        for reason, n in sorted(self.dead_letters.items()):
            out.append(f'{name}{{reason="{reason}"}} {n}')
        name = "citysense_ingest_write_seconds"
        out.append(f"# HELP {name} storage write latency")
        out.append(f"# TYPE {name} histogram")
        for bound, n in zip(LATENCY_BUCKETS, self.latency_buckets, strict=True):
            out.append(f'{name}_bucket{{le="{bound}"}} {n}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.latency_count}')
        out.append(f"{name}_sum {self.latency_sum:.6f}")
        out.append(f"{name}_count {self.latency_count}")
        return "\n".join(out) + "\n"


async def _handle(
    render: Callable[[], str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if path.split(b"?")[0] == b"/metrics":
            body = render().encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        else:
            body = b"not found\n"
            head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def start_metrics_server(
    render: Callable[[], str], host: str, port: int
) -> asyncio.Server | None:
    """Serve ``/metrics`` on ``host:port``; logs and returns ``None`` if the port is taken."""
    try:
        return await asyncio.start_server(
            lambda r, w: _handle(render, r, w), host, port, reuse_address=True
        )
    except OSError as exc:
        log.error("cannot serve /metrics on %s:%s: %s", host, port, exc)
        return None
