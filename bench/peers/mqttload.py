"""Bounded MQTT load: a paho QoS 1 publisher and a counting paho subscriber.

Run as ``python -m bench.peers.mqttload pub|sub ...`` so that the load runs in its own
process (its own interpreter lock). Both stop after ``--count`` messages or ``--seconds``,
whichever comes first, and print one JSON line: ``{"messages": n, "seconds": s}``.

The publisher reads ``topic<TAB>payload`` lines (:func:`bench.harness.write_payload_file`)
and keeps paho's default in-flight window of 20: a larger one was measured slower.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt


def _client(client_id: str, clean: bool = True) -> mqtt.Client:
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean,
    )


def _read_load(path: Path, count: int) -> list[tuple[bytes, bytes]]:
    """The first ``count`` (topic, payload) lines of a load file, both as bytes."""
    out: list[tuple[bytes, bytes]] = []
    with open(path, "rb") as f:
        for line in f:
            if len(out) >= count:
                break
            topic, _, body = line.rstrip(b"\n").partition(b"\t")
            out.append((topic, body))
    return out


def publish(port: int, path: Path, count: int, seconds: float, qos: int = 1) -> dict[str, float]:
    """Publish up to ``count`` messages of ``path``; return what was acknowledged and when."""
    messages = [(topic.decode(), body) for topic, body in _read_load(path, count)]
    client = _client(f"bench-pub-{time.monotonic_ns()}")
    acked = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked >= len(messages):
                done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    start = time.monotonic()
    deadline = start + seconds
    try:
        sent = 0
        for topic, body in messages:
            if time.monotonic() > deadline:
                break
            client.publish(topic, body, qos=qos)
            sent += 1
            # Keep paho's own queue short so the time limit stays a limit.
            while sent - acked > 5000 and time.monotonic() < deadline:
                time.sleep(0.001)
        if sent < len(messages):
            messages = messages[:sent]
        if qos == 0:
            done.set()
        done.wait(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - start
    finally:
        client.disconnect()
        client.loop_stop()
    return {"messages": acked if qos else sent, "seconds": elapsed}


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def raw_publish(
    port: int, path: Path, count: int, seconds: float, window: int = 2000
) -> dict[str, float]:
    """Publish like :func:`publish` over a bare MQTT 3.1.1 socket, ``window`` QoS 1 in flight.

    paho's Python publisher tops out near 25k messages/s, below what the broker and the
    fastest consumers reach with one reading per message; this one encodes PUBLISH packets
    itself and is limited by the broker, so the load never sets the figure.
    """
    bodies = [(len(t).to_bytes(2, "big") + t, body) for t, body in _read_load(path, count)]
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"bench-rawpub-{time.monotonic_ns()}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x00"  # 3.1.1, clean session, no keepalive
    payload = len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(b"\x10" + _remaining_length(len(var) + len(payload)) + var + payload)
    if _recv_exact(sock, 4)[:2] != b"\x20\x02":
        raise ConnectionError("no CONNACK")
    acked = 0
    cond = threading.Condition()
    failed: list[BaseException] = []

    def read_acks() -> None:
        nonlocal acked
        try:
            while acked < len(bodies):
                data = (
                    _recv_exact(sock, 4 * 64) if len(bodies) - acked >= 64 else _recv_exact(sock, 4)
                )
                with cond:
                    acked += len(data) // 4
                    cond.notify_all()
        except (OSError, ConnectionError) as exc:
            failed.append(exc)
            with cond:
                cond.notify_all()

    reader = threading.Thread(target=read_acks, daemon=True)
    start = time.monotonic()
    deadline = start + seconds
    reader.start()
    sent = 0
    chunk: list[bytes] = []
    for topic, body in bodies:
        mid = sent % 65535 + 1
        rest = topic + mid.to_bytes(2, "big") + body
        chunk.append(b"\x32" + _remaining_length(len(rest)) + rest)
        sent += 1
        if len(chunk) >= 32 or sent == len(bodies):
            with cond:
                while sent - acked > window and not failed and time.monotonic() < deadline:
                    cond.wait(0.5)
            if failed or time.monotonic() > deadline:
                break
            sock.sendall(b"".join(chunk))
            chunk = []
    else:
        chunk = []
    if chunk:  # not sent: stopped by the deadline
        sent -= len(chunk)
    with cond:
        while acked < sent and not failed and time.monotonic() < deadline:
            cond.wait(0.5)
        elapsed = time.monotonic() - start
        got = acked
    sock.close()
    return {"messages": min(got, sent), "seconds": elapsed}


def subscribe(
    port: int, topic: str, count: int, seconds: float, qos: int = 1, ready: Path | None = None
) -> dict[str, float]:
    """Count messages on ``topic`` until ``count`` arrived or ``seconds`` passed."""
    client = _client(f"bench-sub-{time.monotonic_ns()}")
    got = 0
    first = 0.0
    last = 0.0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal got, first, last
        last = time.monotonic()
        if got == 0:
            first = last
        got += 1
        if got >= count:
            done.set()

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        subscribed.set()

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        c.subscribe(topic, qos=qos)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("no SUBACK within 30 s")
        if ready is not None:
            ready.write_text("ready")
        done.wait(seconds)
    finally:
        client.disconnect()
        client.loop_stop()
    return {"messages": got, "seconds": last - first, "first": first, "last": last}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.mqttload")
    sub = p.add_subparsers(dest="cmd", required=True)
    pub = sub.add_parser("pub")
    pub.add_argument("--port", type=int, required=True)
    pub.add_argument("--file", type=Path, required=True)
    pub.add_argument("--count", type=int, required=True)
    pub.add_argument("--seconds", type=float, required=True)
    pub.add_argument("--qos", type=int, default=1)
    pub.add_argument("--raw", action="store_true", help="bare-socket publisher (faster)")
    s = sub.add_parser("sub")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--topic", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--qos", type=int, default=1)
    s.add_argument("--ready", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "pub" and a.raw:
        out = raw_publish(a.port, a.file, a.count, a.seconds)
    elif a.cmd == "pub":
        out = publish(a.port, a.file, a.count, a.seconds, a.qos)
    else:
        out = subscribe(a.port, a.topic, a.count, a.seconds, a.qos, a.ready)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
