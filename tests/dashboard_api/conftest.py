"""The operator API served by real uvicorn on a loopback port, over a known city stored in
the embedded SQLite store or a real influxd."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from citysense.config import Settings
from dashboard_api.app import create_app
from dashboard_api.service import serve
from tests.dashboard_api.citydata import (
    HOUR,
    city_samples,
    line_protocol,
    registry_csv,
    write_sqlite,
)
from tests.servers import InfluxServer, free_port

END = 1_780_000_000_000 // HOUR * HOUR  #: the tests' "now": an hour boundary
SAMPLES = city_samples(END)
OPERATOR_KEY = "op-key-0123456789"
VIEWER_KEY = "viewer-key-0123456789"
KEYS = (f"{OPERATOR_KEY}:operator", f"{VIEWER_KEY}:viewer")


class ApiServer:
    """``dashboard_api.service.serve`` in a thread of its own, on a free loopback port."""

    def __init__(self, settings: Settings, app: FastAPI) -> None:
        self.port = free_port()
        self.settings = replace(settings, bind=f"127.0.0.1:{self.port}")
        self.app = app
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            self._task = asyncio.create_task(serve(self.settings, ready, app=self.app))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self._ready.set()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30), "API did not start"
        if self._error is not None:
            raise self._error
        assert self._task is not None and not self._task.done(), "API stopped at start"

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        assert not self._thread.is_alive()

    def client(self, key: str | None = OPERATOR_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def city_settings(tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> Settings:
    registry = registry_csv(tmp_path / "registry.csv")
    base = Settings(
        state_dir=str(tmp_path / "state"),
        registry=str(registry),
        api_keys=KEYS,
        rate_limit=100_000,
        # the known city holds still by design (formula values): no scheduled quality flags
        # here (tests/dashboard_api/test_quality_api.py covers them over the simulated city)
        quality_interval=0.0,
    )
    if storage == "sqlite":
        write_sqlite(tmp_path / "state" / "timeseries.sqlite3", SAMPLES)
        return base
    db: InfluxServer = request.getfixturevalue("influx_db")
    db.write(line_protocol(SAMPLES))
    return replace(base, influx=db.url, influx_db=db.db, influx_api="1")


MakeApi = Callable[..., ApiServer]


@pytest.fixture
def make_api(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeApi]:
    """Start an API over the known city: ``make_api(storage, **settings_changes)``."""
    servers: list[ApiServer] = []

    def make(storage: str = "sqlite", **changes: object) -> ApiServer:
        settings = replace(city_settings(tmp_path, storage, request), **changes)  # type: ignore[arg-type]
        server = ApiServer(settings, create_app(settings, clock=lambda: END / 1000))
        server.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(params=["sqlite", "influxql"])
def api(request: pytest.FixtureRequest, make_api: MakeApi) -> ApiServer:
    """The API over the known city, once on SQLite and once on real influxd."""
    return make_api(request.param)
