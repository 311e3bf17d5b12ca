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

Reading: :mod:`citysense.compat.paho` (buffered reads, a lean PUBLISH path and batched
PUBACKs, each with a fallback to paho's public API); the event loop is woken once per read
burst, not once per message (once per message on paho's own path).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citysense.compat import paho as compat_paho
from citysense.config import BrokerUrl
from citysense.connectivity import Connectivity
from citysense.mqttsecurity import secure
from citysense.topics import INGEST_SHARED_SUBSCRIPTION, SESSION_EXPIRY_S

log = logging.getLogger(__name__)

#: Connection generations, unique across consumers of the process (a fallback makes a new one).
_GENERATIONS = itertools.count(1)
#: CONNACK reason codes meaning "this broker does not speak MQTT v5".
_UNSUPPORTED_VERSION = (132, 1)


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
        state: Connectivity | None = None,
    ) -> None:
        self.broker = broker
        self.state = state or Connectivity(
            "broker", f"{broker.host}:{broker.port}", log, client_id=client_id
        )
        self.state.client_id = client_id
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
        self.connected = threading.Event()  #: set while a connection to the broker stands
        self.disconnected = threading.Event()
        self.unsupported_v5 = threading.Event()
        self.connects = 0
        self._per_message = False
        self._client = self._build()

    def _build(self) -> mqtt.Client:
        v5 = self.protocol == mqtt.MQTTv5
        client = compat_paho.consumer_client_class()(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.watch = secure(client, self.broker)
        client.on_connect_fail = self._on_connect_fail  # which hands on to the watch
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        if isinstance(client, compat_paho.BufferedClient):
            client.on_publish_fast = self._on_publish
            client.after_read = self._announce
        else:  # paho's own path: wake the event loop per message
            self._per_message = True
            log.warning(
                "paho-mqtt %s lacks %s: reading through its public API (slower)",
                getattr(mqtt, "__version__", "?"),
                ", ".join(compat_paho.MISSING),
            )
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
            self.state.failed(f"the broker refused the connection: {reason}")
            return
        self.connects += 1
        self.state.recovered()
        self.connected.set()
        log.info(
            "connected to %s:%s as %s (session present: %s)",
            self.broker.host,
            self.broker.port,
            self.client_id,
            flags.session_present,
        )
        client.subscribe(self.subscription, qos=1)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this inside its ``except OSError`` around the connect
        exc = sys.exc_info()[1]
        self.watch.connect_failed(client, userdata)  # TLS refusals, the settled flag
        self.state.failed(str(exc) if exc is not None else "no connection")

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
        self.connected.clear()
        self.disconnected.set()
        if reason.is_failure:
            self.state.lost(str(reason), reason.value)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._on_publish(msg.topic, bytes(msg.payload), msg.mid, msg.qos)
        if self._per_message:
            self._announce()

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
            compat_paho.ack_many(self._client, mids)
        return len(mids)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a publish (paho sends it, and re-sends it after a reconnect)."""
        self._client.publish(topic, payload, qos=qos)
