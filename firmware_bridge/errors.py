"""What the driver's callers see: its errors, events, timings and results."""

from __future__ import annotations

from dataclasses import dataclass

from citysense.errors import CitysenseError

#: the remote address a socket opened by a peer-fixing dialect starts with (any)
ANY_PEER = ("0.0.0.0", 0)
#: retries of a command the module answered "busy", and the pause before the first
BUSY_RETRIES = 4
BUSY_PAUSE = 0.05


class ModuleError(CitysenseError):
    """The module misbehaved or refused."""


class CommandError(ModuleError):
    """The module answered ``ERROR``, ``+CME ERROR: n`` or ``SEND FAIL``."""

    def __init__(
        self, command: str, final: str, code: int | None = None, lines: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"{command}: {final}")
        self.command = command
        self.final = final
        self.code = code
        self.lines = lines


class CommandTimeoutError(ModuleError):
    """No final result in time; ``lines`` holds what did arrive."""

    def __init__(self, command: str, timeout: float, lines: tuple[str, ...]) -> None:
        super().__init__(f"{command}: no final result within {timeout:g} s")
        self.command = command
        self.lines = lines


class ModuleRebootedError(ModuleError):
    """The module rebooted (a boot banner, or the echo came back)."""


@dataclass(frozen=True, slots=True)
class Rebooted:
    """Queued on :attr:`ModuleDriver.urcs` when a reboot is seen; ``episode`` counts them."""

    episode: int
    line: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """Queued on :attr:`ModuleDriver.urcs` when the byte stream failed."""

    reason: str


@dataclass(frozen=True, slots=True)
class DriverTimings:
    """Timeouts and intervals, seconds (PROTOCOLS.md section 6)."""

    command: float = 5.0
    attach: float = 85.0
    boot: float = 30.0
    registration: float = 600.0
    registration_poll: float = 2.0
    socket_open: float = 60.0
    sync_tries: int = 5
    sync_pause: float = 0.5  #: between unanswered ``AT`` tries


@dataclass(frozen=True, slots=True)
class Identity:
    imei: str
    iccid: str
    imsi: str
    product: str
    firmware: str


@dataclass(frozen=True, slots=True)
class Received:
    """A datagram as the module handed it over."""

    payload: bytes
    remote: str
