"""DTLS 1.2 PSK on aiocoap 0.4.17's ``tinydtls_server`` transport (DTLSSocket), made safe.

aiocoap's DTLS server keeps one DTLS state (a whole tinydtls context) per peer address. Its
defects, measured, and what this module does about each:

* It binds the given port **+ 1** (``_default_port`` arithmetic): :class:`DtlsServer` binds
  the port it is given.
* It needs a specific address, not ``0.0.0.0`` / ``::``: :func:`start_dtls_server` refuses
  those with a clear error, and binds one server per configured address.
* Per-address state is never purged, and every datagram from a new address creates one
  (junk grows memory without bound): :class:`_BoundedPool` creates a state only for a DTLS
  ClientHello, holds at most ``max_states`` (the least recently used go first), and a timer
  purges states idle longer than ``idle_timeout`` and handshakes not finished within
  ``handshake_timeout``.
* A state remembers the first PSK identity used from an address, so another device later
  behind the same address:port (carrier NAT) fails its handshake: a fresh ClientHello on an
  address whose state already chose an identity replaces that state.
* DTLSSocket copies the key into a 16-byte buffer without a length check: keys of any other
  size are refused when the keys file is read (:mod:`citysense.credentials`), identities
  are at most 32 bytes.
* A peer's close_notify (alert level warning) is logged as unhandled and its state kept: the
  state is dropped at once.
* Credentials are found by walking every entry: the store passed in answers
  ``find_dtls_psk`` from an index (:mod:`edge.devicekeys`).

Not contained: a wrong key gets no alert from tinydtls (the client waits out its own
timeout); such a handshake is counted as failed when its state is purged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap import error
from aiocoap.numbers import COAP_PORT
from aiocoap.transports import tinydtls_server as _server
from aiocoap.transports.tinydtls import (
    CODE_CLOSE_NOTIFY,
    DTLS_EVENT_CONNECTED,
    LEVEL_NOALERT,
)

#: a DTLS alert's level "warning" (tinydtls reports a peer's close_notify with it)
LEVEL_WARNING = 1

log = logging.getLogger(__name__)

#: DTLS record: content type 22 (handshake), epoch 0, handshake type 1 (ClientHello)
_HANDSHAKE = 22
_CLIENT_HELLO = 1
HANDSHAKE_TIMEOUT = 30.0
IDLE_TIMEOUT = 900.0
PURGE_INTERVAL = 5.0

#: handshake outcomes reported to ``on_handshake``
OK = "ok"
FAILED = "failed"


def is_client_hello(data: bytes) -> bool:
    """A DTLS 1.x record carrying a ClientHello in epoch 0."""
    return (
        len(data) > 25
        and data[0] == _HANDSHAKE
        and data[1] == 0xFE
        and data[3:5] == b"\x00\x00"
        and data[13] == _CLIENT_HELLO
    )


class _DeviceAddress(_server._AddressDTLS):
    """One peer's DTLS state, with its age and whether its handshake finished."""

    def __init__(self, protocol: Any, underlying_address: Any) -> None:
        super().__init__(protocol, underlying_address)
        self.created = self.last_seen = time.monotonic()
        self.established = False

    def _event(self, level: int, code: int) -> None:
        if (level, code) == (LEVEL_NOALERT, DTLS_EVENT_CONNECTED) and not self.established:
            self.established = True
            self._protocol.on_handshake(OK)
        if (level, code) == (LEVEL_WARNING, CODE_CLOSE_NOTIFY):
            # the peer closed its session (libcoap's clients do when they exit): aiocoap logs
            # an "unhandled alert" and keeps the state; free it now instead
            self.established = True
            self._protocol._drop(self, "closed by the peer")
            return
        super()._event(level, code)

    def _inject_error(self, e: Exception) -> None:
        # aiocoap's version pops the address unconditionally: it may already hold a newer
        # state (a new handshake replaced this one), or none (purged twice)
        if not self.established:
            self._protocol.on_handshake(FAILED)
            self.established = True  # counted once
        self._protocol._message_interface._received_exception(self, e)
        self._retransmission_task.cancel()
        connections = self._protocol._connections
        if connections.get(self._underlying_address.address) is self:
            del connections[self._underlying_address.address]


class _BoundedPool(_server._DatagramServerSocketSimpleDTLS):
    _Address = _DeviceAddress
    max_sockets = 10_000
    idle_timeout = IDLE_TIMEOUT
    handshake_timeout = HANDSHAKE_TIMEOUT
    on_handshake: Callable[[str], None] = staticmethod(lambda outcome: None)
    _purger: asyncio.Task[None] | None = None

    def datagram_received(self, data: bytes, sockaddr: Any) -> None:
        state = self._connections.get(sockaddr)
        hello = is_client_hello(data)
        if state is not None and hello and state._psk_store._claims is not None:
            # a new handshake on an address whose state already chose an identity: another
            # device behind the same NAT binding, or the same one starting again
            self._drop(state, "new handshake from the same address")
            state = None
        if state is None:
            if not hello:
                return  # no state for anything but a handshake's first record
            self._maybe_purge_sockets()
        else:
            state.last_seen = time.monotonic()
        super().datagram_received(data, sockaddr)

    def _drop(self, state: _DeviceAddress, why: str) -> None:
        state._inject_error(error.LibraryShutdown(why))

    def _maybe_purge_sockets(self) -> None:
        while len(self._connections) >= self.max_sockets:
            _, oldest = next(iter(self._connections.items()))
            self._drop(oldest, "too many DTLS states: the least recently used goes")

    def purge(self, now: float) -> int:
        """Drop idle states and unfinished handshakes; returns how many went."""
        gone = 0
        for state in list(self._connections.values()):
            idle = now - state.last_seen
            if idle > self.idle_timeout or (
                not state.established and now - state.created > self.handshake_timeout
            ):
                self._drop(state, "DTLS state purged")
                gone += 1
        return gone

    async def _purge_forever(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)  # a periodic sweep
            try:
                self.purge(time.monotonic())
            except Exception:
                log.exception("DTLS state purge failed")

    async def shutdown(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
        await super().shutdown()


class DtlsServer(_server.MessageInterfaceTinyDTLSServer):
    """aiocoap's DTLS server bound to exactly the given port, with bounded, purged state."""

    _default_port = COAP_PORT  # aiocoap adds (default port - 5683) to the given port
    _serversocket = _BoundedPool

    async def shutdown(self) -> None:
        # aiocoap's version injects an error into every state, which reaches a message
        # manager already shut down (one warning per session); drop them quietly instead
        pool = self._pool
        for state in list(pool._connections.values()):
            state.established = True  # not a failed handshake
            state._retransmission_task.cancel()
        pool._connections.clear()
        await pool.shutdown()

    @property
    def states(self) -> int:
        return len(self._pool._connections)

    def purge(self) -> int:
        return int(self._pool.purge(time.monotonic()))


async def start_dtls_server(
    context: aiocoap.Context,
    bind: tuple[str, int],
    credentials: Any,
    *,
    max_states: int = 10_000,
    on_handshake: Callable[[str], None] = lambda outcome: None,
    idle_timeout: float = IDLE_TIMEOUT,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    purge_interval: float = PURGE_INTERVAL,
) -> DtlsServer:
    """Add a DTLS 1.2 PSK server on ``bind`` (a specific IP) to a server ``context``.

    ``credentials`` answers ``find_dtls_psk(identity) -> (key, claim)`` (``KeyError`` when
    unknown); the resource sees ``[claim]`` as ``request.remote.authenticated_claims``.
    Raises ``ValueError`` for an any-address and ``OSError`` when the port is taken.
    """
    host, port = bind
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = host in ("", "*")
    if unspecified:
        raise ValueError(f"DTLS needs a specific address to listen on, not {host!r}")
    loop = asyncio.get_running_loop()
    made: list[DtlsServer] = []

    async def construct(mman: Any) -> DtlsServer:
        server = await DtlsServer.create_server(
            (host, port), mman, log=context.log, loop=loop, server_credentials=credentials
        )
        made.append(server)
        return server

    await context._append_tokenmanaged_messagemanaged_transport(construct)
    server = made[0]
    pool = server._pool
    pool.max_sockets = max_states
    pool.idle_timeout = idle_timeout
    pool.handshake_timeout = handshake_timeout
    pool.on_handshake = on_handshake
    pool._purger = loop.create_task(pool._purge_forever(purge_interval), name="DTLS purge")
    return server
