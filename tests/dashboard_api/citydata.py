"""A small known city for the query and API tests, written straight into storage.

Values follow simple formulas so that tests can compute expected answers independently from
the sample list itself (never through the code under test).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from citysense.catalog import METRICS
from citysense.registry import Device
from timeseries.schema import SQLITE_SCHEMA, SQLITE_UPSERT

HOUR = 3_600_000
MINUTE = 60_000
GATEWAY = "gw-01"


class Sample(NamedTuple):
    metric: str
    device: str
    t: int
    value: float
    kind: str
    district: str
    site: str
    gateway: str = GATEWAY


#: device, kind, district, site, lat, lon: all behind one gateway.
DEVICES: tuple[Device, ...] = tuple(
    Device(*row, GATEWAY)
    for row in (
        ("aq-j1", "air_station", "jinshui", "s1", 34.80, 113.65),
        ("aq-j2", "air_station", "jinshui", "s2", 34.81, 113.66),
        ("aq-z1", "air_station", "zhengdong", "s3", 34.76, 113.73),
        ("tc-j1", "traffic_counter", "jinshui", "s1", 34.80, 113.65),
        ("tc-z1", "traffic_counter", "zhengdong", "s3", 34.76, 113.73),
        ("wm-j1", "water_meter", "jinshui", "s1", 34.80, 113.65),
        ("wm-j2", "water_meter", "jinshui", "s2", 34.81, 113.66),
        ("wm-z1", "water_meter", "zhengdong", "s3", 34.76, 113.73),
    )
)

#: Per-station base concentrations (µg/m³, CO mg/m³), scaled by the hour below.
AIR_BASE: dict[str, dict[str, float]] = {
    "aq-j1": {"pm25": 80.0, "pm10": 120.0, "no2": 60.0, "so2": 20.0, "o3": 100.0, "co": 1.0},
    "aq-j2": {"pm25": 40.0, "pm10": 60.0, "no2": 30.0, "so2": 10.0, "o3": 80.0, "co": 0.6},
    "aq-z1": {"pm25": 20.0, "pm10": 30.0, "no2": 20.0, "so2": 5.0, "o3": 50.0, "co": 0.4},
}


def air_value(device: str, metric: str, hours_ago: int, step: int) -> float:
    """Concentration of ``metric`` at ``aq-*`` ``hours_ago`` hours before the end, minute step."""
    base = AIR_BASE[device][metric]
    return round(base * (1 + 0.02 * (hours_ago % 5)) + step * 0.5, 3)


def city_samples(end_ms: int) -> list[Sample]:
    """24 h of readings ending just before ``end_ms`` (an hour boundary)."""
    out: list[Sample] = []
    by_id = {d.device: d for d in DEVICES}
    start = end_ms - 24 * HOUR

    def add(dev: str, metric: str, t: int, value: float) -> None:
        d = by_id[dev]
        out.append(Sample(metric, dev, t, value, d.kind, d.district, d.site))

    for h in range(24):
        hour_start = end_ms - (h + 1) * HOUR
        for step in range(6):  # every 10 minutes
            t = hour_start + step * 10 * MINUTE
            for dev in AIR_BASE:
                for metric in AIR_BASE[dev]:
                    add(dev, metric, t, air_value(dev, metric, h, step))
            # traffic: jinshui slow and busy, zhengdong free-flowing
            add("tc-j1", "avg_speed", t, 20.0 + step)
            add("tc-j1", "occupancy", t, 35.0)
            add("tc-j1", "vehicle_count", t, 40.0)
            add("tc-z1", "avg_speed", t, 50.0 if h % 2 else 60.0)
            add("tc-z1", "occupancy", t, 8.0)
            add("tc-z1", "vehicle_count", t, 10.0)
            # water: wm-j1 raises its own leak flag once; wm-j2 never rests at night
            add("wm-j1", "water_flow", t, 0.0 if step == 0 else 0.8)
            add("wm-j1", "leak", t, 1.0 if (h == 3 and step == 2) else 0.0)
            add("wm-j2", "water_flow", t, 0.3 + 0.1 * step)
            add("wm-j2", "leak", t, 0.0)
            add("wm-z1", "water_flow", t, 0.0 if step < 3 else 1.2)
            add("wm-z1", "leak", t, 0.0)
    # health: last seen now-ish, a while ago, long ago
    health_times = {
        "aq-j1": end_ms - 2 * MINUTE,
        "aq-j2": end_ms - 20 * MINUTE,  # 4x the 300 s interval: stale
        "aq-z1": end_ms - 2 * MINUTE,
        "tc-j1": end_ms - 1 * MINUTE,
        "tc-z1": start + 5 * MINUTE,  # 24 h ago: offline
        "wm-j1": end_ms - 30 * MINUTE,
        "wm-j2": end_ms - 50 * MINUTE,
        "wm-z1": end_ms - 5 * HOUR,  # 5x the 3600 s interval: stale
    }
    for i, (dev, t) in enumerate(sorted(health_times.items())):
        add(dev, "battery", t, 90.0 - i)
        add(dev, "rsrp", t, -90.0 - i)
        add(dev, "snr", t, 10.0 - i)
        add(dev, "ecl", t, float(i % 3))
        add(dev, "battery", t - HOUR, 99.0)
    return out


def write_sqlite(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SQLITE_SCHEMA)
        conn.executemany(
            SQLITE_UPSERT,
            [
                (
                    s.metric,
                    s.device,
                    s.t,
                    s.value,
                    METRICS[s.metric].domain,
                    s.kind,
                    s.district,
                    s.site,
                    s.gateway,
                )
                for s in samples
            ],
        )
        conn.commit()
    finally:
        conn.close()


def line_protocol(samples: list[Sample]) -> str:
    """Samples grouped into points (measurement, tags, time) as line protocol."""
    points: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for s in samples:
        m = METRICS[s.metric]
        tags = f"device={s.device},kind={s.kind},district={s.district},site={s.site},gateway={s.gateway}"
        value = ("true" if s.value else "false") if m.type == "bool" else repr(float(s.value))
        points[(m.domain, tags, s.t)].append(f"{s.metric}={value}")
    return "\n".join(
        f"{domain},{tags} {','.join(fields)} {t}" for (domain, tags, t), fields in points.items()
    )


def registry_csv(path: Path) -> Path:
    lines = ["device,kind,district,site,lat,lon,gateway"]
    lines += [
        f"{d.device},{d.kind},{d.district},{d.site},{d.lat},{d.lon},{d.gateway}" for d in DEVICES
    ]
    lines.append("aq-new,air_station,jinshui,s1,34.80,113.65,gw-01")  # registered, never seen
    path.write_text("\n".join(lines) + "\n")
    return path
