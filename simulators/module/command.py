"""``citysense simulate module``: a module on a pty until SIGINT/SIGTERM, and its registry rows.

Standard output, line by line: the pty's own path (``/dev/pts/N``), the stable symlink that
survives a vanished port, then the device-registry rows (CSV with header) of the module's IMEI
and of its scripted sensors, so that a gateway given those rows accepts the module's datagrams
and its radio figures.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import signal
import threading
from pathlib import Path

from citysense.config import Settings
from citysense.privatefiles import write_private
from citysense.registry import COLUMNS
from simulators.module.core import sensor_devices
from simulators.module.model import parse_faults
from simulators.module.pty import SimulatedModule

log = logging.getLogger("simulators.module")

#: sensors and module are registered as air stations (the sensors send pm25, temperature,
#: humidity; the module itself only device_health figures, valid for every kind)
KIND = "air_station"
DISTRICT = "simulated"
SENSOR_INTERVAL = 10.0


def registry_rows(imei: str, seed: int, gateway: str) -> list[tuple[str, ...]]:
    """Registry rows (:data:`citysense.registry.COLUMNS`) of a module and its sensors."""
    rng = random.Random(seed)
    rows: list[tuple[str, ...]] = []
    for n, device in enumerate([f"urn:imei:{imei}", *sensor_devices(seed)]):
        lat = round(34.75 + rng.uniform(-0.05, 0.05), 5)
        lon = round(113.62 + rng.uniform(-0.05, 0.05), 5)
        site = "module" if n == 0 else f"module-sensor-{n}"
        rows.append((device, KIND, DISTRICT, site, str(lat), str(lon), gateway))
    return rows


def registry_csv(rows: list[tuple[str, ...]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def run_module_command(settings: Settings) -> int:
    """Print the device paths and registry rows, run until SIGINT/SIGTERM."""
    faults = parse_faults(settings.faults)
    module = SimulatedModule(
        settings.dialect, seed=settings.seed, faults=faults, sensor_interval=SENSOR_INTERVAL
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with module:
            rows = registry_csv(registry_rows(module.imei, settings.seed, settings.gateway))
            if settings.registry_out:
                write_private(Path(settings.registry_out), rows)
            print(module.pts, module.device, sep="\n", flush=True)
            print(rows, end="", flush=True)
            log.info(
                "simulated %s on %s (IMEI %s), faults %s",
                settings.dialect,
                module.pts,
                module.imei,
                faults or "none",
            )
            stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
