"""End to end, under faults: every reading acknowledged with 2.04 is in InfluxDB exactly once.

Each test runs the real pipeline (see :mod:`tests.e2e.pipeline`), injects one fault while the
fleet sends, then checks the sets. CI size: short outages (``CITYSENSE_SOAK=1`` for the full
60 s InfluxDB outage and 2 min partition).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.e2e.conftest import SOAK, record
from tests.e2e.pipeline import Accounting, Pipeline
from tests.servers import InfluxServer, MosquittoServer

LOAD_S = 40.0 if SOAK else 14.0
FAULT_AT = 4.0
INFLUX_OUTAGE_S = 60.0 if SOAK else 10.0
PARTITION_S = 120.0 if SOAK else 10.0

pytestmark = pytest.mark.timeout(600)


def run_load(p: Pipeline, fault: Callable[[], None] | None = None, faults: str = "") -> Accounting:
    p.start_load(faults=faults)
    time.sleep(FAULT_AT)
    if fault is not None:
        fault()
    remaining = LOAD_S - FAULT_AT
    time.sleep(max(remaining, 1.0))
    return p.account()


def check(p: Pipeline, acc: Accounting, fault: str, detail: str) -> None:
    record(fault, detail, acc)
    context = f"{acc}\n{p.logs()}"
    assert acc.acknowledged > 0, context
    assert acc.lost == 0, context
    assert acc.duplicates == 0, context
    assert acc.invented == 0, context
    assert acc.wrong_values == 0, context
    # the value check compares real values: every acknowledged uplink carried some
    assert all(o.values for o in p.counters.outcomes if o.outcome == "2.04"), "values not recorded"
    assert acc.stored >= acc.expected, context


def test_clean_run(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()
    acc = run_load(p)
    check(p, acc, "none", "clean run")
    assert acc.unanswered == 0 and not acc.rejected, acc
    assert p.gateway.stop() == 0, p.gateway.log_tail()
    assert p.ingestors[0].stop() == 0, p.ingestors[0].log_tail()


def test_gateway_kill_9(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()

    def fault() -> None:
        for _ in range(2):
            p.gateway.kill()
            p.gateway.start()
            time.sleep(2.0)

    check(p, run_load(p, fault), "gateway kill -9", "killed twice, restarted at once")


def test_ingestor_kill_9(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()

    def fault() -> None:
        p.ingestors[0].kill()
        time.sleep(2.0)
        p.ingestors[0].start()

    check(p, run_load(p, fault), "ingestor kill -9", "killed, restarted after 2 s")


def test_two_ingestors_one_killed(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline(ingestors=2)
    check(
        p,
        run_load(p, p.ingestors[1].kill),
        "ingestor kill -9 (1 of 2)",
        "shared subscription, not restarted",
    )


def test_mosquitto_restart(
    make_pipeline: Callable[..., Pipeline], mosquitto: MosquittoServer
) -> None:
    p = make_pipeline()
    check(
        p,
        run_load(p, mosquitto.restart),
        "Mosquitto SIGTERM + restart",
        "same port, persistence on",
    )


def test_mosquitto_kill_9(
    make_pipeline: Callable[..., Pipeline], mosquitto: MosquittoServer
) -> None:
    p = make_pipeline()

    def fault() -> None:
        mosquitto.kill()
        time.sleep(2.0)
        mosquitto.start()

    check(
        p,
        run_load(p, fault),
        "Mosquitto kill -9",
        "down 2 s, acknowledged messages lost by the broker",
    )


def test_influxd_outage(
    make_pipeline: Callable[..., Pipeline], influxd_private: InfluxServer
) -> None:
    p = make_pipeline()

    def fault() -> None:
        influxd_private.stop()
        time.sleep(INFLUX_OUTAGE_S)
        influxd_private.start()

    check(p, run_load(p, fault), "influxd down", f"stopped for {INFLUX_OUTAGE_S:.0f} s")


def test_network_partition(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline(proxy=True)
    assert p.proxy is not None

    def fault() -> None:
        assert p.proxy is not None
        p.proxy.partition()
        time.sleep(PARTITION_S)
        p.proxy.heal()

    check(
        p,
        run_load(p, fault),
        "network partition gateway-broker",
        f"blackholed for {PARTITION_S:.0f} s",
    )


POISON: list[tuple[str, bytes]] = [
    ("citysense/v1/gw-poison/up", b"{not json"),
    (
        "citysense/v1/gw-poison/up",
        json.dumps({"v": 2, "gateway": "gw-poison", "seq": 1, "sent": 0, "readings": []}).encode(),
    ),
    ("citysense/v1/gw-poison/up", b"[" * 2_000_000),
    (
        "citysense/v1/gw-poison/up",
        json.dumps(
            {"v": 1, "gateway": "gw-poison", "seq": "x", "sent": 0, "readings": []}
        ).encode(),
    ),
    (
        "citysense/v1/gw-poison/up",
        json.dumps({"v": 1, "gateway": "gw-other", "seq": 1, "sent": 0, "readings": []}).encode(),
    ),
    (
        "citysense/v1/gw-poison/up",
        json.dumps(
            {
                "v": 1,
                "gateway": "gw-poison",
                "seq": 2,
                "sent": 0,
                "readings": [
                    {
                        "device": "d1",
                        "kind": "air_station",
                        "district": "x",
                        "site": "y",
                        "t": int(time.time() * 1000),
                        "values": {"pm25": -5},
                    }
                ],
            }
        ).encode(),
    ),
]


def test_poison_messages(
    make_pipeline: Callable[..., Pipeline], mosquitto: MosquittoServer
) -> None:
    p = make_pipeline()

    def fault() -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="e2e-poison", protocol=mqtt.MQTTv5
        )
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            for topic, payload in POISON:
                client.publish(topic, payload, qos=1).wait_for_publish(30)
        finally:
            client.loop_stop()
            client.disconnect()

    acc = run_load(p, fault)
    check(p, acc, "poison messages", f"{len(POISON)} bad envelopes mixed in")
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "citysense",
            "ingest",
            "dead-letters",
            "--state-dir",
            str(p.ingestors[0].workdir / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert "gw-poison" in listing.stdout, listing.stdout[:2000]


def test_device_clock_skew(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()
    acc = run_load(p, faults="skew=0.2")
    check(p, acc, "device clock skew", "20% of devices hours ahead: refused with 4.00")
    assert acc.rejected.get("4.00", 0) > 0, acc
    future = int(time.time() * 1000) + 5 * 60 * 1000
    assert all(t <= future for _, _, t in p.stored_rows())
