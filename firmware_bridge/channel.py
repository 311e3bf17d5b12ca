"""The async command channel: an :class:`~firmware_bridge.at.AtSession` over a byte stream.

:class:`AtChannel` owns one :class:`~firmware_bridge.transport.ByteStream`: a reader task
feeds the session and routes its events -- a response completes the command in flight,
URCs and boot lines go to :attr:`AtChannel.urcs` (a queue the caller consumes), garbage is
counted. (Waits use ``asyncio.timeout``, never ``wait_for``, whose 3.11 version can swallow a
cancellation that coincides with the result.) :meth:`AtChannel.command` sends one command at a
time with its own timeout and raises :class:`~firmware_bridge.errors.CommandError`,
:class:`~firmware_bridge.errors.CommandTimeoutError`,
:class:`~firmware_bridge.errors.ModuleRebootedError` or
:class:`~firmware_bridge.transport.TransportError`. The socket operations
(:mod:`firmware_bridge.sockets`) and the module operations (:mod:`firmware_bridge.driver`)
are built on it.

Invariants: one command in flight; a boot line during a command aborts that command (a reboot
is never mistaken for a response); a datagram line is consumed exactly once, even when it
arrives late, outside the read that asked for it (it is recovered from stray lines).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterable
from typing import Self

from firmware_bridge.at import (
    Aborted,
    AtSession,
    Echo,
    Event,
    Garbage,
    Prompt,
    Response,
    Stray,
    Timeout,
    Urc,
)
from firmware_bridge.dialects import Dialect
from firmware_bridge.errors import (
    CommandError,
    CommandTimeoutError,
    Disconnected,
    DriverTimings,
    ModuleRebootedError,
    Rebooted,
)
from firmware_bridge.transport import ByteStream, PortLostError, TransportError

log = logging.getLogger(__name__)


class AtChannel:
    """One AT session over one byte stream (see the module docstring)."""

    def __init__(
        self, stream: ByteStream, dialect: Dialect, timings: DriverTimings | None = None
    ) -> None:
        self.stream = stream
        self.dialect = dialect
        self.timings = timings or DriverTimings()
        self._session = AtSession(boot_prefixes=dialect.boot_prefixes, raw_after=dialect.raw_after)
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[Event] | None = None
        self._prompt_data: bytes | None = None
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._waiters: list[tuple[re.Pattern[str], asyncio.Future[Urc]]] = []
        self.urcs: asyncio.Queue[Urc | Stray | Rebooted | Disconnected] = asyncio.Queue()
        self.booting = False
        self.boot_done = asyncio.Event()
        self.echo_expected = True
        self.counters: dict[str, int] = {
            "garbage_lines": 0,
            "stray_lines": 0,
            "urcs": 0,
            "timeouts": 0,
            "echoes": 0,
            "boot_episodes": 0,
            "busy": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._reader = asyncio.create_task(self._read_loop(), name="at-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, TransportError):
                pass
            self._reader = None

    @property
    def boot_episodes(self) -> int:
        return self.counters["boot_episodes"]

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.stream.read()
                for event in self._session.receive(data):
                    await self._dispatch(event)
        except TransportError as exc:
            self._failure = exc
            if self._pending is not None and not self._pending.done():
                self._pending.set_exception(exc)
            await self.urcs.put(Disconnected(str(exc)))
            raise

    async def _dispatch(self, event: Event) -> None:
        if isinstance(event, Response | Aborted):
            if self._pending is not None and not self._pending.done():
                self._pending.set_result(event)
        elif isinstance(event, Urc):
            self.counters["urcs"] += 1
            log.debug("<< %s", event.line)
            if event.kind == "boot":
                self._boot_line(event.line)
                return
            for pattern, fut in list(self._waiters):
                if not fut.done() and pattern.match(event.line):
                    fut.set_result(event)
                    self._waiters.remove((pattern, fut))
                    return
            await self.urcs.put(event)
        elif isinstance(event, Stray):
            self.counters["stray_lines"] += 1
            if self.dialect.read_re is not None and self.dialect.read_re.fullmatch(event.line):
                await self.urcs.put(event)
        elif isinstance(event, Garbage):
            self.counters["garbage_lines"] += 1
            log.debug("garbage from module (%s): %r", event.reason, event.data[:64])
        elif isinstance(event, Prompt):
            if self._prompt_data is not None:
                data, self._prompt_data = self._prompt_data, None
                await self.stream.write(data)
        elif isinstance(event, Echo):
            self.counters["echoes"] += 1
            if not self.echo_expected:
                # echo is back on: the module went through a reset we did not see
                self._boot_line("echo returned")
                self.boot_done.set()  # it answers, so it has finished booting

    def _boot_line(self, line: str) -> None:
        self.echo_expected = True  # a reset restores the factory echo
        if not self.booting:
            self.booting = True
            self.boot_done.clear()
            self.counters["boot_episodes"] += 1
            log.info("module reboot seen: %s", line)
            self.urcs.put_nowait(Rebooted(self.boot_episodes, line))
        if line.startswith(self.dialect.boot_done):
            self.boot_done.set()

    def settled(self) -> None:
        """The caller finished re-initialising: later boot lines start a new episode."""
        self.booting = False

    # ------------------------------------------------------------------ commands

    async def command(
        self,
        command: str,
        within: float | None = None,
        *,
        await_send_result: bool = False,
        expect_reboot: bool = False,
        data: bytes | None = None,
        recover: bool = True,
    ) -> Response:
        """Send ``command`` and wait for its final result (see the module docstring).

        ``recover``: datagram lines found in a failed answer are handed back as strays (off
        for the read command itself, whose caller takes them from the error's ``lines``).
        """
        timeout = self.timings.command if within is None else within
        async with self._lock:
            if self._failure is not None:
                raise TransportError(str(self._failure))
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[Event] = loop.create_future()
            self._pending = fut
            self._prompt_data = data
            out = self._session.send(
                command,
                loop.time(),
                timeout,
                await_send_result=await_send_result,
                expect_reboot=expect_reboot,
            )
            log.debug("-> %s", command)
            try:
                await self.stream.write(out)
                async with asyncio.timeout(timeout):
                    event = await fut
            except TimeoutError:
                self.counters["timeouts"] += 1
                lines = await self._cut_short(recover)
                raise CommandTimeoutError(command, timeout, lines) from None
            except TransportError as exc:  # the port went mid-answer: what came is handed on
                raise PortLostError(f"{command}: {exc}", await self._cut_short(recover)) from exc
            finally:
                self._pending = None
                self._prompt_data = None
                if self._session.command == command and (not fut.done() or fut.cancelled()):
                    self._session.cancel()
            if isinstance(event, Aborted):
                # a datagram line may have come through before the reboot: keep it
                await self._recover(event.lines)
                raise ModuleRebootedError(f"{command}: {event.reason}")
            assert isinstance(event, Response)
            log.debug("<- %s %s", event.lines, event.final.text)
            if not event.final.ok:
                if recover:
                    await self._recover(event.lines)
                raise CommandError(command, event.final.text, event.final.code, event.lines)
            return event

    async def _cut_short(self, recover: bool) -> tuple[str, ...]:
        """The lines that came of an answer cut short (timed out, or the port went); with
        ``recover`` the datagram lines among them are handed back as strays too."""
        events = self._session.poll(math.inf)
        lines = events[0].lines if events and isinstance(events[0], Timeout) else ()
        if recover:
            await self._recover(lines)
        return lines

    async def _recover(self, lines: Iterable[str]) -> None:
        """Hand datagram lines caught in another command's answer back as strays."""
        read_re = self.dialect.read_re
        if read_re is None:
            return
        for line in lines:
            if read_re.fullmatch(line):
                await self.urcs.put(Stray(line))

    async def ok(
        self, command: str, within: float | None = None, *, retries: int = 2
    ) -> tuple[str, ...]:
        """The intermediate lines of a successful query, retried after a timeout (a query
        is idempotent, and a lost answer is the commonest UART fault)."""
        for attempt in range(retries + 1):
            try:
                return (await self.command(command, within)).lines
            except CommandTimeoutError:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")

    async def wait_urc(self, pattern: re.Pattern[str], within: float) -> Urc:
        fut: asyncio.Future[Urc] = asyncio.get_running_loop().create_future()
        entry = (pattern, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(within):
                return await fut
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
