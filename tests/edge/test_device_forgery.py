"""An attacker on the device network, against a real gateway over real UDP (and TCP): each
forged case is refused. A downlink is not handed to a spoofed uplink; one device flooding
does not stop another; a 1 MiB Block1 upload is stopped at the limit, not reassembled; TCP
is closed unless asked for; a device of another gateway is refused unless roaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from citysense.credentials import OSCORE
from citysense.registry import Device, format_registry
from citysense.senml import CF_SENML_JSON
from tests.edge.gateway import (
    GATEWAY,
    GatewayThread,
    coap_port,
    edge_settings,
    ingestor,
    metrics_text,
    post_uplink,
    uplink_payload,
    write_registry,
)
from tests.edge.trust import client, device_folder, post, write_keys
from tests.servers import MosquittoServer, wait_until


def now_ms() -> int:
    return int(time.time() * 1000)


def test_stolen_downlink_stays_for_the_real_device(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    devices = write_registry(tmp_path / "registry.csv", 3)
    keys = write_keys(tmp_path / "keys.csv", devices, OSCORE)
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url, device_keys=tmp_path / "keys.csv")
    port = coap_port(settings)
    uri = f"coap://127.0.0.1:{port}/up"
    victim, thief = devices[0], devices[1]

    async def as_device(device: str, readings_of: str) -> aiocoap.Message:
        ctx = await client(port, keys[device], device_folder(tmp_path / "dev", keys[device]))
        try:
            return await post(ctx, uri, uplink_payload(readings_of, now_ms()))
        finally:
            await ctx.shutdown()

    with ingestor(mosquitto.url) as ing, GatewayThread(settings):
        ing.wait_online()
        ing.send_down(
            {"id": "c-1", "device": victim, "command": "open_valve", "expires": now_ms() + 60_000}
        )
        wait_until(lambda: ing.ack_states("c-1") == ["queued"], 20, "queued ack")
        # spoofed: plain CoAP in the victim's name, and the thief's key in the victim's name
        assert post_uplink(port, uplink_payload(victim, now_ms())).code == Code.UNAUTHORIZED
        stolen = asyncio.run(as_device(thief, victim))
        assert stolen.code == Code.FORBIDDEN and b"cmd" not in stolen.payload
        assert ing.ack_states("c-1") == ["queued"]
        # the real device gets it, and only then is it delivered
        real = asyncio.run(as_device(victim, victim))
        assert real.code == Code.CHANGED and b"open_valve" in real.payload
        wait_until(lambda: "delivered" in ing.ack_states("c-1"), 20, "delivered ack")


def test_a_flooding_device_does_not_stop_another(tmp_path: Path) -> None:
    devices = write_registry(tmp_path / "registry.csv", 2)
    keys = write_keys(tmp_path / "keys.csv", devices, OSCORE)
    settings = edge_settings(
        tmp_path, device_keys=tmp_path / "keys.csv", device_rate=4, device_burst=10
    )
    port = coap_port(settings)
    uri = f"coap://127.0.0.1:{port}/up"
    flooder, quiet = devices

    async def scenario() -> None:
        fctx = await client(port, keys[flooder], device_folder(tmp_path / "dev", keys[flooder]))
        qctx = await client(port, keys[quiet], device_folder(tmp_path / "dev", keys[quiet]))
        try:
            t = now_ms() - 100_000
            answers = [await post(fctx, uri, uplink_payload(flooder, t + i)) for i in range(60)]
            codes = [a.code for a in answers]
            assert codes.count(Code.CHANGED) <= 11, codes
            limited = [a for a in answers if a.code == Code.TOO_MANY_REQUESTS]
            assert len(limited) >= 49 and all(a.opt.max_age >= 1 for a in limited)
            for i in range(5):
                answer = await post(qctx, uri, uplink_payload(quiet, t + i))
                assert answer.code == Code.CHANGED, answer
        finally:
            await fctx.shutdown()
            await qctx.shutdown()

    with GatewayThread(settings):
        asyncio.run(scenario())
        # unauthenticated traffic from one address is limited before it is parsed
        codes = [post_uplink(port, b"[]").code for _ in range(60)]
        assert Code.TOO_MANY_REQUESTS in codes and Code.UNAUTHORIZED not in codes[45:]
        text = metrics_text(settings)
        assert 'outcome="rate_limited",scheme="oscore"' in text
        assert 'outcome="rate_limited",scheme="none"' in text


def _block(mid: int, num: int, more: bool, payload: bytes, size1: int | None) -> bytes:
    msg = aiocoap.Message(
        _mtype=Type.CON, code=Code.POST, _mid=mid, _token=b"\x42", payload=payload
    )
    msg.opt.uri_path = ("up",)
    msg.opt.content_format = CF_SENML_JSON
    msg.opt.block1 = BlockOption.BlockwiseTuple(num, more, 6)
    if size1 is not None:
        msg.opt.size1 = size1
    return bytes(msg.encode())


def test_block1_upload_stopped_at_the_limit_and_tcp_closed(tmp_path: Path) -> None:
    write_registry(tmp_path / "registry.csv", 2)
    settings = edge_settings(tmp_path, max_uplink_bytes=2048)
    port = coap_port(settings)
    with GatewayThread(settings), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)

        def send(datagram: bytes) -> aiocoap.Message:
            sock.sendto(datagram, ("127.0.0.1", port))
            return aiocoap.Message.decode(sock.recvfrom(2048)[0])

        # announced: 1 MiB in Size1 -> 4.13 on the first block
        first = send(_block(1, 0, True, b"[" + b" " * 1023, 1 << 20))
        assert first.code == Code.REQUEST_ENTITY_TOO_LARGE and first.opt.size1 == 2048
        # not announced: continues until what arrived passes the limit, then 4.13
        codes = []
        for num in range(1024):  # 1 MiB in 1 KiB blocks, stopped early
            answer = send(_block(10 + num, num, True, b" " * 1024, None))
            codes.append(answer.code)
            if answer.code != Code.CONTINUE:
                break
        assert codes[-1] == Code.REQUEST_ENTITY_TOO_LARGE and len(codes) == 3, codes
        # TCP: nobody listens on the CoAP port
        with socket.socket() as tcp:
            assert tcp.connect_ex(("127.0.0.1", port)) != 0


def test_tcp_when_asked_and_other_gateways_devices(tmp_path: Path) -> None:
    ours = write_registry(tmp_path / "registry.csv", 1)
    theirs = Device("urn:imei:869999999999999", "air_station", "d", "s", 34.7, 113.7, "gw-other")
    registry = tmp_path / "registry.csv"
    registry.write_text(format_registry([*_devices(registry), theirs]))
    settings = edge_settings(tmp_path, coap_tcp=True)
    port = coap_port(settings)
    with GatewayThread(settings):
        assert post_uplink(port, uplink_payload(ours[0], now_ms())).code == Code.CHANGED
        refused = post_uplink(port, uplink_payload(theirs.device, now_ms()))
        assert refused.code == Code.FORBIDDEN and b"gateway" in refused.payload
        with socket.socket() as tcp:
            assert tcp.connect_ex(("127.0.0.1", port)) == 0
    roaming = edge_settings(tmp_path, roaming=True)
    with GatewayThread(roaming):
        answer = post_uplink(coap_port(roaming), uplink_payload(theirs.device, now_ms()))
        assert answer.code == Code.CHANGED
    assert theirs.gateway != GATEWAY


def _devices(path: Path) -> list[Device]:
    from citysense.registry import load_registry

    return list(load_registry(path).values())


def test_optional_device_auth(tmp_path: Path) -> None:
    """``--device-auth optional``: a device without a key is accepted on plain CoAP (and
    ``/metrics`` says the gateway runs so); a device with a key still must prove itself."""
    devices = write_registry(tmp_path / "registry.csv", 3)
    write_keys(tmp_path / "keys.csv", devices[:1], OSCORE)
    settings = edge_settings(tmp_path, device_keys=tmp_path / "keys.csv", device_auth="optional")
    port = coap_port(settings)
    with GatewayThread(settings):
        keyed = post_uplink(port, uplink_payload(devices[0], now_ms()))
        assert keyed.code == Code.UNAUTHORIZED, keyed
        assert post_uplink(port, uplink_payload(devices[1], now_ms())).code == Code.CHANGED
        text = metrics_text(settings)
        assert "citysense_edge_device_auth_optional 1" in text
        assert 'citysense_edge_device_uplinks_total{outcome="ok",scheme="none"} 1' in text
    required = edge_settings(tmp_path, device_keys=tmp_path / "keys.csv")
    with GatewayThread(required):
        answer = post_uplink(coap_port(required), uplink_payload(devices[2], now_ms()))
        assert answer.code == Code.UNAUTHORIZED, answer
        assert "citysense_edge_device_auth_optional 0" in metrics_text(required)


def test_no_silent_overwrite_on_the_authenticated_paths(tmp_path: Path) -> None:
    """A second, different value for a held (device, metric, time) from the device itself
    (OSCORE) is refused as a conflict, never merged; an identical repeat stays harmless."""
    devices = write_registry(tmp_path / "registry.csv", 1)
    keys = write_keys(tmp_path / "keys.csv", devices, OSCORE)
    settings = edge_settings(tmp_path, device_keys=tmp_path / "keys.csv")
    port = coap_port(settings)
    uri = f"coap://127.0.0.1:{port}/up"
    (device,) = devices
    t = now_ms() - 10_000

    async def scenario() -> list[aiocoap.Message]:
        ctx = await client(port, keys[device], device_folder(tmp_path / "dev", keys[device]))
        try:
            return [
                await post(ctx, uri, uplink_payload(device, t, {"pm25": 10.0})),
                await post(ctx, uri, uplink_payload(device, t, {"pm25": 10.0})),
                await post(ctx, uri, uplink_payload(device, t, {"pm25": 999.0})),
            ]
        finally:
            await ctx.shutdown()

    with GatewayThread(settings):
        first, repeat, forged = asyncio.run(scenario())
        assert first.code == Code.CHANGED and repeat.code == Code.CHANGED
        assert forged.code == Code.BAD_REQUEST and forged.payload == b"conflicting value"
        assert 'outcome="conflict",scheme="oscore"} 1' in metrics_text(settings)
    with contextlib.closing(sqlite3.connect(Path(settings.state_dir) / "outbox.db")) as db:
        (vals,) = db.execute("SELECT vals FROM reading").fetchone()
    assert json.loads(vals)["pm25"] == 10.0
