"""Rollup windows, their combination, and the store protocol (see :mod:`timeseries.rollup`)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

MINUTE = 60_000
HOUR = 3_600_000
#: rollup name -> window width in ms, finest first
WIDTHS: dict[str, int] = {"1m": MINUTE, "1h": HOUR}
ROLLUP_RP = "rollup"
DIRTY = "_rollup_dirty"
DONE = "_rollup_done"
#: Marks are only looked for this far back: readings older than the ingestor's max age
#: (7 days by default) are never written, so no older window can turn dirty.
DIRTY_LOOKBACK_MS = 8 * 24 * HOUR
SETTLE_MS = 2_000
COMPONENTS = ("count", "sum", "min", "max", "last", "last_t")


def new_token() -> int:
    """A fresh mark token: microseconds with random low digits (unique across writers)."""
    return time.time_ns() // 1000 * 1000 + random.randrange(1000)


def token_age_ms(token: int, now_ms: int) -> int:
    return now_ms - token // 1_000_000


@dataclass(slots=True)
class Window:
    """A rollup window of one series and metric, being accumulated."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    last: float = 0.0
    last_t: int = -1

    def add(self, t: int, value: float) -> None:
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if t >= self.last_t:
            self.last, self.last_t = value, t


#: (series tags, metric, window start) -> Window
Rolled = dict[tuple[tuple[str, ...], str, int], Window]


def aggregate(rows: Iterable[tuple[tuple[str, ...], str, int, float]], width: int) -> Rolled:
    """Rollup windows of ``width`` ms from raw ``(tags, metric, t, value)`` rows in time
    order per series (sums are then added in the order the raw data is aggregated)."""
    out: Rolled = {}
    for tags, metric, t, value in rows:
        key = (tags, metric, t - t % width)
        w = out.get(key)
        if w is None:
            w = out[key] = Window()
        w.add(t, value)
    return out


def combine(
    windows: Iterable[tuple[tuple[str, ...], str, int, Window]], width: int = HOUR
) -> Rolled:
    """Windows of ``width`` from finer windows (in time order): exact for every component."""
    out: Rolled = {}
    for tags, metric, t, w in windows:
        key = (tags, metric, t - t % width)
        acc = out.get(key)
        if acc is None:
            out[key] = Window(w.count, w.sum, w.min, w.max, w.last, w.last_t)
            continue
        acc.count += w.count
        acc.sum += w.sum
        acc.min = min(acc.min, w.min)
        acc.max = max(acc.max, w.max)
        if w.last_t >= acc.last_t:
            acc.last, acc.last_t = w.last, w.last_t
    return out


def combine_hour(minutes: dict[int, Rolled], hour: int, series: set[tuple[str, ...]]) -> Rolled:
    """The hour windows of ``series`` from the hour's minute windows: as
    :func:`~timeseries.rollup_core.combine` over them in time order, in one pass."""
    out: Rolled = {}
    get = out.get
    for m in sorted(minutes):
        for (tags, metric, _), w in minutes[m].items():
            if tags not in series:
                continue
            key = (tags, metric, hour)
            acc = get(key)
            if acc is None:
                out[key] = Window(w.count, w.sum, w.min, w.max, w.last, w.last_t)
                continue
            acc.count += w.count
            acc.sum += w.sum
            if w.min < acc.min:
                acc.min = w.min
            if w.max > acc.max:
                acc.max = w.max
            if w.last_t >= acc.last_t:
                acc.last, acc.last_t = w.last, w.last_t
    return out


@dataclass(frozen=True, slots=True)
class Dirty:
    measurement: str
    window: int  #: the minute's start, epoch ms
    token: int  #: the minute's mark (its writers' newest marks combined, on InfluxDB)
    #: (writer, token) of each writer's newest mark of the minute (InfluxDB)
    writers: tuple[tuple[str, int], ...] = ()

    @property
    def newest(self) -> int:
        """The token of the minute's newest write (its time)."""
        return max((tok for _, tok in self.writers), default=self.token)


@dataclass(slots=True)
class RollupStats:
    """What ``/metrics`` shows of rollup maintenance."""

    windows_recomputed: int = 0
    values_rolled: int = 0
    dirty_windows: int = 0
    oldest_dirty_ms: int | None = None  #: start of the oldest window awaiting recompute
    errors: int = 0
    cpu_seconds: float = 0.0  #: process CPU spent recomputing
    retention_deleted: int = 0
    last_pass_ms: int | None = None


class RollupStore(Protocol):
    async def ensure(self) -> None: ...
    async def dirty(self, now_ms: int, whole: bool = False) -> list[Dirty]:
        """The dirty minutes; ``whole``: those of old minutes known now too (else they may
        be found a few seconds later)."""
        ...

    async def recompute(self, measurement: str, hour: int, dirty: list[Dirty]) -> int: ...
    async def retain(self, now_ms: int) -> int: ...
    async def mark(self, measurement: str, windows: Iterable[int]) -> None: ...
    async def close(self) -> None: ...
