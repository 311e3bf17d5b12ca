"""The CoAP site over real UDP: every answer code of INTERFACES.md section 3, sent with
aiocoap's client and with libcoap's ``coap-client`` as an independent peer; retransmissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.codes import Code

from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, encode_values
from tests.edge.gateway import (
    GatewayThread,
    coap_port,
    con_post,
    edge_settings,
    metric,
    metrics_text,
    outbox_depth,
    uplink_payload,
    write_registry,
)
from tests.servers import ensure_binary


def now_ms() -> int:
    return int(time.time() * 1000)


def cases(devices: list[str]) -> list[tuple[str, bytes, int | None, str]]:
    """(name, payload, content format, expected code); max_uplink_bytes is 300 here."""
    dev = devices[0]
    return [
        ("senml_json", uplink_payload(dev, now_ms()), CF_SENML_JSON, "2.04"),
        (
            "senml_cbor",
            encode_values(dev, now_ms() - 1000, {"no2": 20.0}, CF_SENML_CBOR),
            CF_SENML_CBOR,
            "2.04",
        ),
        ("no_time", b'[{"bn":"' + dev.encode() + b':","n":"o3","v":40}]', CF_SENML_JSON, "2.04"),
        ("malformed", b'[{"bn":', CF_SENML_JSON, "4.00"),
        ("out_of_range", uplink_payload(dev, now_ms(), {"pm25": -5.0}), CF_SENML_JSON, "4.00"),
        (
            "one_bad_record",
            b'[{"bn":"' + dev.encode() + b':","n":"pm25","v":10},{"n":"humidity","v":400}]',
            CF_SENML_JSON,
            "4.00",
        ),
        ("unknown_device", uplink_payload("urn:imei:999", now_ms()), CF_SENML_JSON, "4.03"),
        ("too_large", b"[" + b" " * 400 + b"]", CF_SENML_JSON, "4.13"),
        ("wrong_format", b'{"pm25": 3}', 50, "4.15"),
        ("no_format", uplink_payload(dev, now_ms()), None, "4.15"),
    ]


def gateway_settings(tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    write_registry(tmp_path / "registry.csv", 5)
    return edge_settings(tmp_path, max_uplink_bytes=300, **extra)


async def aiocoap_post(port: int, payload: bytes, cf: int | None) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/up", payload=payload)
        if cf is not None:
            req.opt.content_format = cf
        return await asyncio.wait_for(ctx.request(req).response, 30)
    finally:
        await ctx.shutdown()


def test_answer_codes_with_aiocoap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = gateway_settings(tmp_path)
    devices = write_registry(tmp_path / "registry.csv", 5)
    caplog.set_level(logging.WARNING, logger="edge.service")
    with GatewayThread(settings) as gw:
        for name, payload, cf, expected in cases(devices):
            response = asyncio.run(aiocoap_post(coap_port(settings), payload, cf))
            code = response.code.dotted
            assert code == expected, (name, code, response.payload)
            if expected != "2.04":
                assert response.payload, f"{name}: a refusal carries a diagnostic"
                assert response.opt.content_format == 0
        too_large = asyncio.run(aiocoap_post(coap_port(settings), b"[" + b" " * 400 + b"]", 110))
        assert too_large.opt.size1 == 300
        depth = outbox_depth(gw.settings)
    # 3 accepted uplinks -> 3 readings (distinct times); nothing of a refused uplink stored
    assert depth == 3
    # seven refusals, one aggregated warning (the next one after a minute)
    refused = [r for r in caplog.records if "uplinks refused" in r.getMessage()]
    assert len(refused) == 1


_CODE_RE = re.compile(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)")


def coap_client(args: list[str]) -> str:
    """Run libcoap's client; the answer code from its debug trace of the response."""
    binary = ensure_binary("coap-client-notls")
    result = subprocess.run(
        [binary, "-B", "20", "-v", "7", *args], capture_output=True, text=True, timeout=60
    )
    codes = _CODE_RE.findall(result.stdout + result.stderr)
    assert codes, result.stdout[-2000:] + result.stderr[-2000:]
    return str(codes[-1])


def test_answer_codes_with_libcoap_client(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)
    devices = write_registry(tmp_path / "registry.csv", 5)
    with GatewayThread(settings):
        url = f"coap://127.0.0.1:{coap_port(settings)}/up"
        for name, payload, cf, expected in cases(devices):
            payload_file = tmp_path / f"{name}.bin"
            payload_file.write_bytes(payload)
            args = ["-m", "post", "-f", str(payload_file)]
            if cf is not None:
                args += ["-t", str(cf)]
            code = coap_client([*args, url])
            assert code == expected, (name, code)
        wkc = subprocess.run(
            [
                ensure_binary("coap-client-notls"),
                "-B",
                "20",
                "-m",
                "get",
                f"coap://127.0.0.1:{coap_port(settings)}/.well-known/core",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert '</up>;ct="110 112"' in wkc.stdout
        assert metric(settings, "citysense_edge_readings_accepted_total") == 3


def test_well_known_core_with_aiocoap(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)

    async def get() -> aiocoap.Message:
        ctx = await aiocoap.Context.create_client_context()
        try:
            uri = f"coap://127.0.0.1:{coap_port(settings)}/.well-known/core"
            return await ctx.request(aiocoap.Message(code=Code.GET, uri=uri)).response
        finally:
            await ctx.shutdown()

    with GatewayThread(settings):
        response = asyncio.run(get())
    assert response.code == Code.CONTENT
    assert response.opt.content_format == 40
    assert b"</up>" in response.payload


def exchange(sock: socket.socket, port: int, datagram: bytes) -> aiocoap.Message:
    sock.sendto(datagram, ("127.0.0.1", port))
    sock.settimeout(20)
    data, _ = sock.recvfrom(2048)
    return aiocoap.Message.decode(data)


def test_retransmissions_are_stored_once(tmp_path: Path) -> None:
    """Same MID from the same endpoint: aiocoap answers again. Same uplink from a new source
    port (NAT rebinding, or a gateway restart in between): the outbox absorbs it."""
    settings = gateway_settings(tmp_path)
    devices = write_registry(tmp_path / "registry.csv", 5)
    payload = uplink_payload(devices[1], now_ms())
    with GatewayThread(settings) as gw:
        port = coap_port(settings)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            first = exchange(a, port, con_post(4711, b"\x01", payload))
            again = exchange(a, port, con_post(4711, b"\x01", payload))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            moved = exchange(b, port, con_post(4711, b"\x01", payload))
        for response in (first, again, moved):
            assert response.code == Code.CHANGED
            assert response.mid == 4711
        assert metric(settings, "citysense_edge_readings_accepted_total") == 2  # a, then b
        depth = outbox_depth(gw.settings)
    assert depth == 1
    # and across a restart of the gateway: still one row
    with GatewayThread(settings) as gw:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            assert exchange(c, port, con_post(4712, b"\x02", payload)).code == Code.CHANGED
        depth = outbox_depth(gw.settings)
    assert depth == 1


@pytest.mark.parametrize("cf", [CF_SENML_JSON, CF_SENML_CBOR])
def test_payload_formats_decode_alike(tmp_path: Path, cf: int) -> None:
    settings = gateway_settings(tmp_path)
    devices = write_registry(tmp_path / "registry.csv", 5)
    t = now_ms() - 5000
    payload = encode_values(devices[2], t, {"pm25": 12.5, "temperature": -3.0}, cf)
    if cf == CF_SENML_CBOR:
        assert isinstance(cbor2.loads(payload), list)
    with GatewayThread(settings) as gw:
        assert asyncio.run(aiocoap_post(coap_port(settings), payload, cf)).code == Code.CHANGED
        depth = outbox_depth(gw.settings)
    assert depth == 1


def test_unknown_path_is_404_and_the_site_still_serves(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)

    async def post(path: str) -> aiocoap.Message:
        ctx = await aiocoap.Context.create_client_context()
        try:
            uri = f"coap://127.0.0.1:{coap_port(settings)}/{path}"
            req = aiocoap.Message(code=Code.POST, uri=uri, payload=b"[]")
            req.opt.content_format = CF_SENML_JSON
            return await ctx.request(req).response
        finally:
            await ctx.shutdown()

    with GatewayThread(settings):
        assert asyncio.run(post("down")).code == Code.NOT_FOUND
        assert asyncio.run(post("up/x")).code == Code.NOT_FOUND
        assert asyncio.run(post("up")).code == Code.BAD_REQUEST


def test_a_conflicting_value_is_refused_over_udp(tmp_path: Path) -> None:
    """Another value for the same device, metric and time (a second source, say) is answered
    4.00 "conflicting value" and nothing of its uplink is stored; an identical repeat is 2.04
    and stored once (INTERFACES.md section 10.4)."""
    settings = gateway_settings(tmp_path)
    devices = write_registry(tmp_path / "registry.csv", 5)
    t = now_ms() - 5000
    with GatewayThread(settings) as gw:
        port = coap_port(settings)

        def post(payload: bytes) -> aiocoap.Message:
            return asyncio.run(aiocoap_post(port, payload, CF_SENML_JSON))

        assert post(uplink_payload(devices[0], t, {"pm25": 10.0})).code == Code.CHANGED
        assert post(uplink_payload(devices[0], t, {"pm25": 10.0})).code == Code.CHANGED
        # the forged value rides with a harmless new reading of the same device (one device
        # per uplink): both refused
        forged = (
            uplink_payload(devices[0], t, {"pm25": 999.0})[:-1]
            + b","
            + (uplink_payload(devices[0], t + 1000, {"pm25": 1.0})[1:])
        )
        answer = post(forged)
        assert answer.code == Code.BAD_REQUEST
        assert answer.payload == b"conflicting value"
        assert 'citysense_edge_rejected_total{reason="conflict"} 1' in metrics_text(settings)
        depth = outbox_depth(gw.settings)
    assert depth == 1
    with contextlib.closing(sqlite3.connect(Path(settings.state_dir) / "outbox.db")) as db:
        rows = [(d, json.loads(v)) for d, v in db.execute("SELECT device, vals FROM reading")]
    assert rows == [(devices[0], {"pm25": 10.0})]
