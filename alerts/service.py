"""``citysense alerts``: evaluation loop, delivery loops, MQTT client and the HTTP server.

Evaluation runs every ``--interval`` seconds: each rule is observed (a failing rule is logged
and counted; the others go on), the engine decides, and all raises and clears of the cycle are
committed with their events in one transaction before any delivery loop is woken. Delivery
runs in its own tasks (:mod:`alerts.notify`) and never holds up evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Generator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion

from alerts.engine import Engine, Transition
from alerts.http import AlarmsBackend, create_app
from alerts.notify import (
    DeliveryError,
    DeliveryStats,
    Dispatcher,
    MqttAlarms,
    Receiver,
    Webhook,
    parse_webhook,
)
from alerts.rules import Rule, load_rules
from alerts.sources import (
    STATUS_SUBSCRIPTION,
    Cycle,
    DeviceDirectory,
    GatewayStatus,
    Reads,
    observe,
)
from alerts.store import AlarmStore
from citysense import topics
from citysense.apikeys import KeyStore, load_keys_file
from citysense.config import (
    ALERTS_DEFAULT_BIND,
    BrokerUrl,
    Settings,
    broker_url,
    parse_api_keys,
    parse_hostport,
)
from citysense.errors import ConfigError, RegistryError
from citysense.mqttsecurity import secure
from citysense.registry import Device, load_registry
from citysense.serving import listen_socket
from timeseries.query import Reader, open_reader

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per delivery is ours to log
API_DEFAULT_BIND = "127.0.0.1:8000"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _now_ms() -> int:
    return int(time.time() * 1000)


def bind_of(settings: Settings) -> str:
    return ALERTS_DEFAULT_BIND if settings.bind == API_DEFAULT_BIND else settings.bind


@dataclass
class EvalStats:
    cycles: int = 0
    rules_evaluated: int = 0
    rule_errors: int = 0
    seconds_sum: float = 0.0
    last_seconds: float = 0.0
    raised: int = 0
    cleared: int = 0
    errors_by_rule: dict[str, int] = field(default_factory=dict)


class MqttSide:
    """One paho client: the gateways' retained status in, the alarm topics out."""

    def __init__(self, broker: BrokerUrl, status: GatewayStatus, client_id: str) -> None:
        self.broker = broker
        self.status = status
        self.connected = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.watch = secure(client, broker)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.watch.connack(reason)
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker refused alerts: %s", reason)
            return
        client.subscribe(STATUS_SUBSCRIPTION, qos=1)
        self.connected.set()
        log.info("MQTT: connected to %s:%d", self.broker.host, self.broker.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()
        log.warning("MQTT: disconnected (%s)", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.status.update(msg.topic, bytes(msg.payload), _now_ms())

    def start(self) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool, timeout: float) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK (blocking)."""
        if not self.client.is_connected():
            raise DeliveryError("not connected to the MQTT broker")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeliveryError(f"publish failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise DeliveryError(f"publish failed: {exc}") from exc
        if not info.is_published():
            raise DeliveryError("no PUBACK from the broker in time")


class AlertService:
    def __init__(
        self,
        settings: Settings,
        *,
        rules: list[Rule] | None = None,
        reader: Reader | None = None,
        registry: Mapping[str, Device] | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules if rules is not None else load_rules(settings.rules or "")
        self.keys = KeyStore(
            parse_api_keys(settings.api_keys),
            load_keys_file(settings.api_keys_file) if settings.api_keys_file else [],
        )
        self.bind = parse_hostport(bind_of(settings), "--bind")
        if self.keys.open and not _loopback(self.bind[0]):
            raise ConfigError(
                f"--bind {self.bind[0]} is not a loopback address and no --api-keys are set: "
                "the alarms API would be open to the network"
            )
        self.webhooks = [parse_webhook(w) for w in settings.webhook]
        self.secret: bytes | None = None
        if settings.webhook_secret_file:
            try:
                self.secret = Path(settings.webhook_secret_file).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"--webhook-secret-file: {exc.strerror or exc}") from exc
            if not self.secret:
                raise ConfigError("--webhook-secret-file is empty")
        if registry is None and settings.registry:
            try:
                registry = load_registry(settings.registry)
            except RegistryError as exc:
                raise ConfigError(f"--registry {settings.registry}: {exc}") from exc
        self.registry = registry
        if settings.mqtt is None and any(r.kind == "gateway_offline" for r in self.rules):
            raise ConfigError("gateway_offline rules need --mqtt (the gateways' status)")
        self._reader = reader
        self.engine = Engine()
        self.eval_stats = EvalStats()
        self.delivery_stats = DeliveryStats()
        self.status = GatewayStatus()
        self.directory = DeviceDirectory()
        self.store: AlarmStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.mqtt: MqttSide | None = None
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ evaluation

    async def evaluate(self, reads: Reads, now: int) -> list[dict[str, Any]]:
        """One cycle over every rule; raises and clears committed together."""
        assert self.store is not None and self.dispatcher is not None
        started = time.perf_counter()
        gateways = self.status if self.mqtt else None
        cycle = Cycle(reads, now, self.registry, gateways, self.settings.timezone, self.directory)
        transitions: list[Transition] = []
        for rule in self.rules:
            try:
                observations = await observe(rule, cycle)
            except Exception as exc:
                self.eval_stats.rule_errors += 1
                self.eval_stats.errors_by_rule[rule.name] = (
                    self.eval_stats.errors_by_rule.get(rule.name, 0) + 1
                )
                log.warning("rule %s (line %d) not evaluated: %s", rule.name, rule.line, exc)
                continue
            transitions += self.engine.step(rule, observations, now)
            self.eval_stats.rules_evaluated += 1
        changed: list[dict[str, Any]] = []
        if transitions:
            try:
                changed = await asyncio.to_thread(
                    self.store.apply, transitions, self.dispatcher.names
                )
            except Exception:
                log.exception("alarm state could not be written; retried next cycle")
                for t in transitions:  # back to what the store says
                    if t.action == "raise":
                        self.engine.forget(t.rule.name, t.key)
                    else:
                        self.engine.set_active(t.rule.name, t.key)
            else:
                for a in changed:
                    log.info(
                        "alarm %s %s: %s %s value %s",
                        a["id"],
                        a["state"],
                        a["rule"],
                        a["subject"],
                        a["value"],
                    )
                self.eval_stats.raised += sum(t.action == "raise" for t in transitions)
                self.eval_stats.cleared += sum(t.action == "clear" for t in transitions)
                self.dispatcher.wake()
        elapsed = time.perf_counter() - started
        self.eval_stats.cycles += 1
        self.eval_stats.seconds_sum += elapsed
        self.eval_stats.last_seconds = elapsed
        return changed

    async def _evaluate_forever(self, reads: Reads) -> None:
        interval = self.settings.interval
        while True:
            started = time.monotonic()
            try:
                await self.evaluate(reads, _now_ms())
            except Exception:  # never the end of evaluation: logged, next cycle
                log.exception("evaluation cycle failed")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    # ------------------------------------------------------------------ HTTP backend

    async def acknowledge(self, alarm_id: str, by: str, comment: str) -> dict[str, Any]:
        assert self.store is not None and self.dispatcher is not None
        alarm = await asyncio.to_thread(
            self.store.acknowledge, alarm_id, by, comment, _now_ms(), self.dispatcher.names
        )
        self.dispatcher.wake()
        return alarm

    def metrics_text(self) -> str:
        assert self.store is not None
        st = self.store.stats(_now_ms())
        e, d = self.eval_stats, self.delivery_stats
        names = self.dispatcher.names if self.dispatcher else []
        lines = [
            "# HELP citysense_alerts_rules Rules loaded.",
            "# TYPE citysense_alerts_rules gauge",
            f"citysense_alerts_rules {len(self.rules)}",
            "# TYPE citysense_alerts_rules_evaluated_total counter",
            f"citysense_alerts_rules_evaluated_total {e.rules_evaluated}",
            "# TYPE citysense_alerts_rule_errors_total counter",
            f"citysense_alerts_rule_errors_total {e.rule_errors}",
            "# TYPE citysense_alerts_evaluation_seconds summary",
            f"citysense_alerts_evaluation_seconds_sum {e.seconds_sum:.6f}",
            f"citysense_alerts_evaluation_seconds_count {e.cycles}",
            "# TYPE citysense_alerts_evaluation_last_seconds gauge",
            f"citysense_alerts_evaluation_last_seconds {e.last_seconds:.6f}",
            "# TYPE citysense_alerts_alarms gauge",
        ]
        lines += [f'citysense_alerts_alarms{{state="{s}"}} {n}' for s, n in st["alarms"].items()]
        oldest_s = {r: f"{st['oldest_ms'].get(r, 0) / 1000:.3f}" for r in names}
        per_receiver = (  # name, type, value by receiver (0 when absent)
            ("notifications_pending", "gauge", st["pending"]),
            ("notifications_delivered_total", "counter", d.delivered),
            ("notifications_retried_total", "counter", d.retried),
            ("oldest_undelivered_seconds", "gauge", oldest_s),
        )
        for name, kind, by_receiver in per_receiver:
            lines.append(f"# TYPE citysense_alerts_{name} {kind}")
            lines += [
                f'citysense_alerts_{name}{{receiver="{r}"}} {by_receiver.get(r, 0)}' for r in names
            ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ running

    @asynccontextmanager
    async def _reader_cm(self) -> AsyncIterator[Reader]:
        if self._reader is not None:
            yield self._reader
        else:
            async with open_reader(self.settings) as reader:
                yield reader

    async def run(self) -> None:
        """Run until cancelled."""
        async with AsyncExitStack() as stack:
            self.store = await asyncio.to_thread(AlarmStore, self.settings.state_dir)
            stack.callback(self.store.close)
            self.engine.restore(await asyncio.to_thread(self.store.open_pairs))
            receivers: list[Receiver] = []
            for template, url in self.webhooks:
                hook = Webhook(url, template, self.secret, self.settings.webhook_timeout)
                stack.push_async_callback(hook.aclose)
                receivers.append(hook)
            if self.webhooks and self.secret is None:
                log.warning("no --webhook-secret-file: webhook bodies are not signed")
            if self.settings.mqtt:
                client_id = self.settings.client_id or topics.client_id(
                    "alerts", self.settings.instance or socket.gethostname()
                )
                self.mqtt = MqttSide(
                    broker_url(self.settings, self.settings.mqtt), self.status, client_id
                )
                self.mqtt.start()
                stack.callback(self.mqtt.stop)
                receivers.append(MqttAlarms(self.mqtt.publish, self.settings.webhook_timeout))
            self.dispatcher = Dispatcher(
                self.store, receivers, self.settings.retry_max_delay, self.delivery_stats
            )
            reader = await stack.enter_async_context(self._reader_cm())
            reads = Reads(reader)
            backend = AlarmsBackend(
                self.store.alarms,
                self.store.alarm,
                self.acknowledge,
                lambda: [r.public() for r in self.rules],
                self.metrics_text,
            )
            app = create_app(backend, self.keys, self.settings.rate_limit)
            if self.keys.open:
                log.warning(
                    "no API keys configured: the alarms API is open to anyone who can reach it"
                )
            log.info(
                "alerts: %d rules every %.1f s over %s; %d receivers",
                len(self.rules),
                self.settings.interval,
                reader.description,
                len(receivers),
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._serve(app), name="alerts-http")
                tg.create_task(self.dispatcher.run(), name="alerts-delivery")
                tg.create_task(self._evaluate_forever(reads), name="alerts-evaluation")

    async def _serve(self, app: Any) -> None:
        host, port = self.bind
        sock = listen_socket(host, port, f"{host}:{port}")
        config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", log_config=None, access_log=False
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError(f"the alarms API could not start on {host}:{port}")
                await asyncio.wait({task}, timeout=0.02)
            log.info("alarms API on http://%s:%d", host, port)
            self.started.set()
            await asyncio.shield(task)
        except asyncio.CancelledError:
            server.should_exit = True
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            raise
        finally:
            sock.close()


#: The packaged default rule set (used by ``citysense demo``).
DEFAULT_RULES = Path(__file__).with_name("default_rules.toml")


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run ``citysense alerts`` in the caller's event loop until cancelled (``ready`` is set
    once its HTTP API answers)."""
    service = AlertService(settings)
    task = asyncio.create_task(service.run(), name="alerts")
    started = asyncio.create_task(service.started.wait())
    try:
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if ready is not None and service.started.is_set():
            ready.set()
        await task
    finally:
        started.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals belong to the caller
