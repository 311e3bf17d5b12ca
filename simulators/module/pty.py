"""The pty runner: a :class:`~simulators.module.core.ModuleCore` on a pseudo-terminal.

:class:`SimulatedModule` opens a pty (``os.openpty``), keeps a stable symlink
(:attr:`SimulatedModule.device`) pointing at its slave so that a driver can reopen the "same
port" after the port vanished, and runs the core in a thread of its own (a ``select`` loop with
the core's timers), so a driver in the test's event loop talks to it exactly as to hardware.
A datagram counts as *delivered* once the line carrying its payload has left the module
intact; :attr:`SimulatedModule.delivered` lists them in order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import select
import shutil
import sys
import tempfile
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Mapping
from typing import TypeVar

from citysense.errors import ConfigError
from simulators.module.core import ModuleCore
from simulators.module.dialects import spec_of
from simulators.module.model import ModuleTimings

log = logging.getLogger("simulators.module")

T = TypeVar("T")

DIALECTS = ("bc95", "sim7020", "bc66")


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
        self._tmpdir: str | None = None
        if link is None:
            self._tmpdir = tempfile.mkdtemp(prefix="citysense-module-")
            link = os.path.join(self._tmpdir, f"tty{dialect}")
        self.device = link
        self.core = ModuleCore(
            spec_of(dialect),
            self,
            seed=seed,
            faults=faults or {},
            timings=(timings or ModuleTimings()).scaled(speed),
            sensor_interval=sensor_interval,
            echo=echo,
        )
        self.imei, self.iccid, self.imsi = self.core.imei, self.core.iccid, self.core.imsi
        self.stats = self.core.stats
        self._master = -1
        self._slave = -1
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._delivered: list[bytes] = []

    @property
    def faults(self) -> dict[str, float]:
        return self.core.faults

    @property
    def timings(self) -> ModuleTimings:
        return self.core.timings

    @property
    def pts(self) -> str:
        """The pty's own path (``/dev/pts/N``), ``""`` while the port is gone."""
        return os.ttyname(self._slave) if self._slave >= 0 else ""

    # ------------------------------------------------------------------ public (any thread)

    def start(self) -> SimulatedModule:
        self.reopen()
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.dialect}", daemon=True)
        self._thread.start()
        self._call(lambda: self.core.boot(power_on=True)).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                self._call(self.drain_and_close).result(timeout=5)
            self.core.stopping = True
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
        with self.core.lock:
            return list(self._delivered)

    @property
    def sent(self) -> list[tuple[str, bytes]]:
        """Datagrams the host sent through the module: (``ip:port``, payload)."""
        with self.core.lock:
            return list(self.core.sent)

    @property
    def ready(self) -> bool:
        """Booted, registered and with a socket open: a datagram would be accepted."""
        return self._call(self.core.accepting).result(timeout=5)

    def inject_datagram(self, payload: bytes, remote: str = "203.0.113.7:40001") -> bool:
        """A datagram arrives from the network; ``False`` if the module could not take it."""
        return self._call(lambda: self.core.datagram_in(payload, remote)).result(timeout=5)

    def inject_downlink(self, payload: bytes) -> bool:
        """BC95: an operator-platform downlink (``+NNMI``)."""
        return self._call(lambda: self.core.downlink_in(payload)).result(timeout=5)

    def reboot(self, cause: str = "REBOOT_CAUSE_APPLICATION_WATCHDOG") -> None:
        self._call(lambda: self.core.reboot(cause)).result(timeout=5)

    def reboot_on_command(self, prefix: str) -> None:
        """Reboot instead of answering the next command starting with ``prefix``."""
        self._call(lambda: setattr(self.core, "reboot_on", prefix.upper())).result(timeout=5)

    def deregister(self) -> None:
        self._call(self.core.deregister).result(timeout=5)

    def set_faults(self, faults: Mapping[str, float]) -> None:
        """Replace the fault rates (an empty mapping switches faults off)."""
        self._call(lambda: setattr(self.core, "faults", dict(faults))).result(timeout=5)

    @property
    def backlog(self) -> int:
        """Datagrams waiting in the module for the host to read them."""
        return self._call(lambda: sum(len(s.queue) for s in self.core.sockets.values())).result(5)

    @property
    def asleep(self) -> bool:
        """In PSM: the UART loses the first command sent to it."""
        return self._call(lambda: self.core.asleep).result(timeout=5)

    def vanish(self) -> None:
        self._call(self.core.vanish).result(timeout=5)

    def vanish_mid_read(self) -> None:
        """Vanish in the middle of the next answer that carries a datagram: its data line
        leaves the module, its final result never does."""
        self._call(lambda: setattr(self.core, "vanish_mid_read", True)).result(timeout=5)

    # ------------------------------------------------------------------ Port (sim thread)

    def is_open(self) -> bool:
        return self._master >= 0

    def reopen(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        os.set_blocking(self._master, False)
        tmp = self.device + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(self._slave), tmp)
        os.replace(tmp, self.device)

    def flush(self) -> None:
        out = self.core.out
        while out and self._master >= 0:
            data, datagrams = out[0]
            try:
                n = os.write(self._master, data)
            except BlockingIOError:
                return
            except OSError as exc:
                log.debug("pty write failed: %s", exc)
                return
            if n < len(data):
                out[0] = (data[n:], datagrams)
                return
            out.popleft()
            if datagrams:
                with self.core.lock:
                    self._delivered.extend(datagrams)

    def drain_and_close(self) -> None:
        """Close the pty once the host has read what was written (bounded wait).

        Bytes written to the master reach the slave's queue through the kernel's flip
        buffer a little later (later still on a loaded machine), so an empty queue counts
        only when seen three times, 50 ms apart.
        """
        deadline = time.monotonic() + 3.0
        quiet = 0
        while self._master >= 0 and quiet < 3 and time.monotonic() < deadline:
            self.flush()
            time.sleep(0.05)
            quiet = quiet + 1 if not self.core.out and not self._unread() else 0
        self._close_pty()

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

    def _close_pty(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.device)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        self.core.out.clear()

    def _unread(self) -> int:
        """Bytes written to the host that it has not read yet."""
        if self._slave < 0:
            return 0
        buf = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder)

    def _run(self) -> None:
        while not self.core.stopping:
            self.core.run_due(time.monotonic())
            while self._calls:
                self._calls.popleft()()
            timeout = 0.5
            deadline = self.core.next_deadline()
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        rlist = [self._wake_r]
        wlist: list[int] = []
        if self._master >= 0:
            rlist.append(self._master)
            if self.core.out:
                wlist.append(self._master)
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (OSError, ValueError):
            return
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
                try:
                    self.core.input(data)
                except Exception:
                    log.exception("simulated module: internal error")
        if self._master >= 0 and self._master in writable:
            self.flush()
