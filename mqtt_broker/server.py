"""The asyncio TCP server around :class:`~mqtt_broker.core.BrokerCore`: :class:`Broker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import TracebackType

from mqtt_broker.core import BrokerCore
from mqtt_broker.session import (
    BrokerConfig,
    Connection,
)

log = logging.getLogger("mqtt_broker")

# --------------------------------------------------------------------------- asyncio server


class _Protocol(asyncio.Protocol):
    """Connects one TCP transport to a :class:`Connection`."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.conn = self.broker.core.open(
            self._write, transport.close, peer_text, transport.get_write_buffer_size
        )
        self.broker._transports.add(transport)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            return
        try:
            self.conn.receive(data)
        except Exception:
            # A bug of ours must cost one connection, never the broker.
            log.exception("%r: internal error; closing its connection", self.conn)
            self.conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.broker.core.connection_lost(self.conn)
        if self.transport is not None:
            self.broker._transports.discard(self.transport)
            if not self.broker._transports:
                self.broker._all_closed.set()


class Broker:
    """The embedded broker on a TCP port, in the running event loop.

    ``await broker.serve(host, port, ready)`` runs until cancelled; or
    ``async with Broker() as broker:`` listens on ``broker.port`` inside the block.
    """

    SHUTDOWN_TIMEOUT = 3.0
    TICK_INTERVAL = 0.5

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, config: BrokerConfig | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.core = BrokerCore(config)
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._transports: set[asyncio.Transport] = set()
        self._all_closed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def metrics(self) -> dict[str, int]:
        return self.core.metrics()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self), self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick(), name="mqtt-broker-tick")
        log.info("embedded MQTT broker listening on %s", self.url)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.TICK_INTERVAL)
            self.core.tick()

    async def stop(self) -> None:
        """Stop listening, disconnect every client (bounded), stop the timer."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        self._all_closed.clear()
        self.core.shutdown()
        if self._transports:
            try:
                async with asyncio.timeout(self.SHUTDOWN_TIMEOUT):
                    await self._all_closed.wait()
            except TimeoutError:
                for transport in list(self._transports):
                    transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.SHUTDOWN_TIMEOUT):
                await server.wait_closed()
        log.info("embedded MQTT broker stopped")

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve(
        self,
        host: str | None = None,
        port: int | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        """Listen (by default on this broker's host and port) until cancelled."""
        if host is not None:
            self.host = host
        if port is not None:
            self.port = port
        await self.start()
        try:
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())
