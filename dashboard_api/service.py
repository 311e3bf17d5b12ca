"""Runs the operator API with uvicorn inside the caller's event loop.

:func:`serve` runs until cancelled (``citysense demo`` runs every service in one loop this
way); it sets ``ready`` once the socket accepts connections and, on cancellation, asks
uvicorn to finish in-flight requests and shut down, waiting at most :data:`SHUTDOWN_TIMEOUT`.
uvicorn's own signal handling is switched off: the caller owns signals. The listening socket
is opened here, so a taken ``--bind`` is a :class:`~citysense.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from fastapi import FastAPI

from citysense.compat import uvicorn as compat_uvicorn
from citysense.config import Settings, parse_hostport
from citysense.serving import listen_socket
from dashboard_api.app import create_app

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT = 10.0


async def serve(
    settings: Settings, ready: asyncio.Event | None = None, *, app: FastAPI | None = None
) -> None:
    """Serve the API on ``settings.bind`` until cancelled."""
    host, port = parse_hostport(settings.bind, "--bind")
    config = uvicorn.Config(
        app if app is not None else create_app(settings),
        host=host,
        port=port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT / 2),
    )
    sock = listen_socket(host, port, settings.bind)
    server = compat_uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="api-uvicorn")
    try:
        while not server.started:
            if task.done():
                try:
                    await task  # raises what stopped it
                except SystemExit as exc:  # uvicorn's way of saying startup failed
                    raise RuntimeError(f"the API could not start on {settings.bind}") from exc
                raise RuntimeError(f"the API could not start on {settings.bind}")
            await asyncio.wait({task}, timeout=0.02)
        log.info("operator API on http://%s:%d", host, port)
        if ready is not None:
            ready.set()
        await asyncio.shield(task)
        raise RuntimeError("the API server stopped by itself")
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, SHUTDOWN_TIMEOUT)
        raise
    finally:
        sock.close()
