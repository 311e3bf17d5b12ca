"""The SQLite outbox on a real file: idempotency, batches and seq, confirmation, group commit,
quota policies, the downlink queue."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from citysense.model import Reading
from citysense.topics import Command
from edge.outbox import OutboxConflictError, OutboxFullError, SqliteOutbox

NOW = 1_764_000_000_000


def reading(i: int, **values: float) -> Reading:
    return Reading(f"dev-{i % 7}", "air_station", "d", "s", NOW + i, values or {"pm25": 1.0})


def test_idempotent_on_device_metric_time(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            await ob.add([reading(1), reading(2)])
            await ob.add([reading(1)])
            assert (await ob.stats()).depth == 2
            batch = await ob.next_batch("gw-1", 10, NOW)
            assert batch is not None and batch.seq == 1 and len(batch.readings) == 2
            # the same reading again changes nothing: it stays in batch 1
            await ob.add([reading(1)])
            assert await ob.next_batch("gw-1", 10, NOW) is None
            # a new metric at the same (device, t) leaves batch 1 and goes out again, whole
            await ob.add([reading(1, pm10=5.0)])
            again = await ob.next_batch("gw-1", 10, NOW)
            assert again is not None and again.seq == 2
            assert again.readings[0].values == {"pm25": 1.0, "pm10": 5.0}
            assert await ob.accept([1]) == [1]
            assert (await ob.stats()).depth == 1
            assert await ob.accept([2, 2, 99]) == [2]
            assert (await ob.stats()).depth == 0

    asyncio.run(main())


def test_seq_and_unconfirmed_batches_survive_reopening(tmp_path: Path) -> None:
    async def first() -> None:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            await ob.add([reading(i) for i in range(10)])
            for _ in range(3):
                assert await ob.next_batch("gw-1", 3, NOW) is not None
            await ob.accept([2])

    async def second() -> None:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            assert await ob.inflight() == [1, 3]
            batch = await ob.read_batch("gw-1", 3, NOW + 5)
            assert batch is not None and batch.seq == 3 and batch.sent == NOW + 5
            nxt = await ob.next_batch("gw-1", 3, NOW)
            assert nxt is not None and nxt.seq == 4 and len(nxt.readings) == 1

    asyncio.run(first())
    asyncio.run(second())


def test_concurrent_adds_share_commits(tmp_path: Path) -> None:
    async def main() -> int:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            await asyncio.gather(*(ob.add([reading(i)]) for i in range(500)))
            assert (await ob.stats()).depth == 500
            return ob.committed_groups

    groups = asyncio.run(main())
    assert groups < 500
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_quota_refuse_then_recover(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteOutbox(tmp_path / "o.db", quota_bytes=64 * 1024) as ob:
            stored = 0
            with pytest.raises(OutboxFullError):
                for i in range(5000):
                    await ob.add([reading(i)])
                    stored += 1
            assert 0 < stored < 5000
            assert (await ob.stats()).depth == stored, "the refused reading is not stored"
            while await ob.next_batch("gw-1", 100, NOW) is not None:
                pass
            await ob.accept(await ob.inflight())
            await ob.add([reading(1)])

    asyncio.run(main())


def test_quota_evict_oldest(tmp_path: Path) -> None:
    evicted: list[int] = []

    async def main() -> None:
        async with SqliteOutbox(
            tmp_path / "o.db",
            quota_bytes=64 * 1024,
            policy="evict-oldest",
            on_evicted=evicted.append,
        ) as ob:
            for i in range(3000):
                await ob.add([reading(i)])
            stats = await ob.stats()
            assert stats.depth < 3000
            assert stats.used_bytes <= 64 * 1024 + 16 * 4096

    asyncio.run(main())
    assert sum(evicted) > 0


def test_downlink_queue(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            a = Command("a", "dev-1", "ping", {}, NOW + 100)
            b = Command("b", "dev-1", "reboot", {"x": 1}, NOW + 1000)
            assert await ob.downlinks.queue_command(a, NOW)
            assert not await ob.downlinks.queue_command(a, NOW), (
                "a redelivered command is queued once"
            )
            assert await ob.downlinks.queue_command(b, NOW + 1)
            assert await ob.downlinks.command_devices() == {"dev-1": 2}
            assert await ob.downlinks.expire_commands(NOW + 100) == [a]
            assert await ob.downlinks.take_command("dev-1", NOW + 200) == (b, 0)
            assert await ob.downlinks.take_command("dev-1", NOW + 200) == (None, 0)

    asyncio.run(main())


def test_envelope_built_by_sqlite_is_the_contract(tmp_path: Path) -> None:
    import json

    from citysense.envelope import decode_batch, encode_batch

    async def main() -> None:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            await ob.add([reading(1, pm25=12.5, pm10=3.0), reading(2, pm25=1e-5)])
            await ob.add([Reading("w-1", "water_meter", "d", "s", NOW, {"leak": True})])
            seq = await ob.batch(100, NOW)
            assert seq == 1
            payload = await ob.payload("gw-1", 1, NOW + 7)
            batch = await ob.read_batch("gw-1", 1, NOW + 7)
            assert payload is not None and batch is not None
            assert decode_batch(payload) == decode_batch(encode_batch(batch))
            assert json.loads(payload) == json.loads(encode_batch(batch))
            assert await ob.payload("gw-1", 2, NOW) is None

    asyncio.run(main())


def test_a_different_value_is_refused_never_merged(tmp_path: Path) -> None:
    """INTERFACES.md section 10.4: another value for a (device, metric, time) held is refused
    with the whole uplink that carries it; an identical repeat is a harmless duplicate."""

    async def main() -> None:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            await ob.add([reading(1, pm25=10.0)])
            await ob.add([reading(1, pm25=10.0)])  # identical repeat: fine
            with pytest.raises(OutboxConflictError, match="conflicting value"):
                # the clashing reading takes its innocent neighbour down with it
                await ob.add([reading(2, pm25=3.0), reading(1, pm25=999.0)])
            assert (await ob.stats()).depth == 1
            batch = await ob.next_batch("gw-1", 10, NOW)
            assert batch is not None and batch.readings[0].values == {"pm25": 10.0}
            # once in flight the row is still held: still refused
            with pytest.raises(OutboxConflictError):
                await ob.add([reading(1, pm25=11.0)])
            # a bool and a number are different values too
            await ob.add([reading(3, pm25=1.0)])
            with pytest.raises(OutboxConflictError):
                await ob.add([Reading("dev-3", "air_station", "d", "s", NOW + 3, {"pm25": True})])
            assert ob.conflicts == 3

    asyncio.run(main())


def test_conflicts_inside_one_group_commit(tmp_path: Path) -> None:
    """Uplinks committed together: the later of two clashing ones is refused, the others
    (duplicates included) are stored."""

    async def main() -> None:
        async with SqliteOutbox(tmp_path / "o.db") as ob:
            results = await asyncio.gather(
                ob.add([reading(1, pm25=10.0)]),
                ob.add([reading(1, pm25=10.0)]),
                ob.add([reading(1, pm25=12.0), reading(5)]),
                ob.add([reading(1, pm10=4.0)]),
                return_exceptions=True,
            )
            assert ob.committed_groups == 1
            assert [type(r).__name__ for r in results] == [
                "NoneType",
                "NoneType",
                "OutboxConflictError",
                "NoneType",
            ]
            batch = await ob.next_batch("gw-1", 10, NOW)
            assert batch is not None and [r.values for r in batch.readings] == [
                {"pm25": 10.0, "pm10": 4.0}
            ]

    asyncio.run(main())
