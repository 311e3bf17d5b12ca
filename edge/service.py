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
import aiocoap.interfaces

from citysense import prometheus, topics
from citysense.backoff import Backoff
from citysense.catalog import DEFAULT_MAX_AGE_MS
from citysense.compat import aiocoap as compat_aiocoap
from citysense.compat.aiocoap import GatewayTuning
from citysense.config import Settings, broker_url, parse_hostport, parse_serial
from citysense.credentials import DTLS_PSK, OSCORE, read_device_keys
from citysense.errors import CitysenseError, ConfigError, InputError, RetryableError
from citysense.health import Health, health_route
from citysense.registry import Device, Registry, load_registry_option
from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON
from edge import clock, coap_site
from edge.coap_site import Answer
from edge.compat import dtls as dtls_compat
from edge.compat import oscore as oscore_compat
from edge.devicekeys import DeviceClaim, DeviceKeyStore, claim_of
from edge.devicetrust import DeviceTrust, Verdict, scheme_of
from edge.downlink import parse_command, response_payload
from edge.intake import FORBIDDEN, TOO_LARGE, UNSUPPORTED_FORMAT, Intake, UplinkRefused
from edge.linkstate import claim_coap, exclusive, report_outbox_at_stop, watch_link
from edge.metrics import Labels, Metrics
from edge.outbox import EVICT_OLDEST, OutboxConflictError, OutboxFullError, SqliteOutbox
from edge.uplink import MqttLink, Uplink
from firmware_bridge.source import Datagram, RadioReport, SerialHealth, SerialSource, new_health

log = logging.getLogger(__name__)

DEFAULT_METRICS_BIND = "127.0.0.1:9101"
#: Receive buffer asked for the CoAP socket (the kernel default holds ~166 datagrams).
COAP_RCVBUF = 4 * 1024 * 1024
COAPS_PORT = 5684
#: Max-Age of a 5.03 answer when the outbox is full or failing, seconds.
FULL_MAX_AGE = 30
FAILING_MAX_AGE = 10
DRAIN_TIMEOUT = 3.0
#: Longest wait at start for the broker's first answer (a refusal then exits 2).
MQTT_START_CHECK = 15.0
GC_THRESHOLD = 50_000
#: How long an answer may wait for the outbox commit and still ride on the ACK, seconds.
#: aiocoap's default (0.1 s) turns answers that queue behind a commit under load into
#: separate responses, which doubles the datagrams per uplink; below the device's ACK_TIMEOUT
#: (2 s) a piggybacked answer never makes the device retransmit.
PIGGYBACK_WINDOW = 1.0
#: How long aiocoap keeps each answer to recognise a retransmitted CON, seconds. RFC 7252's
#: EXCHANGE_LIFETIME (247 s) adds a 100 s worst-case network latency each way to the 45 s a
#: device spends retransmitting; aiocoap holds every answer (with its request) that long, which
#: at thousands of uplinks per second is most of the process's memory. 60 s covers a device's
#: whole retransmission span; a later duplicate is absorbed by the outbox's idempotency.
DEDUP_WINDOW = 60.0
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


def content_format_of(payload: bytes) -> int | None:
    """SenML JSON (first non-space byte ``[``) or CBOR (major type 4) of a serial datagram."""
    stripped = payload.lstrip()
    if stripped[:1] == b"[":
        return CF_SENML_JSON
    if payload[:1] and payload[0] >> 5 == 4:
        return CF_SENML_CBOR
    return None


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

    # ------------------------------------------------------------------ serial

    async def on_datagram(self, datagram: Datagram) -> None:
        payload = datagram.payload
        answer = await self._accept(
            payload, content_format_of(payload), f"serial:{datagram.module_imei}"
        )
        self.metrics.inc("citysense_edge_serial_datagrams_total", code=answer.code)
        if answer.code != coap_site.CHANGED:
            log.debug(
                "datagram via module %s from %s refused: %s %s",
                datagram.module_imei,
                datagram.remote,
                answer.code,
                answer.payload.decode(errors="replace"),
            )

    async def on_radio(self, report: RadioReport) -> None:
        imei = report.imei
        device_id = next(
            (d for d in (f"urn:imei:{imei}", imei) if d in self.registry), f"urn:imei:{imei}"
        )
        try:
            reading = self.intake.health_reading(device_id, report.t_ms, report.values, _now_ms())
        except UplinkRefused:
            self.metrics.inc("citysense_edge_unknown_modules_total")
            if imei not in self.unknown_modules:
                self.unknown_modules.add(imei)
                log.warning("module IMEI %s is not in the registry: radio figures dropped", imei)
            return
        if reading is None:
            return
        try:
            await self.outbox.add([reading])
        except RetryableError as exc:
            log.error("cannot store radio figures of %s: %s", imei, exc)
            return
        self.uplink.notify(1)

    # ------------------------------------------------------------------ metrics

    async def gauges(self) -> Mapping[str, Mapping[Labels, float]]:
        out: dict[str, dict[Labels, float]] = {
            "citysense_edge_inflight_batches": {(): self.uplink.inflight},
            "citysense_edge_mqtt_connected": {
                (): 1.0 if self.link is not None and self.link.connected.is_set() else 0.0
            },
        }
        if self.keys is not None:
            out["citysense_edge_oscore_contexts_open"] = {(): self.keys.open_contexts}
            out["citysense_edge_device_keys"] = {
                (("scheme", scheme),): n for scheme, n in self.keys.schemes().items()
            }
            out["citysense_edge_device_auth_optional"] = {(): 0.0 if self.trust.required else 1.0}
        if self.dtls is not None:
            out["citysense_edge_dtls_sessions"] = {(): self.dtls.states}
        try:
            stats = await self.outbox.stats()
        except CitysenseError:
            return out
        out["citysense_edge_outbox_depth"] = {(): stats.depth}
        out["citysense_edge_outbox_bytes"] = {(): stats.used_bytes}
        age = 0.0 if stats.oldest_ms is None else max(0.0, (_now_ms() - stats.oldest_ms) / 1000)
        out["citysense_edge_outbox_oldest_age_seconds"] = {(): age}
        out["citysense_edge_next_seq"] = {(): float(await self.outbox.next_seq())}
        out["citysense_edge_serial_module_up"] = {
            (("device", dev),): 1.0 if health["state"] == "ready" else 0.0
            for dev, health in self.serial_health.items()
        }
        health_of = self.serial_health.items()
        out["citysense_edge_serial_module_reconnects"] = {
            (("device", dev),): h["reconnects"] for dev, h in health_of
        }
        out["citysense_edge_serial_module_reboots"] = {
            (("device", dev),): h["reboots"] for dev, h in health_of
        }
        out["citysense_edge_serial_module_garbage_lines"] = {
            (("device", dev),): h["garbage_lines"] for dev, h in health_of
        }
        return out


def open_device_keys(
    settings: Settings, state_dir: Path, metrics: Metrics
) -> DeviceKeyStore | None:
    """The device keys of ``--device-keys``, or ``None`` (logged: devices unauthenticated)."""
    if settings.device_keys is None:
        if settings.device_auth == "required":
            raise ConfigError("--device-auth required needs --device-keys FILE")
        log.warning(
            "no --device-keys: devices are not authenticated; any peer on the device network "
            "can send readings for any registered device"
        )
        return None
    try:
        keys = read_device_keys(settings.device_keys)
    except InputError as exc:
        raise ConfigError(f"--device-keys {settings.device_keys}: {exc}") from exc

    def on_oscore_event(device: str, outcome: str) -> None:
        metrics.inc("citysense_edge_device_uplinks_total", scheme=OSCORE, outcome=outcome)

    store = DeviceKeyStore(keys, state_dir, on_oscore_event=on_oscore_event)
    counts = ", ".join(f"{n} {scheme}" for scheme, n in sorted(store.schemes().items()))
    log.info("device keys: %s (%s)", counts or "none", settings.device_keys)
    if settings.device_auth == "optional":
        log.warning(
            "--device-auth optional: devices without a key are accepted unauthenticated "
            "on plain CoAP"
        )
    return store


async def _start_coaps(
    settings: Settings,
    coap_host: str,
    context: aiocoap.Context,
    keys: DeviceKeyStore,
    metrics: Metrics,
) -> dtls_compat.DtlsServer:
    host, port = (
        parse_hostport(settings.coaps, "--coaps") if settings.coaps else (coap_host, COAPS_PORT)
    )
    try:
        server = await dtls_compat.start_dtls_server(
            context,
            (host, port),
            keys,
            max_states=settings.dtls_sessions,
            on_handshake=lambda outcome: metrics.inc(
                "citysense_edge_dtls_handshakes_total", outcome=outcome
            ),
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--coaps {host}:{port}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    log.info("CoAPS (DTLS 1.2 PSK) on %s:%d", host, port)
    return server


def open_registry(settings: Settings) -> Registry:
    if settings.registry is None:
        log.warning("no --registry given: every device is unknown and is answered 4.03")
        return Registry()
    return load_registry_option(settings.registry)


async def _run_serial(gw: Gateway, item: str) -> None:
    """Run one serial module, restarting it (with back-off) when it fails."""
    device, dialect = parse_serial(item)
    backoff = Backoff(1.0, max(1.0, gw.settings.retry_max_delay))
    while True:
        source = SerialSource(device, dialect)
        gw.serial_health[device] = source.health
        try:
            await source.run(gw.on_datagram, gw.on_radio)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("serial module on %s failed: %s; restarting with back-off", device, exc)
        gw.serial_health[device] = new_health("failed")
        await backoff.sleep()  # before reopening the port


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run the gateway until cancelled; ``ready`` is set once it accepts uplinks."""
    registry = open_registry(settings)
    coap_host, coap_port = claim_coap(settings.coap)  # before anything starts
    broker = broker_url(settings, topics.DEFAULT_MQTT)
    metrics = Metrics()
    state_dir = Path(settings.state_dir)
    async with AsyncExitStack() as stack:
        outbox = SqliteOutbox(
            state_dir / "outbox.db",
            quota_bytes=int(settings.outbox_quota_mb * 1024 * 1024),
            policy=settings.outbox_policy,
            on_evicted=lambda n: metrics.inc("citysense_edge_outbox_evicted_total", n),
        )
        await stack.enter_async_context(outbox)
        keys = open_device_keys(settings, state_dir, metrics)
        if keys is not None:
            stack.callback(keys.close)  # after the CoAP context stopped (LIFO)
        gw = Gateway(settings, registry, outbox, metrics, keys)
        await gw.load_commands()
        log.info(
            "gateway %s: %d registered devices, outbox %s (policy %s, %g MiB), next seq %d",
            settings.gateway,
            len(registry),
            outbox.path,
            settings.outbox_policy,
            settings.outbox_quota_mb,
            await outbox.next_seq(),
        )
        if settings.outbox_policy == EVICT_OLDEST:
            log.warning("outbox policy evict-oldest: the oldest readings go when the quota is hit")

        link = MqttLink(
            broker,
            settings.gateway,
            settings.client_id or topics.client_id("edge", settings.gateway),
            on_message=gw.on_message,
            on_connected=gw.uplink.on_connected,
            retry_max_delay=settings.retry_max_delay,
            max_inflight=settings.max_inflight_batches,
            metrics=metrics,
        )
        gw.link = link
        await gw.uplink.restore()
        link.start()
        stack.push_async_callback(link.stop)
        # refused credentials or certificates: one line and exit 2, the outbox closed intact
        await link.watch.settled(MQTT_START_CHECK)
        stack.push_async_callback(_drain, gw)

        metrics_bind = settings.metrics_bind or DEFAULT_METRICS_BIND
        if metrics_bind != "off":
            host, port = parse_hostport(metrics_bind, "--metrics-bind")

            async def exposition() -> str:
                return metrics.render(await gw.gauges())

            server = await prometheus.serve_http(
                {
                    "/metrics": prometheus.metrics_route(exposition),
                    "/health": health_route(gw.health, gw.observe_broker),
                },
                host,
                port,
            )
            stack.push_async_callback(prometheus.close_server, server)

        site: aiocoap.interfaces.Resource = coap_site.build_site(
            gw.accept,
            settings.max_uplink_bytes,
            lambda: metrics.inc("citysense_edge_rejected_total", reason="too_large"),
        )
        if keys is not None:
            site = oscore_compat.OscoreSite(site, keys)
        try:
            context = await compat_aiocoap.ServerContext.create_server_context(
                site,
                bind=(coap_host, coap_port),
                server_credentials=keys,
                transports=["udp6", "tcpserver"] if settings.coap_tcp else ["udp6"],
            )
        except OSError as exc:
            raise ConfigError(f"--coap {settings.coap}: {exc.strerror or exc}") from exc
        stack.push_async_callback(_stop_intake, gw, context)
        if keys is not None and keys.schemes().get(DTLS_PSK):
            gw.dtls = await _start_coaps(settings, coap_host, context, keys, metrics)
        if not compat_aiocoap.LEAN_RENDERING:
            log.info("aiocoap's rendering internals not found: its own request path is used")
        if not compat_aiocoap.tune_incoming(context, GatewayTuning(PIGGYBACK_WINDOW, DEDUP_WINDOW)):
            log.warning("aiocoap's message layer not found: its default CoAP timings apply")
        exclusive(context)
        granted = compat_aiocoap.raise_receive_buffer(context, COAP_RCVBUF)
        log.info(
            "CoAP on %s:%d (UDP%s; receive buffer %s bytes)",
            coap_host,
            coap_port,
            " and TCP" if settings.coap_tcp else " only",
            granted,
        )

        # Long-lived objects (the registry, modules) leave the collector's view, and young
        # collections run less often: at thousands of uplinks per second the cyclic GC's
        # passes over every live object otherwise cost a large share of the CPU.
        # Restored at the end: the process (a test run, the demo) may go on without us.
        stack.callback(gc.set_threshold, *gc.get_threshold())
        stack.callback(gc.unfreeze)
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 50, 100)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gw.uplink.run(link))
            tg.create_task(gw.expire_commands())
            tg.create_task(watch_link(gw.outbox, link))
            tg.create_task(gw.watch_health())
            for item in settings.serial:
                tg.create_task(_run_serial(gw, item))
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
