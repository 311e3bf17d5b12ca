"""Peer: a naive per-message writer -- paho callback, one ``/write`` per MQTT message.

What a first script between Mosquitto and InfluxDB looks like: subscribe (QoS 1, MQTT 3.1.1,
clean session), turn each envelope into line protocol and POST it before returning from the
callback (paho then acknowledges), over one kept-alive HTTP connection.

Run: ``python -m bench.peers.naive --mqtt-port P --influx-url URL --db DB``; SIGTERM stops it.
"""

from __future__ import annotations

import logging
import sys

import paho.mqtt.client as mqtt

from bench.peers.common import peer_parser, subscribe_until_sigterm, write_connection
from bench.peers.lineproto import envelope_lines

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    a = peer_parser("bench.peers.naive").parse_args(argv)
    conn, path = write_connection(a.influx_url, a.db)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = "\n".join(envelope_lines(msg.payload)).encode()
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            log.error("/write answered %s", resp.status)

    subscribe_until_sigterm("bench-naive", a.mqtt_port, on_message)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
