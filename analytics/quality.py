"""Data-quality checks: pure functions over one device's recent series, returning findings.

Each check takes numpy arrays (times in epoch ms, values) and the metric's
:class:`~citysense.catalog.QualityLimits` from the catalog, and returns :class:`Finding`
objects with the evidence behind them. Nothing here deletes or changes data: a caller keeps
findings as flags, leaves flagged readings out of its analytics and says so.

* ``stuck``: ``stuck_reports`` reports in a row within the metric's resolution of each other
  (a frozen sensor repeats its last value; real air never holds still to 0.1 µg/m³ for an
  hour); a value pinned at an end of the catalog's range (saturation) or at the sensor's
  detection limit (ozone at night) is not stuck;
* ``spike``: a report that jumps more than ``spike_step`` away from *both* its neighbours in
  the same direction -- there and back. A haze rising steeply or a rush hour is a step or a
  ramp, never a single report standing alone;
* ``out_of_pattern``: a cumulative meter total that goes down (running backwards), or drops
  to near zero (a counter reset);
* ``drift``: the daily median gap between a station and its neighbours' median growing
  steadily over days (least-squares slope at least ``drift_per_day``, grown at least
  ``drift_total``, and a straight line explaining most of it);
* ``tamper_suspect``: hourly, the station reads below ``tamper_ratio`` of its neighbours'
  median while that median is at least ``tamper_level`` and has risen at least
  ``tamper_rise`` in the past 48 h, and the station itself rose less than a fifth of that --
  the covered-inlet case -- for ``TAMPER_HOURS`` hours in a row;
* ``silent_channel``: one metric missing for ``silent_reports`` intervals while the device's
  other metrics keep reporting.

A finding whose condition still holds at the end of the data is open (``end_ms`` is None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from citysense.catalog import METRICS, QualityLimits

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

Reason = Literal["stuck", "spike", "out_of_pattern", "drift", "tamper_suspect", "silent_channel"]
REASONS: tuple[str, ...] = get_args(Reason)
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: hours in a row the covered-inlet condition must hold
TAMPER_HOURS = 2
#: hours back over which the neighbours' rise is measured
TAMPER_RISE_HOURS = 48
#: share of the neighbours' rise the station itself may have risen
TAMPER_OWN_RISE = 0.2
#: fewest neighbours with data for a neighbour-based check
MIN_NEIGHBOURS = 2
#: days of daily gaps the drift check fits a line to, and its least r²
DRIFT_DAYS = 7
DRIFT_R2 = 0.7
#: a meter total falling below this share of its previous value is a reset
RESET_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Finding:
    """One check firing on one metric of one device over ``[start_ms, end_ms)``."""

    reason: str
    metric: str
    start_ms: int
    end_ms: int | None  #: ``None``: still so at the end of the data (an open flag)
    evidence: dict[str, object] = field(default_factory=dict)


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, last+1) index pairs of the runs of True in ``mask``."""
    if mask.size == 0:
        return []
    m = np.concatenate(([False], mask, [False])).astype(np.int8)
    d = np.diff(m)
    return list(zip(np.nonzero(d == 1)[0].tolist(), np.nonzero(d == -1)[0].tolist(), strict=True))


def _r(x: float, digits: int = 3) -> float:
    return float(round(float(x), digits))


def check_stuck(metric: str, t: IntArray, v: FloatArray, limits: QualityLimits) -> list[Finding]:
    """Runs of at least ``stuck_reports`` reports equal within the resolution."""
    n = limits.stuck_reports
    if n is None or v.size < n:
        return []
    same = np.abs(np.diff(v)) < limits.resolution * 0.5
    spec = METRICS.get(metric)
    if spec is not None and spec.lo is not None and spec.hi is not None:
        # pinned at the end of its range is saturation (fog at 100 %RH), not a frozen sensor
        at_bound = (np.abs(v[1:] - spec.lo) < limits.resolution) | (
            np.abs(v[1:] - spec.hi) < limits.resolution
        )
        same &= ~at_bound
    if limits.detection_limit is not None:
        # at the sensor's detection limit (ozone at night) a flat reading is the floor
        same &= v[1:] > limits.detection_limit + limits.resolution
    out = []
    for a, b in _runs(same):
        reports = b - a + 1  # b - a equal steps join b - a + 1 reports
        if reports < n:
            continue
        last = b  # index of the last report of the run
        open_ = last == v.size - 1
        out.append(
            Finding(
                "stuck",
                metric,
                int(t[a]),
                None if open_ else int(t[last]) + 1,
                {
                    "value": _r(v[a]),
                    "reports": int(reports),
                    "threshold_reports": n,
                    "resolution": limits.resolution,
                    "first": int(t[a]),
                    "last": int(t[last]),
                },
            )
        )
    return out


def check_spike(metric: str, t: IntArray, v: FloatArray, limits: QualityLimits) -> list[Finding]:
    """Single reports that jump more than ``spike_step`` from both neighbours, there and back."""
    step = limits.spike_step
    if step is None or v.size < 3:
        return []
    d1 = v[1:-1] - v[:-2]
    d2 = v[1:-1] - v[2:]
    hit = (np.sign(d1) == np.sign(d2)) & (np.minimum(np.abs(d1), np.abs(d2)) > step)
    out = []
    for k in np.nonzero(hit)[0].tolist():
        i = k + 1
        out.append(
            Finding(
                "spike",
                metric,
                int(t[i]),
                int(t[i]) + 1,
                {
                    "value": _r(v[i]),
                    "before": _r(v[i - 1]),
                    "after": _r(v[i + 1]),
                    "threshold_step": step,
                },
            )
        )
    return out


def check_counter(metric: str, t: IntArray, v: FloatArray, limits: QualityLimits) -> list[Finding]:
    """A cumulative total going backwards (or reset): ``out_of_pattern`` while it is below
    the highest total seen before (the meter must climb back past it)."""
    if v.size < 2:
        return []
    high = np.maximum.accumulate(v)
    below = v < high - limits.resolution * 0.5
    out = []
    for a, b in _runs(below):
        prev = float(high[a])
        low = float(v[a:b].min())
        reset = low < prev * RESET_SHARE and prev > 100 * limits.resolution
        out.append(
            Finding(
                "out_of_pattern",
                metric,
                int(t[a]),
                None if b == v.size else int(t[b]),
                {
                    "pattern": "counter reset" if reset else "running backwards",
                    "highest_before": _r(prev),
                    "lowest": _r(low),
                    "reports": int(b - a),
                },
            )
        )
    return out


def neighbour_median(neighbours: FloatArray) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """(median across rows ignoring NaN, how many rows had a value) per column."""
    if neighbours.ndim != 2 or neighbours.shape[0] == 0:
        cols = neighbours.shape[-1] if neighbours.ndim else 0
        return np.full(cols, np.nan), np.zeros(cols, dtype=np.int64)
    count = np.sum(~np.isnan(neighbours), axis=0).astype(np.int64)
    med = np.full(neighbours.shape[1], np.nan)
    ok = count > 0
    if ok.any():
        med[ok] = np.nanmedian(neighbours[:, ok], axis=0)
    return med, count


def _trailing_min(x: FloatArray, back: int) -> FloatArray:
    """Minimum of ``x[i - back .. i]`` ignoring NaN (NaN where all are NaN)."""
    pad = np.concatenate([np.full(back, np.inf), np.where(np.isnan(x), np.inf, x)])
    out = np.lib.stride_tricks.sliding_window_view(pad, back + 1).min(axis=1)
    return np.where(np.isinf(out), np.nan, out)


def check_tamper(
    metric: str,
    hours: IntArray,
    station: FloatArray,
    neighbours: FloatArray,
    limits: QualityLimits,
) -> list[Finding]:
    """Hourly means: the station far below its neighbours while they rise together.

    ``hours``: hour starts (H,); ``station``: its hourly means (NaN: none); ``neighbours``:
    the other stations of its district, shape (K, H).
    """
    ratio, level, rise = limits.tamper_ratio, limits.tamper_level, limits.tamper_rise
    if ratio is None or level is None or rise is None or station.size == 0:
        return []
    med, count = neighbour_median(neighbours)
    h = station.size
    med_min = _trailing_min(med, TAMPER_RISE_HOURS)
    own_min = _trailing_min(station, TAMPER_RISE_HOURS)
    with np.errstate(invalid="ignore"):
        med_rise = med - med_min
        own_rise = station - own_min
        cond = (
            (count >= MIN_NEIGHBOURS)
            & (med >= level)
            & (station <= ratio * med)
            & (med_rise >= rise)
            & (own_rise <= TAMPER_OWN_RISE * med_rise)
        )
    cond = np.nan_to_num(cond, nan=0).astype(bool)
    out = []
    for a, b in _runs(cond):
        if b - a < TAMPER_HOURS:
            continue
        i = b - 1
        out.append(
            Finding(
                "tamper_suspect",
                metric,
                int(hours[a]),
                None if b == h else int(hours[b - 1]) + HOUR_MS,
                {
                    "station": _r(station[i], 1),
                    "neighbours_median": _r(med[i], 1),
                    "neighbours": int(count[i]),
                    "neighbours_rise_48h": _r(med_rise[i], 1),
                    "station_rise_48h": _r(own_rise[i], 1),
                    "threshold_ratio": ratio,
                    "threshold_level": level,
                    "hours": int(b - a),
                    "window_start": int(hours[a]),
                    "window_end": int(hours[b - 1]) + HOUR_MS,
                },
            )
        )
    return out


def check_drift(
    metric: str,
    days: IntArray,
    station: FloatArray,
    neighbours: FloatArray,
    limits: QualityLimits,
) -> list[Finding]:
    """Daily values (e.g. daily medians of hourly means): the gap to the neighbours' median
    growing steadily over the last :data:`DRIFT_DAYS` days (checked at every day end)."""
    per_day, total = limits.drift_per_day, limits.drift_total
    if per_day is None or total is None or station.size < DRIFT_DAYS:
        return []
    med, count = neighbour_median(neighbours)
    gap = station - med
    gap[count < MIN_NEIGHBOURS] = np.nan
    n = station.size
    hit = np.zeros(n, dtype=bool)
    stats: dict[int, tuple[float, float, float]] = {}
    x_all = np.arange(DRIFT_DAYS, dtype=np.float64)
    for i in range(DRIFT_DAYS - 1, n):
        y = gap[i - DRIFT_DAYS + 1 : i + 1]
        ok = ~np.isnan(y)
        if ok.sum() < DRIFT_DAYS - 1:
            continue
        x = x_all[ok]
        yy = y[ok]
        xm, ym = x.mean(), yy.mean()
        sxx = float(((x - xm) ** 2).sum())
        slope = float(((x - xm) * (yy - ym)).sum() / sxx)
        resid = yy - (ym + slope * (x - xm))
        sst = float(((yy - ym) ** 2).sum())
        r2 = 1.0 - float((resid**2).sum()) / sst if sst > 0 else 0.0
        grown = slope * (DRIFT_DAYS - 1)
        if abs(slope) >= per_day and abs(grown) >= total and r2 >= DRIFT_R2:
            hit[i] = True
            stats[i] = (slope, grown, r2)
    out = []
    for a, b in _runs(hit):
        i = b - 1
        slope, grown, r2 = stats[i]
        out.append(
            Finding(
                "drift",
                metric,
                int(days[max(0, a - DRIFT_DAYS + 1)]),
                None if b == n else int(days[b - 1]) + DAY_MS,
                {
                    "gap_now": _r(gap[i], 1),
                    "gap_per_day": _r(slope, 2),
                    "gap_grown": _r(grown, 1),
                    "r2": _r(r2, 2),
                    "days": DRIFT_DAYS,
                    "threshold_per_day": per_day,
                },
            )
        )
    return out


def check_silent(
    last_seen: Mapping[str, int | None],
    expected: tuple[str, ...],
    interval_ms: int,
    now_ms: int,
    limits: Mapping[str, QualityLimits],
    default_reports: int = 6,
) -> list[Finding]:
    """Metrics of ``expected`` not seen for their ``silent_reports`` intervals while the
    device's newest reading of any metric is recent (within two intervals)."""
    seen = [t for t in last_seen.values() if t is not None]
    if not seen:
        return []
    newest = max(seen)
    if now_ms - newest > 2 * interval_ms:
        return []  # the whole device is quiet: that is its status, not a silent channel
    out = []
    for metric in expected:
        q = limits.get(metric)
        reports = q.silent_reports if q is not None else default_reports
        last = last_seen.get(metric)
        if last is None or newest - last >= reports * interval_ms:
            out.append(
                Finding(
                    "silent_channel",
                    metric,
                    int(last) + interval_ms if last is not None else int(newest),
                    None,
                    {
                        "last_seen": last,
                        "device_last_seen": newest,
                        "threshold_reports": reports,
                        "interval_s": interval_ms // 1000,
                    },
                )
            )
    return out


def hourly_means(t: IntArray, v: FloatArray, start_ms: int, hours: int) -> FloatArray:
    """Means per hour ``[start + k h, start + (k+1) h)`` of a raw series (NaN: none)."""
    k = (t - start_ms) // HOUR_MS
    ok = (k >= 0) & (k < hours) & ~np.isnan(v)
    sums = np.bincount(k[ok], weights=v[ok], minlength=hours)[:hours]
    counts = np.bincount(k[ok], minlength=hours)[:hours]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    out[counts == 0] = np.nan
    return np.asarray(out, dtype=np.float64)


def daily_medians(hourly: FloatArray, need: int = 12) -> FloatArray:
    """Per-day medians of hourly values (24 per day, whole days), NaN with fewer than ``need``."""
    days = hourly.size // 24
    h = hourly[: days * 24].reshape(days, 24) if hourly.ndim == 1 else hourly
    out = np.full(days, np.nan)
    for d in range(days):
        row = h[d]
        ok = ~np.isnan(row)
        if ok.sum() >= need:
            out[d] = float(np.median(row[ok]))
    return out
