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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from citysense import strictjson
from citysense.durable import connect_versioned, write_transaction
from citysense.envelope import MAX_ENVELOPE_BYTES, MAX_READINGS, READING_FIELDS, envelope_of
from citysense.errors import InputError, RetryableError
from citysense.model import Batch, Reading, Value
from citysense.privatefiles import private_file
from edge import clock
from edge.downlink_queue import DownlinkQueue
from edge.outbox_schema import _CONFLICTS, _INSERT, MIGRATIONS, _conflicts_within

log = logging.getLogger(__name__)

T = TypeVar("T")

REFUSE = "refuse"
EVICT_OLDEST = "evict-oldest"

#: outbox.db as citysense 0.1.0 wrote it (no schema version); later steps in MIGRATIONS.
#: One reading as it goes into the insert: device, t, kind, district, site, values, received,
#: index of its uplink in the commit group.
_Row = tuple[str, int, str, str, str, dict[str, Value], int, int]

_dumps = strictjson.dumps

# The readings of one batch as the envelope's JSON array (fields in READING_FIELDS order).
_BATCH_JSON = (
    "SELECT count(*), json_group_array(json_object("
    + ", ".join(f"'{name}', " + {"values": "json(vals)"}.get(name, name) for name in READING_FIELDS)
    + ")) FROM (SELECT * FROM reading WHERE batch = ? ORDER BY id)"
)

# Bytes of envelope per reading besides its strings (keys, punctuation, time), and the room
# left for readings in an envelope.
_READING_OVERHEAD = 80
_ENVELOPE_BUDGET = MAX_ENVELOPE_BYTES - 256


class OutboxUnavailableError(RetryableError):
    """The outbox cannot write right now (disk full, read-only, I/O error)."""


class OutboxFullError(RetryableError):
    """The outbox reached its quota and the policy is to refuse new readings."""


class OutboxConflictError(InputError):
    """The uplink carries a different value for a (device, metric, time) the outbox holds."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  #: readings held (unconfirmed)
    oldest_ms: int | None  #: receive time of the oldest reading held
    batches: int  #: batches published and not yet confirmed
    used_bytes: int
    pending_downlinks: int


class Outbox(Protocol):
    """The gateway's durable buffer, in the manner of Telegraf's output buffers.

    Readings go in with :meth:`add` (durable when it returns). :meth:`batch` takes the oldest
    into a new batch, in flight from then; :meth:`accept` releases batches an ingestor
    stored (only those in flight); :meth:`reject` makes batches due at once (a publish may
    have been lost); :meth:`due` names the batches to publish now. The publish times live
    with the batches, so the whole at-least-once state is here, in one place.
    """

    async def add(self, readings: Sequence[Reading]) -> None: ...
    async def batch(self, max_readings: int, now_ms: int) -> int | None: ...
    async def payload(self, gateway: str, seq: int, now_ms: int) -> bytes | None: ...
    async def inflight(self) -> list[int]: ...
    async def inflight_count(self) -> int: ...
    async def due(self, now_ms: int, resend_after_ms: int) -> list[int]: ...
    async def sent(self, seqs: Sequence[int], now_ms: int) -> None: ...
    async def reject(self, seqs: Iterable[int] | None = None) -> None: ...
    async def accept(self, seqs: Iterable[int]) -> list[int]: ...
    async def stats(self) -> OutboxStats: ...
    async def next_seq(self) -> int: ...


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
        self.conflicts = 0  #: uplinks refused for a conflicting value
        self._downlinks = DownlinkQueue(self)

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
            db = connect_versioned(self.path, "outbox", MIGRATIONS)
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
            with write_transaction(db):
                result = fn(db)
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
            now = clock.now_ms()
            rows = [
                (r.device, r.t, r.kind, r.district, r.site, r.values, now, i)
                for i, (readings, _) in enumerate(group)
                for r in readings
            ]
            error: BaseException | None = None
            conflicts: set[int] = set()
            try:
                conflicts = await self._run(self._insert, rows, _conflicts_within(group))
            except RetryableError as exc:
                error = exc
            except Exception as exc:  # an own failure: refuse, never a false yes
                log.exception("outbox commit failed")
                error = OutboxUnavailableError(f"outbox commit failed: {exc}", retry_after=10)
            for i, (_, future) in enumerate(group):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                elif i in conflicts:
                    future.set_exception(OutboxConflictError("conflicting value", "conflict"))
                else:
                    future.set_result(None)

    def _used_bytes(self, db: sqlite3.Connection) -> int:
        used = db.execute(
            "SELECT p.page_count - f.freelist_count FROM pragma_page_count() AS p, "
            "pragma_freelist_count() AS f"
        ).fetchone()[0]
        return int(used) * self._page_size

    def _insert(self, rows: list[_Row], conflicts: set[int]) -> set[int]:
        """Insert the group's rows in one transaction, except those of the uplinks (by index
        in the group) that carry a different value for a reading already held; returns the
        indexes of those uplinks."""

        def work(db: sqlite3.Connection) -> int:
            nonlocal rows
            if conflicts:
                rows = [row for row in rows if row[7] not in conflicts]
            doc = _dumps(rows)
            clashing = {int(i) for (i,) in db.execute(_CONFLICTS, (doc,))}
            if clashing:
                conflicts.update(clashing)
                rows = [row for row in rows if row[7] not in conflicts]
                doc = _dumps(rows)
            if not rows:
                return 0
            evicted = 0
            if self._used_bytes(db) >= self.quota_bytes:
                if self.policy == REFUSE:
                    raise OutboxFullError("outbox quota reached", retry_after=30)
                evicted = db.execute(
                    "DELETE FROM reading WHERE id IN (SELECT id FROM reading ORDER BY id LIMIT ?)",
                    (max(2 * len(rows), 64),),
                ).rowcount
            db.execute(_INSERT, (doc,))
            return evicted

        count = len(rows)
        try:
            evicted = self._write(work)
        except OutboxFullError:
            self._quota_event(count, refused=True)
            raise
        self.committed_groups += 1
        if conflicts:
            self.conflicts += len(conflicts)
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
        return conflicts

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

    async def batch(self, max_readings: int, now_ms: int) -> int | None:
        """Assign the oldest unbatched readings to a new ``seq``, in flight from ``now_ms``
        (the caller publishes it now); ``None`` when nothing waits."""
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
            db.execute(
                "INSERT INTO batch (seq, created, sent) VALUES (?, ?, ?)", (seq, now_ms, now_ms)
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            return seq

        return self._write(work)

    async def payload(self, gateway: str, seq: int, now_ms: int) -> bytes | None:
        """The envelope of batch ``seq`` (INTERFACES.md section 5), its readings written by
        SQLite (:func:`citysense.envelope.envelope_of` around them) in the worker thread, so
        the event loop does not parse and re-encode every reading. ``None`` when the batch is
        not in flight or has no readings left (they moved to a later batch; it is dropped)."""
        readings = await self._run(self._batch_json, seq)
        if readings is None:
            return None
        return envelope_of(gateway, seq, now_ms, readings)

    def _batch_json(self, seq: int) -> str | None:
        try:
            count, readings = self.db.execute(_BATCH_JSON, (seq,)).fetchone()
        except sqlite3.Error as exc:
            raise OutboxUnavailableError(f"outbox read failed: {exc}") from exc
        if count:
            return str(readings)
        self._write(lambda db: db.execute("DELETE FROM batch WHERE seq = ?", (seq,)))
        return None

    async def next_batch(self, gateway: str, max_readings: int, now_ms: int) -> Batch | None:
        """:meth:`batch`, then that batch as a :class:`Batch`."""
        seq = await self.batch(max_readings, now_ms)
        if seq is None:
            return None
        return await self.read_batch(gateway, seq, now_ms)

    async def read_batch(self, gateway: str, seq: int, now_ms: int) -> Batch | None:
        """The batch ``seq`` as it stands now."""
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

    async def inflight(self) -> list[int]:
        """Every batch in flight (formed, not yet accepted), oldest first."""
        return await self._run(self._inflight)

    def _inflight(self) -> list[int]:
        def work(db: sqlite3.Connection) -> list[int]:
            # a batch whose readings all moved to later batches has nothing left to confirm
            db.execute(
                "DELETE FROM batch WHERE NOT EXISTS "
                "(SELECT 1 FROM reading WHERE reading.batch = batch.seq)"
            )
            return [int(r[0]) for r in db.execute("SELECT seq FROM batch ORDER BY seq")]

        return self._write(work)

    async def inflight_count(self) -> int:
        return await self._run(
            lambda: int(self.db.execute("SELECT count(*) FROM batch").fetchone()[0])
        )

    async def due(self, now_ms: int, resend_after_ms: int) -> list[int]:
        """Batches in flight to publish now: rejected ones, and those last sent at least
        ``resend_after_ms`` ago without an acceptance; oldest first. A batch "sent" after
        ``now_ms`` (the clock was stepped back across a restart) is due too."""
        return await self._run(
            lambda: [
                int(r[0])
                for r in self.db.execute(
                    "SELECT seq FROM batch WHERE sent <= ? OR sent > ? ORDER BY seq",
                    (now_ms - resend_after_ms, now_ms + 60_000),
                )
            ]
        )

    async def sent(self, seqs: Sequence[int], now_ms: int) -> None:
        """Batches ``seqs`` were published (again) at ``now_ms``."""
        if seqs:
            await self._run(self._set_sent, list(seqs), now_ms)

    def _set_sent(self, seqs: list[int], at: int) -> None:
        self._write(
            lambda db: db.executemany(
                "UPDATE batch SET sent = ? WHERE seq = ?", [(at, seq) for seq in seqs]
            )
        )

    async def reject(self, seqs: Iterable[int] | None = None) -> None:
        """Publishing ``seqs`` (default: every batch in flight) may have failed: they are due
        at once."""
        if seqs is None:
            await self._run(self._write, lambda db: db.execute("UPDATE batch SET sent = 0"))
        else:
            await self._run(self._set_sent, list(seqs), 0)

    async def accept(self, seqs: Iterable[int]) -> list[int]:
        """An ingestor stored these batches: those in flight leave the outbox with their
        readings; any other seq (forged, stale, repeated) changes nothing. Returns the seqs
        accepted."""
        wanted = sorted({s for s in seqs if type(s) is int and s > 0})
        if not wanted:
            return []
        return await self._run(self._accept, wanted)

    def _accept(self, seqs: list[int]) -> list[int]:
        def work(db: sqlite3.Connection) -> list[int]:
            accepted = []
            for seq in seqs:
                if db.execute("DELETE FROM batch WHERE seq = ?", (seq,)).rowcount:
                    db.execute("DELETE FROM reading WHERE batch = ?", (seq,))
                    accepted.append(seq)
            return accepted

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

    @property
    def downlinks(self) -> DownlinkQueue:
        """The downlink queue, kept in the same database (one connection, one thread)."""
        return self._downlinks
