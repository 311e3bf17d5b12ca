"""The demo's live counts: its status line, and the Prometheus figures it scrapes from its
own services."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TextIO

from mqtt_broker.broker import Broker
from simulators.fleet import Counters

#: Seconds between status lines when the output is not a terminal.
STATUS_EVERY = 5.0
#: Seconds between updates of the status line on a terminal.
STATUS_EVERY_TTY = 1.0
#: How long a service's /metrics may take to answer, seconds.
SCRAPE_TIMEOUT = 2.0

_LABELS = (
    ("sent", "uplinks sent"),
    ("acked", "acknowledged"),
    ("accepted", "readings at the gateway"),
    ("stored", "distinct readings stored"),
    ("mqtt", "MQTT messages"),
)


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels} value`` lines -> {name: sum of values}; comments ignored."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0].strip()
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


async def scrape(host: str, port: int) -> dict[str, float]:
    """GET ``/metrics`` of one of our own services; empty when it does not answer."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return {}
    _, _, body = data.partition(b"\r\n\r\n")
    return parse_prometheus(body.decode("utf-8", "replace"))


class Status:
    """The live counts line."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._open_line = False
        self._last_line = -STATUS_EVERY

    def show(self, text: str, paced: bool = False) -> None:
        """On a terminal, rewrite the line; elsewhere print one at most every few seconds
        (``paced``: the caller already calls at most that often)."""
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self._open_line = True
        else:
            now = time.monotonic()
            if not paced and now - self._last_line < STATUS_EVERY * 0.9:
                return
            self._last_line = now
            self.out.write(text + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        """A line of its own (ends any status line being rewritten)."""
        self.end()
        self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        if self._open_line:
            self.out.write("\n")
            self.out.flush()
            self._open_line = False


async def gather_counts(
    fleet: Counters | None,
    edge_metrics: tuple[str, int] | None,
    ingest_metrics: tuple[str, int] | None,
    broker: Broker | None,
) -> dict[str, float]:
    """The figures of the status line: the fleet's counters, the gateway's and the ingestor's
    /metrics, the embedded broker's messages (each only where there is one)."""
    counts: dict[str, float] = {}
    if fleet is not None:
        counts["sent"] = float(fleet.sent)
        counts["acked"] = float(fleet.acknowledged)
    if edge_metrics is not None:
        m = await scrape(*edge_metrics)
        if "citysense_edge_readings_accepted_total" in m:
            counts["accepted"] = m["citysense_edge_readings_accepted_total"]
    if ingest_metrics is not None:
        m = await scrape(*ingest_metrics)
        if "citysense_ingest_readings_written_total" in m:
            counts["stored"] = m["citysense_ingest_readings_written_total"]
    if broker is not None:
        counts["mqtt"] = float(broker.metrics()["mqtt_broker_messages_received"])
    return counts


def status_line(elapsed: float, counts: dict[str, float]) -> str:
    parts = [f"{elapsed:6.0f} s"]
    for key, label in _LABELS:
        if key in counts:
            parts.append(f"{label} {counts[key]:,.0f}")
    return " | ".join(parts)


def summary_line(stopped: str, backfilled: int, counts: dict[str, float]) -> str:
    figures = "".join(f", {label} {counts[key]:,.0f}" for key, label in _LABELS if key in counts)
    return f"demo stopped ({stopped}): history {backfilled:,} readings{figures}"
