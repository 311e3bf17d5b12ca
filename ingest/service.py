"""The ingestor service: MQTT messages in, storage writes, acknowledgements after storage.

Delivery guarantee, kept here and nowhere else: a message is acknowledged to the broker only
after every reading it carries is stored (or dead-lettered with a reason), and its batch is
confirmed on ``citysense/v1/{gateway}/stored`` at the same moment. Anything not acknowledged
when the process dies is delivered again by the broker (persistent session) or re-sent by the
gateway; writes are idempotent, so redelivery never duplicates.

Shape: paho's thread queues messages; the *collector* decodes them (pure pipeline) into a
batch that is due at ``write_batch_points`` points, after ``write_max_delay``, or when a quarter
of the receive window is waiting; a due batch goes to one of two concurrent writer tasks, or,
while both are busy, keeps growing (up to :data:`BATCH_GROWTH` times the batch size) so that
slow storage gets fewer, bigger writes. Writers retry retryable errors with capped back-off,
never giving up; the *acker* takes finished batches strictly in order, publishes
confirmations and acknowledges.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt

from citysense import prometheus, topics
from citysense.backoff import Backoff
from citysense.config import Settings, broker_url, parse_hostport
from citysense.connectivity import Connectivity
from citysense.errors import RetryableError
from citysense.health import Health, health_route
from citysense.topics import gateway_of_topic
from ingest.consumer import Message, MqttConsumer
from ingest.deadletters import FILENAME as DEAD_LETTER_FILE
from ingest.deadletters import DeadLetterStore
from ingest.metrics import IngestMetrics
from ingest.pipeline import DeadLetter, SeqTracker, process_message
from timeseries.connection import target_address
from timeseries.factory import open_writer
from timeseries.lineprotocol import LineFastPath, LineSerializer
from timeseries.rollup import RollupWorker, maintain_rollups, with_rollup_marks
from timeseries.schema import Point
from timeseries.writer import LineWriter, TargetMissingError, Writer, WriteResult

log = logging.getLogger(__name__)

#: What GET /health reports on.
HEALTH_DEPENDS_ON = ("broker", "store")
T = TypeVar("T")

DEFAULT_METRICS_BIND = "127.0.0.1:9102"
WRITE_CONCURRENCY = 2
#: While every write slot is busy a batch may grow to this many times --write-batch-points.
BATCH_GROWTH = 4
SHUTDOWN_TIMEOUT = 10.0
#: Longest wait at start for the broker's first answer (a refusal then exits 2).
MQTT_START_CHECK = 15.0


@dataclass(slots=True)
class _Batch:
    """Messages whose points are written together and acknowledged together."""

    messages: list[Message] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)  #: for the embedded store
    lines: list[str] = field(default_factory=list)  #: for InfluxDB, serialised once
    dead: list[DeadLetter] = field(default_factory=list)
    readings: int = 0
    #: (gateway, seq) -> readings that this batch writes for it
    seq_readings: dict[tuple[str, int], int] = field(default_factory=dict)
    #: gateway -> seqs to confirm, with each batch's payload digest
    confirm: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))


class Ingestor:
    """One ingestor: consumer, pipeline, writer, dead letters, acks (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        writer: Writer,
        dead_letters: DeadLetterStore,
        metrics: IngestMetrics,
        *,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        subscription: str = topics.INGEST_SHARED_SUBSCRIPTION,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.subscription = subscription
        self.health = health or Health(HEALTH_DEPENDS_ON, settings.unhealthy_after)
        self.writer = writer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.protocol = protocol
        self.tracker = SeqTracker()
        self._wake = asyncio.Event()
        self._unacked = 0
        self._max_points = settings.write_batch_points
        self._flush_messages = max(1, settings.receive_maximum // 4)
        self._max_age_ms = int(settings.max_age * 1000)
        self._slots = asyncio.Semaphore(WRITE_CONCURRENCY)
        self._submitted = asyncio.Event()
        #: batches being stored, oldest first: acknowledged strictly in this order
        self._inflight: collections.deque[tuple[_Batch, asyncio.Task[None]]] = collections.deque()
        self._serializer = LineSerializer()
        # InfluxDB writers take line protocol: valid messages go straight to lines.
        self._line_writer: LineWriter | None = (
            writer if callable(getattr(writer, "write_lines", None)) else None  # type: ignore[assignment]
        )
        self._fast = LineFastPath(self._max_age_ms) if self._line_writer is not None else None
        self.consumer: MqttConsumer | None = None
        broker = broker_url(settings, topics.DEFAULT_MQTT)
        self.broker_state = Connectivity("broker", f"{broker.host}:{broker.port}", log)
        self.store_state = Connectivity("store", target_address(settings), log)
        metrics.seq_gaps = lambda: self.tracker.gaps
        metrics.seq_repeats = lambda: self.tracker.repeats
        metrics.in_flight = lambda: self._unacked + (self.consumer.queued if self.consumer else 0)

    # ------------------------------------------------------------------ running

    def _new_consumer(self, protocol: mqtt.MQTTProtocolVersion) -> MqttConsumer:
        broker = broker_url(self.settings, topics.DEFAULT_MQTT)
        return MqttConsumer(
            broker,
            ingest_client_id(self.settings),
            self.settings.receive_maximum,
            asyncio.get_running_loop(),
            self._wake.set,
            protocol=protocol,
            subscription=self.subscription,
            state=self.broker_state,
        )

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Consume until cancelled; on cancellation finish in-flight writes (bounded)."""
        self.consumer = self._new_consumer(self.protocol)
        self.consumer.start()
        try:
            # refused credentials or certificates: one line and exit 2
            await self.consumer.watch.settled(MQTT_START_CHECK)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch_connection(ready))
                tasks.create_task(self._collect())
                tasks.create_task(self._ack_in_order())
        finally:
            await self._shutdown()

    async def _watch_connection(self, ready: asyncio.Event | None) -> None:
        announced = False
        while True:
            consumer = self.consumer
            assert consumer is not None
            if consumer.unsupported_v5.is_set() and consumer.protocol == mqtt.MQTTv5:
                log.warning("falling back to MQTT 3.1.1")
                await asyncio.to_thread(consumer.stop, 2.0)
                self.consumer = self._new_consumer(mqtt.MQTTv311)
                self.consumer.start()
                continue
            self._summarise()
            self.health.observe("broker", consumer.connected.is_set())
            if not announced and consumer.subscribed.is_set():
                log.info("ingestor ready: subscribed to %s", consumer.subscription)
                announced = True
                if ready is not None:
                    ready.set()
            await asyncio.sleep(1.0 if announced else 0.05)

    def _summarise(self) -> None:
        """While the broker or the store is down: one summary line per interval each."""
        if self.broker_state.summary_due():
            self.broker_state.summarise(f"{self._unacked} messages held unacknowledged")
        if self.store_state.summary_due():
            self.store_state.summarise(f"{self._unacked} messages wait for storage")

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        batch = _Batch()
        deadline: float | None = None
        cap = self._max_points * BATCH_GROWTH
        while True:
            size = len(batch.points) + len(batch.lines)
            due = deadline is not None and (
                loop.time() >= deadline
                or size >= self._max_points
                or len(batch.messages) >= self._flush_messages
            )
            if due and (not self._slots.locked() or size >= cap):
                await self._submit(batch)
                batch, deadline = _Batch(), None
                continue
            # Due but every write slot busy: wait for a message or a finished write (both
            # set the event), meanwhile the batch grows -- bigger writes while storage is slow.
            timeout = None if deadline is None or due else max(0.0, deadline - loop.time())
            if not self._wake.is_set():
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                # that arrives as the inner wait completes.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            self._wake.clear()
            assert self.consumer is not None
            now_ms = int(time.time() * 1000)
            for message in self.consumer.drain():
                self._add(batch, message, now_ms)
                size = len(batch.points) + len(batch.lines)
                if size >= cap or (size >= self._max_points and not self._slots.locked()):
                    await self._submit(batch)
                    batch, deadline = _Batch(), None
            if batch.messages and deadline is None:
                deadline = loop.time() + self.settings.write_max_delay

    def _add(self, batch: _Batch, message: Message, now_ms: int) -> None:
        self.metrics.messages += 1
        self._unacked += 1
        batch.messages.append(message)
        gateway = gateway_of_topic(message.topic)
        if self._fast is not None and gateway is not None:
            fast = self._fast.lines(gateway, message.payload, now_ms)
            if fast is not None:
                seq, readings, lines = fast
                if not self._seen(batch, gateway, seq, message.payload):
                    batch.lines.extend(lines)
                    batch.readings += readings
                    batch.seq_readings[(gateway, seq)] = readings
                return
        result = process_message(message.topic, message.payload, now_ms, self._max_age_ms)
        if result.seq is None or result.topic_gateway is None:
            batch.dead.extend(result.dead)
            return
        if self._seen(batch, result.topic_gateway, result.seq, message.payload):
            return  # its points are stored and its dead letters kept already
        batch.dead.extend(result.dead)
        if self._fast is not None:
            batch.lines.extend(self._serializer.line(p) for p in result.points)
        else:
            batch.points.extend(result.points)
        batch.readings += result.readings
        batch.seq_readings[(result.topic_gateway, result.seq)] = result.readings

    def _seen(self, batch: _Batch, gateway: str, seq: int, payload: bytes) -> bool:
        """Note the batch for confirmation; ``True`` if it is known stored (write nothing)."""
        digest = hash(payload)
        batch.confirm[gateway].append((seq, digest))
        if self.tracker.observe(gateway, seq, digest):
            self.metrics.repeats_skipped += 1
            return True
        return False

    async def _submit(self, batch: _Batch) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._store(batch))
        task.add_done_callback(self._write_done)
        self._inflight.append((batch, task))
        self._submitted.set()
        # Let the write go out now, while the next batch is decoded (and let the rest of the
        # event loop run: a drain can hold thousands of messages).
        await asyncio.sleep(0)

    def _write_done(self, task: asyncio.Task[None]) -> None:
        self._slots.release()
        self._wake.set()  # a batch waiting for a free slot may go now

    async def _store(self, batch: _Batch) -> None:
        """Write the batch's points and keep its dead letters; retry until both are done."""
        dead = list(batch.dead)
        for items in (batch.lines, batch.points):
            if not items:
                continue
            result = await self._retrying(self._write, items)
            for rejected in result.rejected:
                point = rejected.point
                if isinstance(point, str):
                    payload, gateway = point.encode(), None
                else:
                    payload, gateway = self._serializer.line(point).encode(), point.tags[4]
                dead.append(
                    DeadLetter(rejected.reason, rejected.message, "storage", payload, gateway)
                )
            self.metrics.points_written += result.written
        if dead:
            at_ms = int(time.time() * 1000)
            await self._retrying(self._keep_dead, dead, at_ms)
            for letter in dead:
                self.metrics.dead_letters[letter.reason] += 1
            log.warning(
                "dead-lettered %d item(s): %s",
                len(dead),
                ", ".join(sorted({d.reason for d in dead})),
            )

    async def _write(self, items: list[str] | list[Point]) -> WriteResult:
        started = time.perf_counter()
        if items and isinstance(items[0], str):
            assert self._line_writer is not None
            result = await self._line_writer.write_lines(items)
        else:
            result = await self.writer.write(items)  # type: ignore[arg-type]
        self.metrics.observe_write(time.perf_counter() - started)
        self.metrics.writes += 1
        return result

    async def _keep_dead(self, dead: list[DeadLetter], at_ms: int) -> int:
        return await asyncio.to_thread(self.dead_letters.add, dead, at_ms)

    async def _retrying(self, op: Callable[..., Awaitable[T]], *args: object) -> T:
        cap = max(self.settings.retry_max_delay, 0.2)
        backoff = Backoff(0.2, cap, jitter=True)
        while True:
            try:
                result = await op(*args)
            except RetryableError as exc:
                self.health.observe("store", False)
                self.metrics.retries += 1
                wait = backoff.delay()
                if exc.retry_after is not None:
                    wait = max(wait, min(exc.retry_after, max(cap, 1.0) * 10))
                # a missing database is ours to fix, not a passing outage
                missing = isinstance(exc, TargetMissingError)
                self.store_state.failed(
                    str(exc), level=logging.ERROR if missing else logging.WARNING
                )
                await asyncio.sleep(wait)
            else:
                self.store_state.recovered()
                self.health.observe("store", True)
                return result

    async def _ack_in_order(self) -> None:
        while True:
            if not self._inflight:
                self._submitted.clear()
                await self._submitted.wait()
                continue
            batch, task = self._inflight[0]
            await asyncio.shield(task)
            self._inflight.popleft()
            self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        """The batch is stored: confirm its seqs, acknowledge its messages."""
        consumer = self.consumer
        assert consumer is not None
        new = 0
        for gateway, seqs in batch.confirm.items():
            for seq, digest in seqs:
                written = batch.seq_readings.pop((gateway, seq), 0)
                if self.tracker.known(gateway, seq, digest):
                    # a re-send written while its first copy was still being written: the
                    # store holds its readings once (same keys), so they are not new
                    self.metrics.readings_rewritten += written
                else:
                    new += written
                self.tracker.stored(gateway, seq, digest)
            body = topics.encode_stored(s for s, _ in seqs)
            consumer.publish(topics.topic(gateway, topics.STORED), body)
        consumer.ack(batch.messages)
        self._unacked -= len(batch.messages)
        self.metrics.readings_written += new

    async def _shutdown(self) -> None:
        """Finish the writes in flight (bounded), acknowledge them in order, disconnect."""
        tasks = [task for _, task in self._inflight]
        if tasks:
            _, not_done = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)
            for task in not_done:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            while self._inflight:
                batch, task = self._inflight.popleft()
                if task.cancelled() or task.exception() is not None:
                    break  # the rest stays unacknowledged: the broker delivers it again
                self._finish(batch)
            self._inflight.clear()
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.stop)


def ingest_client_id(settings: Settings) -> str:
    """``--client-id``, else ``citysense-ingest-<instance>`` (instance: the host name)."""
    if settings.client_id:
        return settings.client_id
    return topics.client_id("ingest", settings.instance or socket.gethostname())


def open_dead_letters(settings: Settings, metrics: IngestMetrics) -> DeadLetterStore:
    """The dead-letter store with the bounds of ``settings``; evictions counted and logged."""

    def evicted(cause: str, n: int) -> None:  # in the thread that added dead letters
        metrics.dead_letters_evicted[cause] += n
        log.warning("dead letters: %d evicted (%s bound)", n, cause)

    return DeadLetterStore(
        Path(settings.state_dir) / DEAD_LETTER_FILE,
        max_bytes=int(settings.dead_letter_max_mb * 1024 * 1024),
        max_age_ms=int(settings.dead_letter_days * 86_400_000),
        on_evicted=evicted,
    )


async def serve(
    settings: Settings,
    ready: asyncio.Event | None = None,
    *,
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
    subscription: str = topics.INGEST_SHARED_SUBSCRIPTION,
) -> None:
    """Run an ingestor until cancelled; ``ready`` is set once it is subscribed (to the
    ingestors' shared subscription unless told another)."""
    metrics = IngestMetrics()
    health = Health(HEALTH_DEPENDS_ON, settings.unhealthy_after)
    async with AsyncExitStack() as stack:
        # /metrics and /health first: a supervisor sees what the ingestor waits on at start
        rollups: RollupWorker | None = None  # running once the writer is open
        bind = settings.metrics_bind or DEFAULT_METRICS_BIND
        if bind != "off":
            host, port = parse_hostport(bind, "--metrics-bind")

            async def exposition() -> str:
                extra = "\n".join(rollups.exposition()) + "\n" if rollups is not None else ""
                return metrics.render() + extra

            server = await prometheus.serve_http(
                {
                    "/metrics": prometheus.metrics_route(exposition),
                    "/health": health_route(health),
                },
                host,
                port,
            )
            stack.push_async_callback(prometheus.close_server, server)
        writer = with_rollup_marks(await stack.enter_async_context(open_writer(settings)), settings)
        health.observe("store", True)
        rollups = await stack.enter_async_context(maintain_rollups(settings, writer))
        store = await asyncio.to_thread(open_dead_letters, settings, metrics)
        stack.callback(store.close)
        ingestor = Ingestor(
            settings,
            writer,
            store,
            metrics,
            protocol=protocol,
            subscription=subscription,
            health=health,
        )
        await ingestor.run(ready)
