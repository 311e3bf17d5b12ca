"""Stand-ins for the two ends around the ingestor in tests.

* :class:`GatewayDouble` publishes batch envelopes the way a gateway does (QoS 1 on
  ``citysense/v1/{gw}/up``), collects the seqs confirmed on ``.../stored``, and can re-send what
  is unconfirmed -- the gateway outbox's contract (INTERFACES.md section 5), reduced to a dict.
* :class:`IngestorThread` runs ``ingest.service.serve`` in a thread with its own event loop.
* :func:`ingestor_process` runs ``citysense ingest`` as a real process (for ``kill -9``).
* :func:`stored_readings` reads back, with raw InfluxQL, what is in influxd.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citysense import topics
from citysense.config import Settings
from citysense.envelope import encode_batch
from citysense.model import Batch, Reading
from tests.servers import InfluxServer, wait_until

BASE_T = (int(time.time()) // 60 - 60) * 60_000  # an hour ago, on a minute


def traffic_reading(gw_index: int, seq: int, i: int) -> Reading:
    """A unique traffic reading: device and time derive from (seq, i)."""
    return Reading(
        device=f"urn:dev:{gw_index}-{i}",
        kind="traffic_counter",
        district="jinshui",
        site=f"site-{i % 3}",
        t=BASE_T + seq * 1000,
        values={"vehicle_count": float(seq % 1000), "avg_speed": 42.5, "occupancy": 12.0},
    )


def make_batch(gateway: str, seq: int, per_batch: int, gw_index: int = 0) -> Batch:
    readings = tuple(traffic_reading(gw_index, seq, i) for i in range(per_batch))
    return Batch(gateway, seq, BASE_T + seq * 1000 + 500, readings)


class GatewayDouble:
    """Publishes envelopes and follows confirmations (see the module doc)."""

    def __init__(self, port: int, gateway: str = "gw-test-01", client_id: str | None = None):
        self.port = port
        self.gateway = gateway
        self.confirmed: set[int] = set()
        self.sent: dict[int, bytes] = {}
        self.resent = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"gwd-{gateway}-{os.getpid()}-{id(self)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600  # confirmations wait for us across a broker restart
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("gateway double did not subscribe")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            client.subscribe(topics.topic(self.gateway, topics.STORED), qos=1)

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        seqs = json.loads(msg.payload)["seq"]
        with self._lock:
            self.confirmed.update(seqs)

    def publish_raw(self, payload: bytes, topic: str | None = None) -> None:
        info = self.client.publish(topic or topics.topic(self.gateway, topics.UP), payload, qos=1)
        info.wait_for_publish(20)

    def publish(self, batch: Batch) -> None:
        body = encode_batch(batch)
        self.sent[batch.seq] = body
        self.publish_raw(body)

    def unconfirmed(self) -> list[int]:
        with self._lock:
            return sorted(set(self.sent) - self.confirmed)

    def resend_unconfirmed(self) -> int:
        seqs = self.unconfirmed()
        self.resent += len(seqs)
        for seq in seqs:
            self.publish_raw(self.sent[seq])
        return len(seqs)

    def wait_all_confirmed(self, timeout: float, resend_every: float | None = None) -> None:
        """Wait for every sent seq to be confirmed, re-sending like a gateway if asked."""
        deadline = time.monotonic() + timeout
        last_resend = time.monotonic()
        while self.unconfirmed():
            if time.monotonic() > deadline:
                raise TimeoutError(f"unconfirmed after {timeout} s: {self.unconfirmed()[:20]}")
            if resend_every is not None and time.monotonic() - last_resend > resend_every:
                self.resend_unconfirmed()
                last_resend = time.monotonic()
            time.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class IngestorThread:
    """``serve(settings)`` on an event loop of its own thread; stop() cancels it."""

    def __init__(self, settings: Settings, **serve_kw: object) -> None:
        self.settings = settings
        self.serve_kw = serve_kw
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        from ingest.service import serve

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            self._task = asyncio.create_task(serve(self.settings, ready, **self.serve_kw))  # type: ignore[arg-type]
            waiter = asyncio.create_task(ready.wait())
            done, _ = await asyncio.wait({self._task, waiter}, return_when="FIRST_COMPLETED")
            if waiter in done:
                self.ready.set()
            else:
                waiter.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def start(self, timeout: float = 30.0) -> IngestorThread:
        self._thread.start()
        if not self.ready.wait(timeout):
            raise TimeoutError("ingestor did not become ready")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "ingestor did not stop"
        if self.error is not None:
            raise self.error


def ingest_settings(
    mqtt_url: str, influx: InfluxServer | None, state_dir: Path, **kw: object
) -> Settings:
    values: dict[str, object] = {
        "mqtt": mqtt_url,
        "state_dir": str(state_dir),
        "metrics_bind": "off",
        "write_max_delay": 0.05,
    }
    if influx is not None:
        values["influx"] = influx.url
        values["influx_db"] = influx.db
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def ingestor_thread(settings: Settings, **serve_kw: object) -> Iterator[IngestorThread]:
    ingestor = IngestorThread(settings, **serve_kw).start()
    try:
        yield ingestor
    finally:
        ingestor.stop()


def ingestor_process(
    mqtt_url: str, influx: InfluxServer, state_dir: Path, client_id: str, *extra: str
) -> subprocess.Popen[bytes]:
    """``citysense ingest`` as a real process (its log goes to state_dir/ingest-<id>.log)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / f"ingest-{client_id}.log", "ab")  # noqa: SIM115
    cmd = [
        sys.executable, "-m", "citysense", "ingest",
        "--mqtt", mqtt_url,
        "--influx", influx.url,
        "--influx-db", influx.db,
        "--state-dir", str(state_dir),
        "--client-id", client_id,
        "--metrics-bind", "off",
        "--write-max-delay", "0.05",
        "--retry-max-delay", "1",
        *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def stored_readings(influx: InfluxServer) -> list[tuple[str, int, float]]:
    """Every traffic point as (device, time ms, vehicle_count), duplicates included."""
    rows = influx.query('SELECT "vehicle_count" FROM "traffic" GROUP BY "device"', db=influx.db)[
        "results"
    ][0]
    out: list[tuple[str, int, float]] = []
    for series in rows.get("series", []):
        for t, count in series["values"]:
            out.append((series["tags"]["device"], int(t), float(count)))
    return out


def expected_readings(batches: list[Batch]) -> list[tuple[str, int, float]]:
    return sorted(
        (r.device, r.t, float(r.values["vehicle_count"])) for b in batches for r in b.readings
    )


def wait_for_count(influx: InfluxServer, n: int, timeout: float) -> None:
    def enough() -> bool:
        result = influx.query('SELECT count("avg_speed") FROM "traffic"', db=influx.db)
        series = result["results"][0].get("series")
        return bool(series) and int(series[0]["values"][0][1]) >= n

    wait_until(enough, timeout, f"{n} points in influxd")


def wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    """Wait until an ingestor process logs that it is subscribed."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"ingestor exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        return log_path.exists() and "ingestor ready" in log_path.read_text(errors="replace")

    try:
        wait_until(ready, timeout, "the ingestor process to subscribe")
    except TimeoutError:
        text = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else "no log"
        raise TimeoutError(f"ingestor not ready; its log:\n{text}") from None


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM and wait; returns the exit code (kills it if it hangs, and fails)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError("ingestor did not stop on SIGTERM") from None
    return int(proc.returncode)


class Publisher:
    """Publishes batches from a thread, at most ``rate`` per second, until done or stopped."""

    def __init__(self, gw: GatewayDouble, batches: list[Batch], rate: float = 200.0) -> None:
        self.gw = gw
        self.batches = batches
        self.rate = rate
        self.published = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            start = time.monotonic()
            for i, batch in enumerate(self.batches):
                if self._stop.is_set():
                    return
                ahead = start + i / self.rate - time.monotonic()
                if ahead > 0:
                    self._stop.wait(ahead)
                self.gw.publish(batch)
                self.published += 1
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "publisher did not finish"
        if self.error is not None:
            raise self.error
