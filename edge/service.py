"""The gateway service: CoAP site + serial sources -> intake -> outbox -> MQTT uplink.

:func:`serve` runs until cancelled. Invariants:

* An uplink is answered ``2.04`` only after :meth:`SqliteOutbox.add` committed its readings;
  a failing or full outbox answers ``5.03`` with Max-Age, never a false ``2.04``.
* Handlers produce readings; only the outbox and the uplink decide when data is safe.
* On cancellation (SIGTERM): intake stops first, then whatever is unpublished is published and
  confirmations are awaited for a bounded time, then the broker sees a clean ``offline``,
  and the outbox closes. Anything left is still in the outbox for the next start.

Registry: without ``--registry`` the gateway starts with an empty registry and logs a warning;
every uplink is then answered ``4.03`` (a device not in the registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import aiocoap

from citysense import prometheus, topics
from citysense.catalog import DEFAULT_MAX_AGE_MS
from citysense.config import BrokerUrl, Settings, broker_url, parse_hostport
from citysense.credentials import DTLS_PSK
from citysense.errors import CitysenseError, InputError, RetryableError
from citysense.health import Health, health_route
from citysense.registry import Device, Registry, load_registry_option
from citysense.senml import CF_SENML_JSON
from edge import clock, coap_server, coap_site
from edge.coap_server import open_device_keys
from edge.coap_site import Answer
from edge.compat import dtls as dtls_compat
from edge.devicekeys import DeviceClaim, DeviceKeyStore, claim_of
from edge.devicetrust import DeviceTrust, Verdict, scheme_of
from edge.downlink import parse_command, response_payload
from edge.gauges import gateway_gauges
from edge.intake import FORBIDDEN, TOO_LARGE, UNSUPPORTED_FORMAT, Intake, UplinkRefused
from edge.linkstate import claim_coap, report_outbox_at_stop, watch_link
from edge.metrics import Metrics
from edge.outbox import EVICT_OLDEST, OutboxConflictError, OutboxFullError, SqliteOutbox
from edge.serial_intake import content_format_of, run_serial
from edge.uplink import MqttLink, Uplink
from firmware_bridge.source import SerialHealth

log = logging.getLogger(__name__)

__all__ = ["Gateway", "content_format_of", "open_device_keys", "open_registry", "serve"]

DEFAULT_METRICS_BIND = "127.0.0.1:9101"
#: Max-Age of a 5.03 answer when the outbox is full or failing, seconds.
FULL_MAX_AGE = 30
FAILING_MAX_AGE = 10
DRAIN_TIMEOUT = 3.0
#: Longest wait at start for the broker's first answer (a refusal then exits 2).
MQTT_START_CHECK = 15.0
GC_THRESHOLD = 50_000
EXPIRY_TICK = 1.0
#: How often the broker connection is noted for GET /health, seconds.
HEALTH_TICK = 1.0
#: Refused uplinks are summarised in one log line at most this often, seconds.
REFUSAL_LOG_INTERVAL = 60.0

_REFUSAL_CODES = {
    FORBIDDEN: coap_site.FORBIDDEN,
    TOO_LARGE: coap_site.TOO_LARGE,
    UNSUPPORTED_FORMAT: coap_site.UNSUPPORTED_FORMAT,
}


def _now_ms() -> int:
    return clock.now_ms()


class Gateway:
    """The intake pipeline and the message handlers, shared by every source."""

    def __init__(
        self,
        settings: Settings,
        registry: Mapping[str, Device],
        outbox: SqliteOutbox,
        metrics: Metrics,
        keys: DeviceKeyStore | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.outbox = outbox
        self.metrics = metrics
        self.intake = Intake(
            registry,
            max_age_ms=int(settings.max_age * 1000) if settings.max_age else DEFAULT_MAX_AGE_MS,
            max_bytes=settings.max_uplink_bytes,
        )
        self.uplink = Uplink(
            outbox,
            settings.gateway,
            metrics=metrics,
            batch_max_readings=settings.batch_max_readings,
            batch_max_delay=settings.batch_max_delay,
            resend_interval=settings.resend_interval,
            max_inflight=settings.max_inflight_batches,
        )
        self.stored_topic = topics.topic(settings.gateway, topics.STORED)
        self.down_topic = topics.topic(settings.gateway, topics.DOWN)
        self.ack_topic = topics.topic(settings.gateway, topics.ACK)
        self.link: MqttLink | None = None
        self.accepting = True
        self.commands: dict[str, int] = {}  # device -> queued commands
        self.unknown_modules: set[str] = set()
        self.serial_health: dict[str, SerialHealth] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.refusals: dict[str, int] = {}
        #: GET /health: the broker (until connected) and the outbox (while writes fail)
        self.health = Health(("broker", "store"), settings.unhealthy_after)
        self.health.observe("store", True)
        self._refusals_logged = -math.inf
        self.keys = keys
        self.dtls: dtls_compat.DtlsServer | None = None
        self.trust = DeviceTrust(
            registry,
            settings.gateway,
            keys,
            required=settings.device_auth != "optional",
            roaming=settings.roaming,
            device_rate=settings.device_rate,
            device_burst=settings.device_burst,
            source_rate=settings.source_rate,
        )

    # ------------------------------------------------------------------ uplinks

    async def accept(self, payload: bytes, content_format: int | None, source: object) -> Answer:
        """One uplink from any source: validate, store durably, answer."""
        answer = await self._accept(payload, content_format, source)
        self.metrics.inc("citysense_edge_uplinks_total", code=answer.code)
        return answer

    def count_device_uplink(self, scheme: str, outcome: str) -> None:
        self.metrics.inc("citysense_edge_device_uplinks_total", scheme=scheme, outcome=outcome)

    async def _accept(self, payload: bytes, content_format: int | None, source: object) -> Answer:
        if not self.accepting:
            return Answer(coap_site.UNAVAILABLE, b"gateway stopping", max_age=FAILING_MAX_AGE)
        now = _now_ms()
        claim = claim_of(source)
        scheme = scheme_of(claim, source)
        verdict = self.trust.check_source(claim, source, time.monotonic())
        if verdict is None:
            answer = await self._store(payload, content_format, source, claim, now)
        else:
            answer = self._refuse_verdict(verdict)
        self.count_device_uplink(
            scheme, answer.outcome or ("ok" if answer.code == coap_site.CHANGED else "refused")
        )
        return answer

    def _refuse_verdict(self, verdict: Verdict) -> Answer:
        self.metrics.inc("citysense_edge_rejected_total", reason=verdict.outcome)
        self._note_refusal(verdict.outcome, verdict.message)
        return Answer(
            verdict.code, verdict.message.encode(), max_age=verdict.max_age, outcome=verdict.outcome
        )

    async def _store(
        self,
        payload: bytes,
        content_format: int | None,
        source: object,
        claim: DeviceClaim | None,
        now: int,
    ) -> Answer:
        try:
            readings = self.intake.readings_of_uplink(payload, content_format, now)
        except UplinkRefused as exc:
            self.metrics.inc("citysense_edge_rejected_total", reason=exc.reason)
            log.debug("uplink from %s refused: %s", source, exc)
            self._note_refusal(exc.reason, str(exc))
            code = _REFUSAL_CODES.get(exc.answer, coap_site.BAD_REQUEST)
            return Answer(
                code,
                str(exc)[:120].encode(),
                size1=self.settings.max_uplink_bytes if code == coap_site.TOO_LARGE else None,
            )
        verdict = self.trust.check(claim, {r.device for r in readings}, time.monotonic())
        if verdict is not None:
            return self._refuse_verdict(verdict)
        try:
            await self.outbox.add(readings)
        except OutboxConflictError as exc:
            # another value for a (device, metric, time) held: never merged, never stored
            self.metrics.inc("citysense_edge_rejected_total", reason=exc.reason)
            self._note_refusal(exc.reason, f"{readings[0].device}: {exc}")
            return Answer(coap_site.BAD_REQUEST, b"conflicting value", outcome="conflict")
        except OutboxFullError:
            return Answer(coap_site.UNAVAILABLE, b"outbox full", max_age=FULL_MAX_AGE)
        except RetryableError as exc:
            log.error("outbox cannot store an uplink: %s", exc)
            self.health.observe("store", False)
            return Answer(coap_site.UNAVAILABLE, b"outbox unavailable", max_age=FAILING_MAX_AGE)
        self.health.observe("store", True)
        self.metrics.inc("citysense_edge_readings_accepted_total", len(readings))
        self.uplink.notify(len(readings))
        for device in {r.device for r in readings}:
            if self.commands.get(device) and self.trust.may_deliver(claim, device):
                body = await self._deliver(device, now)
                if body:
                    return Answer(coap_site.CHANGED, body, content_format=CF_SENML_JSON)
        return Answer(coap_site.CHANGED)

    def _note_refusal(self, reason: str, example: str) -> None:
        """Refused uplinks are logged as one aggregated WARNING per interval, not one each."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._refusals_logged < REFUSAL_LOG_INTERVAL:
            return
        log.warning(
            "%d uplinks refused since the last report, by reason %s; latest: %s",
            sum(self.refusals.values()),
            dict(sorted(self.refusals.items())),
            example,
        )
        self.refusals.clear()
        self._refusals_logged = now

    def observe_broker(self) -> None:
        self.health.observe("broker", self.link is not None and self.link.connected.is_set())

    async def watch_health(self) -> None:
        """Notes the broker connection every second (for GET /health)."""
        while True:
            self.observe_broker()
            await asyncio.sleep(HEALTH_TICK)  # a periodic look, not a wait for an event

    # ------------------------------------------------------------------ downlink

    async def load_commands(self) -> None:
        self.commands.update(await self.outbox.downlinks.command_devices())

    async def _deliver(self, device: str, now: int) -> bytes:
        try:
            cmd, left = await self.outbox.downlinks.take_command(device, now)
        except CitysenseError as exc:
            log.error("cannot read the downlink queue: %s", exc)
            return b""
        if left:
            self.commands[device] = left
        else:
            self.commands.pop(device, None)
        if cmd is None:
            return b""
        self._ack(cmd.id, device, "delivered")
        return response_payload(cmd)

    def _ack(self, cid: str, device: str, state: str) -> None:
        self.metrics.inc("citysense_edge_downlinks_total", state=state)
        if self.link is not None:
            self.link.publish(self.ack_topic, topics.encode_ack(cid, device, state, _now_ms()))

    async def on_down(self, payload: bytes) -> None:
        now = _now_ms()
        try:
            cmd = parse_command(payload)
        except InputError as exc:
            cid, device = topics.down_ref(payload)
            log.warning("downlink command refused: %s", exc)
            self._ack(cid, device, "rejected")
            return
        if cmd.device not in self.registry:
            log.warning("downlink command %s for unknown device %s", cmd.id, cmd.device)
            self._ack(cmd.id, cmd.device, "rejected")
            return
        if cmd.expires <= now:
            self._ack(cmd.id, cmd.device, "expired")
            return
        if await self.outbox.downlinks.queue_command(cmd, now):
            self.commands[cmd.device] = self.commands.get(cmd.device, 0) + 1
            self._ack(cmd.id, cmd.device, "queued")

    async def expire_commands(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_TICK)  # a periodic sweep, not a wait for an event
            try:
                expired = await self.outbox.downlinks.expire_commands(_now_ms())
            except CitysenseError as exc:
                log.error("cannot sweep expired downlinks: %s", exc)
                continue
            for cmd in expired:
                self._ack(cmd.id, cmd.device, "expired")

    # ------------------------------------------------------------------ MQTT in

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """Called on the loop for every message on ``.../stored`` and ``.../down``."""
        task = asyncio.get_running_loop().create_task(self._handle(topic, payload, mid, qos))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        try:
            if topic == self.stored_topic:
                seqs = topics.decode_stored(payload)
                if seqs is None:
                    log.warning("malformed confirmation on %s: %r", topic, payload[:100])
                else:
                    await self.uplink.confirmed(seqs)
            elif topic == self.down_topic:
                await self.on_down(payload)
        except CitysenseError as exc:
            # not acknowledged: the broker redelivers it on the next session
            log.error("cannot handle a message on %s: %s", topic, exc)
            return
        if self.link is not None:
            self.link.ack(mid, qos)


def open_registry(settings: Settings) -> Registry:
    if settings.registry is None:
        log.warning("no --registry given: every device is unknown and is answered 4.03")
        return Registry()
    return load_registry_option(settings.registry)


async def _open_outbox(
    stack: AsyncExitStack, settings: Settings, state_dir: Path, metrics: Metrics
) -> SqliteOutbox:
    outbox = SqliteOutbox(
        state_dir / "outbox.db",
        quota_bytes=int(settings.outbox_quota_mb * 1024 * 1024),
        policy=settings.outbox_policy,
        on_evicted=lambda n: metrics.inc("citysense_edge_outbox_evicted_total", n),
    )
    await stack.enter_async_context(outbox)
    return outbox


async def _log_start(settings: Settings, gw: Gateway) -> None:
    log.info(
        "gateway %s: %d registered devices, outbox %s (policy %s, %g MiB), next seq %d",
        settings.gateway,
        len(gw.registry),
        gw.outbox.path,
        settings.outbox_policy,
        settings.outbox_quota_mb,
        await gw.outbox.next_seq(),
    )
    if settings.outbox_policy == EVICT_OLDEST:
        log.warning("outbox policy evict-oldest: the oldest readings go when the quota is hit")


async def _connect_broker(
    stack: AsyncExitStack, settings: Settings, gw: Gateway, broker: BrokerUrl
) -> MqttLink:
    link = MqttLink(
        broker,
        settings.gateway,
        settings.client_id or topics.client_id("edge", settings.gateway),
        on_message=gw.on_message,
        on_connected=gw.uplink.on_connected,
        retry_max_delay=settings.retry_max_delay,
        max_inflight=settings.max_inflight_batches,
        metrics=gw.metrics,
    )
    gw.link = link
    await gw.uplink.restore()
    link.start()
    stack.push_async_callback(link.stop)
    # refused credentials or certificates: one line and exit 2, the outbox closed intact
    await link.watch.settled(MQTT_START_CHECK)
    stack.push_async_callback(_drain, gw)
    return link


async def _serve_metrics(stack: AsyncExitStack, settings: Settings, gw: Gateway) -> None:
    metrics_bind = settings.metrics_bind or DEFAULT_METRICS_BIND
    if metrics_bind == "off":
        return
    host, port = parse_hostport(metrics_bind, "--metrics-bind")

    async def exposition() -> str:
        return gw.metrics.render(await gateway_gauges(gw))

    server = await prometheus.serve_http(
        {
            "/metrics": prometheus.metrics_route(exposition),
            "/health": health_route(gw.health, gw.observe_broker),
        },
        host,
        port,
    )
    stack.push_async_callback(prometheus.close_server, server)


async def _start_coap(stack: AsyncExitStack, gw: Gateway, bind: tuple[str, int]) -> None:
    settings, keys = gw.settings, gw.keys
    context = await coap_server.open_context(settings, gw.accept, keys, gw.metrics, bind)
    stack.push_async_callback(_stop_intake, gw, context)
    if keys is not None and keys.schemes().get(DTLS_PSK):
        gw.dtls = await coap_server.start_coaps(settings, bind[0], context, keys, gw.metrics)
    coap_server.tune_context(settings, context, bind)


def _relax_gc(stack: AsyncExitStack) -> None:
    # Long-lived objects (the registry, modules) leave the collector's view, and young
    # collections run less often: at thousands of uplinks per second the cyclic GC's
    # passes over every live object otherwise cost a large share of the CPU.
    # Restored at the end: the process (a test run, the demo) may go on without us.
    stack.callback(gc.set_threshold, *gc.get_threshold())
    stack.callback(gc.unfreeze)
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run the gateway until cancelled; ``ready`` is set once it accepts uplinks."""
    registry = open_registry(settings)
    coap_bind = claim_coap(settings.coap)  # before anything starts
    broker = broker_url(settings, topics.DEFAULT_MQTT)
    metrics = Metrics()
    state_dir = Path(settings.state_dir)
    async with AsyncExitStack() as stack:
        outbox = await _open_outbox(stack, settings, state_dir, metrics)
        keys = open_device_keys(settings, state_dir, metrics)
        if keys is not None:
            stack.callback(keys.close)  # after the CoAP context stopped (LIFO)
        gw = Gateway(settings, registry, outbox, metrics, keys)
        await gw.load_commands()
        await _log_start(settings, gw)
        link = await _connect_broker(stack, settings, gw, broker)
        await _serve_metrics(stack, settings, gw)
        await _start_coap(stack, gw, coap_bind)
        _relax_gc(stack)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gw.uplink.run(link))
            tg.create_task(gw.expire_commands())
            tg.create_task(watch_link(gw.outbox, link))
            tg.create_task(gw.watch_health())
            for item in settings.serial:
                tg.create_task(run_serial(gw, item))
            if ready is not None:
                ready.set()


async def _stop_intake(gw: Gateway, context: aiocoap.Context) -> None:
    log.info("stopping: CoAP intake closed, publishing what is left")
    gw.accepting = False
    with contextlib.suppress(Exception):
        await asyncio.wait_for(context.shutdown(), 5)


async def _drain(gw: Gateway) -> None:
    """Publish what is left, wait (bounded) for its confirmation, and say what stays."""
    try:
        await asyncio.wait_for(gw.uplink.drain(), DRAIN_TIMEOUT)
    except (TimeoutError, CitysenseError):
        pass
    await report_outbox_at_stop(gw.outbox)
    for task in list(gw.tasks):
        task.cancel()
