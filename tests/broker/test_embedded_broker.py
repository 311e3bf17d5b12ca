"""The embedded broker against real paho-mqtt 2.x clients over loopback TCP.

The same scenario is also run against real Mosquitto, and both must give the same
observable result (``test_same_result_as_mosquitto``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from mqtt_broker.broker import BrokerConfig
from tests.broker.peers import TIMEOUT, BrokerThread, Peer
from tests.servers import MosquittoServer, wait_until


@pytest.fixture
def embedded() -> Iterator[BrokerThread]:
    broker = BrokerThread().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(*args: object, **kwargs: object) -> Peer:
        peer = Peer(*args, **kwargs)  # type: ignore[arg-type]
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in made:
            peer.close()


def test_pub_sub_qos0_and_qos1(embedded: BrokerThread, peers: Callable[..., Peer]) -> None:
    sub = peers(embedded.port)
    assert [r.value for r in sub.subscribe("city/+/temp", 1)] == [1]
    pub = peers(embedded.port)
    pub.publish("city/a/temp", b"q0", qos=0)
    pub.publish("city/b/temp", b"q1", qos=1)
    pub.publish("city/b/humidity", b"not mine", qos=1)
    pub.publish("city/c/temp", b"q2", qos=2)  # accepted, delivered at the granted QoS 1
    sub.wait_for(3)
    got = sorted((m.topic, m.payload, m.qos) for m in sub.messages())
    assert got == [
        ("city/a/temp", b"q0", 0),
        ("city/b/temp", b"q1", 1),
        ("city/c/temp", b"q2", 1),
    ]
    metrics = embedded.metrics()
    assert metrics["mqtt_broker_messages_received"] == 4
    assert metrics["mqtt_broker_messages_unrouted"] == 1


def test_retained_and_cleared(embedded: BrokerThread, peers: Callable[..., Peer]) -> None:
    pub = peers(embedded.port)
    pub.publish("citysense/v1/gw-01/status", b'{"state":"online"}', qos=1, retain=True)
    late = peers(embedded.port)
    late.subscribe("citysense/v1/+/status")
    late.wait_for(1)
    first = late.messages()[0]
    assert (first.payload, first.retain) == (b'{"state":"online"}', True)
    pub.publish("citysense/v1/gw-01/status", b"", qos=1, retain=True)  # clears it
    later = peers(embedded.port)
    later.subscribe("citysense/v1/+/status")
    pub.publish("citysense/v1/gw-01/status", b"live", qos=1)
    later.wait_for(1)
    assert [(m.payload, m.retain) for m in later.messages()] == [(b"live", False)]


def test_last_will_on_dropped_connection(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    watcher = peers(embedded.port)
    watcher.subscribe("gw/status")
    gone = Peer(embedded.port, will=("gw/status", b"offline", 1, True))
    polite = peers(embedded.port, will=("gw/status", b"polite-offline", 1, True))
    polite.close()  # a clean DISCONNECT: no Will
    gone.drop()
    watcher.wait_for(1)
    assert watcher.payloads() == [b"offline"]
    newcomer = peers(embedded.port)
    newcomer.subscribe("gw/status")
    newcomer.wait_for(1)
    assert [(m.payload, m.retain) for m in newcomer.messages()] == [(b"offline", True)]
    assert embedded.metrics()["mqtt_broker_wills_published"] == 1


def test_shared_subscription_splits_the_load(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    group = "$share/citysense-ingest/citysense/v1/+/up"
    a = peers(embedded.port)
    b = peers(embedded.port)
    a.subscribe(group)
    b.subscribe(group)
    pub = peers(embedded.port)
    for i in range(100):
        pub.publish(f"citysense/v1/gw-{i % 3}/up", str(i).encode())
    wait_until(lambda: len(a.messages()) + len(b.messages()) >= 100, TIMEOUT, "100 shared messages")
    both = sorted(int(p) for p in a.payloads() + b.payloads())
    assert both == list(range(100))  # each message to exactly one member
    assert a.messages() and b.messages()


def test_shared_group_without_online_member_keeps_messages(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    group = "$share/g/jobs/#"
    member = peers(embedded.port, "member-1", clean=False, session_expiry=300)
    member.subscribe(group)
    member.close()
    pub = peers(embedded.port)
    for i in range(10):
        pub.publish("jobs/x", str(i).encode())
    back = peers(embedded.port, "member-1", clean=False, session_expiry=300)
    assert back.session_present
    back.wait_for(10)
    assert sorted(int(p) for p in back.payloads()) == list(range(10))


def test_receive_maximum_with_manual_ack(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    sub = peers(embedded.port, receive_maximum=5, manual_ack=True)
    sub.subscribe("data/#")
    sub.subscribe("sync", 0)
    pub = peers(embedded.port)
    for i in range(20):
        pub.publish("data/x", str(i).encode())
    pub.publish("sync", b"", qos=0)  # QoS 0 passes the window: everything before it is sent
    sub.wait_for(1, "sync", "sync messages")
    assert sub.payloads("data/x") == [str(i).encode() for i in range(5)]
    for msg in sub.messages("data/x"):
        sub.ack(msg)
    sub.wait_for(10, "data/x")
    # Acks trickle in; all 20 arrive once everything is acknowledged.
    acked = 5
    while acked < 20:
        sub.wait_for(acked + 1, "data/x")
        msgs = sub.messages("data/x")
        for msg in msgs[acked:]:
            sub.ack(msg)
        acked = len(msgs)
    assert sub.payloads("data/x") == [str(i).encode() for i in range(20)]


def test_persistent_session_redelivers_unacknowledged(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    sub = Peer(embedded.port, "ingest-1", clean=False, session_expiry=300, manual_ack=True)
    sub.subscribe("$share/citysense-ingest/citysense/v1/+/up")
    pub = peers(embedded.port)
    for i in range(30):
        pub.publish("citysense/v1/gw-01/up", str(i).encode())
    sub.wait_for(30)
    sub.drop()  # killed before acknowledging anything
    again = peers(embedded.port, "ingest-1", clean=False, session_expiry=300, manual_ack=True)
    assert again.session_present
    again.wait_for(30)
    msgs = again.messages()
    assert sorted(int(m.payload) for m in msgs) == list(range(30))
    assert all(m.dup for m in msgs)
    for m in msgs:
        again.ack(m)


def test_mqtt_311_client_with_persistent_session(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    sub = peers(embedded.port, "old-client", v5=False, clean=False)
    assert [r.value for r in sub.subscribe("legacy/#")] == [1]
    sub.close()
    pub = peers(embedded.port, v5=False)
    for i in range(5):
        pub.publish("legacy/a", str(i).encode())
    back = peers(embedded.port, "old-client", v5=False, clean=False)
    assert back.session_present
    back.wait_for(5)
    assert back.payloads() == [str(i).encode() for i in range(5)]


def test_session_takeover_keeps_the_session(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    first = Peer(embedded.port, "same-id", clean=False, session_expiry=300)
    first.subscribe("t/#")
    first.client.loop_stop()  # stops reading but keeps the socket open
    second = peers(embedded.port, "same-id", clean=False, session_expiry=300)
    assert second.session_present
    pub = peers(embedded.port)
    pub.publish("t/1", b"x")
    second.wait_for(1)
    first.client._reset_sockets()
    assert embedded.metrics()["mqtt_broker_takeovers"] == 1


def test_protocol_error_closes_only_the_offender(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    good = peers(embedded.port)
    good.subscribe("ok/#")
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=TIMEOUT) as raw:
        # MQTT 5 CONNECT whose flags set the reserved bit: CONNACK 0x81 then close.
        body = b"\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x01x"
        raw.sendall(bytes([0x10, len(body)]) + body)
        reply = b""
        while chunk := raw.recv(1024):
            reply += chunk
        assert reply[0] == 0x20 and reply[3] == 0x81
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=TIMEOUT) as raw:
        raw.sendall(b"\x30\x05\x00\x01a\x00\x00")  # PUBLISH before CONNECT
        assert raw.recv(1024) == b""
    pub = peers(embedded.port)
    pub.publish("ok/still", b"fine")
    good.wait_for(1)
    assert embedded.metrics()["mqtt_broker_protocol_errors"] == 2


def test_bounded_queue_counts_drops(peers: Callable[..., Peer]) -> None:
    broker = BrokerThread(BrokerConfig(max_queued_messages=5)).start()
    try:
        sub = peers(broker.port, "slow", clean=False, session_expiry=300)
        sub.subscribe("q/#")
        sub.close()
        pub = peers(broker.port)
        for i in range(8):
            pub.publish("q/x", str(i).encode())
        assert broker.metrics()["mqtt_broker_dropped_queue_full"] == 3
        back = peers(broker.port, "slow", clean=False, session_expiry=300)
        back.wait_for(5)
        assert back.payloads() == [str(i).encode() for i in range(5)]
        back.close()
        pub.close()
    finally:
        broker.stop()


# --------------------------------------------------------------------------- cross-check


def _scenario(port: int) -> dict[str, object]:
    """A gateway-and-ingestor story told the same way to any broker; what a client sees."""
    ingest = Peer(
        port, "x-ingest", clean=False, session_expiry=300, receive_maximum=5, manual_ack=True
    )
    watcher = Peer(port, "x-watcher")
    gateway = Peer(port, "x-gateway", will=("x/v1/gw/status", b"offline", 1, True))
    try:
        ingest.subscribe("$share/x-ingest/x/v1/+/up")
        ingest.subscribe("x/sync", 0)
        gateway.publish("x/v1/gw/status", b"online", retain=True)
        watcher.subscribe("x/v1/+/status")
        watcher.wait_for(1)
        for i in range(20):
            gateway.publish("x/v1/gw/up", str(i).encode())
        gateway.publish("x/sync", b"", qos=0)
        ingest.wait_for(1, "x/sync", "sync")
        first_window = [int(p) for p in ingest.payloads("x/v1/gw/up")]
        gateway.drop()
        watcher.wait_for(2)
        ingest.drop()
        resumed = Peer(port, "x-ingest", clean=False, session_expiry=300, manual_ack=True)
        try:
            resumed.wait_for(20)
            msgs = resumed.messages()
            for m in msgs:
                resumed.ack(m)
            return {
                "first_window": first_window,
                "status": [(m.payload, m.retain) for m in watcher.messages()],
                "session_present": resumed.session_present,
                "after_reconnect": sorted(int(m.payload) for m in msgs),
                "redelivered_with_dup": sorted(int(m.payload) for m in msgs if m.dup),
            }
        finally:
            resumed.close()
    finally:
        watcher.close()


def test_same_result_as_mosquitto(embedded: BrokerThread, mosquitto: MosquittoServer) -> None:
    ours = _scenario(embedded.port)
    theirs = _scenario(mosquitto.port)
    assert ours == theirs
    assert ours["first_window"] == [0, 1, 2, 3, 4]
    assert ours["after_reconnect"] == list(range(20))
    assert ours["status"] == [(b"online", True), (b"offline", False)]


def test_shared_messages_of_an_ended_session_go_to_another_member(
    embedded: BrokerThread, peers: Callable[..., Peer]
) -> None:
    """A member whose session ends holding unacknowledged messages: the group gets them back."""
    group = "$share/workers/jobs/#"
    lazy = Peer(embedded.port, "lazy", manual_ack=True, receive_maximum=3)  # never acks
    lazy.subscribe(group)
    busy = peers(embedded.port, "busy")
    busy.subscribe(group)
    pub = peers(embedded.port)
    for i in range(20):
        pub.publish("jobs/x", str(i).encode())
    wait_until(lambda: len(lazy.messages()) + len(busy.messages()) >= 20, TIMEOUT, "20 deliveries")
    held = sorted(int(p) for p in lazy.payloads())
    assert held  # the lazy member got its turn
    lazy.close()  # session expiry 0: the session ends with its messages unacknowledged
    busy.wait_for(20)
    assert sorted(int(p) for p in busy.payloads()) == list(range(20))


def test_unsubscribe_stops_delivery(embedded: BrokerThread, peers: Callable[..., Peer]) -> None:
    sub = peers(embedded.port)
    sub.subscribe("u/#")
    sub.subscribe("$share/g/u/#")
    pub = peers(embedded.port)
    pub.publish("u/1", b"both")
    sub.wait_for(2)  # once per subscription: the plain one and the group's
    sub.unsubscribe("u/#")
    sub.unsubscribe("$share/g/u/#")
    pub.publish("u/1", b"after")
    sub.subscribe("sync", 0)
    pub.publish("sync", b"", qos=0)
    sub.wait_for(1, "sync", "sync")
    assert sub.payloads("u/1") == [b"both", b"both"]


def test_mqtt_311_empty_client_id_needs_a_clean_session(embedded: BrokerThread) -> None:
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=TIMEOUT) as raw:
        body = b"\x00\x04MQTT\x04\x00\x00\x3c\x00\x00"  # clean session 0, client id ""
        raw.sendall(bytes([0x10, len(body)]) + body)
        assert raw.recv(4) == b"\x20\x02\x00\x02"  # identifier rejected
