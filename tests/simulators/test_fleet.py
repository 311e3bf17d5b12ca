"""The simulated fleet over real UDP against a CoAP server standing in for the gateway:
end-to-end accounting of every uplink, RFC 7252 retransmission, faults and their answer
codes, downlinks and the burst after an outage."""

from __future__ import annotations

import asyncio
import collections
import dataclasses

from citysense.config import Settings
from simulators.city import generate_fleet
from simulators.coap_client import TransmissionParameters
from simulators.faults import EXPECTED_CODES, FaultPlan
from simulators.fleet import Counters, Fleet, run_fleet
from tests.servers import free_udp_port
from tests.simulators.standin_gateway import start_standin

#: short CoAP timers keep loss tests quick (the RFC values are the defaults)
FAST = TransmissionParameters(ack_timeout=0.15, ack_random_factor=1.5, max_retransmit=4)


def fleet_settings(port: int, **kw: object) -> Settings:
    base = Settings(
        coap=f"127.0.0.1:{port}", seed=4, time_scale=60.0, report_interval=30.0, duration=3.0
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def check_accounting(counters: Counters, stored: list[tuple[str, int]]) -> None:
    """Every uplink ended once; every acknowledged one was stored, exactly once."""
    assert counters.in_flight == 0
    assert counters.abandoned == 0
    assert counters.sent == counters.finished
    assert len(stored) == len(set(stored)), "an uplink was stored twice"
    acked = [(o.device, o.t) for o in counters.outcomes if o.outcome == "2.04"]
    assert len(acked) == counters.acknowledged
    assert set(acked) <= set(stored)
    # nothing stored that the fleet did not send
    sent = {(o.device, o.t) for o in counters.outcomes}
    assert set(stored) <= sent


def test_every_acknowledged_uplink_is_stored_once() -> None:
    devices = generate_fleet(40, seed=4)
    port = free_udp_port()

    async def main() -> tuple[Counters, list[tuple[str, int]]]:
        context, standin = await start_standin({d.device: d for d in devices}, port)
        try:
            counters = Counters(record=True)
            await run_fleet(fleet_settings(port), devices, counters=counters, params=FAST)
            return counters, list(standin.stored)
        finally:
            await context.shutdown()

    counters, stored = asyncio.run(main())
    # 40 devices every 0.5 s for 3 s: about 240 uplinks; a loaded machine may send fewer
    assert counters.sent >= 80
    assert counters.acknowledged == counters.sent
    assert counters.rejected == {}
    check_accounting(counters, stored)
    assert len(stored) == counters.sent
    formats = collections.Counter(o.content_format for o in counters.outcomes)
    assert set(formats) == {110, 112}  # mixed JSON and CBOR
    per_device = collections.Counter(o.device for o in counters.outcomes)
    assert set(per_device) == {d.device for d in devices}


def test_faults_get_their_answer_codes_and_nothing_is_stored_twice() -> None:
    devices = generate_fleet(60, seed=5)
    port = free_udp_port()
    faults = (
        "loss=0.15",
        "duplicate=0.1",
        "corrupt=0.05",
        "skew=0.1",
        "unknown=0.1",
        "oversize=0.05",
        "badformat=0.05",
    )

    async def main() -> tuple[Counters, list[tuple[str, int]]]:
        context, standin = await start_standin({d.device: d for d in devices}, port)
        try:
            counters = Counters(record=True)
            settings = fleet_settings(port, faults=faults, seed=5, duration=4.0)
            await run_fleet(settings, devices, counters=counters, params=FAST, drain=15.0)
            return counters, list(standin.stored)
        finally:
            await context.shutdown()

    counters, stored = asyncio.run(main())
    check_accounting(counters, stored)
    assert counters.endpoint.retransmissions > 0
    assert counters.endpoint.duplicated > 0
    by_fault: dict[str | None, collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for o in counters.outcomes:
        by_fault[o.fault][o.outcome] += 1
    for fault, code in EXPECTED_CODES.items():
        outcomes = by_fault[fault]
        assert outcomes[code] > 0, (fault, outcomes)
        # lost answers may end in a timeout; any answer that came is the expected one
        assert set(outcomes) <= {code, "timeout"}, (fault, outcomes)
    clean = by_fault[None]
    assert set(clean) <= {"2.04", "timeout"}
    assert clean["2.04"] > 0.9 * sum(clean.values())
    assert counters.rejected.get("4.03", 0) == by_fault["unknown"]["4.03"]


def test_a_downlink_changes_the_reporting_interval() -> None:
    devices = generate_fleet(6, seed=6)
    port = free_udp_port()
    target = devices[0].device

    async def main() -> tuple[Fleet, Counters]:
        context, standin = await start_standin({d.device: d for d in devices}, port)
        standin.downlinks[target] = b'[{"bn":"%s:","n":"report_interval","v":600}]' % (
            target.encode()
        )
        counters = Counters(record=True)
        fleet = Fleet(
            devices,
            ("127.0.0.1", port),
            seed=6,
            time_scale=60.0,
            report_interval=30.0,
            params=FAST,
            counters=counters,
        )
        try:
            await fleet.open()
            await fleet.run(asyncio.Event(), duration=3.0)
            await fleet.aclose(5.0)
        finally:
            await context.shutdown()
        return fleet, counters

    fleet, counters = asyncio.run(main())
    assert counters.downlinks == 1
    assert int(fleet.interval_ms[0]) == 600_000
    sent = collections.Counter(o.device for o in counters.outcomes)
    # 600 s at 60x is 10 s of wall time: after its first uplink the device stays asleep (one
    # more may have queued behind the first exchange on a slow machine)
    assert sent[target] <= 2
    assert min(sent[d.device] for d in devices[1:]) >= 3


def test_uplinks_queued_during_an_outage_go_out_in_a_burst() -> None:
    devices = generate_fleet(30, seed=7)
    port = free_udp_port()

    async def main() -> tuple[Counters, list[tuple[str, int]], list[float]]:
        context, standin = await start_standin({d.device: d for d in devices}, port)
        try:
            counters = Counters(record=True)
            settings = fleet_settings(port, faults=("outage=1.0",), duration=3.5)
            await run_fleet(settings, devices, counters=counters, params=FAST)
            return counters, list(standin.stored), list(standin.received_at)
        finally:
            await context.shutdown()

    counters, stored, received = asyncio.run(main())
    check_accounting(counters, stored)
    assert counters.queued >= 30  # every device was due at least once during the outage
    assert counters.queue_dropped == 0 and counters.unsent == 0
    assert counters.acknowledged == counters.sent
    # the burst: the busiest 0.2 s of arrivals holds far more than the steady rate (12/0.2 s)
    received.sort()
    busiest = max(
        sum(1 for t in received[i:] if t - received[i] < 0.2) for i in range(len(received))
    )
    assert busiest >= 30


def test_faults_are_seeded() -> None:
    a = FaultPlan.from_settings(("skew=0.3", "unknown=0.3"), 9)
    b = FaultPlan.from_settings(("skew=0.3", "unknown=0.3"), 9)
    ids = [d.device for d in generate_fleet(50, seed=1)]
    assert [a.skew_ms(i) for i in ids] == [b.skew_ms(i) for i in ids]
    assert [a.unknown(i) for i in ids] == [b.unknown(i) for i in ids]
    assert [a.payload_fault() for _ in range(100)] == [b.payload_fault() for _ in range(100)]
