"""Traffic congestion index per site and district, from speed, free-flow speed and occupancy.

For a site, over the recent window:

* speed index = clamp(1 - speed / free_flow, 0, 1): how far below free flow traffic moves;
* occupancy index = clamp((occupancy - 15) / (30 - 15), 0, 1): detector occupancy under 15 %
  is free flow and above 30 % congested (PROTOCOLS.md 8.1);
* index = 10 * max(speed index, occupancy index), on the 0-10 scale of China's traffic
  performance index, with its levels: < 2 free, < 4 light, < 6 moderate, < 8 heavy, else severe.

The free-flow speed of a site is the 85th percentile of its hourly mean speeds over the
reference period (the past week), unless the operator gives one; with fewer than 6 hourly
values it falls back to :data:`DEFAULT_FREE_FLOW_KMH`. A district's index is the site indices'
mean weighted by vehicles counted (equal weights when nothing was counted).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_FREE_FLOW_KMH = 50.0
FREE_OCCUPANCY = 15.0
CONGESTED_OCCUPANCY = 30.0
MIN_HOURS_FOR_FREE_FLOW = 6
LEVELS: tuple[tuple[float, str], ...] = (
    (2.0, "free"),
    (4.0, "light"),
    (6.0, "moderate"),
    (8.0, "heavy"),
    (float("inf"), "severe"),
)


@dataclass(frozen=True, slots=True)
class CounterWindow:
    """What one traffic counter measured: recent means and its hourly speed history."""

    device: str
    district: str
    site: str
    speed: float | None  #: mean km/h over the recent window
    occupancy: float | None  #: mean % over the recent window
    vehicles: float | None  #: vehicles counted in the recent window
    hourly_speeds: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Congestion:
    district: str
    site: str | None  #: ``None`` for a district
    index: float | None
    level: str | None
    speed: float | None
    free_flow: float | None
    free_flow_source: str  #: "p85", "default", "given" or "" (district)
    occupancy: float | None
    speed_index: float | None
    occupancy_index: float | None
    vehicles: float
    devices: int


def free_flow_speed(hourly_speeds: Sequence[float]) -> tuple[float, str]:
    """The 85th percentile of hourly mean speeds, or the default with too few hours."""
    if len(hourly_speeds) < MIN_HOURS_FOR_FREE_FLOW:
        return DEFAULT_FREE_FLOW_KMH, "default"
    return float(np.percentile(np.asarray(hourly_speeds, dtype=float), 85)), "p85"


def congestion_index(
    speed: float | None, free_flow: float, occupancy: float | None
) -> tuple[float | None, float | None, float | None]:
    """(index 0-10, speed index 0-1, occupancy index 0-1); ``None`` parts were not measured."""
    s_idx = None
    if speed is not None and free_flow > 0:
        s_idx = min(1.0, max(0.0, 1.0 - speed / free_flow))
    o_idx = None
    if occupancy is not None:
        span = CONGESTED_OCCUPANCY - FREE_OCCUPANCY
        o_idx = min(1.0, max(0.0, (occupancy - FREE_OCCUPANCY) / span))
    parts = [p for p in (s_idx, o_idx) if p is not None]
    return (10.0 * max(parts) if parts else None), s_idx, o_idx


def level_of(index: float | None) -> str | None:
    if index is None:
        return None
    for top, name in LEVELS:
        if index < top:
            return name
    return LEVELS[-1][1]  # pragma: no cover


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def site_congestion(
    counters: Sequence[CounterWindow], free_flow_given: float | None = None
) -> list[Congestion]:
    """One :class:`Congestion` per (district, site), sorted."""
    by_site: dict[tuple[str, str], list[CounterWindow]] = defaultdict(list)
    for c in counters:
        by_site[(c.district, c.site)].append(c)
    out: list[Congestion] = []
    for (district, site), group in sorted(by_site.items()):
        speed = _mean([c.speed for c in group])
        occupancy = _mean([c.occupancy for c in group])
        vehicles = float(sum(c.vehicles or 0.0 for c in group))
        if free_flow_given is not None:
            free_flow, source = free_flow_given, "given"
        else:
            history = [s for c in group for s in c.hourly_speeds]
            free_flow, source = free_flow_speed(history)
        index, s_idx, o_idx = congestion_index(speed, free_flow, occupancy)
        out.append(
            Congestion(
                district,
                site,
                None if index is None else round(index, 2),
                level_of(index),
                speed,
                round(free_flow, 2),
                source,
                occupancy,
                s_idx,
                o_idx,
                vehicles,
                len(group),
            )
        )
    return out


def district_congestion(sites: Sequence[Congestion]) -> list[Congestion]:
    """Each district's vehicle-weighted mean of its sites' indices."""
    by_district: dict[str, list[Congestion]] = defaultdict(list)
    for s in sites:
        by_district[s.district].append(s)
    out: list[Congestion] = []
    for district, group in sorted(by_district.items()):
        rated = [s for s in group if s.index is not None]
        index = None
        if rated:
            weights = np.asarray([s.vehicles for s in rated], dtype=float)
            values = np.asarray([s.index for s in rated], dtype=float)
            if weights.sum() <= 0:
                weights = np.ones_like(values)
            index = round(float(np.average(values, weights=weights)), 2)
        out.append(
            Congestion(
                district,
                None,
                index,
                level_of(index),
                _mean([s.speed for s in group]),
                None,
                "",
                _mean([s.occupancy for s in group]),
                None,
                None,
                float(sum(s.vehicles for s in group)),
                sum(s.devices for s in group),
            )
        )
    return out
