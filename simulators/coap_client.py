"""A raw-UDP CoAP client endpoint that keeps many confirmable requests in flight.

One :class:`CoapEndpoint` is one UDP socket (one device-side endpoint as the gateway sees
it). Each request is a CON with its own message id and token; it is retransmitted with the
same message id on RFC 7252 timing (initial timeout uniform in [ACK_TIMEOUT,
ACK_TIMEOUT x ACK_RANDOM_FACTOR], doubled each time, MAX_RETRANSMIT retransmissions) until an
ACK, a RST or a response arrives. Piggybacked responses are matched by message id and
token; separate responses (after an empty ACK) by token, and are acknowledged.

A message id is not reused while its exchange is open; the fleet spreads devices over
enough endpoints that ids are not reused within EXCHANGE_LIFETIME either (247 s).

Results are delivered to a callback (no future per request: fleets send thousands a
second). Every request ends exactly once: response, reset, timeout or abandoned at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from simulators import coap

log = logging.getLogger(__name__)

#: RFC 7252 section 4.8
EXCHANGE_LIFETIME = 247.0


@dataclass(frozen=True, slots=True)
class TransmissionParameters:
    """RFC 7252 section 4.8 defaults; tests shorten them."""

    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    #: how long to wait for a separate response after an empty ACK
    response_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Result:
    """How one request ended: ``outcome`` is ``response``, ``reset``, ``timeout`` or ``abandoned``."""

    outcome: str
    code: int | None = None
    payload: bytes = b""
    max_age: int | None = None
    transmissions: int = 1


class TransportFaults(Protocol):
    """Seeded faults applied to datagrams (see :class:`simulators.faults.FaultPlan`)."""

    def lose(self) -> bool: ...

    def duplicate(self) -> bool: ...


@dataclass(slots=True)
class EndpointCounters:
    """What the socket saw, besides each request's own result."""

    datagrams_sent: int = 0
    retransmissions: int = 0
    lost_out: int = 0
    lost_in: int = 0
    duplicated: int = 0
    stray: int = 0  #: answers to no open exchange (late or duplicate responses)
    malformed: int = 0
    separate: int = 0  #: responses that came after an empty ACK


class _Exchange:
    __slots__ = ("datagram", "done", "handle", "mid", "timeout", "token", "transmissions")

    def __init__(
        self, mid: int, token: bytes, datagram: bytes, done: Callable[[Result], None]
    ) -> None:
        self.mid = mid
        self.token = token
        self.datagram = datagram
        self.done = done
        self.transmissions = 0
        self.timeout = 0.0
        self.handle: asyncio.TimerHandle | None = None


Builder = Callable[[int, bytes], bytes]


class CoapEndpoint(asyncio.DatagramProtocol):
    """One client socket with many CON exchanges open at once."""

    def __init__(
        self,
        params: TransmissionParameters | None = None,
        rng: random.Random | None = None,
        faults: TransportFaults | None = None,
        counters: EndpointCounters | None = None,
    ) -> None:
        self.params = params or TransmissionParameters()
        self.rng = rng or random.Random()
        self.faults = faults
        self.counters = counters if counters is not None else EndpointCounters()
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_mid: dict[int, _Exchange] = {}
        self._by_token: dict[bytes, _Exchange] = {}
        self._next_mid = self.rng.randrange(0x10000)
        self._token_base = self.rng.getrandbits(32)
        self._token_n = 0
        self.closed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    async def open(
        cls,
        remote: tuple[str, int],
        params: TransmissionParameters | None = None,
        rng: random.Random | None = None,
        faults: TransportFaults | None = None,
        counters: EndpointCounters | None = None,
        buffer_bytes: int = 1 << 20,
    ) -> CoapEndpoint:
        """A socket on 127.0.0.1 (or any local address) connected to ``remote``."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
                except OSError:
                    log.debug("could not set socket buffer %s", opt)
            sock.setblocking(False)
            sock.connect(remote)
            transport, proto = await loop.create_datagram_endpoint(
                lambda: cls(params, rng, faults, counters), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        assert isinstance(proto, CoapEndpoint)
        # connection_made runs on the next loop iteration; the endpoint is usable now
        proto._transport = transport
        proto._loop = loop
        return proto

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.closed.set()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the gateway is down: the retransmission timer copes
        log.debug("socket error: %s", exc)

    @property
    def in_flight(self) -> int:
        return len(self._by_mid)

    def _allocate_mid(self) -> int:
        for _ in range(0x10000):
            mid = self._next_mid
            self._next_mid = (mid + 1) & 0xFFFF
            if mid not in self._by_mid:
                return mid
        raise RuntimeError("all 65536 message ids are in use on one endpoint")

    def request(self, build: Builder, done: Callable[[Result], None]) -> None:
        """Send a CON built by ``build(mid, token)``; ``done`` gets its :class:`Result`."""
        mid = self._allocate_mid()
        self._token_n += 1
        token = ((self._token_base + self._token_n) & 0xFFFFFFFF).to_bytes(4, "big")
        ex = _Exchange(mid, token, build(mid, token), done)
        self._by_mid[mid] = ex
        self._by_token[token] = ex
        self._idle.clear()
        p = self.params
        ex.timeout = p.ack_timeout * (1.0 + self.rng.random() * (p.ack_random_factor - 1.0))
        self._transmit(ex)

    def _send(self, datagram: bytes) -> None:
        if self._transport is None:
            return
        self.counters.datagrams_sent += 1
        if self.faults is not None and self.faults.lose():
            self.counters.lost_out += 1
            return
        self._transport.sendto(datagram)
        if self.faults is not None and self.faults.duplicate():
            self.counters.duplicated += 1
            self._transport.sendto(datagram)

    def _transmit(self, ex: _Exchange) -> None:
        ex.transmissions += 1
        self._send(ex.datagram)
        assert self._loop is not None
        ex.handle = self._loop.call_later(ex.timeout, self._on_timeout, ex)

    def _on_timeout(self, ex: _Exchange) -> None:
        if self._by_mid.get(ex.mid) is not ex:
            return
        if ex.transmissions > self.params.max_retransmit:
            self._finish(ex, Result("timeout", transmissions=ex.transmissions))
            return
        ex.timeout *= 2
        self.counters.retransmissions += 1
        self._transmit(ex)

    def _on_response_timeout(self, ex: _Exchange) -> None:
        if self._by_token.get(ex.token) is ex:
            self._finish(ex, Result("timeout", transmissions=ex.transmissions))

    def _finish(self, ex: _Exchange, result: Result) -> None:
        if ex.handle is not None:
            ex.handle.cancel()
            ex.handle = None
        if self._by_mid.get(ex.mid) is ex:
            del self._by_mid[ex.mid]
        if self._by_token.get(ex.token) is ex:
            del self._by_token[ex.token]
            if not self._by_token:
                self._idle.set()
        try:
            ex.done(result)
        except Exception:
            log.exception("result callback failed")

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.faults is not None and self.faults.lose():
            self.counters.lost_in += 1
            return
        try:
            msg = coap.decode(data)
        except coap.CoapError:
            self.counters.malformed += 1
            return
        if msg.type in (coap.ACK, coap.RST):
            ex = self._by_mid.get(msg.mid)
            if ex is None:
                self.counters.stray += 1
                return
            if msg.type == coap.RST:
                self._finish(ex, Result("reset", transmissions=ex.transmissions))
            elif msg.code == coap.EMPTY:
                # the answer comes later in its own message: stop retransmitting, wait for it
                if ex.handle is not None:
                    ex.handle.cancel()
                del self._by_mid[ex.mid]
                assert self._loop is not None
                ex.handle = self._loop.call_later(
                    self.params.response_timeout, self._on_response_timeout, ex
                )
            elif msg.token != ex.token:
                self.counters.malformed += 1
            else:
                self._complete(ex, msg)
            return
        if msg.code >> 5 in (2, 4, 5):  # a separate response, CON or NON
            if msg.type == coap.CON:
                self._send(coap.empty_ack(msg.mid))
            ex = self._by_token.get(msg.token)
            if ex is None:
                self.counters.stray += 1
                return
            self.counters.separate += 1
            self._complete(ex, msg)
            return
        if msg.type == coap.CON:
            self._send(coap.reset(msg.mid))
        self.counters.stray += 1

    def _complete(self, ex: _Exchange, msg: coap.Message) -> None:
        self._finish(
            ex,
            Result(
                "response",
                msg.code,
                msg.payload,
                msg.uint_option(coap.MAX_AGE),
                ex.transmissions,
            ),
        )

    async def aclose(self, drain: float = 0.0) -> int:
        """Wait up to ``drain`` s for open exchanges, abandon the rest; returns how many."""
        if drain > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain)
        abandoned = list(self._by_token.values()) + [
            ex for ex in self._by_mid.values() if ex.token not in self._by_token
        ]
        for ex in abandoned:
            self._finish(ex, Result("abandoned", transmissions=ex.transmissions))
        if self._transport is not None:
            self._transport.close()
            await asyncio.wait_for(self.closed.wait(), 5.0)
        return len(abandoned)
