"""Pending downlink commands for sleeping devices, durable in the outbox's database.

The queue shares the outbox's connection and its worker thread (:attr:`SqliteOutbox.downlinks`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from citysense import strictjson
from citysense.topics import Command

if TYPE_CHECKING:
    from edge.outbox import SqliteOutbox

T = TypeVar("T")
_dumps = strictjson.dumps


class DownlinkQueue:
    """Pending downlink commands for sleeping devices, durable in the outbox's database."""

    def __init__(self, outbox: SqliteOutbox) -> None:
        self._outbox = outbox

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await self._outbox._run(fn, *args)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._outbox._write(fn)

    @property
    def db(self) -> sqlite3.Connection:
        return self._outbox.db

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
