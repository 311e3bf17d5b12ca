"""The outbox contract (edge.outbox.Outbox), held by the SQLite outbox and an in-memory one,
and the uplink's publish policy over it -- no broker: the link is an in-process recorder.

Covered: batches and seq, resend when due, reject, confirm only what is in flight, conflicts,
quota refusal and eviction; the uplink's batching, re-sends, reconnects, in-flight limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from citysense.envelope import decode_batch
from citysense.model import Reading
from edge.metrics import Metrics
from edge.outbox import (
    EVICT_OLDEST,
    REFUSE,
    Outbox,
    OutboxConflictError,
    OutboxFullError,
    SqliteOutbox,
)
from edge.uplink import Uplink
from tests.edge.memory_outbox import MemoryOutbox

NOW = 1_764_000_000_000
GW = "gw-1"


def reading(i: int, **values: float) -> Reading:
    return Reading(f"dev-{i}", "air_station", "d", "s", NOW + i, values or {"pm25": 1.0})


@contextlib.asynccontextmanager
async def opened(
    kind: str, tmp: Path, policy: str = REFUSE, small: bool = False
) -> AsyncIterator[Outbox]:
    if kind == "memory":
        yield MemoryOutbox(quota_readings=200 if small else 1_000_000, policy=policy)
        return
    quota = 96 * 1024 if small else 256 * 1024 * 1024
    async with SqliteOutbox(tmp / "o.db", quota_bytes=quota, policy=policy) as ob:
        yield ob


KINDS = ["sqlite", "memory"]


def run(fn: Callable[[], object]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_batches_are_due_again_after_the_resend_interval_and_on_reject(
    kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(kind, tmp_path) as ob:
            await ob.add([reading(i) for i in range(5)])
            assert await ob.batch(3, NOW) == 1 and await ob.batch(3, NOW) == 2
            assert await ob.batch(3, NOW) is None
            assert await ob.due(NOW + 59_999, 60_000) == []
            assert await ob.due(NOW + 60_000, 60_000) == [1, 2]
            await ob.sent([1], NOW + 60_000)
            assert await ob.due(NOW + 60_000, 60_000) == [2]
            await ob.reject([1])
            assert await ob.due(NOW + 1, 60_000) == [1]
            await ob.sent([1, 2], NOW + 70_000)
            await ob.reject()  # a reconnect: everything in flight is due
            assert await ob.due(NOW + 70_000, 60_000) == [1, 2]
            assert await ob.inflight() == [1, 2] and await ob.inflight_count() == 2
            envelope = decode_batch(await ob.payload(GW, 1, NOW + 5) or b"")
            assert (envelope.gateway, envelope.seq, envelope.sent) == (GW, 1, NOW + 5)
            assert [r.device for r in envelope.readings] == ["dev-0", "dev-1", "dev-2"]
            assert await ob.next_seq() == 3

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_sent_in_the_future_is_due(kind: str, tmp_path: Path) -> None:
    """The clock went back across a restart: a batch "sent" an hour from now is re-sent now,
    not in an hour."""

    async def main() -> None:
        async with opened(kind, tmp_path) as ob:
            await ob.add([reading(0)])
            assert await ob.batch(3, NOW + 3_600_000) == 1
            assert await ob.due(NOW, 60_000) == [1]

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_only_batches_in_flight_are_accepted(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(kind, tmp_path) as ob:
            await ob.add([reading(i) for i in range(4)])
            assert await ob.batch(2, NOW) == 1
            # seq 2 does not exist yet, 0 and -1 never do: nothing moves
            assert await ob.accept([2, 0, -1, 99]) == []
            assert (await ob.stats()).depth == 4
            assert await ob.batch(2, NOW) == 2
            assert await ob.accept([2, 2]) == [2]
            assert await ob.accept([2]) == [], "a repeat is not in flight any more"
            assert (await ob.stats()).depth == 2
            assert await ob.inflight() == [1]
            assert await ob.payload(GW, 2, NOW) is None

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_different_value_is_a_conflict_an_identical_one_is_not(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(kind, tmp_path) as ob:
            await ob.add([reading(1, pm25=10.0)])
            await ob.add([reading(1, pm25=10.0)])
            with pytest.raises(OutboxConflictError):
                await ob.add([reading(2), reading(1, pm25=99.0)])
            assert (await ob.stats()).depth == 1
            await ob.add([reading(1, pm10=3.0)])  # another metric at that time: added
            seq = await ob.batch(10, NOW)
            assert seq is not None
            body = json.loads(await ob.payload(GW, seq, NOW) or b"")
            assert body["readings"][0]["values"] == {"pm25": 10.0, "pm10": 3.0}

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_quota_refuses_until_batches_are_accepted(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(kind, tmp_path, small=True) as ob:
            added = 0
            with pytest.raises(OutboxFullError):
                for i in range(20_000):
                    await ob.add([reading(i, pm25=float(i % 500))])
                    added += 1
            assert 0 < added < 20_000
            assert (await ob.stats()).depth == added, "a refusal stores nothing"
            while await ob.batch(500, NOW) is not None:
                pass
            await ob.accept(await ob.inflight())
            await ob.add([reading(30_000)])  # room again
            assert (await ob.stats()).depth == 1

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_eviction_drops_the_oldest_and_keeps_accepting(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(kind, tmp_path, policy=EVICT_OLDEST, small=True) as ob:
            for i in range(3000):
                await ob.add([reading(i, pm25=float(i % 500))])
            depth = (await ob.stats()).depth
            assert 0 < depth < 3000
            seq = await ob.batch(5000, NOW)
            assert seq is not None
            body = json.loads(await ob.payload(GW, seq, NOW) or b"")
            devices = [r["device"] for r in body["readings"]]
            assert devices[-1] == "dev-2999", "the newest reading is kept"
            assert "dev-0" not in devices, "the oldest went first"

    run(main)


# --------------------------------------------------------------------------- the uplink


class RecordingLink:
    """An in-process :class:`edge.uplink.Link`: records what is published, no broker."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.published: list[tuple[str, int, bool]] = []  #: (topic, seq, json content)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, json_content: bool = False
    ) -> bool:
        self.published.append((topic, json.loads(payload)["seq"], json_content))
        return True

    def seqs(self) -> list[int]:
        return [seq for _, seq, _ in self.published]


async def until(check: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 - polling a plain list
            await asyncio.sleep(0.01)


def test_uplink_policy_without_a_broker() -> None:
    async def main() -> None:
        ob = MemoryOutbox()
        metrics = Metrics()
        up = Uplink(
            ob,
            GW,
            metrics=metrics,
            batch_max_readings=2,
            batch_max_delay=0,
            resend_interval=0.4,
            max_inflight=2,
        )
        link = RecordingLink()
        task = asyncio.create_task(up.run(link))
        try:
            await ob.add([reading(i) for i in range(6)])
            up.notify(6)
            await until(lambda: len(link.published) >= 2)
            await asyncio.sleep(0.1)
            assert link.seqs()[:2] == [1, 2], "at most max_inflight batches in flight"
            assert all(t == f"citysense/v1/{GW}/up" and js for t, _, js in link.published)
            await up.confirmed([1, 7])  # 7 is not in flight: ignored, counted
            assert metrics.total("citysense_edge_confirmations_ignored_total") == 1
            await until(lambda: 3 in link.seqs())
            # 2 is not confirmed: published again with the same seq after the interval
            await until(lambda: link.seqs().count(2) >= 2, 5)
            assert metrics.total("citysense_edge_batches_resent_total") >= 1
            await up.confirmed([2, 3])
            await ob.add([reading(i) for i in range(6, 8)])
            up.notify(2)
            await until(lambda: 4 in link.seqs())
            # a reconnect: whatever is in flight goes out again at once
            before = link.seqs().count(4)
            up.on_connected()
            await until(lambda: link.seqs().count(4) > before, 0.3)
            await up.confirmed([4])
            assert (await ob.stats()).depth == 0 and up.inflight == 0
            assert metrics.total("citysense_edge_batches_confirmed_total") == 4
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
