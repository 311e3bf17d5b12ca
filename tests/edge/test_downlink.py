"""Downlink for sleeping devices over real Mosquitto and real UDP: a command from ``.../down``
rides on the response to the device's next uplink; expiry, rejection and restarts."""

from __future__ import annotations

import time
from pathlib import Path

from aiocoap.numbers.codes import Code

from citysense.senml import CF_SENML_JSON, decode_senml
from edge.downlink import parse_command, response_payload
from tests.edge.gateway import (
    GatewayThread,
    coap_port,
    edge_settings,
    ingestor,
    post_uplink,
    uplink_payload,
    write_registry,
)
from tests.servers import MosquittoServer, wait_until


def now_ms() -> int:
    return int(time.time() * 1000)


def command_of(payload: bytes) -> dict[str, object]:
    records = decode_senml(payload, CF_SENML_JSON, time.time())
    return {r.name.rpartition(":")[2]: r.value for r in records} | {
        "device": records[0].name.rpartition(":")[0]
    }


def test_command_reaches_a_sleeping_device_in_its_next_response(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    devices = write_registry(tmp_path / "registry.csv", 3)
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url)
    with ingestor(mosquitto.url) as ing:
        with GatewayThread(settings):
            port = coap_port(settings)
            ing.wait_online()
            ing.send_down(
                {
                    "id": "c-1",
                    "device": devices[0],
                    "command": "set_interval",
                    "args": {"seconds": 600},
                    "expires": now_ms() + 120_000,
                }
            )
            wait_until(lambda: ing.ack_states("c-1") == ["queued"], 20, "queued ack")
            # another device's uplink does not take it
            other = post_uplink(port, uplink_payload(devices[1], now_ms()))
            assert other.code == Code.CHANGED and other.payload == b""
            # a second command waits behind the first, across a gateway restart
            ing.send_down(
                {
                    "id": "c-2",
                    "device": devices[0],
                    "command": "reboot",
                    "expires": now_ms() + 120_000,
                }
            )
            wait_until(lambda: ing.ack_states("c-2") == ["queued"], 20, "second queued ack")
        with GatewayThread(settings):
            answer = post_uplink(port, uplink_payload(devices[0], now_ms()))
            assert answer.code == Code.CHANGED
            assert answer.opt.content_format == CF_SENML_JSON
            cmd = command_of(answer.payload)
            assert cmd["cmd"] == "set_interval" and cmd["cmd_id"] == "c-1"
            assert cmd["device"] == devices[0] and cmd["cmd_args"] == '{"seconds":600}'
            wait_until(lambda: "delivered" in ing.ack_states("c-1"), 20, "delivered ack")
            second = command_of(post_uplink(port, uplink_payload(devices[0], now_ms())).payload)
            assert second["cmd_id"] == "c-2"
            assert post_uplink(port, uplink_payload(devices[0], now_ms())).payload == b""


def test_expired_and_rejected_commands_are_reported(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    devices = write_registry(tmp_path / "registry.csv", 3)
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url)
    with ingestor(mosquitto.url) as ing, GatewayThread(settings):
        port = coap_port(settings)
        ing.wait_online()
        ing.send_down(
            {"id": "soon", "device": devices[2], "command": "ping", "expires": now_ms() + 1500}
        )
        wait_until(lambda: ing.ack_states("soon")[:1] == ["queued"], 20, "queued ack")
        wait_until(lambda: "expired" in ing.ack_states("soon"), 20, "expired ack")
        assert post_uplink(port, uplink_payload(devices[2], now_ms())).payload == b""
        ing.send_down(
            {"id": "late", "device": devices[2], "command": "ping", "expires": now_ms() - 1}
        )
        ing.send_down(
            {
                "id": "nobody",
                "device": "urn:imei:1",
                "command": "ping",
                "expires": now_ms() + 9_000_000,
            }
        )
        ing.send_down({"id": "broken", "device": devices[2], "command": 5})
        wait_until(lambda: ing.ack_states("late") == ["expired"], 20, "expired at arrival")
        wait_until(lambda: ing.ack_states("nobody") == ["rejected"], 20, "unknown device")
        wait_until(lambda: ing.ack_states("broken") == ["rejected"], 20, "malformed command")


def test_command_codec_round_trip() -> None:
    raw = (
        b'{"id":"x1","device":"urn:imei:1","command":"open_valve","args":{"a":1},'
        b'"expires":1764000000000}'
    )
    cmd = parse_command(raw)
    decoded = command_of(response_payload(cmd))
    assert decoded["cmd"] == "open_valve" and decoded["cmd_expires"] == 1764000000.0
