"""DTLS 1.2 PSK devices against a real gateway, with libcoap's ``coap-client-openssl`` and
``coap-client-gnutls`` (independent peers) and aiocoap's client (DTLSSocket): accepted and
stored under the right device; a wrong key and an unknown identity refused; identity A
posting device B's readings 4.03; another device behind the same address:port after a
session (carrier NAT) works; junk datagrams create no state; states are purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from aiocoap.numbers.codes import Code

from citysense.credentials import DTLS_PSK
from tests.edge.gateway import (
    GatewayThread,
    edge_settings,
    free_udp_port,
    metrics_text,
    uplink_payload,
    write_registry,
)
from tests.edge.trust import NatRelay, client, libcoap_post, post, write_keys
from tests.servers import ensure_binary

LIBCOAP = ("coap-client-openssl", "coap-client-gnutls")


def now_ms() -> int:
    return int(time.time() * 1000)


def stored_devices(settings: object) -> list[str]:
    path = Path(settings.state_dir) / "outbox.db"  # type: ignore[attr-defined]
    with contextlib.closing(sqlite3.connect(path)) as db:
        return sorted(str(d) for (d,) in db.execute("SELECT device FROM reading"))


@pytest.fixture
def dtls_gateway(tmp_path: Path):  # type: ignore[no-untyped-def]
    devices = write_registry(tmp_path / "registry.csv", 6)
    keys = write_keys(tmp_path / "keys.csv", devices, DTLS_PSK)
    coaps = free_udp_port()
    settings = edge_settings(
        tmp_path, device_keys=tmp_path / "keys.csv", coaps=f"127.0.0.1:{coaps}"
    )
    with GatewayThread(settings) as gw:
        yield gw, settings, coaps, devices, keys


@pytest.mark.parametrize("binary", LIBCOAP)
def test_libcoap_peers(binary: str, dtls_gateway) -> None:  # type: ignore[no-untyped-def]
    ensure_binary(binary)
    _, settings, port, devices, keys = dtls_gateway
    a, b = devices[0], devices[1]
    ka = keys[a]
    ok = libcoap_post(binary, port, ka.id, ka.secret, uplink_payload(a, now_ms()))
    assert ok.returncode == 0 and "4." not in ok.stdout + ok.stderr, ok
    assert stored_devices(settings) == [a]
    # identity A posting device B's readings
    other = libcoap_post(binary, port, ka.id, ka.secret, uplink_payload(b, now_ms()))
    assert "4.03" in other.stdout + other.stderr, other
    # a wrong key: no session (tinydtls sends no alert; the client gives up)
    wrong = libcoap_post(binary, port, ka.id, b"0123456789abcdef", uplink_payload(a, now_ms()), 2)
    # an unknown identity
    unknown = libcoap_post(binary, port, b"nobody", ka.secret, uplink_payload(a, now_ms()), 2)
    assert stored_devices(settings) == [a], (wrong, unknown)
    text = metrics_text(settings)
    assert 'citysense_edge_device_uplinks_total{outcome="ok",scheme="dtls-psk"} 1' in text
    assert 'outcome="wrong_device",scheme="dtls-psk"} 1' in text
    assert 'citysense_edge_dtls_handshakes_total{outcome="ok"}' in text


def test_another_device_behind_the_same_address_and_port(dtls_gateway) -> None:  # type: ignore[no-untyped-def]
    """Carrier NAT hands the address:port of a device that went to sleep without closing
    its session to another device: the other device's handshake must work."""
    ensure_binary("coap-client-openssl")
    _, settings, port, devices, keys = dtls_gateway
    nat = NatRelay(port)
    try:
        for i, device in enumerate([*devices[2:5], devices[2]]):
            key = keys[device]
            done = libcoap_post(
                "coap-client-openssl",
                nat.port,
                key.id,
                key.secret,
                uplink_payload(device, now_ms() - 1000 * i),
            )
            assert done.returncode == 0 and not done.stdout.strip(), (device, done)
    finally:
        nat.close()
    assert stored_devices(settings) == sorted([*devices[2:5], devices[2]])


def test_aiocoap_client_and_junk(dtls_gateway) -> None:  # type: ignore[no-untyped-def]
    _, settings, port, devices, keys = dtls_gateway
    d = devices[5]

    async def scenario() -> None:
        ctx = await client(port, keys[d])
        try:
            answer = await post(ctx, f"coaps://127.0.0.1:{port}/up", uplink_payload(d, now_ms()))
            assert answer.code == Code.CHANGED, answer
            answer = await post(
                ctx, f"coaps://127.0.0.1:{port}/up", uplink_payload(devices[0], now_ms())
            )
            assert answer.code == Code.FORBIDDEN, answer
        finally:
            await ctx.shutdown()

    asyncio.run(scenario())
    assert stored_devices(settings) == [d]
    # junk from many addresses creates no DTLS state
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(200):
            sock.sendto(b"\x17\xfe\xfd" + bytes(40), ("127.0.0.1", port))
    time.sleep(0.5)
    held = [
        line
        for line in metrics_text(settings).splitlines()
        if line.startswith("citysense_edge_dtls_sessions ")
    ]
    assert held and float(held[0].split()[1]) <= 1, held
