"""What a viewer sees: district-level data only (INTERFACES.md section 7).

Operators get every answer as the routes build it; for a viewer each route passes its answer
through the function of its own here, which keeps what is about districts and drops (or
aggregates) what is about devices and sites: no device id and no site-level value leaves the
API with a viewer key. The filters a viewer may not use (``device=``, ``site=``,
``group_by=device|site``) are refused by the routes with 403.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from dashboard_api import models
from dashboard_api.auth import Principal
from dashboard_api.parameters import rfc3339
from timeseries.query import LatestValue

A = TypeVar("A")


def for_viewers(
    transform: Callable[[Principal, A], A],
) -> Callable[[Callable[..., Awaitable[A]]], Callable[..., Awaitable[A]]]:
    """Route decorator: the route's answer goes through ``transform`` (which returns an
    operator's answer unchanged). FastAPI sees the route's own signature (``__wrapped__``)."""

    def wrap(route: Callable[..., Awaitable[A]]) -> Callable[..., Awaitable[A]]:
        @functools.wraps(route)
        async def answer(*args: Any, **kwargs: Any) -> A:
            return transform(kwargs["principal"], await route(*args, **kwargs))

        return answer

    return wrap


#: Alarm subjects a viewer sees (INTERFACES.md section 10.6): places, not devices or sites.
VIEWER_SUBJECTS = frozenset({"district", "gateway"})


def check_filters(
    principal: Principal, *, device: str | None, site: str | None, group_by: str | None = None
) -> None:
    """403 for a viewer who asks for a device, a site, or groups by either."""
    if device is not None:
        principal.require_operator("device=")
    if site is not None:
        principal.require_operator("site=")
    if group_by in ("device", "site"):
        principal.require_operator(f"group_by={group_by}")


def latest(rows: Iterable[LatestValue]) -> list[dict[str, Any]]:
    """Latest values per district and kind: the mean, min and max of the devices' latest
    values of each metric, the newest time among them, and how many devices gave one."""
    groups: dict[tuple[str, str], dict[str, list[LatestValue]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        groups[(r.district, r.kind)][r.metric].append(r)
    out = []
    for (district, kind), by_metric in sorted(groups.items()):
        values = {}
        for metric, items in sorted(by_metric.items()):
            vs = [i.value for i in items]
            values[metric] = {
                "time": rfc3339(max(i.t for i in items)),
                "value": sum(vs) / len(vs),
                "min": min(vs),
                "max": max(vs),
                "devices": len(items),
            }
        out.append({"district": district, "kind": kind, "values": values})
    return out


def congestion(
    principal: Principal, answer: models.CongestionResponse
) -> models.CongestionResponse:
    """Districts only: no site indices, no flagged counters."""
    if principal.role == "operator":
        return answer
    return answer.model_copy(update={"sites": [], "excluded": []})


def leaks(principal: Principal, answer: models.LeaksResponse) -> models.LeaksResponse:
    """Suspected leaks counted per district, in place of the meters and their evidence."""
    if principal.role == "operator":
        return answer
    per: dict[str, int] = defaultdict(int)
    for leak in answer.leaks:
        per[leak.district] += 1
    return answer.model_copy(
        update={"leaks": [], "excluded": [], "districts": dict(sorted(per.items()))}
    )


def aqi(principal: Principal, answer: models.AqiResponse) -> models.AqiResponse:
    """The districts' AQI without the flagged devices left out of it."""
    if principal.role == "operator":
        return answer
    districts = [d.model_copy(update={"excluded": []}) for d in answer.districts]
    return answer.model_copy(update={"districts": districts})


def alarms(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Alarms about districts and gateways, without their evidence (it names devices)."""
    out = []
    for alarm in items:
        subject = alarm.get("subject")
        if not isinstance(subject, Mapping) or not set(subject) <= VIEWER_SUBJECTS:
            continue
        out.append({k: v for k, v in alarm.items() if k != "evidence"})
    return out
