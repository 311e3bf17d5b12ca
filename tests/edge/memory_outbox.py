"""An in-memory outbox: the :class:`edge.outbox.Outbox` contract without a disk.

A second implementation of the protocol for the contract suite (test_outbox_contract.py):
what the suite holds true of both is the contract, not an accident of SQLite. Not for use in
a gateway -- nothing in it survives the process. Its quota counts readings, not bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from citysense.envelope import envelope_of, reading_to_dict
from citysense.model import Reading, Value
from citysense.strictjson import dumps
from edge.outbox import REFUSE, OutboxConflictError, OutboxFullError, OutboxStats


@dataclass(slots=True)
class _Row:
    id: int
    reading: Reading
    received: int
    batch: int = 0


@dataclass(slots=True)
class MemoryOutbox:
    quota_readings: int = 1_000_000
    policy: str = REFUSE
    now_ms: int = 0  #: the receive time given to readings added
    rows: dict[tuple[str, int], _Row] = field(default_factory=dict)
    batches: dict[int, int] = field(default_factory=dict)  #: seq -> last publish (0: due)
    evicted: int = 0
    _next_id: int = 1
    _next_seq: int = 1

    async def add(self, readings: Sequence[Reading]) -> None:
        for r in readings:
            row = self.rows.get((r.device, r.t))
            if row is not None and any(
                k in row.reading.values
                and (row.reading.values[k] != v or type(row.reading.values[k]) is not type(v))
                for k, v in r.values.items()
            ):
                raise OutboxConflictError("conflicting value", "conflict")
        if len(self.rows) >= self.quota_readings:
            if self.policy == REFUSE:
                raise OutboxFullError("outbox quota reached", retry_after=30)
            for key in sorted(self.rows, key=lambda k: self.rows[k].id)[
                : max(2 * len(readings), 1)
            ]:
                del self.rows[key]
                self.evicted += 1
        for r in readings:
            row = self.rows.get((r.device, r.t))
            if row is None:
                self.rows[(r.device, r.t)] = _Row(self._next_id, r, self.now_ms)
                self._next_id += 1
            else:
                merged: dict[str, Value] = {**row.reading.values, **r.values}
                if merged != row.reading.values:
                    row.reading = Reading(r.device, r.kind, r.district, r.site, r.t, merged)
                    row.batch = 0

    def _ordered(self) -> list[_Row]:
        return sorted(self.rows.values(), key=lambda row: row.id)

    async def batch(self, max_readings: int, now_ms: int) -> int | None:
        waiting = [row for row in self._ordered() if row.batch == 0][: max(1, max_readings)]
        if not waiting:
            return None
        seq = self._next_seq
        self._next_seq += 1
        for row in waiting:
            row.batch = seq
        self.batches[seq] = now_ms
        return seq

    async def payload(self, gateway: str, seq: int, now_ms: int) -> bytes | None:
        readings = [reading_to_dict(row.reading) for row in self._ordered() if row.batch == seq]
        if not readings:
            self.batches.pop(seq, None)
            return None
        return envelope_of(gateway, seq, now_ms, dumps(readings))

    async def inflight(self) -> list[int]:
        held = {row.batch for row in self.rows.values()}
        for seq in [s for s in self.batches if s not in held]:
            del self.batches[seq]
        return sorted(self.batches)

    async def inflight_count(self) -> int:
        return len(self.batches)

    async def due(self, now_ms: int, resend_after_ms: int) -> list[int]:
        return sorted(
            s
            for s, at in self.batches.items()
            if at <= now_ms - resend_after_ms or at > now_ms + 60_000
        )

    async def sent(self, seqs: Sequence[int], now_ms: int) -> None:
        for seq in seqs:
            if seq in self.batches:
                self.batches[seq] = now_ms

    async def reject(self, seqs: Iterable[int] | None = None) -> None:
        for seq in list(self.batches) if seqs is None else seqs:
            if seq in self.batches:
                self.batches[seq] = 0

    async def accept(self, seqs: Iterable[int]) -> list[int]:
        accepted = sorted({s for s in seqs if type(s) is int and s in self.batches})
        for seq in accepted:
            del self.batches[seq]
            for key in [k for k, row in self.rows.items() if row.batch == seq]:
                del self.rows[key]
        return accepted

    async def stats(self) -> OutboxStats:
        oldest = min((row.received for row in self.rows.values()), default=None)
        return OutboxStats(len(self.rows), oldest, len(self.batches), 0, 0)

    async def next_seq(self) -> int:
        return self._next_seq
