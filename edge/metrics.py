"""The gateway's own counters and gauges, and a tiny HTTP server for ``GET /metrics``.

Prometheus text exposition (version 0.0.4). Counters only grow; gauges are computed when the
endpoint is scraped (``gauges`` callback), so the hot path pays one dict update per event.
The server binds where it is told (default ``127.0.0.1:9101``) and answers only ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

HELP: Mapping[str, str] = {
    "citysense_edge_uplinks_total": "CoAP uplinks by answer code",
    "citysense_edge_serial_datagrams_total": "serial datagrams by outcome",
    "citysense_edge_readings_accepted_total": "readings committed to the outbox",
    "citysense_edge_rejected_total": "refused uplinks by reason",
    "citysense_edge_outbox_evicted_total": "readings evicted by the outbox quota policy",
    "citysense_edge_batches_sent_total": "batches published for the first time",
    "citysense_edge_batches_resent_total": "batches published again with the same seq",
    "citysense_edge_batches_confirmed_total": "batches confirmed on .../stored",
    "citysense_edge_mqtt_reconnects_total": "MQTT connections established after the first",
    "citysense_edge_downlinks_total": "downlink commands by state reported on .../ack",
    "citysense_edge_unknown_modules_total": "radio reports of a module IMEI not in the registry",
    "citysense_edge_device_uplinks_total": "uplinks by authentication scheme and outcome",
    "citysense_edge_dtls_handshakes_total": "DTLS handshakes by outcome",
    "citysense_edge_dtls_sessions": "DTLS session states held",
    "citysense_edge_oscore_contexts_open": "OSCORE security contexts loaded",
    "citysense_edge_device_keys": "device keys loaded, by scheme",
    "citysense_edge_device_auth_optional": "1 when devices without a key are accepted",
    "citysense_edge_outbox_depth": "readings held in the outbox",
    "citysense_edge_outbox_oldest_age_seconds": "age of the oldest reading in the outbox",
    "citysense_edge_outbox_bytes": "bytes used by the outbox database",
    "citysense_edge_inflight_batches": "batches published and awaiting confirmation",
    "citysense_edge_mqtt_connected": "1 while connected to the broker",
    "citysense_edge_serial_module_up": "1 while a serial module is attached and ready",
    "citysense_edge_serial_module_reconnects": "times a serial module's port was reopened",
    "citysense_edge_serial_module_reboots": "module reboots seen",
    "citysense_edge_serial_module_garbage_lines": "unparseable lines from a module",
}


class Metrics:
    """Counters by name and labels; ``render`` adds the gauges of the moment."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        series = self.counters.setdefault(name, {})
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> float:
        return self.counters.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def total(self, name: str) -> float:
        return sum(self.counters.get(name, {}).values())

    def render(self, gauges: Mapping[str, Mapping[Labels, float]]) -> str:
        lines: list[str] = []
        for kind, table in (("counter", self.counters), ("gauge", gauges)):
            for name in sorted(table):
                lines.append(f"# HELP {name} {HELP.get(name, name)}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in sorted(table[name].items()):
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(
        '{}="{}"'.format(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in labels
    )
    return "{" + inner + "}"


GaugeSource = Callable[[], Awaitable[Mapping[str, Mapping[Labels, float]]]]


async def serve_metrics(
    metrics: Metrics, gauges: GaugeSource, host: str, port: int
) -> asyncio.Server:
    """Start the ``/metrics`` endpoint; the caller closes the returned server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) >= 2 and line[0] == "GET" and line[1].split("?")[0] == "/metrics":
                body = metrics.render(await gauges()).encode()
                head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found\n"
                head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(
                f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
