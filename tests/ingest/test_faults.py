"""Faults, each ending with the set check: every reading of every published batch is in
influxd exactly once -- nothing missing, nothing extra.

Real ``citysense ingest`` processes, real Mosquitto (deploy/mosquitto.conf), real influxd.
The InfluxDB outage lasts ``CITYSENSE_OUTAGE_S`` seconds (default 5 s to keep CI short; set 60
for the full-length run): what matters is that writes fail for a while, not for how long.
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ingest.gateway_double import (
    GatewayDouble,
    Publisher,
    expected_readings,
    ingestor_process,
    make_batch,
    stop_process,
    stored_readings,
    wait_ready,
)
from tests.servers import InfluxServer, MosquittoServer, free_port, wait_until

OUTAGE_S = float(os.environ.get("CITYSENSE_OUTAGE_S", "5"))

pytestmark = pytest.mark.timeout(240)


def _log(state: Path, client_id: str) -> Path:
    return state / f"ingest-{client_id}.log"


def test_kill_9_mid_stream_then_restart(
    mosquitto: MosquittoServer, influx_db: InfluxServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    batches = [make_batch("gw-test-01", seq, 10) for seq in range(1, 601)]
    proc = ingestor_process(mosquitto.url, influx_db, state, "ingest-a")
    gw = GatewayDouble(mosquitto.port)
    try:
        wait_ready(proc, _log(state, "ingest-a"))
        publisher = Publisher(gw, batches, rate=150).start()
        wait_until(lambda: len(gw.confirmed) >= 150, 60, "150 batches stored")
        proc.kill()  # kill -9: whatever was received and not acknowledged is redelivered
        proc.wait(10)
        killed_at = len(gw.confirmed)
        proc = ingestor_process(mosquitto.url, influx_db, state, "ingest-a")
        wait_ready(proc, _log(state, "ingest-a"))
        publisher.join()
        gw.wait_all_confirmed(90)
        assert killed_at < len(batches)  # it really died mid-stream
    finally:
        gw.close()
        stop_process(proc)
    assert sorted(stored_readings(influx_db)) == expected_readings(batches)


def test_influxd_outage(
    mosquitto: MosquittoServer, influxd_private: InfluxServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    batches = [make_batch("gw-test-01", seq, 10) for seq in range(1, 401)]
    proc = ingestor_process(mosquitto.url, influxd_private, state, "ingest-a")
    gw = GatewayDouble(mosquitto.port)
    try:
        wait_ready(proc, _log(state, "ingest-a"))
        publisher = Publisher(gw, batches, rate=100).start()
        wait_until(lambda: len(gw.confirmed) >= 50, 60, "50 batches stored")
        influxd_private.stop()
        wait_until(lambda: publisher.published >= 150, 60, "150 batches published")
        wait_until(lambda: "retrying" in _log(state, "ingest-a").read_text(), 60, "a write retry")
        # Confirmations of writes answered before the stop may still be on their way: wait
        # until the count holds still, then nothing may be confirmed while storage is down.
        _wait_steady(gw)
        _sleep_while_down(OUTAGE_S, gw, len(gw.confirmed))
        influxd_private.start()
        publisher.join()
        gw.wait_all_confirmed(120)
    finally:
        gw.close()
        stop_process(proc)
    assert sorted(stored_readings(influxd_private)) == expected_readings(batches)


def _wait_steady(gw: GatewayDouble, quiet: float = 1.0) -> None:
    last = [len(gw.confirmed), time.monotonic()]

    def steady() -> bool:
        n = len(gw.confirmed)
        if n != last[0]:
            last[:] = [n, time.monotonic()]
        return time.monotonic() - last[1] >= quiet

    wait_until(steady, 30, "confirmations to stop while storage is down")


def _sleep_while_down(seconds: float, gw: GatewayDouble, confirmed: int) -> None:
    """Keep storage down for ``seconds``, checking all along that nothing gets confirmed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert len(gw.confirmed) == confirmed
        time.sleep(0.2)


def test_mosquitto_restart(
    mosquitto: MosquittoServer, influx_db: InfluxServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = [make_batch("gw-test-01", seq, 10) for seq in range(1, 201)]
    second = [make_batch("gw-test-01", seq, 10) for seq in range(201, 401)]
    proc = ingestor_process(mosquitto.url, influx_db, state, "ingest-a")
    gw = GatewayDouble(mosquitto.port)
    try:
        wait_ready(proc, _log(state, "ingest-a"))
        Publisher(gw, first, rate=400).start().join()
        mosquitto.stop()  # a clean restart: the broker saves its queues and sessions
        mosquitto.start()
        wait_until(lambda: gw.client.is_connected(), 30, "the gateway to reconnect")
        log = _log(state, "ingest-a")
        wait_until(lambda: log.read_text().count("connected to") >= 2, 60, "ingestor reconnect")
        Publisher(gw, second, rate=400).start().join()
        # A gateway re-sends what is not confirmed (its outbox contract): whatever a broker
        # loses in a restart costs a re-send, never a reading. (Usually nothing is re-sent.)
        gw.wait_all_confirmed(90, resend_every=30)
        assert "connected to" in _log(state, "ingest-a").read_text()
    finally:
        gw.close()
        stop_process(proc)
    assert sorted(stored_readings(influx_db)) == expected_readings(first + second)


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def test_two_ingestors_share_the_subscription_one_killed(
    mosquitto: MosquittoServer, influx_db: InfluxServer, tmp_path: Path
) -> None:
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    port_a, port_b = free_port(), free_port()
    batches = [make_batch("gw-test-01", seq, 10) for seq in range(1, 601)]
    a = ingestor_process(
        mosquitto.url, influx_db, state_a, "ingest-a", "--metrics-bind", f"127.0.0.1:{port_a}"
    )
    b = ingestor_process(
        mosquitto.url, influx_db, state_b, "ingest-b", "--metrics-bind", f"127.0.0.1:{port_b}"
    )
    gw = GatewayDouble(mosquitto.port)
    try:
        wait_ready(a, _log(state_a, "ingest-a"))
        wait_ready(b, _log(state_b, "ingest-b"))
        publisher = Publisher(gw, batches, rate=150).start()
        wait_until(lambda: len(gw.confirmed) >= 150, 60, "150 batches stored")
        assert _metric(port_a, "citysense_ingest_messages_total") > 0
        assert _metric(port_b, "citysense_ingest_messages_total") > 0  # the load is shared
        a.kill()
        a.wait(10)
        wait_until(lambda: len(gw.confirmed) >= 250, 60, "the survivor to go on storing")
        a = ingestor_process(mosquitto.url, influx_db, state_a, "ingest-a", "--metrics-bind", "off")
        wait_ready(a, _log(state_a, "ingest-a"))
        publisher.join()
        gw.wait_all_confirmed(90)
        assert stop_process(b) == 0 and stop_process(a) == 0
    finally:
        gw.close()
        stop_process(a)
        stop_process(b)
    assert sorted(stored_readings(influx_db)) == expected_readings(batches)
