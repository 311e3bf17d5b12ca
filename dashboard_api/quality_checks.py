"""The data-quality checks' evaluation: read the windows, run every check.

Windows: stuck, spike, out_of_pattern on the last :data:`RAW_WINDOW_MS` of reports (buckets
of one minute per device: one report each at the catalog's intervals); tamper_suspect and
drift on hourly means per device over :data:`HOURLY_WINDOW_MS` against the other stations of
the device's district; silent_channel on each metric's newest time over the last day.

:func:`read_findings` is what :class:`~dashboard_api.quality.QualityMonitor` turns into its
flag table; it runs in the API's process or in one of its own
(:mod:`dashboard_api.quality_process`), over the same reader stack.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from analytics import quality as q
from citysense.catalog import KINDS, METRICS, QUALITY
from timeseries.query import Reader, SeriesGroup, SeriesQuery

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
RAW_WINDOW_MS = 6 * HOUR_MS
HOURLY_WINDOW_MS = 8 * DAY_MS
SILENT_WINDOW_MS = DAY_MS
#: metrics checked on raw reports (stuck, spike, counters)
RAW_METRICS: tuple[str, ...] = tuple(
    m
    for m, lim in QUALITY.items()
    if lim.stuck_reports is not None or lim.spike_step is not None or METRICS[m].cumulative
)
#: metrics checked against neighbours (tamper, drift)
NEIGHBOUR_METRICS: tuple[str, ...] = tuple(
    m for m, lim in QUALITY.items() if lim.tamper_ratio is not None or lim.drift_per_day is not None
)


@dataclass(frozen=True, slots=True)
class Tags:
    """Where a device is (from its newest readings)."""

    kind: str
    district: str
    site: str


#: an evaluation's findings (device, finding), the tags of the devices found, and whether
#: any device was seen at all
Findings = tuple[list[tuple[str, q.Finding]], dict[str, Tags], bool]
FindingsSource = Callable[[int], Awaitable[Findings]]


async def read_findings(reader: Reader, now: int) -> Findings:
    """Read the checks' windows at ``now`` and run every check over them, one metric's window
    at a time: at a city's size each is hundreds of thousands of points as Python objects, and
    all of them at once took 2.4 GB at 10,000 devices."""
    raw_start = now - RAW_WINDOW_MS
    hour_end = now // HOUR_MS * HOUR_MS
    hour_start = hour_end - HOURLY_WINDOW_MS
    own_metrics = tuple(dict.fromkeys(m for k in KINDS for m in KINDS[k].metrics))
    tags: dict[str, Tags] = {}
    last_seen: dict[str, dict[str, int]] = defaultdict(dict)
    for r in await reader.latest(own_metrics, {}, now - SILENT_WINDOW_MS, now + 1):
        tags.setdefault(r.device, Tags(r.kind, r.district, r.site))
        last_seen[r.device][r.metric] = r.t
    # the numpy work (seconds at a city's size) in a worker thread: where the checks run in
    # the API's own process, its event loop keeps answering meanwhile
    found: list[tuple[str, q.Finding]] = []
    for m in RAW_METRICS:
        groups = await reader.series(
            SeriesQuery(m, raw_start, now, MINUTE_MS, "mean", {}, "device")
        )
        found += await asyncio.to_thread(_raw_findings, m, groups)
    for m in NEIGHBOUR_METRICS:
        query = SeriesQuery(m, hour_start, hour_end, HOUR_MS, "mean", {}, "device")
        groups = await reader.series(query)
        found += await asyncio.to_thread(_neighbour_findings, m, groups, hour_start, tags)
    found += _silent_findings(last_seen, tags, now)
    return found, {d: tags[d] for d, _ in found if d in tags}, bool(tags)


def _raw_findings(metric: str, groups: list[SeriesGroup]) -> list[tuple[str, q.Finding]]:
    """stuck, spike and out_of_pattern on the one-minute buckets of a raw metric."""
    found: list[tuple[str, q.Finding]] = []
    lim = QUALITY[metric]
    for g in groups:
        device = g.group.get("device", "")
        if len(g.points) < 2:
            continue
        t = np.array([p[0] for p in g.points], dtype=np.int64)
        v = np.array([p[1] for p in g.points], dtype=np.float64)
        if METRICS[metric].cumulative:
            found += [(device, f) for f in q.check_counter(metric, t, v, lim)]
            continue
        found += [(device, f) for f in q.check_stuck(metric, t, v, lim)]
        found += [(device, f) for f in q.check_spike(metric, t, v, lim)]
    return found


def _neighbour_findings(
    metric: str, groups: list[SeriesGroup], hour_start: int, tags: dict[str, Tags]
) -> list[tuple[str, q.Finding]]:
    """tamper_suspect and drift: hourly means of a neighbour metric per device against the
    other stations of its district."""
    found: list[tuple[str, q.Finding]] = []
    hours = hour_start + np.arange(HOURLY_WINDOW_MS // HOUR_MS, dtype=np.int64) * HOUR_MS
    days = hours[::24]
    lim = QUALITY[metric]
    series: dict[str, np.ndarray] = {}
    for g in groups:
        row = np.full(hours.size, np.nan)
        for t_ms, value in g.points:
            k = (t_ms - hour_start) // HOUR_MS
            if 0 <= k < hours.size:
                row[k] = value
        series[g.group.get("device", "")] = row
    by_district: dict[str, list[str]] = defaultdict(list)
    for device in series:
        if device in tags:
            by_district[tags[device].district].append(device)
    for members in by_district.values():
        if len(members) < q.MIN_NEIGHBOURS + 1:
            continue
        matrix = np.stack([series[d] for d in members])
        dailies = np.stack([q.daily_medians(r) for r in matrix])
        for i, device in enumerate(members):
            others = np.delete(matrix, i, axis=0)
            tail = slice(hours.size - 72, hours.size)
            found += [
                (device, f)
                for f in q.check_tamper(metric, hours[tail], matrix[i, tail], others[:, tail], lim)
            ]
            found += [
                (device, f)
                for f in q.check_drift(metric, days, dailies[i], np.delete(dailies, i, axis=0), lim)
            ]
    return found


def _silent_findings(
    last_seen: dict[str, dict[str, int]], tags: dict[str, Tags], now: int
) -> list[tuple[str, q.Finding]]:
    """silent_channel: each device's metrics by their newest time over the last day."""
    found: list[tuple[str, q.Finding]] = []
    for device, seen in last_seen.items():
        kind = tags[device].kind
        if kind not in KINDS:
            continue
        expected = tuple(m for m in KINDS[kind].metrics if METRICS[m].type == "float" or m in seen)
        interval = KINDS[kind].report_interval_s * 1000
        found += [
            (device, f)
            for f in q.check_silent(
                dict(seen) | {m: seen.get(m) for m in expected},
                expected,
                interval,
                now,
                QUALITY,
            )
        ]
    return found
