"""The storage schema (INTERFACES.md section 6), shared by every writer and query.

* measurement = the metric's domain (``environment``, ``traffic``, ``utility``,
  ``device_health``);
* tags = ``device, kind, district, site, gateway``;
* fields = the catalog's metrics with their catalog types (float or boolean);
* time = the reading's ``t`` in epoch milliseconds.

A reading carrying metrics of several domains (every kind reports device_health) becomes one
point per domain. The same (measurement, tags, time) written twice is one point.

The embedded SQLite store keeps the same facts in long form, one row per value, keyed by
(metric, device, t) -- see :data:`SQLITE_SCHEMA`.
"""

from __future__ import annotations

from dataclasses import dataclass

from citysense.catalog import METRICS
from citysense.model import Reading, Value

TAG_KEYS: tuple[str, ...] = ("device", "kind", "district", "site", "gateway")


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point: ``tags`` in :data:`TAG_KEYS` order, ``t`` in epoch ms."""

    measurement: str
    tags: tuple[str, str, str, str, str]
    fields: dict[str, Value]
    t: int

    def tag_dict(self) -> dict[str, str]:
        return dict(zip(TAG_KEYS, self.tags, strict=True))


def reading_to_points(reading: Reading, gateway: str) -> list[Point]:
    """Map a validated reading to one point per domain, values in their catalog type."""
    tags = (reading.device, reading.kind, reading.district, reading.site, gateway)
    by_domain: dict[str, dict[str, Value]] = {}
    for metric, value in reading.values.items():
        spec = METRICS[metric]
        fields = by_domain.setdefault(spec.domain, {})
        fields[metric] = bool(value) if spec.type == "bool" else float(value)
    return [Point(domain, tags, fields, reading.t) for domain, fields in by_domain.items()]


#: Embedded store: one row per value; booleans stored as 0.0/1.0 (their type is the catalog's).
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    metric      TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    t           INTEGER NOT NULL,
    value       REAL    NOT NULL,
    measurement TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    district    TEXT    NOT NULL,
    site        TEXT    NOT NULL,
    gateway     TEXT    NOT NULL,
    PRIMARY KEY (metric, device, t)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_by_district ON samples (metric, district, t);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (t);
"""

#: Upsert of one value: a repeated (metric, device, t) overwrites, as InfluxDB does.
SQLITE_UPSERT = """
INSERT INTO samples (metric, device, t, value, measurement, kind, district, site, gateway)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (metric, device, t) DO UPDATE SET
    value = excluded.value, measurement = excluded.measurement, kind = excluded.kind,
    district = excluded.district, site = excluded.site, gateway = excluded.gateway
"""

SQLITE_FILENAME = "timeseries.sqlite3"
