"""A simulated NB-IoT module on a pseudo-terminal: BC95-G, SIM7020 or BC66.

:class:`SimulatedModule` opens a pty (``os.openpty``) and answers AT commands on it with the
formats of PROTOCOLS.md sections 1-6, each family with its quirks (no space after ``:`` on the
BC95, echo ending in ``\\r``, hex lengths on the SIM7020, raw bytes after ``+QIURC: "recv"``
on the BC66). A stable symlink (:attr:`SimulatedModule.device`) points at the pty's slave so
that a driver can reopen the "same port" after the port vanished.

It runs in a thread of its own (a ``select`` loop with timers), so a driver in the test's
event loop talks to it exactly as to hardware. Datagrams reach it through
:meth:`SimulatedModule.inject_datagram` (or a scripted sensor schedule) and are announced with
the family's URC. A datagram counts as *delivered* once the line carrying its payload has
left the module intact (not garbled, not dropped); :attr:`SimulatedModule.delivered` lists
them in order.

Faults (``garble``, ``drop``, ``delay``, ``urc``, ``reboot``, ``deregister``, ``junk``,
``vanish``) are switched on by name with a rate, and drawn from a seeded generator.

Imports only :mod:`citysense` and the standard library, never the driver it stands in front of.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import heapq
import logging
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

from citysense.config import Settings
from citysense.errors import ConfigError
from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, encode_values

log = logging.getLogger(__name__)

T = TypeVar("T")

DIALECTS = ("bc95", "sim7020", "bc66")

#: fault name -> default rate (probability per command, or per line for ``garble``)
FAULT_DEFAULTS: Mapping[str, float] = {
    "garble": 0.02,
    "drop": 0.02,
    "delay": 0.05,
    "urc": 0.1,
    "reboot": 0.002,
    "deregister": 0.004,
    "junk": 0.01,
    "vanish": 0.001,
}


def parse_faults(items: Iterable[str]) -> dict[str, float]:
    """``["garble=0.05", "drop", "all"]`` -> {name: rate}; :class:`ConfigError` if unknown."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, rate = item.partition("=")
        name = name.strip()
        if name == "all":
            out.update({k: (float(rate) if sep else v) for k, v in FAULT_DEFAULTS.items()})
            continue
        if name not in FAULT_DEFAULTS:
            raise ConfigError(
                f"unknown fault {name!r}; known: all, {', '.join(sorted(FAULT_DEFAULTS))}"
            )
        try:
            value = float(rate) if sep else FAULT_DEFAULTS[name]
        except ValueError as exc:
            raise ConfigError(f"fault {name}: rate {rate!r} is not a number") from exc
        if not 0 <= value <= 1:
            raise ConfigError(f"fault {name}: rate must be within 0..1")
        out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class ModuleTimings:
    """How long the module takes, in seconds (real-module values by default)."""

    boot: float = 3.0  #: from reset to the end of the boot banner
    register: float = 5.0  #: from boot to ``+CEREG: 1``
    response: float = 0.02  #: to answer a simple command
    max_delay: float = 1.0  #: the ``delay`` fault adds up to this much
    deregistered: float = 5.0  #: how long a ``deregister`` fault lasts
    vanished: float = 3.0  #: how long a ``vanish`` fault lasts
    qiopen: float = 0.2  #: until ``+QIOPEN: <id>,0``
    send_ack: float = 0.3  #: until ``+NSOSTR`` / ``SEND OK``

    def scaled(self, speed: float) -> ModuleTimings:
        """Every duration divided by ``speed`` (tests run modules fast)."""
        names = ("boot", "register", "response", "deregistered", "vanished", "qiopen", "send_ack")
        return replace(self, **{n: getattr(self, n) / speed for n in names})


def luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@dataclass(slots=True)
class _Socket:
    ident: int
    local_port: int
    #: (ip, port, bytes not yet read, the whole datagram)
    queue: deque[tuple[str, int, bytes, bytes]] = field(default_factory=deque)
    peer: tuple[str, int] | None = None


@dataclass(slots=True)
class _Radio:
    rsrp: float
    snr: float
    rsrq: float
    cell_id: int
    pci: int
    earfcn: int
    tac: int
    band: int

    def drift(self, rng: random.Random) -> None:
        self.rsrp = min(-65.0, max(-125.0, self.rsrp + rng.gauss(0, 1.5)))
        self.snr = min(25.0, max(-8.0, self.snr + rng.gauss(0, 0.8)))
        self.rsrq = min(-3.0, max(-19.5, self.rsrq + rng.gauss(0, 0.5)))

    @property
    def ecl(self) -> int:
        return 0 if self.rsrp > -105 else 1 if self.rsrp > -115 else 2


# an output item: text line (or raw bytes) and the datagram it delivers, if any
_Item = tuple[str | bytes, bytes | None]


class SimulatedModule:
    """One simulated module on a pty (see the module docstring)."""

    def __init__(
        self,
        dialect: str,
        *,
        seed: int = 1,
        faults: Mapping[str, float] | None = None,
        timings: ModuleTimings | None = None,
        speed: float = 1.0,
        link: str | None = None,
        sensor_interval: float = 0.0,
        echo: bool = True,
    ) -> None:
        if dialect not in DIALECTS:
            raise ConfigError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
        self.dialect = dialect
        self.seed = seed
        self.faults = dict(faults or {})
        self.timings = (timings or ModuleTimings()).scaled(speed)
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(seed * 7919 + 1)
        self._tmpdir: str | None = None
        if link is None:
            self._tmpdir = tempfile.mkdtemp(prefix="citysense-module-")
            link = os.path.join(self._tmpdir, f"tty{dialect}")
        self.device = link
        self.sensor_interval = sensor_interval
        self._factory_echo = echo
        rng = random.Random(seed)
        tac = {"bc95": "86772603", "sim7020": "86643504", "bc66": "86681803"}[dialect]
        body = tac + "".join(str(rng.randrange(10)) for _ in range(6))
        self.imei = body + luhn_digit(body)
        self.iccid = "898604" + "".join(str(rng.randrange(10)) for _ in range(14))
        self.imsi = "46011" + "".join(str(rng.randrange(10)) for _ in range(10))
        self._radio = _Radio(
            rsrp=rng.uniform(-105, -80),
            snr=rng.uniform(2, 15),
            rsrq=rng.uniform(-12, -6),
            cell_id=rng.randrange(1, 2**28),
            pci=rng.randrange(504),
            earfcn={"bc95": 3547, "sim7020": 2506, "bc66": 2506}[dialect],
            tac=rng.randrange(1, 0xFFFF),
            band={"bc95": 8, "sim7020": 5, "bc66": 5}[dialect],
        )
        # I/O state (sim thread only)
        self._master = -1
        self._slave = -1
        self._out: deque[tuple[bytes, tuple[bytes, ...]]] = deque()
        self._inbuf = bytearray()
        self._raw_need = 0
        self._raw_done: Callable[[bytes], None] | None = None
        self._raw_acc = bytearray()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._vanished = False
        # module state (sim thread only)
        self._epoch = 0
        self._booted = False
        self._echo = echo
        self._cmee = False
        self._cereg_n = 0
        self._reg_stat = 0
        self._deregistered_until = 0.0
        self._sockets: dict[int, _Socket] = {}
        self._psm_enabled = False
        self._psm_active = 10.0
        self._asleep = False
        self._sleep_urcs = False
        self._nnmi = 0
        self._last_activity = 0.0
        self._resp_at = 0.0
        self._reboot_on: str | None = None
        self._sensor_n = 0
        # results (any thread, under the lock)
        self._lock = threading.Lock()
        self._delivered: list[bytes] = []
        self._sent: list[tuple[str, bytes]] = []
        self.stats: dict[str, int] = {
            "commands": 0,
            "garbled": 0,
            "dropped": 0,
            "delayed": 0,
            "urcs_inside": 0,
            "reboots": 0,
            "deregistrations": 0,
            "junk": 0,
            "vanished": 0,
            "datagrams_in": 0,
            "datagrams_rejected": 0,
            "lines": 0,
            "lines_dropped": 0,
        }

    # ------------------------------------------------------------------ public (any thread)

    def start(self) -> SimulatedModule:
        self._open_pty()
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.dialect}", daemon=True)
        self._thread.start()
        self._call(lambda: self._boot(power_on=True)).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                self._call(self._drain_and_close).result(timeout=5)
            self._stopping = True
            self._wake()
            self._thread.join(timeout=5)
            self._thread = None
        self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> SimulatedModule:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def delivered(self) -> list[bytes]:
        """Payloads whose carrying line left the module intact, in order."""
        with self._lock:
            return list(self._delivered)

    @property
    def sent(self) -> list[tuple[str, bytes]]:
        """Datagrams the host sent through the module: (``ip:port``, payload)."""
        with self._lock:
            return list(self._sent)

    @property
    def ready(self) -> bool:
        """Booted, registered and with a socket open: a datagram would be accepted."""
        return self._call(lambda: self._accepting()).result(timeout=5)

    def inject_datagram(self, payload: bytes, remote: str = "203.0.113.7:40001") -> bool:
        """A datagram arrives from the network; ``False`` if the module could not take it."""
        return self._call(lambda: self._datagram_in(payload, remote)).result(timeout=5)

    def inject_downlink(self, payload: bytes) -> bool:
        """BC95: an operator-platform downlink (``+NNMI``)."""
        return self._call(lambda: self._downlink_in(payload)).result(timeout=5)

    def reboot(self, cause: str = "REBOOT_CAUSE_APPLICATION_WATCHDOG") -> None:
        self._call(lambda: self._reboot(cause)).result(timeout=5)

    def reboot_on_command(self, prefix: str) -> None:
        """Reboot instead of answering the next command starting with ``prefix``."""

        def arm() -> None:
            self._reboot_on = prefix.upper()

        self._call(arm).result(timeout=5)

    def deregister(self) -> None:
        self._call(self._deregister).result(timeout=5)

    def set_faults(self, faults: Mapping[str, float]) -> None:
        """Replace the fault rates (an empty mapping switches faults off)."""

        def apply() -> None:
            self.faults = dict(faults)

        self._call(apply).result(timeout=5)

    @property
    def backlog(self) -> int:
        """Datagrams waiting in the module for the host to read them."""
        return self._call(lambda: sum(len(s.queue) for s in self._sockets.values())).result(5)

    @property
    def asleep(self) -> bool:
        """In PSM: the UART loses the first command sent to it."""
        return self._call(lambda: self._asleep).result(timeout=5)

    def vanish(self) -> None:
        self._call(self._vanish).result(timeout=5)

    # ------------------------------------------------------------------ thread plumbing

    def _call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

        if self._thread is None or not self._thread.is_alive():
            run()
            return fut
        self._calls.append(run)
        self._wake()
        return fut

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_seq, fn))

    def _open_pty(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        os.set_blocking(self._master, False)
        tmp = self.device + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(self._slave), tmp)
        os.replace(tmp, self.device)
        self._vanished = False

    def _close_pty(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.device)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        self._out.clear()

    def _unread(self) -> int:
        """Bytes written to the host that it has not read yet."""
        if self._slave < 0:
            return 0
        buf = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder)

    def _drain_and_close(self) -> None:
        """Close the pty once the host has read what was written (bounded wait).

        Bytes written to the master reach the slave's queue through the kernel's flip
        buffer a little later (later still on a loaded machine), so an empty queue counts
        only when seen three times, 50 ms apart.
        """
        deadline = time.monotonic() + 3.0
        quiet = 0
        while self._master >= 0 and quiet < 3 and time.monotonic() < deadline:
            self._flush()
            time.sleep(0.05)
            quiet = quiet + 1 if not self._out and not self._unread() else 0
        self._close_pty()

    def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._guarded(fn)
            while self._calls:
                self._calls.popleft()()
            timeout = 0.5
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            rlist = [self._wake_r]
            wlist: list[int] = []
            if self._master >= 0:
                rlist.append(self._master)
                if self._out:
                    wlist.append(self._master)
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except (OSError, ValueError):
                continue
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if self._master >= 0 and self._master in readable:
                try:
                    data = os.read(self._master, 4096)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EIO):
                        log.warning("pty read failed: %s", exc)
                    data = b""
                if data:
                    self._guarded(functools.partial(self._input, data))
            if self._master >= 0 and self._master in writable:
                self._flush()

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("simulated module: internal error")

    def _flush(self) -> None:
        while self._out and self._master >= 0:
            data, datagrams = self._out[0]
            try:
                n = os.write(self._master, data)
            except BlockingIOError:
                return
            except OSError as exc:
                log.debug("pty write failed: %s", exc)
                return
            if n < len(data):
                self._out[0] = (data[n:], datagrams)
                return
            self._out.popleft()
            if datagrams:
                with self._lock:
                    self._delivered.extend(datagrams)

    # ------------------------------------------------------------------ output

    def _p(self, name: str, args: object) -> str:
        """``+NAME:args`` (BC95) or ``+NAME: args``."""
        return f"{name}:{args}" if self.dialect == "bc95" else f"{name}: {args}"

    def _fault(self, name: str) -> bool:
        rate = self.faults.get(name, 0.0)
        return rate > 0 and self._fault_rng.random() < rate

    def _write(self, items: list[_Item]) -> None:
        """Put lines on the wire now, garbling some."""
        if self._master < 0:
            return
        chunks: list[bytes] = []
        delivered: list[bytes] = []
        garbled = False
        for text, datagram in items:
            if isinstance(text, bytes):
                # raw bytes count as delivered only behind an intact announcing line
                chunks.append(text + b"\r\n")
                if datagram is not None and not garbled:
                    delivered.append(datagram)
                continue
            garbled = False
            line = text.encode("ascii")
            self.stats["lines"] += 1
            if self._fault("garble"):
                self.stats["garbled"] += 1
                at = self._fault_rng.randrange(len(line) + 1)
                noise = bytes(
                    self._fault_rng.randrange(0x80, 0x100)
                    for _ in range(self._fault_rng.randrange(1, 4))
                )
                line = line[:at] + noise + line[at:]
                datagram = None
                garbled = True
            chunks.append(b"\r\n" + line + b"\r\n")
            if datagram is not None:
                delivered.append(datagram)
        self._out.append((b"".join(chunks), tuple(delivered)))
        self._flush()

    def _urc(self, text: str, datagram: bytes | None = None, raw: bytes | None = None) -> None:
        items: list[_Item] = [(text, datagram if raw is None else None)]
        if raw is not None:
            items.append((raw, datagram))
        self._write(items)

    def _respond(self, lines: list[_Item], final: str = "OK", *, faults: bool = True) -> None:
        """A command's response, after the response time and any delay fault."""
        items = [*lines, (final, None)] if final else list(lines)
        if faults and self._fault("drop"):
            self.stats["dropped"] += 1
            self.stats["lines_dropped"] += len(items)
            return
        if faults and self._fault("urc"):
            self.stats["urcs_inside"] += 1
            at = self._fault_rng.randrange(len(items))
            items.insert(at, (self._p("+CSCON", 1), None))
        delay = self.timings.response
        if faults and self._fault("delay"):
            self.stats["delayed"] += 1
            delay += self._fault_rng.uniform(0, self.timings.max_delay)
        now = time.monotonic()
        at_time = max(now + delay, self._resp_at)
        self._resp_at = at_time
        epoch = self._epoch

        def emit() -> None:
            if epoch == self._epoch:
                self._write(items)

        self._after(at_time - now, emit)

    # ------------------------------------------------------------------ boot and faults

    def _boot(
        self, *, power_on: bool, cause: str = "REBOOT_CAUSE_SECURITY_PMU_POWER_ON_RESET"
    ) -> None:
        self._epoch += 1
        epoch = self._epoch
        self._booted = False
        self._echo = self._factory_echo
        self._cmee = False
        self._cereg_n = 0
        self._reg_stat = 0
        self._sockets.clear()
        self._psm_enabled = False
        self._asleep = False
        self._sleep_urcs = False
        self._nnmi = 0
        self._inbuf.clear()
        self._raw_need = 0
        self._resp_at = 0.0

        def done() -> None:
            if epoch != self._epoch:
                return
            if self.dialect == "bc95":
                banner = [
                    "Boot: Unsigned",
                    "Security B.. Verified",
                    "Protocol A.. Verified",
                    "Apps A...... Verified",
                    cause,
                    "Neul",
                    "OK",
                ]
            elif self.dialect == "bc66":
                banner = ["F1: 0000 0000", "Leaving the BROM", "RDY"]
            else:
                banner = ["RDY", "+CFUN: 1", "+CPIN: READY"]
            self._booted = True
            self._last_activity = time.monotonic()
            self._write([(line, None) for line in banner])
            self._after(self.timings.register, registered)

        def registered() -> None:
            if epoch == self._epoch and time.monotonic() >= self._deregistered_until:
                self._set_reg(1)

        self._after(self.timings.boot, done)
        if self.sensor_interval > 0 and power_on:
            self._after(self.sensor_interval, self._sensor_tick)

    def _reboot(self, cause: str) -> None:
        log.debug("rebooting: %s", cause)
        self.stats["reboots"] += 1
        if self.dialect == "bc95":
            self._write([("REBOOTING", None)])
            self._out.append((b"H?", ()))
        self._boot(power_on=False, cause=cause)

    def _set_reg(self, stat: int) -> None:
        if stat == self._reg_stat:
            return
        self._reg_stat = stat
        if self._cereg_n >= 1 and self._booted:
            self._urc(self._p("+CEREG", stat))

    def _deregister(self) -> None:
        self.stats["deregistrations"] += 1
        epoch = self._epoch
        self._deregistered_until = time.monotonic() + self.timings.deregistered
        self._set_reg(2)

        def lost() -> None:
            if epoch == self._epoch:
                self._set_reg(4)

        def back() -> None:
            if epoch == self._epoch:
                self._set_reg(1)

        self._after(self.timings.deregistered / 2, lost)
        self._after(self.timings.deregistered, back)

    def _vanish(self) -> None:
        log.debug("vanishing")
        self.stats["vanished"] += 1
        self._epoch += 1
        self._drain_and_close()
        self._vanished = True
        self._booted = False
        self._sockets.clear()

        def back() -> None:
            if self._stopping:
                return
            self._open_pty()
            self._boot(power_on=False)

        self._after(self.timings.vanished, back)

    def _accepting(self) -> bool:
        return (
            self._booted
            and not self._vanished
            and not self._asleep
            and self._reg_stat in (1, 5)
            and bool(self._sockets)
        )

    def _touch(self) -> None:
        self._last_activity = time.monotonic()
        if self._psm_enabled:
            epoch = self._epoch
            stamp = self._last_activity

            def maybe_sleep() -> None:
                if epoch == self._epoch and self._last_activity == stamp and not self._asleep:
                    self._asleep = True
                    if self._sleep_urcs:
                        self._urc(self._sleep_line(True))

            self._after(self._psm_active, maybe_sleep)

    def _sleep_line(self, asleep: bool) -> str:
        if self.dialect == "bc95":
            return f"+NPSMR:{1 if asleep else 0}"
        word = "ENTER PSM" if asleep else "EXIT PSM"
        name = "+QNBIOTEVENT" if self.dialect == "bc66" else "+CPSMSTATUS"
        return f'{name}: "{word}"'

    # ------------------------------------------------------------------ data

    def _datagram_in(self, payload: bytes, remote: str) -> bool:
        # module faults are drawn per datagram too: push dialects send few commands
        if not self._accepting() or self._spontaneous() or not self._accepting():
            self.stats["datagrams_rejected"] += 1
            return False
        self.stats["datagrams_in"] += 1
        self._touch()
        ip, _, port = remote.rpartition(":")
        sock = next(iter(self._sockets.values()))
        if self.dialect == "bc95":
            sock.queue.append((ip, int(port), payload, payload))
            self._urc(self._p("+NSONMI", f"{sock.ident},{len(payload)}"))
        elif self.dialect == "sim7020":
            hexdata = payload.hex().upper()
            self._urc(self._p("+CSONMI", f"{sock.ident},{len(hexdata)},{hexdata}"), payload)
        else:
            self._urc(f'+QIURC: "recv",{sock.ident},{len(payload)}', payload, raw=payload)
        return True

    def _downlink_in(self, payload: bytes) -> bool:
        if self.dialect != "bc95" or not self._booted or self._nnmi != 1:
            return False
        self._urc(f"+NNMI:{len(payload)},{payload.hex().upper()}", payload)
        return True

    def _sensor_tick(self) -> None:
        if self._stopping:
            return
        self._sensor_n += 1
        n = self._sensor_n
        device = f"urn:imei:86772603{(self.seed * 1000 + n % 5):06d}"
        device += luhn_digit(device[-14:])
        values = {
            "pm25": round(self._rng.uniform(5, 80), 1),
            "temperature": round(self._rng.uniform(-5, 35), 1),
            "humidity": round(self._rng.uniform(20, 95), 1),
        }
        cf = CF_SENML_JSON if n % 2 else CF_SENML_CBOR
        units = {"pm25": "ug/m3", "temperature": "Cel", "humidity": "%RH"}
        payload = encode_values(device, int(time.time() * 1000), values, cf, units)
        self._datagram_in(payload, f"203.0.113.{10 + n % 5}:{40000 + n % 5}")
        self._after(self.sensor_interval, self._sensor_tick)

    # ------------------------------------------------------------------ input

    def _input(self, data: bytes) -> None:
        self._inbuf += data
        while self._inbuf:
            if self._raw_need:
                take = bytes(self._inbuf[: self._raw_need])
                del self._inbuf[: len(take)]
                self._raw_need -= len(take)
                self._raw_acc += take
                if not self._raw_need and self._raw_done is not None:
                    done, self._raw_done = self._raw_done, None
                    done(bytes(self._raw_acc))
                continue
            cut = -1
            for i, b in enumerate(self._inbuf):
                if b in (0x0D, 0x0A):
                    cut = i
                    break
            if cut < 0:
                if len(self._inbuf) > 4096:
                    self._inbuf.clear()
                return
            raw = bytes(self._inbuf[:cut])
            del self._inbuf[: cut + 1]
            line = raw.decode("ascii", "replace").strip()
            if line:
                self._command(line)

    def _command(self, line: str) -> None:
        self.stats["commands"] += 1
        if self._vanished:
            return
        if self._asleep:
            # the UART was asleep: this command is lost and wakes the module
            self._asleep = False
            if self._sleep_urcs:
                self._urc(self._sleep_line(False))
            self._touch()
            return
        self._touch()
        if self._echo:
            self._out.append((line.encode("ascii", "replace") + b"\r", ()))
            self._flush()
        if not self._booted:
            if self.dialect == "bc95":
                self._respond([], "ERROR", faults=False)
            return
        if not line.upper().startswith("AT"):
            self._respond([], "ERROR", faults=False)
            return
        upper = line.upper()
        if self._reboot_on is not None and upper.startswith(self._reboot_on):
            self._reboot_on = None
            self._reboot("REBOOT_CAUSE_APPLICATION_WATCHDOG")
            return
        if self._spontaneous():
            return
        self._handle(line)

    def _spontaneous(self) -> bool:
        """Draw the module-level faults; ``True`` if the module is now gone or rebooting."""
        if self._fault("reboot"):
            self._reboot("REBOOT_CAUSE_APPLICATION_WATCHDOG")
            return True
        if self._fault("vanish"):
            self._vanish()
            return True
        if self._fault("junk"):
            self.stats["junk"] += 1
            junk = bytes(self._fault_rng.randrange(0x21, 0x7F) for _ in range(4096))
            self._out.append((b"\r\n" + junk + b"\r\n", ()))
        if self._fault("deregister"):
            self._deregister()
        return False

    # ------------------------------------------------------------------ commands

    def _handle(self, line: str) -> None:
        body = line[2:]
        name, op, args = body, "", ""
        for i, ch in enumerate(body):
            if ch in "=?":
                name, op, args = body[:i].upper(), body[i], body[i + 1 :]
                if op == "=" and args == "?":
                    op, args = "=?", ""
                break
        else:
            name = body.upper()
        handler = self._HANDLERS.get(name)
        if handler is None or (self.dialect not in handler[1]):
            self._error(4)
            return
        handler[0](self, op, args)

    def _error(self, code: int) -> None:
        self._respond([], self._p("+CME ERROR", code) if self._cmee else "ERROR")

    def _ok(self, *lines: str) -> None:
        self._respond([(x, None) for x in lines])

    # generic
    def _at(self, op: str, args: str) -> None:
        self._ok()

    def _ate0(self, op: str, args: str) -> None:
        self._echo = False
        self._ok()

    def _ate1(self, op: str, args: str) -> None:
        self._echo = True
        self._ok()

    def _ati(self, op: str, args: str) -> None:
        if self.dialect == "bc95":
            self._ok("Quectel", "BC95-G", "Revision:BC95GJBR01A04")
        else:
            self._ok("Quectel_Ltd", "Quectel_BC66", "Revision: BC66NBR01A01")

    def _gsv(self, op: str, args: str) -> None:
        self._ok("SIMCOM_Ltd", "SIM7020G", "Revision:1752B02SIM7020G")

    def _cgmr(self, op: str, args: str) -> None:
        if self.dialect == "bc95":
            self._ok(
                "SSB,V150R100C10B200SP1",
                "SECURITY_A,V150R100C20B300SP5",
                "PROTOCOL_A,V150R100C20B300SP5",
                "APPLICATION_A,V150R100C20B300SP5",
                "SECURITY_B,V150R100C20B300SP5",
                "RADIO,Hi2115_RF1",
            )
        elif self.dialect == "bc66":
            self._ok("Revision: BC66NBR01A01")
        else:
            self._ok("Revision:1752B02SIM7020G")

    def _qgmr(self, op: str, args: str) -> None:
        self._ok("BC66NBR01A01_01.002.01.002")

    def _cmee_cmd(self, op: str, args: str) -> None:
        self._cmee = args.strip() == "1"
        self._ok()

    def _cgsn(self, op: str, args: str) -> None:
        self._ok(self._p("+CGSN", self.imei))

    def _cimi(self, op: str, args: str) -> None:
        self._ok(self.imsi)

    def _nccid(self, op: str, args: str) -> None:
        self._ok(self._p("+NCCID", self.iccid))

    def _qccid(self, op: str, args: str) -> None:
        self._ok(self._p("+QCCID", self.iccid))

    def _ccid(self, op: str, args: str) -> None:
        self._ok(self.iccid)

    def _cfun(self, op: str, args: str) -> None:
        self._ok(self._p("+CFUN", 1)) if op == "?" else self._ok()

    def _cereg(self, op: str, args: str) -> None:
        if op == "=":
            try:
                self._cereg_n = int(args)
            except ValueError:
                self._error(50)
                return
            self._ok()
        elif op == "?":
            if self._cereg_n >= 2 and self._reg_stat in (1, 5):
                rest = f',"{self._radio.tac:04X}","{self._radio.cell_id:08X}",9'
            else:
                rest = ""
            self._ok(self._p("+CEREG", f"{self._cereg_n},{self._reg_stat}{rest}"))
        else:
            self._error(50)

    def _cgatt(self, op: str, args: str) -> None:
        if op == "?":
            self._ok(self._p("+CGATT", 1 if self._reg_stat in (1, 5) else 0))
        else:
            self._ok()

    def _cgpaddr(self, op: str, args: str) -> None:
        if self._reg_stat not in (1, 5):
            self._ok()
        elif self.dialect == "bc95":
            self._ok("+CGPADDR:0,10.169.241.248")
        elif self.dialect == "bc66":
            self._ok("+CGPADDR: 1,10.169.241.248")
        else:
            self._ok('+CGPADDR: 1,"10.169.241.248"')

    def _csq(self, op: str, args: str) -> None:
        rssi = self._radio.rsrp + 20
        n = max(0, min(31, round((rssi + 113) / 2)))
        self._ok(self._p("+CSQ", f"{n},{99 if self.dialect == 'bc95' else 0}"))

    def _cscon(self, op: str, args: str) -> None:
        self._ok(self._p("+CSCON", "0,1")) if op == "?" else self._ok()

    def _cpsms(self, op: str, args: str) -> None:
        if op == "?":
            self._ok(self._p("+CPSMS", 1 if self._psm_enabled else 0))
            return
        parts = [p.strip().strip('"') for p in args.split(",")]
        self._psm_enabled = parts[0] == "1"
        if self._psm_enabled and len(parts) >= 5 and len(parts[4]) == 8:
            unit = {"000": 2, "001": 60, "010": 360}.get(parts[4][:3])
            if unit is not None:
                # the module's active time, shortened by the simulation speed
                self._psm_active = unit * int(parts[4][3:], 2) * self.timings.boot / 3.0
        self._ok()
        self._touch()

    def _cedrxs(self, op: str, args: str) -> None:
        self._ok()

    def _sleep_urc_enable(self, op: str, args: str) -> None:
        self._sleep_urcs = args.strip().startswith("1")
        self._ok()

    def _nnmi_cmd(self, op: str, args: str) -> None:
        with contextlib.suppress(ValueError):
            self._nnmi = int(args)
        self._ok()

    def _nmgs(self, op: str, args: str) -> None:
        length, _, hexdata = args.partition(",")
        try:
            payload = bytes.fromhex(hexdata)
        except ValueError:
            self._error(50)
            return
        if len(payload) != int(length or -1):
            self._error(50)
            return
        with self._lock:
            self._sent.append(("cdp", payload))
        self._ok()

    def _nrb(self, op: str, args: str) -> None:
        self._reboot("REBOOT_CAUSE_APPLICATION_AT")

    def _nuestats(self, op: str, args: str) -> None:
        r = self._radio
        r.drift(self._rng)
        fields = [
            ("Signal power", round(r.rsrp * 10)),
            ("Total power", round((r.rsrp + 20) * 10)),
            ("TX power", 230),
            ("TX time", 2330),
            ("RX time", 73205),
            ("Cell ID", r.cell_id),
            ("ECL", r.ecl),
            ("SNR", round(r.snr * 10)),
            ("EARFCN", r.earfcn),
            ("PCI", r.pci),
            ("RSRQ", round(r.rsrq * 10)),
            ("OPERATOR MODE", 4),
            ("CURRENT BAND", r.band),
        ]
        kind = args.strip().upper()
        if kind == "CELL":
            self._ok(
                f"NUESTATS:CELL,{r.earfcn},{r.pci},1,{round(r.rsrp * 10)},"
                f"{round(r.rsrq * 10)},{round((r.rsrp + 20) * 10)},{round(r.snr * 10)}",
                f"NUESTATS:CELL,{r.earfcn},{(r.pci + 7) % 504},0,{round(r.rsrp * 10) - 80},"
                f"{round(r.rsrq * 10) - 20},{round((r.rsrp + 12) * 10)},{round(r.snr * 10) - 40}",
            )
        elif kind == "RADIO":
            self._ok(*(f"NUESTATS:RADIO,{k}:{v}" for k, v in fields))
        elif kind in ("", "ALL"):
            self._ok(*(f"{k}:{v}" for k, v in fields))
        else:
            self._error(50)

    def _qeng(self, op: str, args: str) -> None:
        r = self._radio
        r.drift(self._rng)
        self._ok(
            f'+QENG: 0,{r.earfcn},2,{r.pci},"{r.cell_id:X}",{round(r.rsrp)},{round(r.rsrq)},'
            f'{round(r.rsrp + 20)},{round(r.snr)},{r.band},"{r.tac:X}",{r.ecl},140,3'
        )

    def _ceng(self, op: str, args: str) -> None:
        r = self._radio
        r.drift(self._rng)
        self._ok(
            f'+CENG: {r.earfcn},2,{r.pci},"{r.cell_id:08X}",{round(r.rsrp)},{round(r.rsrq)},'
            f'{round(r.rsrp + 20)},{round(r.snr)},{r.band},"{r.tac:04X}",{r.ecl},23'
        )

    # BC95 sockets
    def _nsocr(self, op: str, args: str) -> None:
        parts = args.split(",")
        if len(parts) < 3 or parts[0] != "DGRAM" or parts[1] != "17":
            self._error(50)
            return
        free = [i for i in range(1, 7) if i not in self._sockets]
        port = int(parts[2] or 0)
        if not free or (port and any(s.local_port == port for s in self._sockets.values())):
            self._respond([], "ERROR")
            return
        sock = _Socket(free[0], port)
        self._sockets[sock.ident] = sock
        self._ok(str(sock.ident))

    def _nsost(self, op: str, args: str) -> None:
        parts = args.split(",")
        try:
            ident, ip, port, length = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            payload = bytes.fromhex(parts[4])
        except (ValueError, IndexError):
            self._error(50)
            return
        if ident not in self._sockets or len(payload) != length:
            self._error(530 if ident not in self._sockets else 50)
            return
        if self._reg_stat not in (1, 5):
            self._error(30)
            return
        seq = parts[5] if len(parts) > 5 else None
        with self._lock:
            self._sent.append((f"{ip}:{port}", payload))
        self._ok(f"{ident},{length}")
        if seq is not None:
            epoch = self._epoch
            self._after(
                self.timings.send_ack,
                lambda: self._urc(f"+NSOSTR:{ident},{seq},1") if epoch == self._epoch else None,
            )

    def _nsorf(self, op: str, args: str) -> None:
        parts = args.split(",")
        try:
            ident, limit = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            self._error(50)
            return
        sock = self._sockets.get(ident)
        if sock is None:
            self._error(530)
            return
        if not sock.queue:
            self._ok()
            return
        ip, port, unread, whole = sock.queue.popleft()
        part, rest = unread[:limit], unread[limit:]
        if rest:
            sock.queue.appendleft((ip, port, rest, whole))
        remaining = sum(len(q[2]) for q in sock.queue)
        line = f"{ident},{ip},{port},{len(part)},{part.hex().upper()},{remaining}"
        # a partly read datagram counts once its last part is out
        self._respond([(line, None if rest else whole)])

    def _nsocl(self, op: str, args: str) -> None:
        try:
            ident = int(args)
        except ValueError:
            self._error(50)
            return
        if self._sockets.pop(ident, None) is None:
            self._error(530)
            return
        self._ok()

    # SIM7020 sockets
    def _csoc(self, op: str, args: str) -> None:
        if args.replace(" ", "") != "1,2,1":
            self._error(50)
            return
        free = [i for i in range(5) if i not in self._sockets]
        if not free:
            self._error(3)
            return
        self._sockets[free[0]] = _Socket(free[0], 0)
        self._ok(f"+CSOC: {free[0]}")

    def _csob(self, op: str, args: str) -> None:
        parts = args.split(",")
        try:
            sock = self._sockets[int(parts[0])]
            sock.local_port = int(parts[1])
        except (ValueError, IndexError, KeyError):
            self._error(50)
            return
        self._ok()

    def _csocon(self, op: str, args: str) -> None:
        parts = [p.strip().strip('"') for p in args.split(",")]
        try:
            sock = self._sockets[int(parts[0])]
            sock.peer = (parts[2], int(parts[1]))
        except (ValueError, IndexError, KeyError):
            self._error(50)
            return
        self._ok()

    def _csosend(self, op: str, args: str) -> None:
        parts = args.split(",", 2)
        try:
            sock = self._sockets[int(parts[0])]
            length = int(parts[1])
            data = parts[2].strip()
        except (ValueError, IndexError, KeyError):
            self._error(50)
            return
        if sock.peer is None:
            self._error(3)
            return
        if data.startswith('"') and data.endswith('"'):
            data = data[1:-1]
        if length == 0:
            payload = data.encode()
        else:
            try:
                payload = bytes.fromhex(data)
            except ValueError:
                self._error(50)
                return
            # drivers disagree on the unit: hex characters or bytes; accept both
            if length not in (len(data), len(payload)):
                self._error(50)
                return
        if self._reg_stat not in (1, 5):
            self._error(30)
            return
        with self._lock:
            self._sent.append((f"{sock.peer[0]}:{sock.peer[1]}", payload))
        self._ok()

    def _csocl(self, op: str, args: str) -> None:
        try:
            del self._sockets[int(args)]
        except (ValueError, KeyError):
            self._error(50)
            return
        self._ok()

    # BC66 sockets
    def _qicfg(self, op: str, args: str) -> None:
        self._ok()

    def _qiopen(self, op: str, args: str) -> None:
        parts = [p.strip().strip('"') for p in args.split(",")]
        try:
            ident = int(parts[1])
            service = parts[2]
            local = int(parts[5]) if len(parts) > 5 else 0
        except (ValueError, IndexError):
            self._error(552)
            return
        if service not in ("UDP", "UDP SERVICE") or ident in self._sockets:
            self._error(552 if ident not in self._sockets else 574)
            return
        sock = _Socket(ident, local)
        if service == "UDP":
            sock.peer = (parts[3], int(parts[4]))
        self._ok()
        epoch = self._epoch

        def opened() -> None:
            if epoch == self._epoch:
                self._sockets[ident] = sock
                self._urc(f"+QIOPEN: {ident},0")

        self._after(self.timings.qiopen, opened)

    def _qisend(self, op: str, args: str) -> None:
        parts = [p.strip() for p in args.split(",")]
        try:
            sock = self._sockets[int(parts[0])]
            length = int(parts[1])
        except (ValueError, IndexError, KeyError):
            self._error(552)
            return
        peer = sock.peer
        if len(parts) >= 5:
            with contextlib.suppress(ValueError):
                peer = (parts[3].strip('"'), int(parts[4]))
        if peer is None:
            self._error(552)
            return
        if len(parts) == 2 or (len(parts) == 4 and parts[2].startswith('"')):
            # data mode: prompt, then exactly <length> raw bytes
            if len(parts) == 4:
                peer = (parts[2].strip('"'), int(parts[3]))
            self._raw_acc = bytearray()
            self._raw_need = length
            target = peer
            self._raw_done = lambda data: self._qisend_done(data, target)
            self._out.append((b"\r\n> ", ()))
            self._flush()
            return
        try:
            payload = bytes.fromhex(parts[2])
        except ValueError:
            self._error(552)
            return
        if len(payload) != length:
            self._error(552)
            return
        self._qisend_done(payload, peer)

    def _qisend_done(self, payload: bytes, peer: tuple[str, int]) -> None:
        if self._reg_stat not in (1, 5):
            self._respond([], "OK")
            epoch = self._epoch
            self._after(
                self.timings.send_ack,
                lambda: self._write([("SEND FAIL", None)]) if epoch == self._epoch else None,
            )
            return
        with self._lock:
            self._sent.append((f"{peer[0]}:{peer[1]}", payload))
        self._respond([], "OK")
        epoch = self._epoch
        self._after(
            self.timings.send_ack,
            lambda: self._write([("SEND OK", None)]) if epoch == self._epoch else None,
        )

    def _qiclose(self, op: str, args: str) -> None:
        try:
            del self._sockets[int(args)]
        except (ValueError, KeyError):
            self._error(552)
            return
        self._ok()

    _B = ("bc95",)
    _S = ("sim7020",)
    _Q = ("bc66",)
    _ALL = DIALECTS
    _HANDLERS: ClassVar[dict[str, tuple[Callable[[Any, str, str], None], tuple[str, ...]]]] = {
        "": (_at, _ALL),
        "E0": (_ate0, _ALL),
        "E1": (_ate1, _ALL),
        "I": (_ati, ("bc95", "bc66")),
        "+GSV": (_gsv, _S),
        "+CGMR": (_cgmr, _ALL),
        "+QGMR": (_qgmr, _Q),
        "+CMEE": (_cmee_cmd, _ALL),
        "+CGSN": (_cgsn, _ALL),
        "+CIMI": (_cimi, _ALL),
        "+NCCID": (_nccid, _B),
        "+QCCID": (_qccid, _Q),
        "+CCID": (_ccid, _S),
        "+CFUN": (_cfun, _ALL),
        "+CEREG": (_cereg, _ALL),
        "+CGATT": (_cgatt, _ALL),
        "+CGPADDR": (_cgpaddr, _ALL),
        "+CSQ": (_csq, _ALL),
        "+CSCON": (_cscon, _ALL),
        "+CPSMS": (_cpsms, _ALL),
        "+CEDRXS": (_cedrxs, _ALL),
        "+NPTWEDRXS": (_cedrxs, _B),
        "+NPSMR": (_sleep_urc_enable, _B),
        "+QNBIOTEVENT": (_sleep_urc_enable, _Q),
        "+CPSMSTATUS": (_sleep_urc_enable, _S),
        "+NNMI": (_nnmi_cmd, _B),
        "+NMGS": (_nmgs, _B),
        "+NRB": (_nrb, _B),
        "+NUESTATS": (_nuestats, _B),
        "+QENG": (_qeng, _Q),
        "+CENG": (_ceng, _S),
        "+NSOCR": (_nsocr, _B),
        "+NSOST": (_nsost, _B),
        "+NSORF": (_nsorf, _B),
        "+NSOCL": (_nsocl, _B),
        "+CSOC": (_csoc, _S),
        "+CSOB": (_csob, _S),
        "+CSOCON": (_csocon, _S),
        "+CSOSEND": (_csosend, _S),
        "+CSOCL": (_csocl, _S),
        "+QICFG": (_qicfg, _Q),
        "+QIOPEN": (_qiopen, _Q),
        "+QISEND": (_qisend, _Q),
        "+QICLOSE": (_qiclose, _Q),
    }


def run_module_command(settings: Settings) -> int:
    """``citysense simulate module``: print the device path, run until SIGINT/SIGTERM."""
    faults = parse_faults(settings.faults)
    module = SimulatedModule(
        settings.dialect, seed=settings.seed, faults=faults, sensor_interval=10.0
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with module:
            print(module.device, flush=True)
            log.info(
                "simulated %s on %s (IMEI %s), faults %s",
                settings.dialect,
                module.device,
                module.imei,
                faults or "none",
            )
            stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
