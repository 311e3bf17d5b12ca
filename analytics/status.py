"""Device status from the time it was last seen and its kind's reporting interval.

* ``online``: last seen within 2 reporting intervals (one missed uplink is normal);
* ``stale``: within 6 intervals;
* ``offline``: longer ago, or never seen.

A last-seen time in the future (clock skew, at most the 5 minutes validation allows) counts
as just now.
"""

from __future__ import annotations

from typing import Literal

from citysense.catalog import KINDS

Status = Literal["online", "stale", "offline"]
STATUSES: tuple[str, ...] = ("online", "stale", "offline")
ONLINE_INTERVALS = 2
STALE_INTERVALS = 6


def status_ages(kind: str) -> tuple[int, int]:
    """The oldest age (ms) at which a device of ``kind`` is still ``online``, and still
    ``stale`` (unknown kinds report hourly)."""
    interval_ms = (KINDS[kind].report_interval_s if kind in KINDS else 3600) * 1000
    return ONLINE_INTERVALS * interval_ms, STALE_INTERVALS * interval_ms


def device_status(kind: str, last_seen_ms: int | None, now_ms: int) -> Status:
    """``online``/``stale``/``offline`` for a device of ``kind`` (unknown kinds: 1 hour)."""
    if last_seen_ms is None:
        return "offline"
    online, stale = status_ages(kind)
    age = max(0, now_ms - last_seen_ms)
    if age <= online:
        return "online"
    if age <= stale:
        return "stale"
    return "offline"
