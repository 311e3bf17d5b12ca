"""The driver against simulated modules on real pseudo-terminals, through pyserial.

Each test starts a :class:`~simulators.module.SimulatedModule` (fast timings) and a
:class:`~firmware_bridge.source.SerialSource` on its device path; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest

from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, decode_senml, encode_values
from firmware_bridge.dialects import dialect_of
from firmware_bridge.driver import DriverTimings, ModuleDriver, ModuleRebootedError
from firmware_bridge.source import Datagram, RadioReport, SerialSource
from firmware_bridge.transport import SerialByteStream
from simulators.module import ModuleTimings, SimulatedModule

log = logging.getLogger(__name__)

DIALECT_NAMES = ("bc95", "sim7020", "bc66")
SPEED = 50.0
FAST = DriverTimings(
    command=0.5,
    attach=1.0,
    boot=5.0,
    registration=20.0,
    registration_poll=0.2,
    socket_open=1.0,
    sync_pause=0.05,
)
#: under faults: a lost answer costs one command timeout, so keep it short
SOAK = replace(FAST, command=0.2)


def module(dialect: str, seed: int = 1, **faults: float) -> SimulatedModule:
    return SimulatedModule(
        dialect, seed=seed, faults=faults, speed=SPEED, timings=ModuleTimings(max_delay=0.15)
    )


def payload(i: int) -> bytes:
    cf = CF_SENML_JSON if i % 2 else CF_SENML_CBOR
    return encode_values(
        "urn:imei:867726030000000",
        1_700_000_000_000 + i * 1000,
        {"pm25": float(i % 500), "uplinks": float(i)},
        cf,
    )


def counter(source: SerialSource, name: str) -> int:
    value = source.health[name]
    assert isinstance(value, int)
    return value


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Running:
    source: SerialSource
    datagrams: list[Datagram] = field(default_factory=list)
    radio: list[RadioReport] = field(default_factory=list)

    def payloads(self) -> list[bytes]:
        return [d.payload for d in self.datagrams]


@asynccontextmanager
async def running(sim: SimulatedModule, **kw: object) -> AsyncIterator[Running]:
    options: dict[str, object] = {
        "radio_interval": 0.5,
        "timings": FAST,
        "idle_poll": 0.3,
        "backoff_min": 0.05,
        "backoff_max": 0.5,
    }
    options.update(kw)
    source = SerialSource(sim.device, sim.dialect, **options)  # type: ignore[arg-type]
    run = Running(source)

    async def on_datagram(d: Datagram) -> None:
        run.datagrams.append(d)

    async def on_radio(r: RadioReport) -> None:
        run.radio.append(r)

    task = asyncio.create_task(source.run(on_datagram, on_radio))
    try:
        await until(lambda: source.ready.is_set() or task.done(), 20, "the module to be ready")
        if task.done():
            task.result()
        yield run
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    assert source.health["state"] == "stopped"


async def inject(sim: SimulatedModule, data: bytes, remote: str = "203.0.113.7:40001") -> bool:
    return await asyncio.to_thread(sim.inject_datagram, data, remote)


async def inject_when_ready(sim: SimulatedModule, data: bytes, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not await inject(sim, data):
        if time.monotonic() > deadline:
            raise AssertionError("the module never accepted the datagram")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_clean_module_identity_radio_datagrams_and_send(dialect: str) -> None:
    async def main() -> None:
        with module(dialect) as sim:
            async with running(sim) as run:
                src = run.source
                assert src.identity is not None
                assert src.identity.imei == sim.imei
                assert src.identity.iccid == sim.iccid
                assert src.identity.imsi == sim.imsi
                sent = [payload(i) for i in range(40)]
                for p in sent:
                    assert await inject(sim, p, "203.0.113.9:40123")
                await until(lambda: len(run.datagrams) >= 40, 20, "40 datagrams")
                assert run.payloads() == sent  # in order, exactly once
                for d in run.datagrams:
                    assert d.module_imei == sim.imei
                    assert d.remote == ("203.0.113.9:40123" if dialect == "bc95" else "unknown")
                # every payload is SenML a gateway can decode
                assert decode_senml(run.datagrams[1].payload, CF_SENML_JSON, 1.7e9)
                assert decode_senml(run.datagrams[0].payload, CF_SENML_CBOR, 1.7e9)
                await until(lambda: len(run.radio) >= 2, 20, "two radio reports")
                report = run.radio[-1]
                assert report.imei == sim.imei
                assert set(report.values) == {"rsrp", "snr", "ecl"}
                assert -125 <= report.values["rsrp"] <= -65
                assert {"rsrq", "cell_id", "pci", "earfcn"} <= set(report.extra)
                await src.send("203.0.113.5:5683", b"downlink-ack")
                await until(lambda: bool(sim.sent), 10, "the datagram to leave the module")
                assert sim.sent == [("203.0.113.5:5683", b"downlink-ack")]
                assert src.health["datagrams"] == 40
                assert src.health["reboots"] == 0

    asyncio.run(main())


def test_bc95_busy_answers_are_retried_for_reads_and_sends() -> None:
    async def main() -> None:
        with module("bc95", busy=0.4) as sim:
            async with running(sim) as run:
                sent = [payload(i) for i in range(20)]
                for p in sent:
                    assert await inject(sim, p, "203.0.113.9:40123")
                await until(lambda: len(run.datagrams) >= 20, 20, "20 datagrams")
                assert run.payloads() == sent
                for i in range(5):
                    await run.source.send("203.0.113.5:5683", b"ack%d" % i)
                assert [p for _, p in sim.sent] == [b"ack%d" % i for i in range(5)]
                assert sim.stats["busy"] > 0
                driver = run.source.driver
                assert driver is not None and driver.counters["busy"] > 0
                assert run.source.health["reboots"] == 0

    asyncio.run(main())


def test_bc95_operator_platform_downlink_arrives_as_a_datagram() -> None:
    async def main() -> None:
        with module("bc95") as sim:
            async with running(sim) as run:
                assert await asyncio.to_thread(sim.inject_downlink, b"ON")
                await until(lambda: bool(run.datagrams), 10, "the +NNMI downlink")
                assert run.datagrams[0].payload == b"ON"
                assert run.datagrams[0].remote == "cdp"

    asyncio.run(main())


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_reboot_mid_command_fails_it_clearly_then_reinitialises(dialect: str) -> None:
    async def main() -> None:
        with module(dialect) as sim:
            async with running(sim, radio_interval=60.0) as run:
                src = run.source
                driver = src.driver
                assert driver is not None
                sim.reboot_on_command("AT+CSQ")
                with pytest.raises(ModuleRebootedError, match="AT\\+CSQ: module rebooted"):
                    await driver.command("AT+CSQ")
                await until(lambda: src.health["reboots"] == 1, 20, "the reboot to be counted")
                await until(src.ready.is_set, 20, "re-initialisation")
                await inject_when_ready(sim, b"after-reboot")
                await until(lambda: b"after-reboot" in run.payloads(), 20, "the next datagram")
                assert src.health["state"] == "ready"
                assert src.health["reboots"] == 1

    asyncio.run(main())


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_spontaneous_reboot_and_deregistration(dialect: str) -> None:
    async def main() -> None:
        with module(dialect) as sim:
            async with running(sim, radio_interval=60.0) as run:
                src = run.source
                sim.reboot()
                await until(lambda: src.health["reboots"] == 1, 20, "the reboot to be seen")
                await inject_when_ready(sim, b"one")
                await until(lambda: b"one" in run.payloads(), 20, "a datagram after reboot")
                sim.deregister()
                await inject_when_ready(sim, b"two")
                await until(lambda: b"two" in run.payloads(), 20, "a datagram after re-register")
                assert run.payloads() == [b"one", b"two"]

    asyncio.run(main())


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_vanished_port_is_reopened_with_backoff(dialect: str) -> None:
    async def main() -> None:
        with module(dialect) as sim:
            async with running(sim) as run:
                src = run.source
                sim.vanish()
                await until(lambda: counter(src, "reconnects") >= 1, 20, "a reconnect")
                await until(src.ready.is_set, 20, "the module to be ready again")
                await inject_when_ready(sim, b"back")
                await until(lambda: b"back" in run.payloads(), 20, "a datagram after reconnect")
                assert src.health["state"] == "ready"

    asyncio.run(main())


def test_a_reboot_while_re_initialising_leaves_the_next_one_counted() -> None:
    """A second reboot while the driver re-initialises after a first (no new boot episode on
    the wire: the first banner is not over) is counted, and so is a third while serving."""

    async def main() -> None:
        with module("bc95") as sim:
            async with running(sim) as run:
                src = run.source
                await asyncio.to_thread(sim.reboot_on_command, "AT+CGSN")
                await asyncio.to_thread(sim.reboot)
                await until(lambda: counter(src, "reboots") == 2, 20, "both reboots counted")
                await until(lambda: src.health["state"] == "ready", 20, "ready again")
                await asyncio.to_thread(sim.reboot)
                await until(lambda: counter(src, "reboots") == 3, 20, "the third counted")
                await until(lambda: src.health["state"] == "ready", 20, "ready at the end")

    asyncio.run(main())


def test_a_datagram_read_as_the_port_vanishes_is_kept() -> None:
    """The read's data line arrives, then the port goes before the final result: the
    datagram is handed on, and the driver reconnects."""

    async def main() -> None:
        with module("bc95") as sim:
            async with running(sim) as run:
                await asyncio.to_thread(sim.vanish_mid_read)
                assert await inject(sim, b"x")
                await until(lambda: run.payloads() == [b"x"], 20, "the datagram read as it went")
                assert sim.delivered == [b"x"]
                await until(lambda: run.source.health["reconnects"] >= 1, 20, "a reconnect")

    asyncio.run(main())


def test_junk_line_and_garbage_are_counted_not_fatal() -> None:
    async def main() -> None:
        with module("bc95", junk=1.0) as sim:
            async with running(sim) as run:
                assert await inject(sim, b"x")
                await until(lambda: run.payloads() == [b"x"], 20, "the datagram")
                await until(
                    lambda: counter(run.source, "garbage_lines") > 0,
                    20,
                    "junk to be counted",
                )

    asyncio.run(main())


def test_psm_sleep_loses_the_first_command_and_sync_recovers() -> None:
    async def main() -> None:
        with module("bc95") as sim:
            stream = await SerialByteStream.open(sim.device, 9600)
            try:
                async with ModuleDriver(stream, dialect_of("bc95"), FAST) as driver:
                    await driver.initialise()
                    await driver.configure_psm(3600, 60)
                    await driver.configure_edrx(81.92)
                    await until(lambda: sim.asleep, 20, "the module to enter PSM")
                    await driver.sync()
                    assert not sim.asleep
                    seen: list[str] = []
                    while not driver.urcs.empty():
                        item = driver.urcs.get_nowait()
                        seen.append(getattr(item, "line", ""))
                    assert "+NPSMR:1" in seen and "+NPSMR:0" in seen
                    await driver.configure_psm(None, None)
            finally:
                await stream.aclose()

    asyncio.run(main())


@dataclass
class Outcome:
    injected: list[bytes]
    delivered: list[bytes]
    received: list[bytes]
    stats: dict[str, int]
    health: dict[str, object]
    seconds: float


async def clean_reboot(sim: SimulatedModule, run: Running, faults: dict[str, float]) -> None:
    """A reboot the driver must notice: sent while it serves (a reboot during initialisation
    counts as the boot being handled) and with every fault paused until it is counted, so
    neither a garbled banner nor a vanished port leaves it to chance -- the driver recovers
    from those too, through its reconnect, without counting a reboot."""
    await until(lambda: run.source.health["state"] == "ready", 30, "ready for the reboot")
    before = int(run.source.health["reboots"])
    await asyncio.to_thread(sim.set_faults, {})
    try:
        await asyncio.to_thread(sim.reboot)
        await until(
            lambda: int(run.source.health["reboots"]) > before, 30, "the reboot to be counted"
        )
    finally:
        await asyncio.to_thread(sim.set_faults, faults)


async def soak(
    dialect: str, count: int, faults: dict[str, float], seed: int, *, force: bool = False
) -> Outcome:
    """Inject ``count`` datagrams under ``faults`` (``force``: also a reboot, a vanished port
    and a deregistration on cue); then faults off, and one more datagram must arrive."""
    start = time.monotonic()
    with module(dialect, seed, **faults) as sim:
        async with running(sim, timings=SOAK, radio_interval=1.0) as run:
            injected: list[bytes] = []
            forced = (
                {}
                if not force
                else {
                    count // 2: sim.vanish,
                    3 * count // 4: sim.deregister,
                }
            )
            for i in range(count):
                # the heavy faults at least once each, whatever the draws
                if force and i == count // 4:
                    await clean_reboot(sim, run, faults)
                if forced and i in forced:
                    await asyncio.to_thread(forced[i])
                p = payload(i)
                await inject_when_ready(sim, p)  # a rebooting or vanished module refuses
                injected.append(p)
                if i % 20 == 19:
                    # let the reader keep up, as a real network would pace a module
                    await until(lambda: sim.backlog < 20, 30, "the module's backlog to shrink")
            try:
                await until(
                    lambda: set(sim.delivered) <= set(run.payloads()),
                    60,
                    "every delivered datagram",
                )
            except AssertionError:
                missing = [injected.index(p) for p in set(sim.delivered) - set(run.payloads())]
                raise AssertionError(
                    f"datagrams {sorted(missing)} delivered, never received; "
                    f"sim {sim.stats}; health {run.source.health}"
                ) from None
            sim.set_faults({})
            # the driver settled on the module's socket: a socket opened by a command whose
            # answer was lost is closed by the driver's next initialisation, with its data
            await until(
                lambda: (
                    run.source.health["state"] == "ready"
                    and set(sim.core.sockets) == {run.source._sock}
                ),
                30,
                "the driver to settle on the module's socket",
            )
            await inject_when_ready(sim, b"final")
            await until(lambda: b"final" in run.payloads(), 30, "the final datagram")
            # healthy again: a lost "+CEREG: 1" is asked for, so the state comes back
            await until(lambda: run.source.health["state"] == "ready", 30, "state ready")
            return Outcome(
                injected,
                [d for d in sim.delivered if d != b"final"],
                [p for p in run.payloads() if p != b"final"],
                dict(sim.stats),
                dict(run.source.health),
                time.monotonic() - start,
            )


def check(outcome: Outcome) -> None:
    received = outcome.received
    assert len(received) == len(set(received)), "a datagram arrived twice"
    assert set(received) <= set(outcome.injected), "a datagram arrived that was never sent"
    missing = set(outcome.delivered) - set(received)
    assert not missing, f"{len(missing)} delivered datagrams never arrived"


def test_thousand_datagrams_with_garbled_and_dropped_lines_bc95() -> None:
    faults = {"garble": 0.04, "drop": 0.04}
    outcome = asyncio.run(soak("bc95", 1000, faults, seed=7))
    check(outcome)
    log.warning(
        "bc95 1000 datagrams, faults %s: injected %d, delivered %d, received %d, "
        "sim stats %s, health %s, %.1f s",
        faults,
        len(outcome.injected),
        len(outcome.delivered),
        len(outcome.received),
        outcome.stats,
        outcome.health,
        outcome.seconds,
    )
    assert len(outcome.injected) == 1000
    assert outcome.stats["garbled"] > 0 and outcome.stats["dropped"] > 0
    assert outcome.health["state"] == "ready"


ALL_FAULTS = {
    "garble": 0.03,
    "drop": 0.03,
    "delay": 0.05,
    "urc": 0.1,
    "reboot": 0.01,
    "deregister": 0.01,
    "junk": 0.02,
    "vanish": 0.005,
}


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_every_fault_on(dialect: str) -> None:
    outcome = asyncio.run(soak(dialect, 150, ALL_FAULTS, seed=11, force=True))
    check(outcome)
    log.warning(
        "%s with every fault: injected %d, delivered %d, received %d, sim %s, health %s, %.1f s",
        dialect,
        len(outcome.injected),
        len(outcome.delivered),
        len(outcome.received),
        outcome.stats,
        outcome.health,
        outcome.seconds,
    )
    assert outcome.health["state"] == "ready"
    assert int(outcome.health["reboots"]) >= 1  # type: ignore[call-overload]
    assert int(outcome.health["reconnects"]) >= 1  # type: ignore[call-overload]
