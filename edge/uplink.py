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
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citysense import __version__
from citysense.config import BrokerUrl
from citysense.errors import CitysenseError
from citysense.model import topic_root
from citysense.mqttsecurity import secure
from edge.metrics import Metrics
from edge.outbox import SqliteOutbox

log = logging.getLogger(__name__)

#: How long the broker keeps our session (and queued QoS 1 messages) while we are away.
SESSION_EXPIRY_S = 7 * 24 * 3600
KEEPALIVE_S = 30


def _now_ms() -> int:
    return int(time.time() * 1000)


def status_payload(state: str, since_ms: int) -> bytes:
    return json.dumps(
        {"state": state, "version": __version__, "since": since_ms}, separators=(",", ":")
    ).encode()


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
        self.root = topic_root(gateway)
        self.metrics = metrics or Metrics()
        self.connected = asyncio.Event()
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
            f"{self.root}/status", status_payload("offline", self._started_ms), qos=1, retain=True
        )
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        self.client = client

    # paho's thread ---------------------------------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.watch.connack(reason)
        if reason.is_failure:
            return
        self._connections += 1
        if self._connections > 1:
            self.metrics.inc("citysense_edge_mqtt_reconnects_total")
        log.info("connected to %s", self.watch.where)
        client.subscribe(
            [(f"{self.root}/stored", 1), (f"{self.root}/down", 1)],
        )
        client.publish(
            f"{self.root}/status", status_payload("online", _now_ms()), qos=1, retain=True
        )
        self._loop.call_soon_threadsafe(self._set_connected, True)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self._closing:
            log.info("disconnected from the broker (%s); reconnecting", reason)
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._set_connected, False)

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
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            self.broker.host,
            self.broker.port,
            KEEPALIVE_S,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish at QoS 1; ``False`` when not connected (paho then queues it)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    async def stop(self, grace: float = 3.0) -> None:
        """Leave a retained ``offline`` status, disconnect cleanly, stop paho's thread."""
        self._closing = True
        if self.connected.is_set():
            info = self.client.publish(
                f"{self.root}/status", status_payload("offline", _now_ms()), qos=1, retain=True
            )
            with contextlib.suppress(Exception):
                await asyncio.to_thread(info.wait_for_publish, grace)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class Uplink:
    """Batches readings out of the outbox and keeps each one until it is confirmed."""

    def __init__(
        self,
        outbox: SqliteOutbox,
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
        self.topic = f"{topic_root(gateway)}/up"
        self.metrics = metrics
        self.batch_max_readings = batch_max_readings
        self.batch_max_delay = batch_max_delay
        self.resend_interval = resend_interval
        self.max_inflight = max_inflight
        self.link: MqttLink | None = None
        self.inflight: dict[int, float] = {}  #: seq -> monotonic time of its last publish
        self._pending = 0  # readings committed since the last batch was formed
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
        for seq in self.inflight:
            self.inflight[seq] = -math.inf
        self._resend_now.set()
        self._wake.set()

    async def confirmed(self, seqs: list[int]) -> None:
        deleted = await self.outbox.confirm(seqs)
        known = [s for s in seqs if s in self.inflight]
        for seq in known:
            del self.inflight[seq]
        if known:
            self.metrics.inc("citysense_edge_batches_confirmed_total", len(known))
            log.debug("batches %s confirmed, %d readings released", known, deleted)
        if len(self.inflight) < self.max_inflight:
            self._slot.set()
            self._wake.set()
        if not self.inflight:
            self._settled.set()

    async def drain(self) -> None:
        """At stop: publish every unbatched reading, then wait until all are confirmed."""
        link = self.link
        if link is None or not link.connected.is_set():
            return
        while (seq := await self.outbox.form_batch(self.batch_max_readings, _now_ms())) is not None:
            self.inflight[seq] = -math.inf
        # a batch formed by the batch loop just before it was cancelled was never published
        for seq in await self.outbox.unconfirmed():
            self.inflight.setdefault(seq, -math.inf)
        for seq, at in list(self.inflight.items()):
            if at != -math.inf:
                continue
            payload = await self._payload(seq)
            if payload is None:
                del self.inflight[seq]
                continue
            self.inflight[seq] = time.monotonic()
            link.publish(self.topic, payload)
            self.metrics.inc("citysense_edge_batches_sent_total")
        while self.inflight:
            self._settled.clear()
            await self._settled.wait()

    async def run(self, link: MqttLink) -> None:
        self.link = link
        for seq in await self.outbox.unconfirmed():
            self.inflight[seq] = -math.inf
        self._pending = self.batch_max_readings  # whatever is waiting goes out at once
        self._wake.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._batch_loop())
            tg.create_task(self._resend_loop())

    async def _payload(self, seq: int) -> bytes | None:
        return await self.outbox.batch_payload(self.gateway, seq, _now_ms())

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
                while len(self.inflight) >= self.max_inflight:
                    self._slot.clear()
                    await self._slot.wait()
                try:
                    seq = await self.outbox.form_batch(self.batch_max_readings, _now_ms())
                    if seq is None:
                        break
                    # in flight from the moment it exists: if publishing fails or is
                    # cancelled, the re-send loop (or the stop's drain) publishes it
                    self.inflight[seq] = -math.inf
                    payload = await self._payload(seq)
                except CitysenseError as exc:
                    log.error("cannot form or read a batch: %s", exc)
                    await asyncio.sleep(1)  # back off on a failing disk
                    continue
                if payload is None:
                    del self.inflight[seq]
                    continue
                self.inflight[seq] = time.monotonic()
                self.link.publish(self.topic, payload)
                self.metrics.inc("citysense_edge_batches_sent_total")
                log.debug("batch %d published", seq)

    async def _resend_loop(self) -> None:
        assert self.link is not None
        tick = min(1.0, self.resend_interval / 4)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resend_now.wait(), tick)
            self._resend_now.clear()
            if not self.link.connected.is_set():
                continue
            due = time.monotonic() - self.resend_interval
            for seq in [s for s, at in self.inflight.items() if at <= due]:
                try:
                    payload = await self._payload(seq)
                except CitysenseError as exc:
                    log.error("cannot read batch %d: %s", seq, exc)
                    break
                if seq not in self.inflight:
                    continue  # confirmed meanwhile
                if payload is None:  # every reading moved on to a later batch
                    del self.inflight[seq]
                    self._slot.set()
                    continue
                self.inflight[seq] = time.monotonic()
                self.link.publish(self.topic, payload)
                self.metrics.inc("citysense_edge_batches_resent_total")
                log.info("batch %d re-sent (not confirmed yet)", seq)
