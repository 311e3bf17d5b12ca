"""The async module driver: the module operations a gateway needs, each driven by the
dialect table.

:class:`ModuleDriver` is an :class:`~firmware_bridge.channel.AtChannel` (one command at a
time over a byte stream, URCs on a queue) with the UDP socket of :mod:`firmware_bridge.sockets`
(open, read datagrams, send, close) and, here: sync, initialise, identify, wait for
registration, attach, read radio figures, PSM/eDRX. Errors, events and timings live in
:mod:`firmware_bridge.errors` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

from firmware_bridge.errors import (
    CommandError,
    CommandTimeoutError,
    Disconnected,
    DriverTimings,
    Identity,
    ModuleError,
    ModuleRebootedError,
    Rebooted,
    Received,
)
from firmware_bridge.radio import RadioFigures, edrx_code, encode_t3324, encode_t3412, parse_radio
from firmware_bridge.sockets import SocketOps

__all__ = [
    "CommandError",
    "CommandTimeoutError",
    "Disconnected",
    "DriverTimings",
    "Identity",
    "ModuleDriver",
    "ModuleError",
    "ModuleRebootedError",
    "Rebooted",
    "Received",
]

log = logging.getLogger(__name__)


_DIGITS = re.compile(r"\d{6,20}")


class ModuleDriver(SocketOps):
    """One module over one byte stream (see the module docstring)."""

    async def sync(self) -> None:
        """``AT`` until ``OK`` (the module may be booting or asleep: first bytes lost)."""
        tries = self.timings.sync_tries
        deadline = asyncio.get_running_loop().time() + self.timings.boot
        last: Exception | None = None
        while True:
            try:
                await self.command("AT", min(self.timings.command, 2.0), expect_reboot=True)
                return
            except (CommandError, CommandTimeoutError, ModuleRebootedError) as exc:
                last = exc
            tries -= 1
            if tries <= 0 and asyncio.get_running_loop().time() >= deadline:
                raise ModuleError(f"module does not answer AT: {last}")
            remaining = max(0.01, deadline - asyncio.get_running_loop().time())
            if self.booting and not self.boot_done.is_set():
                try:
                    async with asyncio.timeout(remaining):
                        await self.boot_done.wait()
                except TimeoutError:
                    pass
            else:
                # a retry pause, not a wait for an event
                await asyncio.sleep(min(remaining, self.timings.sync_pause))

    # ------------------------------------------------------------------ operations

    async def initialise(self) -> None:
        """After power-on or a reboot: sync, echo off, error codes on, URCs on."""
        if self.booting and not self.boot_done.is_set():
            try:
                async with asyncio.timeout(self.timings.boot):
                    await self.boot_done.wait()
            except TimeoutError:
                log.info("boot banner did not finish; trying AT anyway")
        await self.sync()
        for command in self.dialect.init:
            try:
                await self.ok(command)
            except (CommandError, CommandTimeoutError) as exc:
                if command == "ATE0":
                    raise
                log.info("init command %s failed: %s", command, exc)
            if command == "ATE0":
                self.echo_expected = False

    async def identify(self) -> Identity:
        imei_lines = await self.ok("AT+CGSN=1")
        imei = _first_match(_DIGITS, imei_lines)
        imsi = _first_match(_DIGITS, await self.ok("AT+CIMI"))
        iccid = ""
        for line in await self.ok(self.dialect.iccid):
            m = self.dialect.iccid_re.search(line)
            if m:
                iccid = m.group("iccid")
                break
        product = " ".join(await self.ok(self.dialect.product))
        firmware = " ".join(await self.ok(self.dialect.firmware))
        if not imei:
            raise ModuleError(f"no IMEI in {imei_lines!r}")
        return Identity(imei, iccid, imsi, product, firmware)

    async def registration(self) -> int:
        """``<stat>`` of ``AT+CEREG?`` (1 home, 5 roaming, 2 searching, ...)."""
        for line in await self.ok("AT+CEREG?"):
            if line.startswith("+CEREG"):
                fields = line.partition(":")[2].split(",")
                if len(fields) >= 2 and fields[1].strip().isdigit():
                    return int(fields[1])
        raise ModuleError("no +CEREG in the answer")

    async def wait_registered(self, within: float | None = None) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timings.registration if within is None else within)
        while True:
            stat = await self.registration()
            if stat in (1, 5):
                return stat
            if loop.time() >= deadline:
                raise ModuleError(f"not registered (CEREG stat {stat})")
            try:
                await self.wait_urc(re.compile(r"\+CEREG"), self.timings.registration_poll)
            except TimeoutError:
                pass

    async def attach(self) -> None:
        lines = await self.ok("AT+CGATT?")
        if any(line.replace(" ", "").endswith(":1") for line in lines):
            return
        await self.command("AT+CGATT=1", self.timings.attach)

    async def radio(self) -> RadioFigures:
        lines: list[str] = []
        for command in self.dialect.radio:
            lines.extend(await self.ok(command))
        return parse_radio(self.dialect.radio_parser, lines)

    async def configure_psm(self, tau_s: float | None, active_s: float | None) -> None:
        """``AT+CPSMS=1,,,"<T3412>","<T3324>"``; both ``None`` disables PSM."""
        if tau_s is None and active_s is None:
            await self.command("AT+CPSMS=0")
            return
        await self.command(f'AT+CPSMS=1,,,"{encode_t3412(tau_s)}","{encode_t3324(active_s)}"')

    async def configure_edrx(self, cycle_s: float | None) -> None:
        if cycle_s is None:
            await self.command("AT+CEDRXS=0")
        else:
            await self.command(f'AT+CEDRXS=1,5,"{edrx_code(cycle_s)}"')


def _first_match(pattern: re.Pattern[str], lines: Iterable[str]) -> str:
    for line in lines:
        m = pattern.search(line)
        if m:
            return m.group(0)
    return ""
