"""Peer: a naive per-message writer -- paho callback, one ``/write`` per MQTT message.

What a first script between Mosquitto and InfluxDB looks like: subscribe (QoS 1, MQTT 3.1.1,
clean session), turn each envelope into line protocol and POST it before returning from the
callback (paho then acknowledges), over one kept-alive HTTP connection.

Run: ``python -m bench.peers.naive --mqtt-port P --influx-url URL --db DB``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import signal
import sys
import urllib.parse

import paho.mqtt.client as mqtt

from bench.peers.lineproto import envelope_lines

TOPIC = "citysense/v1/+/up"
log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.naive")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--influx-url", required=True)
    p.add_argument("--db", required=True)
    a = p.parse_args(argv)
    url = urllib.parse.urlsplit(a.influx_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    path = "/write?" + urllib.parse.urlencode({"db": a.db, "precision": "ms"})

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        c.subscribe(TOPIC, qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = "\n".join(envelope_lines(msg.payload)).encode()
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            log.error("/write answered %s", resp.status)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=mqtt.MQTTv311
    )
    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect("127.0.0.1", a.mqtt_port, keepalive=60)
    client.loop_forever()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
