"""The compatibility seams of aiocoap and DTLSSocket (edge/compat), each defect contained:
DTLS binds exactly the given port, refuses an any-address, holds a bounded number of states
and purges idle and unfinished ones; the keys file refuses key sizes DTLSSocket would
overrun and identities longer than 32 bytes; the credential store is indexed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import aiocoap
import aiocoap.resource
import pytest

from citysense.credentials import (
    DTLS_PSK,
    OSCORE,
    DeviceKey,
    format_device_keys,
    parse_device_keys,
    read_device_keys,
    write_device_keys,
)
from citysense.errors import InputError
from edge.compat import dtls
from edge.devicekeys import DeviceKeyStore
from tests.edge.gateway import free_udp_port
from tests.edge.trust import ascii_secret
from tests.servers import ensure_binary


def _keys_text(scheme: str, ident: str, secret: bytes) -> str:
    return f"device,scheme,id,secret\nurn:imei:1,{scheme},{ident},{secret.hex()}\n"


@pytest.mark.parametrize("size", [8, 15, 17, 32])
def test_other_key_sizes_are_refused_at_load(size: int) -> None:
    with pytest.raises(InputError, match="16 bytes"):
        parse_device_keys(_keys_text(DTLS_PSK, "dev", bytes(size)))


def test_identities_and_ids_are_bounded() -> None:
    parse_device_keys(_keys_text(DTLS_PSK, "x" * 32, bytes(16)))
    with pytest.raises(InputError, match="32"):
        parse_device_keys(_keys_text(DTLS_PSK, "x" * 33, bytes(16)))
    with pytest.raises(InputError, match="OSCORE id"):
        parse_device_keys(_keys_text(OSCORE, "00" * 8, bytes(16)))
    with pytest.raises(InputError, match="twice"):
        parse_device_keys(
            _keys_text(OSCORE, "01", bytes(16)) + f"urn:imei:1,oscore,02,{bytes(16).hex()}\n"
        )


def test_keys_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    keys = [DeviceKey("urn:imei:1", OSCORE, b"\x01", bytes(range(16)))]
    write_device_keys(path, keys)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_device_keys(path) == keys
    path.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        read_device_keys(path)
    assert "000102" not in repr(keys[0])
    assert (
        format_device_keys(keys).splitlines()[1] == f"urn:imei:1,oscore,01,{bytes(range(16)).hex()}"
    )


def test_store_is_indexed(tmp_path: Path) -> None:
    keys = [
        DeviceKey(f"urn:imei:{i}", DTLS_PSK, f"id-{i}".encode(), bytes(16)) for i in range(5000)
    ]
    store = DeviceKeyStore(keys, tmp_path)
    secret, claim = store.find_dtls_psk(b"id-4999")
    assert claim.device == "urn:imei:4999" and secret == bytes(16)
    with pytest.raises(KeyError):
        store.find_dtls_psk(b"nobody")
    started = time.perf_counter()
    for _ in range(10_000):
        store.find_dtls_psk(b"id-2500")
    assert time.perf_counter() - started < 1.0  # a walk over 5,000 entries would take ~10 s


def test_client_hello_recognised() -> None:
    hello = bytes([22, 0xFE, 0xFD, 0, 0]) + bytes(8) + bytes([1]) + bytes(20)
    assert dtls.is_client_hello(hello)
    assert not dtls.is_client_hello(bytes([23]) + hello[1:])
    assert not dtls.is_client_hello(hello[:3] + b"\x00\x01" + hello[5:])  # epoch 1
    assert not dtls.is_client_hello(hello[:13] + b"\x02" + hello[14:])


class _Echo(aiocoap.resource.Resource):
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED)


def _handshake(port: int, key: DeviceKey, source: int | None = None) -> None:
    cmd = ["coap-client-openssl", "-m", "post", "-B", "3", "-e", "x"]
    if source is not None:
        cmd += ["-p", str(source)]
    cmd += ["-u", key.id.decode(), "-k", key.secret.decode(), f"coaps://127.0.0.1:{port}/up"]
    subprocess.run(cmd, capture_output=True, timeout=15, check=False)


def test_dtls_server_binds_the_port_given_bounds_and_purges_states(tmp_path: Path) -> None:
    ensure_binary("coap-client-openssl")
    keys = [
        DeviceKey(f"urn:imei:{i}", DTLS_PSK, f"dev-{i}".encode(), ascii_secret()) for i in range(4)
    ]
    store = DeviceKeyStore(keys, tmp_path)
    port = free_udp_port()
    outcomes: list[str] = []

    async def scenario() -> None:
        site = aiocoap.resource.Site()
        site.add_resource(["up"], _Echo())
        ctx = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", free_udp_port()), transports=["udp6"]
        )
        try:
            with pytest.raises(ValueError, match="specific address"):
                await dtls.start_dtls_server(ctx, ("0.0.0.0", port), store)
            server = await dtls.start_dtls_server(
                ctx,
                ("127.0.0.1", port),
                store,
                max_states=2,
                on_handshake=outcomes.append,
                idle_timeout=1.0,
                handshake_timeout=1.0,
                purge_interval=0.2,
            )
            loop = asyncio.get_running_loop()
            for key in keys[:3]:  # three peers, two states at most
                await loop.run_in_executor(None, _handshake, port, key)
            assert server.states <= 2
            assert outcomes.count("ok") == 3, outcomes
            # a wrong key: a state that never finishes its handshake is purged
            wrong = DeviceKey(keys[3].device, DTLS_PSK, keys[3].id, b"0123456789abcdef")
            await loop.run_in_executor(None, _handshake, port, wrong)
            await asyncio.sleep(2.0)
            assert server.states == 0
            assert "failed" in outcomes
        finally:
            await ctx.shutdown()

    asyncio.run(scenario())


def test_open_oscore_contexts_are_bounded_and_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge import devicekeys
    from edge.compat.oscore import COSE_KID

    keys = [DeviceKey(f"urn:imei:{i}", OSCORE, bytes([i + 1]), bytes(16)) for i in range(20)]
    busy = DeviceKeyStore(keys, tmp_path / "busy", max_open=16)
    for key in keys:  # all used just now: none may be closed under a request
        busy.find_oscore({COSE_KID: key.id})
    assert busy.open_contexts == 20
    busy.close()
    monkeypatch.setattr(devicekeys, "MIN_IDLE_BEFORE_CLOSE", 0.0)
    store = DeviceKeyStore(keys, tmp_path / "idle", max_open=16)
    for key in keys:
        store.find_oscore({COSE_KID: key.id})
    assert store.open_contexts == 16
    closed = tmp_path / "idle" / "oscore" / "01"
    saved = json.loads((closed / "sequence.json").read_text())
    assert saved["received"] != "unknown"  # saved cleanly: no Echo round trip needed
    again = DeviceKeyStore(keys, tmp_path / "idle")  # its lock was released
    again.find_oscore({COSE_KID: keys[0].id})
    again.close()
    store.close()
