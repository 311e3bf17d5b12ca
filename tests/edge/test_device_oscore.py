"""OSCORE devices against a real gateway over real UDP, with aiocoap's client stack as the
device: accepted and stored under the right device, a replay refused 4.01 and stored once, a
plain request for a keyed device 4.01, another device's readings 4.03, and ``kill -9`` then
restart (the first request pays an Echo round trip; nothing is stored twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.oscore import FilesystemSecurityContext

from citysense.credentials import OSCORE, DeviceKey
from citysense.senml import CF_SENML_JSON
from simulators import coap
from simulators.oscore import DeviceContext
from tests.edge.gateway import (
    GatewayProcess,
    GatewayThread,
    coap_port,
    edge_settings,
    metrics_text,
    post_uplink,
    uplink_payload,
    write_registry,
)
from tests.edge.trust import client, device_folder, post, write_keys


def now_ms() -> int:
    return int(time.time() * 1000)


def stored(settings: object) -> list[tuple[str, int]]:
    """(device, time) of every reading in the gateway's outbox."""
    path = Path(settings.state_dir) / "outbox.db"  # type: ignore[attr-defined]
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [(str(d), int(t)) for d, t in db.execute("SELECT device, t FROM reading")]


def setup(tmp_path: Path, count: int = 3) -> tuple[list[str], dict[str, DeviceKey], Path]:
    devices = write_registry(tmp_path / "registry.csv", count)
    keys = write_keys(tmp_path / "keys.csv", devices, OSCORE)
    return devices, keys, tmp_path / "keys.csv"


def protected_datagram(folder: Path, payload: bytes, mid: int) -> bytes:
    """One OSCORE-protected CON POST /up, as a device would put it on the air."""
    sc = FilesystemSecurityContext(str(folder))
    try:
        msg = aiocoap.Message(code=Code.POST, payload=payload)
        msg.opt.uri_path = ("up",)
        msg.opt.content_format = CF_SENML_JSON
        protected, _ = sc.protect(msg)
        protected.mtype = Type.CON
        protected.mid = mid
        protected.token = mid.to_bytes(2, "big")
        return bytes(protected.encode())
    finally:
        sc._destroy()


def exchange(port: int, datagram: bytes, timeout: float = 20) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(datagram, ("127.0.0.1", port))
        return sock.recvfrom(2048)[0]


def send_raw(port: int, datagram: bytes) -> aiocoap.Message:
    return aiocoap.Message.decode(exchange(port, datagram))


def test_oscore_accepted_replay_refused_plain_refused_other_device_forbidden(
    tmp_path: Path,
) -> None:
    devices, keys, keys_file = setup(tmp_path)
    settings = edge_settings(tmp_path, device_keys=keys_file)
    port = coap_port(settings)
    uri = f"coap://127.0.0.1:{port}/up"
    a, b = devices[0], devices[1]

    async def scenario() -> None:
        ctx = await client(port, keys[a], device_folder(tmp_path / "dev", keys[a]))
        try:
            t = now_ms()
            ok = await post(ctx, uri, uplink_payload(a, t))
            assert ok.code == Code.CHANGED, ok
            # the same key used for another device's readings
            other = await post(ctx, uri, uplink_payload(b, t))
            assert other.code == Code.FORBIDDEN, other
            # two devices in one uplink
            both = uplink_payload(a, t + 1000)[:-1] + b"," + uplink_payload(b, t)[1:]
            two = await post(ctx, uri, both)
            assert two.code == Code.FORBIDDEN, two
        finally:
            await ctx.shutdown()

    with GatewayThread(settings):
        asyncio.run(scenario())
        # a plain request for a keyed device
        plain = post_uplink(port, uplink_payload(a, now_ms() - 5000))
        assert plain.code == Code.UNAUTHORIZED, plain
        # a replay: the same protected request twice (new MIDs, so no CoAP deduplication)
        c = devices[2]  # its own context: a copy of a's would reuse its sequence numbers
        datagram = protected_datagram(
            device_folder(tmp_path / "dev", keys[c]), uplink_payload(c, now_ms() - 9000), 7
        )
        first = send_raw(port, datagram)
        assert first.code == Code.CHANGED and first.opt.oscore is not None
        replay = send_raw(port, datagram[:2] + b"\x00\x08" + datagram[4:])
        assert replay.code == Code.UNAUTHORIZED, replay
        text = metrics_text(settings)
        assert 'citysense_edge_device_uplinks_total{outcome="replay",scheme="oscore"} 1' in text
        assert 'outcome="unauthenticated",scheme="none"' in text
        assert 'outcome="wrong_device",scheme="oscore"} 2' in text
    rows = stored(settings)
    assert sorted(d for d, _ in rows) == sorted([a, c]), rows


def test_kill9_then_restart_devices_keep_working_with_echo(tmp_path: Path) -> None:
    devices, keys, keys_file = setup(tmp_path, 3)
    capturer = devices.pop()
    settings = edge_settings(tmp_path, device_keys=keys_file)
    port = coap_port(settings)
    uri = f"coap://127.0.0.1:{port}/up"
    gateway = GatewayProcess(settings, tmp_path / "gateway.log")
    t0 = now_ms() - 60_000

    async def send(ctx: aiocoap.Context, device: str, t: int) -> None:
        answer = await post(ctx, uri, uplink_payload(device, t))
        assert answer.code == Code.CHANGED, (answer, answer.payload)

    async def scenario() -> None:
        ctxs = {
            d: await client(port, keys[d], device_folder(tmp_path / "dev", keys[d]))
            for d in devices
        }
        try:
            for i, d in enumerate(devices):
                await send(ctxs[d], d, t0 + i)
            gateway.kill()  # kill -9: no clean save of the OSCORE state
            gateway.start()
            for i, d in enumerate(devices):  # the first request of each pays an Echo
                await send(ctxs[d], d, t0 + 1000 + i)
            text = metrics_text(settings)
            assert 'outcome="echo",scheme="oscore"} 2' in text, text
        finally:
            for ctx in ctxs.values():
                await ctx.shutdown()

    # a request captured before the restart, replayed after it: refused, not stored again
    captured = protected_datagram(
        device_folder(tmp_path / "cap", keys[capturer]), uplink_payload(capturer, t0 - 1), 9
    )
    try:
        gateway.start()
        asyncio.run(scenario())
        assert send_raw(port, captured).code == Code.CHANGED
        gateway.kill()
        gateway.start()
        # answered with a protected 4.01 Echo challenge (outer code 2.04 as every OSCORE
        # response), which only the real device can answer
        send_raw(port, captured[:2] + b"\x00\x0a" + captured[4:])
        assert 'outcome="echo",scheme="oscore"} 1' in metrics_text(settings)
        assert gateway.terminate() == 0
    finally:
        gateway.close()
    rows = stored(settings)
    assert len(rows) == len(set(rows)) == 5, rows


def test_an_independent_oscore_peer(tmp_path: Path) -> None:
    """simulators.oscore, written from RFC 8613 on ``cryptography``, against the gateway:
    accepted, its response verifies, a replay is refused, another device's readings 4.03."""
    devices, keys, keys_file = setup(tmp_path, 2)
    settings = edge_settings(tmp_path, device_keys=keys_file)
    port = coap_port(settings)
    a, b = devices
    device = DeviceContext(keys[a].id, keys[a].secret)
    with GatewayThread(settings):
        datagram, piv = device.protect_post(1, b"\x01", "up", uplink_payload(a, now_ms()), 110)
        answer = coap.decode(exchange(port, datagram))
        inner = device.unprotect_response(answer, piv)
        assert inner.code == coap.CHANGED
        replay = coap.decode(exchange(port, datagram[:2] + b"\x00\x02" + datagram[4:]))
        assert replay.code == coap.code(4, 1) and replay.option(9) is None
        other, piv = device.protect_post(3, b"\x03", "up", uplink_payload(b, now_ms()), 110)
        inner = device.unprotect_response(coap.decode(exchange(port, other)), piv)
        assert inner.code == coap.FORBIDDEN
        forged = bytearray(other)
        forged[-1] ^= 1  # a flipped bit: the gateway cannot verify it
        assert send_raw(port, bytes(forged[:2]) + b"\x00\x04" + bytes(forged[4:])).code in (
            Code.BAD_REQUEST,
            Code.UNAUTHORIZED,
        )
    assert [d for d, _ in stored(settings)] == [a]
