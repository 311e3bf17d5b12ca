"""The whole pipeline as separate real processes, for end-to-end accounting under faults.

simulated fleet (in-process, real UDP) -> ``citysense edge`` (subprocess) -> [TCP proxy] ->
real Mosquitto -> ``citysense ingest`` (1 or 2 subprocesses) -> real influxd.

The accounting compares what the devices were told (2.04) with what InfluxDB holds, by the
set of (measurement, device, time): nothing acknowledged may be missing, nothing may be
stored twice, and nothing may be stored that no device sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter as Multiset
from dataclasses import dataclass, field
from pathlib import Path

from citysense.catalog import KINDS
from citysense.config import load_settings
from citysense.credentials import DTLS_PSK, generate_device_keys, write_device_keys
from citysense.registry import Device, format_registry
from simulators.city import generate_fleet
from simulators.coap_client import TransmissionParameters
from simulators.fleet import Counters, run_fleet
from tests.e2e.proxy import TcpProxy
from tests.servers import InfluxServer, MosquittoServer, free_port, free_udp_port, wait_until

GATEWAY = "gw-e2e"
MEASUREMENTS = ("environment", "traffic", "utility", "device_health")


class Service:
    """A ``citysense`` subcommand running as a process of the test's own."""

    def __init__(
        self,
        name: str,
        args: list[str],
        workdir: Path,
        metrics_port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = env
        self.args = args
        self.workdir = workdir
        self.metrics_port = metrics_port
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citysense", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=None if self.env is None else {**os.environ, **self.env},
            )
        self.starts += 1
        wait_until(self._ready, 60, f"{self.name} to start\n{self.log_tail()}", interval=0.1)

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return r.read().decode()

    def kill(self) -> None:
        """``kill -9``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.log_tail()}") from None
        return self.proc.returncode

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class Accounting:
    """What was sent, acknowledged and stored, and the differences."""

    sent: int = 0
    acknowledged: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    stored: int = 0  #: (measurement, device, time) rows in InfluxDB
    expected: int = 0  #: rows that acknowledged uplinks must have produced
    lost: int = 0
    duplicates: int = 0
    invented: int = 0  #: stored rows no device sent
    stored_unacknowledged: int = 0  #: stored, but the device never saw its 2.04
    recovery_s: float = 0.0  #: from the end of the load to the last reading stored
    wrong_values: int = 0  #: acknowledged values stored differently
    missing_sample: list[object] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        tmp: Path,
        mosquitto: MosquittoServer,
        influx: InfluxServer,
        *,
        devices: int = 120,
        ingestors: int = 1,
        proxy: bool = False,
        seed: int = 7,
        ingest_args: tuple[str, ...] = (),
        gateway_args: tuple[str, ...] = (),
        gateway_state: Path | None = None,
        gateway_env: dict[str, str] | None = None,
        scheme: str | None = None,
    ) -> None:
        self.tmp = tmp
        self.mosquitto = mosquitto
        self.influx = influx
        self.proxy: TcpProxy | None = TcpProxy(mosquitto.port) if proxy else None
        fleet = generate_fleet(devices, seed, 1)
        self.devices = [
            Device(d.device, d.kind, d.district, d.site, d.lat, d.lon, GATEWAY) for d in fleet
        ]
        self.kind_of = {d.device: d.kind for d in self.devices}
        self.registry = tmp / "registry.csv"
        self.registry.write_text(format_registry(self.devices))
        self.coap_port = free_udp_port()
        gw_mqtt = f"mqtt://127.0.0.1:{self.proxy.port if self.proxy else mosquitto.port}"
        gw_dir = tmp / "edge"
        gw_dir.mkdir()
        gw_metrics = free_port()
        # the fleet runs on a fast clock: no per-device budget at the catalog's pace
        trust = ["--device-rate", "0"]
        self.device_keys: Path | None = None
        self.coaps_port: int | None = None
        if scheme is not None:
            self.device_keys = tmp / "device-keys.csv"
            keys = generate_device_keys([d.device for d in self.devices], scheme)
            write_device_keys(self.device_keys, keys)
            trust += ["--device-keys", str(self.device_keys)]
            if scheme == DTLS_PSK:
                self.coaps_port = free_udp_port()
                trust += ["--coaps", f"127.0.0.1:{self.coaps_port}"]
        self.gateway = Service(
            "edge",
            [
                "edge",
                "--gateway",
                GATEWAY,
                "--coap",
                f"127.0.0.1:{self.coap_port}",
                "--mqtt",
                gw_mqtt,
                "--registry",
                str(self.registry),
                "--state-dir",
                str(gateway_state or gw_dir / "state"),
                "--metrics-bind",
                f"127.0.0.1:{gw_metrics}",
                "--batch-max-delay",
                "0.1",
                "--resend-interval",
                "5",
                "--retry-max-delay",
                "2",
                "--log-level",
                "INFO",
                *trust,
                *gateway_args,
            ],
            gw_dir,
            gw_metrics,
            env=gateway_env,
        )
        self.ingestors: list[Service] = []
        for i in range(ingestors):
            d = tmp / f"ingest-{i}"
            d.mkdir()
            port = free_port()
            self.ingestors.append(
                Service(
                    f"ingest-{i}",
                    [
                        "ingest",
                        "--mqtt",
                        mosquitto.url,
                        "--influx",
                        influx.url,
                        "--influx-api",
                        "1",
                        "--influx-db",
                        influx.db,
                        "--state-dir",
                        str(d / "state"),
                        "--client-id",
                        f"citysense-ingest-e2e-{i}",
                        "--metrics-bind",
                        f"127.0.0.1:{port}",
                        "--retry-max-delay",
                        "2",
                        "--log-level",
                        "INFO",
                        *ingest_args,
                    ],
                    d,
                    port,
                )
            )
        self.counters = Counters(record=True)
        self._fleet_thread: threading.Thread | None = None
        self._fleet_loop: asyncio.AbstractEventLoop | None = None
        self._fleet_stop: asyncio.Event | None = None
        self._fleet_error: BaseException | None = None
        self._load_end = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.proxy is not None:
            self.proxy.start()
        for ingestor in self.ingestors:
            ingestor.start()
        self.gateway.start()

    def close(self) -> None:
        self.stop_load()
        for service in (self.gateway, *self.ingestors):
            with contextlib.suppress(Exception):
                service.stop(20)
        if self.proxy is not None:
            self.proxy.stop()

    # ------------------------------------------------------------------ load

    def start_load(
        self, *, time_scale: float = 60.0, report_interval: float = 60.0, faults: str = ""
    ) -> None:
        """Every device sends one uplink per ``report_interval / time_scale`` wall seconds."""
        cli: dict[str, object] = {
            "coap": f"127.0.0.1:{self.coap_port}",
            "time_scale": str(time_scale),
            "report_interval": str(report_interval),
            "seed": "7",
        }
        if faults:
            cli["faults"] = [faults]
        if self.device_keys is not None:
            cli["device_keys"] = str(self.device_keys)
        if self.coaps_port is not None:
            cli["coaps"] = f"127.0.0.1:{self.coaps_port}"
        settings = load_settings("simulate fleet", cli, environ={})
        started = threading.Event()

        async def main() -> None:
            self._fleet_loop = asyncio.get_running_loop()
            self._fleet_stop = asyncio.Event()
            started.set()
            await run_fleet(
                settings,
                self.devices,
                self._fleet_stop,
                self.counters,
                params=TransmissionParameters(),
                drain=90.0,
            )

        def thread() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by stop_load
                self._fleet_error = exc
                started.set()

        self._fleet_thread = threading.Thread(target=thread, name="fleet", daemon=True)
        self._fleet_thread.start()
        assert started.wait(30)

    def stop_load(self) -> None:
        """Stop sending; wait (bounded) until every open exchange has ended."""
        if self._fleet_thread is None:
            return
        if self._fleet_loop is not None and self._fleet_stop is not None:
            with contextlib.suppress(RuntimeError):
                self._fleet_loop.call_soon_threadsafe(self._fleet_stop.set)
        self._fleet_thread.join(150)
        assert not self._fleet_thread.is_alive(), "the fleet did not stop"
        self._fleet_thread = None
        self._load_end = time.monotonic()
        if self._fleet_error is not None:
            raise self._fleet_error

    # ------------------------------------------------------------------ accounting

    def stored_rows(self) -> list[tuple[str, str, int]]:
        return [key for key, _ in self.stored_points()]

    def stored_points(self) -> list[tuple[tuple[str, str, int], dict[str, object]]]:
        """Every stored point as ((measurement, device, time), {field: value})."""
        tags = {"time", "device", "kind", "district", "site", "gateway"}
        out: list[tuple[tuple[str, str, int], dict[str, object]]] = []
        for m in MEASUREMENTS:
            result = self.influx.query(f'SELECT * FROM "{m}"', db=self.influx.db)["results"][0]
            for series in result.get("series", []):
                cols = series["columns"]
                di, ti = cols.index("device"), cols.index("time")
                for v in series["values"]:
                    fields = {
                        c: x
                        for c, x in zip(cols, v, strict=True)
                        if c not in tags and x is not None
                    }
                    out.append(((m, str(v[di]), int(v[ti])), fields))
        return out

    def value_mismatches(self) -> list[str]:
        """Acknowledged values that InfluxDB holds differently (or not at all)."""
        stored: dict[tuple[str, int], dict[str, object]] = {}
        for (_, device, t), fields in self.stored_points():
            stored.setdefault((device, t), {}).update(fields)
        problems: list[str] = []
        for o in self.counters.outcomes:
            if o.outcome != "2.04" or o.values is None:
                continue
            got = stored.get((o.device, o.t), {})
            for metric, sent in o.values.items():
                value = got.get(metric)
                if isinstance(sent, bool) or isinstance(value, bool):
                    same = value is sent
                else:
                    same = isinstance(value, int | float) and math.isclose(
                        float(value), float(sent), rel_tol=1e-12, abs_tol=1e-12
                    )
                if not same:
                    problems.append(f"{o.device} {o.t} {metric}: sent {sent!r}, stored {value!r}")
        return problems

    def expected_rows(self) -> set[tuple[str, str, int]]:
        """(measurement, device, time) rows that every acknowledged uplink must produce.

        An uplink carries its kind's own metrics and device health; its own domain's row is
        certain, the device_health row too whenever the uplink had health values, which the
        fleet's devices always send.
        """
        out: set[tuple[str, str, int]] = set()
        for o in self.counters.outcomes:
            if o.outcome == "2.04":
                out.add((KINDS[self.kind_of[o.device]].domain, o.device, o.t))
        return out

    def account(self, settle_timeout: float = 180.0) -> Accounting:
        """Wait until storage holds every acknowledged reading (bounded), then compare."""
        self.stop_load()
        expected = self.expected_rows()
        deadline = time.monotonic() + settle_timeout
        rows = self.stored_rows()
        while not expected <= set(rows) and time.monotonic() < deadline:
            time.sleep(1.0)
            rows = self.stored_rows()
        recovery = time.monotonic() - self._load_end
        # Readings that arrive late still count: give stragglers a moment, then freeze.
        time.sleep(2.0)
        rows = self.stored_rows()
        c = self.counters
        sent_keys = {(o.device, o.t) for o in c.outcomes}
        acked_keys = {(o.device, o.t) for o in c.outcomes if o.outcome == "2.04"}
        multiplicity = Multiset(rows)
        stored = set(rows)
        own = {r for r in stored if r[0] != "device_health"}
        missing = sorted(expected - stored)
        wrong = self.value_mismatches()
        return Accounting(
            sent=c.sent,
            acknowledged=c.acknowledged,
            rejected=dict(c.rejected),
            unanswered=c.timeouts + c.resets + c.abandoned,
            stored=len(stored),
            expected=len(expected),
            lost=len(missing),
            duplicates=sum(n - 1 for n in multiplicity.values() if n > 1),
            invented=sum(1 for r in stored if (r[1], r[2]) not in sent_keys),
            stored_unacknowledged=sum(1 for r in own if (r[1], r[2]) not in acked_keys),
            recovery_s=round(recovery, 1),
            wrong_values=len(wrong),
            missing_sample=[*missing[:5], *wrong[:5]],
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.name} ---\n{s.log_tail()}" for s in (self.gateway, *self.ingestors)
        )
