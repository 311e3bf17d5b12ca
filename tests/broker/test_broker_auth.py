"""The embedded broker's users, ACL, client-id binding, connection limit and throttled warnings,
with real paho clients (MQTT 5 and 3.1.1) on a real loopback port."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest

from citysense.mqtt_acl import acl_of, mosquitto_acl
from citysense.topics import INGEST_SHARED_SUBSCRIPTION
from mqtt_broker.auth import covers, generate_demo_users, make_user
from mqtt_broker.broker import BrokerConfig, BrokerCore
from tests.broker.peers import BrokerThread, Peer

CREDS = generate_demo_users(["gw-01", "gw-02"])
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86


@pytest.fixture(scope="module")
def secured() -> Iterator[BrokerThread]:
    broker = BrokerThread(BrokerConfig(users=CREDS.users)).start()
    yield broker
    broker.stop()


@pytest.fixture
def login(secured: BrokerThread) -> Iterator[Callable[..., Peer]]:
    opened: list[Peer] = []

    def make(user: str | None, client_id: str | None = None, **kw: object) -> Peer:
        password = kw.pop("password", CREDS.passwords.get(user or "", None))
        peer = Peer(secured.port, client_id, username=user, password=password, **kw)  # type: ignore[arg-type]
        opened.append(peer)
        return peer

    yield make
    for peer in opened:
        peer.close()


def test_anonymous_and_wrong_passwords_are_refused(login: Callable[..., Peer]) -> None:
    assert login(None, refused_ok=True).connect_reason.value == NOT_AUTHORIZED
    # paho maps the 3.1.1 return codes 5 and 4 onto the v5 codes 0x87 and 0x86
    assert login(None, v5=False, refused_ok=True).connect_reason.value == NOT_AUTHORIZED
    wrong = login("gw-01", password="guess", refused_ok=True)
    assert wrong.connect_reason.value == BAD_CREDENTIALS
    nobody = login("nobody", password="x", v5=False, refused_ok=True)
    assert nobody.connect_reason.value == BAD_CREDENTIALS
    assert not login("gw-01").connect_reason.is_failure


def test_gateway_writes_only_its_own_topics(
    secured: BrokerThread, login: Callable[..., Peer]
) -> None:
    ingest = login("ingest")
    assert [r.value for r in ingest.subscribe(INGEST_SHARED_SUBSCRIPTION)] == [1]
    assert [r.value for r in ingest.subscribe("citysense/v1/+/status")] == [NOT_AUTHORIZED]
    gw1 = login("gw-01")
    refused_before = secured.metrics()["mqtt_broker_not_authorized"]
    assert gw1.publish("citysense/v1/gw-01/up", b"mine") == 0
    assert gw1.publish("citysense/v1/gw-02/up", b"forged") == NOT_AUTHORIZED
    assert gw1.publish("citysense/v1/gw-01/stored", b'{"seq":[1]}') == NOT_AUTHORIZED
    assert gw1.publish("citysense/v1/gw-01/down", b"cmd") == NOT_AUTHORIZED
    legacy = login("gw-02", v5=False)
    assert legacy.publish("citysense/v1/gw-01/up", b"forged v3") == 0  # 3.1.1: acked, dropped
    assert legacy.publish("citysense/v1/gw-02/up", b"v3 mine") == 0
    ingest.wait_for(2)
    assert ingest.payloads() == [b"mine", b"v3 mine"]
    assert secured.metrics()["mqtt_broker_not_authorized"] - refused_before == 4
    assert [r.value for r in gw1.subscribe("citysense/v1/#")] == [NOT_AUTHORIZED]
    assert [r.value for r in gw1.subscribe("citysense/v1/gw-02/down")] == [NOT_AUTHORIZED]
    assert [r.value for r in legacy.subscribe("citysense/v1/#")] == [0x80]
    assert [r.value for r in gw1.subscribe("citysense/v1/gw-01/stored")] == [1]


def test_only_ingest_confirms_and_only_operator_commands(login: Callable[..., Peer]) -> None:
    gw = login("gw-01")
    gw.subscribe("citysense/v1/gw-01/stored")
    gw.subscribe("citysense/v1/gw-01/down")
    other_gw = login("gw-02")
    assert other_gw.publish("citysense/v1/gw-01/stored", b"forged") == NOT_AUTHORIZED
    alerts = login("alerts")
    assert alerts.publish("citysense/v1/gw-01/stored", b"forged") == NOT_AUTHORIZED
    assert alerts.publish("citysense/v1/gw-01/down", b"forged") == NOT_AUTHORIZED
    assert alerts.publish("citysense/v1/alarms/pm25/gw-01", b"alarm") == 0
    assert login("ingest").publish("citysense/v1/gw-01/stored", b'{"seq":[7]}') == 0
    assert login("operator").publish("citysense/v1/gw-01/down", b"cmd") == 0
    gw.wait_for(2)
    assert gw.payloads() == [b'{"seq":[7]}', b"cmd"]
    operator = login("operator")
    codes = operator.subscribe("citysense/v1/+/ack")
    assert [r.value for r in codes] == [1]
    assert [r.value for r in operator.subscribe("citysense/v1/+/up")] == [NOT_AUTHORIZED]


def test_a_client_id_belongs_to_its_user(secured: BrokerThread, login: Callable[..., Peer]) -> None:
    gateway = login("gw-01", "citysense-edge-gw-01", clean=False, session_expiry=300)
    gateway.subscribe("citysense/v1/gw-01/down")
    thief = login("gw-02", "citysense-edge-gw-01", refused_ok=True)
    assert thief.connect_reason.value == NOT_AUTHORIZED
    thief_v3 = login("ingest", "citysense-edge-gw-01", v5=False, refused_ok=True)
    assert thief_v3.connect_reason.value == NOT_AUTHORIZED  # 3.1.1 return code 5
    login("operator").publish("citysense/v1/gw-01/down", b"still here")
    gateway.wait_for(1)  # the original session survived, connected
    gateway.close()
    assert login("gw-02", "citysense-edge-gw-01", refused_ok=True).connect_reason.is_failure
    back = login("gw-01", "citysense-edge-gw-01", clean=False, session_expiry=300)
    assert back.session_present


def test_connection_limit() -> None:
    broker = BrokerThread(BrokerConfig(max_connections=2)).start()
    opened = []
    try:
        opened = [Peer(broker.port), Peer(broker.port)]
        with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as third:
            third.sendall(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x")  # CONNECT
            try:
                reply = third.recv(1024)
            except ConnectionResetError:  # closed with our CONNECT unread
                reply = b""
            assert reply == b""  # closed at once, no CONNACK
        assert broker.metrics()["mqtt_broker_connections_refused"] >= 1
        opened.pop().close()
        opened.append(Peer(broker.port))  # room again
    finally:
        for peer in opened:
            peer.close()
        broker.stop()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bad_packet_warnings_are_one_summary_line_per_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    core = BrokerCore(BrokerConfig(users=CREDS.users), clock=clock)
    caplog.set_level(logging.WARNING, logger="mqtt_broker")
    for i in range(50):
        conn = core.open(lambda data: None, lambda: None, f"127.0.0.1:{1000 + i}")
        conn.receive(b"\x30\x05\x00\x01a\x00\x00")  # PUBLISH before CONNECT
        clock.now += 0.5
    assert len(caplog.records) == 1 and "broke the MQTT protocol" in caplog.records[0].message
    core.tick()
    assert len(caplog.records) == 1
    clock.now += 60
    core.tick()
    assert len(caplog.records) == 2
    assert caplog.records[1].message.startswith("49 more client problems in the last")
    core.tick()
    assert len(caplog.records) == 2
    assert core.metrics()["mqtt_broker_protocol_errors"] == 50


def test_demo_users_have_random_hashed_passwords() -> None:
    a, b = generate_demo_users(["gw-01"]), generate_demo_users(["gw-01"])
    assert set(a.passwords) == {"gw-01", "ingest", "alerts", "operator"}
    assert a.passwords["gw-01"] != b.passwords["gw-01"]
    assert len(a.passwords["gw-01"]) >= 43  # 32 random bytes, URL-safe base64
    user = a.users["gw-01"]
    assert user.verify(a.passwords["gw-01"].encode()) and not user.verify(b"guess")
    assert a.passwords["gw-01"] not in repr(a) + repr(user)
    assert a.passwords["gw-01"].encode() not in user.digest


def test_acl_patterns_cover_filters() -> None:
    assert covers("citysense/v1/+/up", "citysense/v1/gw-01/up")
    assert covers("citysense/v1/+/up", "citysense/v1/+/up")
    assert not covers("citysense/v1/+/up", "citysense/v1/#")
    assert not covers("citysense/v1/gw-01/up", "citysense/v1/+/up")
    assert covers("citysense/v1/alarms/#", "citysense/v1/alarms/+/x")
    assert not covers("citysense/v1/+/up", "$share/g/citysense/v1/+/up")
    assert covers(INGEST_SHARED_SUBSCRIPTION, INGEST_SHARED_SUBSCRIPTION)
    assert not covers(INGEST_SHARED_SUBSCRIPTION, "$share/other/citysense/v1/+/up")
    gw = make_user("gw-07", "pw")
    assert gw.may_publish("citysense/v1/gw-07/status") and not gw.may_publish("citysense/v1/x")
    assert acl_of("gw-07").read == ("citysense/v1/gw-07/stored", "citysense/v1/gw-07/down")
    text = mosquitto_acl(["gw-07", "ingest"])
    assert "user gw-07\ntopic read citysense/v1/gw-07/stored\n" in text
    assert f"user ingest\ntopic read {INGEST_SHARED_SUBSCRIPTION}\n" in text
