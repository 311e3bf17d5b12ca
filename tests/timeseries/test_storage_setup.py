"""The database is made sure of at start, with real influxd: created when the credentials
allow (a fresh name), else refused with the command that creates it (exit 2 of the ingestor)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from citysense.config import Settings
from citysense.errors import ConfigError
from tests.servers import ROOT, InfluxServer, _Process, free_port
from timeseries.factory import open_writer


def databases(server: InfluxServer, auth: tuple[str, str] | None = None) -> set[str]:
    params = {"q": "SHOW DATABASES"}
    if auth:
        params.update(u=auth[0], p=auth[1])
    with urllib.request.urlopen(f"{server.url}/query?{urllib.parse.urlencode(params)}") as r:
        series = json.load(r)["results"][0].get("series", [])
    return {row[0] for s in series for row in s.get("values", [])}


def test_the_ingestors_writer_creates_a_missing_database(influxd: InfluxServer) -> None:
    name = "fresh_" + uuid.uuid4().hex[:10]
    assert name not in databases(influxd)

    async def main() -> None:
        settings = Settings(influx=influxd.url, influx_db=name, influx_api="auto")
        async with open_writer(settings):
            pass

    asyncio.run(main())
    try:
        assert name in databases(influxd)
    finally:
        influxd.query(f'DROP DATABASE "{name}"', method="POST")


class AuthInflux(InfluxServer):
    """influxd with authentication enabled: an admin, and a writer who may not create."""

    def _config(self) -> str:
        return super()._config().replace("auth-enabled = false", "auth-enabled = true")

    def start(self, timeout: float = 60.0) -> None:
        _Process.start(self, timeout)  # no database of its own: nobody may create one yet

    def q(self, statement: str, user: str | None = None, password: str = "") -> None:
        params = {"q": statement}
        if user:
            params.update(u=user, p=password)
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/query?{query}", data=b"", timeout=10) as r:
            assert b'"error"' not in r.read()


@pytest.fixture
def auth_influx(tmp_path: Path) -> Iterator[AuthInflux]:
    server = AuthInflux(tmp_path / "influxd")
    assert "auth-enabled = true" in server.conf.read_text()
    try:
        server.start()
        server.q("CREATE USER admin WITH PASSWORD 'adminpw' WITH ALL PRIVILEGES")
        server.q("CREATE USER writer WITH PASSWORD 'writerpw'", "admin", "adminpw")
        yield server
    finally:
        server.stop()


def test_without_the_right_to_create_the_ingestor_exits_2_naming_the_command(
    auth_influx: AuthInflux, tmp_path: Path
) -> None:
    url = f"http://writer:writerpw@127.0.0.1:{auth_influx.port}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "citysense",
            "ingest",
            "--influx",
            url,
            "--influx-db",
            "nosuchdb",
            "--mqtt",
            f"mqtt://127.0.0.1:{free_port()}",
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics-bind",
            "off",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "'nosuchdb' does not exist" in last
    assert 'CREATE DATABASE "nosuchdb"' in last
    assert "writerpw" not in result.stderr
    # granted WRITE on an existing database, the same writer starts (no CREATE needed)
    auth_influx.q('CREATE DATABASE "nosuchdb"', "admin", "adminpw")
    auth_influx.q('GRANT WRITE ON "nosuchdb" TO "writer"', "admin", "adminpw")

    async def main() -> None:
        settings = Settings(influx=url, influx_db="nosuchdb")
        async with open_writer(settings):
            pass

    asyncio.run(main())


def test_config_error_is_the_refusal(auth_influx: AuthInflux) -> None:
    async def main() -> None:
        url = f"http://writer:writerpw@127.0.0.1:{auth_influx.port}"
        async with open_writer(Settings(influx=url, influx_db="other")):
            pass

    with pytest.raises(ConfigError, match="may not create it"):
        asyncio.run(main())
