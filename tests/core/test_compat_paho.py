"""citysense.compat.paho on real sockets: paho's reads served from a buffer, PUBLISH packets
split across reads (down to one byte per read) or many in one read, the fallbacks."""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citysense.compat import paho as compat


def publish_packet(topic: str, payload: bytes, mid: int, *, v5_props: bytes | None = None) -> bytes:
    """A QoS 1 PUBLISH as a broker sends it (``v5_props``: the MQTT v5 properties block)."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid)
    if v5_props is not None:
        body += bytes([len(v5_props)]) + v5_props
    body += payload
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x32]) + bytes(encoded) + body


class Wired:
    """A BufferedClient reading from one end of a real socket pair."""

    def __init__(self, protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311) -> None:
        self.client = compat.BufferedClient(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.ours, self.broker = socket.socketpair()
        self.ours.setblocking(False)
        self.client._sock = self.ours  # type: ignore[assignment]
        self.got: list[tuple[str, bytes, int, int]] = []
        self.bursts = 0
        self.client.on_publish_fast = lambda *m: self.got.append(m)
        self.client.after_read = self._burst

    def _burst(self) -> None:
        self.bursts += 1

    def close(self) -> None:
        self.ours.close()
        self.broker.close()


def test_internals_are_there() -> None:
    assert compat.MISSING == ()
    assert compat.consumer_client_class() is compat.BufferedClient


def test_a_packet_split_into_single_bytes() -> None:
    w = Wired()
    try:
        packets = [publish_packet("citysense/v1/gw/up", b"x" * n, n + 1) for n in (0, 5, 300)]
        for byte in b"".join(packets):
            w.broker.send(bytes([byte]))
            assert w.client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        assert w.got == [("citysense/v1/gw/up", b"x" * n, n + 1, 1) for n in (0, 5, 300)]
    finally:
        w.close()


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 40, 299])
def test_packets_split_anywhere_and_many_in_one_read(cut: int) -> None:
    w = Wired()
    try:
        stream = b"".join(publish_packet("t/a", bytes([i]) * 200, i + 1) for i in range(20))
        w.broker.sendall(stream[:cut])
        w.client.loop_read()
        w.broker.sendall(stream[cut:])
        w.client.loop_read()  # one read burst: every whole packet in the buffer is handled
        assert [m[2] for m in w.got] == list(range(1, 21))
        assert all(m[1] == bytes([m[2] - 1]) * 200 for m in w.got)
        assert not w.client._buffered()  # nothing left for select() to miss
    finally:
        w.close()


def test_a_publish_with_properties_takes_paho_s_path() -> None:
    w = Wired(mqtt.MQTTv5)
    seen: list[mqtt.MQTTMessage] = []
    w.client.on_message = lambda c, u, msg: seen.append(msg)
    try:
        ctype = b"application/json"
        props = bytes([0x03]) + struct.pack("!H", len(ctype)) + ctype  # Content Type
        w.broker.sendall(
            publish_packet("t/b", b"{}", 9, v5_props=props)
            + publish_packet("t/c", b"1", 10, v5_props=b"")
        )
        w.client.loop_read()
        assert [(m.topic, m.payload, m.properties.ContentType) for m in seen] == [
            ("t/b", b"{}", "application/json")
        ]
        assert w.got == [("t/c", b"1", 10, 1)]
    finally:
        w.close()


def test_fallbacks_to_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "BUFFERED_READS", False)
    assert compat.consumer_client_class() is mqtt.Client

    class PublicOnly:
        """Stand-in for a paho without ``_packet_queue``: records the public ack calls."""

        def __init__(self) -> None:
            self.acked: list[tuple[int, int]] = []

        def ack(self, mid: int, qos: int) -> None:
            self.acked.append((mid, qos))

    client = PublicOnly()
    compat.ack_many(client, [3, 4])  # type: ignore[arg-type]
    assert client.acked == [(3, 1), (4, 1)]


def test_batched_pubacks_reach_the_wire() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, manual_ack=True)
    ours, broker = socket.socketpair()
    try:
        client._sock = ours  # type: ignore[assignment]
        compat.ack_many(client, [1, 2, 513])
        client.loop_write()
        assert broker.recv(100) == bytes.fromhex("400200014002000240020201")
    finally:
        ours.close()
        broker.close()
