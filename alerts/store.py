"""Alarm state, history and the notification queue, durably in SQLite (``alerts.sqlite3``).

* A state change (raise, acknowledge, clear), its event and one queue row per receiver are
  written in one transaction, committed with ``synchronous=FULL`` before anything is sent:
  a crash after the commit leaves the event queued, a crash before it leaves nothing to send.
* An event's body (with its ``event_id``) is fixed when the event is written; every delivery
  attempt sends the same bytes, so a receiver drops repeats by ``event_id``.
* One open alarm per (rule, subject): a unique index over alarms not yet cleared.
* The folder is 0700, the database files 0600.

Every method blocks; the service calls them from a worker thread (one connection, one lock).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts.engine import Transition
from citysense.durable import connect_versioned, write_transaction
from citysense.migrate import Migration, statements
from citysense.privatefiles import private_file

FILENAME = "alerts.sqlite3"
STATES: tuple[str, ...] = ("raised", "acknowledged", "cleared")

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    subject_key TEXT NOT NULL,
    subject TEXT NOT NULL,
    district TEXT,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    value REAL,
    raised_at INTEGER NOT NULL,
    acknowledged_at INTEGER,
    acknowledged_by TEXT,
    comment TEXT,
    cleared_at INTEGER,
    evidence TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_open ON alarms (rule, subject_key)
    WHERE state != 'cleared';
CREATE INDEX IF NOT EXISTS alarms_raised ON alarms (raised_at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    alarm_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_alarm ON events (alarm_id, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    receiver TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_error TEXT,
    delivered_at INTEGER,
    PRIMARY KEY (receiver, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (receiver, next_at, seq)
    WHERE delivered_at IS NULL;
"""

#: Schema versions of the alarm store (see :mod:`citysense.migrate`); append, never edit.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "alarms, their events, deliveries per receiver", statements(SCHEMA)),
)


class AlarmNotFound(LookupError):
    pass


class AlarmConflict(ValueError):
    pass


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """One queued delivery: the event's bytes are fixed, ``attempts`` so far."""

    seq: int
    event_id: str
    body: bytes
    attempts: int


_ALARM_COLUMNS = (
    "id, rule, subject, severity, state, value, raised_at, acknowledged_at, "
    "acknowledged_by, comment, cleared_at, evidence"
)


def _alarm(row: Sequence[Any]) -> dict[str, Any]:
    (aid, rule, subject, severity, state, value, raised, acked, by, comment, cleared, ev) = row
    return {
        "id": aid,
        "rule": rule,
        "subject": json.loads(subject),
        "severity": severity,
        "state": state,
        "value": value,
        "raised_at": rfc3339(raised),
        "acknowledged_at": rfc3339(acked),
        "acknowledged_by": by,
        "comment": comment,
        "cleared_at": rfc3339(cleared),
        "evidence": json.loads(ev),
    }


class AlarmStore:
    def __init__(self, state_dir: str | Path) -> None:
        # created 0600 before SQLite opens it: its -wal and -shm files take its mode
        self.path = private_file(Path(state_dir) / FILENAME)
        self._db = connect_versioned(self.path, "alarm store", MIGRATIONS)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, write_transaction(self._db) as db:
            yield db

    # ------------------------------------------------------------------ state changes

    def _event(
        self,
        db: sqlite3.Connection,
        alarm: dict[str, Any],
        event: str,
        at: int,
        receivers: Sequence[str],
    ) -> None:
        event_id = str(uuid.uuid4())
        body = json.dumps(
            {"event_id": event_id, "event": event, "at": rfc3339(at), "alarm": alarm},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        cur = db.execute(
            "INSERT INTO events (event_id, alarm_id, event, at, body) VALUES (?, ?, ?, ?, ?)",
            (event_id, alarm["id"], event, at, body),
        )
        seq = cur.lastrowid
        db.executemany(
            "INSERT INTO deliveries (receiver, seq, next_at) VALUES (?, ?, ?)",
            [(r, seq, at) for r in receivers],
        )

    def _get(self, db: sqlite3.Connection, alarm_id: str) -> dict[str, Any] | None:
        row = db.execute(
            f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)
        ).fetchone()
        return None if row is None else _alarm(row)

    def apply(
        self, transitions: Iterable[Transition], receivers: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Raise and clear alarms, with their events queued, in one transaction."""
        out: list[dict[str, Any]] = []
        with self._tx() as db:
            for t in transitions:
                obs = t.observation
                if t.action == "raise":
                    alarm_id = str(uuid.uuid4())
                    district = obs.subject.get("district") or obs.evidence.get("district")
                    db.execute(
                        "INSERT INTO alarms (id, rule, subject_key, subject, district, severity, "
                        "state, value, raised_at, evidence) VALUES (?, ?, ?, ?, ?, ?, 'raised', "
                        "?, ?, ?)",
                        (
                            alarm_id,
                            t.rule.name,
                            t.key,
                            json.dumps(obs.subject),
                            district,
                            t.rule.severity,
                            obs.value,
                            t.at,
                            json.dumps(obs.evidence, default=str),
                        ),
                    )
                    event = "raised"
                else:
                    row = db.execute(
                        "SELECT id FROM alarms WHERE rule = ? AND subject_key = ? "
                        "AND state != 'cleared'",
                        (t.rule.name, t.key),
                    ).fetchone()
                    if row is None:
                        continue
                    alarm_id = row[0]
                    db.execute(
                        "UPDATE alarms SET state = 'cleared', cleared_at = ?, value = ? "
                        "WHERE id = ?",
                        (t.at, obs.value, alarm_id),
                    )
                    event = "cleared"
                alarm = self._get(db, alarm_id)
                assert alarm is not None
                self._event(db, alarm, event, t.at, receivers)
                out.append(alarm)
        return out

    def acknowledge(
        self, alarm_id: str, by: str, comment: str, at: int, receivers: Sequence[str]
    ) -> dict[str, Any]:
        with self._tx() as db:
            alarm = self._get(db, alarm_id)
            if alarm is None:
                raise AlarmNotFound(alarm_id)
            if alarm["state"] != "raised":
                raise AlarmConflict(f"the alarm is {alarm['state']}")
            db.execute(
                "UPDATE alarms SET state = 'acknowledged', acknowledged_at = ?, "
                "acknowledged_by = ?, comment = ? WHERE id = ?",
                (at, by, comment, alarm_id),
            )
            alarm = self._get(db, alarm_id)
            assert alarm is not None
            self._event(db, alarm, "acknowledged", at, receivers)
        return alarm

    # ------------------------------------------------------------------ reads

    def open_pairs(self) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rule, subject_key FROM alarms WHERE state != 'cleared'"
            ).fetchall()
        return [(str(r), str(k)) for r, k in rows]

    def alarms(
        self,
        state: str | None = None,
        severity: str | None = None,
        district: str | None = None,
        since_ms: int | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[object] = []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if severity is not None:
            where.append("severity = ?")
            args.append(severity)
        if district is not None:
            where.append("district = ?")
            args.append(district)
        if since_ms is not None:
            where.append(
                "MAX(raised_at, COALESCE(acknowledged_at, 0), COALESCE(cleared_at, 0)) >= ?"
            )
            args.append(since_ms)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ALARM_COLUMNS} FROM alarms {clause} ORDER BY raised_at DESC, id LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [_alarm(r) for r in rows]

    def alarm(self, alarm_id: str) -> dict[str, Any]:
        with self._lock:
            alarm = self._get(self._db, alarm_id)
            if alarm is None:
                raise AlarmNotFound(alarm_id)
            rows = self._db.execute(
                "SELECT event_id, event, at FROM events WHERE alarm_id = ? ORDER BY seq",
                (alarm_id,),
            ).fetchall()
        alarm["events"] = [{"event_id": e, "event": ev, "at": rfc3339(at)} for e, ev, at in rows]
        return alarm

    # ------------------------------------------------------------------ the queue

    def due(self, receiver: str, now: int, limit: int = 100) -> list[Pending]:
        with self._lock:
            rows = self._db.execute(
                "SELECT d.seq, e.event_id, e.body, d.attempts FROM deliveries d "
                "JOIN events e ON e.seq = d.seq WHERE d.receiver = ? "
                "AND d.delivered_at IS NULL AND d.next_at <= ? ORDER BY d.next_at, d.seq LIMIT ?",
                (receiver, now, limit),
            ).fetchall()
        return [Pending(int(s), str(e), str(b).encode(), int(a)) for s, e, b, a in rows]

    def next_due(self, receiver: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_at) FROM deliveries WHERE receiver = ? AND delivered_at IS NULL",
                (receiver,),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def delivered(self, receiver: str, seq: int, at: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET delivered_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE receiver = ? AND seq = ?",
                (at, receiver, seq),
            )

    def failed(self, receiver: str, seq: int, next_at: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_at = ?, last_error = ? "
                "WHERE receiver = ? AND seq = ?",
                (next_at, error[:500], receiver, seq),
            )

    def postpone(self, receiver: str, next_at: int) -> None:
        """Move every due delivery of ``receiver`` to ``next_at`` (it is down: wait for it)."""
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET next_at = ? WHERE receiver = ? AND delivered_at IS NULL "
                "AND next_at < ?",
                (next_at, receiver, next_at),
            )

    def stats(self, now: int) -> dict[str, Any]:
        with self._lock:
            by_state = dict(
                self._db.execute("SELECT state, COUNT(*) FROM alarms GROUP BY state").fetchall()
            )
            pending = self._db.execute(
                "SELECT d.receiver, COUNT(*), MIN(e.at) FROM deliveries d JOIN events e "
                "ON e.seq = d.seq WHERE d.delivered_at IS NULL GROUP BY d.receiver"
            ).fetchall()
        return {
            "alarms": {s: int(by_state.get(s, 0)) for s in STATES},
            "pending": {r: int(n) for r, n, _ in pending},
            "oldest_ms": {r: max(0, now - int(t)) for r, _, t in pending},
        }
