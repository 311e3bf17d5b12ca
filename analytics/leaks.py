"""Water leak suspicion per meter, from its own leak flag and its minimum night flow.

A meter is suspected when either

* it raised its leak flag at least once in the flag window (the last 24 hours), or
* its minimum flow during the last night window (02:00-04:00 local time, when legitimate use
  is near zero) stays above a threshold: water that never stops flowing at night.

Each verdict carries the evidence (flag count, minimum night flow, threshold, window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

DEFAULT_NIGHT_FLOW_THRESHOLD = 0.05  #: m³/h
NIGHT_START_HOUR = 2
NIGHT_END_HOUR = 4


@dataclass(frozen=True, slots=True)
class MeterEvidence:
    device: str
    district: str
    site: str
    leak_flags: int  #: times the meter reported leak=true in the flag window
    min_night_flow: float | None  #: m³/h, ``None``: no flow reported in the night window
    night_samples: int = 0


@dataclass(frozen=True, slots=True)
class LeakVerdict:
    evidence: MeterEvidence
    suspected: bool
    reasons: tuple[str, ...]


def last_night_window(now_ms: int, tz: str = "UTC") -> tuple[int, int]:
    """The most recent complete 02:00-04:00 window (local time in ``tz``) before ``now``."""
    zone = ZoneInfo(tz)
    now = datetime.fromtimestamp(now_ms / 1000, zone)
    day = now.date()
    for back in range(3):
        d = day - timedelta(days=back)
        start = datetime(d.year, d.month, d.day, NIGHT_START_HOUR, tzinfo=zone)
        end = datetime(d.year, d.month, d.day, NIGHT_END_HOUR, tzinfo=zone)
        if end.timestamp() * 1000 <= now_ms:
            return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    raise AssertionError("unreachable")  # pragma: no cover


def judge(meter: MeterEvidence, threshold: float) -> LeakVerdict:
    reasons: list[str] = []
    if meter.leak_flags > 0:
        reasons.append(f"leak flag raised {meter.leak_flags} time(s)")
    if meter.min_night_flow is not None and meter.min_night_flow > threshold:
        reasons.append(f"minimum night flow {meter.min_night_flow:g} m³/h above {threshold:g} m³/h")
    return LeakVerdict(meter, bool(reasons), tuple(reasons))


def suspected_leaks(meters: Sequence[MeterEvidence], threshold: float) -> list[LeakVerdict]:
    """Suspected meters only, the strongest evidence first (flags, then night flow)."""
    verdicts = [v for v in (judge(m, threshold) for m in meters) if v.suspected]
    verdicts.sort(
        key=lambda v: (
            -v.evidence.leak_flags,
            -(v.evidence.min_night_flow or 0.0),
            v.evidence.device,
        )
    )
    return verdicts
