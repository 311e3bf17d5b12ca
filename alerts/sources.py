"""What rules look at: stored readings (through one small adapter over the store's reader) and
the gateways' retained ``status`` messages; :func:`observe` turns a rule into one number per
subject for the engine.

:class:`Reads` is the only place that talks to :class:`timeseries.query.Reader`; identical
queries of different rules in one evaluation cycle run once (:class:`Cycle`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alerts.engine import Observation, Observations, subject_key
from alerts.rules import Rule
from analytics.aqi import POLLUTANTS, compute_aqi, window_means
from analytics.congestion import CounterWindow, district_congestion, site_congestion
from analytics.leaks import MeterEvidence, judge, last_night_window
from citysense import topics
from citysense.catalog import KINDS, MAX_FUTURE_SKEW_MS, METRICS
from citysense.registry import Device
from citysense.topics import gateway_of_topic
from timeseries.query import Reader, SeriesQuery

log = logging.getLogger(__name__)
HOUR = 3_600_000
DAY = 24 * HOUR
#: How far back a device's last reading is looked for (older: as if never seen).
LOOKBACK_MS = 7 * DAY
STATUS_SUBSCRIPTION = topics.STATUS_SUBSCRIPTION
#: A device's last reading is its newest of any metric (INTERFACES.md 10.5).
ALL_METRICS = tuple(METRICS)


@dataclass(slots=True)
class Seen:
    kind: str
    district: str
    site: str
    last_seen: int | None
    #: each metric's newest (time, value) -- battery_low reads these
    values: dict[str, tuple[int, float]] = field(default_factory=dict)

    def merged(self, newer: Seen) -> Seen:
        values = dict(self.values)
        for m, tv in newer.values.items():
            if m not in values or values[m][0] < tv[0]:
                values[m] = tv
        last = max(self.last_seen or 0, newer.last_seen or 0) or None
        return Seen(newer.kind, newer.district, newer.site, last, values)


class Reads:
    """The adapter over the store's reader (aggregates per group; devices' last readings)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    async def aggregate(
        self,
        metric: str,
        agg: str,
        start_ms: int,
        end_ms: int,
        group_by: str,
        filters: Mapping[str, str],
    ) -> dict[str, float]:
        """``agg`` of ``metric`` over ``[start, end)`` per value of tag ``group_by``."""
        span = end_ms - start_ms
        q = SeriesQuery(metric, start_ms, end_ms, span, agg, filters, group_by, start_ms % span)  # type: ignore[arg-type]
        out: dict[str, float] = {}
        for g in await self.reader.series(q):
            if g.points:
                out[g.group[group_by]] = g.points[-1][1]
        return out

    async def hourly(
        self, metric: str, now: int, filters: Mapping[str, str]
    ) -> dict[str, list[float | None]]:
        """Hourly means of the 24 hours before ``now`` per district, newest first."""
        q = SeriesQuery(metric, now - DAY, now, HOUR, "mean", filters, "district", now % HOUR)
        out: dict[str, list[float | None]] = {}
        newest = now - HOUR
        for g in await self.reader.series(q):
            values: list[float | None] = [None] * 24
            for t, v in g.points:
                k = (newest - t) // HOUR
                if 0 <= k < 24:
                    values[k] = v
            out[g.group["district"]] = values
        return out

    async def devices(self, start_ms: int, end_ms: int) -> dict[str, Seen]:
        """Every device with a reading in ``[start, end)``, with its newest reading's time."""
        rows = await self.reader.latest(ALL_METRICS, {}, start_ms, end_ms)
        seen: dict[str, Seen] = {}
        for r in rows:
            s = seen.get(r.device)
            if s is None:
                s = seen[r.device] = Seen(r.kind, r.district, r.site, r.t)
            elif s.last_seen is not None and s.last_seen < r.t:
                s.last_seen = r.t
            s.values[r.metric] = (r.t, r.value)
        return seen


class GatewayStatus:
    """The gateways' retained ``status`` (``online``, or ``offline`` from a Last Will or a
    clean stop), fed by the MQTT client's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[str, int]] = {}

    def update(self, topic: str, payload: bytes, now: int) -> None:
        gateway = gateway_of_topic(topic)
        if gateway is None or not topic.endswith("/status"):
            return
        if not payload:
            with self._lock:
                self._state.pop(gateway, None)
            return
        try:
            data = json.loads(payload)
            state = str(data["state"])
            since = int(data.get("since") or now)
        except (ValueError, KeyError, TypeError):
            log.warning("gateway %s: status payload is not understood; ignored", gateway)
            return
        with self._lock:
            old = self._state.get(gateway)
            if state == "offline" and old is not None and old[0] == "offline":
                since = old[1]  # a repeated offline keeps its first time
            self._state[gateway] = (state, min(since, now) if state == "offline" else now)

    def snapshot(self) -> dict[str, tuple[str, int]]:
        with self._lock:
            return dict(self._state)


class DeviceDirectory:
    """Devices and their last reading, kept across cycles: a full read of the lookback every
    :attr:`full_every_ms` (late data, devices gone), in between only the readings of the last
    :attr:`overlap_ms` -- a device's last reading only moves forward."""

    full_every_ms = 10 * 60_000
    overlap_ms = 2 * 60_000

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}
        self.started_ms: int | None = None  #: the first refresh: when watching began
        self._full_at: int | None = None
        self._read_at: int | None = None

    async def refresh(self, reads: Reads, now: int) -> dict[str, Seen]:
        end = now + MAX_FUTURE_SKEW_MS
        if (
            self._full_at is None
            or self._read_at is None
            or now - self._full_at >= self.full_every_ms
        ):
            self.seen = await reads.devices(now - LOOKBACK_MS, end)
            self._full_at = now
        else:
            for dev, s in (await reads.devices(self._read_at - self.overlap_ms, end)).items():
                old = self.seen.get(dev)
                self.seen[dev] = s if old is None else old.merged(s)
        self._read_at = now
        return self.seen


class Cycle:
    """One evaluation cycle at time ``now``: queries shared between rules run once."""

    def __init__(
        self,
        reads: Reads,
        now: int,
        registry: Mapping[str, Device] | None,
        gateways: GatewayStatus | None,
        timezone: str = "UTC",
        directory: DeviceDirectory | None = None,
    ) -> None:
        self.reads = reads
        self.directory = directory or DeviceDirectory()
        self.now = now
        self.registry = registry or {}
        self.gateways = gateways
        self.timezone = timezone
        self._cache: dict[tuple[Any, ...], Any] = {}

    async def _memo(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = await make()
        return self._cache[key]

    async def devices(self) -> dict[str, Seen]:
        async def make() -> dict[str, Seen]:
            seen = dict(await self.directory.refresh(self.reads, self.now))
            for dev, d in self.registry.items():
                if dev not in seen:
                    seen[dev] = Seen(d.kind, d.district, d.site, None)
            return seen

        return await self._memo(("devices",), make)

    async def aggregate(self, rule: Rule, metric: str, agg: str, group_by: str) -> dict[str, float]:
        filters = _filters(rule)
        end = self.now
        start = end - rule.window_ms
        only = None
        if group_by == "district" and "district" in filters:
            only = filters.pop("district")  # one query for every district's rules
        key = ("agg", metric, agg, start, group_by, tuple(sorted(filters.items())))
        values: dict[str, float] = await self._memo(
            key, lambda: self.reads.aggregate(metric, agg, start, end, group_by, filters)
        )
        if only is not None:
            return {only: values[only]} if only in values else {}
        return values

    async def observe(self, rule: Rule) -> Observations:
        """:func:`observe`, once per cycle for rules that look at the same numbers."""
        sig = (
            rule.kind,
            rule.metric,
            rule.agg,
            rule.window_ms,
            rule.group_by,
            rule.district,
            rule.device_kind,
            rule.standard,
            rule.night_flow,
        )
        return await self._memo(("observe", *sig), lambda: _observe(rule, self))


def _filters(rule: Rule) -> dict[str, str]:
    f: dict[str, str] = {}
    if rule.district:
        f["district"] = rule.district
    if rule.device_kind:
        f["kind"] = rule.device_kind
    return f


def _device_obs(
    values: Mapping[str, float], devices: Mapping[str, Seen], rule: Rule, evidence: dict[str, Any]
) -> dict[str, Observation]:
    out: dict[str, Observation] = {}
    for dev, v in values.items():
        seen = devices.get(dev)
        ev = dict(evidence)
        if seen is not None:
            ev.update(kind=seen.kind, district=seen.district, site=seen.site)
        subject = {"device": dev}
        out[subject_key(subject)] = Observation(subject, v, ev)
    return out


async def observe(rule: Rule, cycle: Cycle) -> Observations:
    """One number per subject for ``rule`` now (subjects without data are absent)."""
    return await cycle.observe(rule)


async def _observe(rule: Rule, cycle: Cycle) -> Observations:
    return Observations(await _numbers(rule, cycle))


async def _numbers(rule: Rule, cycle: Cycle) -> dict[str, Observation]:
    kind = rule.kind
    now = cycle.now
    if kind == "battery_low":  # the newest battery reading of the last 7 days, as kept
        values: dict[str, float] = {}
        since = now - rule.window_ms
        for dev, seen in (await cycle.devices()).items():
            tv = seen.values.get("battery")
            if tv is None or tv[0] < since:
                continue
            if (rule.district and seen.district != rule.district) or (
                rule.device_kind and seen.kind != rule.device_kind
            ):
                continue
            values[dev] = tv[1]
        evidence = {"metric": "battery", "agg": "last", "window_s": rule.window_ms // 1000}
        return _device_obs(values, await cycle.devices(), rule, evidence)
    if kind in ("metric", "radio_poor"):
        assert rule.metric is not None
        group = rule.group_by if kind == "metric" else "device"
        values = await cycle.aggregate(rule, rule.metric, rule.agg, group)
        evidence = {"metric": rule.metric, "agg": rule.agg, "window_s": rule.window_ms // 1000}
        if group == "device":
            return _device_obs(values, await cycle.devices(), rule, evidence)
        out = {}
        for name, v in values.items():
            subject = {group: name}
            out[subject_key(subject)] = Observation(subject, v, dict(evidence))
        return out
    if kind == "device_offline":
        out = {}
        for dev, s in (await cycle.devices()).items():
            if rule.district and s.district != rule.district:
                continue
            if rule.device_kind and s.kind != rule.device_kind:
                continue
            interval_ms = (KINDS[s.kind].report_interval_s if s.kind in KINDS else 3600) * 1000
            # a registered device never seen: silent since this service started watching
            from_ms = s.last_seen if s.last_seen is not None else cycle.directory.started_ms
            age = max(0, now - (from_ms if from_ms is not None else now))
            subject = {"device": dev}
            out[subject_key(subject)] = Observation(
                subject,
                round(age / interval_ms, 3),
                {
                    "kind": s.kind,
                    "district": s.district,
                    "site": s.site,
                    "last_seen_ms": s.last_seen,
                    "report_interval_s": interval_ms // 1000,
                },
            )
        return out
    if kind == "gateway_offline":
        out = {}
        if cycle.gateways is None:
            return out
        for gw, (state, since) in cycle.gateways.snapshot().items():
            offline_s = max(0.0, (now - since) / 1000) if state == "offline" else 0.0
            subject = {"gateway": gw}
            out[subject_key(subject)] = Observation(
                subject, round(offline_s, 3), {"status": state, "since_ms": since}
            )
        return out
    if kind == "aqi":
        return await _aqi(rule, cycle)
    if kind == "congestion":
        return await _congestion(rule, cycle)
    return await _leak(rule, cycle)


async def _aqi(rule: Rule, cycle: Cycle) -> dict[str, Observation]:
    filters = _filters(rule)
    filters.pop("kind", None)

    async def make() -> dict[str, dict[str, list[float | None]]]:
        hourly: dict[str, dict[str, list[float | None]]] = defaultdict(dict)
        for p in POLLUTANTS:
            for district, values in (await cycle.reads.hourly(p, cycle.now, filters)).items():
                hourly[district][p] = values
        return hourly

    hourly = await cycle._memo(("aqi", tuple(sorted(filters.items()))), make)
    out: dict[str, Observation] = {}
    for district, by_p in sorted(hourly.items()):
        r = compute_aqi({p: window_means(v) for p, v in by_p.items()}, rule.standard)  # type: ignore[arg-type]
        if r.aqi is None:
            continue
        subject = {"district": district}
        out[subject_key(subject)] = Observation(
            subject,
            float(r.aqi),
            {
                "standard": rule.standard,
                "level": r.level,
                "category": r.category,
                "primary_pollutants": list(r.primary_pollutants),
            },
        )
    return out


async def _congestion(rule: Rule, cycle: Cycle) -> dict[str, Observation]:
    speed = await cycle.aggregate(rule, "avg_speed", "mean", "device")
    occupancy = await cycle.aggregate(rule, "occupancy", "mean", "device")
    devices = await cycle.devices()
    counters = [
        CounterWindow(
            dev, devices[dev].district, devices[dev].site, speed.get(dev), occupancy.get(dev), None
        )
        for dev in sorted(set(speed) | set(occupancy))
        if dev in devices
    ]
    sites = site_congestion(counters)
    results = sites if rule.group_by == "site" else district_congestion(sites)
    out: dict[str, Observation] = {}
    for c in results:
        if c.index is None:
            continue
        subject = {"district": c.district} if c.site is None else {"site": c.site}
        evidence = {
            "district": c.district,
            "level": c.level,
            "speed": c.speed,
            "devices": c.devices,
        }
        out[subject_key(subject)] = Observation(subject, float(c.index), evidence)
    return out


async def _leak(rule: Rule, cycle: Cycle) -> dict[str, Observation]:
    flags = await cycle.aggregate(rule, "leak", "sum", "device")
    night_start, night_end = last_night_window(cycle.now, cycle.timezone)
    filters = _filters(rule)
    key = ("night", night_start, tuple(sorted(filters.items())))
    nights: dict[str, float] = await cycle._memo(
        key,
        lambda: cycle.reads.aggregate(
            "water_flow", "min", night_start, night_end, "device", filters
        ),
    )
    devices = await cycle.devices()
    out: dict[str, Observation] = {}
    for dev in sorted(set(flags) | set(nights)):
        seen = devices.get(dev)
        meter = MeterEvidence(
            dev,
            seen.district if seen else "",
            seen.site if seen else "",
            int(flags.get(dev, 0)),
            nights.get(dev),
        )
        verdict = judge(meter, rule.night_flow)
        subject = {"device": dev}
        out[subject_key(subject)] = Observation(
            subject,
            1.0 if verdict.suspected else 0.0,
            {
                "district": meter.district,
                "site": meter.site,
                "leak_flags": meter.leak_flags,
                "min_night_flow": meter.min_night_flow,
                "reasons": list(verdict.reasons),
            },
        )
    return out
