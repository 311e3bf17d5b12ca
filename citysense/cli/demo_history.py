"""The demo's history: ``--backfill-hours`` of readings written straight to storage, so
charts are not empty when the dashboard opens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

from citysense.cli.demo_status import Status
from citysense.config import Settings
from citysense.errors import RetryableError
from citysense.model import Reading
from citysense.registry import Device


class History:
    """Writes the demo's history; :attr:`written` counts the readings stored so far."""

    def __init__(self, demo: Settings, status: Status) -> None:
        self.demo = demo
        self.status = status
        self.written = 0

    async def write(
        self, devices: Sequence[Device], settings: Settings, stop: asyncio.Event
    ) -> None:
        """Write ``backfill_hours`` of history for ``devices`` straight to storage."""
        from simulators.backfill import backfill
        from timeseries.factory import open_writer
        from timeseries.schema import reading_to_points

        hours = self.demo.backfill_hours
        gateway_of = {d.device: d.gateway for d in devices}
        end_ms = int(time.time() * 1000)
        start_ms = end_ms - int(hours * 3600 * 1000)
        model = None
        if self.demo.sensor_faults:
            from simulators.models import CityModel
            from simulators.sensor_faults import SensorFaults

            faults = SensorFaults.from_settings(self.demo.sensor_faults, self.demo.seed)
            model = CityModel(devices, self.demo.seed, sensor_faults=faults)
        batches = backfill(devices, start_ms, end_ms, self.demo.seed, model=model)
        rejected = 0
        self.status.show(f"history   writing {hours:g} h of history ...")
        async with open_writer(settings) as writer:
            while not stop.is_set():
                batch = await asyncio.to_thread(_next_or_none, batches)
                if batch is None:
                    break
                points = [
                    p
                    for r in batch
                    for p in reading_to_points(r, gateway_of.get(r.device, settings.gateway))
                ]
                try:
                    result = await writer.write(points)
                except RetryableError as exc:
                    self.status.say(f"history   storage unavailable ({exc}); history left out")
                    return
                rejected += len(result.rejected)
                self.written += len(batch)
                done = (max(r.t for r in batch) - start_ms) / max(end_ms - start_ms, 1)
                self.status.show(
                    f"history   writing {hours:g} h of history: {min(done, 1.0):4.0%}, "
                    f"{self.written:,} readings"
                )
        note = f", {rejected} points refused by storage" if rejected else ""
        self.status.say(f"history   {hours:g} h written: {self.written:,} readings{note}")


def _next_or_none(it: Iterator[list[Reading]]) -> list[Reading] | None:
    return next(it, None)
