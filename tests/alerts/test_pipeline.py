"""End to end: CoAP -> ``citysense edge`` -> Mosquitto -> ``citysense ingest`` -> embedded store
-> ``citysense alerts`` -> a webhook receiver run by the test, every part a real process.

A pm25 episode in one district raises that district's alarm and no other's (HMAC verified);
it is acknowledged over the alarms API and clears when the air does; a station that stops
sending raises ``device_offline``; ``kill -9`` of the gateway raises ``gateway_offline`` from
its Last Will (the retained status), also published on ``citysense/v1/alarms/<id>``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import aiocoap
import paho.mqtt.client as mqtt
from aiocoap.numbers.codes import Code
from paho.mqtt.enums import CallbackAPIVersion

from citysense.registry import Device, format_registry
from citysense.senml import CF_SENML_JSON, encode_values
from tests.alerts.helpers import SECRET, AlertsProcess, Receiver
from tests.e2e.pipeline import Service
from tests.servers import MosquittoServer, free_port, free_udp_port, wait_until

GATEWAY = "gw-alerts"
DEVICES = [
    ("aq-east-1", "east"),
    ("aq-east-2", "east"),
    ("aq-west-1", "west"),
    ("aq-west-2", "west"),
]
RULES = """
[[rule]]
name = "pm25-district-high"
kind = "metric"
metric = "pm25"
agg = "mean"
window = "4s"
group_by = "district"
above = 150.0
clear = 120.0
for = "1s"
clear_for = "1s"
severity = "major"

[[rule]]
name = "station-silent"
kind = "device_offline"
intervals = 0.03   # 9 s of silence for a station reporting every 300 s
severity = "minor"

[[rule]]
name = "gateway-down"
kind = "gateway_offline"
for = "2s"
severity = "critical"
"""


class Sender:
    """The stations: one CoAP POST per station per ``period`` with the current pm25 values."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.values = {d: 40.0 for d, _ in DEVICES}
        self.silent: set[str] = set()
        self.answers: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        ctx = await aiocoap.Context.create_client_context()
        try:
            while not self._stop.is_set():
                t = int(time.time() * 1000)
                for device, _ in DEVICES:
                    if device in self.silent:
                        continue
                    payload = encode_values(
                        device, t, {"pm25": self.values[device], "battery": 80.0}, CF_SENML_JSON
                    )
                    req = aiocoap.Message(
                        code=Code.POST, uri=f"coap://127.0.0.1:{self.port}/up", payload=payload
                    )
                    req.opt.content_format = CF_SENML_JSON
                    try:
                        resp = await asyncio.wait_for(ctx.request(req).response, 5)
                        code = resp.code.dotted
                    except Exception as exc:  # the gateway is gone: counted, not fatal
                        code = type(exc).__name__
                    self.answers[code] = self.answers.get(code, 0) + 1
                await asyncio.sleep(0.5)
        finally:
            await ctx.shutdown()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_pm25_episode_offline_station_and_dead_gateway(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    registry = tmp_path / "registry.csv"
    registry.write_text(
        format_registry(
            [
                Device(d, "air_station", dist, f"{dist}-s1", 34.7, 113.6, GATEWAY)
                for d, dist in DEVICES
            ]
        )
    )
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    store = tmp_path / "store"
    coap_port = free_udp_port()
    edge_dir, ingest_dir = tmp_path / "edge", tmp_path / "ingest"
    edge_dir.mkdir()
    ingest_dir.mkdir()
    edge_metrics, ingest_metrics = free_port(), free_port()
    edge = Service(
        "edge",
        [
            "edge",
            "--gateway",
            GATEWAY,
            "--coap",
            f"127.0.0.1:{coap_port}",
            "--mqtt",
            mosquitto.url,
            "--registry",
            str(registry),
            "--state-dir",
            str(edge_dir / "state"),
            "--metrics-bind",
            f"127.0.0.1:{edge_metrics}",
            "--batch-max-delay",
            "0.1",
            # the stations report every 0.5 s, not at their kind's 5 min: no per-device budget
            "--device-rate",
            "0",
        ],
        edge_dir,
        edge_metrics,
    )
    ingest = Service(
        "ingest",
        [
            "ingest",
            "--mqtt",
            mosquitto.url,
            "--state-dir",
            str(store),
            "--metrics-bind",
            f"127.0.0.1:{ingest_metrics}",
            "--write-max-delay",
            "0.05",
        ],
        ingest_dir,
        ingest_metrics,
    )
    receiver = Receiver().start()
    alarm_topics: dict[str, bytes] = {}
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alarm-watcher")
    watcher.on_connect = lambda c, *a: c.subscribe("citysense/v1/alarms/#", qos=1)

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        alarm_topics[msg.topic] = bytes(msg.payload)

    watcher.on_message = on_message
    sender = Sender(coap_port)
    alerts = AlertsProcess(
        tmp_path,
        [
            "--rules",
            str(rules),
            "--state-dir",
            str(store),
            "--mqtt",
            mosquitto.url,
            "--registry",
            str(registry),
            "--interval",
            "0.5",
            "--webhook",
            receiver.url,
            "--webhook-secret-file",
            str(secret),
        ],
    )
    try:
        ingest.start()
        edge.start()
        sender.start()
        time.sleep(
            2
        )  # stations seen before alerts starts (a registered, never-seen one is offline)
        alerts.start()
        watcher.connect("127.0.0.1", mosquitto.port)
        watcher.loop_start()
        time.sleep(3)
        assert not receiver.events("raised"), receiver.accepted()  # clean air: no alarm

        # haze over the east district only
        for device, district in DEVICES:
            if district == "east":
                sender.values[device] = 260.0
        wait_until(
            lambda: receiver.events("raised", "pm25-district-high"), 60, "the east pm25 alarm"
        )
        time.sleep(2)
        raised = receiver.events("raised", "pm25-district-high")
        assert [e["alarm"]["subject"] for e in raised] == [{"district": "east"}]
        assert receiver.bad_signatures == 0 and all(r["signed"] for r in receiver.requests)
        alarm = raised[0]["alarm"]
        wait_until(
            lambda: f"citysense/v1/alarms/{alarm['id']}" in alarm_topics, 20, "the MQTT alarm state"
        )
        assert json.loads(alarm_topics[f"citysense/v1/alarms/{alarm['id']}"])["state"] == "raised"

        status, acked = alerts.post(
            f"/api/v1/alarms/{alarm['id']}/ack", {"comment": "inspecting", "by": "duty"}
        )
        assert status == 200 and acked["state"] == "acknowledged"
        wait_until(lambda: receiver.events("acknowledged"), 20, "the acknowledged event")

        for device, district in DEVICES:  # the haze lifts
            if district == "east":
                sender.values[device] = 30.0
        wait_until(
            lambda: receiver.events("cleared", "pm25-district-high"), 60, "the east alarm to clear"
        )

        sender.silent.add("aq-west-2")  # a station stops sending
        wait_until(lambda: receiver.events("raised", "station-silent"), 60, "device_offline")
        offline = receiver.events("raised", "station-silent")
        assert [e["alarm"]["subject"] for e in offline] == [{"device": "aq-west-2"}]
        assert offline[0]["alarm"]["evidence"]["district"] == "west"
        assert not receiver.events("raised", "gateway-down")

        edge.kill()  # kill -9: the broker publishes the gateway's Last Will (retained offline)
        wait_until(lambda: receiver.events("raised", "gateway-down"), 60, "gateway_offline")
        down = receiver.events("raised", "gateway-down")[0]["alarm"]
        assert down["subject"] == {"gateway": GATEWAY} and down["severity"] == "critical"
        assert down["value"] >= 2.0

        history = alerts.get("/api/v1/alarms?state=cleared")["alarms"]
        assert [a["rule"] for a in history] == ["pm25-district-high"]
        assert sender.answers.get("2.04", 0) > 20
    finally:
        sender.stop()
        watcher.loop_stop()
        alerts.stop()
        receiver.stop()
        for service in (edge, ingest):
            try:
                service.stop(20)
            except Exception:
                pass
