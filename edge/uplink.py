"""The MQTT uplink: paho-mqtt 2.x (MQTT v5, QoS 1, persistent session) and the batch publisher.

:class:`MqttLink` owns the paho client (its network thread reconnects with capped back-off)
and hands every event to the event loop. :class:`Uplink` turns outbox readings into batches.

Invariants:

* A batch leaves the outbox only when an ingestor confirms its ``seq`` on ``.../stored``; a
  broker's PUBACK proves nothing (a broker killed before its next save loses what it acked).
* A batch not confirmed within ``resend_interval`` -- or published before a reconnect -- is
  published again with the same ``seq``. Duplicates are harmless: storage is idempotent.
* At most ``max_inflight_batches`` batches await confirmation at once.
* The status topic holds a retained ``online`` message while connected; the Last Will (and a
  clean stop) leave a retained ``offline`` one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citysense import __version__, topics
from citysense.config import BrokerUrl
from citysense.connectivity import Connectivity
from citysense.errors import CitysenseError
from citysense.mqttsecurity import secure
from edge import clock
from edge.metrics import Metrics
from edge.outbox import Outbox

log = logging.getLogger(__name__)

KEEPALIVE_S = 30


def _now_ms() -> int:
    return clock.now_ms()


def status_payload(state: str, since_ms: int) -> bytes:
    return topics.encode_status(state, __version__, since_ms)


class MqttLink:
    """One paho client for the gateway; thread-safe ``publish``; events land on the loop."""

    def __init__(
        self,
        broker: BrokerUrl,
        gateway: str,
        client_id: str,
        *,
        on_message: Callable[[str, bytes, int, int], None],
        on_connected: Callable[[], None],
        retry_max_delay: float = 30.0,
        max_inflight: int = 50,
        metrics: Metrics | None = None,
    ) -> None:
        self.broker = broker
        self.status_topic = topics.topic(gateway, topics.STATUS)
        self.subscriptions = [(topics.topic(gateway, t), 1) for t in (topics.STORED, topics.DOWN)]
        self.metrics = metrics or Metrics()
        self.connected = asyncio.Event()
        self.state = Connectivity(
            "broker", f"{broker.host}:{broker.port}", log, client_id=client_id
        )
        self._on_message = on_message
        self._on_connected = on_connected
        self._loop = asyncio.get_running_loop()
        self._connections = 0
        self._started_ms = _now_ms()
        self._closing = False
        self._lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.watch = secure(client, broker)
        client.max_inflight_messages_set(max_inflight + 20)
        client.reconnect_delay_set(1, max(1, math.ceil(retry_max_delay)))
        client.will_set(
            self.status_topic, status_payload("offline", self._started_ms), qos=1, retain=True
        )
        self._json_props = Properties(PacketTypes.PUBLISH)
        self._json_props.ContentType = topics.UP_CONTENT_TYPE
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_connect_fail = self._handle_connect_fail
        client.on_message = self._handle_message
        self.client = client

    # paho's thread ---------------------------------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.watch.connack(reason)
        if reason.is_failure:
            self.state.failed(f"the broker refused the connection: {reason}")
            return
        self._connections += 1
        if self._connections > 1:
            self.metrics.inc("citysense_edge_mqtt_reconnects_total")
        self.state.recovered()
        log.info("connected to %s", self.watch.where)
        client.subscribe(self.subscriptions)
        client.publish(self.status_topic, status_payload("online", _now_ms()), qos=1, retain=True)
        self._loop.call_soon_threadsafe(self._set_connected, True)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self._closing:
            self.state.lost(str(reason), reason.value)
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._set_connected, False)

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around the connect: the reason is the
        # exception being handled
        exc = sys.exc_info()[1]
        self.watch.connect_failed(client, userdata)  # TLS refusals, the settled flag
        self.state.failed(str(exc) if exc is not None else "no connection")

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(
                self._on_message, msg.topic, bytes(msg.payload), msg.mid, msg.qos
            )

    # the event loop --------------------------------------------------------------

    def _set_connected(self, up: bool) -> None:
        if up:
            self.connected.set()
            self._on_connected()
        else:
            self.connected.clear()

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = topics.SESSION_EXPIRY_S
        self.client.connect_async(
            self.broker.host,
            self.broker.port,
            KEEPALIVE_S,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, json_content: bool = False
    ) -> bool:
        """Publish at QoS 1; ``False`` when not connected (paho then queues it).

        ``json_content`` marks the message with the MQTT v5 content type ``application/json``
        (the envelopes on ``…/up``).
        """
        props = self._json_props if json_content else None
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    async def stop(self, grace: float = 3.0) -> None:
        """Leave a retained ``offline`` status, disconnect cleanly, stop paho's thread."""
        self._closing = True
        if self.connected.is_set():
            info = self.client.publish(
                self.status_topic, status_payload("offline", _now_ms()), qos=1, retain=True
            )
            with contextlib.suppress(Exception):
                await asyncio.to_thread(info.wait_for_publish, grace)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class Link(Protocol):
    """What the uplink needs of a broker connection (:class:`MqttLink` is one)."""

    connected: asyncio.Event

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, json_content: bool = False
    ) -> bool: ...


class Uplink:
    """A thin publish loop over the outbox: it forms batches, publishes what is due, and
    hands confirmations back. The state (which batches are in flight, when each was last
    published) lives in the outbox."""

    def __init__(
        self,
        outbox: Outbox,
        gateway: str,
        *,
        metrics: Metrics,
        batch_max_readings: int = 500,
        batch_max_delay: float = 0.5,
        resend_interval: float = 60.0,
        max_inflight: int = 50,
    ) -> None:
        self.outbox = outbox
        self.gateway = gateway
        self.topic = topics.topic(gateway, topics.UP)
        self.metrics = metrics
        self.batch_max_readings = batch_max_readings
        self.batch_max_delay = batch_max_delay
        self.resend_ms = int(resend_interval * 1000)
        self.resend_interval = resend_interval
        self.max_inflight = max_inflight
        self.link: Link | None = None
        self.inflight = 0  #: batches in flight (the outbox's count, kept current here)
        self._pending = 0  # readings committed since the last batch was formed
        self._reconnected = False
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._slot = asyncio.Event()
        self._resend_now = asyncio.Event()
        self._slot.set()
        self._settled = asyncio.Event()

    def notify(self, readings: int) -> None:
        """Readings were committed to the outbox (called on the event loop)."""
        self._pending += readings
        self._wake.set()
        if self._pending >= self.batch_max_readings:
            self._full.set()

    def on_connected(self) -> None:
        # The broker may have lost what it acknowledged before the break: publish again.
        self._reconnected = True
        self._resend_now.set()
        self._wake.set()

    async def restore(self) -> None:
        """Count the batches in flight from before a restart (call before connecting)."""
        self.inflight = await self.outbox.inflight_count()

    async def confirmed(self, seqs: list[int]) -> None:
        """An ingestor confirmed ``seqs``: the outbox releases those in flight; any other
        seq -- forged, stale, or repeated -- deletes nothing and is counted
        (INTERFACES.md section 10.1)."""
        accepted = await self.outbox.accept(seqs)
        ignored = len(set(seqs)) - len(accepted)
        if ignored:
            self.metrics.inc("citysense_edge_confirmations_ignored_total", ignored)
            log.debug("confirmation of %d seqs not in flight ignored", ignored)
        if not accepted:
            return
        self.inflight = max(0, self.inflight - len(accepted))
        self.metrics.inc("citysense_edge_batches_confirmed_total", len(accepted))
        log.debug("batches %s confirmed", accepted)
        if self.inflight < self.max_inflight:
            self._slot.set()
            self._wake.set()
        self._settled.set()

    async def _publish(self, seq: int, *, again: bool) -> bool:
        """Publish batch ``seq``; ``False`` when it has nothing left (the outbox dropped it)."""
        assert self.link is not None
        payload = await self.outbox.payload(self.gateway, seq, _now_ms())
        if payload is None:
            self.inflight = await self.outbox.inflight_count()
            self._slot.set()
            return False
        self.link.publish(self.topic, payload, json_content=True)
        if again:
            self.metrics.inc("citysense_edge_batches_resent_total")
            log.info("batch %d re-sent (not confirmed yet)", seq)
        else:
            self.metrics.inc("citysense_edge_batches_sent_total")
            log.debug("batch %d published", seq)
        return True

    async def drain(self) -> None:
        """At stop: publish every unbatched reading and whatever is due, then wait until
        every batch is confirmed (the caller bounds the wait)."""
        link = self.link
        if link is None or not link.connected.is_set():
            return
        while (seq := await self.outbox.batch(self.batch_max_readings, _now_ms())) is not None:
            self.inflight += 1
            await self._publish(seq, again=False)
        await self._resend_due()
        while (count := await self.outbox.inflight_count()) > 0:
            self.inflight = count
            self._settled.clear()
            await self._settled.wait()
        self.inflight = 0

    async def run(self, link: Link) -> None:
        self.link = link
        await self.restore()
        self._pending = self.batch_max_readings  # whatever is waiting goes out at once
        self._wake.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._batch_loop())
            tg.create_task(self._resend_loop())

    async def _batch_loop(self) -> None:
        assert self.link is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending < self.batch_max_readings and self.batch_max_delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.batch_max_delay)
            self._full.clear()
            self._pending = 0
            while True:
                await self.link.connected.wait()
                while self.inflight >= self.max_inflight:
                    self._slot.clear()
                    await self._slot.wait()
                try:
                    # in flight from the moment it exists: if publishing fails or is
                    # cancelled, the re-send loop (or the stop's drain) publishes it
                    seq = await self.outbox.batch(self.batch_max_readings, _now_ms())
                    if seq is None:
                        break
                    self.inflight += 1
                    await self._publish(seq, again=False)
                except CitysenseError as exc:
                    log.error("cannot form or read a batch: %s", exc)
                    await asyncio.sleep(1)  # back off on a failing disk

    async def _resend_due(self) -> None:
        if self._reconnected:
            self._reconnected = False
            await self.outbox.reject()
        published = [seq for seq in await self.outbox.due(_now_ms(), self.resend_ms)]
        done = []
        for seq in published:
            if await self._publish(seq, again=True):
                done.append(seq)
        await self.outbox.sent(done, _now_ms())

    async def _resend_loop(self) -> None:
        assert self.link is not None
        tick = min(1.0, self.resend_interval / 4)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resend_now.wait(), tick)
            self._resend_now.clear()
            if not self.link.connected.is_set():
                continue
            try:
                await self._resend_due()
                self.inflight = await self.outbox.inflight_count()
            except CitysenseError as exc:
                log.error("cannot re-send batches: %s", exc)
            if self.inflight < self.max_inflight:
                self._slot.set()
