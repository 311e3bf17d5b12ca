"""The dead-letter store: rejected input kept in SQLite with its raw payload and reason.

Invariants: a dead letter is committed (WAL, ``synchronous=FULL``) before the message that
carried it is acknowledged; entries are never rewritten; listing is newest first. The store
is local to one ingestor (``<state_dir>/deadletters.sqlite3``); several processes may share
a state directory (SQLite locking, a generous busy timeout).

Bounded: a payload over :data:`PAYLOAD_MAX` bytes is kept truncated, with its full length and
SHA-256 digest; entries older than ``max_age_ms`` and, beyond ``max_bytes``, the oldest are
evicted in the transaction that adds new ones (and when the store opens). Evictions are
counted per cause (``age``, ``size``) in the store itself, shown by ``citysense ingest
dead-letters``, and reported to ``on_evicted``.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from citysense.durable import connect_versioned, store_transaction
from citysense.migrate import Migration, statements
from citysense.privatefiles import private_file
from ingest.pipeline import DeadLetter

FILENAME = "deadletters.sqlite3"
#: Largest payload kept whole, bytes; a longer one keeps its first PAYLOAD_MAX bytes.
PAYLOAD_MAX = 64 * 1024
#: Eviction goes this far below the size cap, so that it runs once per many additions.
SIZE_HEADROOM = 0.9

_SCHEMA_0_1_0 = """
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

#: Schema versions (see :mod:`citysense.migrate`); append, never edit.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "citysense 0.1.0: dead letters with reason and raw payload", statements(_SCHEMA_0_1_0)
    ),
    Migration(
        2,
        "bounded: payload length and digest, eviction by age and size, eviction counts",
        (
            "ALTER TABLE dead_letters ADD COLUMN size INTEGER",
            "ALTER TABLE dead_letters ADD COLUMN digest TEXT",
            "UPDATE dead_letters SET size = length(payload)",
            "CREATE INDEX dead_letters_by_at ON dead_letters (at)",
            "CREATE TABLE dead_letter_evictions (cause TEXT PRIMARY KEY, count INTEGER NOT NULL)",
        ),
    ),
)


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
    payload: bytes  #: as kept: the first PAYLOAD_MAX bytes of a longer one
    size: int  #: the payload's full length, bytes
    digest: str | None  #: SHA-256 (hex) of the full payload; None for 0.1.0 entries

    @property
    def truncated(self) -> bool:
        return self.size > len(self.payload)


class DeadLetterStore:
    """SQLite-backed dead letters (blocking calls; run them in a thread from async code)."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int | None = None,
        max_age_ms: int | None = None,
        on_evicted: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        private_file(self.path)
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self._on_evicted = on_evicted
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = connect_versioned(
            self.path, "dead-letter store", MIGRATIONS
        )
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        if max_bytes is not None or max_age_ms is not None:
            self._transaction(lambda db: None)

    def add(self, letters: Iterable[DeadLetter], at_ms: int) -> int:
        """Keep ``letters`` in one transaction (evicting what the bounds require); returns
        how many were added."""
        rows = [
            (
                at_ms,
                d.reason,
                d.message,
                d.topic,
                d.gateway,
                d.seq,
                d.payload[:PAYLOAD_MAX],
                len(d.payload),
                hashlib.sha256(d.payload).hexdigest(),
            )
            for d in letters
        ]
        if not rows:
            return 0

        def insert(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO dead_letters (at, reason, message, topic, gateway, seq, "
                "payload, size, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        self._transaction(insert)
        return len(rows)

    def _transaction(self, work: Callable[[sqlite3.Connection], None]) -> None:
        with self._lock, store_transaction(self._db, "dead-letter store", self.path) as db:
            work(db)
            evicted = self._evict(db)
            for cause, n in evicted.items():
                db.execute(
                    "INSERT INTO dead_letter_evictions (cause, count) VALUES (?, ?) "
                    "ON CONFLICT (cause) DO UPDATE SET count = count + excluded.count",
                    (cause, n),
                )
        if self._on_evicted is not None:
            for cause, n in evicted.items():
                self._on_evicted(cause, n)

    def _used_bytes(self, db: sqlite3.Connection) -> int:
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def _evict(self, db: sqlite3.Connection) -> dict[str, int]:
        evicted: dict[str, int] = {}
        if self.max_age_ms is not None:
            cutoff = int(self._clock() * 1000) - self.max_age_ms
            n = db.execute("DELETE FROM dead_letters WHERE at < ?", (cutoff,)).rowcount
            if n > 0:
                evicted["age"] = n
        if self.max_bytes is not None:
            target = int(self.max_bytes * SIZE_HEADROOM)
            for _ in range(20):  # each round deletes the estimated excess, oldest first
                used = self._used_bytes(db)
                if used <= self.max_bytes and "size" not in evicted:
                    break
                if used <= target:
                    break
                count = int(db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
                if count == 0:
                    break
                per_row = max(1.0, used / count)
                excess = max(1, math.ceil((used - target) / per_row))
                n = db.execute(
                    "DELETE FROM dead_letters WHERE id IN "
                    "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)",
                    (excess,),
                ).rowcount
                evicted["size"] = evicted.get("size", 0) + n
        return evicted

    def recent(self, limit: int = 100) -> list[StoredDeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        with self._lock:
            assert self._db is not None
            cur = self._db.execute(
                "SELECT id, at, reason, message, topic, gateway, seq, payload, "
                "coalesce(size, length(payload)), digest FROM dead_letters "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            return [StoredDeadLetter(*row) for row in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Dead letters kept now, per reason."""
        with self._lock:
            assert self._db is not None
            cur = self._db.execute(
                "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason"
            )
            return {reason: int(n) for reason, n in cur.fetchall()}

    def evictions(self) -> dict[str, int]:
        """Dead letters evicted so far, per cause (``age``, ``size``)."""
        with self._lock:
            assert self._db is not None
            cur = self._db.execute("SELECT cause, count FROM dead_letter_evictions ORDER BY cause")
            return {cause: int(n) for cause, n in cur.fetchall()}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
