"""``citysense api`` as a process: serves, stops cleanly on SIGTERM (exit 0), refuses a
taken --bind with exit 2; ``serve`` stops when cancelled."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from citysense.config import Settings
from citysense.errors import ConfigError
from dashboard_api.service import serve
from tests.servers import free_port, wait_until

CITYSENSE = [sys.executable, "-m", "citysense"]


def test_cli_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CITYSENSE, "api", "--state-dir", str(tmp_path), "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def healthy() -> bool:
            try:
                return (
                    httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "citysense api answering /api/v1/health")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "open to anyone" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_cli_refuses_a_taken_bind_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CITYSENSE, "api", "--state-dir", str(tmp_path), "--bind", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert "--bind" in result.stderr and "in use" in result.stderr


def test_serve_sets_ready_and_stops_when_cancelled(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path), bind=f"127.0.0.1:{free_port()}")

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(settings, ready))
        await asyncio.wait_for(ready.wait(), 30)
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://{settings.bind}/api/v1/catalog")
            assert r.status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(f"http://{settings.bind}/api/v1/health")

    asyncio.run(main())


def test_serve_refuses_a_taken_bind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(state_dir=str(tmp_path), bind=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(ConfigError):
            asyncio.run(serve(settings))
