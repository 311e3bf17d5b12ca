"""The district forecast kept by the API process.

:class:`ForecastService` trains :mod:`analytics.forecast` on the district hourly means of the
last :data:`TRAIN_DAYS` days, read by :func:`hourly_district_means` (the one place that
reads forecast history, so it can move to hourly rollups), retrains every
``--forecast-refresh`` seconds and answers from the newest complete hour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from analytics import forecast as fc
from citysense.errors import RetryableError
from timeseries.query import Reader, SeriesQuery

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
TRAIN_DAYS = 90


async def hourly_district_means(
    reader: Reader, metric: str, start_ms: int, end_ms: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(districts, hour starts, means (districts x hours)) of ``metric`` in [start, end).

    The one reader of forecast history: hourly buckets of the raw series today; the place to
    read the 1-hour rollups from once the store keeps them.
    """
    groups = await reader.series(
        SeriesQuery(metric, start_ms, end_ms, HOUR_MS, "mean", {}, "district", start_ms % HOUR_MS)
    )
    hours = start_ms + np.arange((end_ms - start_ms) // HOUR_MS, dtype=np.int64) * HOUR_MS
    names = sorted(g.group.get("district", "") for g in groups)
    y = np.full((len(names), hours.size), np.nan)
    row = {n: i for i, n in enumerate(names)}
    for g in groups:
        i = row[g.group.get("district", "")]
        for t_ms, value in g.points:
            k = (t_ms - start_ms) // HOUR_MS
            if 0 <= k < hours.size:
                y[i, k] = value
    return names, hours, y


@dataclass(frozen=True, slots=True)
class DistrictForecast:
    district: str
    trained_until: int
    skill: dict[int, dict[str, float]]
    forecast: fc.Forecast


class ForecastService:
    """Trains on the store's history on a schedule; forecasts from the newest hour."""

    def __init__(
        self, reader: Reader, clock: Callable[[], float], refresh_s: float, timezone: str
    ) -> None:
        self.reader = reader
        self.clock = clock
        self.refresh_ms = int(max(refresh_s, 1.0) * 1000)
        self.timezone = timezone
        self.model: fc.ForecastModel | None = None
        self.trained_at: int | None = None
        self._cache: tuple[int, list[DistrictForecast]] | None = None
        self._lock = asyncio.Lock()

    def _offset_ms(self, at_ms: int) -> int:
        try:
            off = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(self.timezone)).utcoffset()
        except (KeyError, ValueError):  # an unknown zone was refused at start; stay safe
            return 0
        return int(off.total_seconds() * 1000) if off is not None else 0

    async def current(self, now_ms: int | None = None) -> list[DistrictForecast]:
        """The forecast from the newest complete hour; raises HistoryTooShortError."""
        now = int(self.clock() * 1000) if now_ms is None else now_ms
        end = now // HOUR_MS * HOUR_MS
        async with self._lock:
            if self._cache is not None and self._cache[0] == end:
                return self._cache[1]
            names, hours, y = await hourly_district_means(
                self.reader, "pm25", end - TRAIN_DAYS * DAY_MS, end
            )
            offset = self._offset_ms(end)
            if (
                self.model is None
                or self.trained_at is None
                or abs(end - self.trained_at) >= self.refresh_ms
            ):
                first = _first_full(y)
                if first is None:
                    raise fc.HistoryTooShortError(
                        "no pm25 history in storage: the forecast needs at least "
                        f"{fc.MIN_HISTORY_HOURS // 24} days of hourly means"
                    )
                self.model = await asyncio.to_thread(fc.fit, hours[first:], y[:, first:], offset)
                self.trained_at = end
            out = [
                DistrictForecast(name, self.model.trained_until, self.model.skill, f)
                for name, f in zip(names, fc.forecast(self.model, hours, y, offset), strict=True)
            ]
            self._cache = (end, out)
            return out

    async def run(self) -> None:
        """Retrain on schedule so that requests find a fresh model."""
        while True:
            try:
                await self.current()
            except (fc.HistoryTooShortError, RetryableError) as exc:
                log.info("forecast not trained: %s", exc)
            except Exception:  # a bug must not stop the API; it is logged with its trace
                log.exception("forecast training failed")
            await asyncio.sleep(self.refresh_ms / 1000)


def _first_full(y: np.ndarray) -> int | None:
    """First hour from which every district has data (None: some district has none)."""
    if y.shape[0] == 0:
        return None
    firsts = []
    for row in y:
        ok = np.nonzero(~np.isnan(row))[0]
        if ok.size == 0:
            return None
        firsts.append(int(ok[0]))
    return max(firsts)
