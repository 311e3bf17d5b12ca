"""The gateway's gauges for ``GET /metrics``: uplink, broker, keys, outbox and serial modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from citysense.errors import CitysenseError
from edge import clock
from edge.metrics import Labels

if TYPE_CHECKING:
    from edge.service import Gateway


async def gateway_gauges(gw: Gateway) -> Mapping[str, Mapping[Labels, float]]:
    """Every gauge of the gateway at this moment (the outbox's ones only while it answers)."""
    out: dict[str, dict[Labels, float]] = {
        "citysense_edge_inflight_batches": {(): gw.uplink.inflight},
        "citysense_edge_mqtt_connected": {
            (): 1.0 if gw.link is not None and gw.link.connected.is_set() else 0.0
        },
    }
    if gw.keys is not None:
        out["citysense_edge_oscore_contexts_open"] = {(): gw.keys.open_contexts}
        out["citysense_edge_device_keys"] = {
            (("scheme", scheme),): n for scheme, n in gw.keys.schemes().items()
        }
        out["citysense_edge_device_auth_optional"] = {(): 0.0 if gw.trust.required else 1.0}
    if gw.dtls is not None:
        out["citysense_edge_dtls_sessions"] = {(): gw.dtls.states}
    try:
        stats = await gw.outbox.stats()
    except CitysenseError:
        return out
    out["citysense_edge_outbox_depth"] = {(): stats.depth}
    out["citysense_edge_outbox_bytes"] = {(): stats.used_bytes}
    age = 0.0 if stats.oldest_ms is None else max(0.0, (clock.now_ms() - stats.oldest_ms) / 1000)
    out["citysense_edge_outbox_oldest_age_seconds"] = {(): age}
    out["citysense_edge_next_seq"] = {(): float(await gw.outbox.next_seq())}
    out["citysense_edge_serial_module_up"] = {
        (("device", dev),): 1.0 if health["state"] == "ready" else 0.0
        for dev, health in gw.serial_health.items()
    }
    health_of = gw.serial_health.items()
    out["citysense_edge_serial_module_reconnects"] = {
        (("device", dev),): h["reconnects"] for dev, h in health_of
    }
    out["citysense_edge_serial_module_reboots"] = {
        (("device", dev),): h["reboots"] for dev, h in health_of
    }
    out["citysense_edge_serial_module_garbage_lines"] = {
        (("device", dev),): h["garbage_lines"] for dev, h in health_of
    }
    return out
