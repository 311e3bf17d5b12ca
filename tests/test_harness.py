"""The harness itself: real Mosquitto and real influxd answer their real protocols."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.servers import InfluxServer, MosquittoServer


def test_publish_through_real_mosquitto_and_read_back(mosquitto: MosquittoServer) -> None:
    got: list[bytes] = []
    arrived = threading.Event()
    subscribed = threading.Event()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="harness-sub", protocol=mqtt.MQTTv5)
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        arrived.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("citysense/v1/gw-test/up", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        pub = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="harness-pub", protocol=mqtt.MQTTv5
        )
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        info = pub.publish("citysense/v1/gw-test/up", b"hello city", qos=1)
        info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        assert arrived.wait(10)
        assert got == [b"hello city"]
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_write_and_query_real_influxd(influx_db: InfluxServer) -> None:
    influx_db.write("environment,device=d1,district=jinshui pm25=35.5 1764000000000")
    rows = influx_db.rows('SELECT "pm25" FROM "environment" WHERE "device" = \'d1\'')
    assert rows == [[1764000000000, 35.5]]


def test_mosquitto_restart_keeps_port(mosquitto: MosquittoServer) -> None:
    port = mosquitto.port
    mosquitto.kill()
    assert not mosquitto.ready()
    mosquitto.start()
    assert mosquitto.port == port and mosquitto.ready()
