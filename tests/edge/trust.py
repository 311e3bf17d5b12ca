"""Device-trust helpers for the tests: keys files, device-side OSCORE folders, clients.

The device side is aiocoap's client stack (OSCORE, DTLS through DTLSSocket) and libcoap's
``coap-client-openssl`` / ``coap-client-gnutls`` (independent DTLS peers); never the
gateway's code.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import subprocess
from pathlib import Path

import aiocoap

from citysense.credentials import (
    DTLS_PSK,
    OSCORE,
    DeviceKey,
    generate_device_keys,
    oscore_context_files,
    write_device_keys,
)
from citysense.senml import CF_SENML_JSON


def ascii_secret() -> bytes:
    """16 printable bytes: libcoap's ``-k`` takes the key literally as text."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16)).encode()


def write_keys(path: Path, devices: list[str], scheme: str) -> dict[str, DeviceKey]:
    keys = generate_device_keys(devices, scheme)
    if scheme == DTLS_PSK:
        keys = [DeviceKey(k.device, k.scheme, k.id, ascii_secret()) for k in keys]
    write_device_keys(path, keys)
    return {k.device: k for k in keys}


def device_folder(root: Path, key: DeviceKey) -> Path:
    """The device's own copy of its OSCORE context (ids swapped)."""
    folder = root / f"dev-{key.id.hex()}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for name, data in oscore_context_files(key, "device").items():
            (folder / name).write_text(json.dumps(data))
    return folder


async def client(port: int, key: DeviceKey, folder: Path | None = None) -> aiocoap.Context:
    """An aiocoap client context holding ``key`` for the gateway at ``port``."""
    ctx = await aiocoap.Context.create_client_context()
    if key.scheme == OSCORE:
        assert folder is not None
        ctx.client_credentials.load_from_dict(
            {f"coap://127.0.0.1:{port}/*": {"oscore": {"basedir": str(folder) + "/"}}}
        )
    else:
        ctx.client_credentials.load_from_dict(
            {
                f"coaps://127.0.0.1:{port}/*": {
                    "dtls": {
                        "psk": {"hex": key.secret.hex()},
                        "client-identity": {"hex": key.id.hex()},
                    }
                }
            }
        )
    return ctx


async def post(ctx: aiocoap.Context, uri: str, payload: bytes) -> aiocoap.Message:
    request = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload)
    request.opt.content_format = CF_SENML_JSON
    return await asyncio.wait_for(ctx.request(request).response, 30)


def libcoap_post(
    binary: str, port: int, identity: bytes, secret: bytes, payload: bytes, timeout: int = 4
) -> subprocess.CompletedProcess[str]:
    """``coap-client-* -m post`` over DTLS PSK; stdout holds the answer's payload."""
    return subprocess.run(
        [
            binary,
            "-m",
            "post",
            "-t",
            "110",
            "-B",
            str(timeout),
            "-u",
            identity.decode(),
            "-k",
            secret.decode(),
            "-e",
            payload.decode(),
            f"coaps://127.0.0.1:{port}/up",
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        check=False,
    )


class NatRelay:
    """Carrier NAT in front of the gateway: every client's datagrams leave from one fixed
    address:port. ``drop_alerts`` drops DTLS alerts (content type 21) on the way up: a
    device that goes to sleep or loses power never closes its session. ``bytes`` and
    ``datagrams`` count what crossed it both ways (the benchmark's wire cost)."""

    def __init__(self, server_port: int, *, drop_alerts: bool = True) -> None:
        import socket
        import threading

        self.server = ("127.0.0.1", server_port)
        self.drop_alerts = drop_alerts
        self.inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inside.bind(("127.0.0.1", 0))
        self.port = self.inside.getsockname()[1]
        self.outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.outside.bind(("127.0.0.1", 0))
        self.public_port = self.outside.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.bytes = 0
        self.datagrams = 0
        self._stop = False
        self._threads = [
            threading.Thread(target=self._up, daemon=True),
            threading.Thread(target=self._down, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _up(self) -> None:
        self.inside.settimeout(0.1)
        while not self._stop:
            try:
                data, addr = self.inside.recvfrom(4096)
            except OSError:
                continue
            self.client = addr
            if self.drop_alerts and data[:1] == b"\x15":
                continue
            self.bytes += len(data)
            self.datagrams += 1
            self.outside.sendto(data, self.server)

    def _down(self) -> None:
        self.outside.settimeout(0.1)
        while not self._stop:
            try:
                data = self.outside.recv(4096)
            except OSError:
                continue
            self.bytes += len(data)
            self.datagrams += 1
            if self.client is not None:
                self.inside.sendto(data, self.client)

    def reset(self) -> None:
        self.bytes = self.datagrams = 0

    def close(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(2)
        self.inside.close()
        self.outside.close()
