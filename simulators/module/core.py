"""The sans-I/O core of a simulated module: AT input in, wire bytes out, timers by the clock.

:class:`ModuleCore` holds the module's state (boot, registration, sockets, PSM, faults) and
answers commands through its dialect's handler table (:mod:`simulators.module.dialects`). It
never touches a file descriptor: bytes come in through :meth:`ModuleCore.input`, what the
module writes is queued in :attr:`ModuleCore.out` (with the datagrams each chunk delivers),
and delayed work runs from :meth:`ModuleCore.run_due`. A :class:`Port` (the pty runner)
moves the bytes and is told when the port vanishes and comes back.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, encode_values
from simulators.module.model import Item, ModuleTimings, Radio, Socket, luhn_digit

if TYPE_CHECKING:
    from simulators.module.dialects import DialectSpec

log = logging.getLogger("simulators.module")

#: the sensors a module's scripted schedule sends for (``sensor_devices``)
SENSOR_COUNT = 5
SENSOR_UNITS = {"pm25": "ug/m3", "temperature": "Cel", "humidity": "%RH"}
#: the counters in :attr:`ModuleCore.stats`
STATS = (
    "commands",
    "garbled",
    "dropped",
    "delayed",
    "urcs_inside",
    "reboots",
    "deregistrations",
    "junk",
    "vanished",
    "busy",
    "datagrams_in",
    "datagrams_rejected",
    "lines",
    "lines_dropped",
)


class Port(Protocol):
    """What the core needs from whatever carries its bytes."""

    def is_open(self) -> bool: ...

    def flush(self) -> None: ...

    def drain_and_close(self) -> None: ...

    def reopen(self) -> None: ...


def sensor_devices(seed: int) -> list[str]:
    """The ``urn:imei:`` ids of the scripted sensors of a module with this seed."""
    out = []
    for n in range(SENSOR_COUNT):
        body = f"86772603{(seed * 1000 + n):06d}"
        out.append(f"urn:imei:{body}{luhn_digit(body)}")
    return out


def identity(spec: DialectSpec, seed: int) -> tuple[str, str, str, Radio]:
    """IMEI (Luhn-valid), ICCID, IMSI and starting radio figures, drawn from the seed."""
    rng = random.Random(seed)
    body = spec.tac + "".join(str(rng.randrange(10)) for _ in range(6))
    iccid = "898604" + "".join(str(rng.randrange(10)) for _ in range(14))
    imsi = "46011" + "".join(str(rng.randrange(10)) for _ in range(10))
    radio = Radio(
        rsrp=rng.uniform(-105, -80),
        snr=rng.uniform(2, 15),
        rsrq=rng.uniform(-12, -6),
        cell_id=rng.randrange(1, 2**28),
        pci=rng.randrange(504),
        earfcn=spec.earfcn,
        tac=rng.randrange(1, 0xFFFF),
        band=spec.band,
    )
    return body + luhn_digit(body), iccid, imsi, radio


class ModuleCore:
    """One module's state and behaviour (see the module docstring)."""

    def __init__(
        self,
        spec: DialectSpec,
        port: Port,
        *,
        seed: int,
        faults: Mapping[str, float],
        timings: ModuleTimings,
        sensor_interval: float,
        echo: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.dialect = spec.name
        self.port = port
        self.seed = seed
        self.faults = dict(faults)
        self.timings = timings
        self.sensor_interval = sensor_interval
        self.clock = clock
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(seed * 7919 + 1)
        #: ``busy`` draws from a generator of its own: the other faults of a seed stay the same
        self.busy_rng = random.Random(seed * 7919 + 2)
        self.factory_echo = echo
        self.imei, self.iccid, self.imsi, self.radio = identity(spec, seed)
        self.out: deque[tuple[bytes, tuple[bytes, ...]]] = deque()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self._inbuf = bytearray()
        self.raw_need = 0
        self.raw_done: Callable[[bytes], None] | None = None
        self.raw_acc = bytearray()
        self.stopping = False
        self.vanished = False
        self.vanish_mid_read = False  #: the next datagram's answer is cut off by a vanish
        self.epoch = 0
        self.booted = False
        self.echo = echo
        self.cmee = False
        self.cereg_n = 0
        self.reg_stat = 0
        self.deregistered_until = 0.0
        self.sockets: dict[int, Socket] = {}
        self.psm_enabled = False
        self.psm_active = 10.0
        self.asleep = False
        self.sleep_urcs = False
        self.nnmi = 0
        self.sent_any = False
        self.last_activity = 0.0
        self._resp_at = 0.0
        self.reboot_on: str | None = None
        self._sensor_n = 0
        self.lock = threading.Lock()
        self.sent: list[tuple[str, bytes]] = []
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)

    # ------------------------------------------------------------------ timers

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self.timers, (self.clock() + delay, self._timer_seq, fn))

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """``fn`` after ``delay`` unless the module rebooted meanwhile."""
        epoch = self.epoch

        def run() -> None:
            if epoch == self.epoch:
                fn()

        self.after(delay, run)

    def run_due(self, now: float) -> None:
        while self.timers and self.timers[0][0] <= now:
            _, _, fn = heapq.heappop(self.timers)
            try:
                fn()
            except Exception:
                log.exception("simulated module: internal error")

    def next_deadline(self) -> float | None:
        return self.timers[0][0] if self.timers else None

    # ------------------------------------------------------------------ output

    def p(self, name: str, args: object) -> str:
        """``+NAME:args`` (no space on the BC95) or ``+NAME: args``."""
        return f"{name}: {args}" if self.spec.colon_space else f"{name}:{args}"

    def fault(self, name: str) -> bool:
        rate = self.faults.get(name, 0.0)
        rng = self.busy_rng if name == "busy" else self.fault_rng
        return rate > 0 and rng.random() < rate

    def emit_raw(self, data: bytes) -> None:
        self.out.append((data, ()))
        self.port.flush()

    def write(self, items: list[Item]) -> None:
        """Put lines on the wire now, garbling some."""
        if not self.port.is_open():
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
            line = text.encode("ascii")
            self.stats["lines"] += 1
            garbled = self.fault("garble")
            if garbled:
                line = self._garble(line)
                datagram = None
            chunks.append(b"\r\n" + line + b"\r\n")
            if datagram is not None:
                delivered.append(datagram)
        self.out.append((b"".join(chunks), tuple(delivered)))
        self.port.flush()

    def _garble(self, line: bytes) -> bytes:
        self.stats["garbled"] += 1
        at = self.fault_rng.randrange(len(line) + 1)
        count = self.fault_rng.randrange(1, 4)
        noise = bytes(self.fault_rng.randrange(0x80, 0x100) for _ in range(count))
        return line[:at] + noise + line[at:]

    def urc(self, text: str, datagram: bytes | None = None, raw: bytes | None = None) -> None:
        items: list[Item] = [(text, datagram if raw is None else None)]
        if raw is not None:
            items.append((raw, datagram))
        self.write(items)

    def respond(self, lines: list[Item], final: str = "OK", *, faults: bool = True) -> None:
        """A command's response, after the response time and any delay fault."""
        items = [*lines, (final, None)] if final else list(lines)
        if self.vanish_mid_read and any(datagram is not None for _, datagram in lines):
            self.vanish_mid_read = False

            def cut() -> None:
                self.write(list(lines))  # the data line, then the port goes
                self.vanish()

            self.later(self.timings.response, cut)
            return
        if faults and self.fault("drop"):
            self.stats["dropped"] += 1
            self.stats["lines_dropped"] += len(items)
            return
        if faults and self.fault("urc"):
            self.stats["urcs_inside"] += 1
            items.insert(self.fault_rng.randrange(len(items)), (self.p("+CSCON", 1), None))
        delay = self.timings.response
        if faults and self.fault("delay"):
            self.stats["delayed"] += 1
            delay += self.fault_rng.uniform(0, self.timings.max_delay)
        now = self.clock()
        at_time = max(now + delay, self._resp_at)
        self._resp_at = at_time
        self.later(at_time - now, lambda: self.write(items))

    def ok(self, *lines: str) -> None:
        self.respond([(x, None) for x in lines])

    def error(self, code: int) -> None:
        self.respond([], self.p("+CME ERROR", code) if self.cmee else "ERROR")

    def record_sent(self, peer: str, payload: bytes) -> None:
        self.sent_any = True
        with self.lock:
            self.sent.append((peer, payload))

    # ------------------------------------------------------------------ boot and faults

    def boot(
        self, *, power_on: bool, cause: str = "REBOOT_CAUSE_SECURITY_PMU_POWER_ON_RESET"
    ) -> None:
        self.epoch += 1
        self.booted = False
        self.echo = self.factory_echo
        self.cmee = False
        self.cereg_n = 0
        self.reg_stat = 0
        self.sockets.clear()
        self.psm_enabled = self.asleep = self.sleep_urcs = self.sent_any = False
        self.nnmi = 0
        self._inbuf.clear()
        self.raw_need = 0
        self._resp_at = 0.0

        def done() -> None:
            self.booted = True
            self.last_activity = self.clock()
            self.write([(line, None) for line in self.spec.banner(cause)])
            self.later(self.timings.register, registered)

        def registered() -> None:
            if self.clock() >= self.deregistered_until:
                self.set_reg(1)

        self.later(self.timings.boot, done)
        if self.sensor_interval > 0 and power_on:
            self.after(self.sensor_interval, self.sensor_tick)

    def reboot(self, cause: str) -> None:
        log.debug("rebooting: %s", cause)
        self.stats["reboots"] += 1
        if self.spec.reboot_lines:
            self.write([(line, None) for line in self.spec.reboot_lines])
            self.out.append((b"H?", ()))
        self.boot(power_on=False, cause=cause)

    def set_reg(self, stat: int) -> None:
        if stat == self.reg_stat:
            return
        self.reg_stat = stat
        if self.cereg_n >= 1 and self.booted:
            self.urc(self.p("+CEREG", stat))

    @property
    def registered(self) -> bool:
        return self.reg_stat in (1, 5)

    def deregister(self) -> None:
        self.stats["deregistrations"] += 1
        self.deregistered_until = self.clock() + self.timings.deregistered
        self.set_reg(2)
        self.later(self.timings.deregistered / 2, lambda: self.set_reg(4))
        self.later(self.timings.deregistered, lambda: self.set_reg(1))

    def vanish(self) -> None:
        log.debug("vanishing")
        self.stats["vanished"] += 1
        self.epoch += 1
        self.port.drain_and_close()
        self.vanished = True
        self.booted = False
        self.sockets.clear()

        def back() -> None:
            if self.stopping:
                return
            self.port.reopen()
            self.vanished = False
            self.boot(power_on=False)

        self.after(self.timings.vanished, back)

    def accepting(self) -> bool:
        return (
            self.booted
            and not self.vanished
            and not self.asleep
            and self.registered
            and bool(self.sockets)
        )

    def touch(self) -> None:
        self.last_activity = stamp = self.clock()
        if not self.psm_enabled:
            return

        def maybe_sleep() -> None:
            if self.last_activity == stamp and not self.asleep:
                self.asleep = True
                if self.sleep_urcs:
                    self.urc(self.spec.sleep_line(True))

        self.later(self.psm_active, maybe_sleep)

    def spontaneous(self) -> bool:
        """Draw the module-level faults; ``True`` if the module is now gone or rebooting."""
        if self.fault("reboot"):
            self.reboot("REBOOT_CAUSE_APPLICATION_WATCHDOG")
            return True
        if self.fault("vanish"):
            self.vanish()
            return True
        if self.fault("junk"):
            self.stats["junk"] += 1
            junk = bytes(self.fault_rng.randrange(0x21, 0x7F) for _ in range(4096))
            self.out.append((b"\r\n" + junk + b"\r\n", ()))
        if self.fault("deregister"):
            self.deregister()
        return False

    # ------------------------------------------------------------------ data

    def datagram_in(self, payload: bytes, remote: str) -> bool:
        # module faults are drawn per datagram too: push dialects send few commands
        if not self.accepting() or self.spontaneous() or not self.accepting():
            self.stats["datagrams_rejected"] += 1
            return False
        self.stats["datagrams_in"] += 1
        self.touch()
        sock = next(iter(self.sockets.values()))
        self.spec.announce(self, sock, payload, remote)
        return True

    def downlink_in(self, payload: bytes) -> bool:
        if self.spec.name != "bc95" or not self.booted or self.nnmi != 1:
            return False
        self.urc(f"+NNMI:{len(payload)},{payload.hex().upper()}", payload)
        return True

    def sensor_tick(self) -> None:
        if self.stopping:
            return
        self._sensor_n += 1
        n = self._sensor_n
        device = sensor_devices(self.seed)[n % SENSOR_COUNT]
        values = {
            "pm25": round(self.rng.uniform(5, 80), 1),
            "temperature": round(self.rng.uniform(-5, 35), 1),
            "humidity": round(self.rng.uniform(20, 95), 1),
        }
        cf = CF_SENML_JSON if n % 2 else CF_SENML_CBOR
        payload = encode_values(device, int(time.time() * 1000), values, cf, SENSOR_UNITS)
        self.datagram_in(payload, f"203.0.113.{10 + n % 5}:{40000 + n % 5}")
        self.after(self.sensor_interval, self.sensor_tick)

    # ------------------------------------------------------------------ input

    def input(self, data: bytes) -> None:
        self._inbuf += data
        while self._inbuf:
            if self.raw_need:
                take = bytes(self._inbuf[: self.raw_need])
                del self._inbuf[: len(take)]
                self.raw_need -= len(take)
                self.raw_acc += take
                if not self.raw_need and self.raw_done is not None:
                    done, self.raw_done = self.raw_done, None
                    done(bytes(self.raw_acc))
                continue
            cut = next((i for i, b in enumerate(self._inbuf) if b in (0x0D, 0x0A)), -1)
            if cut < 0:
                if len(self._inbuf) > 4096:
                    self._inbuf.clear()
                return
            raw = bytes(self._inbuf[:cut])
            del self._inbuf[: cut + 1]
            line = raw.decode("ascii", "replace").strip()
            if line:
                self.command(line)

    def command(self, line: str) -> None:
        self.stats["commands"] += 1
        if self.vanished:
            return
        if self.asleep:
            # the UART was asleep: this command is lost and wakes the module
            self.asleep = False
            if self.sleep_urcs:
                self.urc(self.spec.sleep_line(False))
            self.touch()
            return
        self.touch()
        if self.echo:
            self.emit_raw(line.encode("ascii", "replace") + b"\r")
        if not self.booted:
            if self.spec.error_while_booting:
                self.respond([], "ERROR", faults=False)
            return
        upper = line.upper()
        if not upper.startswith("AT"):
            self.respond([], "ERROR", faults=False)
            return
        if self.reboot_on is not None and upper.startswith(self.reboot_on):
            self.reboot_on = None
            self.reboot("REBOOT_CAUSE_APPLICATION_WATCHDOG")
            return
        if self.spontaneous():
            return
        self.dispatch(line)

    def dispatch(self, line: str) -> None:
        body = line[2:]
        name, op, args = body.upper(), "", ""
        for i, ch in enumerate(body):
            if ch in "=?":
                name, op, args = body[:i].upper(), body[i], body[i + 1 :]
                if op == "=" and args == "?":
                    op, args = "=?", ""
                break
        handler = self.spec.handlers.get(name)
        if handler is None:
            self.error(4)
            return
        handler(self, op, args)
