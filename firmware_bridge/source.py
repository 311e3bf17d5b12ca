"""The gateway-facing API: :class:`SerialSource` turns one module into datagrams and radio reports.

``SerialSource(device, dialect).run(on_datagram, on_radio)`` opens the port, initialises the
module (sync, echo off, identity, registration, attach), opens a UDP socket on
``listen_port`` and then, until cancelled:

* hands every datagram the module receives to ``on_datagram`` -- awaited before the next one
  is read (back-pressure); on ``read`` dialects the socket is also read when no URC came for
  ``idle_poll`` seconds, so a lost ``+NSONMI`` loses nothing;
* hands a :class:`RadioReport` (``device_health`` values of the module's IMEI) to
  ``on_radio`` every ``radio_interval`` seconds;
* re-initialises after a module reboot (banner, echo back on, or repeated failures) and
  reopens a vanished port with capped exponential back-off.

:attr:`SerialSource.health` is a :class:`SerialHealth` (a typed dict) for ``/metrics``: state, reconnects, reboots,
garbage_lines, datagrams, last_error (and imei, timeouts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypedDict

from firmware_bridge.at import Stray, Urc
from firmware_bridge.dialects import dialect_of
from firmware_bridge.driver import (
    CommandError,
    CommandTimeoutError,
    Disconnected,
    DriverTimings,
    Identity,
    ModuleDriver,
    ModuleError,
    ModuleRebootedError,
    Rebooted,
    Received,
)
from firmware_bridge.transport import ByteStream, SerialByteStream, TransportError

log = logging.getLogger(__name__)

_CEREG_STATES = {
    1: "ready",
    5: "ready",
    0: "searching",
    2: "searching",
    3: "denied",
    4: "searching",
}


@dataclass(frozen=True, slots=True)
class Datagram:
    payload: bytes  #: raw UDP payload the module received (SenML JSON or CBOR from a sensor)
    remote: str  #: "ip:port" of the sender ("unknown" when the module does not say)
    module_imei: str


@dataclass(frozen=True, slots=True)
class RadioReport:
    imei: str
    t_ms: int
    values: dict[str, float]  #: device_health catalog metrics: rsrp, snr, ecl
    extra: dict[str, object]  #: rsrq, rssi, cell_id, pci, earfcn, tx_power, band, tac


class SerialHealth(TypedDict):
    """What a serial source reports of itself (``/metrics`` of the gateway)."""

    state: str  #: stopped, opening, initialising, ready, failed...
    reconnects: int
    reboots: int
    garbage_lines: int
    datagrams: int
    timeouts: int
    last_error: str | None
    imei: str | None


def new_health(state: str = "stopped") -> SerialHealth:
    return SerialHealth(
        state=state,
        reconnects=0,
        reboots=0,
        garbage_lines=0,
        datagrams=0,
        timeouts=0,
        last_error=None,
        imei=None,
    )


class _Unhealthy(ModuleError):
    """Too many failures in a row: re-initialise."""


StreamOpener = Callable[[str, int], Awaitable[ByteStream]]


class SerialSource:
    """One NB-IoT module on a serial port (see the module docstring)."""

    def __init__(
        self,
        device: str,
        dialect: str,
        *,
        listen_port: int = 5683,
        radio_interval: float = 60.0,
        baudrate: int | None = None,
        timings: DriverTimings | None = None,
        idle_poll: float = 5.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        max_failures: int = 3,
        opener: StreamOpener | None = None,
    ) -> None:
        self.device = device
        self.dialect = dialect_of(dialect)
        self.listen_port = listen_port
        self.radio_interval = radio_interval
        self.baudrate = baudrate or self.dialect.baudrate
        self.timings = timings or DriverTimings()
        self.idle_poll = idle_poll
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_failures = max_failures
        self._opener: StreamOpener = opener or SerialByteStream.open
        self.identity: Identity | None = None
        self.driver: ModuleDriver | None = None
        self.ready = asyncio.Event()
        self.health: SerialHealth = new_health()
        self._garbage_base = 0
        self._timeouts_base = 0
        self._handled_episode = 0
        self._failures = 0
        self._inits = 0
        self._sock: int | None = None

    # ------------------------------------------------------------------ run

    async def run(
        self,
        on_datagram: Callable[[Datagram], Awaitable[None]],
        on_radio: Callable[[RadioReport], Awaitable[None]],
    ) -> None:
        """Deliver datagrams and radio reports until cancelled (see the module docstring)."""
        backoff = self.backoff_min
        first = True
        try:
            while True:
                if not first:
                    self.health["reconnects"] += 1
                first = False
                self._state("connecting")
                try:
                    stream = await self._opener(self.device, self.baudrate)
                except TransportError as exc:
                    self._error(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                inits = self._inits
                try:
                    async with ModuleDriver(stream, self.dialect, self.timings) as driver:
                        self.driver = driver
                        self._handled_episode = 0
                        await self._sessions(driver, on_datagram, on_radio)
                except TransportError as exc:
                    self._error(exc)
                    log.info(
                        "%s: port lost (%s); reconnecting in %.1f s", self.device, exc, backoff
                    )
                finally:
                    self._fold_counters()
                    self.driver = None
                    self.ready.clear()
                    await stream.aclose()
                self._state("disconnected")
                if self._inits != inits:
                    backoff = self.backoff_min
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            self._state("stopped")

    async def _sessions(
        self,
        driver: ModuleDriver,
        on_datagram: Callable[[Datagram], Awaitable[None]],
        on_radio: Callable[[RadioReport], Awaitable[None]],
    ) -> None:
        """Initialise and serve, again after every reboot; returns only by raising."""
        while True:
            serving = False
            try:
                sock = await self._initialise(driver)
                serving = True
                await self._serve(driver, sock, on_datagram, on_radio)
            except TransportError:
                await self._salvage(driver, on_datagram)
                raise
            except ModuleRebootedError as exc:
                self._reboot_seen(driver, str(exc))
            except _Unhealthy as exc:
                if serving and driver.boot_episodes > self._handled_episode:
                    # failing because it rebooted: its boot lines are still queued, and the
                    # initialisation that follows would take them for its own
                    self._reboot_seen(driver, f"{exc} (boot lines seen)")
                else:
                    self._error(exc)
                    log.warning("%s: %s; re-initialising", self.device, exc)
            except (CommandError, CommandTimeoutError, ModuleError) as exc:
                self._error(exc)
                log.warning("%s: initialisation failed: %s", self.device, exc)
                await asyncio.sleep(self.backoff_min)
            self._sock = None
            self.ready.clear()

    async def _salvage(
        self, driver: ModuleDriver, on_datagram: Callable[[Datagram], Awaitable[None]]
    ) -> None:
        """The port is gone: deliver the datagrams already read from it."""
        while not driver.urcs.empty():
            item = driver.urcs.get_nowait()
            if isinstance(item, Stray):
                got = driver.parse_read_line(item.line)
                if got is not None:
                    await self._deliver(got[0], on_datagram)
            elif isinstance(item, Urc):
                received = driver.datagram_of(item)
                if received is not None:
                    await self._deliver(received, on_datagram)

    def _reboot_seen(self, driver: ModuleDriver, reason: str) -> None:
        self.health["reboots"] += 1
        # handled up to the channel's own count (a second reboot while re-initialising is
        # no new episode there): one past it would swallow the next reboot's announcement
        self._handled_episode = max(self._handled_episode, driver.boot_episodes)
        self.health["last_error"] = reason
        log.info("%s: module rebooted (%s); re-initialising", self.device, reason)
        self._state("rebooting")

    async def _initialise(self, driver: ModuleDriver) -> int:
        self._state("initialising")
        await driver.initialise()
        self.identity = await driver.identify()
        self.health["imei"] = self.identity.imei
        self._state("registering")
        await driver.wait_registered()
        await driver.attach()
        sock = await driver.open_socket(self.listen_port)
        # boot lines seen up to here belong to the boot we just handled -- or, if none was,
        # to a boot while initialising (the first start's power-on aside): counted
        if driver.boot_episodes > self._handled_episode and self._inits > 0:
            self.health["reboots"] += 1
            log.info("%s: module rebooted while being initialised", self.device)
        self._handled_episode = max(self._handled_episode, driver.boot_episodes)
        driver.settled()
        self._sock = sock
        self._inits += 1
        self._failures = 0
        self._state("ready")
        self.ready.set()
        log.info(
            "%s: %s module %s ready, socket %d on port %d",
            self.device,
            self.dialect.name,
            self.identity.imei,
            sock,
            self.listen_port,
        )
        return sock

    async def _serve(
        self,
        driver: ModuleDriver,
        sock: int,
        on_datagram: Callable[[Datagram], Awaitable[None]],
        on_radio: Callable[[RadioReport], Awaitable[None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        next_radio = loop.time()
        next_poll = loop.time() + self.idle_poll
        next_reg = loop.time() + self.timings.registration_poll
        reading = self.dialect.recv_mode == "read"
        while True:
            self._sync_counters()
            now = loop.time()
            if now >= next_radio:
                await self._report_radio(driver, on_radio)
                next_radio = loop.time() + self.radio_interval
            if reading and now >= next_poll:
                await self._drain_socket(driver, sock, on_datagram)
                next_poll = loop.time() + self.idle_poll
            searching = self.health["state"] != "ready"
            if searching and now >= next_reg:
                # the URC that ends a search may have been lost: ask
                try:
                    self._set_registration(await driver.registration())
                except (CommandError, CommandTimeoutError) as exc:
                    self._failed(exc)
                next_reg = loop.time() + self.timings.registration_poll
            wait = next_radio - loop.time()
            if reading:
                wait = min(wait, next_poll - loop.time())
            if searching:
                wait = min(wait, next_reg - loop.time())
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    item = await driver.urcs.get()
            except TimeoutError:
                continue
            if await self._handle(driver, item, on_datagram):
                await self._drain_socket(driver, sock, on_datagram)
                next_poll = loop.time() + self.idle_poll
                # announcements queued before the socket read empty are answered already
                for _ in range(driver.urcs.qsize()):
                    queued = driver.urcs.get_nowait()
                    await self._handle(driver, queued, on_datagram)

    async def _handle(
        self,
        driver: ModuleDriver,
        item: Urc | Stray | Rebooted | Disconnected,
        on_datagram: Callable[[Datagram], Awaitable[None]],
    ) -> bool:
        """Act on one queued item; ``True`` if it announces data to read."""
        if isinstance(item, Disconnected):
            raise TransportError(item.reason)
        if isinstance(item, Rebooted):
            if item.episode > self._handled_episode:
                raise ModuleRebootedError(item.line)
            return False
        if isinstance(item, Stray):
            got = driver.parse_read_line(item.line)
            if got is not None:
                await self._deliver(got[0], on_datagram)
            return False
        if driver.is_data_announcement(item):
            return True
        self._urc(item)
        received = driver.datagram_of(item)
        if received is not None:
            await self._deliver(received, on_datagram)
        return False

    def _urc(self, urc: Urc) -> None:
        if urc.name == "+CEREG":
            fields = urc.fields
            stat = fields[-1] if len(fields) == 1 else fields[0]
            if stat.isdigit():
                self._set_registration(int(stat))
        elif urc.line in self.dialect.sleep_urcs:
            log.debug("%s: %s", self.device, urc.line)

    def _set_registration(self, stat: int) -> None:
        state = _CEREG_STATES.get(stat, "searching")
        if state != self.health["state"]:
            log.info("%s: registration %s -> %s", self.device, stat, state)
        self._state(state)
        if state == "ready":
            self.ready.set()
        else:
            self.ready.clear()

    async def _drain_socket(
        self,
        driver: ModuleDriver,
        sock: int,
        on_datagram: Callable[[Datagram], Awaitable[None]],
    ) -> None:
        """Read while the module holds bytes for us (``read`` dialects)."""
        for _ in range(1000):  # bounded: a module cannot keep us here forever
            try:
                received, remaining = await driver.read_datagram(sock)
            except (CommandError, CommandTimeoutError) as exc:
                self._failed(exc)  # raises after max_failures in a row
                continue  # a lost answer: read again at once, the bytes are still there
            self._failures = 0
            for item in received:
                await self._deliver(item, on_datagram)
            if not received and not remaining:
                return

    async def _report_radio(
        self, driver: ModuleDriver, on_radio: Callable[[RadioReport], Awaitable[None]]
    ) -> None:
        try:
            figures = await driver.radio()
        except (CommandError, CommandTimeoutError) as exc:
            self._failed(exc)
            return
        self._failures = 0
        assert self.identity is not None
        values = figures.health_values()
        if values:
            await on_radio(
                RadioReport(self.identity.imei, int(time.time() * 1000), values, figures.extra())
            )

    async def _deliver(
        self, received: Received, on_datagram: Callable[[Datagram], Awaitable[None]]
    ) -> None:
        assert self.identity is not None
        self.health["datagrams"] += 1
        await on_datagram(Datagram(received.payload, received.remote, self.identity.imei))

    def _failed(self, exc: Exception) -> None:
        self._error(exc)
        self._failures += 1
        if self._failures >= self.max_failures:
            self._failures = 0
            raise _Unhealthy(f"{self.max_failures} failures in a row, last: {exc}")

    # ------------------------------------------------------------------ sending

    async def send(self, remote: str, payload: bytes) -> None:
        """Send one datagram through the module's socket (``ip:port``)."""
        driver = self.driver
        if driver is None or self._sock is None:
            raise TransportError(f"{self.device}: module not ready")
        self._sock = await driver.send_datagram(self._sock, remote, payload)

    # ------------------------------------------------------------------ health

    def _state(self, state: str) -> None:
        self.health["state"] = state
        self._sync_counters()

    def _error(self, exc: BaseException) -> None:
        self.health["last_error"] = str(exc)
        self._sync_counters()

    def _sync_counters(self) -> None:
        driver = self.driver
        if driver is not None:
            self.health["garbage_lines"] = self._garbage_base + driver.counters["garbage_lines"]
            self.health["timeouts"] = self._timeouts_base + driver.counters["timeouts"]

    def _fold_counters(self) -> None:
        driver = self.driver
        if driver is not None:
            self._sync_counters()
            self._garbage_base += driver.counters["garbage_lines"]
            self._timeouts_base += driver.counters["timeouts"]
