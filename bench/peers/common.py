"""What the Python peers share: their command line, influxd's ``/write`` and their subscriber.

Both subscribe to every gateway's uplinks at QoS 1 over MQTT 3.1.1 with a clean session,
write over one kept-alive HTTP connection, and stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import urllib.parse
from collections.abc import Callable

import paho.mqtt.client as mqtt

TOPIC = "citysense/v1/+/up"


def peer_parser(module: str) -> argparse.ArgumentParser:
    """The command line of ``python -m module``: the broker's port, influxd and the database."""
    p = argparse.ArgumentParser(prog=f"python -m {module}")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--influx-url", required=True)
    p.add_argument("--db", required=True)
    return p


def write_connection(
    influx_url: str, db: str, timeout: float = 30
) -> tuple[http.client.HTTPConnection, str]:
    """A connection to influxd at ``influx_url`` and the ``/write`` path into ``db`` (ms)."""
    url = urllib.parse.urlsplit(influx_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    return conn, "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"})


def subscribe_until_sigterm(
    client_id: str,
    port: int,
    on_message: Callable[[mqtt.Client, object, mqtt.MQTTMessage], None],
) -> None:
    """Hand every uplink on the broker at ``port`` to ``on_message`` until SIGTERM."""

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        c.subscribe(TOPIC, qos=1)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
    )
    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_forever()
