"""A TCP proxy the tests control, to cut the network between two real processes.

``partition()`` blackholes the link: open connections stop carrying bytes in either direction
(as when a backhaul drops), and new connections are accepted but carry nothing. ``heal()``
closes the blackholed connections -- the peers see a reset, as after a long outage -- and
forwards again. Runs its own event loop in a thread; binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.servers import free_port


class TcpProxy:
    def __init__(self, target_port: int, listen_port: int | None = None) -> None:
        self.target_port = target_port
        self.port = listen_port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._open = threading.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                while not self._open.is_set():
                    await asyncio.sleep(0.05)  # blackholed: hold the bytes, as a dead link does
                    if writer.is_closing():
                        return
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(client_w)
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self._writers.discard(client_w)
            return
        self._writers.add(upstream_w)
        await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))
        self._writers.discard(client_w)
        self._writers.discard(upstream_w)

    def partition(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        def reset() -> None:
            for w in list(self._writers):
                with contextlib.suppress(OSError):
                    w.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(reset)
        self._open.set()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
