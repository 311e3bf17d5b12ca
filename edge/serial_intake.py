"""Serial sources: datagrams and radio figures of the cellular modules, into the gateway.

Each ``--serial`` module runs in :func:`run_serial`, restarted with back-off when it fails;
its datagrams take the same path as CoAP uplinks, its radio figures become health readings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from citysense.backoff import Backoff
from citysense.config import parse_serial
from citysense.errors import RetryableError
from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON
from edge import clock, coap_site
from edge.intake import UplinkRefused
from firmware_bridge.source import Datagram, RadioReport, SerialSource, new_health

if TYPE_CHECKING:
    from edge.service import Gateway

#: The gateway's log: these lines belong to the service.
log = logging.getLogger("edge.service")


def content_format_of(payload: bytes) -> int | None:
    """SenML JSON (first non-space byte ``[``) or CBOR (major type 4) of a serial datagram."""
    stripped = payload.lstrip()
    if stripped[:1] == b"[":
        return CF_SENML_JSON
    if payload[:1] and payload[0] >> 5 == 4:
        return CF_SENML_CBOR
    return None


async def on_datagram(gw: Gateway, datagram: Datagram) -> None:
    payload = datagram.payload
    answer = await gw._accept(payload, content_format_of(payload), f"serial:{datagram.module_imei}")
    gw.metrics.inc("citysense_edge_serial_datagrams_total", code=answer.code)
    if answer.code != coap_site.CHANGED:
        log.debug(
            "datagram via module %s from %s refused: %s %s",
            datagram.module_imei,
            datagram.remote,
            answer.code,
            answer.payload.decode(errors="replace"),
        )


async def on_radio(gw: Gateway, report: RadioReport) -> None:
    imei = report.imei
    device_id = next(
        (d for d in (f"urn:imei:{imei}", imei) if d in gw.registry), f"urn:imei:{imei}"
    )
    try:
        reading = gw.intake.health_reading(device_id, report.t_ms, report.values, clock.now_ms())
    except UplinkRefused:
        gw.metrics.inc("citysense_edge_unknown_modules_total")
        if imei not in gw.unknown_modules:
            gw.unknown_modules.add(imei)
            log.warning("module IMEI %s is not in the registry: radio figures dropped", imei)
        return
    if reading is None:
        return
    try:
        await gw.outbox.add([reading])
    except RetryableError as exc:
        log.error("cannot store radio figures of %s: %s", imei, exc)
        return
    gw.uplink.notify(1)


async def run_serial(gw: Gateway, item: str) -> None:
    """Run one serial module, restarting it (with back-off) when it fails."""
    device, dialect = parse_serial(item)
    backoff = Backoff(1.0, max(1.0, gw.settings.retry_max_delay))

    async def datagram_in(datagram: Datagram) -> None:
        await on_datagram(gw, datagram)

    async def radio_in(report: RadioReport) -> None:
        await on_radio(gw, report)

    while True:
        source = SerialSource(device, dialect)
        gw.serial_health[device] = source.health
        try:
            await source.run(datagram_in, radio_in)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("serial module on %s failed: %s; restarting with back-off", device, exc)
        gw.serial_health[device] = new_health("failed")
        await backoff.sleep()  # before reopening the port
