"""Data-quality flags, kept by the API process.

Where flags live: :class:`QualityMonitor` evaluates the checks of :mod:`analytics.quality`
over recent windows read through the :class:`~timeseries.query.Reader` -- on a schedule
(``--quality-interval``, a task of the API's lifespan) and on demand when ``/quality`` is
asked and the last evaluation is older than the interval -- into an in-memory flag table.
The table is rebuilt from storage after a restart by the first evaluation (every check looks
back far enough to find what is still wrong: raw reports 6 h, hourly means 8 days). Flags
never touch stored data; a flag whose condition is gone at the next evaluation is closed
(``until``) and listed as recent for :data:`RECENT_MS`.

What an evaluation reads and computes is :mod:`dashboard_api.quality_checks`; at a city's
size it runs in a process of its own (:mod:`dashboard_api.quality_process`).

The district forecast lives in :mod:`dashboard_api.forecast` (its :class:`ForecastService`
is re-exported here; :func:`start_background` runs both loops).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

from analytics import quality as q
from citysense import prometheus
from citysense.catalog import QUALITY
from citysense.errors import RetryableError
from dashboard_api import models
from dashboard_api.forecast import ForecastService as ForecastService
from dashboard_api.parameters import rfc3339
from dashboard_api.quality_checks import (
    DAY_MS,
    HOUR_MS,
    FindingsSource,
    Tags,
    read_findings,
)
from timeseries.query import Reader, SeriesQuery

log = logging.getLogger(__name__)

RECENT_MS = 7 * DAY_MS
#: seconds before evaluating again when the store held no data
EMPTY_RETRY_S = 30.0


@dataclass(slots=True)
class Flag:
    """One open or recently closed flag of one device's metric."""

    device: str
    kind: str
    district: str
    site: str
    metric: str
    reason: str
    since: int
    until: int | None
    evidence: dict[str, object] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.until is None

    def covers(self, start_ms: int, end_ms: int) -> bool:
        """Whether the flagged span meets ``[start, end)``."""
        return self.since < end_ms and (self.until is None or self.until > start_ms)


class QualityMonitor:
    """The flag table and its evaluation (see the module docstring)."""

    def __init__(
        self,
        reader: Reader,
        clock: Callable[[], float],
        interval_s: float,
        source: FindingsSource | None = None,
    ) -> None:
        self.reader = reader
        #: what an evaluation reads and computes (by default in this process, from
        #: ``reader``; :mod:`dashboard_api.quality_process` does it in a process of its own)
        self.source: FindingsSource = source or partial(read_findings, reader)
        self.clock = clock
        self.interval_ms = int(max(interval_s, 1.0) * 1000)
        self.flags: dict[tuple[str, str, str, int], Flag] = {}
        self.evaluated_at: int | None = None
        self.evaluations = 0
        self.saw_data = False  #: the last evaluation found any device (else: retry soon)
        self._open_memo: tuple[int, dict[str, list[Flag]]] | None = None
        self.failures = 0  #: scheduled evaluations postponed or failed
        self.took_s = 0.0  #: how long the last evaluation took (reading and checks)
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ reading the table

    def listing(
        self,
        *,
        district: str | None = None,
        reason: str | None = None,
        device: str | None = None,
        since_ms: int | None = None,
    ) -> list[Flag]:
        out = []
        for f in self.flags.values():
            if district is not None and f.district != district:
                continue
            if reason is not None and f.reason != reason:
                continue
            if device is not None and f.device != device:
                continue
            if since_ms is not None and f.until is not None and f.until < since_ms:
                continue
            out.append(f)
        out.sort(key=lambda f: (not f.open, -f.since, f.device, f.metric))
        return out

    def affecting(self, metrics: Iterable[str], start_ms: int, end_ms: int) -> list[Flag]:
        """Flags on any of ``metrics`` whose span meets ``[start, end)`` and whose readings are
        to be left out (a silent channel has none: nothing to leave out)."""
        wanted = set(metrics)
        return [
            f
            for f in self.flags.values()
            if f.metric in wanted and f.reason != "silent_channel" and f.covers(start_ms, end_ms)
        ]

    def open_by_device(self) -> dict[str, list[Flag]]:
        """Open flags per device, as of the last evaluation (the table changes only there):
        ``/devices`` asks on every request, so it is built once per evaluation (not to be
        changed by the caller)."""
        if self._open_memo is not None and self._open_memo[0] == self.evaluations:
            return self._open_memo[1]
        out: dict[str, list[Flag]] = defaultdict(list)
        for f in self.flags.values():
            if f.open:
                out[f.device].append(f)
        self._open_memo = (self.evaluations, dict(out))
        return self._open_memo[1]

    def exposition(self) -> str:
        """The evaluations' figures for ``/metrics``."""
        return prometheus.render(
            [
                prometheus.counter(
                    "citysense_api_quality_evaluations_total",
                    "Data-quality evaluations done.",
                    self.evaluations,
                ),
                prometheus.counter(
                    "citysense_api_quality_evaluation_failures_total",
                    "Scheduled data-quality evaluations postponed (storage) or failed.",
                    self.failures,
                ),
                prometheus.gauge(
                    "citysense_api_quality_evaluation_seconds",
                    "How long the last data-quality evaluation took.",
                    self.took_s,
                ),
                prometheus.gauge(
                    "citysense_api_quality_flags_open",
                    "Data-quality flags open.",
                    sum(f.open for f in self.flags.values()),
                ),
            ]
        )

    # ------------------------------------------------------------------ evaluating

    def stale(self, now_ms: int) -> bool:
        return (
            self.evaluated_at is None
            or not self.saw_data
            or abs(now_ms - self.evaluated_at) >= self.interval_ms
        )

    async def refresh(self, now_ms: int | None = None) -> None:
        """Evaluate now unless another call just did (a stale table is evaluated once)."""
        now = int(self.clock() * 1000) if now_ms is None else now_ms
        async with self._lock:
            if self.stale(now):
                await self.evaluate(now)

    async def run(self) -> None:
        """Evaluate every interval until cancelled; storage outages are logged and retried."""
        while True:
            try:
                await self.refresh()
            except RetryableError as exc:
                self.failures += 1
                log.info("quality evaluation postponed: %s", exc)
            except Exception:  # a bug must not stop the API; it is logged with its trace
                self.failures += 1
                log.exception("quality evaluation failed")
            # an empty store (a fresh start, history still being written): look again soon
            wait = self.interval_ms / 1000
            await asyncio.sleep(wait if self.saw_data else min(wait, EMPTY_RETRY_S))

    async def evaluate(self, now_ms: int) -> None:
        started = time.monotonic()
        findings, tags, self.saw_data = await self.source(now_ms)
        self.took_s = time.monotonic() - started
        seen: set[tuple[str, str, str, int]] = set()
        for device, f in findings:
            t = tags.get(device, Tags("", "", ""))
            evidence = dict(f.evidence)
            evidence["window"] = {
                "checked_at": now_ms,
                "reason_threshold": _threshold_text(f.reason, f.metric),
            }
            # one flag per device, metric and reason; spikes are each their own
            start_key = f.start_ms if f.reason == "spike" else 0
            key = (device, f.metric, f.reason, start_key)
            old = self.flags.get(key)
            if old is not None and old.open and f.end_ms is not None:
                old.until, old.evidence = f.end_ms, evidence
            elif old is not None and old.open:
                old.since, old.evidence = min(old.since, f.start_ms), evidence
            elif old is None or f.end_ms is None:  # new, or came back: a new flag
                self.flags[key] = Flag(
                    device,
                    t.kind,
                    t.district,
                    t.site,
                    f.metric,
                    f.reason,
                    f.start_ms,
                    f.end_ms,
                    evidence,
                )
            seen.add(key)
        for key, flag in list(self.flags.items()):
            if flag.open and key not in seen:
                flag.until = now_ms  # the condition is gone: the flag clears itself
            if flag.until is not None and flag.until < now_ms - RECENT_MS:
                del self.flags[key]
        self.evaluated_at = now_ms
        self.evaluations += 1
        log.debug("quality: %d flags open", sum(f.open for f in self.flags.values()))


def _threshold_text(reason: str, metric: str) -> str:
    lim = QUALITY.get(metric)
    if lim is None:
        return ""
    if reason == "stuck":
        return f"{lim.stuck_reports} equal reports within {lim.resolution}"
    if reason == "spike":
        return f"a jump over {lim.spike_step} there and back"
    if reason == "out_of_pattern":
        return "a cumulative total below its earlier highest"
    if reason == "drift":
        return f"gap to neighbours growing >= {lim.drift_per_day}/day over {q.DRIFT_DAYS} days"
    if reason == "tamper_suspect":
        return (
            f"below {lim.tamper_ratio} x the neighbours' median while it is >= "
            f"{lim.tamper_level} and rose >= {lim.tamper_rise} in 48 h"
        )
    return f"missing for {lim.silent_reports} intervals while others report"


# --------------------------------------------------------------------------- exclusion


def excluded_out(f: Flag, readings: int | None = None) -> models.ExcludedOut:
    """A flag as the evidence of readings left out of an answer."""
    return models.ExcludedOut(
        device=f.device,
        metric=f.metric,
        reason=f.reason,
        since=rfc3339(f.since),
        until=rfc3339(f.until) if f.until is not None else None,
        readings=readings,
    )


async def exclude_flagged(
    reader: Reader,
    monitor: QualityMonitor | None,
    hourly: Mapping[str, dict[str, list[float | None]]],
    at_ms: int,
    span_ms: int,
    district: str | None,
) -> dict[str, list[models.ExcludedOut]]:
    """Leave flagged readings out of district hourly means (newest first), in place.

    For each flag meeting ``[at - span, at)`` on a pollutant: the flagged device's hourly sum
    and count over the flagged span are taken out of its district's hourly mean (whose count
    is asked for too). Returns the exclusions per district, for the evidence.
    """
    out: dict[str, list[models.ExcludedOut]] = {}
    if monitor is None:
        return out
    start = at_ms - span_ms
    pollutants = {p for d in hourly.values() for p in d}
    flags = [
        f
        for f in monitor.affecting(pollutants, start, at_ms)
        if (district is None or f.district == district) and f.district in hourly
    ]
    if not flags:
        return out
    offset = at_ms % HOUR_MS
    counts_q = {
        p: SeriesQuery(p, start, at_ms, HOUR_MS, "count", {}, "district", offset)
        for p in sorted({f.metric for f in flags})
    }
    flag_q = _flag_queries(flags, start, at_ms, offset)
    queries = list(counts_q.values()) + [x for _, s, c in flag_q for x in (s, c)]
    answers = await reader.series_many(queries)
    counts: dict[tuple[str, str], dict[int, float]] = {}
    for p, groups in zip(counts_q, answers[: len(counts_q)], strict=True):
        for g in groups:
            counts[(g.group.get("district", ""), p)] = dict(g.points)
    taken: dict[tuple[str, str, int], tuple[float, float]] = {}
    rest = answers[len(counts_q) :]
    for i, (f, _, _) in enumerate(flag_q):
        sums, cnts = rest[2 * i], rest[2 * i + 1]
        got = 0
        for gs, gc in zip(sums, cnts, strict=False):
            for (t, s), (_, c) in zip(gs.points, gc.points, strict=False):
                key = (f.district, f.metric, t)
                old = taken.get(key, (0.0, 0.0))
                taken[key] = (old[0] + s, old[1] + c)
                got += int(c)
        out.setdefault(f.district, []).append(excluded_out(f, got))
    _take_out(hourly, counts, taken, at_ms - HOUR_MS)
    return out


def _flag_queries(
    flags: list[Flag], start: int, at_ms: int, offset: int
) -> list[tuple[Flag, SeriesQuery, SeriesQuery]]:
    """Per flag meeting ``[start, at)``: its device's hourly sum and count over that span."""
    flag_q = []
    for f in flags:
        a = max(start, f.since)
        b = min(at_ms, f.until if f.until is not None else at_ms)
        if a >= b:
            continue
        flt = {"device": f.device}
        flag_q.append(
            (
                f,
                SeriesQuery(f.metric, a, b, HOUR_MS, "sum", flt, "district", offset),
                SeriesQuery(f.metric, a, b, HOUR_MS, "count", flt, "district", offset),
            )
        )
    return flag_q


def _take_out(
    hourly: Mapping[str, dict[str, list[float | None]]],
    counts: dict[tuple[str, str], dict[int, float]],
    taken: dict[tuple[str, str, int], tuple[float, float]],
    newest: int,
) -> None:
    """Remove the taken (sum, count) from each district's hourly mean, in place."""
    for (name, metric, t), (s, c) in taken.items():
        k = (newest - t) // HOUR_MS
        values = hourly.get(name, {}).get(metric)
        total = counts.get((name, metric), {}).get(t)
        if values is None or total is None or not 0 <= k < len(values):
            continue
        mean = values[k]
        if mean is None:
            continue
        left = total - c
        values[k] = (mean * total - s) / left if left > 0 else None


def start_background(
    monitor: QualityMonitor, forecaster: ForecastService
) -> list[asyncio.Task[None]]:
    """The evaluation and training loops of the API's lifespan (cancelled at its end)."""
    return [
        asyncio.create_task(monitor.run(), name="quality-monitor"),
        asyncio.create_task(forecaster.run(), name="forecast-training"),
    ]
