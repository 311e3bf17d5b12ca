"""The simulated CoAP fleet: every device of a registry sending uplinks to a gateway.

Each device behaves like an NB-IoT sensor in power-saving mode: it sleeps (PSM) between
uplinks and is reachable only in the exchange it starts. At each report time it measures
(:class:`~simulators.models.CityModel` at the simulated time), sends one confirmable
``POST /up`` with a SenML pack (JSON or CBOR per device), waits for the answer with CoAP
retransmission, obeys a downlink carried in a 2.04 answer (a new reporting interval) and
goes back to sleep. An uplink that falls due while the previous one is still open, or during
a radio outage, waits in the device's bounded queue and goes out right after.

Clocks: devices report every ``report_interval`` simulated seconds; the simulated clock
runs ``time_scale`` times faster than the wall clock from the fleet's start (time_scale 60:
a 300 s interval is 5 s of wall time, a day passes in 24 minutes). Values follow the
simulated clock; uplinks are stamped with the device's wall clock, which the gateway checks.

Accounting invariant (tests check it end to end): every uplink the fleet sends ends exactly
once, as acknowledged (2.04), rejected (by code), reset, timed out or abandoned at shutdown;
``sent == acknowledged + sum(rejected) + resets + timeouts + abandoned`` once drained.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from citysense.catalog import KINDS, METRICS
from citysense.config import Settings, parse_hostport
from citysense.credentials import read_device_keys
from citysense.errors import ConfigError, InputError
from citysense.registry import Device, Registry, load_registry_option
from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, encode_values
from simulators import coap
from simulators.city import generate_fleet, imei
from simulators.coap_client import (
    EXCHANGE_LIFETIME,
    CoapEndpoint,
    EndpointCounters,
    Result,
    TransmissionParameters,
)
from simulators.faults import FaultPlan, corrupt, oversize
from simulators.models import CityModel, salt_of
from simulators.secure import SecureDevices, device_state_folder

log = logging.getLogger(__name__)

UPLINK_PATH = "/up"
CF_JSON_PLAIN = 50
#: most message ids one endpoint uses per EXCHANGE_LIFETIME (of 65536)
MIDS_PER_LIFETIME = 30_000
#: uplinks a device keeps while it cannot send (oldest dropped beyond, and counted)
DEVICE_QUEUE = 32
#: devices fired per scheduler step before yielding to the event loop
FIRE_BATCH = 2000
#: shortest scheduler sleep: report times due within it are fired together (s)
TICK_S = 0.025

_UNITS: dict[str, str | None] = {m.name: m.senml_unit for m in METRICS.values()}
_INTEGER = frozenset(m.name for m in METRICS.values() if m.integer)
_INTERVAL_NAMES = ("report_interval", "set_report_interval", "set_interval", "interval")
_INTERVAL_ARGS = ("seconds", "report_interval", "interval", "interval_s", "value", "s")


@dataclass(frozen=True, slots=True)
class UplinkOutcome:
    """How one uplink ended (kept only when :class:`Counters` records)."""

    device: str  #: the id it was sent under
    t: int  #: its reading time, epoch ms
    fault: str | None  #: the payload or device fault injected into it
    outcome: str  #: "2.04", "4.00", ..., "timeout", "reset", "abandoned"
    transmissions: int
    content_format: int
    values: dict[str, float | bool] | None = None  #: what the uplink carried


@dataclass(slots=True)
class Counters:
    """What the fleet did; safe to read from the event loop's thread at any time."""

    record: bool = False  #: keep an :class:`UplinkOutcome` per uplink
    devices: int = 0
    sent: int = 0  #: uplinks sent (first transmission)
    acknowledged: int = 0  #: answered 2.04
    rejected: dict[str, int] = field(default_factory=dict)  #: other answers, by code
    resets: int = 0
    timeouts: int = 0
    abandoned: int = 0  #: still open at shutdown
    queued: int = 0  #: uplinks that waited on a device (busy or outage)
    queue_dropped: int = 0  #: uplinks a full device queue dropped
    unsent: int = 0  #: uplinks still queued at shutdown
    downlinks: int = 0  #: commands obeyed
    downlinks_ignored: int = 0  #: commands not understood
    injected: dict[str, int] = field(default_factory=dict)  #: payload faults, by name
    fired: int = 0  #: report times reached (sent or queued)
    late_total_s: float = 0.0  #: sum over report times of how late the scheduler reached them
    late_max_s: float = 0.0
    endpoint: EndpointCounters = field(default_factory=EndpointCounters)
    outcomes: list[UplinkOutcome] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return (
            self.acknowledged
            + sum(self.rejected.values())
            + self.resets
            + self.timeouts
            + self.abandoned
        )

    @property
    def in_flight(self) -> int:
        return self.sent - self.finished

    def as_dict(self) -> dict[str, object]:
        e = self.endpoint
        return {
            "devices": self.devices,
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "rejected": dict(sorted(self.rejected.items())),
            "resets": self.resets,
            "timeouts": self.timeouts,
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "queue_dropped": self.queue_dropped,
            "unsent": self.unsent,
            "downlinks": self.downlinks,
            "downlinks_ignored": self.downlinks_ignored,
            "injected": dict(sorted(self.injected.items())),
            "late_mean_s": self.late_total_s / self.fired if self.fired else 0.0,
            "late_max_s": self.late_max_s,
            "datagrams": e.datagrams_sent,
            "retransmissions": e.retransmissions,
            "lost": e.lost_out + e.lost_in,
            "duplicated": e.duplicated,
            "stray_answers": e.stray,
            "separate_answers": e.separate,
        }

    def summary(self) -> str:
        rejected = " ".join(f"{c}:{n}" for c, n in sorted(self.rejected.items())) or "-"
        return (
            f"devices {self.devices}  sent {self.sent}  acknowledged {self.acknowledged}  "
            f"rejected {rejected}  retransmissions {self.endpoint.retransmissions}  "
            f"timeouts {self.timeouts}  in flight {self.in_flight}  queued {self.queued}  "
            f"downlinks {self.downlinks}"
        )


@dataclass(frozen=True, slots=True)
class _Uplink:
    device: int
    t: int
    payload: bytes
    content_format: int
    fault: str | None
    values: dict[str, float | bool] | None = None  #: kept only when counters record


def stray_id(device: str) -> str:
    """The id an ``unknown``-faulted device sends under: an IMEI no registry holds."""
    return f"urn:imei:{imei(salt_of(device) % 1_000_000, tac='35999999')}"


def downlink_interval(payload: bytes) -> tuple[float | None, bool]:
    """(new report interval in s or None, whether any command was present) from a 2.04 payload.

    Understands a SenML JSON pack with ``{"n": "report_interval", "v": 600}`` (after the
    base name) or the gateway's command form ``{"n": "cmd", "vs": "report_interval"}``
    with ``{"n": "cmd_args", "vs": "{\\"seconds\\": 600}"}``. Anything else is ignored.
    """
    if not payload:
        return None, False
    try:
        pack = json.loads(payload)
    except ValueError:
        return None, True
    if not isinstance(pack, list):
        return None, True
    fields: dict[str, object] = {}
    for rec in pack:
        if not isinstance(rec, dict):
            continue
        name = str(rec.get("n", "")).rsplit(":", 1)[-1]
        for key in ("v", "vs", "vb"):
            if key in rec:
                fields[name] = rec[key]
    for name in _INTERVAL_NAMES:
        value = fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _valid_interval(float(value)), True
    command = fields.get("cmd")
    if isinstance(command, str) and command in _INTERVAL_NAMES:
        args: object = fields.get("cmd_args", "{}")
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            for key in _INTERVAL_ARGS:
                value = parsed.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return _valid_interval(float(value)), True
        elif isinstance(parsed, int | float) and not isinstance(parsed, bool):
            return _valid_interval(float(parsed)), True
    return None, bool(fields)


def _valid_interval(seconds: float) -> float | None:
    return seconds if math.isfinite(seconds) and 10.0 <= seconds <= 7 * 86400 else None


def coap_target(settings: Settings) -> tuple[str, int]:
    """Where the fleet sends: ``--coap``, with a wildcard host meaning this machine."""
    host, port = parse_hostport(settings.coap, "--coap")
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def load_fleet_registry(settings: Settings) -> list[Device]:
    """The fleet's devices: ``--registry`` (those of ``--gateway`` when it names any), or a
    generated fleet of ``--devices`` on ``--gateway``."""
    if settings.registry is None:
        return generate_fleet(settings.devices, settings.seed, [settings.gateway])
    registry = load_registry_option(settings.registry)
    mine = registry.of_gateway(settings.gateway)
    chosen = mine if len(mine) else registry
    if not len(mine):
        log.info(
            "no device of the registry is on gateway %s: simulating all %d devices",
            settings.gateway,
            len(registry),
        )
    return list(chosen.values())


class Fleet:
    """A fleet's devices, their schedule and their CoAP endpoints."""

    def __init__(
        self,
        devices: Sequence[Device],
        target: tuple[str, int],
        *,
        seed: int = 1,
        time_scale: float = 60.0,
        senml_format: str = "mixed",
        report_interval: float = 0.0,
        faults: FaultPlan | None = None,
        params: TransmissionParameters | None = None,
        counters: Counters | None = None,
        model: CityModel | None = None,
        max_uplink_bytes: int = 1024,
        secure: SecureDevices | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ConfigError("--time-scale must be positive")
        if report_interval < 0:
            raise ConfigError("--report-interval must not be negative")
        self.devices = tuple(devices)
        self.target = target
        self.seed = seed
        self.time_scale = time_scale
        self.faults = faults or FaultPlan({}, seed)
        self.params = params or TransmissionParameters()
        self.counters = counters if counters is not None else Counters()
        self.model = model if model is not None else CityModel(self.devices, seed)
        self.max_uplink_bytes = max_uplink_bytes
        self.secure = secure
        n = len(self.devices)
        self.counters.devices = n
        kinds = list(KINDS)
        self.kind_of = np.array([kinds.index(d.kind) for d in self.devices], dtype=np.int64)
        self._kinds = kinds
        interval_s = np.array(
            [report_interval or KINDS[d.kind].report_interval_s for d in self.devices],
            dtype=np.float64,
        )
        self.interval_ms = (interval_s * 1000).astype(np.int64)
        salts = [salt_of(d.device) for d in self.devices]
        if senml_format == "json":
            self.cf = np.full(n, CF_SENML_JSON, dtype=np.int64)
        elif senml_format == "cbor":
            self.cf = np.full(n, CF_SENML_CBOR, dtype=np.int64)
        else:
            self.cf = np.array(
                [CF_SENML_CBOR if s % 2 else CF_SENML_JSON for s in salts], dtype=np.int64
            )
        self.send_id = [
            stray_id(d.device) if self.faults.unknown(d.device) else d.device for d in self.devices
        ]
        self.skew_ms = np.array([self.faults.skew_ms(d.device) for d in self.devices])
        self.busy = np.zeros(n, dtype=np.bool_)
        self.queues: dict[int, collections.deque[_Uplink]] = {}
        self.endpoints: list[CoapEndpoint] = []
        self.endpoint_of = np.zeros(n, dtype=np.int64)
        self._sim_due = np.zeros(n, dtype=np.int64)
        self._wall_due = np.full(n, np.inf)
        self._start_loop = 0.0
        self._start_ms = 0
        self._outage: tuple[float, float] | None = self.faults.outage_window()
        self._closing = False

    # ------------------------------------------------------------------ time

    def sim_ms(self, loop_time: float) -> int:
        """The simulated clock (epoch ms) at event-loop time ``loop_time``."""
        return self._start_ms + int((loop_time - self._start_loop) * 1000.0 * self.time_scale)

    def _wall_of_sim(self, sim: np.ndarray) -> np.ndarray:
        return self._start_loop + (sim - self._start_ms) / (1000.0 * self.time_scale)

    def endpoints_needed(self) -> int:
        """Enough sockets that no endpoint reuses a message id within EXCHANGE_LIFETIME."""
        if not self.devices:
            return 1
        per_s = float(np.sum(1000.0 * self.time_scale / self.interval_ms))
        # retransmissions, duplicates and bursts use ids too: leave room
        return max(1, math.ceil(per_s * 1.5 * EXCHANGE_LIFETIME / MIDS_PER_LIFETIME))

    # ------------------------------------------------------------------ running

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._start_loop = loop.time()
        self._start_ms = int(time.time() * 1000)
        count = min(self.endpoints_needed(), max(len(self.devices), 1))
        for i in range(count):
            self.endpoints.append(
                await CoapEndpoint.open(
                    self.target,
                    self.params,
                    random.Random(f"citysense-endpoint-{self.seed}-{i}"),
                    self.faults,
                    self.counters.endpoint,
                )
            )
        n = len(self.devices)
        self.endpoint_of = np.arange(n, dtype=np.int64) % count
        # each device keeps its own phase on the simulated clock (as in backfill)
        for k in range(len(self._kinds)):
            idx = np.nonzero(self.kind_of == k)[0]
            for interval in np.unique(self.interval_ms[idx]).tolist():
                sel = idx[self.interval_ms[idx] == interval]
                phase = self.model.phase_ms(sel, int(interval))
                self._sim_due[sel] = self._start_ms + (phase - self._start_ms) % interval
        self._wall_due = self._wall_of_sim(self._sim_due)
        log.info(
            "fleet of %d devices -> %s:%d over %d endpoint(s), time scale %g",
            n,
            self.target[0],
            self.target[1],
            count,
            self.time_scale,
        )

    async def run(self, stop: asyncio.Event, duration: float = 0.0) -> None:
        """Send uplinks until ``stop`` is set or ``duration`` wall seconds have passed."""
        loop = asyncio.get_running_loop()
        end = self._start_loop + duration if duration > 0 else math.inf
        while not stop.is_set():
            now = loop.time()
            if now >= end:
                break
            self._flush_after_outage(now)
            due = np.nonzero(self._wall_due <= now)[0]
            if due.size:
                for start in range(0, due.size, FIRE_BATCH):
                    self._fire(due[start : start + FIRE_BATCH], loop.time())
                    await asyncio.sleep(0)
                continue
            wait = float(self._wall_due.min()) - now if self.devices else 0.25
            # a short quantum lets report times gather, so the model runs on whole batches
            wait = min(max(wait, TICK_S), 0.25, end - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def aclose(self, drain: float = 5.0) -> None:
        """Stop: wait up to ``drain`` s for open exchanges, abandon the rest, close sockets."""
        self._closing = True  # queued uplinks stay unsent from now on
        closing: list[Coroutine[Any, Any, object]] = [ep.aclose(drain) for ep in self.endpoints]
        if self.secure is not None:
            closing.append(self.secure.aclose(drain))
        await asyncio.gather(*closing)
        self.endpoints.clear()
        for q in self.queues.values():
            self.counters.unsent += len(q)
            q.clear()

    # ------------------------------------------------------------------ uplinks

    def _in_outage(self, now: float) -> bool:
        if self._outage is None:
            return False
        start, end = self._outage
        return self._start_loop + start <= now < self._start_loop + end

    def _flush_after_outage(self, now: float) -> None:
        if self._outage is None or self._in_outage(now):
            return
        if now < self._start_loop + self._outage[1]:
            return
        self._outage = None  # over: every device with a queue starts sending it
        for i, q in list(self.queues.items()):
            if q and not self.busy[i]:
                self._send(q.popleft())

    def _fire(self, due: np.ndarray, now: float) -> None:
        """Measure and send (or queue) one uplink for each device in ``due``."""
        wall_ms = int(time.time() * 1000)
        outage = self._in_outage(now)
        late = now - self._wall_due[due]
        c = self.counters
        c.fired += int(due.size)
        c.late_total_s += float(late.sum())
        c.late_max_s = max(c.late_max_s, float(late.max()))
        kinds = self.kind_of[due]
        for k in np.unique(kinds).tolist():
            sel = due[kinds == k]
            kind = self._kinds[k]
            values = self.model.sample(kind, sel, self._sim_due[sel])
            names = list(values)
            columns = [values[n].tolist() for n in names]
            for j, i in enumerate(sel.tolist()):
                reading: dict[str, float | bool] = {}
                for name, col in zip(names, columns, strict=True):
                    v = col[j]
                    reading[name] = int(v) if name in _INTEGER else v
                uplink = self._build(i, wall_ms + int(self.skew_ms[i]), reading)
                if outage or self.busy[i]:
                    self._enqueue(uplink)
                else:
                    self._send(uplink)
        self._sim_due[due] += self.interval_ms[due]
        self._wall_due[due] = self._wall_of_sim(self._sim_due[due])

    def _build(self, i: int, t_ms: int, reading: dict[str, float | bool]) -> _Uplink:
        cf = int(self.cf[i])
        payload = encode_values(self.send_id[i], t_ms, reading, cf, _UNITS)
        fault = self.faults.payload_fault()
        if fault == "corrupt":
            payload = corrupt(payload)
        elif fault == "oversize":
            payload = oversize(payload, cf, self.max_uplink_bytes)
        elif fault == "badformat":
            cf = CF_JSON_PLAIN
        if fault is None:
            if self.send_id[i] != self.devices[i].device:
                fault = "unknown"
            elif self.skew_ms[i]:
                fault = "skew"
        if fault is not None:
            self.counters.injected[fault] = self.counters.injected.get(fault, 0) + 1
        return _Uplink(i, t_ms, payload, cf, fault, reading if self.counters.record else None)

    def _enqueue(self, uplink: _Uplink) -> None:
        q = self.queues.setdefault(uplink.device, collections.deque())
        if len(q) >= DEVICE_QUEUE:
            q.popleft()
            self.counters.queue_dropped += 1
        q.append(uplink)
        self.counters.queued += 1

    def _send(self, uplink: _Uplink) -> None:
        i = uplink.device
        self.busy[i] = True
        self.counters.sent += 1
        if self.secure is not None and self.secure.has(self.send_id[i]):
            self.secure.send(
                self.send_id[i],
                uplink.payload,
                uplink.content_format,
                lambda result: self._done(uplink, result),
            )
            return
        endpoint = self.endpoints[int(self.endpoint_of[i])]

        def build(mid: int, token: bytes) -> bytes:
            return coap.post(mid, token, UPLINK_PATH, uplink.payload, uplink.content_format)

        endpoint.request(build, lambda result: self._done(uplink, result))

    def _done(self, uplink: _Uplink, result: Result) -> None:
        c = self.counters
        i = uplink.device
        if result.outcome == "response":
            assert result.code is not None
            outcome = coap.code_text(result.code)
            if result.code == coap.CHANGED:
                c.acknowledged += 1
                self._obey(i, result.payload)
            else:
                c.rejected[outcome] = c.rejected.get(outcome, 0) + 1
                if result.code != coap.SERVICE_UNAVAILABLE:
                    log.debug(
                        "uplink of %s refused %s: %r", self.send_id[i], outcome, result.payload
                    )
        elif result.outcome == "reset":
            outcome = "reset"
            c.resets += 1
        elif result.outcome == "timeout":
            outcome = "timeout"
            c.timeouts += 1
        else:
            outcome = "abandoned"
            c.abandoned += 1
        if c.record:
            c.outcomes.append(
                UplinkOutcome(
                    self.send_id[i],
                    uplink.t,
                    uplink.fault,
                    outcome,
                    result.transmissions,
                    uplink.content_format,
                    uplink.values,
                )
            )
        self.busy[i] = False
        if outcome == "abandoned" or self._closing:
            return
        q = self.queues.get(i)
        if q and (self._outage is None or not self._in_outage(asyncio.get_running_loop().time())):
            self._send(q.popleft())

    def _obey(self, i: int, payload: bytes) -> None:
        interval, present = downlink_interval(payload)
        if interval is not None:
            old, new = int(self.interval_ms[i]), int(interval * 1000)
            self.interval_ms[i] = new
            self.counters.downlinks += 1
            log.info("%s: report interval now %g s", self.devices[i].device, interval)
            # the next report comes one new interval after the last one sent
            self._sim_due[i] += new - old
            self._wall_due[i] = float(self._wall_of_sim(self._sim_due[i : i + 1])[0])
        elif present:
            self.counters.downlinks_ignored += 1


async def _progress(counters: Counters, stop: asyncio.Event, every: float) -> None:
    tty = sys.stderr.isatty()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if tty:
            sys.stderr.write("\r\x1b[K" + counters.summary())
            sys.stderr.flush()
        else:
            log.info("%s", counters.summary())
    if tty:
        sys.stderr.write("\n")


def secure_devices(settings: Settings) -> SecureDevices | None:
    """The devices of ``--device-keys`` that send with OSCORE or DTLS, or ``None``."""
    if settings.device_keys is None:
        return None
    try:
        keys = read_device_keys(settings.device_keys)
    except InputError as exc:
        raise ConfigError(f"--device-keys {settings.device_keys}: {exc}") from exc
    coap = coap_target(settings)
    if settings.coaps is not None:
        coaps = parse_hostport(settings.coaps, "--coaps")
    else:
        coaps = (coap[0], 5684)
    return SecureDevices(
        {k.device: k for k in keys},
        coap,
        coaps,
        device_state_folder(Path(settings.device_keys)),
    )


async def run_fleet(
    settings: Settings,
    registry: Registry | Sequence[Device] | None = None,
    stop_event: asyncio.Event | None = None,
    counters: Counters | None = None,
    *,
    progress: bool = False,
    ready: asyncio.Event | None = None,
    params: TransmissionParameters | None = None,
    model: CityModel | None = None,
    drain: float = 5.0,
) -> Counters:
    """Run a fleet from ``settings`` until ``stop_event`` or ``settings.duration``.

    ``registry``: the devices to simulate (default: :func:`load_fleet_registry`). Sets
    ``ready`` once the sockets are open. Cancellation stops it cleanly (bounded) and is
    re-raised. Returns the counters (also filled in place when given).
    """
    if registry is None:
        devices = load_fleet_registry(settings)
    elif isinstance(registry, Registry):
        devices = list(registry.values())
    else:
        devices = list(registry)
    if model is None and settings.sensor_faults:
        from simulators.sensor_faults import SensorFaults

        faults = SensorFaults.from_settings(settings.sensor_faults, settings.seed)
        model = CityModel(devices, settings.seed, sensor_faults=faults)
    fleet = Fleet(
        devices,
        coap_target(settings),
        seed=settings.seed,
        time_scale=settings.time_scale,
        senml_format=settings.senml_format,
        report_interval=settings.report_interval,
        faults=FaultPlan.from_settings(settings.faults, settings.seed),
        params=params,
        counters=counters,
        model=model,
        max_uplink_bytes=settings.max_uplink_bytes,
        secure=secure_devices(settings),
    )
    stop = stop_event if stop_event is not None else asyncio.Event()
    done = asyncio.Event()
    reporter: asyncio.Task[None] | None = None
    cancelled = False
    try:
        await fleet.open()
        if ready is not None:
            ready.set()
        if progress:
            reporter = asyncio.create_task(_progress(fleet.counters, done, 1.0))
        await fleet.run(stop, settings.duration)
    except asyncio.CancelledError:
        cancelled = True
        raise
    finally:
        # bounded: open exchanges get at most ``drain`` s (1 s when cancelled)
        await fleet.aclose(min(drain, 1.0) if cancelled else drain)
        done.set()
        if reporter is not None:
            await reporter
    return fleet.counters
