"""The dead-letter store: rejected input kept in SQLite with its raw payload and reason.

Invariants: a dead letter is committed (WAL, ``synchronous=FULL``) before the message that
carried it is acknowledged; entries are never rewritten; listing is newest first. The store
is local to one ingestor (``<state_dir>/deadletters.sqlite3``); several processes may share
a state directory (SQLite locking, a generous busy timeout).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from citysense.durable import connect_durable
from citysense.errors import RetryableError
from citysense.privatefiles import private_file
from ingest.pipeline import DeadLetter

FILENAME = "deadletters.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    reason  TEXT    NOT NULL,
    message TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    gateway TEXT,
    seq     INTEGER,
    payload BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_reason ON dead_letters (reason);
"""


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as listed: ``at`` is when it was kept (epoch ms)."""

    id: int
    at: int
    reason: str
    message: str
    topic: str
    gateway: str | None
    seq: int | None
    payload: bytes


class DeadLetterStore:
    """SQLite-backed dead letters (blocking calls; run them in a thread from async code)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        private_file(self.path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = connect_durable(self.path, _SCHEMA)

    def add(self, letters: Iterable[DeadLetter], at_ms: int) -> int:
        """Keep ``letters`` in one transaction; returns how many."""
        rows = [(at_ms, d.reason, d.message, d.topic, d.gateway, d.seq, d.payload) for d in letters]
        if not rows:
            return 0
        with self._lock:
            if self._db is None:
                raise RetryableError("the dead-letter store is closed")
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "INSERT INTO dead_letters (at, reason, message, topic, gateway, seq, "
                        "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
            except sqlite3.OperationalError as exc:
                raise RetryableError(f"dead-letter store {self.path}: {exc}") from exc
        return len(rows)

    def recent(self, limit: int = 100) -> list[StoredDeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        with self._lock:
            assert self._db is not None
            cur = self._db.execute(
                "SELECT id, at, reason, message, topic, gateway, seq, payload FROM dead_letters "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            return [StoredDeadLetter(*row) for row in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Dead letters kept so far, per reason."""
        with self._lock:
            assert self._db is not None
            cur = self._db.execute(
                "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason"
            )
            return {reason: int(n) for reason, n in cur.fetchall()}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
