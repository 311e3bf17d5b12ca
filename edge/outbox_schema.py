"""The outbox's SQL: the schema as 0.1.0 wrote it, its migrations, and the statements of the
group commit (insert and conflict check). See :mod:`edge.outbox` for the invariants.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from citysense.migrate import Migration, statements
from citysense.model import Reading, Value

_SCHEMA_0_1_0 = """
CREATE TABLE IF NOT EXISTS reading (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    t INTEGER NOT NULL,
    kind TEXT NOT NULL,
    district TEXT NOT NULL,
    site TEXT NOT NULL,
    vals TEXT NOT NULL,
    received INTEGER NOT NULL,
    batch INTEGER NOT NULL DEFAULT 0,
    UNIQUE (device, t)
);
CREATE INDEX IF NOT EXISTS reading_batch ON reading (batch, id);
CREATE TABLE IF NOT EXISTS batch (seq INTEGER PRIMARY KEY, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS downlink (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    expires INTEGER NOT NULL,
    received INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS downlink_device ON downlink (device, received);
"""


def _add_publish_times(db: sqlite3.Connection) -> None:
    # batch.sent: epoch ms of the batch's last publish; 0: due at once (after an upgrade,
    # every batch in flight is published again at start)
    columns = {row[1] for row in db.execute("PRAGMA table_info(batch)")}
    if "sent" not in columns:  # (a development build may have added it already)
        db.execute("ALTER TABLE batch ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")


#: Schema versions of outbox.db (see :mod:`citysense.migrate`); append, never edit.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "citysense 0.1.0: readings, batches, the seq counter, the downlink queue",
        (
            *statements(_SCHEMA_0_1_0),
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', 1)",
        ),
    ),
    Migration(2, "the publish time of each batch", apply=_add_publish_times),
)

# A (device, t) seen again merges its values: an identical repeat changes nothing; a metric
# not held yet is added and the row leaves the batch it was in (a confirmation of that batch
# must not delete the new value). A *different* value for a metric already held never gets
# here: :data:`_CONFLICTS` finds those uplinks first and they are refused as a whole.
# The whole group goes in as one JSON array through one statement: one sqlite3_step, so the
# worker thread gives up and takes back the GIL a handful of times per commit instead of
# twice per row (a convoy with the event loop thread that costs milliseconds each time).
_INSERT = """
INSERT INTO reading (device, t, kind, district, site, vals, received)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value -> 5, value ->> 6
FROM json_each(?) WHERE true
ON CONFLICT (device, t) DO UPDATE SET
    batch = CASE WHEN json_patch(vals, excluded.vals) = vals THEN batch ELSE 0 END,
    vals = json_patch(vals, excluded.vals)
"""

# The uplinks (index 7 of a row) carrying a value that differs from the one held for the same
# device, time and metric.
_CONFLICTS = """
SELECT DISTINCT g.value ->> 7 FROM json_each(?) AS g
JOIN reading AS r ON r.device = g.value ->> 0 AND r.t = g.value ->> 1
WHERE EXISTS (
    SELECT 1 FROM json_each(g.value -> 5) AS n JOIN json_each(r.vals) AS o ON o.key = n.key
    WHERE o.value IS NOT n.value OR o.type IS NOT n.type
)
"""


def _conflicts_within(group: Sequence[tuple[Sequence[Reading], object]]) -> set[int]:
    """Indexes of the uplinks of one commit group that give a (device, metric, time) another
    value than an earlier uplink of the same group (the database sees the group at once)."""
    if len(group) < 2:
        return set()
    seen: dict[tuple[str, int], tuple[int, dict[str, Value]]] = {}
    bad: set[int] = set()
    for i, (readings, _) in enumerate(group):
        for r in readings:
            key = (r.device, r.t)
            held = seen.get(key)
            if held is None:
                seen[key] = (i, r.values)
            elif held[0] != i and _differs(held[1], r.values):
                bad.add(i)
    return bad


def _differs(held: Mapping[str, Value], new: Mapping[str, Value]) -> bool:
    return any(
        name in held and (held[name] != v or type(held[name]) is not type(v))
        for name, v in new.items()
    )
