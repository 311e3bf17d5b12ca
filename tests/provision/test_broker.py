"""``citysense deploy broker`` served by a real Mosquitto 2: the ACL matrix of INTERFACES
§10.1, the password format, the file modes."""

from __future__ import annotations

import base64
import stat
import subprocess
import time
from pathlib import Path

from citysense.cli import main
from provision.broker import hash_password, verify_password
from tests.provision.conftest import Probe, write_registry
from tests.servers import ProvisionedMosquitto, ensure_binary

NOT_AUTHORISED = 135
QUIET = 1.0  #: how long a probe listens for a message that must not come


def test_passwords_are_hashed_as_mosquitto_passwd_does(tmp_path: Path) -> None:
    tool = ensure_binary("mosquitto_passwd")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), "alice", "p@ss/w#rd"], check=True)
    _, hashed = path.read_text().strip().split(":", 1)
    salt = base64.b64decode(hashed.split("$")[3])
    assert hash_password("p@ss/w#rd", salt=salt) == hashed
    assert verify_password("p@ss/w#rd", hashed)
    assert not verify_password("wrong", hashed)


def test_deploy_broker_writes_private_files(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "registry.csv")
    out = tmp_path / "broker"
    code = main(["deploy", "broker", "--registry", str(registry), "--output", str(out)])
    assert code == 0
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(out) == 0o700 and mode(out / "clients") == 0o700
    for name in ("passwd", "acl", "server.key", "mosquitto.conf"):
        assert mode(out / name) == 0o600, name
    for client in ("gw-01", "gw-02", "ingest", "alerts", "operator"):
        for ext in ("password", "crt", "key"):
            assert mode(out / "clients" / f"{client}.{ext}") == 0o600
        password = (out / "clients" / f"{client}.password").read_text().strip()
        assert password not in (out / "passwd").read_text()
        assert len(password) >= 32
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "listener 8883 0.0.0.0" in conf
    # a listener option before the first listener would open Mosquitto's default listener
    assert conf.index("use_username_as_clientid") > conf.index("listener ")


def test_anonymous_and_wrong_password_are_refused(
    secure_broker: ProvisionedMosquitto, probes: list[Probe]
) -> None:
    anonymous = Probe(secure_broker, None)
    probes.append(anonymous)
    assert anonymous.connect().is_failure  # type: ignore[attr-defined]
    wrong = Probe(secure_broker, "gw-01", password="not-the-password")
    probes.append(wrong)
    assert wrong.connect().value in (134, 135)  # type: ignore[attr-defined]
    assert not wrong.connected.is_set()


def test_gateway_acl_matrix(secure_broker: ProvisionedMosquitto, probes: list[Probe]) -> None:
    gw1 = Probe(secure_broker, "gw-01")
    gw2 = Probe(secure_broker, "gw-02", cert=True)  # the certificate listener
    ingest = Probe(secure_broker, "ingest")
    operator = Probe(secure_broker, "operator")
    alerts = Probe(secure_broker, "alerts")
    probes.extend([gw1, gw2, ingest, operator, alerts])
    assert not gw1.connect().is_failure  # type: ignore[attr-defined]
    assert not gw2.connect(port=secure_broker.cert_port).is_failure  # type: ignore[attr-defined]
    for p in (ingest, operator, alerts):
        assert not p.connect().is_failure  # type: ignore[attr-defined]

    assert ingest.subscribe("$share/citysense-ingest/citysense/v1/+/up") == [1]
    gw1.subscribe("citysense/v1/#")  # granted or not, nothing may arrive through it
    gw1.subscribe("citysense/v1/gw-01/stored")
    gw1.subscribe("citysense/v1/gw-01/down")

    # own topics: accepted, and only the ingestor receives the uplink
    assert gw2.publish("citysense/v1/gw-02/up", b"gw2-up") == 0
    assert ingest.received.wait(10)
    assert ingest.messages == [("citysense/v1/gw-02/up", b"gw2-up")]
    # gateway A cannot write B's topics, nor stored/down anywhere
    assert gw1.publish("citysense/v1/gw-02/up", b"forged") == NOT_AUTHORISED
    assert gw1.publish("citysense/v1/gw-01/stored", b'{"seq":[1]}') == NOT_AUTHORISED
    assert gw1.publish("citysense/v1/gw-01/down", b"{}") == NOT_AUTHORISED
    assert gw2.publish("citysense/v1/gw-01/stored", b'{"seq":[1]}') == NOT_AUTHORISED
    # forged confirmations from every non-ingest client never reach the gateway
    assert operator.publish("citysense/v1/gw-01/stored", b'{"seq":[2]}') == NOT_AUTHORISED
    assert alerts.publish("citysense/v1/gw-01/stored", b'{"seq":[3]}') == NOT_AUTHORISED
    time.sleep(QUIET)
    assert gw1.messages == []  # nothing of B's uplink, nothing forged
    assert ingest.messages == [("citysense/v1/gw-02/up", b"gw2-up")]
    # the real ones do arrive (the quiet above was not a dead subscription)
    assert ingest.publish("citysense/v1/gw-01/stored", b'{"seq":[4]}') == 0
    assert operator.publish("citysense/v1/gw-01/down", b'{"id":"c1"}') == 0
    deadline = time.monotonic() + 10
    while len(set(gw1.messages)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # (twice each: through citysense/v1/# as well, which reaches only the gateway's own)
    assert set(gw1.messages) == {
        ("citysense/v1/gw-01/down", b'{"id":"c1"}'),
        ("citysense/v1/gw-01/stored", b'{"seq":[4]}'),
    }
    # nobody else reads anything: the operator and alerts see no uplinks
    assert operator.subscribe("citysense/v1/+/up") in ([NOT_AUTHORISED], [1])
    assert gw2.publish("citysense/v1/gw-02/up", b"second") == 0
    time.sleep(QUIET)
    assert operator.messages == [] and alerts.messages == []


def test_a_client_id_belongs_to_its_user(
    secure_broker: ProvisionedMosquitto, probes: list[Probe]
) -> None:
    gateway = Probe(secure_broker, "gw-01", client_id="citysense-edge-gw-01", session=True)
    probes.append(gateway)
    assert not gateway.connect().is_failure  # type: ignore[attr-defined]
    gateway.subscribe("citysense/v1/gw-01/stored")
    ingest = Probe(secure_broker, "ingest")
    probes.append(ingest)
    ingest.connect()
    # another user presenting the gateway's client id (either form) gets a session of its
    # own: the gateway is not disconnected and its messages still reach it alone
    for stolen in ("citysense-edge-gw-01", "gw-01"):
        thief = Probe(secure_broker, "gw-02", client_id=stolen, session=True)
        probes.append(thief)
        thief.connect()
        thief.subscribe("citysense/v1/gw-01/stored")
    assert ingest.publish("citysense/v1/gw-01/stored", b'{"seq":[7]}') == 0
    assert gateway.received.wait(10)
    time.sleep(QUIET)
    assert not gateway.disconnected.is_set()
    assert gateway.messages == [("citysense/v1/gw-01/stored", b'{"seq":[7]}')]
    assert all(p.messages == [] for p in probes[2:])
