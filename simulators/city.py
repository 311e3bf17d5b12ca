"""A simulated city: districts, sites and a seeded device fleet (the device registry).

The default city is Zhengzhou: six urban districts with plausible centres, a handful of named
sites in each, and devices of every catalog kind in the proportions a city deployment has
(many meters, fewer traffic counters, fewest air stations). Device ids are IMEI URNs
(``urn:imei:`` + 15 digits with a valid Luhn check digit).

Invariants: :func:`generate_fleet` is a pure function of its arguments (same seed, same
fleet); every device id is unique and matches the registry's id pattern; every kind is
present once there are at least as many devices as kinds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from citysense.catalog import KINDS
from citysense.registry import Device

#: Share of each kind in a fleet (largest remainder allocation).
KIND_SHARES: dict[str, float] = {
    "water_meter": 0.30,
    "electricity_meter": 0.22,
    "parking_sensor": 0.18,
    "gas_meter": 0.14,
    "traffic_counter": 0.09,
    "air_station": 0.07,
}

#: A Type Allocation Code (first 8 IMEI digits) of an NB-IoT module family.
IMEI_TAC = "86772603"
KM_PER_DEG_LAT = 111.32


@dataclass(frozen=True, slots=True)
class Site:
    """A named place inside a district where devices are installed."""

    name: str
    lat: float
    lon: float
    #: typical radio conditions: median RSRP (dBm) of devices at this site
    rsrp_dbm: float


@dataclass(frozen=True, slots=True)
class District:
    name: str
    lat: float
    lon: float
    sites: tuple[Site, ...]
    #: relative weight when devices are spread over districts
    weight: float
    #: pollution factor of the district's background air (1.0 = city average)
    pollution: float


def _site(name: str, lat: float, lon: float, rsrp: float) -> Site:
    return Site(name, lat, lon, rsrp)


#: Zhengzhou's urban districts with plausible centres and sites.
ZHENGZHOU: tuple[District, ...] = (
    District(
        "zhongyuan",
        34.7480,
        113.6120,
        (
            _site("bishagang-park", 34.7560, 113.6340, -88.0),
            _site("zhengzhou-university", 34.8170, 113.5360, -84.0),
            _site("mianfang-road", 34.7580, 113.6050, -95.0),
            _site("xiliu-lake", 34.7620, 113.5620, -101.0),
        ),
        1.0,
        1.05,
    ),
    District(
        "erqi",
        34.7300,
        113.6400,
        (
            _site("erqi-square", 34.7530, 113.6690, -86.0),
            _site("dehua-street", 34.7560, 113.6660, -92.0),
            _site("zhengzhou-station", 34.7460, 113.6580, -90.0),
            _site("songshan-road", 34.7230, 113.6250, -104.0),
        ),
        1.0,
        1.10,
    ),
    District(
        "guancheng",
        34.7540,
        113.6800,
        (
            _site("shang-city-wall", 34.7580, 113.6890, -93.0),
            _site("zijingshan", 34.7640, 113.6810, -89.0),
            _site("nanguan-market", 34.7390, 113.6890, -108.0),
        ),
        0.8,
        1.08,
    ),
    District(
        "jinshui",
        34.8000,
        113.6600,
        (
            _site("renmin-park", 34.7700, 113.6660, -87.0),
            _site("weilai-road", 34.7870, 113.6930, -91.0),
            _site("huayuan-road", 34.7890, 113.6690, -94.0),
            _site("zhengzhou-east-hospital", 34.8020, 113.6540, -99.0),
        ),
        1.2,
        1.00,
    ),
    District(
        "huiji",
        34.8500,
        113.6200,
        (
            _site("yellow-river-park", 34.8990, 113.5800, -112.0),
            _site("huayuankou", 34.9050, 113.6700, -115.0),
            _site("huiji-centre", 34.8520, 113.6330, -98.0),
        ),
        0.6,
        0.90,
    ),
    District(
        "zhengdong",
        34.7700,
        113.7300,
        (
            _site("ruyi-lake", 34.7730, 113.7310, -82.0),
            _site("cbd", 34.7640, 113.7280, -85.0),
            _site("longhu", 34.7980, 113.7350, -92.0),
            _site("convention-center", 34.7770, 113.7370, -88.0),
            _site("zhengzhou-east-station", 34.7560, 113.7740, -96.0),
        ),
        1.4,
        0.95,
    ),
)


def luhn_check_digit(digits: str) -> int:
    """The Luhn check digit that completes ``digits`` (an IMEI's 15th digit)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled: the digit right before the check digit, and every other
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def luhn_valid(number: str) -> bool:
    return number.isdigit() and luhn_check_digit(number[:-1]) == int(number[-1])


def imei(serial: int, tac: str = IMEI_TAC) -> str:
    """A 15-digit IMEI: TAC, a 6-digit serial number and the Luhn check digit."""
    body = f"{tac}{serial % 1_000_000:06d}"
    return body + str(luhn_check_digit(body))


def gateway_ids(count: int) -> tuple[str, ...]:
    """``gw-01``, ``gw-02``... (``gw-01`` is the gateway's default id)."""
    return tuple(f"gw-{i + 1:02d}" for i in range(count))


def kind_counts(devices: int, shares: dict[str, float] = KIND_SHARES) -> dict[str, int]:
    """How many devices of each kind: largest remainder, every kind once when possible."""
    kinds = [k for k in shares if k in KINDS]
    total = sum(shares[k] for k in kinds)
    exact = {k: devices * shares[k] / total for k in kinds}
    counts = {k: math.floor(v) for k, v in exact.items()}
    if devices >= len(kinds):
        for k in kinds:
            counts[k] = max(counts[k], 1)
    while sum(counts.values()) > devices:
        # take back from the largest kind (only happens after the minimum of one)
        k = max(kinds, key=lambda k: counts[k])
        counts[k] -= 1
    by_remainder = sorted(kinds, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)
    i = 0
    while sum(counts.values()) < devices:
        counts[by_remainder[i % len(kinds)]] += 1
        i += 1
    return counts


def generate_fleet(
    devices: int,
    seed: int = 1,
    gateways: int | Sequence[str] = 1,
    districts: Sequence[District] = ZHENGZHOU,
) -> list[Device]:
    """A seeded fleet of ``devices`` devices spread over ``districts``.

    ``gateways`` is a number of gateways (ids ``gw-01``...) or the ids themselves. Sites are
    split into contiguous blocks, one per gateway, so that a gateway serves nearby devices;
    with more gateways than sites, devices are dealt to gateways in turn.
    """
    if devices < 0:
        raise ValueError("devices must not be negative")
    gw_ids = gateway_ids(gateways) if isinstance(gateways, int) else tuple(gateways)
    if not gw_ids:
        raise ValueError("at least one gateway is needed")
    rng = random.Random(f"citysense-fleet-{seed}")
    sites = [(d, s) for d in districts for s in d.sites]
    weights = [d.weight / len(d.sites) for d, _ in sites]
    if len(gw_ids) <= len(sites):
        site_gateway = [gw_ids[i * len(gw_ids) // len(sites)] for i in range(len(sites))]
    else:
        site_gateway = []
    kinds: list[str] = []
    for kind, n in kind_counts(devices).items():
        kinds.extend([kind] * n)
    rng.shuffle(kinds)
    serials = rng.sample(range(1_000_000), devices) if devices <= 1_000_000 else None
    if serials is None:
        raise ValueError("at most 1,000,000 devices (the IMEI serial space of one TAC)")
    out: list[Device] = []
    for i, kind in enumerate(kinds):
        site_index = rng.choices(range(len(sites)), weights)[0]
        district, site = sites[site_index]
        # scatter devices around their site: a few hundred metres
        dy_km, dx_km = rng.gauss(0.0, 0.35), rng.gauss(0.0, 0.35)
        lat = site.lat + dy_km / KM_PER_DEG_LAT
        lon = site.lon + dx_km / (KM_PER_DEG_LAT * math.cos(math.radians(site.lat)))
        gateway = site_gateway[site_index] if site_gateway else gw_ids[i % len(gw_ids)]
        out.append(
            Device(
                device=f"urn:imei:{imei(serials[i])}",
                kind=kind,
                district=district.name,
                site=site.name,
                lat=round(lat, 6),
                lon=round(lon, 6),
                gateway=gateway,
            )
        )
    return out


def district_named(name: str, districts: Sequence[District] = ZHENGZHOU) -> District | None:
    return next((d for d in districts if d.name == name), None)


def site_named(district: str, site: str, districts: Sequence[District] = ZHENGZHOU) -> Site | None:
    d = district_named(district, districts)
    if d is None:
        return None
    return next((s for s in d.sites if s.name == site), None)
