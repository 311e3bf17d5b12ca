"""A real Mosquitto serving what ``citysense deploy broker`` wrote, and a paho test client."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citysense.registry import Device, format_registry
from provision.broker import write_broker
from provision.pki import Authority
from tests.servers import ProvisionedMosquitto, free_port_pair

GATEWAYS = ("gw-01", "gw-02")


def write_registry(path: Path, gateways: tuple[str, ...] = GATEWAYS) -> Path:
    devices = [
        Device(f"aq-{i:04d}", "air_station", "zhengdong", f"site-{i}", 34.7, 113.6, gw)
        for i, gw in enumerate(gateways)
    ]
    path.write_text(format_registry(devices))
    return path


@pytest.fixture
def authority() -> Authority:
    """The broker's CA, kept by the test to issue certificates of its own."""
    return Authority()


@pytest.fixture
def broker_dir(tmp_path: Path, authority: Authority) -> Path:
    write_broker(GATEWAYS, tmp_path / "broker", "127.0.0.1", free_port_pair(), authority=authority)
    return tmp_path / "broker"


@pytest.fixture
def secure_broker(broker_dir: Path) -> Iterator[ProvisionedMosquitto]:
    port = int(
        next(
            line.split()[1]
            for line in (broker_dir / "mosquitto.conf").read_text().splitlines()
            if line.startswith("listener ")
        )
    )
    server = ProvisionedMosquitto(broker_dir, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Probe:
    """A paho MQTT v5 client for the tests: connect, publish, subscribe, collect."""

    def __init__(
        self,
        broker: ProvisionedMosquitto,
        user: str | None,
        *,
        password: str | None = None,
        client_id: str | None = None,
        cert: bool = False,
        session: bool = False,
    ) -> None:
        self.broker = broker
        folder = broker.folder
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{user}",
            protocol=mqtt.MQTTv5,
        )
        context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
        if cert:
            assert user is not None
            context.load_cert_chain(
                str(folder / "clients" / f"{user}.crt"), str(folder / "clients" / f"{user}.key")
            )
        elif user is not None:
            pw = password or (folder / "clients" / f"{user}.password").read_text().strip()
            self.client.username_pw_set(user, pw)
        self.client.tls_set_context(context)
        self.session = session
        self.connack: object = None
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.received = threading.Event()
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, c, u, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        self.connack = reason
        if not reason.is_failure:
            self.connected.set()
        self.answered.set()

    def _on_disconnect(self, c, u, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        self.disconnected.set()

    def _on_message(self, c, u, msg) -> None:  # type: ignore[no-untyped-def]
        self.messages.append((msg.topic, bytes(msg.payload)))
        self.received.set()

    def _on_publish(self, c, u, mid, reason, props) -> None:  # type: ignore[no-untyped-def]
        with self.acked:
            self.pubacks[mid] = int(reason.value)
            self.acked.notify_all()

    def _on_subscribe(self, c, u, mid, reasons, props) -> None:  # type: ignore[no-untyped-def]
        with self.acked:
            self.subacks[mid] = [int(r.value) for r in reasons]
            self.acked.notify_all()

    def connect(self, *, port: int | None = None, timeout: float = 10.0) -> object:
        props = Properties(PacketTypes.CONNECT)
        if self.session:
            props.SessionExpiryInterval = 3600
        self.client.connect(
            "127.0.0.1",
            port or self.broker.port,
            30,
            clean_start=not self.session,
            properties=props,
        )
        self.client.loop_start()
        assert self.answered.wait(timeout), "no CONNACK"
        return self.connack

    def publish(self, topic: str, payload: bytes = b"x", timeout: float = 10.0) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 accepted, 135 not authorised)."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, timeout), "no PUBACK"
            return self.pubacks[info.mid]

    def subscribe(self, topic: str, timeout: float = 10.0) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.subacks, timeout), "no SUBACK"
            return self.subacks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes(secure_broker: ProvisionedMosquitto) -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()
