"""citysense.compat.uvicorn: a server that leaves the process's signals to its caller."""

from __future__ import annotations

import asyncio
import signal
import socket

import uvicorn

from citysense.compat import uvicorn as compat


async def _app(scope: dict[str, object], receive: object, send: object) -> None:
    if scope["type"] == "lifespan":
        return


def test_server_leaves_signal_handlers_alone() -> None:
    assert compat.SIGNALS_FENCED and compat.Server is not uvicorn.Server
    before = signal.getsignal(signal.SIGTERM)

    async def main() -> object:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(_app, lifespan="off", log_config=None)
        server = compat.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
            await asyncio.sleep(0.01)
        during = signal.getsignal(signal.SIGTERM)
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
        return during

    assert asyncio.run(main()) == before
