"""Peer: a simple batched writer -- paho collects lines, a thread writes ~5,000 at a time.

The usual improvement over one write per message: the paho callback only converts and
appends (so paho acknowledges at once, before anything is stored); a writer thread POSTs
whatever has accumulated once it reaches ``--batch`` lines or ``--max-delay`` seconds have
passed, retrying a failed write after a second.

Run: ``python -m bench.peers.batched --mqtt-port P --influx-url URL --db DB``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import paho.mqtt.client as mqtt

from bench.peers.common import peer_parser, subscribe_until_sigterm, write_connection
from bench.peers.lineproto import envelope_lines

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = peer_parser("bench.peers.batched")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--max-delay", type=float, default=1.0)
    a = p.parse_args(argv)
    pending: list[str] = []
    cond = threading.Condition()
    stopping = threading.Event()

    def writer() -> None:
        nonlocal pending
        conn, path = write_connection(a.influx_url, a.db)
        while True:
            with cond:
                deadline = time.monotonic() + a.max_delay
                while len(pending) < a.batch and not stopping.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
                lines, pending = pending, []
            if lines:
                body = "\n".join(lines).encode()
                while True:
                    try:
                        conn.request("POST", path, body=body)
                        resp = conn.getresponse()
                        resp.read()
                        if resp.status == 204:
                            break
                        log.error("/write answered %s", resp.status)
                    except OSError as exc:
                        log.error("/write failed: %s", exc)
                        conn.close()
                    time.sleep(1)
            elif stopping.is_set():
                conn.close()
                return

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        lines = envelope_lines(msg.payload)
        with cond:
            pending.extend(lines)
            if len(pending) >= a.batch:
                cond.notify()

    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    subscribe_until_sigterm("bench-batched", a.mqtt_port, on_message)
    stopping.set()
    with cond:
        cond.notify()
    thread.join(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
