"""Devices and districts: last seen, status and radio health; device counts and AQI."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import orjson
from fastapi.responses import Response

from analytics.aqi import DEFAULT_STANDARD, Standard
from analytics.status import status_ages
from citysense.catalog import DEFAULT_MAX_AGE_MS, MAX_FUTURE_SKEW_MS
from citysense.registry import Device
from dashboard_api import models
from dashboard_api.auth import CurrentPrincipal
from dashboard_api.latest_cache import ALL_METRICS, latest_of_all
from dashboard_api.parameters import rfc3339
from dashboard_api.quality import Flag
from dashboard_api.routes_common import (
    HEALTH_SHOWN,
    ApiContext,
    AtQ,
    Context,
    DistrictQ,
    JSONParts,
    KindQ,
    ResourceRouter,
    StatusName,
    When,
    _filters,
)
from dashboard_api.routes_environment import district_aqi
from timeseries.query import LatestValue

router = ResourceRouter()
T = TypeVar("T")


@dataclass(slots=True)
class _Seen:
    kind: str
    district: str
    site: str
    last_seen: int
    values: dict[str, float]


async def seen_devices(ctx: ApiContext, filters: dict[str, str], at: When) -> dict[str, _Seen]:
    """Devices with a reading of any metric in the last 7 days: last seen at their newest
    reading, with their newest health figures (from the latest-value table: not to be
    changed by the caller)."""
    return await _from_table(ctx, "seen", filters, at, _seen_of)


async def _from_table(
    ctx: ApiContext,
    label: str,
    filters: dict[str, str],
    at: When,
    render: Callable[[list[LatestValue]], T],
) -> T:
    """``render`` of every metric's newest value per device over the last 7 days: from the
    latest-value table's reused answers about now, else from storage."""
    span = (at.ms - DEFAULT_MAX_AGE_MS, at.ms + MAX_FUTURE_SKEW_MS)
    live = ctx.live(at)
    if live is not None:
        return live.answer(label, ALL_METRICS, filters, *span, render)[0]
    return render(await latest_of_all(ctx.reader, filters, *span))


def _seen_of(rows: list[LatestValue]) -> dict[str, _Seen]:
    seen: dict[str, _Seen] = {}
    for r in rows:
        s = seen.get(r.device)
        if s is None:
            s = seen[r.device] = _Seen(r.kind, r.district, r.site, r.t, {})
        s.last_seen = max(s.last_seen, r.t)
        if r.metric in HEALTH_SHOWN:
            s.values[r.metric] = r.value
    return seen


_STATUS_ORDER = {"offline": 0, "stale": 1, "online": 2}
_STATUS_NAMES = list(_STATUS_ORDER)
#: what stands between a device's age and its tail in ``/devices``, per status order
_STATUS_JSON = [f',"status":"{s}",'.encode() for s in _STATUS_ORDER]


@dataclass(frozen=True, slots=True)
class _Listing:
    """``/devices`` rendered once per change of the table, around what changes with the
    clock: each device's JSON before its age (``head``) and after its status (``tail``, up to
    its flags), and as arrays what its age and status are computed from on each request --
    for a city's 10,000 devices, in a few vector operations instead of a loop."""

    index: dict[str, int]  #: device -> its place in the lists and arrays (sorted by device)
    heads: list[bytes]  #: ``,{"device": ... "last_seen": ...,"age_s":`` (leading comma)
    tails: list[bytes]  #: ``"battery": ... "registered": ...,"flags":``
    unflagged: list[bytes]  #: the tail with no flags: ``...,"flags":[]}``
    last_seen: np.ndarray  #: ms, NaN when never seen
    online_age: np.ndarray  #: the oldest age (ms) still online, per device
    stale_age: np.ndarray  #: ... still stale
    #: the tails with the flags of one flag table, and that table (:meth:`with_flags`)
    flagged: list[tuple[Mapping[str, list[Flag]], list[bytes]]] = field(default_factory=list)

    def with_flags(self, flagged: Mapping[str, list[Flag]]) -> list[bytes]:
        """Each device's tail with its open flags: rendered once per flag table (a new one
        at each quality evaluation), not on every request. The table is kept with its
        tails, so it is the same table while they are reused."""
        if self.flagged and self.flagged[0][0] is flagged:
            return self.flagged[0][1]
        tails = list(self.unflagged)
        for dev_id, mine in flagged.items():
            i = self.index.get(dev_id)
            if i is not None:
                flags = [
                    {"metric": f.metric, "reason": f.reason, "since": rfc3339(f.since)}
                    for f in mine
                ]
                tails[i] = self.tails[i] + orjson.dumps(flags) + b"}"
        self.flagged[:] = [(flagged, tails)]
        return tails


def _listing(
    registry: Mapping[str, Device], kind: str | None, district: str | None
) -> Callable[[list[LatestValue]], _Listing]:
    def render(rows: list[LatestValue]) -> _Listing:
        seen = _seen_of(rows)
        index: dict[str, int] = {}
        heads: list[bytes] = []
        tails: list[bytes] = []
        last_seen: list[float] = []
        ages: list[tuple[int, int]] = []
        for dev_id in sorted(seen.keys() | registry.keys()):
            reg = registry.get(dev_id)
            s = seen.get(dev_id)
            dev_kind = reg.kind if reg else s.kind if s else ""
            dev_district = reg.district if reg else s.district if s else ""
            if (kind and dev_kind != kind) or (district and dev_district != district):
                continue
            last = s.last_seen if s else None
            values = s.values if s else {}
            head = {
                "device": dev_id,
                "kind": dev_kind,
                "district": dev_district,
                "site": reg.site if reg else s.site if s else "",
                "lat": reg.lat if reg else None,
                "lon": reg.lon if reg else None,
                "last_seen": rfc3339(last) if last is not None else None,
            }
            tail = {
                "battery": values.get("battery"),
                "rsrp": values.get("rsrp"),
                "snr": values.get("snr"),
                "ecl": values.get("ecl"),
                "registered": reg is not None,
            }
            index[dev_id] = len(heads)
            heads.append(b"," + orjson.dumps(head)[:-1] + b',"age_s":')
            tails.append(orjson.dumps(tail)[1:-1] + b',"flags":')
            last_seen.append(float(last) if last is not None else np.nan)
            ages.append(status_ages(dev_kind))
        bounds = np.array(ages, dtype=np.float64).reshape(-1, 2)
        return _Listing(
            index,
            heads,
            tails,
            [t + b"[]}" for t in tails],
            np.array(last_seen, dtype=np.float64),
            bounds[:, 0],
            bounds[:, 1],
        )

    return render


def _listed_json(
    listing: _Listing, at_ms: int, status: str | None, flagged: Mapping[str, list[Flag]]
) -> tuple[bytes, dict[str, int]]:
    """The devices of ``listing`` at ``at_ms`` (offline first, by device within a status) as
    the JSON array's inside, and how many of each status (of those listed)."""
    age_ms = at_ms - listing.last_seen  # NaN (never seen) compares false: offline
    order = np.where(age_ms <= listing.online_age, 2, np.where(age_ms <= listing.stale_age, 1, 0))
    picked = np.argsort(order, kind="stable")  # by device within a status, as rendered
    if status:
        picked = picked[order[picked] == _STATUS_ORDER[status]]
    codes = order[picked]
    counts = dict(zip(_STATUS_NAMES, np.bincount(codes, minlength=3).tolist(), strict=True))
    idx = picked.tolist()
    if not idx:
        return b"", counts
    # orjson writes NaN as null: a device never seen has no age
    age = orjson.dumps((age_ms[picked] / 1000).tolist())[1:-1].split(b",")
    tails = listing.with_flags(flagged) if flagged else listing.unflagged
    pieces: list[bytes] = [b""] * (4 * len(idx))
    pieces[0::4] = [listing.heads[i] for i in idx]
    pieces[1::4] = age
    pieces[2::4] = [_STATUS_JSON[o] for o in codes.tolist()]
    pieces[3::4] = [tails[i] for i in idx]
    pieces[0] = pieces[0][1:]  # no comma before the first
    return b"".join(pieces), counts


@router.read(
    "/api/v1/devices",
    models.DeviceList,
    "operator",
    "devices with last seen time, status and radio health (offline first)",
)
async def devices(
    ctx: Context,
    at: AtQ,
    district: DistrictQ = None,
    kind: KindQ = None,
    status: StatusName | None = None,
) -> Response:
    at_ms = at.ms
    render = _listing(ctx.registry or {}, kind, district)
    label = f"devices:{kind}:{district}"
    listing = await _from_table(ctx, label, _filters(district=district, kind=kind), at, render)
    flagged = ctx.quality.open_by_device() if ctx.quality is not None else {}
    listed, counts = _listed_json(listing, at_ms, status, flagged)
    # Built as JSON text (a city's thousands of devices): the shape is DeviceList, checked by
    # the OpenAPI conformance tests.
    head = b'{"at":' + orjson.dumps(rfc3339(at_ms)) + b',"devices":['
    return JSONParts((head, listed, b'],"counts":' + orjson.dumps(counts) + b"}"))


@router.read(
    "/api/v1/districts",
    models.DistrictList,
    "viewer",
    "every district with device counts by kind and its current AQI",
)
async def districts(
    ctx: Context,
    at: AtQ,
    principal: CurrentPrincipal,
    standard: Standard = DEFAULT_STANDARD,
) -> models.DistrictList:
    at_ms = at.ms
    seen, aqis = await asyncio.gather(
        seen_devices(ctx, {}, at), district_aqi(ctx, at_ms, standard, None)
    )
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    places: dict[str, list[tuple[float, float]]] = defaultdict(list)
    registry: Mapping[str, Device] = ctx.registry or {}
    for d in registry.values():
        kinds[d.district][d.kind] += 1
        places[d.district].append((d.lat, d.lon))
    for dev_id, s in seen.items():
        if dev_id not in registry:
            kinds[s.district][s.kind] += 1
    by_name = {a.district: a for a in aqis}
    out = []
    for name in sorted(set(kinds) | set(by_name)):
        pts = places.get(name)
        a = by_name.get(name)
        out.append(
            models.District(
                district=name,
                devices=dict(sorted(kinds[name].items())),
                device_count=sum(kinds[name].values()),
                lat=sum(p[0] for p in pts) / len(pts) if pts else None,
                lon=sum(p[1] for p in pts) / len(pts) if pts else None,
                aqi=models.AqiBrief(
                    aqi=a.aqi,
                    category=a.category,
                    colour=a.colour,
                    primary_pollutants=a.primary_pollutants,
                )
                if a
                else None,
            )
        )
    return models.DistrictList(at=rfc3339(at_ms), standard=standard, districts=out)
