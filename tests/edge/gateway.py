"""Test harness for the gateway: registries, a gateway in a thread or a process, a raw CoAP
client over real UDP, and an ingestor stand-in on real Mosquitto that confirms on ``.../stored``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiocoap
import paho.mqtt.client as mqtt
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from paho.mqtt.enums import CallbackAPIVersion

from citysense import topics
from citysense.config import Settings, load_settings
from citysense.registry import Device, format_registry
from citysense.senml import CF_SENML_JSON, encode_values
from tests.servers import ROOT, free_port, free_udp_port, wait_until

GATEWAY = "gw-test-01"


def write_registry(path: Path, count: int, gateway: str = GATEWAY) -> list[str]:
    """A registry of ``count`` air stations; returns their ids."""
    devices = [
        Device(
            f"urn:imei:86{i:013d}", "air_station", "zhengdong", "ruyi-lake", 34.7, 113.7, gateway
        )
        for i in range(count)
    ]
    path.write_text(format_registry(devices))
    return [d.device for d in devices]


def edge_settings(tmp: Path, *, mqtt_url: str | None = None, **extra: object) -> Settings:
    """Settings for a gateway on free loopback ports with its state under ``tmp``."""
    registry = tmp / "registry.csv"
    if not registry.exists():
        write_registry(registry, 20)
    cli: dict[str, object] = {
        "gateway": GATEWAY,
        "coap": f"127.0.0.1:{free_udp_port()}",
        "mqtt": mqtt_url or f"mqtt://127.0.0.1:{free_port()}",
        "registry": str(registry),
        "state_dir": str(tmp / "state"),
        "metrics_bind": f"127.0.0.1:{free_port()}",
        "batch_max_delay": "0.05",
        "resend_interval": "3",
        "retry_max_delay": "1",
        # tests that send many uplinks per device; the flood tests set their own budget
        "device_rate": "0",
    }
    cli.update({k: str(v) for k, v in extra.items()})
    return load_settings("edge", cli, environ={})


def coap_port(settings: Settings) -> int:
    return int(settings.coap.rsplit(":", 1)[1])


def outbox_depth(settings: Settings) -> int:
    """Readings held in the gateway's outbox, read with a connection of the test's own."""
    with contextlib.closing(sqlite3.connect(Path(settings.state_dir) / "outbox.db")) as db:
        return int(db.execute("SELECT count(*) FROM reading").fetchone()[0])


def metrics_text(settings: Settings) -> str:
    assert settings.metrics_bind is not None
    with urllib.request.urlopen(f"http://{settings.metrics_bind}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(settings: Settings, name: str) -> float:
    """Sum of every series of ``name`` in the gateway's /metrics."""
    total = 0.0
    for line in metrics_text(settings).splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class GatewayThread:
    """``edge.service.serve`` on its own event loop in a thread (in-process, real sockets)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        from edge.service import serve

        asyncio.set_event_loop(self.loop)
        ready = asyncio.Event()

        async def main() -> None:
            self._task = asyncio.current_task()
            waiter = asyncio.ensure_future(ready.wait())
            waiter.add_done_callback(lambda _: self.ready.set())
            try:
                await serve(self.settings, ready)
            finally:
                waiter.cancel()

        try:
            self.loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        self.ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive() and self._task is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        assert not self._thread.is_alive(), "gateway did not stop"
        if self.error is not None:
            raise self.error

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop (to look at its outbox)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class GatewayProcess:
    """``python -m citysense edge`` as a subprocess, for SIGTERM and ``kill -9``."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        s = self.settings
        out = [sys.executable, "-m", "citysense", "edge"]
        for name in (
            "gateway",
            "coap",
            "mqtt",
            "registry",
            "state_dir",
            "metrics_bind",
            "batch_max_delay",
            "resend_interval",
            "retry_max_delay",
            "outbox_quota_mb",
            "max_inflight_batches",
            "batch_max_readings",
        ):
            out += ["--" + name.replace("_", "-"), str(getattr(s, name))]
        for name in ("device_keys", "device_auth", "coaps"):
            if getattr(s, name) is not None:
                out += ["--" + name.replace("_", "-"), str(getattr(s, name))]
        out += ["--device-rate", str(s.device_rate), "--device-burst", str(s.device_burst)]
        return out

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
            try:
                metrics_text(self.settings)
                return True
            except OSError:
                return False

        wait_until(up, 30, "the gateway's metrics endpoint")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- CoAP clients


def uplink_payload(device: str, t_ms: int, values: dict[str, float] | None = None) -> bytes:
    return encode_values(device, t_ms, values or {"pm25": 35.0, "pm10": 61.0}, CF_SENML_JSON)


def con_post(mid: int, token: bytes, payload: bytes, cf: int | None = CF_SENML_JSON) -> bytes:
    """A raw CON POST /up datagram."""
    msg = aiocoap.Message(_mtype=Type.CON, code=Code.POST, _mid=mid, _token=token, payload=payload)
    msg.opt.uri_path = ("up",)
    if cf is not None:
        msg.opt.content_format = cf
    return bytes(msg.encode())


class RawCoap:
    """A raw UDP CoAP client that keeps many CONs in flight and retransmits by MID."""

    def __init__(self, port: int, *, ack_timeout: float = 1.0) -> None:
        self.addr = ("127.0.0.1", port)
        self.ack_timeout = ack_timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self._mid = random.randrange(65536)
        self.answered = 0  #: answers received so far (read by other threads)

    def close(self) -> None:
        self.sock.close()

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) % 65536
        return self._mid

    def send_all(
        self, payloads: list[bytes], *, window: int = 32, deadline: float = 120.0
    ) -> dict[int, str]:
        """Send every payload as a CON, retransmitting (same MID) until answered.

        Returns {index: answer code} for the payloads that got an answer.
        """
        answers: dict[int, str] = {}
        waiting: dict[int, tuple[int, bytes, float]] = {}  # mid -> (index, datagram, sent at)
        todo = list(enumerate(payloads))
        todo.reverse()
        end = time.monotonic() + deadline
        while (todo or waiting) and time.monotonic() < end:
            while todo and len(waiting) < window:
                index, payload = todo.pop()
                mid = self.next_mid()
                datagram = con_post(mid, mid.to_bytes(2, "big"), payload)
                waiting[mid] = (index, datagram, time.monotonic())
                self.sock.sendto(datagram, self.addr)
            try:
                data, _ = self.sock.recvfrom(2048)
            except TimeoutError:
                data = b""
            except ConnectionRefusedError:  # ICMP port unreachable while the gateway is down
                data = b""
            if data:
                msg = aiocoap.Message.decode(data)
                entry = waiting.pop(msg.mid, None)
                if entry is not None and msg.code != Code.EMPTY:
                    answers[entry[0]] = msg.code.dotted
                    self.answered += 1
                elif entry is not None:  # empty ACK: the answer comes separately
                    waiting[msg.mid] = entry
                elif msg.mtype == Type.CON:  # a separate response
                    ack = aiocoap.Message(_mtype=Type.ACK, code=Code.EMPTY, _mid=msg.mid)
                    self.sock.sendto(bytes(ack.encode()), self.addr)
                    token_mid = int.from_bytes(msg.token, "big")
                    sep = waiting.pop(token_mid, None)
                    if sep is not None:
                        answers[sep[0]] = msg.code.dotted
                        self.answered += 1
            now = time.monotonic()
            for mid, (index, datagram, sent) in list(waiting.items()):
                if now - sent > self.ack_timeout:
                    waiting[mid] = (index, datagram, now)
                    with contextlib.suppress(OSError):
                        self.sock.sendto(datagram, self.addr)
        return answers


# --------------------------------------------------------------------------- ingestor stand-in


class Ingestor:
    """Subscribes to ``.../up`` on real Mosquitto, records readings, confirms on ``.../stored``.

    It plays the cloud side of INTERFACES.md section 5 for the gateway tests (the real
    ingestor is another service; services do not import each other).
    """

    def __init__(self, url: str, gateway: str = GATEWAY, *, confirm: bool = True) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.gateway = gateway
        self.confirm = confirm
        self.lock = threading.Lock()
        self.batches: list[dict[str, Any]] = []
        self.keys: set[tuple[str, str, int]] = set()
        self.acks: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self.content_types: list[str | None] = []  #: MQTT v5 content type of each envelope
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-ingestor-{random.randrange(1 << 30)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async(host, int(port), 30)
        self.client.loop_start()
        assert self.subscribed.wait(20), "test ingestor did not subscribe"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(
            [(topics.topic(self.gateway, t), 1) for t in (topics.UP, topics.ACK, topics.STATUS)]
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/ack"):
                self.acks.append(data)
                return
            if msg.topic.endswith("/status"):
                self.status.append(data)
                return
            self.batches.append(data)
            self.content_types.append(getattr(msg.properties, "ContentType", None))
            for r in data["readings"]:
                for metric_name in r["values"]:
                    self.keys.add((r["device"], metric_name, r["t"]))
        if self.confirm:
            client.publish(
                topics.topic(self.gateway, topics.STORED),
                topics.encode_stored([data["seq"]]),
                qos=1,
            )

    def wait_online(self, timeout: float = 30) -> None:
        """Until the gateway announced itself: it subscribed to .../down and .../stored
        before it published that status, so a command sent now is not lost."""
        wait_until(
            lambda: any(s["state"] == "online" for s in self.status), timeout, "gateway online"
        )

    def confirm_seqs(self, seqs: list[int]) -> None:
        self.client.publish(
            topics.topic(self.gateway, topics.STORED), json.dumps({"seq": seqs}), qos=1
        )

    def send_down(self, command: dict[str, Any]) -> None:
        self.client.publish(
            topics.topic(self.gateway, topics.DOWN), json.dumps(command), qos=1
        ).wait_for_publish(10)

    def seqs(self) -> list[int]:
        with self.lock:
            return [b["seq"] for b in self.batches]

    def ack_states(self, cid: str) -> list[str]:
        with self.lock:
            return [a["state"] for a in self.acks if a["id"] == cid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def ingestor(url: str, **kw: Any) -> Iterator[Ingestor]:
    ing = Ingestor(url, **kw)
    try:
        yield ing
    finally:
        ing.close()


def post_uplink(port: int, payload: bytes, timeout: float = 20) -> aiocoap.Message:
    """One CON POST /up from a fresh socket (a device waking up); the decoded answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        mid = random.randrange(65536)
        sock.sendto(con_post(mid, b"\x07", payload), ("127.0.0.1", port))
        while True:
            msg = aiocoap.Message.decode(sock.recvfrom(2048)[0])
            if msg.code != Code.EMPTY:
                if msg.mtype == Type.CON:
                    ack = aiocoap.Message(_mtype=Type.ACK, code=Code.EMPTY, _mid=msg.mid)
                    sock.sendto(bytes(ack.encode()), ("127.0.0.1", port))
                return msg
