"""The gateway's own counters and gauges, rendered by :mod:`citysense.prometheus`.

Counters only grow; gauges are computed when the endpoint is scraped (a ``gauges``
callback), so the hot path pays one dict update per event.
"""

from __future__ import annotations

from collections.abc import Mapping

from citysense import prometheus
from citysense.prometheus import Labels

HELP: Mapping[str, str] = {
    "citysense_edge_uplinks_total": "CoAP uplinks by answer code",
    "citysense_edge_serial_datagrams_total": "serial datagrams by outcome",
    "citysense_edge_readings_accepted_total": "readings committed to the outbox",
    "citysense_edge_rejected_total": "refused uplinks by reason",
    "citysense_edge_outbox_evicted_total": "readings evicted by the outbox quota policy",
    "citysense_edge_batches_sent_total": "batches published for the first time",
    "citysense_edge_batches_resent_total": "batches published again with the same seq",
    "citysense_edge_batches_confirmed_total": "batches confirmed on .../stored",
    "citysense_edge_confirmations_ignored_total": (
        "seqs confirmed on .../stored that were not in flight (ignored, nothing deleted)"
    ),
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
    "citysense_edge_next_seq": "the seq the next batch will carry (grows, never reused)",
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
        return prometheus.render(
            [
                *(
                    prometheus.counter(name, HELP.get(name, name), self.counters[name])
                    for name in sorted(self.counters)
                ),
                *(
                    prometheus.gauge(name, HELP.get(name, name), gauges[name])
                    for name in sorted(gauges)
                ),
            ]
        )
