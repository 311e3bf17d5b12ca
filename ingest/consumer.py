"""The MQTT side of the ingestor: a paho-mqtt 2.x client with manual acknowledgement.

paho runs its network loop in its own thread and reconnects by itself; received messages are
queued here and the event loop is woken once per burst. Invariants:

* persistent session (fixed client id, MQTT v5 ``clean_start=False`` with a session expiry;
  3.1.1 ``clean_session=False``), so what is not acknowledged is delivered again after a
  crash or reconnect;
* nothing is acknowledged by paho: :meth:`MqttConsumer.ack` is called by the ingestor only
  after a message's readings are stored or dead-lettered;
* the CONNECT carries a Receive Maximum, so the broker lets that many messages wait for
  acknowledgement (without it Mosquitto sends 20);
* acknowledgements of messages from an earlier connection are not sent: the broker delivers
  those again with the same packet id, and a late ack could otherwise hit a reused id.
  ``ack`` and the disconnect callback hold one lock so that check and send are atomic.

Reading: paho reads a packet's fixed header one byte per ``recv()`` and builds an MQTT v5
``Properties`` object for every PUBLISH. :class:`_BufferedClient` serves paho's reads from a
buffer filled by large ``recv()`` calls and decodes a plain PUBLISH (QoS 0/1, no properties)
itself; its ``loop_read`` processes every buffered packet before paho waits in ``select()``
again, so a buffered byte is never left waiting for the socket to become readable. The event
loop is woken once per read burst, not once per message.

Acknowledging from the event loop's thread is safe: paho's ``client.ack`` and the
``_packet_queue`` it calls append to a deque and wake paho's loop through its socket pair.
All PUBACKs of one write are queued as one buffer through ``_packet_queue`` (paho 2.x; the
public ``client.ack`` is used where it is missing).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citysense.config import BrokerUrl
from citysense.model import INGEST_SHARED_SUBSCRIPTION
from citysense.mqttsecurity import secure

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
PUBACK = 0x40
#: Connection generations, unique across consumers of the process (a fallback makes a new one).
_GENERATIONS = itertools.count(1)
_PUBACK = struct.Struct("!BBH")
#: CONNACK reason codes meaning "this broker does not speak MQTT v5".
_UNSUPPORTED_VERSION = (132, 1)
#: Bytes asked of the socket per ``recv()`` (a burst of PUBLISH packets at once).
RECV_SIZE = 256 * 1024
_PUBLISH = 0x30
_U16 = struct.Struct("!H")

#: ``(topic, payload, mid, qos)`` of one PUBLISH, called on paho's thread.
PublishHandler = Callable[[str, bytes, int, int], None]


class _BufferedClient(mqtt.Client):
    """paho's client with buffered reads and a lean PUBLISH path (see the module doc).

    Invariants: ``_sock_recv`` returns at most ``bufsize`` bytes, as ``recv()`` does, and
    reads the socket only when the buffer is empty; ``loop_read`` returns with the buffer
    empty (or the connection gone), so paho's ``select()`` never waits on bytes already
    read; the buffer is dropped with its socket (no byte crosses into a new connection).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rbuf = b""
        self._rpos = 0
        #: Called for a plain PUBLISH instead of building an MQTTMessage (None: paho's path).
        self.on_publish_fast: PublishHandler | None = None
        #: Called on paho's thread after each read burst.
        self.after_read: Callable[[], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        pos = self._rpos
        if pos >= len(buf):
            data = super()._sock_recv(max(bufsize, RECV_SIZE))
            if self._ssl and data:
                data = self._more_records(data)
            if len(data) <= bufsize:
                self._rbuf, self._rpos = b"", 0
                return data
            self._rbuf, self._rpos = data, bufsize
            return data[:bufsize]
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _more_records(self, data: bytes) -> bytes:
        """A TLS socket's ``recv()`` returns one record (16 KiB at most): read on while
        records are ready, so that a burst is one buffer (one wake-up) as on plain TCP."""
        parts = [data]
        size = len(data)
        while size < RECV_SIZE:
            try:
                more = super()._sock_recv(RECV_SIZE - size)
            except OSError:  # nothing ready yet (or an error the next read reports again)
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    def _buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        try:
            rc = super().loop_read(max_packets)
            while rc == mqtt.MQTT_ERR_SUCCESS and self._sock is not None and self._buffered():
                rc = super().loop_read(max_packets)
            return rc
        finally:
            if self.after_read is not None:
                self.after_read()

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        handler = self.on_publish_fast
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if handler is None or qos > 1 or command & 0xF0 != _PUBLISH:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            (topic_len,) = _U16.unpack_from(packet, 0)
            pos = 2 + topic_len
            topic = packet[2:pos].decode()
            mid = 0
            if qos:
                (mid,) = _U16.unpack_from(packet, pos)
                pos += 2
            if self._protocol == mqtt.MQTTv5:
                if packet[pos] != 0:  # properties present: paho decodes them
                    return super()._handle_publish()
                pos += 1
        except (struct.error, IndexError, UnicodeDecodeError):
            return super()._handle_publish()  # paho names what is wrong
        if pos > len(packet):
            return super()._handle_publish()
        handler(topic, bytes(packet[pos:]), mid, qos)
        return mqtt.MQTT_ERR_SUCCESS


@dataclass(frozen=True, slots=True)
class Message:
    """One received PUBLISH, with the connection generation it arrived on."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


class MqttConsumer:
    """Shared-subscription consumer; messages are handed to an asyncio loop."""

    def __init__(
        self,
        broker: BrokerUrl,
        client_id: str,
        receive_maximum: int,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        *,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        subscription: str = INGEST_SHARED_SUBSCRIPTION,
        keepalive: int = 30,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.receive_maximum = receive_maximum
        self.protocol = protocol
        self.subscription = subscription
        self.keepalive = keepalive
        self._loop = loop
        self._wake = wake
        self._pending: collections.deque[Message] = collections.deque()
        self._lock = threading.Lock()
        self._generation = next(_GENERATIONS)
        self._woken = False  #: a wake-up of the event loop is scheduled and not yet run
        self.subscribed = threading.Event()
        self.disconnected = threading.Event()
        self.unsupported_v5 = threading.Event()
        self.connects = 0
        self._client = self._build()

    def _build(self) -> mqtt.Client:
        v5 = self.protocol == mqtt.MQTTv5
        client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.watch = secure(client, self.broker)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish_fast = self._on_publish
        client.after_read = self._announce
        return client

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background (paho retries until the broker answers)."""
        kwargs: dict[str, object] = {"keepalive": self.keepalive}
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = self.receive_maximum
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            kwargs["clean_start"] = False
            kwargs["properties"] = props
        self._client.connect_async(self.broker.host, self.broker.port, **kwargs)  # type: ignore[arg-type]
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (acks, confirmations), disconnect, stop the thread."""
        with self._lock:
            self._generation = next(_GENERATIONS)  # nothing received so far may be acked now
        self.disconnected.clear()
        rc = self._client.disconnect()
        if rc == mqtt.MQTT_ERR_SUCCESS:
            self.disconnected.wait(timeout)
        self._client.loop_stop()

    # ------------------------------------------------------------------ paho thread

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.watch.connack(reason)
        if reason.is_failure:
            if self.protocol == mqtt.MQTTv5 and reason.value in _UNSUPPORTED_VERSION:
                log.warning("broker %s:%s lacks MQTT v5", self.broker.host, self.broker.port)
                self.unsupported_v5.set()
                return
            return
        self.connects += 1
        log.info(
            "connected to %s:%s as %s (session present: %s)",
            self.broker.host,
            self.broker.port,
            self.client_id,
            flags.session_present,
        )
        client.subscribe(self.subscription, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if all(not r.is_failure for r in reasons):
            self.subscribed.set()
        else:
            log.error("subscription to %s refused: %s", self.subscription, reasons)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._generation = next(_GENERATIONS)
        self.disconnected.set()
        if reason.is_failure:
            log.info("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._on_publish(msg.topic, bytes(msg.payload), msg.mid, msg.qos)

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self._pending.append(Message(topic, payload, mid, qos, self._generation))

    def _announce(self) -> None:
        """After a read burst: wake the event loop once if messages wait and no wake-up is
        scheduled. The flag is cleared before the wake-up reaches the collector, so a message
        appended after the collector's drain always finds it clear (or schedules anew)."""
        if self._pending and not self._woken:
            self._woken = True
            try:
                self._loop.call_soon_threadsafe(self._woke)
            except RuntimeError:  # the event loop is closed: we are shutting down
                self._woken = False

    def _woke(self) -> None:
        self._woken = False
        self._wake()

    # ------------------------------------------------------------------ event loop side

    def drain(self) -> list[Message]:
        """Every message received and not yet taken."""
        out: list[Message] = []
        pending = self._pending
        while pending:
            out.append(pending.popleft())
        return out

    @property
    def queued(self) -> int:
        return len(self._pending)

    def ack(self, messages: Iterable[Message]) -> int:
        """Acknowledge ``messages`` received on the current connection; returns how many."""
        with self._lock:
            generation = self._generation
            mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
            if not mids:
                return 0
            queue = getattr(self._client, "_packet_queue", None)
            if queue is not None and len(mids) > 1:
                # All PUBACKs of a write as one buffer: paho's client.ack() queues one packet
                # per message and wakes its thread through a socket pair for each, which at
                # 1 reading per message costs more than the messages themselves. A PUBACK
                # with reason "success" is the same 4 bytes in MQTT 3.1.1 and 5.
                packet = b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])
                queue(PUBACK, packet, 0, 0)
            else:
                for mid in mids:
                    self._client.ack(mid, 1)
        return len(mids)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a publish (paho sends it, and re-sends it after a reconnect)."""
        self._client.publish(topic, payload, qos=qos)
