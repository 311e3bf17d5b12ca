"""sd_notify: READY=1 only once CoAP answers, WATCHDOG=1 at the interval from the event loop,
no pings while the loop is blocked. The notify socket is a Unix datagram socket the test owns,
as systemd's would be."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citysense.sdnotify import Notifier, supervise
from tests.edge.gateway import write_registry
from tests.servers import ROOT, free_port, free_udp_port, wait_until


class NotifySocket:
    """Receives notifications in a thread, each with its arrival time; on READY=1 it sends a
    CoAP ping (an empty CON) to ``ping_port`` and records whether a reset came back."""

    def __init__(self, path: Path, ping_port: int | None = None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.ping_port = ping_port
        self.messages: list[tuple[float, str]] = []
        self.coap_answered_at_ready: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            text = data.decode()
            self.messages.append((time.monotonic(), text))
            if "READY=1" in text.split("\n") and self.ping_port is not None:
                self.coap_answered_at_ready = coap_ping(self.ping_port)

    def times(self, field: str) -> list[float]:
        return [t for t, text in self.messages if field in text.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def coap_ping(port: int) -> bool:
    """An empty confirmable message; a CoAP endpoint answers it with a reset (RFC 7252 4.3)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(bytes([0x40, 0x00, 0x12, 0x34]), ("127.0.0.1", port))
        try:
            data = s.recv(64)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return len(data) >= 4 and data[0] >> 4 == 0x7 and data[2:4] == b"\x12\x34"


@pytest.fixture
def notify_dir(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: a short folder of our own
    short = Path("/tmp") / f"cs-notify-{os.getpid()}-{time.monotonic_ns()}"
    short.mkdir(mode=0o700)
    yield short
    for p in short.iterdir():
        p.unlink()
    short.rmdir()


def test_edge_says_ready_once_coap_answers_and_pings_the_watchdog(
    tmp_path: Path, notify_dir: Path
) -> None:
    port = free_udp_port()
    registry = tmp_path / "registry.csv"
    write_registry(registry, 5)
    assert not coap_ping(port)  # nothing answers there before the gateway
    receiver = NotifySocket(notify_dir / "notify", ping_port=port)
    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(receiver.path),
        WATCHDOG_USEC="400000",  # a ping every 0.2 s
        PYTHONUNBUFFERED="1",
    )
    env.pop("WATCHDOG_PID", None)
    args = [
        sys.executable,
        "-m",
        "citysense",
        "edge",
        "--coap",
        f"127.0.0.1:{port}",
        "--mqtt",
        f"mqtt://127.0.0.1:{free_port()}",  # nobody there: the gateway serves devices anyway
        "--registry",
        str(registry),
        "--state-dir",
        str(tmp_path / "state"),
        "--metrics-bind",
        "off",
        "--log-format",
        "journal",
    ]
    log_path = tmp_path / "edge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_until(lambda: receiver.times("READY=1"), 60, "READY=1")
        wait_until(lambda: receiver.coap_answered_at_ready is not None, 10, "the CoAP ping")
        assert receiver.coap_answered_at_ready, "READY=1 came before CoAP answered"
        ready_at = receiver.times("READY=1")[0]
        wait_until(lambda: len(receiver.times("WATCHDOG=1")) >= 8, 30, "8 watchdog pings")
        pings = receiver.times("WATCHDOG=1")
        assert all(t > ready_at for t in pings)
        gaps = sorted(b - a for a, b in itertools.pairwise(pings))
        median = gaps[len(gaps) // 2]
        assert 0.1 <= median <= 0.5, f"watchdog every {median:.2f} s, not 0.2 s"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        wait_until(lambda: receiver.times("STOPPING=1"), 5, "STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        receiver.close()
    text = log_path.read_text()
    # journal format: a syslog priority prefix and no timestamp of our own
    assert "<6>edge.service: gateway" in text, text[-2000:]
    assert not any(line[:4].isdigit() for line in text.splitlines()), text[-2000:]


def test_a_blocked_event_loop_stops_the_watchdog_pings(notify_dir: Path) -> None:
    receiver = NotifySocket(notify_dir / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "200000"})
    blocked: list[float] = []

    async def scenario() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(supervise(ready, "test", notifier))
        ready.set()
        await asyncio.sleep(0.6)
        blocked.append(time.monotonic())
        time.sleep(1.2)  # noqa: ASYNC251 -- the loop hangs: no ping may go out
        blocked.append(time.monotonic())
        await asyncio.sleep(0.6)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
        time.sleep(0.2)
    finally:
        receiver.close()
    pings = receiver.times("WATCHDOG=1")
    start, end = blocked
    before = [t for t in pings if t < start]
    during = [t for t in pings if start + 0.05 < t < end]
    after = [t for t in pings if t > end]
    assert len(before) >= 3, pings
    assert during == [], f"{len(during)} pings while the loop was blocked"
    assert after, "pings did not resume"
    assert receiver.times("READY=1") and receiver.times("STOPPING=1")


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.notify("READY=1") is False
    assert n.watchdog_interval is None
    # a watchdog meant for another process is not ours
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None and other.address == "\0x"


def test_run_until_signalled_says_ready_when_the_service_does(notify_dir: Path) -> None:
    """The API and alerts run through citysense.serving: READY=1 when their ``ready`` is set."""
    import logging

    from citysense.serving import run_until_signalled

    receiver = NotifySocket(notify_dir / "notify")
    seen_before_ready: list[list[str]] = []

    async def service(ready: asyncio.Event) -> None:
        await asyncio.sleep(0.3)
        seen_before_ready.append([text for _, text in receiver.messages])
        ready.set()
        await asyncio.sleep(0.5)

    old = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    os.environ["NOTIFY_SOCKET"] = str(receiver.path)
    os.environ["WATCHDOG_USEC"] = "200000"
    try:
        assert run_until_signalled(service, logging.getLogger("t"), "stopped", "test") == 0
        time.sleep(0.2)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        receiver.close()
    assert seen_before_ready == [[]]
    assert receiver.times("READY=1") and len(receiver.times("WATCHDOG=1")) >= 2
    assert receiver.times("STOPPING=1")
