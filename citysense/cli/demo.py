"""``citysense demo``: the whole city on one machine, every part in one event loop.

This is the composition root: it imports every package and starts, in order,

1. the MQTT broker -- the embedded one (:mod:`mqtt_broker`) on a free loopback port, or
   the server named by ``--mqtt``;
2. the ingestor (``ingest.service.serve``) writing to the embedded SQLite store in the state
   directory, or to the InfluxDB named by ``--influx``;
3. the gateway (``edge.service.serve``) with CoAP on a free loopback UDP port;
4. the alarms service (``alerts.service.serve``) on a free loopback port with the default
   rule set (``--rules`` names another), its active alarms shown on the dashboard;
5. the API and dashboard (``dashboard_api.service.serve``) on ``--bind``;
6. ``--backfill-hours`` of history written straight to storage, so charts are not empty;
7. the simulated fleet (``simulators.fleet.run_fleet``) sending CoAP uplinks to the gateway.

Each service is started through its ``serve(settings, ready)`` and waited for on its ready
event (bounded); settings are derived from the demo's with :func:`dataclasses.replace`. It
prints the dashboard URL, then a status line (on a terminal rewritten in place, otherwise a
line every few seconds).

Invariants: SIGINT, SIGTERM or ``--duration`` stop everything in this order -- fleet, gateway
(which flushes its outbox), ingestor, API, alarms, broker -- each bounded by :data:`STOP_TIMEOUT`,
and the command exits 0. A service that fails to start stops what was started and its error
is the command's (a :class:`~citysense.errors.ConfigError` exits 2); a service that dies while
running stops the demo with exit code 1. A service whose package is missing is reported and
left out; the rest still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TextIO

from alerts import service as alerts_service
from citysense import topics
from citysense.cli.demo_history import History
from citysense.cli.demo_ports import (
    check_bind,
    free_tcp_port,
    free_udp_port,
)
from citysense.cli.demo_status import (
    SCRAPE_TIMEOUT,
    STATUS_EVERY,
    STATUS_EVERY_TTY,
    Status,
    gather_counts,
    parse_prometheus,
    scrape,
    status_line,
    summary_line,
)
from citysense.cli.preflight import preflight
from citysense.config import Settings, mask_url, parse_hostport
from citysense.credentials import OSCORE, generate_device_keys, write_device_keys
from citysense.errors import CitysenseError, ConfigError
from citysense.privatefiles import private_dir
from citysense.registry import Device, format_registry, load_registry_option
from dashboard_api import service as api_service
from edge import service as edge_service
from ingest import service as ingest_service
from mqtt_broker.auth import generate_demo_users
from mqtt_broker.broker import Broker, BrokerConfig
from simulators import fleet as fleet_service
from simulators.models import CITY_TIMEZONE

log = logging.getLogger(__name__)

# re-exported: the names this module has always offered
__all__ = [
    "DEVICE_KEYS_FILE",
    "REGISTRY_FILE",
    "SCRAPE_TIMEOUT",
    "START_TIMEOUT",
    "STATUS_EVERY",
    "STATUS_EVERY_TTY",
    "STOP_ORDER",
    "STOP_TIMEOUT",
    "Demo",
    "Status",
    "check_bind",
    "free_tcp_port",
    "free_udp_port",
    "main",
    "parse_prometheus",
    "run",
    "scrape",
]

#: How long one service may take to become ready, seconds.
START_TIMEOUT = 60.0
#: How long one service may take to stop, seconds.
STOP_TIMEOUT = 15.0
REGISTRY_FILE = "demo-registry.csv"
#: OSCORE keys of the simulated fleet, new on every run
DEVICE_KEYS_FILE = "demo-device-keys.csv"

#: Stop order (the start order is broker, ingest, gateway, alerts, api, fleet).
STOP_ORDER = ("fleet", "gateway", "ingest", "api", "alerts", "broker")


#: service -> its MQTT user and password on the embedded broker
Logins = dict[str, tuple[str | None, str | None]]


class _Stopped(Exception):
    """Stop was asked for while the demo was still starting."""


def _city_timezone() -> str:
    return CITY_TIMEZONE


class Demo:
    """One run of the demo: its services, in one event loop."""

    def __init__(self, settings: Settings, out: TextIO | None = None) -> None:
        self.settings = settings
        self.out = out or sys.stdout
        self.status = Status(self.out, bool(getattr(self.out, "isatty", lambda: False)()))
        self.state_dir = Path(settings.state_dir)
        self.tasks: dict[str, asyncio.Task[object]] = {}
        self.broker: Broker | None = None
        self.fleet_stop = asyncio.Event()
        self.fleet_counters: fleet_service.Counters | None = None
        self.edge_metrics: tuple[str, int] | None = None
        self.ingest_metrics: tuple[str, int] | None = None
        self.backfilled = 0
        self.last_counts: dict[str, float] = {}
        self.started = time.monotonic()
        #: this run's own MQTT client ids: never those of a service running beside the demo
        self.run_id = secrets.token_hex(3)

    # ------------------------------------------------------------------ composition

    def _registry(self) -> tuple[list[Device], str]:
        """The fleet's devices and the registry file every service reads."""
        s = self.settings
        if s.registry is not None:
            return list(load_registry_option(s.registry).values()), s.registry
        from simulators.city import generate_fleet

        devices = generate_fleet(s.devices, s.seed, [s.gateway])
        path = self.state_dir / REGISTRY_FILE
        path.write_text(format_registry(devices), encoding="utf-8")
        return devices, str(path)

    async def _start(
        self,
        name: str,
        serve: Callable[[asyncio.Event], Coroutine[object, object, object]],
        stop: asyncio.Event,
        needs: str = "",
    ) -> None:
        """Start one service and wait (bounded) until it is ready, fails, or stop is asked."""
        ready = asyncio.Event()
        task = asyncio.create_task(serve(ready), name=f"demo-{name}")
        self.tasks[name] = task
        ready_wait = asyncio.create_task(ready.wait())
        stop_wait = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {task, ready_wait, stop_wait},
                timeout=START_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready_wait.cancel()
            stop_wait.cancel()
        if ready.is_set():
            return
        if task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc
            raise CitysenseError(f"{name} stopped while starting")
        if stop.is_set():
            raise _Stopped
        hint = f" (is {needs} reachable?)" if needs else ""
        raise CitysenseError(f"{name} did not become ready within {START_TIMEOUT:.0f} s{hint}")

    async def run(self, stop: asyncio.Event) -> int:
        """Start everything, show status until ``stop``, stop everything; exit code."""
        private_dir(self.state_dir)
        try:
            return await self._run(stop)
        except _Stopped:
            return 0
        finally:
            self.status.end()
            await self._stop_all()
            if self.tasks:
                self.status.say(self._summary())

    async def _run(self, stop: asyncio.Event) -> int:
        base, devices, keys_path = await self._prepare()
        base, logins = await self._start_broker(base, stop)
        await self._start_ingest(base, logins, stop)
        coap_port = await self._start_gateway(base, logins, keys_path, len(devices), stop)
        base = await self._start_alerts(base, logins, stop)
        await self._start_api(base, stop)
        # 6. history
        if self.settings.backfill_hours > 0:
            await self._backfill(devices, base, stop)
        if stop.is_set():
            return 0
        await self._start_fleet(base, coap_port, keys_path, stop)
        return await self._watch(stop)

    async def _prepare(self) -> tuple[Settings, list[Device], Path]:
        """Checks before anything starts; the registry, the fleet's keys, the base settings."""
        s = self.settings
        check_bind(s.bind)
        # servers named on the command line are checked before anything starts: a demo that
        # cannot reach them, or cannot write, refuses at once (exit 2) instead of running empty
        await preflight(s, f"citysense-demo-{self.run_id}-check")
        devices, registry_path = self._registry()
        keys_path = self.state_dir / DEVICE_KEYS_FILE
        write_device_keys(keys_path, generate_device_keys([d.device for d in devices], OSCORE))
        # The simulated city keeps China Standard Time: local-time analytics follow it
        # unless another zone was asked for.
        zone = s.timezone if s.timezone != "UTC" else _city_timezone()
        base = dataclasses.replace(s, registry=registry_path, timezone=zone)
        return base, devices, keys_path

    async def _start_broker(self, base: Settings, stop: asyncio.Event) -> tuple[Settings, Logins]:
        """1. broker: the embedded one holds the deployment's model -- a user per client with
        the ACL of its role (INTERFACES 10.1), passwords made for this run and handed to the
        services in memory only."""
        s = self.settings
        logins: Logins = {}
        if s.mqtt is None:
            creds = generate_demo_users([s.gateway])
            logins = {name: (name, creds.passwords[name]) for name in creds.passwords}
            broker = self.broker = Broker("127.0.0.1", 0, BrokerConfig(users=creds.users))
            await self._start("broker", lambda ready: broker.serve(ready=ready), stop)
            mqtt_url = broker.url
            self.status.say(
                f"MQTT      embedded broker on {mqtt_url}, a user and an ACL per service"
            )
        else:
            mqtt_url = s.mqtt
            self.status.say(f"MQTT      {mask_url(mqtt_url)}")
        return dataclasses.replace(base, mqtt=mqtt_url), logins

    async def _start_ingest(self, base: Settings, logins: Logins, stop: asyncio.Event) -> None:
        """2. ingestor"""
        s = self.settings
        port = free_tcp_port()
        self.ingest_metrics = ("127.0.0.1", port)
        ingest_settings = self._login(
            dataclasses.replace(
                base,
                metrics_bind=f"127.0.0.1:{port}",
                client_id=f"citysense-demo-{self.run_id}-ingest",
            ),
            logins.get("ingest"),
        )
        needs = " and ".join(mask_url(u) for u in (s.mqtt, s.influx) if u is not None)
        # its own (not shared) subscription, to this run's gateway only: an ingestor serving
        # the same broker neither takes the demo's batches nor hands it its own
        own = topics.topic(s.gateway, topics.UP)
        await self._start(
            "ingest",
            lambda r: ingest_service.serve(ingest_settings, r, subscription=own),
            stop,
            needs,
        )
        where = mask_url(s.influx) if s.influx else f"embedded store in {self.state_dir.resolve()}"
        self.status.say(f"storage   {where}")

    async def _start_gateway(
        self, base: Settings, logins: Logins, keys_path: Path, devices: int, stop: asyncio.Event
    ) -> int:
        """3. gateway; its CoAP port."""
        s = self.settings
        coap_port = free_udp_port()
        port = free_tcp_port()
        self.edge_metrics = ("127.0.0.1", port)
        edge_settings = self._login(base, logins.get(s.gateway))
        edge_settings = dataclasses.replace(
            edge_settings,
            coap=f"127.0.0.1:{coap_port}",
            metrics_bind=f"127.0.0.1:{port}",
            client_id=f"citysense-demo-{self.run_id}-edge-{s.gateway}",
            device_keys=str(keys_path),
            # the fleet's clock runs time-scale times faster than the catalog's intervals
            device_rate=0.0 if s.report_interval else s.device_rate * s.time_scale,
        )
        await self._start(
            "gateway",
            lambda r: edge_service.serve(edge_settings, r),
            stop,
            mask_url(s.mqtt) if s.mqtt else "",
        )
        self.status.say(
            f"gateway   {s.gateway}, CoAP on udp 127.0.0.1:{coap_port}, {devices} "
            "devices, each with its own OSCORE key"
        )
        return coap_port

    async def _start_alerts(self, base: Settings, logins: Logins, stop: asyncio.Event) -> Settings:
        """4. alarms, with the default rule set unless --rules names another."""
        s = self.settings
        port = free_tcp_port()
        alerts_settings = dataclasses.replace(
            self._login(base, logins.get("alerts")),
            bind=f"127.0.0.1:{port}",
            rules=s.rules or str(alerts_service.DEFAULT_RULES),
            client_id=f"citysense-demo-{self.run_id}-alerts",
        )
        await self._start("alerts", lambda r: alerts_service.serve(alerts_settings, r), stop)
        self.status.say(
            f"alarms    http://127.0.0.1:{port}/api/v1/alarms "
            f"({Path(alerts_settings.rules or '').name})"
        )
        return dataclasses.replace(base, alerts=f"http://127.0.0.1:{port}")

    async def _start_api(self, base: Settings, stop: asyncio.Event) -> None:
        """5. API and dashboard"""
        await self._start("api", lambda r: api_service.serve(base, r), stop)
        host, port = parse_hostport(self.settings.bind, "--bind")
        self.status.say(f"dashboard http://{host}:{port}/")

    async def _start_fleet(
        self, base: Settings, coap_port: int, keys_path: Path, stop: asyncio.Event
    ) -> None:
        """7. fleet"""
        s = self.settings
        # the demo decides when the fleet stops: no --duration of its own
        fleet_settings = dataclasses.replace(
            base, coap=f"127.0.0.1:{coap_port}", duration=0.0, device_keys=str(keys_path)
        )
        registry = fleet_service.load_fleet_registry(fleet_settings)
        self.fleet_counters = fleet_service.Counters()
        counters = self.fleet_counters
        await self._start(
            "fleet",
            lambda r: fleet_service.run_fleet(
                fleet_settings,
                registry,
                stop_event=self.fleet_stop,
                counters=counters,
                ready=r,
            ),
            stop,
        )
        self.status.say(
            f"fleet     {len(registry)} simulated devices, time scale x{s.time_scale:g}"
        )
        self.status.say("Ctrl-C stops everything.")

    async def _watch(self, stop: asyncio.Event) -> int:
        """Show the status line until stop is asked or a service dies."""
        every = STATUS_EVERY_TTY if self.status.tty else STATUS_EVERY
        stop_wait = asyncio.create_task(stop.wait())
        fleet_reported = False
        try:
            while True:
                await self._show_status()
                running = {t for t in self.tasks.values() if not t.done()}
                dead = [n for n, t in self.tasks.items() if t.done() and n != "fleet"]
                if dead:
                    self.status.end()
                    for name in dead:
                        task = self.tasks[name]
                        exc = None if task.cancelled() else task.exception()
                        log.error("%s stopped unexpectedly: %r", name, exc)
                    return 1
                fleet = self.tasks.get("fleet")
                if fleet is not None and fleet.done() and not fleet_reported:
                    fleet_reported = True
                    exc = None if fleet.cancelled() else fleet.exception()
                    if exc is not None:
                        self.status.end()
                        log.error("the simulated fleet failed: %r", exc)
                done, _ = await asyncio.wait(
                    {stop_wait, *running}, timeout=every, return_when=asyncio.FIRST_COMPLETED
                )
                if stop_wait in done:
                    return 0
        finally:
            stop_wait.cancel()

    @staticmethod
    def _login(settings: Settings, login: tuple[str | None, str | None] | None) -> Settings:
        """``settings`` with the MQTT user and password of one service (embedded broker)."""
        if login is None:
            return settings
        return dataclasses.replace(settings, mqtt_username=login[0], mqtt_password=login[1])

    async def _counts(self) -> dict[str, float]:
        return await gather_counts(
            self.fleet_counters, self.edge_metrics, self.ingest_metrics, self.broker
        )

    async def _show_status(self) -> None:
        self.last_counts = counts = await self._counts()
        self.status.show(status_line(time.monotonic() - self.started, counts), paced=True)

    def _summary(self) -> str:
        return summary_line(", ".join(self.tasks), self.backfilled, self.last_counts)

    # ------------------------------------------------------------------ backfill

    async def _backfill(
        self, devices: Sequence[Device], settings: Settings, stop: asyncio.Event
    ) -> None:
        """Write ``backfill_hours`` of history for ``devices`` straight to storage."""
        history = History(self.settings, self.status)
        try:
            await history.write(devices, settings, stop)
        finally:
            self.backfilled = history.written

    # ------------------------------------------------------------------ stopping

    async def _stop_all(self) -> None:
        """Stop every started service in :data:`STOP_ORDER`, each bounded."""
        self.fleet_stop.set()
        for name in STOP_ORDER:
            task = self.tasks.get(name)
            if task is None or task.done():
                continue
            if name == "ingest":
                await self._settle()
            if name != "fleet":
                task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not done and name == "fleet":
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not done:
                log.error("%s did not stop within %.0f s; left behind", name, STOP_TIMEOUT)
            if name in ("fleet", "gateway"):
                # final figures of what is still running, for the summary
                self.last_counts.update(await self._counts())
        for name, task in self.tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.debug("%s ended with %r", name, task.exception())

    async def _settle(self) -> None:
        """Before the ingestor stops, let it store what the gateway accepted (bounded): an
        ingestor of the operator's on the same broker may have confirmed the gateway's last
        batches before this one stored them."""
        accepted = self.last_counts.get("accepted")
        if accepted is None or self.ingest_metrics is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            stored = (await scrape(*self.ingest_metrics)).get(
                "citysense_ingest_readings_written_total", 0.0
            )
            self.last_counts["stored"] = stored
            if stored >= accepted:
                return
            await asyncio.sleep(0.2)


async def main(settings: Settings, out: TextIO | None = None) -> int:
    """The demo in the running loop; SIGINT/SIGTERM and ``--duration`` stop it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    timer = loop.call_later(settings.duration, stop.set) if settings.duration > 0 else None
    try:
        return await Demo(settings, out).run(stop)
    finally:
        if timer is not None:
            timer.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)


def run(settings: Settings) -> int:
    """``citysense demo``: blocking; 0 after a clean stop, 2 on bad configuration."""
    try:
        return asyncio.run(main(settings))
    except ConfigError:
        raise
    except KeyboardInterrupt:
        return 0
