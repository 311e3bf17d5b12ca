"""The simulated fleet against the REAL gateway (``edge.service.serve``) on real UDP, with
real Mosquitto: every uplink the gateway acknowledged reaches MQTT, faults get the answer
codes of INTERFACES.md section 3, and a command sent on ``.../down`` reaches its device in a
2.04 answer and is obeyed."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from citysense import topics
from citysense.config import Settings, load_settings
from citysense.envelope import decode_batch
from citysense.registry import format_registry
from simulators.city import generate_fleet
from simulators.coap_client import TransmissionParameters
from simulators.faults import EXPECTED_CODES, FaultPlan
from simulators.fleet import Counters, Fleet
from tests.servers import MosquittoServer, free_udp_port, wait_until

FAST = TransmissionParameters(ack_timeout=0.3, ack_random_factor=1.5, max_retransmit=4)
GATEWAY = "gw-01"


class Cloud:
    """The cloud side of MQTT for this test: records readings on ``.../up`` and confirms
    them on ``.../stored`` (the real ingestor is another service)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)

        self.lock = threading.Lock()
        self.keys: set[tuple[str, int]] = set()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sim-test-cloud-{random.randrange(1 << 30)}",
            protocol=mqtt.MQTTv5,
        )
        self.online = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(topics.topic(GATEWAY, topics.UP), 1), (topics.topic(GATEWAY, topics.STATUS), 1)]
        )
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(host, int(port), 30)
        self.client.loop_start()
        assert self.subscribed.wait(20), "test subscriber did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topics.topic(GATEWAY, topics.STATUS):
            # the gateway subscribes to .../down before it says online (same connection)
            if b'"online"' in msg.payload and not msg.retain:
                self.online.set()
            return
        batch = decode_batch(bytes(msg.payload))
        with self.lock:
            self.keys.update((r.device, r.t) for r in batch.readings)
        client.publish(
            topics.topic(GATEWAY, topics.STORED), topics.encode_stored([batch.seq]), qos=1
        )

    def send_down(self, command: dict[str, Any]) -> None:
        self.client.publish(
            topics.topic(GATEWAY, topics.DOWN), json.dumps(command), qos=1
        ).wait_for_publish(10)

    def snapshot(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.keys)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gateway_settings(tmp: Path, mqtt_url: str, devices: int, seed: int) -> Settings:
    registry = tmp / "registry.csv"
    registry.write_text(format_registry(generate_fleet(devices, seed, [GATEWAY])))
    return load_settings(
        "edge",
        {
            "gateway": GATEWAY,
            "coap": f"127.0.0.1:{free_udp_port()}",
            "mqtt": mqtt_url,
            "registry": str(registry),
            "state_dir": str(tmp / "state"),
            "metrics_bind": "off",
            "batch_max_delay": "0.05",
            "device_rate": "0",  # the fleet runs on a fast clock
        },
        environ={},
    )


async def run_with_gateway(
    settings: Settings, fleet: Fleet, seconds: float, before: Any = None
) -> None:
    from edge.service import serve

    ready = asyncio.Event()
    gateway = asyncio.create_task(serve(settings, ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        if before is not None:
            await before()
        await fleet.open()
        await fleet.run(asyncio.Event(), duration=seconds)
        await fleet.aclose(20.0)
    finally:
        gateway.cancel()
        try:
            await gateway
        except asyncio.CancelledError:
            pass


def test_every_uplink_the_gateway_acknowledged_reaches_mqtt(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    settings = gateway_settings(tmp_path, mosquitto.url, 120, seed=21)
    devices = generate_fleet(120, 21, [GATEWAY])
    cloud = Cloud(mosquitto.url)
    try:
        faults = ("loss=0.1", "duplicate=0.1", *(f"{f}=0.05" for f in EXPECTED_CODES))
        counters = Counters(record=True)
        fleet = Fleet(
            devices,
            ("127.0.0.1", int(settings.coap.rsplit(":", 1)[1])),
            seed=21,
            time_scale=60.0,
            report_interval=60.0,
            faults=FaultPlan.from_settings(faults, 21),
            params=FAST,
            counters=counters,
        )
        asyncio.run(run_with_gateway(settings, fleet, 4.0))
        assert counters.in_flight == 0 and counters.abandoned == 0
        assert counters.sent == counters.finished
        acked = {(o.device, o.t) for o in counters.outcomes if o.outcome == "2.04"}
        assert len(acked) == counters.acknowledged > 100
        # what the gateway said yes to, it delivered (it published before or after our stop)
        wait_until(lambda: acked <= cloud.snapshot(), 30, "acknowledged uplinks on MQTT")
        # and it delivered nothing the fleet did not send, each uplink once per key
        assert cloud.snapshot() <= {(o.device, o.t) for o in counters.outcomes}
        by_fault: dict[str | None, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        for o in counters.outcomes:
            by_fault[o.fault][o.outcome] += 1
        for fault, code in EXPECTED_CODES.items():
            assert by_fault[fault][code] > 0, (fault, by_fault[fault])
            assert set(by_fault[fault]) <= {code, "timeout"}, (fault, by_fault[fault])
        assert set(by_fault[None]) <= {"2.04", "timeout"}
    finally:
        cloud.close()


def test_a_command_on_down_reaches_the_device_and_is_obeyed(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    settings = gateway_settings(tmp_path, mosquitto.url, 8, seed=22)
    devices = generate_fleet(8, 22, [GATEWAY])
    target = devices[0].device
    cloud = Cloud(mosquitto.url)
    try:
        counters = Counters(record=True)
        fleet = Fleet(
            devices,
            ("127.0.0.1", int(settings.coap.rsplit(":", 1)[1])),
            seed=22,
            time_scale=60.0,
            report_interval=30.0,
            params=FAST,
            counters=counters,
        )

        async def queue_command() -> None:
            # a command sent before the gateway subscribed to .../down would be lost
            await asyncio.to_thread(cloud.online.wait, 20)
            cloud.send_down(
                {
                    "id": "cmd-1",
                    "device": target,
                    "command": "report_interval",
                    "args": {"seconds": 900},
                    "expires": int(time.time() * 1000) + 600_000,
                }
            )

        asyncio.run(run_with_gateway(settings, fleet, 4.0, queue_command))
        assert counters.downlinks == 1
        assert int(fleet.interval_ms[0]) == 900_000
        sent = collections.Counter(o.device for o in counters.outcomes)
        # every 0.5 s until the command came (in the answer to an uplink), then asleep for
        # 15 s of wall time
        assert sent[target] < min(sent[d.device] for d in devices[1:])
    finally:
        cloud.close()
