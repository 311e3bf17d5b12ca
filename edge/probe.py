"""``citysense edge probe``: identify an NB-IoT module on a serial port and print its radio.

A diagnostic for the person installing a gateway: it opens the port at the dialect's baud
rate, syncs (``AT`` until ``OK``), switches echo off, and prints the module's identity (IMEI,
ICCID, IMSI, product, firmware), its registration state and its radio figures in dBm/dB --
the same figures the gateway publishes as ``device_health`` readings of the module's IMEI.
It opens no socket and changes no persistent setting.

Exit codes: 0 identified, 1 the module did not answer or the port could not be opened.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

from citysense.config import Settings
from citysense.errors import CitysenseError, ConfigError
from firmware_bridge.dialects import dialect_of
from firmware_bridge.driver import DriverTimings, ModuleDriver, ModuleError
from firmware_bridge.radio import RadioFigures
from firmware_bridge.transport import SerialByteStream

log = logging.getLogger(__name__)

REGISTRATION = {
    0: "not registered, not searching",
    1: "registered, home network",
    2: "searching",
    3: "registration denied",
    4: "unknown / out of coverage",
    5: "registered, roaming",
}

_UNITS = {"rsrp": "dBm", "rsrq": "dB", "rssi": "dBm", "snr": "dB", "tx_power": "dBm"}


async def probe_module(
    device: str,
    dialect_name: str,
    *,
    timings: DriverTimings | None = None,
    register_wait: float = 10.0,
    out: TextIO,
) -> None:
    """Print the module's identity and radio figures to ``out``; raises on failure.

    Waits up to ``register_wait`` seconds for registration (a module just powered on is
    still searching), then reports whatever state it is in.
    """
    dialect = dialect_of(dialect_name)
    timings = timings or DriverTimings(boot=15.0, registration_poll=1.0)
    stream = await SerialByteStream.open(device, dialect.baudrate)
    try:
        async with ModuleDriver(stream, dialect, timings) as driver:
            await driver.initialise()
            ident = await driver.identify()
            try:
                stat = await driver.wait_registered(register_wait)
            except ModuleError:
                stat = await driver.registration()
            figures = await driver.radio()
    finally:
        await stream.aclose()
    rows: list[tuple[str, object]] = [
        ("device", device),
        ("dialect", f"{dialect.name} ({dialect.description})"),
        ("imei", ident.imei),
        ("iccid", ident.iccid or "-"),
        ("imsi", ident.imsi or "-"),
        ("product", ident.product or "-"),
        ("firmware", ident.firmware or "-"),
        ("registration", f"{stat} ({REGISTRATION.get(stat, 'unknown')})"),
    ]
    rows.extend(_radio_rows(figures))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)


def _radio_rows(figures: RadioFigures) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for name in ("rsrp", "rsrq", "rssi", "snr", "ecl", "tx_power"):
        value = getattr(figures, name)
        unit = _UNITS.get(name, "")
        rows.append((name, "-" if value is None else f"{value:g} {unit}".rstrip()))
    for name in ("cell_id", "pci", "earfcn", "band", "tac"):
        value = getattr(figures, name)
        rows.append((name, "-" if value is None else value))
    return rows


def probe(settings: Settings) -> int:
    """``citysense edge probe --serial DEV --dialect D``."""
    if not settings.serial_device:
        raise ConfigError("edge probe needs --serial DEV")
    try:
        asyncio.run(probe_module(settings.serial_device, settings.dialect, out=sys.stdout))
    except CitysenseError as exc:
        print(f"citysense: probe of {settings.serial_device} failed: {exc}", file=sys.stderr)
        return 1
    return 0
