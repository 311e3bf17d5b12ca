"""Devices with keys: OSCORE or DTLS 1.2 PSK uplinks through aiocoap's client stack.

A device with a key in ``--device-keys`` gets an aiocoap client context of its own (OSCORE
credentials are keyed by the gateway's URI, so one context holds one device's), created on
its first uplink. OSCORE contexts (the device's copy: its sender id is its key id) live in a
folder next to the keys file, ``.<keys file name>.devices/<id hex>/`` (0700), so sequence
numbers go on across runs; DTLS keeps one session per device. This is the device side: it
uses libraries, never the gateway's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import aiocoap
from aiocoap import error as coap_error

from citysense.credentials import OSCORE, DeviceKey, oscore_context_files
from simulators.coap_client import Result

log = logging.getLogger(__name__)

#: an uplink's whole exchange, retransmissions included, at most this long (RFC 7252's
#: MAX_TRANSMIT_WAIT is 93 s)
EXCHANGE_TIMEOUT = 100.0


def device_state_folder(keys_file: Path) -> Path:
    return keys_file.with_name(f".{keys_file.name}.devices")


class SecureDevices:
    """The aiocoap client contexts of the devices that have keys."""

    def __init__(
        self,
        keys: Mapping[str, DeviceKey],
        coap: tuple[str, int],
        coaps: tuple[str, int],
        folder: Path,
    ) -> None:
        self.keys = keys
        self.coap = coap
        self.coaps = coaps
        self.folder = folder
        self._contexts: dict[str, aiocoap.Context] = {}
        self._pending: dict[str, asyncio.Future[aiocoap.Context]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: aiocoap's DTLS client keeps its sessions in a weak dictionary: a session nobody
        #: holds is collected between two uplinks, and its ``__del__`` sends a close-notify
        #: through a dead callback (DTLSSocket raises SystemError). Holding each device's
        #: session keeps one session per device; :meth:`aclose` closes them in order.
        self._sessions: dict[str, object] = {}

    def has(self, device: str) -> bool:
        return device in self.keys

    def _uri(self, key: DeviceKey) -> str:
        if key.scheme == OSCORE:
            host, port = self.coap
            return f"coap://{_host(host)}:{port}/up"
        host, port = self.coaps
        return f"coaps://{_host(host)}:{port}/up"

    def _oscore_folder(self, key: DeviceKey) -> Path:
        folder = self.folder / key.id.hex()
        files = oscore_context_files(key, "device")
        try:
            current = json.loads((folder / "secret.json").read_text())
        except (OSError, ValueError):
            current = None
        if current != files["secret.json"]:  # new, or a new key: a fresh context
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
            (folder / "sequence.json").unlink(missing_ok=True)
            for name, data in files.items():
                fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f)
        return folder

    async def _context(self, device: str) -> aiocoap.Context:
        ctx = self._contexts.get(device)
        if ctx is not None:
            return ctx
        pending = self._pending.get(device)
        if pending is not None:
            return await pending
        future: asyncio.Future[aiocoap.Context] = asyncio.get_running_loop().create_future()
        self._pending[device] = future
        key = self.keys[device]
        try:
            if key.scheme == OSCORE:
                ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
                entry: dict[str, object] = {
                    "oscore": {"basedir": str(self._oscore_folder(key)) + "/"}
                }
            else:
                ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
                entry = {
                    "dtls": {
                        "psk": {"hex": key.secret.hex()},
                        "client-identity": {"hex": key.id.hex()},
                    }
                }
            ctx.client_credentials.load_from_dict({self._uri(key).rsplit("/", 1)[0] + "/*": entry})
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the caller sees it raised
            raise
        finally:
            self._pending.pop(device, None)
        self._contexts[device] = ctx
        future.set_result(ctx)
        return ctx

    def send(
        self, device: str, payload: bytes, content_format: int, done: Callable[[Result], None]
    ) -> None:
        """Send one uplink as ``device``; ``done`` gets how it ended (once)."""
        task = asyncio.get_running_loop().create_task(
            self._send(device, payload, content_format, done)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, device: str, payload: bytes, content_format: int, done: Callable[[Result], None]
    ) -> None:
        key = self.keys[device]
        try:
            ctx = await self._context(device)
            request = aiocoap.Message(code=aiocoap.POST, uri=self._uri(key), payload=payload)
            request.opt.content_format = content_format
            response = await asyncio.wait_for(ctx.request(request).response, EXCHANGE_TIMEOUT)
            if key.scheme != OSCORE:
                self._sessions[device] = response.remote
        except asyncio.CancelledError:
            done(Result("abandoned"))
            raise
        except (TimeoutError, coap_error.Error, OSError) as exc:
            log.debug("uplink of %s failed: %r", device, exc)
            done(Result("timeout"))
            return
        done(
            Result(
                "response",
                int(response.code),
                response.payload,
                response.opt.max_age if response.opt.max_age is not None else None,
            )
        )

    async def aclose(self, drain: float = 5.0) -> None:
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), drain)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in self._sessions.values():
            with contextlib.suppress(Exception):
                session.shutdown()  # type: ignore[attr-defined]
        for ctx in self._contexts.values():
            with contextlib.suppress(Exception):
                await ctx.shutdown()
        self._contexts.clear()
        self._sessions.clear()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
