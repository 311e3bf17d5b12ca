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
from citysense.errors import ConfigError, RetryableError
from citysense.serving import listen_socket
from dashboard_api.app import create_app
from timeseries.connection import InfluxTarget, can_write, storage_target

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT = 10.0
#: Connections and tasks served at once (more are answered 503 at once).
MAX_CONCURRENCY = 512
#: An idle keep-alive connection is closed after this many seconds.
KEEP_ALIVE_TIMEOUT = 5
#: Largest request head (line and headers) buffered, bytes.
MAX_HEADER_BYTES = 16 * 1024


async def refuse_writable_reader(settings: Settings) -> None:
    """``citysense api`` reads: credentials that can write are refused (ConfigError) unless
    ``--allow-writable-reader``. The embedded store has no credentials to check."""
    target = storage_target(settings)
    if not isinstance(target, InfluxTarget) or settings.allow_writable_reader:
        return
    try:
        writable = await can_write(target)
    except RetryableError as exc:
        log.warning("cannot check whether the InfluxDB credentials can write: %s", exc)
        return
    if writable:
        raise ConfigError(
            f"the InfluxDB credentials can write to {target.url}: give the API a read-only "
            "user (citysense_reader) or --allow-writable-reader"
        )


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
        http="h11",  # its request-head limit is one setting (httptools has none)
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=MAX_CONCURRENCY,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
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
