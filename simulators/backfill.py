"""Backfill: history for a fleet, generated as fast as numpy allows.

Each device reports every ``report_interval_s`` of its kind (catalog) at a fixed phase of
its own (see :meth:`CityModel.phase_ms`, shared with the live fleet), so history and live uplinks lie
on one schedule. :func:`backfill_columns` yields columnar batches (arrays per metric) for
bulk consumers and the benchmark; :func:`backfill` yields :class:`~citysense.model.Reading`
batches for anything that takes readings (the demo writes 24 h of history with it).

Invariants: deterministic for (devices, seed, start, end); each (device, time) appears once;
times lie in ``[start_ms, end_ms)``; batches come in time windows of increasing time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from citysense.catalog import KINDS
from citysense.model import Reading
from citysense.registry import Device
from simulators.models import BoolArray, CityModel, Column, IntArray

#: elements (device x time) generated per columnar batch
DEFAULT_CHUNK = 1 << 17


@dataclass(frozen=True, slots=True)
class ColumnBatch:
    """One kind's readings over one time window: arrays of shape (times, devices)."""

    kind: str
    idx: IntArray  #: fleet indices of the devices, shape (D,)
    t: IntArray  #: epoch ms, shape (T, D)
    valid: BoolArray  #: which cells are readings (inside the window), shape (T, D)
    values: dict[str, Column]  #: metric -> array of shape (T, D)

    @property
    def count(self) -> int:
        """Readings in this batch."""
        return int(self.valid.sum())


def backfill_columns(
    model: CityModel,
    start_ms: int,
    end_ms: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    intervals_s: Mapping[str, float] | None = None,
) -> Iterator[ColumnBatch]:
    """Columnar history of every device of ``model`` in [start_ms, end_ms)."""
    groups: list[tuple[str, IntArray, int, IntArray]] = []
    rate = 0.0  # readings per ms over the fleet
    for kind, idx in model.kind_index.items():
        if not idx.size:
            continue
        interval_s = (intervals_s or {}).get(kind, KINDS[kind].report_interval_s)
        interval = max(int(interval_s * 1000), 1)
        groups.append((kind, idx, interval, model.phase_ms(idx, interval)))
        rate += idx.size / interval
    if not groups or end_ms <= start_ms:
        return
    smallest = min(g[2] for g in groups)
    window = max(int(chunk / rate), smallest)
    w0 = start_ms
    while w0 < end_ms:
        w1 = min(w0 + window, end_ms)
        for kind, idx, interval, phase in groups:
            # first slot at or after w0 for each device
            first = w0 + (phase - w0) % interval
            rows = (w1 - w0 + interval - 1) // interval
            if rows <= 0:
                continue
            t = first[None, :] + np.arange(rows, dtype=np.int64)[:, None] * interval
            valid = t < w1
            if not valid.any():
                continue
            values = model.sample(kind, idx, t)
            yield ColumnBatch(kind, idx, t, valid, values)
        w0 = w1


def readings_of(model: CityModel, batch: ColumnBatch) -> list[Reading]:
    """The :class:`Reading` objects of a columnar batch (time-major order)."""
    devices = [model.devices[i] for i in batch.idx.tolist()]
    names = list(batch.values)
    columns = [batch.values[n].tolist() for n in names]
    times = batch.t.tolist()
    valid = batch.valid.tolist()
    out: list[Reading] = []
    kind = batch.kind
    for r, (row_t, row_ok) in enumerate(zip(times, valid, strict=True)):
        for c, dev in enumerate(devices):
            if not row_ok[c]:
                continue
            values = {n: col[r][c] for n, col in zip(names, columns, strict=True)}
            out.append(Reading(dev.device, kind, dev.district, dev.site, row_t[c], values))
    return out


def backfill(
    devices: Sequence[Device],
    start_ms: int,
    end_ms: int,
    seed: int = 1,
    *,
    model: CityModel | None = None,
    batch_readings: int = 5000,
) -> Iterator[list[Reading]]:
    """History of ``devices`` in [start_ms, end_ms) as batches of about ``batch_readings``."""
    model = model if model is not None else CityModel(devices, seed)
    pending: list[Reading] = []
    for batch in backfill_columns(model, start_ms, end_ms):
        pending.extend(readings_of(model, batch))
        while len(pending) >= batch_readings:
            yield pending[:batch_readings]
            pending = pending[batch_readings:]
    if pending:
        yield pending
