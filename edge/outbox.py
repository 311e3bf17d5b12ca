"""The durable outbox: SQLite in WAL mode, with group commit, a disk quota and the seq counter.

Invariants:

* :meth:`SqliteOutbox.add` returns only after the readings are committed (``synchronous=FULL``):
  the caller may then answer the device 2.04. Concurrent adds share one transaction (group
  commit) so durability does not cost one fsync per uplink.
* The outbox is idempotent on (device, metric, t): a reading stored twice is one row; a
  retransmission that adds nothing changes nothing.
* ``seq`` starts at 1, grows by one per batch, lives in the database (it survives restarts),
  and a batch keeps its ``seq`` until an ingestor confirms it (:meth:`SqliteOutbox.confirm`);
  only then are its readings deleted.
* A failed write (disk full, read-only, I/O error) is a :class:`OutboxUnavailableError`; the
  quota reached under the ``refuse`` policy is an :class:`OutboxFullError`. Both are retryable:
  the caller answers 5.03, nothing is half-stored, and the next write simply tries again.
* The connection is used by one worker thread only; the event loop never blocks on the disk.

Pending downlink commands for sleeping devices live in the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from citysense.envelope import MAX_ENVELOPE_BYTES, MAX_READINGS
from citysense.errors import RetryableError
from citysense.model import ENVELOPE_VERSION, Batch, Reading
from citysense.privatefiles import private_file

log = logging.getLogger(__name__)

T = TypeVar("T")

REFUSE = "refuse"
EVICT_OLDEST = "evict-oldest"

_SCHEMA = """
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

# A (device, t) seen again merges its values; when that adds or changes a value, the row
# leaves the batch it was in (a confirmation of that batch must not delete the new value).
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

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

# Bytes of envelope per reading besides its strings (keys, punctuation, time), and the room
# left for readings in an envelope.
_READING_OVERHEAD = 80
_ENVELOPE_BUDGET = MAX_ENVELOPE_BYTES - 256


class OutboxUnavailableError(RetryableError):
    """The outbox cannot write right now (disk full, read-only, I/O error)."""


class OutboxFullError(RetryableError):
    """The outbox reached its quota and the policy is to refuse new readings."""


@dataclass(frozen=True, slots=True)
class Command:
    """A downlink command waiting for its device's next uplink."""

    id: str
    device: str
    command: str
    args: dict[str, object]
    expires: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  #: readings held (unconfirmed)
    oldest_ms: int | None  #: receive time of the oldest reading held
    batches: int  #: batches published and not yet confirmed
    used_bytes: int
    pending_downlinks: int


class Outbox(Protocol):
    """What the gateway needs from durable storage (one implementation: SQLite)."""

    async def add(self, readings: Sequence[Reading]) -> None: ...
    async def next_batch(self, gateway: str, max_readings: int, now_ms: int) -> Batch | None: ...
    async def form_batch(self, max_readings: int, now_ms: int) -> int | None: ...
    async def batch_payload(self, gateway: str, seq: int, now_ms: int) -> bytes | None: ...
    async def batch(self, gateway: str, seq: int, now_ms: int) -> Batch | None: ...
    async def unconfirmed(self) -> list[int]: ...
    async def confirm(self, seqs: Iterable[int]) -> int: ...
    async def stats(self) -> OutboxStats: ...


class SqliteOutbox:
    """The outbox in ``<state_dir>/outbox.db``; use as an async context manager."""

    def __init__(
        self,
        path: str | Path,
        *,
        quota_bytes: int = 256 * 1024 * 1024,
        policy: str = REFUSE,
        on_evicted: Callable[[int], None] | None = None,
    ) -> None:
        if policy not in (REFUSE, EVICT_OLDEST):
            raise ValueError(f"unknown outbox policy {policy!r}")
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.policy = policy
        self._on_evicted = on_evicted
        self._db: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._pending: list[tuple[Sequence[Reading], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._over_quota = False  # inside an episode of refusals or evictions
        self._episode_count = 0
        self.committed_groups = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SqliteOutbox:
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flusher), 10)
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        try:
            private_file(self.path)
        except OSError as exc:
            raise OutboxUnavailableError(f"cannot create outbox {self.path}: {exc}") from exc
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=8388608")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', 1)")
        except sqlite3.Error as exc:
            raise OutboxUnavailableError(f"cannot open outbox {self.path}: {exc}") from exc
        self._db = db
        self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])

    def _close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxUnavailableError("the outbox is closed")
        return self._db

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one immediate transaction; translate SQLite errors."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OutboxUnavailableError(f"outbox write failed: {exc}", retry_after=10) from exc
        return result

    # ------------------------------------------------------------------ readings in

    async def add(self, readings: Sequence[Reading]) -> None:
        """Store ``readings`` durably; returns once they are committed (group commit)."""
        if not readings:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((readings, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            now = int(time.time() * 1000)
            rows = [
                (r.device, r.t, r.kind, r.district, r.site, r.values, now)
                for readings, _ in group
                for r in readings
            ]
            error: BaseException | None = None
            try:
                await self._run(self._insert, _dumps(rows), len(rows))
            except RetryableError as exc:
                error = exc
            except Exception as exc:  # an own failure: refuse, never a false yes
                log.exception("outbox commit failed")
                error = OutboxUnavailableError(f"outbox commit failed: {exc}", retry_after=10)
            for _, future in group:
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    def _used_bytes(self, db: sqlite3.Connection) -> int:
        used = db.execute(
            "SELECT p.page_count - f.freelist_count FROM pragma_page_count() AS p, "
            "pragma_freelist_count() AS f"
        ).fetchone()[0]
        return int(used) * self._page_size

    def _insert(self, rows: str, count: int) -> None:
        def work(db: sqlite3.Connection) -> int:
            evicted = 0
            if self._used_bytes(db) >= self.quota_bytes:
                if self.policy == REFUSE:
                    raise OutboxFullError("outbox quota reached", retry_after=30)
                evicted = db.execute(
                    "DELETE FROM reading WHERE id IN (SELECT id FROM reading ORDER BY id LIMIT ?)",
                    (max(2 * count, 64),),
                ).rowcount
            db.execute(_INSERT, (rows,))
            return evicted

        try:
            evicted = self._write(work)
        except OutboxFullError:
            self._quota_event(count, refused=True)
            raise
        self.committed_groups += 1
        if evicted:
            self._quota_event(evicted, refused=False)
            if self._on_evicted is not None:
                self._on_evicted(evicted)
        elif self._over_quota:
            log.warning(
                "outbox below its quota again after %d readings %s",
                self._episode_count,
                "refused" if self.policy == REFUSE else "evicted",
            )
            self._over_quota = False
            self._episode_count = 0

    def _quota_event(self, count: int, refused: bool) -> None:
        self._episode_count += count
        if not self._over_quota:
            self._over_quota = True
            log.warning(
                "outbox quota of %d bytes reached: %s (logged once until it recovers)",
                self.quota_bytes,
                "refusing new uplinks" if refused else "evicting the oldest readings",
            )

    # ------------------------------------------------------------------ batches out

    async def next_batch(self, gateway: str, max_readings: int, now_ms: int) -> Batch | None:
        """Assign the oldest unbatched readings to a new ``seq`` (committed); ``None`` if none."""
        seq = await self.form_batch(max_readings, now_ms)
        if seq is None:
            return None
        return await self.batch(gateway, seq, now_ms)

    async def form_batch(self, max_readings: int, now_ms: int) -> int | None:
        """Assign the oldest unbatched readings to a new ``seq`` (committed); its ``seq``."""
        return await self._run(self._form_batch, max_readings, now_ms)

    def _form_batch(self, max_readings: int, now_ms: int) -> int | None:
        def work(db: sqlite3.Connection) -> int | None:
            if db.execute("SELECT 1 FROM reading WHERE batch = 0 LIMIT 1").fetchone() is None:
                return None
            seq = int(db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
            # at most max_readings, and never more bytes than an envelope may hold
            db.execute(
                "UPDATE reading SET batch = ? WHERE id IN (SELECT id FROM "
                "(SELECT id, sum(length(device) + length(kind) + length(district) "
                "+ length(site) + length(vals) + ?) OVER (ORDER BY id) AS size "
                "FROM reading WHERE batch = 0 ORDER BY id LIMIT ?) "
                "WHERE size <= ? OR id = (SELECT min(id) FROM reading WHERE batch = 0))",
                (seq, _READING_OVERHEAD, max(1, min(max_readings, MAX_READINGS)), _ENVELOPE_BUDGET),
            )
            db.execute("INSERT INTO batch (seq, created) VALUES (?, ?)", (seq, now_ms))
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            return seq

        return self._write(work)

    async def batch_payload(self, gateway: str, seq: int, now_ms: int) -> bytes | None:
        """The envelope of batch ``seq`` (INTERFACES.md section 5), built by SQLite.

        The same document :func:`citysense.envelope.encode_batch` writes, assembled in the
        worker thread so the event loop does not parse and re-encode every reading.
        """
        readings = await self._run(self._batch_json, seq)
        if readings is None:
            return None
        head = f'{{"v":{ENVELOPE_VERSION},"gateway":"{gateway}","seq":{seq},"sent":{now_ms},'
        return (head + '"readings":' + readings + "}").encode()

    def _batch_json(self, seq: int) -> str | None:
        try:
            count, readings = self.db.execute(
                "SELECT count(*), json_group_array(json_object('device', device, 'kind', kind, "
                "'district', district, 'site', site, 't', t, 'values', json(vals))) "
                "FROM (SELECT * FROM reading WHERE batch = ? ORDER BY id)",
                (seq,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise OutboxUnavailableError(f"outbox read failed: {exc}") from exc
        return str(readings) if count else None

    async def batch(self, gateway: str, seq: int, now_ms: int) -> Batch | None:
        """The batch ``seq`` as it stands now (for publishing or re-sending)."""
        rows = await self._run(self._batch_rows, seq)
        if not rows:
            return None
        readings = tuple(
            Reading(device, kind, district, site, t, json.loads(vals))
            for device, t, kind, district, site, vals in rows
        )
        return Batch(gateway, seq, now_ms, readings)

    def _batch_rows(self, seq: int) -> list[tuple[str, int, str, str, str, str]]:
        try:
            return self.db.execute(
                "SELECT device, t, kind, district, site, vals FROM reading "
                "WHERE batch = ? ORDER BY id",
                (seq,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise OutboxUnavailableError(f"outbox read failed: {exc}") from exc

    async def unconfirmed(self) -> list[int]:
        """Every published ``seq`` still waiting for its confirmation, oldest first."""
        return await self._run(self._unconfirmed)

    def _unconfirmed(self) -> list[int]:
        def work(db: sqlite3.Connection) -> list[int]:
            # a batch whose readings all moved to later batches has nothing left to confirm
            db.execute(
                "DELETE FROM batch WHERE NOT EXISTS "
                "(SELECT 1 FROM reading WHERE reading.batch = batch.seq)"
            )
            return [int(r[0]) for r in db.execute("SELECT seq FROM batch ORDER BY seq")]

        return self._write(work)

    async def confirm(self, seqs: Iterable[int]) -> int:
        """An ingestor stored these batches: delete their readings; returns readings deleted."""
        wanted = sorted({s for s in seqs if isinstance(s, int) and s > 0})
        if not wanted:
            return 0
        return await self._run(self._confirm, wanted)

    def _confirm(self, seqs: list[int]) -> int:
        def work(db: sqlite3.Connection) -> int:
            deleted = 0
            for seq in seqs:
                deleted += db.execute("DELETE FROM reading WHERE batch = ?", (seq,)).rowcount
                db.execute("DELETE FROM batch WHERE seq = ?", (seq,))
            return deleted

        return self._write(work)

    async def next_seq(self) -> int:
        return await self._run(
            lambda: int(
                self.db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
            )
        )

    async def stats(self) -> OutboxStats:
        return await self._run(self._stats)

    def _stats(self) -> OutboxStats:
        db = self.db
        try:
            depth, oldest = db.execute("SELECT count(*), min(received) FROM reading").fetchone()
            batches = db.execute("SELECT count(*) FROM batch").fetchone()[0]
            downlinks = db.execute("SELECT count(*) FROM downlink").fetchone()[0]
            used = self._used_bytes(db)
        except sqlite3.Error as exc:
            raise OutboxUnavailableError(f"outbox read failed: {exc}") from exc
        return OutboxStats(int(depth), oldest, int(batches), used, int(downlinks))

    # ------------------------------------------------------------------ downlink queue

    async def queue_command(self, cmd: Command, now_ms: int) -> bool:
        """Keep ``cmd`` durably until delivery or expiry; ``False`` if it was already queued."""
        return await self._run(self._queue_command, cmd, now_ms)

    def _queue_command(self, cmd: Command, now_ms: int) -> bool:
        return self._write(
            lambda db: (
                db.execute(
                    "INSERT OR IGNORE INTO downlink (id, device, command, args, expires, received) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (cmd.id, cmd.device, cmd.command, _dumps(cmd.args), cmd.expires, now_ms),
                ).rowcount
                == 1
            )
        )

    async def take_command(self, device: str, now_ms: int) -> tuple[Command | None, int]:
        """The oldest unexpired command for ``device`` (removed), and how many remain."""
        return await self._run(self._take_command, device, now_ms)

    def _take_command(self, device: str, now_ms: int) -> tuple[Command | None, int]:
        def work(db: sqlite3.Connection) -> tuple[Command | None, int]:
            row = db.execute(
                "SELECT id, device, command, args, expires FROM downlink "
                "WHERE device = ? AND expires > ? ORDER BY received, id LIMIT 1",
                (device, now_ms),
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM downlink WHERE id = ?", (row[0],))
            left = int(
                db.execute("SELECT count(*) FROM downlink WHERE device = ?", (device,)).fetchone()[
                    0
                ]
            )
            if row is None:
                return None, left
            return Command(row[0], row[1], row[2], json.loads(row[3]), int(row[4])), left

        return self._write(work)

    async def expire_commands(self, now_ms: int) -> list[Command]:
        """Remove and return every command whose deadline has passed."""
        return await self._run(self._expire_commands, now_ms)

    def _expire_commands(self, now_ms: int) -> list[Command]:
        def work(db: sqlite3.Connection) -> list[Command]:
            rows = db.execute(
                "SELECT id, device, command, args, expires FROM downlink WHERE expires <= ?",
                (now_ms,),
            ).fetchall()
            if rows:
                db.execute("DELETE FROM downlink WHERE expires <= ?", (now_ms,))
            return [Command(r[0], r[1], r[2], json.loads(r[3]), int(r[4])) for r in rows]

        return self._write(work)

    async def command_devices(self) -> dict[str, int]:
        """Devices with queued commands, and how many each."""
        return await self._run(
            lambda: {
                r[0]: int(r[1])
                for r in self.db.execute("SELECT device, count(*) FROM downlink GROUP BY device")
            }
        )
