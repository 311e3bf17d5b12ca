"""Pure tests of the embedded broker's codec, topic rules and session logic (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtt_broker.codec import PacketFramer, encode_properties, encode_publish, encode_varint
from mqtt_broker.constants import (
    CONNACK,
    MALFORMED_PACKET,
    MESSAGE_EXPIRY_INTERVAL,
    MQTT_5,
    MQTT_311,
    PACKET_TOO_LARGE,
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY_INTERVAL,
    SUBACK,
    TOPIC_FILTER_INVALID,
    WILL_DELAY_INTERVAL,
    ProtocolError,
)
from mqtt_broker.core import BrokerCore
from mqtt_broker.packets import Publish, decode_packet
from mqtt_broker.session import BrokerConfig, Connection
from mqtt_broker.topics import split_shared, topic_matches, validate_topic_filter


@pytest.mark.parametrize(
    ("flt", "topic", "expected"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+", "a/b", False),
        ("+/+", "/b", True),
        ("citysense/v1/+/up", "citysense/v1/gw-01/up", True),
        ("citysense/v1/+/up", "citysense/v1/gw-01/stored", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b/c", False),
    ],
)
def test_topic_matching(flt: str, topic: str, expected: bool) -> None:
    assert topic_matches(tuple(flt.split("/")), topic.split("/")) is expected


@pytest.mark.parametrize("flt", ["", "a/#/b", "a#", "a/b+", "+a"])
def test_bad_topic_filters(flt: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_topic_filter(flt)
    assert info.value.reason_code == TOPIC_FILTER_INVALID


def test_shared_subscription_split() -> None:
    assert split_shared("$share/citysense-ingest/citysense/v1/+/up") == (
        "citysense-ingest",
        "citysense/v1/+/up",
    )
    assert split_shared("a/b") == (None, "a/b")
    for bad in ("$share/", "$share/g", "$share//a", "$share/g+/a"):
        with pytest.raises(ProtocolError):
            split_shared(bad)


def test_publish_round_trip() -> None:
    data = encode_publish(MQTT_5, "a/b", b"xyz", 1, True, True, 7, {0x03: "text/plain"})
    frames = PacketFramer(1 << 20).feed(data)
    assert len(frames) == 1
    first, body = frames[0]
    pkt = decode_packet(first, body, MQTT_5)
    assert pkt == Publish("a/b", b"xyz", 1, True, True, 7, {0x03: "text/plain"})


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.data())
def test_framer_reassembles_every_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(
        encode_publish(MQTT_311, f"t/{i}", p, 1, False, False, i + 1)
        for i, p in enumerate(payloads)
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = PacketFramer(1 << 20)
    frames = []
    last = 0
    for cut in [*cuts, len(stream)]:
        frames += framer.feed(stream[last:cut])
        last = cut
    decoded = [decode_packet(f, b, MQTT_311) for f, b in frames]
    assert [p.payload for p in decoded if isinstance(p, Publish)] == payloads


def test_framer_limits() -> None:
    with pytest.raises(ProtocolError) as info:
        PacketFramer(100).feed(bytes([PUBLISH << 4]) + encode_varint(1000))
    assert info.value.reason_code == PACKET_TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        PacketFramer(1 << 20).feed(b"\x30\xff\xff\xff\xff\x01")
    assert info.value.reason_code == MALFORMED_PACKET


class _Wire:
    """A sans-I/O peer: what the core writes, and whether it closed us."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.framer = PacketFramer(1 << 24)

    def send(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def packets(self) -> list[tuple[int, bytes]]:
        frames = self.framer.feed(bytes(self.out))
        self.out.clear()
        return frames


def _connect_v311(client_id: str, clean: bool = True) -> bytes:
    var = b"\x00\x04MQTT\x04" + bytes([0x02 if clean else 0]) + b"\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id.encode()
    body = var + payload
    return bytes([0x10]) + encode_varint(len(body)) + body


def _subscribe_v311(pid: int, flt: str, qos: int) -> bytes:
    body = pid.to_bytes(2, "big") + len(flt).to_bytes(2, "big") + flt.encode() + bytes([qos])
    return bytes([0x82]) + encode_varint(len(body)) + body


def test_core_window_and_redelivery_without_sockets() -> None:
    """A 3.1.1 session with a window of 3: 3 in flight, the rest queued; resumed with DUP."""
    core = BrokerCore(BrokerConfig(default_receive_maximum=3))
    sub = _Wire()
    conn = core.open(sub.send, sub.close, "sub")
    conn.receive(_connect_v311("s", clean=False) + _subscribe_v311(1, "t/#", 1))
    kinds = [f >> 4 for f, _ in sub.packets()]
    assert kinds == [CONNACK, SUBACK]
    pub = _Wire()
    pconn = core.open(pub.send, pub.close, "pub")
    pconn.receive(_connect_v311("p"))
    for i in range(10):
        pconn.receive(encode_publish(MQTT_311, "t/x", str(i).encode(), 1, False, False, i + 1))
    assert [f >> 4 for f, _ in pub.packets()] == [CONNACK] + [PUBACK] * 10
    got = [decode_packet(f, b, MQTT_311) for f, b in sub.packets()]
    assert [p.payload for p in got if isinstance(p, Publish)] == [b"0", b"1", b"2"]
    # Acknowledge the first; exactly one more is released.
    first = got[0]
    assert isinstance(first, Publish)
    conn.receive(bytes([PUBACK << 4, 2]) + first.packet_id.to_bytes(2, "big"))
    more = [decode_packet(f, b, MQTT_311) for f, b in sub.packets()]
    assert [p.payload for p in more if isinstance(p, Publish)] == [b"3"]
    # The connection drops; the session keeps 3 in flight and 6 queued.
    core.connection_lost(conn)
    sub2 = _Wire()
    conn2 = core.open(sub2.send, sub2.close, "sub")
    conn2.receive(_connect_v311("s", clean=False))
    frames = sub2.packets()
    assert frames[0] == (CONNACK << 4, b"\x01\x00")  # session present
    resent = [decode_packet(f, b, MQTT_311) for f, b in frames[1:]]
    assert [(p.payload, p.dup) for p in resent if isinstance(p, Publish)] == [
        (b"1", True),
        (b"2", True),
        (b"3", True),
    ]


def test_core_garbage_closes_only_that_connection() -> None:
    core = BrokerCore()
    good, bad = _Wire(), _Wire()
    gconn = core.open(good.send, good.close, "good")
    gconn.receive(_connect_v311("g"))
    bconn = core.open(bad.send, bad.close, "bad")
    bconn.receive(b"\x30\x03\x00\x01a")  # PUBLISH before CONNECT
    assert bad.closed and not good.closed
    assert core.stats.protocol_errors == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_core_keepalive_timeout_and_session_expiry() -> None:
    clock = _Clock()
    core = BrokerCore(clock=clock)
    silent = _Wire()
    conn = core.open(silent.send, silent.close, "silent")
    conn.receive(_connect_v311("s", clean=False))  # keep-alive 60 s, never expires
    clock.now += 89
    core.tick()
    assert not silent.closed
    clock.now += 2  # past 1.5 x keep-alive
    core.tick()
    assert silent.closed
    core.connection_lost(conn)
    assert "s" in core.sessions  # clean session 0 in 3.1.1: kept
    idle = _Wire()
    core.open(idle.send, idle.close, "idle")
    clock.now += BrokerConfig().connect_timeout + 1
    core.tick()
    assert idle.closed  # never sent CONNECT


@given(st.binary(max_size=400), st.booleans())
def test_core_survives_any_bytes(garbage: bytes, connect_first: bool) -> None:
    """Whatever a peer sends, the broker answers or closes that connection; it never raises."""
    core = BrokerCore()
    wire = _Wire()
    conn = core.open(wire.send, wire.close, "fuzz")
    if connect_first:
        conn.receive(_connect_v311("fuzz"))
    conn.receive(garbage)
    core.tick()
    if wire.closed:
        core.connection_lost(conn)
        assert conn not in core.connections


def _connect_v5(
    client_id: str, clean: bool, expiry: int, will: tuple[str, bytes, int] | None = None
) -> bytes:
    flags = (0x02 if clean else 0) | (0x04 if will else 0)
    var = b"\x00\x04MQTT\x05" + bytes([flags]) + b"\x00\x3c"
    var += encode_properties({SESSION_EXPIRY_INTERVAL: expiry})
    payload = len(client_id).to_bytes(2, "big") + client_id.encode()
    if will is not None:
        topic, message, delay = will
        payload += encode_properties({WILL_DELAY_INTERVAL: delay} if delay else {})
        payload += len(topic).to_bytes(2, "big") + topic.encode()
        payload += len(message).to_bytes(2, "big") + message
    body = var + payload
    return bytes([0x10]) + encode_varint(len(body)) + body


def _published(wire: _Wire) -> list[bytes]:
    return [
        p.payload
        for f, b in wire.packets()
        if f >> 4 == PUBLISH
        for p in [decode_packet(f, b, MQTT_311)]
        if isinstance(p, Publish)
    ]


def test_core_will_delay_interval() -> None:
    clock = _Clock()
    core = BrokerCore(clock=clock)
    watcher = _Wire()
    core.open(watcher.send, watcher.close, "watcher").receive(
        _connect_v311("watcher") + _subscribe_v311(1, "w/#", 1)
    )
    watcher.packets()

    def connect(will: tuple[str, bytes, int], expiry: int = 100) -> Connection:
        wire = _Wire()
        conn = core.open(wire.send, wire.close, "gw")
        conn.receive(_connect_v5("gw", clean=False, expiry=expiry, will=will))
        return conn

    # Dropped, back within the delay: no Will.
    core.connection_lost(connect(("w/gw", b"late", 10)))
    clock.now += 5
    core.tick()
    assert _published(watcher) == []
    conn = connect(("w/gw", b"late", 10))
    clock.now += 20
    core.tick()
    assert _published(watcher) == []
    # Dropped for good: the Will goes out once the delay has passed.
    core.connection_lost(conn)
    clock.now += 9
    core.tick()
    assert _published(watcher) == []
    clock.now += 2
    core.tick()
    assert _published(watcher) == [b"late"]
    # A session that ends before the delay: the Will goes out when it ends.
    core.connection_lost(connect(("w/gw", b"ended", 50), expiry=5))
    clock.now += 6
    core.tick()
    assert _published(watcher) == [b"ended"]
    assert "gw" not in core.sessions


def test_core_message_expiry_for_an_offline_session() -> None:
    clock = _Clock()
    core = BrokerCore(clock=clock)
    sub = _Wire()
    conn = core.open(sub.send, sub.close, "sub")
    conn.receive(_connect_v311("sub", clean=False) + _subscribe_v311(1, "t/#", 1))
    core.connection_lost(conn)
    pub = _Wire()
    pconn = core.open(pub.send, pub.close, "pub")
    pconn.receive(_connect_v5("pub", clean=True, expiry=0))
    pconn.receive(
        encode_publish(MQTT_5, "t/a", b"short", 1, False, False, 1, {MESSAGE_EXPIRY_INTERVAL: 10})
    )
    pconn.receive(encode_publish(MQTT_5, "t/a", b"lasting", 1, False, False, 2))
    clock.now += 11
    back = _Wire()
    core.open(back.send, back.close, "sub").receive(_connect_v311("sub", clean=False))
    assert _published(back) == [b"lasting"]
    assert core.stats.dropped_expired == 1
