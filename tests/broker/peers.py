"""Test peers for the broker tests: the embedded broker in a thread, and paho-mqtt clients.

Both are real: the broker listens on a loopback TCP port in its own event loop thread, and the
clients are paho-mqtt 2.x over real sockets. Waiting is by events and polling, never sleeping.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import CallbackAPIVersion, Client, MQTTMessage, MQTTv5, MQTTv311
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_broker.broker import Broker, BrokerConfig
from tests.servers import wait_until

TIMEOUT = 20.0


class BrokerThread:
    """The embedded broker running in an event loop of its own, on a free loopback port."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.broker: Broker | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with Broker(config=self.config) as broker:
            self.broker = broker
            self._ready.set()
            await self._stop.wait()

    def start(self) -> BrokerThread:
        self.thread.start()
        if not self._ready.wait(TIMEOUT) or self.broker is None:
            raise RuntimeError(f"embedded broker did not start: {self.error!r}")
        return self

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    def metrics(self) -> dict[str, int]:
        assert self.broker is not None
        broker = self.broker

        async def read() -> dict[str, int]:
            return broker.metrics()

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(TIMEOUT)

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            raise RuntimeError("embedded broker did not stop")
        if self.error is not None:
            raise self.error


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int


class Peer:
    """A paho-mqtt 2.x client running its network loop in a thread."""

    def __init__(
        self,
        port: int,
        client_id: str | None = None,
        *,
        v5: bool = True,
        clean: bool = True,
        session_expiry: int | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        will: tuple[str, bytes, int, bool] | None = None,
        username: str | None = None,
        password: str | None = None,
        refused_ok: bool = False,
    ) -> None:
        self.client_id = client_id or "t-" + uuid.uuid4().hex[:10]
        self.v5 = v5
        kwargs: dict[str, Any] = {}
        if not v5:
            kwargs["clean_session"] = clean
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTv5 if v5 else MQTTv311,
            manual_ack=manual_ack,
            **kwargs,
        )
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.connect_reason: Any = None
        self.session_present = False
        self._subacks: dict[int, list[Any]] = {}
        self._unsubacks: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_publish = self._on_publish
        #: mid -> reason code of its PUBACK
        self.puback: dict[int, int] = {}
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(*will)
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
        connect_kwargs: dict[str, Any] = {"keepalive": 30}
        if v5:
            connect_kwargs["clean_start"] = clean
            connect_kwargs["properties"] = props
        self.client.connect("127.0.0.1", port, **connect_kwargs)
        self.client.loop_start()
        if not self._connected.wait(TIMEOUT):
            self.close()
            raise TimeoutError(f"{self.client_id} did not connect")
        if self.connect_reason.is_failure:
            self.close()
            if not refused_ok:
                raise ConnectionRefusedError(f"{self.client_id}: {self.connect_reason}")

    def _on_publish(self, client: Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            self.puback[mid] = int(reason.value) if hasattr(reason, "value") else int(reason)

    def _on_connect(
        self, client: Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connect_reason = reason
        self.session_present = bool(flags.session_present)
        self._connected.set()

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        with self._lock:
            self.received.append(
                Received(
                    msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup), msg.mid
                )
            )

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        with self._lock:
            self._subacks[mid] = reasons

    def _on_unsubscribe(
        self, client: Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        with self._lock:
            self._unsubacks.add(mid)

    def unsubscribe(self, topic: str) -> None:
        result, mid = self.client.unsubscribe(topic)
        assert result == 0, result
        wait_until(lambda: mid in self._unsubacks, TIMEOUT, f"UNSUBACK for {topic}")

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.received if topic is None or m.topic == topic]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages(topic)]

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        result, mid = self.client.subscribe(topic, qos)
        assert result == 0, result
        wait_until(lambda: mid in self._subacks, TIMEOUT, f"SUBACK for {topic}")
        with self._lock:
            return self._subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Publish and wait for the acknowledgement; its reason code (0: success)."""
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"{topic} not acknowledged"
        with self._lock:
            return self.puback.get(info.mid, 0)

    def ack(self, msg: Received) -> None:
        self.client.ack(msg.mid, msg.qos)

    def wait_for(self, count: int, topic: str | None = None, what: str = "messages") -> None:
        wait_until(
            lambda: len(self.messages(topic)) >= count,
            TIMEOUT,
            f"{count} {what} at {self.client_id} (have {len(self.messages(topic))})",
        )

    def drop(self) -> None:
        """Cut the connection like a crash: no DISCONNECT, a TCP reset."""
        self.client.loop_stop()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self.client._reset_sockets()

    def close(self) -> None:
        """A clean DISCONNECT."""
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()
